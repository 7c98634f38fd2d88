"""The SQLite result store on its own: round trips, permissions, crashes, sharing, bad files."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qcelemental.models.v2 import AtomicResult, Molecule

from qcmb_async._core.store import ResultStore
from qcmb_async._core.store_layout import APPLICATION_ID, STORE_FORMAT_VERSION, default_store_path
from qcmb_async.errors import StoreError

ROOT = Path(__file__).resolve().parents[1]
ENERGY = -74.96340213676
#: Floats whose shortest repr is long, tiny, huge or signed zero: a lossy JSON path would change them.
GRADIENT = np.array([[0.1 / 3, -1e-17, 2.0 / 7], [np.pi, -np.e, 1e-300], [1 / 9, -0.0, -5.5e300]])


def _result(grad: bool = True) -> AtomicResult:
    mol = Molecule.from_data("O 0 0 0\nH 0 0 1\nH 0 1 0")
    driver = "gradient" if grad else "energy"
    props: dict[str, Any] = {"return_energy": ENERGY, "calcinfo_natom": 3}
    if grad:
        props["return_gradient"] = GRADIENT
    return AtomicResult(
        input_data={"molecule": mol, "specification": {"driver": driver, "model": {"method": "hf", "basis": "sto-3g"}}},
        molecule=mol, properties=props, return_result=GRADIENT if grad else ENERGY, success=True,
        provenance={"creator": "test"},
    )


def _put(store: ResultStore, key: str, result_json: str | None = None, run_id: str = "r") -> None:
    store.put(key, label=f"L{key}", level=1, program="test", result_json=result_json or _result().model_dump_json(),
              run_id=run_id, attempts=[{"attempt": 1, "start": 1.0, "end": 2.0, "worker": "w", "host": "h",
                                        "error_type": None, "error_message": None}],
              host="h", worker="w", wall_time=1.0)


def _fail(store: ResultStore, key: str, message: str = "boom", run_id: str = "r") -> None:
    store.record_failure(key, label=f"L{key}", level=2, program="test", run_id=run_id,
                         attempts=[{"attempt": 1, "start": 5.0, "end": 7.5, "worker": "w3", "host": "node1",
                                    "error_type": "RandomError", "error_message": message}],
                         error_type="RandomError", error_message=message)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(tmp_path / "s.sqlite") as s:
        yield s


def _python(code: str, *args: object) -> subprocess.Popen[str]:
    """A child Python running ``code`` (argv[1:] = args) that imports qcmb_async from this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_ready(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        line = p.stdout.readline() if p.stdout else ""
        assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")


def _sqlite(path: Path, *statements: str) -> None:
    con = sqlite3.connect(path)
    for sql in statements:
        con.execute(sql)
    con.commit()
    con.close()


# -- results --------------------------------------------------------------------------------


@pytest.mark.parametrize("grad", [True, False], ids=["gradient", "energy"])
def test_round_trip_is_bitwise(store: ResultStore, grad: bool) -> None:
    res = _result(grad)
    text = res.model_dump_json()
    _put(store, "k", text)
    data = store.get("k")
    assert data == json.loads(text)
    back = AtomicResult(**data)
    assert back.model_dump_json() == text
    if grad:
        assert np.asarray(back.return_result).tobytes() == GRADIENT.tobytes()  # bit for bit, -0.0 included
        assert np.asarray(back.properties.return_gradient).tobytes() == GRADIENT.tobytes()
    else:
        assert back.return_result == ENERGY
    assert back.properties.return_energy == ENERGY
    assert store.get("other") is None
    assert store.get_many(["k", "other", "k"]) == {"k": data}


def test_reopen_keeps_rows_and_readonly_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with ResultStore(path) as store:
        for i in range(5):
            _put(store, str(i))
    with ResultStore(path) as store:
        assert AtomicResult(**store.get("3")).properties.return_energy == ENERGY
        assert store.created_by.startswith("qcmb_async ")
    with ResultStore(path, readonly=True) as ro:
        assert len(ro.get_many(str(i) for i in range(5))) == 5
        with pytest.raises(StoreError, match="read-only"):
            _put(ro, "new")
    with pytest.raises(StoreError, match="does not exist"):
        ResultStore(tmp_path / "missing.sqlite", readonly=True)


def test_put_refuses_what_is_not_a_successful_result(store: ResultStore) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        _put(store, "k", '{"truncated": ')
    with pytest.raises(ValueError, match="record_failure"):
        _put(store, "k", json.dumps({"success": False, "error": {"error_type": "x", "error_message": "y"}}))
    assert store.fragments() == []


def test_failures_are_recorded_but_never_returned(store: ResultStore) -> None:
    _fail(store, "k")
    assert store.get("k") is None
    assert store.get_many(["k"]) == {}
    [row] = store.fragments()
    assert row["status"] == "failed"
    assert (row["error_type"], row["error_message"]) == ("RandomError", "boom")
    assert (row["host"], row["worker"], row["wall_time"]) == ("node1", "w3", 2.5)
    assert row["attempts"][0]["error_type"] == "RandomError"
    assert "result_json" not in row
    _fail(store, "k", "again", run_id="r2")  # a failure replaces a failure
    assert store.fragments()[0]["error_message"] == "again"
    _put(store, "k", run_id="r3")  # a later success replaces it
    assert store.get("k") is not None
    [row] = store.fragments()
    assert (row["status"], row["error_type"], row["error_message"], row["run_id"]) == ("ok", None, None, "r3")
    _fail(store, "k", "a later failure must not hide the result", run_id="r4")
    assert store.get("k") is not None
    assert store.fragments()[0]["status"] == "ok"


def test_runs_and_fragment_reports(store: ResultStore) -> None:
    store.record_run("r1", input_hash="h1", started=10.0)
    store.record_run("r2", input_hash="h2", started=20.0)
    store.record_run("r1", input_hash="h1", started=10.0, finished=15.0, status="ok", summary={"makespan": 5.0})
    runs = store.runs()
    assert [r["run_id"] for r in runs] == ["r1", "r2"]
    import psutil

    assert runs[0] == {"run_id": "r1", "input_hash": "h1", "started": 10.0, "finished": 15.0, "status": "ok",
                       "summary": {"makespan": 5.0}, "host": socket.gethostname(), "pid": os.getpid(),
                       "pid_started": psutil.Process().create_time()}
    assert runs[1]["status"] == "running" and runs[1]["summary"] is None
    _put(store, "a", run_id="r1")
    _fail(store, "b", run_id="r2")
    _put(store, "c", run_id="r2")
    assert [f["key"] for f in store.fragments("r2")] == ["b", "c"]
    assert [f["key"] for f in store.fragments()] == ["a", "b", "c"]
    row = store.fragments("r1")[0]
    assert set(row) == {"key", "label", "level", "program", "program_version", "status", "attempts", "host", "worker",
                        "wall_time", "run_id", "created_at", "error_type", "error_message"}
    assert (row["label"], row["level"], row["program"], row["host"], row["worker"], row["wall_time"]) == (
        "La", 1, "test", "h", "w", 1.0)
    assert row["attempts"] == [{"attempt": 1, "start": 1.0, "end": 2.0, "worker": "w", "host": "h",
                                "error_type": None, "error_message": None}]
    assert abs(row["created_at"] - time.time()) < 60
    assert store.integrity_check() == "ok"


def test_closed_store_says_so(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "s.sqlite")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="is closed"):
        store.get("k")


