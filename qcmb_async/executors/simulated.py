"""Simulated executor: fragments "run" by sleeping their known duration on a virtual clock.

Used by :func:`qcmb_async.simulate.simulate` to study the real scheduler on machines this one
is not: under anyio's trio backend with ``trio.testing.MockClock(autojump_threshold=0)`` a
sleep of an hour returns at once, and the clock jumps to the next wake-up whenever every
task is waiting. Nothing touches QCEngine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio

from .._core.contract import FragmentJob, JobOutcome
from .._core.cost import parallel_fraction, speedup

_RESULT: Any = None


def simulated_result() -> Any:
    """One valid ``AtomicResult`` (a water, energy 0), built once and shared by every simulated fragment.

    The scheduler converts each successful outcome with ``AtomicResult(**data)`` unless it is
    already an ``AtomicResult``; one shared instance keeps 100,000 fragments cheap.
    """
    global _RESULT
    if _RESULT is None:
        from qcelemental.models.v2 import AtomicInput, AtomicResult, Molecule

        mol = Molecule(symbols=["O", "H", "H"], geometry=[0.0, 0.0, 0.0, 0.0, 1.43, 1.11, 0.0, -1.43, 1.11],
                       fix_com=True, fix_orientation=True, validate=False)
        inp = AtomicInput(molecule=mol, specification={"driver": "energy", "model": {"method": "simulated"}})
        _RESULT = AtomicResult(
            input_data=inp, molecule=mol, properties={"return_energy": 0.0}, return_result=0.0, success=True,
            provenance={"creator": "qcmb_async.simulate", "version": "0", "routine": "SimulatedExecutor"},
        )
    return _RESULT


class SimulatedExecutor:
    """Executor protocol on a virtual clock: ``run`` sleeps the fragment's duration.

    Args:
        durations: one-core seconds per fragment label, or a callable ``FragmentJob -> seconds``.
        parallel_fraction: per program, the share of its run time its threads parallelise
            (Amdahl); a fragment given ``c`` cores sleeps ``duration / speedup(c, fraction)``.
            Default: the scheduler's own ``parallel_fraction`` of :mod:`qcmb_async.programs`, so
            the simulated speedup is the one the scheduler assumed when it allotted the cores.

    ``clock`` is ``anyio.current_time`` (the event loop's clock: virtual under a ``MockClock``);
    the scheduler uses it for its own timestamps, so records and makespan are in virtual seconds.
    """

    name = "simulated"
    capacity = None

    def __init__(self, durations: Mapping[str, float] | Callable[[FragmentJob], float],
                 parallel_fraction: Mapping[str, float] | None = None) -> None:
        self._durations = durations
        self._fractions = None if parallel_fraction is None else dict(parallel_fraction)
        # An instance attribute, not a class attribute: a plain function stored on the class
        # would become a bound method.
        self.clock: Callable[[], float] = anyio.current_time
        self.calls = 0
        """Fragments run so far (every attempt counts)."""
        self.running = 0
        self.peak_running = 0
        self.peak_cores = 0
        self._cores = 0

    async def __aenter__(self) -> SimulatedExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def duration(self, job: FragmentJob) -> float:
        """Seconds ``job`` takes on its ``job.ncores`` cores."""
        d = self._durations(job) if callable(self._durations) else self._durations[job.label]
        cores = job.ncores
        if cores > 1:
            d /= speedup(cores, parallel_fraction(job.program, self._fractions))
        return float(d)

    async def run(self, job: FragmentJob) -> JobOutcome:
        seconds = self.duration(job)
        self.calls += 1
        self.running += 1
        self._cores += job.ncores
        self.peak_running = max(self.peak_running, self.running)
        self.peak_cores = max(self.peak_cores, self._cores)
        start = anyio.current_time()
        try:
            await anyio.sleep(seconds)
        finally:
            self.running -= 1
            self._cores -= job.ncores
        return JobOutcome(label=job.label, result=simulated_result(), success=True, start=start,
                          end=anyio.current_time(), host="virtual", worker="simulated", pid=0)
