"""The result store: one SQLite row per fragment result, committed the moment it exists.

Results are QCSchema JSON (never pickle), each with a SHA-256 of its text that :meth:`ResultStore.get`
verifies, so a damaged row raises instead of feeding wrong numbers into the expansion. The file is
created owner-only (0o600), runs in WAL mode with ``synchronous=FULL`` and can be shared by several
processes and threads at once. Every failure to use the file is a :class:`StoreError` that names the
file and says what to do.

WAL needs shared memory between the processes using the file, so it must live on a local file
system (SQLite's WAL does not work over NFS and similar network file systems).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import StoreError
from .store_layout import (
    _FRAGMENT_COLUMNS,
    _RUN_COLUMNS,
    APPLICATION_ID,
    DEFAULT_TIMEOUT,
    _process_gone,
    _this_process,
    check_version,
    create_schema,
    migrate,
)

_MOVE_AWAY = "Move it away (a new store is created on the next run) or pass another store path."


class ResultStore:
    """SQLite store of fragment results, safe to share between threads and processes.

    One connection per store object (``check_same_thread=False``) serialised by a
    :class:`threading.Lock`, so any thread (e.g. ``anyio.to_thread`` workers) may call any
    method. Other processes coordinate through SQLite's own locks; a write waits up to
    ``timeout`` seconds for another process's write to finish.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.timeout = timeout
        self.created_by = ""
        self._lock = threading.Lock()
        self._closed = False
        self._sha_column = "result_sha256"
        if self.path.is_dir():
            raise StoreError(f"result store {self._name} is a directory: pass the path of a file")
        if readonly and not self.path.exists():
            raise StoreError(f"result store {self._name} does not exist")
        if not readonly and not self.path.exists():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Owner-only from the first byte: create the file before SQLite touches it. SQLite
                # creates its -wal/-shm files with the mode of the database file.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as exc:
                raise StoreError(f"cannot create result store {self._name}: {exc}") from exc
        # mode=rw: SQLite never creates the file itself (it would not be owner-only). as_uri()
        # percent-encodes '?', '#' and '%' in the path.
        self.immutable = False
        uri = self.path.absolute().as_uri() + ("?mode=ro" if readonly else "?mode=rw")
        try:
            self._connect(uri)
        except sqlite3.Error as exc:
            if not (readonly and _cannot_open(exc) and self._read_only_media()):
                raise self._error(exc, "open") from exc
            # A WAL store on read-only media (or in a directory we cannot write): SQLite cannot create
            # the -shm file it needs even to read. Nobody can be writing it, so read it as immutable.
            self.immutable = True
            try:
                self._connect(self.path.absolute().as_uri() + "?mode=ro&immutable=1")
            except sqlite3.Error as exc2:
                raise self._error(exc2, "open") from exc2

    def _connect(self, uri: str) -> None:
        self._con = sqlite3.connect(uri, uri=True, timeout=self.timeout, check_same_thread=False,
                                    isolation_level=None)
        try:
            self._open()
        except BaseException:
            self._con.close()
            raise

    def _read_only_media(self) -> bool:
        """Whether the store's directory cannot be written (read-only file system, immutable, permissions).

        Refuses (StoreError) a store whose write-ahead log still holds rows: immutable mode would not see them.
        """
        directory = self.path.absolute().parent
        if os.access(directory, os.W_OK):
            return False
        wal = Path(f"{self.path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreError(f"result store {self._name} is on read-only media with an unmerged write-ahead log "
                             f"({wal.name}): SQLite cannot read it there. Copy the store and its -wal file to a "
                             "writable directory and report that copy")
        return True

    # -- opening -----------------------------------------------------------------------------

    @property
    def _name(self) -> str:
        return repr(str(self.path))

    def _open(self) -> None:
        con = self._con
        con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        con.execute("PRAGMA trusted_schema = OFF")  # we may be looking at someone else's file
        # One snapshot for both reads: another process may be creating this store right now, and
        # its commit must not fall between them (it would look like tables without our id).
        con.execute("BEGIN")
        try:
            app_id = con.execute("PRAGMA application_id").fetchone()[0]  # NOTADB for non-SQLite files
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables):
            raise StoreError(f"{self._name} is an SQLite database but not a qcmb_async store "
                             f"(application_id {app_id:#x}, tables {sorted(tables)}): pass another store path")
        if app_id == 0 and self.readonly:
            raise StoreError(f"{self._name} is an empty file, not a qcmb_async store (yet): nothing to read")
        check = [r[0] for r in con.execute("PRAGMA quick_check(5)")]
        if check != ["ok"]:
            raise StoreError(f"result store {self._name} is corrupt ({'; '.join(check)}). {_MOVE_AWAY}")
        if app_id == 0:
            # An existing empty file (touched, or made by mktemp) keeps its mode: owner-only, like a new one.
            with contextlib.suppress(OSError):
                if self.path.stat().st_mode & 0o077:
                    os.chmod(self.path, 0o600)
            self._set_wal()  # before the first write, so even the creation is journaled in WAL
            with self._transaction():
                # Idempotent: another process may be creating the same store at the same moment.
                create_schema(con, _creator())
        self._check_version()
        if not self.readonly:
            self._set_wal()
            self._migrate()
            self._restrict_sidecars()
        elif "result_sha256" not in {r[1] for r in con.execute("PRAGMA table_info(fragments)")}:
            self._sha_column = "NULL"  # an early store, read-only: its rows carry no checksum
        # Durability: "lose no finished work". In WAL mode NORMAL already keeps every committed
        # row when the runner process is SIGKILLed (the WAL is in the OS page cache); only an OS
        # crash or power loss could drop the last commits. FULL fsyncs the WAL at each commit, so
        # a row committed by put() also survives those. It costs one fsync per fragment
        # (milliseconds), nothing next to a quantum-chemistry calculation.
        con.execute("PRAGMA synchronous = FULL")

    def _check_version(self) -> None:
        self.created_by = check_version(self._con, self._name, _MOVE_AWAY)

    def _set_wal(self) -> None:
        """Switch to WAL (persistent in the file), retrying while another process holds a lock."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                mode = str(self._con.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        if mode != "wal":
            raise StoreError(f"cannot put result store {self._name} in WAL mode (journal mode stays {mode!r}); "
                             "put the store on a local file system")

    def _migrate(self) -> None:
        migrate(self._con, self._transaction)

    def _restrict_sidecars(self) -> None:
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):  # absent, or another user's (then not ours to change)
                side = Path(f"{self.path}{suffix}")
                if side.stat().st_mode & 0o077:
                    os.chmod(side, 0o600)

    # -- plumbing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any error, including a failed commit."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            yield
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _using(self, doing: str, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The locked connection; sqlite3 errors become :class:`StoreError`."""
        with self._lock:
            if self._closed:
                raise StoreError(f"result store {self._name} is closed")
            if write and self.readonly:
                raise StoreError(f"result store {self._name} is open read-only: cannot {doing}")
            try:
                yield self._con
            except sqlite3.Error as exc:
                raise self._error(exc, doing) from exc

    def _error(self, exc: sqlite3.Error, doing: str) -> StoreError:
        name = str(getattr(exc, "sqlite_errorname", ""))
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return StoreError(f"result store {self._name} is corrupt or not an SQLite database ({exc}). {_MOVE_AWAY}")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return StoreError(f"result store {self._name} stayed locked by another process for {self.timeout:g} s "
                              f"({exc}); cannot {doing}. The file is not damaged: retry, or pass another store path.")
        if name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_READONLY", "SQLITE_AUTH")):
            return StoreError(f"cannot {doing} result store {self._name} ({exc}): check that the file and its "
                              "directory exist and are readable and writable by you, or pass another store path")
        if name.startswith(("SQLITE_IOERR", "SQLITE_FULL")):
            return StoreError(f"I/O error on result store {self._name} ({exc}) while trying to {doing}: "
                              "check the disk (free space, file system), or pass another store path")
        return StoreError(f"result store {self._name}: cannot {doing} ({type(exc).__name__}: {exc})")

    # -- results -----------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored ``AtomicResult`` (QCSchema dict) of a successful fragment, or ``None``."""
        with self._using("read a result") as con:
            row = con.execute(f"SELECT result_json, {self._sha_column} FROM fragments WHERE key = ? AND status = 'ok'",
                              (key,)).fetchone()
        return self._decode(key, *row) if row else None

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``{key: AtomicResult dict}`` for those of ``keys`` that have a successful result (one lock, one read)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, dict[str, Any]] = {}
        with self._using("read results") as con:
            rows = []
            for start in range(0, len(wanted), 500):  # stay below SQLite's bound-parameter limit
                chunk = wanted[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows += con.execute(f"SELECT key, result_json, {self._sha_column} FROM fragments "
                                    f"WHERE status = 'ok' AND key IN ({marks})", chunk).fetchall()
        for key, text, digest in rows:
            found[key] = self._decode(key, text, digest)
        return found

    def _decode(self, key: str, text: str, digest: str | None) -> dict[str, Any]:
        if digest is not None and _sha256(text) != digest:
            raise StoreError(f"the stored result of fragment {key!r} in {self._name} fails its checksum: the file "
                             f"is damaged. {_MOVE_AWAY}")
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"the stored result of fragment {key!r} in {self._name} is not valid JSON ({exc}): "
                             f"the file is damaged. {_MOVE_AWAY}") from exc
        if not isinstance(data, dict):
            raise StoreError(f"the stored result of fragment {key!r} in {self._name} is not a JSON object: "
                             f"the file is damaged. {_MOVE_AWAY}")
        return data

    def put(self, key: str, *, label: str, level: int, program: str, result_json: str, run_id: str,
            attempts: list[dict[str, Any]], host: str = "", worker: str = "", wall_time: float | None = None,
            program_version: str | None = None) -> None:
        """Store a successful result (``AtomicResult.model_dump_json()``); committed before returning.

        Replaces whatever the key held (an earlier failure, or an earlier result). ``program_version``: the
        version the key was made with (:func:`~qcmb_async._core.versions.program_version`), for reports.
        """
        _check_result_json(key, result_json)
        row = _ok_row(key, label, level, program, result_json, run_id, attempts, host, worker, wall_time,
                      program_version)
        with self._using(f"store the result of fragment {key!r}", write=True) as con, self._transaction():
            con.execute(_PUT_SQL, row)

    def put_many(self, rows: list[dict[str, Any]], *, checked: bool = False) -> None:
        """Store several successful results in one transaction (one commit, one fsync); committed before returning.

        Each item of ``rows`` holds :meth:`put`'s arguments by name (``key``, ``label``, ``level``, ``program``,
        ``result_json``, ``run_id``, ``attempts``, optionally ``host``, ``worker``, ``wall_time``,
        ``program_version``); the rows are those :meth:`put` writes. All or none are committed. Raises
        ``ValueError`` (nothing written) when a ``result_json`` is not a successful ``AtomicResult``.
        ``checked=True``: the caller made every ``result_json`` itself from a successful ``AtomicResult``
        (the scheduler), so it is not parsed again to check that (a full ``json.loads`` per row).
        """
        values = []
        for r in rows:
            if not checked:
                _check_result_json(r["key"], r["result_json"])
            values.append(_ok_row(r["key"], r["label"], r["level"], r["program"], r["result_json"], r["run_id"],
                                  r["attempts"], r.get("host", ""), r.get("worker", ""), r.get("wall_time"),
                                  r.get("program_version")))
        if not values:
            return
        with self._using(f"store the results of {len(values)} fragments", write=True) as con, self._transaction():
            con.executemany(_PUT_SQL, values)

    def record_failure(self, key: str, *, label: str, level: int, program: str, run_id: str,
                       attempts: list[dict[str, Any]], error_type: str, error_message: str,
                       program_version: str | None = None) -> None:
        """Record a failed fragment; committed before returning.

        :meth:`get` never returns it, a later :meth:`put` replaces it, and it never replaces a
        stored success. Host and worker are taken from the last attempt.
        """
        last = attempts[-1] if attempts else {}
        host, worker = str(last.get("host") or ""), str(last.get("worker") or "")
        start, end = last.get("start"), last.get("end")
        wall = end - start if isinstance(start, int | float) and isinstance(end, int | float) else None
        row = (key, label, int(level), program, program_version, run_id, json.dumps(attempts), host, worker, wall,
               error_type, error_message, time.time())
        with self._using(f"record the failure of fragment {key!r}", write=True) as con, self._transaction():
            con.execute(
                "INSERT INTO fragments (key, label, level, program, program_version, status, result_json, "
                "result_sha256, run_id, attempts, host, worker, wall_time, error_type, error_message, created_at) "
                "VALUES (?, ?, ?, ?, ?, 'failed', NULL, NULL, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET run_id = excluded.run_id, attempts = excluded.attempts, "
                "host = excluded.host, worker = excluded.worker, wall_time = excluded.wall_time, "
                "error_type = excluded.error_type, error_message = excluded.error_message, "
                "created_at = excluded.created_at WHERE fragments.status = 'failed'", row)

    # -- runs and reports --------------------------------------------------------------------

    def record_run(self, run_id: str, *, input_hash: str, started: float, finished: float | None = None,
                   status: str = "running", summary: dict[str, Any] | None = None) -> None:
        """Insert or update (upsert) one run's row; committed before returning.

        ``status`` is one of :data:`RUN_STATUSES`. The row also records this process (host, pid and
        its start time), so a ``running`` row whose process is gone reads as ``died``.
        """
        host, pid, pid_started = _this_process()
        row = (run_id, input_hash, started, finished, status, json.dumps(summary) if summary is not None else None,
               host, pid, pid_started)
        with self._using(f"record run {run_id!r}", write=True) as con, self._transaction():
            con.execute(
                "INSERT INTO runs (run_id, input_hash, started, finished, status, summary, host, pid, pid_started) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET input_hash = excluded.input_hash, started = excluded.started, "
                "finished = excluded.finished, status = excluded.status, summary = excluded.summary, "
                "host = excluded.host, pid = excluded.pid, pid_started = excluded.pid_started", row)

    def fragments(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Fragment rows for reports, oldest first, without the result JSON (``attempts`` parsed)."""
        args: tuple[Any, ...] = ()
        with self._using("list fragments") as con:
            # A store read-only from before a column existed (program_version): NULL for it.
            have = {r[1] for r in con.execute("PRAGMA table_info(fragments)")}
            sql = f"SELECT {', '.join(c if c in have else f'NULL AS {c}' for c in _FRAGMENT_COLUMNS)} FROM fragments"
            if run_id is not None:
                sql += " WHERE run_id = ?"
                args = (run_id,)
            rows = [dict(zip(_FRAGMENT_COLUMNS, r, strict=True))
                    for r in con.execute(sql + " ORDER BY created_at, key", args).fetchall()]
        for row in rows:
            row["attempts"] = _loads_or(row["attempts"], [])
        return rows

    def runs(self) -> list[dict[str, Any]]:
        """One row per run, oldest first (``summary`` parsed).

        A ``running`` row whose process on this host no longer exists (killed, crashed, machine
        rebooted) has ``status`` ``"died"``; on another host its process cannot be checked and it
        stays ``running``.
        """
        with self._using("list runs") as con:
            have = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
            columns = [c if c in have else f"NULL AS {c}" for c in _RUN_COLUMNS]
            rows = [dict(zip(_RUN_COLUMNS, r, strict=True))
                    for r in con.execute(f"SELECT {', '.join(columns)} FROM runs ORDER BY started, run_id")]
        for row in rows:
            row["summary"] = _loads_or(row["summary"], None)
            if row["status"] == "running" and _process_gone(row["host"], row["pid"], row["pid_started"]):
                row["status"] = "died"
        return rows

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` (``'ok'`` when intact; otherwise its findings, one per line)."""
        with self._using("check the integrity of") as con:
            return "\n".join(str(r[0]) for r in con.execute("PRAGMA integrity_check"))

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise :class:`StoreError`."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._con.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else "open")
        return f"ResultStore({str(self.path)!r}, {state})"


_PUT_SQL = ("INSERT OR REPLACE INTO fragments (key, label, level, program, program_version, status, result_json, "
            "result_sha256, run_id, attempts, host, worker, wall_time, error_type, error_message, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'ok', ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)")


def _check_result_json(key: str, result_json: str) -> None:
    """Raise ``ValueError`` unless ``result_json`` is the JSON of a successful ``AtomicResult``."""
    try:
        data = json.loads(result_json)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"result_json of fragment {key!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("success", True) is not True:
        raise ValueError(f"result_json of fragment {key!r} is not a successful AtomicResult: "
                         "use record_failure() for failures")


def _ok_row(key: str, label: str, level: int, program: str, result_json: str, run_id: str,
            attempts: list[dict[str, Any]], host: str, worker: str, wall_time: float | None,
            program_version: str | None) -> tuple[Any, ...]:
    """The ``fragments`` row of a successful result, in :data:`_PUT_SQL`'s order."""
    return (key, label, int(level), program, program_version, result_json, _sha256(result_json), run_id,
            json.dumps(attempts), host, worker, wall_time, time.time())


def _cannot_open(exc: sqlite3.Error) -> bool:
    name = str(getattr(exc, "sqlite_errorname", ""))
    return name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY")) or "unable to open" in str(exc)


def _is_busy(exc: sqlite3.Error) -> bool:
    name = str(getattr(exc, "sqlite_errorname", ""))
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(exc)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _loads_or(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def _creator() -> str:
    return f"qcmb_async {__version__}"
