"""The figures of record: sequential QCManyBody, a level-barrier FIFO pool and qcmb_async, side by side.

One process run on this machine, in this order:

1. Real workloads, each run three ways (QCManyBody's sequential computer; a level-barrier FIFO
   thread pool, the earlier design, built here as a baseline; ``qcmb_async.run``):
   a ring water hexamer, NoCP, 3-body, NWChem HF/6-31G; a ring water octamer, CP, 3-body,
   MOPAC PM7; and a mixed-size workload, benzene with four waters, NoCP, 4-body, NWChem
   HF/6-31G. Energies must agree with the sequential computer to 1e-9 Eh (exit 1 otherwise).
2. Planning: call to first dispatched fragment for 16 waters, MBE(4), NoCP (2,516 fragments).
3. Scheduler overhead per fragment with a no-op harness (the same 2,516-fragment run).
4. Peak RSS of a 20,875-fragment MOPAC run (50 waters, MBE(3), NoCP) in a subprocess
   (minutes; ``--quick`` skips it).
5. Simulation (:mod:`qcmb_async.simulate`, the real scheduler on a virtual clock): the mixed
   workload's measured fragment times replayed on 2, 8, 64 and 512 virtual cores, and a
   100,000-fragment synthetic plan on 4,096, for level-barrier FIFO, plain FIFO and qcmb_async.

Prints one table (wall, lower bound LB, wall/LB, speedup over sequential and over the
level-barrier FIFO pool) and writes the same as JSON to ``scripts/results/bench.json``.
Timing targets are reported, never asserted.

    python scripts/bench.py [--quick] [--sections real,planning,overhead,rss,sim] [--ncores 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from _bench_common import (
    CpuMeter,
    geometry_report,
    hexamer,
    max_abs_diff,
    time_qcmb_async,
    time_sequential,
    warm_up,
)
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results"
SECTIONS = ("real", "planning", "overhead", "rss", "sim")
DIFF_LIMIT = 1e-9

# Targets of the issue.
REAL_TARGET = 1.05  # wall / LB, real runs on this machine
SIM_TARGET = 1.05  # simulated wall / LB, every core count
SIM_GAIN_TARGET = 0.25  # qcmb_async at least 25 % shorter than level-barrier FIFO (mixed workload, 8 cores)
FIRST_DISPATCH_TARGET = 1.0  # s, 16 waters MBE(4)
OVERHEAD_TARGET = 1e-3  # s per fragment on top of QCEngine's own cost
RATE_TARGET = 500.0  # fragments/s end to end, no-op harness
RSS_TARGET = 1024.0  # MiB, 20,000-fragment MOPAC run

# ----------------------------------------------------------------------------- molecules


def molecule(mols: list[list]) -> Molecule:
    """A Molecule of neutral closed-shell fragments from ``[[(symbol, xyz in A), ...], ...]``.

    Charges and multiplicities are given up front: without them QCElemental searches fragment
    charge combinations, which takes seconds at 20 fragments and exhausts memory at 24.
    """
    symbols = [s for m in mols for s, _ in m]
    xyz = np.array([p for m in mols for _, p in m], dtype=float) / qcel_bohr_in_angstrom()
    bounds = np.cumsum([0] + [len(m) for m in mols])
    return Molecule(symbols=symbols, geometry=xyz.ravel(), molecular_charge=0.0, molecular_multiplicity=1,
                    fragments=[list(range(bounds[i], bounds[i + 1])) for i in range(len(mols))],
                    fragment_charges=[0.0] * len(mols), fragment_multiplicities=[1] * len(mols))


def qcel_bohr_in_angstrom() -> float:
    import qcelemental

    return float(qcelemental.constants.bohr2angstroms)


def _water(o: np.ndarray, hdir: np.ndarray, pdir: np.ndarray, r: float = 0.957, hoh: float = 104.5) -> list:
    """Water with O at ``o``, one O-H along ``hdir``, the other in the plane of ``hdir`` and ``pdir``."""
    u = hdir / np.linalg.norm(hdir)
    w = pdir - np.dot(pdir, u) * u
    w /= np.linalg.norm(w)
    a = math.radians(hoh)
    return [("O", o), ("H", o + r * u), ("H", o + r * (math.cos(a) * u + math.sin(a) * w))]


def ring_octamer(roo: float = 2.80, pucker: float = 0.30) -> Molecule:
    """Cyclic water octamer built like ``_bench_common.ring_hexamer``: O on a puckered octagon
    (O-O ``roo``), each water donating one H-bond along the O-O line to the next, free O-H
    alternately up and down."""
    n = 8
    side_xy = math.sqrt(roo**2 - (2 * pucker) ** 2)
    rxy = side_xy / (2 * math.sin(math.pi / n))
    oxy = np.array([[rxy * math.cos(2 * math.pi * k / n), rxy * math.sin(2 * math.pi * k / n), pucker * (-1) ** k]
                    for k in range(n)])
    mols = []
    for k in range(n):
        o = oxy[k]
        u = oxy[(k + 1) % n] - o
        ref = np.array([0.0, 0.0, (-1.0) ** k]) + 0.3 * o / np.linalg.norm(o)
        mols.append(_water(o, u, ref))
    mol = molecule(mols)
    geo = geometry_report(mol)
    if geo["min_any"] < 0.9 or geo["min_inter"] < 1.5 or not 2.6 <= geo["oo_min"] <= 3.0:
        raise ValueError(f"implausible water octamer geometry: {geo}")
    return mol


def benzene_waters(n_waters: int = 4) -> Molecule:
    """Benzene (fragment 1) with waters: one above and one below the ring, each donating an
    O-H...pi bond (H 2.39 A from the ring centre), the others in the ring plane accepting a
    C-H...O contact (H...O 2.45 A)."""
    ring = [("C", np.array([1.39 * math.cos(k * math.pi / 3), 1.39 * math.sin(k * math.pi / 3), 0.0]))
            for k in range(6)]
    ring += [("H", np.array([2.48 * math.cos(k * math.pi / 3), 2.48 * math.sin(k * math.pi / 3), 0.0]))
             for k in range(6)]
    z = np.array([0.0, 0.0, 1.0])
    mols = [ring, _water(np.array([0.0, 0.0, 3.35]), -z, np.array([1.0, 0, 0])),
            _water(np.array([0.0, 0.0, -3.35]), z, np.array([0, 1.0, 0]))]
    a = math.radians(52.25)
    for t in (0, 120, 240, 60, 180, 300)[: n_waters - 2]:
        out = np.array([math.cos(math.radians(t)), math.sin(math.radians(t)), 0.0])
        mols.append(_water(4.93 * out, math.cos(a) * out + math.sin(a) * z, math.cos(a) * out - math.sin(a) * z))
    mol = molecule(mols)
    geo = geometry_report(mol)
    if geo["min_any"] < 0.9 or geo["min_inter"] < 2.0:
        raise ValueError(f"implausible benzene-water geometry: {geo}")
    return mol


def water_lattice(n: int, spacing: float = 3.0, seed: int = 0, min_contact: float = 1.75) -> Molecule:
    """``n`` waters on a simple cubic lattice (O-O ``spacing`` A, ~liquid density at 3.0-3.1 A), each
    in a random orientation chosen so that no two atoms of different waters come closer than
    ``min_contact`` A."""
    rng = np.random.default_rng(seed)
    side = math.ceil(n ** (1 / 3))
    sites = [np.array(p, dtype=float) * spacing for p in itertools.product(range(side), repeat=3)][:n]
    local = np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]])
    placed: list[np.ndarray] = []
    for site in sites:
        for _ in range(1000):
            q, _r = np.linalg.qr(rng.normal(size=(3, 3)))
            xyz = site + local @ q.T
            if not placed:
                break
            if np.min(np.linalg.norm(np.concatenate(placed)[:, None] - xyz[None], axis=-1)) >= min_contact:
                break
        else:
            raise ValueError("could not place a water without a close contact: increase spacing")
        placed.append(xyz)
    return molecule([[(s, p) for s, p in zip("OHH", xyz, strict=True)] for xyz in placed])


def mbe(mol: Molecule, program: str, method: str, basis: str | None, *, bsse: str, max_nbody: int,
        keep_all: bool = True) -> ManyBodyInput:
    """Single-level energy MBE. ``keep_all``: ``protocols.cluster_results="all"`` so the sequential
    computer reports each fragment's ``provenance.wall_time`` (it changes no energies)."""
    spec: dict[str, Any] = {
        "driver": "energy",
        "keywords": {"bsse_type": [bsse], "max_nbody": max_nbody},
        "specification": {"(auto)": {"program": program, "model": {"method": method, "basis": basis},
                                     "driver": "energy"}},
    }
    if keep_all:
        spec["protocols"] = {"cluster_results": "all"}
    return ManyBodyInput(molecule=mol, specification=spec)


