"""What the schedule stage records and returns, its retry policy, and its way to the result store."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from .._logs import get_logger
from ..errors import FragmentError
from .compact import CompactResult
from .contract import is_transient
from .plan import Fragment, Job, Plan
from .resources import Usage
from .store import ResultStore
from .versions import program_version

log = get_logger()


class FragmentStore(Protocol):
    """What the scheduler needs of a result store (:class:`~qcmb_async._core.store.ResultStore`)."""

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        """Stored results (QCSchema dicts or models) of those ``keys`` that have one."""
        ...

    def put(self, key: str, **fields: Any) -> None:
        """Commit one successful result; raises ``StoreError`` when it cannot."""
        ...

    def record_failure(self, key: str, **fields: Any) -> None:
        """Note one failed fragment; raises ``StoreError`` when it cannot."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed attempt is tried again: transient errors only, ``retries`` times, with backoff."""

    retries: int = 0
    base: float = 0.5
    """Seconds before the first retry (jittered to 50-100 %), doubling per attempt."""
    cap: float = 30.0
    """Longest wait between attempts, s."""

    def delay(self, error_type: str | None, attempt: int) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up."""
        if not is_transient(error_type) or attempt > self.retries:
            return None
        return min(self.cap, self.base * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


class FragmentRecord:
    """What happened to one fragment (for tests, reports and the timeline).

    One per fragment of a run, 679,120 in an unscreened (H2O)64 MBE(4): so slots, no ``__dict__``, and
    :attr:`history` made on demand. Only attempts before the last (retries) are kept as entries; the last
    attempt's entry is the record's own fields (``start``, ``end``, ``worker``, ``host``) and its error.
    """

    __slots__ = ("_attempt", "_earlier", "_error", "_message", "attempts", "cores", "end", "error_message",
                 "error_type", "host", "label", "level", "memory", "pid", "program", "start", "status", "worker")

    #: The keys of :meth:`as_dict`, in its order (the public shape of ``extras["qcmb_async"]["fragments"]``).
    FIELDS = ("label", "level", "program", "cores", "memory", "status", "attempts", "start", "end", "host", "worker",
              "pid", "error_type", "error_message")

    def __init__(self, label: str, level: int, program: str, cores: int, memory: float, status: str = "pending",
                 attempts: int = 0, start: float | None = None, end: float | None = None, host: str = "",
                 worker: str = "", pid: int = 0, error_type: str | None = None,
                 error_message: str | None = None) -> None:
        self.label = label
        self.level = level
        """QCManyBody's n-body level: the number of real fragments."""
        self.program = program
        self.cores = cores
        self.memory = memory
        """GiB."""
        self.status = status
        """``pending``, ``ok``, ``failed``, or ``cached`` (read from the result store)."""
        self.attempts = attempts
        self.start = start
        """Start of the last attempt, s (the executor's clock: wall-clock ``time.time()``)."""
        self.end = end
        self.host = host
        self.worker = worker
        self.pid = pid
        self.error_type = error_type
        """Why the fragment failed for good (set with ``status="failed"``)."""
        self.error_message = error_message
        self._attempt = 0
        """Number of the last recorded attempt (0: none recorded)."""
        self._error: str | None = None
        self._message: str | None = None
        """The last recorded attempt's error type and message."""
        self._earlier: list[dict[str, Any]] | None = None
        """History entries of the attempts before the last (``None`` for a fragment never retried)."""

    def add_attempt(self, attempt: int, start: float | None, end: float | None, worker: str, host: str,
                    pid: int, error_type: str | None = None, error_message: str | None = None) -> None:
        """Note one finished attempt: it becomes the last entry of :attr:`history` and sets start, end, host..."""
        if self._attempt:
            if self._earlier is None:
                self._earlier = []
            self._earlier.append(self._last_entry())
        self._attempt, self._error, self._message = attempt, error_type, error_message
        self.start, self.end, self.worker, self.host, self.pid = start, end, worker, host, pid

    def _last_entry(self) -> dict[str, Any]:
        return {"attempt": self._attempt, "start": self.start, "end": self.end, "worker": self.worker,
                "host": self.host, "error_type": self._error, "error_message": self._message}

    @property
    def history(self) -> list[dict[str, Any]]:
        """One entry per attempt: attempt, start, end, worker, host, error_type, error_message (new dicts)."""
        out = [dict(h) for h in self._earlier or ()]
        if self._attempt:
            out.append(self._last_entry())
        return out

    def shift_times(self, offset: float) -> None:
        """Add ``offset`` s to every start and end, the record's and each attempt's (the simulator's clock)."""
        self.start = self.start + offset if self.start is not None else None
        self.end = self.end + offset if self.end is not None else None
        for h in self._earlier or ():
            h["start"] = h["start"] + offset if h["start"] is not None else None
            h["end"] = h["end"] + offset if h["end"] is not None else None

    def as_dict(self) -> dict[str, Any]:
        """A plain dict: the keys of :attr:`FIELDS` in that order, then ``history`` (its entries copied)."""
        return {"label": self.label, "level": self.level, "program": self.program, "cores": self.cores,
                "memory": self.memory, "status": self.status, "attempts": self.attempts, "start": self.start,
                "end": self.end, "host": self.host, "worker": self.worker, "pid": self.pid,
                "error_type": self.error_type, "error_message": self.error_message,
                "history": self.history}

    def __eq__(self, other: object) -> bool:
        return self.as_dict() == other.as_dict() if isinstance(other, FragmentRecord) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value (as the dataclass it was)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.FIELDS)
        return f"FragmentRecord({fields}, history={self.history!r})"


