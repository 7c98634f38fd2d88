"""Shared helpers of the benchmark scripts: inputs, timed runs, figures."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput

# Water hexamer, "prism" isomer (Å); an H-bonded cluster with O-O distances of 2.7-3.0 Å.
HEXAMER_PRISM = """
O  -1.2574  0.4745  1.3612
H  -1.6133  1.1626  0.7687
H  -0.3088  0.6542  1.3960
--
O  -1.4138 -0.5212 -1.2487
H  -2.3587 -0.6603 -1.3416
H  -1.3166 -0.2110 -0.3190
--
O   1.3783  0.9208  1.1516
H   1.6190  1.6052  1.7737
H   1.5114  1.3154  0.2653
--
O   1.2282  0.9542 -1.5886
H   0.3030  0.6900 -1.6825
H   1.6930  0.3640 -2.1829
--
O   1.0906 -1.6263  0.5025
H   1.1932 -0.6958  0.7963
H   1.2733 -1.5989 -0.4557
--
O  -1.1062 -1.7911  1.0118
H  -1.2110 -0.8852  1.3613
H  -0.1519 -1.8919  0.8793
"""


def hexamer() -> Molecule:
    mol = Molecule.from_data(HEXAMER_PRISM)
    return Molecule(**{**mol.model_dump(), "fragment_charges": [0.0] * 6, "fragment_multiplicities": [1] * 6})


def hexamer_input(program: str, method: str, basis: str | None, bsse: str = "cp", max_nbody: int = 3) -> ManyBodyInput:
    return ManyBodyInput(
        molecule=hexamer(),
        specification={
            "driver": "energy",
            "keywords": {"bsse_type": [bsse], "max_nbody": max_nbody},
            "specification": {"(auto)": {"program": program, "model": {"method": method, "basis": basis},
                                          "driver": "energy"}},
        },
    )


def warm_up(program: str, method: str, basis: str | None) -> None:
    """One untimed calculation so neither path pays first-start disk caches."""
    import qcengine
    from qcelemental.models.v2 import AtomicInput

    from qcmb_async.harnesses import register_harnesses

    register_harnesses()
    water = Molecule.from_data("O 0 0 0\nH 0 0.76 0.59\nH 0 -0.76 0.59")
    qcengine.compute(AtomicInput(molecule=water, specification={"driver": "energy",
                                                                "model": {"method": method, "basis": basis}}),
                     program, raise_error=True)


SEQ_TIMES: list[float] = []


def sequential(inp: ManyBodyInput) -> tuple[Any, float]:
    """QCManyBody's own sequential computer; per-fragment times go to ``SEQ_TIMES``.

    Its result keeps no per-fragment results by default, so ``qcengine.compute`` is timed
    by a wrapper for the duration of this call (benchmark instrumentation only).
    """
    import qcengine
    from qcmanybody.v2 import ManyBodyComputer

    original = qcengine.compute

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SEQ_TIMES.append(time.perf_counter() - t)

    SEQ_TIMES.clear()
    qcengine.compute = timed
    try:
        t0 = time.perf_counter()
        res = ManyBodyComputer.from_manybodyinput(inp)
        return res, time.perf_counter() - t0
    finally:
        qcengine.compute = original


def ours(inp: ManyBodyInput, **options: Any) -> tuple[Any, float]:
    from qcmb_async import run

    t0 = time.perf_counter()
    res = run(inp, store=None, **options)
    return res, time.perf_counter() - t0


def figures(res: Any, ncores: int) -> dict[str, float]:
    """Makespan, lower bound and their ratio from qcmb_async's own per-fragment records."""
    meta = res.extras["qcmb_async"]
    frags = [f for f in meta["fragments"] if f["start"] is not None]
    walls = [f["end"] - f["start"] for f in frags]
    lower = max(max(walls), sum(w * f["cores"] for w, f in zip(walls, frags, strict=True)) / ncores)
    makespan = meta["finished"] - meta["started"]
    return {"makespan": makespan, "lower_bound": lower, "ratio": makespan / lower,
            "median": statistics.median(walls), "n": len(frags)}


def seq_median() -> float:
    return statistics.median(SEQ_TIMES)


def max_diff(a: Any, b: Any) -> float:
    return float(np.max(np.abs(np.asarray(a.return_result, dtype=float) - np.asarray(b.return_result, dtype=float))))
