"""Printing: the thread benchmark's comparison table, target lines, the figures-of-record table, run metadata.

Functions here print or format; they measure nothing.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .figures import DIFF_LIMIT

ROOT = Path(__file__).resolve().parents[2]

#: Targets (upper limits) checked by :func:`target_line`.
MAKESPAN_TARGET = 1.10  # makespan / lower bound
MEDIAN_TARGET = 1.10  # median fragment time, qcmb_async / sequential

#: Targets of the figures of record (:func:`targets`).
REAL_TARGET = 1.05  # wall / LB, real runs on this machine
SIM_TARGET = 1.05  # simulated wall / LB, every core count
SIM_GAIN_TARGET = 0.25  # qcmb_async at least 25 % shorter than level-barrier FIFO (mixed workload, 8 cores)
FIRST_DISPATCH_TARGET = 1.0  # s, 16 waters MBE(4)
OVERHEAD_TARGET = 1e-3  # s per fragment on top of QCEngine's own cost
RATE_TARGET = 500.0  # fragments/s end to end, no-op harness
RSS_TARGET = 1024.0  # MiB, 20,000-fragment MOPAC run

# ----------------------------------------------------------------------------- thread benchmark


def _row(name: str, seq: str = "", par: str = "", note: str = "") -> str:
    return f"  {name:<44}{seq:>12}{par:>12}   {note}".rstrip()


def print_comparison(title: str, fig: dict[str, float], ncores: int, label: str = "qcmb_async") -> None:
    """Side-by-side table of one program's sequential and qcmb_async runs, then where the time went."""
    print(f"\n== {title} ==")
    if fig.get("repeats", 1) > 1:
        print(f"  median of {fig['repeats']} repeats (sequential then {label}, alternating); "
              f"makespan/lower bound {fig['ratio_min']:.3f}-{fig['ratio_max']:.3f}, "
              f"median fragment ratio {fig['median_ratio_min']:.3f}-{fig['median_ratio_max']:.3f} across repeats; "
              "max |difference| is the largest of all")
    print(_row("", "sequential", label))
    print(_row("fragments", f"{fig['n_seq']:d}", f"{fig['n_par']:d}"))
    print(_row("wall, end to end [s]", f"{fig['seq_wall']:.2f}", f"{fig['par_wall']:.2f}"))
    print(_row("wall, schedule stage rec['wall_time'] [s]", "", f"{fig['schedule_wall']:.2f}",
               "first dispatch to last fragment end"))
    print(_row("speedup, end to end (seq wall / async wall)", "", f"{fig['speedup']:.2f}x",
               f"vs schedule stage {fig['speedup_schedule']:.2f}x"))
    print(_row("sum of fragment times [s]", f"{fig['seq_sum']:.2f}", f"{fig['par_sum']:.2f}"))
    print(_row("longest fragment [s]", f"{fig['seq_longest']:.3f}", f"{fig['par_longest']:.3f}"))
    print(_row("median fragment [s]", f"{fig['median_seq']:.4f}", f"{fig['median_par']:.4f}",
               f"ratio {fig['median_ratio']:.3f} (target <= {MEDIAN_TARGET:.2f})"))
    print(_row("median fragment, QCEngine provenance [s]", f"{fig['median_seq']:.4f}", f"{fig['median_par_prov']:.4f}",
               "like for like: both inside qcengine.compute"))
    print(_row("lower bound max(longest, sum/ncores) [s]", "", f"{fig['lower_bound']:.2f}", f"ncores {ncores}"))
    print(_row("makespan finished - started [s]", "", f"{fig['makespan']:.2f}",
               f"ratio to lower bound {fig['ratio']:.3f}"))
    print(_row("machine CPU busy during the run [cores]", f"{fig['seq_busy']:.2f}", f"{fig['par_busy']:.2f}",
               "all processes"))
    print(_row("  of which other processes [cores]", f"{fig['seq_other']:.2f}", f"{fig['par_other']:.2f}",
               "should be ~0"))
    print(_row("max |return_result difference| [Eh]", "", f"{fig['max_diff']:.1e}", f"limit {DIFF_LIMIT:.0e}"))
    if fig["n_seq"] > 1 and fig["distinct_energies"] == 1:
        print(f"  NOTE: all {fig['n_seq']} fragment energies are identical: the harness ignored the ghost atoms and"
              " computed the whole cluster every time (QCEngine's MOPAC harness writes ghosts as real atoms). The"
              " timings stand; the CP energies are not physical.")
    print("  where the time goes:")
    print(f"    sequential: {fig['seq_sum']:.2f} s in fragments (QCEngine provenance), "
          f"{fig['seq_outside']:.2f} s elsewhere (planning, QCEngine/QCManyBody overhead per fragment, analysis)")
    print(f"    qcmb_async: {fig['outside_schedule']:.2f} s outside the schedule stage (input checks, planning, "
          f"assembly); in it {fig['first_dispatch'] * 1e3:.0f} ms to first dispatch, "
          f"{fig['idle']:.2f} core-s idle of {ncores * fig['makespan']:.2f}, "
          f"{fig['tail']:.2f} s tail with < {ncores} cores busy; "
          f"slowest of the first {ncores} fragments {fig['first_wave']:.3f} s (median {fig['median_par']:.3f} s); "
          f"fragment time outside QCEngine's own timer "
          f"{(fig['median_par'] - fig['median_par_prov']) * 1e3:.1f} ms (median)")


