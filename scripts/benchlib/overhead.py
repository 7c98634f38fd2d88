"""Figures of record, planning and overhead: 16 waters, MBE(4), NoCP (2,516 fragments) with the no-op harness."""

from __future__ import annotations

import sys
import time
from typing import Any

from .baselines import noop_compute_cost
from .measurement import CpuMeter, computed, loadavg
from .molecules import mbe, water_lattice
from .report import ROOT


def planning_and_overhead(ncores: int, memory: float, repeats: int = 3) -> dict[str, Any]:
    """Call to first dispatch, then throughput and added time per fragment (s).

    The run with the median wall time of ``repeats`` is reported (all walls kept)."""
    from qcmb_async import run
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
    common = {"planned": n_plan, "make_plan_s": min(plan_times), "bare_compute_s": bare,
              "bare_compute_seamed_s": bare_seamed}
    runs = sorted((_noop_run(inp, ncores, memory, common) for _ in range(repeats)), key=lambda r: r["wall_s"])
    out = dict(runs[len(runs) // 2])
    out["repeats"] = repeats
    out["walls_s"] = [r["wall_s"] for r in runs]
    out["first_dispatches_s"] = sorted(r["first_dispatch_s"] for r in runs)
    return out


def _noop_run(inp: Any, ncores: int, memory: float, common: dict[str, Any]) -> dict[str, Any]:
    """One timed no-op run: first dispatch, rates, and time added per fragment over ``bare_compute_s``."""
    from qcmb_async import events, run

    seen: dict[str, float] = {}

    def on_event(event: Any) -> None:
        if isinstance(event, events.FragmentStarted) and "first" not in seen:
            seen["first"] = time.perf_counter()

    load0 = loadavg()
    with CpuMeter() as meter:
        t_call = time.perf_counter()
        res = run(inp, ncores=ncores, memory=memory, store=None, executor="threads", on_event=on_event)
        wall = time.perf_counter() - t_call
    rec = res.extras["qcmb_async"]
    frags = computed(rec["fragments"])
    n = len(frags)
    span = max(f["end"] for f in frags) - min(f["start"] for f in frags)
    bare = common["bare_compute_s"]
    return {
        "fragments": n, **common, "first_dispatch_s": seen["first"] - t_call,
        "wall_s": wall, "schedule_stage_s": rec["wall_time"], "dispatch_span_s": span,
        "rate_end_to_end": n / wall, "rate_dispatch_span": n / span,
        "overhead_end_to_end_s": wall / n - bare, "overhead_dispatch_span_s": span / n - bare,
        "other_cores": meter.other_cores, "load_before": load0, "load_after": loadavg(),
    }


def print_planning_overhead(plan: dict[str, Any], ncores: int) -> None:
    """The planning line and the overhead line of the figures of record."""
    print(f"\nplanning, 16 waters MBE(4) NoCP ({plan['fragments']} fragments): call to first dispatch "
          f"{plan['first_dispatch_s']:.3f} s (make_plan alone, best of 3, {plan['make_plan_s']:.3f} s; "
          f"{plan['repeats']} runs: {', '.join(f'{x:.3f}' for x in plan['first_dispatches_s'])} s)")
    print(f"overhead, no-op harness, {ncores} cores, threads: {plan['rate_end_to_end']:.0f} fragments/s "
          f"end to end, {plan['rate_dispatch_span']:.0f}/s first dispatch to last end; bare qcengine.compute "
          f"{plan['bare_compute_s'] * 1e3:.3f} ms as shipped "
          f"({plan.get('bare_compute_seamed_s', float('nan')) * 1e3:.3f} ms through qcmb_async's seams); "
          f"added per fragment {plan['overhead_end_to_end_s'] * 1e3:.3f} ms "
          f"end to end, {plan['overhead_dispatch_span_s'] * 1e3:.3f} ms while dispatching; other processes "
          f"{plan['other_cores']:.2f} cores; walls of {plan['repeats']} runs "
          f"{', '.join(f'{w:.2f}' for w in plan['walls_s'])} s (median shown)")
