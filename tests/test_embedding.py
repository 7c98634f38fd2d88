"""Electrostatically embedded MBE (EE-MBE) with PySCF: QCManyBody's ``embedding_charges`` as QM/MM point charges.

References are independent of the code under test: QCManyBody's own EE reference values (its het4 test,
computed with Psi4), PySCF QM/MM jobs run directly here and summed with the textbook MBE formula, and
central finite differences of that sum.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Any

import numpy as np
import pytest
from qcmanybody.models.v2 import ManyBodyInput

from .helpers import require_module

pyscf = require_module("pyscf")

from pyscf import gto, qmmm, scf  # noqa: E402

import qcmb_async  # noqa: E402
from qcmb_async._core.checks import EMBEDDING_ENV, check_input  # noqa: E402

# QCManyBody 0.8, qcmanybody/tests/test_computer_het4_gradient.py: het_tetramer fixture (geometry in bohr) and
# the "4b_nocp_rtd_ee" case, HF/cc-pVDZ with Psi4 (scf_type pk: conventional integrals, our default).
HET4 = {"symbols": ["F", "H", "F", "H", "H", "He"], "fragments": [[0], [1, 2], [3, 4], [5]],
        "fragment_charges": [-1, 0, 0, 0], "geometry": [-2, 0, 0, 0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 3, 2, 0, -3, 0]}
HET4_CHARGES = {1: [-1.0], 2: [0.5, -0.5], 3: [-0.5, 0.5], 4: [0.0]}
HET4_EE = {  # het4_refs_conv_grad_dtz["4b_nocp_rtd_ee"]
    "nocp_corrected_total_energy_through_1_body": -203.4340927642202,
    "nocp_corrected_total_energy_through_2_body": -203.33800560627736,
    "nocp_corrected_total_energy_through_3_body": -203.32602370522727,
    "nocp_corrected_2_body_contribution_to_energy": 0.09608715794283285,
    "nocp_corrected_3_body_contribution_to_energy": 0.011981901050091892,
}
HET4_EE_4B = -203.325313169849
HET4_EE_4B_GRADIENT = np.array([
    [-7.40362107e-02, 2.84130177e-03, 1.00812417e-02],
    [7.57644630e-02, -1.48382170e-04, -1.73598308e-03],
    [2.60812737e-02, 4.40153586e-04, 2.02181449e-03],
    [-8.52081509e-03, -2.26666902e-02, -1.10830218e-01],
    [-6.03761335e-03, -1.54080947e-02, 1.00510650e-01],
    [-1.32510976e-02, 3.49417117e-02, -4.75050664e-05]])
# Same file, the EE gradient through 3 bodies from Psi4 (kept there as a comment, "fine but wrongly present"):
# each fragment's gradient on its own atoms with the charges held fixed.
HET4_EE_3B_GRADIENT = np.array([
    [-7.36025774e-02, 3.36991350e-03, 1.00686673e-02],
    [7.55655033e-02, -5.37981728e-04, -2.19873195e-03],
    [2.63105970e-02, 4.12475495e-04, 2.10686911e-03],
    [-8.78129292e-03, -2.22190993e-02, -1.10826802e-01],
    [-6.14121135e-03, -1.53249058e-02, 1.00569730e-01],
    [-1.32579782e-02, 3.44008392e-02, 3.46216252e-05]])

ANG = 1.0 / 0.52917721092  # bohr per angstrom (QCElemental's CODATA 2014)
WATER_DIMER = np.array([[-1.551007, -0.114520, 0.000000], [-1.934259, 0.762503, 0.000000],
                        [-0.599677, 0.040712, 0.000000], [1.350625, 0.111469, 0.000000],
                        [1.680398, -0.373741, -0.758561], [1.680398, -0.373741, 0.758561]]) * ANG
THIRD_WATER = np.array([[0.0, 0.0, 3.0], [0.0, 0.76, 3.6], [0.0, -0.76, 3.6]]) * ANG
TIP3P = [-0.834, 0.417, 0.417]


def _mbe_input(molecule: dict[str, Any], charges: dict[int, list[float]], nbody: int, driver: str,
               basis: str, **extra: Any) -> ManyBodyInput:
    return ManyBodyInput(**{"molecule": molecule, "specification": {
        "driver": driver,
        "keywords": {"bsse_type": "nocp", "return_total_data": True, "max_nbody": nbody,
                     "embedding_charges": charges},
        "specification": {"(auto)": {"program": "pyscf", "model": {"method": "hf", "basis": basis},
                                     "driver": driver, "keywords": {"conv_tol": 1e-12}}},
        **extra}})


def _waters(geometry: np.ndarray) -> dict[str, Any]:
    n = len(geometry) // 3
    return {"symbols": ["O", "H", "H"] * n, "geometry": geometry.ravel().tolist(),
            "fragments": [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(n)], "fragment_charges": [0] * n,
            "fragment_multiplicities": [1] * n}


def _qmmm(symbols: list[str], geometry: np.ndarray, atoms: list[int], charge_atoms: list[int],
          charges: list[float], basis: str, charge_geometry: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """PySCF RHF on ``atoms`` in bare point charges ``charges`` at ``charge_atoms`` (bohr), run directly.

    Returns the energy and the gradient on ``atoms`` (charges held fixed), ``(len(atoms), 3)``.
    ``charge_geometry``: where the charges sit (default ``geometry``: on their atoms).
    """
    mol = gto.M(atom=[(symbols[a], geometry[a]) for a in atoms], unit="Bohr", basis=basis, verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-12
    if charge_atoms:
        where = geometry if charge_geometry is None else charge_geometry
        mf = qmmm.mm_charge(mf, where[charge_atoms], charges, unit="Bohr")
    energy = mf.kernel()
    assert mf.converged
    return float(energy), np.asarray(mf.nuc_grad_method().kernel())


def _nocp_mbe(geometry: np.ndarray, nfrag: int, order: int, charges: list[float], basis: str,
              charge_geometry: np.ndarray | None = None, gradient: bool = False) -> Any:
    """Textbook NoCP MBE(order) of ``nfrag`` waters, each subset in the TIP3P-like charges of the others.

    E(n) = sum_{k=1..n} (-1)**(n-k) * C(N-k-1, n-k) * sum_{|S|=k} E_S  (the inclusion-exclusion of the
    increments, e.g. Richard & Herbert, J. Chem. Phys. 137, 064113 (2012), for disjoint fragments).
    """
    symbols = ["O", "H", "H"] * nfrag
    energy, grad = 0.0, np.zeros((3 * nfrag, 3))
    for k in range(1, order + 1):
        coef = (-1) ** (order - k) * math.comb(nfrag - k - 1, order - k) if k < nfrag else 1
        for subset in itertools.combinations(range(nfrag), k):
            atoms = [3 * f + i for f in subset for i in range(3)]
            others = [3 * f + i for f in range(nfrag) if f not in subset for i in range(3)]
            e, g = _qmmm(symbols, geometry, atoms, others, charges * (nfrag - k), basis, charge_geometry)
            energy += coef * e
            grad[atoms] += coef * g
    return (energy, grad) if gradient else energy


@pytest.fixture(autouse=True)
def _opt_in_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every test starts without QCManyBody's opt-in: qcmb_async must set it when charges are given.
    monkeypatch.delenv(EMBEDDING_ENV, raising=False)


@pytest.mark.slow
def test_het4_reference_values_through_three_bodies() -> None:
    """QCManyBody's EE-MBE reference (Psi4) through PySCF: energies to 1e-8 Eh, the 3-body gradient to 1e-7."""
    result = qcmb_async.run(_mbe_input(HET4, HET4_CHARGES, 3, "gradient", "cc-pvdz"), ncores=2)
    props = result.properties.model_dump()
    for name, ref in HET4_EE.items():
        assert props[name] == pytest.approx(ref, abs=1e-8), name
    assert result.properties.return_energy == pytest.approx(HET4_EE["nocp_corrected_total_energy_through_3_body"],
                                                            abs=1e-8)
    np.testing.assert_allclose(np.asarray(result.return_result), HET4_EE_3B_GRADIENT, rtol=0, atol=1e-7)
    assert os.environ.get(EMBEDDING_ENV) == "1"  # set for the user: the charges were the request


