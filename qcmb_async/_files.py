"""Files written whole or not at all: a temporary file in the same directory, then ``os.replace``.

A full disk, a quota or a signal mid-write then leaves the previous file (or none), never a truncated one,
and the error names the path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | os.PathLike[str], data: str | bytes | Callable[[IO[bytes]], Any]) -> None:
    """Write ``data`` (text as UTF-8, bytes, or a function writing to the open binary file) to ``path`` atomically.

    The file gets the mode a plain ``open(path, "w")`` would give (the existing file's, else 0666 minus the
    umask). Raises ``OSError`` (with ``filename`` set to ``path``) when anything fails; the temporary file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _mode(path))
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        raise


def _mode(path: Path) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
