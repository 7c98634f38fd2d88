"""Shared helpers of the benchmark scripts: the water hexamer input, timed runs, figures, tables.

Used by ``bench_threads.py`` (and meant for other ``bench_*.py`` scripts): build the input with
:func:`hexamer_input`, run :func:`warm_up` once per program, time QCManyBody's sequential computer
with :func:`time_sequential` and qcmb_async with :func:`time_qcmb_async`, then :func:`figures`,
:func:`print_comparison`, :func:`target_line` and :func:`print_summary`.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput

#: (method, basis) of each program the benchmarks know.
SPECS: dict[str, tuple[str, str | None]] = {
    "mopac": ("pm7", None),
    "nwchem": ("hf", "sto-3g"),
    "pyscf": ("hf", "sto-3g"),
}

#: Targets (upper limits) checked by :func:`target_line`.
MAKESPAN_TARGET = 1.10  # makespan / lower bound
MEDIAN_TARGET = 1.10  # median fragment time, qcmb_async / sequential
DIFF_LIMIT = 1e-9  # max |return_result difference| in Eh (a hard requirement, not a timing target)

# ----------------------------------------------------------------------------- geometry


def ring_hexamer(
    roo: float = 2.80, pucker: float = 0.30, r_donor: float = 0.970, r_free: float = 0.957, hoh: float = 104.5
) -> str:
    """Cyclic ("ring", chair-like S6) water hexamer as a ``--``-separated Cartesian string in Å.

    Six O atoms on a puckered hexagon (nearest O-O ``roo``, O alternately ``pucker`` Å above and
    below the mean plane). Every water donates one H-bond, along the O-O line, to the next water
    (H...O = ``roo - r_donor`` = 1.83 Å) and accepts one from the previous; the free O-H points
    alternately up and down, as in the cyclic hexamer observed in helium droplets. Monomer:
    r(OH) 0.970 Å (donor) / 0.957 Å (free), HOH 104.5°.
    """
    rxy = math.sqrt(roo**2 - (2 * pucker) ** 2)
    oxy = np.array([[rxy * math.cos(k * math.pi / 3), rxy * math.sin(k * math.pi / 3), pucker * (-1) ** k]
                    for k in range(6)])
    angle = math.radians(hoh)
    blocks = []
    for k in range(6):
        o = oxy[k]
        u = oxy[(k + 1) % 6] - o
        u /= np.linalg.norm(u)
        ref = np.array([0.0, 0.0, (-1.0) ** k]) + 0.3 * o / np.linalg.norm(o)  # up/down, tilted outwards
        w = ref - np.dot(ref, u) * u
        w /= np.linalg.norm(w)
        h_donor = o + r_donor * u
        h_free = o + r_free * (math.cos(angle) * u + math.sin(angle) * w)
        blocks.append("\n".join(f"{el} {x:10.5f} {y:10.5f} {z:10.5f}"
                                for el, (x, y, z) in (("O", o), ("H", h_donor), ("H", h_free))))
    return "\n--\n".join(blocks)


def geometry_report(mol: Molecule) -> dict[str, float]:
    """Closest pair of atoms, closest intermolecular pair and O-O range (Å) of a water cluster."""
    xyz = np.asarray(mol.geometry) * 0.52917721067  # Bohr -> Å
    frag_of = {i: n for n, frag in enumerate(mol.fragments) for i in frag}
    dist = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    pairs = list(itertools.combinations(range(len(xyz)), 2))
    oxygens = [i for i, s in enumerate(mol.symbols) if s == "O"]
    oo = [dist[i, j] for i, j in itertools.combinations(oxygens, 2)]
    return {
        "min_any": min(dist[i, j] for i, j in pairs),
        "min_inter": min(dist[i, j] for i, j in pairs if frag_of[i] != frag_of[j]),
        "oo_min": min(oo),
        "oo_max": max(oo),
    }


def hexamer() -> Molecule:
    """The ring hexamer with explicit fragment charges/multiplicities (skips QCElemental's charge search)."""
    mol = Molecule.from_data(ring_hexamer())
    mol = Molecule(**{**mol.model_dump(), "fragment_charges": [0.0] * 6, "fragment_multiplicities": [1] * 6})
    geo = geometry_report(mol)
    if geo["min_any"] < 0.9 or geo["min_inter"] < 1.5 or not 2.6 <= geo["oo_min"] <= 3.0:
        raise ValueError(f"implausible water hexamer geometry: {geo}")
    return mol


def hexamer_input(
    program: str, method: str, basis: str | None, *, bsse: str = "cp", max_nbody: int = 3, driver: str = "energy"
) -> ManyBodyInput:
    """MBE input for the ring hexamer; keeps every fragment's ``AtomicResult`` (``cluster_results``).

    ``protocols.cluster_results="all"`` lets the sequential run report each fragment's
    ``provenance.wall_time``; it changes no energies.
    """
    return ManyBodyInput(
        molecule=hexamer(),
        specification={
            "driver": driver,
            "keywords": {"bsse_type": [bsse], "max_nbody": max_nbody},
            "specification": {
                "(auto)": {"program": program, "model": {"method": method, "basis": basis}, "driver": driver}
            },
            "protocols": {"cluster_results": "all"},
        },
    )


# ----------------------------------------------------------------------------- runs


def warm_up(program: str, method: str, basis: str | None) -> float:
    """One untimed water-monomer calculation, so neither timed path pays the program's first start.

    Returns its wall time (s). Also fills the harness's version cache.
    """
    import qcengine
    from qcelemental.models.v2 import AtomicInput

    if program == "pyscf":
        from qcmb_async.harnesses import register_harnesses

        register_harnesses()
    water = Molecule.from_data("O 0 0 0\nH 0 0.757 0.587\nH 0 -0.757 0.587")
    inp = AtomicInput(molecule=water, specification={"driver": "energy", "model": {"method": method, "basis": basis}})
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
        raise RuntimeError("sequential result has no cluster_results: build the input with hexamer_input()")
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
    times = {f["label"]: f["end"] - f["start"] for f in rec["fragments"]
             if f.get("start") is not None and f.get("end") is not None}
    return Timed(res, wall, times, rec, meter.busy_cores, meter.other_cores)


# ----------------------------------------------------------------------------- figures


def max_abs_diff(a: Any, b: Any) -> float:
    x = np.asarray(a.return_result, dtype=float)
    y = np.asarray(b.return_result, dtype=float)
    return float(np.max(np.abs(x - y)))


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
    """Every number the benchmark prints, from the two runs (qcmb_async figures from its own records)."""
    rec = par.record
    frags = [f for f in rec["fragments"] if f.get("start") is not None and f.get("end") is not None]
    walls = [f["end"] - f["start"] for f in frags]
    busy = sum(w * f["cores"] for w, f in zip(walls, frags, strict=True))
    lower = max(max(walls), busy / ncores)
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


# ----------------------------------------------------------------------------- printing


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
