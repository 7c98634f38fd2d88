"""The schedule timeline: Gantt chart from a real MOPAC run, and statistics on known schedules."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from qcmb_async import run
from qcmb_async.timeline import assign_lanes, plot_timeline, timeline_intervals, timeline_stats
from tests.helpers import mbe_input, require_module, require_program, waters


def _frag(label: str, start: float, end: float, cores: int = 1, level: int = 1, **extra: Any) -> dict[str, Any]:
    return {"label": label, "level": level, "start": start, "end": end, "cores": cores, "status": "ok", **extra}


def _assert_lanes_never_overlap(intervals: list[Any], lanes: list[list[int]]) -> None:
    per_lane: dict[int, list[tuple[float, float]]] = {}
    for iv, assigned in zip(intervals, lanes, strict=True):
        assert len(set(assigned)) == iv.cores
        for lane in assigned:
            per_lane.setdefault(lane, []).append((iv.start, iv.end))
    for spans in per_lane.values():
        spans.sort()
        for (_, end), (start, _) in pairwise(spans):
            assert start >= end - 1e-9, spans


@pytest.fixture(scope="module")
def mopac_result() -> Any:
    require_program("mopac")
    return run(mbe_input("mopac", "pm7", None, bsse=["nocp"], max_nbody=3, molecule=waters(5)), ncores=2,
               store=None)


def test_timeline_png_from_a_real_run(mopac_result: Any, tmp_path: Path) -> None:
    require_module("matplotlib")
    path = tmp_path / "timeline.png"
    fig = plot_timeline(mopac_result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    stats = timeline_stats(mopac_result)
    title = fig._suptitle.get_text()
    assert f"efficiency {stats['efficiency']:.2f} (makespan / lower bound)" in title
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["1-body", "2-body", "3-body", "idle"]
    assert fig._repr_png_()[:4] == b"\x89PNG"  # displays itself in Jupyter without pyplot


def test_real_run_stats_and_lanes(mopac_result: Any) -> None:
    meta = mopac_result.extras["qcmb_async"]
    stats = timeline_stats(mopac_result)
    n = len(meta["fragments"])
    assert stats["ncores"] == 2 and stats["attempts"] == n == 5 + 10 + 10
    assert stats["efficiency"] >= 1.0
    assert stats["makespan"] == pytest.approx(meta["finished"] - meta["started"])
    assert 0.0 <= stats["idle_fraction"] < 1.0
    intervals = timeline_intervals(mopac_result)
    lanes, nlanes = assign_lanes(intervals, stats["ncores"])
    assert nlanes == 2  # the scheduler never ran more than ncores fragments at once
    _assert_lanes_never_overlap(intervals, lanes)
    # Every source form gives the same numbers.
    assert timeline_stats(meta) == stats
    assert timeline_stats(meta["fragments"], ncores=2)["lower_bound"] == pytest.approx(stats["lower_bound"])


def test_perfect_packing_has_efficiency_one() -> None:
    frags = [_frag("a", 0, 2), _frag("b", 0, 1), _frag("c", 1, 2, level=2)]
    stats = timeline_stats(frags, ncores=2)
    assert stats["makespan"] == 2 and stats["lower_bound"] == 2 and stats["efficiency"] == 1.0
    assert stats["idle_fraction"] == 0.0 and stats["busy_core_seconds"] == 4


def test_longest_fragment_bounds_below() -> None:
    stats = timeline_stats([_frag("long", 0, 3), _frag("short", 0, 1)], ncores=2)
    assert stats["lower_bound"] == 3 and stats["efficiency"] == 1.0
    assert stats["idle_fraction"] == pytest.approx(1 - 4 / 6)


def test_bad_packing_and_run_overhead() -> None:
    frags = [_frag("a", 10, 11), _frag("b", 11, 12), _frag("c", 12, 13), _frag("d", 10, 11)]
    stats = timeline_stats(frags, ncores=2)
    assert stats["lower_bound"] == 2 and stats["makespan"] == 3 and stats["efficiency"] == pytest.approx(1.5)
    # The run's own start/end (planning, priming) count in the makespan.
    meta = {"ncores": 2, "started": 9.0, "finished": 13.5, "fragments": frags}
    stats = timeline_stats(meta)
    assert stats["makespan"] == 4.5 and stats["efficiency"] == pytest.approx(2.25)
    assert stats["idle_fraction"] == pytest.approx(1 - 4 / 9)


def test_multicore_fragments_get_contiguous_lanes() -> None:
    frags = [_frag("one", 0, 1), _frag("two", 0, 2, cores=2), _frag("big", 2, 3, cores=3), _frag("tail", 1, 2)]
    intervals = timeline_intervals(frags)
    lanes, nlanes = assign_lanes(intervals, 3)
    assert nlanes == 3
    by_label = {iv.label: lane for iv, lane in zip(intervals, lanes, strict=True)}
    assert by_label["one"] == [0] and by_label["two"] == [1, 2] and by_label["tail"] == [0]
    assert by_label["big"] == [0, 1, 2]
    _assert_lanes_never_overlap(intervals, lanes)
    stats = timeline_stats(frags, ncores=3)
    assert stats["busy_core_seconds"] == 1 + 4 + 3 + 1 and stats["lower_bound"] == 3
    # Without ncores the peak concurrent core count is used.
    assert timeline_stats(frags)["ncores"] == 3


def test_overlapping_records_open_extra_lanes() -> None:
    intervals = timeline_intervals([_frag("a", 0, 2), _frag("b", 1, 3), _frag("c", 1, 2)])
    lanes, nlanes = assign_lanes(intervals, 1)
    assert nlanes == 3
    _assert_lanes_never_overlap(intervals, lanes)


def test_retries_and_cached_fragments(tmp_path: Path) -> None:
    require_module("matplotlib")
    history = [{"attempt": 1, "start": 0.0, "end": 1.0, "error_type": "random_error"},
               {"attempt": 2, "start": 1.5, "end": 2.5, "error_type": None}]
    frags = [_frag("flaky", 1.5, 2.5, attempts=2, history=history),
             {"label": "cached", "level": 2, "start": None, "end": None, "cores": 1, "status": "cached"},
             _frag("other", 0, 2.5, level=2)]
    intervals = timeline_intervals(frags)
    assert [(iv.label, iv.ok) for iv in intervals] == [("flaky", False), ("other", True), ("flaky", True)]
    stats = timeline_stats(frags, ncores=2)
    assert stats["attempts"] == 3 and stats["failed_attempts"] == 1
    assert stats["busy_core_seconds"] == 4.5 and stats["lower_bound"] == 2.5
    fig = plot_timeline(frags, tmp_path / "t.svg", ncores=2, title="retries")
    assert (tmp_path / "t.svg").stat().st_size > 1000
    assert fig._suptitle.get_text().startswith("retries\n")
    assert "failed attempt" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_nothing_computed_and_bad_sources() -> None:
    stats = timeline_stats([{"label": "c", "level": 1, "start": None, "end": None, "cores": 1}], ncores=1)
    assert stats["efficiency"] is None and stats["makespan"] == 0
    with pytest.raises(TypeError, match="cannot draw a timeline"):
        timeline_stats(42)
    with pytest.raises(ValueError, match="fragments"):
        timeline_stats({"run_id": "x"})
