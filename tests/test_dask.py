"""Dask executor on a real `dask scheduler` with two `dask worker` processes on 127.0.0.1, and on a LocalCluster."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import psutil
import pytest
from qcmanybody.models.v2 import ManyBodyInput
from qcmanybody.v2 import ManyBodyComputer

from qcmb_async import FragmentError, InputError, plan_manybody, run_manybody
from qcmb_async._core import events as ev
from qcmb_async.executors.base import FragmentJob
from qcmb_async.executors.dask import SCHEDULER_ENV, DaskExecutor
from tests.helpers import max_overlap, mbe_input, require_module, require_program, trimer, waters

pytestmark = pytest.mark.asyncio

TOL = 1e-9
ROOT = Path(__file__).resolve().parents[1]
#: Threads exceed the declared cores, so only the ``cores``/``memory`` resources can keep a worker at two fragments.
WORKER_THREADS = 4
WORKER_RESOURCES = "cores=2,memory=4"
TC = {"ncores": 1, "memory": 1.0, "scratch_directory": None, "retries": 0}


@pytest.fixture(scope="module", autouse=True)
def _needs_dask() -> None:
    require_module("distributed")


class Cluster:
    """A `dask scheduler` and `dask worker` subprocesses, each in its own session."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": path, "QCMB_ASYNC_STORE": "none"}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.address = ""
        self.workers: dict[str, str] = {}
        """Worker name -> address of the two permanent workers."""

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen([sys.executable, "-m", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.workdir, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_scheduler(self) -> None:
        sched_file = self.workdir / "scheduler.json"
        self._spawn("scheduler", ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(sched_file)])
        deadline = time.time() + 60
        while time.time() < deadline:
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
                self.address = json.loads(sched_file.read_text())["address"]
                return
            if self.procs["scheduler"].poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"dask scheduler did not start: {self.log('scheduler')}")

    def start_worker(self, name: str, resources: str = WORKER_RESOURCES, nthreads: int = WORKER_THREADS) -> None:
        self._spawn(name, ["distributed.cli.dask_worker", self.address, "--name", name, "--host", "127.0.0.1",
                           "--nthreads", str(nthreads), "--nworkers", "1", "--no-nanny", "--no-dashboard",
                           "--resources", resources, "--local-directory", str(self.workdir / name)])

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]

    def kill(self, name: str) -> None:
        """SIGKILL a process with everything it started (its programs run in sessions of their own)."""
        proc = self.procs[name]
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        proc.wait(10)

    def stop(self) -> None:
        """Workers first (without a scheduler they keep trying to reconnect), then the scheduler."""
        workers = [n for n in self.procs if n != "scheduler"]
        for group in (workers, ["scheduler"]):
            for name in group:
                if self.procs[name].poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.procs[name].pid, signal.SIGTERM)
            deadline = time.time() + 5
            for name in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.procs[name].wait(max(0.1, deadline - time.time()))
                self.kill(name)


def _workers_by_name(address: str) -> dict[str, str]:
    from distributed import Client

    with Client(address, timeout=30, set_as_default=False) as client:
        info = client.scheduler_info(n_workers=-1)
        return {str(w["name"]): addr for addr, w in info["workers"].items()}