@dataclass
class RealWorkload:
    key: str
    title: str
    program: str
    method: str
    basis: str | None
    build: Callable[[], ManyBodyInput]


REAL_WORKLOADS = [
    RealWorkload("hexamer-nwchem", "water hexamer (ring), NoCP, 3-body, NWChem HF/6-31G", "nwchem", "hf", "6-31g",
                 lambda: mbe(hexamer(), "nwchem", "hf", "6-31g",
                             bsse="nocp", max_nbody=3)),
    RealWorkload("octamer-mopac", "water octamer (ring), CP, 3-body, MOPAC PM7", "mopac", "pm7", None,
                 lambda: mbe(ring_octamer(), "mopac", "pm7", None, bsse="cp", max_nbody=3)),
    RealWorkload("mixed-nwchem", "benzene + 4 waters (mixed sizes), NoCP, 4-body, NWChem HF/6-31G", "nwchem", "hf",
                 "6-31g", lambda: mbe(benzene_waters(4), "nwchem", "hf", "6-31g", bsse="nocp", max_nbody=4)),
]

# ----------------------------------------------------------------------------- runs


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def lower_bound(walls: list[float], cores: list[int], ncores: int) -> float:
    """max(longest fragment, core-seconds / ncores)."""
    return max(max(walls), sum(w * c for w, c in zip(walls, cores, strict=True)) / ncores)