def interference_warning(before: float, fig: dict[str, float], limit: float = 0.25) -> str | None:
    """A warning when other processes were using the CPU, or ``None``.

    ``before``: busy cores while idle just before the runs (:func:`machine_busy`); then the cores
    used by other processes during each run (:class:`CpuMeter`), each against ``limit``.
    """
    reasons = []
    if before > limit:
        reasons.append(f"{before:.2f} cores busy before the runs")
    for key, name in (("seq_other", "sequential"), ("par_other", "qcmb_async")):
        if fig[key] > limit:
            reasons.append(f"{fig[key]:.2f} cores used by other processes during the {name} run")
    if not reasons:
        return None
    return "WARNING: other processes were using the CPU (" + "; ".join(reasons) + "): timings are not reliable"


def target_line(fig: dict[str, float], makespan_applies: bool = True) -> tuple[str, bool]:
    """``targets: ...`` line and whether every applicable target is met."""
    checks = []
    parts = []
    ok = fig["ratio"] <= MAKESPAN_TARGET
    if makespan_applies:
        checks.append(ok)
        parts.append(f"makespan/lower bound {fig['ratio']:.3f} <= {MAKESPAN_TARGET:.2f} {'met' if ok else 'NOT met'}")
    else:
        parts.append(f"makespan/lower bound {fig['ratio']:.3f} (informational, no target for this program)")
    ok = fig["median_ratio"] <= MEDIAN_TARGET
    checks.append(ok)
    parts.append(f"median fragment ratio {fig['median_ratio']:.3f} <= {MEDIAN_TARGET:.2f} {'met' if ok else 'NOT met'}")
    ok = math.isfinite(fig["max_diff"]) and fig["max_diff"] < DIFF_LIMIT and fig["n_seq"] == fig["n_par"]
    checks.append(ok)
    parts.append(f"max |diff| {fig['max_diff']:.1e} < {DIFF_LIMIT:.0e} {'met' if ok else 'NOT met'}")
    met = all(checks)
    return f"targets: {'; '.join(parts)} => {'met' if met else 'NOT met'}", met


def print_summary(rows: list[tuple[str, dict[str, float]]]) -> None:
    """One line per program."""
    head = (f"{'program':<10}{'frags':>6}{'seq s':>9}{'async s':>9}{'sched s':>9}{'speedup':>9}"
            f"{'bound s':>9}{'mk/bound':>10}{'med seq':>9}{'med thr':>9}{'med ratio':>10}{'max|diff|':>11}")
    print("\n== summary ==")
    print(head)
    for program, f in rows:
        print(f"{program:<10}{f['n_par']:>6d}{f['seq_wall']:>9.2f}{f['par_wall']:>9.2f}{f['schedule_wall']:>9.2f}"
              f"{f['speedup']:>8.2f}x{f['lower_bound']:>9.2f}{f['ratio']:>10.3f}{f['median_seq']:>9.4f}"
              f"{f['median_par']:>9.4f}{f['median_ratio']:>10.3f}{f['max_diff']:>11.1e}")


