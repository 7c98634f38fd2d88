"""Input stage: accept what users have (models, dicts, JSON/YAML/XYZ files), trust nothing they say about themselves.

Reading and validating the ``ManyBodyInput`` lives here; the checks that need programs or basis
sets are in :mod:`.checks`, run options in :mod:`.options`, charge/multiplicity filling in
:mod:`.chgmult`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qcmanybody.models.v2 import ManyBodyInput

from ..errors import InputError, describe_validation
from .chgmult import chgmult_problem, coordinate_problem, fill_fragment_chgmult

_pydantic_message = describe_validation


def _prepare(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Make the molecule's fragment charges/multiplicities explicit before it is validated.

    A ``validated`` flag in the data is dropped: QCElemental checks the molecule whatever it says.
    """
    check_finite(data, source)
    if isinstance(data.get("molecule"), Mapping):
        mol = dict(data["molecule"])
        mol.pop("validated", None)
        data["molecule"] = fill_fragment_chgmult(mol, f"the molecule of {source}")
        problem = coordinate_problem(mol.get("geometry")) or chgmult_problem(data["molecule"])
        if problem:
            raise InputError(f"the molecule of {source} is not valid: {problem}")
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

    if _is_molecule(data):
        raise InputError(f"{source} is {_IS_A_MOLECULE}: {_MOLECULE_USAGE}")
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


def read_text_file(path: Path, what: str = "input file", *, expect: str = "a JSON, YAML or XYZ file",
                   limit: int = MAX_INPUT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes, else :class:`InputError`.

    Every file the program reads on a user's word goes through here (inputs, XYZ, constraint files,
    scheduler files, saved results): directories, FIFOs and devices are refused before they are
    opened (reading a FIFO or ``/dev/zero`` would block or never end), the read is bounded, and the
    bytes must be UTF-8. ``what`` names the file in messages (``"--constraints file"``), ``expect``
    says what should have been given.
    """
    name = str(path)
    size = check_input_path(path, what, expect=expect, limit=limit)
    try:
        with path.open("rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"{what} {name!r} cannot be read: {exc.strerror or exc}. Check its permissions") from None
    if raw.startswith(b"SQLite format 3\x00"):
        raise InputError(f"{what} {name!r} is an SQLite database (a qcmb_async result store?), not {expect}: "
                         f"to see a result store's runs and fragments use 'qcmb-async report {name}'")
    if len(raw) > limit or len(raw) < size:
        raise InputError(f"{what} {name!r} changed while it was read, or is larger than the {limit} "
                         "bytes an input may have")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"{what} {name!r} is not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line} "
                         f"(a Latin-1 or Windows accented letter, or a binary file?). Save the file as UTF-8 "
                         f"({expect})") from None


def check_input_path(path: Path, what: str = "input file", *, expect: str = "a JSON, YAML or XYZ file",
                     limit: int = MAX_INPUT_BYTES) -> int:
    """Size in bytes of ``path`` if it is a regular file no larger than ``limit``, else InputError."""
    name = str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{what} {name!r} does not exist: check the path") from None
    except OSError as exc:  # ENAMETOOLONG, ENOTDIR, EACCES on a parent, ELOOP...
        raise InputError(f"{what} {name[:200]!r} cannot be used: {exc.strerror or exc}. Give the path of a "
                         f"readable file ({expect})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {name!r} is a directory: give {expect}")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what} {name!r} is not a regular file (a FIFO, device or socket): save the input to a "
                         f"file and give its path ({expect})")
    if info.st_size > limit:
        raise InputError(f"{what} {name!r} has {info.st_size} bytes, more than the {limit} an input may "
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


#: How to make a ManyBodyInput out of a molecule (a string, a Molecule dict or file).
_MOLECULE_USAGE = ("pass a ManyBodyInput (or its dict / JSON text) or the path of a JSON/YAML file; for a molecule "
                   "build one: ManyBodyInput(molecule=Molecule.from_data(text), specification={...}), "
                   "or save it as an XYZ file with '--' lines between fragments for the command line")
_IS_A_MOLECULE = "a molecule, not a ManyBodyInput (it says nothing of the method, program or BSSE treatment)"


def _is_molecule(data: Mapping[str, Any]) -> bool:
    """A QCSchema Molecule dict (not a ManyBodyInput holding one)."""
    if "specification" in data or "molecule" in data:
        return False
    return data.get("schema_name") == "qcschema_molecule" or ("symbols" in data and "geometry" in data)


def _not_a_path(text: str) -> InputError:
    """The error for a string that is neither JSON nor a usable path (a molecule string, say)."""
    from qcelemental.models.v2 import Molecule

    try:
        Molecule.from_data(text)
    except Exception:
        return InputError(f"the input string {text[:60]!r}... is neither JSON nor the path of a file: "
                          f"{_MOLECULE_USAGE}")
    return InputError(f"the input string is {_IS_A_MOLECULE}: {_MOLECULE_USAGE}")


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
    problem = coordinate_problem(data.get("geometry"))
    if problem:
        raise InputError(f"the molecule of {source} is not valid: {problem}")
    try:
        Molecule(**data)
    except Exception as exc:
        problem = chgmult_problem(data)
        if problem:
            raise InputError(f"the molecule of {source} is not valid: {problem}") from None
        raise InputError(f"the molecule of {source} is not valid: {_short_error(exc)}. Correct the molecule as "
                         "this says (a 'validated' flag does not skip this check)") from None


def _short_error(exc: Exception) -> str:
    text = _pydantic_message(exc) if callable(getattr(exc, "errors", None)) else str(exc)
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, InputError) else text


