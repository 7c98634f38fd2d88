"""Figures of record, real workloads alone: sequential QCManyBody, a level-barrier FIFO pool and qcmb_async.

Ring water hexamer (NoCP, 3-body, NWChem HF/6-31G), ring water octamer (CP, 3-body, MOPAC PM7) and
benzene with four waters (NoCP, 4-body, NWChem HF/6-31G); energies must agree with the sequential
computer to 1e-9 Eh (exit 1 otherwise). Keeps the mixed workload's measured fragment times in
``scripts/results/mixed-workload.json`` for ``bench_simulated.py``. Same as
``bench.py --sections real``; writes ``scripts/results/bench-real.json``.

    python scripts/bench_real.py [--workloads hexamer-nwchem,octamer-mopac,mixed-nwchem] [--repeats 3]
"""

from __future__ import annotations

import sys

from benchlib.suite import RESULTS, main

if __name__ == "__main__":
    sys.exit(main(__doc__, ("real",), RESULTS / "bench-real.json"))