# ----------------------------------------------------------------------------- figures of record


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'workload':<15}{'strategy':<20}{'cores':>6}{'frags':>7}{'wall s':>10}{'stage s':>10}{'LB s':>10}"
            f"{'wall/LB':>9}{'stage/LB':>9}{'vs seq':>8}{'vs LBF':>8}")
    lines = [head, "-" * len(head)]
    seq_wall: dict[str, float] = {}
    fifo_wall: dict[tuple[str, int], float] = {}
    for r in rows:
        if r["strategy"] == "sequential":
            seq_wall[r["workload"]] = r["wall"]
        if r["strategy"] == "level-barrier FIFO":
            fifo_wall[(r["workload"], r["ncores"])] = r["wall"]
    last = None
    for r in rows:
        wl = r["workload"] if r["workload"] != last else ""
        last = r["workload"]
        seq = r.get("sequential") or seq_wall.get(r["workload"])
        base = fifo_wall.get((r["workload"], r["ncores"]))
        r["speedup_sequential"] = seq / r["wall"] if seq else None
        r["speedup_level_barrier_fifo"] = base / r["wall"] if base and r["strategy"] != "sequential" else None
        r["wall_lb"] = r["wall"] / r["lb"] if r["strategy"] != "sequential" else None
        r["stage_lb"] = r["stage"] / r["lb"] if r["strategy"] != "sequential" else None

        def fmt(x: float | None, spec: str, suffix: str = "") -> str:
            return "-" if x is None else f"{x:{spec}}{suffix}"

        stage = "" if r["kind"] == "simulated" else fmt(r["stage"], ".2f")
        stage_lb = fmt(r["stage_lb"], ".3f") if stage else ""
        lines.append(f"{wl:<15}{r['strategy']:<20}{r['ncores']:>6}{r['fragments']:>7}{r['wall']:>10.2f}{stage:>10}"
                     f"{r['lb']:>10.2f}{fmt(r['wall_lb'], '.3f'):>9}{stage_lb:>9}"
                     f"{fmt(r['speedup_sequential'], '.2f', 'x'):>8}"
                     f"{fmt(r['speedup_level_barrier_fifo'], '.2f', 'x'):>8}")
    return "\n".join(lines)


def target(name: str, value: float, limit: float, *, at_most: bool = True, note: str = "") -> dict[str, Any]:
    met = value <= limit if at_most else value >= limit
    return {"target": name, "value": value, "limit": limit, "at_most": at_most, "met": bool(met), "note": note}


def targets(real: list[dict[str, Any]], sim: list[dict[str, Any]], plan: dict[str, Any] | None,
            rss: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for r in real:
        if r["strategy"] == "qcmb_async":
            out.append(target(f"real {r['workload']}: wall/LB (end to end)", r["wall_lb"], REAL_TARGET))
            out.append(target(f"real {r['workload']}: schedule stage/LB", r["stage_lb"], REAL_TARGET))
            out.append(target(f"real {r['workload']}: max |E - E(sequential)| Eh", r["max_diff"], DIFF_LIMIT))
        elif r["strategy"] == "level-barrier FIFO":
            out.append(target(f"real {r['workload']}: level-barrier FIFO max |E - E(sequential)| Eh", r["max_diff"],
                              DIFF_LIMIT))
    for r in sim:
        if r["strategy"] == "qcmb_async":
            out.append(target(f"sim {r['workload']} {r['ncores']} cores: wall/LB", r["wall_lb"], SIM_TARGET))
            if r["workload"] == "mixed replay" and r["ncores"] == 8:
                gain = 1 - r["wall"] / r["barrier_wall"]
                out.append(target("sim mixed replay 8 cores: shorter than level-barrier FIFO by", gain,
                                  SIM_GAIN_TARGET, at_most=False))
    if plan:
        out.append(target("16 waters MBE(4): call to first dispatch s", plan["first_dispatch_s"],
                          FIRST_DISPATCH_TARGET))
        out.append(target("no-op harness: fragments/s end to end", plan["rate_end_to_end"], RATE_TARGET,
                          at_most=False))
        out.append(target("no-op harness: scheduler overhead s/fragment (end to end - bare compute)",
                          plan["overhead_end_to_end_s"], OVERHEAD_TARGET))
    if rss:
        out.append(target(f"{rss['fragments']}-fragment MOPAC run: peak RSS MiB", rss["peak_rss_mib"], RSS_TARGET))
    return out


# ----------------------------------------------------------------------------- run metadata


def run_meta(ncores: int, memory: float, sections: list[str], load_start: list[float]) -> dict[str, Any]:
    """Date, versions, CPUs and git commit of a benchmark run (the JSON's ``meta``)."""
    from datetime import UTC, datetime

    import qcelemental
    import qcengine
    import qcmanybody

    import qcmb_async

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
        "qcengine": qcengine.__version__, "qcelemental": qcelemental.__version__,
        "qcmanybody": qcmanybody.__version__, "qcmb_async": qcmb_async.__version__,
        "anyio": _version("anyio"), "trio": _version("trio"), "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)), "ncores": ncores, "memory": memory,
        "sections": sections, "load_start": load_start, "git": _git_head(),
    }


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def _git_head() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


