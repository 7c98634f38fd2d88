"""Schedule stage: walk the fragments by n-body level under core and memory limits."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import structlog

from ..errors import FragmentError
from ..executors.base import Executor, FragmentJob, JobOutcome
from . import events as ev
from .inputs import RunOptions
from .logs import get_logger
from .plan import Fragment, Plan
from .resources import ResourcePool, Usage

log = get_logger()

#: Error types worth another attempt: QCEngine's ``RandomError`` (error_type
#: ``random_error``), a fragment that timed out, a worker process or Dask worker that died.
TRANSIENT_ERRORS = frozenset({"random_error", "RandomError", "TimeoutError", "WorkerDied", "KilledWorker"})
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0


@dataclass
class FragmentRecord:
    """What happened to one fragment (for tests, reports and the timeline)."""

    label: str
    level: int
    program: str
    cores: int
    memory: float
    status: str = "pending"
    """``ok``, ``failed``, or ``cached`` (read from the result store)."""
    attempts: int = 0
    start: float | None = None
    end: float | None = None
    host: str = ""
    worker: str = ""
    pid: int = 0
    error_type: str | None = None
    error_message: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    """One entry per attempt: start, end, worker, error."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScheduleOutcome:
    """Results of the schedule stage."""

    results: dict[str, Any]
    """``{label: AtomicResult}`` of every fragment that succeeded."""
    records: list[FragmentRecord]
    failures: list[FragmentError]
    usage: Usage
    started: float
    finished: float


def dispatch_order(fragments: list[Fragment]) -> list[Fragment]:
    """Level by level; inside a level the most expensive first (LPT list scheduling)."""
    return sorted(fragments, key=lambda f: (f.level, -f.cost))


def _task_config(options: RunOptions) -> dict[str, Any]:
    return {
        "ncores": options.fragment_ncores,
        "memory": options.fragment_memory,
        "scratch_directory": options.scratch_directory,
        # Retries of RandomError are ours (recorded, with backoff), not QCEngine's silent ones.
        "retries": 0,
    }


