"""PDB and mmCIF files read with gemmi, their molecules found from bonds (waters, ions, ligands, small chains).

gemmi (extra ``qcmb_async[pdb]``) reads the file: the first model only, alternative conformations
reduced to the alphabetically first one of each residue (A, whatever order the file lists them in:
the first-listed would mix conformers across residues), every atom kept (HETATM waters, ions and
ligands, and ATOM records). Fragments are the covalently bonded molecules
(:func:`qcmb_async._core.fragment.find_molecules`), so a chain of small molecules gives one fragment
per molecule. A molecule that is a covalent polymer (two or more standard residues bonded together: a
peptide, a nucleic acid) is refused: splitting it needs bonds cut and capped (the generalized MBE),
not this reader. Charges follow the fragment module's rule; the PDB charge column (columns 79-80)
counts as given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError

PDB_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")


def _gemmi() -> Any:
    try:
        import gemmi
    except ImportError:
        raise InputError("reading PDB/mmCIF files needs gemmi: pip install 'qcmb_async[pdb]' (or pip install "
                         "gemmi)") from None
    return gemmi


def _keep_first_altloc(st: Any) -> None:
    """Keep, in every residue, the atoms without an altloc and those of its alphabetically first altloc."""
    for chain in st[0]:
        for res in chain:
            alts = sorted({atom.altloc for atom in res if atom.altloc not in ("\0", " ")})
            for i in reversed(range(len(res))):
                if alts and res[i].altloc not in ("\0", " ", alts[0]):
                    del res[i]
    st.remove_alternative_conformations()  # duplicates left within one altloc letter, if any


_CHARGE = re.compile(r"^\s*(\d[+-]|[+-]?\d)?\s*$")


def _check_charge_columns(text: str, source: str) -> None:
    """Refuse a formal charge (columns 79-80 of ATOM/HETATM) that is not blank or a number like ``1+``.

    gemmi reads anything else (``X+``, ``++``) as 0, which would silently mean "no charge given".
    """
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(("ATOM  ", "HETATM")) and not _CHARGE.match(line[78:80]):
            raise InputError(f"{source}, line {number}: formal charge {line[78:80]!r} (columns 79-80) is not a "
                             "charge: give a digit and a sign, e.g. '1+' or '1-', or leave the columns blank")


def read_pdb_atoms(path: str | Path) -> tuple[list[tuple[str, float, float, float]], list[str], list[int | None],
                                               list[str]]:
    """``(atoms, residue names, formal charges, residue ids)`` of the first model of a PDB/mmCIF file.

    ``atoms`` are ``(element, x, y, z)`` in Å in file order; a charge is ``None`` where the file gives none (a blank
    charge column, columns 79-80; gemmi reads "0" the same way), per atom.
    Raises :class:`InputError` for unreadable files, no atoms, unknown elements or a file without hydrogens.
    """
    from .inputs import read_text_file

    gemmi = _gemmi()
    path = Path(path)
    text = read_text_file(path, "PDB file")
    source = f"PDB file {str(path)!r}"
    if path.suffix.lower() not in (".cif", ".mmcif"):
        _check_charge_columns(text, source)
    try:
        if path.suffix.lower() in (".cif", ".mmcif"):
            st = gemmi.make_structure_from_block(gemmi.cif.read_string(text).sole_block())
        else:
            st = gemmi.read_pdb_string(text)
    except Exception as exc:
        raise InputError(f"{source} cannot be read: {exc}") from None
    if len(st) == 0:
        raise InputError(f"{source} has no model (no ATOM/HETATM records)")
    _keep_first_altloc(st)
    atoms: list[tuple[str, float, float, float]] = []
    residues: list[str] = []
    charges: list[int | None] = []
    ids: list[str] = []
    # gemmi groups atoms by residue; a file may interleave residues: keep the file's order (serial numbers).
    # Ties (repeated serial numbers) keep gemmi's order, as _atom_names does: the two lists must stay aligned.
    ordered = sorted(((atom.serial, k, chain, res, atom) for k, (chain, res, atom) in enumerate(
        (chain, res, atom) for chain in st[0] for res in chain for atom in res)), key=lambda item: item[:2])
    for _, _, chain, res, atom in ordered:
        element = atom.element.name
        if element in ("X", ""):
            raise InputError(f"{source}: atom {atom.name!r} of residue {res.name} {res.seqid} has no known "
                             "element (columns 77-78): give its element symbol")
        if element == "D":
            element = "H"
        if not all(math.isfinite(v) for v in (atom.pos.x, atom.pos.y, atom.pos.z)):
            raise InputError(f"{source}: atom {atom.name!r} of residue {res.name} {res.seqid} has coordinates "
                             f"({atom.pos.x}, {atom.pos.y}, {atom.pos.z}): they must be finite numbers; correct it")
        atoms.append((element.capitalize(), atom.pos.x, atom.pos.y, atom.pos.z))
        residues.append(res.name)
        ids.append(f"{chain.name}/{res.name}{res.seqid}")
        # Per atom: a blank column (gemmi reads it, and "0", as 0) says nothing, so a residue or molecule whose
        # atoms are all blank is asked for, never taken as neutral because another atom of the file has a charge.
        charges.append(int(atom.charge) if atom.charge else None)
    if not atoms:
        raise InputError(f"{source} has no atoms")
    if not any(a[0] == "H" for a in atoms):
        raise InputError(f"{source} has no hydrogen atoms (as most crystal structures): a many-body expansion needs "
                         "them; add hydrogens first (e.g. pdbfixer, reduce or 'obabel -h') and read the result")
    return atoms, residues, charges, ids


def pdb_molecule(path: str | Path, *, charges: list[int] | Mapping[str, int] | None = None,
                 multiplicities: list[int] | Mapping[str, int] | None = None) -> tuple[Any, list[Any]]:
    """The QCElemental ``Molecule`` (fragments = molecules found) of a PDB/mmCIF file, and the fragments found."""
    from .xyz import molecule_from_atoms

    gemmi = _gemmi()
    source = f"PDB file {str(path)!r}"
    atoms, residues, formal, ids = read_pdb_atoms(path)
    # Refuse covalent polymers before charges are asked for: they cannot be fragments of this kind.
    from qcelemental import constants

    from .fragment import find_molecules

    to_bohr = 1.0 / constants.bohr2angstroms
    for group in find_molecules([a[0] for a in atoms], [[v * to_bohr for v in a[1:]] for a in atoms]):
        polymer = sorted({ids[i] for i in group if _is_polymer_residue(gemmi, residues[i])})
        if len(polymer) >= 2:
            raise InputError(f"{source}: residues {', '.join(polymer[:4])}{' ...' if len(polymer) > 4 else ''} are "
                             f"one covalent polymer ({len(group)} atoms): splitting it needs bonds cut and capped with "
                             "hydrogen (the generalized MBE), which whole-molecule fragments cannot do. Give the "
                             "polymer as one fragment by hand, or remove it")
    return molecule_from_atoms(atoms, residues=residues, formal_charges=formal, charges=charges,
                               multiplicities=multiplicities, source=source)


def _is_polymer_residue(gemmi: Any, name: str) -> bool:
    info = gemmi.find_tabulated_residue(name)
    return info is not None and (info.is_amino_acid() or info.is_nucleic_acid())


def pdb_input(path: str | Path, *, method: str, program: str, basis: str | None = None, bsse: list[str] | None = None,
              max_nbody: int | None = None, keywords: dict[str, Any] | None = None, driver: str = "energy",
              charges: list[int] | Mapping[str, int] | None = None,
              multiplicities: list[int] | Mapping[str, int] | None = None) -> Any:
    """Read a PDB/mmCIF cluster and build a v2 ``ManyBodyInput`` whose fragments are its molecules.

    Args:
        path: ``.pdb``/``.ent`` or ``.cif``/``.mmcif`` file (first model; hydrogens required).
        charges, multiplicities: one value per fragment found, one for all, or rules by element, formula or
            residue name (``{"NA": 1, "CL": -1}``); the file's charge column counts as given.
        The rest as :func:`qcmb_async.read_xyz`.

    Raises:
        InputError: unreadable file, no hydrogens, a covalent polymer, fragments that need a charge.
    """
    from .xyz import mbe_input

    molecule, _ = pdb_molecule(path, charges=charges, multiplicities=multiplicities)
    return mbe_input(molecule, source=f"PDB file {str(path)!r}", method=method, program=program, basis=basis,
                     bsse=bsse, max_nbody=max_nbody, keywords=keywords, driver=driver)
