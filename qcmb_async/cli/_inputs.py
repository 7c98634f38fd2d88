"""What the commands read and write: XYZ or ManyBodyInput files, output paths, the store."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._console import Usage
from ._options import Driver, XyzOptions


def _ints(name: str, text: str | None) -> list[int] | dict[str, int] | None:
    """``--charge``/``--multiplicity``: whole numbers (one per fragment, or one for all) or NAME=VALUE rules."""
    if text is None:
        return None
    if "=" in text:
        from .._core.fragment import parse_rules

        return parse_rules(text, f"--{name}")
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--{name} takes whole numbers, one per fragment, comma separated; got {text!r}") from None


_XYZ_ONLY = ("method", "basis", "program", "bsse", "max_nbody", "keywords", "charge", "multiplicity", "fragments")


def _load(path: Path, xyz: XyzOptions) -> Any:
    """The ``run_manybody`` input for ``path``: a ManyBodyInput for .xyz, else the path itself."""
    method, program, driver = xyz.method, xyz.program, xyz.driver
    from .._core.inputs import check_input_path

    check_input_path(path)  # a directory, FIFO or device: refused before anything opens it
    from .._core.pdb import PDB_SUFFIXES

    if xyz.gmbe is not None:
        return _load_gmbe(path, xyz)
    gmbe_only = [f"--{k.replace('_', '-')}" for k in ("residues_per_fragment", "overlap", "max_fragment_atoms")
                 if getattr(xyz, k) is not None]
    if gmbe_only:
        raise Usage(f"{', '.join(gmbe_only)} shape the fragments of a generalized MBE: add --gmbe N")
    if path.suffix.lower() in PDB_SUFFIXES:
        missing = [opt for opt, val in (("--method", method), ("--program", program)) if not val]
        if missing:
            raise Usage(f"a PDB/mmCIF input needs {' and '.join(missing)} (and --basis, --bsse, --max-nbody as "
                        "needed) to say what to compute, e.g. --program pyscf --method hf --basis sto-3g")
        if xyz.fragments not in (None, "molecules"):
            raise Usage(f"--fragments {xyz.fragments}: a PDB/mmCIF file's fragments are always its molecules "
                        "(--fragments molecules)")
        from .. import read_pdb
        from .._core.xyz import parse_keywords

        return read_pdb(path, method=str(method), program=str(program), basis=xyz.basis, bsse=xyz.bsse,
                        max_nbody=xyz.max_nbody, keywords=parse_keywords(xyz.keywords),
                        driver=(driver or Driver.energy).value, charges=_ints("charge", xyz.charge),
                        multiplicities=_ints("multiplicity", xyz.multiplicity))
    if path.suffix.lower() == ".xyz":
        missing = [opt for opt, val in (("--method", method), ("--program", program)) if not val]
        if missing:
            raise Usage(f"an XYZ input needs {' and '.join(missing)} (and --basis, --bsse, --max-nbody as "
                        "needed) to say what to compute, e.g. --program mopac --method pm7")
        from .. import read_xyz
        from .._core.xyz import parse_keywords

        return read_xyz(path, method=str(method), program=str(program), basis=xyz.basis, bsse=xyz.bsse,
                        max_nbody=xyz.max_nbody, keywords=parse_keywords(xyz.keywords),
                        driver=(driver or Driver.energy).value, charges=_ints("charge", xyz.charge),
                        multiplicities=_ints("multiplicity", xyz.multiplicity),
                        fragments=xyz.fragments or "file")
    extra = [f"--{k.replace('_', '-')}" for k, v in vars(xyz).items() if v]
    if extra:
        verb = "applies" if len(extra) == 1 else "apply"
        raise Usage(f"{', '.join(extra)} {verb} to .xyz inputs only: {str(path)!r} is a ManyBodyInput or GMBEInput "
                    "(JSON/YAML) that carries its own specification; edit it instead")
    return path


def bsse_notice(xyz: XyzOptions) -> str | None:
    """``note: ...`` when an XYZ/PDB input gave no --bsse and its program made the default nocp (no ghost atoms).

    Printed by plan/run once they are through, so an error found later stays the only paragraph on stderr.
    """
    if xyz.bsse is not None or xyz.gmbe is not None or not xyz.program:
        return None  # chosen, a GMBE (always nocp) or a JSON input (its own bsse_type)
    from .._core.xyz import nocp_default_notice

    notice = nocp_default_notice(str(xyz.program))
    return None if notice is None else f"note: {notice}"


def _same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file: the same path once symlinks resolve, or the same inode (hard links)."""
    ra, rb = a.expanduser().resolve(), b.expanduser().resolve()
    if ra == rb:
        return True
    with contextlib.suppress(OSError):  # hard links and bind mounts: same inode
        return ra.exists() and rb.exists() and os.path.samefile(ra, rb)
    return False


