"""The async core (``run_manybody``): input, plan, schedule and assemble, with the executor picked here."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._core.assemble import assemble, assemble_through, keeps_results, slim
from ._core.checks import check_input
from ._core.contract import Executor
from ._core.gmbe import GMBEInput
from ._core.gmbe_assemble import GMBEResult, assemble_gmbe
from ._core.gmbe_plan import as_gmbe_input, check_gmbe, plan_gmbe
from ._core.inputs import load_input
from ._core.options import make_options, make_screening, options_for
from ._core.outcome import ScheduleOutcome, unwrap_group
from ._core.plan import Plan, input_hash, make_plan
from ._core.resources import ResourcePool
from ._core.scheduler import Scheduler
from ._core.versions import program_versions
from ._logs import get_logger
from .errors import FailureReport, FragmentError, InputError, QCMBAsyncWarning, RunFailed, StoreError
from .executors import resolve_executor
from .settings import get_settings

if TYPE_CHECKING:
    from qcmanybody.models.v2 import ManyBodyResult

    from ._core.store import ResultStore

log = get_logger()


def plan_manybody(mbe_input: Any, *, screening: Any = None) -> Plan:
    """Validate ``mbe_input`` and enumerate its fragments without computing anything (blocking).

    ``screening`` as for :func:`run_manybody`: only kept subsets' fragments are planned (energy
    screening: those decided before anything runs); ``plan.screen.summary()`` counts them per order.
    """
    gmbe = as_gmbe_input(mbe_input)
    if gmbe is not None:  # a generalized MBE: its subsystems, caps and coefficients (a GMBEPlan)
        if screening is not None:
            raise InputError("a GMBE takes distance_cutoffs={order: Å} in its GMBEInput, not screening=")
        check_gmbe(gmbe)
        return plan_gmbe(gmbe)  # type: ignore[return-value]
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
    cluster: Any = None,
    screening: dict[str, Any] | None = None,
) -> ManyBodyResult:
    """Run a many-body expansion with its fragments in parallel; return QCManyBody's result.

    Args:
        mbe_input: ``qcmanybody.models.v2.ManyBodyInput`` (v1 models, dicts, JSON strings and
            JSON/YAML file paths are converted).
        ncores: Total cores the run may use. Default: this process's CPU affinity (Dask: the
            cores the cluster's workers declare, else their threads).
        memory: Total memory in GiB. Default: 80 % of the memory available now (Dask: the
            workers' declared memory, else their memory limits).
        fragment_ncores: Cores per fragment (default: chosen, 1 or more for large fragments; on Dask never
            more than the largest worker or batch job has; more than that is an InputError).
        fragment_memory: GiB per fragment (default: an even share, ``memory / (ncores //
            fragment_ncores)``; on Dask at most the workers' GiB per core).
        executor: ``"auto"`` (processes for in-process programs such as PySCF, threads for
            subprocess programs, Dask when ``scheduler`` is given), ``"threads"``,
            ``"processes"``, ``"dask"``, or an :class:`~qcmb_async.executors.base.Executor`.
            An executor instance the caller already entered (``async with ProcessExecutor(...) as
            pool``) is reused as it is and left running: its workers serve run after run.
        scheduler: Dask scheduler address, ``distributed.Client``, Dask cluster object (e.g. dask-jobqueue's
            ``SLURMCluster``) or scheduler file (a ``pathlib.Path``) for ``executor="dask"`` (default
            ``$QCMB_ASYNC_DASK_SCHEDULER``).
        cluster: Start a batch cluster for this run and stop it after: ``"slurm"``, ``"pbs"``, or a dict /
            :class:`~qcmb_async.executors.hpc.ClusterOptions` with the job sizes (``job_cores``, ``job_memory``
            GiB, ``max_jobs``, ``walltime``, ``queue``...); extra ``qcmb_async[hpc]``. See docs/hpc.md.
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
    given = {"ncores": ncores, "memory": memory, "fragment_ncores": fragment_ncores,
             "fragment_memory": fragment_memory, "level_barrier": level_barrier,
             "scratch_directory": scratch_directory, "retries": retries, "timeout": timeout,
             "on_error": on_error, "on_event": on_event, "screening": screening}
    gmbe = as_gmbe_input(mbe_input)
    if gmbe is not None:  # a generalized MBE: its own plan and assembly on the same scheduler
        async with _interruptible():
            return await _run_gmbe(gmbe, executor=executor, store=store, scheduler=scheduler,  # type: ignore[return-value]
                                   cluster=cluster, **given)
    # IPython kernels turn an interrupt into a callback that does not wake the event loop.
    async with _interruptible():
        remote = (cluster is not None or scheduler is not None or executor == "dask"
                  or getattr(executor, "name", None) == "dask")
        inp, options = _checked_arguments(mbe_input, store, given, remote=remote)
        if cluster is not None:
            executor = _cluster_executor(cluster, executor, scheduler)
        exe = await _checked_executor(inp, options, executor, scheduler)
        # No local keeps (plan, outcome, extras): _result lets go of the plan and the results once assembled.
        return await _result(*await _execute(inp, options, exe, store, given, planner=_plan))


def _checked_arguments(mbe_input: Any, store: Any, given: dict[str, Any], *, remote: bool = False
                       ) -> tuple[Any, Any]:
    """The validated ``ManyBodyInput`` and ``RunOptions``: every argument checked before anything starts.

    ``remote``: a cluster's run, sized once its workers are known; until then this machine's size must not
    refuse a fragment size the workers can give.
    """
    get_settings()  # a bad QCMB_ASYNC_* variable is an InputError now, not in a worker later
    _check_store_argument(store)
    inp = load_input(mbe_input)
    options = make_options(**(_unsized(given) if remote else given))
    _check_screening_orders(inp, options.screening)
    return inp, options


def _check_screening_orders(inp: Any, screening: Any) -> None:
    """Screening orders above the expansion's highest order: an InputError before the store is even opened (the
    plan stage checks the rest, with QCManyBody's computer)."""
    if screening is None:
        return
    kw = inp.specification.keywords
    if getattr(kw, "levels", None):
        return  # the levels decide the highest order: the plan stage checks it
    max_nbody = kw.max_nbody if kw.max_nbody is not None else len(inp.molecule.fragments or [])
    bad = sorted(k for k in screening.orders if k > max_nbody)
    if bad:
        raise InputError(f"screening: order(s) {bad} above max_nbody={max_nbody}: nothing of that order is "
                         f"computed; remove them or raise max_nbody")


def _sized_to_executor(options: Any, exe: Executor, given: dict[str, Any]) -> Any:
    """``options`` sized from the entered executor's workers (a cluster's size, not this machine's, bounds a
    distributed run and its fragments); unchanged for local executors (no capacity)."""
    return sized_options(exe, given) if exe.capacity is not None else options


async def _result(plan: Plan, outcome: ScheduleOutcome, extras: dict[str, Any]) -> ManyBodyResult:
    """QCManyBody's assembled result, or :class:`RunFailed` with what could be assembled (off the loop).

    ``extras["fragments"]`` (empty until now) receives the run's records after assembly, as the plan and the results
    are let go: at 679,120 fragments (an unscreened (H2O)64 MBE(4)) the plan, the results and the records' dicts
    are each hundreds of MB, and only the dicts are part of the result. ``outcome``'s results and records are
    consumed.
    """
    if outcome.failures:
        move_records(outcome, extras["fragments"])
        report = await anyio.to_thread.run_sync(_failure_report, plan, outcome, extras)
        raise RunFailed(report)
    box = {"plan": plan, "results": outcome.results, "extras": extras}
    del plan
    outcome.results = {}
    result = await anyio.to_thread.run_sync(_assemble_consuming, box)
    move_records(outcome, result.extras["qcmb_async"]["fragments"])
    return result


def _assemble_consuming(box: dict[str, Any]) -> ManyBodyResult:
    """:func:`assemble` of the plan and results in ``box``, emptied first: once the result is built nothing holds
    them (not even the worker thread that ran this, whose last call's arguments stay referenced until its next)."""
    plan, results, extras = box.pop("plan"), box.pop("results"), box.pop("extras")
    return assemble(plan, results, extras)


def move_records(outcome: ScheduleOutcome, into: list[dict[str, Any]]) -> None:
    """Append each of ``outcome.records`` to ``into`` as its dict (:meth:`FragmentRecord.as_dict`), in order, and
    drop the records as it goes (``outcome.records`` ends empty): the records and their dicts never all coexist."""
    records, outcome.records = outcome.records, []
    records.reverse()
    while records:
        into.append(records.pop().as_dict())


def _unsized(given: dict[str, Any]) -> dict[str, Any]:
    """``given`` with totals that no fragment size given exceeds (the early check of a cluster's run)."""
    from ._core.resources import default_memory, default_ncores

    out = dict(given)
    for name, per, default in (("ncores", "fragment_ncores", default_ncores), ("memory", "fragment_memory",
                                                                                default_memory)):
        if out.get(name) is None and isinstance(out.get(per), int | float) and not isinstance(out.get(per), bool):
            out[name] = max(default(), out[per])
    return out


def sized_options(exe: Executor, given: dict[str, Any]) -> Any:
    """Run options sized from the entered ``exe``'s workers (see ``options_for``), logged when they are."""
    options = options_for(exe, **given)
    limits = getattr(exe, "limits", None)
    if limits is not None:
        log.info("fragments sized from the workers", source=limits.source, ncores=options.ncores,
                 memory=options.memory, largest_worker_cores=limits.cores, largest_worker_memory=limits.memory,
                 memory_per_core=round(limits.per_core, 6), fragment_memory=options.fragment_memory,
                 fragment_ncores=None if options.auto_cores else options.fragment_ncores)
    return options


async def _checked_executor(inp: Any, options: Any, executor: Any, scheduler: Any) -> Executor:
    """Check the input against the programs (off the loop: it starts subprocesses), then pick the executor."""
    remote = scheduler is not None or executor == "dask" or getattr(executor, "name", None) == "dask"
    await anyio.to_thread.run_sync(functools.partial(check_input, inp, local=not remote))
    specs = inp.specification.specification.values()
    exe = resolve_executor(executor, {s.program for s in specs}, options, scheduler,
                           psiapi=any(s.program == "psi4" and (s.extras or {}).get("psiapi") for s in specs))
    _warn_oversubscribed(exe, options)
    return exe


async def _plan_while_starting(inp: Any, options: Any, exe: Executor, stack: contextlib.AsyncExitStack,
                               planner: Callable[..., Any] | None = None) -> Plan:
    """Plan on a thread while ``exe`` starts (seconds for worker processes); ``exe`` is entered on ``stack``.

    ``planner(inp, screening)``: :func:`_plan` unless given (a generalized MBE plans its own way).

    The executor is entered in the caller's task (its exit runs there too); only planning runs in a child task.
    """
    box: dict[str, Plan] = {}

    async def make() -> None:
        box["plan"] = await anyio.to_thread.run_sync(planner or _plan, inp, options.screening)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(make)
            await stack.enter_async_context(exe)
    except BaseExceptionGroup as group:
        raise unwrap_group(group) from None
    return box["plan"]


def _cluster_executor(cluster: Any, executor: Any, scheduler: Any) -> Executor:
    """The Dask executor that starts the batch cluster ``cluster=`` describes (checked before anything runs)."""
    if scheduler is not None:
        raise InputError("give either scheduler= (an existing Dask cluster) or cluster= (start one), not both")
    if executor not in ("auto", "dask"):
        raise InputError(f"cluster= runs fragments on Dask workers: executor must be 'auto' or 'dask', "
                         f"not {executor!r}")
    from .executors.dask import DaskExecutor

    return DaskExecutor(cluster=cluster)


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


async def _execute(inp: Any, options: Any, exe: Executor, store: Any, given: dict[str, Any], *,
                   planner: Callable[..., Any]) -> tuple[Any, ScheduleOutcome, dict[str, Any]]:
    """Plan ``inp`` with ``planner`` while ``exe`` starts, then schedule it; ``(plan, outcome, extras)``.

    The result store is open around both, and the run is recorded in it before any worker starts (an
    interrupted run is in ``report``); its row says how the run ended, whatever ended it. ``given``: the
    options as passed, for sizing from a cluster's workers once they are known. ``extras["fragments"]`` is empty:
    the caller moves the records in (:func:`move_records`), after assembly when it can.
    """
    from ._core.scheduler import STORE_FAILURES, StoreFailures

    if STORE_FAILURES.get() is None:
        # The run's store failures (run rows, results) are logged once for the run (a driver sets one per job).
        token = STORE_FAILURES.set(StoreFailures())
        try:
            return await _execute(inp, options, exe, store, given, planner=planner)
        finally:
            STORE_FAILURES.reset(token)
    run_id = uuid.uuid4().hex[:12]
    result_store = await _open_run_store(store, run_id)
    started = time.time()
    versions: dict[str, str] | None = None
    try:
        if result_store is not None:
            await anyio.to_thread.run_sync(functools.partial(
                _record_run_quietly, result_store, run_id, input_hash=input_hash(inp), started=started,
                summary={"run_id": run_id}))
        async with contextlib.AsyncExitStack() as stack:
            plan = await _plan_while_starting(inp, options, exe, stack, planner)
            options = _sized_to_executor(options, exe, given)
            if result_store is not None:
                # The store keys results by program version: ask each program once (cached per process).
                versions = await anyio.to_thread.run_sync(program_versions,
                                                          {s["program"] for s in plan.specs.values()})
                await anyio.to_thread.run_sync(functools.partial(
                    _record_run_quietly, result_store, run_id, input_hash=plan.input_hash, started=started,
                    summary={"run_id": run_id, "program_versions": versions}))
            log.info("run planned", run_id=run_id, fragments=len(plan.fragments), executor=exe.name,
                     ncores=options.ncores, memory=options.memory, slots=options.slots,
                     store=str(result_store.path) if result_store is not None else None)
            outcome = await _scheduler(plan, options, exe, result_store, run_id).run()
        extras = _extras(run_id, exe.name, options, outcome)
        if versions is not None:
            extras["program_versions"] = versions
        if plan.screen is not None:
            extras["screening"] = plan.screen.summary()
        if result_store is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(functools.partial(
                    _record_run_quietly, result_store, run_id, input_hash=plan.input_hash, started=outcome.started,
                    finished=outcome.finished, status="failed" if outcome.failures else "ok",
                    summary={k: v for k, v in extras.items() if k != "fragments"}))
    except BaseException as exc:
        # The run row must not stay 'running' forever: say how it ended (planning and start-up included).
        if result_store is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_record_end, result_store, run_id, input_hash(inp), started,
                                               _end_status(exc), exc, versions)
        raise
    finally:
        if result_store is not None:
            result_store.close()
    return plan, outcome, extras


async def _open_run_store(store: Any, run_id: str) -> ResultStore | None:
    """The run's result store, or ``None``. Within a job whose store opened before (a driver's later step), a store
    that no longer opens (the disk filled up) is said once and the job goes on without storing."""
    from ._core.scheduler import STORE_FAILURES

    failures = STORE_FAILURES.get()
    try:
        result_store = await anyio.to_thread.run_sync(open_store, store)
    except InputError as exc:
        if failures is None or not failures.job or not failures.opened or not isinstance(exc.__cause__, StoreError):
            raise
        failures.report("result store could not be opened for this step; its results are not stored, the job goes "
                        "on", run_id=run_id, reason=str(exc))
        return None
    if result_store is not None and failures is not None:
        failures.opened = True
    return result_store


def _scheduler(plan: Plan, options: Any, exe: Executor, result_store: Any, run_id: str) -> Scheduler:
    """The run's :class:`Scheduler`, given what of the results to keep and how to assemble MBE(n) early."""
    scheduler = Scheduler(plan, options, exe, run_id=run_id, store=result_store,
                          partial_result=functools.partial(assemble_through, plan),
                          keep=functools.partial(slim, plan), compact=not keeps_results(plan))
    if hasattr(exe, "queue_depth"):
        # An executor that batches small fragments (Dask) wants more of them in hand than cores;
        # its workers' resources, not this pool, bound what runs at once.
        scheduler.pool = ResourcePool(options.ncores, options.memory, depth=lambda: exe.queue_depth)
    return scheduler


def _end_status(exc: BaseException) -> str:
    """The run row's status for a run that raised ``exc``."""
    if isinstance(exc, FragmentError):
        return "failed"
    return "interrupted" if isinstance(exc, KeyboardInterrupt | anyio.get_cancelled_exc_class()) else "error"


def _record_run_quietly(store: Any, run_id: str, **row: Any) -> None:
    """``store.record_run``; a store that cannot be written (disk full) must not lose the computed result."""
    from ._core.scheduler import STORE_FAILURES
    from .errors import StoreError

    try:
        store.record_run(run_id, **row)
    except StoreError as exc:
        failures = STORE_FAILURES.get()
        if failures is None:
            log.error("run not recorded in the store", run_id=run_id, reason=str(exc))
        else:  # the run's or the job's first store failure only: a full disk fails every write alike
            failures.report("run not recorded in the store", run_id=run_id, reason=str(exc))


def _record_end(store: Any, run_id: str, input_hash: str, started: float, status: str, exc: BaseException,
                versions: dict[str, str] | None = None) -> None:
    reason = "interrupted" if status == "interrupted" else f"{type(exc).__name__}: {str(exc)[:500]}"
    summary: dict[str, Any] = {"run_id": run_id, "ended": reason}
    if versions is not None:
        summary["program_versions"] = versions
    _record_run_quietly(store, run_id, input_hash=input_hash, started=started, finished=time.time(), status=status,
                        summary=summary)


def _warn_oversubscribed(exe: Executor, options: Any) -> None:
    """More cores than this process may use on a local executor: every worker still starts; say so."""
    import warnings

    from ._core.resources import default_ncores

    available = default_ncores()
    if exe.capacity is None and options.ncores > available:
        message = (f"ncores={options.ncores} is more than the {available} core(s) this process may use: up to "
                   f"{options.slots} fragments (and worker processes) will share them")
        log.warning(message)
        warnings.warn(message, QCMBAsyncWarning, stacklevel=3)


def _check_store_argument(store: Any) -> None:
    """``store=`` of the wrong kind is an InputError before any worker starts."""
    from ._core.store_layout import store_path
    from .errors import StoreError

    try:
        store_path(store)
    except StoreError as exc:
        raise InputError(str(exc)) from exc


def open_store(store: str | os.PathLike[str] | None) -> ResultStore | None:
    """Open the result store selected by ``store=`` (see :func:`run_manybody`), or ``None``."""
    from ._core.store import ResultStore
    from ._core.store_layout import store_path
    from .errors import StoreError

    try:
        path = store_path(store)
        return None if path is None else ResultStore(path)
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
        # Filled with the records' dicts once the result is assembled (move_records): key and place kept here.
        "fragments": [],
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


async def _run_gmbe(inp: GMBEInput, *, ncores: int | None = None, memory: float | None = None,
                   fragment_ncores: int | None = None, fragment_memory: float | None = None,
                   executor: Any = "auto", level_barrier: bool = False, scratch_directory: Any = None,
                   retries: int = 0, timeout: float | None = None, on_error: str = "raise", on_event: Any = None,
                   store: Any = "default", scheduler: Any = None, cluster: Any = None,
                   screening: Any = None) -> GMBEResult:
    """Run a GMBE on the scheduler; options as :func:`~qcmb_async.run_manybody` (``screening`` excepted: give
    ``distance_cutoffs`` in the input)."""
    if screening is not None:
        raise InputError("screening= screens QCManyBody expansions; a GMBE takes distance_cutoffs={order: Å} in its "
                         "GMBEInput")
    given = {"ncores": ncores, "memory": memory, "fragment_ncores": fragment_ncores,
             "fragment_memory": fragment_memory, "level_barrier": level_barrier,
             "scratch_directory": scratch_directory, "retries": retries, "timeout": timeout,
             "on_error": on_error, "on_event": on_event}
    remote = scheduler is not None or cluster is not None or executor == "dask"
    options = make_options(**(_unsized(given) if remote else given))
    await anyio.to_thread.run_sync(functools.partial(check_gmbe, inp, local=not remote))
    plan = await anyio.to_thread.run_sync(plan_gmbe, inp)
    if cluster is not None:
        executor = _cluster_executor(cluster, executor, scheduler)
    program = str(inp.specification["program"]).lower()
    exe = resolve_executor(executor, {program}, options, scheduler)
    # Planned above (bad subsystems are input errors before any worker starts): the run takes that plan.
    plan, outcome, extras = await _execute(inp, options, exe, store, given, planner=lambda *_: plan)
    move_records(outcome, extras["fragments"])
    if outcome.failures:
        raise RunFailed(FailureReport(failed=list(outcome.failures), complete_levels=[]))
    return await anyio.to_thread.run_sync(assemble_gmbe, plan, outcome.results, extras)
