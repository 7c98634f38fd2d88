"""``qcmb-async --version``: this package's version, its QC stack's and the programs found here.

Cheap on purpose: installed distributions are read from their metadata (nothing is imported)
and executables are looked up on ``PATH`` (none is started), so the command answers in well
under a second even where a program's own availability check is slow (Psi4's spawns Python).
"""

from __future__ import annotations

import importlib.metadata
import shutil

#: Python packages qcmb_async is built on.
STACK = ("qcengine", "qcmanybody", "qcelemental")
#: Programs, as (name, pip distribution or None, executable or None): the distribution is tried first.
PROGRAMS: tuple[tuple[str, str | None, str | None], ...] = (
    ("pyscf", "pyscf", None),
    ("tblite", "tblite", None),
    ("nwchem", None, "nwchem"),
    ("mopac", None, "mopac"),
    ("psi4", "psi4", "psi4"),
)


def _distribution(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _program(dist: str | None, exe: str | None) -> str:
    """``"2.15.0"`` for a pip-installed program, ``"found at /usr/bin/nwchem"`` for an executable, else
    ``"not found"``. Executables are not run, so their version is not shown."""
    if dist is not None and (version := _distribution(dist)) is not None:
        return version
    if exe is not None and (path := shutil.which(exe)) is not None:
        return f"found at {path} (version not checked)"
    return "not found"


def version_lines() -> list[str]:
    """One line per item: ``qcmb-async 0.1.0``, then the stack's versions, then each program's."""
    from .._version import __version__

    width = max(len(n) for n in (*STACK, *(p[0] for p in PROGRAMS)))
    lines = [f"qcmb-async {__version__}"]
    lines += [f"  {name:<{width}}  {_distribution(name) or 'not found'}" for name in STACK]
    lines.append("programs:")
    lines += [f"  {name:<{width}}  {_program(dist, exe)}" for name, dist, exe in PROGRAMS]
    return lines
