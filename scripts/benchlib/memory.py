"""Figures of record, memory: peak RSS of a 20,875-fragment MOPAC run (50 waters, MBE(3), NoCP) in a subprocess."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from .figures import record_bound
from .measurement import computed, loadavg
from .molecules import mbe, water_lattice
from .report import ROOT

#: The entry script the child runs (``--rss-child N``): a fresh process, so its peak RSS is the run's.
CHILD_SCRIPT = ROOT / "scripts" / "bench_memory.py"


def rss_child(n_waters: int, ncores: int, memory: float) -> None:
    """Run in a subprocess: the big MOPAC run; print one JSON line with this process's peak RSS."""
    from qcmb_async import prime_qcengine, run

    prime_qcengine()
    inp = mbe(water_lattice(n_waters, spacing=3.1), "mopac", "pm7", None, bsse="nocp", max_nbody=3, keep_all=False)
    t0 = time.perf_counter()
    res = run(inp, ncores=ncores, memory=memory, store=None, executor="threads")
    wall = time.perf_counter() - t0
    rec = res.extras["qcmb_async"]
    frags = computed(rec["fragments"])
    print(json.dumps({
        "fragments": len(frags), "wall_s": wall, "schedule_stage_s": rec["wall_time"],
        "lb_s": record_bound(frags, ncores),
        "median_fragment_s": float(statistics.median(f["end"] - f["start"] for f in frags)),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "energy": float(res.return_result),
    }))


def rss_run(n_waters: int, ncores: int, memory: float) -> dict[str, Any]:
    """:func:`rss_child` in a subprocess; its JSON line plus the process wall time and load averages."""
    load0 = loadavg()
    cmd = [sys.executable, str(CHILD_SCRIPT), "--rss-child", str(n_waters), "--ncores", str(ncores),
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


def print_memory(rss: dict[str, Any]) -> None:
    """The memory line of the figures of record."""
    print(f"\nmemory, {rss['n_waters']} waters MBE(3) NoCP MOPAC PM7 ({rss['fragments']} fragments): peak RSS "
          f"{rss['peak_rss_mib']:.0f} MiB; wall {rss['wall_s']:.1f} s, LB {rss['lb_s']:.1f} s "
          f"(wall/LB {rss['wall_s'] / rss['lb_s']:.3f}), median fragment {rss['median_fragment_s'] * 1e3:.1f} ms")
