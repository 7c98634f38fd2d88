"""run(): from a plain script, and from inside a running event loop (as in Jupyter)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from qcmanybody.v2 import ManyBodyComputer

from qcmb_async import run, run_manybody
from tests.helpers import mbe_input, require_program

ROOT = Path(__file__).resolve().parents[1]


def test_run_from_plain_script() -> None:
    require_program("mopac")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "plain_script.py")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ref = ManyBodyComputer.from_manybodyinput(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3))
    assert float(proc.stdout.split()[-1]) == pytest.approx(ref.return_result, abs=1e-9)


@pytest.mark.asyncio
async def test_run_inside_running_loop() -> None:
    """Jupyter cells run inside an event loop: run() must still work (and not deadlock it)."""
    require_program("mopac")
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0.05)
    blocking = run(inp, ncores=2, memory=2)  # blocks this loop's thread, as a notebook cell would
    task.cancel()
    awaited = await run_manybody(inp, ncores=2, memory=2)
    assert blocking.return_result == pytest.approx(awaited.return_result, abs=1e-12)
    assert ticks >= 1
