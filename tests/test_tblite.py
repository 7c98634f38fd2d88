"""The tblite (GFN-xTB) harness with real tblite, against tblite's Python API run directly.

* NoCP MBE(N) over all N fragments is the supersystem: equal to tblite on the whole cluster
  (energy 1e-9 Eh, gradient 1e-8 Eh/bohr), through worker processes.
* MBE(2) and MBE(3) of a water hexamer equal the textbook sums of tblite jobs run here.
* Charged (H3O+, OH-) and open-shell (OH radical, multiplicity 2) fragments: tblite gets each
  subset's charge and unpaired electrons.
* CP and VMFC, bad keywords, a basis, a Hessian: InputError before anything runs.
* Finite-difference frequencies: the Hessian equals central differences of tblite gradients.
* A fragment tblite cannot converge fails naming itself, with tblite's own message.

Skipped without tblite, except under CI=true, where a missing tblite fails the run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qcelemental.models.v2 import AtomicInput, Molecule

import qcmb_async
from qcmb_async import FragmentError, InputError
from tests.helpers import WATER_TRIMER, mbe_input, require_program

KB_HARTREE_PER_KELVIN = 3.166808578545117e-6  # tblite's documented K -> Eh factor


@pytest.fixture(autouse=True)
def _tblite() -> None:
    require_program("tblite")


def _cluster(blocks: Sequence[str], charges: Sequence[int], mults: Sequence[int]) -> Molecule:
    """A Molecule from Å blocks (one fragment each) with explicit fragment charges/multiplicities."""
    mol = Molecule.from_data("\n--\n".join(blocks))
    unpaired = sum(m - 1 for m in mults)
    return Molecule(**{**mol.model_dump(), "fragment_charges": [float(c) for c in charges],
                       "fragment_multiplicities": list(mults), "molecular_charge": float(sum(charges)),
                       "molecular_multiplicity": unpaired + 1})


def _water(o: tuple[float, float, float], angle: float) -> str:
    """A water (O-H 0.957 Å, HOH 104.5 degrees) at ``o``, its plane turned by ``angle`` degrees about z."""
    half = math.radians(104.52) / 2
    rot = math.radians(angle)
    lines = [f"O {o[0]:.6f} {o[1]:.6f} {o[2]:.6f}"]
    for sign in (1, -1):
        x, z = 0.957 * math.sin(sign * half), 0.957 * math.cos(half)
        lines.append(f"H {o[0] + x * math.cos(rot):.6f} {o[1] + x * math.sin(rot):.6f} {o[2] + z:.6f}")
    return "\n".join(lines)


def waters_grid(n: int) -> Molecule:
    """``n`` waters on a 2-row grid, O-O 2.9 Å, each turned differently: every n-body term is non-zero."""
    blocks = [_water((2.9 * (k // 2), 2.9 * (k % 2), 0.4 * (k % 3)), 37.0 * k) for k in range(n)]
    return _cluster(blocks, [0] * n, [1] * n)


def ions_and_radical() -> Molecule:
    """H3O+, OH-, OH radical (multiplicity 2) and water, ~4 Å apart: charge 0, multiplicity 2."""
    blocks = [
        "O 0 0 0\nH 0.97 0 0.25\nH -0.485 0.84 0.25\nH -0.485 -0.84 0.25",  # H3O+
        "O 4.2 0 0\nH 4.2 0 0.97",  # OH-
        "O 0 4.2 0\nH 0 4.2 0.97",  # OH radical
        _water((4.2, 4.2, 0.0), 45.0),
    ]
    return _cluster(blocks, [1, -1, 0, 0], [1, 1, 2, 1])


def direct(mol: Molecule, frags: Sequence[int], *, method: str = "GFN2-xTB",
           setup: Any = None) -> tuple[float, np.ndarray]:
    """tblite run here on fragments ``frags`` (0-based) of ``mol``: energy (Eh), gradient (natom x 3, Eh/bohr).

    Charge: the fragments' charges added; unpaired electrons: added too (high spin, as QCManyBody
    combines fragments).
    """
    from tblite.interface import Calculator
    from threadpoolctl import threadpool_limits

    idx = [i for f in frags for i in mol.fragments[f]]
    numbers = np.asarray(mol.atomic_numbers)[idx]
    positions = np.asarray(mol.geometry, dtype=float).reshape(-1, 3)[idx]
    charge = sum(float(mol.fragment_charges[f]) for f in frags)
    uhf = sum(int(mol.fragment_multiplicities[f]) - 1 for f in frags)
    with threadpool_limits(1):  # a shared 2-core machine: OpenMP spinning would only slow this down
        calc = Calculator(method, numbers, positions, charge=charge, uhf=uhf)
        calc.set("verbosity", 0)
        if setup is not None:
            setup(calc)
        res = calc.singlepoint()
        return float(res.get("energy")), np.asarray(res.get("gradient"), dtype=float)


def subsets(n: int, k: int) -> Iterator[tuple[int, ...]]:
    return itertools.combinations(range(n), k)


# -- MBE against tblite run directly ----------------------------------------------------------


def test_nocp_mbe_over_all_fragments_is_the_supersystem_through_worker_processes() -> None:
    mol = waters_grid(4)
    inp = mbe_input("tblite", "GFN2-xTB", None, driver="gradient", bsse="nocp", max_nbody=4, molecule=mol)
    # "auto" runs tblite on threads (tests/test_peer.py); worker processes still serve it when asked.
    result = qcmb_async.run(inp, ncores=2, memory=2, store=None, executor="processes")
    assert result.extras["qcmb_async"]["executor"] == "processes"
    energy, gradient = direct(mol, range(4))
    assert result.properties.return_energy == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(np.asarray(result.return_result).reshape(-1, 3), gradient, rtol=0, atol=1e-8)
    # the MBE(4) is not trivially the supersystem job alone: the lower orders differ from it
    mbe2 = result.properties.nocp_corrected_total_energy_through_2_body
    assert abs(mbe2 - energy) > 1e-5


def test_hexamer_mbe2_and_mbe3_are_the_textbook_sums() -> None:
    mol = waters_grid(6)
    n = 6
    inp = mbe_input("tblite", "gfn2-xtb", None, bsse="nocp", max_nbody=3, molecule=mol)
    result = qcmb_async.run(inp, ncores=2, memory=2, store=None)
    e = {s: direct(mol, s)[0] for k in (1, 2, 3) for s in subsets(n, k)}
    e1 = sum(e[s] for s in subsets(n, 1))
    e2 = sum(e[s] for s in subsets(n, 2))
    e3 = sum(e[s] for s in subsets(n, 3))
    # E_MBE(2) = sum_{i<j} E_ij - (N - 2) sum_i E_i
    # E_MBE(3) = sum_{i<j<k} E_ijk - (N - 3) sum_{i<j} E_ij + (N - 2)(N - 3)/2 sum_i E_i
    textbook2 = e2 - (n - 2) * e1
    textbook3 = e3 - (n - 3) * e2 + (n - 2) * (n - 3) / 2 * e1
    props = result.properties
    assert props.nocp_corrected_total_energy_through_1_body == pytest.approx(e1, abs=1e-9)
    assert props.nocp_corrected_total_energy_through_2_body == pytest.approx(textbook2, abs=1e-9)
    assert props.nocp_corrected_total_energy_through_3_body == pytest.approx(textbook3, abs=1e-9)
    # an energy driver returns the interaction energy (QCManyBody's return_total_data default)
    assert result.properties.return_energy == pytest.approx(textbook3 - e1, abs=1e-9)
    assert abs(textbook3 - textbook2) > 1e-5  # a three-body term the test can see


def test_charged_and_open_shell_fragments() -> None:
    mol = ions_and_radical()
    n = 4
    # At tblite's 300 K the OH radical's half-filled pi pair makes the SCC of OH + water oscillate (250
    # cycles, not converged, when run directly too); 1000 K smearing converges every subset.
    inp = mbe_input("tblite", "gfn2-xtb", None, driver="gradient", bsse="nocp", max_nbody=4, molecule=mol,
                    keywords={"electronic_temperature": 1000.0})
    result = qcmb_async.run(inp, ncores=2, memory=2, store=None)

    def hot(calc: Any) -> None:
        calc.set("temperature", 1000.0 * KB_HARTREE_PER_KELVIN)

    energy, gradient = direct(mol, range(n), setup=hot)
    assert result.properties.return_energy == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(np.asarray(result.return_result).reshape(-1, 3), gradient, rtol=0, atol=1e-8)
    e1 = sum(direct(mol, s, setup=hot)[0] for s in subsets(n, 1))
    e2 = sum(direct(mol, s, setup=hot)[0] for s in subsets(n, 2))
    assert result.properties.nocp_corrected_total_energy_through_2_body == pytest.approx(e2 - (n - 2) * e1,
                                                                                           abs=1e-9)
    # the charges and the unpaired electron matter: a neutral closed-shell OH- job is another energy
    from tblite.interface import Calculator

    oh = mol.fragments[1]
    calc = Calculator("GFN2-xTB", np.asarray(mol.atomic_numbers)[oh],
                      np.asarray(mol.geometry).reshape(-1, 3)[oh], charge=0, uhf=1)
    calc.set("verbosity", 0)
    hot(calc)
    assert abs(float(calc.singlepoint().get("energy")) - direct(mol, [1], setup=hot)[0]) > 0.1


def test_keywords_reach_tblite() -> None:
    """accuracy, max_iterations, electronic_temperature (K) and ALPB/GBSA solvents, against tblite directly."""
    import qcengine

    from qcmb_async.harnesses import register_harnesses

    register_harnesses()
    trimer = Molecule.from_data(WATER_TRIMER)
    # smearing changes nothing across the trimer's HOMO-LUMO gap: the temperature is tried on the OH radical
    radical = _cluster(["O 0 0 0\nH 0 0 0.97"], [0], [2])
    cases = [
        (trimer, {"accuracy": 0.01, "max_iterations": 100},
         lambda c: (c.set("accuracy", 0.01), c.set("max-iter", 100))),
        (radical, {"electronic_temperature": 3000.0}, lambda c: c.set("temperature", 3000.0 * KB_HARTREE_PER_KELVIN)),
        (trimer, {"solvent": "water"}, lambda c: c.add("alpb-solvation", "water")),
        (trimer, {"SOLVENT": "Methanol", "solvation_model": "GBSA"}, lambda c: c.add("gbsa-solvation", "methanol")),
    ]
    for mol, keywords, setup in cases:
        frags = range(len(mol.fragments))
        inp = AtomicInput(molecule=mol, specification={"driver": "gradient", "model": {"method": "gfn2-xtb"},
                                                       "keywords": keywords})
        out = qcengine.compute(inp, "tblite", raise_error=True, task_config={"ncores": 1}, return_version=2)
        energy, gradient = direct(mol, frags, setup=setup)
        assert out.properties.return_energy == pytest.approx(energy, abs=1e-10), keywords
        np.testing.assert_allclose(out.return_result, gradient, rtol=0, atol=1e-10)
        if "accuracy" not in keywords:
            assert abs(energy - direct(mol, frags)[0]) > 1e-6, keywords  # the keyword changed the answer


def test_each_method_and_thread_count() -> None:
    import qcengine
    from threadpoolctl import threadpool_info

    from qcmb_async.harnesses import register_harnesses

    register_harnesses()
    mol = Molecule.from_data(WATER_TRIMER)
    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]
    for method, name in (("GFN1-xTB", "GFN1-xTB"), ("ipea1-XTB", "IPEA1-xTB"), ("gfn2-xtb", "GFN2-xTB")):
        for ncores in (1, 2):
            inp = AtomicInput(molecule=mol, specification={"driver": "energy", "model": {"method": method}})
            out = qcengine.compute(inp, "tblite", raise_error=True, task_config={"ncores": ncores},
                                   return_version=2)
            assert out.extras["tblite"]["threads"] == ncores
            assert out.return_result == pytest.approx(direct(mol, range(3), method=name)[0], abs=1e-10)
    after = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]
    assert after == before  # the thread count is restored


# -- refused before anything runs -------------------------------------------------------------


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """QCEngine and the executors fail the test if reached."""
    import qcengine

    from qcmb_async import _runner as runner

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a bad input reached the computation")

    monkeypatch.setattr(qcengine, "compute", boom)
    monkeypatch.setattr(runner, "resolve_executor", boom)


REFUSED = [
    ("cp", {"bsse": "cp"}, r"bsse_type cp needs ghost atoms.*tblite.*nocp"),
    ("vmfc", {"bsse": "vmfc"}, r"bsse_type vmfc needs ghost atoms.*tblite.*nocp"),
    ("cp+nocp", {"bsse": ["nocp", "cp"]}, r"bsse_type cp needs ghost atoms"),
    ("hessian", {"driver": "hessian"}, r"tblite harness: no analytic Hessians.*finite-difference"),
    ("basis", {"basis": "sto-3g"}, r"basis 'sto-3g'.*Leave model.basis unset"),
    ("method", {"method": "gfn0-xtb"}, r"unknown method 'gfn0-xtb': use one of gfn2-xtb, gfn1-xtb, ipea1-xtb"),
    ("unknown keyword", {"keywords": {"max-iter": 5}}, r"unknown keyword\(s\) \['max-iter'\].*max_iterations"),
    ("max_iterations 0", {"keywords": {"max_iterations": 0}}, r"max_iterations=0 must be an integer >= 1"),
    ("max_iterations float", {"keywords": {"max_iterations": 2.5}}, r"max_iterations=2.5 must be an integer"),
    ("accuracy", {"keywords": {"accuracy": 0}}, r"accuracy=0 must be a positive number"),
    ("accuracy string", {"keywords": {"accuracy": "high"}}, r"accuracy='high' must be a number"),
    ("temperature", {"keywords": {"electronic_temperature": -300}}, r"electronic_temperature=-300.*kelvin >= 0"),
    ("solvent", {"keywords": {"solvent": "unobtainium"}}, r"solvent 'unobtainium' \(alpb\).*not found.*Name a solvent"),
    ("solvation model", {"keywords": {"solvent": "water", "solvation_model": "cosmo"}},
     r"solvation_model='cosmo' must be one of alpb, gbsa"),
    ("model without solvent", {"keywords": {"solvation_model": "alpb"}}, r"needs a solvent"),
    ("water +10", {"molecule": "charged"}, r"fragment 2 \(OH2, charge 10.*-2 valence electrons"),
]


@pytest.mark.parametrize(("changes", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_before_anything_runs(changes: dict[str, Any], message: str, tmp_path: Path,
                                      nothing_runs: None) -> None:
    mol = waters_grid(3)
    if changes.get("molecule") == "charged":
        mol = Molecule(**{**mol.model_dump(), "fragment_charges": [0.0, 10.0, 0.0], "molecular_charge": 10.0})
    inp = mbe_input("tblite", changes.get("method", "gfn2-xtb"), changes.get("basis"),
                    driver=changes.get("driver", "energy"), bsse=changes.get("bsse", "nocp"), max_nbody=2,
                    molecule=mol, keywords=changes.get("keywords"))
    store = tmp_path / "store.sqlite"
    with pytest.raises(InputError, match=message):
        qcmb_async.run(inp, store=str(store))
    assert not store.exists()


def test_harness_refuses_ghost_atoms_itself() -> None:
    """Defence in depth: a fragment with ghosts that reached the harness is an input error, never real atoms."""
    import qcengine

    from qcmb_async.harnesses import register_harnesses

    register_harnesses()
    mol = Molecule.from_data("O 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n--\n@O 0 0 3\n@H 0.757 0.586 3\n"
                             "@H -0.757 0.586 3")
    inp = AtomicInput(molecule=mol, specification={"driver": "energy", "model": {"method": "gfn2-xtb"}})
    out = qcengine.compute(inp, "tblite", task_config={"ncores": 1}, return_version=2)
    assert not out.success
    assert out.error.error_type == "input_error"
    assert "ghost atoms (atoms [4, 5, 6])" in out.error.error_message and "nocp" in out.error.error_message


def test_harness_passes_tblites_message_for_an_impossible_spin() -> None:
    """tblite's own message comes back (here: electrons and unpaired electrons that cannot go together)."""
    import qcengine

    from qcmb_async.harnesses import register_harnesses

    register_harnesses()
    valid = Molecule(symbols=["O", "H", "H"], geometry=[0, 0, 0, 1.43, 1.1, 0, -1.43, 1.1, 0])
    # QCElemental refuses this molecule, so it is built unchecked: a harness must not rely on its caller
    mol = Molecule.model_construct(**{**dict(valid), "molecular_multiplicity": 2.0})
    inp = AtomicInput(molecule=mol, specification={"driver": "energy", "model": {"method": "gfn2-xtb"}})
    out = qcengine.compute(inp, "tblite", task_config={"ncores": 1}, return_version=2)
    assert not out.success and out.error.error_type == "input_error"
    assert "Total number of electrons (8) and number unpaired electrons (1) is not compatible" in \
        out.error.error_message


