"""Progress events the scheduler emits, for progress displays, logs and apps."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunStarted:
    """A run is about to dispatch its first fragment."""

    run_id: str
    total: int
    """Fragments in the plan."""
    per_level: dict[int, int]
    """Fragments per n-body level (QCManyBody's nbody: number of real fragments)."""
    ncores: int
    """Cores the run may use."""
    memory: float
    """Memory the run may use, GiB."""


@dataclass(frozen=True)
class FragmentsReleased:
    """Energy screening decided subsets kept during the run: their fragments joined the plan."""

    run_id: str
    per_level: dict[int, int]
    """New fragments per n-body level."""
    total: int
    """Fragments in the plan now."""


@dataclass(frozen=True)
class FragmentStarted:
    """An attempt at a fragment was handed to the executor."""

    run_id: str
    label: str
    """QCManyBody's label, e.g. ``'["(auto)", [1], [1, 2]]'``."""
    level: int
    """n-body level (number of real fragments)."""
    program: str
    cores: int
    """Cores given to this fragment."""
    memory: float
    """Memory given to this fragment, GiB."""
    attempt: int
    """1 for the first attempt."""


@dataclass(frozen=True)
class FragmentFinished:
    """A fragment succeeded (or its result was found in the store)."""

    run_id: str
    label: str
    level: int
    program: str
    wall_time: float
    """Seconds of the successful attempt (0 for a stored result)."""
    worker: str
    """Where it ran (``host:pid:thread``), or ``"store"``."""
    cached: bool = False
    """True when the result came from the result store, not a computation."""


@dataclass(frozen=True)
class FragmentRetried:
    """An attempt failed with a transient error; another follows after ``delay``."""

    run_id: str
    label: str
    level: int
    program: str
    attempt: int
    """The attempt that failed."""
    error_type: str
    error_message: str
    delay: float
    """Seconds before the next attempt."""


@dataclass(frozen=True)
class FragmentFailed:
    """A fragment failed for good (no retries left, or not a transient error)."""

    run_id: str
    label: str
    level: int
    program: str
    attempts: int
    """Attempts made."""
    error_type: str
    error_message: str


@dataclass(frozen=True)
class LevelComplete:
    """Every fragment of n-body level ``level`` finished."""

    run_id: str
    level: int
    done: int
    """Fragments of this level finished (equal to ``total``)."""
    total: int
    """Fragments of this level."""
    partial_result: Any = None
    """MBE(level) ``ManyBodyResult`` when this and all lower levels succeeded and a higher level
    is still to come (built only when someone listens to events); ``None`` otherwise."""


@dataclass(frozen=True)
class RunFinished:
    """Every fragment was dispatched and has ended."""

    run_id: str
    succeeded: int
    """Fragments with a result (computed or from the store)."""
    failed: int
    wall_time: float
    """Seconds from the first dispatch to the end of the last fragment."""


@dataclass(frozen=True)
class StepStarted:
    """A driver that moves atoms starts one step.

    A step is one gradient MBE of :func:`~qcmb_async.optimize` or of the ASE calculator, or the one
    scheduling pass of :func:`~qcmb_async.frequencies` (every displacement's fragments at once; one
    Hessian MBE for the analytic route). The step's own fragment events (``RunStarted``...) follow.
    """

    kind: str
    """``"optimize"``, ``"frequencies"`` or ``"ase"``."""
    step: int
    """1 for the first step."""
    geometry: tuple[tuple[float, float, float], ...]
    """Coordinates of the step's (reference) geometry, bohr, one ``(x, y, z)`` per atom."""


@dataclass(frozen=True)
class StepFinished:
    """A step of a driver that moves atoms ended with a result (a failed step raises instead)."""

    kind: str
    """``"optimize"``, ``"frequencies"`` or ``"ase"``."""
    step: int
    energy: float | None
    """Total energy at the step's (reference) geometry, Eh (``None`` when the route gives none)."""
    gradient_rms: float | None
    """Root mean square of the gradient's Cartesian components, Eh/bohr (``None``: no gradient)."""
    gradient_max: float | None
    """Largest absolute gradient component, Eh/bohr (``None``: no gradient)."""
    computed: int
    """Fragments computed in this step."""
    cached: int
    """Fragments read from the result store in this step."""
    wall_time: float
    """Seconds from the step's start to its result."""
    run_id: str | None = None
    """The step's scheduling run (its fragment events and records carry it)."""


Event = (RunStarted | FragmentsReleased | FragmentStarted | FragmentFinished | FragmentRetried | FragmentFailed
         | LevelComplete | RunFinished | StepStarted | StepFinished)


async def emit(callback: Callable[[Any], Any] | None, event: Event) -> None:
    """Send ``event`` to a sync or async callback; a failing callback never breaks the run."""
    if callback is None:
        return
    try:
        out = callback(event)
        if inspect.isawaitable(out):
            await out
    except Exception:  # progress display bugs must not lose computed work
        from .._logs import get_logger

        get_logger().exception("event callback failed", event_type=type(event).__name__)
