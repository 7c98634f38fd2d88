"""Batching for the Dask executor: fragments handed to the cluster as few, well-sized Dask tasks.

A Dask task costs this process about a millisecond of CPU and a round trip of several (more on a
loaded machine); fragments of tens of milliseconds (MOPAC, small HF) would spend more in transport
than in chemistry, and a coordinator that pays per task cannot feed thousands of cores. So every
fragment the scheduler hands over joins a queue per resource request, and one *pump* (a plain
callback on the event loop, run whenever something changes) turns the queues into tasks:

* each core gets at most two tasks (one running, one waiting on its worker, so no core waits for a
  round trip to this process); a core with none gets one at once;
* a task holds ``n = min(max_batch, cost-model size, ceil(waiting / free places))`` fragments: as
  many as make the measured per-task transport ``transport_share`` of the task's predicted time,
  but never more than an even share of what waits (guided self-scheduling), so the run's last tasks
  are single fragments and no worker idles at the tail while another works through a long batch;
* a task that would wait on its worker anyway is held for ``batch_window`` seconds to fill up.

Jobs and outcomes cross as one pickled ``bytes`` per task (Dask then neither walks nor re-serialises
them), each job's ``AtomicInput`` as its JSON text (cheaper than pickling the model on both sides). A
task predicted to run longer than ``stream_interval`` also sends finished outcomes back while it runs
(see :func:`~qcmb_async.executors._dask_worker._run_batch_on_worker`). Each fragment keeps its own
key, timeout and :class:`~qcmb_async._core.contract.JobOutcome`, so records, events and the store stay
per fragment; a fragment cancelled while waiting here never reaches the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import pickle
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from .._core.contract import ErrorType, FragmentJob, JobOutcome
from ._dask_worker import _as_sent, _failed, _run_batch_on_worker

#: Per-task transport samples kept (their minimum is the estimate: larger ones include queueing).
_SAMPLES = 32
_nonce = secrets.token_hex(3)
_counter = itertools.count()
#: Deep-queue tasks take ``waiting // (_DEEP_SPREAD * slots)`` fragments: half an even share per place.
_DEEP_SPREAD = 2


@dataclass(eq=False)
class _Entry:
    """One fragment handed to the executor: waiting here, then in a task."""

    job: FragmentJob
    key: str
    bucket: tuple[Any, ...]
    arrived: float
    group: str
    size: float
    outcome: JobOutcome | None = None
    cancelled: bool = False
    task: _Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Task:
    """One Dask task: fragments of one resource request, run one after the other on one worker."""

    key: str
    entries: list[_Entry]
    handler: asyncio.Future[None] | None = None
    live: list[_Entry] = field(default_factory=list)
    """The entries submitted (not cancelled before): the index of an outcome sent back is into this list."""


def _task_key(job: FragmentJob) -> str:
    digest = hashlib.sha1(job.label.encode()).hexdigest()[:10]
    # Unique without a system call per key: a random prefix per process and a counter.
    return f"qcmb-{job.run_id or 'direct'}-{digest}-{job.attempt}-{_nonce}{next(_counter):x}"


def _cost_key(job: FragmentJob) -> tuple[str, float]:
    """``(cost group, size)`` of a job for the cost model: program/method/basis and basis functions."""
    inp = job.atomic_input
    if isinstance(inp, dict):  # QCSchema v2: the model is in the specification
        model, symbols = inp["specification"]["model"], inp["molecule"]["symbols"]
        method, basis = model["method"], model.get("basis")
    else:
        method, basis, symbols = inp.specification.model.method, inp.specification.model.basis, inp.molecule.symbols
    basis_name = basis if isinstance(basis, str) or basis is None else "custom"
    names = symbols.tolist() if hasattr(symbols, "tolist") else symbols  # numpy strings -> str, in C
    return f"{job.program}/{method}/{basis_name}", _size(tuple(names), basis_name)


@functools.lru_cache(maxsize=4096)
def _size(symbols: tuple[str, ...], basis: str | None) -> float:
    from .._core.cost import fragment_size

    return fragment_size(list(symbols), basis)


class _Batching:
    """Mixin of :class:`~qcmb_async.executors.dask.DaskExecutor`: its queues, pump and batch tasks."""

    # The executor's own state (set in DaskExecutor.__init__).
    client: Any
    max_batch: int
    batch_window: float
    transport_share: float
    deep_batch: int
    deep_share: float
    _deep_hint: int
    timeout_grace: float
    capacity: tuple[float, float]
    _model: Any
    _calibrated: set[str]
    _transport: float
    _overheads: list[float]
    _batch_hint: int
    _inflight: set[str]
    _pending: dict[Any, Any]
    _outstanding: dict[Any, int]
    _pump_handle: asyncio.Handle | None
    _pump_at: float
    _batches: set[asyncio.Future[None]]
    program_resources: bool
    _declared: bool
    stream_interval: float | None
    _topic: str | None
    _streaming: dict[str, _Task]

    if TYPE_CHECKING:  # the executor's other halves (only declared here: the MRO must reach them)
        def _resources(self, job: FragmentJob) -> dict[str, float] | None: ...
        def _needs(self, job: FragmentJob) -> dict[str, float]: ...
        def _fitting(self, job: FragmentJob) -> list[str] | None: ...
        async def _unsatisfiable(self, resources: dict[str, float]) -> str | None: ...
        async def _abandon(self, future: Any, key: str, fragment_keys: list[str] | None = None) -> None: ...
        async def _kill_remote(self, keys: list[str]) -> None: ...

    def _batch_size(self, job: FragmentJob, group: str | None = None, size: float | None = None) -> int:
        """Most fragments per Dask task for ``job``: enough that transport is ``transport_share`` of the task.

        The cost model (calibrated by this executor's own outcomes, one-core seconds) predicts the
        fragment's time; the per-task transport is measured on the tasks. An uncalibrated group runs one
        per task. (How many a task really gets also depends on what waits: see the module docstring.)
        """
        if self.max_batch <= 1:
            return 1
        if group is None or size is None:
            group, size = _cost_key(job)
        if group not in self._calibrated:
            return 1
        predicted = self._model.estimate(group, size)
        target = self._transport / self.transport_share
        n = max(1, min(self.max_batch, int(target // max(predicted, 1e-6))))
        self._batch_hint = max(self._batch_hint, n)
        return n

    def _deep_size(self, group: str, size: float) -> int:
        """Most fragments per task when many wait: transport ``deep_share`` of the task, at most ``deep_batch``."""
        predicted = self._model.estimate(group, size)
        n = max(1, min(self.deep_batch, int(self._transport / self.deep_share // max(predicted, 1e-6))))
        self._deep_hint = max(self._deep_hint, n)
        return n

    def _slots(self, job: FragmentJob) -> int:
        """How many fragments like ``job`` the cluster runs at once (its declared cores / the job's)."""
        return max(1, int(self.capacity[0] // max(1, job.ncores)))

    async def _run_pooled(self, job: FragmentJob) -> JobOutcome:
        """Queue ``job`` for the pump and await its own outcome."""
        bucket = (job.ncores, job.memory, job.program if self.program_resources else "", job.timeout)
        group, size = _cost_key(job)
        entry = _Entry(job, _task_key(job), bucket, time.monotonic(), group, size)
        pending = self._pending.get(bucket)
        if pending is None:
            pending = self._pending[bucket] = deque()
        pending.append(entry)
        self._inflight.add(entry.key)
        self._kick()
        try:
            await entry.done.wait()
        except asyncio.CancelledError:
            with anyio.CancelScope(shield=True):
                entry.cancelled = True
                task = entry.task
                if task is None:
                    with contextlib.suppress(ValueError):
                        self._pending[bucket].remove(entry)  # never reached the cluster
                elif task.handler is not None and all(e.cancelled for e in task.entries):
                    task.handler.cancel()  # the whole task goes: Dask future cancelled, programs killed
                else:
                    await self._kill_remote([entry.key])  # the others in its task go on
            raise
        finally:
            self._inflight.discard(entry.key)
        assert entry.outcome is not None
        return entry.outcome

    def _kick(self, delay: float = 0.0) -> None:
        """Run the pump soon (``delay`` s from now at the latest); one pending call at a time."""
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        if self._pump_handle is not None:
            if self._pump_at <= at:
                return
            self._pump_handle.cancel()
        self._pump_at = at
        self._pump_handle = loop.call_soon(self._pump) if delay <= 0 else loop.call_at(at, self._pump)

    def _pump(self) -> None:
        """Turn waiting fragments into Dask tasks (see the module docstring for the rules)."""
        self._pump_handle = None
        now = time.monotonic()
        wake: float | None = None
        for bucket, pending in self._pending.items():
            if not pending:
                continue
            slots = self._slots(pending[0].job)
            while pending:
                out = self._outstanding.get(bucket, 0)
                free = 2 * slots - out
                if free <= 0:
                    break
                head = pending[0]
                most = self._batch_size(head.job, head.group, head.size)
                n = max(1, min(most, -(-len(pending) // free)))
                if most > 1 and self.deep_batch > most:
                    # Many wait: half an even share per place (guided self-scheduling, so tasks
                    # shrink as the queue drains), up to deep_share transport; fewer tasks, less CPU here.
                    n = max(n, min(len(pending) // (_DEEP_SPREAD * slots), self._deep_size(head.group, head.size)))
                if out >= slots and len(pending) < most:
                    # Every core has a task: give this one a moment to fill up.
                    due = head.arrived + self.batch_window
                    if now < due:
                        wake = due if wake is None else min(wake, due)
                        break
                entries = [pending.popleft() for _ in range(n)]
                self._outstanding[bucket] = out + 1
                self._start_task(bucket, entries)
        if wake is not None:
            self._kick(max(0.0, wake - now))

    def _start_task(self, bucket: tuple[Any, ...], entries: list[_Entry]) -> None:
        # Like a single fragment's key, with the label digests of the whole task joined by dots.
        digests = ".".join(e.key.split("-")[-3] for e in entries)
        key = f"qcmb-{entries[0].job.run_id or 'direct'}-{digests}-batch-{_nonce}{next(_counter):x}"
        task = _Task(key, entries)
        for e in entries:
            e.task = task
        # Its own asyncio task: no single fragment's cancellation may take the others down with it.
        handler = asyncio.ensure_future(self._run_task(bucket, task))
        task.handler = handler
        self._batches.add(handler)
        handler.add_done_callback(self._batches.discard)

    def _streams(self, live: list[_Entry]) -> bool:
        """Whether a task of ``live`` sends outcomes back while it runs: predicted longer than ``stream_interval``.

        Shorter tasks would send nothing before they end, and skip the scheduler round trip a streaming task
        makes when it starts (to learn what an earlier run of it, on a worker that died, already sent).
        """
        if self._topic is None or self.stream_interval is None or len(live) < 2:
            return False
        total = 0.0
        for e in live:
            if e.group not in self._calibrated:
                return True  # unknown: it may be long
            total += self._model.estimate(e.group, e.size)
            if total >= self.stream_interval:
                return True
        return False

    def _on_stream(self, event: tuple[float, Any]) -> None:
        """Client event handler: outcomes a running task sent back; each fragment gets its own at once."""
        msg = event[1]
        task = self._streaming.get(msg.get("batch", "")) if isinstance(msg, dict) else None
        if task is None:
            return  # a task that ended (or of another executor on the same topic)
        for i, outcome in pickle.loads(msg["outcomes"]):
            if 0 <= i < len(task.live):
                e = task.live[i]
                if e.outcome is None:
                    e.outcome = outcome
                    e.done.set()

    def _learn(self, entries: list[_Entry], outcomes: list[JobOutcome], elapsed: float) -> None:
        """Calibrate the cost model (one-core seconds per group) and the per-task transport from one task."""
        busy = 0.0
        for e, outcome in zip(entries, outcomes, strict=True):
            if outcome.success and outcome.wall_time > 0 and e.job.ncores == 1:
                self._model.observe(e.group, e.size, outcome.wall_time)
                self._calibrated.add(e.group)
            busy += max(0.0, outcome.wall_time)
        self._overheads.append(max(0.0, elapsed - busy))
        del self._overheads[:-_SAMPLES]
        # The smallest recent one: the others also waited behind earlier tasks on their worker.
        self._transport = max(1e-4, min(self._overheads))

    async def _run_task(self, bucket: tuple[Any, ...], task: _Task) -> None:
        """Submit one task, await it, and hand each fragment its outcome (failures per fragment)."""
        from distributed.scheduler import KilledWorker

        live = task.live = [e for e in task.entries if not e.cancelled]
        key = task.key
        submitted = time.time()

        def fail_all(error_type: str, message: str) -> None:
            for e in live:
                if e.outcome is None:
                    e.outcome = _failed(e.job, error_type, message.replace("{label}", e.job.label), submitted)
                e.done.set()

        try:
            if not live:
                return
            first = live[0].job
            resources = self._resources(first)
            unmet = await self._unsatisfiable(self._needs(first))
            if unmet:
                fail_all(ErrorType.RESOURCES_UNAVAILABLE, unmet)
                return
            try:
                payload = pickle.dumps([_as_sent(e.job) for e in live], protocol=pickle.HIGHEST_PROTOCOL)
                t0 = time.perf_counter()
                stream: dict[str, Any] = {}
                if self._streams(live):
                    stream = {"stream": self._topic, "interval": self.stream_interval}
                    self._streaming[key] = task
                # Without declared resources (a plain Dask cluster) the worker's gate keeps its fragments within
                # its threads and memory limit, and only workers that can hold the fragment may take it.
                future = self.client.submit(_run_batch_on_worker, payload, [e.key for e in live], key,
                                            gated=not self._declared, resources=resources,
                                            workers=self._fitting(first), allow_other_workers=False, pure=False,
                                            key=key, **stream)
            except Exception as exc:
                fail_all(type(exc).__name__, f"Dask task {key} (with fragment {{label}}) was not submitted: {exc}")
                return
            timeout = first.timeout
            wait = None if timeout is None else timeout * len(live) + self.timeout_grace
            try:
                with anyio.move_on_after(wait) as scope:
                    try:
                        outcomes: list[JobOutcome] = pickle.loads(await future)
                    except KilledWorker as exc:
                        fail_all(ErrorType.KILLED_WORKER, f"Dask gave up on fragment {{label}} (task {key}): {exc}")
                        return
                    except Exception as exc:
                        fail_all(type(exc).__name__, f"Dask task {key} (with fragment {{label}}) failed: {exc}")
                        return
            except asyncio.CancelledError:
                # Every fragment of the task was cancelled, or the executor stops: the task must go.
                await self._abandon(future, key, [e.key for e in live])
                raise
            if scope.cancelled_caught:
                await self._abandon(future, key, [e.key for e in live])
                fail_all(ErrorType.TIMEOUT, f"fragment {{label}} gave no result within its timeout of {timeout} s "
                         f"(its task of {len(live)}: +{self.timeout_grace} s grace); Dask task cancelled, programs "
                         "killed")
                return
            for e, outcome in zip(live, outcomes, strict=True):
                if outcome is not None:  # None: sent back while the task ran (see _on_stream)
                    e.outcome = outcome
                    e.done.set()
            fail_all(ErrorType.UNKNOWN, f"fragment {{label}}: its outcome, sent back while task {key} ran, never "
                     "arrived")
            self._learn(live, [e.outcome for e in live], time.perf_counter() - t0)  # type: ignore[misc]
        finally:
            self._streaming.pop(key, None)
            fail_all(ErrorType.CANCELLED, "fragment {label}: its task was stopped with the executor")
            self._outstanding[bucket] = self._outstanding.get(bucket, 1) - 1
            with contextlib.suppress(RuntimeError):  # no running loop: the executor is gone
                self._kick()
