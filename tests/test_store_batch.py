"""Results committed in group transactions: the rows ``put`` would write, all or none, each committed before
its fragment is announced finished."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qcmb_async import run
from qcmb_async._core import events as ev
from qcmb_async._core import scheduler
from qcmb_async._core.store import ResultStore
from tests.fakes import register_fakes
from tests.helpers import mbe_input, waters

_RESULT = json.dumps({"success": True, "return_result": -1.5, "properties": {"return_energy": -1.5}})


def _fields(i: int) -> dict[str, Any]:
    return {"key": f"k{i}", "label": f"frag {i}", "level": 1 + i % 3, "program": "prog", "result_json": _RESULT,
            "run_id": "r", "attempts": [{"attempt": 1, "start": 1.0, "end": 2.0 + i}], "host": "h", "worker": "w",
            "wall_time": 1.0 + i, "program_version": "1.0"}


def _rows(path: Path) -> list[tuple[Any, ...]]:
    with ResultStore(path, readonly=True) as rs:
        rows = rs.fragments()
        return [(*(v for k, v in r.items() if k != "created_at"), rs.get(r["key"])) for r in rows]


def test_put_many_writes_the_rows_put_writes(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "one.sqlite") as one, ResultStore(tmp_path / "many.sqlite") as many:
        for i in range(5):
            fields = _fields(i)
            one.put(fields.pop("key"), **fields)
        many.put_many([_fields(i) for i in range(5)])
    a, b = _rows(tmp_path / "one.sqlite"), _rows(tmp_path / "many.sqlite")
    assert len(a) == 5 and sorted(a) == sorted(b)
    assert {r[-1]["return_result"] for r in a} == {-1.5}


def test_put_many_is_all_or_none(tmp_path: Path) -> None:
    rows = [_fields(0), {**_fields(1), "result_json": json.dumps({"success": False})}]
    with ResultStore(tmp_path / "s.sqlite") as rs:
        with pytest.raises(ValueError, match="not a successful AtomicResult"):
            rs.put_many(rows)
        assert rs.get("k0") is None  # the valid row was not written either


@pytest.mark.filterwarnings("ignore:ncores=4 is more than")
def test_each_fragment_is_committed_before_it_is_announced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Instant FAKE fragments finish together, so results go to the store in rounds of several; every
    ``FragmentFinished`` finds its fragment's row already committed (read through a second connection)."""
    register_fakes()
    rounds: list[int] = []
    original = scheduler._store_put_many

    def spy(store: Any, batch: list[Any], run_id: str) -> Any:
        rounds.append(len(batch))
        return original(store, batch, run_id)

    monkeypatch.setattr(scheduler, "_store_put_many", spy)
    path = tmp_path / "s.sqlite"
    inp = mbe_input("qcmb-fake-sleep", "fake", "none", bsse="nocp", max_nbody=3, molecule=waters(6),
                    keywords={"sleep": 0})
    missing: list[str] = []
    finished: list[str] = []
    reader: dict[str, ResultStore] = {}

    def on_event(event: Any) -> None:
        if isinstance(event, ev.FragmentFinished):
            if "rs" not in reader:
                reader["rs"] = ResultStore(path, readonly=True)
            finished.append(event.label)
            if event.label not in {r["label"] for r in reader["rs"].fragments()}:
                missing.append(event.label)

    try:
        result = run(inp, executor="threads", ncores=4, store=str(path), on_event=on_event)
    finally:
        if "rs" in reader:
            reader["rs"].close()
    nfrag = len(result.extras["qcmb_async"]["fragments"])
    assert nfrag == 6 + 15 + 20 and len(finished) == nfrag
    assert not missing, missing
    assert sum(rounds) == nfrag and max(rounds) > 1, rounds  # some rounds committed several results at once
    with ResultStore(path, readonly=True) as rs:
        assert sorted(r["label"] for r in rs.fragments()) == sorted(finished)


def _items(n_waters: int = 4) -> list[Any]:
    """Finished fragments as the scheduler hands them to the store: fragment, key, AtomicResult, record."""
    from types import SimpleNamespace

    from qcmb_async._core.outcome import FragmentRecord
    from qcmb_async._core.plan import make_plan
    from tests.fakes import _result

    register_fakes()
    plan = make_plan(mbe_input("qcmb-fake-sleep", "fake", "none", bsse="nocp", max_nbody=2,
                               molecule=waters(n_waters), keywords={"sleep": 0}))
    items = []
    for i, frag in enumerate(plan.fragments):
        job = plan.materialise(frag)
        rec = FragmentRecord(frag.label, frag.level, frag.program, 1, 1.0, status="ok", attempts=1)
        rec.history.append({"attempt": 1, "start": 100.0 + i, "end": 100.5 + i, "worker": "thread", "host": "h",
                            "error_type": None, "error_message": None})
        items.append(SimpleNamespace(frag=frag, key=job.key, rec=rec,
                                     result=_result(job.atomic_input, -76.0 - i / 7)))
    return items


def test_rounds_write_the_rows_per_row_commits_wrote(tmp_path: Path) -> None:
    """Rounds of one row and of many (``put_many``, no re-parse of the JSON) write the very rows that one
    ``put`` per fragment wrote (every column but ``created_at``, and the stored result)."""
    from qcmb_async._core.outcome import _store_put

    items = _items()
    with ResultStore(tmp_path / "rows.sqlite") as rs:
        assert all(_store_put(rs, p.frag, p.key, p.result, p.rec, "run") is None for p in items)
    with ResultStore(tmp_path / "ones.sqlite") as rs:
        assert all(scheduler._store_put_many(rs, [p], "run") == [None] for p in items)
    with ResultStore(tmp_path / "round.sqlite") as rs:
        assert scheduler._store_put_many(rs, items, "run") == [None] * len(items)
    per_row = _rows(tmp_path / "rows.sqlite")
    assert len(per_row) == len(items) == 4 + 6
    assert sorted(per_row) == sorted(_rows(tmp_path / "ones.sqlite")) == sorted(_rows(tmp_path / "round.sqlite"))
    assert {r[-1]["return_result"] for r in per_row} == {p.result.return_result for p in items}


def test_a_store_of_per_row_commits_is_reused_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written one ``put`` per fragment (how rounds of one were committed before) serves a later
    run completely: every fragment is read back, none computed, same energy."""
    from qcmb_async._core.outcome import _store_put

    register_fakes()

    def per_row(store: Any, batch: list[Any], run_id: str) -> list[str | None]:
        return [_store_put(store, p.frag, p.key, p.result, p.rec, run_id) for p in batch]

    path = tmp_path / "s.sqlite"
    inp = mbe_input("qcmb-fake-sleep", "fake", "none", bsse="nocp", max_nbody=3, molecule=waters(5),
                    keywords={"sleep": 0})
    with monkeypatch.context() as m:
        m.setattr(scheduler, "_store_put_many", per_row)
        first = run(inp, executor="threads", ncores=2, store=str(path))
    second = run(inp, executor="threads", ncores=2, store=str(path))
    records = second.extras["qcmb_async"]["fragments"]
    assert len(records) == 5 + 10 + 10
    assert {r["status"] for r in records} == {"cached"}
    assert second.properties.return_energy == first.properties.return_energy is not None
