"""Batch clusters through dask-jobqueue on a real single-node SLURM (scripts/slurm/start-local-slurm.sh).

Jobs are single-core (the machine has two cores, shared); fragments are MOPAC PM7 waters. The reference
is QCManyBody's own sequential computer. Without SLURM these tests skip, under CI=true they fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from qcmanybody.v2 import ManyBodyComputer

from qcmb_async import FragmentError, InputError, run, run_manybody
from qcmb_async.executors.hpc import ClusterOptions, cluster_options, job_script, start_cluster, stop_cluster
from tests.helpers import IN_CI, mbe_input, require_executable, require_module, require_program, waters

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "scripts/slurm/start-local-slurm.sh"
TOL = 1e-9
JOB = {"kind": "slurm", "job_cores": 1, "job_memory": 1.0, "walltime": "00:15:00"}


def _need(condition: bool, why: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(f"{why}, but CI=true: .ci/run must start SLURM (scripts/slurm/start-local-slurm.sh)")
        pytest.skip(why)


@pytest.fixture(scope="module")
def slurm() -> str:
    """A running SLURM (started with the project's script when it is not); the node name."""
    require_module("dask_jobqueue")
    require_program("mopac")
    for exe in ("sinfo", "sbatch", "squeue", "scancel"):
        require_executable(exe)
    up = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if up.returncode != 0 or not re.search(r"idle|mix|alloc", up.stdout):
        _need(os.geteuid() == 0, "SLURM is not running and starting it needs root")
        started = subprocess.run([str(START)], capture_output=True, text=True, timeout=120)
        _need(started.returncode == 0, f"could not start SLURM: {started.stderr[-2000:]}")
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()


def _our_jobs(name: str = "qcmb-worker") -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %t"], capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def _wait_no_jobs(name: str = "qcmb-worker", timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while (jobs := _our_jobs(name)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return jobs


def _reference(inp: Any) -> float:
    return float(ManyBodyComputer.from_manybodyinput(inp).return_result)


# ----------------------------------------------------------------- job scripts (no batch system needed)


def test_job_scripts_carry_resources_tls_and_job_sizes() -> None:
    require_module("dask_jobqueue")
    slurm = job_script(cluster_options("slurm", queue="normal", job_cores=4, job_memory=8, walltime="04:00:00",
                                       host="127.0.0.1"))
    assert "#SBATCH -p normal" in slurm and "#SBATCH --cpus-per-task=4" in slurm and "#SBATCH -t 04:00:00" in slurm
    assert re.search(r"#SBATCH --mem=(8G|8192M)", slurm), slurm
    assert "--resources cores=4,memory=8" in slurm
    # Workers retire 5 min before the 4 h walltime (staggered), so adapt replaces them before SLURM kills them.
    assert "--lifetime 14100s --lifetime-stagger 150s" in slurm
    assert "tls://127.0.0.1:" in slurm and "--tls-key" in slurm and "0.0.0.0" not in slurm
    pbs = job_script(cluster_options("pbs", queue="workq", job_cores=2, job_memory=3.5, walltime="01:30:00",
                                     host="127.0.0.1"))
    assert "#PBS -q workq" in pbs and "#PBS -l walltime=01:30:00" in pbs
    assert re.search(r"#PBS -l select=1:ncpus=2:mem=3584MB", pbs), pbs
    assert "--resources cores=2,memory=3.5" in pbs and "tls://127.0.0.1:" in pbs


@pytest.mark.parametrize(("given", "match"), [
    ({"kind": "lsf"}, "unknown batch system 'lsf'"),
    ({"kind": "slurm", "walltime": "4h"}, "HH:MM:SS"),
    ({"kind": "slurm", "job_cores": 0}, "job_cores"),
    ({"kind": "slurm", "min_jobs": 3, "max_jobs": 2}, "below min_jobs"),
])
def test_bad_cluster_options_are_input_errors(given: dict[str, Any], match: str) -> None:
    with pytest.raises(InputError, match=match):
        cluster_options(given)


def test_cluster_conflicts_are_input_errors_before_anything_runs() -> None:
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(2))
    with pytest.raises(InputError, match="executor must be 'auto' or 'dask'"):
        run(inp, cluster="slurm", executor="threads", store=None)
    with pytest.raises(InputError, match="not both"):
        run(inp, cluster="slurm", scheduler="tcp://127.0.0.1:8786", store=None)


