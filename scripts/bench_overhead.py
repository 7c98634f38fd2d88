"""Figures of record, planning and overhead: 16 waters, MBE(4), NoCP (2,516 fragments), no-op harness.

Planning: from the call to the first dispatched fragment. Overhead: fragments per second, and per
fragment the wall time minus a bare ``qcengine.compute`` call of the no-op harness. Same as
``bench.py --sections planning,overhead``; writes ``scripts/results/bench-overhead.json``.

    python scripts/bench_overhead.py [--ncores 2]
"""

from __future__ import annotations

import sys

from benchlib.suite import RESULTS, main

if __name__ == "__main__":
    sys.exit(main(__doc__, ("planning", "overhead"), RESULTS / "bench-overhead.json"))