def _timeline_formats() -> dict[str, str]:
    """``{suffix: description}`` of the file formats matplotlib can save a figure in."""
    from ..timeline import _import_matplotlib

    _import_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    return dict(FigureCanvasBase.get_supported_filetypes())


def _check_writable(option: str, path: Path | None) -> None:
    """Refuse, before anything is computed, an output path that could not be written at the end."""
    if path is None:
        return
    target = path.expanduser()
    if target.is_dir():
        raise Usage(f"{option} {str(path)!r} is a directory: give a file name, e.g. {str(target / 'result.json')!r}")
    if target.exists() and not target.is_file():
        raise Usage(f"{option} {str(path)!r} exists and is not a regular file (a FIFO or device?): give a file name")
    parent = target.resolve().parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise Usage(f"{option} {str(path)!r}: directory {str(parent)!r} {what}")
    # os.access() says yes to root even on read-only mounts and /proc: create a file there to know.
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".qcmb-async-probe-"):
            pass
        if target.exists():
            with target.open("ab"):  # append mode: opens without truncating what is there
                pass
    except OSError as exc:
        raise Usage(f"{option} {str(path)!r} cannot be written ({exc.strerror or exc}): give a path in a "
                    "writable directory") from None


def write_output(option: str, path: Path, data: Any) -> None:
    """Write an output file atomically (see :func:`qcmb_async._files.write_atomic`); a failure is exit 2.

    ``data``: text, bytes, or a function writing to the open binary file. The error names the option and
    the path; the previous file, if any, is left as it was (never truncated).
    """
    from .._files import write_atomic

    try:
        write_atomic(path.expanduser(), data)
    except OSError as exc:
        raise Usage(f"{option} {str(path)!r} could not be written ({exc.strerror or exc}); it was left as it was "
                    "(no partial file). Free space there or give another path, and rerun (the result store "
                    "keeps what was computed)") from None


def _check_outputs(input: Path, output: Path | None, timeline: Path | None) -> None:
    """Every check of --output and --timeline that can fail, before the run starts (exit 2, nothing computed)."""
    _check_writable("--output", output)
    _check_writable("--timeline", timeline)
    for option, out in (("--output", output), ("--timeline", timeline)):
        if out is not None and _same_file(out, input):
            raise Usage(f"{option} {str(out)!r} is the input file: writing there would overwrite the input. "
                        "Give another path")
    if output is not None and timeline is not None and _same_file(output, timeline):
        raise Usage(f"--output and --timeline are the same file {str(output)!r}: the timeline would replace the "
                    "result JSON. Give two paths")
    if timeline is not None and timeline.suffix:
        try:
            formats = _timeline_formats()
        except ImportError as exc:
            raise Usage(f"--timeline: {exc}") from None
        fmt = timeline.suffix[1:].lower()
        if fmt not in formats:
            raise Usage(f"--timeline {str(timeline)!r}: matplotlib cannot write .{fmt} files; use one of "
                        f"{', '.join('.' + f for f in sorted(formats))}")


def _store_arg(store: str | None) -> Path | None:
    """--store as a path; an empty one is refused (as a Path it would be '.', "a directory")."""
    if store is None:
        return None
    if not store.strip():
        raise Usage("--store is empty: give the path of the store file, or --no-store for no result store")
    return Path(store)


def _store_path(store: Path | None, no_store: bool) -> Path | None:
    """The result store a run will open, or ``None``."""
    from ..store import store_path

    return None if no_store else store_path(store if store is not None else "default")


