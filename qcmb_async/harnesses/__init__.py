"""QCEngine program harnesses that QCEngine itself does not ship (currently: PySCF).

Registration is per process: every process that runs fragments (including worker
processes) must call :func:`register_harnesses` before ``qcengine.compute(..., "pyscf")``.
"""

from __future__ import annotations

import importlib.util
import threading

__all__ = ["register_harnesses"]

_lock = threading.Lock()


def _pyscf_importable() -> bool:
    """True if pyscf can be imported, without importing it (cheap)."""
    try:
        return importlib.util.find_spec("pyscf") is not None
    except (ImportError, ValueError):
        return False


def register_harnesses() -> bool:
    """Register the PySCF harness with QCEngine, idempotently; cheap to call repeatedly.

    Registers only if pyscf is importable and QCEngine has no program named ``"pyscf"`` yet
    (a future QCEngine harness, or one registered by someone else, is never replaced).

    Returns:
        True if a program named ``"pyscf"`` is registered with QCEngine after the call.
    """
    from qcengine.programs.base import programs, register_program

    if "pyscf" in programs:  # fast path: a dict lookup
        return True
    if not _pyscf_importable():
        return False
    with _lock:  # two threads registering at once would make register_program raise
        if "pyscf" not in programs:
            from .pyscf import PySCFHarness

            register_program(PySCFHarness())
    return True
