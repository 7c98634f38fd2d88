"""Schedule stage: the largest predicted fragment first, under core and memory limits."""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from ..errors import FragmentError
from ..executors.base import Executor, FragmentJob, JobOutcome
from . import events as ev
from .assemble import slim
from .cost import PARALLEL_FRACTION, CostModel, allot_cores, speedup
from .inputs import RunOptions
from .logs import get_logger
from .plan import Fragment, Job, Plan
from .resources import ResourcePool, Usage

log = get_logger()

#: Error types worth another attempt: QCEngine's ``RandomError`` (error_type
#: ``random_error``), a fragment that timed out, a worker process or Dask worker that died, a
#: program process killed by a signal (the OOM killer, an administrator, a node agent).
TRANSIENT_ERRORS = frozenset({"random_error", "RandomError", "TimeoutError", "WorkerDied", "KilledWorker",
                              "ProgramKilled"})
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
        # Shallow on purpose: dataclasses.asdict deep-copies every history entry, which shows
        # at tens of thousands of fragments.
        return {**self.__dict__, "history": [dict(h) for h in self.history]}


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
    not_stored: int = 0
    """Computed results the result store could not keep (disk full, I/O error): a rerun recomputes them."""


def _task_config(options: RunOptions) -> dict[str, Any]:
    config: dict[str, Any] = {
        "ncores": options.fragment_ncores,
        "memory": options.fragment_memory,
        # Retries of RandomError are ours (recorded, with backoff), not QCEngine's silent ones.
        "retries": 0,
    }
    if options.scratch_directory is not None:
        # Left out otherwise: None would override QCENGINE_SCRATCH_DIRECTORY and the node's qcengine.yaml.
        config["scratch_directory"] = options.scratch_directory
    return config


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


class ReadyQueue:
    """Fragments not yet dispatched, best first.

    ``order="cost"``: the largest predicted wall time first (longest-processing-time list
    scheduling), across levels and groups; one heap per (level, cost group) keyed by size, so
    calibration of a group's cost model re-orders the groups at no cost. ``order="fifo"``:
    QCManyBody's own order. With ``level_barrier`` only the lowest unfinished level is open.
    """

    def __init__(self, fragments: list[Fragment], model: CostModel, order: str) -> None:
        self._model = model
        self._order = order
        self._fifo: dict[int, deque[Fragment]] = {}
        self._heaps: dict[int, dict[str, list[tuple[float, int, Fragment]]]] = {}
        self._n = 0
        for seq, frag in enumerate(fragments):
            self.push(frag, seq)

    def __len__(self) -> int:
        return self._n

    def levels(self) -> list[int]:
        src = self._fifo if self._order == "fifo" else self._heaps
        return sorted(lv for lv, q in src.items() if (q if self._order == "fifo" else any(q.values())))

    def push(self, frag: Fragment, seq: int = 0) -> None:
        self._n += 1
        if self._order == "fifo":
            self._fifo.setdefault(frag.level, deque()).append(frag)
        else:
            heapq.heappush(self._heaps.setdefault(frag.level, {}).setdefault(frag.group, []), (-frag.size, seq, frag))

    def pop(self, level: int | None = None) -> Fragment | None:
        """The next fragment (of ``level`` only, if given), or ``None``."""
        if self._order == "fifo":
            queues = [self._fifo.get(level, deque())] if level is not None else [
                self._fifo[lv] for lv in sorted(self._fifo)]
            for q in queues:
                if q:
                    self._n -= 1
                    return q.popleft()
            return None
        levels = [level] if level is not None else list(self._heaps)
        best: tuple[float, list[tuple[float, int, Fragment]]] | None = None
        for lv in levels:
            for group, heap in self._heaps.get(lv, {}).items():
                if heap:
                    est = self._model.estimate(group, heap[0][2].size)
                    if best is None or est > best[0]:
                        best = (est, heap)
        if best is None:
            return None
        self._n -= 1
        return heapq.heappop(best[1])[2]