def _check_not_store(store: Path | None, no_store: bool, **outputs: Path | None) -> None:
    """Refuse an output file that is the result store or one of its -wal/-shm files (writing it destroys the store)."""
    path = _store_path(store, no_store)
    if path is None:
        return
    target = path.expanduser().resolve()
    forbidden = {str(target), f"{target}-wal", f"{target}-shm", f"{target}-journal"}
    for option, out in outputs.items():
        if out is None:
            continue
        if str(out.expanduser().resolve()) in forbidden or _same_file(out, target):
            raise Usage(f"--{option} {str(out)!r} is the result store {str(path)!r} (or one of its -wal/-shm "
                        "files): writing the result there would destroy every stored fragment. Give another "
                        "output path")


def _load_gmbe(path: Path, xyz: XyzOptions) -> Any:
    """A :class:`~qcmb_async.GMBEInput` from a PDB file (residue windows) or an XYZ file (cut at sp3 C-C bonds)."""
    from .. import GMBEInput
    from .._core.pdb import PDB_SUFFIXES
    from .._core.xyz import parse_keywords, parse_xyz

    if path.suffix.lower() not in (*PDB_SUFFIXES, ".xyz"):
        # First: a GMBEInput JSON file with --gmbe was told it needs --method and --program, which it refuses.
        raise Usage(f"--gmbe reads PDB/mmCIF or XYZ files; {str(path)!r} is neither (a GMBEInput JSON file "
                    "carries its own order: leave --gmbe out)")
    missing = [opt for opt, val in (("--method", xyz.method), ("--program", xyz.program)) if not val]
    if missing:
        raise Usage(f"--gmbe needs {' and '.join(missing)} (and --basis) to say what to compute")
    refused = [f"--{k.replace('_', '-')}" for k in ("bsse", "multiplicity", "max_nbody") if getattr(xyz, k) is not None]
    if refused:
        raise Usage(f"{', '.join(refused)} do(es) not apply to --gmbe (the GMBE is a NoCP expansion of closed-shell "
                    "subsystems, of order --gmbe N)")
    spec = {"program": str(xyz.program), "driver": (xyz.driver or Driver.energy).value,
            "model": {"method": str(xyz.method), "basis": xyz.basis}, "keywords": parse_keywords(xyz.keywords)}
    from pydantic import ValidationError

    from .._core.inputs import _pydantic_message

    try:
        if path.suffix.lower() in PDB_SUFFIXES:
            if xyz.max_fragment_atoms is not None or xyz.fragments is not None:
                raise Usage("--max-fragment-atoms and --fragments FILE apply to XYZ files; a PDB file is cut into "
                            "residues (--residues-per-fragment, --overlap)")
            return GMBEInput.from_pdb(
                path, residues_per_fragment=1 if xyz.residues_per_fragment is None else xyz.residues_per_fragment,
                overlap=0 if xyz.overlap is None else xyz.overlap, max_nbody=xyz.gmbe, specification=spec,
                residue_charges=_residue_rules(xyz.charge))
        pdb_only = [f"--{k.replace('_', '-')}" for k in ("residues_per_fragment", "overlap", "charge")
                    if getattr(xyz, k) is not None]
        if pdb_only:
            raise Usage(f"{', '.join(pdb_only)} with --gmbe name(s) the residues of a PDB file; an XYZ file has none: "
                        "give the primary fragments (and atom charges, if any) in a file, --fragments FRAGS.json "
                        "(see docs/gmbe.md)")
        if (xyz.max_fragment_atoms is None) == (xyz.fragments is None):
            raise Usage("--gmbe with an XYZ file needs one of --max-fragment-atoms N (fragments cut at sp3 C-C bonds, "
                        "at most N atoms each) or --fragments FRAGS.json (your primary fragments)")
        from qcelemental import constants

        from .._core.gmbe_fragment import gmbe_molecule
        from .._core.inputs import read_text_file

        atoms = parse_xyz(read_text_file(path, "XYZ file"), f"XYZ file {str(path)!r}", single=True)[0].atoms
        to_bohr = 1.0 / constants.bohr2angstroms
        molecule = gmbe_molecule(f"XYZ file {str(path)!r}", [a[0] for a in atoms],
                                 [[v * to_bohr for v in a[1:]] for a in atoms])
        if xyz.fragments is not None:
            fragments, charges = _fragments_file(Path(xyz.fragments))
            return GMBEInput(molecule=molecule, fragments=fragments, atom_charges=charges, max_nbody=xyz.gmbe,
                             specification=spec)
        assert xyz.max_fragment_atoms is not None
        return GMBEInput.from_molecule(molecule, max_fragment_atoms=xyz.max_fragment_atoms, max_nbody=xyz.gmbe,
                                       specification=spec)
    except ValidationError as exc:
        raise InputError(f"the generalized MBE of {str(path)!r} is not valid: {_pydantic_message(exc)}") from None


