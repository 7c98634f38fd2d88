"""What the commands read and write: XYZ or ManyBodyInput files, output paths, the store."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._console import Usage
from ._options import Driver, XyzOptions


def _ints(name: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--{name} takes whole numbers, one per fragment, comma separated; got {text!r}") from None


_XYZ_ONLY = ("method", "basis", "program", "bsse", "max_nbody", "keywords", "charge", "multiplicity")


def _load(path: Path, xyz: XyzOptions) -> Any:
    """The ``run_manybody`` input for ``path``: a ManyBodyInput for .xyz, else the path itself."""
    method, program, driver = xyz.method, xyz.program, xyz.driver
    from .._core.inputs import check_input_path

    check_input_path(path)  # a directory, FIFO or device: refused before anything opens it
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
                        multiplicities=_ints("multiplicity", xyz.multiplicity))
    extra = [f"--{k.replace('_', '-')}" for k, v in vars(xyz).items() if v]
    if extra:
        verb = "applies" if len(extra) == 1 else "apply"
        raise Usage(f"{', '.join(extra)} {verb} to .xyz inputs only: {str(path)!r} is a ManyBodyInput (JSON/YAML) "
                    "that carries its own specification; edit it instead")
    return path


def _check_writable(option: str, path: Path | None) -> None:
    if path is None:
        return
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise Usage(f"{option} {str(path)!r}: directory {str(parent)!r} does not exist")


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
        resolved = out.expanduser().resolve()
        same = str(resolved) in forbidden
        with contextlib.suppress(OSError):  # hard links and bind mounts: same inode
            same = same or (resolved.exists() and target.exists() and os.path.samefile(resolved, target))
        if same:
            raise Usage(f"--{option} {str(out)!r} is the result store {str(path)!r} (or one of its -wal/-shm "
                        "files): writing the result there would destroy every stored fragment. Give another "
                        "output path")
