"""The generalized many-body expansion (GMBE) with hydrogen caps: input, subsystems, caps and coefficients.

Method (Richard & Herbert, J. Chem. Phys. 137, 064113 (2012)): primary fragments F_1..F_N (sets of
atoms) may overlap. The n-mers are the distinct unions of n primary fragments; GMBE(n) is the
inclusion-exclusion sum over them,

    E(n) = sum_a E(S_a) - sum_{a<b} E(S_a & S_b) + sum_{a<b<c} E(S_a & S_b & S_c) - ...

With disjoint fragments this is exactly the ordinary MBE(n). Terms repeat and cancel, so the sum is
aggregated per distinct subsystem T of the family L closed under intersection: the net coefficient
obeys sum_{T' in L, T' >= T} c(T') = 1 for every T in L (the inclusion-exclusion sum over the n-mers
containing T is 1), i.e. c(T) = 1 - sum_{T' > T} c(T') (Moebius inversion on L). A subsystem whose net
coefficient is 0 is never computed.

Caps: every bond from an atom i of a subsystem to an atom j outside it is replaced by a hydrogen at
r_H = r_i + g (r_j - r_i), g = (R_i + R_H) / (R_i + R_j) with QCElemental's covalent radii
(Alvarez 2008): the capping X-H bond gets the length the covalent radii give an X-H bond, in the
direction of the bond it replaces (C-C -> C-H: g = 0.704, 1.54 A -> 1.08 A). A cap's gradient goes to
i and j by the chain rule (dE/dr_i += (1 - g) dE/dr_H, dE/dr_j += g dE/dr_H), so the assembled
gradient is the exact derivative of the GMBE energy.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ..errors import InputError

__all__ = ["Cap", "GMBEInput", "Subsystem", "cap_scale", "gmbe_subsystems"]

#: Subsystems per order above which planning refuses (memory and minutes of Python): use screening.
MAX_SUBSYSTEMS = 2_000_000


def _whole(value: Any) -> int:
    """An atom index, charge or order: a whole number (Python or NumPy int), never a bool, float or string, which
    pydantic's lax mode would turn into one silently (``True`` -> atom 1, ``"3"`` -> 3, ``2.0`` -> 2)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{value!r} ({type(value).__name__}) is not a whole number: give an int")
    return int(value)


def _order_key(value: Any) -> int:
    """A ``distance_cutoffs`` key: a whole number, or its decimal text (JSON object keys are strings)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return _whole(value)


def _length(value: Any) -> float:
    """A cutoff in Å: a real number, never a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{value!r} ({type(value).__name__}) is not a length in Å: give a number")
    return float(value)


Whole = Annotated[int, BeforeValidator(_whole)]
OrderKey = Annotated[int, BeforeValidator(_order_key)]
Length = Annotated[float, BeforeValidator(_length)]


