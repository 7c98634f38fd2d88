"""Executors: where fragments run, behind one protocol (:class:`~qcmb_async.executors.base.Executor`).

Built in: ``"threads"`` (:class:`~qcmb_async.executors.threads.ThreadExecutor`).
``"auto"`` chooses per program and logs the choice.
"""

from __future__ import annotations

from typing import Any

from .._core.logs import get_logger
from ..errors import InputError
from .base import Executor, FragmentJob, JobOutcome

__all__ = ["EXECUTORS", "Executor", "FragmentJob", "JobOutcome", "resolve_executor"]

log = get_logger()

#: Programs QCEngine runs inside the Python process (GIL-bound, process-global state).
IN_PROCESS_PROGRAMS = frozenset({"pyscf", "rdkit", "torchani", "xtb", "openmm", "mace", "aimnet2", "psi4-api"})

EXECUTORS = ("threads",)


def resolve_executor(choice: str | Executor, programs: set[str], options: Any) -> Executor:
    """Turn ``executor=`` into an :class:`Executor` instance, refusing unsafe explicit choices."""
    from .threads import ThreadExecutor

    if not isinstance(choice, str):
        if not isinstance(choice, Executor):
            raise InputError(f"executor must be one of {(*EXECUTORS, 'auto')} or an Executor, got {choice!r}")
        return choice
    name = choice.lower()
    if name == "auto":
        log.info("executor chosen", executor="threads", programs=sorted(programs),
                 reason="only the thread executor is available in this version")
        return ThreadExecutor(max_workers=options.slots)
    if name == "threads":
        return ThreadExecutor(max_workers=options.slots)
    raise InputError(f"unknown executor {choice!r}: use one of {', '.join((*EXECUTORS, 'auto'))}")
