"""Effective core potentials in the PySCF harness, checked against PySCF run directly.

Every basis set that carries ECPs must give each real atom the ECP the basis defines for its
element, on both sides of Z = 36; ghosts get none; a basis PySCF cannot resolve for an element
is an InputError before anything runs. Expected values: PySCF run directly in this file (the
``gto.Mole`` built here, ``mol.ecp`` named from the basis) and the core sizes of the published
ECPs (Hay-Wadt LANL2DZ, Stuttgart/def2, cc-pVXZ-PP, SBKJC, CRENBL), written out below.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from qcelemental.models.v2 import AtomicInput, AtomicResult, FailedOperation, Molecule

from tests.helpers import mbe_input, require_module, require_program

pyscf = require_module("pyscf")

import qcengine  # noqa: E402
from pyscf import gto, scf  # noqa: E402

from qcmb_async import InputError, plan_manybody, run  # noqa: E402
from qcmb_async.harnesses.pyscf import check_model, ecp_core_electrons  # noqa: E402

TIGHT = {"conv_tol": 1e-12}
HARTREE_TO_KCAL = 627.5094740631  # CODATA 2018, as QCElemental

#: Core electrons of the published ECPs (element, basis, core): small-core Hay-Wadt LANL2DZ for
#: Na-Ca ([Ne]) and Br ([Ar]3d10); Stuttgart/def2 from Rb on (28 for Rb-Xe, 46 for Cs); Peterson's
#: cc-pVXZ-PP for Br (10); SBKJC large-core K ([Ne]3s2 3p6); CRENBL O (1s2); none where the basis is
#: all-electron.
CORE_SIZES = [
    ("Na", "lanl2dz", 10),
    ("K", "lanl2dz", 10),
    ("Ca", "lanl2dz", 10),
    ("Br", "lanl2dz", 28),
    ("Br", "cc-pvdz-pp", 10),
    ("Rb", "def2-svp", 28),
    ("I", "def2-svp", 28),
    ("Cs", "def2-svp", 46),
    ("K", "sbkjc", 18),
    ("O", "crenbl", 2),
    ("K", "def2-svp", 0),
    ("Br", "def2-svp", 0),
    ("O", "lanl2dz", 0),
    ("H", "lanl2dz", 0),
]


def _water_at(x: float) -> str:
    """A water whose oxygen sits at (x, 0, 0) Angstrom, hydrogens pointing away from the origin."""
    return f"O {x:.4f} 0 0\nH {x + 0.59:.4f} 0.76 0\nH {x + 0.59:.4f} -0.76 0"


def _ion_water(symbol: str, charge: int, distance: float = 2.7) -> Molecule:
    """Ion at the origin, one water (fragment 2); charge on the ion's fragment."""
    return Molecule.from_data(
        f"units angstrom\nno_com\nno_reorient\n{charge} 1\n{symbol} 0 0 0\n--\n0 1\n{_water_at(distance)}"
    )


def _direct(mol: Molecule, basis: str) -> tuple[float, Any]:
    """HF energy from PySCF itself: atoms in input order, ghosts as ``ghost-X``, ``mol.ecp`` from the basis
    for the real atoms' elements (PySCF's own library decides which carry one)."""
    geometry = np.asarray(mol.geometry, dtype=float).reshape(-1, 3)
    atoms = [(s if r else f"ghost-{s}", tuple(xyz)) for s, r, xyz in zip(mol.symbols, mol.real, geometry, strict=True)]
    real_elements = {s for s, r in zip(mol.symbols, mol.real, strict=True) if r}
    ecp = {el: basis for el in real_elements if gto.basis.load_ecp(basis, el)}
    m = gto.M(atom=atoms, unit="Bohr", basis=basis, ecp=ecp, charge=round(mol.molecular_charge),
              spin=round(mol.molecular_multiplicity) - 1, verbose=0)
    mf = scf.RHF(m) if m.spin == 0 else scf.UHF(m)
    mf.conv_tol = 1e-12
    energy = mf.kernel()
    assert mf.converged
    return float(energy), m


