"""The figures of record: command line and run order shared by ``bench.py`` and its one-section scripts.

``bench.py`` runs every section in one process (real, planning, overhead, rss, sim);
``bench_real.py``, ``bench_overhead.py``, ``bench_memory.py`` and ``bench_simulated.py`` run one
figure each with the same options. Prints the table (wall, lower bound LB, wall/LB, speedup over
sequential and over the level-barrier FIFO pool), the detail lines and the targets, and writes
the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import memory, overhead, real, simulated
from .measurement import loadavg
from .report import ROOT, run_meta, table, targets

RESULTS = ROOT / "scripts" / "results"
SECTIONS = ("real", "planning", "overhead", "rss", "sim")


@dataclass
class Figures:
    """What the sections measured."""

    real: list[dict[str, Any]] = field(default_factory=list)
    sim: list[dict[str, Any]] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    rss: dict[str, Any] | None = None
    mixed: Any = None  # qcmb_async.simulate.Workload of the mixed workload's qcmb_async run
    ok: bool = True


def parser(doc: str, sections: tuple[str, ...], out: Path) -> argparse.ArgumentParser:
    """The options of every figures-of-record script (``--sections`` chooses among ``sections``)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the 20,875-fragment MOPAC memory run (minutes)")
    ap.add_argument("--sections", default=",".join(sections), help=f"comma-separated subset of {sections}")
    ap.add_argument("--workloads", default=",".join(w.key for w in real.REAL_WORKLOADS),
                    help="real workloads to run (comma-separated keys)")
    ap.add_argument("--ncores", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3,
                    help="level-barrier FIFO / qcmb_async pairs per real workload (median reported)")
    ap.add_argument("--memory", type=float, default=4.0, help="GiB for the real runs")
    ap.add_argument("--rss-waters", type=int, default=50, help="waters of the MBE(3) memory run (50: 20,875 fragments)")
    ap.add_argument("--sim-fragments", type=int, default=100_000)
    ap.add_argument("--sim-cores", type=int, default=4096)
    ap.add_argument("--out", default=str(out))
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    return ap


def main(doc: str, sections: tuple[str, ...] = SECTIONS, out: Path = RESULTS / "bench.json") -> int:
    """Parse the command line, run the chosen sections, print the figures, write the JSON; 1 if results differ."""
    ap = parser(doc, sections, out)
    args = ap.parse_args()
    if args.rss_child is not None:
        memory.rss_child(args.rss_child, args.ncores, args.memory)
        return 0
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := set(chosen) - set(sections):
        ap.error(f"unknown section(s) {sorted(unknown)}")
    if args.quick and "rss" in chosen:
        chosen.remove("rss")

    from qcmb_async import prime_qcengine

    meta = run_meta(args.ncores, args.memory, chosen, loadavg())
    print(f"qcmb_async {meta['qcmb_async']} ({meta['git']}), python {meta['python']}, qcengine {meta['qcengine']}, "
          f"qcmanybody {meta['qcmanybody']}, trio {meta['trio']}; {meta['cpus']} CPUs (affinity {meta['affinity']}); "
          f"load average at start {meta['load_start']}")
    prime_qcengine()
    t_start = time.perf_counter()
    figs = run_sections(args, chosen, meta)
    checks = print_figures(figs, args.ncores)
    meta["load_end"] = loadavg()
    meta["bench_seconds"] = time.perf_counter() - t_start
    print(f"\nload average at end {meta['load_end']}; benchmark took {meta['bench_seconds']:.0f} s")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": figs.real + figs.sim, "planning_overhead": figs.plan,
                                "memory": figs.rss, "targets": checks}, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    return 0 if figs.ok else 1


def run_sections(args: argparse.Namespace, chosen: list[str], meta: dict[str, Any]) -> Figures:
    """Each chosen section in the order real, planning/overhead, rss, sim."""
    figs = Figures()
    if "real" in chosen:
        run_real(args, meta, figs)
    if "planning" in chosen or "overhead" in chosen:
        print("\n[planning/overhead] 16 waters, MBE(4), NoCP, no-op harness ...", flush=True)
        figs.plan = overhead.planning_and_overhead(args.ncores, args.memory)
    if "rss" in chosen:
        print(f"\n[rss] {args.rss_waters} waters, MBE(3), NoCP, MOPAC PM7, in a subprocess (minutes) ...", flush=True)
        figs.rss = memory.rss_run(args.rss_waters, args.ncores, args.memory)
    if "sim" in chosen:
        figs.sim = simulated.simulation_rows(figs.mixed, RESULTS / "mixed-workload.json", args.sim_fragments,
                                             args.sim_cores)
        simulated.print_fidelity(figs.real, figs.sim, args.ncores)
    return figs


def run_real(args: argparse.Namespace, meta: dict[str, Any], figs: Figures) -> None:
    """The real workloads; keeps the mixed workload's qcmb_async times for the simulation (and on disk)."""
    from qcmb_async.simulate import Workload

    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    for work in [w for w in real.REAL_WORKLOADS if w.key in keys]:
        rows, par = real.real_rows(work, args.ncores, args.memory, args.repeats)
        figs.real.extend(rows)
        for line in real.wrong_rows(work.key, rows):
            print(line)
            figs.ok = False
        if work.key == "mixed-nwchem":
            figs.mixed = Workload.from_run(par.result, work.build(), name=work.title)
            figs.mixed.source = (f"qcmb_async run on {args.ncores} cores (the median of {args.repeats}), "
                                 f"per-fragment end - start, {meta['date']}")
            RESULTS.mkdir(parents=True, exist_ok=True)
            figs.mixed.save(RESULTS / "mixed-workload.json")


def print_figures(figs: Figures, ncores: int) -> list[dict[str, Any]]:
    """The table, the detail lines and the targets; returns the targets."""
    rows = figs.real + figs.sim
    print("\n== figures of record ==")
    print("wall: real runs end to end (call to result); simulated runs makespan in virtual seconds.")
    print("stage: real runs, the fragments' stage only (qcmb_async: schedule(); level-barrier FIFO: the pool).")
    print("LB = max(longest fragment, fragment core-seconds / cores) from each run's own fragment times; the")
    print("sequential row shows LB from its uncontended fragment times on the same cores. vs LBF: speedup over")
    print("the level-barrier FIFO pool.")
    print(table(rows) if rows else "(no runs)")
    real.print_details(figs.real)
    if figs.plan:
        overhead.print_planning_overhead(figs.plan, ncores)
    if figs.rss:
        memory.print_memory(figs.rss)
    if figs.sim:
        took = sum(r["elapsed_s"] for r in figs.sim)
        print(f"\nsimulation: {len(figs.sim)} simulated runs took {took:.1f} s of real time")
    checks = targets(figs.real, figs.sim, figs.plan, figs.rss)
    print("\n== targets ==")
    for c in checks:
        op = "<=" if c["at_most"] else ">="
        print(f"  {'met    ' if c['met'] else 'NOT met'}  {c['target']}: {c['value']:.4g} {op} {c['limit']:g}")
    return checks

