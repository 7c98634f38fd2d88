"""Schedule stage: the largest predicted fragment first, under core and memory limits.

:class:`Scheduler` runs one plan on one entered :class:`~qcmb_async._core.contract.Executor`.
Its methods are the steps a fragment goes through: the *feeder* (:meth:`Scheduler._feed`)
builds fragments best first a little ahead of dispatch and looks them up in the result store;
the *dispatcher* (:meth:`Scheduler._dispatch`) starts each when its cores and memory are free;
:meth:`Scheduler._run_fragment` runs its attempts, :meth:`Scheduler._record_attempt` notes each
one, :class:`RetryPolicy` decides whether to try again, and :meth:`Scheduler._finish_level`
announces MBE(n) once level n is done. See docs/architecture.md.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import anyio
import structlog

from .._logs import _STDLIB_NAME, get_logger
from ..errors import FragmentError
from . import events as ev
from . import invariance
from .compact import CompactResult
from .contract import ErrorType, Executor, FragmentJob, JobOutcome
from .cost import CostModel, allotment, parallel_fraction
from .options import RunOptions
from .outcome import (
    FragmentRecord,
    FragmentStore,
    RetryPolicy,
    ScheduleOutcome,
    _atomic_result,
    _build,
    _store_failure,
    _store_put,
    _store_put_batch,
    unwrap_group,
)
from .plan import Fragment, Job, Plan
from .ready import ReadyQueue
from .resources import ResourcePool

log = get_logger()
_STDLIB_LOG = logging.getLogger(_STDLIB_NAME)
"""The stdlib logger ``log`` forwards to: per-fragment lines are skipped at its level check (a disabled level)."""

class StoreFailures:
    """Store writes that failed in one run, or in one job of many runs (a driver: optimize, frequencies, ASE).

    A full disk fails every write alike: the first failure is logged (:meth:`report`), later ones only counted.
    """

    def __init__(self, job: bool = False) -> None:
        self.job = job
        self.count = 0
        self.opened = False
        """The store opened once in this job (a later failure to open it is a full disk, not a wrong path)."""

    def report(self, event: str, **fields: Any) -> None:
        """Log ``event`` as an error if it is the first store failure here; count it either way."""
        self.count += 1
        if self.count == 1:
            log.error(event, **fields)


#: Set around a run (``run_manybody``) or a job of many runs (the drivers) by whoever owns its store writes.
STORE_FAILURES: ContextVar[StoreFailures | None] = ContextVar("qcmb_async_store_failures", default=None)



class Scheduler:
    """Runs every fragment of ``plan`` on an entered ``executor``; :meth:`run` returns the outcome.

    One dispatcher takes the best ready fragment (see :class:`~qcmb_async._core.ready.ReadyQueue`)
    whenever its cores and memory are free, so no core idles while a fragment that fits waits.
    ``store`` (a :class:`FragmentStore`) is consulted before a fragment runs and receives each
    new result as soon as it exists. ``partial_result(n, results)`` (blocking, run on a thread)
    builds the MBE(n) result carried by :class:`~qcmb_async.events.LevelComplete`. ``keep(result)``
    is what of each ``AtomicResult`` is kept in memory for assembly (default: all of it). ``compact=True``
    says ``keep`` keeps only the properties (:func:`~qcmb_async._core.compact.component_properties`), so
    executors may send a :class:`~qcmb_async._core.compact.CompactResult` back instead of the whole result.
    """

    def __init__(self, plan: Plan, options: RunOptions, executor: Executor, *, run_id: str,
                 store: FragmentStore | None = None,
                 partial_result: Callable[[int, dict[str, Any]], Any] | None = None,
                 cost_model: CostModel | None = None, keep: Callable[[Any], Any] | None = None,
                 compact: bool = False) -> None:
        self.plan, self.options, self.executor, self.run_id = plan, options, executor, run_id
        self.keep: Callable[[Any], Any] = keep or (lambda result: result)
        self.compact = compact
        self.store = store
        self.partial_result = partial_result
        self.clock: Callable[[], float] = executor.clock
        self.model = cost_model or CostModel()
        for frag in plan.fragments:
            self.model.set_exponent(frag.group, _exponent_of(frag))
            self.model.set_parallel_fraction(frag.group, parallel_fraction(frag.program))
        self.retry = RetryPolicy(options.retries)
        self._task_config = _task_config(options)
        self.pool = ResourcePool(options.ncores, options.memory)
        energy = plan.screen.spec.energy if plan.screen is not None else {}
        # Energy screening: results of levels below the highest threshold decide what runs next.
        self.queue = ReadyQueue(plan.fragments, self.model, options.order,
                                prerequisites=max(energy) if energy else None)
        self.multi = allotment(plan.fragments, self.model, ncores=options.ncores, memory=options.memory,
                               auto_memory=options.auto_memory,
                               max_cores=options.auto_max_ncores) if options.auto_cores else {}
        self.results: dict[str, Any] = {}
        self.failures: list[FragmentError] = []
        self.records: dict[str, FragmentRecord] = {}
        self._shared: dict[tuple[str, Any], Any] = {}
        """One copy of each worker name, host name and pid the records hold (see :meth:`_record_attempt`)."""
        self._needs: dict[int, tuple[int, float]] = {}
        """:meth:`needs` per core count (one shared ``(cores, memory)`` for all fragments of a size)."""
        self.remaining = Counter(f.level for f in plan.fragments)
        self.screen = plan.screen if plan.screen is not None and plan.screen.spec.energy else None
        """Energy screening: fragments are released as decisions land (the ready queue grows)."""
        if self.screen is not None:
            for lv in range(1, self.screen.max_nbody + 1):
                self.remaining.setdefault(lv, 0)
        self.per_level = dict(sorted(self.remaining.items()))
        self.inflight = 0
        """Fragments popped from the ready queue and not finished yet (their results may release more)."""
        self._seq = len(plan.fragments)
        # How far the feeder builds ahead of dispatch. Under energy screening, fragments released
        # later are often larger and must be able to overtake: build only about one round ahead.
        self._lookahead = max(1, options.slots) if self.screen is not None else max(8, 2 * options.slots)
        self._batch_cap = max(1, options.slots) if self.screen is not None else 64
        self.failed_levels: set[int] = set()
        self.reused = 0
        self.unstored = 0
        self._store_failures = StoreFailures()
        """Results computed but not committed to the store (a rerun would compute them again)."""
        self._announced: list[int] = []
        self._announce_lock = anyio.Lock()
        self._work_send, self._work_receive = anyio.create_memory_object_stream[tuple[Fragment, Job, int, float]](
            max_buffer_size=math.inf)
        """Fragments handed to runners (:meth:`_hand_over`); never more waiting than runners idle."""
        self._idle = 0
        """Runners waiting for a fragment and not yet reserved by the dispatcher."""
        self._store_writes = _StoreBatch(store, run_id) if store is not None else None
        self._changed = anyio.Event()
        """Set whenever a fragment finishes (or new fragments are released); the feeder makes a fresh one
        right before it waits (no checkpoint in between), so a finishing fragment creates no event."""

    async def run(self) -> ScheduleOutcome:
        """Run the plan; raises :class:`FragmentError` first failure when ``on_error="raise"``."""
        options, on_event = self.options, self.options.on_event
        if self.multi:
            log.info("fragments given more than one core", run_id=self.run_id, fragments=len(self.multi),
                     cores=sorted(set(self.multi.values())))
        started = self.clock()
        await ev.emit(on_event, ev.RunStarted(self.run_id, len(self.plan.fragments), self.per_level,
                                              options.ncores, options.memory))
        send, receive = anyio.create_memory_object_stream[tuple[Fragment, Job, Any]](
            max_buffer_size=self._lookahead)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._feed, send, name="qcmb_async feeder")
                await self._dispatch(receive, tg)
        except BaseExceptionGroup as group:
            raise unwrap_group(group) from None
        finished = self.clock()
        if self.store is not None:
            log.info("result store consulted", run_id=self.run_id, reused=self.reused,
                     computed=len(self.results) - self.reused)
        failures = STORE_FAILURES.get()
        if self.unstored and not (failures is not None and failures.job):  # not once per run of a job
            log.warning("results not in the store: a rerun would recompute them", run_id=self.run_id,
                        not_stored=self.unstored, computed=len(self.results) - self.reused)
        await ev.emit(on_event, ev.RunFinished(self.run_id, len(self.results), len(self.failures),
                                               finished - started))
        ordered = [self.records[f.label] for f in self.plan.fragments if f.label in self.records]
        outcome = ScheduleOutcome(self.results, ordered, self.failures, self.pool.usage, started, finished,
                                  not_stored=self.unstored)
        # The outcome owns them now. A scheduler kept alive by a reference cycle until the next garbage collection
        # must not keep the run's records and results alive with it (hundreds of MB at 679,120 fragments).
        self.records, self.results = {}, {}
        return outcome

    def needs(self, frag: Fragment) -> tuple[int, float]:
        """``(cores, memory GiB)`` ``frag`` runs with."""
        options = self.options
        if not options.auto_cores:
            return options.fragment_ncores, options.fragment_memory
        cores = self.multi.get(frag.label, 1)
        sized = self._needs.get(cores)
        if sized is None:
            per_core = options.fragment_memory / options.fragment_ncores
            memory = cores * per_core if options.auto_memory else options.fragment_memory
            if options.max_fragment_memory is not None:
                memory = min(memory, options.max_fragment_memory)
            sized = self._needs[cores] = (cores, min(memory, options.memory))
        return sized

    async def _feed(self, send: Any) -> None:
        """Build fragments best first, a little ahead of dispatch, and look them up in the store."""
        batch = 1  # the first fragment starts as soon as it is built
        async with send:
            while len(self.queue) or (self.screen is not None and self.inflight):
                if not len(self.queue):
                    # Energy screening: fragments in flight may release more when they finish.
                    await self._wait_changed()
                    continue
                level = None
                if self.options.level_barrier:
                    # Only the lowest level with work left is open; wait for it to drain first.
                    level = min((lv for lv, n in self.remaining.items() if n > 0), default=None)
                    if level is not None and level not in self.queue.levels():
                        await self._wait_changed()
                        continue
                frags = []
                while len(frags) < batch and (frag := self.queue.pop(level)) is not None:
                    frags.append(frag)
                if not frags:
                    await self._wait_changed()
                    continue
                self.inflight += len(frags)
                if self.plan.inline:
                    built = _build(self.plan, self.store, frags)
                else:
                    built = await anyio.to_thread.run_sync(_build, self.plan, self.store, frags)
                try:
                    for item in built:
                        try:
                            send.send_nowait(item)  # no checkpoint per fragment; the build above was one
                        except anyio.WouldBlock:
                            await send.send(item)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the dispatcher stopped (failure or cancellation): nothing more to feed
                batch = min(batch * 2, self._batch_cap)

    async def _wait_changed(self) -> None:
        """Wait until a fragment finishes or fragments are released (after the caller's checks)."""
        self._changed = anyio.Event()
        await self._changed.wait()

    def _hand_over(self, frag: Fragment, job: Job, cores: int, memory: float, tg: Any) -> None:
        """Give a fragment whose cores and memory are taken to an idle runner, or start a new runner.

        Runners are long-lived tasks, one per fragment running at once: starting a task per fragment cost
        more than the rest of the scheduler's path (anyio's spawn, ~0.07 ms). A runner is reserved here,
        before the send, so every fragment sent has a runner that will take it at once.
        """
        if self._idle:
            self._idle -= 1
        else:
            # Cloned here: the dispatcher may have closed its own end before the new task starts.
            tg.start_soon(self._runner, self._work_receive.clone(), name="qcmb_async fragment runner")
        self._work_send.send_nowait((frag, job, cores, memory))

    async def _runner(self, receive: Any) -> None:
        """Run fragments handed over by the dispatcher, one after the other, until it has no more."""
        async with receive:
            while True:
                try:
                    frag, job, cores, memory = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        frag, job, cores, memory = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                await self._run_fragment(frag, job, cores, memory)
                self._idle += 1

    async def _dispatch(self, receive: Any, tg: Any) -> None:
        """Start each built fragment as soon as its cores and memory are free."""
        async with receive, self._work_send, self._work_receive:
            while True:
                try:
                    # No checkpoint per fragment when one is ready: starting it (or waiting for cores) yields.
                    frag, job, cached = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        frag, job, cached = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                cores, memory = self.needs(frag)
                self.records[frag.label] = FragmentRecord(frag.label, frag.level, frag.program, cores, memory)
                if cached is not None and (problem := invariance.check(frag.program, job.atomic_input,
                                                                         cached)) is not None:
                    # A stored result computed before the guard (or by a faulty harness) is not reused.
                    log.warning("stored result not reused: it fails the invariance check", label=frag.label,
                                reason=problem)
                    cached = None
                if cached is not None:
                    await self._reuse(frag, cached)
                    continue
                while not self.pool.take(cores, memory):
                    await self.pool.wait_release()
                self._hand_over(frag, job, cores, memory, tg)

    async def _reuse(self, frag: Fragment, cached: Any) -> None:
        """Take a fragment's result from the store instead of computing it."""
        self.results[frag.label] = self.keep(cached)
        self.records[frag.label].status = "cached"
        self.reused += 1
        await self._release(frag, cached)
        await ev.emit(self.options.on_event, ev.FragmentFinished(self.run_id, frag.label, frag.level, frag.program,
                                                                 0.0, "store", cached=True))
        await self._finish_level(frag)

    async def _run_fragment(self, frag: Fragment, job: Job, cores: int, memory: float) -> None:
        """Attempt ``frag`` until it succeeds, fails for good, or runs out of retries."""
        options, on_event, rec = self.options, self.options.on_event, self.records[frag.label]
        task_config = {**self._task_config, "ncores": cores, "memory": memory}
        # Each task runs in its own copy of the context, and to_thread copies it again, so
        # these fields reach every log line of this fragment, worker threads included.
        structlog.contextvars.bind_contextvars(run_id=self.run_id, label=frag.label, nbody=frag.level,
                                               program=frag.program, cores=cores, memory=memory)
        held = True
        try:
            for attempt in range(1, options.retries + 2):
                fjob = FragmentJob(label=frag.label, nbody=frag.level, program=frag.program,
                                   atomic_input=job.atomic_input, task_config=task_config, run_id=self.run_id,
                                   timeout=options.timeout, attempt=attempt, compact=self.compact,
                                   result_json=self.compact and self.store is not None)
                rec.attempts = attempt
                if on_event is not None:
                    await ev.emit(on_event, ev.FragmentStarted(self.run_id, frag.label, frag.level, frag.program,
                                                               cores, memory, attempt))
                if _STDLIB_LOG.isEnabledFor(logging.DEBUG):  # the check structlog makes first, without its call chain
                    log.debug("fragment started", attempt=attempt)  # handed to the executor (tests wait for it)
                outcome = self._guard(frag, fjob, await self.executor.run(fjob))
                self._record_attempt(rec, attempt, outcome)
                if outcome.success:
                    # Its cores are free once the program is done: the next fragment starts while this one's
                    # result is committed (with those of others finishing meanwhile, see _StoreBatch).
                    held = False
                    self.pool.give(cores, memory)
                    await self._succeed(frag, job, cores, outcome)
                    return
                etype, emsg = outcome.error_type or ErrorType.UNKNOWN, outcome.error_message or ""
                delay = self.retry.delay(etype, attempt)
                if delay is None:
                    await self._fail(frag, job, attempt, outcome)
                    return
                log.warning("fragment retried", attempt=attempt, error_type=etype, delay=round(delay, 3))
                await ev.emit(on_event, ev.FragmentRetried(self.run_id, frag.label, frag.level, frag.program,
                                                           attempt, etype, emsg, delay))
                await anyio.sleep(delay)
        finally:
            if held:
                self.pool.give(cores, memory)
            if self._count_done(frag):
                with anyio.CancelScope(shield=True):
                    await self._announce_levels()

    @staticmethod
    def _guard(frag: Fragment, fjob: FragmentJob, outcome: JobOutcome) -> JobOutcome:
        """A successful outcome whose derivatives break rigid-motion invariance becomes an ``InvarianceError``.

        Whatever executor ran it: the result is judged here, before it is stored, kept or assembled.
        """
        if not outcome.success:
            return outcome
        problem = invariance.check(frag.program, fjob.atomic_input, outcome.result)
        if problem is None:
            return outcome
        return JobOutcome.failure(fjob, ErrorType.INVARIANCE, problem, start=outcome.start, end=outcome.end,
                                  host=outcome.host, worker=outcome.worker, pid=outcome.pid)

    def _record_attempt(self, rec: FragmentRecord, attempt: int, outcome: JobOutcome) -> None:
        """Note one attempt in the fragment's record.

        Worker, host and pid repeat across hundreds of thousands of records, but arrive as new objects from each
        worker process's outcome: each record refers to one shared copy (``_shared``).
        """
        shared = self._shared
        rec.add_attempt(attempt, outcome.start, outcome.end, shared.setdefault(("w", outcome.worker), outcome.worker),
                        shared.setdefault(("h", outcome.host), outcome.host),
                        shared.setdefault(("p", outcome.pid), outcome.pid), outcome.error_type, outcome.error_message)

    async def _succeed(self, frag: Fragment, job: Job, cores: int, outcome: JobOutcome) -> None:
        """Commit a result to the store, keep it, calibrate the cost model, tell listeners."""
        rec = self.records[frag.label]
        result = outcome.result
        if isinstance(result, CompactResult):
            kept: Any = result.properties  # what keep() would have made of the whole result
        else:
            result = _atomic_result(result)
            kept = None
        if self._store_writes is not None:
            # Shielded: a finished fragment is committed even if the run is being cancelled.
            with anyio.CancelScope(shield=True):
                problem = await self._store_writes.put(frag, job.key, result, rec)
            if problem is not None:
                self.unstored += 1
                # Once per run (or per job of many runs): a full disk would otherwise log the same line for
                # every fragment.
                failures = STORE_FAILURES.get() or self._store_failures
                failures.report("result not stored; the run goes on, later results that cannot be stored are "
                                "counted in the summary, not logged", reason=problem)
        self.results[frag.label] = self.keep(result) if kept is None else kept
        rec.status = "ok"
        await self._release(frag, result if kept is None else kept)
        # Calibrate in one-core seconds, whatever this fragment was given (the model converts, and
        # learns the group's parallel fraction from fragments run on several cores).
        self.model.observe(frag.group, frag.size, outcome.wall_time, cores)
        if _STDLIB_LOG.isEnabledFor(logging.INFO):
            log.info("fragment finished", wall_time=round(outcome.wall_time, 4), worker=outcome.worker)
        if self.options.on_event is not None:
            await ev.emit(self.options.on_event, ev.FragmentFinished(
                self.run_id, frag.label, frag.level, frag.program, outcome.wall_time, outcome.worker))

    async def _release(self, frag: Fragment, result: Any) -> None:
        """Energy screening: pass ``frag``'s energy on; queue the fragments of subsets now decided kept."""
        if self.screen is None:
            return
        added: Counter[int] = Counter()
        for key in self.screen.observe((frag.mc, frag.real, frag.basis), _energy_of(result)):
            new = self.plan.make_fragment(key)
            self.plan.fragments.append(new)
            self.queue.push(new, self._seq)
            self._seq += 1
            self.remaining[new.level] += 1
            self.per_level[new.level] = self.per_level.get(new.level, 0) + 1
            self.model.set_exponent(new.group, _exponent_of(new))
            self.model.set_parallel_fraction(new.group, parallel_fraction(new.program))
            added[new.level] += 1
        if added:
            await ev.emit(self.options.on_event, ev.FragmentsReleased(self.run_id, dict(sorted(added.items())),
                                                                      len(self.plan.fragments)))

    async def _fail(self, frag: Fragment, job: Job, attempt: int, outcome: JobOutcome) -> None:
        """A fragment failed for good: record it, then raise or carry on as ``on_error`` says."""
        rec = self.records[frag.label]
        etype, emsg = outcome.error_type or ErrorType.UNKNOWN, outcome.error_message or ""
        rec.status, rec.error_type, rec.error_message = "failed", etype, emsg
        self.failed_levels.add(frag.level)
        if self.store is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_store_failure, self.store, frag, job.key, rec, self.run_id)
        err = FragmentError(frag.label, frag.level, frag.program, etype, emsg, attempt, outcome.result)
        log.error("fragment failed", attempts=attempt, error_type=etype)
        await ev.emit(self.options.on_event, ev.FragmentFailed(self.run_id, frag.label, frag.level, frag.program,
                                                               attempt, etype, emsg))
        if self.options.on_error == "raise":
            raise err
        self.failures.append(err)

    async def _finish_level(self, frag: Fragment) -> None:
        """Count ``frag`` done; announce every level that is now complete, in level order.

        Under energy screening a level is complete once no more of its fragments can be released
        (every subset that could still add one is decided) and all released ones finished.
        """
        if self._count_done(frag):
            await self._announce_levels()

    def _count_done(self, frag: Fragment) -> bool:
        """Count ``frag`` done and wake the feeder; whether a level may now be complete."""
        self.remaining[frag.level] -= 1
        self.inflight -= 1
        self._changed.set()
        return self.remaining[frag.level] == 0 or self.screen is not None

    async def _announce_levels(self) -> None:
        """Announce every level that is now complete, in level order."""
        on_event = self.options.on_event
        top_level = max(self.per_level) if self.per_level else 0
        async with self._announce_lock:
            for lv in list(self.per_level):
                if lv in self._announced:
                    continue
                if self.remaining[lv] != 0 or (self.screen is not None and not self.screen.level_final(lv)):
                    break
                count = self.per_level[lv]
                self._announced.append(lv)
                partial = None
                if (self.partial_result is not None and on_event is not None and lv < top_level
                        and not any(f <= lv for f in self.failed_levels)):
                    partial = await anyio.to_thread.run_sync(self.partial_result, lv, dict(self.results))
                await ev.emit(on_event, ev.LevelComplete(self.run_id, lv, count, count, partial))


