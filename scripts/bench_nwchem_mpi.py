"""NWChem on many cores: MPI ranks per fragment (moldable allotment) against one rank per fragment.

Steps (``all`` runs record, sim and measure in turn):

* ``record``: a real NWChem run here, one rank per fragment on 2 cores, whose per-fragment wall times
  become a workload: ``--workload tz`` (default) the cyclic water pentamer, NoCP MBE(3), HF/cc-pVTZ
  (fragments of 58, 116 and 174 basis functions) -> ``scripts/results/nwchem-pentamer-tz3.json``;
  ``--workload hexamer`` the water hexamer, CP MBE(3), HF/6-31G -> ``nwchem-hexamer-cp3.json``.
* ``sim``: the recorded workloads (those, and the NWChem mixed workload ``mixed-workload.json``)
  replayed by the real scheduler on virtual cores, one rank per fragment (``fragment_ncores=1``)
  against the moldable allotment (NWChem fragments as MPI ranks), for several true parallel fractions
  of NWChem (the scheduler itself plans with the registry's prior): makespan, tail (the end of the
  run with fewer than half the cores busy) and lower bound of each.
* ``measure``: real wall time on this machine of a small NWChem MBE (three waters of the ring
  octamer, CP MBE(2), HF/6-31G): one rank per fragment, two ranks per fragment, and the
  scheduler choosing; the energies must agree. Then one larger fragment on 1 and 2 ranks.
* ``fragment``: only that larger fragment (``--workload tz``: a cc-pVTZ water trimer), with NWChem's
  own rank-0 CPU time and the parallel fraction it implies.

    PYTHONPATH=$PWD python scripts/bench_nwchem_mpi.py [record|sim|measure|fragment|all] [--cores 64 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RECORDED = RESULTS / "nwchem-hexamer-cp3.json"
#: Water ring pentamer, NoCP MBE(3), HF/cc-pVTZ: fragments of 58, 116 and 174 basis functions, the trimers
#: above MPI_MIN_SIZE (150), so ranks are allowed where they pay.
RECORDED_TZ = RESULTS / "nwchem-pentamer-tz3.json"
MIXED = RESULTS / "mixed-workload.json"
FRACTIONS = (0.6, 0.8, 0.9)  # true NWChem parallel fractions the simulated executor applies


def _hexamer_input() -> object:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib.molecules import hexamer, mbe

    return mbe(hexamer(), "nwchem", "hf", "6-31g", bsse="cp", max_nbody=3)


def _pentamer_tz_input() -> object:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib.molecules import check_geometry, mbe, molecule, water_ring

    ring = check_geometry(molecule(water_ring(5)), "water pentamer")
    return mbe(ring, "nwchem", "hf", "cc-pvtz", bsse="nocp", max_nbody=3)


def record(which: str) -> None:
    """Run a workload once on 2 cores, one rank per fragment, and save its measured fragment times.

    ``which``: ``"tz"`` (the pentamer at cc-pVTZ, fragments of three sizes) or ``"hexamer"`` (CP 6-31G).
    """
    import os
    import tempfile

    from qcmb_async import run
    from qcmb_async.simulate import Workload

    if which == "tz":
        inp, name, path = _pentamer_tz_input(), "water ring pentamer, NoCP MBE(3), NWChem HF/cc-pVTZ", RECORDED_TZ
    else:
        inp, name, path = _hexamer_input(), "water hexamer, CP MBE(3), NWChem HF/6-31G", RECORDED
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:  # a fresh store: every fragment computed, none reused
        t0 = time.perf_counter()
        result = run(inp, ncores=2, memory=2, fragment_ncores=1, store=Path(tmp) / "record.sqlite")
        wall = time.perf_counter() - t0
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    work = Workload.from_run(result, inp, name=name)
    work.source = (f"qcmb_async run here, 2 cores shared with other jobs (load average {load[0]:.1f} before, "
                   f"{os.getloadavg()[0]:.1f} after), one rank per fragment, per-fragment end - start, {stamp}; "
                   f"run wall {wall:.1f} s")
    work.save(path)
    print(f"recorded {len(work)} fragments, {work.total:.1f} one-core s, longest {work.longest:.2f} s, "
          f"run wall {wall:.1f} s -> {path}")


def sim(cores: list[int]) -> None:
    """Makespan, tail and lower bound on virtual cores: one rank per fragment against the moldable allotment.

    ``tail`` is :meth:`~qcmb_async.simulate.SimulationResult.idle_tail`: the end of the run with fewer
    than half the cores busy. Each lower bound is that of its own rules (one rank each: longest
    fragment or work / cores; moldable: ``lower_bound`` with the true parallel fraction).
    """
    from qcmb_async.simulate import Workload, simulate

    print("| workload | cores | fragments | one-core total s | longest s | true f | 1 rank: makespan / tail / LB s | "
          "moldable: makespan / tail / LB s | on >1 rank | makespan shorter by |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in (RECORDED_TZ, RECORDED, MIXED):
        if not path.exists():
            print(f"| {path.name}: not recorded (run `record` first) |")
            continue
        work = Workload.load(path)
        for ncores in cores:
            for f in FRACTIONS:
                fractions = {"nwchem": f}
                one = simulate(work, ncores, fragment_ncores=1, parallel_fraction=fractions)
                mold = simulate(work, ncores, parallel_fraction=fractions)
                print(f"| {work.name} | {ncores} | {len(work)} | {work.total:.1f} | {work.longest:.2f} | {f} | "
                      f"{one.makespan:.2f} / {one.idle_tail():.2f} / {one.lower_bound:.2f} | "
                      f"{mold.makespan:.2f} / {mold.idle_tail():.2f} / {mold.lower_bound:.2f} | "
                      f"{mold.multi_core_fragments} | {1 - mold.makespan / one.makespan:.0%} |")


def measure(repeat: int) -> None:
    """Wall time here of a small NWChem MBE, one rank per fragment against the scheduler's choice."""
    import numpy as np

    from qcmb_async import run

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib.molecules import mbe, ring_octamer
    from qcelemental.models.v2 import Molecule

    octa = ring_octamer()
    # Three waters of the octamer ring: a small CP MBE(2) (9 fragments) that runs in seconds.
    geom = octa.geometry[:9]
    tri = Molecule(symbols=octa.symbols[:9], geometry=geom, fragments=[[0, 1, 2], [3, 4, 5], [6, 7, 8]],
                   fragment_charges=[0.0] * 3, fragment_multiplicities=[1] * 3, fix_symmetry="c1")
    inp = mbe(tri, "nwchem", "hf", "6-31g", bsse="cp", max_nbody=2)
    modes = (("fragment_ncores=1 (1 rank)", {"fragment_ncores": 1}),
             ("fragment_ncores=2 (2 ranks each)", {"fragment_ncores": 2}),
             ("scheduler chooses (moldable)", {}))
    walls: dict[str, list[float]] = {name: [] for name, _ in modes}
    energies: dict[str, float] = {}
    for _ in range(repeat):
        for name, opts in modes:
            t0 = time.perf_counter()
            res = run(inp, ncores=2, memory=2, store=None, **opts)
            walls[name].append(time.perf_counter() - t0)
            energies[name] = float(res.properties.return_energy)
            ranks = sorted({r["cores"] for r in res.extras["qcmb_async"]["fragments"]})
            print(f"{name}: {walls[name][-1]:.2f} s, cores per fragment {ranks}", flush=True)
    diff = float(np.ptp(list(energies.values())))
    for name, w in walls.items():
        print(f"{name}: median {statistics.median(w):.2f} s (min {min(w):.2f}, max {max(w):.2f}, n={len(w)})")
    print(f"energy difference {diff:.1e} Eh")
    fragment(repeat)


