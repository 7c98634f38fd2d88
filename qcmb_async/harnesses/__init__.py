"""QCEngine program harnesses that QCEngine itself does not ship or cannot run here.

* ``pyscf``: QCEngine 0.52 has no PySCF harness (:mod:`.pyscf`).
* ``tblite``: nor a tblite (GFN-xTB) one (:mod:`.tblite`).
* ``psi4`` before 1.4 (Debian's 1.3.2): QCEngine's harness sends it QCSchema v2, which it
  cannot read (:mod:`.psi4_legacy`); newer psi4 keeps QCEngine's harness.

Registration is per process: every process that runs fragments (including worker
processes) must call :func:`register_harnesses` before ``qcengine.compute(..., "pyscf")``
(or ``"tblite"``).
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
from collections.abc import Callable
from typing import Any

from ..settings import get_settings

__all__ = ["PSI4_HARNESS_ENV", "direct_runner", "register_harnesses"]

_lock = threading.Lock()
_psi4_done = False
_missing: set[str] = set()

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


def _importable(module: str) -> bool:
    """True if ``module`` can be imported, without importing it (cheap)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _register(name: str, module: str, cls: str) -> bool:
    """Register our harness ``cls`` of ``.module`` under ``name`` unless QCEngine already has that name.

    A future QCEngine harness, or one registered by someone else, is never replaced; nothing happens
    when the program's Python package (same name) is not importable. True if ``name`` is registered after.
    """
    from qcengine.programs.base import programs, register_program

    if name in programs:  # fast path: a dict lookup
        return True
    if name in _missing or not _importable(name):
        _missing.add(name)  # looked up once per process: this runs before every fragment
        return False
    with _lock:  # two threads registering at once would make register_program raise
        if name not in programs:
            harness = getattr(importlib.import_module(module, __name__), cls)
            register_program(harness())
    return True


def register_harnesses() -> bool:
    """Register qcmb_async's harnesses with QCEngine, idempotently; cheap to call repeatedly.

    PySCF and tblite: each registered only if its package is importable and QCEngine has no program
    of that name yet (see :func:`_register`). Psi4: see :func:`_register_psi4` (opt out with
    ``QCMB_ASYNC_PSI4_HARNESS=qcengine``).

    Returns:
        True if a program named ``"pyscf"`` is registered with QCEngine after the call.
    """
    _register_psi4()
    _register("tblite", ".tblite", "TBLiteHarness")
    return _register("pyscf", ".pyscf", "PySCFHarness")


def direct_runner(program: str) -> Callable[[Any, Any], Any] | None:
    """``run(atomic_input, task_config)`` returning what ``qcengine.compute(..., program, raise_error=False,
    return_version=2)`` would, without its per-call cost; ``None`` when ``program`` has none.

    Only for our own harness registered under that name (tblite: :func:`.tblite.run_direct`), never for
    one QCEngine or someone else registered.
    """
    if program != "tblite" or "tblite" in _missing:
        return None
    from qcengine.programs.base import programs

    harness = programs.get("tblite")
    if harness is None or type(harness).__module__ != f"{__name__}.tblite":
        return None
    from .tblite import run_direct

    return run_direct
