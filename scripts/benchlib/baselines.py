"""What qcmb_async is measured against: the level-barrier FIFO thread pool and a bare ``qcengine.compute``."""

from __future__ import annotations

import importlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qcmanybody.models.v2 import ManyBodyInput

from .measurement import WATER, CpuMeter


def run_level_barrier_fifo(inp: ManyBodyInput, ncores: int, memory: float) -> dict[str, Any]:
    """The earlier design: all inputs built up front, then level by level (a barrier between
    levels), FIFO in QCManyBody's order, on a pool of ``ncores`` threads, one core per fragment.

    Each fragment goes through ``qcmb_async._qcengine.worker.execute_job`` (our QCEngine seams: primed
    globals, per-fragment environment), without which QCEngine breaks under threads; assembly is
    qcmb_async's (QCManyBody's ``analyze``/``get_results``). Returns the result, wall (s), pool
    stage (s), fragment records and the cores other processes used.
    """
    from qcmb_async._core.assemble import assemble
    from qcmb_async._core.plan import make_plan
    from qcmb_async._qcengine.worker import execute_job
    from qcmb_async.executors.base import FragmentJob

    with CpuMeter() as meter:
        t0 = time.perf_counter()
        plan = make_plan(inp)
        jobs = {f.label: plan.materialise(f) for f in plan.fragments}
        task_config = {"ncores": 1, "memory": round(memory / ncores, 6), "scratch_directory": None, "retries": 0}
        outcomes: dict[str, Any] = {}
        with ThreadPoolExecutor(ncores, thread_name_prefix="level-barrier-fifo") as pool:
            t1 = time.perf_counter()
            for level in sorted({f.level for f in plan.fragments}):
                futures = {f.label: pool.submit(execute_job, FragmentJob(f.label, f.level, f.program,
                                                                         jobs[f.label].atomic_input, dict(task_config)))
                           for f in plan.fragments if f.level == level}
                for label, fut in futures.items():
                    out = fut.result()
                    if not out.success:
                        raise RuntimeError(f"fragment {label} failed: {out.error_type}: {out.error_message}")
                    outcomes[label] = out
            t2 = time.perf_counter()
        result = assemble(plan, {label: out.result for label, out in outcomes.items()})
        wall = time.perf_counter() - t0
    frags = [{"label": o.label, "start": o.start, "end": o.end, "cores": 1} for o in outcomes.values()]
    return {"result": result, "wall": wall, "stage": t2 - t1, "fragments": frags, "other_cores": meter.other_cores}


def noop_compute_cost(n: int = 1000, *, as_shipped: bool = True) -> float:
    """Seconds per bare ``qcengine.compute`` call with the no-op harness (one thread, warm).

    ``as_shipped``: QCEngine's own ``get_config`` (rebuilds its TaskConfig every call), even
    when an earlier section installed qcmb_async's seams, which reuse that TaskConfig; False
    measures the call as qcmb_async's workers make it.
    """
    from qcmb_async._qcengine import seams

    compute_module = importlib.import_module("qcengine.compute")
    patched = compute_module.get_config
    if as_shipped and "get_config" in seams._originals:
        compute_module.get_config = seams._originals["get_config"]
    try:
        return _time_noop(n)
    finally:
        compute_module.get_config = patched


def _time_noop(n: int) -> float:
    import qcengine
    from qcelemental.models.v2 import AtomicInput, Molecule

    inp = AtomicInput(molecule=Molecule.from_data(WATER),
                      specification={"driver": "energy", "model": {"method": "noop"}})
    config = {"ncores": 1, "memory": 1.0, "retries": 0}
    for _ in range(50):
        qcengine.compute(inp, "qcmb-fake-noop", raise_error=True, task_config=config, return_version=2)
    t0 = time.perf_counter()
    for _ in range(n):
        qcengine.compute(inp, "qcmb-fake-noop", raise_error=True, task_config=config, return_version=2)
    return (time.perf_counter() - t0) / n
