"""GFN2-xTB through tblite: (H2O)20 NoCP MBE(3), sequential QCManyBody vs qcmb_async worker processes.

Targets on 2 cores (reported, never asserted): qcmb_async processes >= 1.9x faster than QCManyBody's
sequential computer with the same harness, makespan <= 1.05x the lower bound
(:func:`qcmb_async.simulate.makespan_lower_bound` of the run's own fragment times). Results must agree
with the sequential computer to 1e-9 Eh (exit 1 otherwise).

Rows, in the order each round runs them:
  sequential         QCManyBody's own computer (no task config: each fragment gets every core,
                     i.e. tblite's OpenMP threads on all of them)
  processes (cold)   executor="processes" (what "auto" picked for tblite until it ran on threads): the
                     run starts its worker pool (fresh interpreters importing QCEngine and tblite) and
                     stops it at the end
  processes (pool)   a ProcessExecutor entered before the timed run, as a session, notebook or scan
                     keeps it for run after run; its start-up is printed apart
  threads            executor="threads", for comparison (tblite releases the GIL)

Also printed: fragments per second end to end, and the error per monomer of MBE(1), MBE(2) and
MBE(3) against the GFN2-xTB energy of the whole cluster (one tblite job), in kcal/mol.
Figures go to ``scripts/results/bench-xtb.json``.

    python scripts/bench_xtb.py [--waters 20] [--max-nbody 3] [--ncores 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from benchlib.figures import DIFF_LIMIT, record_bound
from benchlib.measurement import (
    Timed,
    atime_qcmb_async,
    computed,
    loadavg,
    machine_busy,
    max_abs_diff,
    time_sequential,
    warm_up,
)
from benchlib.molecules import mbe, water_lattice
from benchlib.report import run_meta

from qcmb_async import prime_qcengine
from qcmb_async.executors.processes import ProcessExecutor
from qcmb_async.harnesses import register_harnesses

SPEEDUP_TARGET = 1.9
LB_TARGET = 1.05
HARTREE_IN_KCAL_PER_MOL = 627.5094740631  # CODATA 2018, as QCElemental
OUT = Path(__file__).resolve().parent / "results" / "bench-xtb.json"
ROWS = ("processes (cold)", "processes (pool)", "threads")


def figures(seq: Timed, par: Timed, ncores: int) -> dict[str, float]:
    """One row's numbers from its records (qcmb_async keeps no per-fragment results here: millisecond
    fragments would spend more on shipping whole results back than on the chemistry)."""
    rec = par.record
    frags = computed(rec["fragments"])
    walls = [f["end"] - f["start"] for f in frags]
    makespan = rec["finished"] - rec["started"]
    lower = record_bound(frags, ncores)
    return {
        "n_seq": len(seq.fragment_times), "n_par": len(frags), "seq_wall": seq.wall, "par_wall": par.wall,
        "speedup": seq.wall / par.wall, "schedule_wall": rec["wall_time"], "makespan": makespan,
        "lower_bound": lower, "ratio": makespan / lower, "par_sum": sum(w * f["cores"] for w, f in
                                                                         zip(walls, frags, strict=True)),
        "median_seq": statistics.median(seq.fragment_times.values()), "median_par": statistics.median(walls),
        "max_diff": max_abs_diff(seq.result, par.result), "par_other": par.other_cores,
        "seq_other": seq.other_cores,
    }


def supersystem_energy(mol: Any) -> tuple[float, float]:
    """GFN2-xTB energy (Eh) of the whole cluster through the same harness, and its wall time (s)."""
    import qcengine
    from qcelemental.models.v2 import AtomicInput

    inp = AtomicInput(molecule=mol, specification={"driver": "energy", "model": {"method": "gfn2-xtb"}})
    t0 = time.perf_counter()
    out = qcengine.compute(inp, "tblite", raise_error=True, task_config={"ncores": 1}, return_version=2)
    return float(out.return_result), time.perf_counter() - t0


async def measure(args: argparse.Namespace, inp: Any, inp_seq: Any) -> tuple[list[dict[str, Any]], float]:
    """``args.repeats`` rounds of every row, the sequential run first in each; the kept pool's start-up (s)."""
    rounds = []
    t0 = time.perf_counter()
    async with ProcessExecutor(max_workers=args.ncores, warm={"tblite"}) as pool:
        started = time.perf_counter() - t0
        for _ in range(args.repeats):
            seq = time_sequential(inp_seq)
            figs = {}
            results = {}
            for name, executor in zip(ROWS, ("processes", pool, "threads"), strict=True):
                par = await atime_qcmb_async(inp, ncores=args.ncores, memory=4, executor=executor)
                figs[name] = figures(seq, par, args.ncores)
                results[name] = par.result
            rounds.append({"seq": seq, "figs": figs, "results": results})
    return rounds, started


