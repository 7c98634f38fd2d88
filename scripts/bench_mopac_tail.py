"""Where the MOPAC octamer's time above the lower bound goes, from the run's own timeline.

The workload of record for 30-ms fragments (``bench_real.py``'s ``octamer-mopac``: ring water
octamer, NoCP, MBE(3), MOPAC PM7, 92 fragments, 2 cores, threads executor; no store unless asked).
Each run is split (after one untimed warm-up run in the same process), from its fragment records
(``start``/``end`` around ``qcengine.compute`` in the worker) and the caller's clock, into:

* ``before first``: from the call of ``qcmb_async.run`` to the first fragment's start (import-free:
  planning, executor start, first dispatch);
* ``after last``: from the last fragment's end to ``run`` returning (assembly, result, shutdown);
* ``gaps``: core-seconds between one fragment's end and the next start on the same core (dispatch,
  thread hand-off, store, records, events), counted from the lanes of ``qcmb_async.timeline``;
* ``imbalance``: core-seconds a core idles at the start or end of the schedule while the other
  runs a fragment (what no list schedule of these fragments avoids entirely).

``wall = LB + excess``; with ``LB = max(longest, busy / 2)`` the excess is, for 2 cores,
``before + after + (gaps + imbalance) / 2`` whenever the busy time bounds the run.

``--compare DIR`` alternates runs of another copy of the package (e.g. a ``git archive`` of the
commit before a change) with this one, one process per run, so both see the same machine load::

    PYTHONPATH=$PWD python scripts/bench_mopac_tail.py --repeats 7 [--compare /tmp/before] [--store existing]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def split(rec: dict[str, Any], t_call: float, t_return: float, ncores: int) -> dict[str, float]:
    """The run's wall (s) split as the module docstring says; epoch seconds in, seconds out."""
    from qcmb_async.timeline import assign_lanes, timeline_intervals

    intervals = timeline_intervals(rec)
    first, last = min(iv.start for iv in intervals), max(iv.end for iv in intervals)
    lanes_of, nlanes = assign_lanes(intervals, ncores)
    per_lane: dict[int, list[tuple[float, float]]] = {lane: [] for lane in range(nlanes)}
    for iv, lanes in zip(intervals, lanes_of, strict=True):
        for lane in lanes:
            per_lane[lane].append((iv.start, iv.end))
    gaps = imbalance = 0.0
    for spans in per_lane.values():
        spans.sort()
        if not spans:
            imbalance += last - first
            continue
        imbalance += (spans[0][0] - first) + (last - spans[-1][1])
        gaps += sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(spans))
    busy = sum(iv.wall * iv.cores for iv in intervals)
    longest = max(iv.wall for iv in intervals)
    lb = max(longest, busy / ncores)
    wall = t_return - t_call
    return {
        "wall": wall, "lb": lb, "ratio": wall / lb, "fragments": len(intervals),
        "before_first": first - t_call, "after_last": t_return - last,
        "sched_started_to_first": first - rec["started"], "last_to_sched_finished": rec["finished"] - last,
        "gaps": gaps, "gap_per_fragment_ms": 1e3 * gaps / max(1, len(intervals) - ncores),
        "imbalance": imbalance, "busy": busy,
        "median_fragment_ms": 1e3 * statistics.median(iv.wall for iv in intervals),
    }


def one_run(store: str) -> dict[str, Any]:
    """One timed run of the octamer in this process; its split as a dict (printed as JSON by ``--child``)."""
    import tempfile

    sys.path.insert(0, str(HERE))
    from benchlib.real import REAL_WORKLOADS

    import qcmb_async
    from qcmb_async import run

    work = next(w for w in REAL_WORKLOADS if w.key == "octamer-mopac")
    inp = work.build()
    # One untimed run first, as bench_real's repeats run in a process that has run the workload before:
    # imports and QCEngine's program look-ups are not what is measured.
    run(inp, ncores=2, memory=2, executor="threads", store=None)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) / "store.sqlite" if store != "none" else None
        if store == "existing":  # a store that exists already (a user's default store after its first run)
            from qcmb_async._core.store import ResultStore

            ResultStore(where).close()
        t_call = time.time()
        res = run(inp, ncores=2, memory=2, executor="threads", store=where)
        t_return = time.time()
    out = split(res.extras["qcmb_async"], t_call, t_return, 2)
    out["energy"] = float(res.properties.return_energy)
    out["package"] = str(Path(qcmb_async.__file__).parent.parent)
    return out


def child(package: Path, store: str) -> dict[str, Any]:
    """:func:`one_run` in a fresh interpreter importing qcmb_async from ``package``."""
    env = {**os.environ, "PYTHONPATH": str(package)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--store", store]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=str(package))
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_mopac() -> None:
    """One MOPAC water first, so neither variant pays for cold program files."""
    sys.path.insert(0, str(HERE))
    from benchlib.measurement import warm_up

    warm_up("mopac", "pm7", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="another copy of the package to alternate with (before)")
    parser.add_argument("--name", default="this", help="label of this copy's runs")
    parser.add_argument("--compare-name", default="before", help="label of the other copy's runs")
    parser.add_argument("--store", choices=("none", "fresh", "existing"), default="none",
                        help="no result store, a new one, or one that exists (empty) before the run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.store)))
        return 0
    here = Path(__file__).resolve().parent.parent
    variants = [(args.compare_name, args.compare), (args.name, here)] if args.compare else [(args.name, here)]
    warm_mopac()
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    load0 = os.getloadavg()
    for i in range(args.repeats):
        for name, package in (variants if i % 2 == 0 else variants[::-1]):
            r = child(package, args.store)
            rows[name].append(r)
            print(f"{name:8s} wall {r['wall']:.3f} s  LB {r['lb']:.3f}  wall/LB {r['ratio']:.3f}  "
                  f"before first {1e3 * r['before_first']:.0f} ms  after last {1e3 * r['after_last']:.0f} ms  "
                  f"gaps {1e3 * r['gaps']:.0f} ms ({r['gap_per_fragment_ms']:.2f} ms/fragment)  "
                  f"imbalance {1e3 * r['imbalance']:.0f} ms  load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\nload average {load0} -> {os.getloadavg()}; store {args.store}; "
          f"{args.repeats} runs each, alternating")
    for name, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("ratio", "wall", "lb", "before_first",
                                                                  "after_last", "gaps", "imbalance",
                                                                  "gap_per_fragment_ms", "median_fragment_ms")}
        ratios = ", ".join(f"{r['ratio']:.3f}" for r in rs)
        print(f"{name}: wall/LB median {med['ratio']:.3f} ({ratios}); wall {med['wall']:.3f} s, LB {med['lb']:.3f} s, "
              f"before first {1e3 * med['before_first']:.0f} ms, after last {1e3 * med['after_last']:.0f} ms, gaps "
              f"{1e3 * med['gaps']:.0f} ms ({med['gap_per_fragment_ms']:.2f} ms/fragment), imbalance "
              f"{1e3 * med['imbalance']:.0f} ms, median fragment {med['median_fragment_ms']:.1f} ms; "
              f"qcmb_async from {rs[0]['package']}")
    energies = {r["energy"] for rs in rows.values() for r in rs}
    print(f"energies: spread {max(energies) - min(energies):.1e} Eh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
