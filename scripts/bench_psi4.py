"""Psi4 < 1.4 (Debian's 1.3.2): per-fragment wall time through qcmb_async vs a bare ``psi4 --json`` run.

One water monomer, HF/STO-3G (``scf_type pk``), 1 core. The same QCSchema v1 document is run

* bare: ``psi4 --scratch D --nthread 1 --json data.json`` in a fresh directory D (subprocess, no Python
  around it but this script), and
* through qcmb_async: a ``FragmentJob`` on the thread executor, i.e. ``qcengine.compute`` with the
  legacy harness, the QCEngine seams and the executor's bookkeeping; the fragment's wall time is
  the ``JobOutcome``'s (what qcmb_async records per fragment), the executor round trip is also shown.

Runs alternate (bare, qcmb_async, bare, ...) after one untimed warm-up of each. Target:
median qcmb_async fragment <= 1.5 x median bare run. Also shown: what the first psi4 call of a
process costs (the version probe) and what QCEngine's own availability check costs (it starts
``psi4 --module``; QCEngine's harness calls it 2-3 times per fragment). Timings are reported,
never asserted; the energies must agree to 1e-10 Eh (exit 1 otherwise).

    python scripts/bench_psi4.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from benchlib.measurement import WATER, CpuMeter, machine_busy
from qcelemental.models.v2 import AtomicInput, Molecule

TARGET = 1.5
NCORES, MEMORY = 1, 0.5


def bare_run(psi4: str, doc: dict[str, Any]) -> tuple[float, float]:
    """One ``psi4 --json`` run of ``doc`` in a fresh directory: (wall seconds, energy)."""
    with tempfile.TemporaryDirectory(suffix="_bare_psi4") as tmp:
        Path(tmp, "data.json").write_text(json.dumps(doc))
        env = {**os.environ, "PSI_SCRATCH": tmp, "TMPDIR": tmp}
        start = time.perf_counter()
        subprocess.run([psi4, "--scratch", tmp, "--nthread", str(NCORES), "--json", "data.json"], cwd=tmp, env=env,
                       check=True, capture_output=True)
        wall = time.perf_counter() - start
        out = json.loads(Path(tmp, "data.json").read_text())
    if not out.get("success"):
        raise RuntimeError(f"bare psi4 --json failed: {out.get('error')}")
    return wall, float(out["return_result"])


async def fragment_run(exe: Any, job: Any) -> tuple[float, float, float]:
    """One fragment through the thread executor: (fragment wall, executor round trip, energy)."""
    start = time.perf_counter()
    outcome = await exe.run(job)
    round_trip = time.perf_counter() - start
    if not outcome.success:
        raise RuntimeError(f"qcmb_async fragment failed: {outcome.error_type}: {outcome.error_message}")
    result = outcome.result  # an AtomicResult, or its dict
    energy = result.return_result if hasattr(result, "return_result") else result["return_result"]
    return outcome.wall_time, round_trip, float(energy)


def qcengine_found_seconds(repeats: int = 3) -> float | None:
    """Median seconds of QCEngine's own ``Psi4Harness.found()`` (it starts ``psi4 --module``), in a temp cwd."""
    from qcengine.programs.psi4 import Psi4Harness

    cwd = os.getcwd()
    times = []
    with tempfile.TemporaryDirectory(suffix="_qcng_found") as tmp:
        os.chdir(tmp)  # psi4 --module leaves timer.dat in the working directory
        try:
            for _ in range(repeats):
                start = time.perf_counter()
                Psi4Harness.found()
                times.append(time.perf_counter() - start)
        finally:
            os.chdir(cwd)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()

    import qcengine

    from qcmb_async import prime_qcengine
    from qcmb_async.executors.base import FragmentJob
    from qcmb_async.executors.threads import ThreadExecutor
    from qcmb_async.harnesses import psi4_legacy, register_harnesses

    psi4 = shutil.which("psi4")
    if psi4 is None:
        print("psi4 is not installed (apt-get install psi4)")
        return 1
    prime_qcengine()
    register_harnesses()
    t0 = time.perf_counter()
    version = qcengine.get_program("psi4").get_version()
    first_check = time.perf_counter() - t0
    if psi4_legacy.chosen_harness() != "legacy":
        print(f"psi4 {version} is >= 1.4: QCEngine's own harness runs it; nothing to compare")
        return 1

    water = Molecule.from_data(WATER)
    inp = AtomicInput(molecule=water, specification={"driver": "energy", "model": {"method": "hf", "basis": "sto-3g"},
                                                     "keywords": {"scf_type": "pk"}})
    config = qcengine.config.get_config(task_config={"ncores": NCORES, "memory": MEMORY})
    doc = psi4_legacy.v1_document(inp, config)
    job = FragmentJob(label="water", nbody=1, program="psi4", atomic_input=inp.model_dump(),
                      task_config={"ncores": NCORES, "memory": MEMORY, "scratch_directory": None, "retries": 0})
    idle = machine_busy(1.0)

    bare: list[float] = []
    frag: list[float] = []
    trip: list[float] = []
    energies: list[float] = []

    async def measure() -> None:
        async with ThreadExecutor(max_workers=1) as exe:
            bare_run(psi4, doc)  # warm-up: page cache, first import of psi4's modules
            await fragment_run(exe, job)
            for _ in range(args.repeats):
                wall, e_bare = bare_run(psi4, doc)
                bare.append(wall)
                wall, rt, e_frag = await fragment_run(exe, job)
                frag.append(wall)
                trip.append(rt)
                energies.extend([e_bare, e_frag])

    with CpuMeter() as meter:
        anyio.run(measure)
    found = qcengine_found_seconds()

    diff = max(energies) - min(energies)
    mb, mf, mt = statistics.median(bare), statistics.median(frag), statistics.median(trip)
    ratio = mf / mb
    print(f"\n== psi4 {version} ({psi4}): water HF/STO-3G, scf_type pk, {NCORES} core, {MEMORY} GiB, "
          f"{args.repeats} alternating runs ==")
    print(f"  machine busy before (other load): {idle:.2f} cores; during: {meter.busy_cores:.2f} busy, "
          f"{meter.other_cores:.2f} not ours")
    print(f"  {'':38}{'median [s]':>12}{'min [s]':>10}{'max [s]':>10}")
    for name, values in (("bare psi4 --json", bare), ("qcmb_async fragment (JobOutcome)", frag),
                         ("qcmb_async executor round trip", trip)):
        print(f"  {name:38}{statistics.median(values):12.3f}{min(values):10.3f}{max(values):10.3f}")
    print(f"  first psi4 call in a process (version probe, once): {first_check:.3f} s")
    if found is not None:
        print(f"  QCEngine's own Psi4Harness.found() (psi4 --module; 2-3 per fragment there): {found:.3f} s each")
    print(f"  max |energy difference| bare vs qcmb_async: {diff:.1e} Eh (E = {energies[0]:.10f})")
    print(f"target: qcmb_async fragment <= {TARGET} x bare psi4 --json: {ratio:.2f}x "
          f"({'met' if ratio <= TARGET else 'NOT met'}; executor round trip {mt / mb:.2f}x)")
    if diff > 1e-10:
        print("RESULTS DIFFER")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