def fragment(repeat: int, which: str = "benzene") -> None:
    """One larger fragment on 1 and 2 ranks: wall, NWChem's own CPU time of rank 0, and energy.

    ``which``: ``"benzene"`` (benzene + 2 waters, HF/6-31G gradient) or ``"tz"`` (a water trimer of the
    recorded pentamer, HF/cc-pVTZ energy: 174 basis functions, the kind of fragment that gets ranks).
    The measured parallel fraction is Amdahl's from rank 0's CPU seconds: ``f = (1 - t2 / t1) / (1 - 1 / 2)``.
    """
    import re

    from qcelemental.models.v2 import AtomicInput, Molecule

    from qcmb_async._core.contract import FragmentJob
    from qcmb_async._qcengine.worker import execute_job

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib.molecules import benzene_waters, molecule, water_ring

    if which == "tz":
        ring = molecule(water_ring(5)[:3])
        mol = Molecule(symbols=ring.symbols, geometry=ring.geometry, fix_symmetry="c1")
        spec = {"driver": "energy", "model": {"method": "hf", "basis": "cc-pvtz"},
                "keywords": {"scf__thresh": 1e-10, "scf__tol2e": 1e-14}}
        name = "water trimer HF/cc-pVTZ energy"
    else:
        bw = benzene_waters(2)
        mol = Molecule(symbols=bw.symbols, geometry=bw.geometry, fix_symmetry="c1")
        spec = {"driver": "gradient", "model": {"method": "hf", "basis": "6-31g"},
                "keywords": {"scf__thresh": 1e-10, "scf__tol2e": 1e-14}}
        name = "benzene + 2 waters HF/6-31G gradient"
    inp = AtomicInput(molecule=mol, specification=spec)
    walls: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}
    energy: dict[int, float] = {}
    for _ in range(repeat):
        for ranks in (1, 2):
            job = FragmentJob(label=f"bench-{ranks}", nbody=1, program="nwchem", atomic_input=inp,
                              task_config={"ncores": ranks, "memory": 1.0, "retries": 0})
            out = execute_job(job)
            assert out.success, out.error_message
            walls[ranks].append(out.end - out.start)
            energy[ranks] = float(out.result.properties.return_energy)
            # NWChem's closing line: " Total times  cpu:        6.6s     wall:        7.1s" (rank 0).
            times = re.findall(r"Total times\s+cpu:\s+([\d.]+)s\s+wall:\s+([\d.]+)s", out.result.stdout or "")
            if times:
                cpu[ranks].append(float(times[-1][0]))
            print(f"{name} ({len(mol.symbols)} atoms), {ranks} rank(s): wall {walls[ranks][-1]:.2f} s, rank-0 CPU "
                  f"{cpu[ranks][-1] if cpu[ranks] else float('nan'):.1f} s, load {os.getloadavg()[0]:.1f}", flush=True)
    for ranks, w in walls.items():
        print(f"one fragment, {ranks} rank(s): median wall {statistics.median(w):.2f} s (min {min(w):.2f}, "
              f"max {max(w):.2f}, n={len(w)})" + (f"; median rank-0 CPU {statistics.median(cpu[ranks]):.1f} s"
                                                 if cpu[ranks] else ""))
    if cpu[1] and cpu[2]:
        ratio = statistics.median(cpu[2]) / statistics.median(cpu[1])
        print(f"parallel fraction from rank-0 CPU time: {(1 - ratio) / 0.5:.2f}")
    print(f"energy difference {abs(energy[1] - energy[2]):.1e} Eh")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", nargs="?", default="sim", choices=("record", "sim", "measure", "fragment", "all"))
    parser.add_argument("--cores", type=int, nargs="+", default=[64], help="virtual cores of the simulation")
    parser.add_argument("--workload", default="tz", choices=("tz", "hexamer"),
                        help="what `record` records (`fragment`: tz measures a cc-pVTZ trimer)")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions of the measurement here")
    args = parser.parse_args()
    if args.step in ("record", "all"):
        record(args.workload)
    if args.step in ("sim", "all"):
        sim(args.cores)
    if args.step in ("measure", "all"):
        measure(args.repeat)
    if args.step == "fragment":
        fragment(args.repeat, args.workload if args.workload == "tz" else "benzene")
    return 0


if __name__ == "__main__":
    sys.exit(main())
