"""Per-fragment records: ``result.extras["qcmb_async"]["fragments"]`` keeps its shape, and a record stays small.

A run keeps one :class:`~qcmb_async._core.outcome.FragmentRecord` per fragment (679,120 in an unscreened
(H2O)64 MBE(4), issue 25), so records have slots, share their worker/host/pid objects, and make their history on
demand; the extras' dicts are made from them only after assembly. What must not change is what a user reads:

* every record is a plain dict with the documented keys in order, its values those of the attempts the executor
  reported (start, end, worker, host, pid of the last attempt; one history entry per attempt, retries included),
  in QCManyBody's label order, also for a fragment that failed for good (``on_error="continue"``);
* the result still serializes to JSON with those records.

The expected records are written here from what a FAKE executor returned, not from the code under test.
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
from typing import Any

import pytest

from qcmb_async import RunFailed, run_manybody
from qcmb_async._core.compact import CompactResult
from qcmb_async._core.contract import ErrorType, FragmentJob, JobOutcome
from qcmb_async._core.options import make_options
from qcmb_async._core.outcome import FragmentRecord
from qcmb_async._core.plan import make_plan
from qcmb_async._core.scheduler import Scheduler
from tests.helpers import mbe_input, waters

KEYS = ["label", "level", "program", "cores", "memory", "status", "attempts", "start", "end", "host", "worker", "pid",
        "error_type", "error_message", "history"]
HISTORY_KEYS = ["attempt", "start", "end", "worker", "host", "error_type", "error_message"]


class ScriptedExecutor:
    """FAKE executor: each fragment "finishes" at once with a made-up energy (nothing is compared with chemistry).

    The first attempt of every trimer fails with a transient error (retried); with ``fail_label`` that fragment
    fails for good (a non-transient error). Every outcome returned is kept, per label, in ``returned``.
    """

    name = "scripted (fake)"
    clock = staticmethod(time.time)
    capacity = None

    def __init__(self, fail_label: str | None = None) -> None:
        self.fail_label = fail_label
        self.returned: dict[str, list[JobOutcome]] = {}
        self._t = 1000.0

    async def __aenter__(self) -> ScriptedExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def run(self, job: FragmentJob) -> JobOutcome:
        self._t += 1.0
        start, end = self._t, self._t + 0.25
        # New string and int objects per outcome, as unpickled from a worker process.
        worker, host, pid = "".join(["worker-", str(job.attempt)]), "".join(["host", "-a"]), int("4242") + job.attempt
        if job.label == self.fail_label:
            out = JobOutcome.failure(job, ErrorType.UNKNOWN, "scripted permanent failure", start=start, end=end,
                                     host=host, worker=worker, pid=pid)
        elif job.nbody == 3 and job.attempt == 1:
            out = JobOutcome.failure(job, ErrorType.RANDOM, f"scripted transient failure of {job.label}",
                                     start=start, end=end, host=host, worker=worker, pid=pid)
        else:
            out = JobOutcome(label=job.label, result=CompactResult({"energy": -1.0 * job.nbody}), success=True,
                             start=start, end=end, host=host, worker=worker, pid=pid)
        self.returned.setdefault(job.label, []).append(out)
        return out


def _expected(label: str, level: int, outcomes: list[JobOutcome], memory: float, status: str = "ok",
              error: tuple[str | None, str | None] = (None, None)) -> dict[str, Any]:
    """The documented record of one fragment, from the outcomes its executor returned (in order)."""
    last = outcomes[-1]
    return {"label": label, "level": level, "program": "qcmb-fake-sleep", "cores": 1, "memory": memory,
            "status": status, "attempts": len(outcomes), "start": last.start, "end": last.end, "host": last.host,
            "worker": last.worker, "pid": last.pid, "error_type": error[0], "error_message": error[1],
            "history": [{"attempt": i, "start": o.start, "end": o.end, "worker": o.worker, "host": o.host,
                         "error_type": o.error_type, "error_message": o.error_message}
                        for i, o in enumerate(outcomes, start=1)]}


def _input(n: int = 4, max_nbody: int = 3) -> Any:
    return mbe_input("qcmb-fake-sleep", "fake", "none", molecule=waters(n), bsse="nocp", max_nbody=max_nbody)


def _labels(inp: Any) -> list[str]:
    """QCManyBody's own labels in its own order (its computer, not our plan)."""
    from qcmanybody.v2 import ManyBodyComputer

    core = ManyBodyComputer.from_manybodyinput(inp, build_tasks=False).qcmb_core
    return list(dict.fromkeys(label for _mc, label, _mol in core.iterate_molecules()))