# -- frequencies and failures -----------------------------------------------------------------


def test_finite_difference_frequencies() -> None:
    mol = waters_grid(2)
    inp = mbe_input("tblite", "gfn2-xtb", None, bsse="nocp", max_nbody=2, molecule=mol)
    with pytest.raises(InputError, match=r"no analytic Hessians.*finite-difference"):
        qcmb_async.frequencies_sync(inp, method="analytic", store=None)
    fd = qcmb_async.frequencies_sync(inp, method="finite-difference", ncores=2, memory=2, store=None)
    step = fd.extras["step"]
    x0 = np.asarray(mol.geometry, dtype=float).reshape(-1)
    reference = np.empty((x0.size, x0.size))
    for i in range(x0.size):  # central differences of tblite supersystem gradients (MBE(2) of a dimer = dimer)
        grads = []
        for sign in (1.0, -1.0):
            moved = x0.copy()
            moved[i] += sign * step
            grads.append(direct(Molecule(**{**mol.model_dump(), "geometry": moved}), [0, 1])[1].reshape(-1))
        reference[:, i] = (grads[0] - grads[1]) / (2 * step)
    reference = (reference + reference.T) / 2
    np.testing.assert_allclose(fd.hessian, reference, rtol=0, atol=1e-7)
    assert fd.energy == pytest.approx(direct(mol, [0, 1])[0], abs=1e-9)
    assert fd.frequencies.shape == (12,) and fd.frequencies.max() > 3000  # O-H stretches, cm-1