@dataclass
class ScheduleOutcome:
    """Results of the schedule stage."""

    results: dict[str, Any]
    """``{label: AtomicResult}`` of every fragment that succeeded (slimmed unless kept whole)."""
    records: list[FragmentRecord]
    failures: list[FragmentError]
    usage: Usage
    started: float
    finished: float
    not_stored: int = 0
    """Computed results the result store could not keep (disk full, I/O error): a rerun recomputes them."""


def unwrap_group(group: BaseExceptionGroup) -> BaseException:
    """The exception a user should see from a task group's exception group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                walk(sub)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, FragmentError):
            return leaf
    # One error may reach several tasks (an executor's ClusterError raised to every fragment waiting on it).
    real = list({id(leaf): leaf for leaf in leaves if not isinstance(leaf, anyio.get_cancelled_exc_class())}.values())
    if len(real) == 1:
        return real[0]
    return group


def _build(plan: Plan, store: FragmentStore | None, frags: list[Fragment]) -> list[tuple[Fragment, Job, Any]]:
    jobs = [plan.materialise(f) for f in frags]
    if store is None:
        return [(f, j, None) for f, j in zip(frags, jobs, strict=True)]  # no key needed: nothing hashed
    cached = {key: _atomic_result(data) for key, data in store.get_many([j.key for j in jobs]).items()}
    return [(f, j, cached.get(j.key)) for f, j in zip(frags, jobs, strict=True)]


def _store_put(store: FragmentStore, frag: Fragment, key: str, result: Any, rec: FragmentRecord,
               run_id: str) -> str | None:
    """Commit one result; ``None``, or why it could not be stored (the caller logs and counts)."""
    from ..errors import StoreError

    last = rec.history[-1] if rec.history else {}
    wall = (last["end"] - last["start"]) if last.get("end") and last.get("start") else None
    # A CompactResult carries the JSON its worker made of the same AtomicResult.
    text = result.json if isinstance(result, CompactResult) else result.model_dump_json()
    if text is None:
        return f"fragment {frag.label}: its result came back without the JSON the store keeps"
    try:
        store.put(key, label=frag.label, level=frag.level, program=frag.program,
                  result_json=text, run_id=run_id, attempts=rec.history,
                  host=last.get("host", ""), worker=last.get("worker", ""), wall_time=wall,
                  program_version=program_version(frag.program))
    except StoreError as exc:
        # The result is still in memory and the run goes on; only resumability of this fragment is lost.
        return f"fragment {frag.label}: {exc}"
    return None


def _store_put_batch(store: Any, items: list[tuple[Fragment, str, Any, FragmentRecord]],
                     run_id: str) -> list[str | None]:
    """Commit several results in one transaction (``store.put_many``); per item ``None`` or why it was not stored.

    The rows are exactly those :func:`_store_put` writes one by one. A failed transaction (full disk, locked
    store) leaves all of them unstored, as it would have left each of them.
    """
    from ..errors import StoreError

    problems: list[str | None] = [None] * len(items)
    rows: list[dict[str, Any]] = []
    where: list[int] = []
    for i, (frag, key, result, rec) in enumerate(items):
        last = rec.history[-1] if rec.history else {}
        wall = (last["end"] - last["start"]) if last.get("end") and last.get("start") else None
        text = result.json if isinstance(result, CompactResult) else result.model_dump_json()
        if text is None:
            problems[i] = f"fragment {frag.label}: its result came back without the JSON the store keeps"
            continue
        rows.append({"key": key, "label": frag.label, "level": frag.level, "program": frag.program,
                     "result_json": text, "run_id": run_id, "attempts": rec.history, "host": last.get("host", ""),
                     "worker": last.get("worker", ""), "wall_time": wall,
                     "program_version": program_version(frag.program)})
        where.append(i)
    if rows:
        try:
            # Each text is an AtomicResult's own JSON of a successful outcome (the scheduler stores nothing
            # else), so the store need not parse it again; a store without that option checks as usual.
            if isinstance(store, ResultStore):
                store.put_many(rows, checked=True)
            else:
                store.put_many(rows)
        except StoreError as exc:
            for i in where:
                problems[i] = f"fragment {items[i][0].label}: {exc}"
    return problems


def _store_failure(store: FragmentStore, frag: Fragment, key: str, rec: FragmentRecord, run_id: str) -> None:
    from ..errors import StoreError

    try:
        store.record_failure(key, label=frag.label, level=frag.level, program=frag.program, run_id=run_id,
                             attempts=rec.history, error_type=rec.error_type or "",
                             error_message=rec.error_message or "", program_version=program_version(frag.program))
    except StoreError as exc:
        log.error("failure not recorded in the store", label=frag.label, reason=str(exc))




def _atomic_result(data: Any) -> Any:
    from qcelemental.models.v2 import AtomicResult

    return data if isinstance(data, AtomicResult) else AtomicResult(**data)
