"""The executor protocol: where a fragment runs is a plug-in behind this interface.

The scheduler only ever calls ``async with executor`` and ``await executor.run(job)``.
Jobs and outcomes are plain, picklable data (QCSchema dicts) so the same protocol works
for threads, worker processes and remote Dask workers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

import anyio
import anyio.lowlevel

from ..errors import InputError


@dataclass(frozen=True)
class FragmentJob:
    """Everything a worker needs to run one fragment, and nothing that cannot be pickled."""

    label: str
    """QCManyBody's label, e.g. ``'["(auto)", [1], [1, 2]]'``."""
    level: int
    """n-body level: the number of real fragments."""
    program: str
    atomic_input: Any
    """The ``AtomicInput`` (QCSchema v2): the pydantic model, or the same as a dict."""
    task_config: dict[str, Any]
    """A complete QCEngine ``task_config`` (ncores, memory, scratch_directory, retries)."""
    run_id: str = ""
    timeout: float | None = None
    """Seconds after which the program process is killed; ``None`` waits forever."""
    attempt: int = 1

    @property
    def ncores(self) -> int:
        return int(self.task_config["ncores"])

    @property
    def memory(self) -> float:
        return float(self.task_config["memory"])


@dataclass
class JobOutcome:
    """What came back from one attempt at a fragment."""

    label: str
    result: Any
    """The ``AtomicResult`` (QCSchema v2) on success; the ``FailedOperation`` as a dict otherwise."""
    success: bool
    start: float
    """Wall-clock (``time.time()``) when QCEngine was called in the worker."""
    end: float
    host: str
    worker: str
    pid: int
    error_type: str | None = None
    error_message: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def wall_time(self) -> float:
        return self.end - self.start


@runtime_checkable
class Executor(Protocol):
    """Runs fragments somewhere. Implementations: threads, processes, dask."""

    name: str

    async def __aenter__(self) -> Executor:
        """Start workers and prime QCEngine wherever fragments will run."""
        ...

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop workers; no program process started by this executor survives."""
        ...

    async def run(self, job: FragmentJob) -> JobOutcome:
        """Run one fragment and return its outcome; QCEngine failures are outcomes, not exceptions.

        Cancelling the awaiting task must stop the fragment's program process.
        """
        ...


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
    _users: int = 0
    _loop: anyio.lowlevel.EventLoopToken | None = None
    _lifecycle: anyio.Lock | None = None

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
