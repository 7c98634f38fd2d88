"""Program versions for the result store's keys, asked once per process per program.

A stored result is reused only by a run of the same program *version* (and, for the harnesses
qcmb_async ships, the same harness version): :func:`program_version` is part of every fragment's
content key (:func:`qcmb_async._core.plan.fragment_key`). Asking costs from microseconds (MOPAC,
xtb) to about 0.4 s (psi4, a subprocess) and 1.5 s (NWChem: QCEngine's ``get_version`` runs
``nwchem`` on an empty input and calls ``get_config()``), so the answer is cached for the process.
"""

from __future__ import annotations

import re
import subprocess
import threading

from .._logs import get_logger

__all__ = ["UNKNOWN", "clear_cache", "program_version", "program_versions"]

UNKNOWN = "unknown"
"""The version of a program that cannot be asked here (not installed on this machine: remote workers only,
or a harness without ``get_version``). Results keyed with it are reused only by runs that cannot ask either."""

#: Programs whose QCEngine 0.52 harness does not report the program's version, and how to ask the program:
#: the MOPAC harness's ``get_version`` returns the constant "2016"; ``mopac -V`` prints "MOPAC version 22.0.6 ...".
VERSION_COMMANDS: dict[str, tuple[list[str], str]] = {
    "mopac": (["mopac", "-V"], r"MOPAC version\s+(\S+)"),
}

_lock = threading.Lock()
_cache: dict[str, str] = {}
log = get_logger()


def program_version(program: str) -> str:
    """``program``'s version as the store keys it: the program's own, ``+harness.N`` for our harnesses.

    Cached per process (one lookup per program, even when threads ask at once); :data:`UNKNOWN` when
    the program cannot be asked here.
    """
    key = program.lower()
    cached = _cache.get(key)
    if cached is not None:
        return cached
    with _lock:
        if key not in _cache:
            _cache[key] = _lookup(key)
            log.info("program version", program=key, version=_cache[key])
        return _cache[key]


def program_versions(programs: set[str] | list[str]) -> dict[str, str]:
    """``{program: version}`` for several programs (sorted by name)."""
    return {p: program_version(p) for p in sorted({str(p).lower() for p in programs})}


def clear_cache() -> None:
    """Forget every cached version (an upgrade inside a long-lived process; tests)."""
    with _lock:
        _cache.clear()


def _lookup(name: str) -> str:
    import qcengine

    from ..harnesses import register_harnesses

    register_harnesses()
    try:
        harness = qcengine.get_program(name, check=False)
        if not harness.found():
            return UNKNOWN
        command = VERSION_COMMANDS.get(name)
        version = _ask(*command) if command is not None else str(harness.get_version())
    except Exception as exc:  # a harness without get_version, a program that will not answer
        log.warning("program version unknown", program=name, reason=f"{type(exc).__name__}: {exc}"[:300])
        return UNKNOWN
    ours = getattr(harness, "qcmb_harness_version", None)
    harness_version = ours() if callable(ours) else None
    return f"{version}+harness.{harness_version}" if harness_version is not None else version


def _ask(command: list[str], pattern: str) -> str:
    """Run ``command`` (a few ms) and take the version from its output."""
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    found = re.search(pattern, proc.stdout + proc.stderr)
    if found is None:
        raise RuntimeError(f"`{' '.join(command)}` printed no version ({(proc.stdout + proc.stderr)[:200]!r})")
    return found.group(1)
