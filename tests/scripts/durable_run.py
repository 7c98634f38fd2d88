"""One MBE run with a result store, for crash/interrupt tests. Prints the result JSON path.

usage: durable_run.py STORE PROGRAM NWATERS BSSE MAXNBODY OUT.json [retries]
"""

from __future__ import annotations

import sys

from qcmb_async import run
from tests.helpers import mbe_input, waters
from tests.wrappers import register_wrappers


def main() -> None:
    store, program, nwat, bsse, maxnb, out = sys.argv[1:7]
    retries = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    register_wrappers()
    method, basis = ("pm7", None) if program.startswith("mopac") else ("hf", "6-31g")
    inp = mbe_input(program, method, basis, bsse=bsse, max_nbody=int(maxnb), molecule=waters(int(nwat)))
    result = run(inp, ncores=2, memory=2, store=store, retries=retries)
    with open(out, "w") as fh:
        fh.write(result.model_dump_json())
    print("DONE")


if __name__ == "__main__":
    main()