def run_level_barrier_fifo(inp: ManyBodyInput, ncores: int, memory: float) -> dict[str, Any]:
    """The earlier design: all inputs built up front, then level by level (a barrier between
    levels), FIFO in QCManyBody's order, on a pool of ``ncores`` threads, one core per fragment.

    Each fragment goes through ``qcmb_async._qcengine.worker.execute_job`` (our QCEngine seams: primed
    globals, per-fragment environment), without which QCEngine breaks under threads; assembly is
    qcmb_async's (QCManyBody's ``analyze``/``get_results``).
    """
    from qcmb_async._core.assemble import assemble
    from qcmb_async._core.plan import make_plan
    from qcmb_async._qcengine.worker import execute_job
    from qcmb_async.executors.base import FragmentJob

    with CpuMeter() as meter:
        t0 = time.perf_counter()
        plan = make_plan(inp)
        jobs = {f.label: plan.materialise(f) for f in plan.fragments}
        task_config = {"ncores": 1, "memory": round(memory / ncores, 6), "scratch_directory": None, "retries": 0}
        outcomes: dict[str, Any] = {}
        with ThreadPoolExecutor(ncores, thread_name_prefix="level-barrier-fifo") as pool:
            t1 = time.perf_counter()
            for level in sorted({f.level for f in plan.fragments}):
                futures = {f.label: pool.submit(execute_job, FragmentJob(f.label, f.level, f.program,
                                                                         jobs[f.label].atomic_input, dict(task_config)))
                           for f in plan.fragments if f.level == level}
                for label, fut in futures.items():
                    out = fut.result()
                    if not out.success:
                        raise RuntimeError(f"fragment {label} failed: {out.error_type}: {out.error_message}")
                    outcomes[label] = out
            t2 = time.perf_counter()
        result = assemble(plan, {label: out.result for label, out in outcomes.items()})
        wall = time.perf_counter() - t0
    frags = [{"label": o.label, "start": o.start, "end": o.end, "cores": 1} for o in outcomes.values()]
    return {"result": result, "wall": wall, "stage": t2 - t1, "fragments": frags, "other_cores": meter.other_cores}


