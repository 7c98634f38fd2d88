"""Screened many-body expansions: exact assembly, lazy planning, energy screening on the dependency graph."""

from __future__ import annotations

import json
import math
import time
import tracemalloc
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from qcelemental.models.v2 import Molecule
from qcengine.programs.mopac import MopacHarness

from qcmb_async import InputError, plan_manybody, run
from qcmb_async._core.plan import iterate_labels, make_plan
from tests.helpers import mbe_input, require_module, require_program, sigkill_after_stored, waters
from tests.screening_reference import Reference, distance_kept, energy_kept, parse
from tests.test_equivalence import assert_same, sequential

TOL = 1e-9


def grid(n: int, spacing: float = 3.0, columns: int = 3) -> Molecule:
    """``n`` waters on a planar grid (O-O ``spacing`` Å), explicit fragment charges."""
    blocks = []
    for i in range(n):
        x, y = (i % columns) * spacing, (i // columns) * spacing
        blocks.append(f"O {x:.4f} {y:.4f} 0.0\nH {x + 0.757:.4f} {y + 0.586:.4f} 0.0\n"
                      f"H {x - 0.757:.4f} {y + 0.586:.4f} 0.3")
    mol = Molecule.from_data("\n--\n".join(blocks))
    return Molecule(**{**mol.model_dump(), "fragment_charges": [0.0] * n, "fragment_multiplicities": [1] * n})


def lattice(n: int, spacing: float = 3.1) -> Molecule:
    """``n`` waters on a simple cubic lattice (liquid-like density), one orientation each."""
    side = math.ceil(n ** (1 / 3))
    sites = [(i, j, k) for i in range(side) for j in range(side) for k in range(side)][:n]
    rng = np.random.default_rng(7)
    symbols, geom, frags = [], [], []
    local = np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]])
    for s in sites:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        xyz = np.array(s, dtype=float) * spacing + local @ q.T
        frags.append(list(range(len(symbols), len(symbols) + 3)))
        symbols += ["O", "H", "H"]
        geom += xyz.tolist()
    return Molecule(symbols=symbols, geometry=np.array(geom) / 0.529177210903, fragments=frags,
                    fragment_charges=[0.0] * n, fragment_multiplicities=[1] * n, molecular_charge=0.0,
                    molecular_multiplicity=1)


# ---- planning: labels, laziness, validation (no programs) ------------------------------------

@pytest.mark.parametrize("bsse", [["nocp"], ["cp"], ["vmfc"], ["cp", "nocp"], ["vmfc", "cp"]])
@pytest.mark.parametrize("rtd", [True, False])
def test_labels_per_subset_are_qcmanybodys(bsse: list[str], rtd: bool) -> None:
    """With a cutoff larger than the cluster the plan has exactly QCManyBody's labels."""
    inp = mbe_input("mopac", "pm7", None, bsse=bsse, max_nbody=3, molecule=waters(5),
                    mb_keywords={"return_total_data": rtd})
    plan = make_plan(inp, screening=_spec({"distance": {2: 1e6}}))
    ours = [(f.mc, f.real, f.basis) for f in plan.fragments]
    assert len(ours) == len(set(ours))
    assert set(ours) == set(iterate_labels(plan.computer.qcmb_core))


def test_labels_multilevel() -> None:
    from qcmanybody.models.v2 import ManyBodyInput

    inp = ManyBodyInput(molecule=waters(5), specification={
        "driver": "energy", "keywords": {"bsse_type": ["nocp", "cp"], "levels": {1: "a", 2: "b", 3: "c"}},
        "specification": {name: {"program": "mopac", "model": {"method": "pm7"}, "driver": "energy"}
                          for name in ("a", "b", "c")}})
    plan = make_plan(inp, screening=_spec({"distance": {3: 1e6}}))
    assert {(f.mc, f.real, f.basis) for f in plan.fragments} == set(iterate_labels(plan.computer.qcmb_core))


def _spec(value: dict[str, Any]) -> Any:
    from qcmb_async._core.options import make_screening

    return make_screening(value)


def test_distance_plan_matches_brute_force() -> None:
    mol = lattice(12)
    cut = {2: 5.0, 3: 4.5, 4: 4.2}
    plan = plan_manybody(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=4, molecule=mol),
                         screening={"distance": cut})
    expected = distance_kept(mol, cut, 4)
    assert plan.screen.kept_family() == expected
    assert {f.real for f in plan.fragments} == expected
    summary = plan.screen.summary()["orders"]
    for k in range(1, 5):
        assert summary[str(k)]["kept"] == sum(len(s) == k for s in expected)
        assert summary[str(k)]["possible"] == math.comb(12, k)
    assert summary["3"]["dropped"] > 0 and summary["4"]["kept"] > 0


