"""The result store under misuse and hostile conditions: -o onto the store, file modes, read-only
media, SIGTERM/SIGKILL of the runner, a full disk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from qcmb_async import FragmentError, run
from qcmb_async._core.store import ResultStore
from qcmb_async.errors import StoreError
from tests.helpers import IN_CI, alive, mbe_input, require_program, start_durable_run, waters

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    env.pop("QCMB_ASYNC_STORE", None)
    return {**env, **extra}


def cli(*args: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qcmb_async", *args], cwd=cwd, env=_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def _rows(path: Path) -> list[dict[str, Any]]:
    """The store's fragment rows; none while the run is still creating the store."""
    try:
        store = ResultStore(path, readonly=True)
    except StoreError as exc:
        if "empty file" in str(exc):
            return []
        raise
    with store:
        return store.fragments()


def _runs(path: Path) -> list[dict[str, Any]]:
    with ResultStore(path, readonly=True) as store:
        return store.runs()


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``path`` (root only); skipped where mounting is not allowed."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        msg = f"cannot mount a tmpfs here ({proc.stderr.strip()}): needs root with CAP_SYS_ADMIN"
        if IN_CI:
            pytest.fail(f"{msg}, but CI=true")
        pytest.skip(msg)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# -- -o onto the store -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def filled_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_program("mopac")
    tmp = tmp_path_factory.mktemp("filled")
    store = tmp / "s.sqlite"
    inp = tmp / "in.json"
    inp.write_text(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(2)).model_dump_json())
    proc = cli("run", str(inp), "--store", str(store), "-q", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return store


@pytest.mark.parametrize("form", ["same", "relative", "symlink", "wal", "shm", "hardlink", "default-store"])
def test_output_onto_the_store_is_refused_before_anything_runs(filled_store: Path, tmp_path: Path,
                                                               form: str) -> None:
    store = tmp_path / "s.sqlite"
    store.write_bytes(filled_store.read_bytes())
    before = store.read_bytes()
    inp = tmp_path / "in.json"
    inp.write_text(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(2)).model_dump_json())
    (tmp_path / "sub").mkdir()
    args, env = ["--store", str(store)], {}
    out: str
    if form == "same":
        out = str(store)
    elif form == "relative":
        args, out = ["--store", "s.sqlite"], "sub/../s.sqlite"
    elif form == "symlink":
        (tmp_path / "link.json").symlink_to(store)
        out = "link.json"
    elif form in ("wal", "shm"):
        out = f"{store}-{form}"
    elif form == "hardlink":
        os.link(store, tmp_path / "hard.json")
        out = "hard.json"
    else:  # the store selected by $QCMB_ASYNC_STORE, no --store given
        args, env, out = [], {"QCMB_ASYNC_STORE": str(store)}, "./s.sqlite"
    t0 = time.monotonic()
    proc = cli("run", str(inp), *args, "-o", out, cwd=tmp_path, **env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "is the result store" in proc.stderr and "Give another output path" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert store.read_bytes() == before  # not overwritten, no run row added
    assert time.monotonic() - t0 < 30



def test_an_empty_store_path_says_it_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Path("") is "." (a directory): the message must name the real mistake, and nothing may be written.
    from qcmb_async.errors import InputError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="result store path is empty"):
        run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(2)), store="", ncores=1)
    assert list(tmp_path.iterdir()) == []

# -- file mode -----------------------------------------------------------------------------------
def test_store_created_in_an_existing_empty_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    path.touch()
    os.chmod(path, 0o644)
    ResultStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # and through a run (the way a user gets there: mktemp, then --store)
    require_program("mopac")
    other = tmp_path / "empty2.sqlite"
    other.touch()
    os.chmod(other, 0o664)
    run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(2)), store=other, ncores=1)
    assert stat.S_IMODE(other.stat().st_mode) == 0o600
    for side in (Path(f"{other}-wal"), Path(f"{other}-shm")):
        if side.exists():
            assert stat.S_IMODE(side.stat().st_mode) == 0o600


