"""Sequential QCManyBody vs qcmb_async (thread executor) on a water hexamer, CP, up to 3-body, energy.

For each program, in this one process: an untimed warm-up calculation, then QCManyBody's sequential
``ManyBodyComputer`` (timed) followed by ``qcmb_async.run(..., executor="threads")`` (timed), repeated
``--repeats`` times (figures are medians over the repeats). Prints wall
times, speedup, makespan against the lower bound max(longest fragment, sum of fragments / ncores),
median fragment times and the largest difference of ``return_result``; exits 1 if the results differ
by 1e-9 Eh or more. Timing targets are reported, never asserted.

    PYTHONPATH=. python scripts/bench_threads.py [--programs mopac,nwchem] [--ncores 2] [--memory 4]
                                                 [--repeats mopac=5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from benchlib.figures import DIFF_LIMIT, aggregate, figures
from benchlib.measurement import machine_busy, time_qcmb_async, time_sequential, warm_up
from benchlib.molecules import SPECS, hexamer_input
from benchlib.report import interference_warning, print_comparison, print_summary, target_line

import qcmb_async
from qcmb_async import prime_qcengine

#: Programs whose makespan / lower bound target (<= 1.10) applies. MOPAC fragments take
#: milliseconds, so fixed per-fragment costs dominate its ratio; it is printed for information.
MAKESPAN_TARGET_PROGRAMS = {"nwchem", "pyscf"}


#: MOPAC fragments take ~25 ms and their median wanders by +-20 % from one run to the next, so
#: one pair says little; a pair costs ~2 s. One NWChem pair (~55 s) is already stable.
DEFAULT_REPEATS = "mopac=5"


def parse_repeats(spec: str, programs: list[str]) -> dict[str, int]:
    """``"3"`` -> 3 for every program; ``"mopac=5,nwchem=1"`` -> per program (1 when not named)."""
    if spec.strip().isdigit():
        counts = dict.fromkeys(programs, int(spec))
    else:
        counts = dict.fromkeys(programs, 1)
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, value = item.partition("=")
            if not sep or not value.strip().isdigit():
                raise ValueError(f"--repeats: expected N or program=N,..., got {item!r}")
            if name.strip() in counts:
                counts[name.strip()] = int(value)
    if any(n < 1 for n in counts.values()):
        raise ValueError("--repeats must be at least 1")
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", default="mopac,nwchem", help="comma-separated, run in this order")
    ap.add_argument("--ncores", type=int, default=2, help="cores for qcmb_async (default 2)")
    ap.add_argument("--memory", type=float, default=4.0, help="GiB for qcmb_async (default 4)")
    ap.add_argument("--repeats", default=DEFAULT_REPEATS,
                    help=f"sequential/qcmb_async pairs per program: N, or program=N,... (default {DEFAULT_REPEATS}; "
                         "1 for programs not named); figures are medians over the repeats")
    args = ap.parse_args()
    programs = [p.strip() for p in args.programs.split(",") if p.strip()]
    unknown = [p for p in programs if p not in SPECS]
    if unknown:
        ap.error(f"unknown program(s) {unknown}; known: {sorted(SPECS)}")
    try:
        repeats = parse_repeats(args.repeats, programs)
    except ValueError as exc:
        ap.error(str(exc))

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
        before = machine_busy(1.0)
        print(f"\n[{program}] warm-up water monomer: {t_warm:.2f} s (untimed); machine busy before the runs: "
              f"{before:.2f} cores", flush=True)
        figs = []
        for i in range(repeats[program]):
            print(f"[{program}] repeat {i + 1}/{repeats[program]}: sequential ...", end="", flush=True)
            seq = time_sequential(inp)
            print(f" {seq.wall:.2f} s; qcmb_async threads ...", end="", flush=True)
            par = time_qcmb_async(inp, ncores=args.ncores, memory=args.memory, executor="threads")
            figs.append(figures(seq, par, args.ncores))
            print(f" {par.wall:.2f} s", flush=True)
        fig = aggregate(figs)
        title = (f"{program} {method}/{basis or '-'}: water hexamer (ring, O-O 2.80 A), CP, max_nbody 3, energy; "
                 f"qcmb_async executor={par.record['executor']} ncores={args.ncores} memory={args.memory:g} GiB")
        print_comparison(title, fig, args.ncores, label="qcmb_async")
        warning = interference_warning(before, fig)
        if warning:
            print(f"[{program}] {warning}")
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