def test_cli_job_options_need_a_cluster(tmp_path: Path) -> None:
    xyz = tmp_path / "w.xyz"
    xyz.write_text("O 0 0 0\nH 0.76 0.59 0\nH -0.76 0.59 0\n--\nO 3 0 0\nH 3.76 0.59 0\nH 2.24 0.59 0\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "qcmb_async", "run", str(xyz), "--program", "mopac", "--method", "pm7"]
    out = subprocess.run([*base, "--job-cores", "4"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "--cluster" in out.stderr
    out = subprocess.run([*base, "--cluster", "slurm", "--walltime", "4h"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2 and "HH:MM:SS" in out.stderr


def test_missing_scheduler_file_is_an_input_error(tmp_path: Path) -> None:
    require_module("distributed")
    from qcmb_async.executors.dask import DaskExecutor

    async def main() -> None:
        async with DaskExecutor(tmp_path / "nowhere.json", connect_timeout=1):
            pass

    with pytest.raises(InputError, match="no Dask scheduler address in the scheduler file"):
        anyio.run(main)


# ----------------------------------------------------------------- real SLURM


def test_mbe_on_a_slurm_cluster_passed_in_uses_both_jobs(slurm: str, tmp_path: Path) -> None:
    """The issue's example: a user's SLURMCluster (2 one-core jobs) as scheduler=; both jobs compute."""
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(4))
    reference = _reference(inp)

    async def main() -> tuple[Any, dict[str, str]]:
        async with SLURMCluster(cores=1, memory="1GiB", processes=1, walltime="00:15:00", asynchronous=True,
                                job_name="qcmb-worker", log_directory=str(tmp_path),
                                scheduler_options={"host": "127.0.0.1",
                                                                           "dashboard_address": None},
                                worker_extra_args=["--resources", "cores=1,memory=1"]) as cluster:
            cluster.scale(jobs=2)
            async with Client(cluster, asynchronous=True) as client:
                await client.wait_for_workers(2, timeout=120)  # so that both get fragments to compute
                result = await run_manybody(inp, scheduler=cluster, store=None)
                jobs = await client.run(lambda: os.environ.get("SLURM_JOB_ID", ""))
        return result, jobs

    result, jobs = anyio.run(main)
    assert abs(float(result.return_result) - reference) < TOL
    workers = {f["worker"] for f in result.extras["qcmb_async"]["fragments"]}
    assert len(workers) == 2, workers
    assert all(jobs[w] for w in workers) and len({jobs[w] for w in workers}) == 2, jobs
    assert _wait_no_jobs() == []


def test_cluster_started_for_the_run_is_tls_adaptive_and_gone_after(slurm: str) -> None:
    """cluster=... starts a TLS scheduler bound to one address, jobs on demand, and cancels them after."""
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(3))
    reference = _reference(inp)
    t0 = time.monotonic()
    result = run(inp, cluster={**JOB, "max_jobs": 2, "host": "127.0.0.1"}, store=None)
    assert abs(float(result.return_result) - reference) < TOL
    frags = result.extras["qcmb_async"]["fragments"]
    assert all(f["worker"].startswith("tls://") for f in frags)
    assert result.extras["qcmb_async"]["executor"] == "dask"
    assert time.monotonic() - t0 < 120
    assert _wait_no_jobs() == []


def test_plain_tcp_client_cannot_submit_to_a_started_cluster(slurm: str) -> None:
    distributed = require_module("distributed")

    async def main() -> None:
        opts = ClusterOptions(**JOB, max_jobs=1, host="127.0.0.1")
        cluster, shared = await start_cluster(opts)
        try:
            address = cluster.scheduler_address
            assert address.startswith("tls://127.0.0.1:"), address
            for target, security in ((address.replace("tls://", "tcp://"), None), (address, None)):
                # tls:// without credentials: refused by distributed before connecting (TypeError).
                with pytest.raises((OSError, TimeoutError, ValueError, TypeError)):
                    async with distributed.Client(target, asynchronous=True, timeout=5, security=security,
                                                  set_as_default=False) as client:
                        await client.submit(sum, [1, 2])
            # With the cluster's credentials the same scheduler answers.
            async with distributed.Client(address, asynchronous=True, timeout=30, security=cluster.security,
                                          set_as_default=False) as client:
                assert (await client.scheduler.identity())["address"] == address
        finally:
            await stop_cluster(cluster, shared)
        assert not shared.exists()  # the workers' temporary TLS key is gone with the cluster

    anyio.run(main)


def test_jobs_come_with_waiting_fragments_and_go_when_the_queue_drains(slurm: str) -> None:
    """Entering the executor starts no job and waits for none; the run brings jobs; adapt releases them after."""
    from qcmb_async.executors.dask import DaskExecutor

    async def main() -> tuple[float, int, tuple[float, float], list[str]]:
        exe = DaskExecutor(cluster={**JOB, "max_jobs": 2, "host": "127.0.0.1"})
        t0 = time.monotonic()
        async with exe:
            entered = time.monotonic() - t0
            workers = len((await exe.client.scheduler.identity())["workers"])
            capacity = exe.capacity
            inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(3))
            result = await run_manybody(inp, executor=exe, store=None)
            assert abs(float(result.return_result) - _reference(inp)) < TOL
            # Still inside `async with`: the cluster lives on, but with nothing to do its jobs are released.
            left = await anyio.to_thread.run_sync(_wait_no_jobs, "qcmb-worker", 90)
        return entered, workers, capacity, left

    entered, workers, capacity, left = anyio.run(main)
    assert workers == 0 and entered < 20, (entered, workers)
    assert capacity == (2.0, 2.0)  # sized for the jobs it may grow to: 2 jobs x (1 core, 1 GiB)
    assert left == [], "adapt kept jobs after the queue drained"
    assert _wait_no_jobs() == []


def test_cli_cluster_slurm_runs_on_the_default_address(slurm: str, tmp_path: Path) -> None:
    """`qcmb-async run --cluster slurm ...` as a user types it (scheduler on this host's address)."""
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(3))
    (tmp_path / "in.json").write_text(inp.model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "qcmb_async", "run", "in.json", "--cluster", "slurm", "--job-cores",
                          "1", "--job-memory", "1", "--max-jobs", "2", "--walltime", "00:10:00", "--no-store",
                          "-o", "out.json", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert abs(result["return_result"] - _reference(inp)) < TOL
    workers = {f["worker"] for f in result["extras"]["qcmb_async"]["fragments"]}
    assert all(w.startswith("tls://") for w in workers), workers
    assert _wait_no_jobs() == []


@pytest.mark.parametrize(("jobs", "match"), [
    ({"queue": "no-such-partition"}, "invalid partition"),
    ({"job_cores": 512}, "SLURM refuses the batch job"),
])
def test_a_job_slurm_refuses_is_an_input_error_not_a_hang(slurm: str, jobs: dict[str, Any], match: str) -> None:
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(2))
    t0 = time.monotonic()
    with pytest.raises(InputError, match=match):
        run(inp, cluster={**JOB, "max_jobs": 1, "host": "127.0.0.1", **jobs}, store=None)
    assert time.monotonic() - t0 < 60
    assert _wait_no_jobs() == []


def test_node_without_the_program_is_a_clear_error_naming_the_job(slurm: str) -> None:
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(2))
    with pytest.raises(FragmentError) as err:
        run(inp, cluster={**JOB, "max_jobs": 1, "host": "127.0.0.1", "prologue": ["export PATH=/nonexistent"]},
            store=None)
    assert err.value.error_type == "ProgramNotAvailable"
    assert re.search(r"SLURM job \d+", str(err.value)) and "mopac" in str(err.value), str(err.value)
    assert _wait_no_jobs() == []