def _backoff(attempt: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


def unwrap_group(group: BaseExceptionGroup) -> BaseException:
    """The exception a user should see from a task group's exception group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                walk(sub)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, FragmentError):
            return leaf
    real = [leaf for leaf in leaves if not isinstance(leaf, anyio.get_cancelled_exc_class())]
    if len(real) == 1:
        return real[0]
    return group


async def schedule(
    plan: Plan,
    options: RunOptions,
    executor: Executor,
    *,
    run_id: str,
    store: Any = None,
    partial_result: Callable[[int, dict[str, Any]], Any] | None = None,
) -> ScheduleOutcome:
    """Run every fragment of ``plan`` on ``executor``; see docs/architecture.md.

    ``store`` (a :class:`~qcmb_async._core.store.ResultStore`) supplies finished fragments and
    receives each new result as soon as it exists. ``partial_result(n, results)`` (blocking,
    run on a thread) builds the MBE(n) result carried by :class:`~qcmb_async.events.LevelComplete`.
    """
    pool = ResourcePool(options.ncores, options.memory)
    order = dispatch_order(plan.fragments)
    task_config = _task_config(options)
    results: dict[str, Any] = {}
    failures: list[FragmentError] = []
    records = {f.label: FragmentRecord(f.label, f.level, f.program, options.fragment_ncores, options.fragment_memory)
               for f in order}
    remaining = Counter(f.level for f in order)
    per_level = dict(sorted(remaining.items()))
    top_level = max(per_level) if per_level else 0
    failed_levels: set[int] = set()
    started = time.time()
    await ev.emit(options.on_event, ev.RunStarted(run_id, len(order), per_level, options.ncores, options.memory))

    announced: list[int] = []
    announce_lock = anyio.Lock()

    async def finish_level(frag: Fragment) -> None:
        remaining[frag.level] -= 1
        if remaining[frag.level] != 0:
            return
        # LevelComplete(n) goes out in level order, once n and every lower level are done.
        async with announce_lock:
            for lv in per_level:
                if lv in announced:
                    continue
                if remaining[lv] != 0:
                    break
                announced.append(lv)
                partial = None
                if (partial_result is not None and options.on_event is not None and lv < top_level
                        and not any(f <= lv for f in failed_levels)):
                    partial = await anyio.to_thread.run_sync(partial_result, lv, dict(results))
                await ev.emit(options.on_event, ev.LevelComplete(run_id, lv, per_level[lv], per_level[lv], partial))

    if store is not None:
        cached = await anyio.to_thread.run_sync(_lookup, store, order)
        for frag in order:
            if frag.key in cached:
                results[frag.label] = cached[frag.key]
                records[frag.label].status = "cached"
        for frag in order:
            if frag.label in results:
                await ev.emit(options.on_event, ev.FragmentFinished(run_id, frag.label, frag.level, frag.program,
                                                                    0.0, "store", cached=True))
                await finish_level(frag)
        order = [f for f in order if f.label not in results]
        log.info("result store consulted", run_id=run_id, reused=len(cached), to_compute=len(order))

    async def run_one(frag: Fragment) -> None:
        rec = records[frag.label]
        cores, memory = options.fragment_ncores, options.fragment_memory
        # Each task runs in its own copy of the context, and to_thread copies it again, so
        # these fields reach every log line of this fragment, worker threads included.
        structlog.contextvars.bind_contextvars(run_id=run_id, label=frag.label, nbody=frag.level,
                                               program=frag.program, cores=cores, memory=memory)
        flog = log
        try:
            for attempt in range(1, options.retries + 2):
                job = FragmentJob(label=frag.label, level=frag.level, program=frag.program,
                                  atomic_input=frag.atomic_input, task_config=task_config, run_id=run_id,
                                  timeout=options.timeout, attempt=attempt)
                rec.attempts = attempt
                await ev.emit(options.on_event, ev.FragmentStarted(run_id, frag.label, frag.level, frag.program,
                                                                   cores, memory, attempt))
                flog.debug("fragment started", attempt=attempt)
                outcome: JobOutcome = await executor.run(job)
                rec.history.append({"attempt": attempt, "start": outcome.start, "end": outcome.end,
                                    "worker": outcome.worker, "host": outcome.host,
                                    "error_type": outcome.error_type, "error_message": outcome.error_message})
                rec.start, rec.end = outcome.start, outcome.end
                rec.host, rec.worker, rec.pid = outcome.host, outcome.worker, outcome.pid
                if outcome.success:
                    result = _atomic_result(outcome.result)
                    if store is not None:
                        # Shielded: a finished fragment is committed even if the run is being cancelled.
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(_store_put, store, frag, result, rec, run_id)
                    results[frag.label] = result
                    rec.status = "ok"
                    flog.info("fragment finished", wall_time=round(outcome.wall_time, 4), worker=outcome.worker)
                    await ev.emit(options.on_event, ev.FragmentFinished(run_id, frag.label, frag.level,
                                                                        frag.program, outcome.wall_time,
                                                                        outcome.worker))
                    return
                etype, emsg = outcome.error_type or "UnknownError", outcome.error_message or ""
                if etype in TRANSIENT_ERRORS and attempt <= options.retries:
                    delay = _backoff(attempt)
                    flog.warning("fragment retried", attempt=attempt, error_type=etype, delay=round(delay, 3))
                    await ev.emit(options.on_event, ev.FragmentRetried(run_id, frag.label, frag.level,
                                                                       frag.program, attempt, etype, emsg, delay))
                    await anyio.sleep(delay)
                    continue
                rec.status, rec.error_type, rec.error_message = "failed", etype, emsg
                failed_levels.add(frag.level)
                if store is not None:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(_store_failure, store, frag, rec, run_id)
                err = FragmentError(frag.label, frag.level, frag.program, etype, emsg, attempt, outcome.result)
                flog.error("fragment failed", attempts=attempt, error_type=etype)
                await ev.emit(options.on_event, ev.FragmentFailed(run_id, frag.label, frag.level, frag.program,
                                                                  attempt, etype, emsg))
                if options.on_error == "raise":
                    raise err
                failures.append(err)
                return
        finally:
            with anyio.CancelScope(shield=True):
                await pool.release(cores, memory)
                await finish_level(frag)

    async def dispatch(tg: Any, frags: list[Fragment]) -> None:
        for frag in frags:
            await pool.acquire(options.fragment_ncores, options.fragment_memory)
            tg.start_soon(run_one, frag, name=f"fragment {frag.label}")

    try:
        async with anyio.create_task_group() as tg:
            if options.level_barrier:
                by_level: dict[int, list[Fragment]] = {}
                for frag in order:
                    by_level.setdefault(frag.level, []).append(frag)
                for frags in by_level.values():
                    async with anyio.create_task_group() as level_tg:
                        await dispatch(level_tg, frags)
            else:
                await dispatch(tg, order)
    except BaseExceptionGroup as group:
        raise unwrap_group(group) from None
    finished = time.time()
    await ev.emit(options.on_event, ev.RunFinished(run_id, len(results), len(failures), finished - started))
    return ScheduleOutcome(results, list(records.values()), failures, pool.usage, started, finished)


def _lookup(store: Any, fragments: list[Fragment]) -> dict[str, Any]:
    return {key: _atomic_result(data) for key, data in store.get_many([f.key for f in fragments]).items()}


def _store_put(store: Any, frag: Fragment, result: Any, rec: FragmentRecord, run_id: str) -> None:
    from .store import StoreError

    last = rec.history[-1] if rec.history else {}
    wall = (last["end"] - last["start"]) if last.get("end") and last.get("start") else None
    try:
        store.put(frag.key, label=frag.label, level=frag.level, program=frag.program,
                  result_json=result.model_dump_json(), run_id=run_id, attempts=rec.history,
                  host=last.get("host", ""), worker=last.get("worker", ""), wall_time=wall)
    except StoreError as exc:
        # The result is still in memory and the run goes on; only resumability of this fragment is lost.
        log.error("result not stored", label=frag.label, reason=str(exc))


def _store_failure(store: Any, frag: Fragment, rec: FragmentRecord, run_id: str) -> None:
    from .store import StoreError

    try:
        store.record_failure(frag.key, label=frag.label, level=frag.level, program=frag.program, run_id=run_id,
                             attempts=rec.history, error_type=rec.error_type or "",
                             error_message=rec.error_message or "")
    except StoreError as exc:
        log.error("failure not recorded in the store", label=frag.label, reason=str(exc))


def _atomic_result(data: dict[str, Any]) -> Any:
    from qcelemental.models.v2 import AtomicResult

    return AtomicResult(**data)
