"""What the result store costs per fragment: a GFN2-xTB (tblite) NoCP MBE(4) of the first N waters of
(H2O)64, with the store off and on (a fresh SQLite file per run), each run a fresh process.

    PYTHONPATH=$PWD python scripts/bench_store_cost.py --waters 16 24 --repeats 3 [--roots OLD_TREE .]

``--roots``: source trees to compare (each is put first on PYTHONPATH of its runs), e.g. a copy of the
previous commit made with ``git archive``; runs of the trees alternate, so a change in the machine's load
reaches all of them alike. ``--micro N``: instead, the coordinator's CPU per fragment for the store key and
for committing rounds of 1, 2 and 8 results of N real tetramers (thread CPU, best of the repeats), the way
before the store path was trimmed and now, alternated in one process of the first tree.
Prints one line per run and, per tree and size, the median wall times, the
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


MICRO = r"""
import hashlib, json, sys, tempfile, time
from pathlib import Path
from types import SimpleNamespace
import qcengine
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput
from qcmb_async._core import scheduler
from qcmb_async._core.outcome import FragmentRecord, _store_put, _store_put_batch
from qcmb_async._core.plan import make_plan
from qcmb_async._core.store import ResultStore
from qcmb_async._core.versions import program_version
mol = Molecule.from_file(sys.argv[1])
n, count, repeats = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sub = Molecule(symbols=mol.symbols[:3 * n], geometry=mol.geometry.reshape(-1, 3)[:3 * n],
               fragments=[list(range(3 * i, 3 * i + 3)) for i in range(n)], fix_com=True, fix_orientation=True)
inp = ManyBodyInput(molecule=sub, specification={
    "driver": "energy", "keywords": {"bsse_type": ["nocp"], "max_nbody": 4, "supersystem_ie_only": False},
    "specification": {"program": "tblite", "driver": "energy", "model": {"method": "gfn2-xtb", "basis": None}}})
plan = make_plan(inp)
frags = [f for f in plan.fragments if f.level == 4][:count]


def old_key(program, atomic):  # the key as computed before (docs/store.md's recipe, literally)
    payload = json.dumps({"v": 2, "program": program.lower(), "version": program_version(program),
                          "input": json.loads(atomic.model_dump_json(exclude={"id", "provenance"}))}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class Unchecked:  # put_many as before: every row's JSON parsed again
    def __init__(self, rs):
        self.put_many, self.put = rs.put_many, rs.put


def old_rounds(store, batch, run_id):  # rounds as before: one put (own checks) for a round of one
    if len(batch) == 1:
        return [_store_put(store, p.frag, p.key, p.result, p.rec, run_id) for p in batch]
    return _store_put_batch(Unchecked(store), [(p.frag, p.key, p.result, p.rec) for p in batch], run_id)


best = {}
def note(name, seconds, n):
    best[name] = min(best.get(name, float("inf")), seconds / n * 1e3)
jobs = [plan.materialise(f) for f in frags]
keys = [j.key for j in jobs]
assert keys == [old_key(j._program, j.atomic_input) for j in jobs]
results = [qcengine.compute(j.atomic_input, "tblite", return_version=2) for j in jobs]
def items(tag):
    made = []
    for i, (f, k, r) in enumerate(zip(frags, keys, results)):
        rec = FragmentRecord(f.label, f.level, f.program, 1, 1.0, status="ok", attempts=1)
        rec.history.append({"attempt": 1, "start": 1.7e9 + i, "end": 1.7e9 + i + 0.0013, "worker": "thread",
                            "host": "h", "error_type": None, "error_message": None})
        made.append(SimpleNamespace(frag=f, key=k + tag, result=r, rec=rec))
    return made
for rep in range(repeats):  # before and after alternate, so a change of the machine's load reaches both
    jobs = [plan.materialise(f) for f in frags]
    t = time.thread_time()
    [old_key(j._program, j.atomic_input) for j in jobs]
    note("key_before", time.thread_time() - t, len(jobs))
    t = time.thread_time()
    [j.key for j in jobs]
    note("key_after", time.thread_time() - t, len(jobs))
    for size in (1, 2, 8):
        for name, rounds in (("before", old_rounds), ("after", scheduler._store_put_many)):
            with tempfile.TemporaryDirectory() as tmp, ResultStore(Path(tmp) / "s.sqlite") as rs:
                rows = items(str(rep))
                t = time.thread_time()
                for i in range(0, len(rows), size):
                    assert rounds(rs, rows[i:i + size], "run") == [None] * len(rows[i:i + size])
                note(f"put_round{size}_{name}", time.thread_time() - t, len(rows))
print(json.dumps(best))
"""


def micro(root: Path, waters: int, count: int, repeats: int) -> dict[str, float]:
    """Coordinator CPU (ms) per fragment of the key and of committing rounds of 1, 2 and 8 results, the way
    before this change (the documented key recipe written out, one ``put`` per round of one, ``put_many``
    parsing every row's JSON) and now, alternated in one process (best of ``repeats``)."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MICRO, str(ROOT / "scripts/data/water64.xyz"), str(waters),
                          str(count), str(repeats)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--micro", type=int, default=0, metavar="N",
                        help="instead of whole runs: CPU of the key and of store rounds for N tetramers")
    args = parser.parse_args()
    roots = [Path(r).resolve() for r in args.roots]
    if args.micro:
        res = micro(roots[0], args.waters[0], args.micro, args.repeats)
        for what in ("key", "put_round1", "put_round2", "put_round8"):
            before, after = res[f"{what}_before"], res[f"{what}_after"]
            print(f"{what}: {before:.4f} -> {after:.4f} ms CPU per fragment ({after / before:.2f}x)", flush=True)
        return
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
