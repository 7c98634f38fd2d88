"""``qcmb-async optimize`` and ``qcmb-async frequencies`` as a user runs them (subprocesses, real PySCF).

Expected values come from PySCF run directly: NoCP MBE(2) of a water dimer is the dimer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import WATER_TRIMER, mbe_input, require_module, require_program
from tests.test_cli import cli

DIMER = "\n".join(WATER_TRIMER.strip().splitlines()[:7])


def _dimer_json(path: Path) -> Path:
    from qcelemental.models.v2 import Molecule

    inp = mbe_input("pyscf", "hf", "sto-3g", bsse="nocp", max_nbody=2, molecule=Molecule.from_data(DIMER),
                    keywords={"conv_tol": 1e-11, "conv_tol_grad": 1e-8})
    path.write_text(inp.model_dump_json())
    return path


def _pyscf(symbols: list[str], coords_bohr: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    from pyscf import gto, scf
    from pyscf.hessian import thermo

    mol = gto.M(atom=[(s, tuple(p)) for s, p in zip(symbols, coords_bohr.reshape(-1, 3), strict=True)], unit="Bohr",
                basis="sto-3g", verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol, mf.conv_tol_grad = 1e-11, 1e-8
    mf.kernel()
    from qcelemental import periodictable

    masses = np.array([periodictable.to_mass(s) for s in symbols])
    freqs = thermo.harmonic_analysis(mol, mf.Hessian().kernel(), imaginary_freq=False, mass=masses)
    return mf.e_tot, np.asarray(mf.nuc_grad_method().kernel()), np.sort(freqs["freq_wavenumber"])


def test_frequencies_command(tmp_path: Path) -> None:
    require_program("pyscf")
    inp = _dimer_json(tmp_path / "dimer.json")
    proc = cli("frequencies", str(inp), "--hessian", "finite-difference", "--ncores", "2", "--memory", "2",
               "-o", str(tmp_path / "freq.json"), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "36 displacements: 111 fragment calculations planned, 75 distinct, 75 computed" in proc.stdout
    out = json.loads((tmp_path / "freq.json").read_text())
    data = json.loads(inp.read_text())
    _, _, ref = _pyscf(data["molecule"]["symbols"], np.asarray(data["molecule"]["geometry"]))
    # finite differences against the analytic supersystem: within the finite-difference error
    np.testing.assert_allclose(out["frequencies_cm-1"], ref, rtol=0, atol=1.0)
    assert len(out["frequencies_cm-1"]) == 12


def test_frequencies_command_bad_route(tmp_path: Path) -> None:
    inp = _dimer_json(tmp_path / "dimer.json")
    proc = cli("frequencies", str(inp), "--hessian", "numerical", cwd=tmp_path)
    assert proc.returncode == 2
    assert "numerical" in proc.stderr


@pytest.mark.slow
def test_optimize_command(tmp_path: Path) -> None:
    require_module("geometric")
    require_program("pyscf")
    inp = _dimer_json(tmp_path / "dimer.json")
    proc = cli("optimize", str(inp), "--ncores", "2", "--memory", "2", "-o", str(tmp_path / "opt.json"),
               cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "converged" in proc.stdout and "step   1" in proc.stderr
    out = json.loads((tmp_path / "opt.json").read_text())
    assert out["success"] is True
    mol = out["final_molecule"]
    energy, grad, _ = _pyscf(mol["symbols"], np.asarray(mol["geometry"]))
    assert out["final_energy"] == pytest.approx(energy, abs=1e-8)
    assert np.sqrt(np.mean(grad**2)) < 3e-4  # geomeTRIC's GAU criterion, checked by PySCF at the final geometry
    assert out["final_energy"] < out["energies"][0] - 1e-3
