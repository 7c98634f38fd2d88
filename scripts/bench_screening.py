"""Screened expansions: subsystems computed, wall time and error per monomer vs the unscreened MBE.

(H2O)20 MBE(4) and (H2O)32 MBE(3), MOPAC PM7 NoCP, and (H2O)6 MBE(3) CP with PySCF HF/STO-3G: each
unscreened once, then each distance/energy screening with no result store (every kept fragment is
really computed). Also plans 100 waters MBE(4) with distance screening (time, memory). Writes
``scripts/results/bench-screening.json`` and prints a Markdown table for docs/performance.md.

    python scripts/bench_screening.py [--cases w20-mbe4-mopac,w32-mbe3-mopac,w6-mbe3-cp-pyscf] [--ncores 2] [--no-large]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchlib.screening import CASES, markdown, planning_100, run_case, run_large

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(c.key for c in CASES))
    parser.add_argument("--ncores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--no-large", action="store_true", help="skip the screened (H2O)100 MBE(4) run")
    parser.add_argument("--reuse-reference", action="store_true",
                        help="take each case's unscreened row from the last results file instead of rerunning it, "
                             "and run only the screenings it does not have yet; writes bench-screening-extra.json")
    args = parser.parse_args()
    wanted = args.cases.split(",")
    unknown = set(wanted) - {c.key for c in CASES}
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}")
    previous = {}
    if args.reuse_reference:
        data = json.loads((RESULTS / "bench-screening.json").read_text())
        previous = {c["key"]: c for c in data["cases"]}
    planning = planning_100()
    print(json.dumps(planning), flush=True)
    cases = []
    for case in CASES:
        if case.key in wanted:
            old = previous.get(case.key)
            if old is not None:
                done = [json.dumps(r["screening"], sort_keys=True) for r in old["rows"]]
                todo = [s for s in case.screenings
                        if json.dumps(json.loads(json.dumps(s)), sort_keys=True) not in done]
                cases.append(run_case(case, args.ncores, reference=old["rows"][0], only=todo))
            else:
                cases.append(run_case(case, args.ncores))
            print(json.dumps({k: v for k, v in cases[-1].items() if k != "rows"}), flush=True)
    large = None if args.no_large else run_large(args.ncores)
    RESULTS.mkdir(exist_ok=True)
    name = "bench-screening-extra.json" if args.reuse_reference else "bench-screening.json"
    (RESULTS / name).write_text(json.dumps({"planning_100": planning, "cases": cases,
                                                              "large_100": large}, indent=1, default=str))
    print(markdown(cases, planning, large))
    return 0


if __name__ == "__main__":
    sys.exit(main())
