"""Batching for the Dask executor: small fragments coalesced into one Dask task.

A Dask task costs about a millisecond of transport (more on a loaded machine); fragments of tens
of milliseconds (MOPAC, small HF) would spend more time in transport than in chemistry. Jobs that
arrive within ``batch_window`` seconds and that the executor's cost model predicts short are sent
as one task of at most ``max_batch`` fragments (sized so transport stays under ``transport_share``
of the task); each keeps its own key, timeout and :class:`~qcmb_async._core.contract.JobOutcome`,
so records, events and the store stay per fragment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from .._core.contract import ErrorType, FragmentJob, JobOutcome
from ._dask_worker import _failed, _noop, _run_batch_on_worker


@dataclass
class _Entry:
    """One fragment waiting in a batch."""

    job: FragmentJob
    key: str
    outcome: JobOutcome | None = None
    cancelled: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class _Bucket:
    """Small fragments with the same resources, collected during the coalescing window."""

    limit: int
    entries: list[_Entry] = field(default_factory=list)
    sealed: bool = False
    full: anyio.Event = field(default_factory=anyio.Event)


def _task_key(job: FragmentJob) -> str:
    digest = hashlib.sha1(job.label.encode()).hexdigest()[:10]
    # The nonce keeps keys unique when the same job is submitted twice (direct use, reruns).
    return f"qcmb-{job.run_id or 'direct'}-{digest}-{job.attempt}-{secrets.token_hex(3)}"


def _cost_key(job: FragmentJob) -> tuple[str, float]:
    """``(cost group, size)`` of a job for the cost model: program/method/basis and basis functions."""
    inp = job.atomic_input
    if isinstance(inp, dict):  # QCSchema v2: the model is in the specification
        model, symbols = inp["specification"]["model"], inp["molecule"]["symbols"]
        method, basis = model["method"], model.get("basis")
    else:
        method, basis, symbols = inp.specification.model.method, inp.specification.model.basis, inp.molecule.symbols
    basis_name = basis if isinstance(basis, str) or basis is None else "custom"
    return f"{job.program}/{method}/{basis_name}", _size(tuple(symbols), basis_name)


@functools.lru_cache(maxsize=4096)
def _size(symbols: tuple[str, ...], basis: str | None) -> float:
    from .._core.cost import fragment_size

    return fragment_size(list(symbols), basis)


class _Batching:
    """Mixin of :class:`~qcmb_async.executors.dask.DaskExecutor`: the batching half of its ``run``."""

    def _batch_size(self, job: FragmentJob) -> int:
        """Fragments per Dask task for ``job``: enough that transport is ``transport_share`` of the task.

        The cost model (calibrated by this executor's own outcomes, one-core seconds) predicts the
        fragment's time; the per-task transport is measured too. An uncalibrated group runs one per task.
        """
        if self.max_batch <= 1:
            return 1
        group, size = _cost_key(job)
        if group not in self._calibrated:
            return 1
        predicted = self._model.estimate(group, size)
        target = self._transport / self.transport_share
        n = max(1, min(self.max_batch, int(target // max(predicted, 1e-6))))
        self._batch_hint = max(self._batch_hint, n)
        # Never fewer tasks than twice the cores for the fragments in hand: one long batch on one worker
        # while the others idle is the tail a run ends with.
        cores = max(1.0, self.capacity[0] / max(1, job.ncores))
        return max(1, min(n, int((len(self._inflight) + 1) // (2 * cores))))

    def _learn(self, jobs: list[FragmentJob], outcomes: list[JobOutcome]) -> None:
        """Calibrate the cost model (one-core seconds per cost group) from one finished task."""
        for job, outcome in zip(jobs, outcomes, strict=True):
            if outcome.success and outcome.wall_time > 0 and job.ncores == 1:
                group, size = _cost_key(job)
                self._model.observe(group, size, outcome.wall_time)
                self._calibrated.add(group)

    async def _measure_transport(self) -> None:
        """Time a few empty tasks: what one task costs beyond its work (submit, scheduling, result)."""
        if not self._workers or self.max_batch <= 1:
            return
        times = []
        with contextlib.suppress(Exception), anyio.move_on_after(10):
            for _ in range(5):
                t0 = time.perf_counter()
                await self.client.submit(_noop, pure=False)
                times.append(time.perf_counter() - t0)
        if times:
            self._transport = sorted(times)[len(times) // 2]

    async def _run_batched(self, job: FragmentJob, size: int) -> JobOutcome:
        """Join (or open) the batch of small fragments with the same resources; await this fragment's outcome."""
        bucket_key = (job.ncores, job.memory, job.program if self.program_resources else "", job.timeout)
        bucket = self._buckets.get(bucket_key)
        entry = _Entry(job, _task_key(job))
        if bucket is None or bucket.sealed:
            bucket = self._buckets[bucket_key] = _Bucket(size)
            leader = True
        else:
            leader = False
        bucket.entries.append(entry)
        self._inflight.add(entry.key)
        try:
            if len(bucket.entries) >= bucket.limit:
                self._seal(bucket_key, bucket)
            elif leader:
                # The coalescing window: concurrent small fragments join this batch meanwhile.
                with anyio.move_on_after(self.batch_window):
                    await bucket.full.wait()
                self._seal(bucket_key, bucket)
            await entry.done.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                entry.cancelled = True
                if self._buckets.get(bucket_key) is bucket:
                    self._seal(bucket_key, bucket)  # the others still go
                await self._kill_remote([entry.key])
            raise
        finally:
            self._inflight.discard(entry.key)
        assert entry.outcome is not None
        return entry.outcome

    def _seal(self, bucket_key: Any, bucket: _Bucket) -> None:
        if bucket.sealed:
            return
        bucket.sealed = True
        bucket.full.set()
        if self._buckets.get(bucket_key) is bucket:
            del self._buckets[bucket_key]
        # Its own task: no single fragment's cancellation may take the batch down with it.
        task = asyncio.ensure_future(self._submit_batch(bucket.entries))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _submit_batch(self, entries: list[_Entry]) -> None:
        from distributed.scheduler import KilledWorker

        live = [e for e in entries if not e.cancelled]
        if not live:
            return
        first = live[0].job
        resources = self._resources(first)
        # Like a single fragment's key, with the label digests of the whole batch joined by dots.
        digests = ".".join(hashlib.sha1(e.job.label.encode()).hexdigest()[:10] for e in live)
        key = f"qcmb-{first.run_id or 'direct'}-{digests}-batch-{secrets.token_hex(3)}"
        submitted = time.time()

        def fail_all(error_type: str, message: str) -> None:
            for e in live:
                if e.outcome is None:
                    e.outcome = _failed(e.job, error_type, message.replace("{label}", e.job.label), submitted)
                e.done.set()

        try:
            unmet = await self._unsatisfiable(resources)
            if unmet:
                fail_all(ErrorType.RESOURCES_UNAVAILABLE, unmet)
                return
            future = self.client.submit(_run_batch_on_worker, [e.job for e in live], [e.key for e in live], key,
                                        resources=resources, pure=False, key=key)
            timeout = first.timeout
            wait = None if timeout is None else timeout * len(live) + self.timeout_grace
            with anyio.move_on_after(wait) as scope:
                try:
                    outcomes: list[JobOutcome] = await future
                except KilledWorker as exc:
                    fail_all(ErrorType.KILLED_WORKER, f"Dask gave up on fragment {{label}} (batch {key}): {exc}")
                    return
                except Exception as exc:
                    fail_all(type(exc).__name__, f"Dask task {key} (batch with fragment {{label}}) failed: {exc}")
                    return
            if scope.cancelled_caught:
                await self._abandon(future, key, [e.key for e in live])
                fail_all(ErrorType.TIMEOUT, f"fragment {{label}} gave no result within its timeout of {timeout} s "
                         f"(its batch of {len(live)}: +{self.timeout_grace} s grace); Dask task cancelled, programs "
                         "killed")
                return
            self._learn([e.job for e in live], outcomes)
            for e, outcome in zip(live, outcomes, strict=True):
                e.outcome = outcome
                e.done.set()
        finally:
            fail_all(ErrorType.CANCELLED, "fragment {label}: its batch was stopped with the executor")

    # ------------------------------------------------------------------ helpers
