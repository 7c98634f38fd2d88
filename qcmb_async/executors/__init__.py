"""Executors: where fragments run, behind one protocol (:class:`~qcmb_async.executors.base.Executor`).

Built in: ``"threads"`` (:class:`~qcmb_async.executors.threads.ThreadExecutor`),
``"processes"`` (:class:`~qcmb_async.executors.processes.ProcessExecutor`) and ``"dask"``
(:class:`~qcmb_async.executors.dask.DaskExecutor`, extra ``qcmb_async[dask]``).
``"auto"`` chooses per program and logs the choice.
"""

from __future__ import annotations

from typing import Any

from .._core.contract import Executor, FragmentJob, JobOutcome
from .._logs import get_logger
from ..errors import InputError

__all__ = ["EXECUTORS", "IN_PROCESS_PROGRAMS", "Executor", "FragmentJob", "JobOutcome", "resolve_executor"]

log = get_logger()

#: Programs QCEngine runs inside the Python process (GIL-bound, process-global state).
IN_PROCESS_PROGRAMS = frozenset({"pyscf", "rdkit", "torchani", "xtb", "openmm", "mace", "aimnet2"})

EXECUTORS = ("threads", "processes", "dask")

_PSIAPI_ON_THREADS = (
    "executor='threads' cannot run Psi4's in-process mode (extras psiapi=True): Psi4's C++ state is "
    "global to the process, so concurrent fragments would corrupt each other. Use "
    "executor='processes' (or 'auto'), or drop psiapi to run Psi4 as a subprocess."
)


def resolve_executor(choice: str | Executor, programs: set[str], options: Any, scheduler: Any = None, *,
                     psiapi: bool = False) -> Executor:
    """Turn ``executor=`` into an :class:`Executor`, refusing unsafe explicit choices.

    ``programs`` are the input's programs; ``psiapi`` says whether Psi4 runs in-process.
    """
    in_process = sorted(p for p in programs if p in IN_PROCESS_PROGRAMS or (p == "psi4" and psiapi))
    if not isinstance(choice, str):
        if not isinstance(choice, Executor):
            raise InputError(f"executor must be one of {(*EXECUTORS, 'auto')} or an Executor, got {choice!r}")
        if psiapi and choice.name == "threads":
            raise InputError(_PSIAPI_ON_THREADS)
        return choice
    name = choice.lower()
    if scheduler is not None and name not in ("dask", "auto"):
        raise InputError(f"scheduler= is only used by executor='dask', not {choice!r}")
    if name == "auto":
        name = "dask" if scheduler is not None else "processes" if in_process else "threads"
        log.info("executor chosen", executor=name, programs=sorted(programs),
                 reason=("a Dask scheduler was given" if scheduler is not None else
                         f"in-process program(s) {in_process}: GIL and process-global state" if in_process else
                         "programs run as subprocesses: threads are enough"))
    if name == "threads":
        if psiapi:
            raise InputError(_PSIAPI_ON_THREADS)
        from .threads import ThreadExecutor

        return ThreadExecutor(max_workers=options.slots)
    if name == "processes":
        from .processes import ProcessExecutor

        return ProcessExecutor(max_workers=options.slots, warm=[p for p in programs if p in IN_PROCESS_PROGRAMS])
    if name == "dask":
        try:
            from .dask import DaskExecutor
        except ImportError as exc:
            raise InputError(
                "executor='dask' needs dask.distributed: pip install 'qcmb_async[dask]'"
            ) from exc
        return DaskExecutor(scheduler)
    raise InputError(f"unknown executor {choice!r}: use one of {', '.join((*EXECUTORS, 'auto'))}")
