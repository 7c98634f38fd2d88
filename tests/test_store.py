"""The SQLite result store on its own: round trips, permissions, crashes, sharing, bad files."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from qcelemental.models.v2 import AtomicResult, Molecule

from qcmb_async._core.store import STORE_FORMAT_VERSION, ResultStore, StoreError, default_store_path

ROOT = Path(__file__).resolve().parents[1]


def _result(grad: bool = True) -> AtomicResult:
    mol = Molecule.from_data("O 0 0 0\nH 0 0 1\nH 0 1 0")
    g = np.array([[0.1 / 3, -1e-17, 2.0 / 7], [np.pi, -np.e, 1e-300], [1 / 9, 0.0, -5.5]])
    return AtomicResult(
        input_data={"molecule": mol, "specification": {"driver": "gradient", "model": {"method": "hf",
                                                                                        "basis": "sto-3g"}}},
        molecule=mol, properties={"return_energy": -74.96340213676, "calcinfo_natom": 3, "return_gradient": g},
        return_result=g if grad else -74.96340213676, success=True, provenance={"creator": "test"},
    )


def _put(store: ResultStore, key: str, res: AtomicResult | None = None) -> None:
    store.put(key, label=f"L{key}", level=1, program="test", result_json=(res or _result()).model_dump_json(),
              run_id="r", attempts=[{"attempt": 1, "start": 1.0, "end": 2.0}], host="h", worker="w", wall_time=1.0)


def test_round_trip_is_bitwise(tmp_path: Path) -> None:
    res = _result()
    with ResultStore(tmp_path / "s.sqlite") as store:
        _put(store, "k", res)
        back = AtomicResult(**store.get("k"))
        assert store.get("other") is None
    np.testing.assert_array_equal(back.return_result, res.return_result)
    assert back.properties.return_energy == res.properties.return_energy


def test_owner_only_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    ResultStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_failures_are_not_results(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.record_failure("k", label="L", level=2, program="p", run_id="r", attempts=[], error_type="x",
                             error_message="boom")
        assert store.get("k") is None
        assert store.fragments()[0]["status"] == "failed"
        _put(store, "k")
        assert store.get("k") is not None
        store.record_failure("k", label="L", level=2, program="p", run_id="r2", attempts=[], error_type="x",
                             error_message="later failure must not hide the result")
        assert store.get("k") is not None


def test_committed_row_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    code = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[2]);"
        "from qcmb_async._core.store import ResultStore;"
        "s = ResultStore(sys.argv[1]);"
        "s.put('k', label='L', level=1, program='p', result_json='{\"x\": 1}', run_id='r', attempts=[]);"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(ROOT)], capture_output=True)
    assert proc.returncode == -9
    with ResultStore(path) as store:
        assert store.get("k") == {"x": 1}
        assert store.integrity_check() == "ok"


def test_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    ResultStore(path).close()
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]);"
        "from qcmb_async._core.store import ResultStore;"
        "s = ResultStore(sys.argv[1]);"
        "[s.put(f'{sys.argv[2]}-{i}', label='L', level=1, program='p', result_json='{}', run_id='r', attempts=[])"
        " for i in range(200)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), tag, str(ROOT)]) for tag in ("a", "b")]
    with ResultStore(path) as store, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: _put(store, f"t-{i}"), range(200)))
        for p in procs:
            assert p.wait(timeout=120) == 0
        assert len(store.fragments()) == 600
        assert store.integrity_check() == "ok"


def test_bad_files_are_refused(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(os.urandom(4096))
    with pytest.raises(StoreError, match=r"corrupt or not an SQLite database.*Move it away"):
        ResultStore(corrupt)
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a qcmb_async store"):
        ResultStore(foreign)
    future = tmp_path / "future.sqlite"
    ResultStore(future).close()
    con = sqlite3.connect(future)
    con.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(STORE_FORMAT_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=f"format version {STORE_FORMAT_VERSION + 1}.*reads version "
                                         f"{STORE_FORMAT_VERSION}"):
        ResultStore(future)
    half = tmp_path / "half.sqlite"
    with ResultStore(half) as store:
        for i in range(300):
            _put(store, str(i))
    data = half.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError), ResultStore(half) as store:
        for i in range(300):
            store.get(str(i))


def test_default_path_in_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = default_store_path()
    assert path.parent.is_dir() and str(path).startswith(str(tmp_path / "cache"))
