"""PySCF warm starts: the geometry-fitted extrapolation of a fragment's kept densities.

Expected values: the affine weights from plain arithmetic in the test; densities from PySCF run
directly (its converged SCF at each geometry).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qcmb_async.harnesses._pyscf_warm import WARM_START_HISTORY, _WarmStarts, affine_weights
from tests.helpers import require_program

WATER = np.array([[0.0, 0.0, -0.1294], [0.0, -1.4941, 1.0274], [0.0, 1.4941, 1.0274]])  # bohr


def test_affine_weights_reproduce_points_in_the_span() -> None:
    rng = np.random.default_rng(7)
    history = rng.normal(size=(4, 9))
    x = 0.2 * history[0] - 0.5 * history[1] + 0.3 * history[2] + 1.0 * history[3]  # weights sum to 1
    a = affine_weights(history, x)
    assert a.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(a @ history, x, atol=1e-6)
    # on a line: x2 = x1 + (x1 - x0) is the linear extrapolation 2*x1 - x0
    line = np.array([[0.0, 0.0], [1.0, 0.5]])
    np.testing.assert_allclose(affine_weights(line, np.array([2.0, 1.0])), [-1.0, 2.0], atol=1e-8)


def test_affine_weights_fall_back_to_the_newest_point() -> None:
    same = np.ones((3, 6))
    np.testing.assert_array_equal(affine_weights(same, np.full(6, 1.1)), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(affine_weights(same[:1], np.zeros(6)), [1.0])
    # nearly collinear points asked for a far point: no weight beyond the bound (noise amplification)
    near = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 1e-9]])
    a = affine_weights(near, np.array([3.0, 5.0]))
    assert np.abs(a).max() <= 10.0
    assert a.sum() == pytest.approx(1.0)


def _scf(coords: np.ndarray) -> Any:
    from pyscf import gto, scf

    mol = gto.M(atom=[("O", coords[0]), ("H", coords[1]), ("H", coords[2])], unit="bohr", basis="6-31g", verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-10
    mf.kernel()
    assert mf.converged
    return mol, mf


def test_extrapolated_guess_is_closer_than_the_last_density(tmp_path: Any, monkeypatch: Any) -> None:
    """Along a straight stretch of one O-H bond, three kept points predict the fourth's density better than
    the last density alone (PySCF's converged density at the new geometry is the reference)."""
    require_program("pyscf")
    monkeypatch.setenv("QCMB_ASYNC_WARM_START_DIR", str(tmp_path))
    warm = _WarmStarts()
    step = np.zeros_like(WATER)
    step[1] = [0.0, -0.04, 0.03]
    key = ("test", "water")
    for k in range(3):
        mol, mf = _scf(WATER + k * step)
        warm.keep(key, mol, (mf.mo_coeff, mf.mo_occ))
    mol, mf = _scf(WATER + 3 * step)
    reference = mf.make_rdm1()
    guess = warm.guess(key, mol)
    assert guess is not None
    s = mol.intor_symmetric("int1e_ovlp")
    assert np.trace(guess @ s) == pytest.approx(10.0, abs=1e-8)  # electrons
    np.testing.assert_allclose(guess @ s @ guess, 2 * guess, atol=1e-8)  # idempotent (closed shell)
    last_only = _WarmStarts()
    monkeypatch.setenv("QCMB_ASYNC_WARM_START_DIR", str(tmp_path / "one"))
    prev_mol, prev_mf = _scf(WATER + 2 * step)
    last_only.keep(key, prev_mol, (prev_mf.mo_coeff, prev_mf.mo_occ))
    single = last_only.guess(key, mol)
    assert single is not None
    err_extrapolated = np.abs(guess - reference).max()
    err_single = np.abs(single - reference).max()
    assert err_extrapolated < 0.2 * err_single, (err_extrapolated, err_single)


def test_history_is_bounded_and_far_points_are_ignored(tmp_path: Any, monkeypatch: Any) -> None:
    require_program("pyscf")
    monkeypatch.setenv("QCMB_ASYNC_WARM_START_DIR", str(tmp_path))
    warm = _WarmStarts()
    mol, mf = _scf(WATER)
    key = ("test", "bounded")
    for _ in range(WARM_START_HISTORY + 3):
        warm.keep(key, mol, (mf.mo_coeff, mf.mo_occ))
    assert len(warm._points(key)) == WARM_START_HISTORY
    far, _ = _scf(WATER + np.array([0.0, 0.0, 0.6]) * np.array([[0], [1], [0]]))  # one H moved 0.6 bohr
    assert warm.guess(key, far) is None
    assert warm.guess(("test", "never seen"), mol) is None


def _water_input(coords: np.ndarray) -> Any:
    from qcelemental.models.v2 import AtomicInput, Molecule

    mol = Molecule(symbols=["O", "H", "H"], geometry=coords, molecular_charge=0, molecular_multiplicity=1,
                   fix_com=True, fix_orientation=True)
    return AtomicInput(molecule=mol, specification={
        "driver": "energy", "model": {"method": "hf", "basis": "6-31g"},
        "keywords": {"warm_start": True, "conv_tol": 1e-10}})


def test_a_warm_start_that_does_not_converge_falls_back_to_the_cold_guess(tmp_path: Any, monkeypatch: Any) -> None:
    """The warm-started SCF is cut to 2 cycles (it cannot reach 1e-10 from another geometry's density in 2):
    the harness starts again from PySCF's own guess, the fragment succeeds with the cold-start energy, and
    the result says so. With the warm attempt uncut, the same guess is used and no fallback happens."""
    require_program("pyscf")
    import qcengine
    from pyscf import gto, scf

    from qcmb_async.harnesses import _pyscf_warm, register_harnesses

    register_harnesses()
    monkeypatch.setenv("QCMB_ASYNC_WARM_START_DIR", str(tmp_path))
    shifted = WATER.copy()
    shifted[1] += [0.0, -0.12, 0.08]
    mol = gto.M(atom=[(s, tuple(p)) for s, p in zip("OHH", shifted, strict=True)], unit="Bohr", basis="6-31g",
                verbose=0)
    ref = scf.RHF(mol)
    ref.conv_tol = 1e-10
    cold_energy = ref.kernel()  # PySCF directly, from its own guess

    first = qcengine.compute(_water_input(WATER), "pyscf", raise_error=True, return_version=2)
    assert first.extras["pyscf"]["warm_start"] is False  # nothing kept yet: cold
    monkeypatch.setattr(_pyscf_warm, "WARM_START_MAX_CYCLE", 2)
    out = qcengine.compute(_water_input(shifted), "pyscf", raise_error=True, return_version=2)
    extras = out.extras["pyscf"]
    assert extras["warm_start"] is False
    assert extras["warm_start_fallback"]["warm_cycles"] == 2 and extras["warm_start_fallback"]["warm_max_cycle"] == 2
    assert out.properties.scf_iterations > 2  # the cold SCF that gave the result took its own cycles
    assert out.return_result == pytest.approx(cold_energy, abs=1e-8)
    monkeypatch.setattr(_pyscf_warm, "WARM_START_MAX_CYCLE", None)
    again = qcengine.compute(_water_input(shifted), "pyscf", raise_error=True, return_version=2)
    assert again.extras["pyscf"]["warm_start"] is True and "warm_start_fallback" not in again.extras["pyscf"]
    assert again.return_result == pytest.approx(cold_energy, abs=1e-8)