def _residue_rules(text: str | None) -> dict[str, int] | None:
    """``--charge A/LYS5=+1,ASP12=-1`` with ``--gmbe``: ``{residue id: charge}`` (the chain may be left out)."""
    if text is None:
        return None
    rules: dict[str, int] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        try:
            charge = int(value.strip()) if sep and key.strip() else None
        except ValueError:
            charge = None
        if charge is None:
            raise Usage(f"--charge {item.strip()!r}: with --gmbe, --charge takes RESIDUE=CHARGE items naming the PDB "
                        "file's residues, e.g. --charge A/LYS5=+1,A/ASP12=-1 (chain/name+number; the chain may be "
                        "left out when one chain has that residue)")
        if key.strip() in rules:
            raise Usage(f"--charge: residue {key.strip()!r} is given twice")
        rules[key.strip()] = charge
    if not rules:
        raise Usage("--charge is empty: give RESIDUE=CHARGE items, e.g. --charge A/LYS5=+1")
    return rules


def _fragments_file(path: Path) -> tuple[list[list[int]], list[int] | None]:
    """``--fragments FRAGS.json`` with ``--gmbe``: primary fragments (0-based atom indices into the XYZ file) as
    ``[[0, 1, 2], [2, 3, 4]]`` or ``{"fragments": [...], "atom_charges": [...]}``; InputError for anything else.

    The indices themselves (in range, every atom covered, no fragment inside another) are GMBEInput's checks.
    """
    import json

    from .._core.inputs import check_input_path, read_text_file

    source = f"--fragments {str(path)!r}"
    if str(path) in ("file", "molecules"):
        raise Usage(f"--fragments {path} picks the fragments of an ordinary MBE; with --gmbe give a file of primary "
                    "fragments, --fragments FRAGS.json, or --max-fragment-atoms N")
    if not path.exists():
        raise Usage(f"{source}: no such file (with --gmbe, --fragments names a JSON file of primary fragments)")
    check_input_path(path)
    try:
        data = json.loads(read_text_file(path, "fragments file"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} is not valid JSON: {exc}") from None
    charges = None
    if isinstance(data, dict):
        extra = sorted(set(data) - {"fragments", "atom_charges"})
        if extra or "fragments" not in data:
            raise InputError(f"{source}: an object needs 'fragments' and may have 'atom_charges' (one whole number "
                             f"per atom), nothing else; got keys {sorted(data)}")
        charges = data.get("atom_charges")
        if charges is not None and not (isinstance(charges, list) and all(
                isinstance(q, int) and not isinstance(q, bool) for q in charges)):
            raise InputError(f"{source}: atom_charges must be a list of whole numbers, one per atom")
        data = data["fragments"]

    def index(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not (isinstance(data, list) and data and all(isinstance(f, list) for f in data)):
        raise InputError(f"{source}: give the primary fragments as a JSON list of lists of 0-based atom indices, "
                         "e.g. [[0, 1, 2, 3], [2, 3, 4, 5]] (or {\"fragments\": [...], \"atom_charges\": [...]})")
    for k, frag in enumerate(data):
        bad = [v for v in frag if not index(v)]
        if bad:
            raise InputError(f"{source}: fragment {k} holds {bad[0]!r}, not a 0-based atom index (a whole number)")
    return data, charges
