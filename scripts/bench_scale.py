"""(H2O)64 GFN2-xTB NoCP MBE(2), MBE(3), screened MBE(4) and the unscreened MBE(4), against the supersystem.

The cluster is ``scripts/data/water64.xyz`` (a GFN2-xTB local minimum, made by ``scripts/make_water64.py``);
(``$BENCH_SCALE_XYZ`` names another file of waters, O H H each);
``--waters N`` takes its N waters nearest the cluster's centre (oxygen positions), a compact sub-cluster.
Every row is a fresh process (``ru_maxrss`` is that row's own peak) running ``qcmb_async.run`` with the
result store on (a new store file per row, so every kept fragment is really computed and written), on
``--ncores`` cores with ``executor="auto"``. Printed per row: subsystems computed (and the share of the
>= 3-body subsystems), wall time of the whole ``run()`` call (planning, scheduling, store, assembly),
fragments per second end to end, wall / lower bound (``qcmb_async.simulate.makespan_lower_bound`` of
the run's own fragment times), peak memory, and the error per monomer (kcal/mol) against the GFN2-xTB
energy of the whole cluster (one tblite job through the same harness) and against the unscreened
MBE(4) (its row, or ``--reference`` E in Eh).

Rows (``--rows``, comma separated): ``mbe2``, ``mbe3``, ``mbe4`` (unscreened), and the screened MBE(4)
rows ``d:<2>/<3>/<4>`` (distance cutoffs in Å per order, ``-`` for none) and ``e:<3>/<4>`` (energy
thresholds in Eh) or both joined by ``+``. Default: every row but the unscreened MBE(4) at 64 waters
(``--with-unscreened`` adds it; at 64 waters it is ~679,000 fragments). What the unscreened (H2O)64
MBE(4) would take is extrapolated from the measured unscreened rows (wall and memory linear in
fragments computed) and printed.

    OMP_NUM_THREADS=1 python scripts/bench_scale.py [--waters 64] [--rows mbe2,mbe3,...] [--with-unscreened]
        [--ncores 2] [--reference E_MBE4] [--out scripts/results/bench-scale-64.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
XYZ = Path(os.environ.get("BENCH_SCALE_XYZ", HERE / "data" / "water64.xyz"))
KCAL = 627.5094740631  # kcal/mol per Eh (CODATA 2018, as QCElemental)
SCREENED = ("d:-/5.0/4.0", "d:-/8.0/4.0", "d:-/8.0/5.0+e:-/1e-4")
DEFAULT_ROWS = ("mbe2", *SCREENED, "mbe3")


def waters(n: int, path: Path = XYZ) -> Any:
    """The ``n`` waters of ``path`` whose oxygens are nearest the oxygens' centroid, as a QCElemental
    ``Molecule`` (one fragment per water, neutral singlets; file order kept among the chosen)."""
    from qcelemental.models.v2 import Molecule

    lines = path.read_text().splitlines()
    natom = int(lines[0])
    rows = [ln.split() for ln in lines[2:2 + natom]]
    xyz = np.array([[float(v) for v in r[1:4]] for r in rows]).reshape(-1, 3, 3)
    if not all(r[0] == s for i, r in enumerate(rows) for s in ["OHH"[i % 3]]):
        raise ValueError(f"{path}: expected O H H per water")
    if not 1 <= n <= len(xyz):
        raise ValueError(f"--waters must be 1..{len(xyz)}")
    oxy = xyz[:, 0]
    chosen = sorted(np.argsort(np.linalg.norm(oxy - oxy.mean(axis=0), axis=1), kind="stable")[:n].tolist())
    geom = xyz[chosen].reshape(-1, 3)
    return Molecule(symbols=["O", "H", "H"] * n, geometry=geom / 0.52917721067,
                    fragments=[[3 * i, 3 * i + 1, 3 * i + 2] for i in range(n)],
                    fragment_charges=[0.0] * n, fragment_multiplicities=[1] * n,
                    molecular_charge=0.0, molecular_multiplicity=1, fix_com=True, fix_orientation=True)


def parse_row(row: str) -> tuple[int, dict[str, Any] | None]:
    """``(max_nbody, screening)`` of a row name (see the module docstring); ``ValueError`` when malformed."""
    if row in ("mbe2", "mbe3", "mbe4"):
        return int(row[-1]), None
    screening: dict[str, Any] = {}
    for part in row.split("+"):
        kind, _, spec = part.partition(":")
        values = spec.split("/")
        if kind not in ("d", "e") or not values:
            raise ValueError(f"bad row {row!r}")
        first = 2 if kind == "d" else 3
        orders = {first + i: float(v) for i, v in enumerate(values) if v != "-"}
        screening["distance" if kind == "d" else "energy"] = orders
    return 4, screening


def supersystem_energy(mol: Any) -> float:
    """GFN2-xTB energy (Eh) of the whole cluster through qcmb_async's tblite harness (one core)."""
    import qcengine
    from qcelemental.models.v2 import AtomicInput

    from qcmb_async.harnesses import register_harnesses

    register_harnesses()
    inp = AtomicInput(molecule=mol, specification={"driver": "energy", "model": {"method": "gfn2-xtb"}})
    out = qcengine.compute(inp, "tblite", raise_error=True, task_config={"ncores": 1}, return_version=2)
    return float(out.return_result)


