"""The simulator's moldable allotment for an MPI program, against a schedule worked out by hand.

Four virtual cores, NWChem fragments: one large (200 basis functions, above ``MPI_MIN_SIZE``, 8 s
on one core) and four small ones (20 basis functions, 1 s each). NWChem's true parallel fraction
is set to 0.8, so on k ranks the large one takes ``8 * (0.2 + 0.8 / k)`` s (Amdahl).

One rank per fragment (``fragment_ncores=1``), largest first: the large fragment runs 0-8 s on one
core, three small ones 0-1 s beside it and the fourth 1-2 s: makespan 8 s, and from 2 s on three
of the four cores idle (a 6-s tail below half the cores).

Moldable: the cost model predicts the large fragment ``10 ** 3.5`` times a small one; on 2 ranks
the predicted schedule is ``0.6`` of that, on 4 ranks ``0.4``, so the greedy allotment gives it all
4 cores (small ones stay on one rank: below ``MPI_MIN_SIZE``). It runs 0-3.2 s on 4 ranks, then
the four small ones 3.2-4.2 s side by side: makespan 4.2 s, no core idle before the end.
"""

from __future__ import annotations

import pytest

from qcmb_async._core.cost import MPI_MIN_SIZE
from qcmb_async._core.plan import Fragment
from qcmb_async.simulate import Workload, simulate

F = 0.8


def _workload() -> Workload:
    group = "nwchem:(auto)"
    big = Fragment("big", 3, "(auto)", "nwchem", (1, 2, 3), (1, 2, 3), 200.0, 200.0**3.5, group)
    small = [Fragment(f"small{i}", 1, "(auto)", "nwchem", (i,), (i,), 20.0, 20.0**3.5, group) for i in range(4)]
    assert big.size >= MPI_MIN_SIZE > small[0].size
    return Workload([big, *small], {"big": 8.0, **{f.label: 1.0 for f in small}})


def _spans(result) -> dict[str, tuple[float, float, int]]:
    return {r.label: (r.start, r.end, r.cores) for r in result.records}


def test_one_rank_per_fragment_by_hand() -> None:
    result = simulate(_workload(), 4, fragment_ncores=1, parallel_fraction={"nwchem": F})
    spans = _spans(result)
    assert spans["big"] == pytest.approx((0.0, 8.0, 1))
    small = sorted(spans[f"small{i}"] for i in range(4))
    assert small == [pytest.approx((0.0, 1.0, 1))] * 3 + [pytest.approx((1.0, 2.0, 1))]
    assert result.makespan == pytest.approx(8.0)
    assert result.idle_tail(0.5) == pytest.approx(8.0 - 2.0)
    assert result.multi_core_fragments == 0


def test_moldable_ranks_by_hand() -> None:
    result = simulate(_workload(), 4, parallel_fraction={"nwchem": F})
    spans = _spans(result)
    big_wall = 8.0 * ((1 - F) + F / 4)  # 3.2 s on 4 ranks
    assert spans["big"] == pytest.approx((0.0, big_wall, 4))
    for i in range(4):
        assert spans[f"small{i}"] == pytest.approx((big_wall, big_wall + 1.0, 1))
    assert result.makespan == pytest.approx(4.2)
    assert result.idle_tail(0.5) == pytest.approx(0.0)
    assert result.idle_tail(1.0) == pytest.approx(0.0)
    assert result.multi_core_fragments == 1
    # Every core busy all the run: the busy core-seconds are 4 * 4.2.
    assert result.busy == pytest.approx(4 * big_wall + 4 * 1.0)
    assert result.utilisation == pytest.approx(1.0)


def test_idle_tail_counts_from_the_last_fall_below_the_share() -> None:
    # The one-rank schedule above: 4 busy cores 0-1 s, 2 busy 1-2 s, 1 busy 2-8 s.
    result = simulate(_workload(), 4, fragment_ncores=1, parallel_fraction={"nwchem": F})
    assert result.idle_tail(1.0) == pytest.approx(8.0 - 1.0)  # last moment all 4 were busy: 1 s
    assert result.idle_tail(0.5) == pytest.approx(8.0 - 2.0)  # fewer than 2 busy from 2 s
    assert result.idle_tail(0.25) == pytest.approx(0.0)  # at least one core busy to the end
