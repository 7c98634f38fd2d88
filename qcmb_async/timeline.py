"""Where the time went: a Gantt chart of the fragments over the run's cores, and its statistics.

>>> from qcmb_async.timeline import plot_timeline, timeline_stats
>>> fig = plot_timeline(result, "timeline.png")
>>> timeline_stats(result)["efficiency"]   # makespan / lower bound, 1.0 is perfect

``source`` is a ``ManyBodyResult`` (from :func:`qcmb_async.run`), its
``extras["qcmb_async"]`` dict, or a list of fragment records (dicts with ``start``, ``end``,
``cores``, ``level``, ``label``, optionally ``step``). Each attempt of a fragment (``history``)
occupies its cores; fragments read from the result store (no ``start``) took no time in this run.

It may also be a job of many steps: an ``OptimizationResult`` (one timeline over all its gradients,
each fragment tagged with its ``step``; the chart marks where each step starts) or a
``FrequencyResult`` (its one scheduling run).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Interval", "assign_lanes", "plot_timeline", "steps_timeline", "timeline_intervals", "timeline_stats"]


@dataclass(frozen=True)
class Interval:
    """One attempt of one fragment, holding ``cores`` cores from ``start`` to ``end`` (epoch seconds)."""

    label: str
    level: int
    start: float
    end: float
    cores: int = 1
    ok: bool = True
    """False for an attempt that failed (retried or not)."""
    step: int | None = None
    """Step of a driver that moves atoms (1-based), for a timeline over many MBEs."""

    @property
    def wall(self) -> float:
        return max(0.0, self.end - self.start)


def steps_timeline(results: Sequence[Any], *, title: str | None = None) -> dict[str, Any]:
    """One timeline source over many ``ManyBodyResult``s (the steps of a job), fragments tagged ``step``.

    ``results[k]`` is step ``k + 1``. Returns a dict shaped like ``extras["qcmb_async"]``: ``ncores``
    (the largest), ``started`` of the first step, ``finished`` of the last, ``fragments`` (every step's
    records, each a copy with ``step`` set); time between steps (the optimizer's own) counts as idle.
    """
    metas = []
    for res in results:
        meta = (getattr(res, "extras", None) or {}).get("qcmb_async")
        if meta is None:
            raise ValueError("a step's result has no extras['qcmb_async']: it was not computed by qcmb_async")
        metas.append(meta)
    frags = [{**rec, "step": k} for k, meta in enumerate(metas, start=1) for rec in meta.get("fragments", [])]
    out: dict[str, Any] = {"fragments": frags, "steps": len(metas),
                           "title": title or f"qcmb_async, {len(metas)} steps"}
    if metas:
        out["ncores"] = max(int(m.get("ncores") or 1) for m in metas)
        out["started"], out["finished"] = metas[0].get("started"), metas[-1].get("finished")
    return out


def _meta_and_fragments(source: Any) -> tuple[dict[str, Any], list[Mapping[str, Any]]]:
    trajectory = getattr(source, "trajectory", None)
    if trajectory is not None:  # an OptimizationResult: one MBE per step
        source = steps_timeline(trajectory, title=f"qcmb_async optimization, {len(trajectory)} gradients")
    extras = getattr(source, "extras", None)
    if extras is not None and "qcmb_async" not in (extras or {}) and "fragments" in (extras or {}):
        source = extras  # a FrequencyResult: its extras are its scheduling run's
    elif extras is not None:
        source = (extras or {}).get("qcmb_async")
        if source is None:
            raise ValueError("this result has no extras['qcmb_async']: it was not computed by qcmb_async")
    if isinstance(source, Mapping):
        if "fragments" not in source:
            raise ValueError("expected extras['qcmb_async'] (a dict with 'fragments') or a list of fragment dicts")
        return dict(source), list(source["fragments"])
    if isinstance(source, Sequence) and not isinstance(source, str | bytes):
        return {}, list(source)
    raise TypeError(f"cannot draw a timeline from a {type(source).__name__}: pass a ManyBodyResult, "
                    "result.extras['qcmb_async'] or a list of fragment dicts")


def timeline_intervals(source: Any) -> list[Interval]:
    """Every timed attempt of every fragment, sorted by start."""
    _, frags = _meta_and_fragments(source)
    out: list[Interval] = []
    for frag in frags:
        cores = int(frag.get("cores") or 1)
        label, level = str(frag.get("label", "?")), int(frag.get("level") or 0)
        step = int(frag["step"]) if frag.get("step") is not None else None
        history = [h for h in frag.get("history") or [] if h.get("start") is not None and h.get("end") is not None]
        if history:
            for attempt in history:
                out.append(Interval(label, level, float(attempt["start"]), float(attempt["end"]), cores,
                                    not attempt.get("error_type"), step))
        elif frag.get("start") is not None and frag.get("end") is not None:
            out.append(Interval(label, level, float(frag["start"]), float(frag["end"]), cores,
                                frag.get("status", "ok") != "failed", step))
    return sorted(out, key=lambda iv: (iv.start, iv.end))


def _peak_cores(intervals: list[Interval]) -> int:
    points = sorted([(iv.start, iv.cores) for iv in intervals] + [(iv.end, -iv.cores) for iv in intervals],
                    key=lambda p: (p[0], p[1]))
    best = cur = 0
    for _, delta in points:
        cur += delta
        best = max(best, cur)
    return best


def _ncores(meta: Mapping[str, Any], intervals: list[Interval], ncores: int | None) -> int:
    if ncores is not None:
        if ncores < 1:
            raise ValueError(f"ncores must be >= 1, got {ncores}")
        return int(ncores)
    if meta.get("ncores"):
        return int(meta["ncores"])
    return max(1, _peak_cores(intervals))


def assign_lanes(intervals: list[Interval], ncores: int) -> tuple[list[list[int]], int]:
    """Greedy interval partitioning: give each interval ``cores`` lanes free at its start.

    Prefers the lowest contiguous block of free lanes (so a multi-core fragment is one bar),
    else any free lanes; opens lanes beyond ``ncores`` only if the records overlap more than
    ``ncores`` allows. Returns the lanes of each interval (same order) and the number of lanes.
    """
    lane_end: list[float] = [float("-inf")] * ncores
    assigned: list[list[int]] = []
    eps = 1e-9
    for iv in intervals:
        free = [i for i, end in enumerate(lane_end) if end <= iv.start + eps]
        while len(free) < iv.cores:
            lane_end.append(float("-inf"))
            free.append(len(lane_end) - 1)
        chosen: list[int] | None = None
        free_set = set(free)
        for first in free:
            block = list(range(first, first + iv.cores))
            if all(lane in free_set for lane in block):
                chosen = block
                break
        if chosen is None:
            chosen = free[: iv.cores]
        for lane in chosen:
            lane_end[lane] = iv.end
        assigned.append(chosen)
    return assigned, len(lane_end)


def timeline_stats(source: Any, *, ncores: int | None = None) -> dict[str, Any]:
    """Makespan, lower bound, efficiency (makespan / lower bound, >= 1) and idle fraction of a run.

    ``lower_bound = max(longest fragment, sum(wall * cores) / ncores)``: no schedule of the
    same work on ``ncores`` cores can finish sooner. The makespan runs from the run's start to
    its end (``extras['qcmb_async']['started'/'finished']``), else from the first fragment
    start to the last end. ``efficiency`` is ``None`` when nothing was computed.
    """
    meta, _ = _meta_and_fragments(source)
    intervals = timeline_intervals(source)
    cores = _ncores(meta, intervals, ncores)
    starts = [iv.start for iv in intervals]
    ends = [iv.end for iv in intervals]
    if meta.get("started") is not None and meta.get("finished") is not None:
        starts.append(float(meta["started"]))
        ends.append(float(meta["finished"]))
    t0, t1 = (min(starts), max(ends)) if starts else (0.0, 0.0)
    makespan = max(0.0, t1 - t0)
    busy = sum(iv.wall * iv.cores for iv in intervals)
    longest = max((iv.wall for iv in intervals), default=0.0)
    lower = max(longest, busy / cores)
    return {
        "ncores": cores,
        "start": t0,
        "end": t1,
        "makespan": makespan,
        "lower_bound": lower,
        "efficiency": makespan / lower if lower > 0 else None,
        "busy_core_seconds": busy,
        "idle_fraction": 1.0 - busy / (cores * makespan) if makespan > 0 else 0.0,
        "longest": longest,
        "attempts": len(intervals),
        "failed_attempts": sum(not iv.ok for iv in intervals),
    }


def _import_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "the timeline needs matplotlib: pip install 'qcmb_async[timeline]'"
        ) from None
    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless and "matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    return matplotlib


def plot_timeline(source: Any, path: str | os.PathLike[str] | None = None, *, ncores: int | None = None,
                  title: str | None = None) -> Any:
    """Draw the fragments over core lanes, coloured by n-body level, idle time shaded grey.

    Saves to ``path`` when given (format from its suffix) and returns the matplotlib
    ``Figure`` (it displays itself in Jupyter). The title carries the efficiency
    (makespan / lower bound, see :func:`timeline_stats`).
    """
    _import_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    meta, _ = _meta_and_fragments(source)
    intervals = timeline_intervals(source)
    stats = timeline_stats(source, ncores=ncores)
    cores = stats["ncores"]
    lanes_of, nlanes = assign_lanes(intervals, cores)
    t0 = stats["start"]
    levels = sorted({iv.level for iv in intervals})
    cmap = _level_colors(levels)

    height = min(12.0, 1.6 + 0.28 * nlanes)
    fig = _figure_class(Figure)(figsize=(10, height), layout="constrained")
    ax = fig.add_subplot()
    busy: dict[int, list[tuple[float, float]]] = {lane: [] for lane in range(nlanes)}
    for iv, lanes in zip(intervals, lanes_of, strict=True):
        for lane in lanes:
            busy[lane].append((iv.start - t0, iv.wall))
        for start_lane, span in _runs(lanes):
            ax.broken_barh([(iv.start - t0, iv.wall)], (start_lane + 0.1, span - 0.2), facecolors=cmap[iv.level],
                           edgecolors="red" if not iv.ok else "black", linewidths=1.2 if not iv.ok else 0.3,
                           hatch="//" if not iv.ok else None)
    makespan = stats["makespan"]
    for lane in range(nlanes):
        for gap in _gaps(sorted(busy[lane]), makespan):
            ax.broken_barh([gap], (lane + 0.1, 0.8), facecolors="0.85", edgecolors="none", zorder=0)
    handles = [Patch(facecolor=cmap[lv], edgecolor="black", label=f"{lv}-body") for lv in levels]
    handles.append(Patch(facecolor="0.85", label="idle"))
    if stats["failed_attempts"]:
        handles.append(Patch(facecolor="white", edgecolor="red", hatch="//", label="failed attempt"))
    _mark_steps(ax, intervals, t0)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_xlim(0, max(makespan, 1e-6))
    ax.set_ylim(nlanes, 0)
    ax.set_yticks([lane + 0.5 for lane in range(nlanes)])
    ax.set_yticklabels([str(lane) for lane in range(nlanes)], fontsize=7 if nlanes > 16 else 9)
    ax.set_xlabel("time since run start (s)")
    ax.set_ylabel("core")
    eff = stats["efficiency"]
    eff_text = f"efficiency {eff:.2f} (makespan / lower bound)" if eff is not None else "nothing computed"
    head = title or meta.get("title") or f"qcmb_async run {meta.get('run_id', '')}".strip()
    fig.suptitle(f"{head}\n{len(intervals)} fragment runs on {cores} cores, makespan {makespan:.2f} s "
                 f"(lower bound {stats['lower_bound']:.2f} s), {eff_text}, idle {stats['idle_fraction']:.0%}"
                 + screening_line(meta.get("screening")), fontsize=10)
    if path is not None:
        from ._files import write_atomic

        # Whole or not at all (a full disk leaves no truncated image); the format from the suffix, as savefig's.
        fmt = Path(path).suffix[1:].lower() or None
        write_atomic(path, lambda fh: fig.savefig(fh, dpi=120, format=fmt))
    return fig


_FIGURE_CLASS: Any = None


def _mark_steps(ax: Any, intervals: list[Interval], t0: float) -> None:
    """A dashed line and the step number where each step's first fragment starts (two or more steps)."""
    firsts: dict[int, float] = {}
    for iv in intervals:
        if iv.step is not None:
            firsts[iv.step] = min(firsts.get(iv.step, iv.start), iv.start)
    if len(firsts) < 2:
        return
    for step, start in sorted(firsts.items()):
        ax.axvline(start - t0, color="0.3", linestyle="--", linewidth=0.6, zorder=3)
        ax.annotate(str(step), (start - t0, 0), xytext=(2, 2), textcoords="offset points", fontsize=7,
                    color="0.3", annotation_clip=False, va="bottom")


def screening_line(summary: dict[str, Any] | None) -> str:
    """``"\nscreened: 2-body 127/190 kept, ..."`` for a screened run's title; ``""`` otherwise."""
    if not summary:
        return ""
    parts = [f"{k}-body {row['kept']:,}/{row['possible']:,}" for k, row in summary["orders"].items() if k != "1"]
    tests = [f"{k}: {v:g} Å" for k, v in (summary.get("distance") or {}).items()]
    tests += [f"{k}: {v:g} Eh" for k, v in (summary.get("energy") or {}).items()]
    return f"\nscreened ({', '.join(tests)}): kept {', '.join(parts)}"


def _figure_class(base: type) -> type:
    """A ``Figure`` that shows itself in Jupyter without pyplot (``_repr_png_``)."""
    global _FIGURE_CLASS
    if _FIGURE_CLASS is None:

        class TimelineFigure(base):  # type: ignore[misc, valid-type]
            def _repr_png_(self) -> bytes:
                import io

                buf = io.BytesIO()
                self.savefig(buf, format="png", dpi=100)
                return buf.getvalue()

        _FIGURE_CLASS = TimelineFigure
    return _FIGURE_CLASS


def _level_colors(levels: list[int]) -> dict[int, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {lv: palette(i % 10) for i, lv in enumerate(levels)}


def _runs(lanes: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of sorted lane numbers as (first, length)."""
    out: list[tuple[int, int]] = []
    for lane in sorted(lanes):
        if out and out[-1][0] + out[-1][1] == lane:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((lane, 1))
    return out


def _gaps(busy: list[tuple[float, float]], makespan: float) -> list[tuple[float, float]]:
    """Idle (start, width) pieces of [0, makespan] not covered by the busy (start, width) bars."""
    gaps, cursor = [], 0.0
    for start, width in busy:
        if start > cursor:
            gaps.append((cursor, start - cursor))
        cursor = max(cursor, start + width)
    if makespan > cursor:
        gaps.append((cursor, makespan - cursor))
    return gaps
