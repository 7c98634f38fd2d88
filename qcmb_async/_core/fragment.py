"""Fragments found from bonds: the molecules of an XYZ or PDB cluster, with charges never guessed silently.

A fragment is a covalently bonded molecule: a connected component of the bond graph that
QCElemental's :func:`qcelemental.molutil.guess_connectivity` gives (two atoms are bonded when
their distance is below 1.2 times the sum of their covalent radii, Alvarez 2008). Fragments are
ordered by their first atom in the file; QCElemental needs each fragment's atoms contiguous, so
when a file interleaves molecules the atoms are reordered and the permutation is kept
(:data:`ORDER_KEY` in the molecule's ``extras``) so that results come back in the file's order
(:func:`restore_file_order`).

Charges: a neutral closed-shell molecule needs nothing. A fragment that is a *known ion* (a
single atom of a metal or halogen, a PDB residue named in :data:`ION_RESIDUES`) or has an odd
electron count must get its charge (and, if still odd, multiplicity) from the user: a list with
one value per fragment, or rules by element, formula or residue name (``{"Na": 1, "Cl": -1}``,
CLI ``--charge Na=+1,Cl=-1``). Otherwise :class:`~qcmb_async.errors.InputError` lists the
fragments that need one. Formal charges written in a PDB file's charge column count as given.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

__all__ = ["ION_RESIDUES", "ORDER_KEY", "FoundFragment", "assign_charges", "find_molecules", "formula",
           "parse_rules", "restore_file_order"]

#: Key in ``Molecule.extras`` holding, for each atom of the molecule, its index in the file.
ORDER_KEY = "qcmb_async_file_atom_order"

#: Elements whose lone atom is taken as an ion (needs a charge from the user): groups 1, 2 and 17 and the
#: metals. A lone noble-gas atom, C, N, O, ... is left to the electron-count rule.
_ION_ELEMENTS = frozenset((
    "Li", "Na", "K", "Rb", "Cs", "Fr", "Be", "Mg", "Ca", "Sr", "Ba", "Ra", "F", "Cl", "Br", "I", "At", "Al",
    "Ga", "In", "Tl", "Sn", "Pb", "Bi", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Y", "Zr",
    "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg",
    "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu",
))

_NOBLE = frozenset({"He", "Ne", "Ar", "Kr", "Xe", "Rn"})

#: Elements never bonded into a molecule when fragments are found: alkali and alkaline-earth cations sit
#: 2.0-2.5 Å from the water oxygens of their first shell, inside the 1.2 x covalent-radii bond threshold
#: (Na-O: 2.78 Å), yet are ions of their own in a cluster.
_NEVER_BONDED = frozenset({"Li", "Na", "K", "Rb", "Cs", "Be", "Mg", "Ca", "Sr", "Ba"})

#: PDB residue names of polyatomic ions common in crystal structures (the wwPDB Chemical Component
#: Dictionary's names): they need a charge from the user even when their electron count is even.
ION_RESIDUES = frozenset({"SO4", "PO4", "NO3", "NH4", "CO3", "ACT", "FMT", "PI", "2HP", "SCN", "AZI", "CYN",
                          "OH", "HO", "H3O"})


@dataclass
class FoundFragment:
    """One molecule found in a file: its atoms (file indices, file order), and what is known of it."""

    atoms: list[int]
    symbols: list[str]
    residues: set[str] = field(default_factory=set)
    """PDB residue names of its atoms (empty for XYZ)."""
    formal_charge: int | None = None
    """Sum of the PDB charge column over its atoms, when the file gives any."""

    @property
    def formula(self) -> str:
        return formula(self.symbols)

    def electrons(self) -> int:
        from qcelemental import periodictable

        return sum(int(periodictable.to_Z(s)) for s in self.symbols)

    def is_known_ion(self) -> bool:
        if len(self.symbols) == 1:
            return self.symbols[0].capitalize() in _ION_ELEMENTS
        return any(r.upper() in ION_RESIDUES for r in self.residues)

    def is_lone_atom(self) -> bool:
        """A single atom that is neither an ion nor a noble gas (an O, C, N, S ... alone: hydrogens missing?)."""
        return len(self.symbols) == 1 and self.symbols[0].capitalize() not in _ION_ELEMENTS | _NOBLE

    def describe(self, index: int) -> str:
        where = f"atoms {_ranges(self.atoms)}"
        res = f", residue {'/'.join(sorted(self.residues))}" if self.residues else ""
        return f"fragment {index} ({self.formula}, {where}{res})"


def formula(symbols: Sequence[str]) -> str:
    """Hill formula (C, then H, then the rest alphabetically; without carbon, all alphabetically)."""
    counts = Counter(s.capitalize() for s in symbols)
    order = (["C", "H", *sorted(k for k in counts if k not in ("C", "H"))]) if "C" in counts else sorted(counts)
    return "".join(f"{el}{counts[el] if counts[el] > 1 else ''}" for el in order if el in counts)


def _ranges(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"1-3, 6"`` (1-based, as a user counts atoms in a file)."""
    out: list[str] = []
    start = prev = None
    for i in sorted(indices):
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            out.append(f"{start + 1}-{prev + 1}" if prev != start else f"{start + 1}")
        start = prev = i
    if start is not None:
        out.append(f"{start + 1}-{prev + 1}" if prev != start else f"{start + 1}")
    return ", ".join(out)


