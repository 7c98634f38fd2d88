"""Primary fragments of covalent systems for the GMBE: peptides from PDB files, other molecules from bonds.

Only single C-C bonds are cut: in a peptide the CA-C bond of each residue but the last (never the
peptide C-N bond, a ring or a bond to a metal); in another molecule the bonds between two sp3 carbons
(four neighbours each) that are in no ring. Charges are never guessed: a residue that can carry one must
be named by the user (or by the file's charge column); the error suggests what its hydrogens say.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .fragment import components as _components

#: Residues whose charge depends on protonation, with the hydrogens that decide it (PDB names):
#: charge when those hydrogens are all present / absent. Termini are handled separately.
_IONISABLE: dict[str, tuple[tuple[str, ...], int, int]] = {
    "ASP": (("HD2",), 0, -1), "GLU": (("HE2",), 0, -1), "LYS": (("HZ1", "HZ2", "HZ3"), 1, 0),
    "ARG": (("HH11", "HH12", "HH21", "HH22"), 1, 0), "HIS": (("HD1", "HE2"), 1, 0), "CYS": (("HG",), 0, -1),
    "TYR": (("HH",), 0, -1),
}


#: Residues whose charge follows from _IONISABLE, the termini or is zero: the amino acids (with the protonation
#: variants force fields name) and the peptide caps. Any other residue (a ligand, an ion, a metal, a cofactor)
#: has a charge only its user knows.
_KNOWN_RESIDUES = frozenset({
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU", "LYS", "MET", "PHE", "PRO", "SER",
    "THR", "TRP", "TYR", "VAL", "HID", "HIE", "HIP", "HSD", "HSE", "HSP", "ASH", "GLH", "LYN", "CYX", "CYM", "ACE",
    "NME", "NMA", "NH2", "FOR"})


def _bonds(symbols: Sequence[str], geometry_bohr: Any) -> list[tuple[int, int]]:
    from qcelemental.molutil import guess_connectivity

    xyz = np.asarray(geometry_bohr, dtype=float).reshape(-1, 3)
    return sorted({(int(min(a, b)), int(max(a, b))) for a, b in guess_connectivity(list(symbols), xyz, 1.2)})


def _in_ring(n: int, bonds: list[tuple[int, int]], bond: tuple[int, int]) -> bool:
    """Whether ``bond`` lies on a ring: its atoms stay connected without it."""
    rest = [b for b in bonds if b != bond]
    groups = _components(n, rest)
    where = {a: k for k, g in enumerate(groups) for a in g}
    return where[bond[0]] == where[bond[1]]


def bond_fragments(molecule: Any, max_fragment_atoms: int) -> list[list[int]]:
    """Disjoint primary fragments of a covalent molecule of at most ``max_fragment_atoms`` atoms (InputError if
    a piece that cannot be cut is larger)."""
    if max_fragment_atoms < 2:
        raise InputError(f"max_fragment_atoms must be at least 2, got {max_fragment_atoms}")
    symbols = [str(s) for s in molecule.symbols]
    n = len(symbols)
    bonds = _bonds(symbols, molecule.geometry)
    degree = [0] * n
    for a, b in bonds:
        degree[a] += 1
        degree[b] += 1
    cuttable = [b for b in bonds if symbols[b[0]] == symbols[b[1]] == "C" and degree[b[0]] == degree[b[1]] == 4
                and not _in_ring(n, bonds, b)]
    pieces = _components(n, [b for b in bonds if b not in set(cuttable)])
    big = max(pieces, key=len)
    if len(big) > max_fragment_atoms:
        raise InputError(f"a piece of {len(big)} atoms (atoms {big[0]}..{big[-1]}) has no single C-C bond between "
                         f"sp3 carbons outside a ring to cut: raise max_fragment_atoms to at least {len(big)}, or give "
                         "the fragments yourself")
    # Join pieces along cut bonds, in atom order, while the fragment stays within the size.
    piece_of = {a: k for k, p in enumerate(pieces) for a in p}
    links: dict[int, set[int]] = {}
    for a, b in cuttable:
        links.setdefault(piece_of[a], set()).add(piece_of[b])
        links.setdefault(piece_of[b], set()).add(piece_of[a])
    used: set[int] = set()
    fragments: list[list[int]] = []
    for start in range(len(pieces)):
        if start in used:
            continue
        group, size, frontier = [start], len(pieces[start]), sorted(links.get(start, ()))
        used.add(start)
        while frontier:
            nxt = frontier.pop(0)
            if nxt in used or size + len(pieces[nxt]) > max_fragment_atoms:
                continue
            group.append(nxt)
            used.add(nxt)
            size += len(pieces[nxt])
            frontier.extend(sorted(links.get(nxt, ())))
        fragments.append(sorted(a for k in group for a in pieces[k]))
    if len(fragments) < 2:
        raise InputError(f"the molecule ({n} atoms) fits in one fragment of {max_fragment_atoms} atoms: nothing to "
                         "expand; lower max_fragment_atoms")
    return fragments


def pdb_fragments(path: Any, residues_per_fragment: int, overlap: int,
                  residue_charges: dict[str, int] | None) -> tuple[Any, list[list[int]], list[int]]:
    """``(molecule, primary fragments, atom charges)`` of a peptide in a PDB/mmCIF file."""
    from qcelemental import constants

    from .pdb import read_pdb_atoms

    if residues_per_fragment < 1 or not 0 <= overlap < residues_per_fragment:
        raise InputError(f"residues_per_fragment {residues_per_fragment} and overlap {overlap}: need "
                         "residues_per_fragment >= 1 and 0 <= overlap < residues_per_fragment")
    atoms, _residues, formal, ids = read_pdb_atoms(Path(path))
    names = _atom_names(Path(path))
    source = f"PDB file {str(path)!r}"
    to_bohr = 1.0 / constants.bohr2angstroms
    symbols = [a[0] for a in atoms]
    geometry = np.array([[v * to_bohr for v in a[1:]] for a in atoms])
    n = len(atoms)
    bonds = _bonds(symbols, geometry)
    for a, b in bonds:
        if ids[a] != ids[b] and {names[a], names[b]} == {"SG"}:
            raise InputError(f"{source}: a disulfide bond joins {ids[a]} and {ids[b]}: cutting S-S bonds is not "
                             "offered; give the fragments yourself (GMBEInput(fragments=...))")
    order = list(dict.fromkeys(ids))  # residues in file order
    if len(order) < 2:
        raise InputError(f"{source} has one residue: nothing to fragment")
    by_res: dict[str, dict[str, int]] = {}
    for i, rid in enumerate(ids):
        by_res.setdefault(rid, {})[names[i]] = i
    # Peptide bonds between residues: C of one to N of the next. The end of every chain, waters, ions and ligands
    # have none, so a chain's last residue keeps its C-terminus and other molecules stay whole.
    forward: dict[str, set[str]] = {}  # residue -> the residues its C bonds to by their N
    for a, b in bonds:
        for x, y in ((a, b), (b, a)):
            if names[x] == "C" and names[y] == "N" and ids[x] != ids[y]:
                forward.setdefault(ids[x], set()).add(ids[y])
    backward = {r for nxt in forward.values() for r in nxt}
    cut: list[tuple[int, int]] = []
    for rid in (r for r in order if r in forward):
        ca, c = by_res[rid].get("CA"), by_res[rid].get("C")
        if ca is None and rid not in backward:
            continue  # an N-terminal cap without a CA (ACE, FOR): its carbonyl travels with the next residue
        if ca is None or c is None:
            raise InputError(f"{source}: residue {rid} has no CA or C atom: not a peptide residue; give the "
                             "fragments yourself")
        if not any("CA" in by_res[nxt] for nxt in forward[rid]):
            continue  # the next residue is a C-terminal cap without a CA (NME, NH2): it stays with this one
        cut.append((min(ca, c), max(ca, c)))
    missing = [b for b in cut if b not in set(bonds)]
    if missing:
        raise InputError(f"{source}: the CA-C bond of {ids[missing[0][0]]} is not bonded in the geometry "
                         "(distance beyond 1.2 x covalent radii): check the structure")
    units = _components(n, [b for b in bonds if b not in set(cut)])
    # Each unit belongs to the residue of its CA (the carbonyl before it travels with it).
    unit_res = []
    for unit in units:
        cas = [ids[i] for i in unit if names[i] == "CA"]
        if len(cas) != 1:
            held = ", ".join(dict.fromkeys(ids[i] for i in unit))
            why = ("no CA atom: a molecule that is not part of the peptide chain (water, an ion, a ligand) or the "
                   "end of a chain without its residue; remove it from the file" if not cas else
                   f"{len(cas)} CA atoms: two chains joined, or a ligand bonded to the chain")
            raise InputError(f"{source}: a piece of {len(unit)} atoms of residue(s) {held} holds {why}; or give "
                             "the fragments yourself (an XYZ file with --fragments FRAGS.json, or "
                             "GMBEInput(fragments=...))")
        unit_res.append(order.index(cas[0]))
    units = [u for _, u in sorted(zip(unit_res, units, strict=True))]
    step = residues_per_fragment - overlap
    fragments: list[list[int]] = []
    start = 0
    while True:
        window = units[start:start + residues_per_fragment]
        fragments.append(sorted(a for u in window for a in u))
        if start + residues_per_fragment >= len(units):
            break
        start += step
    hydrogens = [0] * n  # hydrogens bonded to each atom (decide the termini whatever the H atoms are named)
    for a, b in bonds:
        if symbols[b] == "H":
            hydrogens[a] += 1
        if symbols[a] == "H":
            hydrogens[b] += 1
    charges = _residue_charges(source, order, by_res, formal, residue_charges or {}, hydrogens, symbols)
    molecule = gmbe_molecule(source, symbols, geometry, molecular_charge=float(sum(charges)))
    return molecule, fragments, charges


def gmbe_molecule(source: str, symbols: Sequence[str], geometry_bohr: Any, **fields: Any) -> Any:
    """QCElemental's v2 ``Molecule`` of a GMBE front end (input frame kept); its validation errors (atoms on top of
    each other, ...) are InputErrors naming ``source``, not raw QCElemental exceptions."""
    from qcelemental import exceptions
    from qcelemental.models.v2 import Molecule

    try:
        return Molecule(symbols=list(symbols), geometry=geometry_bohr, fix_com=True, fix_orientation=True, **fields)
    except (exceptions.ValidationError, exceptions.NotAnElementError, exceptions.MoleculeFormatError) as exc:
        raise InputError(f"{source}: the molecule is not valid: {exc}; correct the structure (two atoms at the "
                         "same place are often a duplicated record or a second conformer)") from None


def _atom_names(path: Path) -> list[str]:
    """Atom names in the order :func:`~qcmb_async._core.pdb.read_pdb_atoms` lists atoms."""
    import gemmi

    from .inputs import read_text_file
    from .pdb import _keep_first_altloc

    text = read_text_file(path, "PDB file")
    if path.suffix.lower() in (".cif", ".mmcif"):
        st = gemmi.make_structure_from_block(gemmi.cif.read_string(text).sole_block())
    else:
        st = gemmi.read_pdb_string(text)
    _keep_first_altloc(st)  # as read_pdb_atoms does: the same atoms, so names and atoms stay aligned
    # The key read_pdb_atoms sorts by: serial number, then gemmi's order (never the name, which would misalign
    # atoms and names when a file repeats serial numbers).
    atoms = sorted(((atom.serial, k), atom.name) for k, atom in enumerate(
        atom for chain in st[0] for res in chain for atom in res))
    return [name for _, name in atoms]  # the file's order, as read_pdb_atoms lists them


def _residue_charges(source: str, order: list[str], by_res: dict[str, dict[str, int]], formal: list[int | None],
                     given: dict[str, int], hydrogens: list[int], symbols: Sequence[str]) -> list[int]:
    """Charge per atom: a given residue charge sits on the residue's CA (else its first heavy atom).

    The CA decides which piece (and so which primary fragments) a residue belongs to; its carbonyl C and O
    travel with the next residue's piece, so an atom listed first (which may be that C) could put the charge
    in another fragment than the residue's when fragments are cut or overlap.
    """
    natom = len(formal)
    charges = [int(c or 0) for c in formal]
    given = _resolve_residues(source, order, given)
    unknown = sorted(set(given) - set(order))
    if unknown:
        raise InputError(f"{source}: residue_charges names {unknown[:5]}, which are not residues of the file "
                         f"(names look like {order[0]!r})")
    need: list[str] = []
    suggested: list[int] = []
    for k, rid in enumerate(order):
        atoms = by_res[rid]
        resname = rid.split("/")[-1].rstrip("0123456789-")
        anchor = atoms.get("CA", next((i for i in atoms.values() if symbols[i] != "H"), next(iter(atoms.values()))))
        suggestion = None
        if resname in _IONISABLE:
            hs, present, absent = _IONISABLE[resname]
            suggestion = present if all(h in atoms for h in hs) else absent
        elif k == 0 and "N" in atoms and hydrogens[atoms["N"]] == 3:
            suggestion = 1  # protonated N-terminus: NH3+
        elif k == len(order) - 1 and "OXT" in atoms and hydrogens[atoms["OXT"]] == 0 and hydrogens[
                atoms.get("O", atoms["OXT"])] == 0:
            suggestion = -1  # carboxylate C-terminus
        if resname not in _KNOWN_RESIDUES and rid not in given and all(formal[i] is None for i in atoms.values()):
            # A ligand or metal bonded to the chain (others are refused as pieces without a CA): never neutral
            # by default (a Zn bound to a carbonyl was computed as Zn(0)).
            need.append(f"{rid} (not an amino acid: a ligand, ion or cofactor; its charge is yours to give)")
            continue
        in_file = [formal[i] for i in atoms.values() if formal[i] is not None]
        if rid in given:
            value = given[rid]
            if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
                raise InputError(f"{source}: residue_charges[{rid!r}] = {value!r} is not a whole number")
            if in_file and sum(in_file) != int(value):
                raise InputError(f"{source}: residue {rid}: its charge column (columns 79-80) says {sum(in_file):+d}, "
                                 f"residue_charges/--charge says {int(value):+d}: make them agree, or blank the "
                                 "column of that residue's atoms")
            if not in_file:  # the file's per-atom charges already give it; adding would count it twice
                charges[anchor] += int(value)
        elif in_file:
            continue  # the file's charge column says it
        elif suggestion is not None and (resname in _IONISABLE or suggestion != 0):
            need.append(f"{rid} (its hydrogens suggest {suggestion:+d})")
            suggested.append(suggestion)
    if need:
        ids = [item.split(" ")[0] for item in need if "yours to give" not in item]
        said = ",".join(f"{rid}={value:+d}" for rid, value in zip(ids, suggested, strict=True))
        ready = f" (what the hydrogens suggest, if that is what you mean: --charge {said})" if said else ""
        raise InputError(f"{source}: charges are never guessed; confirm the charge of every residue that can carry "
                         f"one ({len(need)} unconfirmed):\n  " + "\n  ".join(need)
                         + f"\nPython: residue_charges={{{need[0].split(' ')[0]!r}: ..., ...}}; command line: "
                         f"--charge RESIDUE=Q,...{ready}")
    assert len(charges) == natom
    return charges


def _resolve_residues(source: str, order: list[str], given: dict[str, int]) -> dict[str, int]:
    """``given`` keyed by the file's residue ids (``"A/LYS5"``): ``"LYS5"`` (no chain) names the one residue of
    that name and number in any chain, and case does not matter; InputError when it names several or is given
    twice."""
    exact = {rid.upper(): rid for rid in order}
    out: dict[str, int] = {}
    for key, value in given.items():
        text = str(key).strip()
        rid = exact.get(text.upper())
        if rid is None and "/" not in text:
            hits = [r for r in order if r.split("/", 1)[-1].upper() == text.upper()]
            if len(hits) > 1:
                raise InputError(f"{source}: residue {text!r} is in several chains ({', '.join(hits[:5])}): name "
                                 f"the chain too, e.g. {hits[0]!r}")
            rid = hits[0] if hits else None
        rid = rid or text  # not a residue of the file: the caller names it
        if rid in out:
            raise InputError(f"{source}: the charge of residue {rid!r} is given twice")
        out[rid] = value
    return out
