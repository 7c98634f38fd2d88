"""XYZ files with fragments separated by ``--`` lines, turned into a v2 ``ManyBodyInput``.

The format is standard XYZ (atom count line, comment line, then ``Symbol x y z`` in Å) with a
line holding only ``--`` between fragments. A fragment may start with a ``charge multiplicity``
line (two integers, Psi4 style). Otherwise a fragment is neutral with the lowest multiplicity its
electron count allows (1 for even, 2 for odd), which is what QCElemental itself gives a fragment
without a charge/multiplicity line; a fragment charged through ``--charge`` without
``--multiplicity`` stays a singlet (an odd-electron ion is an error that asks for
``--multiplicity`` rather than an assumed doublet). The header is optional. Every fragment's charge
and multiplicity is written out explicitly: QCElemental's own search for missing ones is
exponential in the number of fragments (0.7 s at 20 fragments, out of memory at 24).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .chgmult import coordinate_problem, fragment_chgmult_problem

BSSE_TYPES = ("cp", "nocp", "vmfc")
DRIVERS = ("energy", "gradient", "hessian")


@dataclass
class XYZFragment:
    """Atoms of one fragment, with its charge and multiplicity when the file gave them."""

    atoms: list[tuple[str, float, float, float]] = field(default_factory=list)
    charge: int | None = None
    multiplicity: int | None = None


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def parse_xyz(text: str, source: str = "XYZ input", *, single: bool = False) -> list[XYZFragment]:
    """Split XYZ text into fragments; raises :class:`InputError` with the offending line.

    ``single=True``: the file must hold one block of atoms (no ``--`` lines, no charge lines), for
    fragments found from bonds (:func:`found_molecule`).
    """
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise InputError(f"{source} is empty")
    count: int | None = None
    tokens = lines[first].split()
    if len(tokens) == 1 and _is_int(tokens[0]):
        count = int(tokens[0])
        body = list(enumerate(lines[first + 2:], start=first + 3))  # skip the comment line
    else:
        body = list(enumerate(lines[first:], start=first + 1))
    frags = [XYZFragment()]
    for lineno, raw in body:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "--":
            if single:
                raise InputError(f"{source}, line {lineno}: a '--' line, but fragments are to be found from bonds "
                                 "(fragments='molecules', --fragments molecules): remove the '--' lines, or "
                                 "leave the option out to use them")
            frags.append(XYZFragment())
            continue
        parts = line.split()
        frag = frags[-1]
        if len(parts) == 2 and all(_is_int(p) for p in parts) and not frag.atoms and frag.charge is None:
            if single:
                raise InputError(f"{source}, line {lineno}: a 'charge multiplicity' line, but fragments are to be "
                                 "found from bonds: give charges with --charge (e.g. Na=+1,Cl=-1) instead")
            frag.charge, frag.multiplicity = int(parts[0]), int(parts[1])
            continue
        if len(parts) < 4:
            raise InputError(f"{source}, line {lineno}: expected 'Symbol x y z', got {line!r}")
        try:
            x, y, z = (float(v) for v in parts[1:4])
        except ValueError:
            raise InputError(f"{source}, line {lineno}: coordinates are not numbers in {line!r}") from None
        if not all(math.isfinite(v) for v in (x, y, z)):
            raise InputError(f"{source}, line {lineno}: coordinates must be finite numbers (not nan/inf) in "
                             f"{line!r}: correct that atom's position")
        frag.atoms.append((parts[0], x, y, z))
    for i, frag in enumerate(frags, start=1):
        if not frag.atoms:
            raise InputError(f"{source}: fragment {i} has no atoms (two '--' lines in a row, or one at the start "
                             "or end of the file?)")
    natoms = sum(len(f.atoms) for f in frags)
    if count is not None and count != natoms:
        raise InputError(f"{source}: the header says {count} atoms but the file lists {natoms}")
    if len(frags) < 2 and not single:
        raise InputError(
            f"{source} has a single fragment: a many-body expansion needs at least two. Put a line holding "
            "only '--' between the fragments (e.g. between the water molecules of a cluster), or let the "
            "molecules be found from bonds (fragments='molecules', CLI --fragments molecules)."
        )
    return frags


def _per_fragment(name: str, values: list[int] | None, n: int) -> list[int] | None:
    if values is None:
        return None
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise InputError(f"--{name} got {len(values)} values for {n} fragments: give one per fragment "
                         "(comma separated) or one for all")
    return list(values)


def _electrons(atoms: list[tuple[str, float, float, float]]) -> int | None:
    """Electrons of the neutral fragment (ghosts ``@He``/``Gh(He)`` count 0); None if a label is unknown.

    Labels are read by QCElemental's own parser, as ``Molecule.from_data`` reads them.
    """
    from qcelemental import periodictable
    from qcelemental.molparse.nucleus import parse_nucleus_label

    total = 0
    for label, *_ in atoms:
        try:
            _, z, symbol, _, real, _ = parse_nucleus_label(label)
            if real:
                total += int(z) if z is not None else int(periodictable.to_Z(symbol))
        except Exception:
            return None
    return total


def default_multiplicity(atoms: list[tuple[str, float, float, float]], charge: float) -> int:
    """Multiplicity of a fragment given none: for a neutral one QCElemental's choice, 1 (even electrons) or 2 (odd).

    1 for a charged fragment, and when the electron count is unknown (QCElemental then reports
    any problem, and the error asks for ``--multiplicity``).
    """
    electrons = _electrons(atoms) if charge == 0 else None
    return 2 if electrons is not None and electrons % 2 == 1 else 1


def build_molecule(frags: list[XYZFragment], charges: list[int] | None = None,
                   multiplicities: list[int] | None = None, source: str = "XYZ input") -> Any:
    """A QCElemental v2 ``Molecule`` in the file's frame, with explicit fragment charges/multiplicities."""
    from qcelemental import constants
    from qcelemental.models.v2 import Molecule

    n = len(frags)
    chg = _per_fragment("charge", charges, n) or [f.charge if f.charge is not None else 0 for f in frags]
    mult = _per_fragment("multiplicity", multiplicities, n) or [
        f.multiplicity if f.multiplicity is not None else default_multiplicity(f.atoms, c)
        for f, c in zip(frags, chg, strict=True)]
    if any(m < 1 for m in mult):
        raise InputError(f"multiplicities must be >= 1, got {mult}")
    problem = fragment_chgmult_problem([_electrons(f.atoms) for f in frags], chg, mult)
    if problem:
        raise InputError(f"{source}: {problem} (--charge/--multiplicity, or a 'charge multiplicity' line opening "
                         "the fragment)")
    to_bohr = 1.0 / constants.bohr2angstroms
    problem = coordinate_problem([[v * to_bohr for v in a[1:]] for f in frags for a in f.atoms])
    if problem:
        raise InputError(f"{source}: {problem}")
    # Converted here to bohr: QCElemental's own unit conversion loads pint (a second or two).
    blocks = []
    for frag, c, m in zip(frags, chg, mult, strict=True):
        atoms = "\n".join(f"{sym} {x * to_bohr!r} {y * to_bohr!r} {z * to_bohr!r}" for sym, x, y, z in frag.atoms)
        blocks.append(f"{c} {m}\n{atoms}")
    text = "units bohr\nno_com\nno_reorient\n" + "\n--\n".join(blocks)
    try:
        return Molecule.from_data(text)
    except Exception as exc:
        raise InputError(f"{source} is not a valid molecule: {type(exc).__name__}: {exc}. Fragment charges {chg}, "
                         f"multiplicities {mult} (set them with --charge/--multiplicity)") from None


