"""Progress events emitted during a run (see ``on_event`` and :func:`qcmb_async.open_run`).

Fragment events (``RunStarted`` ... ``RunFinished``) come from every scheduling run; ``StepStarted`` and
``StepFinished`` from the drivers that move atoms (``optimize``, ``frequencies``, the ASE calculator),
around each step's fragment events.
"""

from ._core.events import (
    Event,
    FragmentFailed,
    FragmentFinished,
    FragmentRetried,
    FragmentsReleased,
    FragmentStarted,
    LevelComplete,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
)

__all__ = [
    "Event",
    "FragmentFailed",
    "FragmentFinished",
    "FragmentRetried",
    "FragmentStarted",
    "FragmentsReleased",
    "LevelComplete",
    "RunFinished",
    "RunStarted",
    "StepFinished",
    "StepStarted",
]