# -- read-only media ---------------------------------------------------------------------------------
def test_report_reads_a_store_on_read_only_media(filled_store: Path, tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "media", "8m") as media:
        store = media / "s.sqlite"
        store.write_bytes(filled_store.read_bytes())  # a WAL store, closed cleanly: no -wal/-shm beside it
        wanted = _rows(filled_store)
        assert wanted and all(r["status"] == "ok" for r in wanted)
        assert sorted(p.name for p in media.iterdir()) == ["s.sqlite"]
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        with pytest.raises(OSError):  # truly read-only, even for root
            (media / "probe").touch()
        proc = cli("report", str(store), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "1 run(s); 3 fragment record(s), 3 ok" in proc.stdout, proc.stdout
        for row in wanted:
            assert row["label"] in proc.stdout
        assert [r["label"] for r in _rows(store)] == [r["label"] for r in wanted]


# -- run rows: errors, SIGKILL, SIGTERM --------------------------------------------------------------------
def test_a_failed_run_is_marked_failed_not_running(tmp_path: Path) -> None:
    require_program("nwchem")
    store = tmp_path / "f.sqlite"
    with pytest.raises(FragmentError):
        run(mbe_input("nwchem", "hf", "nosuchbasis", bsse="nocp", max_nbody=2, molecule=waters(2)), store=store,
            ncores=1)
    (row,) = _runs(store)
    assert row["status"] == "failed" and row["finished"] is not None


def _long_nwchem_input(path: Path) -> Path:
    # HF/aug-cc-pVTZ water pairs: several seconds per NWChem fragment.
    path.write_text(mbe_input("nwchem", "hf", "aug-cc-pvtz", bsse="cp", max_nbody=2,
                              molecule=waters(3, spacing=3.0)).model_dump_json())
    return path


def _nwchem_under(pid: int) -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process(pid).children(recursive=True) if c.name().startswith("nwchem")]
    except psutil.Error:
        return []


