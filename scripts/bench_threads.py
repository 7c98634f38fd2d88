"""Sequential QCManyBody vs qcmb_async (thread executor) on a water hexamer, CP, up to 3-body, energy.

For each program, in this one process: an untimed warm-up calculation, QCManyBody's sequential
``ManyBodyComputer`` (timed), then ``qcmb_async.run(..., executor="threads")`` (timed). Prints wall
times, speedup, makespan against the lower bound max(longest fragment, sum of fragments / ncores),
median fragment times and the largest difference of ``return_result``; exits 1 if the results differ
by 1e-9 Eh or more. Timing targets are reported, never asserted.

    PYTHONPATH=. python scripts/bench_threads.py [--programs mopac,nwchem] [--ncores 2] [--memory 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from _bench_common import (
    DIFF_LIMIT,
    SPECS,
    figures,
    hexamer_input,
    print_comparison,
    print_summary,
    target_line,
    time_qcmb_async,
    time_sequential,
    warm_up,
)

import qcmb_async
from qcmb_async import prime_qcengine

#: Programs whose makespan / lower bound target (<= 1.10) applies. MOPAC fragments take
#: milliseconds, so fixed per-fragment costs dominate its ratio; it is printed for information.
MAKESPAN_TARGET_PROGRAMS = {"nwchem", "pyscf"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", default="mopac,nwchem", help="comma-separated, run in this order")
    ap.add_argument("--ncores", type=int, default=2, help="cores for qcmb_async (default 2)")
    ap.add_argument("--memory", type=float, default=4.0, help="GiB for qcmb_async (default 4)")
    args = ap.parse_args()
    programs = [p.strip() for p in args.programs.split(",") if p.strip()]
    unknown = [p for p in programs if p not in SPECS]
    if unknown:
        ap.error(f"unknown program(s) {unknown}; known: {sorted(SPECS)}")

    import qcengine
    import qcmanybody

    print(f"python {platform.python_version()}, qcengine {qcengine.__version__}, qcmanybody {qcmanybody.__version__}, "
          f"qcmb_async {qcmb_async.__version__}; {os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}")
    t0 = time.perf_counter()
    prime_qcengine()
    print(f"prime_qcengine: {time.perf_counter() - t0:.2f} s (untimed)")

    ok = True
    rows = []
    for program in programs:
        method, basis = SPECS[program]
        t_warm = warm_up(program, method, basis)
        inp = hexamer_input(program, method, basis)
        print(f"\n[{program}] warm-up water monomer: {t_warm:.2f} s (untimed); running sequential ...", flush=True)
        seq = time_sequential(inp)
        print(f"[{program}] running qcmb_async threads ...", flush=True)
        par = time_qcmb_async(inp, ncores=args.ncores, memory=args.memory, executor="threads")
        fig = figures(seq, par, args.ncores)
        title = (f"{program} {method}/{basis or '-'}: water hexamer (ring, O-O 2.80 A), CP, max_nbody 3, energy; "
                 f"qcmb_async executor={par.record['executor']} ncores={args.ncores} memory={args.memory:g} GiB")
        print_comparison(title, fig, args.ncores, label="qcmb_async")
        line, _ = target_line(fig, makespan_applies=program in MAKESPAN_TARGET_PROGRAMS)
        print(f"[{program}] {line}")
        if not fig["max_diff"] < DIFF_LIMIT or fig["n_seq"] != fig["n_par"]:
            print(f"[{program}] ERROR: results differ (max |diff| {fig['max_diff']:.3e} Eh, "
                  f"{fig['n_seq']} vs {fig['n_par']} fragments)")
            ok = False
        rows.append((program, fig))

    print_summary(rows)
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
