"""Figures of record, simulation: the real scheduler on virtual cores (``qcmb_async.simulate``).

The mixed workload's fragment times (``scripts/results/mixed-workload.json``, written by
``bench_real.py``/``bench.py``) replayed on 2, 8, 64 and 512 virtual cores, and a 100,000-fragment
synthetic plan on 4,096, each for level-barrier FIFO, plain FIFO and qcmb_async. Same as
``bench.py --sections sim``; writes ``scripts/results/bench-simulated.json``.

    python scripts/bench_simulated.py [--sim-fragments 100000] [--sim-cores 4096]
"""

from __future__ import annotations

import sys

from benchlib.suite import RESULTS, main

if __name__ == "__main__":
    sys.exit(main(__doc__, ("sim",), RESULTS / "bench-simulated.json"))