def _start_and_wait_for_nwchem(tmp_path: Path, store: Path, scratch: Path) -> tuple[subprocess.Popen[str],
                                                                                     list[psutil.Process]]:
    inp = _long_nwchem_input(tmp_path / "long.json")
    proc = subprocess.Popen([sys.executable, "-m", "qcmb_async", "run", str(inp), "--store", str(store), "--ncores",
                             "1", "-q"], cwd=tmp_path, env=_env(TMPDIR=str(scratch)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    programs: list[psutil.Process] = []
    while time.monotonic() < deadline and proc.poll() is None:
        # An NWChem that has run for a second is a fragment, not the version probe.
        programs = [p for p in alive(_nwchem_under(proc.pid)) if time.time() - p.create_time() > 1.0]
        if programs and any(scratch.iterdir()):
            break
        time.sleep(0.05)
    assert programs, f"NWChem never ran a fragment: {proc.communicate(timeout=30)}"
    return proc, programs


def test_sigterm_stops_the_cli_cleanly(tmp_path: Path) -> None:
    """A batch scheduler's SIGTERM: exit 143, programs killed, scratch removed, run row 'interrupted'."""
    require_program("nwchem")
    scratch, store = tmp_path / "scratch", tmp_path / "t.sqlite"
    scratch.mkdir()
    proc, programs = _start_and_wait_for_nwchem(tmp_path, store, scratch)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated by SIGTERM" in err and "Traceback" not in err, err
    time.sleep(0.2)
    assert alive(programs) == []
    # QCEngine's scratch directory of the killed fragment is removed. Open MPI (inside NWChem) leaves
    # an empty session directory ompi.<host>.<uid>/jf.<n> whenever NWChem is stopped by a signal, even a
    # plain SIGTERM to a bare nwchem outside qcmb_async; it is Open MPI's, shared between its processes.
    left = sorted(p.name for p in scratch.iterdir() if not p.name.startswith("ompi."))
    assert left == []
    (row,) = _runs(store)
    assert row["status"] == "interrupted" and row["finished"] is not None


def test_sigkilled_run_reads_as_died(tmp_path: Path) -> None:
    require_program("nwchem")
    scratch, store = tmp_path / "scratch", tmp_path / "k.sqlite"
    scratch.mkdir()
    proc, programs = _start_and_wait_for_nwchem(tmp_path, store, scratch)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 20  # the guardian kills the orphaned programs
    while alive(programs) and time.monotonic() < deadline:
        time.sleep(0.1)
    (row,) = _runs(store)
    assert row["status"] == "died"
    with sqlite3.connect(store) as con:  # what is stored is still 'running': 'died' is judged on reading
        assert con.execute("SELECT status FROM runs").fetchone()[0] == "running"
    report = cli("report", str(store), cwd=tmp_path)
    assert report.returncode == 0 and " died " in report.stdout, report.stdout


# -- a full disk ----------------------------------------------------------------------------------------
FREE_BYTES = 96 * 1024
"""Left free on the tiny file system: SQLite's 32 KiB shared-memory file and a few result pages fit, the
rest of the run's results do not (the disk fills up during the run, as it does for users)."""


def _fill(filler: Path) -> None:
    with contextlib.suppress(OSError), filler.open("wb") as fh:  # fill the file system to the last block
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()
    os.truncate(filler, max(0, filler.stat().st_size - FREE_BYTES))


def test_full_disk_is_logged_once_and_counted(tmp_path: Path) -> None:
    require_program("mopac")
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3, molecule=waters(6))
    reference = run(inp, store=None, ncores=2)
    computed = len(reference.extras["qcmb_async"]["fragments"])
    with _tmpfs(tmp_path / "disk", "256k") as disk:
        store = disk / "s.sqlite"
        ResultStore(store).close()
        filler = disk / "filler"
        _fill(filler)
        (tmp_path / "in.json").write_text(inp.model_dump_json())
        proc = cli("run", "in.json", "--store", str(store), "--ncores", "2", "-o", "out.json", "--log-format",
                   "json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
        not_stored = [e for e in events if e.get("event", "").startswith("result not stored")]
        assert len(not_stored) == 1, [e.get("event") for e in events]
        assert "full" in not_stored[0]["reason"].lower()
        stored = sum(r["status"] == "ok" for r in _rows(store))
        missing = computed - stored
        assert missing > 1  # the disk really filled: most results did not fit
        summary = [e for e in events if e.get("event", "").startswith("results not in the store")]
        assert len(summary) == 1 and summary[0]["not_stored"] == missing
        result = json.loads((tmp_path / "out.json").read_text())
        assert result["extras"]["qcmb_async"]["not_stored"] == missing
        assert result["return_result"] == pytest.approx(reference.return_result, abs=1e-9)
        # console form: one warning line with the count
        filler.unlink()
        store.unlink()
        ResultStore(store).close()
        _fill(filler)
        proc = cli("run", "in.json", "--store", str(store), "--ncores", "2", "-q", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        missing = computed - sum(r["status"] == "ok" for r in _rows(store))
        assert missing > 1
        assert f"{missing} computed result(s) are not in the result store" in proc.stderr, proc.stderr
        assert proc.stderr.count("result not stored;") == 1, proc.stderr


def test_sigterm_removes_process_worker_directories(tmp_path: Path) -> None:
    """PySCF runs in worker processes with their own directory: SIGTERM removes both.

    Waits for what it means: the runner's "fragment started" log line (a fragment handed to a running worker
    process, so the workers and their directory exist), not for CPU use or a guessed time.
    """
    require_program("pyscf")
    scratch, store = tmp_path / "scratch", tmp_path / "p.sqlite"
    scratch.mkdir()
    inp = tmp_path / "pyscf.json"
    inp.write_text(mbe_input("pyscf", "hf", "aug-cc-pvtz", bsse="cp", max_nbody=2,
                             molecule=waters(3, spacing=3.0)).model_dump_json())
    proc = subprocess.Popen([sys.executable, "-m", "qcmb_async", "run", str(inp), "--store", str(store), "--ncores",
                             "2", "--executor", "processes", "-vv", "--log-format", "json"], cwd=tmp_path,
                            env=_env(TMPDIR=str(scratch)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started, lines = threading.Event(), []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            with contextlib.suppress(ValueError):
                if json.loads(line).get("event") == "fragment started":
                    started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(timeout=300), f"no fragment ever started: {''.join(lines)[-3000:]}"
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "python" in c.name()]
    assert workers and any(p.name.startswith("qcmb-async-workers-") for p in scratch.iterdir())
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    reader.join(timeout=30)
    assert proc.returncode == 143, "".join(lines)[-3000:]
    psutil.wait_procs(workers, timeout=10)
    assert alive(workers) == []
    assert sorted(p.name for p in scratch.iterdir()) == []
    (row,) = _runs(store)
    assert row["status"] == "interrupted"


def test_run_is_in_the_store_before_workers_start(tmp_path: Path) -> None:
    """The run row is written before the executor starts: a run stopped while workers start is in `report`."""
    require_program("mopac")
    from qcmb_async.executors.threads import ThreadExecutor

    store = tmp_path / "early.sqlite"
    seen: list[list[dict[str, Any]]] = []

    class WorkersCannotStart(ThreadExecutor):
        async def _start(self) -> None:
            seen.append(_runs(store))
            raise RuntimeError("workers could not start")

    with pytest.raises(RuntimeError, match="workers could not start"):
        run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2), executor=WorkersCannotStart(), store=store)
    (before,) = seen
    assert [r["status"] for r in before] == ["running"]
    (row,) = _runs(store)
    assert row["run_id"] == before[0]["run_id"] and row["status"] == "error"
    assert "workers could not start" in row["summary"]["ended"]


def test_sigterm_in_a_script_stops_run_cleanly(tmp_path: Path) -> None:
    """``qcmb_async.run()`` in a user's script: SIGTERM raises Terminated after the same clean stop."""
    require_program("nwchem")
    store, out = tmp_path / "script.sqlite", tmp_path / "script.json"
    proc = start_durable_run(store, out, tmp_path, _env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (store.exists() and _rows(store)):
        time.sleep(0.05)
    programs = _nwchem_under(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "Terminated: terminated by SIGTERM" in err, err[-2000:]
    time.sleep(0.2)
    assert alive(programs) == [] and alive(_nwchem_under(proc.pid)) == []
    (row,) = _runs(store)
    assert row["status"] == "interrupted"
    assert not out.exists()
