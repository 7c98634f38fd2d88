"""The one function that touches QCEngine, the same in every executor."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import threading
import time
import traceback
from typing import Any

from .._core.contract import ErrorType, FragmentJob, JobOutcome
from .._logs import get_logger
from ..harnesses import direct_runner
from .mpi import mpi_task_config
from .seams import FRAGMENT, FragmentContext, install_seams, prime_qcengine
from .threadlimit import limit_threads


def prepare_worker() -> None:
    """Make this process ready to run fragments: PySCF harness registered, seams in, QCEngine primed."""
    from ..harnesses import register_harnesses

    register_harnesses()
    install_seams()
    prime_qcengine()


log = get_logger()

_warm_lock = threading.Lock()
_warmed: set[str] = set()


def warm_program(name: str) -> None:
    """Run a harness's one-off checks (``found``, ``get_version``) once per process.

    Harnesses cache the version, but concurrent first fragments would each start the
    program to ask for it; one warm-up under a lock costs one program start, not N.
    """
    if name in _warmed:
        return
    with _warm_lock:
        if name in _warmed:
            return
        import qcengine

        # On failure the fragment's own compute() reports the real error.
        with contextlib.suppress(Exception):
            qcengine.get_program(name).get_version()
        _warmed.add(name)


def killed_by_signal(exits: list[tuple[str, int, int | None]]) -> str:
    """``"program nwchem (pid 123) was killed by SIGKILL"`` for the first program ended by a signal, else ``""``."""
    for name, pid, code in exits:
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            return f"program {name} (pid {pid}) was killed by {sig}"
    return ""


def _worker_name() -> str:
    thread = threading.current_thread()
    return f"{socket.gethostname()}:{os.getpid()}:{thread.name}:{thread.native_id}"


def execute_job(job: FragmentJob) -> JobOutcome:
    """Run one fragment with QCEngine and return its outcome (never raises for QCEngine errors).

    Reads the fragment's configuration from :data:`FRAGMENT` when the executor set it (threads
    inherit it from the scheduler task's context); otherwise sets it here (processes, Dask).
    """
    import qcengine
    from qcelemental.models.v2 import AtomicInput

    ctx = FRAGMENT.get()
    token = None
    if ctx is None or ctx.label != job.label:
        ctx = FragmentContext(label=job.label, task_config=dict(job.task_config))
        token = FRAGMENT.set(ctx)
    ctx.started.set()
    prepare_worker()
    # Cores as MPI ranks for programs that take them no other way (NWChem), on this host's launcher.
    ctx.task_config = mpi_task_config(job.program, ctx.task_config)
    warm_program(job.program)
    host = socket.gethostname()
    start = time.time()
    try:
        if ctx.cancelled.is_set():
            raise RuntimeError(f"fragment {job.label} was cancelled before it started")
        # QCEngine pops keys from the caller's input and harnesses edit shallow copies.
        if isinstance(job.atomic_input, dict):
            inp = AtomicInput(**copy.deepcopy(job.atomic_input))
        else:
            # What QCEngine and harnesses write to is the specification (compute pops its local
            # config from specification.extras; harnesses edit model, keywords and extras). The
            # molecule, by far the largest part, is only read, so it is shared, not deep-copied.
            src = job.atomic_input
            inp = src.model_copy(update={"specification": src.specification.model_copy(deep=True)})
        # In-process programs whose harness ignores ncores (xtb) must not start a thread per core each.
        with limit_threads(job.program, ctx.task_config.get("ncores")):
            # Our tblite harness runs without qcengine.compute's per-call cost (same result).
            direct = direct_runner(job.program)
            out: Any = direct(inp, ctx.task_config) if direct is not None else qcengine.compute(
                inp, job.program, raise_error=False, task_config=dict(ctx.task_config), return_version=2
            )
        end = time.time()
        success = bool(getattr(out, "success", False))
        # A success travels as the AtomicResult itself (threads share it; processes pickle
        # it); a failure as a dict, so its error survives whatever type QCEngine returned.
        data: Any = out
        err: dict[str, Any] = {}
        if not success:
            data = out.model_dump() if hasattr(out, "model_dump") else dict(out)
            err = data.get("error") or {}
        log.debug("qcengine compute returned", worker=_worker_name(), wall_time=round(end - start, 4),
                  success=success)
        if ctx.cancelled.is_set() and not success:
            err = {"error_type": ErrorType.CANCELLED, "error_message": f"fragment {job.label} was cancelled"}
        elif not success and (killed := killed_by_signal(ctx.exits)):
            # QCEngine then reports whatever parsing the truncated output tripped over (NWChem:
            # KeyError 'CURRENT ENERGY'); the signal is the cause, and it is worth a retry.
            err = {"error_type": ErrorType.PROGRAM_KILLED,
                   "error_message": f"{killed}\n\n{err.get('error_type', '')}: {err.get('error_message', '')}"}
        return JobOutcome(
            label=job.label,
            result=data,
            success=success,
            start=start,
            end=end,
            host=host,
            worker=_worker_name(),
            pid=os.getpid(),
            error_type=None if success else err.get("error_type", "UnknownError"),
            error_message=None if success else err.get("error_message", ""),
        )
    except Exception as exc:  # anything QCEngine let escape (e.g. outside its error wrapper)
        return JobOutcome.failure(job, type(exc).__name__, f"{exc}\n{traceback.format_exc()}", start=start,
                                  host=host, worker=_worker_name(), pid=os.getpid())
    finally:
        ctx.done.set()
        if token is not None:
            FRAGMENT.reset(token)
