"""The async core (``run_manybody``) and its thin sync wrapper (``run``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio

from ._core.assemble import assemble, assemble_through, slim
from ._core.checks import check_input
from ._core.contract import Executor
from ._core.inputs import load_input
from ._core.options import make_options, make_screening
from ._core.plan import Plan, make_plan
from ._core.scheduler import ScheduleOutcome, Scheduler, unwrap_group
from ._logs import get_logger
from .errors import FailureReport, FragmentError, InputError, RunFailed, Terminated
from .executors import resolve_executor

if TYPE_CHECKING:
    from qcmanybody.models.v2 import ManyBodyResult

    from ._core.store import ResultStore

log = get_logger()


def plan_manybody(mbe_input: Any, *, screening: Any = None) -> Plan:
    """Validate ``mbe_input`` and enumerate its fragments without computing anything (blocking).

    ``screening`` as for :func:`run_manybody`: only kept subsets' fragments are planned (energy
    screening: those decided before anything runs); ``plan.screen.summary()`` counts them per order.
    """
    inp = load_input(mbe_input)
    spec = make_screening(screening)
    check_input(inp)
    return _plan(inp, spec)


def _plan(inp: Any, screening: Any = None) -> Plan:
    from pydantic import ValidationError

    try:
        return make_plan(inp, screening)
    except ValidationError as exc:
        raise InputError(f"QCManyBody rejected the input: {exc}") from exc


async def run_manybody(
    mbe_input: Any,
    *,
    ncores: int | None = None,
    memory: float | None = None,
    fragment_ncores: int | None = None,
    fragment_memory: float | None = None,
    executor: str | Executor = "auto",
    level_barrier: bool = False,
    scratch_directory: str | os.PathLike[str] | None = None,
    retries: int = 0,
    timeout: float | None = None,
    on_error: str = "raise",
    on_event: Callable[[Any], Any] | None = None,
    store: str | os.PathLike[str] | None = "default",
    scheduler: Any = None,
    screening: dict[str, Any] | None = None,
) -> ManyBodyResult:
    """Run a many-body expansion with its fragments in parallel; return QCManyBody's result.

    Args:
        mbe_input: ``qcmanybody.models.v2.ManyBodyInput`` (v1 models, dicts, JSON strings and
            JSON/YAML file paths are converted).
        ncores: Total cores the run may use. Default: this process's CPU affinity (Dask: the
            cores the cluster's workers declare).
        memory: Total memory in GiB. Default: 80 % of the memory available now (Dask: the
            workers' declared memory).
        fragment_ncores: Cores per fragment (default 1).
        fragment_memory: GiB per fragment (default: an even share, ``memory / (ncores //
            fragment_ncores)``).
        executor: ``"auto"`` (processes for in-process programs such as PySCF, threads for
            subprocess programs, Dask when ``scheduler`` is given), ``"threads"``,
            ``"processes"``, ``"dask"``, or an :class:`~qcmb_async.executors.base.Executor`.
            An executor instance the caller already entered (``async with ProcessExecutor(...) as
            pool``) is reused as it is and left running: its workers serve run after run.
        scheduler: Dask scheduler address or ``distributed.Client`` (default
            ``$QCMB_ASYNC_DASK_SCHEDULER``) for ``executor="dask"``.
        level_barrier: Finish every n-body level before starting the next. Off by default:
            fragments do not depend on each other, and a barrier leaves cores idle.
        scratch_directory: Parent directory for programs' scratch files.
        retries: Extra attempts for transient failures (QCEngine ``RandomError``, timeouts, dead worker
            processes, program processes killed by a signal: ``ProgramKilled``).
        timeout: Seconds per fragment attempt; the program process is killed after that.
        on_error: ``"raise"`` stops at the first failed fragment (others are cancelled);
            ``"continue"`` computes everything it can, then raises :class:`RunFailed`.
        on_event: Sync or async callable receiving :mod:`qcmb_async.events` progress events.
        screening: Screened expansion. ``{"distance": {2: 9.0, 3: 7.0}}``: keep a k-subset only if every
            pair of its fragments is within the order's cutoff (Å; smallest atom-atom distance, or
            ``"metric": "centroid"``). ``{"energy": {3: 1e-5}}``: keep a k-subset (k >= 3) only if one of its
            (k-1)-subsets has an increment above the threshold (Eh), decided during the run. A subset is
            kept only if all its subsets are; dropped subsets contribute zero increments (energy,
            gradient, Hessian; NoCP, CP and VMFC) and are never computed. Needs ``max_nbody`` below the
            number of fragments and no supersystem level. What was kept is in
            ``result.extras["qcmb_async"]["screening"]``.
        store: SQLite result store path. Finished fragments are committed there at once and
            reused by any later run (resume after a crash: run the same input again).
            ``"default"``: ``$QCMB_ASYNC_STORE`` if set (``none`` disables), else a store in
            the user cache directory. ``None`` disables the store.

    Returns:
        The ``qcmanybody.models.v2.ManyBodyResult`` QCManyBody's sequential computer returns for
        the same input; ``result.extras["qcmb_async"]`` adds per-fragment records and timings.

    Raises:
        InputError: bad input or options, before anything is computed.
        FragmentError: a fragment failed (``on_error="raise"``): names it, keeps QCEngine's error.
        RunFailed: some fragments failed (``on_error="continue"``); ``.report`` has the details.
    """
    # IPython kernels turn an interrupt into a callback that does not wake the event loop.
    async with _interruptible():
        inp = load_input(mbe_input)
        options = make_options(
            ncores=ncores, memory=memory, fragment_ncores=fragment_ncores, fragment_memory=fragment_memory,
            level_barrier=level_barrier, scratch_directory=scratch_directory, retries=retries, timeout=timeout,
            on_error=on_error, on_event=on_event, screening=screening,
        )
        remote = scheduler is not None or executor == "dask" or getattr(executor, "name", None) == "dask"
        # Program checks start subprocesses and planning takes seconds: keep both off the loop.
        await anyio.to_thread.run_sync(functools.partial(check_input, inp, local=not remote))
        specs = inp.specification.specification.values()
        exe = resolve_executor(executor, {s.program for s in specs}, options, scheduler,
                               psiapi=any(s.program == "psi4" and (s.extras or {}).get("psiapi") for s in specs))
        resize = functools.partial(
            make_options, fragment_ncores=fragment_ncores, fragment_memory=fragment_memory, level_barrier=level_barrier,
            scratch_directory=scratch_directory, retries=retries, timeout=timeout, on_error=on_error, on_event=on_event,
            screening=screening)
        async with contextlib.AsyncExitStack() as stack:
            # Worker start-up (seconds for processes) overlaps QCManyBody's enumeration. The executor
            # is entered in this task (its exit runs here too); only planning runs in a child task.
            box: dict[str, Plan] = {}

            async def make() -> None:
                box["plan"] = await anyio.to_thread.run_sync(_plan, inp, options.screening)

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(make)
                    await stack.enter_async_context(exe)
            except BaseExceptionGroup as group:
                raise unwrap_group(group) from None
            plan = box["plan"]
            if (capacity := exe.capacity) is not None and (ncores is None or memory is None):
                # A cluster's size, not this machine's, bounds a distributed run.
                options = resize(ncores=ncores if ncores is not None else max(1, int(capacity[0])),
                                 memory=memory if memory is not None else capacity[1])
            outcome, extras = await _execute(plan, options, exe, store, run_id=uuid.uuid4().hex[:12])
        if outcome.failures:
            report = await anyio.to_thread.run_sync(_failure_report, plan, outcome, extras)
            raise RunFailed(report)
        return await anyio.to_thread.run_sync(assemble, plan, outcome.results, extras)


#: Seconds between event-loop wake-ups inside an IPython kernel (see :func:`_interruptible`).
KERNEL_WAKE_PERIOD = 0.1


def _kernel_needs_wakeups() -> bool:
    return "ipykernel" in sys.modules and threading.current_thread() is threading.main_thread()


async def _keep_awake(period: float) -> None:
    while True:
        await anyio.sleep(period)


@contextlib.asynccontextmanager
async def _interruptible() -> AsyncIterator[None]:
    """Keep a run in a Jupyter/IPython kernel interruptible while the loop has nothing to do.

    ipykernel handles "Interrupt kernel" (SIGINT) by scheduling the cell's cancellation with a
    plain ``call_soon`` from the signal handler, which does not wake a loop blocked in
    ``select()``: the cancellation would wait for the next fragment to finish -- hours for long
    ones. Waking the loop every :data:`KERNEL_WAKE_PERIOD` s bounds that wait. Elsewhere a no-op.
    """
    if not _kernel_needs_wakeups():
        yield
        return
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_keep_awake, KERNEL_WAKE_PERIOD)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise unwrap_group(group) from None


async def _execute(plan: Plan, options: Any, exe: Executor, store: Any, *,
                   run_id: str) -> tuple[ScheduleOutcome, dict[str, Any]]:
    """Schedule ``plan`` on the entered executor ``exe``, with the result store open around it."""
    result_store = await anyio.to_thread.run_sync(open_store, store)
    log.info("run planned", run_id=run_id, fragments=len(plan.fragments), executor=exe.name,
             ncores=options.ncores, memory=options.memory, slots=options.slots,
             store=str(result_store.path) if result_store is not None else None)
    started = time.time()
    try:
        if result_store is not None:
            await anyio.to_thread.run_sync(functools.partial(
                _record_run_quietly, result_store, run_id, input_hash=plan.input_hash, started=started))
        try:
            outcome = await Scheduler(plan, options, exe, run_id=run_id, store=result_store,
                                      partial_result=functools.partial(assemble_through, plan),
                                      keep=functools.partial(slim, plan)).run()
        except BaseException as exc:
            # The run row must not stay 'running' forever: say how it ended.
            if result_store is not None:
                status = "failed" if isinstance(exc, FragmentError) else (
                    "interrupted" if isinstance(exc, KeyboardInterrupt | anyio.get_cancelled_exc_class())
                    else "error")
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_record_end, result_store, run_id, plan.input_hash, started,
                                                   status, exc)
            raise
        extras = _extras(run_id, exe.name, options, outcome)
        if plan.screen is not None:
            extras["screening"] = plan.screen.summary()
        if result_store is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(functools.partial(
                    _record_run_quietly, result_store, run_id, input_hash=plan.input_hash, started=outcome.started,
                    finished=outcome.finished, status="failed" if outcome.failures else "ok",
                    summary={k: v for k, v in extras.items() if k != "fragments"}))
    finally:
        if result_store is not None:
            result_store.close()
    return outcome, extras


def _record_run_quietly(store: Any, run_id: str, **row: Any) -> None:
    """``store.record_run``; a store that cannot be written (disk full) must not lose the computed result."""
    from ._core.store import StoreError

    try:
        store.record_run(run_id, **row)
    except StoreError as exc:
        log.error("run not recorded in the store", run_id=run_id, reason=str(exc))


def _record_end(store: Any, run_id: str, input_hash: str, started: float, status: str, exc: BaseException) -> None:
    reason = "interrupted" if status == "interrupted" else f"{type(exc).__name__}: {str(exc)[:500]}"
    _record_run_quietly(store, run_id, input_hash=input_hash, started=started, finished=time.time(), status=status,
                        summary={"run_id": run_id, "ended": reason})


def open_store(store: str | os.PathLike[str] | None) -> ResultStore | None:
    """Open the result store selected by ``store=`` (see :func:`run_manybody`), or ``None``."""
    from ._core.store import ResultStore, StoreError, store_path

    path = store_path(store)
    if path is None:
        return None
    try:
        return ResultStore(path)
    except StoreError as exc:
        raise InputError(str(exc)) from exc


def _extras(run_id: str, executor: str, options: Any, outcome: ScheduleOutcome) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "executor": executor,
        "ncores": options.ncores,
        "memory": options.memory,
        "fragment_ncores": options.fragment_ncores,
        "fragment_memory": options.fragment_memory,
        "level_barrier": options.level_barrier,
        "wall_time": outcome.finished - outcome.started,
        "started": outcome.started,
        "finished": outcome.finished,
        "peak_cores": outcome.usage.peak_cores,
        "peak_memory": outcome.usage.peak_memory,
        "not_stored": outcome.not_stored,
        "fragments": [rec.as_dict() for rec in outcome.records],
    }


def _failure_report(plan: Plan, outcome: ScheduleOutcome, extras: dict[str, Any]) -> FailureReport:
    failed_levels = {err.level for err in outcome.failures}
    levels = sorted({f.level for f in plan.fragments})
    complete = [lv for lv in levels if lv < min(failed_levels)]
    report = FailureReport(failed=list(outcome.failures), complete_levels=complete)
    if complete:
        report.partial_result = assemble_through(plan, max(complete), outcome.results, extras)
        if report.partial_result is None:
            log.warning("partial result not assembled", through=max(complete))
    return report


def run(mbe_input: Any, **options: Any) -> ManyBodyResult:
    """Blocking :func:`run_manybody` for scripts; also works inside a running loop (Jupyter).

    In a plain script the run uses ``anyio.run``; when an event loop is already running in
    this thread, it runs on a private event-loop thread and this call blocks until it ends.
    Ctrl-C cancels the run in both cases. In a plain script SIGTERM (a batch scheduler's stop)
    cancels it the same way, then raises :class:`~qcmb_async.errors.Terminated` (unless the
    caller installed its own SIGTERM handler).
    """
    call = functools.partial(run_manybody, mbe_input, **options)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        box: dict[str, Any] = {}

        async def main() -> None:
            box["result"] = await call()

        # The result stays out of the loop's main task: asyncio.Runner formats that task (and
        # so the whole ManyBodyResult) on the way out, 0.1 s and more for a large expansion.
        with _sigterm_as_interrupt() as got:
            try:
                anyio.run(main)
            except KeyboardInterrupt:
                if got:
                    raise Terminated(got[0]) from None
                raise
        return box["result"]
    with anyio.from_thread.start_blocking_portal() as portal:
        future = portal.start_task_soon(call)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[list[int]]:
    """While a run owns the main thread, SIGTERM stops it the way Ctrl-C does.

    Batch schedulers (SLURM, PBS, Kubernetes) send SIGTERM before SIGKILL. Python's default
    action ends the process at once, leaving program processes, worker processes and scratch
    directories behind and the store's run row at ``running``. Here SIGTERM is handed to the
    SIGINT handler the event loop installed (it cancels the run: programs killed, scratch
    removed); the yielded list receives the signal number. A handler the caller installed is
    left alone.
    """
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield got
        return

    def on_term(signum: int, frame: Any) -> None:
        got.append(signum)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class RunHandle:
    """A run started by :func:`open_run`: iterate its events, then await its result."""

    def __init__(self, receive: Any, done: anyio.Event, box: dict[str, Any]) -> None:
        self._receive = receive
        self._done = done
        self._box = box

    def __aiter__(self) -> Any:
        return self._receive.__aiter__()

    async def result(self) -> ManyBodyResult:
        """The ``ManyBodyResult``; raises what :func:`run_manybody` raised."""
        await self._done.wait()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["result"]


@contextlib.asynccontextmanager
async def open_run(mbe_input: Any, **options: Any) -> AsyncIterator[RunHandle]:
    """Start :func:`run_manybody` and stream its progress events as an async iterator.

    >>> async with open_run(inp, ncores=8) as handle:
    ...     async for event in handle:
    ...         print(event)
    ...     result = await handle.result()

    Leaving the block before the run ended cancels it.
    """
    if "on_event" in options:
        raise InputError("open_run streams the events itself: do not pass on_event")
    send, receive = anyio.create_memory_object_stream[Any](max_buffer_size=math.inf)
    done = anyio.Event()
    box: dict[str, Any] = {}

    async def worker() -> None:
        async with send:
            try:
                box["result"] = await run_manybody(mbe_input, on_event=send.send, **options)
            except Exception as exc:
                box["error"] = exc
            finally:
                done.set()

    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(worker)
        try:
            yield RunHandle(receive, done, box)
        finally:
            tg.cancel_scope.cancel()
