"""The ready queue: fragments not yet dispatched, best first."""

from __future__ import annotations

import heapq
from collections import deque

from .cost import CostModel
from .plan import Fragment


class ReadyQueue:
    """Fragments not yet dispatched, best first.

    ``order="cost"``: the largest predicted wall time first (longest-processing-time list
    scheduling), across levels and groups; one heap per (level, cost group) keyed by size, so
    calibration of a group's cost model re-orders the groups at no cost. ``order="fifo"``:
    QCManyBody's own order. With ``level_barrier`` only the lowest unfinished level is open.

    ``prerequisites=k`` (energy screening): fragments below level ``k`` feed decisions that release
    others, so the lowest such level with ready fragments goes first (largest first within it);
    levels from ``k`` on are taken largest first across levels. A priority, not a barrier: a higher
    level runs whenever nothing of a lower one is ready.
    """

    def __init__(self, fragments: list[Fragment], model: CostModel, order: str,
                 prerequisites: int | None = None) -> None:
        self._model = model
        self._order = order
        self._prerequisites = prerequisites
        self._fifo: dict[int, deque[Fragment]] = {}
        self._heaps: dict[int, dict[str, list[tuple[float, int, Fragment]]]] = {}
        self._n = 0
        for seq, frag in enumerate(fragments):
            self.push(frag, seq)

    def __len__(self) -> int:
        return self._n

    def levels(self) -> list[int]:
        src = self._fifo if self._order == "fifo" else self._heaps
        return sorted(lv for lv, q in src.items() if (q if self._order == "fifo" else any(q.values())))

    def push(self, frag: Fragment, seq: int = 0) -> None:
        self._n += 1
        if self._order == "fifo":
            self._fifo.setdefault(frag.level, deque()).append(frag)
        else:
            heapq.heappush(self._heaps.setdefault(frag.level, {}).setdefault(frag.group, []), (-frag.size, seq, frag))

    def pop(self, level: int | None = None) -> Fragment | None:
        """The next fragment (of ``level`` only, if given), or ``None``."""
        if self._order == "fifo":
            queues = [self._fifo.get(level, deque())] if level is not None else [
                self._fifo[lv] for lv in sorted(self._fifo)]
            for q in queues:
                if q:
                    self._n -= 1
                    return q.popleft()
            return None
        levels = [level] if level is not None else list(self._heaps)
        if level is None and self._prerequisites is not None:
            ready = sorted(lv for lv in levels if any(self._heaps[lv].values()))
            if ready and ready[0] < self._prerequisites:
                levels = ready[:1]
        best: tuple[float, list[tuple[float, int, Fragment]]] | None = None
        for lv in levels:
            for group, heap in self._heaps.get(lv, {}).items():
                if heap:
                    est = self._model.estimate(group, heap[0][2].size)
                    if best is None or est > best[0]:
                        best = (est, heap)
        if best is None:
            return None
        self._n -= 1
        return heapq.heappop(best[1])[2]
