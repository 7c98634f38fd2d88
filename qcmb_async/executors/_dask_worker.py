"""The half of the Dask executor that runs on the Dask workers (pickled by reference: keep it importable).

Each worker process prepares itself once (harnesses, QCEngine seams and priming), checks a
fragment's program before running it, runs fragments (one, or a batch) through
:func:`~qcmb_async._qcengine.worker.execute_job`, and kills the programs of fragments the
client cancels.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import socket
import threading
import time
from typing import Any

from .._core.compact import CompactResult
from .._core.contract import ErrorType, FragmentJob, JobOutcome

_worker_lock = threading.Lock()
_running: dict[str, Any] = {}
"""Task key -> FragmentContext of fragments running in this worker process."""
_killed: set[str] = set()
"""Keys killed before they started here (so they never start)."""
_found: set[str] = set()


class _Gate:
    """Cores and memory of one worker without declared resources: its threads and its memory limit.

    Every fragment takes its cores and memory (GiB) here before it starts and gives them back after, first
    come first served (a waiting many-core fragment is not overtaken), so the fragments on a worker never
    use more than ``nthreads`` cores and ``memory_limit`` GiB together, whatever Dask puts on its threads.
    """

    def __init__(self, cores: float, memory: float) -> None:
        self.cores, self.memory = cores, memory
        self._free_cores, self._free_memory = cores, memory
        self._cond = threading.Condition()
        self._queue: list[object] = []

    def fits(self, cores: float, memory: float) -> bool:
        return cores <= self.cores and memory <= self.memory + 1e-6

    def take(self, cores: float, memory: float) -> None:
        token = object()
        with self._cond:
            self._queue.append(token)
            while self._queue[0] is not token or cores > self._free_cores or memory > self._free_memory + 1e-6:
                self._cond.wait()
            self._queue.pop(0)
            self._free_cores -= cores
            self._free_memory -= memory
            self._cond.notify_all()

    def give(self, cores: float, memory: float) -> None:
        with self._cond:
            self._free_cores += cores
            self._free_memory += memory
            self._cond.notify_all()


_gates: dict[str, _Gate] = {}
"""Worker address -> its gate (several workers may share a process: LocalCluster(processes=False))."""


def _gate(worker: Any) -> _Gate:
    with _worker_lock:
        gate = _gates.get(worker.address)
        if gate is None:
            limit = float(getattr(getattr(worker, "memory_manager", None), "memory_limit", None) or 0) / 1024**3
            threads = float(getattr(getattr(worker, "state", None), "nthreads", None) or worker.nthreads)
            gate = _gates[worker.address] = _Gate(threads, limit if limit > 0 else _host_memory())
        return gate


def _host_memory() -> float:
    """``client.run`` target: the GiB a worker without a memory limit offers (a safe share of its host's)."""
    from .._core.resources import default_memory

    return float(default_memory())


def _prepare_dask_worker() -> int:
    """``client.run`` target: harnesses, QCEngine seams and priming, once per worker process."""
    from .._qcengine.worker import prepare_worker

    prepare_worker()
    return os.getpid()


def _kill_on_worker(keys: list[str]) -> int:
    """``client.run`` target: kill the program processes of the fragments ``keys`` in this worker."""
    killed = 0
    with _worker_lock:
        contexts = [_running[k] for k in keys if k in _running]
        if len(_killed) > 10_000:  # keys of tasks that never came here; keep the set bounded
            _killed.clear()
        _killed.update(k for k in keys if k not in _running)
    for ctx in contexts:
        killed += ctx.kill_processes()
    return killed


def _program_found(program: str) -> bool:
    if program in _found:
        return True
    import qcengine

    try:
        found = bool(qcengine.get_program(program, check=False).found())
    except Exception:
        found = False
    if found:
        _found.add(program)
    return found


class _InputJson(str):
    """A QCSchema v2 ``AtomicInput`` crossing to the worker as its JSON text.

    Pickling the model walks its fields and arrays on both sides (about 0.12 ms to pickle, 0.24 ms to unpickle a
    water tetramer's); its JSON costs 0.06 ms to make here and 0.09 ms to validate there, and validates back to an
    equal model (JSON keeps every float exactly).
    """

    __slots__ = ()


def _as_sent(job: FragmentJob) -> FragmentJob:
    """``job`` with its ``AtomicInput`` model as :class:`_InputJson` (other inputs as they are)."""
    dump = getattr(job.atomic_input, "model_dump_json", None)
    if dump is None or type(job.atomic_input).__name__ != "AtomicInput":
        return job
    return dataclasses.replace(job, atomic_input=_InputJson(dump()))


def _as_received(job: FragmentJob) -> FragmentJob:
    """The job as :func:`_as_sent` had it: the ``AtomicInput`` model again."""
    if not isinstance(job.atomic_input, _InputJson):
        return job
    from qcelemental.models.v2 import AtomicInput

    return dataclasses.replace(job, atomic_input=AtomicInput.model_validate_json(str(job.atomic_input)))


def _run_batch_on_worker(payload: bytes, keys: list[str], batch: str, gated: bool = False,
                         stream: str | None = None, interval: float = 0.25) -> bytes:
    """The Dask task of a batch: its fragments one after the other, each with its own key and timeout.

    ``payload`` is the pickled list of :class:`FragmentJob`; the outcomes come back pickled too, so Dask
    ships two byte strings instead of walking and serialising the QCSchema models itself. ``gated``: the worker
    declares no resources, so each fragment takes its cores and memory from the worker's :class:`_Gate`.

    ``stream`` (a Dask event topic the client subscribes to): outcomes are also sent back while the batch runs,
    whenever ``interval`` seconds passed since the last send (so a fragment that takes that long is sent as soon
    as it is done), as one event ``{"batch": batch, "outcomes": pickled [(index, JobOutcome), ...]}`` on the
    topic ``stream``, and ``{"batch": batch, "sent": [index, ...]}`` on the topic ``batch``. The scheduler keeps
    the latter: when this worker dies and Dask runs the task again elsewhere, the new run reads which fragments
    were already sent and skips them. The returned list holds
    ``None`` at the index of every fragment sent (or skipped) that way.
    """
    jobs: list[FragmentJob] = pickle.loads(payload)
    outcomes: list[JobOutcome | None] = [None] * len(jobs)
    sent = _sent_before(batch) if stream is not None else set()
    unsent: list[tuple[int, JobOutcome]] = []
    last = time.monotonic()
    for i, (job, key) in enumerate(zip(jobs, keys, strict=True)):
        if i in sent:
            continue
        outcome = _run_on_worker(_as_received(job), key, gated)
        outcome.extras = {**outcome.extras, "dask_batch": batch, "batch_index": i, "batch_size": len(jobs)}
        outcomes[i] = outcome
        if stream is None or i == len(jobs) - 1:
            continue  # the last one goes back with the task's result anyway
        unsent.append((i, outcome))
        now = time.monotonic()
        if now - last >= interval:
            _send(stream, batch, unsent)
            for j, _ in unsent:
                outcomes[j] = None
            unsent, last = [], now
    return pickle.dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL)


