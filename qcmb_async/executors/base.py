"""The executor protocol: where a fragment runs is a plug-in behind this interface.

The scheduler only ever calls ``async with executor`` and ``await executor.run(job)``.
Jobs and outcomes are plain, picklable data (QCSchema dicts) so the same protocol works
for threads, worker processes and remote Dask workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


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
