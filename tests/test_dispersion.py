"""Dispersion-corrected DFT through the PySCF harness (``b3lyp-d3bj``, ``b3lyp-d4``), against independent parts.

The CP interaction energy of the S22 water dimer at B3LYP-D3(BJ) must be the CP DFT part, from
PySCF ghost-atom jobs run here without dispersion, plus the D3(BJ) interaction energy of the real
atoms alone (pyscf-dispersion's DFT-D3 library called directly: D3 of the dimer minus D3 of each
monomer, no ghosts). Likewise at B3LYP-D4 (D4 with its three-body term, as PySCF applies it). The
CP interaction gradient is checked the same way (analytic parts) and against central finite
differences of the independently computed interaction energy.

Needs pyscf and pyscf-dispersion (``pip install 'qcmb_async[pyscf]'``); skipped without them,
failing under CI=true.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from qcelemental.models.v2 import Molecule

import qcmb_async
from tests.helpers import mbe_input, require_module, require_program

# S22 water dimer (Jurecka et al. 2006), Angstrom: the same geometry as tests/test_pyscf_harness.py.
S22_WATER_DIMER = """
units angstrom
no_com
no_reorient
0 1
O  -1.551007  -0.114520   0.000000
H  -1.934259   0.762503   0.000000
H  -0.599677   0.040712   0.000000
--
0 1
O   1.350625   0.111469   0.000000
H   1.680398  -0.373741  -0.758561
H   1.680398  -0.373741   0.758561
"""
A, B = [0, 1, 2], [3, 4, 5]
BASIS = "sto-3g"  # the composition is what is tested, not the chemistry: the smallest basis keeps it quick


@pytest.fixture(autouse=True)
def _needs() -> None:
    require_program("pyscf")
    require_module("pyscf.dispersion")


def _dimer() -> Molecule:
    return Molecule.from_data(S22_WATER_DIMER)


def _dft(symbols: Sequence[str], xyz: np.ndarray, real: Sequence[int], *, gradient: bool = False) -> tuple[float, Any]:
    """B3LYP (no dispersion) of the atoms ``real``, the others as PySCF ghost atoms: energy, gradient (natom x 3)."""
    from pyscf import dft, gto, lib

    atoms = [(s if i in real else f"ghost-{s}", tuple(p)) for i, (s, p) in enumerate(zip(symbols, xyz, strict=True))]
    mol = gto.M(atom=atoms, unit="Bohr", basis=BASIS, verbose=0)
    mf = dft.RKS(mol)
    mf.xc = "b3lyp"
    mf.conv_tol = 1e-10  # the harness's default
    with lib.with_omp_threads(1):  # a shared 2-core machine: OpenMP spinning would only slow this down
        energy = mf.kernel()
        assert mf.converged
        grad = mf.nuc_grad_method().kernel() if gradient else None
    return float(energy), grad


def _disp(symbols: Sequence[str], xyz: np.ndarray, atoms: Sequence[int], version: str) -> tuple[float, np.ndarray]:
    """D3(BJ) (two-body) or D4 (with ATM) energy and gradient of the atoms ``atoms`` alone; gradient natom x 3."""
    from pyscf import gto
    from pyscf.dispersion import dftd3, dftd4

    mol = gto.M(atom=[(symbols[i], tuple(xyz[i])) for i in atoms], unit="Bohr", basis=BASIS, verbose=0)
    model = (dftd3.DFTD3Dispersion(mol, "b3lyp", version="d3bj", atm=False) if version == "d3bj"
             else dftd4.DFTD4Dispersion(mol, "b3lyp", atm=True))
    out = model.get_dispersion(grad=True)
    grad = np.zeros((len(symbols), 3))
    grad[list(atoms)] = out["gradient"]
    return float(out["energy"]), grad


def _reference(symbols: Sequence[str], xyz: np.ndarray, version: str, *,
               gradient: bool = False) -> tuple[float, float, Any, Any]:
    """CP interaction energy parts: (DFT part, dispersion part, DFT gradient, dispersion gradient)."""
    e_ab, g_ab = _dft(symbols, xyz, A + B, gradient=gradient)
    e_a, g_a = _dft(symbols, xyz, A, gradient=gradient)  # B as ghosts: the dimer's basis
    e_b, g_b = _dft(symbols, xyz, B, gradient=gradient)
    d_ab, dg_ab = _disp(symbols, xyz, A + B, version)
    d_a, dg_a = _disp(symbols, xyz, A, version)  # real atoms only: ghosts have no dispersion
    d_b, dg_b = _disp(symbols, xyz, B, version)
    dft_grad = g_ab - g_a - g_b if gradient else None
    return e_ab - e_a - e_b, d_ab - d_a - d_b, dft_grad, dg_ab - dg_a - dg_b


def test_cp_b3lyp_d3bj_is_cp_dft_plus_d3_of_real_atoms_energy_and_gradient() -> None:
    mol = _dimer()
    symbols = list(mol.symbols)
    xyz = np.asarray(mol.geometry, dtype=float).reshape(-1, 3)
    inp = mbe_input("pyscf", "b3lyp-d3bj", BASIS, driver="gradient", bsse="cp", max_nbody=2, molecule=mol,
                    mb_keywords={"return_total_data": False})
    result = qcmb_async.run(inp, ncores=2, memory=2, store=None)

    e_dft, e_disp, g_dft, g_disp = _reference(symbols, xyz, "d3bj", gradient=True)
    assert abs(e_disp) > 1e-4  # dispersion matters here: leaving it out (or counting ghosts) would show
    ie = result.properties.cp_corrected_interaction_energy
    assert ie == pytest.approx(e_dft + e_disp, abs=1e-8)
    grad = np.asarray(result.properties.cp_corrected_interaction_gradient, dtype=float).reshape(-1, 3)
    np.testing.assert_allclose(grad, g_dft + g_disp, rtol=0, atol=1e-7)

    # against central differences of the independently computed interaction energy
    h = 1e-3
    for atom, axis in ((3, 0), (2, 0), (3, 1)):  # along the hydrogen bond and across it
        values = []
        for sign in (1.0, -1.0):
            moved = xyz.copy()
            moved[atom, axis] += sign * h
            values.append(sum(_reference(symbols, moved, "d3bj")[:2]))
        fd = (values[0] - values[1]) / (2 * h)
        # PySCF's analytic DFT gradient leaves out the grid's response (~3e-6 Eh/bohr here); the D3
        # part alone is 7e-5 to 1.7e-4 Eh/bohr on the first two coordinates
        assert grad[atom, axis] == pytest.approx(fd, abs=2e-5), (atom, axis)
    assert abs(g_disp[3, 0]) > 1e-4


def test_cp_b3lyp_d4_is_cp_dft_plus_d4_of_real_atoms() -> None:
    mol = _dimer()
    symbols = list(mol.symbols)
    xyz = np.asarray(mol.geometry, dtype=float).reshape(-1, 3)
    inp = mbe_input("pyscf", "B3LYP-D4", BASIS, bsse="cp", max_nbody=2, molecule=mol)
    result = qcmb_async.run(inp, ncores=2, memory=2, store=None)
    e_dft, e_disp, _, _ = _reference(symbols, xyz, "d4")
    assert abs(e_disp) > 1e-4
    d3 = _reference(symbols, xyz, "d3bj")[1]
    assert abs(e_disp - d3) > 1e-5  # D4 is not D3 under another name
    assert result.properties.cp_corrected_interaction_energy == pytest.approx(e_dft + e_disp, abs=1e-8)


def test_a_ghosted_job_has_exactly_the_real_atoms_dispersion() -> None:
    """Harness level: a water with its partner as ghosts, B3LYP-D4 minus B3LYP = D4 of the real water alone.

    PySCF itself would take the ghosts into D4's charge model (-1.3e-7 Eh instead of -3.1e-4 Eh);
    gradient rows of the ghosts carry no dispersion; the Hessian's dispersion block is a central
    difference (1e-5 bohr, as PySCF's) of D4 gradients of the real atoms, zero for the ghosts.
    """
    import qcengine
    from qcelemental.models.v2 import AtomicInput

    from qcmb_async.harnesses import register_harnesses

    register_harnesses()
    mol = _dimer()
    ghosted = Molecule(**{**mol.model_dump(), "real": [True] * 3 + [False] * 3})
    symbols = list(mol.symbols)
    xyz = np.asarray(mol.geometry, dtype=float).reshape(-1, 3)
    out = {}
    for method in ("b3lyp-d4", "b3lyp"):
        inp = AtomicInput(molecule=ghosted, specification={"driver": "hessian",
                                                           "model": {"method": method, "basis": BASIS}})
        out[method] = qcengine.compute(inp, "pyscf", raise_error=True, task_config={"ncores": 1}, return_version=2)
    energy, gradient = _disp(symbols, xyz, A, "d4")
    with_d4, without = out["b3lyp-d4"].properties, out["b3lyp"].properties
    assert with_d4.return_energy - without.return_energy == pytest.approx(energy, abs=1e-10)
    assert abs(energy) > 1e-4
    np.testing.assert_allclose(np.asarray(with_d4.return_gradient) - np.asarray(without.return_gradient), gradient,
                               rtol=0, atol=1e-10)
    eps = 1e-5
    hess = np.zeros((18, 18))
    for k in range(9):  # the real atoms' coordinates
        moved = [xyz.copy(), xyz.copy()]
        moved[0].reshape(-1)[k] += eps
        moved[1].reshape(-1)[k] -= eps
        column = (_disp(symbols, moved[0], A, "d4")[1] - _disp(symbols, moved[1], A, "d4")[1]) / (2 * eps)
        hess[k] = column.reshape(-1)
    diff = np.asarray(with_d4.return_hessian) - np.asarray(without.return_hessian)
    np.testing.assert_allclose(diff, hess, rtol=0, atol=1e-8)