def _send(stream: str, batch: str, outcomes: list[tuple[int, JobOutcome]]) -> None:
    """Publish finished outcomes of ``batch`` (see :func:`_run_batch_on_worker`); never waits for the network."""
    from distributed import get_worker

    worker = get_worker()
    worker.log_event(stream, {"batch": batch, "outcomes": pickle.dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL)})
    # The scheduler keeps every topic's events (up to ``distributed.admin.low-level-log-length`` each) and
    # there is one topic per batch: it gets only the indices a rerun must skip, not the results again
    # (a run of 679,000 fragments would have left every streamed result in the scheduler's memory).
    worker.log_event(batch, {"batch": batch, "sent": [i for i, _ in outcomes]})


def _sent_before(batch: str) -> set[int]:
    """Indices of the fragments an earlier run of task ``batch`` already sent back (asked of the scheduler)."""
    from distributed import get_worker
    from distributed.utils import sync

    worker = get_worker()
    events = sync(worker.loop, worker.scheduler.events, topic=batch)
    sent: set[int] = set()
    for _, msg in events:
        if isinstance(msg, dict) and msg.get("batch") == batch:
            sent.update(int(i) for i in msg.get("sent", ()))
    return sent


def _run_on_worker(job: FragmentJob, key: str, gated: bool = False) -> JobOutcome:
    """The Dask task: check the program, run :func:`execute_job` under a timeout watchdog, tag the worker.

    ``gated``: first take the fragment's cores and memory from the worker's :class:`_Gate` (workers that
    declare no resources), give them back after.
    """
    if not gated:
        return _run_here(job, key)
    from distributed import get_worker

    worker = get_worker()
    gate = _gate(worker)
    if not gate.fits(job.ncores, job.memory):
        outcome = _failed(job, ErrorType.RESOURCES_UNAVAILABLE,
                          f"fragment {job.label} needs {job.ncores} cores and {job.memory:g} GiB; Dask worker "
                          f"{worker.address} has {gate.cores:g} threads and {gate.memory:g} GiB")
        outcome.host, outcome.worker, outcome.pid = socket.gethostname(), worker.address, os.getpid()
        return outcome
    gate.take(job.ncores, job.memory)
    try:
        return _run_here(job, key)
    finally:
        gate.give(job.ncores, job.memory)


