"""qcmb_async.frequencies with real PySCF (HF/STO-3G, water dimer).

* Harmonic analysis against PySCF's own (``pyscf.hessian.thermo.harmonic_analysis``).
* MBE(2) NoCP of a dimer is the dimer: analytic route against PySCF's analytic supersystem Hessian,
  finite-difference route against central differences of PySCF supersystem gradients computed here
  (0.1 cm⁻¹ each); the two routes agree (1 cm⁻¹).
* Finite differences share fragments: a displaced atom changes only its monomer and the dimer, so
  3 + 36 * 2 = 75 distinct fragments are computed instead of 37 * 3 = 111, all in one scheduling run.
* A second finite-difference run against the same store computes nothing.
"""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest
from qcelemental.models.v2 import Molecule

from qcmb_async import events as ev
from qcmb_async import frequencies, frequencies_sync
from qcmb_async._frequencies import harmonic_analysis
from tests.helpers import WATER_TRIMER, mbe_input, require_program

TIGHT = {"conv_tol": 1e-12, "conv_tol_grad": 1e-9}
DIMER = "\n".join(WATER_TRIMER.strip().splitlines()[:7])


def _dimer() -> Molecule:
    return Molecule.from_data(DIMER)


def _mf(mol: Molecule, coords: np.ndarray | None = None) -> Any:
    from pyscf import gto, scf

    xyz = np.asarray(mol.geometry if coords is None else coords, dtype=float).reshape(-1, 3)
    m = gto.M(atom=[(s, tuple(p)) for s, p in zip(mol.symbols, xyz, strict=True)], unit="Bohr", basis="sto-3g",
              verbose=0)
    mf = scf.RHF(m)
    mf.conv_tol, mf.conv_tol_grad = TIGHT["conv_tol"], TIGHT["conv_tol_grad"]
    mf.kernel()
    assert mf.converged
    return mf


def _thermo_freqs(mf: Any, hess: np.ndarray) -> np.ndarray:
    from pyscf.hessian import thermo

    n = mf.mol.natm
    h4 = hess.reshape(n, 3, n, 3).transpose(0, 2, 1, 3)
    # QCElemental's masses (most abundant isotope), which the molecule carries; PySCF defaults to averages.
    masses = np.array(_dimer().masses, dtype=float)
    out = thermo.harmonic_analysis(mf.mol, h4, imaginary_freq=False, mass=masses)
    return np.sort(np.asarray(out["freq_wavenumber"], dtype=float))


def test_harmonic_analysis_agrees_with_pyscf() -> None:
    require_program("pyscf")
    mol = _dimer()
    mf = _mf(mol)
    hess = mf.Hessian().kernel().transpose(0, 2, 1, 3).reshape(18, 18)
    ours, modes = harmonic_analysis(hess, mol.geometry, mol.masses)
    theirs = _thermo_freqs(mf, hess)
    assert ours.shape == (12,) and modes.shape == (18, 12)
    np.testing.assert_allclose(np.sort(ours), theirs, rtol=0, atol=0.01)
    assert ours.max() > 3000  # O-H stretches in cm⁻¹: a unit slip would show