@pytest.mark.slow
def test_het4_reference_values_full_expansion() -> None:
    """MBE(4) of the tetramer: the full job has no charges, and the expansion gives QCManyBody's 4-body values."""
    result = qcmb_async.run(_mbe_input(HET4, HET4_CHARGES, 4, "gradient", "cc-pvdz"), ncores=2)
    props = result.properties.model_dump()
    assert props["nocp_corrected_total_energy_through_4_body"] == pytest.approx(HET4_EE_4B, abs=1e-8)
    assert props["nocp_corrected_4_body_contribution_to_energy"] == pytest.approx(0.000710535378, abs=1e-8)
    for name, ref in HET4_EE.items():
        assert props[name] == pytest.approx(ref, abs=1e-8), name
    np.testing.assert_allclose(np.asarray(result.return_result), HET4_EE_4B_GRADIENT, rtol=0, atol=1e-7)


def test_dimer_embedded_mbe_equals_direct_qmmm_jobs() -> None:
    """Water dimer with TIP3P-like charges: MBE(1) and MBE(2) against PySCF QM/MM jobs run here, summed by hand."""
    geometry = WATER_DIMER
    symbols = ["O", "H", "H"] * 2
    e1, g1 = _qmmm(symbols, geometry, [0, 1, 2], [3, 4, 5], TIP3P, "6-31g")  # water 1 in the charges of 2
    e2, g2 = _qmmm(symbols, geometry, [3, 4, 5], [0, 1, 2], TIP3P, "6-31g")
    e12, _ = _qmmm(symbols, geometry, list(range(6)), [], [], "6-31g")  # the dimer: nothing left to embed it
    charges = {1: TIP3P, 2: TIP3P}

    one = qcmb_async.run(_mbe_input(_waters(geometry), charges, 1, "gradient", "6-31g"), ncores=2)
    assert one.properties.return_energy == pytest.approx(e1 + e2, abs=1e-9)
    np.testing.assert_allclose(np.asarray(one.return_result), np.vstack([g1, g2]), rtol=0, atol=1e-8)

    two = qcmb_async.run(_mbe_input(_waters(geometry), charges, 2, "energy", "6-31g"), ncores=2)
    props = two.properties
    assert props.nocp_corrected_total_energy_through_1_body == pytest.approx(e1 + e2, abs=1e-9)
    assert props.nocp_corrected_2_body_contribution_to_energy == pytest.approx(e12 - e1 - e2, abs=1e-9)
    assert props.return_energy == pytest.approx(e12, abs=1e-9)


