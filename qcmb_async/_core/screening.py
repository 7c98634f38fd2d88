"""Plan stage of a screened expansion: which n-body subsets are kept, and which labels each needs.

A *subset* is a sorted tuple of 1-based fragment numbers. The kept family is closed downwards: a
``k``-subset is a candidate only if all its ``(k-1)``-subsets are kept, so it is enumerated by
extending kept ``(k-1)``-subsets (never all ``C(N, k)``). Distance decisions are made here, before
anything runs; energy decisions are made during the run by :class:`Expansion` as the results they
depend on land (the scheduler asks it which fragments became ready).

Every QCManyBody label belongs to exactly one subset: NoCP ``(S, S)`` and CP ``(S, all)`` labels to
their real fragments ``S``, VMFC labels ``(T, B)`` to their basis ``B``. Dropped subsets' labels are
never computed; assembly gives them the values that make their increments zero
(:mod:`qcmb_async._core.fill`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from itertools import combinations
from typing import Any

import numpy as np

from ..errors import InputError
from .options import Screening

Subset = tuple[int, ...]
LabelKey = tuple[str, Subset, Subset]


def check_screening(spec: Screening, computer: Any) -> None:
    """:class:`InputError` when ``spec`` cannot apply to this expansion (before anything runs)."""
    core = computer.qcmb_core
    nfrag, max_nbody = core.nfragments, core.max_nbody
    bad = [k for k in spec.orders if k > max_nbody]
    if bad:
        raise InputError(f"screening: order(s) {bad} above max_nbody={max_nbody}: nothing of that order is "
                         f"computed; remove them or raise max_nbody")
    if core.has_supersystem or core.supersystem_ie_only:
        raise InputError("screening cannot be combined with a supersystem level or supersystem_ie_only (they "
                         "need the whole cluster): remove one of them")
    if max_nbody >= nfrag:
        raise InputError(f"screening needs max_nbody < the number of fragments ({nfrag}); with max_nbody="
                         f"{max_nbody} the expansion is the whole cluster and nothing can be dropped")
    driver = str(getattr(computer.driver, "value", computer.driver))
    if spec.energy and driver not in ("energy", "gradient", "hessian"):
        raise InputError(f"energy screening needs fragment energies; driver {driver!r} gives none: use distance "
                         "screening")


def fragment_distances(molecule: Any, metric: str = "closest") -> np.ndarray:
    """``(N, N)`` fragment-fragment distances in Å: smallest atom-atom distance, or between centroids."""
    from qcelemental import constants

    geom = np.asarray(molecule.geometry, dtype=float) * constants.bohr2angstroms
    frags = [np.asarray(f, dtype=int) for f in molecule.fragments]
    n = len(frags)
    if metric == "centroid":
        cent = np.array([geom[f].mean(axis=0) for f in frags])
        return np.linalg.norm(cent[:, None] - cent[None], axis=-1)
    owner = np.empty(len(geom), dtype=int)
    for i, f in enumerate(frags):
        owner[f] = i
    out = np.full((n, n), np.inf)
    for i, f in enumerate(frags):
        # One fragment's atoms against all atoms: memory (atoms of f x atoms), not atoms^2.
        d = np.linalg.norm(geom[f][:, None] - geom[None], axis=-1).min(axis=0)
        np.minimum.at(out[i], owner, d)
    np.fill_diagonal(out, 0.0)
    return out


def subset_of(real: Subset, basis: Subset, nfrag: int) -> Subset:
    """The subset a label belongs to: its basis for VMFC labels, its real fragments otherwise."""
    if len(basis) == nfrag or real == basis:
        return real
    return basis


class Expansion:
    """The kept family of a screened expansion and the labels it needs; decides energy screening.

    Built by :func:`plan_expansion`. ``initial`` lists the labels known to be needed before
    anything runs. :meth:`observe` takes each finished label's energy and returns the labels that
    became needed (subsets decided kept); :meth:`level_final` says whether more labels of a
    level can still appear. Decisions depend only on fragment energies, never on the order in
    which they arrive, so a rerun from the result store reproduces them.
    """

    def __init__(self, spec: Screening, computer: Any) -> None:
        core = computer.qcmb_core
        self.spec = spec
        self.nfrag: int = core.nfragments
        self.max_nbody: int = core.max_nbody
        self.all: Subset = tuple(range(1, self.nfrag + 1))
        self.bsse = [str(getattr(b, "value", b)) for b in core.bsse_type]
        self.screen_bsse = self.bsse[0]  # QCManyBody's return BSSE type
        self.rtd = bool(core.return_total_data)
        self.mcs: dict[str, list[int]] = {mc: [int(n) for n in nbs if n != "supersystem"]
                                          for mc, nbs in core.nbodies_per_mc_level.items()}
        self.dist = fragment_distances(core.molecule, spec.metric) if spec.distance else None
        self._near: dict[int, list[set[int]]] = {}
        if self.dist is not None:
            for k, cut in spec.distance.items():
                # 1-based like the subsets: _near[k][i] = fragments within the order-k cutoff of fragment i.
                self._near[k] = [set()] + [set((np.flatnonzero(row <= cut) + 1).tolist()) for row in self.dist]
        self.kept: dict[int, set[Subset]] = {1: {(i,) for i in self.all}}
        self.decided: dict[Subset, bool] = {(i,): True for i in self.all}
        self.dropped_tested: Counter[int] = Counter()
        """Candidates (all (k-1)-subsets kept, within the distance cutoff) dropped by the energy test."""
        self.candidates: Counter[int] = Counter()
        self._own_left: dict[Subset, int] = {}
        self._complete: set[Subset] = set()
        self._energies: dict[LabelKey, float] = {}
        self.increments: dict[Subset, float] = {}
        self.first_energy = min(spec.energy) if spec.energy else self.max_nbody + 1
        self.initial: list[LabelKey] = []
        self._enumerate_static()

    # ---- labels -------------------------------------------------------------------------------
    def labels_of(self, s: Subset) -> list[LabelKey]:
        """QCManyBody's labels that belong to subset ``s`` (see :func:`subset_of`), per model chemistry."""
        k = len(s)
        out: list[LabelKey] = []
        for mc, nbs in self.mcs.items():
            top = max(nbs)
            if k > top:
                continue
            own: list[LabelKey] = []
            if "nocp" in self.bsse or (self.rtd and 1 in nbs and k == 1):
                own.append((mc, s, s))
            if "cp" in self.bsse and top > 1:
                own.append((mc, s, self.all))
            if "vmfc" in self.bsse and k in nbs:
                own.extend((mc, t, s) for n in range(1, k + 1) for t in combinations(s, n))
            for item in own:
                if item not in out:
                    out.append(item)
        return out

    # ---- static (distance) enumeration --------------------------------------------------------
    def _passes_distance(self, base: Subset, j: int, k: int) -> bool:
        """Every pair of ``base + (j,)`` within the order-``k`` cutoff (``base`` passed a larger one, maybe)."""
        near = self._near.get(k)
        if near is None:
            return True
        return all(j in near[i] for i in base) and all(b in near[a] for a, b in combinations(base, 2))

    def _extend(self, k: int) -> Iterable[Subset]:
        """Candidates of order ``k``: kept (k-1)-subsets extended upwards, all (k-1)-subsets kept."""
        below = self.kept.get(k - 1, set())
        near = self._near.get(k)
        for base in sorted(below):
            if near is None:
                js: Iterable[int] = range(base[-1] + 1, self.nfrag + 1)
            else:
                if not all(b in near[a] for a, b in combinations(base, 2)):
                    continue  # base itself is wider than this order's cutoff
                js = sorted(j for j in set.intersection(*(near[i] for i in base)) if j > base[-1])
            for j in js:
                s = (*base, j)
                if all(s[:i] + s[i + 1:] in below for i in range(k - 1)):  # the last one is ``base``
                    yield s

    def _enumerate_static(self) -> None:
        for i in self.all:
            self.initial.extend(self._keep((i,)))
        for k in range(2, min(self.first_energy, self.max_nbody + 1)):
            found = list(self._extend(k))
            self.candidates[k] = len(found)
            self.kept[k] = set(found)
            for s in found:
                self.decided[s] = True
                self.initial.extend(self._keep(s))

    def _keep(self, s: Subset) -> list[LabelKey]:
        labels = self.labels_of(s)
        if self.spec.energy:
            self._own_left[s] = len(labels)  # results still to come before s's increment is known
        return labels

    # ---- dynamic (energy) decisions -----------------------------------------------------------

    def observe(self, key: LabelKey, energy: float | None) -> list[LabelKey]:
        """A label finished with ``energy``; the labels of subsets that are now decided kept."""
        if not self.spec.energy:
            return []
        _mc, real, basis = key
        s = subset_of(real, basis, self.nfrag)
        if s not in self._own_left:
            return []
        if energy is None:
            raise ValueError(f"energy screening needs every fragment's energy; fragment {key} returned none")
        self._energies[key] = float(energy)
        self._own_left[s] -= 1
        released: list[LabelKey] = []
        if self._own_left[s] == 0:
            self._try_complete(s, released)
        return released

    def _try_complete(self, s: Subset, released: list[LabelKey]) -> None:
        stack = [s]
        while stack:
            t = stack.pop()
            if t in self._complete or self._own_left.get(t, 1) != 0:
                continue
            k = len(t)
            if k > 1 and not all(t[:i] + t[i + 1:] in self._complete for i in range(k)):
                continue
            self.increments[t] = self._increment(t)
            self._complete.add(t)
            # Supersets may now be decidable; completed supersets of t may complete in turn.
            for j in range(1, self.nfrag + 1):
                if j in t:
                    continue
                sup = tuple(sorted((*t, j)))
                if sup in self._own_left and sup not in self._complete:
                    stack.append(sup)
                elif sup not in self.decided and k + 1 <= self.max_nbody:
                    self._decide(sup, released)

    def _increment(self, t: Subset) -> float:
        """``t``'s k-body increment (Eh) in the screened BSSE treatment; 0 for monomers."""
        k = len(t)
        if k == 1:
            return 0.0
        mc = next(m for m, nbs in self.mcs.items() if k in nbs)  # the model chemistry of the k-body term
        e = self._energies
        if self.screen_bsse == "vmfc":
            return sum((-1) ** (k - n) * e[(mc, u, t)] for n in range(1, k + 1) for u in combinations(t, n))
        basis_of = (lambda u: self.all) if self.screen_bsse == "cp" else (lambda u: u)
        return sum((-1) ** (k - n) * e[(mc, u, basis_of(u))] for n in range(1, k + 1) for u in combinations(t, n))

    def _decide(self, s: Subset, released: list[LabelKey]) -> None:
        k = len(s)
        subs = [s[:i] + s[i + 1:] for i in range(k)]
        if not all(self.decided.get(u) for u in subs) or not self._passes_distance(s[:-1], s[-1], k):
            # Not (yet) a candidate: a (k-1)-subset is undecided (it triggers s when decided) or dropped.
            # Not recorded, so memory grows with the kept family only.
            return
        threshold = self.spec.energy.get(k)
        if threshold is not None:
            if not all(u in self._complete for u in subs):
                return  # its decision needs those increments
            keep = max(abs(self.increments[u]) for u in subs) > threshold
        else:
            keep = True
        self.candidates[k] += 1
        self.decided[s] = keep
        if not keep:
            self.dropped_tested[k] += 1
            return
        self.kept.setdefault(k, set()).add(s)
        released.extend(self._keep(s))
        # Orders without a threshold decide as soon as their (k-1)-subsets are decided.
        if k + 1 <= self.max_nbody and k + 1 not in self.spec.energy:
            for j in range(1, self.nfrag + 1):
                if j not in s:
                    sup = tuple(sorted((*s, j)))
                    if sup not in self.decided:
                        self._decide(sup, released)

    # ---- progress -----------------------------------------------------------------------------
    def order_decided(self, k: int) -> bool:
        """Whether every ``k``-subset is decided (no more of order ``k`` can be kept)."""
        if k < self.first_energy or not self.spec.energy:
            return True
        if not self.order_decided(k - 1):
            return False
        if k in self.spec.energy:
            return all(u in self._complete for u in self.kept.get(k - 1, ()))
        return True

    def level_final(self, level: int) -> bool:
        """No more labels with ``level`` real fragments can be released."""
        if "vmfc" in self.bsse:
            return self.order_decided(self.max_nbody)
        return self.order_decided(level)

    def kept_family(self) -> set[Subset]:
        return set().union(*self.kept.values())

    def summary(self) -> dict[str, Any]:
        """Per order: subsets possible, kept, dropped; cutoffs/thresholds and what is screened."""
        orders = {}
        for k in range(1, self.max_nbody + 1):
            possible = math.comb(self.nfrag, k)
            kept = len(self.kept.get(k, ()))
            orders[str(k)] = {"possible": possible, "kept": kept, "dropped": possible - kept,
                              "energy_tested": self.candidates[k] if k in self.spec.energy else 0,
                              "dropped_by_energy": self.dropped_tested[k]}
        return {**self.spec.describe(), "orders": orders, "screened_bsse": self.screen_bsse,
                "properties": "all (dropped subsets contribute zero energy, gradient and Hessian increments)"}


def plan_expansion(spec: Screening, computer: Any) -> Expansion:
    """Check ``spec`` against the expansion and decide distance screening (InputError when it cannot apply)."""
    check_screening(spec, computer)
    return Expansion(spec, computer)
