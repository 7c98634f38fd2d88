"""ProcessExecutor: long-lived worker processes, on real programs (PySCF, NWChem)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import anyio
import numpy as np
import psutil
import pytest
from qcelemental.models.v2 import AtomicInput
from qcmanybody.v2 import ManyBodyComputer

import qcmb_async
from qcmb_async.executors.base import FragmentJob
from qcmb_async.executors.processes import ProcessExecutor
from qcmb_async.executors.threads import ThreadExecutor
from tests.helpers import alive, mbe_input, require_program, waters

pytestmark = pytest.mark.asyncio

TOL = 1e-9
WORKER_MODULE = "qcmb_async.executors._procworker"


# ----------------------------------------------------------------------------- helpers


def _is_worker(proc: psutil.Process) -> bool:
    try:
        return WORKER_MODULE in proc.cmdline()
    except psutil.Error:
        return False


def _workers() -> list[psutil.Process]:
    """Worker processes of this test process."""
    return [p for p in psutil.Process().children() if _is_worker(p)]


def _programs(worker: psutil.Process, name: str) -> list[psutil.Process]:
    try:
        return [c for c in worker.children(recursive=True) if c.name().startswith(name)]
    except psutil.Error:
        return []


def _started(proc: psutil.Process) -> float:
    try:
        return proc.create_time()
    except psutil.Error:
        return time.time()


def _in_groups(pgids: set[int]) -> list[psutil.Process]:
    """Live processes whose process group is one of ``pgids`` (the workers' groups)."""
    found = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) in pgids:
                found.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