@pytest.mark.slow
def test_trimer_gradient_matches_finite_differences() -> None:
    """EE-MBE(2) gradient of a water trimer against central differences of the textbook EE-MBE(2) energy.

    QCManyBody's EE gradient (what its Psi4 reference holds) is each fragment's gradient on its own atoms with
    the charges held where they are: the derivative of the energy with the charges frozen. Moving the charges
    with their atoms adds the harness's charge-position gradients (``extras["pyscf"]["embedding_gradient"]``),
    assembled here with the same textbook coefficients.
    """
    geometry = np.vstack([WATER_DIMER, THIRD_WATER])
    result = qcmb_async.run(_mbe_input(_waters(geometry), {1: TIP3P, 2: TIP3P, 3: TIP3P}, 2, "gradient", "sto-3g",
                                       protocols={"cluster_results": "all"}), ncores=2)
    energy_ref = _nocp_mbe(geometry, 3, 2, TIP3P, "sto-3g")
    assert result.properties.return_energy == pytest.approx(energy_ref, abs=1e-9)
    grad = np.asarray(result.return_result).reshape(-1, 3)

    # Charge-position terms from the fragments' results: MBE(2) of a trimer = sum E_ij - sum E_i.
    moving = grad.copy()
    for label, atomic in result.cluster_results.items():
        extras = atomic.extras["pyscf"]
        real = json.loads(label)[1]
        coef = 1 if len(real) == 2 else -1
        charge_atoms = [3 * (f - 1) + i for f in (1, 2, 3) if f not in real for i in range(3)]
        assert len(extras.get("embedding_gradient", [])) == len(charge_atoms)
        if charge_atoms:
            moving[charge_atoms] += coef * np.asarray(extras["embedding_gradient"])

    h = 1e-3
    charge_terms = []
    for atom, xyz in ((0, 0), (4, 2), (7, 0), (8, 1)):  # atoms of all three waters
        def shifted(step: float, _a: int = atom, _x: int = xyz) -> np.ndarray:
            g = geometry.copy()
            g[_a, _x] += step
            return g
        frozen = (_nocp_mbe(shifted(h), 3, 2, TIP3P, "sto-3g", charge_geometry=geometry)
                  - _nocp_mbe(shifted(-h), 3, 2, TIP3P, "sto-3g", charge_geometry=geometry)) / (2 * h)
        assert grad[atom, xyz] == pytest.approx(frozen, abs=1e-6), (atom, xyz)
        both = (_nocp_mbe(shifted(h), 3, 2, TIP3P, "sto-3g") - _nocp_mbe(shifted(-h), 3, 2, TIP3P, "sto-3g")) / (2 * h)
        assert moving[atom, xyz] == pytest.approx(both, abs=1e-6), (atom, xyz)
        charge_terms.append(abs(both - frozen))
    assert max(charge_terms) > 1e-5  # 10x the tolerance: the charge terms matter, the two checks differ