def test_centroid_metric_matches_brute_force() -> None:
    mol = lattice(12)
    cut = {2: 6.0, 3: 5.0, 4: 4.5}
    plan = plan_manybody(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=4, molecule=mol),
                         screening={"distance": cut, "metric": "centroid"})
    expected = distance_kept(mol, cut, 4, metric="centroid")
    assert plan.screen.kept_family() == expected
    assert expected != distance_kept(mol, cut, 4)  # the metric matters here
    assert 0 < sum(len(s) == 4 for s in expected) < 495


def test_planning_100_waters_mbe4_is_lazy() -> None:
    """Distance screening of 100 waters at 4-body never enumerates the 3.9 M tetramers: <= 2 s, <= 500 MiB."""
    mol = lattice(100)
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=4, molecule=mol)
    plan_manybody(inp, screening={"distance": {2: 1.0}})  # imports and caches warm
    screening = {"distance": {2: 9.0, 3: 7.0, 4: 5.5}}
    t0 = time.perf_counter()
    plan = plan_manybody(inp, screening=screening)
    elapsed = time.perf_counter() - t0
    tracemalloc.start()  # a second time: tracemalloc slows allocation several times over
    plan_manybody(inp, screening=screening)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    orders = plan.screen.summary()["orders"]
    assert orders["4"]["possible"] == math.comb(100, 4)
    assert orders["4"]["kept"] > 0 and orders["3"]["kept"] > 1000
    assert len(plan.fragments) == sum(o["kept"] for o in orders.values())
    assert elapsed <= 2.0, elapsed
    assert peak <= 500, peak


@pytest.mark.parametrize(("screening", "match"), [
    ({"distance": {1: 5.0}}, "order 1 is below 2"),
    ({"distance": {2: -1.0}}, "finite number >= 0"),
    ({"distance": {2: float("nan")}}, "finite number >= 0"),
    ({"distance": {"two": 5.0}}, "not a whole number"),
    ({"energy": {2: 1e-5}}, "order 2 would be decided from monomer"),
    ({"distance": {5: 5.0}}, r"above max_nbody=3"),
    ({"cutoff": {2: 5.0}}, "unknown key"),
    ({"distance": {2: 5.0}, "metric": "furthest"}, "metric"),
    ({}, "screening is empty"),
    ([2, 5.0], "must be a dict"),
])
def test_bad_screening_is_an_input_error_before_anything_runs(screening: Any, match: str, tmp_path: Path) -> None:
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3, molecule=waters(4))
    store = tmp_path / "store.sqlite"
    with pytest.raises(InputError, match=match):
        run(inp, screening=screening, store=store)
    assert not store.exists()


def test_screening_needs_a_truncated_expansion() -> None:
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3, molecule=waters(3))
    with pytest.raises(InputError, match="max_nbody < the number of fragments"):
        plan_manybody(inp, screening={"distance": {2: 5.0}})


# ---- exact assembly on real programs ---------------------------------------------------------

def test_huge_cutoffs_equal_qcmanybody_mopac_nocp_energy_and_gradient() -> None:
    require_program("mopac")
    for driver in ("energy", "gradient"):
        inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3, molecule=grid(5), driver=driver)
        ours = run(inp, store=None, screening={"distance": {2: 1e3, 3: 1e3}})
        assert_same(ours, sequential(inp))
        assert ours.extras["qcmb_async"]["screening"]["orders"]["3"]["dropped"] == 0


@pytest.fixture(scope="module")
def pyscf_full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A full VMFC+NoCP+CP MBE(3) gradient run of 5 waters, HF/STO-3G, every fragment's result kept."""
    require_module("pyscf")
    store = tmp_path_factory.mktemp("screen") / "store.sqlite"
    inp = mbe_input("pyscf", "hf", "sto-3g", bsse=["vmfc", "nocp", "cp"], max_nbody=3, molecule=grid(5),
                    driver="gradient", mb_keywords={"return_total_data": True})
    data = inp.model_dump()
    data["specification"]["protocols"] = {"cluster_results": "all"}
    full = run(type(inp)(**data), store=store)
    return full, store


