"""Durable runs on real programs: crashes, transient failures, partial failure, cancellation, sharing."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import numpy as np
import psutil
import pytest

from qcmb_async import FragmentError, InputError, RunFailed, run, run_manybody
from tests.helpers import alive, mbe_input, require_program, sigkill_after_stored, start_durable_run, waters
from tests.wrappers import FlakyMopac, register_wrappers

ROOT = Path(__file__).resolve().parents[1]
KILLS = 10


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    env.pop("QCMB_ASYNC_STORE", None)
    return env


def _store_rows(path: Path) -> dict[str, int]:
    from qcmb_async._core.store import ResultStore

    if not path.exists():
        return {"ok": 0}
    try:
        with ResultStore(path, readonly=True) as store:
            rows = store.fragments()
    except Exception:
        return {"ok": 0}
    return {"ok": sum(r["status"] == "ok" for r in rows)}


def _programs_alive(names: tuple[str, ...]) -> list[psutil.Process]:
    """This test session's running processes with one of ``names``; zombies (killed, not yet reaped) are dead."""
    alive = []
    session = os.environ["QCMB_TEST_SESSION"]
    for proc in psutil.process_iter(["name", "status"]):
        name = (proc.info["name"] or "").lower()
        if any(n in name for n in names) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("QCMB_TEST_SESSION") == session:
                    alive.append(proc)
    return alive