def format_xyz(molecule: Any, comment: str = "") -> str:
    """``molecule`` (QCElemental, bohr) as this module's XYZ text: what :func:`parse_xyz` reads back.

    Header (atom count, ``comment``), then each fragment opened by its ``charge multiplicity`` line and
    separated by ``--``; coordinates in Å with 10 decimals (1e-10 Å, far below any geometry's meaning);
    ghost atoms as ``@Symbol``. Raises :class:`InputError` for a fragment charge that is not a whole number
    (the format holds integers only).
    """
    from qcelemental import constants

    geom = [[float(v) * constants.bohr2angstroms for v in row] for row in molecule.geometry]
    symbols = list(molecule.symbols)
    real = list(molecule.real) if molecule.real is not None else [True] * len(symbols)
    frags = molecule.fragments or [list(range(len(symbols)))]
    charges = molecule.fragment_charges or [float(molecule.molecular_charge)] * len(frags)
    mults = molecule.fragment_multiplicities or [int(molecule.molecular_multiplicity)] * len(frags)
    blocks = []
    for atoms, charge, mult in zip(frags, charges, mults, strict=True):
        if abs(charge - round(charge)) > 1e-8 or abs(mult - round(mult)) > 1e-8:
            raise InputError(f"fragment charge {charge} / multiplicity {mult} is not a whole number: XYZ files hold "
                             "whole numbers only")
        lines = [f"{round(charge)} {round(mult)}"]
        for i in atoms:
            sym = symbols[i].capitalize()
            x, y, z = geom[i]
            lines.append(f"{'' if real[i] else '@'}{sym:<3s} {x:17.10f} {y:17.10f} {z:17.10f}")
        blocks.append("\n".join(lines))
    comment = " ".join(comment.split())  # one line, whatever it was given
    return f"{len(symbols)}\n{comment}\n" + "\n--\n".join(blocks) + "\n"


