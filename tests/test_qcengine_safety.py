"""QCEngine under threads: the global-config race and the process-environment leak.

Each fix is switched off in one test to show that the test can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import require_program

ROOT = Path(__file__).resolve().parents[1]
COLD_START_RUNS = 30


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / name), *args], capture_output=True,
                          text=True, env=full_env, cwd=ROOT, timeout=300)


def test_each_program_starts_with_its_own_thread_settings() -> None:
    proc = run_script("env_probe.py")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    assert report["mismatches"] == []
    assert report["environ_changed"] is False


def test_env_probe_fails_without_isolation() -> None:
    proc = run_script("env_probe.py", "--no-isolation")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # QCEngine's own environ_context: programs see another fragment's value.
    assert report["mismatches"], report


def test_os_environ_unchanged_by_a_real_run() -> None:
    require_program("mopac")
    from qcmb_async import run
    from tests.helpers import mbe_input

    before = dict(os.environ)
    run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3), ncores=2, memory=2)
    assert dict(os.environ) == before


@pytest.mark.slow
def test_cold_start_race_never_fails_when_primed() -> None:
    require_program("mopac")
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(lambda _: run_script("cold_start.py"), range(COLD_START_RUNS)))
    failures = [p.stdout + p.stderr[-500:] for p in procs if p.returncode != 0]
    assert failures == []
    assert all(p.stdout.startswith("OK 16 fragments") for p in procs)


@pytest.mark.slow
def test_cold_start_race_fails_without_priming() -> None:
    require_program("mopac")
    outputs = []
    for _ in range(5):
        proc = run_script("cold_start.py", "--no-prime")
        outputs.append(proc.stdout)
        if proc.returncode != 0:
            assert "KeyError" in proc.stdout, proc.stdout
            return
    pytest.fail(f"the race did not show up without priming in 5 fresh processes: {outputs}")


def test_recovers_from_half_filled_global_config() -> None:
    require_program("mopac")
    proc = run_script("half_filled_globals.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "ncores" not in report["half_filled_keys"]  # the failure mode is real...
    assert report["broken_before"].startswith("KeyError")
    assert report["username"]  # ...and priming rebuilt a complete config
    assert isinstance(report["energy"], float)


def test_priming_is_idempotent_and_thread_safe() -> None:
    from qcmb_async import prime_qcengine
    from qcmb_async._qcengine.seams import REQUIRED_GLOBAL_KEYS

    with ThreadPoolExecutor(max_workers=16) as pool:
        values = list(pool.map(lambda _: prime_qcengine(), range(32)))
    assert all(set(REQUIRED_GLOBAL_KEYS) <= set(v) for v in values)
    assert all(v == values[0] for v in values)


def test_machine_description_is_cached_between_runs(tmp_path: Path) -> None:
    """The second process on this machine skips QCEngine's ~1 s CPU probe; stale caches are ignored."""
    cache = tmp_path / "globals.json"
    code = ("import time, json, qcengine.config as c; from qcmb_async import prime_qcengine; t=time.perf_counter(); "
            "v=prime_qcengine(); print(json.dumps({'t': time.perf_counter()-t, 'brand': v['cpu_brand'], "
            "'ncores': v['ncores'], 'memory': v['memory']}))")

    def prime() -> dict:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "QCMB_ASYNC_QCENGINE_CACHE": str(cache)}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = prime()
    assert cache.is_file() and oct(cache.stat().st_mode & 0o777) == "0o600"
    second = prime()
    assert (second["brand"], second["ncores"]) == (first["brand"], first["ncores"])
    assert second["t"] < first["t"]  # read, not probed (the probe spawns a process)
    # A cache from another boot or machine is not trusted.
    data = json.loads(cache.read_text())
    data["machine"]["boot"] = "another-boot"
    data["values"]["cpu_brand"] = "stale"
    cache.write_text(json.dumps(data))
    assert prime()["brand"] == first["brand"]
    # A file that is not a cache qcmb_async wrote (here: not even JSON) is never overwritten: refused up front.
    cache.write_text("{not json")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QCMB_ASYNC_QCENGINE_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0 and "QCMB_ASYNC_QCENGINE_CACHE" in out.stderr and "not a qcmb_async" in out.stderr
    assert cache.read_text() == "{not json"


def test_cached_task_config_equals_qcengines_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The get_config seam returns what QCEngine would build, per task config and QCENGINE_* env."""
    import qcengine.config as qcng_config

    from qcmb_async._qcengine import seams

    seams.install_seams()  # the test must not depend on an earlier test having run a fragment
    seams.prime_qcengine()
    for tc in ({"ncores": 1, "memory": 1.5, "retries": 0, "scratch_directory": None},
               {"ncores": 2, "memory": 0.5, "retries": 0, "scratch_directory": "/tmp"},
               {"ncores": 1, "memory": 1.5, "retries": 0, "scratch_directory": None, "scratch_messy": True}):
        first = seams._cached_get_config(task_config=dict(tc))
        again = seams._cached_get_config(task_config=dict(tc))
        assert first == again == qcng_config.get_config(task_config=dict(tc))
        assert first is not again  # copies: a harness editing its config cannot poison the cache
    monkeypatch.setenv("QCENGINE_SCRATCH_MESSY", "true")
    tc = {"ncores": 1, "memory": 1.5, "retries": 0}
    assert seams._cached_get_config(task_config=dict(tc)).scratch_messy is True
    monkeypatch.delenv("QCENGINE_SCRATCH_MESSY")
    assert seams._cached_get_config(task_config=dict(tc)).scratch_messy is False
    # QCEngine's settings read the variables in any case; so does the cache's key.
    monkeypatch.setenv("qcengine_scratch_messy", "true")
    assert qcng_config.get_config(task_config=dict(tc)).scratch_messy is True
    assert seams._cached_get_config(task_config=dict(tc)).scratch_messy is True
    monkeypatch.delenv("qcengine_scratch_messy")
    assert seams._cached_get_config(task_config=dict(tc)).scratch_messy is False
    # Values QCEngine expands from the environment are never cached.
    monkeypatch.setenv("QCMB_TEST_SCRATCH", "/tmp/a")
    tc = {"ncores": 1, "memory": 1.0, "retries": 0, "scratch_directory": "$QCMB_TEST_SCRATCH"}
    assert seams._cached_get_config(task_config=dict(tc)).scratch_directory == "/tmp/a"
    monkeypatch.setenv("QCMB_TEST_SCRATCH", "/tmp/b")
    assert seams._cached_get_config(task_config=dict(tc)).scratch_directory == "/tmp/b"
