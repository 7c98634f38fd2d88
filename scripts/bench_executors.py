"""PySCF water hexamer (CP, 3-body, HF/6-31G): sequential QCManyBody vs threads vs processes, one run.

Target on 2 cores: processes >= 1.8x faster than sequential. Timing targets are reported,
never asserted; the results must agree to 1e-9 Eh (exit 1 otherwise).

Rows, in the order they run:
  sequential         QCManyBody's own computer (each fragment gets every core: PySCF's threads)
  threads            executor="threads"
  processes (cold)   executor="processes": the run starts its worker pool (fresh interpreters
                     importing QCEngine and PySCF) and stops it at the end
  processes (pool)   a ProcessExecutor entered before the timed run, as a session, notebook or
                     scan keeps it for run after run; its start-up is printed apart

"ceiling" is the speedup the row would reach with no time outside its fragments and a
perfectly packed schedule: sequential wall / (sum of the row's fragment core-seconds /
ncores). It moves with how much slower a 1-core fragment running next to another one is than
the sequential 2-thread fragment, which this machine decides, not the scheduler.

    python scripts/bench_executors.py [--ncores 2] [--basis 6-31g]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import anyio
from _bench_common import DIFF_LIMIT, atime_qcmb_async, figures, hexamer_input, time_sequential, warm_up

from qcmb_async import prime_qcengine
from qcmb_async.executors.processes import ProcessExecutor

TARGET = 1.8


async def measure(args: argparse.Namespace) -> tuple[Any, list[tuple[str, dict[str, float]]], float]:
    inp = hexamer_input("pyscf", "hf", args.basis)
    seq = time_sequential(inp)
    rows = []
    for name, executor in (("threads", "threads"), ("processes (cold)", "processes")):
        par = await atime_qcmb_async(inp, ncores=args.ncores, memory=4, executor=executor)
        rows.append((name, figures(seq, par, args.ncores)))
    t0 = time.perf_counter()
    async with ProcessExecutor(max_workers=args.ncores, warm={"pyscf"}) as pool:
        started = time.perf_counter() - t0
        par = await atime_qcmb_async(inp, ncores=args.ncores, memory=4, executor=pool)
        rows.append(("processes (pool)", figures(seq, par, args.ncores)))
    return seq, rows, started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ncores", type=int, default=2)
    ap.add_argument("--basis", default="6-31g")
    args = ap.parse_args()
    prime_qcengine()
    warm_up("pyscf", "hf", args.basis)
    seq, rows, pool_start = anyio.run(measure, args)
    first = rows[0][1]
    print(f"\n== PySCF HF/{args.basis}: water hexamer, CP, 3-body, {first['n_par']} fragments, "
          f"{args.ncores} cores ==")
    print(f"  {'':18}{'wall [s]':>9}{'speedup':>9}{'schedule [s]':>13}{'makespan/LB':>12}{'ceiling':>9}"
          f"{'median frag [s]':>16}{'max |diff| [Eh]':>16}")
    print(f"  {'sequential':18}{seq.wall:9.2f}{1.0:9.2f}{'':>13}{'':>12}{'':>9}{first['median_seq']:16.3f}")
    ok = True
    for name, fig in rows:
        ceiling = fig["seq_wall"] / (fig["par_sum"] / args.ncores)
        print(f"  {name:18}{fig['par_wall']:9.2f}{fig['speedup']:9.2f}{fig['schedule_wall']:13.2f}"
              f"{fig['ratio']:12.3f}{ceiling:9.2f}{fig['median_par']:16.3f}{fig['max_diff']:16.1e}")
        ok &= fig["max_diff"] < DIFF_LIMIT
    figs = dict(rows)
    cold, pool = figs["processes (cold)"], figs["processes (pool)"]
    print(f"  pool start-up (paid once per pool, outside the 'processes (pool)' row): {pool_start:.2f} s; "
          f"the cold row spent {cold['outside_schedule']:.2f} s outside its schedule")
    print(f"  1-core fragment next to another / sequential 2-thread fragment (medians): "
          f"{cold['median_par'] / cold['median_seq']:.3f} cold, {pool['median_par'] / pool['median_seq']:.3f} pool "
          f"(the ceiling is {args.ncores} / this, at best)")
    for name, fig in (("cold", cold), ("pool", pool)):
        print(f"target: processes ({name}) >= {TARGET}x faster than sequential: {fig['speedup']:.2f}x "
              f"({'met' if fig['speedup'] >= TARGET else 'NOT met'})")
    if not ok:
        print("RESULTS DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
