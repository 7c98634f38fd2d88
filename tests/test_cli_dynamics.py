"""``qcmb-async optimize`` and ``qcmb-async frequencies`` as a user runs them (subprocesses, real PySCF).

Expected values come from PySCF run directly: NoCP MBE(2) of a water dimer is the dimer. A SIGKILLed
optimization, rerun with the same store, reuses every stored fragment and ends where an uninterrupted
one does; Ctrl-C (SIGINT) and SIGTERM stop one cleanly (exit 130/143, no worker left, store intact).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.helpers import (
    WATER_TRIMER,
    alive,
    mbe_input,
    require_module,
    require_program,
    sigkill_after_stored,
    stored_ok,
)
from tests.test_cli import ROOT, cli

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
    require_module("matplotlib")
    proc = cli("frequencies", str(inp), "--hessian", "finite-difference", "--ncores", "2", "--memory", "2",
               "-o", str(tmp_path / "freq.json"), "--timeline", str(tmp_path / "freq.png"), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "36 displacements: 111 fragment calculations planned, 75 distinct, 75 computed" in proc.stdout
    out = json.loads((tmp_path / "freq.json").read_text())
    data = json.loads(inp.read_text())
    energy, grad, ref = _pyscf(data["molecule"]["symbols"], np.asarray(data["molecule"]["geometry"]))
    # the step line: the reference geometry's energy and gradient, the one pass's fragment counts
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("Hessian"))
    assert f"E = {energy:.10f} Eh" in line and "fragments computed 75, from the store 0" in line
    assert f"grad rms {np.sqrt(np.mean(grad**2)):.2e} max {np.abs(grad).max():.2e} Eh/bohr" in line
    assert (tmp_path / "freq.png").read_bytes()[:4] == b"\x89PNG"
    # finite differences against the analytic supersystem: within the finite-difference error
    np.testing.assert_allclose(out["frequencies_cm-1"], ref, rtol=0, atol=1.0)
    assert len(out["frequencies_cm-1"]) == 12


def test_frequencies_command_bad_route(tmp_path: Path) -> None:
    inp = _dimer_json(tmp_path / "dimer.json")
    proc = cli("frequencies", str(inp), "--hessian", "numerical", cwd=tmp_path)
    assert proc.returncode == 2
    assert "numerical" in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--step", "0.01"), "--step applies to --hessian finite-difference only"),
    (("--hessian", "finite-difference", "--step", "inf"), "step must be a finite positive number of bohr"),
])
def test_frequencies_command_bad_step_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    from tests.test_cli import assert_clean_error

    inp = _dimer_json(tmp_path / "dimer.json")
    proc = cli("frequencies", str(inp), *args, cwd=tmp_path)
    assert_clean_error(proc, 2, message)
    assert "Hessian  E =" not in proc.stderr  # refused before the scheduling pass


@pytest.mark.parametrize(("args", "message"), [
    (("--maxiter", "0"), "maxiter must be a whole number of optimization cycles >= 1, got 0"),
    (("--convergence", "BOGUS"), "unknown geomeTRIC convergence set 'BOGUS'"),
    (("--constraints", "cons.txt"), "Mode ($freeze, $set, $scan) must be set"),
    (("--constraints", "binary.txt"), "is not UTF-8 text"),
])
def test_optimize_command_bad_options_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    require_module("geometric")
    require_program("pyscf")
    from tests.test_cli import assert_clean_error

    inp = _dimer_json(tmp_path / "dimer.json")
    (tmp_path / "cons.txt").write_text("distance 1 4\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00$freeze")
    proc = cli("optimize", str(inp), *args, cwd=tmp_path)
    assert_clean_error(proc, 2, message)
    assert "step " not in proc.stderr  # refused before the first gradient


@pytest.mark.slow
def test_optimize_command(tmp_path: Path) -> None:
    require_module("geometric")
    require_program("pyscf")
    inp = _dimer_json(tmp_path / "dimer.json")
    require_module("matplotlib")
    proc = cli("optimize", str(inp), "--ncores", "2", "--memory", "2", "-o", str(tmp_path / "opt.json"),
               "--timeline", str(tmp_path / "opt.png"), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "converged" in proc.stdout and "step   1" in proc.stderr
    assert (tmp_path / "opt.png").read_bytes()[:4] == b"\x89PNG" and "timeline written to" in proc.stderr
    out = json.loads((tmp_path / "opt.json").read_text())
    assert out["success"] is True
    mol = out["final_molecule"]
    energy, grad, _ = _pyscf(mol["symbols"], np.asarray(mol["geometry"]))
    assert out["final_energy"] == pytest.approx(energy, abs=1e-8)
    assert np.sqrt(np.mean(grad**2)) < 3e-4  # geomeTRIC's GAU criterion, checked by PySCF at the final geometry
    assert out["final_energy"] < out["energies"][0] - 1e-3
    # one live line per gradient, with the numbers of the JSON
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("step ")]
    assert len(lines) == len(out["steps"])
    for ln, rec in zip(lines, out["steps"], strict=True):
        assert f"E = {rec['energy']:.10f} Eh" in ln and f"max {rec['gradient_max']:.2e} Eh/bohr" in ln


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    env.pop("QCMB_ASYNC_STORE", None)
    return env


def _gone(procs: list[psutil.Process], within: float = 10.0) -> list[psutil.Process]:
    """Those of ``procs`` still alive after waiting up to ``within`` s for them to end."""
    deadline = time.monotonic() + within
    while alive(procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(procs)


@pytest.mark.slow
def test_sigkilled_optimize_resumes_from_the_store(tmp_path: Path) -> None:
    require_module("geometric")
    require_program("pyscf")
    from qcmb_async import optimize_sync
    from qcmb_async._core.store import ResultStore

    inp = _dimer_json(tmp_path / "dimer.json")
    store = tmp_path / "opt.sqlite"
    children: list[psutil.Process] = []
    cmd = [sys.executable, "-m", "qcmb_async", "optimize", str(inp), "--ncores", "2", "--memory", "2",
           "--store", str(store)]
    stored = sigkill_after_stored(cmd, _env(), tmp_path, store, 7, children)  # two gradients and more stored
    assert stored >= 7
    assert children and _gone(children) == []  # the workers follow their killed parent
    with ResultStore(store, readonly=True) as st:
        assert st.integrity_check() == "ok"
        assert [r["status"] for r in st.runs()].count("died") <= 1  # the gradient in flight, if any

    proc = cli("optimize", str(inp), "--ncores", "2", "--memory", "2", "--store", str(store),
               "-o", str(tmp_path / "resumed.json"), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    steps = resumed["steps"]
    assert stored < 3 * len(steps)  # the kill really came before the end
    # Three fragments per gradient (two waters and the dimer), each stored once. The finished gradients are
    # read from the store whole, and every stored fragment is read, not computed, exactly once.
    for rec in steps[:stored // 3]:
        assert (rec["computed"], rec["cached"]) == (0, 3), rec["step"]
    assert sum(rec["cached"] for rec in steps) == stored
    assert sum(rec["computed"] for rec in steps) == 3 * len(steps) - stored
    with ResultStore(store, readonly=True) as st:
        assert sum(r["status"] == "ok" for r in st.fragments()) == 3 * len(steps)

    # the same optimization, never interrupted and with no store
    ref = optimize_sync(inp, ncores=2, memory=2, store=None)
    assert ref.success and resumed["success"]
    assert len(steps) == len(ref.steps)
    assert resumed["final_energy"] == pytest.approx(ref.final_energy, abs=1e-8)
    np.testing.assert_allclose(np.asarray(resumed["final_molecule"]["geometry"]).reshape(-1, 3),
                               np.asarray(ref.final_molecule.geometry), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "message"), [(signal.SIGINT, 130, "error: interrupted"),
                                                         (signal.SIGTERM, 143, "error: terminated by SIGTERM")],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_optimize_cleanly(tmp_path: Path, signum: int, code: int, message: str) -> None:
    require_module("geometric")
    require_program("pyscf")
    from qcmb_async._core.store import ResultStore

    inp = _dimer_json(tmp_path / "dimer.json")
    store = tmp_path / "int.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "qcmb_async", "optimize", str(inp), "--ncores", "2", "--memory",
                             "2", "--store", str(store)], env=_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and stored_ok(store) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)  # the second gradient is under way
    assert proc.poll() is None, proc.communicate()
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signum)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 10
    assert proc.returncode == code, err
    assert message in err and "Traceback" not in err
    assert "step   1" in err  # the live lines of the finished steps were printed
    assert children and _gone(children) == []
    with ResultStore(store, readonly=True) as st:
        assert st.integrity_check() == "ok"
        rows = st.fragments()
        runs = st.runs()
    assert len(rows) >= 4 and all(r["status"] == "ok" for r in rows)
    # every gradient's run row says how it ended: none left 'running' (or 'died')
    assert {r["status"] for r in runs} <= {"ok", "interrupted"}
