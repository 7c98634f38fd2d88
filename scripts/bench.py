"""The figures of record: sequential QCManyBody, a level-barrier FIFO pool and qcmb_async, side by side.

One process run on this machine, in this order:

1. Real workloads, each run three ways (QCManyBody's sequential computer; a level-barrier FIFO
   thread pool, the earlier design, built here as a baseline; ``qcmb_async.run``):
   a ring water hexamer, NoCP, 3-body, NWChem HF/6-31G; a ring water octamer, CP, 3-body,
   MOPAC PM7; and a mixed-size workload, benzene with four waters, NoCP, 4-body, NWChem
   HF/6-31G. Energies must agree with the sequential computer to 1e-9 Eh (exit 1 otherwise).
2. Planning: call to first dispatched fragment for 16 waters, MBE(4), NoCP (2,516 fragments).
3. Scheduler overhead per fragment with a no-op harness (the same 2,516-fragment run).
4. Peak RSS of a 20,875-fragment MOPAC run (50 waters, MBE(3), NoCP) in a subprocess
   (minutes; ``--quick`` skips it).
5. Simulation (:mod:`qcmb_async.simulate`, the real scheduler on a virtual clock): the mixed
   workload's measured fragment times replayed on 2, 8, 64 and 512 virtual cores, and a
   100,000-fragment synthetic plan on 4,096, for level-barrier FIFO, plain FIFO and qcmb_async.

Prints one table (wall, lower bound LB, wall/LB, speedup over sequential and over the
level-barrier FIFO pool) and writes the same as JSON to ``scripts/results/bench.json``.
Timing targets are reported, never asserted. One section alone: ``bench_real.py``,
``bench_overhead.py`` (planning and overhead), ``bench_memory.py``, ``bench_simulated.py``
(same options; the code lives in ``scripts/benchlib/``).

    python scripts/bench.py [--quick] [--sections real,planning,overhead,rss,sim] [--ncores 2]
"""

from __future__ import annotations

import sys

from benchlib.suite import main

if __name__ == "__main__":
    sys.exit(main(__doc__))