def _row(common: dict[str, Any], name: str, ncores: int, wall: float, stage: float, frags: list[dict[str, Any]],
         other: float, diff: float) -> dict[str, Any]:
    walls = [f["end"] - f["start"] for f in frags]
    cores = [int(f["cores"]) for f in frags]
    return {**common, "strategy": name, "ncores": ncores, "wall": wall, "stage": stage,
            "lb": lower_bound(walls, cores, ncores),
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
    seq_times = list(seq.fragment_times.values())
    lb_seq = max(max(seq_times), sum(seq_times) / ncores)
    common = {"workload": work.key, "title": work.title, "kind": "real", "fragments": len(seq_times),
              "lb_sequential_times": lb_seq, "load_before": load0}
    fifo_rows, par_rows, pars = [], [], []
    for i in range(repeats):
        print(f"[{work.key}] repeat {i + 1}/{repeats}: level-barrier FIFO ...", end="", flush=True)
        fifo = run_level_barrier_fifo(inp, ncores, memory)
        print(f" {fifo['wall']:.2f} s; qcmb_async ...", end="", flush=True)
        par = time_qcmb_async(inp, ncores=ncores, memory=memory, executor="threads")
        print(f" {par.wall:.2f} s", flush=True)
        fifo_rows.append(_row(common, "level-barrier FIFO", ncores, fifo["wall"], fifo["stage"], fifo["fragments"],
                              fifo["other_cores"], max_abs_diff(seq.result, fifo["result"])))
        pf = [f for f in par.record["fragments"] if f.get("start") is not None]
        par_rows.append(_row(common, "qcmb_async", ncores, par.wall, par.record["wall_time"], pf, par.other_cores,
                             max_abs_diff(seq.result, par.result)))
        pars.append(par)
    rows = [{**common, "strategy": "sequential", "ncores": 1, "wall": seq.wall, "stage": seq.wall,
             "lb": lb_seq, "sum_fragments": sum(seq_times), "other_cores": seq.other_cores, "max_diff": 0.0,
             "fragments_run": len(seq_times), "walls": [seq.wall]}]
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


# ----------------------------------------------------------------------------- planning and overhead


def noop_compute_cost(n: int = 1000, *, as_shipped: bool = True) -> float:
    """Seconds per bare ``qcengine.compute`` call with the no-op harness (one thread, warm).

    ``as_shipped``: QCEngine's own ``get_config`` (rebuilds its TaskConfig every call), even
    when an earlier section installed qcmb_async's seams, which reuse that TaskConfig; False
    measures the call as qcmb_async's workers make it.
    """
    import importlib

    import qcengine
    from qcelemental.models.v2 import AtomicInput

    from qcmb_async._qcengine import seams

    compute_module = importlib.import_module("qcengine.compute")
    patched = compute_module.get_config
    if as_shipped and "get_config" in seams._originals:
        compute_module.get_config = seams._originals["get_config"]
    try:
        return _time_noop(qcengine, AtomicInput, n)
    finally:
        compute_module.get_config = patched


def _time_noop(qcengine: Any, atomic_input_model: Any, n: int) -> float:
    mol = Molecule.from_data("O 0 0 0\nH 0 0.757 0.587\nH 0 -0.757 0.587")
    inp = atomic_input_model(molecule=mol, specification={"driver": "energy", "model": {"method": "noop"}})
    config = {"ncores": 1, "memory": 1.0, "retries": 0}
    for _ in range(50):
        qcengine.compute(inp, "qcmb-fake-noop", raise_error=True, task_config=config, return_version=2)
    t0 = time.perf_counter()
    for _ in range(n):
        qcengine.compute(inp, "qcmb-fake-noop", raise_error=True, task_config=config, return_version=2)
    return (time.perf_counter() - t0) / n


def planning_and_overhead(ncores: int, memory: float, repeats: int = 3) -> dict[str, Any]:
    """16 waters, MBE(4), NoCP with the no-op harness: call to first dispatch, then throughput.

    The run with the median wall time of ``repeats`` is reported (all walls kept)."""
    from qcmb_async import events, run
    from qcmb_async._core.plan import make_plan

    sys.path.insert(0, str(ROOT))
    from tests.fakes import register_fakes

    register_fakes()
    bare = noop_compute_cost()
    # Warm-up run (imports, QCEngine program lookup), untimed.
    run(mbe(water_lattice(4), "qcmb-fake-noop", "noop", None, bsse="nocp", max_nbody=2, keep_all=False),
        ncores=ncores, memory=memory, store=None, executor="threads")
    bare_seamed = noop_compute_cost(as_shipped=False)
    inp = mbe(water_lattice(16), "qcmb-fake-noop", "noop", None, bsse="nocp", max_nbody=4, keep_all=False)
    plan_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        n_plan = len(make_plan(inp).fragments)
        plan_times.append(time.perf_counter() - t0)
    plan_only = min(plan_times)

    seen: dict[str, float] = {}

    def on_event(event: Any) -> None:
        if isinstance(event, events.FragmentStarted) and "first" not in seen:
            seen["first"] = time.perf_counter()

    runs = []
    for _ in range(repeats):
        seen.clear()
        load0 = loadavg()
        with CpuMeter() as meter:
            t_call = time.perf_counter()
            res = run(inp, ncores=ncores, memory=memory, store=None, executor="threads", on_event=on_event)
            wall = time.perf_counter() - t_call
        rec = res.extras["qcmb_async"]
        frags = [f for f in rec["fragments"] if f.get("start") is not None]
        n = len(frags)
        span = max(f["end"] for f in frags) - min(f["start"] for f in frags)
        runs.append({
            "fragments": n, "planned": n_plan, "make_plan_s": plan_only, "first_dispatch_s": seen["first"] - t_call,
            "wall_s": wall, "schedule_stage_s": rec["wall_time"], "dispatch_span_s": span,
            "rate_end_to_end": n / wall, "rate_dispatch_span": n / span, "bare_compute_s": bare,
            "bare_compute_seamed_s": bare_seamed,
            "overhead_end_to_end_s": wall / n - bare, "overhead_dispatch_span_s": span / n - bare,
            "other_cores": meter.other_cores, "load_before": load0, "load_after": loadavg(),
        })
    runs.sort(key=lambda r: r["wall_s"])
    out = dict(runs[len(runs) // 2])
    out["repeats"] = repeats
    out["walls_s"] = [r["wall_s"] for r in runs]
    out["first_dispatches_s"] = sorted(r["first_dispatch_s"] for r in runs)
    return out


# ----------------------------------------------------------------------------- memory


def rss_child(n_waters: int, ncores: int, memory: float) -> None:
    """Run in a subprocess: the big MOPAC run; print one JSON line with this process's peak RSS."""
    from qcmb_async import prime_qcengine, run

    prime_qcengine()
    inp = mbe(water_lattice(n_waters, spacing=3.1), "mopac", "pm7", None, bsse="nocp", max_nbody=3, keep_all=False)
    t0 = time.perf_counter()
    res = run(inp, ncores=ncores, memory=memory, store=None, executor="threads")
    wall = time.perf_counter() - t0
    rec = res.extras["qcmb_async"]
    frags = [f for f in rec["fragments"] if f.get("start") is not None]
    walls = [f["end"] - f["start"] for f in frags]
    print(json.dumps({
        "fragments": len(frags), "wall_s": wall, "schedule_stage_s": rec["wall_time"],
        "lb_s": lower_bound(walls, [f["cores"] for f in frags], ncores),
        "median_fragment_s": float(np.median(walls)),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "energy": float(res.return_result),
    }))


def rss_run(n_waters: int, ncores: int, memory: float) -> dict[str, Any]:
    load0 = loadavg()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", str(n_waters), "--ncores", str(ncores),
           "--memory", str(memory)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"RSS child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update({"n_waters": n_waters, "process_wall_s": wall, "load_before": load0, "load_after": loadavg(),
                "children_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024})
    return out


# ----------------------------------------------------------------------------- simulation

STRATEGIES = (("level-barrier FIFO", "fifo", True), ("FIFO", "fifo", False), ("qcmb_async", "cost", False))


def sim_rows(workload: Any, key: str, title: str, core_counts: list[int]) -> list[dict[str, Any]]:
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


# ----------------------------------------------------------------------------- report


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'workload':<15}{'strategy':<20}{'cores':>6}{'frags':>7}{'wall s':>10}{'stage s':>10}{'LB s':>10}"
            f"{'wall/LB':>9}{'stage/LB':>9}{'vs seq':>8}{'vs LBF':>8}")
    lines = [head, "-" * len(head)]
    seq_wall: dict[str, float] = {}
    fifo_wall: dict[tuple[str, int], float] = {}
    for r in rows:
        if r["strategy"] == "sequential":
            seq_wall[r["workload"]] = r["wall"]
        if r["strategy"] == "level-barrier FIFO":
            fifo_wall[(r["workload"], r["ncores"])] = r["wall"]
    last = None
    for r in rows:
        wl = r["workload"] if r["workload"] != last else ""
        last = r["workload"]
        seq = r.get("sequential") or seq_wall.get(r["workload"])
        base = fifo_wall.get((r["workload"], r["ncores"]))
        r["speedup_sequential"] = seq / r["wall"] if seq else None
        r["speedup_level_barrier_fifo"] = base / r["wall"] if base and r["strategy"] != "sequential" else None
        r["wall_lb"] = r["wall"] / r["lb"] if r["strategy"] != "sequential" else None
        r["stage_lb"] = r["stage"] / r["lb"] if r["strategy"] != "sequential" else None

        def fmt(x: float | None, spec: str, suffix: str = "") -> str:
            return "-" if x is None else f"{x:{spec}}{suffix}"

        stage = "" if r["kind"] == "simulated" else fmt(r["stage"], ".2f")
        stage_lb = fmt(r["stage_lb"], ".3f") if stage else ""
        lines.append(f"{wl:<15}{r['strategy']:<20}{r['ncores']:>6}{r['fragments']:>7}{r['wall']:>10.2f}{stage:>10}"
                     f"{r['lb']:>10.2f}{fmt(r['wall_lb'], '.3f'):>9}{stage_lb:>9}"
                     f"{fmt(r['speedup_sequential'], '.2f', 'x'):>8}"
                     f"{fmt(r['speedup_level_barrier_fifo'], '.2f', 'x'):>8}")
    return "\n".join(lines)


def target(name: str, value: float, limit: float, *, at_most: bool = True, note: str = "") -> dict[str, Any]:
    met = value <= limit if at_most else value >= limit
    return {"target": name, "value": value, "limit": limit, "at_most": at_most, "met": bool(met), "note": note}


def targets(real: list[dict[str, Any]], sim: list[dict[str, Any]], plan: dict[str, Any] | None,
            rss: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for r in real:
        if r["strategy"] == "qcmb_async":
            out.append(target(f"real {r['workload']}: wall/LB (end to end)", r["wall_lb"], REAL_TARGET))
            out.append(target(f"real {r['workload']}: schedule stage/LB", r["stage_lb"], REAL_TARGET))
            out.append(target(f"real {r['workload']}: max |E - E(sequential)| Eh", r["max_diff"], DIFF_LIMIT))
        elif r["strategy"] == "level-barrier FIFO":
            out.append(target(f"real {r['workload']}: level-barrier FIFO max |E - E(sequential)| Eh", r["max_diff"],
                              DIFF_LIMIT))
    for r in sim:
        if r["strategy"] == "qcmb_async":
            out.append(target(f"sim {r['workload']} {r['ncores']} cores: wall/LB", r["wall_lb"], SIM_TARGET))
            if r["workload"] == "mixed replay" and r["ncores"] == 8:
                gain = 1 - r["wall"] / r["barrier_wall"]
                out.append(target("sim mixed replay 8 cores: shorter than level-barrier FIFO by", gain,
                                  SIM_GAIN_TARGET, at_most=False))
    if plan:
        out.append(target("16 waters MBE(4): call to first dispatch s", plan["first_dispatch_s"],
                          FIRST_DISPATCH_TARGET))
        out.append(target("no-op harness: fragments/s end to end", plan["rate_end_to_end"], RATE_TARGET,
                          at_most=False))
        out.append(target("no-op harness: scheduler overhead s/fragment (end to end - bare compute)",
                          plan["overhead_end_to_end_s"], OVERHEAD_TARGET))
    if rss:
        out.append(target(f"{rss['fragments']}-fragment MOPAC run: peak RSS MiB", rss["peak_rss_mib"], RSS_TARGET))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the 20,875-fragment MOPAC memory run (minutes)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--workloads", default=",".join(w.key for w in REAL_WORKLOADS),
                    help="real workloads to run (comma-separated keys)")
    ap.add_argument("--ncores", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3,
                    help="level-barrier FIFO / qcmb_async pairs per real workload (median reported)")
    ap.add_argument("--memory", type=float, default=4.0, help="GiB for the real runs")
    ap.add_argument("--rss-waters", type=int, default=50, help="waters of the MBE(3) memory run (50: 20,875 fragments)")
    ap.add_argument("--sim-fragments", type=int, default=100_000)
    ap.add_argument("--sim-cores", type=int, default=4096)
    ap.add_argument("--out", default=str(RESULTS / "bench.json"))
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child is not None:
        rss_child(args.rss_child, args.ncores, args.memory)
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := set(sections) - set(SECTIONS):
        ap.error(f"unknown section(s) {sorted(unknown)}")
    if args.quick and "rss" in sections:
        sections.remove("rss")

    import qcelemental
    import qcengine
    import qcmanybody

    import qcmb_async
    from qcmb_async import prime_qcengine

    started = datetime.now(UTC)
    meta = {
        "date": started.isoformat(timespec="seconds"), "python": platform.python_version(),
        "qcengine": qcengine.__version__, "qcelemental": qcelemental.__version__,
        "qcmanybody": qcmanybody.__version__, "qcmb_async": qcmb_async.__version__,
        "anyio": _version("anyio"), "trio": _version("trio"), "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)), "ncores": args.ncores, "memory": args.memory,
        "sections": sections, "load_start": loadavg(), "git": _git_head(),
    }
    print(f"qcmb_async {meta['qcmb_async']} ({meta['git']}), python {meta['python']}, qcengine {meta['qcengine']}, "
          f"qcmanybody {meta['qcmanybody']}, trio {meta['trio']}; {meta['cpus']} CPUs (affinity {meta['affinity']}); "
          f"load average at start {meta['load_start']}")
    prime_qcengine()
    t_start = time.perf_counter()
    real: list[dict[str, Any]] = []
    sim: list[dict[str, Any]] = []
    plan = rss = None
    mixed = None
    ok = True
    if "real" in sections:
        from qcmb_async.simulate import Workload

        chosen = [k.strip() for k in args.workloads.split(",") if k.strip()]
        for work in [w for w in REAL_WORKLOADS if w.key in chosen]:
            rows, par = real_rows(work, args.ncores, args.memory, args.repeats)
            real.extend(rows)
            for r in rows[1:]:
                if not r["max_diff"] < DIFF_LIMIT or r["fragments_run"] != r["fragments"]:
                    print(f"ERROR [{work.key}] {r['strategy']}: max |diff| {r['max_diff']:.2e} Eh, "
                          f"{r['fragments_run']} of {r['fragments']} fragments")
                    ok = False
            if work.key == "mixed-nwchem":
                mixed = Workload.from_run(par.result, work.build(), name=work.title)
                mixed.source = (f"qcmb_async run on {args.ncores} cores (the median of {args.repeats}), "
                                f"per-fragment end - start, {meta['date']}")
                RESULTS.mkdir(parents=True, exist_ok=True)
                mixed.save(RESULTS / "mixed-workload.json")
    if "planning" in sections or "overhead" in sections:
        print("\n[planning/overhead] 16 waters, MBE(4), NoCP, no-op harness ...", flush=True)
        plan = planning_and_overhead(args.ncores, args.memory)
    if "rss" in sections:
        print(f"\n[rss] {args.rss_waters} waters, MBE(3), NoCP, MOPAC PM7, in a subprocess (minutes) ...", flush=True)
        rss = rss_run(args.rss_waters, args.ncores, args.memory)
    if "sim" in sections:
        from qcmb_async.simulate import Workload, synthetic_workload

        if mixed is None and (RESULTS / "mixed-workload.json").exists():
            mixed = Workload.load(RESULTS / "mixed-workload.json")
            print(f"\n[sim] mixed workload times from {RESULTS / 'mixed-workload.json'} ({mixed.source})")
        if mixed is not None:
            print("\n[sim] mixed workload, measured fragment times replayed", flush=True)
            sim.extend(sim_rows(mixed, "mixed replay", mixed.name, [2, 8, 64, 512]))
        t0 = time.perf_counter()
        synth = synthetic_workload(args.sim_fragments, seed=1)
        print(f"\n[sim] {synth.name}: {len(synth)} fragments {synth.levels()}, built in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        sim.extend(sim_rows(synth, f"synthetic-{len(synth) // 1000}k", synth.name, [args.sim_cores]))
        real_par = [r for r in real if r["workload"] == "mixed-nwchem" and r["strategy"] == "qcmb_async"]
        sim_par = [r for r in sim if r["workload"] == "mixed replay" and r["strategy"] == "qcmb_async"
                   and r["ncores"] == args.ncores]
        if real_par and sim_par:
            print(f"\n[sim] fidelity: mixed workload on {args.ncores} cores, real qcmb_async stage "
                  f"{real_par[0]['stage']:.2f} s, its replay {sim_par[0]['wall']:.2f} s "
                  f"({sim_par[0]['wall'] / real_par[0]['stage'] - 1:+.1%})")

    rows = real + sim
    print("\n== figures of record ==")
    print("wall: real runs end to end (call to result); simulated runs makespan in virtual seconds.")
    print("stage: real runs, the fragments' stage only (qcmb_async: schedule(); level-barrier FIFO: the pool).")
    print("LB = max(longest fragment, fragment core-seconds / cores) from each run's own fragment times; the")
    print("sequential row shows LB from its uncontended fragment times on the same cores. vs LBF: speedup over")
    print("the level-barrier FIFO pool.")
    print(table(rows) if rows else "(no runs)")
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
    if plan:
        print(f"\nplanning, 16 waters MBE(4) NoCP ({plan['fragments']} fragments): call to first dispatch "
              f"{plan['first_dispatch_s']:.3f} s (make_plan alone, best of 3, {plan['make_plan_s']:.3f} s; "
              f"{plan['repeats']} runs: {', '.join(f'{x:.3f}' for x in plan['first_dispatches_s'])} s)")
        print(f"overhead, no-op harness, {args.ncores} cores, threads: {plan['rate_end_to_end']:.0f} fragments/s "
              f"end to end, {plan['rate_dispatch_span']:.0f}/s first dispatch to last end; bare qcengine.compute "
              f"{plan['bare_compute_s'] * 1e3:.3f} ms as shipped "
              f"({plan.get('bare_compute_seamed_s', float('nan')) * 1e3:.3f} ms through qcmb_async's seams); "
              f"added per fragment {plan['overhead_end_to_end_s'] * 1e3:.3f} ms "
              f"end to end, {plan['overhead_dispatch_span_s'] * 1e3:.3f} ms while dispatching; other processes "
              f"{plan['other_cores']:.2f} cores; walls of {plan['repeats']} runs "
              f"{', '.join(f'{w:.2f}' for w in plan['walls_s'])} s (median shown)")
    if rss:
        print(f"\nmemory, {rss['n_waters']} waters MBE(3) NoCP MOPAC PM7 ({rss['fragments']} fragments): peak RSS "
              f"{rss['peak_rss_mib']:.0f} MiB; wall {rss['wall_s']:.1f} s, LB {rss['lb_s']:.1f} s "
              f"(wall/LB {rss['wall_s'] / rss['lb_s']:.3f}), median fragment {rss['median_fragment_s'] * 1e3:.1f} ms")
    if sim:
        took = sum(r["elapsed_s"] for r in sim)
        print(f"\nsimulation: {len(sim)} simulated runs took {took:.1f} s of real time")
    checks = targets(real, sim, plan, rss)
    print("\n== targets ==")
    for c in checks:
        op = "<=" if c["at_most"] else ">="
        print(f"  {'met    ' if c['met'] else 'NOT met'}  {c['target']}: {c['value']:.4g} {op} {c['limit']:g}")
    meta["load_end"] = loadavg()
    meta["bench_seconds"] = time.perf_counter() - t_start
    print(f"\nload average at end {meta['load_end']}; benchmark took {meta['bench_seconds']:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "planning_overhead": plan, "memory": rss,
                               "targets": checks}, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return 0 if ok else 1


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def _git_head() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
