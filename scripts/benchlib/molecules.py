"""The clusters the benchmarks run and their MBE inputs (Å in, QCElemental ``Molecule`` out).

Every builder gives explicit fragment charges and multiplicities: without them QCElemental
searches fragment charge combinations, which takes seconds at 20 fragments and exhausts memory
at 24. Builders of hydrogen-bonded clusters check their geometry (:func:`check_geometry`).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput

#: (method, basis) of each program the thread benchmark knows.
SPECS: dict[str, tuple[str, str | None]] = {
    "mopac": ("pm7", None),
    "nwchem": ("hf", "sto-3g"),
    "pyscf": ("hf", "sto-3g"),
}

Atoms = list[tuple[str, np.ndarray]]  # one fragment: (symbol, xyz in Å)
BOHR_IN_ANGSTROM = 0.52917721067  # the constant geometry_report has always used


def molecule(mols: list[Atoms]) -> Molecule:
    """A Molecule of neutral closed-shell fragments from ``[[(symbol, xyz in Å), ...], ...]``."""
    import qcelemental

    symbols = [s for m in mols for s, _ in m]
    xyz = np.array([p for m in mols for _, p in m], dtype=float) / float(qcelemental.constants.bohr2angstroms)
    bounds = np.cumsum([0] + [len(m) for m in mols])
    return Molecule(symbols=symbols, geometry=xyz.ravel(), molecular_charge=0.0, molecular_multiplicity=1,
                    fragments=[list(range(bounds[i], bounds[i + 1])) for i in range(len(mols))],
                    fragment_charges=[0.0] * len(mols), fragment_multiplicities=[1] * len(mols))


def water(o: np.ndarray, hdir: np.ndarray, pdir: np.ndarray, *, r_first: float = 0.957, r_second: float = 0.957,
          hoh: float = 104.5) -> Atoms:
    """Water with O at ``o``, the first O-H along ``hdir``, the second in the plane of ``hdir`` and ``pdir``."""
    u = hdir / np.linalg.norm(hdir)
    w = pdir - np.dot(pdir, u) * u
    w /= np.linalg.norm(w)
    a = math.radians(hoh)
    return [("O", o), ("H", o + r_first * u), ("H", o + r_second * (math.cos(a) * u + math.sin(a) * w))]


def water_ring(n: int, *, roo: float = 2.80, pucker: float = 0.30, r_donor: float = 0.970,
               r_free: float = 0.957) -> list[Atoms]:
    """Cyclic water ``n``-mer: O on a puckered ``n``-gon (nearest O-O ``roo``, O alternately ``pucker`` Å
    above and below the mean plane), each water donating one H-bond along the O-O line to the next
    and accepting one from the previous; the free O-H points alternately up and down, as in the cyclic
    hexamer observed in helium droplets. HOH 104.5°.
    """
    side_xy = math.sqrt(roo**2 - (2 * pucker) ** 2)
    rxy = side_xy / (2 * math.sin(math.pi / n))
    oxy = np.array([[rxy * math.cos(2 * math.pi * k / n), rxy * math.sin(2 * math.pi * k / n), pucker * (-1) ** k]
                    for k in range(n)])
    mols = []
    for k in range(n):
        o = oxy[k]
        ref = np.array([0.0, 0.0, (-1.0) ** k]) + 0.3 * o / np.linalg.norm(o)  # up/down, tilted outwards
        mols.append(water(o, oxy[(k + 1) % n] - o, ref, r_first=r_donor, r_second=r_free))
    return mols


def ring_hexamer() -> str:
    """The ring hexamer (:func:`water_ring`, donor O-H 0.970 Å) as a ``--``-separated Cartesian string in Å."""
    return "\n--\n".join("\n".join(f"{el} {x:10.5f} {y:10.5f} {z:10.5f}" for el, (x, y, z) in block)
                         for block in water_ring(6))


def geometry_report(mol: Molecule) -> dict[str, float]:
    """Closest pair of atoms, closest intermolecular pair and O-O range (Å) of a water cluster."""
    xyz = np.asarray(mol.geometry) * BOHR_IN_ANGSTROM
    frag_of = {i: n for n, frag in enumerate(mol.fragments) for i in frag}
    dist = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    pairs = list(itertools.combinations(range(len(xyz)), 2))
    oxygens = [i for i, s in enumerate(mol.symbols) if s == "O"]
    oo = [dist[i, j] for i, j in itertools.combinations(oxygens, 2)]
    return {
        "min_any": min(dist[i, j] for i, j in pairs),
        "min_inter": min(dist[i, j] for i, j in pairs if frag_of[i] != frag_of[j]),
        "oo_min": min(oo) if oo else math.nan,
        "oo_max": max(oo) if oo else math.nan,
    }


def check_geometry(mol: Molecule, name: str, *, min_inter: float = 1.5, oo: tuple[float, float] | None = (2.6, 3.0),
                   ) -> Molecule:
    """``mol`` unchanged, or ``ValueError`` if atoms clash or the O-O contacts are off (Å)."""
    geo = geometry_report(mol)
    if geo["min_any"] < 0.9 or geo["min_inter"] < min_inter or (oo and not oo[0] <= geo["oo_min"] <= oo[1]):
        raise ValueError(f"implausible {name} geometry: {geo}")
    return mol


def hexamer() -> Molecule:
    """The ring hexamer parsed from :func:`ring_hexamer` (5 decimals, as the figures of record used)."""
    mol = Molecule.from_data(ring_hexamer())
    mol = Molecule(**{**mol.model_dump(), "fragment_charges": [0.0] * 6, "fragment_multiplicities": [1] * 6})
    return check_geometry(mol, "water hexamer")


def ring_octamer() -> Molecule:
    """Cyclic water octamer (:func:`water_ring`; both O-H 0.957 Å, as in the figures of record)."""
    return check_geometry(molecule(water_ring(8, r_donor=0.957)), "water octamer")


def planar_hexamer(radius: float = 2.9) -> Molecule:
    """Six waters on a planar ring (O-O 2.9 Å), each donating an H to its neighbour, the other H out of
    plane: the Dask benchmark's cluster (kept, so its figures stay comparable)."""
    mols = []
    for i in range(6):
        a, b = 2 * math.pi * i / 6, 2 * math.pi * (i + 1) / 6
        o = np.array([radius * math.cos(a), radius * math.sin(a), 0.0])
        u = np.array([radius * math.cos(b), radius * math.sin(b), 0.0]) - o
        free = o + np.array([0.30 * math.cos(a), 0.30 * math.sin(a), 0.91 * (1 if i % 2 else -1)])
        atoms = (("O", o), ("H", o + 0.96 * u / np.linalg.norm(u)), ("H", free))
        mols.append([(s, np.round(p, 5)) for s, p in atoms])  # 5 decimals, as the figures of record used
    return molecule(mols)


