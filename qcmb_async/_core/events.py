"""Progress events the scheduler emits, for progress displays, logs and apps."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    total: int
    per_level: dict[int, int]
    ncores: int
    memory: float


@dataclass(frozen=True)
class FragmentStarted:
    run_id: str
    label: str
    level: int
    program: str
    cores: int
    memory: float
    attempt: int


@dataclass(frozen=True)
class FragmentFinished:
    run_id: str
    label: str
    level: int
    program: str
    wall_time: float
    worker: str
    cached: bool = False
    """True when the result came from the result store, not a computation."""


@dataclass(frozen=True)
class FragmentRetried:
    run_id: str
    label: str
    level: int
    program: str
    attempt: int
    error_type: str
    error_message: str
    delay: float


@dataclass(frozen=True)
class FragmentFailed:
    run_id: str
    label: str
    level: int
    program: str
    attempts: int
    error_type: str
    error_message: str


@dataclass(frozen=True)
class LevelComplete:
    """Every fragment of n-body level ``level`` finished."""

    run_id: str
    level: int
    done: int
    total: int
    partial_result: Any = None
    """MBE(level) ``ManyBodyResult`` when this and all lower levels succeeded and a higher level
    is still to come (built only when someone listens to events); ``None`` otherwise."""


@dataclass(frozen=True)
class RunFinished:
    run_id: str
    succeeded: int
    failed: int
    wall_time: float


Event = RunStarted | FragmentStarted | FragmentFinished | FragmentRetried | FragmentFailed | LevelComplete | RunFinished


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