def _check(records: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [r["label"] for r in records] == [e["label"] for e in expected]
    for rec, exp in zip(records, expected, strict=True):
        assert type(rec) is dict and list(rec) == KEYS, rec
        assert all(type(h) is dict and list(h) == HISTORY_KEYS for h in rec["history"]), rec
        assert rec == exp


@pytest.mark.asyncio
async def test_extras_records_are_the_documented_dicts() -> None:
    inp = _input()
    exe = ScriptedExecutor()
    result = await run_manybody(inp, ncores=2, memory=2, fragment_memory=0.5, executor=exe, retries=1, store=None)
    labels = _labels(inp)
    assert len(labels) == 4 + 6 + 4
    expected = [_expected(lb, lb.count(",") // 2, exe.returned[lb], 0.5) for lb in labels]
    assert sum(len(e["history"]) == 2 for e in expected) == 4  # every trimer was retried once
    records = result.extras["qcmb_async"]["fragments"]
    _check(records, expected)
    # Plain data: the whole result, records included, goes to JSON and back unchanged.
    back = json.loads(result.model_dump_json())["extras"]["qcmb_async"]["fragments"]
    assert back == json.loads(json.dumps(expected))


@pytest.mark.asyncio
async def test_records_of_a_run_that_failed() -> None:
    inp = _input()
    labels = _labels(inp)
    failing = next(lb for lb in labels if lb.count(",") // 2 == 3)
    exe = ScriptedExecutor(fail_label=failing)
    with pytest.raises(RunFailed) as info:
        await run_manybody(inp, ncores=2, memory=2, fragment_memory=0.5, executor=exe, retries=1, store=None,
                           on_error="continue")
    expected = []
    for lb in labels:
        outs = exe.returned[lb]
        if lb == failing:
            expected.append(_expected(lb, 3, outs, 0.5, "failed", ("UnknownError", "scripted permanent failure")))
        else:
            expected.append(_expected(lb, lb.count(",") // 2, outs, 0.5))
    partial = info.value.report.partial_result
    assert partial is not None  # MBE(2) from the complete levels, with the run's records
    _check(partial.extras["qcmb_async"]["fragments"], expected)


def _scheduler() -> Scheduler:
    plan = make_plan(_input(3, 1))
    return Scheduler(plan, make_options(ncores=1, memory=1), ScriptedExecutor(), run_id="records")


def test_record_has_no_dict_and_history_on_demand() -> None:
    rec = FragmentRecord("x", 2, "p", 1, 1.0)
    assert not hasattr(rec, "__dict__")
    with pytest.raises(AttributeError):
        rec.colour = "red"  # type: ignore[attr-defined]
    assert rec.history == [] and rec.as_dict()["history"] == []
    rec.add_attempt(1, 1.0, 2.0, "w", "h", 7, "random_error", "boom")
    rec.add_attempt(2, 3.0, 4.5, "w2", "h", 8)
    assert rec.history == [
        {"attempt": 1, "start": 1.0, "end": 2.0, "worker": "w", "host": "h", "error_type": "random_error",
         "error_message": "boom"},
        {"attempt": 2, "start": 3.0, "end": 4.5, "worker": "w2", "host": "h", "error_type": None,
         "error_message": None}]
    assert (rec.start, rec.end, rec.worker, rec.pid) == (3.0, 4.5, "w2", 8)
    rec.shift_times(-1.0)  # the simulator's virtual clock: every start and end moves
    assert [(h["start"], h["end"]) for h in rec.history] == [(0.0, 1.0), (2.0, 3.5)]
    # as_dict copies: changing it does not change the record.
    d = rec.as_dict()
    d["history"][0]["start"] = 99.0
    assert rec.history[0]["start"] == 0.0


def test_records_are_small_and_share_worker_host_and_pid() -> None:
    """A finished record costs at most 256 bytes, its object and its two times (~230 B; it was ~650 B)."""
    sched = _scheduler()
    n = 20_000
    labels = [f'["(auto)", [{i}], [{i}]]' for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        # New time, name and pid objects per outcome, as unpickled from worker processes.
        outcomes = [JobOutcome(label=lb, result=None, success=True, start=1e9 + i, end=1e9 + i + 0.5,
                               host="".join(["host", "-a"]), worker="".join(["worker-", str(i % 2)]),
                               pid=int("70000") + i % 2) for i, lb in enumerate(labels)]
        records = []
        for lb, out in zip(labels, outcomes, strict=True):
            rec = FragmentRecord(lb, 1, "p", 1, 1.0)
            sched._record_attempt(rec, 1, out)
            rec.status, rec.attempts = "ok", 1
            records.append(rec)
        del outcomes  # what stays is the records, their times and the shared names
        per_record = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert per_record <= 256, per_record
    assert sys.getsizeof(records[0]) <= 200
    assert len({id(r.worker) for r in records}) == 2
    assert len({id(r.host) for r in records}) == 1
    assert len({id(r.pid) for r in records}) == 2
    assert records[5].as_dict() == {
        "label": labels[5], "level": 1, "program": "p", "cores": 1, "memory": 1.0, "status": "ok", "attempts": 1,
        "start": 1e9 + 5, "end": 1e9 + 5.5, "host": "host-a", "worker": "worker-1", "pid": 70001,
        "error_type": None, "error_message": None,
        "history": [{"attempt": 1, "start": 1e9 + 5, "end": 1e9 + 5.5, "worker": "worker-1", "host": "host-a",
                     "error_type": None, "error_message": None}]}
