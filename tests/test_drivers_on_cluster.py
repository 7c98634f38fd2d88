"""The drivers that move atoms on a batch cluster: ``cluster=`` / ``--cluster`` start ONE cluster for the whole job.

Real single-node SLURM (the ``slurm`` fixture of tests/test_hpc.py), single-core jobs. The reference is
PySCF run directly on the supersystem (NoCP MBE(2) of a dimer is the dimer). Fragment sizes are given
explicitly: sizing them automatically from the jobs is issue 21 section 2, not checked here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import require_module, require_program
from tests.test_cli import cli
from tests.test_hpc import JOB, _wait_no_jobs, slurm  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]
INPUT = ROOT / "docs" / "examples" / "input.json"  # water dimer at its HF/STO-3G NoCP MBE(2) minimum


def _pyscf_energy_and_gradient(symbols: list[str], coords: np.ndarray) -> tuple[float, np.ndarray]:
    from pyscf import gto, scf

    mol = gto.M(atom=[(s, tuple(p)) for s, p in zip(symbols, coords.reshape(-1, 3), strict=True)], unit="Bohr",
                basis="sto-3g", verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-10
    energy = mf.kernel()
    return float(energy), np.asarray(mf.nuc_grad_method().kernel())


@pytest.mark.slow
def test_frequencies_analytic_on_a_slurm_cluster_from_the_command_line(slurm: str, tmp_path: Path) -> None:  # noqa: F811 - fixture
    require_program("pyscf")
    require_module("geometric")
    out = tmp_path / "freq.json"
    proc = cli("frequencies", str(INPUT), "--cluster", "slurm", "--job-cores", "1", "--job-memory", "1",
               "--max-jobs", "2", "--walltime", "00:15:00", "--fragment-ncores", "1", "--fragment-memory", "0.5",
               "--no-store", "-o", str(out), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    mol = json.loads(INPUT.read_text())["molecule"]
    energy, grad = _pyscf_energy_and_gradient(mol["symbols"], np.asarray(mol["geometry"]))
    assert data["energy"] == pytest.approx(energy, abs=1e-8)
    np.testing.assert_allclose(np.asarray(data["gradient"]), grad, atol=1e-6)
    assert len(data["frequencies_cm-1"]) == 12
    assert _wait_no_jobs() == []  # the cluster was closed with the job


@pytest.mark.slow
def test_optimize_takes_cluster_and_level_barrier(slurm: str) -> None:  # noqa: F811 - fixture
    require_program("pyscf")
    require_module("geometric")
    from qcmb_async import optimize_sync

    opt = optimize_sync(str(INPUT), cluster={**JOB, "max_jobs": 2, "host": "127.0.0.1"}, level_barrier=True,
                        fragment_ncores=1, fragment_memory=0.5, store=None, maxiter=3)
    assert opt.success and opt.extras["executor"] == "dask"
    workers = {f["worker"] for res in opt.trajectory for f in res.extras["qcmb_async"]["fragments"]}
    assert workers and all(w.startswith("tls://") for w in workers), workers
    energy, _ = _pyscf_energy_and_gradient([str(s) for s in opt.final_molecule.symbols],
                                           np.asarray(opt.final_molecule.geometry))
    assert opt.steps[0]["energy"] == pytest.approx(
        _pyscf_energy_and_gradient([str(s) for s in opt.final_molecule.symbols],
                                   np.asarray(json.loads(INPUT.read_text())["molecule"]["geometry"]))[0], abs=1e-8)
    assert opt.final_energy == pytest.approx(energy, abs=1e-8)
    assert _wait_no_jobs() == []