def parse_bsse(values: list[str] | None) -> list[str]:
    """``["cp,nocp", "vmfc"]`` -> ``["cp", "nocp", "vmfc"]``, each checked; ``None`` -> ``["cp"]``
    (:func:`mbe_input` asks :func:`default_bsse` instead, which knows the program).

    An empty list (``--bsse ""``) raises :class:`InputError`: it is a mistake, not a request for the default.
    """
    if values is None:
        return ["cp"]
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item not in BSSE_TYPES:
                raise InputError(f"unknown BSSE treatment {item!r}: use one or more of {', '.join(BSSE_TYPES)}")
            if item not in out:
                out.append(item)
    if not out:
        raise InputError(f"the BSSE list is empty (got {values!r}): give one or more of {', '.join(BSSE_TYPES)}, "
                         "comma separated (leave --bsse out for cp)")
    return out


def default_bsse(program: str) -> list[str]:
    """The BSSE treatment when none is given: ``["cp"]``, or ``["nocp"]`` for a program that cannot place ghost
    atoms (``ProgramTraits.ghost_atoms`` False: tblite, xtb, mopac, ...), said as a warning.

    cp would be refused for such a program (:func:`qcmb_async._core.checks.check_ghost_atoms`); a default the
    user did not choose should not be what stops the run. A ``--bsse cp`` the user gave is still refused.
    The command line, which ignores these warnings, prints :func:`nocp_default_notice` once the run is through.
    """
    import warnings

    from ..errors import QCMBAsyncWarning

    notice = nocp_default_notice(program)
    if notice is None:
        return ["cp"]
    warnings.warn(notice, QCMBAsyncWarning, stacklevel=4)
    return ["nocp"]


def nocp_default_notice(program: str) -> str | None:
    """What to say when no BSSE treatment was given and ``program`` made it nocp; ``None``: the default is cp."""
    from ..programs import traits

    if traits(str(program)).ghost_atoms:
        return None
    return (f"no BSSE treatment given: nocp, because {program} cannot place ghost atoms (the default cp needs "
            "them); give --bsse nocp (bsse=['nocp']) to say so, or a program with ghost atoms (pyscf, psi4, "
            "nwchem) for cp/vmfc")


def parse_keywords(text: str | None) -> dict[str, Any]:
    """``--keywords`` JSON object -> dict."""
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--keywords is not valid JSON ({exc}): give a JSON object such as '{{\"scf_type\": "
                         "\"df\"}'") from None
    if not isinstance(data, dict):
        raise InputError(f"--keywords must be a JSON object, got {type(data).__name__}")
    return data


def xyz_input(
    path: str | Path,
    *,
    method: str,
    program: str,
    basis: str | None = None,
    bsse: list[str] | None = None,
    max_nbody: int | None = None,
    keywords: dict[str, Any] | None = None,
    driver: str = "energy",
    charges: list[int] | Mapping[str, int] | None = None,
    multiplicities: list[int] | Mapping[str, int] | None = None,
    fragments: str = "file",
) -> Any:
    """Read an XYZ file and build a v2 ``ManyBodyInput``.

    ``fragments="file"`` (default): fragments are separated by ``--`` lines. ``fragments="molecules"``: the
    file is one block of atoms and the fragments are its covalently bonded molecules (see
    :mod:`qcmb_async._core.fragment`); ``charges``/``multiplicities`` may then be rules such as
    ``{"Na": 1, "Cl": -1}`` (element, formula or residue name), and a fragment that is an ion or has an odd
    electron count without one is an :class:`~qcmb_async.errors.InputError`. Atoms are reordered into
    fragment order when the file interleaves molecules; results come back in the file's order.
    """
    path = Path(path)
    source = f"XYZ file {str(path)!r}"
    from .inputs import read_text_file

    text = read_text_file(path, "XYZ file")
    _check_common(driver, max_nbody)
    mode = _fragments_mode(fragments)
    if mode == "molecules":
        atoms = parse_xyz(text, source, single=True)[0].atoms
        molecule, _ = molecule_from_atoms(atoms, charges=charges, multiplicities=multiplicities, source=source)
    else:
        if isinstance(charges, Mapping) or isinstance(multiplicities, Mapping):
            raise InputError("charge/multiplicity rules (NAME=VALUE) apply to fragments found from bonds "
                             "(fragments='molecules', --fragments molecules); with '--' lines give one value per "
                             "fragment or a 'charge multiplicity' line opening the fragment")
        frags = parse_xyz(text, source)
        molecule = build_molecule(frags, charges, multiplicities, source)
    return mbe_input(molecule, source=source, method=method, program=program, basis=basis, bsse=bsse,
                     max_nbody=max_nbody, keywords=keywords, driver=driver)


