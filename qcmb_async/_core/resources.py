"""Run-wide resources: defaults from this process's limits, and an all-or-nothing pool."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import anyio

#: Share of currently available memory a run takes by default; the rest is left to the OS.
SAFE_MEMORY_SHARE = 0.8
_EPS = 1e-9


def default_ncores() -> int:
    """Cores this process may use (CPU affinity, which honours taskset and cgroup cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_memory() -> float:
    """A safe share of the memory available now, in GiB."""
    import psutil

    return round(psutil.virtual_memory().available / 1024**3 * SAFE_MEMORY_SHARE, 3)


@dataclass(frozen=True)
class WorkerLimits:
    """What one fragment may ask of a cluster whose workers differ from this machine (Dask, batch jobs).

    ``cores``: most cores one fragment may have (the largest worker's or job's); ``memory``: most GiB one
    fragment may have (the largest worker's); ``per_core``: GiB per core an automatically sized fragment gets
    at most (the smallest ``memory / cores`` over the workers, so a fragment of ``c <= cores`` cores fits the
    largest worker); ``auto_cores``: most cores the scheduler gives a fragment by itself (``cores``, or the
    smallest worker's when a task may land on any worker); ``source``: where the figures come from, for the log.
    """

    cores: int
    memory: float
    per_core: float
    source: str
    auto_cores: int = 0

    @classmethod
    def of(cls, shapes: list[tuple[float, float]], source: str, *, anywhere: bool = False) -> WorkerLimits | None:
        """Limits from ``(cores, memory GiB)`` per worker (or per job); ``None`` without a usable one.

        ``anywhere``: a task may run on any worker (no resources asked), so automatic sizes fit the smallest.
        """
        usable = [(int(c), m) for c, m in shapes if c >= 1 and m > 0]
        if not usable:
            return None
        largest = max(c for c, _ in usable)
        per_core = min(m / c for c, m in usable)
        if anywhere:
            per_core = min(per_core, min(m for _, m in usable) / min(c for c, _ in usable))
        return cls(cores=largest, memory=max(m for _, m in usable), per_core=per_core, source=source,
                   auto_cores=min(c for c, _ in usable) if anywhere else largest)


@dataclass
class Usage:
    """Peak usage seen by a :class:`ResourcePool` (for tests and reports)."""

    peak_cores: int = 0
    peak_memory: float = 0.0
    waits: int = 0


class ResourcePool:
    """Cores and memory (GiB), acquired together or not at all.

    Only whole requests are granted, so no borrower ever holds part of what it needs.

    ``depth()`` (default 1) lets an executor that queues fragments itself -- Dask, whose workers'
    resources are the real limit -- hold that many times the cores and memory in fragments handed
    to it; it is asked at every :meth:`take`, so it can change during a run. :class:`Usage` stays
    the cores and memory in use, at most ``ncores``/``memory``.
    """

    def __init__(self, ncores: int, memory: float, *, depth: Callable[[], float] | None = None) -> None:
        self.ncores = ncores
        self.memory = memory
        self._depth = depth
        self._free_cores = ncores
        self._free_memory = memory
        self._released = anyio.Event()
        self.usage = Usage()

    @property
    def free_cores(self) -> int:
        return self._free_cores

    def take(self, cores: int, memory: float) -> bool:
        """Take ``cores`` and ``memory`` now if both are free; never waits."""
        if not self.fits(cores, memory):
            return False
        self._free_cores -= cores
        self._free_memory -= memory
        self.usage.peak_cores = max(self.usage.peak_cores, min(self.ncores, self.ncores - self._free_cores))
        self.usage.peak_memory = max(self.usage.peak_memory, min(self.memory, self.memory - self._free_memory))
        return True

    def give(self, cores: int, memory: float) -> None:
        """Return what :meth:`take` took and wake :meth:`wait_release`."""
        self._free_cores += cores
        self._free_memory += memory
        self._released.set()

    async def wait_release(self) -> None:
        """Wait until something is given back."""
        self.usage.waits += 1
        await self._released.wait()
        self._released = anyio.Event()

    def fits(self, cores: int, memory: float) -> bool:
        """Whether ``cores`` and ``memory`` (GiB) are both free now."""
        if self._depth is not None and (depth := self._depth()) > 1:
            # Free counts go negative while the executor holds more than it runs.
            extra = depth - 1
            return (cores <= self._free_cores + extra * self.ncores
                    and memory <= self._free_memory + extra * self.memory + _EPS)
        return cores <= self._free_cores and memory <= self._free_memory + _EPS