def find_molecules(symbols: Sequence[str], geometry_bohr: Any) -> list[list[int]]:
    """Atom indices of each covalently bonded molecule, ordered by first atom; atoms within in file order.

    Bonds as QCElemental's ``guess_connectivity`` finds them (distance < 1.2 x sum of its covalent radii,
    1.8 bohr for an element it has none for); the molecules are the connected components of that graph.
    The radii are converted with ``constants.bohr2angstroms``: ``guess_connectivity`` converts through
    pint, whose unit registry takes ~0.6-1 s to build -- most of a small ``qcmb-async run``.
    """
    import numpy as np

    n = len(symbols)
    geom = np.asarray(geometry_bohr, dtype=float).reshape(n, 3)
    radii = np.array([_radius_bohr(str(s)) for s in symbols])
    bonds: list[tuple[int, int]] = []
    for a in range(n - 1):
        dist = np.sqrt(((geom[a + 1:] - geom[a]) ** 2).sum(axis=1))
        for b in np.nonzero(dist < (radii[a] + radii[a + 1:]) * 1.2)[0] + a + 1:
            if not {str(symbols[a]).capitalize(), str(symbols[int(b)]).capitalize()} & _NEVER_BONDED:
                bonds.append((a, int(b)))
    return components(n, bonds)


def _radius_bohr(symbol: str) -> float:
    """QCElemental's covalent radius of ``symbol`` (Alvarez 2008, the largest when several) in bohr; 1.8 if none."""
    from qcelemental import constants, covalentradii
    from qcelemental.exceptions import DataUnavailableError, NotAnElementError

    try:
        datum = covalentradii.get(symbol, return_tuple=True)
    except (NotAnElementError, DataUnavailableError):
        return 1.8
    return float(datum.data) / float(constants.bohr2angstroms)


def components(n: int, bonds: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components of ``n`` atoms joined by ``bonds``, ordered by first atom (union-find)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in bonds:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


_RULE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)\s*=\s*([+-]?\d+)\s*$")
_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)")


def parse_rules(text: str, flag: str) -> dict[str, int]:
    """``"Na=+1,Cl=-1"`` -> ``{"Na": 1, "Cl": -1}``; InputError naming ``flag`` when an item does not parse."""
    rules: dict[str, int] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        match = _RULE.match(item)
        if not match:
            raise InputError(f"{flag}: {item.strip()!r} is not NAME=VALUE (e.g. {flag} Na=+1,Cl=-1; NAME is an "
                             "element, a formula such as OH or SO4, or a PDB residue name)")
        key = match.group(1)
        if key in rules:
            raise InputError(f"{flag}: {key!r} is given twice")
        rules[key] = int(match.group(2))
    if not rules:
        raise InputError(f"{flag} is empty: give NAME=VALUE rules, e.g. Na=+1,Cl=-1")
    return rules


