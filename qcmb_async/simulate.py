"""Run the real scheduler on virtual cores with a virtual clock.

:func:`simulate` feeds a set of fragments with known durations to the very
:class:`~qcmb_async._core.scheduler.Scheduler` a real run uses, under anyio's trio
backend with ``trio.testing.MockClock(autojump_threshold=0)``: whenever every task waits, the
clock jumps to the next fragment's end. Nothing is computed, so 512 cores and thousands of
fragments, or 4,096 cores and 100,000 fragments, are studied in seconds on a laptop.

>>> from qcmb_async.simulate import simulate, synthetic_workload
>>> work = synthetic_workload(10_000, seed=1)
>>> for order, barrier in (("fifo", True), ("fifo", False), ("cost", False)):
...     r = simulate(work, ncores=512, order=order, level_barrier=barrier)
...     print(order, barrier, round(r.makespan), round(r.ratio, 3))

Durations come from a real run (:meth:`Workload.from_run` replays the fragment times measured
in a ``ManyBodyResult``), from a JSON file (:meth:`Workload.load`) or from a cost law
(:func:`synthetic_workload`). Needs ``trio`` (a dependency of qcmb_async since 0.1.0).

What the simulation leaves out: the scheduler's own CPU time (it costs no virtual time), the
program start-up and QCEngine overhead beyond what the measured durations contain, and
contention between fragments sharing a machine (a fragment takes its measured time whatever
runs next to it). Fragments given ``c`` cores run ``speedup(c, fraction)`` times faster
(Amdahl's law with each program's ``parallel_fraction`` from :mod:`qcmb_async.programs`).
"""

from __future__ import annotations

import functools
import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._core import cost
from ._core.cost import CostModel, speedup
from ._core.plan import Fragment, Job, Plan
from .executors.simulated import SimulatedExecutor

__all__ = [
    "SimulationResult",
    "Workload",
    "lower_bound",
    "makespan_lower_bound",
    "simulate",
    "synthetic_workload",
]


class SimulatedPlan(Plan):
    """A :class:`~qcmb_async._core.plan.Plan` whose fragments have no molecule: nothing to build."""

    def materialise(self, frag: Fragment) -> Job:
        return Job(atomic_input=None, key=frag.label)