def child(args: argparse.Namespace) -> int:
    """Run one row in this process and print its figures as one JSON line."""
    import qcmb_async
    from qcmb_async.simulate import makespan_lower_bound

    sys.path.insert(0, str(HERE))
    from benchlib.molecules import mbe

    max_nbody, screening = parse_row(args.child)
    if args.omit_cluster_properties:
        from qcmb_async._core import assemble

        assemble.CLUSTER_PROPERTIES_LIMIT = 0  # as in a run above the limit (679,120 labels)
    mol = waters(args.waters)
    inp = mbe(mol, "tblite", "gfn2-xtb", None, bsse="nocp", max_nbody=max_nbody, keep_all=False)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        store = os.path.join(tmp, "store.sqlite")
        t0 = time.perf_counter()
        result = qcmb_async.run(inp, ncores=args.ncores, store=store, screening=screening,
                                executor=args.executor)
        wall = time.perf_counter() - t0
        store_mib = os.path.getsize(store) / 2**20
    ext = result.extras["qcmb_async"]
    total = float(getattr(result.properties, f"nocp_corrected_total_energy_through_{max_nbody}_body"))
    frags = [f for f in ext["fragments"] if f["status"] == "ok"]
    by_level: dict[int, int] = {}
    for f in frags:
        by_level[f["level"]] = by_level.get(f["level"], 0) + 1
    lower = makespan_lower_bound([f["end"] - f["start"] for f in frags], args.ncores, [f["cores"] for f in frags])
    out = {"row": args.child, "waters": args.waters, "max_nbody": max_nbody, "screening": screening,
           "energy": total, "computed": len(frags), "by_level": by_level,
           "wall": wall, "schedule": ext["wall_time"], "lower_bound": lower,
           "chemistry_s": sum(f["end"] - f["start"] for f in frags),
           "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "store_mib": store_mib}
    print("ROW " + json.dumps(out), flush=True)
    return 0


def plan_child(n: int) -> int:
    """Plan the unscreened MBE(4) of ``n`` waters and assemble it from synthetic energies (no chemistry):
    the coordinator's own cost of a plan this size. Prints one JSON line."""
    from qcmb_async._core.assemble import assemble
    from qcmb_async._core.plan import make_plan

    sys.path.insert(0, str(HERE))
    from benchlib.molecules import mbe

    def rss() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    inp = mbe(waters(n), "tblite", "gfn2-xtb", None, bsse="nocp", max_nbody=4, keep_all=False)
    r0, t0 = rss(), time.perf_counter()
    plan = make_plan(inp)
    r1, t1 = rss(), time.perf_counter()
    # Synthetic fragment energies (Eh): distinct per subset, the shape of real ones (about -5 Eh per water).
    results = {f.label: {"energy": -5.07 * f.level - 1e-3 * math.sin(sum(f.real))} for f in plan.fragments}
    r2, t2 = rss(), time.perf_counter()
    result = assemble(plan, results)
    r3, t3 = rss(), time.perf_counter()
    out = {"waters": n, "fragments": len(plan.fragments), "plan_s": t1 - t0, "plan_mib": r1 - r0,
           "results_mib": r2 - r1, "assemble_s": t3 - t2, "assemble_mib": r3 - r2, "energy": result.return_result,
           "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "start_mib": r0}
    print("ROW " + json.dumps(out), flush=True)
    return 0


def plan_scaling(sizes: list[int]) -> list[dict[str, Any]]:
    """:func:`plan_child` for each size, each in a fresh process; prints a table."""
    rows = []
    print("\nPlan + assembly of the unscreened MBE(4), synthetic energies (no chemistry), fresh process each\n")
    print("| waters | fragments | plan / s | plan MiB | results MiB | assemble / s | assemble MiB | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        proc = subprocess.run([sys.executable, __file__, "--plan-child", str(n)], capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"plan of {n} waters failed:\n{proc.stderr[-3000:]}")
        r = json.loads(lines[-1][4:])
        rows.append(r)
        print(f"| {n} | {r['fragments']:,} | {r['plan_s']:.2f} | {r['plan_mib']:.0f} | {r['results_mib']:.0f} | "
              f"{r['assemble_s']:.2f} | {r['assemble_mib']:.0f} | {r['maxrss_mib']:.0f} |", flush=True)
    return rows


def run_row(args: argparse.Namespace, row: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", row, "--waters", str(args.waters), "--ncores", str(args.ncores),
           "--executor", args.executor] + (["--omit-cluster-properties"] if args.omit_cluster_properties else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"row {row} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][4:])


def higher_subsets(n: int, max_nbody: int) -> int:
    return sum(math.comb(n, k) for k in range(3, max_nbody + 1))


def extrapolate(rows: list[dict[str, Any]], n: int = 64) -> dict[str, float] | None:
    """Wall and peak memory of the unscreened MBE(4) of ``n`` waters, fitted linear in fragments computed
    over the measured unscreened rows (needs two of different size; any cluster size: the fit is per fragment)."""
    pts = [(r["computed"], r["wall"], r["maxrss_mib"], r["chemistry_s"]) for r in rows if r["screening"] is None]
    if len({p[0] for p in pts}) < 2:
        return None
    x = np.array([p[0] for p in pts], dtype=float)
    target = sum(math.comb(n, k) for k in range(1, 5))
    fit = {name: np.polyfit(x, np.array([p[i] for p in pts]), 1) for i, name in ((1, "wall"), (2, "mem"),
                                                                                   (3, "chem"))}
    return {"fragments": target, "wall_s": float(np.polyval(fit["wall"], target)),
            "maxrss_mib": float(np.polyval(fit["mem"], target)),
            "chemistry_core_s": float(np.polyval(fit["chem"], target)),
            "wall_per_fragment_ms": float(fit["wall"][0] * 1e3), "mib_per_1000_fragments": float(fit["mem"][0] * 1e3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--waters", type=int, default=64)
    ap.add_argument("--rows", default=None, help=f"comma separated (default {','.join(DEFAULT_ROWS)})")
    ap.add_argument("--with-unscreened", action="store_true", help="add the unscreened MBE(4) row")
    ap.add_argument("--ncores", type=int, default=2)
    ap.add_argument("--executor", default="auto")
    ap.add_argument("--reference", type=float, default=None,
                    help="unscreened MBE(4) energy (Eh) when its row is not run (e.g. scripts/mbe_reference.py)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--omit-cluster-properties", action="store_true",
                    help="assemble every row as a run above CLUSTER_PROPERTIES_LIMIT labels is (no per-label "
                         "cluster_properties), so the memory extrapolated to the unscreened (H2O)64 MBE(4) is its own")
    ap.add_argument("--plan-sizes", default=None,
                    help="comma separated water counts: plan + assemble the unscreened MBE(4) of each with synthetic "
                         "energies (no chemistry) and exit, e.g. 16,24,32,64")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--plan-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.plan_child:
        return plan_child(args.plan_child)
    if args.plan_sizes:
        rows = plan_scaling([int(x) for x in args.plan_sizes.split(",")])
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"plan_scaling": rows}, indent=1))
        return 0
    rows = args.rows.split(",") if args.rows else list(DEFAULT_ROWS)
    if args.with_unscreened and "mbe4" not in rows:
        rows.append("mbe4")
    for row in rows:
        parse_row(row)
    mol = waters(args.waters)
    t0 = time.perf_counter()
    e_super = supersystem_energy(mol)
    t_super = time.perf_counter() - t0
    print(f"(H2O){args.waters} GFN2-xTB supersystem {e_super:.10f} Eh ({t_super:.2f} s); {args.ncores} cores, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for row in rows:
        res = run_row(args, row)
        results.append(res)
        print("  " + json.dumps(res), flush=True)
    ref = next((r["energy"] for r in results if r["row"] == "mbe4"), args.reference)
    n = args.waters
    head = ("| row | subsystems computed | % of >=3-body | wall / s | fragments/s | wall/LB | peak MiB "
            "| error vs supersystem | error vs MBE(4) |")
    print(f"\n(H2O){n} GFN2-xTB NoCP; errors in kcal/mol per monomer; load at end {os.getloadavg()[0]:.2f}\n")
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        high = sum(v for k, v in r["by_level"].items() if int(k) >= 3)
        possible = higher_subsets(n, r["max_nbody"]) if r["max_nbody"] >= 3 else 0
        share = f"{100 * high / higher_subsets(n, 4):.2f}" if r["max_nbody"] == 4 else "-"
        vs_ref = f"{(r['energy'] - ref) / n * KCAL:+.4f}" if ref is not None and r["max_nbody"] == 4 else "-"
        print(f"| {r['row']} | {r['computed']:,} | {share} | {r['wall']:.1f} | {r['computed'] / r['wall']:.0f} | "
              f"{r['wall'] / r['lower_bound']:.2f} | {r['maxrss_mib']:.0f} | "
              f"{(r['energy'] - e_super) / n * KCAL:+.4f} | {vs_ref} |")
        del possible
    ext = extrapolate(results)
    if ext is not None:
        print(f"\nunscreened MBE(4) of 64 waters ({ext['fragments']:,} fragments), extrapolated linearly from "
              f"the unscreened rows: wall {ext['wall_s'] / 60:.1f} min ({ext['wall_per_fragment_ms']:.2f} ms per "
              f"fragment end to end), peak memory {ext['maxrss_mib']:.0f} MiB "
              f"({ext['mib_per_1000_fragments']:.1f} MiB per 1,000 fragments), chemistry "
              f"{ext['chemistry_core_s'] / 60:.1f} core-min")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"waters": n, "supersystem": e_super, "reference_mbe4": ref,
                                        "rows": results, "extrapolated_mbe4": ext,
                                        "load": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
