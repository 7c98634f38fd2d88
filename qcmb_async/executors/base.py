"""The base class of the built-in executors: lifecycle and the contract's defaults.

The contract itself (:class:`FragmentJob`, :class:`JobOutcome`, :class:`Executor`) lives in
:mod:`qcmb_async._core.contract`, which the scheduler imports too; it is re-exported here for
executor authors.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Self

import anyio
import anyio.lowlevel

from .._core.contract import Executor, FragmentJob, JobOutcome
from ..errors import InputError

__all__ = ["Executor", "FragmentJob", "JobOutcome", "ReusableExecutor"]


class ReusableExecutor(ABC):
    """Base of the built-in executors: one start, any number of ``async with`` blocks, one stop.

    The first ``async with`` starts the executor (workers, connections); entering it again while
    it runs -- a run given an executor the caller already entered, or concurrent runs sharing it --
    reuses what is running; the last exit stops it. So a pool of worker processes can outlive
    one run::

        async with ProcessExecutor(max_workers=8, warm={"pyscf"}) as pool:
            for inp in inputs:
                await run_manybody(inp, executor=pool)  # no worker start-up after the first

    A running executor belongs to the event loop that started it (its pipes and connections do);
    entering it from another loop raises :class:`~qcmb_async.errors.InputError`.
    Subclasses implement :meth:`_start` and :meth:`_stop`.
    """

    name: str = "executor"
    clock: Callable[[], float] = staticmethod(time.time)
    """Wall-clock time stamps the scheduler's records."""
    _users: int = 0
    _loop: anyio.lowlevel.EventLoopToken | None = None
    _lifecycle: anyio.Lock | None = None

    @property
    def capacity(self) -> tuple[float, float] | None:
        """``(cores, memory GiB)`` this executor offers; ``None``: this machine's (the default)."""
        return None

    @property
    def running(self) -> bool:
        """Whether the executor is started (entered at least once and not yet fully exited)."""
        return self._users > 0

    @abstractmethod
    async def _start(self) -> None:
        """Start workers / connect (called by the first ``async with`` only)."""

    @abstractmethod
    async def _stop(self) -> None:
        """Stop everything :meth:`_start` started (called by the last exit only, shielded)."""

    async def __aenter__(self) -> Self:
        """Start the executor, or join it if it is already running in this event loop."""
        token = anyio.lowlevel.current_token()
        if self._users and token != self._loop:
            raise InputError(
                f"this {self.name!r} executor is running in another event loop (its workers' pipes and "
                "connections belong to it): use it there, e.g. `await run_manybody(..., executor=pool)` inside "
                "the `async with` that started it, not the synchronous run() (which has its own loop)"
            )
        if self._lifecycle is None:
            self._lifecycle = anyio.Lock()
        async with self._lifecycle:
            if self._users == 0:
                await self._start()
                self._loop = token
            self._users += 1
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Leave; the last one out stops the executor (shielded: it must not be half-stopped)."""
        with anyio.CancelScope(shield=True):
            assert self._lifecycle is not None and self._users > 0, "executor exited more often than entered"
            async with self._lifecycle:
                self._users -= 1
                if self._users == 0:
                    self._loop = None
                    await self._stop()
            if self._users == 0 and not self._lifecycle.locked():
                self._lifecycle = None  # a later start may be in another event loop
