"""Moldable allotment for MPI programs, and the parallel fraction learned from measured runs.

Expected makespans are written out here from Amdahl's law and the list schedule by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcmb_async._core.cost import CostModel, allot_cores, allotment, predict_makespan
from qcmb_async.programs import traits


@dataclass
class Frag:
    label: str
    group: str
    size: float
    program: str


def amdahl_time(t1: float, cores: int, f: float) -> float:
    return t1 * ((1 - f) + f / cores)


def test_nwchem_is_an_mpi_program_with_a_prior() -> None:
    nw = traits("nwchem")
    assert nw.mpi and 0 < nw.parallel_fraction < 1


def test_one_long_fragment_gets_ranks_only_because_it_shortens_the_schedule() -> None:
    # 1 fragment of 100 s and 63 of 1 s on 64 cores: on one core each the run takes 100 s.
    durations = [100.0] + [1.0] * 63
    f = 0.8
    cores = allot_cores(durations, 64, [f] * 64)
    assert cores[0] > 1 and all(c == 1 for c in cores[1:])
    # The allotted schedule: the long fragment on cores[0] cores, the small ones beside it.
    expected = max(amdahl_time(100.0, cores[0], f), 1.0 * (63 / (64 - cores[0]) + 1))
    assert predict_makespan([amdahl_time(100.0, cores[0], f)] + [1.0] * 63, cores, 64) <= expected
    assert expected < 100.0 * 0.98


def test_many_equal_fragments_stay_on_one_rank() -> None:
    # 640 fragments of 1 s on 64 cores: 10 s on one core each; ranks (f < 1) only add work.
    cores = allot_cores([1.0] * 640, 64, [0.8] * 640)
    assert cores == [1] * 640


def test_ranks_that_do_not_pay_are_not_given() -> None:
    # Two 10-s fragments on 4 cores at f = 0.02: 2 cores each gives 9.9 s, less than 2 % shorter.
    assert amdahl_time(10.0, 2, 0.02) > 10.0 * 0.98
    assert allot_cores([10.0, 10.0], 4, [0.02, 0.02]) == [1, 1]
    # At f = 0.9 the same split gives 5.5 s: taken.
    assert allot_cores([10.0, 10.0], 4, [0.9, 0.9]) == [2, 2]


def test_allotment_gives_nwchem_ranks_and_a_program_without_parallelism_none() -> None:
    model = CostModel()
    frags = [Frag("big", "nw", 400.0, "nwchem")] + [Frag(f"s{i}", "nw", 100.0, "nwchem") for i in range(15)]
    model.set_parallel_fraction("nw", traits("nwchem").parallel_fraction)
    model.set_exponent("nw", 3.5)
    multi = allotment(frags, model, ncores=16, memory=32.0, auto_memory=True)
    assert multi.get("big", 1) > 1 and "s0" not in multi
    # The same shape with fragments below the MPI floor (mpiexec's start costs more than they gain): one rank.
    small = [Frag("big", "nw", 40.0, "nwchem")] + [Frag(f"s{i}", "nw", 10.0, "nwchem") for i in range(15)]
    assert allotment(small, model, ncores=16, memory=32.0, auto_memory=True) == {}
    # Q-Chem has no parallel fraction in the registry: nothing to gain from more cores.
    qc = [Frag(f.label, "qc", f.size, "qchem") for f in frags]
    assert allotment(qc, CostModel(), ncores=16, memory=32.0, auto_memory=True) == {}


def test_cost_model_learns_the_parallel_fraction_from_multi_core_runs() -> None:
    a, p, f_true = 1e-3, 3.0, 0.5
    model = CostModel()
    model.set_exponent("nw", p)
    model.set_parallel_fraction("nw", 0.8)
    for size in (10.0, 12.0, 14.0, 16.0, 18.0, 29.0, 31.0):
        model.observe("nw", size, a * size**p)  # one core: calibrates a and p, two near size 30
    model.observe("nw", 60.0, amdahl_time(a * 60.0**p, 2, 0.0), 2)  # no one-core run near 60: no measurement
    assert abs(model.parallel_fraction("nw") - 0.8) < 1e-12  # nothing measured on several cores yet
    for _ in range(20):
        for cores in (2, 4):
            model.observe("nw", 30.0, amdahl_time(a * 30.0**p, cores, f_true), cores)
    learned = model.parallel_fraction("nw")
    # 40 measurements of 0.5 against the prior 0.8 counted twice: (2 * 0.8 + 40 * 0.5) / 42.
    assert abs(learned - (2 * 0.8 + 40 * 0.5) / 42) < 1e-3
    # The multi-core times entered the fit in one-core seconds: the 30-unit fragment's estimate holds
    # (within 10 %: the first conversions, and the 60-unit one, used the fraction known at the time).
    assert abs(model.estimate("nw", 30.0) / (a * 30.0**p) - 1) < 0.1


def test_learned_fraction_changes_the_allotment() -> None:
    frags = [Frag("big", "nw", 400.0, "nwchem")] + [Frag(f"s{i}", "nw", 100.0, "nwchem") for i in range(15)]
    model = CostModel()
    model.set_exponent("nw", 3.5)
    model.set_parallel_fraction("nw", 0.8)
    before = allotment(frags, model, ncores=16, memory=32.0, auto_memory=True)
    model.observe("nw", 100.0, 1.0)
    for _ in range(50):  # measured: two ranks take as long as one (no parallelism at all)
        model.observe("nw", 100.0, 1.0, 2)
    assert model.parallel_fraction("nw") < 0.05
    after = allotment(frags, model, ncores=16, memory=32.0, auto_memory=True)
    # The one dominant fragment still gains a little from the remaining 3 %, far less than before.
    assert before["big"] == 16 and after.get("big", 1) < before["big"]


def test_moldable_lower_bound_by_hand() -> None:
    from qcmb_async.simulate import moldable_lower_bound

    # f = 0: cores do not help: max(longest, total / cores).
    assert abs(moldable_lower_bound([1.0] * 4, [0.0] * 4, 2) - 2.0) < 1e-9
    # One perfectly parallel 10-s fragment on 4 cores: 2.5 s.
    assert abs(moldable_lower_bound([10.0], [1.0], 4) - 2.5) < 1e-9
    # f = 0.5 on 4 cores: 10 * (0.5 + 0.5 / 4) = 6.25 s.
    assert abs(moldable_lower_bound([10.0], [0.5], 4) - 6.25) < 1e-9
    # A 10-s fragment (f = 0.8) and twelve 1-s fragments on 4 cores. The old bound says
    # max(10 * (0.2 + 0.8 / 4) = 4, 22 / 4 = 5.5) = 5.5. At T = 6 the big one needs 2 cores
    # (10 * 0.6 = 6), i.e. 12 core-s, plus 12 -> 24 core-s = 4 * 6: T = 6 exactly fits; just
    # below 6 it needs 3 cores (10 * (0.2 + 0.8 / 3) * 3 = 14 core-s) and 26 > 4 * 6.
    got = moldable_lower_bound([10.0] + [1.0] * 12, [0.8] * 13, 4)
    assert abs(got - 6.0) < 1e-6
