"""The simulator: the real scheduler on virtual cores and a virtual clock (trio's MockClock)."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from qcmb_async._core.cost import speedup
from qcmb_async._core.plan import Fragment
from qcmb_async.programs import traits
from tests.helpers import mbe_input, require_module, waters


@pytest.fixture(autouse=True)
def _trio() -> None:
    require_module("trio")


def solute_in_water(n_waters: int = 4, max_nbody: int = 3, program: str = "nwchem"):
    """Benzene-like solute (fragment 1, size 66) and waters (size 13), NoCP; seconds grow with size."""
    from qcmb_async.simulate import Workload

    sizes = [66.0] + [13.0] * n_waters
    frags, durations = [], {}
    for k in range(1, max_nbody + 1):
        for combo in itertools.combinations(range(1, len(sizes) + 1), k):
            size = sum(sizes[i - 1] for i in combo)
            label = json.dumps(["(auto)", list(combo), list(combo)])
            frags.append(Fragment(label, k, "(auto)", program, combo, combo, size, size**3.5, f"{program}:(auto)"))
            durations[label] = 0.5 + 2e-6 * size**3.5
    return Workload(frags, durations, name="solute in water")


def overlap(records, weight=lambda r: r.cores) -> int:
    """Most cores in use at one moment (ends before starts at equal times)."""
    points = sorted([(r.start, weight(r)) for r in records] + [(r.end, -weight(r)) for r in records],
                    key=lambda p: (p[0], p[1]))
    best = cur = 0
    for _, delta in points:
        cur += delta
        best = max(best, cur)
    return best


def check_schedule(result, workload) -> None:
    """Every fragment ran exactly once, succeeded, and never more than ncores were busy."""
    assert len(result.records) == len(workload)
    assert sorted(r.label for r in result.records) == sorted(f.label for f in workload.fragments)
    assert all(r.status == "ok" and r.attempts == 1 and len(r.history) == 1 for r in result.records)
    assert overlap(result.records) <= result.ncores
    assert result.peak_cores <= result.ncores
    assert result.makespan >= result.lower_bound * (1 - 1e-9)
    assert result.makespan == pytest.approx(max(r.end for r in result.records))
    assert min(r.start for r in result.records) >= 0


def test_runs_the_real_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    import qcmb_async._core.scheduler as sched
    from qcmb_async.simulate import simulate

    calls = []
    real = sched.Scheduler.run

    async def counting(self, *args, **kwargs):
        calls.append(type(self.executor).__name__)
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(sched.Scheduler, "run", counting)
    work = solute_in_water()
    result = simulate(work, 4)
    assert calls == ["SimulatedExecutor"]
    assert all(isinstance(r, sched.FragmentRecord) for r in result.records)
    check_schedule(result, work)


def test_virtual_clock_hours_in_moments() -> None:
    from qcmb_async.simulate import Workload, simulate

    frags = [Fragment(f"f{i}", 1, "(auto)", "nwchem", (i,), (i,), 10.0, 10.0**3.5, "g") for i in range(1, 9)]
    work = Workload(frags, {f.label: 3600.0 for f in frags})
    result = simulate(work, 4)
    assert result.makespan == pytest.approx(7200.0)  # two waves of one virtual hour
    assert result.elapsed < 60
    assert result.ratio == pytest.approx(1.0)
    assert result.utilisation == pytest.approx(1.0)
    check_schedule(result, work)


@pytest.mark.parametrize("ncores", [1, 3, 8, 64])
@pytest.mark.parametrize(("order", "barrier"), [("fifo", True), ("fifo", False), ("cost", False), ("cost", True)])
def test_never_below_the_lower_bound(ncores: int, order: str, barrier: bool) -> None:
    from qcmb_async.simulate import simulate, synthetic_workload

    work = synthetic_workload(300, seed=ncores)
    result = simulate(work, ncores, order=order, level_barrier=barrier)
    check_schedule(result, work)
    if barrier:
        ends = {lv: max(r.end for r in result.records if r.level == lv) for lv in work.levels()}
        for r in result.records:
            if r.level > 1:
                assert r.start >= ends[r.level - 1] - 1e-9


def test_cost_order_beats_the_level_barrier_on_mixed_sizes() -> None:
    from qcmb_async.simulate import simulate

    work = solute_in_water(4, 4)
    barrier = simulate(work, 8, order="fifo", level_barrier=True)
    fifo = simulate(work, 8, order="fifo")
    cost = simulate(work, 8, order="cost")
    for r in (barrier, fifo, cost):
        check_schedule(r, work)
    assert cost.makespan <= fifo.makespan <= barrier.makespan
    assert cost.makespan < 0.8 * barrier.makespan
    assert cost.ratio < 1.1


def test_cost_order_starts_the_largest_first() -> None:
    from qcmb_async.simulate import simulate

    work = solute_in_water(4, 3)
    result = simulate(work, 2)
    first = min(result.records, key=lambda r: (r.start, r.label))
    biggest = max(work.fragments, key=lambda f: f.size)
    assert work.durations[first.label] == work.durations[biggest.label]


def test_ten_thousand_fragments() -> None:
    from qcmb_async.simulate import simulate, synthetic_workload

    work = synthetic_workload(10_000, seed=3)
    assert len(work) == 10_000
    assert len({f.label for f in work.fragments}) == 10_000
    result = simulate(work, 512)
    check_schedule(result, work)
    assert result.peak_cores == 512
    assert result.speedup > 100


def test_multi_core_fragments_run_faster_by_amdahl() -> None:
    from qcmb_async.simulate import Workload, simulate

    # Two big PySCF fragments and a few small ones on 8 cores: the scheduler gives the big ones
    # more cores, and the simulated executor shortens them by the speedup it assumed.
    frags = [Fragment(f"big{i}", 2, "(auto)", "pyscf", (1, 2), (1, 2), 100.0, 100.0**3.5, "pyscf:(auto)")
             for i in range(2)]
    frags += [Fragment(f"small{i}", 1, "(auto)", "pyscf", (1,), (1,), 10.0, 10.0**3.5, "pyscf:(auto)")
              for i in range(4)]
    durations = {f.label: (100.0 if f.label.startswith("big") else 1.0) for f in frags}
    work = Workload(frags, durations)
    result = simulate(work, 8)
    check_schedule(result, work)
    big = [r for r in result.records if r.label.startswith("big")]
    assert all(r.cores > 1 for r in big)
    for r in result.records:
        expected = durations[r.label] / speedup(r.cores, traits("pyscf").parallel_fraction)
        assert r.end - r.start == pytest.approx(expected)
    assert result.multi_core_fragments >= 2
    one_core = simulate(work, 8, fragment_ncores=1)
    assert result.makespan < one_core.makespan


def test_fragment_memory_limits_concurrency() -> None:
    from qcmb_async.simulate import simulate

    work = solute_in_water(4, 2)
    result = simulate(work, 8, memory=4, fragment_memory=2)
    check_schedule(result, work)
    assert overlap(result.records, weight=lambda r: 1) <= 2


def test_fragments_and_durations_without_a_workload() -> None:
    from qcmb_async.simulate import simulate

    frags = [Fragment(f"f{i}", 1 + i % 2, "(auto)", "nwchem", (i,), (i,), float(i), float(i), "g") for i in range(1, 7)]
    by_cost = simulate(frags, 2)
    assert by_cost.sequential == pytest.approx(sum(range(1, 7)))
    by_callable = simulate(frags, 2, durations=lambda f: 2 * f.size)
    assert by_callable.sequential == pytest.approx(2 * sum(range(1, 7)))
    with pytest.raises(ValueError, match="unique"):
        simulate(frags + frags[:1], 2)


def test_workload_json_round_trip(tmp_path) -> None:
    from qcmb_async.simulate import Workload, simulate

    work = solute_in_water(3, 2)
    path = tmp_path / "work.json"
    work.save(path)
    again = Workload.load(path)
    assert again.fragments == work.fragments
    assert again.durations == work.durations
    assert simulate(again, 3).makespan == pytest.approx(simulate(work, 3).makespan)


def test_replays_a_real_run() -> None:
    from qcmb_async import run
    from qcmb_async._core.plan import make_plan
    from qcmb_async.simulate import Workload, lower_bound, simulate

    inp = mbe_input("qcmb-fake-sleep", "fake", "none", molecule=waters(3), bsse="nocp", max_nbody=2,
                    keywords={"sleep": 0.05})
    result = run(inp, ncores=2, memory=2, store=None, executor="threads")
    work = Workload.from_run(result, inp)
    assert len(work) == 6
    assert all(d >= 0.05 for d in work.durations.values())
    assert [f.label for f in work.fragments] == [f.label for f in make_plan(inp).fragments]
    replay = simulate(work, 2)
    check_schedule(replay, work)
    measured = result.extras["qcmb_async"]
    real_span = max(f["end"] for f in measured["fragments"]) - min(f["start"] for f in measured["fragments"])
    assert replay.makespan <= real_span + 1e-6  # the replay leaves out the scheduler's own time
    assert replay.makespan >= lower_bound(work, 2) * (1 - 1e-9)


@pytest.mark.asyncio
async def test_callable_from_a_running_event_loop() -> None:
    from qcmb_async.simulate import simulate

    work = solute_in_water(3, 2)
    result = simulate(work, 2)  # runs its own trio loop on a private thread
    check_schedule(result, work)


def test_synthetic_workload_is_an_mbe() -> None:
    from qcmb_async.simulate import synthetic_workload

    work = synthetic_workload(5_000, seed=7)
    assert len(work) == 5_000
    levels = work.levels()
    n = levels[1]
    assert levels[2] == math.comb(n, 2)  # every dimer; the 3-body level is screened by distance
    assert 0 < levels[3] <= math.comb(n, 3)
    for f in work.fragments:
        assert f.level == len(f.real) and f.real == f.basis
    assert synthetic_workload(5_000, seed=7).durations == work.durations  # reproducible


def test_makespan_lower_bound_of_measured_fragments() -> None:
    from qcmb_async.simulate import makespan_lower_bound

    # max(longest, sum(wall * cores) / ncores), worked by hand.
    assert makespan_lower_bound([3.0, 1.0, 1.0, 1.0], 2) == pytest.approx(3.0)  # longest decides
    assert makespan_lower_bound([1.0, 1.0, 1.0, 1.0], 2) == pytest.approx(2.0)  # 4 core-s on 2 cores
    assert makespan_lower_bound([1.0, 1.0, 1.0, 1.0], 2, [2, 1, 1, 1]) == pytest.approx(2.5)  # 5 core-s
    assert makespan_lower_bound([1.0, 1.0], 4, 2) == pytest.approx(1.0)
    for walls, ncores, cores in (([], 2, 1), ([1.0], 0, 1), ([1.0, 2.0], 2, [1])):
        with pytest.raises(ValueError):
            makespan_lower_bound(walls, ncores, cores)


def test_lower_bound_with_fixed_fragment_cores() -> None:
    from qcmb_async.simulate import Workload, lower_bound

    frags = [Fragment(f"f{i}", 1, "(auto)", "nwchem", (i,), (i,), 1.0, 1.0) for i in range(1, 6)]
    work = Workload(frags, {f.label: 2.0 for f in frags})  # NWChem: parallel fraction 0, 2 s on any cores
    # 2 cores per fragment on 5 cores: at most 2 run at once, so the work bound is 5 * 2 s / 2 = 5 s
    # (a real schedule needs 3 rounds, 6 s); on 1 core one still runs at a time: 10 s.
    assert lower_bound(work, 5, fragment_ncores=2, parallel_fraction={"nwchem": 0.0}) == pytest.approx(5.0)
    assert lower_bound(work, 1, fragment_ncores=2, parallel_fraction={"nwchem": 0.0}) == pytest.approx(10.0)
