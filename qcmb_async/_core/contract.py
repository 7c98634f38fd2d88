"""The execution contract: what the scheduler hands an executor and what comes back.

Both sides import this module and nothing of each other (anyio's ``abc/`` for its backends):
the scheduler (:mod:`qcmb_async._core.scheduler`) only knows :class:`Executor`,
:class:`FragmentJob` and :class:`JobOutcome`; executors (:mod:`qcmb_async.executors`) only
implement them. Jobs and outcomes are plain picklable data (QCSchema models or dicts), so the
same contract serves threads, worker processes and remote Dask workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class ErrorType(StrEnum):
    """Error types qcmb_async itself gives a failed attempt (QCEngine's own pass through as strings).

    A :class:`StrEnum`, so ``outcome.error_type == "TimeoutError"`` and the value stored in the
    result store stay plain strings.
    """

    RANDOM = "random_error"
    """QCEngine's ``RandomError`` (its ``error_type`` string)."""
    TIMEOUT = "TimeoutError"
    """The attempt ran longer than ``timeout=``; its program was killed."""
    WORKER_DIED = "WorkerDied"
    """The worker process running the fragment died (processes executor)."""
    KILLED_WORKER = "KilledWorker"
    """Dask gave up on the task after its workers died."""
    PROGRAM_KILLED = "ProgramKilled"
    """The program process was killed by a signal (e.g. SIGKILL from the OOM killer)."""
    CANCELLED = "CancelledError"
    PROGRAM_NOT_AVAILABLE = "ProgramNotAvailable"
    RESOURCES_UNAVAILABLE = "ResourcesUnavailable"
    """No Dask worker declares the cores/memory the fragment needs."""
    """The worker has no such program (Dask workers check before running)."""
    INVARIANCE = "InvarianceError"
    """The fragment's gradient/Hessian is not invariant under rigid translation/rotation (another frame,
    another atom order, numerically broken): checked by :mod:`qcmb_async._core.invariance`, never retried."""
    UNKNOWN = "UnknownError"


#: Error types worth another attempt with ``retries=``: the same input may well succeed.
TRANSIENT_ERRORS: frozenset[str] = frozenset({
    ErrorType.RANDOM, "RandomError", ErrorType.TIMEOUT, ErrorType.WORKER_DIED, ErrorType.KILLED_WORKER,
    ErrorType.PROGRAM_KILLED,
})


def is_transient(error_type: str | None) -> bool:
    """Whether a failed attempt with this ``error_type`` may be retried."""
    return error_type in TRANSIENT_ERRORS


@dataclass(frozen=True)
class FragmentJob:
    """Everything a worker needs to run one fragment, and nothing that cannot be pickled."""

    label: str
    """QCManyBody's label, e.g. ``'["(auto)", [1], [1, 2]]'``."""
    nbody: int
    """Number of real fragments (QCManyBody's n-body level)."""
    program: str
    atomic_input: Any
    """The ``AtomicInput`` (QCSchema v2): the pydantic model, or the same as a dict."""
    task_config: dict[str, Any]
    """A QCEngine ``task_config``: ncores, memory (GiB), retries, and scratch_directory when given."""
    run_id: str = ""
    timeout: float | None = None
    """Seconds after which the program process is killed; ``None`` waits forever."""
    attempt: int = 1
    compact: bool = False
    """The scheduler takes a :class:`~qcmb_async._core.compact.CompactResult` back instead of the
    ``AtomicResult`` (it keeps only the properties); executors that ship results between processes use it."""
    result_json: bool = False
    """A :class:`~qcmb_async._core.compact.CompactResult` must carry the result's JSON (the store keeps it)."""

    @property
    def ncores(self) -> int:
        """Cores this fragment may use."""
        return int(self.task_config["ncores"])

    @property
    def memory(self) -> float:
        """Memory this fragment may use, GiB."""
        return float(self.task_config["memory"])


@dataclass
class JobOutcome:
    """What came back from one attempt at a fragment."""

    label: str
    result: Any
    """The ``AtomicResult`` (QCSchema v2) on success, or its :class:`~qcmb_async._core.compact.CompactResult`
    when the job allowed one; the ``FailedOperation`` as a dict otherwise."""
    success: bool
    start: float
    """Wall-clock (``time.time()``, or the executor's clock) when QCEngine was called, s."""
    end: float
    """When QCEngine returned, s (same clock as ``start``)."""
    host: str
    worker: str
    pid: int
    error_type: str | None = None
    """An :class:`ErrorType` or QCEngine's own error type; ``None`` on success."""
    error_message: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def wall_time(self) -> float:
        """Seconds the attempt took."""
        return self.end - self.start

    @classmethod
    def failure(cls, job: FragmentJob, error_type: str, message: str, *, start: float | None = None,
                end: float | None = None, host: str = "", worker: str = "", pid: int = 0,
                result: Any = None) -> JobOutcome:
        """A failed attempt at ``job`` (``start``/``end`` default to now)."""
        now = time.time()
        return cls(label=job.label, result=result if result is not None else {}, success=False,
                   start=now if start is None else start, end=now if end is None else end, host=host,
                   worker=worker, pid=pid, error_type=str(error_type), error_message=message)


@runtime_checkable
class Executor(Protocol):
    """Runs fragments somewhere: the one interface the scheduler uses.

    Built in: threads, processes, dask (:mod:`qcmb_async.executors`); the simulator's virtual one.
    :class:`~qcmb_async.executors.base.ReusableExecutor` gives the defaults of every attribute.
    """

    name: str
    """Short name shown in logs and ``result.extras["qcmb_async"]["executor"]``."""
    clock: Callable[[], float]
    """The clock the scheduler stamps records with (``time.time``; the simulator's is virtual)."""

    @property
    def capacity(self) -> tuple[float, float] | None:
        """``(cores, memory GiB)`` this executor offers, or ``None`` for "this machine's".

        Used only when the caller gave no ``ncores``/``memory`` (a Dask cluster's size).
        """
        ...

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
