"""One energy-screened MBE run with a result store, for the SIGKILL/resume test.

usage: screened_run.py STORE PROGRAM NWATERS MAXNBODY THRESHOLDS_JSON OUT.json
"""

from __future__ import annotations

import json
import sys

from qcmb_async import run
from tests.helpers import mbe_input
from tests.test_screening import lattice
from tests.wrappers import register_wrappers


def main() -> None:
    store, program, nwat, maxnb, thresholds, out = sys.argv[1:7]
    register_wrappers()
    inp = mbe_input(program, "pm7", None, bsse="nocp", max_nbody=int(maxnb), molecule=lattice(int(nwat)))
    energy = {int(k): float(v) for k, v in json.loads(thresholds).items()}
    result = run(inp, ncores=2, memory=2, store=store, screening={"energy": energy})
    with open(out, "w") as fh:
        fh.write(result.model_dump_json())
    print("DONE")


if __name__ == "__main__":
    main()
