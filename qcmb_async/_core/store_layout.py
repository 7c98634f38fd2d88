"""The result store's file: where it lives, its tables and format version, migrations, run ownership."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from ..errors import InputError, StoreError
from ..settings import get_settings

STORE_FORMAT_VERSION: int = 1
"""Layout version written to ``meta.format_version``; a store with another version is refused."""

APPLICATION_ID: int = 0x51434D42
"""``PRAGMA application_id`` of qcmb_async stores ("QCMB" in ASCII), so foreign SQLite files are recognised."""

DEFAULT_TIMEOUT: float = 30.0
"""Seconds an operation waits for another process's write lock before giving up (SQLite busy timeout)."""

_FRAGMENT_COLUMNS = ("key", "label", "level", "program", "program_version", "status", "attempts", "host", "worker",
                     "wall_time", "run_id", "created_at", "error_type", "error_message")
_RUN_COLUMNS = ("run_id", "input_hash", "started", "finished", "status", "summary", "host", "pid", "pid_started")

RUN_STATUSES = ("running", "ok", "failed", "error", "interrupted")
"""Values of ``runs.status`` written by qcmb_async; :meth:`ResultStore.runs` adds ``died`` for a ``running``
row whose process is gone."""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS fragments (
        key TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        level INTEGER NOT NULL,
        program TEXT NOT NULL,
        program_version TEXT,
        status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
        result_json TEXT,
        result_sha256 TEXT,
        run_id TEXT NOT NULL,
        attempts TEXT NOT NULL,
        host TEXT NOT NULL DEFAULT '',
        worker TEXT NOT NULL DEFAULT '',
        wall_time REAL,
        error_type TEXT,
        error_message TEXT,
        created_at REAL NOT NULL,
        CHECK (status = 'failed' OR result_json IS NOT NULL)
    )""",
    "CREATE INDEX IF NOT EXISTS fragments_run ON fragments (run_id)",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        input_hash TEXT NOT NULL,
        started REAL NOT NULL,
        finished REAL,
        status TEXT NOT NULL,
        summary TEXT,
        host TEXT,
        pid INTEGER,
        pid_started REAL
    )""",
)


def create_schema(con: sqlite3.Connection, creator: str) -> None:
    """Create the tables of an empty store (idempotent: another process may be doing the same)."""
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    for statement in _SCHEMA:
        con.execute(statement)
    con.execute("INSERT OR IGNORE INTO meta VALUES ('format_version', ?)", (str(STORE_FORMAT_VERSION),))
    con.execute("INSERT OR IGNORE INTO meta VALUES ('created_by', ?)", (creator,))
    con.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (repr(time.time()),))


def check_version(con: sqlite3.Connection, name: str, move_away: str) -> str:
    """The store's ``created_by``; :class:`StoreError` unless its format version is this one."""
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    created_by = meta.get("created_by", "")
    raw = meta.get("format_version")
    try:
        version = int(raw) if raw is not None else None
    except ValueError:
        version = None
    if version is None:
        raise StoreError(f"result store {name} has no valid format version ({raw!r}): it is damaged. {move_away}")
    if version > STORE_FORMAT_VERSION:
        by = f" (written by {created_by})" if created_by else ""
        raise StoreError(
            f"result store {name} has format version {version}{by}, but this qcmb_async reads "
            f"version {STORE_FORMAT_VERSION}: upgrade qcmb_async, or use another store path")
    if version < STORE_FORMAT_VERSION:  # no older version exists yet; kept for when one does
        raise StoreError(
            f"result store {name} has the old format version {version}, but this qcmb_async reads "
            f"version {STORE_FORMAT_VERSION}. {move_away}")
    return created_by


def migrate(con: sqlite3.Connection, transaction: Callable[[], AbstractContextManager[None]]) -> None:
    """Add the columns later versions of qcmb_async write to a store of the same format version."""
    # Stores written before result_sha256 existed (same format version; their rows stay unverified).
    columns = {r[1] for r in con.execute("PRAGMA table_info(fragments)")}
    if "result_sha256" not in columns:
        with transaction():
            columns = {r[1] for r in con.execute("PRAGMA table_info(fragments)")}
            if "result_sha256" not in columns:
                con.execute("ALTER TABLE fragments ADD COLUMN result_sha256 TEXT")
    # Stores written before keys held the program's version: their rows keep a key of KEY_VERSION 1, which no
    # run computes any more (never reused), and a NULL program_version (reports say "unknown").
    if "program_version" not in columns:
        with transaction():
            columns = {r[1] for r in con.execute("PRAGMA table_info(fragments)")}
            if "program_version" not in columns:
                con.execute("ALTER TABLE fragments ADD COLUMN program_version TEXT")
    # Stores written before runs recorded their process (their 'running' rows cannot be judged).
    run_columns = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
    missing = [c for c in ("host", "pid", "pid_started") if c not in run_columns]
    if missing:
        with transaction():
            run_columns = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
            for column, kind in (("host", "TEXT"), ("pid", "INTEGER"), ("pid_started", "REAL")):
                if column not in run_columns:
                    con.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")


def default_store_path() -> Path:
    """``<user cache dir>/qcmb_async/results.sqlite``; creates the directory owner-only (0o700)."""
    import platformdirs

    directory = Path(platformdirs.user_cache_dir("qcmb_async"))
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    return directory / "results.sqlite"



def store_path(store: str | os.PathLike[str] | None = "default") -> Path | None:
    """The store file a run with ``store=`` opens, or ``None`` for no store.

    ``"default"``: ``$QCMB_ASYNC_STORE`` (``none`` disables) or :func:`default_store_path`.
    An empty string raises :class:`InputError`.
    """
    if store is None:
        return None
    if isinstance(store, str) and not store.strip():
        # Path("") is ".", which would be refused as "a directory": say what is really wrong.
        raise InputError("the result store path is empty: pass the path of a store file, 'default' for the "
                         "default store, or None (--no-store) for no store")
    if not isinstance(store, str | os.PathLike):
        raise StoreError(f"store= must be a file path, 'default' or None, got {store!r}")
    if isinstance(store, str) and store == "default":
        settings = get_settings()
        if settings.store_disabled:
            return None
        return Path(settings.store).expanduser() if settings.store else default_store_path()
    return Path(store)


def _this_process() -> tuple[str, int, float | None]:
    import socket

    try:
        import psutil

        started: float | None = psutil.Process().create_time()
    except Exception:  # psutil missing or /proc unreadable: pid alone
        started = None
    return socket.gethostname(), os.getpid(), started


def _process_gone(host: str | None, pid: int | None, started: float | None) -> bool:
    """Whether the process that wrote a ``running`` row on this host has ended (pid reuse included)."""
    import socket

    if not host or not pid or host != socket.gethostname():
        return False
    import psutil

    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return started is not None and abs(proc.create_time() - started) > 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