def test_dimer_frequencies_routes_and_shared_fragments(tmp_path: Any) -> None:
    require_program("pyscf")
    mol = _dimer()
    inp = mbe_input("pyscf", "hf", "sto-3g", bsse="nocp", max_nbody=2, molecule=mol, keywords=TIGHT)
    store = tmp_path / "store.sqlite"

    seen: list[Any] = []

    async def both() -> tuple[Any, Any, Any]:
        # the blocking front inside a running event loop, as in a Jupyter cell
        analytic = frequencies_sync(inp, method="analytic", ncores=2, memory=2, store=None)
        fd = await frequencies(inp, method="finite-difference", ncores=2, memory=2, store=store,
                               on_event=seen.append)
        again = await frequencies(inp, method="finite-difference", ncores=2, memory=2, store=store)
        return analytic, fd, again

    analytic, fd, again = anyio.run(both)

    # independent references: the dimer itself, in PySCF
    mf = _mf(mol)
    super_analytic = mf.Hessian().kernel().transpose(0, 2, 1, 3).reshape(18, 18)
    x0 = np.asarray(mol.geometry, dtype=float).reshape(-1)
    step = fd.extras["step"]
    super_fd = np.empty((18, 18))
    for i in range(18):
        plus, minus = x0.copy(), x0.copy()
        plus[i] += step
        minus[i] -= step
        gp = _mf(mol, plus).nuc_grad_method().kernel().reshape(-1)
        gm = _mf(mol, minus).nuc_grad_method().kernel().reshape(-1)
        super_fd[:, i] = (gp - gm) / (2 * step)
    super_fd = (super_fd + super_fd.T) / 2

    np.testing.assert_allclose(analytic.frequencies, _thermo_freqs(mf, super_analytic), rtol=0, atol=0.1)
    np.testing.assert_allclose(fd.frequencies, _thermo_freqs(mf, super_fd), rtol=0, atol=0.1)
    np.testing.assert_allclose(fd.frequencies, analytic.frequencies, rtol=0, atol=1.0)
    assert analytic.energy == pytest.approx(mf.e_tot, abs=1e-9)
    np.testing.assert_allclose(fd.gradient, mf.nuc_grad_method().kernel(), rtol=0, atol=1e-7)

    # one scheduling run over distinct fragments: 3 reference + 2 new per displacement (36 of them)
    assert fd.extras["displacements"] == 36
    assert fd.extras["fragments_planned"] == 37 * 3
    assert fd.extras["fragments_distinct"] == 3 + 36 * 2
    assert fd.extras["fragments_computed"] == 75
    assert len(fd.extras["fragments"]) == 75
    # the same job again: every fragment from the store
    assert again.extras["fragments_computed"] == 0 and again.extras["fragments_cached"] == 75
    np.testing.assert_allclose(again.frequencies, fd.frequencies, rtol=0, atol=1e-6)

    # the finite-difference job is one step around its one scheduling run
    assert isinstance(seen[0], ev.StepStarted) and isinstance(seen[-1], ev.StepFinished)
    assert [type(e).__name__ for e in seen].count("RunStarted") == 1
    assert next(e for e in seen if isinstance(e, ev.RunStarted)).total == 75
    np.testing.assert_allclose(seen[0].geometry, np.asarray(mol.geometry).reshape(-1, 3), rtol=0, atol=0)
    end = seen[-1]
    assert (end.kind, end.step, end.computed, end.cached) == ("frequencies", 1, 75, 0)
    assert end.energy == pytest.approx(mf.e_tot, abs=1e-9)
    assert end.gradient_max == pytest.approx(np.abs(mf.nuc_grad_method().kernel()).max(), abs=1e-7)
    assert end.run_id == fd.extras["run_id"]


def test_bad_method_is_an_input_error() -> None:
    from qcmb_async import InputError

    inp = mbe_input("pyscf", "hf", "sto-3g", bsse="nocp", max_nbody=2, molecule=_dimer())
    with pytest.raises(InputError, match="finite-difference"):
        anyio.run(lambda: frequencies(inp, method="numerical"))


@pytest.mark.parametrize("step", [float("inf"), float("nan"), -0.005, 0.0, True, "0.005", 0.5])
def test_bad_finite_difference_step_is_an_input_error_before_anything_runs(tmp_path: Any, step: Any) -> None:
    require_program("pyscf")
    from qcmb_async import InputError

    inp = mbe_input("pyscf", "hf", "sto-3g", bsse="nocp", max_nbody=2, molecule=_dimer())
    seen: list[Any] = []
    message = "too large for a harmonic Hessian: at most 0.1 bohr" if step == 0.5 else \
        "step must be a finite positive number of bohr"
    with pytest.raises(InputError, match=message):
        frequencies_sync(inp, method="finite-difference", step=step, store=tmp_path / "s.sqlite",
                         on_event=seen.append)
    assert seen == []  # no step started
    assert not (tmp_path / "s.sqlite").exists()