def allotment(plan: Plan, options: RunOptions, model: CostModel) -> dict[str, int]:
    """Cores per fragment label: the caller's ``fragment_ncores``, or the cost model's choice."""
    if not options.auto_cores or options.ncores <= 1 or not plan.fragments or len(plan.fragments) > 4096:
        return {}
    durations = [model.estimate(f.group, f.size) for f in plan.fragments]
    fractions = [PARALLEL_FRACTION.get(f.program, 0.0) for f in plan.fragments]
    # A fragment never takes more than its per-core memory share allows.
    per_core = options.memory / options.ncores
    max_cores = options.ncores if options.auto_memory else max(1, int(options.memory // max(per_core, 1e-9)))
    cores = allot_cores(durations, options.ncores, fractions, max_cores=max_cores)
    return {f.label: c for f, c in zip(plan.fragments, cores, strict=True) if c > 1}


async def schedule(
    plan: Plan,
    options: RunOptions,
    executor: Executor,
    *,
    run_id: str,
    store: Any = None,
    partial_result: Callable[[int, dict[str, Any]], Any] | None = None,
    cost_model: CostModel | None = None,
) -> ScheduleOutcome:
    """Run every fragment of ``plan`` on ``executor``; see docs/architecture.md.

    One dispatcher task takes the best ready fragment (see :class:`ReadyQueue`) whenever its
    cores and memory are free, so no core idles while a fragment that fits is waiting. A
    feeder task builds fragments (:meth:`Plan.materialise`, off the event loop) a little ahead
    of dispatch and looks them up in ``store`` (a
    :class:`~qcmb_async._core.store.ResultStore`), which receives each new result as soon as it
    exists. ``partial_result(n, results)`` (blocking, run on a thread) builds the MBE(n) result
    carried by :class:`~qcmb_async.events.LevelComplete`. The executor may carry a ``clock``
    (the simulator's virtual one); otherwise wall-clock time is used.
    """
    clock: Callable[[], float] = getattr(executor, "clock", time.time)
    model = cost_model or CostModel()
    for frag in plan.fragments:
        model.set_exponent(frag.group, _exponent_of(frag))
    pool = ResourcePool(options.ncores, options.memory)
    queue = ReadyQueue(plan.fragments, model, options.order)
    multi = allotment(plan, options, model)
    if multi:
        log.info("fragments given more than one core", run_id=run_id, fragments=len(multi),
                 cores=sorted(set(multi.values())))
    per_core_memory = options.fragment_memory / options.fragment_ncores
    on_event = options.on_event
    results: dict[str, Any] = {}
    failures: list[FragmentError] = []
    records: dict[str, FragmentRecord] = {}
    remaining = Counter(f.level for f in plan.fragments)
    per_level = dict(sorted(remaining.items()))
    top_level = max(per_level) if per_level else 0
    failed_levels: set[int] = set()
    started = clock()
    reused = 0
    unstored: list[str] = []  # labels of results the store refused; logged once, counted in the summary
    await ev.emit(on_event, ev.RunStarted(run_id, len(plan.fragments), per_level, options.ncores, options.memory))

    announced: list[int] = []
    announce_lock = anyio.Lock()
    level_done = anyio.Event()

    def needs(frag: Fragment) -> tuple[int, float]:
        if not options.auto_cores:
            return options.fragment_ncores, options.fragment_memory
        cores = multi.get(frag.label, 1)
        memory = cores * per_core_memory if options.auto_memory else options.fragment_memory
        return cores, min(memory, options.memory)

    async def finish_level(frag: Fragment) -> None:
        nonlocal level_done
        remaining[frag.level] -= 1
        if remaining[frag.level] != 0:
            return
        level_done.set()
        level_done = anyio.Event()
        # LevelComplete(n) goes out in level order, once n and every lower level are done.
        async with announce_lock:
            for lv in per_level:
                if lv in announced:
                    continue
                if remaining[lv] != 0:
                    break
                announced.append(lv)
                partial = None
                if (partial_result is not None and on_event is not None and lv < top_level
                        and not any(f <= lv for f in failed_levels)):
                    partial = await anyio.to_thread.run_sync(partial_result, lv, dict(results))
                await ev.emit(on_event, ev.LevelComplete(run_id, lv, per_level[lv], per_level[lv], partial))

    async def run_one(frag: Fragment, job: Job, cores: int, memory: float) -> None:
        rec = records[frag.label]
        task_config = {**_task_config(options), "ncores": cores, "memory": memory}
        # Each task runs in its own copy of the context, and to_thread copies it again, so
        # these fields reach every log line of this fragment, worker threads included.
        structlog.contextvars.bind_contextvars(run_id=run_id, label=frag.label, nbody=frag.level,
                                               program=frag.program, cores=cores, memory=memory)
        try:
            for attempt in range(1, options.retries + 2):
                fjob = FragmentJob(label=frag.label, level=frag.level, program=frag.program,
                                   atomic_input=job.atomic_input, task_config=task_config, run_id=run_id,
                                   timeout=options.timeout, attempt=attempt)
                rec.attempts = attempt
                if on_event is not None:
                    await ev.emit(on_event, ev.FragmentStarted(run_id, frag.label, frag.level, frag.program,
                                                               cores, memory, attempt))
                outcome: JobOutcome = await executor.run(fjob)
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
                            problem = await anyio.to_thread.run_sync(_store_put, store, frag, job.key, result, rec,
                                                                     run_id)
                        if problem is not None:
                            unstored.append(frag.label)
                            if len(unstored) == 1:
                                # Once: a full disk would otherwise log the same line for every fragment.
                                log.error("result not stored; the run goes on, later results that cannot be "
                                          "stored are counted in the summary, not logged", reason=problem)
                    results[frag.label] = slim(plan, result)
                    rec.status = "ok"
                    # Calibrate in one-core seconds, whatever this fragment was given.
                    model.observe(frag.group, frag.size,
                                  outcome.wall_time * speedup(cores, PARALLEL_FRACTION.get(frag.program, 0.0)))
                    log.info("fragment finished", wall_time=round(outcome.wall_time, 4), worker=outcome.worker)
                    if on_event is not None:
                        await ev.emit(on_event, ev.FragmentFinished(run_id, frag.label, frag.level, frag.program,
                                                                    outcome.wall_time, outcome.worker))
                    return
                etype, emsg = outcome.error_type or "UnknownError", outcome.error_message or ""
                if etype in TRANSIENT_ERRORS and attempt <= options.retries:
                    delay = _backoff(attempt)
                    log.warning("fragment retried", attempt=attempt, error_type=etype, delay=round(delay, 3))
                    await ev.emit(on_event, ev.FragmentRetried(run_id, frag.label, frag.level, frag.program,
                                                               attempt, etype, emsg, delay))
                    await anyio.sleep(delay)
                    continue
                rec.status, rec.error_type, rec.error_message = "failed", etype, emsg
                failed_levels.add(frag.level)
                if store is not None:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(_store_failure, store, frag, job.key, rec, run_id)
                err = FragmentError(frag.label, frag.level, frag.program, etype, emsg, attempt, outcome.result)
                log.error("fragment failed", attempts=attempt, error_type=etype)
                await ev.emit(on_event, ev.FragmentFailed(run_id, frag.label, frag.level, frag.program,
                                                          attempt, etype, emsg))
                if options.on_error == "raise":
                    raise err
                failures.append(err)
                return
        finally:
            with anyio.CancelScope(shield=True):
                pool.give(cores, memory)
                await finish_level(frag)

    send, receive = anyio.create_memory_object_stream[tuple[Fragment, Job, Any]](
        max_buffer_size=max(8, 2 * options.slots))

    async def feed() -> None:
        """Build fragments best first, a little ahead of dispatch, and look them up in the store."""
        batch = 1  # the first fragment starts as soon as it is built
        async with send:
            while len(queue):
                level = None
                if options.level_barrier:
                    # Only the lowest level with work left is open; wait for it to drain first.
                    level = min(lv for lv, n in remaining.items() if n > 0)
                    if level not in queue.levels():
                        await level_done.wait()
                        continue
                frags = []
                while len(frags) < batch and (frag := queue.pop(level)) is not None:
                    frags.append(frag)
                if not frags:
                    await level_done.wait()
                    continue
                if plan.inline:
                    built = _build(plan, store, frags)
                else:
                    built = await anyio.to_thread.run_sync(_build, plan, store, frags)
                try:
                    for item in built:
                        await send.send(item)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the dispatcher stopped (failure or cancellation): nothing more to feed
                batch = min(batch * 2, 64)

    async def dispatch(tg: Any) -> None:
        nonlocal reused
        async with receive:
            async for frag, job, cached in receive:
                cores, memory = needs(frag)
                records[frag.label] = FragmentRecord(frag.label, frag.level, frag.program, cores, memory)
                if cached is not None:
                    results[frag.label] = slim(plan, cached)
                    records[frag.label].status = "cached"
                    reused += 1
                    await ev.emit(on_event, ev.FragmentFinished(run_id, frag.label, frag.level, frag.program,
                                                                0.0, "store", cached=True))
                    await finish_level(frag)
                    continue
                while not pool.take(cores, memory):
                    await pool.wait_release()
                tg.start_soon(run_one, frag, job, cores, memory, name=f"fragment {frag.label}")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed, name="qcmb_async feeder")
            await dispatch(tg)
    except BaseExceptionGroup as group:
        raise unwrap_group(group) from None
    finished = clock()
    if store is not None:
        log.info("result store consulted", run_id=run_id, reused=reused, computed=len(results) - reused)
    if unstored:
        log.warning("results not in the store: a rerun would recompute them", run_id=run_id,
                    not_stored=len(unstored), computed=len(results) - reused)
    await ev.emit(on_event, ev.RunFinished(run_id, len(results), len(failures), finished - started))
    ordered = [records[f.label] for f in plan.fragments if f.label in records]
    return ScheduleOutcome(results, ordered, failures, pool.usage, started, finished, not_stored=len(unstored))


def _exponent_of(frag: Fragment) -> float:
    return math.log(frag.cost) / math.log(frag.size) if frag.size > 1 and frag.cost > 1 else 3.5


def _build(plan: Plan, store: Any, frags: list[Fragment]) -> list[tuple[Fragment, Job, Any]]:
    jobs = [plan.materialise(f) for f in frags]
    cached: dict[str, Any] = {}
    if store is not None:
        cached = {key: _atomic_result(data) for key, data in store.get_many([j.key for j in jobs]).items()}
    return [(f, j, cached.get(j.key)) for f, j in zip(frags, jobs, strict=True)]


def _store_put(store: Any, frag: Fragment, key: str, result: Any, rec: FragmentRecord, run_id: str) -> str | None:
    """Commit one result; ``None``, or why it could not be stored (the caller logs and counts)."""
    from .store import StoreError

    last = rec.history[-1] if rec.history else {}
    wall = (last["end"] - last["start"]) if last.get("end") and last.get("start") else None
    try:
        store.put(key, label=frag.label, level=frag.level, program=frag.program,
                  result_json=result.model_dump_json(), run_id=run_id, attempts=rec.history,
                  host=last.get("host", ""), worker=last.get("worker", ""), wall_time=wall)
    except StoreError as exc:
        # The result is still in memory and the run goes on; only resumability of this fragment is lost.
        return f"fragment {frag.label}: {exc}"
    return None


def _store_failure(store: Any, frag: Fragment, key: str, rec: FragmentRecord, run_id: str) -> None:
    from .store import StoreError

    try:
        store.record_failure(key, label=frag.label, level=frag.level, program=frag.program, run_id=run_id,
                             attempts=rec.history, error_type=rec.error_type or "",
                             error_message=rec.error_message or "")
    except StoreError as exc:
        log.error("failure not recorded in the store", label=frag.label, reason=str(exc))


def _atomic_result(data: Any) -> Any:
    from qcelemental.models.v2 import AtomicResult

    return data if isinstance(data, AtomicResult) else AtomicResult(**data)