class Watcher:
    """Samples this process's workers and their programs while a run goes on."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.workers: dict[int, psutil.Process] = {}
        self.programs: dict[int, psutil.Process] = {}

    def sample(self) -> None:
        for w in _workers():
            self.workers.setdefault(w.pid, w)
            for c in _programs(w, self.program):
                self.programs.setdefault(c.pid, c)

    async def watch(self) -> None:
        while True:
            self.sample()
            await anyio.sleep(0.05)

    async def assert_all_gone(self, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        everything = [*self.workers.values(), *self.programs.values()]
        while alive(everything) and time.monotonic() < deadline:
            await anyio.sleep(0.1)
        assert alive(everything) == []
        assert _in_groups(set(self.workers)) == []
        assert [p for p in _workers() if p.status() != psutil.STATUS_ZOMBIE] == []


def _assert_same(ours: Any, ref: Any) -> None:
    assert ours.success and ref.success
    np.testing.assert_allclose(np.asarray(ours.return_result, dtype=float), np.asarray(ref.return_result, dtype=float),
                               rtol=0, atol=TOL)
    pa, pb = ours.properties.model_dump(), ref.properties.model_dump()
    assert pa.keys() == pb.keys()
    for key, vb in pb.items():
        if isinstance(vb, float):
            assert pa[key] == pytest.approx(vb, abs=TOL), key
        elif vb is not None and not isinstance(vb, str | int | dict):
            np.testing.assert_allclose(np.asarray(pa[key], dtype=float), np.asarray(vb, dtype=float), rtol=0,
                                       atol=TOL, err_msg=key)
        elif not isinstance(vb, dict):
            assert pa[key] == vb, key


async def _run(inp: Any, executor: Any, **kw: Any) -> Any:
    return await qcmb_async.run_manybody(inp, ncores=2, memory=2, executor=executor, store=None, **kw)


def _job(program: str, basis: str, nwaters: int, timeout: float | None = None, label: str = "job") -> FragmentJob:
    inp = AtomicInput(molecule=waters(nwaters), specification={"driver": "energy",
                                                               "model": {"method": "hf", "basis": basis}})
    return FragmentJob(label=label, nbody=nwaters, program=program, atomic_input=inp.model_dump(),
                       task_config={"ncores": 1, "memory": 1.0, "scratch_directory": None, "retries": 0},
                       timeout=timeout)


# ------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("driver", "bsse", "max_nbody"), [("energy", "cp", 3), ("gradient", "nocp", 2)])
async def test_pyscf_on_processes_equals_threads_and_sequential(driver: str, bsse: str, max_nbody: int) -> None:
    require_program("pyscf")
    inp = mbe_input("pyscf", "hf", "sto-3g", driver=driver, bsse=bsse, max_nbody=max_nbody)
    ours = await _run(inp, ProcessExecutor(max_workers=2, warm={"pyscf"}))
    threads = await _run(inp, ThreadExecutor(max_workers=2))
    ref = await anyio.to_thread.run_sync(ManyBodyComputer.from_manybodyinput, inp)
    assert ours.extras["qcmb_async"]["executor"] == "processes"
    _assert_same(ours, threads)
    _assert_same(ours, ref)
    if driver == "gradient":
        assert np.asarray(ours.return_result).shape == (9, 3)


async def test_workers_are_reused() -> None:
    require_program("pyscf")
    inp = mbe_input("pyscf", "hf", "sto-3g", bsse="nocp", max_nbody=3)
    result = await _run(inp, ProcessExecutor(max_workers=2))
    frags = result.extras["qcmb_async"]["fragments"]
    assert len(frags) >= 7
    pids = {f["pid"] for f in frags}
    assert len(pids) == 2
    assert os.getpid() not in pids
    assert _workers() == []  # stopped on exit


def _peak_overlap(records: list[dict[str, Any]]) -> int:
    """Most fragments running at the same moment, from their worker-side start/end times."""
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    busy = peak = 0
    for _, delta in events:
        busy += delta
        peak = max(peak, busy)
    return peak


async def test_a_pool_entered_once_serves_several_runs() -> None:
    require_program("pyscf")
    cp = mbe_input("pyscf", "hf", "sto-3g", bsse="cp", max_nbody=2)
    nocp = mbe_input("pyscf", "hf", "sto-3g", bsse="nocp", max_nbody=3)
    ref_cp = await _run(cp, ThreadExecutor(max_workers=2))
    ref_nocp = await _run(nocp, ThreadExecutor(max_workers=2))
    async with ProcessExecutor(max_workers=2, warm={"pyscf"}) as pool:
        pids = pool.worker_pids
        assert len(pids) == 2 and pool.running
        first = await _run(cp, pool)
        assert pool.running and pool.worker_pids == pids  # the run left the pool running
        async with anyio.create_task_group() as tg:  # two runs at once share the two workers
            results: dict[str, Any] = {}

            async def one(name: str, inp: Any) -> None:
                results[name] = await _run(inp, pool)

            tg.start_soon(one, "cp", cp)
            tg.start_soon(one, "nocp", nocp)
        assert pool.worker_pids == pids
        records = [r for res in (first, *results.values()) for r in res.extras["qcmb_async"]["fragments"]]
        assert {r["pid"] for r in records} == set(pids)  # no run started a worker of its own
        shared = [r for res in results.values() for r in res.extras["qcmb_async"]["fragments"]]
        assert _peak_overlap(shared) <= 2  # the pool's size bounds both runs together
    _assert_same(first, ref_cp)
    _assert_same(results["cp"], ref_cp)
    _assert_same(results["nocp"], ref_nocp)
    assert not pool.running
    assert alive([psutil.Process(p) for p in pids if psutil.pid_exists(p)]) == []
    assert _workers() == []


async def test_a_running_pool_is_refused_from_another_event_loop() -> None:
    require_program("pyscf")
    inp = mbe_input("pyscf", "hf", "sto-3g", bsse="nocp", max_nbody=2)
    async with ProcessExecutor(max_workers=1) as pool:
        pids = pool.worker_pids
        with pytest.raises(qcmb_async.InputError, match=r"running in another event loop.*await run_manybody"):
            # The synchronous run() has its own event loop, which cannot use this loop's pipes.
            await anyio.to_thread.run_sync(lambda: qcmb_async.run(inp, executor=pool, store=None))
        assert pool.worker_pids == pids  # the refusal did not disturb the pool
        assert (await _run(inp, pool)).success
    assert _workers() == []


async def _kill_busy_worker(watcher: Watcher, killed: list[psutil.Process]) -> None:
    """SIGKILL the first worker whose NWChem has been running for a moment (only the worker)."""
    while True:
        watcher.sample()
        for w in _workers():
            progs = [p for p in _programs(w, "nwchem") if time.time() - _started(p) > 0.3]
            if progs:
                os.kill(w.pid, signal.SIGKILL)
                killed.append(w)
                return
        await anyio.sleep(0.02)


async def _run_with_kill(inp: Any, retries: int) -> tuple[Any, list[psutil.Process], Watcher]:
    watcher, killed = Watcher("nwchem"), []
    out: dict[str, Any] = {}

    async def run_it() -> None:
        try:
            out["result"] = await _run(inp, ProcessExecutor(max_workers=2), retries=retries)
        except qcmb_async.FragmentError as exc:
            out["error"] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher.watch)
        tg.start_soon(_kill_busy_worker, watcher, killed)
        await run_it()
        tg.cancel_scope.cancel()
    assert killed, "no worker was ever seen running NWChem"
    return out, killed, watcher


async def test_worker_killed_mid_fragment() -> None:
    require_program("nwchem")
    # ~1-2 s per fragment: long enough to kill a worker while its NWChem runs.
    inp = mbe_input("nwchem", "hf", "cc-pvtz", bsse="nocp", max_nbody=2, molecule=waters(2))
    clean = await _run(inp, ThreadExecutor(max_workers=2))

    out, killed, watcher = await _run_with_kill(inp, retries=1)
    _assert_same(out["result"], clean)
    records = out["result"].extras["qcmb_async"]["fragments"]
    retried = [r for r in records if r["history"][0]["error_type"] == "WorkerDied"]
    assert len(retried) == 1 and retried[0]["attempts"] == 2 and retried[0]["status"] == "ok"
    assert retried[0]["pid"] != killed[0].pid  # the retry ran on a replacement worker
    await watcher.assert_all_gone()

    out, killed, watcher = await _run_with_kill(inp, retries=0)
    err = out["error"]
    assert err.error_type == "WorkerDied"
    assert err.label in err.error_message
    assert f"worker process {killed[0].pid}" in err.error_message and "SIGKILL" in err.error_message
    await watcher.assert_all_gone()


async def test_cancel_kills_workers_and_programs() -> None:
    require_program("nwchem")
    inp = mbe_input("nwchem", "hf", "sto-3g", bsse="cp", max_nbody=3, molecule=waters(6))
    watcher = Watcher("nwchem")
    t0 = time.monotonic()
    cancelled_at = 0.0
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.watch)

            async def cancel_later() -> None:
                nonlocal cancelled_at
                # ~2 s into the run, and only once NWChem is really running.
                while time.monotonic() - t0 < 2.0 or not alive(list(watcher.programs.values())):
                    await anyio.sleep(0.05)
                cancelled_at = time.monotonic()
                scope.cancel()

            tg.start_soon(cancel_later)
            await _run(inp, ProcessExecutor(max_workers=2))
            pytest.fail("the run finished before it was cancelled")
    assert scope.cancelled_caught
    # A hang guard, not a speed test: without the kill, control came back only when NWChem ended by itself.
    assert time.monotonic() - cancelled_at < 30.0
    assert len(watcher.workers) == 2 and watcher.programs
    await watcher.assert_all_gone(within=10.0)


async def test_timeout_kills_worker_and_replaces_it() -> None:
    require_program("pyscf")
    async with ProcessExecutor(max_workers=1, warm={"pyscf"}) as executor:
        (first,) = executor.worker_pids
        t0 = time.monotonic()
        # In-process PySCF (a water dimer in cc-pVTZ takes seconds): only a process can be killed.
        slow = await executor.run(_job("pyscf", "cc-pvtz", 2, timeout=0.5, label="slow"))
        assert time.monotonic() - t0 < 60.0  # a hang guard; the kill itself is proven by the dead worker below
        assert not slow.success and slow.error_type == "TimeoutError"
        assert "slow" in slow.error_message and slow.pid == first
        assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
        fast = await executor.run(_job("pyscf", "sto-3g", 1, label="fast"))
        assert fast.success and fast.pid not in (first, os.getpid())
        assert executor.worker_pids == [fast.pid]

    inp = mbe_input("pyscf", "hf", "cc-pvtz", bsse="nocp", max_nbody=2, molecule=waters(2))
    with pytest.raises(qcmb_async.FragmentError) as info:
        await _run(inp, ProcessExecutor(max_workers=2, warm={"pyscf"}), timeout=1.5)
    assert info.value.error_type == "TimeoutError"
    assert info.value.level == 2
    assert _workers() == []
