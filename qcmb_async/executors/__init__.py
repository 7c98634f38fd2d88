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


def _auto(in_process: list[str], scheduler: Any) -> tuple[str, str]:
    """``executor="auto"``: the executor's name and the reason, from the programs' traits.

    Threads unless some in-process program holds the GIL or keeps process-global state: worker
    processes cost a fresh interpreter each (~1 s of imports) and a pickled hand-off per fragment,
    which for millisecond fragments (tblite, xtb) outweighs the chemistry (docs/performance.md,
    "Small fragments vs a serial peer").
    """
    if scheduler is not None:
        return "dask", "a Dask scheduler was given"
    # psi4 with psiapi is in ``in_process`` though its traits say subprocess; neither flag is set for it.
    unsafe = [p for p in in_process if not (traits(p).releases_gil and traits(p).thread_safe)]
    if unsafe:
        return "processes", f"in-process program(s) {unsafe}: GIL and process-global state"
    if in_process:
        return "threads", (f"in-process program(s) {in_process} release the GIL and are thread-safe: threads "
                           "start at once and hand fragments over without pickling")
    return "threads", "programs run as subprocesses: threads are enough"


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
        name, reason = _auto(in_process, scheduler)
        log.info("executor chosen", executor=name, programs=sorted(programs), reason=reason)
    factory = EXECUTORS.get(name)
    if factory is None:
        raise InputError(f"unknown executor {choice!r}: use one of {', '.join(names)}")
    if name == "threads" and psiapi:
        raise InputError(_PSIAPI_ON_THREADS)
    return factory(options, in_process, scheduler)