def test_embedded_hessian_is_refused_before_running() -> None:
    data = _mbe_input(_waters(WATER_DIMER), {1: TIP3P, 2: TIP3P}, 2, "hessian", "sto-3g")
    with pytest.raises(qcmb_async.InputError, match="no analytic Hessian with external point charges"):
        check_input(data)


def test_input_without_charges_leaves_environment_alone() -> None:
    data = _mbe_input(_waters(WATER_DIMER), {1: TIP3P, 2: TIP3P}, 2, "energy", "sto-3g").model_dump()
    data["specification"]["keywords"].pop("embedding_charges")
    check_input(ManyBodyInput(**data))
    assert EMBEDDING_ENV not in os.environ


OH_RADICAL = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.84]])  # bohr
POINT_CHARGES = [[0.6, [3.0, 0.5, 0.2]], [-0.4, [-0.5, 2.8, 1.1]]]  # [charge, [x, y, z] bohr], QCManyBody's form


def _harness(geometry: np.ndarray, charges: list[Any], driver: str) -> Any:
    """Our harness through QCEngine: UKS B3LYP/6-31G density-fitted, the OH radical in ``charges``."""
    import qcengine
    from qcelemental.models.v2 import AtomicInput, Molecule

    from qcmb_async.harnesses import register_harnesses

    register_harnesses()
    mol = Molecule(symbols=["O", "H"], geometry=geometry, molecular_multiplicity=2, fix_com=True,
                   fix_orientation=True, extras={"embedding_charges": charges})
    inp = AtomicInput(molecule=mol, specification={
        "driver": driver, "model": {"method": "b3lyp", "basis": "6-31g"},
        "keywords": {"conv_tol": 1e-12, "density_fit": True}})
    res = qcengine.compute(inp, "pyscf", raise_error=True, task_config={"ncores": 1, "memory": 1})
    assert res.success
    return res


def _direct_uks(geometry: np.ndarray, charges: list[Any]) -> float:
    from pyscf import dft

    mol = gto.M(atom=[("O", geometry[0]), ("H", geometry[1])], unit="Bohr", basis="6-31g", spin=1, verbose=0)
    mf = dft.UKS(mol).density_fit()
    mf.xc = "b3lyp"
    mf.conv_tol = 1e-12
    mf = qmmm.mm_charge(mf, np.array([c[1] for c in charges]), [c[0] for c in charges], unit="Bohr")
    return float(mf.kernel())


def test_harness_open_shell_dft_density_fitted_in_charges() -> None:
    """UKS, density fitting, point charges: energy = PySCF QM/MM run directly; atom and charge gradients = FD."""
    res = _harness(OH_RADICAL, POINT_CHARGES, "gradient")
    assert res.properties.return_energy == pytest.approx(_direct_uks(OH_RADICAL, POINT_CHARGES), abs=1e-9)
    extras = res.extras["pyscf"]
    assert extras["embedding_charges"] == 2
    # Charge-nucleus energy (in E): sum over nuclei Z and charges q of Z q / r, written out.
    nuclear = sum(z * q / np.linalg.norm(np.asarray(pos) - atom)
                  for z, atom in zip((8, 1), OH_RADICAL, strict=True) for q, pos in POINT_CHARGES)
    assert extras["embedding_nuclear_energy"] == pytest.approx(nuclear, abs=1e-12)

    h = 1e-4
    shifted = [OH_RADICAL.copy(), OH_RADICAL.copy()]
    shifted[0][1, 2] += h
    shifted[1][1, 2] -= h
    fd_atom = (_direct_uks(shifted[0], POINT_CHARGES) - _direct_uks(shifted[1], POINT_CHARGES)) / (2 * h)
    assert np.asarray(res.return_result)[1, 2] == pytest.approx(fd_atom, abs=1e-6)
    moved = [[[q, list(p)] for q, p in POINT_CHARGES] for _ in range(2)]
    moved[0][1][1][0] += h
    moved[1][1][1][0] -= h
    fd_charge = (_direct_uks(OH_RADICAL, moved[0]) - _direct_uks(OH_RADICAL, moved[1])) / (2 * h)
    assert extras["embedding_gradient"][1][0] == pytest.approx(fd_charge, abs=1e-6)