@pytest.mark.parametrize("bsse", ["nocp", "cp", "vmfc"])
def test_huge_cutoffs_equal_qcmanybody_pyscf(bsse: str, pyscf_full: tuple[Any, Path]) -> None:
    """No screening vs cutoffs beyond the cluster: the same numbers as QCManyBody's sequential computer."""
    _, store = pyscf_full
    inp = mbe_input("pyscf", "hf", "sto-3g", bsse=bsse, max_nbody=3, molecule=grid(5), driver="gradient",
                    mb_keywords={"return_total_data": True})
    ours = run(inp, store=store, screening={"distance": {2: 1e3}})
    assert_same(ours, sequential(inp))


@pytest.mark.parametrize("bsse", ["nocp", "cp", "vmfc"])
def test_distance_screened_equals_independent_reference(bsse: str, pyscf_full: tuple[Any, Path]) -> None:
    full, store = pyscf_full
    mol = grid(5)
    cut = {2: 3.4, 3: 3.305}
    kept = distance_kept(mol, cut, 3)
    assert 5 < len(kept) < 5 + 10 + 10 and any(len(s) == 3 for s in kept)  # some of each order dropped
    inp = mbe_input("pyscf", "hf", "sto-3g", bsse=bsse, max_nbody=3, molecule=mol, driver="gradient",
                    mb_keywords={"return_total_data": True})
    ours = run(inp, store=store, screening={"distance": cut})
    e_ref, g_ref = Reference(full, "energy"), Reference(full, "gradient")
    assert ours.properties.return_energy == pytest.approx(e_ref.total(bsse, kept), abs=TOL, rel=0)
    name = {"nocp": "nocp_corrected_interaction_energy", "cp": "cp_corrected_interaction_energy",
            "vmfc": "vmfc_corrected_interaction_energy"}[bsse]
    assert getattr(ours.properties, name) == pytest.approx(e_ref.interaction(bsse, kept), abs=TOL, rel=0)
    np.testing.assert_allclose(np.asarray(ours.return_result).reshape(-1, 3), g_ref.total(bsse, kept),
                               atol=TOL, rtol=0)
    computed = {parse(label)[1:] for label in _labels_run(ours)}
    assert all(_subset(real, basis, 5) in kept for real, basis in computed)
    # The screened result is a different number from the unscreened one (something was dropped).
    assert abs(ours.properties.return_energy - e_ref.total(bsse, _all_subsets(5, 3))) > 1e-7


def _all_subsets(n: int, top: int) -> set[tuple[int, ...]]:
    from itertools import combinations

    return {s for k in range(1, top + 1) for s in combinations(range(1, n + 1), k)}


def _subset(real: tuple[int, ...], basis: tuple[int, ...], n: int) -> tuple[int, ...]:
    return real if (real == basis or len(basis) == n) else basis


def _labels_run(result: Any) -> list[str]:
    return [f["label"] for f in result.extras["qcmb_async"]["fragments"]]


