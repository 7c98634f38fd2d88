"""Executors: where fragments run, behind one contract (:class:`~qcmb_async._core.contract.Executor`).

Built in, found by name in :data:`EXECUTORS`: ``"threads"``
(:class:`~qcmb_async.executors.threads.ThreadExecutor`), ``"processes"``
(:class:`~qcmb_async.executors.processes.ProcessExecutor`) and ``"dask"``
(:class:`~qcmb_async.executors.dask.DaskExecutor`, extra ``qcmb_async[dask]``). ``"auto"`` chooses
from the programs' traits (:mod:`qcmb_async.programs`) and logs the choice. A new executor is one
more factory in :data:`EXECUTORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._core.contract import Executor, FragmentJob, JobOutcome
from .._logs import get_logger
from ..errors import InputError
from ..programs import traits

__all__ = ["EXECUTORS", "Executor", "FragmentJob", "JobOutcome", "resolve_executor"]

log = get_logger()

_PSIAPI_ON_THREADS = (
    "executor='threads' cannot run Psi4's in-process mode (extras psiapi=True): Psi4's C++ state is "
    "global to the process, so concurrent fragments would corrupt each other. Use "
    "executor='processes' (or 'auto'), or drop psiapi to run Psi4 as a subprocess."
)


def _threads(options: Any, in_process: list[str], scheduler: Any) -> Executor:
    from .threads import ThreadExecutor

    return ThreadExecutor(max_workers=options.slots)


def _processes(options: Any, in_process: list[str], scheduler: Any) -> Executor:
    from .processes import ProcessExecutor

    return ProcessExecutor(max_workers=options.slots, warm=[p for p in in_process if traits(p).in_process])


def _dask(options: Any, in_process: list[str], scheduler: Any) -> Executor:
    try:
        from .dask import DaskExecutor
    except ImportError as exc:
        raise InputError("executor='dask' needs dask.distributed: pip install 'qcmb_async[dask]'") from exc
    return DaskExecutor(scheduler)


#: Executor factories by name: ``factory(options, in_process_programs, scheduler) -> Executor``.
EXECUTORS: dict[str, Callable[[Any, list[str], Any], Executor]] = {
    "threads": _threads,
    "processes": _processes,
    "dask": _dask,
}


def resolve_executor(choice: str | Executor, programs: set[str], options: Any, scheduler: Any = None, *,
                     psiapi: bool = False) -> Executor:
    """Turn ``executor=`` into an :class:`Executor`, refusing unsafe explicit choices.

    ``programs`` are the programs that will run; ``psiapi`` says whether Psi4 runs in-process.
    Raises :class:`~qcmb_async.errors.InputError` for an unknown name or an unsafe choice.
    """
    in_process = sorted(p for p in programs if traits(p).in_process or (p == "psi4" and psiapi))
    names = (*EXECUTORS, "auto")
    if not isinstance(choice, str):
        if not isinstance(choice, Executor):
            raise InputError(f"executor must be one of {names} or an Executor, got {choice!r}")
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
    factory = EXECUTORS.get(name)
    if factory is None:
        raise InputError(f"unknown executor {choice!r}: use one of {', '.join(names)}")
    if name == "threads" and psiapi:
        raise InputError(_PSIAPI_ON_THREADS)
    return factory(options, in_process, scheduler)
