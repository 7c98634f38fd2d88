"""Figures of record, real workloads: QCManyBody's sequential computer, the level-barrier FIFO pool and
qcmb_async on the same MBE, energies checked against the sequential run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qcmanybody.models.v2 import ManyBodyInput

from qcmb_async.simulate import makespan_lower_bound

from .baselines import run_level_barrier_fifo
from .figures import DIFF_LIMIT, record_bound
from .measurement import computed, loadavg, max_abs_diff, time_qcmb_async, time_sequential, warm_up
from .molecules import benzene_waters, hexamer, mbe, ring_octamer


@dataclass
class RealWorkload:
    """One real workload: a key for the command line, a title, the program and how to build the input."""

    key: str
    title: str
    program: str
    method: str
    basis: str | None
    build: Callable[[], ManyBodyInput]


REAL_WORKLOADS = [
    RealWorkload("hexamer-nwchem", "water hexamer (ring), NoCP, 3-body, NWChem HF/6-31G", "nwchem", "hf", "6-31g",
                 lambda: mbe(hexamer(), "nwchem", "hf", "6-31g", bsse="nocp", max_nbody=3)),
    RealWorkload("octamer-mopac", "water octamer (ring), NoCP, 3-body, MOPAC PM7", "mopac", "pm7", None,
                 lambda: mbe(ring_octamer(), "mopac", "pm7", None, bsse="nocp", max_nbody=3)),
    RealWorkload("mixed-nwchem", "benzene + 4 waters (mixed sizes), NoCP, 4-body, NWChem HF/6-31G", "nwchem", "hf",
                 "6-31g", lambda: mbe(benzene_waters(4), "nwchem", "hf", "6-31g", bsse="nocp", max_nbody=4)),
]


def _row(common: dict[str, Any], name: str, ncores: int, wall: float, stage: float, frags: list[dict[str, Any]],
         other: float, diff: float) -> dict[str, Any]:
    walls = [f["end"] - f["start"] for f in frags]
    cores = [int(f["cores"]) for f in frags]
    return {**common, "strategy": name, "ncores": ncores, "wall": wall, "stage": stage,
            "lb": record_bound(frags, ncores),
            "sum_fragments": sum(w * c for w, c in zip(walls, cores, strict=True)), "longest": max(walls),
            "other_cores": other, "max_diff": diff, "fragments_run": len(frags)}


def real_rows(work: RealWorkload, ncores: int, memory: float, repeats: int) -> tuple[list[dict[str, Any]], Any]:
    """Sequential (once), then level-barrier FIFO and qcmb_async alternately ``repeats`` times.

    Each parallel strategy's row is its repeat with the median wall time (all walls are kept in
    ``walls``). Returns the rows and qcmb_async's median run.
    """
    inp = work.build()
    warm = warm_up(work.program, work.method, work.basis)
    load0 = loadavg()
    print(f"\n[{work.key}] {work.title}: warm-up {warm:.2f} s; load average {load0}", flush=True)
    print(f"[{work.key}] sequential ...", end="", flush=True)
    seq = time_sequential(inp)
    print(f" {seq.wall:.2f} s", flush=True)
    seq_times = list(seq.fragment_times.values())  # one fragment at a time: counted as one core each
    common = {"workload": work.key, "title": work.title, "kind": "real", "fragments": len(seq_times),
              "lb_sequential_times": makespan_lower_bound(seq_times, ncores), "load_before": load0}
    fifo_rows, par_rows, pars = [], [], []
    for i in range(repeats):
        print(f"[{work.key}] repeat {i + 1}/{repeats}: level-barrier FIFO ...", end="", flush=True)
        fifo = run_level_barrier_fifo(inp, ncores, memory)
        print(f" {fifo['wall']:.2f} s; qcmb_async ...", end="", flush=True)
        par = time_qcmb_async(inp, ncores=ncores, memory=memory, executor="threads")
        print(f" {par.wall:.2f} s", flush=True)
        fifo_rows.append(_row(common, "level-barrier FIFO", ncores, fifo["wall"], fifo["stage"], fifo["fragments"],
                              fifo["other_cores"], max_abs_diff(seq.result, fifo["result"])))
        par_rows.append(_row(common, "qcmb_async", ncores, par.wall, par.record["wall_time"],
                             computed(par.record["fragments"]), par.other_cores, max_abs_diff(seq.result, par.result)))
        pars.append(par)
    rows = [{**common, "strategy": "sequential", "ncores": 1, "wall": seq.wall, "stage": seq.wall,
             "lb": common["lb_sequential_times"], "sum_fragments": sum(seq_times), "other_cores": seq.other_cores,
             "max_diff": 0.0, "fragments_run": len(seq_times), "walls": [seq.wall]}]
    median_par = None
    for group in (fifo_rows, par_rows):
        order = sorted(range(len(group)), key=lambda k: group[k]["wall"])
        pick = order[len(order) // 2]
        rows.append({**group[pick], "walls": [g["wall"] for g in group], "max_diff": max(g["max_diff"] for g in group),
                     "repeats": len(group)})
        if group is par_rows:
            median_par = pars[pick]
    for row in rows:
        row["load_after"] = loadavg()
    return rows, median_par


def wrong_rows(key: str, rows: list[dict[str, Any]]) -> list[str]:
    """An error line for each parallel row whose energy or fragment count differs from the sequential run."""
    return [f"ERROR [{key}] {r['strategy']}: max |diff| {r['max_diff']:.2e} Eh, "
            f"{r['fragments_run']} of {r['fragments']} fragments"
            for r in rows[1:] if not r["max_diff"] < DIFF_LIMIT or r["fragments_run"] != r["fragments"]]


def print_details(real: list[dict[str, Any]]) -> None:
    """One line per real workload: every repeat's wall, core-seconds, the sequential LB, other load."""
    for key in dict.fromkeys(r["workload"] for r in real):
        by = {r["strategy"]: r for r in real if r["workload"] == key}
        par, fifo, seq = by["qcmb_async"], by["level-barrier FIFO"], by["sequential"]
        fifo_walls = ", ".join(f"{w:.2f}" for w in fifo["walls"])
        par_walls = ", ".join(f"{w:.2f}" for w in par["walls"])
        print(f"  {key}: walls of {par['repeats']} repeats, level-barrier FIFO {fifo_walls} s, qcmb_async "
              f"{par_walls} s (median shown); fragment core-seconds sequential {seq['sum_fragments']:.2f}, FIFO pool "
              f"{fifo['sum_fragments']:.2f}, qcmb_async {par['sum_fragments']:.2f}; LB from the sequential run's "
              f"fragment times {par['lb_sequential_times']:.2f} s (qcmb_async wall / that LB "
              f"{par['wall'] / par['lb_sequential_times']:.3f}); other processes' cores during sequential / FIFO / "
              f"qcmb_async {seq['other_cores']:.2f} / {fifo['other_cores']:.2f} / {par['other_cores']:.2f}; load "
              f"{par['load_before']} -> {par['load_after']}")