FRAGMENT_MODES = ("file", "molecules")


def _fragments_mode(value: str) -> str:
    mode = str(value).strip().lower()
    if mode not in FRAGMENT_MODES:
        raise InputError(f"unknown fragments mode {value!r}: 'file' (the file's '--' lines) or 'molecules' "
                         "(covalently bonded molecules found from the geometry)")
    return mode


def _check_common(driver: str, max_nbody: int | None) -> None:
    if driver not in DRIVERS:
        raise InputError(f"unknown driver {driver!r}: use one of {', '.join(DRIVERS)}")
    if max_nbody is not None and max_nbody < 1:
        raise InputError(f"--max-nbody must be >= 1, got {max_nbody}")


def mbe_input(molecule: Any, *, source: str, method: str, program: str, basis: str | None = None,
              bsse: list[str] | None = None, max_nbody: int | None = None, keywords: dict[str, Any] | None = None,
              driver: str = "energy") -> Any:
    """The v2 ``ManyBodyInput`` of ``molecule`` with one model chemistry (the CLI's XYZ/PDB options)."""
    from pydantic import ValidationError
    from qcmanybody.models.v2 import ManyBodyInput

    from .inputs import _pydantic_message

    _check_common(driver, max_nbody)
    mb_keywords: dict[str, Any] = {"bsse_type": parse_bsse(bsse) if bsse is not None else default_bsse(program)}
    if max_nbody is not None:
        mb_keywords["max_nbody"] = max_nbody
    try:
        return ManyBodyInput(
            molecule=molecule,
            specification={
                "driver": driver,
                "keywords": mb_keywords,
                "specification": {
                    "(auto)": {
                        "program": program,
                        "model": {"method": method, "basis": basis},
                        "driver": driver,
                        "keywords": keywords or {},
                    }
                },
            },
        )
    except ValidationError as exc:
        raise InputError(f"cannot build a ManyBodyInput from {source}: {_pydantic_message(exc)}") from None


def molecule_from_atoms(atoms: Sequence[tuple[str, float, float, float]], *, residues: Sequence[str] | None = None,
                        formal_charges: Sequence[int | None] | None = None,
                        charges: Sequence[int] | Mapping[str, int] | None = None,
                        multiplicities: Sequence[int] | Mapping[str, int] | None = None,
                        source: str = "input", min_fragments: int = 2) -> tuple[Any, list[Any]]:
    """A QCElemental v2 ``Molecule`` whose fragments are the molecules found in ``atoms`` (Å, file order).

    Returns the molecule (atoms in fragment order; ``extras[ORDER_KEY]`` holds the file index of each atom when
    that differs from the file's order) and the fragments found. Raises :class:`InputError` for fewer than
    ``min_fragments`` molecules or charges the user must give (:func:`assign_charges`).
    """
    from qcelemental import constants

    from .fragment import ORDER_KEY, FoundFragment, assign_charges, find_molecules

    to_bohr = 1.0 / constants.bohr2angstroms
    symbols = [a[0] for a in atoms]
    groups = find_molecules(symbols, [[v * to_bohr for v in a[1:]] for a in atoms])
    found: list[FoundFragment] = []
    for group in groups:
        frag = FoundFragment(atoms=group, symbols=[symbols[i] for i in group])
        if residues is not None:
            frag.residues = {residues[i] for i in group}
        if formal_charges is not None and any(formal_charges[i] is not None for i in group):
            frag.formal_charge = sum(int(formal_charges[i] or 0) for i in group)
        found.append(frag)
    if len(found) < min_fragments:
        biggest = max(found, key=lambda f: len(f.atoms))
        raise InputError(f"{source}: found {len(found)} molecule(s) from bonds ({biggest.formula} is one covalently "
                         f"bonded molecule of {len(biggest.atoms)} atoms); a many-body expansion of molecules needs at "
                         "least two. A covalent molecule is split only by cutting bonds (GMBE with hydrogen caps), "
                         "not by this option")
    chg, mult = assign_charges(found, charges, multiplicities, source)
    xyz_frags = [XYZFragment(atoms=[tuple(atoms[i]) for i in f.atoms]) for f in found]  # type: ignore[misc]
    molecule = build_molecule(xyz_frags, chg, mult, source)
    order = [i for f in found for i in f.atoms]
    if order != list(range(len(atoms))):
        molecule = molecule.model_copy(update={"extras": {**(molecule.extras or {}), ORDER_KEY: order}})
    return molecule, found
