"""Per-fragment limits on the OpenMP and BLAS thread pools of in-process programs.

A fragment's task config gives it ``ncores`` cores, but some in-process harnesses never read it
(QCEngine's ``xtb``: its wheel bundles libgomp and OpenBLAS, each starting one thread per core).
On a busy 2-core machine two worker processes each running 2 spinning OpenMP threads turned 1-ms
GFN2-xTB fragments into ~200-ms ones (docs/performance.md, "Small fragments vs a serial peer").
:func:`limit_threads` caps every pool loaded in this process to the fragment's cores while it runs.

OpenMP's thread count (``omp_set_num_threads``) belongs to the calling thread, so fragments on
threads limit their own pools; BLAS counts are process-global (concurrent fragments with the same
allotment set the same value).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from typing import Any

from ..programs import traits

_lock = threading.Lock()
_controller: Any = None
_loaded: set[str] = set()
#: Programs whose first fragment in this process has finished (after it, the pools are rescanned once).
_ran: set[str] = set()


def load_library(program: str) -> None:
    """Import ``program``'s native libraries now (``ProgramTraits.library``), so their pools are known.

    A missing module is left to the fragment's own compute to report.
    """
    module = traits(program).library
    if not module or module in _loaded:
        return
    global _controller
    with _lock:
        if module in _loaded:
            return
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
        _loaded.add(module)
        _controller = None  # rescan: the new libraries' pools


def _get_controller() -> Any:
    global _controller
    with _lock:
        if _controller is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:  # an optional limit, never a requirement
                return None
            # One controller per process: its ``limit`` costs ~0.01 ms, a fresh scan ~0.5 ms.
            _controller = ThreadpoolController()
        return _controller


def limit_threads(program: str, ncores: int | None) -> contextlib.AbstractContextManager[Any]:
    """A context that caps this process's OpenMP/BLAS pools to ``ncores`` for an in-process ``program``.

    A no-op for programs run as subprocesses (they get their cores from QCEngine's environment),
    without an allotment, or without threadpoolctl.
    """
    if not ncores or not traits(program).in_process:
        return contextlib.nullcontext()
    load_library(program)
    controller = _get_controller()
    if controller is None:
        return contextlib.nullcontext()
    if program in _ran:
        return controller.limit(limits=int(ncores))
    return _first(program, controller.limit(limits=int(ncores)))


@contextlib.contextmanager
def _first(program: str, limit: Any) -> Any:
    """The first fragment of ``program`` here: afterwards rescan, so libraries it loaded itself (a program
    without ``ProgramTraits.library``) are limited from its second fragment on."""
    global _controller
    try:
        with limit:
            yield
    finally:
        with _lock:
            if program not in _ran:
                _ran.add(program)
                _controller = None
