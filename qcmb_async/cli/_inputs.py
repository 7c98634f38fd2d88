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
