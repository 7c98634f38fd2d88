"""The result store: one SQLite row per fragment result, committed the moment it exists.

WAL mode with ``synchronous=FULL``: a committed row survives the runner being SIGKILLed
and an OS crash. Results are QCSchema JSON (never pickle); the file is created owner-only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import QCMBAsyncError

STORE_FORMAT_VERSION = 1
#: PRAGMA application_id of qcmb_async stores ("QCMB" in ASCII), so foreign SQLite files are recognised.
APPLICATION_ID = 0x51434D42

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fragments (
    key TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    level INTEGER NOT NULL,
    program TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    result_json TEXT,
    run_id TEXT NOT NULL,
    attempts TEXT NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    worker TEXT NOT NULL DEFAULT '',
    wall_time REAL,
    error_type TEXT,
    error_message TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS fragments_run ON fragments (run_id);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    input_hash TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    summary TEXT
);
"""


class StoreError(QCMBAsyncError):
    """The result store cannot be used (corrupt, foreign, or from an incompatible version)."""


def default_store_path() -> Path:
    """``<user cache dir>/qcmb_async/results.sqlite`` (directory created owner-only)."""
    import platformdirs

    directory = Path(platformdirs.user_cache_dir("qcmb_async"))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory / "results.sqlite"


class ResultStore:
    """SQLite store of fragment results, safe to share between threads and processes."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        if readonly and not self.path.exists():
            raise StoreError(f"result store {str(self.path)!r} does not exist")
        if not readonly and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Create it owner-only before SQLite touches it; SQLite keeps the mode for -wal/-shm.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
            self._con = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False,
                                        isolation_level=None)
            self._check_and_init()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"result store {str(self.path)!r} is corrupt or not an SQLite database ({exc}). "
                "Move it away; a new store is created on the next run (or pass another store path)."
            ) from exc

    def _check_and_init(self) -> None:
        con = self._con
        con.execute("PRAGMA busy_timeout = 30000")
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables):
            raise StoreError(
                f"{str(self.path)!r} is an SQLite database but not a qcmb_async store: "
                "pass another store path (or move the file away)"
            )
        check = con.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StoreError(f"result store {str(self.path)!r} is corrupt ({check}): move it away and run again")
        if app_id == 0 and not self.readonly:
            with self._transaction():
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                for statement in _split(_SCHEMA):  # executescript would commit mid-transaction
                    con.execute(statement)
                con.execute("INSERT OR IGNORE INTO meta VALUES ('format_version', ?)", (str(STORE_FORMAT_VERSION),))
                con.execute("INSERT OR IGNORE INTO meta VALUES ('created_by', ?)", (_creator(),))
        if not self.readonly:
            con.execute("PRAGMA journal_mode = WAL")
            # FULL: a committed fragment survives even an OS crash, not only a killed process.
            con.execute("PRAGMA synchronous = FULL")
        row = con.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
        version = int(row[0]) if row else -1
        if version != STORE_FORMAT_VERSION:
            raise StoreError(
                f"result store {str(self.path)!r} has format version {version}, but this qcmb_async reads "
                f"version {STORE_FORMAT_VERSION}: upgrade qcmb_async, or use another store path"
            )

    def _transaction(self) -> Any:
        store = self

        class _Tx:
            def __enter__(self) -> None:
                store._con.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type: Any, *rest: Any) -> None:
                store._con.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored ``AtomicResult`` (as a dict) of a successful fragment, or ``None``."""
        with self._lock:
            row = self._con.execute("SELECT result_json FROM fragments WHERE key = ? AND status = 'ok'",
                                    (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, *, label: str, level: int, program: str, result_json: str, run_id: str,
            attempts: list[dict[str, Any]], host: str = "", worker: str = "", wall_time: float | None = None) -> None:
        """Store a successful result; committed before returning."""
        with self._lock, self._transaction():
            self._con.execute(
                "INSERT OR REPLACE INTO fragments VALUES (?,?,?,?, 'ok', ?,?,?,?,?,?, NULL, NULL, ?)",
                (key, label, level, program, result_json, run_id, json.dumps(attempts), host, worker, wall_time,
                 time.time()),
            )

    def record_failure(self, key: str, *, label: str, level: int, program: str, run_id: str,
                       attempts: list[dict[str, Any]], error_type: str, error_message: str) -> None:
        """Record a failed fragment (never returned by :meth:`get`; a later success replaces it)."""
        with self._lock, self._transaction():
            self._con.execute(
                "INSERT INTO fragments VALUES (?,?,?,?, 'failed', NULL, ?,?, '', '', NULL, ?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET run_id=excluded.run_id, attempts=excluded.attempts, "
                "error_type=excluded.error_type, error_message=excluded.error_message, created_at=excluded.created_at "
                "WHERE fragments.status = 'failed'",
                (key, label, level, program, run_id, json.dumps(attempts), error_type, error_message, time.time()),
            )

    def record_run(self, run_id: str, *, input_hash: str, started: float, finished: float | None = None,
                   status: str = "running", summary: dict[str, Any] | None = None) -> None:
        """Insert or update one run's row."""
        with self._lock, self._transaction():
            self._con.execute(
                "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?)",
                (run_id, input_hash, started, finished, status, json.dumps(summary) if summary else None),
            )

    def fragments(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Fragment rows for reports (without the result JSON)."""
        sql = ("SELECT key, label, level, program, status, attempts, host, worker, wall_time, run_id, created_at, "
               "error_type, error_message FROM fragments")
        args: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id = ?"
            args = (run_id,)
        with self._lock:
            cur = self._con.execute(sql + " ORDER BY created_at", args)
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        for row in rows:
            row["attempts"] = json.loads(row["attempts"])
        return rows

    def runs(self) -> list[dict[str, Any]]:
        """One row per run, oldest first."""
        with self._lock:
            cur = self._con.execute("SELECT * FROM runs ORDER BY started")
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        for row in rows:
            row["summary"] = json.loads(row["summary"]) if row["summary"] else None
        return rows

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` (``'ok'`` when intact)."""
        with self._lock:
            return str(self._con.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._con.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _creator() -> str:
    from .. import __version__

    return f"qcmb_async {__version__}"