def test_harness_refuses_hessian_and_malformed_charges() -> None:
    from qcengine.exceptions import InputError as EngineInputError

    with pytest.raises(EngineInputError, match="no analytic Hessian with external point charges"):
        _harness(OH_RADICAL, POINT_CHARGES, "hessian")
    with pytest.raises(EngineInputError, match=r"list of \[charge, \[x, y, z\]\]"):
        _harness(OH_RADICAL, [[0.5, [1.0, 2.0]]], "energy")


@pytest.mark.parametrize("bsse", ["nocp", "vmfc"])
def test_materialised_fragments_carry_qcmanybodys_charges(bsse: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our plan (fast path included) gives each PySCF job exactly the molecule QCManyBody's iterate_molecules
    yields, embedding charges in its extras; Psi4 jobs get them as external_potentials, as QCManyBody's loop does."""
    from qcmanybody.v2 import ManyBodyComputer

    from qcmb_async._core.plan import make_plan

    monkeypatch.setenv(EMBEDDING_ENV, "1")
    geometry = np.vstack([WATER_DIMER, THIRD_WATER, THIRD_WATER + np.array([5.0, 0.0, 0.0])])
    data = _mbe_input(_waters(geometry), {i: TIP3P for i in range(1, 5)}, 3, "energy", "sto-3g").model_dump()
    data["specification"]["keywords"]["bsse_type"] = [bsse]
    inp = ManyBodyInput(**data)
    plan = make_plan(inp)
    reference = list(ManyBodyComputer.from_manybodyinput(inp, build_tasks=False).qcmb_core.iterate_molecules())
    assert [f.label for f in plan.fragments] == [label for _, label, _ in reference]
    with_charges = 0
    for frag, (_, label, mol) in zip(plan.fragments, reference, strict=True):
        job = plan.materialise(frag)
        assert job.atomic_input.molecule.model_dump_json() == mol.model_dump_json(), label
        charges = job.atomic_input.molecule.extras.get("embedding_charges", [])
        assert len(charges) == 3 * (4 - len(frag.basis))  # one per atom outside the job's basis
        with_charges += bool(charges)
        assert "function_kwargs" not in job.atomic_input.specification.keywords
    assert with_charges > 0

    data["specification"]["specification"]["(auto)"]["program"] = "psi4"
    psi4_plan = make_plan(ManyBodyInput(**data))
    frag = psi4_plan.fragments[0]
    job = psi4_plan.materialise(frag)
    assert (job.atomic_input.specification.keywords["function_kwargs"]["external_potentials"]
            == job.atomic_input.molecule.extras["embedding_charges"])


def test_harness_mp2_gradient_in_charges_matches_finite_differences() -> None:
    """MP2 in point charges through the harness: energy = PySCF QM/MM + MP2 run directly, gradient = FD of it."""
    import qcengine
    from pyscf import mp
    from qcelemental.models.v2 import AtomicInput, Molecule

    from qcmb_async.harnesses import register_harnesses

    register_harnesses()
    water = WATER_DIMER[:3]
    charges = [[q, list(map(float, xyz))] for q, xyz in zip(TIP3P, WATER_DIMER[3:], strict=True)]

    def direct(geometry: np.ndarray) -> float:
        mol = gto.M(atom=[(s, xyz) for s, xyz in zip("OHH", geometry, strict=True)], unit="Bohr", basis="6-31g",
                    verbose=0)
        mf = scf.RHF(mol)
        mf.conv_tol = 1e-12
        mf = qmmm.mm_charge(mf, WATER_DIMER[3:], TIP3P, unit="Bohr")
        mf.kernel()
        pt = mp.MP2(mf)
        pt.kernel()
        return float(pt.e_tot)

    mol = Molecule(symbols=["O", "H", "H"], geometry=water, fix_com=True, fix_orientation=True,
                   extras={"embedding_charges": charges})
    inp = AtomicInput(molecule=mol, specification={"driver": "gradient", "model": {"method": "mp2", "basis": "6-31g"},
                                                   "keywords": {"conv_tol": 1e-12}})
    res = qcengine.compute(inp, "pyscf", raise_error=True, task_config={"ncores": 1, "memory": 1})
    assert res.properties.return_energy == pytest.approx(direct(water), abs=1e-9)
    h = 1e-4
    plus, minus = water.copy(), water.copy()
    plus[0, 1] += h
    minus[0, 1] -= h
    assert np.asarray(res.return_result)[0, 1] == pytest.approx((direct(plus) - direct(minus)) / (2 * h), abs=1e-6)