def _run_here(job: FragmentJob, key: str) -> JobOutcome:
    from distributed import get_worker

    from .._qcengine.seams import FRAGMENT, FragmentContext
    from .._qcengine.worker import execute_job, prepare_worker
    from ._dask_scratch import use_worker_scratch
    from .hpc import job_id

    worker = get_worker()
    address, wname = worker.address, str(worker.name)
    extras = {"dask_worker": address, "dask_worker_name": wname, "dask_key": key}
    batch_job = job_id()
    if batch_job:
        extras["batch_job"] = batch_job
    prepare_worker()
    if not _program_found(job.program):
        outcome = _failed(
            job, ErrorType.PROGRAM_NOT_AVAILABLE,
            f"program {job.program!r} is not available on Dask worker {address} (name {wname}, host "
            f"{socket.gethostname()}{', ' + batch_job if batch_job else ''}): install it there "
            "(on the PATH of the `dask worker` process), or keep "
            f"{job.program} fragments off workers without it: declare it as a resource where it is installed "
            f'(`dask worker ... --resources "cores=16,memory=64,{job.program}=16"`) and use '
            "DaskExecutor(..., program_resources=True)",
        )
        outcome.host, outcome.worker, outcome.pid, outcome.extras = socket.gethostname(), address, os.getpid(), extras
        return outcome
    ctx = FragmentContext(label=job.label, task_config=dict(job.task_config))
    with _worker_lock:
        if key in _killed:
            _killed.discard(key)
            ctx.kill_processes()  # cancelled before it started: execute_job will not start a program
        _running[key] = ctx
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        ctx.kill_processes()

    timer = threading.Timer(job.timeout, expire) if job.timeout is not None else None
    token = FRAGMENT.set(ctx)
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        # Temporary files go to the worker's own directory, removed when the worker closes: a cancelled
        # fragment (its thread runs on) or a killed job leaves none in the system temporary directory.
        use_worker_scratch(job.program, ctx.task_config, ctx.env)
        outcome = execute_job(job)
    finally:
        if timer is not None:
            timer.cancel()
        FRAGMENT.reset(token)
        with _worker_lock:
            _running.pop(key, None)
    if expired.is_set() and not outcome.success:
        outcome.error_type = ErrorType.TIMEOUT
        outcome.error_message = (f"fragment {job.label} exceeded its timeout of {job.timeout} s on Dask worker "
                                 f"{address}; program killed")
    if outcome.success and job.compact:
        # Only what the coordinator keeps travels back (the JSON too when its store keeps the result).
        outcome.result = CompactResult.of(outcome.result, with_json=job.result_json)
    extras["thread"] = outcome.worker
    outcome.worker = address
    outcome.extras = {**outcome.extras, **extras}
    return outcome


def _failed(job: FragmentJob, error_type: str, message: str, start: float | None = None) -> JobOutcome:
    return JobOutcome.failure(job, error_type, message, start=start, worker="dask")
