"""Timing: a CPU-load meter, a warm-up, and timed runs of QCManyBody's sequential computer and qcmb_async.

Call :func:`warm_up` once per program, then time :func:`time_sequential` and
:func:`time_qcmb_async` (or :func:`atime_qcmb_async` inside an event loop); :class:`CpuMeter`
shows whether other processes competed for the CPU meanwhile.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput

WATER = "O 0 0 0\nH 0 0.757 0.587\nH 0 -0.757 0.587"  # the warm-up and no-op monomer, Å


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def warm_up(program: str, method: str, basis: str | None) -> float:
    """One untimed water-monomer calculation, so neither timed path pays the program's first start.

    Returns its wall time (s). Also fills the harness's version cache.
    """
    import qcengine
    from qcelemental.models.v2 import AtomicInput

    if program == "pyscf":
        from qcmb_async.harnesses import register_harnesses

        register_harnesses()
    inp = AtomicInput(molecule=Molecule.from_data(WATER),
                      specification={"driver": "energy", "model": {"method": method, "basis": basis}})
    t0 = time.perf_counter()
    qcengine.compute(inp, program, raise_error=True, return_version=2)
    return time.perf_counter() - t0


def _busy_seconds() -> tuple[float, float]:
    """System-wide CPU seconds (all processes) spent busy, and stolen by the hypervisor, since boot."""
    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


def _own_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for (program runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """Average busy cores over a ``with`` block: the whole machine's, and the part not ours.

    ``other_cores`` (machine busy minus this process and its finished children) shows other
    processes competing for the CPU: then the timings are not trustworthy.
    """

    busy_cores: float = float("nan")
    other_cores: float = float("nan")
    steal_cores: float = float("nan")

    def __enter__(self) -> CpuMeter:
        self._t0 = time.perf_counter()
        self._b0, self._s0 = _busy_seconds()
        self._o0 = _own_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        busy, steal = _busy_seconds()
        self.busy_cores = (busy - self._b0) / wall
        self.other_cores = max(0.0, busy - self._b0 - (_own_seconds() - self._o0)) / wall
        self.steal_cores = (steal - self._s0) / wall


def machine_busy(seconds: float = 1.0) -> float:
    """Busy cores of the whole machine while this process sleeps ``seconds``: other processes' load."""
    with CpuMeter() as meter:
        time.sleep(seconds)
    return meter.busy_cores


@dataclass
class Timed:
    """One timed MBE run."""

    result: Any  # qcmanybody.models.v2.ManyBodyResult
    wall: float  # end to end around the call, s
    fragment_times: dict[str, float]  # label -> s
    record: dict[str, Any] = field(default_factory=dict)  # result.extras["qcmb_async"] (qcmb_async runs)
    busy_cores: float = float("nan")  # machine-wide busy cores during the run (CpuMeter)
    other_cores: float = float("nan")  # of which not this process or its programs


def time_sequential(inp: ManyBodyInput) -> Timed:
    """QCManyBody's own sequential computer; per-fragment times from each ``provenance.wall_time``."""
    from qcmanybody.v2 import ManyBodyComputer

    with CpuMeter() as meter:
        t0 = time.perf_counter()
        res = ManyBodyComputer.from_manybodyinput(inp)
        wall = time.perf_counter() - t0
    if not res.cluster_results:
        raise RuntimeError("sequential result has no cluster_results: build the input with molecules.mbe()")
    times = {label: float(r.provenance.wall_time) for label, r in res.cluster_results.items()}
    return Timed(res, wall, times, busy_cores=meter.busy_cores, other_cores=meter.other_cores)


def time_qcmb_async(inp: ManyBodyInput, **options: Any) -> Timed:
    """``qcmb_async.run``; per-fragment times are the worker's ``end - start`` around ``qcengine.compute``.

    The result store is off unless ``store=`` is given: a store would hand back fragments of
    earlier runs instead of computing them.
    """
    from qcmb_async import run

    options.setdefault("store", None)
    with CpuMeter() as meter:
        t0 = time.perf_counter()
        res = run(inp, **options)
        wall = time.perf_counter() - t0
    return _timed(res, wall, meter)


async def atime_qcmb_async(inp: ManyBodyInput, **options: Any) -> Timed:
    """:func:`time_qcmb_async` with ``await qcmb_async.run_manybody`` in the caller's event loop.

    Needed to hand a run an executor that is already running (entered in this loop).
    """
    from qcmb_async import run_manybody

    options.setdefault("store", None)
    with CpuMeter() as meter:
        t0 = time.perf_counter()
        res = await run_manybody(inp, **options)
        wall = time.perf_counter() - t0
    return _timed(res, wall, meter)


def _timed(res: Any, wall: float, meter: CpuMeter) -> Timed:
    rec = res.extras["qcmb_async"]
    times = {f["label"]: f["end"] - f["start"] for f in computed(rec["fragments"])}
    return Timed(res, wall, times, rec, meter.busy_cores, meter.other_cores)


def computed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fragment records of a qcmb_async run that were computed (have a start and an end)."""
    return [f for f in records if f.get("start") is not None and f.get("end") is not None]


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest |difference| of two results' ``return_result`` (Eh, or Eh/a0 for gradients)."""
    x = np.asarray(a.return_result, dtype=float)
    y = np.asarray(b.return_result, dtype=float)
    return float(np.max(np.abs(x - y)))
