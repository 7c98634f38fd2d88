"""Numbers from timed runs: one (sequential, qcmb_async) pair's figures, medians over repeats.

The lower bound is :func:`qcmb_async.simulate.makespan_lower_bound`, the one the library
documents; every benchmark takes it from there.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from qcmb_async.simulate import makespan_lower_bound

from .measurement import Timed, computed, max_abs_diff

DIFF_LIMIT = 1e-9  # max |return_result difference| in Eh (a hard requirement, not a timing target)


def record_bound(frags: list[dict[str, Any]], ncores: int) -> float:
    """Lower bound (s) of a run's computed fragment records (``start``/``end``/``cores``) on ``ncores``."""
    return makespan_lower_bound([f["end"] - f["start"] for f in frags], ncores, [int(f["cores"]) for f in frags])


def _tail(frags: list[dict[str, Any]], ncores: int, finished: float) -> float:
    """Seconds from the last moment all ``ncores`` were busy to the end of the schedule."""
    events = sorted([(f["start"], f["cores"]) for f in frags] + [(f["end"], -f["cores"]) for f in frags],
                    key=lambda e: (e[0], e[1]))  # ends before starts at equal times
    busy, last_full = 0, None
    for t, delta in events:
        was_full = busy >= ncores
        busy += delta
        if was_full and busy < ncores:
            last_full = t
    return finished - last_full if last_full is not None else finished - min(f["start"] for f in frags)


def figures(seq: Timed, par: Timed, ncores: int) -> dict[str, float]:
    """Every number the thread and executor benchmarks print, from the two runs (qcmb_async's from its records)."""
    rec = par.record
    frags = computed(rec["fragments"])
    walls = [f["end"] - f["start"] for f in frags]
    busy = sum(w * f["cores"] for w, f in zip(walls, frags, strict=True))
    lower = record_bound(frags, ncores)
    makespan = rec["finished"] - rec["started"]
    par_prov = [float(r.provenance.wall_time) for r in par.result.cluster_results.values()]
    seq_times = list(seq.fragment_times.values())
    first_wave = sorted(frags, key=lambda f: f["start"])[:ncores]
    energies = {round(float(r.return_result), 10) for r in seq.result.cluster_results.values()
                if np.ndim(r.return_result) == 0}
    return {
        "n_seq": len(seq_times),
        "n_par": len(frags),
        "seq_wall": seq.wall,
        "par_wall": par.wall,
        "schedule_wall": rec["wall_time"],
        "speedup": seq.wall / par.wall,
        "speedup_schedule": seq.wall / rec["wall_time"],
        "seq_sum": sum(seq_times),
        "par_sum": busy,
        "seq_longest": max(seq_times),
        "par_longest": max(walls),
        "lower_bound": lower,
        "makespan": makespan,
        "ratio": makespan / lower,
        "median_seq": statistics.median(seq_times),
        "median_par": statistics.median(walls),
        "median_ratio": statistics.median(walls) / statistics.median(seq_times),
        "median_par_prov": statistics.median(par_prov),
        "first_dispatch": min(f["start"] for f in frags) - rec["started"],
        "tail": _tail(frags, ncores, rec["finished"]),
        "idle": ncores * makespan - busy,
        "first_wave": max(f["end"] - f["start"] for f in first_wave),
        "outside_schedule": par.wall - rec["wall_time"],
        "seq_outside": seq.wall - sum(seq_times),
        "max_diff": max_abs_diff(seq.result, par.result),
        "distinct_energies": len(energies),
        "seq_busy": seq.busy_cores,
        "par_busy": par.busy_cores,
        "seq_other": seq.other_cores,
        "par_other": par.other_cores,
    }


def aggregate(figs: list[dict[str, float]]) -> dict[str, float]:
    """Figures of repeated (sequential, qcmb_async) pairs: the median of each, the max of ``max_diff``.

    Adds ``repeats`` and the spread (``<key>_min``/``<key>_max``) of the two ratios.
    """
    if len(figs) == 1:
        return {**figs[0], "repeats": 1}
    out: dict[str, float] = {k: statistics.median(f[k] for f in figs) for k in figs[0]}
    out["max_diff"] = max(f["max_diff"] for f in figs)
    for key in ("n_seq", "n_par", "distinct_energies"):
        out[key] = figs[0][key] if all(f[key] == figs[0][key] for f in figs) else -1
    for key in ("ratio", "median_ratio"):
        out[f"{key}_min"] = min(f[key] for f in figs)
        out[f"{key}_max"] = max(f[key] for f in figs)
    out["repeats"] = len(figs)
    return out


def ceiling(fig: dict[str, float], ncores: int) -> float:
    """Speedup with no time outside fragments and a perfectly packed schedule."""
    return fig["seq_wall"] / (fig["par_sum"] / ncores)
