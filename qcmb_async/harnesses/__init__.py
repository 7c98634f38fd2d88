"""QCEngine program harnesses that QCEngine itself does not ship or cannot run here.

* ``pyscf``: QCEngine 0.52 has no PySCF harness (:mod:`.pyscf`).
* ``psi4`` before 1.4 (Debian's 1.3.2): QCEngine's harness sends it QCSchema v2, which it
  cannot read (:mod:`.psi4_legacy`); newer psi4 keeps QCEngine's harness.

Registration is per process: every process that runs fragments (including worker
processes) must call :func:`register_harnesses` before ``qcengine.compute(..., "pyscf")``.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading

from ..settings import get_settings

__all__ = ["PSI4_HARNESS_ENV", "register_harnesses"]

_lock = threading.Lock()
_psi4_done = False

#: ``QCMB_ASYNC_PSI4_HARNESS=qcengine`` keeps QCEngine's own Psi4 harness whatever the version.
PSI4_HARNESS_ENV = "QCMB_ASYNC_PSI4_HARNESS"


def _register_psi4() -> None:
    """Put the legacy Psi4 harness under ``"psi4"`` once per process if a ``psi4`` executable exists.

    Starts no program: the version is asked on first use, and for psi4 >= 1.4 QCEngine's own
    harness goes back into the registry then. Without psi4 on PATH this is one ``which``.
    """
    global _psi4_done
    if _psi4_done:
        return
    with _lock:
        if _psi4_done:
            return
        if get_settings().psi4_harness != "qcengine" and shutil.which("psi4") is not None:
            from .psi4_legacy import install

            install()
        _psi4_done = True


def _pyscf_importable() -> bool:
    """True if pyscf can be imported, without importing it (cheap)."""
    try:
        return importlib.util.find_spec("pyscf") is not None
    except (ImportError, ValueError):
        return False


def register_harnesses() -> bool:
    """Register qcmb_async's harnesses with QCEngine, idempotently; cheap to call repeatedly.

    PySCF: registered only if pyscf is importable and QCEngine has no program named
    ``"pyscf"`` yet (a future QCEngine harness, or one registered by someone else, is never
    replaced). Psi4: see :func:`_register_psi4` (opt out with ``QCMB_ASYNC_PSI4_HARNESS=qcengine``).

    Returns:
        True if a program named ``"pyscf"`` is registered with QCEngine after the call.
    """
    from qcengine.programs.base import programs, register_program

    _register_psi4()
    if "pyscf" in programs:  # fast path: a dict lookup
        return True
    if not _pyscf_importable():
        return False
    with _lock:  # two threads registering at once would make register_program raise
        if "pyscf" not in programs:
            from .pyscf import PySCFHarness

            register_program(PySCFHarness())
    return True
