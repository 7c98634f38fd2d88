"""Input stage: accept what users have, check everything checkable, compute nothing."""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qcmanybody.models.v2 import ManyBodyInput

from ..errors import InputError, describe_validation
from .resources import default_memory, default_ncores

OnError = Literal["raise", "continue"]


@dataclass(frozen=True)
class RunOptions:
    """Validated run options (see :func:`qcmb_async.run_manybody` for their meaning)."""

    ncores: int
    memory: float
    fragment_ncores: int
    fragment_memory: float
    level_barrier: bool = False
    scratch_directory: str | None = None
    retries: int = 0
    timeout: float | None = None
    on_error: OnError = "raise"
    on_event: Callable[[Any], Any] | None = None
    order: str = "cost"
    """``"cost"``: largest estimated fragment first; ``"fifo"``: QCManyBody's order (baselines)."""
    auto_cores: bool = True
    """Cores per fragment left to the scheduler (``fragment_ncores`` not given)."""
    auto_memory: bool = True
    """Memory per fragment is a per-core share (``fragment_memory`` not given)."""

    @property
    def slots(self) -> int:
        """How many fragments can run at once."""
        return max(1, min(self.ncores // self.fragment_ncores, int(self.memory / self.fragment_memory + 1e-9)))


_pydantic_message = describe_validation


#: Above this many candidate combinations QCElemental's charge/multiplicity search
#: (``qcelemental.molparse.validate_and_fill_chgmult``, which tries every combination of
#: per-fragment values) takes more than about a second; measured here: a +1 water cluster with
#: no fragment charges 0.3 s at 6 fragments (~3e4 combinations), 3 s at 7, 108 s at 10.
CHGMULT_SEARCH_LIMIT = 100_000


def _z_per_atom(mol: Mapping[str, Any]) -> list[int] | None:
    """Electrons of each neutral atom (0 for ghosts), as QCElemental counts them; None if unsure."""
    from qcelemental import periodictable

    symbols = mol.get("symbols")
    if symbols is None:
        return None
    numbers = mol.get("atomic_numbers")
    real = mol.get("real")
    try:
        symbols = list(symbols)
        z = [int(n) for n in numbers] if numbers is not None else [int(periodictable.to_Z(str(s))) for s in symbols]
        if len(z) != len(symbols):
            return None
        if real is not None:
            real = [bool(r) for r in real]
            if len(real) != len(z):
                return None
            z = [zi if ri else 0 for zi, ri in zip(z, real, strict=True)]
    except Exception:
        return None
    return z


def _as_list(values: Any, n: int) -> list[float | None] | None:
    """``values`` as a list of ``n`` floats (None for missing ones); None when it cannot be read."""
    if values is None:
        return [None] * n
    try:
        out = [None if v is None else float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _whole(value: float) -> bool:
    return float(value).is_integer()


def _high_spin_sum(mults: list[float]) -> float:
    return 1 + sum(m - 1 for m in mults)


def fill_fragment_chgmult(mol: Any, source: str = "the molecule") -> Any:
    """Molecule data with the fragment charges/multiplicities QCElemental would derive, made explicit.

    QCElemental's ``validate_and_fill_chgmult`` tries every combination of candidate values
    for the missing per-fragment charges and multiplicities: exponential in the number of
    fragments (29 s and 4 GB for 24 waters, MemoryError beyond). Where its answer is unique we
    give it directly, so the resulting ``Molecule`` is the one QCElemental would build:

    - missing fragment charges are 0 when ``molecular_charge`` is absent or equals the sum of
      the given fragment charges (QCElemental's only candidates are then 0);
    - missing fragment multiplicities, once every charge is known, are 1 for an even electron
      count and 2 for an odd one, provided ``molecular_multiplicity`` is absent or equals the
      high-spin sum of the fragments' multiplicities (otherwise some fragment is high spin and
      QCElemental would pick which one).

    Values the user gave are never changed. When something remains for QCElemental to choose
    (a net charge without fragment charges; a total multiplicity above the singlet/doublet sum)
    the data is left as it is, unless QCElemental's search would exceed
    :data:`CHGMULT_SEARCH_LIMIT` combinations: then :class:`InputError` asks for explicit values.
    Data that is not a plain molecule dict (a ``Molecule`` object, ``validated=True``, one
    fragment, unreadable fields) is returned unchanged for QCElemental to judge.
    """
    if not isinstance(mol, Mapping) or mol.get("validated"):
        return mol
    frags = mol.get("fragments")
    try:
        frags = [[int(i) for i in frag] for frag in frags] if frags is not None else None
    except (TypeError, ValueError):
        return mol
    if not frags or len(frags) < 2:
        return mol
    n = len(frags)
    charges = _as_list(mol.get("fragment_charges"), n)
    mults = _as_list(mol.get("fragment_multiplicities"), n)
    if charges is None or mults is None or (None not in charges and None not in mults):
        return mol
    z = _z_per_atom(mol)
    try:
        neutral = [sum(z[i] for i in frag) for frag in frags] if z is not None else None
        total_charge = mol.get("molecular_charge")
        total_charge = None if total_charge is None else float(total_charge)
        total_mult = mol.get("molecular_multiplicity")
        total_mult = None if total_mult is None else float(total_mult)
    except (IndexError, TypeError, ValueError):
        return mol
    if neutral is None:
        return mol

    filled_c = list(charges)
    known_c = sum(c for c in charges if c is not None)
    if None in charges and (total_charge is None or total_charge == known_c):
        filled_c = [0.0 if c is None else c for c in charges]

    filled_m = list(mults)
    why = ""  # why multiplicities stay open, for the error message
    if None in mults and None not in filled_c:
        electrons = [zf - c for zf, c in zip(neutral, filled_c, strict=True)]
        bad = [i for i, e in enumerate(electrons, start=1) if not _whole(e) or e < 0]
        if bad:
            why = (f"with the fragment charges given, fragment(s) {bad[:5]} would have a negative or fractional "
                   "number of electrons")
        elif not all(m is None or _whole(m) for m in mults):
            why = "fragment_multiplicities holds values that are not whole numbers"
        else:
            trial = [m if m is not None else 1.0 if int(e) % 2 == 0 else 2.0
                     for e, m in zip(electrons, mults, strict=True)]
            if total_mult is None or total_mult == _high_spin_sum(trial):
                filled_m = trial
            else:
                why = (f"molecular_multiplicity={total_mult:g} is not what the fragments add up to as singlets and "
                       f"doublets ({_high_spin_sum(trial):g}): qcmb_async does not guess which fragments are high spin")

    if None in filled_c or None in filled_m:
        _check_search_size(filled_c, filled_m, total_charge, total_mult, source, why)
    if filled_c == charges and filled_m == mults:
        return mol
    out = dict(mol)
    if filled_c != charges:
        out["fragment_charges"] = filled_c
    if filled_m != mults:
        out["fragment_multiplicities"] = [int(m) if m is not None and _whole(m) else m for m in filled_m]
    return out


def _check_search_size(charges: list[float | None], mults: list[float | None], total_charge: float | None,
                       total_mult: float | None, source: str, why: str) -> None:
    """Raise :class:`InputError` when QCElemental's chg/mult search would be too large to wait for."""
    n = len(charges)
    open_c = charges.count(None)
    open_m = mults.count(None)
    per_mult = 2 if total_mult is None else max(2, int(total_mult))
    size = 2 ** open_c * per_mult ** open_m * (open_m + 1 if total_mult is None else 1)
    if size <= CHGMULT_SEARCH_LIMIT:
        return
    if open_c:
        given = "no" if open_c == n else "incomplete"
        what = (f"molecular_charge={float(total_charge or 0):g} with {given} fragment_charges: "
                "qcmb_async does not guess which fragment carries the charge")
        example = ('"fragment_charges": [-1, 0, 0, ...], "fragment_multiplicities": [1, 1, 1, ...]'
                   if total_charge is not None and total_charge < 0 else
                   '"fragment_charges": [1, 0, 0, ...], "fragment_multiplicities": [2, 1, 1, ...]')
    else:
        what = why or "fragment_multiplicities cannot be worked out"
        example = '"fragment_charges": [0, 0, 0, ...], "fragment_multiplicities": [3, 1, 1, ...]'
    raise InputError(
        f"{source} has {n} fragments and {what}; QCElemental would search every combination "
        f"(about {size:.0e} here, where 1e+05 take a second) or run out of memory. Give fragment_charges and "
        f"fragment_multiplicities explicitly in the molecule, one value per fragment ({n} each), e.g. {example}"
    )


def _prepare(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Make the molecule's fragment charges/multiplicities explicit before it is validated.

    A ``validated`` flag in the data is dropped: QCElemental checks the molecule whatever it says.
    """
    check_finite(data, source)
    if isinstance(data.get("molecule"), Mapping):
        mol = dict(data["molecule"])
        mol.pop("validated", None)
        data["molecule"] = fill_fragment_chgmult(mol, f"the molecule of {source}")
    _check_bsse_type(data, source)
    return data


def _check_bsse_type(data: Mapping[str, Any], source: str) -> None:
    """QCManyBody calls ``.lower()`` on each bsse_type value: anything but names fails with AttributeError."""
    spec = data.get("specification")
    keywords = spec.get("keywords") if isinstance(spec, Mapping) else data.get("keywords")
    if not isinstance(keywords, Mapping) or keywords.get("bsse_type") is None:
        return
    value = keywords["bsse_type"]
    values = value if isinstance(value, list | tuple) else [value]
    allowed = ("cp", "nocp", "vmfc")
    bad = [v for v in values if not isinstance(v, str) or v.lower() not in allowed]
    if bad or not values:
        raise InputError(f"{source}: bsse_type {value!r} is not valid: use one or a list of "
                         f"{', '.join(repr(a) for a in allowed)}, e.g. \"bsse_type\": [\"cp\"]")


def _from_dict(data: Mapping[str, Any], source: str) -> ManyBodyInput:
    from pydantic import ValidationError
    from qcelemental.exceptions import ChoicesError, DataUnavailableError, MoleculeFormatError, NotAnElementError
    from qcelemental.exceptions import ValidationError as QCElementalValidationError

    data = _prepare(dict(data), source)
    if data.get("schema_version") == 1 or data.get("schema_name") == "qcschema_manybodyinput":
        try:
            from qcmanybody.models.v1 import ManyBodyInput as ManyBodyInputV1

            return ManyBodyInputV1(**data).convert_v(2)
        except Exception as exc:
            raise InputError(f"{source} is not a valid ManyBodyInput (QCSchema v1): {_pydantic_message(exc)}") from exc
    try:
        return ManyBodyInput(**data)
    except ValidationError as exc:
        raise InputError(
            f"{source} is not a valid ManyBodyInput: {_pydantic_message(exc)}. "
            "See qcmanybody.models.v2.ManyBodyInput for the expected layout."
        ) from exc
    except QCElementalValidationError as exc:
        raise InputError(f"the molecule of {source} is not valid: {exc}. Correct the molecule as this says "
                         "(atoms closer than 0.1 bohr, charges and multiplicities that do not add up, ...)") from None
    except (NotAnElementError, DataUnavailableError, ChoicesError, MoleculeFormatError) as exc:
        raise InputError(f"the molecule of {source} is not valid: {type(exc).__name__}: {exc}. Use element "
                         "symbols QCElemental knows (H, He, ..., Og), optionally with @ for ghosts") from None
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        # QCManyBody's and QCElemental's validators let some wrong types through as raw exceptions.
        raise InputError(f"{source} is not a valid ManyBodyInput: {type(exc).__name__}: {exc}. "
                         "See qcmanybody.models.v2.ManyBodyInput for the expected layout") from None


#: Largest input file read (JSON, YAML, XYZ). A 10,000-water cluster as JSON is about 2 MB.
MAX_INPUT_BYTES = 64 * 1024 * 1024


def read_text_file(path: Path, what: str = "input file") -> str:
    """The UTF-8 text of a regular file of at most :data:`MAX_INPUT_BYTES`, else :class:`InputError`.

    Directories, FIFOs and devices are refused before they are opened (reading a FIFO or
    ``/dev/zero`` would block or never end).
    """
    name = str(path)
    size = check_input_path(path, what)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{what} {name!r} cannot be read: {exc.strerror or exc}. Check its permissions") from None
    if len(raw) > MAX_INPUT_BYTES or len(raw) < size:
        raise InputError(f"{what} {name!r} changed while it was read, or is larger than the {MAX_INPUT_BYTES} "
                         "bytes an input may have")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"{what} {name!r} is not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line} "
                         "(a Latin-1 or Windows accented letter?). Save the file as UTF-8") from None


def check_input_path(path: Path, what: str = "input file") -> int:
    """Size in bytes of ``path`` if it is a regular file no larger than :data:`MAX_INPUT_BYTES`, else InputError."""
    name = str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{what} {name!r} does not exist: check the path") from None
    except OSError as exc:  # ENAMETOOLONG, ENOTDIR, EACCES on a parent, ELOOP...
        raise InputError(f"{what} {name[:200]!r} cannot be used: {exc.strerror or exc}. Give the path of a "
                         "readable JSON, YAML or XYZ file") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {name!r} is a directory: give a JSON, YAML or XYZ file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what} {name!r} is not a regular file (a FIFO, device or socket): save the input to a "
                         "file and give its path")
    if info.st_size > MAX_INPUT_BYTES:
        raise InputError(f"{what} {name!r} has {info.st_size} bytes, more than the {MAX_INPUT_BYTES} an input may "
                         "have: check it is the right file")
    return int(info.st_size)


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load`` without aliases: a few nested ``*ref`` expand a small file into gigabytes."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise InputError(f"YAML aliases ('*{event.anchor}', line {event.start_mark.line + 1}) are not "
                                 "accepted: a few nested aliases expand to gigabytes. Write the values out in full")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliasLoader)  # a SafeLoader subclass


def _read_file(path: Path) -> ManyBodyInput:
    text = read_text_file(path)
    suffix = path.suffix.lower()
    try:
        data = _yaml_load(text) if suffix in (".yaml", ".yml") else json.loads(text)
    except InputError as exc:
        raise InputError(f"input file {str(path)!r}: {exc}") from None
    except Exception as exc:
        kind = "YAML" if suffix in (".yaml", ".yml") else "JSON"
        raise InputError(f"input file {str(path)!r} is not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"input file {str(path)!r} must hold one ManyBodyInput object, found {type(data).__name__}")
    return _from_dict(data, f"input file {str(path)!r}")


def _not_a_path(text: str) -> InputError:
    """The error for a string that is neither JSON nor a usable path (a molecule string, say)."""
    from qcelemental.models.v2 import Molecule

    usage = ("pass a ManyBodyInput (or its dict / JSON text) or the path of a JSON/YAML file; for a molecule "
             "string build one: ManyBodyInput(molecule=Molecule.from_data(text), specification={...}), "
             "or save it as an XYZ file with '--' lines between fragments for the command line")
    try:
        Molecule.from_data(text)
    except Exception:
        return InputError(f"the input string {text[:60]!r}... is neither JSON nor the path of a file: {usage}")
    return InputError(f"the input string is a molecule, not a ManyBodyInput (it says nothing of the method, "
                      f"program or BSSE treatment): {usage}")


def load_input(obj: Any) -> ManyBodyInput:
    """Convert a v2/v1 ``ManyBodyInput``, a dict, a JSON string or a JSON/YAML path to v2.

    Whatever the form, the result is checked as a whole: no NaN or infinity anywhere, and the
    molecule validated by QCElemental even when it says ``validated: true``.

    Raises:
        InputError: what is wrong with the input and what to do about it.
    """
    inp, source = _load(obj)
    check_finite(inp, source)
    revalidate_molecule(inp.molecule, source)
    return inp


def _load(obj: Any) -> tuple[ManyBodyInput, str]:
    if isinstance(obj, ManyBodyInput):
        return obj, "the ManyBodyInput"
    if hasattr(obj, "convert_v") and type(obj).__name__ == "ManyBodyInput":
        try:
            return obj.convert_v(2), "the ManyBodyInput"
        except Exception as exc:
            raise InputError(f"the v1 ManyBodyInput cannot be converted to v2: {_pydantic_message(exc)}") from None
    if isinstance(obj, Path):
        return _read_file(obj), f"input file {str(obj)!r}"
    if isinstance(obj, str):
        if obj.lstrip().startswith("{"):
            try:
                data = json.loads(obj)
            except json.JSONDecodeError as exc:
                raise InputError(f"input string is not valid JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise InputError("input JSON must be one ManyBodyInput object")
            return _from_dict(data, "input JSON"), "input JSON"
        if "\n" in obj or "\0" in obj or len(obj) > 4096:
            raise _not_a_path(obj)
        try:
            os.stat(obj)
        except FileNotFoundError:
            raise InputError(f"input {obj!r} is not JSON and no file of that name exists: check the path, or "
                             "pass a ManyBodyInput, its dict or its JSON text") from None
        except OSError:
            pass  # too long, not a directory on the way...: read_text_file says which
        return _read_file(Path(obj)), f"input file {obj!r}"
    if isinstance(obj, Mapping):
        return _from_dict(obj, "input dict"), "input dict"
    raise InputError(
        f"cannot use a {type(obj).__name__} as input: pass a qcmanybody ManyBodyInput (v2 or v1), "
        "a dict, a JSON string, or the path of a JSON/YAML file"
    )


def _nonfinite(obj: Any, where: str, seen: int = 0) -> str | None:
    """Where the first NaN/infinity in ``obj`` sits (``molecule.geometry[5]``), or None."""
    import numpy as np
    from pydantic import BaseModel

    if isinstance(obj, bool) or obj is None or isinstance(obj, str | bytes | int):
        return None
    if isinstance(obj, float | np.floating):
        return None if math.isfinite(obj) else where
    if isinstance(obj, numbers.Complex):
        return None if math.isfinite(obj.real) and math.isfinite(obj.imag) else where
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "fc":
            bad = np.flatnonzero(~np.isfinite(obj))
            return f"{where}[{int(bad[0])}]" if bad.size else None
        if obj.dtype.kind == "O":
            obj = obj.ravel().tolist()
        else:
            return None
    if seen > 64:
        shown = where if len(where) <= 80 else where[:80] + "..."
        raise InputError(f"the input is nested more than 64 levels deep at {shown}: flatten it")
    if isinstance(obj, BaseModel):
        items: Any = ((name, getattr(obj, name, None)) for name in type(obj).model_fields)
    elif isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, list | tuple | set | frozenset):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        sub = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        hit = _nonfinite(value, sub, seen + 1)
        if hit is not None:
            return hit
    return None


def check_finite(data: Any, source: str) -> None:
    """:class:`InputError` when any number in ``data`` (geometry, charges, masses, keywords...) is NaN or infinite."""
    where = _nonfinite(data, "")
    if where is not None:
        raise InputError(f"{source} has a NaN or infinite number at {where}: every number in an input must be "
                         "finite; correct that value (a failed conversion or a missing coordinate?)")


def revalidate_molecule(mol: Any, source: str) -> None:
    """Validate ``mol`` again with QCElemental, whatever its ``validated`` flag says.

    A molecule written by ``Molecule.dict()`` carries ``validated: true``, which makes
    QCElemental skip every check (atoms on top of each other, inconsistent charges and
    multiplicities) until some fragment is built mid-run.
    """
    from qcelemental.models.v2 import Molecule

    data = mol.model_dump() if hasattr(mol, "model_dump") else dict(mol)
    data["validated"] = False
    try:
        Molecule(**data)
    except Exception as exc:
        raise InputError(f"the molecule of {source} is not valid: {_short_error(exc)}. Correct the molecule as "
                         "this says (a 'validated' flag does not skip this check)") from None


def _short_error(exc: Exception) -> str:
    text = _pydantic_message(exc) if callable(getattr(exc, "errors", None)) else str(exc)
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, InputError) else text


def _positive(name: str, value: Any, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        raise InputError(f"{name} must be a positive number, got {value!r}")
    if math.isinf(float(value)):
        omit = " (leave it out for no limit)" if name == "timeout" else " (leave it out for the default)"
        raise InputError(f"{name} must be a finite number, got {value!r}: give a value{omit}")
    if value <= 0:
        raise InputError(f"{name} must be positive, got {value!r}")
    if integer and int(value) != value:
        raise InputError(f"{name} must be a whole number of cores, got {value!r}")
    return float(value)


#: How to get each program, where a plain package manager cannot (checked against the vendors' sites).
INSTALL_HINTS: dict[str, str] = {
    "nwchem": "apt-get install nwchem (Debian/Ubuntu) or conda install -c conda-forge nwchem",
    "mopac": "apt-get install mopac (Debian/Ubuntu) or conda install -c conda-forge mopac",
    "psi4": "apt-get install psi4 (Debian/Ubuntu, psi4 1.3.2) or conda install -c conda-forge psi4",
    "pyscf": "pip install pyscf (or pip install 'qcmb_async[pyscf]')",
    "rdkit": "pip install rdkit",
    "xtb": "conda install -c conda-forge xtb-python",
    "cfour": "CFOUR is not in package managers: obtain it from https://cfour.de under its licence and put xcfour "
             "on PATH",
    "qchem": "Q-Chem is commercial software: obtain a licensed copy from https://www.q-chem.com and put qchem on PATH",
    "gamess": "GAMESS is not in package managers: obtain it from its authors (https://www.msg.chem.iastate.edu) "
              "under its licence and put rungms on PATH",
    "orca": "ORCA is not in package managers: download it from https://orcaforum.kofo.mpg.de (free for academic "
            "use) and put orca on PATH",
    "molpro": "Molpro is commercial software: obtain a licensed copy from https://www.molpro.net",
    "turbomole": "TURBOMOLE is commercial software: obtain a licensed copy from its vendor",
    "terachem": "TeraChem is commercial software: obtain a licensed copy from its vendor",
}


def install_hint(program: str) -> str:
    """How to install ``program``, as far as we know it; else where to look."""
    return INSTALL_HINTS.get(program.lower(), f"see QCEngine's documentation of the {program!r} harness for what it "
                             "needs on PATH or in Python")


def check_programs(programs: set[str], *, local: bool = True) -> None:
    """Every program must be known to QCEngine and (``local``) found on this machine.

    With ``local=False`` (fragments run on remote workers) availability is checked where
    each fragment runs instead.
    """
    import qcengine
    from qcengine.exceptions import InputError as QCEngineInputError

    from ..harnesses import register_harnesses

    register_harnesses()
    for name in sorted(programs):
        try:
            harness = qcengine.get_program(name, check=False)
        except (QCEngineInputError, KeyError):
            raise InputError(
                f"unknown program {name!r}: QCEngine has no harness of that name. "
                f"Programs available here: {', '.join(sorted(qcengine.list_available_programs())) or 'none'}"
            ) from None
        if local and not harness.found():
            raise InputError(
                f"program {name!r} is not available on this machine: {install_hint(name)}. Programs available "
                f"here: {', '.join(sorted(qcengine.list_available_programs())) or 'none'}"
            )


def used_specs(inp: ManyBodyInput) -> dict[str, Any]:
    """The specifications some n-body level runs: ``levels`` may leave others unused (QCManyBody ignores them)."""
    specs = dict(inp.specification.specification)
    levels = inp.specification.keywords.levels
    if not levels:
        return specs
    used = {k: v for k, v in specs.items() if k in {str(name) for name in levels.values()}}
    return used or specs  # levels naming no spec: QCManyBody says what is wrong


#: Programs that take QCManyBody's ``embedding_charges``: its computer hands them only to Psi4
#: (as ``function_kwargs.external_potentials``, psi4 >= 1.6) and raises for every other program.
EMBEDDING_PROGRAMS = ("psi4",)


def check_embedding(inp: ManyBodyInput) -> None:
    """:class:`InputError` when ``embedding_charges`` would go to a program that cannot take them."""
    if not inp.specification.keywords.embedding_charges:
        return
    bad = sorted({s.program for s in used_specs(inp).values() if s.program.lower() not in EMBEDDING_PROGRAMS})
    if bad:
        raise InputError(
            f"embedding_charges cannot be used with program(s) {', '.join(bad)}: QCManyBody passes point charges "
            f"only to {', '.join(EMBEDDING_PROGRAMS)} (as external_potentials, psi4 >= 1.6). Use that program or "
            "remove embedding_charges")


#: Noble-gas cores (electrons) and, after a filled d shell, the d10 a valence-only method leaves out.
_NOBLE = (2, 10, 18, 36, 54)
_SEMIEMPIRICAL_METHODS = ("pm3", "pm6", "pm7", "am1", "mndo", "rm1", "pddg")
_ECP_NAMES = ("lanl", "def2-", "-pp", "sbkjc", "crenbl", "stuttgart", "ecp", "sdd")


def _valence(z: int) -> tuple[int, int] | None:
    """(valence electrons, valence orbitals) of a neutral atom in a semi-empirical method; None beyond Xe.

    Orbitals are counted generously (s, p and d from Na on) so that no valid input is refused.
    """
    if z > 54:
        return None
    if z <= 2:
        return z, 1
    core = max(n for n in _NOBLE if n < z)
    if 31 <= z <= 36 or 49 <= z <= 54:
        core += 10  # filled (n-1)d shell
    return z - core, 4 if z <= 10 else 9


@functools.lru_cache(maxsize=512)
def basis_functions(symbol: str, basis: str) -> tuple[int, bool] | None:
    """(Cartesian basis functions, carries an ECP) of one atom of ``symbol`` in ``basis``; None when unknown.

    Read from PySCF's basis library when PySCF is installed (Cartesian counts: never fewer than
    the spherical ones a program may use). Without PySCF, the cost model's table for H-Ar with
    a generous allowance, and ECP-looking names count as carrying an ECP beyond neon.
    """
    from qcelemental import periodictable

    z = int(periodictable.to_Z(symbol))
    try:
        from pyscf import gto
    except ImportError:
        from .cost import _BASIS_FUNCTIONS, _row

        table = _BASIS_FUNCTIONS.get(basis.lower().replace(" ", ""))
        if table is None or z > 18:
            return None
        ecp = z > 10 and any(tag in basis.lower() for tag in _ECP_NAMES)
        return int(table[_row(z)] * 1.5), ecp
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mol = gto.Mole()
            mol.atom = f"{symbol} 0 0 0"
            mol.basis = basis
            mol.cart = True
            mol.spin = z % 2
            mol.build(dump_input=False, parse_arg=False, verbose=0)
            ecp = bool(gto.basis.load_ecp(basis, symbol))
    except Exception:  # basis PySCF does not know (or not for this element): nothing to check against
        return None
    return int(mol.nao_cart()), ecp


def _ecp_core() -> Callable[[str, str], int] | None:
    try:
        from ..harnesses.pyscf import ecp_core_electrons  # type: ignore[attr-defined]
    except ImportError:
        return None
    return ecp_core_electrons  # type: ignore[no-any-return]


def fragment_electrons(mol: Any) -> list[tuple[list[str], float, int]]:
    """``(symbols of the real atoms, charge, multiplicity)`` of each fragment of a validated molecule."""
    symbols = list(mol.symbols)
    real = list(mol.real) if mol.real is not None else [True] * len(symbols)
    charges = list(mol.fragment_charges)
    mults = list(mol.fragment_multiplicities)
    return [([symbols[i] for i in frag if real[i]], float(charges[k]), int(mults[k]))
            for k, frag in enumerate(mol.fragments)]


def check_fragment_electrons(inp: ManyBodyInput) -> None:
    """Refuse a fragment whose electrons are negative, fractional, of the wrong parity, or cannot fit.

    Every fragment QCManyBody builds is a union of real fragments (charge and electrons add up,
    unpaired electrons too, as it combines fragments high spin) plus ghost atoms, which only add
    basis functions. So a union fits when each of its fragments fits: checking each fragment once
    is enough, O(atoms) however many fragments. "Fits": at most twice the basis functions
    (valence orbitals for semi-empirical methods), counted per program specification that runs.
    Bases PySCF cannot count, and atoms with ECPs (unless the core size is known), are not checked.
    """
    from qcelemental import periodictable

    frags = fragment_electrons(inp.molecule)
    specs = used_specs(inp)
    ecp_core = _ecp_core()
    for k, (symbols, charge, mult) in enumerate(frags, start=1):
        formula = _formula(symbols)
        zsum = sum(int(periodictable.to_Z(s)) for s in symbols)
        electrons = zsum - charge
        what = f"fragment {k} ({formula}, charge {charge:g}, multiplicity {mult})"
        if not float(electrons).is_integer():
            raise InputError(f"{what} would have {electrons:g} electrons, not a whole number: give whole fragment "
                             "charges")
        if electrons < 0:
            raise InputError(f"{what} would have {electrons:g} electrons: its charge is more than its nuclei's "
                             f"{zsum}; correct fragment_charges")
        unpaired = mult - 1
        if unpaired > electrons or (int(electrons) - unpaired) % 2:
            raise InputError(f"{what}: {int(electrons)} electrons cannot have multiplicity {mult} (an "
                             f"{'even' if int(electrons) % 2 == 0 else 'odd'} electron count needs an "
                             f"{'odd' if int(electrons) % 2 == 0 else 'even'} multiplicity of at most "
                             f"{int(electrons) + 1}); correct fragment_multiplicities or fragment_charges")
        for name, spec in specs.items():
            room = _room(symbols, spec, ecp_core)
            if room is None:
                continue
            cap, count, kind = room
            count_e = count - charge
            alpha = (count_e + unpaired) / 2
            if count_e < 0 or count_e > 2 * cap or alpha > cap:
                electrons_word = f"{kind} electrons" if kind else "electrons"
                detail = (f"{count_e:g} {electrons_word}" if count_e < 0 else
                          f"{count_e:g} {electrons_word} ({alpha:g} of one spin) but only {cap} "
                          f"{'valence orbitals' if kind == 'valence' else 'basis functions'} (room for "
                          f"{2 * cap})")
                raise InputError(f"{what} has {detail} with specification {name!r} ({spec.program} "
                                 f"{spec.model.method}/{spec.model.basis or '-'}): the charge cannot be right; "
                                 f"correct fragment_charges{'' if kind == 'valence' else ' (or use a larger basis)'}")


def _formula(symbols: list[str]) -> str:
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s.capitalize()] = counts.get(s.capitalize(), 0) + 1
    return "".join(f"{s}{n if n > 1 else ''}" for s, n in counts.items()) or "no real atoms"


def _room(symbols: list[str], spec: Any, ecp_core: Callable[[str, str], int] | None) -> tuple[int, float, str] | None:
    """(orbitals, electrons of the neutral atoms as the method counts them, kind) or None when unknown."""
    from qcelemental import periodictable

    basis = spec.model.basis
    method = str(spec.model.method).lower()
    semi = spec.program.lower() == "mopac" or (not basis and method.startswith(_SEMIEMPIRICAL_METHODS))
    if semi:
        cap = count = 0
        for s in symbols:
            val = _valence(int(periodictable.to_Z(s)))
            if val is None:
                return None
            count += val[0]
            cap += val[1]
        return cap, float(count), "valence"
    if not isinstance(basis, str) or not basis:
        return None
    cap = count = 0
    for s in symbols:
        nbf = basis_functions(s.capitalize(), basis)
        if nbf is None:
            return None
        count += int(periodictable.to_Z(s))
        if nbf[1]:
            if ecp_core is None:
                return None  # core size unknown: better no check than a wrong refusal
            try:
                count -= int(ecp_core(s.capitalize(), basis))
            except Exception:
                return None
        cap += nbf[0]
    return cap, float(count), ""


def check_input(inp: ManyBodyInput, *, local: bool = True) -> None:
    """Structural checks QCManyBody would only fail on later (or not at all)."""
    nfrag = len(inp.molecule.fragments) if inp.molecule.fragments is not None else 0
    if nfrag < 2:
        raise InputError(
            f"the molecule has {nfrag} fragment(s); a many-body expansion needs at least two. "
            "Separate fragments with '--' lines in the geometry string or set 'fragments'."
        )
    max_nbody = inp.specification.keywords.max_nbody
    if max_nbody is not None and max_nbody > nfrag:
        raise InputError(
            f"max_nbody={max_nbody} is larger than the number of fragments ({nfrag}): "
            f"use max_nbody <= {nfrag}"
        )
    # Only specs some level runs: QCManyBody's own test inputs carry unused specs for other programs.
    specs = used_specs(inp)
    check_programs({spec.program for spec in specs.values()}, local=local)
    for spec in specs.values():
        if spec.program == "pyscf":  # basis sets / ECPs PySCF cannot resolve, unknown methods: before any run
            from ..harnesses.pyscf import check_model

            check_model(inp.molecule.symbols, spec.model)
    check_embedding(inp)
    check_fragment_electrons(inp)
    bsse = {str(getattr(b, "value", b)) for b in (inp.specification.keywords.bsse_type or [])}
    if bsse & {"cp", "vmfc"} and any(s.program == "mopac" for s in inp.specification.specification.values()):
        from .._logs import get_logger

        # Same numbers as QCManyBody's own computer, but physically meaningless: say so.
        get_logger().warning("QCEngine's MOPAC harness writes ghost atoms as real atoms: cp/vmfc fragments are "
                             "computed with every ghost as a real atom, so these energies are not a BSSE "
                             "correction (use nocp with MOPAC)", bsse=sorted(bsse))


def expand_scratch(scratch_directory: str | os.PathLike[str]) -> str:
    """``$VAR``/``${VAR}`` and ``~`` expanded as QCEngine expands its task_config; the directory must exist.

    QCEngine would turn a path still starting with ``$`` (an unset variable) into "no scratch
    directory" and put scratch files in the system temporary directory: refused here instead.
    """
    given = os.fspath(scratch_directory)
    if not isinstance(given, str) or not given.strip():
        raise InputError(f"scratch_directory must name a directory, got {scratch_directory!r}")
    scratch = os.path.expanduser(os.path.expandvars(given))
    if "$" in scratch:
        raise InputError(f"scratch_directory {given!r}: environment variable(s) in it are not set (expanded to "
                         f"{scratch!r}): set them or give the directory itself")
    if not Path(scratch).is_dir():
        shown = given if scratch == given else f"{given!r} (= {scratch!r})"
        raise InputError(f"scratch_directory {shown} does not exist or is not a directory: create it first")
    return scratch


def make_options(
    *,
    ncores: Any = None,
    memory: Any = None,
    fragment_ncores: Any = None,
    fragment_memory: Any = None,
    level_barrier: bool = False,
    scratch_directory: str | os.PathLike[str] | None = None,
    retries: Any = 0,
    timeout: Any = None,
    on_error: str = "raise",
    on_event: Callable[[Any], Any] | None = None,
    order: str = "cost",
) -> RunOptions:
    """Validate run options and fill the defaults."""
    if order not in ("cost", "fifo"):
        raise InputError(f"order must be 'cost' or 'fifo', got {order!r}")
    total_cores = int(_positive("ncores", ncores, True)) if ncores is not None else default_ncores()
    total_mem = _positive("memory", memory, False) if memory is not None else default_memory()
    frag_cores = int(_positive("fragment_ncores", fragment_ncores, True)) if fragment_ncores is not None else 1
    if frag_cores > total_cores:
        raise InputError(
            f"fragment_ncores={frag_cores} is more than the run's total ncores={total_cores}: "
            "lower fragment_ncores or raise ncores"
        )
    if fragment_memory is not None:
        frag_mem = _positive("fragment_memory", fragment_memory, False)
        if frag_mem > total_mem + 1e-9:
            raise InputError(
                f"fragment_memory={frag_mem} GiB is more than the run's total memory={total_mem} GiB: "
                "lower fragment_memory or raise memory"
            )
    else:
        frag_mem = round(total_mem / max(1, total_cores // frag_cores), 6)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InputError(f"retries must be a whole number >= 0, got {retries!r}")
    tmo = _positive("timeout", timeout, False) if timeout is not None else None
    if on_error not in ("raise", "continue"):
        raise InputError(f"on_error must be 'raise' or 'continue', got {on_error!r}")
    scratch = expand_scratch(scratch_directory) if scratch_directory is not None else None
    return RunOptions(
        ncores=total_cores,
        memory=total_mem,
        fragment_ncores=frag_cores,
        fragment_memory=frag_mem,
        level_barrier=bool(level_barrier),
        scratch_directory=scratch,
        retries=retries,
        timeout=tmo,
        on_error=on_error,  # type: ignore[arg-type]
        on_event=on_event,
        order=order,
        auto_cores=fragment_ncores is None,
        auto_memory=fragment_memory is None,
    )