# -- the file -------------------------------------------------------------------------------


def test_owner_only_wal_full(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    old = os.umask(0)  # without care SQLite would create 0o644 files under this umask
    try:
        with ResultStore(path) as store:
            _put(store, "k")
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
            assert store._con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
            assert store._con.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert dict(con.execute("SELECT key, value FROM meta"))["format_version"] == str(STORE_FORMAT_VERSION)
    con.close()


def test_awkward_path_characters(tmp_path: Path) -> None:
    path = tmp_path / "a dir?with#odd%20chars" / "store?.sqlite"
    with ResultStore(path) as store:
        _put(store, "k")
    assert path.is_file()
    with ResultStore(path, readonly=True) as store:
        assert store.get("k") is not None


def test_default_path_in_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    path = default_store_path()
    assert path == cache / "qcmb_async" / "results.sqlite"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not path.exists()  # only the directory is created; ResultStore creates the file
    assert default_store_path() == path  # idempotent


# -- crashes and sharing --------------------------------------------------------------------


def test_committed_row_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    code = (
        "import os, signal, sys\n"
        "from qcmb_async._core.store import ResultStore\n"
        "s = ResultStore(sys.argv[1])\n"
        "s.put('k', label='L', level=1, program='p', result_json='{\"x\": 0.1}', run_id='r', attempts=[])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = _python(code, path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    assert Path(f"{path}-wal").exists()  # the row is only in the WAL: nobody checkpointed it
    with ResultStore(path) as store:
        assert store.get("k") == {"x": 0.1}
        assert store.integrity_check() == "ok"


def test_sigkill_in_the_middle_of_writing(tmp_path: Path) -> None:
    """Killed at a random point of a put loop: every row that is there is whole, nothing is corrupt."""
    path = tmp_path / "s.sqlite"
    code = (
        "import json, sys\n"
        "from qcmb_async._core.store import ResultStore\n"
        "s = ResultStore(sys.argv[1])\n"
        "big = json.dumps({'success': True, 'return_result': [i / 7 for i in range(5000)]})\n"
        "i = 0\n"
        "while True:\n"
        "    s.put(str(i), label='L', level=1, program='p', result_json=big, run_id='r', attempts=[])\n"
        "    print(i, flush=True)\n"
        "    i += 1\n"
    )
    proc = _python(code, path)
    assert proc.stdout is not None
    for line in proc.stdout:
        if int(line) >= 20:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with ResultStore(path) as store:
        assert store.integrity_check() == "ok"
        rows = store.fragments()
        assert len(rows) >= 21
        expected = [i / 7 for i in range(5000)]
        for row in rows:
            assert store.get(row["key"])["return_result"] == expected


def test_concurrent_writers(tmp_path: Path) -> None:
    """Three processes and eight threads write the same store at the same moment; nothing is lost."""
    path = tmp_path / "s.sqlite"
    go = tmp_path / "go"
    ResultStore(path).close()
    code = (
        "import json, os, sys, time\n"
        "from qcmb_async._core.store import ResultStore\n"
        "path, tag, go = sys.argv[1:4]\n"
        "s = ResultStore(path)\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(go):\n"
        "    time.sleep(0.001)\n"
        "for i in range(200):\n"
        "    s.put(f'{tag}-{i}', label=f'{tag}{i}', level=1 + i % 3, program='p', run_id=tag, attempts=[],\n"
        "          result_json=json.dumps({'tag': tag, 'i': i, 'x': i / 7}))\n"
        "s.close()\n"
    )
    tags = ("a", "b", "c")
    procs = [_python(code, path, tag, go) for tag in tags]
    _wait_ready(procs)

    def write(i: int) -> None:
        store.put(f"t-{i}", label=f"t{i}", level=2, program="p", run_id="t", attempts=[],
                  result_json=json.dumps({"tag": "t", "i": i, "x": i / 7}))
        store.get(f"t-{i // 2}")  # readers interleave with writers

    with ResultStore(path) as store, ThreadPoolExecutor(8) as pool:
        go.touch()
        list(pool.map(write, range(200)))
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        for tag in (*tags, "t"):
            assert len(store.fragments(tag)) == 200
            found = store.get_many(f"{tag}-{i}" for i in range(200))
            assert found == {f"{tag}-{i}": {"tag": tag, "i": i, "x": i / 7} for i in range(200)}
        assert store.integrity_check() == "ok"


def test_concurrent_creation(tmp_path: Path) -> None:
    """Several processes creating the same new store at once all end up using one valid store."""
    path = tmp_path / "new" / "s.sqlite"
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from qcmb_async._core.store import ResultStore\n"
        "path, tag, go = sys.argv[1:4]\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(go):\n"
        "    time.sleep(0.0005)\n"
        "with ResultStore(path) as s:\n"
        "    s.put(tag, label=tag, level=1, program='p', result_json='{}', run_id=tag, attempts=[])\n"
    )
    procs = [_python(code, path, f"p{i}", go) for i in range(5)]
    _wait_ready(procs)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with ResultStore(path) as store:
        assert sorted(f["key"] for f in store.fragments()) == [f"p{i}" for i in range(5)]
        assert store.integrity_check() == "ok"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_busy_store_is_reported_as_busy_not_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    ResultStore(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process is writing and does not let go
    try:
        with ResultStore(path, timeout=0.2) as store:
            with pytest.raises(StoreError, match="locked by another process") as info:
                _put(store, "k")
            assert "corrupt" not in str(info.value)
            other.execute("ROLLBACK")
            _put(store, "k")  # the failed attempt left no transaction open
            assert store.get("k") is not None
    finally:
        other.close()


# -- bad files ------------------------------------------------------------------------------


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "random.sqlite"
    bad.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match=r"'.*random\.sqlite' is corrupt or not an SQLite database.*Move it away"):
        ResultStore(bad)
    assert len(bad.read_bytes()) == 8192  # left untouched


def test_half_a_store_is_refused(tmp_path: Path) -> None:
    half = tmp_path / "half.sqlite"
    with ResultStore(half) as store:
        for i in range(100):
            _put(store, str(i))
    data = half.read_bytes()
    assert not Path(f"{half}-wal").exists()  # checkpointed on close: all rows are in the main file
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"'.*half\.sqlite' is corrupt.*Move it away.*new store is created"):
        ResultStore(half)
    with pytest.raises(StoreError, match="corrupt"):
        ResultStore(half, readonly=True)


