"""The benchmark scripts' shared library; each ``scripts/bench_*.py`` is one figure's entry point.

- :mod:`benchlib.molecules`: the clusters (water rings, benzene with waters, a water lattice) and
  their MBE inputs.
- :mod:`benchlib.measurement`: CPU-load meter, warm-up, timed sequential and qcmb_async runs.
- :mod:`benchlib.baselines`: the level-barrier FIFO thread pool (the earlier design) and a bare
  ``qcengine.compute`` timing.
- :mod:`benchlib.figures`: numbers from the runs (lower bound from :mod:`qcmb_async.simulate`).
- :mod:`benchlib.report`: tables, target lines, run metadata.
- :mod:`benchlib.sections` and :mod:`benchlib.suite`: the figures of record of ``bench.py`` (real
  workloads, planning/overhead, memory, simulation) and their command line.

The scripts put ``scripts/`` on ``sys.path`` by being run from it (``python scripts/bench.py``).
"""
