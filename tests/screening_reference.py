"""Independent reference for screened expansions, from the textbook inclusion-exclusion formulas.

Shares no code with qcmb_async: it reads a complete unscreened run's fragment results
(``cluster_results="all"``), decides the kept family by brute force over every subset, and sums
the kept increments. Subsets are sorted tuples of 1-based fragment numbers.

- NoCP increment of S: ``Σ_{T⊆S} (-1)^{|S|-|T|} E(T in T's basis)``; total = Σ over kept S.
- CP increment of S (|S| >= 2): the same with every E(T) in the whole cluster's basis; total =
  Σ_i E(i in i's basis) + Σ over kept S with |S| >= 2.
- VMFC term of basis B: ``Σ_{T⊆B} (-1)^{|B|-|T|} E(T in B's basis)``; total = Σ over kept B.
"""

from __future__ import annotations

import json
from itertools import combinations
from typing import Any

import numpy as np

BOHR_TO_ANGSTROM = 0.529177210903  # CODATA 2018, the value QCElemental uses


def subsets(n: int, k: int) -> list[tuple[int, ...]]:
    return list(combinations(range(1, n + 1), k))


def closest_distances(molecule: Any) -> np.ndarray:
    """Smallest atom-atom distance (Å) between every pair of fragments, by brute force."""
    geom = np.asarray(molecule.geometry) * BOHR_TO_ANGSTROM
    frags = [list(f) for f in molecule.fragments]
    n = len(frags)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                out[i, j] = min(np.linalg.norm(geom[a] - geom[b]) for a in frags[i] for b in frags[j])
    return out


def centroid_distances(molecule: Any) -> np.ndarray:
    """Distances (Å) between the fragments' geometric centres."""
    geom = np.asarray(molecule.geometry) * BOHR_TO_ANGSTROM
    cent = [geom[list(f)].mean(axis=0) for f in molecule.fragments]
    return np.array([[np.linalg.norm(a - b) for b in cent] for a in cent])


def distance_kept(molecule: Any, cutoffs: dict[int, float], max_nbody: int,
                  metric: str = "closest") -> set[tuple[int, ...]]:
    """Kept family: every (k-1)-subset kept and, if order k has a cutoff, every pair within it."""
    d = closest_distances(molecule) if metric == "closest" else centroid_distances(molecule)
    n = len(molecule.fragments)
    kept = set(subsets(n, 1))
    for k in range(2, max_nbody + 1):
        for s in subsets(n, k):
            if not all(t in kept for t in combinations(s, k - 1)):
                continue
            if k in cutoffs and any(d[a - 1, b - 1] > cutoffs[k] for a, b in combinations(s, 2)):
                continue
            kept.add(s)
    return kept


def parse(label: str) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    mc, real, basis = json.loads(label)
    return mc, tuple(real), tuple(basis)


class Reference:
    """Fragment results of a full run, keyed by (real, basis); property ``prop`` in the cluster's shape."""

    def __init__(self, full_result: Any, prop: str = "energy") -> None:
        self.mol = full_result.molecule
        self.n = len(self.mol.fragments)
        self.nat = len(self.mol.symbols)
        self.all = tuple(range(1, self.n + 1))
        self.prop = prop
        self.values: dict[tuple[tuple[int, ...], tuple[int, ...]], Any] = {}
        for label, res in full_result.cluster_results.items():
            _, real, basis = parse(label)
            atoms = [a for f in basis for a in self.mol.fragments[f - 1]]
            if prop == "energy":
                self.values[(real, basis)] = float(res.properties.return_energy)
            elif prop == "hessian":
                hess = np.asarray(res.properties.return_hessian).reshape(3 * len(atoms), 3 * len(atoms))
                idx = [3 * a + c for a in atoms for c in range(3)]
                full = np.zeros((3 * self.nat, 3 * self.nat))
                full[np.ix_(idx, idx)] = hess
                self.values[(real, basis)] = full
            else:
                grad = np.asarray(res.return_result if res.properties.return_gradient is None
                                  else res.properties.return_gradient).reshape(-1, 3)
                full = np.zeros((self.nat, 3))
                full[atoms] = grad
                self.values[(real, basis)] = full

    def e(self, real: tuple[int, ...], basis: tuple[int, ...]) -> Any:
        return self.values[(real, basis)]

    def nocp_increment(self, s: tuple[int, ...]) -> Any:
        return sum((-1) ** (len(s) - k) * self.e(t, t) for k in range(1, len(s) + 1) for t in combinations(s, k))

    def cp_increment(self, s: tuple[int, ...]) -> Any:
        return sum((-1) ** (len(s) - k) * self.e(t, self.all) for k in range(1, len(s) + 1)
                   for t in combinations(s, k))

    def vmfc_term(self, b: tuple[int, ...]) -> Any:
        return sum((-1) ** (len(b) - k) * self.e(t, b) for k in range(1, len(b) + 1) for t in combinations(b, k))

    def increment(self, bsse: str, s: tuple[int, ...]) -> Any:
        return {"nocp": self.nocp_increment, "cp": self.cp_increment, "vmfc": self.vmfc_term}[bsse](s)

    def total(self, bsse: str, kept: set[tuple[int, ...]]) -> Any:
        """Screened MBE total (energy or gradient) for ``bsse`` over the kept family."""
        if bsse == "cp":
            mono = sum(self.e((i,), (i,)) for i in self.all)
            return mono + sum(self.cp_increment(s) for s in kept if len(s) >= 2)
        return sum(self.increment(bsse, s) for s in kept)

    def interaction(self, bsse: str, kept: set[tuple[int, ...]]) -> Any:
        """Screened MBE interaction energy: the kept increments of order >= 2."""
        return sum(self.increment(bsse, s) for s in kept if len(s) >= 2)


def energy_kept(ref: Reference, bsse: str, thresholds: dict[int, float], max_nbody: int,
                start: set[tuple[int, ...]] | None = None) -> set[tuple[int, ...]]:
    """Brute-force energy screening: a k-subset (all (k-1)-subsets kept) is kept if the largest
    |(k-1)-body increment| among its (k-1)-subsets exceeds the order's threshold."""
    low = min(thresholds)
    kept = {s for k in range(1, low) for s in subsets(ref.n, k)} if start is None else set(start)
    for k in range(low, max_nbody + 1):
        for s in subsets(ref.n, k):
            below = list(combinations(s, k - 1))
            if not all(t in kept for t in below):
                continue
            if k in thresholds and max(abs(ref.increment(bsse, t)) for t in below) <= thresholds[k]:
                continue
            kept.add(s)
    return kept