@pytest.fixture(scope="module")
def cluster(_needs_dask: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        c.start_scheduler()
        for name in ("worker-a", "worker-b"):
            c.start_worker(name)
        deadline = time.time() + 90
        while not {"worker-a", "worker-b"} <= set(_workers_by_name(c.address)):
            if time.time() > deadline or any(p.poll() is not None for p in c.procs.values()):
                raise RuntimeError("dask workers did not connect:\n" + "\n".join(c.log(n) for n in c.procs))
            time.sleep(0.2)
        c.workers = _workers_by_name(c.address)
        yield c
    finally:
        c.stop()


@functools.cache
def _reference(name: str) -> Any:
    return ManyBodyComputer.from_manybodyinput(INPUTS[name]())


INPUTS = {
    "mopac-waters5": lambda: mbe_input("mopac", "pm7", None, molecule=waters(5), bsse="nocp", max_nbody=3),
    "mopac-waters4": lambda: mbe_input("mopac", "pm7", None, molecule=waters(4), bsse="nocp", max_nbody=3),
    # c1, as qcmb_async sends every NWChem fragment: the sequential reference then runs the same symmetry-free jobs
    # (NWChem's autosym converges these symmetric fragments elsewhere within its default thresholds, ~2e-7 Eh).
    "nwchem-waters4": lambda: mbe_input("nwchem", "hf", "sto-3g", molecule=waters(4).model_copy(
        update={"fix_symmetry": "c1"}), bsse="cp", max_nbody=3),
}


def assert_same(ours: Any, ref: Any) -> None:
    assert ours.success
    np.testing.assert_allclose(np.asarray(ours.return_result, dtype=float), np.asarray(ref.return_result, dtype=float),
                               rtol=0, atol=TOL)
    assert ours.return_result == pytest.approx(ref.return_result, abs=TOL)


def fragments(result: Any) -> list[dict[str, Any]]:
    return result.extras["qcmb_async"]["fragments"]


async def test_mopac_fragments_run_on_both_workers(cluster: Cluster) -> None:
    require_program("mopac")
    inp: ManyBodyInput = INPUTS["mopac-waters5"]()
    # No ncores/memory: the run is sized from what the workers declare (2 x cores=2, memory=4).
    result = await run_manybody(inp, executor="dask", scheduler=cluster.address, store=None)
    assert_same(result, _reference("mopac-waters5"))
    assert result.extras["qcmb_async"]["executor"] == "dask"
    assert result.extras["qcmb_async"]["ncores"] == 4 and result.extras["qcmb_async"]["memory"] == 8
    assert all(f["status"] == "ok" for f in fragments(result))
    assert {f["worker"] for f in fragments(result)} == set(cluster.workers.values())


async def test_one_connection_serves_several_runs(cluster: Cluster) -> None:
    require_program("mopac")
    async with DaskExecutor(cluster.address) as exe:
        client = exe.client
        first = await run_manybody(INPUTS["mopac-waters4"](), executor=exe, store=None)
        assert exe.running and exe.client is client and client.status == "running"  # the run left it open
        second = await run_manybody(INPUTS["mopac-waters5"](), executor=exe, store=None)
        assert exe.client is client
    assert not exe.running and client.status == "closed"  # the last exit closed the Client it opened
    assert_same(first, _reference("mopac-waters4"))
    assert_same(second, _reference("mopac-waters5"))


async def test_nwchem_on_both_workers_never_above_declared_cores(cluster: Cluster) -> None:
    require_program("nwchem")
    # 8 fragments in flight for 2 x 2 declared cores: Dask, not the client, must hold each worker at two.
    result = await run_manybody(INPUTS["nwchem-waters4"](), ncores=8, memory=16, executor=DaskExecutor(cluster.address),
                                store=None)
    assert_same(result, _reference("nwchem-waters4"))
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for f in fragments(result):
        by_worker.setdefault(f["worker"], []).append((f["start"], f["end"]))
    assert set(by_worker) == set(cluster.workers.values())
    overlaps = {w: max_overlap(iv) for w, iv in by_worker.items()}
    assert max(overlaps.values()) <= 2, overlaps
    assert max(overlaps.values()) == 2, f"fragments never overlapped on a worker: {overlaps}"


async def test_worker_killed_mid_run_gives_correct_result(cluster: Cluster) -> None:
    require_program("nwchem")
    from distributed import Client

    cluster.start_worker("worker-doomed")
    seen: dict[str, Any] = {"finished_there": 0}
    async with Client(cluster.address, asynchronous=True, set_as_default=False) as observer:
        await observer.wait_for_workers(3, timeout=60)
        info = await observer.scheduler.identity(n_workers=-1)
        doomed = next(a for a, w in info["workers"].items() if w["name"] == "worker-doomed")

        async def on_event(event: Any) -> None:
            if isinstance(event, ev.FragmentFinished) and event.worker == doomed:
                seen["finished_there"] += 1

        async def assassin() -> None:
            """SIGKILL the doomed worker while it holds fragments (after its first result, if it comes quickly)."""
            t0 = time.time()
            while True:
                held = (await observer.processing(workers=[doomed])).get(doomed, ())
                # Largest-first dispatch hands out equal fragments in waves; waiting for a
                # finished fragment is only a preference, not a condition for the kill.
                if held and (seen["finished_there"] or time.time() - t0 > 1.0):
                    seen["processing"] = list(held)
                    cluster.kill("worker-doomed")
                    seen["killed_at"] = time.time()
                    return
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            tg.start_soon(assassin)
            result = await run_manybody(INPUTS["nwchem-waters4"](), ncores=8, memory=16, on_event=on_event,
                                        executor=DaskExecutor(cluster.address), store=None)
            tg.cancel_scope.cancel()
    if "killed_at" not in seen:
        cluster.kill("worker-doomed")  # later tests expect the two-worker cluster
    assert "killed_at" in seen, "the run ended before the doomed worker could be killed holding a fragment"
    assert_same(result, _reference("nwchem-waters4"))
    recs = fragments(result)
    assert all(f["status"] == "ok" and f["attempts"] == 1 for f in recs)  # Dask re-ran them, not our retries
    assert not [f for f in recs if f["worker"] == doomed and f["end"] > seen["killed_at"]]
    # Task keys are qcmb-<run>-<sha1(label)[:10]>-<attempt>-<nonce> (a batch: the digests joined by dots):
    # the fragments the dead worker held ran elsewhere.
    by_digest = {hashlib.sha1(f["label"].encode()).hexdigest()[:10]: f for f in recs}
    rerun = [by_digest[d] for key in seen["processing"] for d in str(key).split("-")[2].split(".")]
    assert rerun and all(f["worker"] in cluster.workers.values() for f in rerun), (seen["processing"], rerun)


async def test_local_cluster_client() -> None:
    require_program("mopac")
    from distributed import Client, LocalCluster

    async with LocalCluster(n_workers=2, threads_per_worker=2, resources={"cores": 2, "memory": 4}, asynchronous=True,
                            processes=True, dashboard_address=":0") as lc, \
            Client(lc, asynchronous=True, set_as_default=False) as client:
        result = await run_manybody(INPUTS["mopac-waters4"](), ncores=4, memory=8, executor=DaskExecutor(client),
                                    store=None)
        assert client.status == "running"  # a Client we were given is left open
        workers = set((await client.scheduler.identity(n_workers=-1))["workers"])
    assert_same(result, _reference("mopac-waters4"))
    assert {f["worker"] for f in fragments(result)} == workers


async def test_sync_client_gets_its_own_async_client(cluster: Cluster) -> None:
    require_program("mopac")
    from distributed import Client

    sync_client = await anyio.to_thread.run_sync(functools.partial(Client, cluster.address, set_as_default=False))
    try:
        exe = DaskExecutor(sync_client)
        result = await run_manybody(INPUTS["mopac-waters4"](), ncores=4, memory=8, executor=exe, store=None)
        assert_same(result, _reference("mopac-waters4"))
        assert sync_client.status == "running"
        assert await anyio.to_thread.run_sync(sync_client.submit(sum, [1, 2]).result) == 3
    finally:
        await anyio.to_thread.run_sync(sync_client.close)


async def test_no_scheduler_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    with pytest.raises(InputError) as err:
        DaskExecutor()
    msg = str(err.value)
    assert "the Dask executor needs a scheduler" in msg
    assert "DaskExecutor(scheduler='tcp://host:8786')" in msg
    assert "distributed.Client" in msg
    assert f"{SCHEDULER_ENV}=tcp://host:8786" in msg


async def test_scheduler_from_environment(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SCHEDULER_ENV, cluster.address)
    async with DaskExecutor() as exe:
        assert exe.client.scheduler.address == cluster.address
        assert exe.client.asynchronous
        assert exe.capacity == (4.0, 8.0)


async def test_unreachable_scheduler() -> None:
    with pytest.raises(InputError, match=r"could not connect to the Dask scheduler at 'tcp://127\.0\.0\.1:9'"):
        async with DaskExecutor("tcp://127.0.0.1:9", connect_timeout=2):
            pass


def _cfour_job() -> FragmentJob:
    """A fragment for CFOUR: QCEngine knows it, this machine (and so the workers) must not have it."""
    import qcengine

    if qcengine.get_program("cfour", check=False).found():
        pytest.skip("cfour is installed here: the missing-program tests need a program the workers lack")
    plan = plan_manybody(mbe_input("nwchem", "hf", "sto-3g", bsse="nocp", max_nbody=2))
    frag = plan.fragments[0]
    return FragmentJob(label=frag.label, nbody=frag.level, program="cfour",
                       atomic_input=plan.materialise(frag).atomic_input, task_config=TC, run_id="test")


async def test_program_missing_on_worker_is_named(cluster: Cluster) -> None:
    require_program("nwchem")
    async with DaskExecutor(cluster.address) as exe:
        outcome = await exe.run(_cfour_job())
    assert not outcome.success
    assert outcome.error_type == "ProgramNotAvailable"
    assert outcome.worker in cluster.workers.values()
    assert f"program 'cfour' is not available on Dask worker {outcome.worker}" in outcome.error_message
    assert "install it there" in (outcome.error_message or "")
    assert outcome.extras["dask_worker"] == outcome.worker


async def test_program_missing_on_workers_fails_the_run(cluster: Cluster) -> None:
    """With Dask, availability is checked on the workers: the run fails naming the worker."""
    _cfour_job()  # skips when cfour is installed
    inp = mbe_input("cfour", "hf", "sto-3g", bsse="nocp", max_nbody=2)
    with pytest.raises(FragmentError) as err:
        await run_manybody(inp, ncores=4, memory=8, executor=DaskExecutor(cluster.address), store=None)
    assert err.value.error_type == "ProgramNotAvailable"
    assert any(addr in err.value.error_message for addr in cluster.workers.values())


async def test_fragment_no_worker_can_run_fails_at_once(cluster: Cluster) -> None:
    require_program("nwchem")
    job = dataclasses.replace(_cfour_job(), program="nwchem")
    async with DaskExecutor(cluster.address) as exe:
        outcome = await exe.run(dataclasses.replace(job, task_config={**TC, "ncores": 3}))
    assert outcome.error_type == "ResourcesUnavailable"
    assert "no worker of the Dask cluster can run a fragment asking for {'cores': 3" in (outcome.error_message or "")
    # program_resources=True: only workers declaring `nwchem=N` may run NWChem fragments; none here does.
    async with DaskExecutor(cluster.address, program_resources=True) as exe:
        outcome = await exe.run(job)
    assert outcome.error_type == "ResourcesUnavailable"
    assert "'nwchem': 1" in (outcome.error_message or "")


def _programs_under(cluster: Cluster) -> list[psutil.Process]:
    """nwchem processes started by the cluster's workers (own sessions, so found by parentage)."""
    found = []
    for proc in cluster.procs.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            found += [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "nwchem"]
    return found


async def test_timeout_and_cancel_kill_the_remote_program(cluster: Cluster) -> None:
    require_program("nwchem")
    plan = plan_manybody(mbe_input("nwchem", "mp2", "cc-pvtz", molecule=trimer(), bsse="cp", max_nbody=3))
    frag = max(plan.fragments, key=lambda f: f.level)  # the trimer: several seconds
    job = FragmentJob(label=frag.label, nbody=frag.level, program="nwchem",
                      atomic_input=plan.materialise(frag).atomic_input, task_config=TC, run_id="test")
    async with DaskExecutor(cluster.address) as exe:
        t0 = time.time()
        outcome = await exe.run(dataclasses.replace(job, timeout=1.0))
        assert outcome.error_type == "TimeoutError", outcome.error_message
        assert time.time() - t0 < 5
        assert "exceeded its timeout of 1.0 s on Dask worker" in (outcome.error_message or "")

        async with anyio.create_task_group() as tg:
            tg.start_soon(exe.run, job)
            with anyio.fail_after(20):
                while not _programs_under(cluster):
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        with anyio.fail_after(5):
            while _programs_under(cluster):
                await anyio.sleep(0.05)