@pytest.mark.parametrize("bsse", ["nocp", "cp", "vmfc"])
def test_energy_screening_decisions_match_brute_force(bsse: str, pyscf_full: tuple[Any, Path]) -> None:
    full, store = pyscf_full
    e_ref = Reference(full, "energy")
    incs = sorted(abs(e_ref.increment(bsse, s)) for s in _all_subsets(5, 2) if len(s) == 2)
    threshold = incs[len(incs) // 2]  # half of the dimers are "small": some trimers are dropped
    expected = energy_kept(e_ref, bsse, {3: threshold}, 3)
    assert 0 < sum(len(s) == 3 for s in expected) < 10
    inp = mbe_input("pyscf", "hf", "sto-3g", bsse=bsse, max_nbody=3, molecule=grid(5), driver="gradient",
                    mb_keywords={"return_total_data": True})
    ours = run(inp, store=store, screening={"energy": {3: threshold}})
    computed = {_subset(*parse(label)[1:], 5) for label in _labels_run(ours)}
    assert computed == expected
    assert ours.properties.return_energy == pytest.approx(e_ref.total(bsse, expected), abs=TOL, rel=0)
    g_ref = Reference(full, "gradient")
    np.testing.assert_allclose(np.asarray(ours.return_result).reshape(-1, 3), g_ref.total(bsse, expected),
                               atol=TOL, rtol=0)
    orders = ours.extras["qcmb_async"]["screening"]["orders"]
    assert orders["3"]["kept"] == sum(len(s) == 3 for s in expected)
    assert orders["3"]["dropped_by_energy"] == 10 - orders["3"]["kept"]


class RecordingMopac(MopacHarness):
    """Real MOPAC that records the name of every molecule reaching QCEngine (threads executor: same process)."""

    _defaults: ClassVar[dict[str, Any]] = {**MopacHarness._defaults, "name": "mopac-recording"}
    seen: ClassVar[list[str]] = []

    def compute(self, input_model: Any, config: Any) -> Any:
        RecordingMopac.seen.append(input_model.molecule.name)
        return super().compute(input_model, config)


def _register_recording() -> None:
    import qcengine
    from qcengine.programs.base import programs

    if "mopac-recording" not in programs:
        qcengine.register_program(RecordingMopac())


def _reals(names: list[str]) -> list[tuple[int, ...]]:
    # QCElemental names a fragment "<parent> ([real 0-based],[ghost 0-based])".
    out = []
    for name in names:
        real = json.loads(name[name.rindex("(") + 1:].split("],")[0] + "]")
        out.append(tuple(sorted(i + 1 for i in real)))
    return out


def _quantile_threshold(ref: Reference, k: int, kept: set[tuple[int, ...]]) -> float:
    """A threshold for order ``k`` that drops about a third of its candidates (from the full run's numbers)."""
    from itertools import combinations

    cands = [s for s in combinations(range(1, ref.n + 1), k)
             if k == 3 or all(t in kept for t in combinations(s, k - 1))]
    tops = sorted(max(abs(ref.nocp_increment(t)) for t in combinations(s, k - 1)) for s in cands)
    return tops[len(tops) // 3]


def test_energy_screening_dropped_subsets_never_reach_qcengine(tmp_path: Path) -> None:
    require_program("mopac")
    _register_recording()
    mol = lattice(8)
    full_inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=4, molecule=mol)
    data = full_inp.model_dump()
    data["specification"]["protocols"] = {"cluster_results": "all"}
    full = run(type(full_inp)(**data), store=None)
    e_ref = Reference(full, "energy")
    thresholds = {3: _quantile_threshold(e_ref, 3, set()), 4: 0.0}
    kept3 = energy_kept(e_ref, "nocp", {3: thresholds[3]}, 3)
    thresholds[4] = _quantile_threshold(e_ref, 4, kept3)
    expected = energy_kept(e_ref, "nocp", thresholds, 4)
    assert sum(len(s) == 3 for s in expected) < 56 and sum(len(s) == 4 for s in expected) > 0
    RecordingMopac.seen.clear()
    inp = mbe_input("mopac-recording", "pm7", None, bsse="nocp", max_nbody=4, molecule=mol)
    events: list[Any] = []
    ours = run(inp, store=None, executor="threads", ncores=2, screening={"energy": thresholds},
               on_event=events.append)
    ran = _reals(RecordingMopac.seen)
    assert len(ran) == len(set(ran))  # nothing twice
    assert set(ran) == expected
    # return_total_data is False by default for energies: the result is the interaction energy.
    assert ours.properties.return_energy == pytest.approx(e_ref.interaction("nocp", expected), abs=TOL, rel=0)
    started = next(e for e in events if type(e).__name__ == "RunStarted")
    released = [e for e in events if type(e).__name__ == "FragmentsReleased"]
    assert started.total == sum(len(s) <= 2 for s in expected)  # orders below the first threshold up front
    assert released and released[-1].total == len(expected)
    assert started.total + sum(sum(e.per_level.values()) for e in released) == len(expected)
    # No level barrier: some trimer started before the last dimer finished.
    first_trimer = min(i for i, e in enumerate(events) if type(e).__name__ == "FragmentStarted" and e.level == 3)
    last_dimer = max(i for i, e in enumerate(events) if type(e).__name__ == "FragmentFinished" and e.level == 2)
    assert first_trimer < last_dimer
    levels = [e for e in events if type(e).__name__ == "LevelComplete"]
    assert [e.level for e in levels] == [1, 2, 3, 4]
    assert [e.total for e in levels] == [sum(len(s) == k for s in expected) for k in (1, 2, 3, 4)]
    # MBE(3) carried by the event: the kept increments of orders <= 3.
    partial = levels[2].partial_result
    assert partial is not None
    kept3 = {s for s in expected if len(s) <= 3}
    assert partial.properties.return_energy == pytest.approx(e_ref.interaction("nocp", kept3), abs=TOL, rel=0)


@pytest.mark.slow
def test_sigkill_mid_run_with_energy_screening_recomputes_nothing_finished(tmp_path: Path) -> None:
    """SIGKILL an energy-screened run mid-way: the rerun reproduces the decisions from stored results,
    computes only what was not stored, and gives the uninterrupted result."""
    import os
    import random
    import subprocess
    import sys

    from tests.test_durability import ROOT, _env

    require_program("mopac")
    from tests.wrappers import register_wrappers

    register_wrappers()
    nwat, maxnb = 8, 4
    full_inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=maxnb, molecule=lattice(nwat))
    data = full_inp.model_dump()
    data["specification"]["protocols"] = {"cluster_results": "all"}
    e_ref = Reference(run(type(full_inp)(**data), store=None), "energy")
    thresholds = {3: _quantile_threshold(e_ref, 3, set()), 4: 0.0}
    thresholds[4] = _quantile_threshold(e_ref, 4, energy_kept(e_ref, "nocp", {3: thresholds[3]}, 3))
    reference = run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=maxnb, molecule=lattice(nwat)),
                    store=None, screening={"energy": thresholds})
    total = len(reference.extras["qcmb_async"]["fragments"])
    assert total == len(energy_kept(e_ref, "nocp", thresholds, maxnb))
    rng = random.Random(20261130)
    partial = 0
    for i in range(4):
        store, out, count = tmp_path / f"s{i}.sqlite", tmp_path / f"r{i}.json", tmp_path / f"c{i}.txt"
        cmd = [sys.executable, str(ROOT / "tests/scripts/screened_run.py"), str(store), "mopac-counting", str(nwat),
               str(maxnb), json.dumps(thresholds), str(out)]
        target = rng.randrange(total // 4, 3 * total // 4)  # past the dimers: decisions are being made
        before = sigkill_after_stored(cmd, _env(QCMB_TEST_COUNT_FILE=str(count)), tmp_path, store, target)
        partial += 0 < before < total
        recount = tmp_path / f"rc{i}.txt"
        done = subprocess.run(cmd, env=_env(QCMB_TEST_COUNT_FILE=str(recount)), cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        recomputed = len(recount.read_text().split()) if recount.exists() else 0
        assert recomputed == total - before, (i, target, before, recomputed)
        result = json.loads(out.read_text())
        assert result["return_result"] == pytest.approx(reference.return_result, abs=1e-9)
        assert os.path.exists(store)
    assert partial >= 2


@pytest.mark.parametrize("bsse", ["nocp", "cp", "vmfc"])
def test_direct_assembly_equals_filled_assembly(bsse: str, pyscf_full: tuple[Any, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Large expansions are assembled from the kept increments directly: the same numbers as the fills."""
    from qcmb_async._core import fill

    _, store = pyscf_full
    inp = mbe_input("pyscf", "hf", "sto-3g", bsse=bsse, max_nbody=3, molecule=grid(5), driver="gradient",
                    mb_keywords={"return_total_data": True})
    cut = {"distance": {2: 3.4, 3: 3.305}}
    filled = run(inp, store=store, screening=cut)
    monkeypatch.setattr(fill, "FILL_LIMIT", 0)
    direct = run(inp, store=store, screening=cut)
    np.testing.assert_allclose(np.asarray(direct.return_result), np.asarray(filled.return_result), atol=1e-10,
                               rtol=0)
    a, b = direct.properties.model_dump(), filled.properties.model_dump()
    for key, value in b.items():
        if isinstance(value, float):
            assert a[key] == pytest.approx(value, abs=1e-10, rel=0), key
        elif value is None:
            assert a[key] is None, key
    assert direct.properties.calcinfo_nmbe == filled.properties.calcinfo_nmbe < 130


# ---- command line ----------------------------------------------------------------------------

def _xyz(mol: Molecule, path: Path) -> Path:
    geom = np.asarray(mol.geometry) * 0.529177210903
    blocks = ["\n".join(f"{mol.symbols[a]} {geom[a][0]:.6f} {geom[a][1]:.6f} {geom[a][2]:.6f}" for a in frag)
              for frag in mol.fragments]
    path.write_text(f"{len(mol.symbols)}\ncluster\n" + "\n--\n".join(blocks) + "\n")
    return path


def test_cli_plan_prints_kept_dropped_cost_and_predicted_wall_time(tmp_path: Path) -> None:
    from tests.test_cli import cli

    require_program("mopac")
    mol = lattice(12)
    xyz = _xyz(mol, tmp_path / "w12.xyz")
    base = ["--program", "mopac", "--method", "pm7", "--bsse", "nocp", "--max-nbody", "4", "--ncores", "2"]
    store = tmp_path / "store.sqlite"
    proc = cli("plan", str(xyz), *base, "--cutoff", "2:5,3:4.5,4:4.2", "--store", str(store), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    kept = distance_kept(mol, {2: 5.0, 3: 4.5, 4: 4.2}, 4)
    rows = {line.split()[0]: line.split() for line in proc.stdout.split("screened expansion")[1].splitlines()
            if line.strip()[:1].isdigit()}
    for k, possible in ((2, 66), (3, 220), (4, 495)):
        n = sum(len(s) == k for s in kept)
        assert rows[str(k)][1:4] == [f"{possible:,}", f"{n:,}", f"{possible - n:,}"], rows[str(k)]
    assert "cost units on 2 core(s)" in proc.stdout and "no fragment of this plan is in the result store" in proc.stdout
    assert not store.exists()
    # Once the kept fragments are in the store, their measured times give a prediction in seconds.
    done = cli("run", str(xyz), *base, "--cutoff", "2:5,3:4.5,4:4.2", "--store", str(store), "--output",
               str(tmp_path / "r.json"), "--quiet", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "screened expansion (dropped subsets contribute zero)" in done.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["extras"]["qcmb_async"]["screening"]["orders"]["3"]["kept"] == sum(len(s) == 3 for s in kept)
    again = cli("plan", str(xyz), *base, "--cutoff", "2:5,3:4.5,4:4.2", "--store", str(store), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert " s on 2 core(s)" in again.stdout and "calibrated from" in again.stdout


@pytest.mark.parametrize(("flags", "match"), [
    (["--cutoff", "2=9"], "is not ORDER:VALUE"),
    (["--cutoff", "1:9"], "order 1 is below 2"),
    (["--energy-threshold", "2:1e-5"], "order 2 would be decided"),
    (["--centroid"], "give --cutoff too"),
])
def test_cli_bad_screening_exits_2(flags: list[str], match: str, tmp_path: Path) -> None:
    from tests.test_cli import cli

    require_program("mopac")
    xyz = _xyz(waters(4), tmp_path / "w4.xyz")
    for command in ("plan", "run"):
        proc = cli(command, str(xyz), "--program", "mopac", "--method", "pm7", "--bsse", "nocp", "--max-nbody", "3",
                   "--no-store", *flags, cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert match in proc.stderr


def test_distance_screened_hessian_equals_independent_reference() -> None:
    """Hessians too: dropped dimers contribute zero, in QCManyBody's own assembly (NoCP, PySCF HF/STO-3G)."""
    require_module("pyscf")
    mol = grid(4)
    cut = {2: 3.0}
    kept = distance_kept(mol, cut, 2)
    assert sum(len(s) == 2 for s in kept) == 3
    inp = mbe_input("pyscf", "hf", "sto-3g", bsse="nocp", max_nbody=2, molecule=mol, driver="hessian",
                    mb_keywords={"return_total_data": True})
    data = inp.model_dump()
    data["specification"]["protocols"] = {"cluster_results": "all"}
    full = run(type(inp)(**data), store=None)
    ours = run(inp, store=None, screening={"distance": cut})
    ref = Reference(full, "hessian")
    expected = ref.total("nocp", kept)
    nat = len(mol.symbols)
    np.testing.assert_allclose(np.asarray(ours.return_result).reshape(3 * nat, 3 * nat), expected, atol=TOL,
                               rtol=0)
    assert ours.properties.calcinfo_nmbe == 4 + 3


def test_progress_display_grows_with_released_fragments() -> None:
    import io

    from rich.console import Console

    from qcmb_async.progress import ProgressDisplay

    require_program("mopac")
    display = ProgressDisplay(Console(file=io.StringIO(), force_terminal=True, width=120), live=True)
    with display:
        result = run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=4, molecule=lattice(8)), store=None,
                     screening={"energy": {3: 1e-4, 4: 1e-5}}, on_event=display)
    computed = len(result.extras["qcmb_async"]["fragments"])
    assert display.total == display.done == computed > 8 + 28
    assert display.summary().startswith(f"run {display.run_id}: {computed}/{computed} fragments done")