@dataclass
class Workload:
    """Fragments and how long each takes on one core (seconds)."""

    fragments: list[Fragment]
    durations: dict[str, float]
    """One-core seconds per fragment label."""
    name: str = ""
    source: str = ""
    """Where the durations come from (free text, kept in JSON)."""

    def __post_init__(self) -> None:
        labels = [f.label for f in self.fragments]
        if len(set(labels)) != len(labels):
            raise ValueError("fragment labels must be unique")
        missing = [lab for lab in labels if lab not in self.durations]
        if missing:
            raise ValueError(f"{len(missing)} fragment(s) have no duration, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.fragments)

    @property
    def total(self) -> float:
        """One-core seconds of all fragments: the sequential wall time, overheads aside."""
        return math.fsum(self.durations[f.label] for f in self.fragments)

    @property
    def longest(self) -> float:
        return max(self.durations[f.label] for f in self.fragments)

    def levels(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for f in self.fragments:
            out[f.level] = out.get(f.level, 0) + 1
        return dict(sorted(out.items()))

    @classmethod
    def from_run(cls, result: Any, plan: Plan | Any, *, name: str = "") -> Workload:
        """Replay a real run: fragment times measured by qcmb_async, fragments from the plan.

        ``result`` is the ``ManyBodyResult`` of :func:`qcmb_async.run_manybody` (its
        ``extras["qcmb_async"]["fragments"]`` records) or that list of records; ``plan`` is
        the run's :class:`~qcmb_async._core.plan.Plan` or its ``ManyBodyInput`` (planned here).
        A fragment that ran on ``c`` cores counts ``(end - start) * speedup(c, fraction)`` one-core
        seconds, the same conversion the scheduler's cost model makes.
        """
        records = result if isinstance(result, list) else result.extras["qcmb_async"]["fragments"]
        plan = plan if isinstance(plan, Plan) else _plan_of(plan)
        by_label = {r["label"]: r for r in records}
        durations: dict[str, float] = {}
        for frag in plan.fragments:
            rec = by_label.get(frag.label)
            if rec is None or rec.get("start") is None or rec.get("end") is None:
                raise ValueError(f"fragment {frag.label} has no measured time in the run's records "
                                 "(cached or failed fragments cannot be replayed)")
            cores = int(rec.get("cores") or 1)
            fraction = cost.parallel_fraction(frag.program)
            durations[frag.label] = (rec["end"] - rec["start"]) * speedup(cores, fraction)
        return cls(list(plan.fragments), durations, name=name, source="qcmb_async run records")

    @classmethod
    def from_times(cls, times: Mapping[str, float], plan: Plan | Any, *, name: str = "", source: str = "") -> Workload:
        """Fragments of ``plan`` (or a ``ManyBodyInput``) with ``times`` (label -> one-core seconds).

        E.g. ``{label: r.provenance.wall_time for label, r in seq_result.cluster_results.items()}``
        from QCManyBody's sequential computer run with ``protocols.cluster_results="all"``.
        """
        plan = plan if isinstance(plan, Plan) else _plan_of(plan)
        return cls(list(plan.fragments), {f.label: float(times[f.label]) for f in plan.fragments},
                   name=name, source=source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "fragments": [
                {"label": f.label, "level": f.level, "mc": f.mc, "program": f.program, "real": list(f.real),
                 "basis": list(f.basis), "size": f.size, "cost": f.cost, "group": f.group,
                 "seconds": self.durations[f.label]}
                for f in self.fragments
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Workload:
        frags, durations = [], {}
        for d in data["fragments"]:
            frags.append(Fragment(d["label"], int(d["level"]), d["mc"], d["program"], tuple(d["real"]),
                                  tuple(d["basis"]), float(d["size"]), float(d["cost"]), d.get("group", "")))
            durations[d["label"]] = float(d["seconds"])
        return cls(frags, durations, name=data.get("name", ""), source=data.get("source", ""))

    def save(self, path: str | Path) -> None:
        from ._files import write_atomic

        write_atomic(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Workload:
        from ._core.inputs import read_text_file

        return cls.from_dict(json.loads(read_text_file(Path(path), "workload file",
                                                       expect="a workload JSON written by Workload.save")))


def _plan_of(mbe_input: Any) -> Plan:
    from ._core.inputs import load_input
    from ._core.plan import make_plan

    return make_plan(load_input(mbe_input))


def makespan_lower_bound(walls: Sequence[float], ncores: int, cores: Sequence[int] | int = 1) -> float:
    """No schedule of these fragment times on ``ncores`` cores can finish sooner (seconds).

    ``max(longest wall, sum(wall * cores) / ncores)``: ``walls`` are the fragments' wall times
    (seconds) as measured, ``cores`` the cores each ran on (one number for all). The bound of
    one run's own records; :func:`lower_bound` bounds a :class:`Workload` of one-core times
    instead. Raises ``ValueError`` for no fragments or ``ncores < 1``.
    """
    walls = [float(w) for w in walls]
    per_fragment = [cores] * len(walls) if isinstance(cores, int) else [int(c) for c in cores]
    if not walls or ncores < 1 or len(per_fragment) != len(walls):
        raise ValueError(f"need fragment walls, as many cores and ncores >= 1 (got {len(walls)} walls, "
                         f"{len(per_fragment)} cores, ncores {ncores})")
    return max(max(walls), math.fsum(w * c for w, c in zip(walls, per_fragment, strict=True)) / ncores)


def moldable_lower_bound(times: Sequence[float], fractions: Sequence[float], ncores: int) -> float:
    """Least makespan of moldable fragments (one-core ``times`` s, Amdahl ``fractions``) any schedule allows.

    Bisection on ``T`` (see :func:`lower_bound`); exact to 1e-9 relative.
    """
    pairs = [(float(t), min(1.0, max(0.0, float(f)))) for t, f in zip(times, fractions, strict=True)]

    def fits(limit: float) -> bool:
        work = 0.0
        for t1, f in pairs:
            if t1 <= limit:
                work += t1
                continue
            room = limit / t1 - (1.0 - f)  # t1 * ((1 - f) + f / c) <= limit  <=>  f / c <= room
            if room <= 0:
                return False
            c = max(1, math.ceil(f / room - 1e-12))
            if c > ncores:
                return False
            work += t1 * ((1.0 - f) * c + f)
        return work <= ncores * limit * (1 + 1e-12)

    total = math.fsum(t for t, _ in pairs)
    lo = max(max(t / speedup(ncores, f) for t, f in pairs), total / ncores)
    hi = max(max(t for t, _ in pairs), total / ncores)
    if fits(lo):
        return lo
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if fits(mid):
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * hi:
            break
    return lo


def lower_bound(workload: Workload, ncores: int, *, fragment_ncores: int | None = None,
                parallel_fraction: Mapping[str, float] | None = None) -> float:
    """No schedule on ``ncores`` cores can finish sooner (seconds).

    With cores chosen by the scheduler (``fragment_ncores=None``, moldable fragments under
    Amdahl's law): the smallest ``T`` at which every fragment can finish within ``T`` on some
    number of cores and the least work that takes still fits, ``sum_j c_j(T) * t_j(c_j(T)) <=
    ncores * T``, with ``c_j(T)`` the fewest cores that bring fragment ``j`` under ``T`` (a
    fragment's core-seconds ``t1 * ((1 - f) * c + f)`` only grow with its cores). It is at least
    ``max(longest fragment on all ncores, one-core total / ncores)``, and tighter when a few large
    fragments need many cores to finish early. With fixed ``fragment_ncores`` every fragment
    runs on exactly that many cores and at most ``ncores // fragment_ncores`` run at once.
    Fragments of an MPI program below ``MPI_MIN_SIZE`` basis functions count as one-core only, as
    the scheduler runs them.
    """
    if fragment_ncores is None:
        times = [workload.durations[f.label] for f in workload.fragments]
        # MPI programs' small fragments stay on one rank (cost.MPI_MIN_SIZE): the scheduler may not mould them.
        fractions = [0.0 if cost._mpi_too_small(f) else cost.parallel_fraction(f.program, parallel_fraction)
                     for f in workload.fragments]
        return moldable_lower_bound(times, fractions, ncores)
    times = [workload.durations[f.label]
             / speedup(fragment_ncores, cost.parallel_fraction(f.program, parallel_fraction))
             for f in workload.fragments]
    # At most ncores // fragment_ncores fragments at once: the cores they can use in all.
    usable = max(1, ncores // fragment_ncores) * fragment_ncores
    return makespan_lower_bound(times, usable, fragment_ncores)


@dataclass
class SimulationResult:
    """What one simulated run did, in virtual seconds."""

    ncores: int
    order: str
    level_barrier: bool
    fragments: int
    makespan: float
    """From the scheduler's start to the last fragment's end (virtual seconds)."""
    lower_bound: float
    sequential: float
    """One-core seconds of all fragments (what a sequential run would take)."""
    busy: float
    """Core-seconds the fragments used (more than ``sequential`` when fragments got several cores)."""
    peak_cores: int
    multi_core_fragments: int
    elapsed: float
    """Real seconds the simulation took."""
    records: list[Any] = field(default_factory=list, repr=False)
    """The scheduler's ``FragmentRecord`` s (``start``/``end`` in virtual seconds from 0)."""

    @property
    def ratio(self) -> float:
        """makespan / lower bound (1 is perfect)."""
        return self.makespan / self.lower_bound if self.lower_bound > 0 else math.nan

    @property
    def utilisation(self) -> float:
        """Share of the ``ncores * makespan`` core-seconds the fragments used."""
        return self.busy / (self.ncores * self.makespan) if self.makespan > 0 else math.nan

    @property
    def speedup(self) -> float:
        """Sequential time / makespan."""
        return self.sequential / self.makespan if self.makespan > 0 else math.nan

    def idle_tail(self, share: float = 0.5) -> float:
        """Seconds at the end of the run with fewer than ``share * ncores`` cores busy (the tail).

        From the last moment the busy cores fell below that share to the makespan's end; the whole
        makespan when they never reached it. ``share=1`` measures from the last moment every core
        was busy.
        """
        events = sorted([(r.start, r.cores) for r in self.records if r.start is not None]
                        + [(r.end, -r.cores) for r in self.records if r.start is not None],
                        key=lambda e: (e[0], e[1]))  # ends before starts at equal times
        need = share * self.ncores
        busy, since = 0, 0.0
        for t, delta in events:
            before = busy
            busy += delta
            if before >= need > busy:
                since = t
            elif busy >= need:
                since = self.makespan
        return max(0.0, self.makespan - since)

    def as_dict(self, *, records: bool = False) -> dict[str, Any]:
        out = {
            "ncores": self.ncores, "order": self.order, "level_barrier": self.level_barrier,
            "fragments": self.fragments, "makespan": self.makespan, "lower_bound": self.lower_bound,
            "ratio": self.ratio, "sequential": self.sequential, "speedup": self.speedup, "busy": self.busy,
            "utilisation": self.utilisation, "peak_cores": self.peak_cores,
            "multi_core_fragments": self.multi_core_fragments, "elapsed": self.elapsed,
        }
        if records:
            out["records"] = [r.as_dict() for r in self.records]
        return out


def simulate(
    fragments: Workload | Sequence[Fragment],
    ncores: int,
    *,
    durations: Mapping[str, float] | Callable[[Fragment], float] | None = None,
    order: str = "cost",
    level_barrier: bool = False,
    memory: float | None = None,
    fragment_ncores: int | None = None,
    fragment_memory: float | None = None,
    parallel_fraction: Mapping[str, float] | None = None,
    cost_model: CostModel | None = None,
) -> SimulationResult:
    """Schedule ``fragments`` on ``ncores`` virtual cores with the real scheduler; nothing is computed.

    Args:
        fragments: a :class:`Workload`, or :class:`~qcmb_async.Fragment` records (unique labels)
            with ``durations``.
        ncores: virtual cores.
        durations: one-core seconds per label, or a callable ``Fragment -> seconds``
            (ignored when ``fragments`` is a :class:`Workload`). Default: each fragment's
            a-priori ``cost``.
        order: ``"cost"`` (qcmb_async's default: largest predicted first, across levels) or
            ``"fifo"`` (QCManyBody's order).
        level_barrier: finish every n-body level before starting the next.
        memory: total virtual GiB (default 2 GiB per core, so memory never limits).
        fragment_ncores, fragment_memory: as in :func:`qcmb_async.run_manybody`; ``None`` lets
            the scheduler choose cores per fragment.
        parallel_fraction: per program, the share its threads parallelise (default: the
            scheduler's own assumption).
        cost_model: a :class:`~qcmb_async._core.cost.CostModel` to start from (e.g. one
            calibrated by an earlier simulation); default: a fresh one, as in a real run.

    Returns:
        :class:`SimulationResult` (makespan, lower bound, per-fragment records in virtual seconds).
    """
    from ._core.options import make_options

    if isinstance(fragments, Workload):
        work = fragments
    else:
        frags = list(fragments)
        if durations is None:
            table = {f.label: float(f.cost) for f in frags}
        elif callable(durations):
            table = {f.label: float(durations(f)) for f in frags}
        else:
            table = {f.label: float(durations[f.label]) for f in frags}
        work = Workload(frags, table)
    if not work.fragments:
        raise ValueError("nothing to simulate: no fragments")
    options = make_options(ncores=ncores, memory=memory if memory is not None else 2.0 * ncores,
                           fragment_ncores=fragment_ncores, fragment_memory=fragment_memory, order=order,
                           level_barrier=level_barrier)
    plan = SimulatedPlan(input=None, computer=None, fragments=list(work.fragments), specs={}, inline=True)
    executor = SimulatedExecutor(work.durations, parallel_fraction)
    t0 = time.perf_counter()
    outcome = _run_virtual(functools.partial(_schedule, plan, options, executor, cost_model))
    elapsed = time.perf_counter() - t0
    records = outcome.records
    for rec in records:  # virtual seconds from the scheduler's start
        rec.shift_times(-outcome.started)
    return SimulationResult(
        ncores=options.ncores, order=order, level_barrier=level_barrier, fragments=len(work.fragments),
        makespan=outcome.finished - outcome.started,
        lower_bound=lower_bound(work, options.ncores, fragment_ncores=fragment_ncores,
                                parallel_fraction=parallel_fraction),
        sequential=work.total,
        busy=math.fsum((r.end - r.start) * r.cores for r in records if r.start is not None),
        peak_cores=outcome.usage.peak_cores,
        multi_core_fragments=sum(1 for r in records if r.cores > 1),
        elapsed=elapsed,
        records=records,
    )


async def _schedule(plan: Plan, options: Any, executor: SimulatedExecutor, cost_model: CostModel | None) -> Any:
    from ._core.scheduler import Scheduler

    async with executor:
        return await Scheduler(plan, options, executor, run_id="simulated", cost_model=cost_model).run()


def _run_virtual(fn: Callable[[], Any]) -> Any:
    """``fn()`` under anyio's trio backend with a jumping mock clock (on a private thread if a loop runs here)."""
    try:
        import trio.testing
    except ImportError as exc:
        raise ImportError("qcmb_async.simulate needs trio for its virtual clock (a dependency of qcmb_async; "
                          "was it installed with --no-deps?): pip install trio") from exc
    import anyio

    def go() -> Any:
        return anyio.run(fn, backend="trio", backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)})

    try:
        import asyncio

        asyncio.get_running_loop()
    except RuntimeError:
        return go()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = go()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="qcmb_async simulation")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# --------------------------------------------------------------------------- synthetic workloads



def synthetic_workload(n_fragments: int = 100_000, **options: Any) -> Workload:
    """A made-up MBE of solutes in a mixed solvent with exactly ``n_fragments`` (a :class:`Workload`).

    Options and defaults: :func:`qcmb_async._synthetic.synthetic_parts` (max_nbody, solutes, solvent,
    seed, program, cost law and noise).
    """
    from ._synthetic import synthetic_parts

    return Workload(**synthetic_parts(n_fragments, **options))