def test_scancel_of_one_job_mid_run_reruns_its_fragments_elsewhere(slurm: str) -> None:
    """scancel the job that just computed a fragment: the run finishes on the other job(s), result exact."""
    from distributed import Client

    from qcmb_async import events as ev

    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3, molecule=waters(5))
    reference = _reference(inp)
    killed: dict[str, Any] = {}

    async def main() -> Any:
        cluster, shared = await start_cluster(ClusterOptions(**JOB, min_jobs=2, max_jobs=2, host="127.0.0.1"))
        try:
            async with Client(cluster, asynchronous=True, security=cluster.security) as client:
                await client.wait_for_workers(2, timeout=120)

                async def on_event(event: Any) -> None:
                    if isinstance(event, ev.FragmentFinished) and not killed and not event.cached:
                        name = (await client.scheduler.identity())["workers"][event.worker]["name"]
                        job = cluster.workers[name].job_id
                        killed.update(job=job, worker=event.worker, at=time.time())
                        subprocess.run(["scancel", job], check=True, timeout=30)

                return await run_manybody(inp, scheduler=cluster, store=None, on_event=on_event, retries=2)
        finally:
            await stop_cluster(cluster, shared)

    result = anyio.run(main)
    assert killed, "no job was cancelled"
    assert abs(float(result.return_result) - reference) < TOL
    frags = result.extras["qcmb_async"]["fragments"]
    later = [f for f in frags if f["start"] is not None and f["start"] > killed["at"]]
    assert len(later) >= 5, "the cancellation did not land mid-run"
    assert killed["worker"] not in {f["worker"] for f in later}  # the cancelled job's worker is gone
    assert killed["job"] not in _our_jobs()
    assert _wait_no_jobs() == []