def _programs_gone(names: tuple[str, ...], timeout: float = 10.0) -> list[psutil.Process]:
    """Wait until no program of ``names`` of this session runs (the kill is signalled, its exit is not waited for
    by the killer); the ones still alive after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (alive := _programs_alive(names)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@pytest.fixture(autouse=True)
def _wrappers() -> None:
    register_wrappers()


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_finished_fragment(tmp_path: Path) -> None:
    """Kill the runner with SIGKILL mid-run ten times; each rerun recomputes only what was not stored."""
    require_program("mopac")
    nwat, bsse, maxnb = 7, "nocp", 3  # NoCP: MOPAC cannot place ghost atoms
    reference = run(mbe_input("mopac", "pm7", None, bsse=bsse, max_nbody=maxnb, molecule=waters(nwat)),
                    ncores=2, memory=2, store=None)
    total = len(reference.cluster_properties)
    rng = random.Random(20261128)
    seen_partial = 0
    for i in range(KILLS):
        store, out, count = tmp_path / f"s{i}.sqlite", tmp_path / f"r{i}.json", tmp_path / f"c{i}.txt"
        cmd = [sys.executable, str(ROOT / "tests/scripts/durable_run.py"), str(store), "mopac-counting",
               str(nwat), bsse, str(maxnb), str(out)]
        target = rng.randrange(0, total)
        finished_before = sigkill_after_stored(cmd, _env(QCMB_TEST_COUNT_FILE=str(count)), tmp_path, store, target)
        seen_partial += 0 < finished_before < total
        if store.exists():
            con = sqlite3.connect(store)
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            con.close()
        rerun_count = tmp_path / f"rc{i}.txt"
        done = subprocess.run(cmd, env=_env(QCMB_TEST_COUNT_FILE=str(rerun_count)), cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        recomputed = len(rerun_count.read_text().split()) if rerun_count.exists() else 0
        assert recomputed == total - finished_before, (i, target, finished_before, recomputed)
        result = json.loads(out.read_text())
        assert result["return_result"] == pytest.approx(reference.return_result, abs=1e-9)
    assert seen_partial >= KILLS // 2  # the kills really landed mid-run


def _programs_left_by_a_killed_runner(tmp_path: Path, *flags: str) -> list[psutil.Process]:
    """SIGKILL a runner while two Psi4 MP2 dimers run; its programs still alive 2 s later."""
    cmd = [sys.executable, str(ROOT / "tests/scripts/long_run.py"), "psi4", "mp2", "aug-cc-pvtz", "4", *flags]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runner = psutil.Process(proc.pid)
    programs: list[psutil.Process] = []
    deadline = time.monotonic() + 120
    try:
        while len(programs) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "Psi4 never ran two fragments"
            time.sleep(0.05)
            with contextlib.suppress(psutil.Error):
                programs = [c for c in runner.children(recursive=True) if c.name().startswith("psi4")]
        time.sleep(0.5)
        with contextlib.suppress(psutil.Error):
            programs = runner.children(recursive=True)  # psi4 and anything it started
        # Not the guardian: a child of the runner too, and it must outlive the runner to do its job.
        programs = [p for p in programs if "-S" not in p.cmdline()]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    time.sleep(2.0)
    left = alive(programs)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return left


@pytest.mark.slow
def test_programs_die_with_a_sigkilled_runner(tmp_path: Path) -> None:
    """A SIGKILLed runner leaves no program using the cores its rerun is about to take."""
    require_program("psi4")
    left = _programs_left_by_a_killed_runner(tmp_path)
    assert left == [], [p.name() for p in left]
    # Without the guardian the programs run on (Psi4 to the end of its fragment): the fix is needed.
    left = _programs_left_by_a_killed_runner(tmp_path, "--no-guardian")
    assert any(p.name().startswith("psi4") for p in left), "Psi4 died with its runner even without the guardian"


def test_transient_failures_are_retried(tmp_path: Path) -> None:
    require_program("mopac")
    FlakyMopac.attempts.clear()
    FlakyMopac._seen.clear()
    os.environ["QCMB_TEST_FAIL_RATE"] = "0.2"
    try:
        inp = mbe_input("mopac-flaky", "pm7", None, bsse="nocp", max_nbody=3, molecule=waters(5))
        flaky = run(inp, ncores=2, memory=2, retries=8, store=tmp_path / "flaky.sqlite")
    finally:
        os.environ.pop("QCMB_TEST_FAIL_RATE")
    clean = run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3, molecule=waters(5)), ncores=2, memory=2,
                store=None)
    assert flaky.return_result == pytest.approx(clean.return_result, abs=1e-9)
    failures = sum(FlakyMopac.attempts)
    assert failures >= 3  # 25 fragments at 20 %: the injection really happened
    records = flaky.extras["qcmb_async"]["fragments"]
    assert sum(r["attempts"] for r in records) == len(FlakyMopac.attempts)
    retried = [r for r in records if r["attempts"] > 1]
    assert retried and all(r["history"][0]["error_type"] == "random_error" for r in retried)


def test_permanent_failure_with_continue_reports_and_keeps_lower_levels() -> None:
    require_program("mopac")
    inp = mbe_input("mopac-failing", "pm7", None, bsse="nocp", max_nbody=3)
    with pytest.raises(RunFailed) as info:
        run(inp, ncores=2, memory=2, on_error="continue", store=None)
    report = info.value.report
    assert len(report.failed) == 1
    err = report.failed[0]
    assert err.label == '["(auto)", [1, 2, 3], [1, 2, 3]]' and err.level == 3 and err.attempts == 1
    assert err.error_type == "unknown_error" and "injected permanent failure" in err.error_message
    assert report.complete_levels == [1, 2]
    two_body = run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2), ncores=2, memory=2, store=None)
    assert report.partial_result.return_result == pytest.approx(two_body.return_result, abs=1e-9)
    assert "[1, 2, 3]" in str(info.value) and "complete n-body levels: [1, 2]" in str(info.value)


@pytest.mark.asyncio
async def test_cancel_mid_nwchem_run_kills_programs_and_keeps_store(tmp_path: Path) -> None:
    require_program("nwchem")
    from qcmb_async._core.store import ResultStore

    store = tmp_path / "cancel.sqlite"
    inp = mbe_input("nwchem", "hf", "6-31g", bsse="cp", max_nbody=3, molecule=waters(5))
    with anyio.move_on_after(4) as scope:
        await run_manybody(inp, ncores=2, memory=2, store=store)
    assert scope.cancelled_caught
    t0 = time.monotonic()
    while _programs_alive(("nwchem",)) and time.monotonic() - t0 < 10:
        await anyio.sleep(0.1)
    assert _programs_alive(("nwchem",)) == []
    assert time.monotonic() - t0 < 10
    with ResultStore(store) as st:
        assert st.integrity_check() == "ok"
        rows = st.fragments()
    assert all(r["status"] == "ok" for r in rows)


def test_ctrl_c_in_a_script_returns_within_10_s(tmp_path: Path) -> None:
    require_program("nwchem")
    from qcmb_async._core.store import ResultStore

    store, out = tmp_path / "int.sqlite", tmp_path / "int.json"
    proc = start_durable_run(store, out, tmp_path, _env())
    t_start = time.monotonic()
    while _store_rows(store)["ok"] < 2 and time.monotonic() - t_start < 120:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert _programs_gone(("nwchem",)) == []
    with ResultStore(store) as st:
        assert st.integrity_check() == "ok"
        assert len(st.fragments()) >= 2


def test_timeout_kills_the_program() -> None:
    require_program("nwchem")
    inp = mbe_input("nwchem", "hf", "6-31g*", bsse="cp", max_nbody=2, molecule=waters(4))
    t0 = time.monotonic()
    with pytest.raises(FragmentError) as info:
        run(inp, ncores=2, memory=2, timeout=0.3, store=None)
    assert info.value.error_type == "TimeoutError"
    assert "exceeded its timeout of 0.3 s" in info.value.error_message
    assert time.monotonic() - t0 < 30
    assert _programs_gone(("nwchem",)) == []


def test_two_runs_share_one_store(tmp_path: Path) -> None:
    require_program("mopac")
    store = tmp_path / "shared.sqlite"
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests/scripts/durable_run.py"), str(store), "mopac",
                               str(n), "nocp", "3", str(tmp_path / f"o{n}.json")], env=_env(), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in (5, 6)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    for n in (5, 6):
        ref = run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3, molecule=waters(n)), ncores=2, memory=2,
                  store=None)
        got = json.loads((tmp_path / f"o{n}.json").read_text())
        assert got["return_result"] == pytest.approx(ref.return_result, abs=1e-9)
    con = sqlite3.connect(store)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_rerun_reuses_everything(tmp_path: Path) -> None:
    require_program("mopac")
    store = tmp_path / "again.sqlite"
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3)
    first = run(inp, ncores=2, memory=2, store=store)
    second = run(inp, ncores=2, memory=2, store=store)
    assert {r["status"] for r in second.extras["qcmb_async"]["fragments"]} == {"cached"}
    np.testing.assert_allclose(second.return_result, first.return_result, atol=0, rtol=0)


def test_corrupt_and_future_stores_give_clear_errors(tmp_path: Path) -> None:
    from qcmb_async._core.store import ResultStore
    from qcmb_async._core.store_layout import STORE_FORMAT_VERSION

    bad = tmp_path / "corrupt.sqlite"
    bad.write_bytes(os.urandom(8192))
    inp = mbe_input("qcmb-fake-sleep", "fake", "none", bsse="nocp", max_nbody=2, keywords={"sleep": 0})
    with pytest.raises(InputError, match=r"corrupt\.sqlite"):
        run(inp, store=bad)
    future = tmp_path / "future.sqlite"
    ResultStore(future).close()
    con = sqlite3.connect(future)
    con.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(STORE_FORMAT_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(InputError, match=str(STORE_FORMAT_VERSION + 1)):
        run(inp, store=future)