def _harness(mol: Molecule, basis: str) -> AtomicResult:
    inp = AtomicInput(molecule=mol, specification={"driver": "energy", "model": {"method": "hf", "basis": basis},
                                                    "keywords": TIGHT})
    res = qcengine.compute(inp, "pyscf", raise_error=True, task_config={"ncores": 1, "memory": 1})
    assert isinstance(res, AtomicResult)
    return res


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    require_program("pyscf")


@pytest.mark.parametrize(("element", "basis", "core"), CORE_SIZES)
def test_core_electrons_are_the_published_ones(element: str, basis: str, core: int) -> None:
    assert ecp_core_electrons(element, basis) == core
    assert ecp_core_electrons(element.lower(), basis.upper()) == core  # any spelling


#: (ion, charge, basis, water with it?) on both sides of Z = 36; cc-pVDZ-PP has no H/O, so Br- is alone.
ION_CASES = [
    ("Na", 1, "lanl2dz", True),
    ("K", 1, "lanl2dz", True),
    ("Ca", 2, "lanl2dz", True),
    ("Br", -1, "cc-pvdz-pp", False),
    ("Rb", 1, "def2-svp", True),
    ("I", -1, "def2-svp", True),
    ("O", 0, "crenbl", False),  # a light element with an ECP: CRENBL replaces the oxygen 1s
]


@pytest.mark.parametrize(("symbol", "charge", "basis", "with_water"), ION_CASES)
def test_harness_matches_pyscf_directly(symbol: str, charge: int, basis: str, with_water: bool) -> None:
    if with_water:
        mol = _ion_water(symbol, charge)
    else:
        mult = 3 if symbol == "O" else 1
        mol = Molecule(symbols=[symbol], geometry=[0, 0, 0], molecular_charge=charge, molecular_multiplicity=mult)
    expected, direct = _direct(mol, basis)
    core = dict(((el, b), c) for el, b, c in CORE_SIZES)[(symbol, basis)]
    assert direct.atom_nelec_core(0) == core > 0  # PySCF itself puts the published ECP on the ion

    res = _harness(mol, basis)
    assert res.return_result == pytest.approx(expected, abs=1e-8)
    p = res.properties
    electrons = sum(int(z) for z in mol.atomic_numbers) - charge
    assert p.calcinfo_nalpha + p.calcinfo_nbeta == electrons - core  # the core is the ECP's, not the basis'


def test_k_water_total_and_interaction_energy_nocp() -> None:
    """K+...H2O, HF/LANL2DZ, NoCP, return_total_data: the MBE through qcmb_async = direct PySCF sums."""
    mol = _ion_water("K", 1)
    e_dimer, _ = _direct(mol, "lanl2dz")
    e_k, _ = _direct(mol.get_fragment(real=[0]), "lanl2dz")
    e_w, _ = _direct(mol.get_fragment(real=[1]), "lanl2dz")

    inp = mbe_input("pyscf", "hf", "lanl2dz", bsse="nocp", max_nbody=2, molecule=mol, keywords=TIGHT,
                    mb_keywords={"return_total_data": True})
    res = run(inp, ncores=2, memory=2, store=None)
    p = res.properties
    assert p.nocp_corrected_total_energy == pytest.approx(e_dimer, abs=1e-8)
    assert res.return_result == pytest.approx(e_dimer, abs=1e-8)
    assert p.nocp_corrected_interaction_energy == pytest.approx(e_dimer - e_k - e_w, abs=1e-8)
    # The issue's ballpark: -103.75 Eh (all-electron K in the valence basis gave -194.24), and a
    # cation-water binding of about -22 kcal/mol (not -320).
    assert -103.80 < res.return_result < -103.70
    assert -30 < p.nocp_corrected_interaction_energy * HARTREE_TO_KCAL < -15


