"""Progress events emitted during a run (see ``on_event`` and :func:`qcmb_async.open_run`)."""

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
]