def mbe_errors(result: Any, e_super: float, nmono: int, max_nbody: int) -> dict[int, float]:
    """(E_MBE(n) - E_supersystem) / monomers in kcal/mol for n = 1..max_nbody."""
    props = result.properties
    return {n: (getattr(props, f"nocp_corrected_total_energy_through_{n}_body") - e_super) / nmono
            * HARTREE_IN_KCAL_PER_MOL for n in range(1, max_nbody + 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--waters", type=int, default=20)
    ap.add_argument("--max-nbody", type=int, default=3)
    ap.add_argument("--ncores", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of all rows (default 1)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    load_start = loadavg()
    register_harnesses()
    prime_qcengine()
    warm_up("tblite", "gfn2-xtb", None)
    busy_before = machine_busy(1.0)
    mol = water_lattice(args.waters)
    inp = mbe(mol, "tblite", "gfn2-xtb", None, bsse="nocp", max_nbody=args.max_nbody, keep_all=False)
    inp_seq = mbe(mol, "tblite", "gfn2-xtb", None, bsse="nocp", max_nbody=args.max_nbody, keep_all=True)
    e_super, t_super = supersystem_energy(mol)
    rounds, pool_start = anyio.run(measure, args, inp, inp_seq)

    first = rounds[0]["figs"][ROWS[0]]
    print(f"\n== tblite GFN2-xTB: (H2O){args.waters} on a lattice, NoCP MBE({args.max_nbody}), {first['n_par']} "
          f"fragments, {args.ncores} cores, {args.repeats} round(s); load at start {load_start}, "
          f"{busy_before:.2f} cores busy before ==")
    print(f"  {'':18}{'wall [s]':>9}{'speedup':>9}{'frag/s':>9}{'schedule [s]':>13}{'makespan/LB':>12}"
          f"{'median frag [ms]':>17}{'other cores':>12}{'max |diff| [Eh]':>16}")
    ok = True
    for i, rnd in enumerate(rounds, 1):
        seq = rnd["seq"]
        print(f"  round {i}")
        n = first["n_seq"]
        print(f"  {'sequential':18}{seq.wall:9.2f}{1.0:9.2f}{n / seq.wall:9.0f}{'':>13}{'':>12}"
              f"{rnd['figs'][ROWS[0]]['median_seq'] * 1e3:17.2f}{seq.other_cores:12.2f}")
        for name, fig in rnd["figs"].items():
            print(f"  {name:18}{fig['par_wall']:9.2f}{fig['speedup']:9.2f}{fig['n_par'] / fig['par_wall']:9.0f}"
                  f"{fig['schedule_wall']:13.2f}{fig['ratio']:12.3f}{fig['median_par'] * 1e3:17.2f}"
                  f"{fig['par_other']:12.2f}{fig['max_diff']:16.1e}")
            ok &= fig["max_diff"] < DIFF_LIMIT and fig["n_par"] == fig["n_seq"]
    print(f"  pool kept across all rounds: started once in {pool_start:.2f} s (not in its rows)")
    errors = mbe_errors(rounds[0]["results"][ROWS[0]], e_super, args.waters, args.max_nbody)
    print(f"  supersystem GFN2-xTB energy {e_super:.10f} Eh ({t_super * 1e3:.0f} ms); error per monomer: "
          + ", ".join(f"MBE({n}) {err:+.4f} kcal/mol" for n, err in errors.items()))
    summary = {}
    for name in ROWS:
        speedups = [r["figs"][name]["speedup"] for r in rounds]
        ratios = [r["figs"][name]["ratio"] for r in rounds]
        summary[name] = {"speedup": statistics.median(speedups), "ratio": statistics.median(ratios)}
    for name in ROWS[:2]:
        s = summary[name]
        print(f"target: {name}: speedup {s['speedup']:.2f}x >= {SPEEDUP_TARGET} "
              f"({'met' if s['speedup'] >= SPEEDUP_TARGET else 'NOT met'}), makespan/LB {s['ratio']:.3f} <= "
              f"{LB_TARGET} ({'met' if s['ratio'] <= LB_TARGET else 'NOT met'})")
    if busy_before > 0.25 or any(r["seq"].other_cores > 0.25 for r in rounds):
        print("WARNING: other processes were using the CPU: timings are not reliable")
    record = {
        "meta": {**run_meta(args.ncores, 4.0, ["xtb"], load_start), "busy_before": busy_before,
                 "waters": args.waters, "max_nbody": args.max_nbody, "repeats": args.repeats},
        "supersystem_energy": e_super,
        "error_per_monomer_kcal_mol": {str(n): e for n, e in errors.items()},
        "pool_start": pool_start,
        "rounds": [{"sequential_wall": r["seq"].wall, "sequential_other_cores": r["seq"].other_cores,
                    **{name: fig for name, fig in r["figs"].items()}} for r in rounds],
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, default=float))
    print(f"figures written to {args.out}")
    if not ok:
        print("RESULTS DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