def test_ghosts_carry_basis_but_no_ecp() -> None:
    """CP fragments: K+ in the water's basis, and water in the basis of a ghost K (ghost first)."""
    mol = _ion_water("K", 1)
    k_in_dimer_basis = mol.get_fragment(real=[0], ghost=[1])
    # the ghost K first, as QCManyBody orders fragment [2] in the basis of [1, 2]
    water_in_dimer_basis = Molecule(**{**mol.model_dump(), "real": [False, True, True, True], "molecular_charge": 0,
                                       "fragment_charges": [0, 0], "validated": False})
    assert list(water_in_dimer_basis.real) == [False, True, True, True]

    for frag, electrons in ((k_in_dimer_basis, 8), (water_in_dimer_basis, 10)):
        expected, direct = _direct(frag, "lanl2dz")
        assert [direct.atom_nelec_core(i) for i in range(direct.natm)] == [10 if (s == "K" and r) else 0
                                                                          for s, r in zip(frag.symbols, frag.real,
                                                                                          strict=True)]
        res = _harness(frag, "lanl2dz")
        assert res.return_result == pytest.approx(expected, abs=1e-8)
        assert res.properties.calcinfo_nalpha + res.properties.calcinfo_nbeta == electrons
    # the ghost K's basis functions are there (and lower the water's energy), its core potential is not
    e_water, _ = _direct(mol.get_fragment(real=[1]), "lanl2dz")
    assert e_water - 0.01 < _harness(water_in_dimer_basis, "lanl2dz").return_result < e_water


UNRESOLVABLE = [
    (["K", "O", "H"], "cc-pvdz-pp", "K"),  # no K (nor O, H) in PySCF's cc-pVDZ-PP
    (["Cu", "H"], "aug-cc-pvdz-pp", "Cu"),  # basis functions but not the ECP the basis set uses
    (["O", "H"], "no-such-basis", "H"),
    (["Au"], "6-31g", "Au"),
]


@pytest.mark.parametrize(("symbols", "basis", "element"), UNRESOLVABLE)
def test_unresolvable_basis_is_an_input_error(symbols: list[str], basis: str, element: str) -> None:
    with pytest.raises(InputError) as err:
        check_model(symbols, {"method": "hf", "basis": basis})
    message = str(err.value)
    assert repr(basis) in message and re.search(rf"elements? (\w+, )*{element}\b", message)
    # the harness says the same when it is called directly (QCEngine's input_error)
    mol = Molecule(symbols=[element], geometry=[0, 0, 0])  # QCElemental picks the multiplicity
    inp = AtomicInput(molecule=mol, specification={"driver": "energy", "model": {"method": "hf", "basis": basis}})
    failed = qcengine.compute(inp, "pyscf", raise_error=False, task_config={"ncores": 1})
    assert isinstance(failed, FailedOperation)
    assert failed.error.error_type == "input_error" and repr(basis) in failed.error.error_message


def test_every_unresolvable_element_is_named() -> None:
    with pytest.raises(InputError) as err:
        check_model(["Cu", "Ag", "H", "O"], {"method": "hf", "basis": "aug-cc-pvdz-pp"})
    message = str(err.value)
    assert "no basis set 'aug-cc-pvdz-pp' for elements H, O." in message
    assert "effective core potential for elements Ag, Cu" in message


def test_refused_before_anything_runs() -> None:
    """plan_manybody (input check and plan, nothing computed) refuses what PySCF cannot resolve."""
    mol = _ion_water("K", 1)
    with pytest.raises(InputError, match=r"basis set 'cc-pvdz-pp' for elements H, K, O"):
        plan_manybody(mbe_input("pyscf", "hf", "cc-pvdz-pp", bsse="nocp", max_nbody=2, molecule=mol))
    with pytest.raises(InputError, match="unknown method 'no-such-method'"):
        plan_manybody(mbe_input("pyscf", "no-such-method", "lanl2dz", bsse="nocp", max_nbody=2, molecule=mol))
    plan_manybody(mbe_input("pyscf", "hf", "lanl2dz", bsse="nocp", max_nbody=2, molecule=mol))  # resolvable: fine
