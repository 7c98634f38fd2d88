"""How a Dask or SLURM run ends when it is stopped: exit code, one readable line, nothing left on the workers.

A run stopped by SIGTERM (a batch system's stop) exits 143, by SIGINT (Ctrl-C) 130, like local runs, with one
``error:`` line and no traceback from distributed's teardown. Fragments running on the workers when the run
stops are PySCF SCFs (their chkfiles are the temporary files that used to stay in the worker's temporary
directory); the workers get a temporary directory of the test's own (``TMPDIR``), checked after they end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import alive, mbe_input, require_module, require_program, waters
from tests.test_hpc import slurm  # noqa: F401 - the fixture is used by name

ROOT = Path(__file__).resolve().parents[1]
EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}
LINE = {signal.SIGTERM: "error: terminated by SIGTERM", signal.SIGINT: "error: interrupted"}


def _jobs_from(workdir: Path) -> list[str]:
    """Our batch jobs: those submitted from ``workdir`` (other tests may have jobs of the same name)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in out.stdout.splitlines()
            if len(line.split()) == 2 and Path(line.split()[1]) == workdir]


def _wait_no_jobs_from(workdir: Path, timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    while (jobs := _jobs_from(workdir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return jobs


def _input(tmp_path: Path) -> Path:
    # 25 PySCF fragments of about a second each: some run on the workers whenever the signal comes.
    inp = mbe_input("pyscf", "hf", "cc-pvdz", bsse="cp", max_nbody=3, molecule=waters(5))
    path = tmp_path / "in.json"
    path.write_text(inp.model_dump_json())
    return path


def _pyscf_files(tmp: Path) -> list[Path]:
    """PySCF's temporary files (``tmp*``: SCF chkfiles, integral files) anywhere under ``tmp``."""
    return [p for p in tmp.rglob("tmp*") if p.is_file()]


def _left(tmp: Path) -> list[str]:
    """What is left in a worker's temporary directory, Dask's own lock files (``dask-scratch-space``) apart."""
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")
                  if p.is_file() and "dask-scratch-space" not in p.parts)


def _stop_mid_fragment(cmd: list[str], tmp: Path, signum: int, cwd: Path,
                       client_tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``, send ``signum`` once a PySCF fragment is running on a worker (its chkfile exists in ``tmp``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(client_tmp or tmp)}
    env.pop("QCMB_ASYNC_STORE", None)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and not _pyscf_files(tmp) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before a fragment started: {proc.communicate()[1][-3000:]}"
    assert _pyscf_files(tmp), "no fragment started on a worker"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _assert_one_line(done: subprocess.CompletedProcess[str], signum: int) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == EXIT[signum], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Error" not in done.stderr.replace("error:", ""), done.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(LINE[signum]), lines
    # The one error line, and at most the progress display's summary ("run ...: 1/25 fragments done ...").
    assert len(lines) <= 2, lines
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cluster_slurm_run_stopped_by_a_signal(slurm: str, tmp_path: Path, signum: int) -> None:  # noqa: F811
    """`run --cluster slurm` stopped mid-run: 143/130, one line, jobs cancelled, no temporary file left."""
    require_program("pyscf")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cmd = [sys.executable, "-m", "qcmb_async", "run", str(_input(tmp_path)), "--cluster", "slurm", "--job-cores",
           "1", "--job-memory", "1", "--max-jobs", "2", "--walltime", "00:10:00", "--no-store"]
    done = _stop_mid_fragment(cmd, tmp, signum, tmp_path)
    _assert_one_line(done, signum)
    # The batch jobs inherit TMPDIR (sbatch exports the environment): their workers wrote there.
    assert _wait_no_jobs_from(tmp_path) == []
    assert _left(tmp) == []


@pytest.fixture
def dask_worker(tmp_path: Path) -> tuple[str, Path, psutil.Process]:
    """A local `dask scheduler` and one `dask worker` (2 threads, cores=2, memory=2) with its own TMPDIR."""
    require_module("distributed")
    tmp = tmp_path / "worker-tmp"
    tmp.mkdir()
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (sched_file.exists() and sched_file.read_text().strip()):
            time.sleep(0.05)
        address = json.loads(sched_file.read_text())["address"]
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "2",
                                   "--resources", "cores=2,memory=2", "--no-dashboard"],
                                  env={**env, "TMPDIR": str(tmp)}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        yield address, tmp, psutil.Process(worker.pid)
    finally:
        for proc in (worker, scheduler):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_scheduler_run_stopped_by_a_signal_and_worker_closed(
        dask_worker: tuple[str, Path, psutil.Process], tmp_path: Path, signum: int) -> None:
    """`run --scheduler` stopped mid-run: 143/130 and one line; the worker, closed, leaves no temporary file."""
    require_program("pyscf")
    address, tmp, worker = dask_worker
    cmd = [sys.executable, "-m", "qcmb_async", "run", str(_input(tmp_path)), "--scheduler", address,
           "--ncores", "2", "--memory", "2", "--no-store"]
    env_tmp = tmp_path / "client-tmp"  # the client's own TMPDIR: only the worker writes into `tmp`
    env_tmp.mkdir()
    # The fragment cancelled on the worker runs on in its thread (Dask cannot stop a thread) ...
    done = _stop_mid_fragment(cmd, tmp, signum, tmp_path, client_tmp=env_tmp)
    _assert_one_line(done, signum)
    # ... and the worker stops (its job cancelled, the cluster closed) while it runs.
    procs = [worker, *worker.children(recursive=True)]
    worker.send_signal(signal.SIGTERM)
    psutil.wait_procs(procs, timeout=60)
    assert alive(procs) == []
    assert _left(tmp) == []



IMPORT_IN_A_THREAD = """
import signal, threading
before = signal.getsignal(signal.SIGINT)
from qcmb_async.executors.hpc import _jobqueue_class
box = {}
thread = threading.Thread(target=lambda: box.update(cls=_jobqueue_class("slurm")))
thread.start()
thread.join()
print(box["cls"].__name__, signal.getsignal(signal.SIGINT) is before)
"""

CTRL_C_AFTER_IMPORT = """
import signal
import dask_jobqueue  # replaces the SIGINT handler with sys.exit() (dask_jobqueue/runner.py)
from qcmb_async import run, events
from tests.helpers import mbe_input, waters

def on_event(event):
    if isinstance(event, events.FragmentFinished):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C once a fragment is done

inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(4))
try:
    run(inp, executor="threads", ncores=1, store=None, on_event=on_event)
    print("finished")
except KeyboardInterrupt:
    print("interrupted")
print("handler kept", getattr(signal.getsignal(signal.SIGINT), "__module__", None) == "dask_jobqueue.runner")
"""


def test_dask_jobqueue_import_leaves_the_sigint_handler_alone() -> None:
    """Imported by qcmb_async (in a thread, as run() in Jupyter does): no error, SIGINT handler unchanged."""
    require_module("dask_jobqueue")
    out = subprocess.run([sys.executable, "-c", IMPORT_IN_A_THREAD], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["SLURMCluster", "True"]


def test_ctrl_c_cancels_a_run_after_the_user_imported_dask_jobqueue() -> None:
    """A script that imported dask_jobqueue itself: Ctrl-C still cancels run() (KeyboardInterrupt, not exit 0);
    the script's handler is back afterwards."""
    require_module("dask_jobqueue")
    require_program("mopac")
    out = subprocess.run([sys.executable, "-c", CTRL_C_AFTER_IMPORT], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.split("\n")[:2] == ["interrupted", "handler kept True"], (out.stdout, out.stderr[-3000:])