def test_damaged_row_fails_its_checksum(store: ResultStore) -> None:
    _put(store, "k")
    text = _result().model_dump_json()
    damaged = text.replace("-74.96340213676", "-74.96340213677")  # valid JSON, wrong number
    assert damaged != text
    _sqlite(store.path, f"UPDATE fragments SET result_json = '{damaged}' WHERE key = 'k'")
    with pytest.raises(StoreError, match=r"'k'.*fails its checksum.*Move it away"):
        store.get("k")
    with pytest.raises(StoreError, match="checksum"):
        store.get_many(["k"])


def test_foreign_sqlite_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.sqlite"
    _sqlite(foreign, "CREATE TABLE t (x)", "INSERT INTO t VALUES (1)")
    with pytest.raises(StoreError, match="is an SQLite database but not a qcmb_async store"):
        ResultStore(foreign)
    other_app = tmp_path / "other_app.sqlite"
    _sqlite(other_app, "PRAGMA application_id = 1234")
    with pytest.raises(StoreError, match="not a qcmb_async store"):
        ResultStore(other_app)
    con = sqlite3.connect(foreign)
    assert con.execute("SELECT * FROM t").fetchall() == [(1,)]  # left untouched
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()


def test_empty_file_becomes_a_store_but_is_not_readable_as_one(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(StoreError, match="empty file, not a qcmb_async store"):
        ResultStore(empty, readonly=True)
    with ResultStore(empty) as store:
        _put(store, "k")
    with ResultStore(empty, readonly=True) as store:
        assert store.get("k") is not None


def test_future_format_version_is_refused(tmp_path: Path) -> None:
    future = tmp_path / "future.sqlite"
    ResultStore(future).close()
    newer = STORE_FORMAT_VERSION + 1
    _sqlite(future, f"UPDATE meta SET value = '{newer}' WHERE key = 'format_version'",
            "UPDATE meta SET value = 'qcmb_async 9.0' WHERE key = 'created_by'")
    for readonly in (False, True):
        with pytest.raises(StoreError) as info:
            ResultStore(future, readonly=readonly)
        msg = str(info.value)
        assert f"format version {newer} (written by qcmb_async 9.0)" in msg
        assert f"this qcmb_async reads version {STORE_FORMAT_VERSION}" in msg
        assert "upgrade qcmb_async" in msg and "another store path" in msg
    _sqlite(future, "UPDATE meta SET value = 'x' WHERE key = 'format_version'")
    with pytest.raises(StoreError, match="no valid format version"):
        ResultStore(future)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        ResultStore(tmp_path)
