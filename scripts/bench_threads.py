"""Sequential QCManyBody vs qcmb_async threads on a water hexamer (CP, up to 3-body), one run.

usage: python scripts/bench_threads.py [--programs mopac,nwchem] [--ncores 2]
"""

from __future__ import annotations

import argparse
import sys

from _bench_common import figures, hexamer_input, max_diff, ours, seq_median, sequential, warm_up

from qcmb_async import prime_qcengine

SPECS = {"mopac": ("pm7", None), "nwchem": ("hf", "sto-3g"), "pyscf": ("hf", "sto-3g")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--programs", default="mopac,nwchem")
    ap.add_argument("--ncores", type=int, default=2)
    args = ap.parse_args()
    prime_qcengine()
    ok = True
    for program in args.programs.split(","):
        method, basis = SPECS[program]
        warm_up(program, method, basis)
        inp = hexamer_input(program, method, basis)
        seq, t_seq = sequential(inp)
        par, t_par = ours(inp, ncores=args.ncores, memory=4, executor="threads")
        fig = figures(par, args.ncores)
        diff = max_diff(par, seq)
        med_seq = seq_median()
        print(f"\n== {program} {method}/{basis or '-'}: water hexamer, CP, 3-body, {fig['n']} fragments, "
              f"{args.ncores} cores ==")
        print(f"sequential (QCManyBody)      {t_seq:8.2f} s")
        print(f"qcmb_async threads           {t_par:8.2f} s   (schedule {fig['makespan']:.2f} s)")
        print(f"speedup                      {t_seq / t_par:8.2f} x")
        print(f"lower bound                  {fig['lower_bound']:8.2f} s   max(longest, sum/cores)")
        print(f"makespan / lower bound       {fig['ratio']:8.3f}")
        print(f"median fragment  threaded    {fig['median']:8.3f} s")
        print(f"median fragment  sequential  {med_seq:8.3f} s   ratio {fig['median'] / med_seq:.3f}")
        print(f"max |difference| of result   {diff:8.1e} Eh")
        if diff >= 1e-9:
            print("RESULTS DIFFER")
            ok = False
        if program == "nwchem":
            met = fig["ratio"] <= 1.10 and fig["median"] / med_seq <= 1.10
            print(f"targets (makespan <= 1.10 x bound, median ratio <= 1.10): {'met' if met else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