class _StoreBatch:
    """Group commit: results that finish while a commit is under way go to the store together, in one transaction.

    Each :meth:`put` returns once its own row is committed (or could not be), as a put of its own would: the
    scheduler announces a fragment finished only after that. The first caller with nothing being written becomes
    the writer and commits rounds on a worker thread until nothing waits; the others wait for their round. One
    commit (one fsync with ``synchronous=FULL``) and one thread hop then serve every fragment of a round.
    """

    def __init__(self, store: FragmentStore, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        self._waiting: list[_Put] = []
        self._writing = False

    async def put(self, frag: Fragment, key: str, result: Any, rec: FragmentRecord) -> str | None:
        """Commit one result (with those that come meanwhile); ``None``, or why it could not be stored."""
        item = _Put(frag, key, result, rec)
        self._waiting.append(item)
        if self._writing:
            await item.done.wait()
            return item.problem
        self._writing = True
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    problems = await anyio.to_thread.run_sync(_store_put_many, self.store, batch, self.run_id)
                except BaseException as exc:  # not a StoreError (those are per row): nobody may wait forever
                    for p in [*batch, *self._waiting]:
                        p.problem = f"fragment {p.frag.label}: {type(exc).__name__}: {exc}"
                        p.done.set()
                    self._waiting = []
                    raise
                for p, problem in zip(batch, problems, strict=True):
                    p.problem = problem
                    p.done.set()
        finally:
            self._writing = False
        return item.problem


class _Put:
    """One result waiting for its round of :class:`_StoreBatch`."""

    __slots__ = ("done", "frag", "key", "problem", "rec", "result")

    def __init__(self, frag: Fragment, key: str, result: Any, rec: FragmentRecord) -> None:
        self.frag, self.key, self.result, self.rec = frag, key, result, rec
        self.problem: str | None = None
        self.done = anyio.Event()


def _store_put_many(store: FragmentStore, batch: list[_Put], run_id: str) -> list[str | None]:
    """Commit a round of results in one transaction where the store can (``put_many``), else one by one.

    A round of one row goes through ``put_many`` too: the same row and one commit, without ``put``'s own checks.
    """
    if getattr(store, "put_many", None) is None:
        return [_store_put(store, p.frag, p.key, p.result, p.rec, run_id) for p in batch]
    return _store_put_batch(store, [(p.frag, p.key, p.result, p.rec) for p in batch], run_id)


def _task_config(options: RunOptions) -> dict[str, Any]:
    config: dict[str, Any] = {
        "ncores": options.fragment_ncores,
        "memory": options.fragment_memory,
        # Retries of RandomError are ours (recorded, with backoff), not QCEngine's silent ones.
        "retries": 0,
    }
    if options.scratch_directory is not None:
        # Left out when not given, so QCENGINE_SCRATCH_DIRECTORY / qcengine.yaml still apply.
        config["scratch_directory"] = options.scratch_directory
    return config


def _exponent_of(frag: Fragment) -> float:
    return math.log(frag.cost) / math.log(frag.size) if frag.size > 1 and frag.cost > 1 else 3.5


def _energy_of(result: Any) -> float | None:
    """A fragment's energy from its ``AtomicResult`` or its slimmed properties."""
    if isinstance(result, dict):
        value = result.get("energy")
    else:
        value = result.properties.return_energy
        if value is None and result.driver == "energy":
            value = result.return_result
    return None if value is None else float(value)
