"""Small fragments batched into one Dask task: results, records, events and the store stay per fragment."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from qcmanybody.v2 import ManyBodyComputer

from qcmb_async import run_manybody
from qcmb_async._core import events as ev
from qcmb_async.executors.dask import DaskExecutor
from tests.helpers import max_overlap, mbe_input, require_module, require_program, waters


def test_batched_run_keeps_results_records_events_and_store_exact(tmp_path: Path) -> None:
    require_program("mopac")
    distributed = require_module("distributed")
    from qcmb_async._core.store import ResultStore

    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3, molecule=waters(5))
    reference = float(ManyBodyComputer.from_manybodyinput(inp).return_result)
    events: list[Any] = []
    store = tmp_path / "store.sqlite"

    async def main() -> tuple[Any, list[dict[str, Any]]]:
        async with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                            dashboard_address=":0", resources={"cores": 1, "memory": 2},
                                            asynchronous=True) as cluster, \
                distributed.Client(cluster, asynchronous=True, set_as_default=False) as client:
            # A tiny transport share asks for long tasks: every calibrated fragment is batched (up to 4).
            exe = DaskExecutor(client, max_batch=4, transport_share=1e-4)
            async with distributed.get_task_stream(client) as stream:
                result = await run_manybody(inp, executor=exe, store=str(store), on_event=events.append)
            return result, list(stream.data)

    result, tasks = anyio.run(main)
    assert abs(float(result.return_result) - reference) < 1e-9
    records = result.extras["qcmb_async"]["fragments"]
    nfrag = len(records)
    qcmb_tasks = [t for t in tasks if str(t["key"]).startswith("qcmb-")]
    batches = [t for t in qcmb_tasks if "-batch-" in str(t["key"])]
    assert batches and len(qcmb_tasks) < nfrag, (len(qcmb_tasks), nfrag)  # fewer Dask tasks than fragments
    # Per fragment, as without batching: one record with its own interval, one start and one finish event.
    assert all(r["status"] == "ok" and r["attempts"] == 1 and r["end"] > r["start"] for r in records)
    per_worker: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        per_worker.setdefault(r["worker"], []).append((r["start"], r["end"]))
    assert all(max_overlap(iv) == 1 for iv in per_worker.values())  # one core per worker: one at a time
    started = Counter(e.label for e in events if isinstance(e, ev.FragmentStarted))
    finished = Counter(e.label for e in events if isinstance(e, ev.FragmentFinished))
    assert set(started.values()) == {1} and set(finished.values()) == {1} and len(finished) == nfrag
    with ResultStore(store, readonly=True) as rs:
        rows = rs.fragments()
    assert len(rows) == nfrag and all(row["status"] == "ok" for row in rows)


def _mopac_job(run_id: str = "") -> Any:
    from qcmb_async import plan_manybody
    from qcmb_async._core.contract import FragmentJob

    plan = plan_manybody(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=1, molecule=waters(2)))
    frag = plan.fragments[0]
    return FragmentJob(label=frag.label, nbody=1, program="mopac", atomic_input=plan.materialise(frag).atomic_input,
                       task_config={"ncores": 1, "memory": 1.0, "retries": 0}, run_id=run_id)


def _calibrated(exe: DaskExecutor, job: Any, seconds: float, transport: float) -> None:
    from qcmb_async.executors._dask_batch import _cost_key

    group, size = _cost_key(job)
    exe._workers = {"w": type("W", (), {"resources": {"cores": 2.0, "memory": 4.0}})()}  # type: ignore[dict-item]
    exe._transport = transport
    exe._model = type(exe._model)()
    exe._model.observe(group, size, seconds)
    exe._calibrated.add(group)


def test_large_fragments_are_not_batched() -> None:
    """A fragment predicted longer than the target task length runs one per task."""
    require_program("mopac")
    require_module("distributed")
    exe = DaskExecutor("tcp://127.0.0.1:1", max_batch=8)  # never entered: only its batch sizing is used
    fjob = _mopac_job()
    assert exe._batch_size(fjob) == 1  # uncalibrated: one per task
    assert exe.queue_depth == 2  # one running and one queued per core
    _calibrated(exe, fjob, 10.0, 0.002)  # 10 s fragments, 2 ms per task: target task 40 ms at 5 %
    assert exe._batch_size(fjob) == 1
    _calibrated(exe, fjob, 0.004, 0.002)  # 4 ms fragments: 10 per 40 ms task, capped at max_batch
    assert exe._batch_size(fjob) == 8
    assert exe.queue_depth == 24  # three tasks per core: running, queued on the worker, filling here


class FakeClient:
    """Records what the pump submits and runs nothing; the test finishes tasks by hand (0.1 ms fragments)."""

    def __init__(self) -> None:
        self.submitted: list[tuple[list[Any], asyncio.Future[bytes]]] = []

    def submit(self, fn: Any, payload: bytes, keys: list[str], batch: str, **kwargs: Any) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.submitted.append((pickle.loads(payload), future))
        return future

    def finish(self, i: int) -> None:
        from qcmb_async._core.contract import JobOutcome

        jobs, future = self.submitted[i]
        now = time.time()
        future.set_result(pickle.dumps([JobOutcome(label=j.label, result={}, success=True, start=now - 1e-4,
                                                   end=now, host="h", worker="w", pid=1) for j in jobs]))


def test_fake_client_pump_sizes_tasks_and_splits_the_tail() -> None:
    """The pump's rules with a fake client: at most two tasks per core, a task at most ``max_batch`` and at most an
    even share of what waits (guided self-scheduling), so the last fragments go out one per task."""
    require_program("mopac")
    require_module("distributed")
    job = _mopac_job("fake")

    async def main() -> list[list[int]]:
        exe = DaskExecutor("tcp://127.0.0.1:1", max_batch=8, batch_window=0.0)
        client = exe._client = FakeClient()
        _calibrated(exe, job, 0.004, 0.002)  # cost model: 8 per task; 2 cores: 4 tasks out at most
        labels = [f"f{i}" for i in range(35)]
        outcomes: dict[str, Any] = {}

        async def one(label: str) -> None:
            outcomes[label] = await exe.run(dataclasses.replace(job, label=label))

        sizes = []
        async with anyio.create_task_group() as tg:
            for label in labels:
                tg.start_soon(one, label)
            await anyio.sleep(0.01)
            sizes.append([len(jobs) for jobs, _ in client.submitted])
            for step in range(2):  # two tasks finish: two places free for what still waits
                client.finish(step)
                await anyio.sleep(0.01)
                sizes.append([len(jobs) for jobs, _ in client.submitted])
            while len(outcomes) < len(labels):
                for i, (_, future) in enumerate(client.submitted):
                    if not future.done():
                        client.finish(i)
                await anyio.sleep(0.01)
        assert sorted(outcomes) == sorted(labels) and all(o.success for o in outcomes.values())
        assert all(o.label == label for label, o in outcomes.items())  # each fragment its own outcome
        return sizes

    sizes = anyio.run(main)
    # 35 waiting, 4 free places: 8 (most per task), 8, ceil(19/2) = 10 -> 8, ceil(11/1) -> 8; 3 left.
    assert sizes[0] == [8, 8, 8, 8]
    # One task done: one place free, the 3 waiting go as one task; the next place gets nothing (none waits).
    assert sizes[1] == [8, 8, 8, 8, 3]
    assert sizes[2] == [8, 8, 8, 8, 3]


def test_fake_client_tail_goes_one_fragment_per_task() -> None:
    """Few fragments waiting and every core free: they are spread, not packed into one task."""
    require_program("mopac")
    require_module("distributed")
    job = _mopac_job("fake")

    async def main() -> list[int]:
        exe = DaskExecutor("tcp://127.0.0.1:1", max_batch=8, batch_window=0.0)
        client = exe._client = FakeClient()
        _calibrated(exe, job, 0.004, 0.002)
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(exe.run, dataclasses.replace(job, label=f"t{i}"))
            await anyio.sleep(0.01)
            sizes = [len(jobs) for jobs, _ in client.submitted]
            for i in range(len(client.submitted)):
                client.finish(i)
        return sizes

    # 5 waiting, 4 places (2 cores x 2): ceil(5/4) = 2, then 1, 1, 1.
    assert anyio.run(main) == [2, 1, 1, 1]


def test_fake_client_deep_queue_gives_larger_tasks_that_shrink_to_single_fragments() -> None:
    """Many small fragments waiting: tasks grow beyond max_batch (half an even share per core, capped by
    deep_batch and deep_share) and shrink as the queue drains, back to the max_batch rules at the tail."""
    require_program("mopac")
    require_module("distributed")
    job = _mopac_job("fake")

    async def main() -> tuple[list[int], float, int]:
        exe = DaskExecutor("tcp://127.0.0.1:1", max_batch=8, batch_window=0.0, deep_batch=32, deep_share=0.001)
        client = exe._client = FakeClient()
        _calibrated(exe, job, 0.004, 0.002)  # 4 ms fragments, 2 ms transport: 0.1 % -> 500, capped at 32
        n = 200
        outcomes: dict[str, Any] = {}

        async def one(label: str) -> None:
            outcomes[label] = await exe.run(dataclasses.replace(job, label=label))

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, f"d{i}")
            await anyio.sleep(0.01)
            while len(outcomes) < n:
                for i, (_, future) in enumerate(client.submitted):
                    if not future.done():
                        client.finish(i)
                        break  # one task at a time: the queue drains gradually
                await anyio.sleep(0.005)
        assert sorted(outcomes) == sorted(f"d{i}" for i in range(n)) and all(o.success for o in outcomes.values())
        depth = exe.queue_depth
        exe._template, exe._max_jobs = {"cores": 1000.0}, 1  # a 1000-core cluster: at most 4096 in hand
        assert exe.queue_depth == 3 * 8  # 4096 / 1000 < three max_batch tasks per core, which then apply
        return [len(jobs) for jobs, _ in client.submitted], depth, n

    sizes, depth, n = anyio.run(main)
    assert sum(sizes) == n
    # 200 waiting, 2 cores: 200 // (2 * 2) = 50, capped at deep_batch 32; later tasks take half an even share
    # per core of what still waits.
    assert sizes[0] == 32 and max(sizes) == 32
    assert sizes == sorted(sizes, reverse=True)  # tasks shrink as the queue drains
    assert sizes[-1] < 8  # the tail: an even share of the last few (one per task when places are free)
    assert len(sizes) < n // 8  # fewer tasks than max_batch alone would give
    assert depth == 4 * 32  # four deep tasks per core in hand


def test_a_failing_fragment_in_a_batch_fails_alone_and_raise_does_not_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-fragment outcomes inside a batch: only the failing fragments fail; on_error='raise' stops the run."""
    require_program("mopac")
    distributed = require_module("distributed")
    from qcmb_async import FragmentError, RunFailed
    from tests.wrappers import register_wrappers

    register_wrappers()  # in this process: the in-process workers below see the same QCEngine registry
    # Monomers fail: the smallest fragments, dispatched last (largest first), once the group is calibrated.
    monkeypatch.setenv("QCMB_TEST_FAIL_REAL", "3")
    batched: list[int] = []
    original = DaskExecutor._start_task

    def spy(self: DaskExecutor, bucket: Any, entries: list[Any]) -> None:
        if len(entries) > 1:
            batched.extend(sum(e.job.atomic_input.molecule.real) for e in entries)
        original(self, bucket, entries)

    monkeypatch.setattr(DaskExecutor, "_start_task", spy)
    inp = mbe_input("mopac-failing", "pm7", None, bsse="nocp", max_nbody=3, molecule=waters(5))

    async def main(on_error: str) -> BaseException:
        async with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                            dashboard_address=":0", resources={"cores": 1, "memory": 2},
                                            asynchronous=True) as cluster, \
                distributed.Client(cluster, asynchronous=True, set_as_default=False) as client:
            exe = DaskExecutor(client, max_batch=4, transport_share=1e-4)
            try:
                with anyio.fail_after(120):
                    await run_manybody(inp, executor=exe, store=None, on_error=on_error)
            except (RunFailed, FragmentError) as exc:
                return exc
        raise AssertionError("the run did not fail")

    failed = anyio.run(main, "continue")
    assert isinstance(failed, RunFailed)
    # FailingMopac fails fragments with 3 real atoms: the 5 monomers, and nothing else.
    assert sorted(e.level for e in failed.report.failed) == [1] * 5
    assert all("SCF exploded" in str(e) for e in failed.report.failed)
    assert 3 in batched, "no failing fragment ran inside a batch"
    stopped = anyio.run(main, "raise")
    assert isinstance(stopped, FragmentError) and stopped.level == 1
