"""Figures of record, memory: peak RSS of a 20,875-fragment MOPAC run (50 waters, MBE(3), NoCP) in a subprocess.

Minutes on 2 cores. Same as ``bench.py --sections rss``; writes ``scripts/results/bench-memory.json``.
The subprocess is this script with ``--rss-child``.

    python scripts/bench_memory.py [--rss-waters 50]
"""

from __future__ import annotations

import sys

from benchlib.suite import RESULTS, main

if __name__ == "__main__":
    sys.exit(main(__doc__, ("rss",), RESULTS / "bench-memory.json"))