def _formula_counts(key: str) -> Counter[str] | None:
    """Element counts of a formula written as ``OH``, ``SO4``, ``H3O`` (None when ``key`` is not one)."""
    from qcelemental import periodictable

    tokens = _TOKEN.findall(key)
    if not tokens or "".join(el + num for el, num in tokens) != key:
        return None
    counts: Counter[str] = Counter()
    for el, num in tokens:
        try:
            periodictable.to_Z(el)
        except Exception:
            return None
        counts[el] += int(num) if num else 1
    return counts


def _rule_for(frag: FoundFragment, rules: Mapping[str, int]) -> tuple[str, int] | None:
    """The rule that names ``frag`` (residue name first, then formula by element counts)."""
    own = Counter(s.capitalize() for s in frag.symbols)
    for key, value in rules.items():
        if frag.residues and len(frag.residues) == 1 and key.upper() == next(iter(frag.residues)).upper():
            return key, value
    for key, value in rules.items():
        counts = _formula_counts(key)
        if counts is not None and counts == own:
            return key, value
    return None


def _whole(value: Any, flag: str, name: str | None = None) -> int:
    """``value`` as a whole number (charges, multiplicities), else :class:`InputError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
        where = f" for {name!r}" if name else ""
        raise InputError(f"{flag}: {value!r}{where} is not a whole number (charges and multiplicities are integers)")
    return int(value)


def _resolve(frags: Sequence[FoundFragment], given: Sequence[int] | Mapping[str, int] | None,
             flag: str) -> tuple[list[int | None], set[str]]:
    """Per-fragment values from a list (one per fragment, or one for all) or rules; the rules used."""
    n = len(frags)
    if given is None:
        return [None] * n, set()
    if isinstance(given, Mapping):
        given = {str(k): _whole(v, flag, str(k)) for k, v in given.items()}
        out: list[int | None] = []
        used: set[str] = set()
        for frag in frags:
            hit = _rule_for(frag, given)
            if hit:
                used.add(hit[0])
            out.append(hit[1] if hit else None)
        unused = sorted(set(given) - used)
        if unused:
            raise InputError(f"{flag}: {', '.join(repr(u) for u in unused)} matches no fragment found (fragments: "
                             f"{', '.join(sorted({f.formula for f in frags}))}); check the name")
        return out, used
    values = [_whole(v, flag) for v in given]
    if len(values) == 1:
        return values * n, set()
    if len(values) != n:
        raise InputError(f"{flag} got {len(values)} values for {n} fragments found: give one per fragment, one for "
                         f"all, or rules such as {flag} Na=+1,Cl=-1")
    return list(values), set()


def assign_charges(frags: Sequence[FoundFragment], charges: Sequence[int] | Mapping[str, int] | None = None,
                   multiplicities: Sequence[int] | Mapping[str, int] | None = None,
                   source: str = "input") -> tuple[list[int], list[int]]:
    """Charge and multiplicity of each found fragment, from the user's values, rules or the file's charge column.

    Fragments with no value get charge 0 and multiplicity 1 only when that is chemically plain: an even
    electron count and not a known ion. Raises :class:`InputError` listing every other fragment (what to give).
    """
    chg, _ = _resolve(frags, charges, "--charge")
    mult, _ = _resolve(frags, multiplicities, "--multiplicity")
    need: list[str] = []
    out_c: list[int] = []
    out_m: list[int] = []
    for i, frag in enumerate(frags, start=1):
        c = chg[i - 1]
        if c is None and frag.formal_charge is not None:
            c = frag.formal_charge
        m = mult[i - 1]
        electrons = frag.electrons() - (c or 0)
        if c is None and frag.is_known_ion():
            need.append(f"{frag.describe(i)}: an ion? give its charge")
        elif c is None and m is None and frag.is_lone_atom():
            need.append(f"{frag.describe(i)}: a lone {frag.symbols[0]} atom (its hydrogens missing?) — add them, "
                        "or give its charge and multiplicity")
        elif m is None and electrons % 2 == 1:
            need.append(f"{frag.describe(i)}: {electrons} electrons (odd) — give its charge or multiplicity")
        out_c.append(c or 0)
        out_m.append(m if m is not None else (2 if electrons % 2 else 1))
    if need:
        shown = need[:20] + ([f"... and {len(need) - 20} more"] if len(need) > 20 else [])
        raise InputError(f"{source}: charges are never guessed; {len(need)} fragment(s) found need a charge or "
                         "multiplicity from you:\n  " + "\n  ".join(shown) +
                         "\nGive rules (CLI --charge Na=+1,Cl=-1 --multiplicity OH=2; API charges={'Na': 1, 'Cl': -1}) "
                         "or one value per fragment")
    return out_c, out_m


def restore_file_order(result: Any, molecule: Any) -> Any:
    """``result`` (a ManyBodyResult) with its molecule and every per-atom array back in the file's atom order.

    Used when fragments were found by bonds and the atoms had to be reordered (``molecule.extras[ORDER_KEY]``):
    gradients (natom x 3) and Hessians (3 natom x 3 natom) in ``return_result``, ``properties`` and
    ``cluster_properties``-free fields are permuted; ``result.molecule`` becomes the file's molecule without
    fragment boundaries (QCElemental needs contiguous fragments), while ``result.input_data`` keeps the
    fragmented, reordered molecule. Results of an input without that key are returned unchanged.
    """
    import numpy as np

    order = (molecule.extras or {}).get(ORDER_KEY)
    if not order:
        return result
    perm = np.asarray(order, dtype=int)  # perm[i] = file index of molecule atom i
    natom = len(perm)
    inverse = np.empty(natom, dtype=int)
    inverse[perm] = np.arange(natom)  # inverse[j] = molecule index of file atom j
    cart = (inverse[:, None] * 3 + np.arange(3)[None, :]).ravel()

    def back(value: Any) -> Any:
        arr = np.asarray(value) if value is not None and not isinstance(value, (str, bytes, dict)) else None
        if arr is None or arr.dtype.kind not in "fi":
            return value
        if arr.shape == (natom, 3):
            return arr[inverse]
        if arr.shape == (3 * natom, 3 * natom):
            return arr[np.ix_(cart, cart)]
        return value

    props = result.properties
    updates = {name: back(getattr(props, name)) for name in type(props).model_fields
               if getattr(props, name) is not None and not isinstance(getattr(props, name), (int, float, str))}
    data = molecule.model_dump()
    for key in ("symbols", "masses", "real", "atomic_numbers", "mass_numbers", "atom_labels"):
        if data.get(key) is not None:
            data[key] = np.asarray(data[key])[inverse]
    data["geometry"] = np.asarray(data["geometry"]).reshape(natom, 3)[inverse]
    for key in ("fragments", "fragment_charges", "fragment_multiplicities", "connectivity"):
        data.pop(key, None)
    data["extras"] = {k: v for k, v in (data.get("extras") or {}).items() if k != ORDER_KEY}
    data["validated"] = False
    file_mol = type(molecule)(**data)
    extras = dict(result.extras or {})
    meta = dict(extras.get("qcmb_async") or {})
    meta["file_atom_order"] = {"molecule_atom_of_file_atom": inverse.tolist(),
                               "note": "atoms were reordered into fragment order for the calculation; return_result "
                                       "and properties are in the file's atom order, input_data.molecule is the "
                                       "reordered, fragmented molecule"}
    extras["qcmb_async"] = meta
    return result.model_copy(update={"return_result": back(result.return_result),
                                     "properties": props.model_copy(update=updates),
                                     "molecule": file_mol, "extras": extras})

