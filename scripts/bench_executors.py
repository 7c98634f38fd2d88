"""PySCF water hexamer (CP, 3-body, HF/6-31G): sequential QCManyBody vs threads vs processes, one run.

Target on 2 cores: processes >= 1.8x faster than sequential. Timing targets are reported,
never asserted; the results must agree to 1e-9 Eh (exit 1 otherwise).

    python scripts/bench_executors.py [--ncores 2] [--basis 6-31g]
"""

from __future__ import annotations

import argparse
import sys

from _bench_common import DIFF_LIMIT, figures, hexamer_input, time_qcmb_async, time_sequential, warm_up

from qcmb_async import prime_qcengine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ncores", type=int, default=2)
    ap.add_argument("--basis", default="6-31g")
    args = ap.parse_args()
    prime_qcengine()
    warm_up("pyscf", "hf", args.basis)
    inp = hexamer_input("pyscf", "hf", args.basis)
    seq = time_sequential(inp)
    rows = []
    for executor in ("threads", "processes"):
        par = time_qcmb_async(inp, ncores=args.ncores, memory=4, executor=executor)
        rows.append((executor, figures(seq, par, args.ncores)))
    print(f"\n== PySCF HF/{args.basis}: water hexamer, CP, 3-body, {rows[0][1]['n_par']} fragments, "
          f"{args.ncores} cores ==")
    print(f"  {'':12}{'wall [s]':>10}{'speedup':>10}{'schedule [s]':>14}{'makespan/LB':>13}{'median frag [s]':>17}"
          f"{'max |diff| [Eh]':>17}")
    print(f"  {'sequential':12}{seq.wall:10.2f}{1.0:10.2f}{'':>14}{'':>13}{rows[0][1]['median_seq']:17.3f}{'':>17}")
    ok = True
    for name, fig in rows:
        print(f"  {name:12}{fig['par_wall']:10.2f}{fig['speedup']:10.2f}{fig['schedule_wall']:14.2f}"
              f"{fig['ratio']:13.3f}{fig['median_par']:17.3f}{fig['max_diff']:17.1e}")
        ok &= fig["max_diff"] < DIFF_LIMIT
    proc = dict(rows)["processes"]
    print(f"target: processes >= 1.8x faster than sequential: {proc['speedup']:.2f}x "
          f"({'met' if proc['speedup'] >= 1.8 else 'NOT met'})")
    if not ok:
        print("RESULTS DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
