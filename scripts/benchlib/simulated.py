"""Figures of record, simulation: the real scheduler on virtual cores (:mod:`qcmb_async.simulate`) for the
mixed workload's measured fragment times and a 100,000-fragment synthetic plan."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

STRATEGIES = (("level-barrier FIFO", "fifo", True), ("FIFO", "fifo", False), ("qcmb_async", "cost", False))
MIXED_CORES = [2, 8, 64, 512]  # virtual cores of the mixed workload's replay


def sim_rows(workload: Any, key: str, title: str, core_counts: list[int]) -> list[dict[str, Any]]:
    """One row per (core count, strategy); ``barrier_wall`` is the level-barrier FIFO makespan (virtual s)."""
    from qcmb_async.simulate import simulate

    rows = []
    for ncores in core_counts:
        base = None
        for name, order, barrier in STRATEGIES:
            r = simulate(workload, ncores, order=order, level_barrier=barrier)
            if base is None:
                base = r.makespan
            rows.append({"workload": key, "title": title, "kind": "simulated", "strategy": name, "ncores": ncores,
                         "fragments": r.fragments, "wall": r.makespan, "stage": r.makespan, "lb": r.lower_bound,
                         "sequential": r.sequential, "utilisation": r.utilisation, "elapsed_s": r.elapsed,
                         "multi_core_fragments": r.multi_core_fragments, "barrier_wall": base})
            print(f"  [sim {key}] {ncores:>5} cores {name:<19} wall {r.makespan:10.2f} LB {r.lower_bound:10.2f} "
                  f"wall/LB {r.makespan / r.lower_bound:6.3f}  ({r.elapsed:.1f} s real)", flush=True)
    return rows


def simulation_rows(mixed: Any, saved: Path, n_fragments: int, sim_cores: int) -> list[dict[str, Any]]:
    """The mixed workload (this run's, else the one ``saved`` by an earlier run) replayed, then the synthetic plan."""
    from qcmb_async.simulate import Workload, synthetic_workload

    rows: list[dict[str, Any]] = []
    if mixed is None and saved.exists():
        mixed = Workload.load(saved)
        print(f"\n[sim] mixed workload times from {saved} ({mixed.source})")
    if mixed is not None:
        print("\n[sim] mixed workload, measured fragment times replayed", flush=True)
        rows.extend(sim_rows(mixed, "mixed replay", mixed.name, MIXED_CORES))
    t0 = time.perf_counter()
    synth = synthetic_workload(n_fragments, seed=1)
    print(f"\n[sim] {synth.name}: {len(synth)} fragments {synth.levels()}, built in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    rows.extend(sim_rows(synth, f"synthetic-{len(synth) // 1000}k", synth.name, [sim_cores]))
    return rows


def print_fidelity(real: list[dict[str, Any]], sim: list[dict[str, Any]], ncores: int) -> None:
    """The replay of the mixed workload on ``ncores`` virtual cores against the real run, if both ran."""
    real_par = [r for r in real if r["workload"] == "mixed-nwchem" and r["strategy"] == "qcmb_async"]
    sim_par = [r for r in sim if r["workload"] == "mixed replay" and r["strategy"] == "qcmb_async"
               and r["ncores"] == ncores]
    if real_par and sim_par:
        print(f"\n[sim] fidelity: mixed workload on {ncores} cores, real qcmb_async stage "
              f"{real_par[0]['stage']:.2f} s, its replay {sim_par[0]['wall']:.2f} s "
              f"({sim_par[0]['wall'] / real_par[0]['stage'] - 1:+.1%})")
