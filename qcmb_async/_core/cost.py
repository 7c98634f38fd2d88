"""Cost model: how long a fragment will take, before it runs and better as fragments finish.

A fragment's a-priori cost is ``size ** p``: ``size`` counts basis functions of its real and
ghost atoms (electrons when the basis is unknown, valence orbitals for semi-empirical methods)
and ``p`` is the method's scaling. Online, every finished fragment refits ``seconds = a *
size ** p`` for its group (one program and model chemistry): ``a`` from the first result, and
``p`` too once two sizes have been seen. The scheduler orders by these estimates and uses them
to decide whether a large fragment should get more than one core.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qcelemental import periodictable

from ..programs import traits

# Contracted basis functions per element row (H-He, Li-Ne, Na-Ar) for common basis sets
# (spherical d/f except for Pople *, which are Cartesian as most programs run them).
_BASIS_FUNCTIONS: dict[str, tuple[int, int, int]] = {
    "sto-3g": (1, 5, 9),
    "3-21g": (2, 9, 13),
    "6-31g": (2, 9, 13),
    "6-31g*": (2, 15, 19),
    "6-31g(d)": (2, 15, 19),
    "6-31g**": (5, 15, 19),
    "6-31g(d,p)": (5, 15, 19),
    "6-31+g*": (2, 19, 23),
    "6-311g**": (6, 18, 22),
    "cc-pvdz": (5, 14, 18),
    "cc-pvtz": (14, 30, 34),
    "cc-pvqz": (30, 55, 59),
    "aug-cc-pvdz": (9, 23, 27),
    "aug-cc-pvtz": (23, 46, 50),
    "jun-cc-pvdz": (5, 18, 22),
    "def2-svp": (5, 14, 18),
    "def2-svpd": (8, 20, 24),
    "def2-tzvp": (6, 31, 37),
    "def2-tzvpp": (14, 31, 37),
    "def2-qzvp": (30, 57, 64),
}
_SEMIEMPIRICAL = ("pm3", "pm6", "pm7", "am1", "mndo", "rm1", "gfn", "xtb", "dftb", "zindo")
_FORCE_FIELDS = ("uff", "mmff", "gaff", "amber", "charmm", "openff")


def _row(z: int) -> int:
    return 0 if z <= 2 else 1 if z <= 10 else 2


def fragment_size(symbols: Sequence[str], basis: str | None, *, charge: float = 0.0) -> float:
    """Size of a set of atoms for the cost model: basis functions, else valence orbitals/electrons."""
    zs = [periodictable.to_Z(s) for s in symbols]
    table = _BASIS_FUNCTIONS.get((basis or "").lower().replace(" ", ""))
    if table is not None:
        # Beyond argon the table is only a rough guide: scale the third row by the atom's size.
        return float(sum(table[_row(z)] * (1.0 if z <= 18 else z / 18) for z in zs))
    if not basis:
        # Semi-empirical and force fields: minimal valence basis (1 for H, 4 for heavier atoms).
        return float(sum(1 if z <= 2 else 4 for z in zs))
    return max(1.0, float(sum(zs) - charge))  # unknown basis: electrons track its size


def method_exponent(method: str, program: str = "") -> float:
    """How the method's cost grows with size (HF/DFT ~3.5, MP2 5, CCSD 6, CCSD(T) 7, ...)."""
    m = method.lower()
    kind = traits(program) if program else None
    if any(m.startswith(x) for x in _FORCE_FIELDS) or (kind is not None and kind.force_field):
        return 1.0
    if any(x in m for x in _SEMIEMPIRICAL) or (kind is not None and kind.semi_empirical):
        return 2.5
    if "ccsdt" in m or "(t)" in m or "cc3" in m:
        return 7.0
    if "ccsd" in m or "cisd" in m or "eom" in m:
        return 6.0
    if "mp3" in m or "mp4" in m:
        return 6.0
    if "mp2" in m or "ri-" in m or "dlpno" in m or "sapt" in m:
        return 5.0
    return 3.5  # HF and DFT


