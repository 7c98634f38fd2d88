"""GMBE(n) written from the textbook formula, sharing no code with qcmb_async (test reference).

Richard & Herbert, J. Chem. Phys. 137, 064113 (2012), eq. (the generalized MBE): with the n-mers
S_1..S_M (distinct unions of n primary fragments),

    E(n) = sum over every non-empty subset J of {1..M} of (-1)^(|J|+1) E(intersection of S_j, j in J)

(empty intersections contribute nothing). Exponential in M: for small test systems only. Each
subsystem is capped here: a hydrogen per bond from inside to outside, at r_in + g (r_out - r_in),
g = (R_in + R_H) / (R_in + R_out) with QCElemental's covalent radii, and computed with PySCF directly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np


def capped(symbols: list[str], xyz_bohr: np.ndarray, bonds: list[tuple[int, int]], atoms: frozenset[int]
           ) -> tuple[list[str], np.ndarray]:
    from qcelemental import covalentradii

    def radius(s: str) -> float:
        return covalentradii.get(s, units="angstrom")

    syms = [symbols[i] for i in sorted(atoms)]
    coords = [xyz_bohr[i] for i in sorted(atoms)]
    for a, b in bonds:
        for i, j in ((a, b), (b, a)):
            if i in atoms and j not in atoms:
                g = (radius(symbols[i]) + radius("H")) / (radius(symbols[i]) + radius(symbols[j]))
                syms.append("H")
                coords.append(xyz_bohr[i] + g * (xyz_bohr[j] - xyz_bohr[i]))
    return syms, np.array(coords)


def pyscf_energy(method: str, basis: str) -> Callable[[list[str], np.ndarray], float]:
    def energy(syms: list[str], coords: np.ndarray) -> float:
        from pyscf import gto, scf

        mol = gto.M(atom=[(s, tuple(c)) for s, c in zip(syms, coords, strict=True)], unit="Bohr", basis=basis,
                    symmetry=False, verbose=0)
        assert method == "hf"
        mf = scf.RHF(mol)
        mf.conv_tol = 1e-12
        return float(mf.kernel())

    return energy


def gmbe_energy(symbols: list[str], xyz_bohr: np.ndarray, bonds: list[tuple[int, int]], fragments: list[list[int]],
                n: int, energy: Callable[[list[str], np.ndarray], float]) -> float:
    nmers = sorted({frozenset().union(*(fragments[k] for k in combo))
                    for combo in itertools.combinations(range(len(fragments)), n)}, key=sorted)
    cache: dict[frozenset[int], float] = {}
    total = 0.0
    for size in range(1, len(nmers) + 1):
        for subset in itertools.combinations(nmers, size):
            inter = frozenset.intersection(*subset)
            if not inter:
                continue
            if inter not in cache:
                cache[inter] = energy(*capped(symbols, xyz_bohr, bonds, inter))
            total += (-1) ** (size + 1) * cache[inter]
    return total