@pytest.mark.slow
def test_whole_allocation_killed_then_rerun_recomputes_nothing_stored(slurm: str, tmp_path: Path) -> None:
    """SIGKILL the runner and scancel its jobs mid-run; the rerun computes exactly what the store lacks."""
    from tests.test_durability import _store_rows

    nwat, bsse, maxnb = 5, "nocp", 3  # NoCP: MOPAC cannot place ghost atoms
    inp = mbe_input("mopac", "pm7", None, bsse=bsse, max_nbody=maxnb, molecule=waters(nwat))
    reference = _reference(inp)
    total = len(ManyBodyComputer.from_manybodyinput(inp).cluster_properties or {}) or None
    store, out = tmp_path / "s.sqlite", tmp_path / "r.json"
    script = tmp_path / "hpc_run.py"
    script.write_text(
        "import sys\n"
        "from qcmb_async import run\n"
        "from tests.helpers import mbe_input, waters\n"
        f"inp = mbe_input('mopac-counting', 'pm7', None, bsse={bsse!r}, max_nbody={maxnb}, molecule=waters({nwat}))\n"
        f"job = {{**{JOB!r}, 'max_jobs': 2, 'host': '127.0.0.1', 'worker_args': ['--preload', 'tests.wrappers'], "
        f"'shared_directory': {str(tmp_path / 'shared')!r}}}\n"
        "from tests.wrappers import register_wrappers\nregister_wrappers()\n"
        f"result = run(inp, cluster=job, store={str(store)!r})\n"
        f"open({str(out)!r}, 'w').write(result.model_dump_json())\n")

    def env(count: Path) -> dict[str, str]:
        e = {**os.environ, "PYTHONPATH": str(ROOT), "QCMB_TEST_COUNT_FILE": str(count)}
        e.pop("QCMB_ASYNC_STORE", None)
        return e

    first = subprocess.Popen([sys.executable, str(script)], env=env(tmp_path / "c1.txt"), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while first.poll() is None and time.monotonic() < deadline and _store_rows(store)["ok"] < 10:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # the runner and its scheduler die ...
    first.wait(30)
    for job in _our_jobs():  # ... and so does every job of the allocation
        subprocess.run(["scancel", "--signal=KILL", job], timeout=30)
        subprocess.run(["scancel", job], timeout=30)
    assert _wait_no_jobs() == []
    stored = _store_rows(store)["ok"]
    assert stored >= 10, "the kill did not land mid-run"
    count = tmp_path / "c2.txt"
    done = subprocess.run([sys.executable, str(script)], env=env(count), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    recomputed = len(count.read_text().split()) if count.exists() else 0
    result = json.loads(out.read_text())
    nfrag = total or len(result["extras"]["qcmb_async"]["fragments"])
    assert recomputed == nfrag - stored, (nfrag, stored, recomputed)
    assert stored < nfrag  # the first run really was cut short
    assert abs(result["return_result"] - reference) < TOL
    assert _wait_no_jobs() == []
    # The killed run could not remove its directory (workers' TLS files); the rerun swept it.
    assert list((tmp_path / "shared").glob("cluster-*")) == []


def test_sbatch_script_runs_an_mbe_inside_one_allocation(slurm: str, tmp_path: Path) -> None:
    """scripts/slurm/qcmb-allocation.sbatch: srun starts the workers, qcmb-async connects by scheduler file."""
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(3))
    reference = _reference(inp)
    (tmp_path / "in.json").write_text(inp.model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QCMB_PYTHON": sys.executable}
    sub = subprocess.run(["sbatch", "--parsable", "--ntasks=2", "--cpus-per-task=1", "--mem-per-cpu=1G",
                          "--time=00:10:00", "-o", str(tmp_path / "job.out"),
                          str(ROOT / "scripts/slurm/qcmb-allocation.sbatch"), "in.json", "--no-store",
                          "-o", str(tmp_path / "out.json"), "--quiet"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().split(";")[0]
    assert _wait_no_jobs("qcmb-mbe", timeout=300) == [], (tmp_path / "job.out").read_text()[-3000:]
    log = (tmp_path / "job.out").read_text()
    assert (tmp_path / "out.json").exists(), log[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert abs(result["return_result"] - reference) < TOL
    workers = {f["worker"] for f in result["extras"]["qcmb_async"]["fragments"]}
    assert all(w.startswith("tcp://") for w in workers) and "0.0.0.0" not in "".join(workers)
    assert not list(tmp_path.glob("qcmb-scheduler-*.json")), f"scheduler file of job {job} left behind"
    # The allocation ends quietly: workers retired before the scheduler stops, no traceback, no "srun: error".
    assert "Traceback" not in log and "srun: error" not in log and "CANCELLED" not in log, log[-3000:]