@dataclass
class _Fit:
    """Observations of one group, (log size, log seconds), with running sums for O(1) refits."""

    xs: deque[float] = field(default_factory=deque)
    ys: deque[float] = field(default_factory=deque)
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    a: float = 0.0
    p: float = 0.0

    def add(self, x: float, y: float, window: int) -> None:
        self.xs.append(x)
        self.ys.append(y)
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.sxy += x * y
        if len(self.xs) > window:
            ox, oy = self.xs.popleft(), self.ys.popleft()
            self.sx -= ox
            self.sy -= oy
            self.sxx -= ox * ox
            self.sxy -= ox * oy

    def refit(self) -> None:
        """``p`` (once sizes differ enough) and ``a`` from the observations."""
        n = len(self.xs)
        mx, my = self.sx / n, self.sy / n
        sxx = self.sxx - n * mx * mx
        if sxx > 0.05 and n >= 3:
            slope = (self.sxy - n * mx * my) / sxx
            self.p = min(8.0, max(0.5, slope))  # keep a noisy fit physical
        # Geometric mean of the ratios: robust to the odd slow fragment.
        self.a = math.exp(my - self.p * mx)


class CostModel:
    """Predicts fragment wall times in seconds; calibrates online per group."""

    #: Observations kept per group (a sliding window keeps refits O(1) on huge runs).
    WINDOW = 256

    #: Weight of the registry's parallel fraction, in observations, against measured ones.
    PRIOR_WEIGHT = 2.0

    def __init__(self, exponents: dict[str, float] | None = None) -> None:
        self._exponents = dict(exponents or {})
        self._fits: dict[str, _Fit] = {}
        self._single: dict[str, _Fit] = {}
        """Per group, the fit of the fragments run on one core (the reference for parallel fractions)."""
        self._fraction_prior: dict[str, float] = {}
        self._fraction_obs: dict[str, tuple[float, int]] = {}
        """group -> (sum of measured fractions, how many)."""

    def exponent(self, group: str) -> float:
        """``p`` of ``seconds = a * size ** p`` for ``group`` (fitted once sizes differ)."""
        fit = self._fits.get(group)
        return fit.p if fit is not None and fit.p else self._exponents.get(group, 3.5)

    def set_exponent(self, group: str, p: float) -> None:
        """The a-priori exponent of ``group`` (kept if one was set before)."""
        self._exponents.setdefault(group, p)

    def seconds_per_unit(self, group: str) -> float:
        """``a`` of ``seconds = a * size ** p`` for ``group``; the median of calibrated groups when unseen."""
        fit = self._fits.get(group)
        if fit is not None:
            return fit.a
        known = sorted(f.a * 1.0 for f in self._fits.values())
        return known[len(known) // 2] if known else 1.0

    def estimate(self, group: str, size: float) -> float:
        """Predicted seconds (relative units until some fragment of any group has finished)."""
        p = self.exponent(group)
        return self.seconds_per_unit(group) * max(size, 1e-9) ** p

    def set_parallel_fraction(self, group: str, prior: float) -> None:
        """The a-priori parallel fraction of ``group`` (its program's, from the registry; kept if set before)."""
        self._fraction_prior.setdefault(group, prior)

    def parallel_fraction(self, group: str, default: float | None = None) -> float:
        """Amdahl's parallel fraction of ``group``: the prior, refitted from fragments run on several cores.

        The mean of the measured fractions with the prior counted as :attr:`PRIOR_WEIGHT`
        observations. ``default`` (else 0) when no prior was set for ``group``.
        """
        prior = self._fraction_prior.get(group, default if default is not None else 0.0)
        total, n = self._fraction_obs.get(group, (0.0, 0))
        return (prior * self.PRIOR_WEIGHT + total) / (self.PRIOR_WEIGHT + n)

    #: One-core observations within this log-size distance are the reference for a multi-core one.
    NEAR = 0.1

    def _one_core_near(self, group: str, size: float) -> float | None:
        """One-core seconds of a fragment of ``size`` from one-core fragments of about its size, else None.

        Not the size law's extrapolation: small fragments' times are mostly program start-up,
        so the law fitted on them misjudges the large ones that get several cores.
        """
        single = self._single.get(group)
        if single is None:
            return None
        x = math.log(size)
        near = [y + single.p * (x - xo) for xo, y in zip(single.xs, single.ys, strict=True)
                if abs(xo - x) <= self.NEAR]
        return math.exp(sum(near) / len(near)) if near else None

    def observe(self, group: str, size: float, seconds: float, cores: int = 1) -> None:
        """Record one finished fragment (``seconds`` of wall on ``cores`` cores) and refit its group.

        A fragment run on ``cores > 1`` cores, when one-core fragments of its group and about its
        size (within :attr:`NEAR` in log size) have finished, measures the group's parallel
        fraction: with ``r = seconds / their one-core time`` (scaled to its size by the fitted ``p``),
        Amdahl's ``r = (1 - f) + f / cores`` gives ``f = (1 - r) / (1 - 1 / cores)`` (clipped to
        0..1). Its time then enters the fit in one-core seconds, ``seconds * speedup(cores, f)``.
        """
        if seconds <= 0 or size <= 0:
            return
        fit = self._fits.setdefault(group, _Fit(p=self._exponents.get(group, 3.5)))
        if cores > 1:
            # Measured against one-core fragments only (the converted multi-core times in ``fit``
            # depend on the fraction being measured), and of about the same size.
            reference = self._one_core_near(group, size)
            if reference is not None:
                ratio = seconds / reference
                measured = min(1.0, max(0.0, (1.0 - ratio) / (1.0 - 1.0 / cores)))
                total, n = self._fraction_obs.get(group, (0.0, 0))
                self._fraction_obs[group] = (total + measured, n + 1)
            seconds *= speedup(cores, self.parallel_fraction(group))
        else:
            single = self._single.setdefault(group, _Fit(p=self._exponents.get(group, 3.5)))
            single.add(math.log(size), math.log(seconds), self.WINDOW)
            single.refit()
        fit.add(math.log(size), math.log(seconds), self.WINDOW)
        fit.refit()


def speedup(cores: int, parallel_fraction: float) -> float:
    """Amdahl's law: how much faster one fragment runs on ``cores`` cores."""
    return 1.0 / ((1.0 - parallel_fraction) + parallel_fraction / cores)


def parallel_fraction(program: str, overrides: Mapping[str, float] | None = None) -> float:
    """Share of ``program``'s run time its own threads (or MPI ranks) parallelise, 0..1.

    From :mod:`qcmb_async.programs`, or from ``overrides`` (program -> fraction, 0 if absent) when
    given (the simulator's what-if runs).
    """
    if overrides is not None:
        return overrides.get(program, 0.0)
    return traits(program).parallel_fraction


def predict_makespan(durations: Sequence[float], cores: Sequence[int], ncores: int) -> float:
    """Greedy list schedule (longest first, first fit) of rigid jobs on ``ncores`` cores."""
    order = sorted(range(len(durations)), key=lambda i: -durations[i])
    free = ncores
    now = 0.0
    running: list[tuple[float, int]] = []
    waiting = list(order)
    end = 0.0
    while waiting:
        placed = False
        for idx, i in enumerate(waiting):
            if cores[i] <= free:
                free -= cores[i]
                heapq.heappush(running, (now + durations[i], cores[i]))
                end = max(end, now + durations[i])
                del waiting[idx]
                placed = True
                break
        if not placed:
            now, c = heapq.heappop(running)
            free += c
    return end


def allot_cores(durations: Sequence[float], ncores: int, parallel_fraction: Iterable[float],
                max_cores: int | None = None) -> list[int]:
    """Cores per fragment: more than one only where that lowers the predicted makespan.

    ``durations`` are one-core estimates. Starting from one core each, the fragment that
    ends last in the predicted schedule gets twice its cores while that shortens the schedule
    by more than 2 % (and its program can use them). Costs O(n log n) per step; skipped (all
    ones) unless the largest fragment is comparable to the work per core.
    """
    fractions = list(parallel_fraction)
    n = len(durations)
    cores = [1] * n
    if n == 0 or ncores <= 1:
        return cores
    cap = min(ncores, max_cores or ncores)
    total = sum(durations)
    longest = max(durations)
    if longest < 0.5 * total / ncores:
        return cores  # many small fragments: one core each already packs the cores
    current = list(durations)
    best = predict_makespan(current, cores, ncores)
    best_cores = list(cores)
    span = best
    # Greedy with plateau moves: equal fragments only pay off once all of them have more cores.
    for _ in range(n * max(1, cap.bit_length())):
        grow = [i for i in range(n) if fractions[i] > 0 and cores[i] < cap]
        if not grow:
            break
        i = max(grow, key=lambda k: current[k])
        trial_cores = list(cores)
        trial_cores[i] = min(cap, cores[i] * 2)
        trial = list(current)
        trial[i] = durations[i] / speedup(trial_cores[i], fractions[i])
        trial_span = predict_makespan(trial, trial_cores, ncores)
        if trial_span > span * 1.0001:
            break
        cores, current, span = trial_cores, trial, trial_span
        if span < best * 0.98:
            best, best_cores = span, list(cores)
    return best_cores


#: Above this many fragments core allotment is skipped: one core each already packs the cores
#: and the greedy search is O(n log n) per step.
ALLOT_MAX_FRAGMENTS = 4096


#: Smallest fragment (basis functions) an MPI program runs on several ranks. Starting ``mpiexec`` costs about
#: half a second here, more than a small fragment gains (measured: water fragments at HF/STO-3G, 0.5 s each,
#: ran 2-3x slower on two ranks), and a parallel SCF converges along another path: it agrees with one rank
#: only to the program's convergence threshold (NWChem defaults: ~1e-7 Eh), so small fragments, where
#: ranks gain nothing, stay bit-for-bit what QCManyBody's sequential computer gives.
MPI_MIN_SIZE = 150.0


def _mpi_too_small(frag: Any) -> bool:
    return bool(getattr(traits(frag.program), "mpi", False)) and float(frag.size) < MPI_MIN_SIZE


def allotment(fragments: Sequence[Any], model: CostModel, *, ncores: int, memory: float,
              auto_memory: bool, max_cores: int | None = None) -> dict[str, int]:
    """Cores per fragment label, for the fragments that should get more than one.

    ``fragments`` carry ``label``, ``group``, ``size`` and ``program`` (a plan's ``Fragment`` s).
    A fragment never takes more cores than its per-core memory share allows when the caller
    fixed the memory per fragment (``auto_memory=False``), nor more than ``max_cores`` (the largest
    worker's or batch job's cores on a cluster: a fragment runs on one of them).
    """
    if ncores <= 1 or not fragments or len(fragments) > ALLOT_MAX_FRAGMENTS:
        return {}
    durations = [model.estimate(f.group, f.size) for f in fragments]
    # The group's fraction as the model knows it (refitted from measured runs), the registry's before.
    fractions = [0.0 if _mpi_too_small(f) else model.parallel_fraction(f.group, parallel_fraction(f.program))
                 for f in fragments]
    per_core = memory / ncores
    cap = ncores if auto_memory else max(1, int(memory // max(per_core, 1e-9)))
    if max_cores is not None:
        cap = max(1, min(cap, max_cores))
    cores = allot_cores(durations, ncores, fractions, max_cores=cap)
    return {f.label: c for f, c in zip(fragments, cores, strict=True) if c > 1}
