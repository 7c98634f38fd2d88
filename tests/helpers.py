"""Shared test helpers: molecules, inputs, program requirements, interval analysis."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput

IN_CI = os.environ.get("CI", "").lower() == "true"

WATER_TRIMER = """
O -1.551007 -0.114520 0.000000
H -1.934259 0.762503 0.000000
H -0.599677 0.040712 0.000000
--
O 1.350625 0.111469 0.000000
H 1.680398 -0.373741 -0.758561
H 1.680398 -0.373741 0.758561
--
O 0.000000 0.000000 3.000000
H 0.000000 0.760000 3.600000
H 0.000000 -0.760000 3.600000
"""


def require_program(name: str) -> None:
    """Skip when ``name`` is missing on a laptop; fail under CI=true so nothing silently stops running."""
    import qcengine

    from qcmb_async.harnesses import register_harnesses

    register_harnesses()
    try:
        found = qcengine.get_program(name, check=False).found()
    except Exception:
        found = False
    if not found:
        msg = f"program {name!r} is not installed"
        if IN_CI:
            pytest.fail(f"{msg}, but CI=true: .ci/run must install it")
        pytest.skip(msg)


def require_module(name: str) -> Any:
    """``pytest.importorskip`` that fails under CI=true."""
    try:
        return __import__(name)
    except ImportError:
        if IN_CI:
            pytest.fail(f"Python module {name!r} is missing, but CI=true: install it in .ci/run")
        pytest.skip(f"Python module {name!r} is not installed")


def require_executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"executable {name!r} missing, but CI=true")
        pytest.skip(f"executable {name!r} not found")
    return path


def trimer(extra: str = "") -> Molecule:
    return Molecule.from_data(WATER_TRIMER + extra)


def waters(n: int, spacing: float = 3.5) -> Molecule:
    """``n`` well separated waters in a line, with explicit fragment charges (fast to build)."""
    blocks = []
    for i in range(n):
        x = i * spacing
        blocks.append(f"O {x:.4f} 0.0 0.0\nH {x + 0.757:.4f} 0.586 0.0\nH {x - 0.757:.4f} 0.586 0.0")
    mol = Molecule.from_data("\n--\n".join(blocks))
    return Molecule(**{**mol.model_dump(), "fragment_charges": [0.0] * n, "fragment_multiplicities": [1] * n})


def mbe_input(
    program: str,
    method: str,
    basis: str | None = None,
    *,
    driver: str = "energy",
    bsse: list[str] | str = "cp",
    max_nbody: int = 3,
    molecule: Molecule | None = None,
    keywords: dict[str, Any] | None = None,
    mb_keywords: dict[str, Any] | None = None,
) -> ManyBodyInput:
    """A single-level ManyBodyInput over the water trimer (or ``molecule``)."""
    bsse_list = [bsse] if isinstance(bsse, str) else bsse
    kw: dict[str, Any] = {"bsse_type": bsse_list, "max_nbody": max_nbody, **(mb_keywords or {})}
    return ManyBodyInput(
        molecule=molecule or trimer(),
        specification={
            "driver": driver,
            "keywords": kw,
            "specification": {
                "(auto)": {
                    "program": program,
                    "model": {"method": method, "basis": basis},
                    "driver": driver,
                    "keywords": keywords or {},
                }
            },
        },
    )


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Largest number of [start, end) intervals open at one moment."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    best = cur = 0
    for _, delta in points:
        cur += delta
        best = max(best, cur)
    return best


def intervals(result: Any) -> list[tuple[float, float]]:
    return [(f["start"], f["end"]) for f in result.extras["qcmb_async"]["fragments"] if f["start"] is not None]


def multilevel_input(molecule: Molecule | None = None) -> ManyBodyInput:
    """MOPAC multilevel input over the water trimer: PM7 monomers, AM1 dimers, PM6 supersystem."""
    return ManyBodyInput(
        molecule=molecule or trimer(),
        specification={
            "driver": "energy",
            "keywords": {"bsse_type": ["nocp"], "levels": {1: "pm7", 2: "am1", "supersystem": "pm6"}},
            "specification": {
                name: {"program": "mopac", "model": {"method": name}, "driver": "energy", "keywords": {}}
                for name in ("pm7", "am1", "pm6")
            },
        },
    )


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (``is_running`` also guards against pid reuse), zombies excluded."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def start_durable_run(store: Path, out: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """tests/scripts/durable_run.py in a subprocess: NWChem, 5 waters, CP, 3-body, into ``store`` and ``out``."""
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent / "scripts" / "durable_run.py"),
                             str(store), "nwchem", "5", "cp", "3", str(out)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stored_ok(path: Path) -> int:
    """Successful fragment rows in the result store at ``path`` (0 while it does not exist or is being created)."""
    from qcmb_async._core.store import ResultStore

    if not path.exists():
        return 0
    try:
        with ResultStore(path, readonly=True) as store:
            rows = store.fragments()
    except Exception:
        return 0
    return sum(r["status"] == "ok" for r in rows)


def sigkill_after_stored(cmd: list[str], env: dict[str, str], cwd: Path, store: Path, target: int,
                         children: list[psutil.Process] | None = None) -> int:
    """Run ``cmd``, SIGKILL it once ``store`` holds ``target`` results (or it ends); the results stored then.

    ``children``, when given, receives the process's descendants (workers, programs) as they were just
    before the kill, for checks that none outlives it.
    """
    import signal
    import time

    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if stored_ok(store) >= target:
            break
        time.sleep(0.002)
    if children is not None:
        with contextlib.suppress(psutil.Error):
            children.extend(psutil.Process(proc.pid).children(recursive=True))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return stored_ok(store)