def test_failed_fragment_names_itself_with_tblites_message() -> None:
    mol = waters_grid(3)
    inp = mbe_input("tblite", "gfn2-xtb", None, bsse="nocp", max_nbody=2, molecule=mol,
                    keywords={"max_iterations": 1})
    with pytest.raises(FragmentError) as info:
        qcmb_async.run(inp, ncores=2, memory=2, store=None)
    err = info.value
    assert err.program == "tblite" and err.error_type == "convergence_error"
    assert "SCF not converged in 1 cycles" in err.error_message
    assert err.label in str(err) and "SCF not converged in 1 cycles" in str(err)
    assert "tblite GFN2-xTB energy of" in err.error_message  # the harness says which fragment molecule


def test_registry_entry_matches_the_harness() -> None:
    from qcmb_async.executors import resolve_executor
    from qcmb_async.harnesses.tblite import METHODS, SUPPORTED_KEYWORDS
    from qcmb_async.programs import traits

    entry = traits("tblite")
    assert entry.methods == frozenset(METHODS) and entry.keywords == frozenset(SUPPORTED_KEYWORDS)
    assert entry.in_process and entry.semi_empirical and not entry.ghost_atoms and not entry.analytic_hessian
    assert "qcmb_async[xtb]" in entry.install_hint

    class Options:
        slots = 2

    assert resolve_executor("auto", {"tblite"}, Options()).name == "threads"