def benzene_waters(n_waters: int = 4) -> Molecule:
    """Benzene (fragment 1) with waters: one above and one below the ring, each donating an
    O-H...pi bond (H 2.39 Å from the ring centre), the others in the ring plane accepting a
    C-H...O contact (H...O 2.45 Å)."""
    ring = [("C", np.array([1.39 * math.cos(k * math.pi / 3), 1.39 * math.sin(k * math.pi / 3), 0.0]))
            for k in range(6)]
    ring += [("H", np.array([2.48 * math.cos(k * math.pi / 3), 2.48 * math.sin(k * math.pi / 3), 0.0]))
             for k in range(6)]
    z = np.array([0.0, 0.0, 1.0])
    mols = [ring, water(np.array([0.0, 0.0, 3.35]), -z, np.array([1.0, 0, 0])),
            water(np.array([0.0, 0.0, -3.35]), z, np.array([0, 1.0, 0]))]
    a = math.radians(52.25)
    for t in (0, 120, 240, 60, 180, 300)[: n_waters - 2]:
        out = np.array([math.cos(math.radians(t)), math.sin(math.radians(t)), 0.0])
        mols.append(water(4.93 * out, math.cos(a) * out + math.sin(a) * z, math.cos(a) * out - math.sin(a) * z))
    return check_geometry(molecule(mols), "benzene-water", min_inter=2.0, oo=None)


def water_lattice(n: int, spacing: float = 3.0, seed: int = 0, min_contact: float = 1.75) -> Molecule:
    """``n`` waters on a simple cubic lattice (O-O ``spacing`` Å, ~liquid density at 3.0-3.1 Å), each
    in a random orientation chosen so that no two atoms of different waters come closer than
    ``min_contact`` Å."""
    rng = np.random.default_rng(seed)
    side = math.ceil(n ** (1 / 3))
    sites = [np.array(p, dtype=float) * spacing for p in itertools.product(range(side), repeat=3)][:n]
    local = np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]])
    placed: list[np.ndarray] = []
    for site in sites:
        for _ in range(1000):
            q, _r = np.linalg.qr(rng.normal(size=(3, 3)))
            xyz = site + local @ q.T
            if not placed:
                break
            if np.min(np.linalg.norm(np.concatenate(placed)[:, None] - xyz[None], axis=-1)) >= min_contact:
                break
        else:
            raise ValueError("could not place a water without a close contact: increase spacing")
        placed.append(xyz)
    return molecule([[(s, p) for s, p in zip("OHH", xyz, strict=True)] for xyz in placed])


def mbe(mol: Molecule, program: str, method: str, basis: str | None, *, bsse: str, max_nbody: int,
        keep_all: bool = True, driver: str = "energy") -> ManyBodyInput:
    """Single-level MBE input. ``keep_all``: ``protocols.cluster_results="all"`` so the sequential
    computer reports each fragment's ``provenance.wall_time`` (it changes no energies)."""
    spec: dict[str, Any] = {
        "driver": driver,
        "keywords": {"bsse_type": [bsse], "max_nbody": max_nbody},
        "specification": {"(auto)": {"program": program, "model": {"method": method, "basis": basis},
                                     "driver": driver}},
    }
    if keep_all:
        spec["protocols"] = {"cluster_results": "all"}
    return ManyBodyInput(molecule=mol, specification=spec)


def hexamer_input(program: str, method: str, basis: str | None, *, bsse: str = "cp", max_nbody: int = 3,
                  driver: str = "energy") -> ManyBodyInput:
    """MBE input for the ring hexamer that keeps every fragment's ``AtomicResult``."""
    return mbe(hexamer(), program, method, basis, bsse=bsse, max_nbody=max_nbody, driver=driver)