class GMBEInput(BaseModel):
    """A generalized many-body expansion: a molecule, primary fragments that may overlap, the order.

    Attributes:
        molecule: QCElemental v2 ``Molecule`` (bohr). Its own fragments, if any, are ignored.
        fragments: primary fragments as 0-based atom indices; they may overlap and must cover every atom.
        max_nbody: the GMBE order n (unions of up to n primary fragments), 1..len(fragments).
        specification: ``{"program", "driver" ("energy" | "gradient"), "model": {"method", "basis"},
            "keywords"}`` as QCSchema's ``AtomicSpecification``.
        atom_charges: formal charge of each atom (default 0); a subsystem's charge is the sum over its atoms
            (caps are neutral hydrogens). Subsystems must be closed-shell (an even electron count).
        bonds: 0-based atom pairs; default: QCElemental's ``guess_connectivity`` (1.2 x covalent radii).
        distance_cutoffs: ``{order: Å}``; an n-mer (n >= 2) is kept only if every pair of its primary
            fragments has two atoms within the cutoff of its order (no entry: keep all).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    schema_name: Literal["qcmb_async_gmbe_input"] = "qcmb_async_gmbe_input"
    molecule: Any
    fragments: list[list[Whole]]
    max_nbody: Annotated[int, Field(ge=1), BeforeValidator(_whole)]
    specification: dict[str, Any]
    atom_charges: list[Whole] | None = None
    bonds: list[tuple[Whole, Whole]] | None = None
    distance_cutoffs: dict[OrderKey, Length] | None = None

    @field_validator("molecule", mode="before")
    @classmethod
    def _molecule(cls, value: Any) -> Any:
        from qcelemental.models.v2 import Molecule

        if isinstance(value, Molecule):
            return value
        if hasattr(value, "convert_v"):
            return value.convert_v(2)
        if isinstance(value, dict):
            from qcelemental import exceptions

            try:
                return Molecule(**value)
            except (exceptions.ValidationError, exceptions.NotAnElementError, exceptions.MoleculeFormatError,
                    exceptions.DataUnavailableError, exceptions.ChoicesError) as exc:
                # QCElemental's own errors are not ValueErrors: pydantic would let them out raw.
                raise ValueError(f"the molecule is not valid: {exc}; correct it (atoms closer than 0.1 bohr, unknown "
                                 "elements, charges and multiplicities that do not add up, ...)") from None
        raise ValueError(f"molecule must be a QCElemental Molecule or its dict, not {type(value).__name__}")

    @model_validator(mode="after")
    def _check(self) -> GMBEInput:
        natom = len(self.molecule.symbols)
        if not self.fragments:
            raise ValueError("fragments is empty: give the primary fragments as lists of 0-based atom indices")
        seen: set[int] = set()
        sets: list[frozenset[int]] = []
        for k, frag in enumerate(self.fragments):
            if not frag:
                raise ValueError(f"fragment {k} is empty")
            bad = [i for i in frag if not 0 <= i < natom]
            if bad:
                raise ValueError(f"fragment {k} names atoms {bad[:5]} outside 0..{natom - 1} (indices are 0-based)")
            if len(set(frag)) != len(frag):
                raise ValueError(f"fragment {k} lists an atom twice")
            sets.append(frozenset(frag))
            seen.update(frag)
        missing = sorted(set(range(natom)) - seen)
        if missing:
            raise ValueError(f"atoms {missing[:10]} are in no fragment: every atom must be in at least one")
        for a, b in itertools.permutations(range(len(sets)), 2):
            if sets[a] == sets[b] and a < b:
                raise ValueError(f"fragments {a} and {b} hold the same atoms: a primary fragment given twice would be "
                                 "counted twice; remove one")
            if sets[a] < sets[b]:
                raise ValueError(f"fragment {a} is contained in fragment {b}: a primary fragment inside another adds "
                                 "nothing; remove it")
        if self.max_nbody > len(self.fragments):
            raise ValueError(f"max_nbody {self.max_nbody} exceeds the {len(self.fragments)} primary fragments")
        if self.atom_charges is not None and len(self.atom_charges) != natom:
            raise ValueError(f"atom_charges has {len(self.atom_charges)} values for {natom} atoms")
        if self.atom_charges is None and float(self.molecule.molecular_charge or 0) != 0:
            raise ValueError(f"the molecule has charge {self.molecule.molecular_charge:g} but atom_charges is not "
                             "given: a subsystem's charge is the sum over its atoms, so say on which atoms the "
                             "charge sits (atom_charges=[...], one whole number per atom)")
        self._check_charge_and_spin()
        spec = self.specification
        driver = str(spec.get("driver", "energy"))
        if driver not in ("energy", "gradient"):
            raise ValueError(f"driver {driver!r}: the GMBE assembles energies and gradients; Hessians with caps are "
                             "not offered yet. For frequencies, use finite differences of GMBE gradients: "
                             "frequencies(inp, method='finite-difference'), or on the command line qcmb-async "
                             "frequencies INPUT --hessian finite-difference")
        if not spec.get("program"):
            raise ValueError("specification needs a program, e.g. {'program': 'pyscf', 'driver': 'energy', "
                             "'model': {'method': 'hf', 'basis': 'sto-3g'}, 'keywords': {}}")
        for order, cutoff in (self.distance_cutoffs or {}).items():
            if order < 2 or not (isinstance(cutoff, int | float) and math.isfinite(cutoff) and cutoff > 0):
                raise ValueError(f"distance_cutoffs: {order}: {cutoff!r} — orders >= 2, cutoffs positive Å")
        for a, b in self.bonds or []:
            if not (0 <= a < natom and 0 <= b < natom) or a == b:
                raise ValueError(f"bond ({a}, {b}) does not join two atoms of the molecule")
        return self

    def _check_charge_and_spin(self) -> None:
        """The molecule's own charge and multiplicity must not contradict the expansion's: subsystems take their
        charge from ``atom_charges`` and are closed-shell, so a charge or a high spin set on the molecule alone
        would be dropped without a word."""
        charge = float(self.molecule.molecular_charge or 0)
        total = sum(self.atom_charges or ())
        if self.atom_charges is not None and charge != 0 and charge != total:
            raise ValueError(f"the molecule has charge {charge:g} but atom_charges add up to {total}: a subsystem's "
                             "charge is the sum of atom_charges over its atoms; make them agree")
        multiplicity = int(self.molecule.molecular_multiplicity or 1)
        from qcelemental import periodictable

        electrons = sum(periodictable.to_Z(str(s)) for s in self.molecule.symbols) - (
            total if self.atom_charges is not None else int(charge))
        if multiplicity != 1 and electrons % 2 == 0:
            raise ValueError(f"the molecule has multiplicity {multiplicity}: the GMBE computes closed-shell "
                             "subsystems only (caps are hydrogens, every subsystem a singlet); open-shell "
                             "molecules are not offered")

    @property
    def driver(self) -> str:
        return str(self.specification.get("driver", "energy"))

    @classmethod
    def from_pdb(cls, path: Any, *, residues_per_fragment: int = 1, overlap: int = 0, max_nbody: int = 2,
                 specification: dict[str, Any], residue_charges: dict[str, int] | None = None,
                 distance_cutoffs: dict[int, float] | None = None) -> GMBEInput:
        """Primary fragments of a peptide/protein from a PDB or mmCIF file (hydrogens required).

        The chain is cut at the CA-C bond of every residue but the last (a single C-C bond: never the
        peptide C-N bond, a ring or a bond to a metal), so a residue unit is the carbonyl of the residue
        before plus the residue's N-H, CA and side chain. A primary fragment is a window of
        ``residues_per_fragment`` consecutive units; consecutive windows share ``overlap`` units (0:
        disjoint fragments). Charges: every residue that can carry one (ASP, GLU, LYS, ARG, HIS, CYS,
        TYR, termini) must be named in ``residue_charges`` (``{"A/ASP12": -1, ...}``: chain/name+number),
        or the file's charge column must give it; the error lists them with the charge their hydrogens
        suggest, for you to confirm.
        """
        from .gmbe_fragment import pdb_fragments

        molecule, fragments, charges = pdb_fragments(path, residues_per_fragment, overlap, residue_charges)
        return cls(molecule=molecule, fragments=fragments, max_nbody=max_nbody, specification=specification,
                   atom_charges=charges, distance_cutoffs=distance_cutoffs)

    @classmethod
    def from_molecule(cls, molecule: Any, *, max_fragment_atoms: int, max_nbody: int = 2,
                      specification: dict[str, Any], atom_charges: list[int] | None = None,
                      distance_cutoffs: dict[int, float] | None = None) -> GMBEInput:
        """Primary fragments of a covalent molecule from its bonds: cut single C-C bonds between sp3 carbons
        outside rings, then join the pieces along cut bonds into fragments of at most ``max_fragment_atoms``."""
        from .gmbe_fragment import bond_fragments

        fragments = bond_fragments(molecule, max_fragment_atoms)
        return cls(molecule=molecule, fragments=fragments, max_nbody=max_nbody, specification=specification,
                   atom_charges=atom_charges, distance_cutoffs=distance_cutoffs)


@dataclass(frozen=True)
class Cap:
    """A hydrogen replacing the bond from ``inside`` (in the subsystem) to ``outside`` (0-based atoms)."""

    inside: int
    outside: int
    g: float
    """r_H = r_inside + g (r_outside - r_inside)."""


@dataclass
class Subsystem:
    """A distinct subsystem of the expansion: atoms (0-based, ascending), caps, net coefficient per order."""

    atoms: tuple[int, ...]
    caps: tuple[Cap, ...]
    coefficients: dict[int, int] = field(default_factory=dict)
    """GMBE order n -> net coefficient of this subsystem in GMBE(n) (orders where it is 0 are absent)."""

    @property
    def label(self) -> str:
        return "gmbe:" + _ranges(self.atoms)


#: Elements that are not metals (or metalloids bonded like metals): bonds between two of them may be capped.
_NONMETALS = frozenset({"H", "He", "B", "C", "N", "O", "F", "Ne", "Si", "P", "S", "Cl", "Ar", "As", "Se", "Br", "Kr",
                        "Te", "I", "Xe", "At", "Rn"})


def _ranges(atoms: Sequence[int]) -> str:
    out: list[str] = []
    for _, run in itertools.groupby(enumerate(atoms), key=lambda p: p[1] - p[0]):
        items = [a for _, a in run]
        out.append(f"{items[0]}" if len(items) == 1 else f"{items[0]}-{items[-1]}")
    return ",".join(out)


def cap_scale(inside: str, outside: str) -> float:
    """``g`` of a hydrogen cap on the bond ``inside``-``outside`` (element symbols), from covalent radii."""
    from qcelemental import covalentradii

    r_in = covalentradii.get(inside, units="angstrom")
    r_out = covalentradii.get(outside, units="angstrom")
    r_h = covalentradii.get("H", units="angstrom")
    return float((r_in + r_h) / (r_in + r_out))


def bonds_of(inp: GMBEInput) -> list[tuple[int, int]]:
    """The molecule's bonds (0-based pairs, i < j): ``inp.bonds`` or QCElemental's guess."""
    if inp.bonds is not None:
        return sorted({(min(a, b), max(a, b)) for a, b in inp.bonds})
    from qcelemental.molutil import guess_connectivity

    mol = inp.molecule
    return sorted({(int(min(a, b)), int(max(a, b)))
                   for a, b in guess_connectivity(list(mol.symbols), np.asarray(mol.geometry).reshape(-1, 3), 1.2)})


def _mask(atoms: Sequence[int]) -> int:
    out = 0
    for a in atoms:
        out |= 1 << a
    return out


def _atoms(mask: int) -> tuple[int, ...]:
    out = []
    i = 0
    while mask:
        low = mask & -mask
        i = low.bit_length() - 1
        out.append(i)
        mask ^= low
    return tuple(out)


def _close(inp: GMBEInput) -> np.ndarray:
    """``close[a, b]``: the smallest atom-atom distance between primary fragments a and b, Å."""
    from qcelemental import constants

    xyz = np.asarray(inp.molecule.geometry).reshape(-1, 3) * constants.bohr2angstroms
    n = len(inp.fragments)
    out = np.zeros((n, n))
    for a in range(n):
        pa = xyz[inp.fragments[a]]
        for b in range(a + 1, n):
            pb = xyz[inp.fragments[b]]
            d = float(np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min())
            out[a, b] = out[b, a] = d
    return out


def generators(inp: GMBEInput, order: int) -> list[int]:
    """The sets GMBE(``order``)'s inclusion-exclusion runs over: the kept n-mers, plus every generator of the
    order below that no kept n-mer contains (so a screened order still covers every atom: an n-mer dropped by
    ``distance_cutoffs`` leaves its (n-1)-mers in the sum, and with nothing dropped this is the n-mers alone)."""
    kept = nmers(inp, order)
    if order == 1 or not (inp.distance_cutoffs or {}).get(order):
        return kept
    extra = [g for g in generators(inp, order - 1) if not any(g & k == g for k in kept)]
    return sorted(set(kept) | set(extra), key=lambda m: (-m.bit_count(), m))


def nmers(inp: GMBEInput, order: int) -> list[int]:
    """Distinct unions of ``order`` primary fragments (bit masks), screened by ``distance_cutoffs``."""
    masks = [_mask(f) for f in inp.fragments]
    cutoff = (inp.distance_cutoffs or {}).get(order) if order >= 2 else None
    close = _close(inp) if cutoff is not None else None
    n = len(masks)
    total = math.comb(n, order)
    if total > MAX_SUBSYSTEMS and cutoff is None:
        raise InputError(f"GMBE({order}) of {n} primary fragments has {total:,} {order}-mers: give distance_cutoffs "
                         f"(e.g. {{{order}: 6.0}}) to keep only fragments close to each other")
    out: set[int] = set()
    for combo in itertools.combinations(range(n), order):
        if close is not None and any(close[a, b] > cutoff for a, b in itertools.combinations(combo, 2)):
            continue
        union = 0
        for k in combo:
            union |= masks[k]
        out.add(union)
    return sorted(out, key=lambda m: (-m.bit_count(), m))


def coefficients(generators: list[int], counts: dict[str, int] | None = None) -> dict[int, int]:
    """Net inclusion-exclusion coefficient of every subsystem of the family generated by ``generators``
    (closed under intersection), zeros dropped. ``c(T) = 1 - sum_{T' in L, T' > T} c(T')``.

    ``counts`` (if given) receives ``family`` (distinct subsystems) and ``cancelled`` (net coefficient 0).
    """
    gens = list(dict.fromkeys(generators))
    family: set[int] = set(gens)
    frontier = set(gens)
    # Which generators share an atom with a set: through the atoms' generator lists (bit masks of generators).
    by_atom: dict[int, int] = {}
    for k, g in enumerate(gens):
        for a in _atoms(g):
            by_atom[a] = by_atom.get(a, 0) | (1 << k)
    while frontier:
        new: set[int] = set()
        for t in frontier:
            touching = 0
            for a in _atoms(t):
                touching |= by_atom[a]
            for k in _atoms(touching):
                c = t & gens[k]
                if c and c != t and c not in family:
                    new.add(c)
        family |= new
        frontier = new
    # Largest first: every strict superset of T is decided before T.
    ordered = sorted(family, key=lambda m: (-m.bit_count(), m))
    containing: dict[int, list[int]] = {}
    for t in ordered:
        for a in _atoms(t):
            containing.setdefault(a, []).append(t)
    coef: dict[int, int] = {}
    for t in ordered:
        pivot = min(_atoms(t), key=lambda a: len(containing[a]))
        above = sum(coef[s] for s in containing[pivot] if s != t and s & t == t and s in coef)
        coef[t] = 1 - above
    kept = {t: c for t, c in coef.items() if c != 0}
    if counts is not None:
        counts.update(family=len(coef), cancelled=len(coef) - len(kept), nmers=len(gens))
    return kept


def _refuse_cuts(cuts: list[tuple[int, int, int]], owner: dict[int, set[int]], symbols: Sequence[str], what: str,
                 advice: str) -> None:
    """Raise :class:`InputError` naming the first of ``cuts`` ((fragment, atom, atom) of bonds a cap cannot replace)."""
    if not cuts:
        return
    k, a, b = cuts[0]
    inside, outside = (a, b) if k in owner[a] else (b, a)
    raise InputError(f"the primary fragments cut {len({(a, b) for _, a, b in cuts})} bond(s) to {what}, e.g. "
                     f"fragment {k} holds atom {inside} ({symbols[inside]}) but not atom {outside} "
                     f"({symbols[outside]}) bonded to it: a hydrogen cap cannot replace a bond to {what}; {advice}")


def gmbe_subsystems(inp: GMBEInput, bonds: list[tuple[int, int]] | None = None,
                    summary: dict[int, dict[str, int]] | None = None) -> list[Subsystem]:
    """Every subsystem with a nonzero net coefficient in GMBE(1..max_nbody), with its caps (blocking).

    ``summary`` (if given) receives per order the n-mers, distinct subsystems and cancelled ones.
    """
    bonds = bonds_of(inp) if bonds is None else bonds
    symbols = [str(s) for s in inp.molecule.symbols]
    neighbours: dict[int, list[int]] = {}
    for a, b in bonds:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    owner: dict[int, set[int]] = {}
    for k, frag in enumerate(inp.fragments):
        for a in frag:
            owner.setdefault(a, set()).add(k)
    # A bond to hydrogen is cut in some subsystem exactly when a primary fragment holds one of its atoms and not
    # the other (intersections and unions of fragments that keep every X-H bond whole keep it whole too): a cap
    # on it would be a hydrogen on a hydrogen's bond (an H-H pair 0.6 A apart, or a cap where the H atom is).
    hydrogen_cuts = [(k, a, b) for a, b in bonds if "H" in (symbols[a], symbols[b])
                     for k in sorted(owner[a] ^ owner[b])]
    _refuse_cuts(hydrogen_cuts, owner, symbols, "hydrogen", "put each hydrogen in exactly the fragments that hold "
                 "the atom it is bonded to")
    # The same for bonds to metals: a hydrogen cap stands in for a covalent single bond, not a coordination bond
    # (a Zn-O or Fe-N "capped" by a hydrogen is neither the complex nor the free ligand).
    metal_cuts = [(k, a, b) for a, b in bonds if not (symbols[a] in _NONMETALS and symbols[b] in _NONMETALS)
                  for k in sorted(owner[a] ^ owner[b])]
    _refuse_cuts(metal_cuts, owner, symbols, "a metal", "keep each metal in exactly the fragments that hold the "
                 "atoms it is bonded to")
    subsystems: dict[int, Subsystem] = {}
    for order in range(1, inp.max_nbody + 1):
        counts: dict[str, int] = {}
        for mask, c in coefficients(generators(inp, order), counts).items():
            sub = subsystems.get(mask)
            if sub is None:
                atoms = _atoms(mask)
                caps = tuple(Cap(i, j, cap_scale(symbols[i], symbols[j]))
                             for i in atoms for j in sorted(neighbours.get(i, ())) if not (mask >> j) & 1)
                sub = subsystems[mask] = Subsystem(atoms, caps)
            sub.coefficients[order] = c
        if summary is not None:
            summary[order] = counts
    return sorted(subsystems.values(), key=lambda s: (-len(s.atoms), s.atoms))


def capped_geometry(sub: Subsystem, geometry: np.ndarray) -> np.ndarray:
    """Coordinates (bohr) of the subsystem's atoms followed by its caps, shape (natom + ncaps, 3)."""
    xyz = np.asarray(geometry, dtype=float).reshape(-1, 3)
    caps = [xyz[c.inside] + c.g * (xyz[c.outside] - xyz[c.inside]) for c in sub.caps]
    return np.vstack([xyz[list(sub.atoms)], *caps]) if caps else xyz[list(sub.atoms)]


def chain_rule(sub: Subsystem, gradient: Any, natom: int) -> np.ndarray:
    """The subsystem's gradient (natom_sub + ncaps, 3) spread onto the parent's atoms (natom, 3)."""
    g = np.asarray(gradient, dtype=float).reshape(-1, 3)
    out = np.zeros((natom, 3))
    n = len(sub.atoms)
    out[list(sub.atoms)] += g[:n]
    for k, cap in enumerate(sub.caps):
        out[cap.inside] += (1.0 - cap.g) * g[n + k]
        out[cap.outside] += cap.g * g[n + k]
    return out
