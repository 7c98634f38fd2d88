"""What the result store costs per fragment: a GFN2-xTB (tblite) NoCP MBE(4) of the first N waters of
(H2O)64, with the store off and on (a fresh SQLite file per run), each run a fresh process.

    PYTHONPATH=$PWD python scripts/bench_store_cost.py --waters 16 24 --repeats 3 [--roots OLD_TREE .]

``--roots``: source trees to compare (each is put first on PYTHONPATH of its runs), e.g. a copy of the
previous commit made with ``git archive``; runs of the trees alternate, so a change in the machine's load
reaches all of them alike. Prints one line per run and, per tree and size, the median wall times, the
store's cost per fragment (median on - median off) in wall and in CPU time of the process (steadier than wall
when the machine is shared) and the on/off ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, resource, sys, time
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput
import qcmb_async
mol = Molecule.from_file(sys.argv[1])
n, store, executor = int(sys.argv[2]), (sys.argv[3] or None), sys.argv[4]
sub = Molecule(symbols=mol.symbols[:3 * n], geometry=mol.geometry.reshape(-1, 3)[:3 * n],
               fragments=[list(range(3 * i, 3 * i + 3)) for i in range(n)], fix_com=True, fix_orientation=True)
inp = ManyBodyInput(molecule=sub, specification={
    "driver": "energy", "keywords": {"bsse_type": ["nocp"], "max_nbody": 4, "supersystem_ie_only": False},
    "specification": {"program": "tblite", "driver": "energy", "model": {"method": "gfn2-xtb", "basis": None}}})
ru0 = resource.getrusage(resource.RUSAGE_SELF)
cpu0 = ru0.ru_utime + ru0.ru_stime
t = time.perf_counter()
r = qcmb_async.run(inp, ncores=2, store=store, executor=executor)
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime - cpu0,
                  "fragments": len(r.extras["qcmb_async"]["fragments"]),
                  "energy": r.properties.return_energy}))
"""


def one(root: Path, waters: int, store: bool, executor: str) -> dict[str, float]:
    """One run in a fresh process (OMP_NUM_THREADS=1, as the benchmarks of tblite use)."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "store.sqlite") if store else ""
        out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "scripts/data/water64.xyz"), str(waters), path,
                              executor], env=env, cwd=tmp, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waters", type=int, nargs="+", default=[16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--roots", nargs="+", default=[str(ROOT)])
    parser.add_argument("--executor", default="auto")
    args = parser.parse_args()
    roots = [Path(r).resolve() for r in args.roots]
    walls: dict[tuple[str, int, bool], list[float]] = {}
    cpus: dict[tuple[str, int, bool], list[float]] = {}
    counts: dict[int, int] = {}
    energies: dict[tuple[str, int], set[float]] = {}
    for waters in args.waters:
        for rep in range(args.repeats):
            for root in roots:
                for store in (False, True):
                    res = one(root, waters, store, args.executor)
                    walls.setdefault((str(root), waters, store), []).append(res["wall"])
                    cpus.setdefault((str(root), waters, store), []).append(res["cpu"])
                    counts[waters] = int(res["fragments"])
                    energies.setdefault((str(root), waters), set()).add(round(res["energy"], 10))
                    print(f"{time.strftime('%H:%M:%S')} {root} waters={waters} store={'on' if store else 'off'} "
                          f"rep={rep} wall={res['wall']:.2f} s cpu={res['cpu']:.2f} s fragments={res['fragments']}",
                          flush=True)
    print("\ntree | waters | fragments | wall off | wall on | on/off | store wall ms/fragment | cpu off | cpu on | "
          "store cpu ms/fragment   (medians)")
    for waters in args.waters:
        for root in roots:
            off = statistics.median(walls[(str(root), waters, False)])
            on = statistics.median(walls[(str(root), waters, True)])
            c_off = statistics.median(cpus[(str(root), waters, False)])
            c_on = statistics.median(cpus[(str(root), waters, True)])
            print(f"{root} | {waters} | {counts[waters]} | {off:.2f} s | {on:.2f} s | {on / off:.3f} | "
                  f"{(on - off) / counts[waters] * 1e3:.3f} | {c_off:.2f} s | {c_on:.2f} s | "
                  f"{(c_on - c_off) / counts[waters] * 1e3:.3f}   energies {sorted(energies[(str(root), waters)])}")


if __name__ == "__main__":
    main()
