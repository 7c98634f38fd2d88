"""The async core (``run_manybody``) and its thin sync wrapper (``run``)."""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import Callable
from typing import Any

import anyio

from ..errors import FailureReport, InputError, RunFailed
from ..executors import resolve_executor
from ..executors.base import Executor
from .assemble import assemble
from .inputs import check_input, load_input, make_options
from .logs import get_logger
from .plan import Plan, make_plan
from .schedule import ScheduleOutcome, schedule

log = get_logger()


def plan_manybody(mbe_input: Any) -> Plan:
    """Validate ``mbe_input`` and enumerate its fragments without computing anything (blocking)."""
    inp = load_input(mbe_input)
    check_input(inp)
    return _plan(inp)


def _plan(inp: Any) -> Plan:
    from pydantic import ValidationError

    try:
        return make_plan(inp)
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
) -> Any:
    """Run a many-body expansion with its fragments in parallel; return QCManyBody's result.

    Args:
        mbe_input: ``qcmanybody.models.v2.ManyBodyInput`` (v1 models, dicts, JSON strings and
            JSON/YAML file paths are converted).
        ncores: Total cores the run may use. Default: this process's CPU affinity.
        memory: Total memory in GiB. Default: 80 % of the memory available now.
        fragment_ncores: Cores per fragment (default 1).
        fragment_memory: GiB per fragment (default: an even share, ``memory / (ncores //
            fragment_ncores)``).
        executor: ``"auto"``, ``"threads"`` or an :class:`~qcmb_async.executors.base.Executor`.
        level_barrier: Finish every n-body level before starting the next. Off by default:
            fragments do not depend on each other, and a barrier leaves cores idle.
        scratch_directory: Parent directory for programs' scratch files.
        retries: Extra attempts for transient failures (QCEngine ``RandomError``, timeouts).
        timeout: Seconds per fragment attempt; the program process is killed after that.
        on_error: ``"raise"`` stops at the first failed fragment (others are cancelled);
            ``"continue"`` computes everything it can, then raises :class:`RunFailed`.
        on_event: Sync or async callable receiving :mod:`qcmb_async.events` progress events.

    Returns:
        The ``qcmanybody.models.v2.ManyBodyResult`` QCManyBody's sequential computer returns for
        the same input; ``result.extras["qcmb_async"]`` adds per-fragment records and timings.

    Raises:
        InputError: bad input or options, before anything is computed.
        FragmentError: a fragment failed (``on_error="raise"``): names it, keeps QCEngine's error.
        RunFailed: some fragments failed (``on_error="continue"``); ``.report`` has the details.
    """
    inp = load_input(mbe_input)
    options = make_options(
        ncores=ncores, memory=memory, fragment_ncores=fragment_ncores, fragment_memory=fragment_memory,
        level_barrier=level_barrier, scratch_directory=scratch_directory, retries=retries, timeout=timeout,
        on_error=on_error, on_event=on_event,
    )
    # Program checks start subprocesses and planning takes seconds: keep both off the loop.
    await anyio.to_thread.run_sync(check_input, inp)
    plan = await anyio.to_thread.run_sync(_plan, inp)
    exe = resolve_executor(executor, plan.programs, options)
    run_id = uuid.uuid4().hex[:12]
    log.info("run planned", run_id=run_id, fragments=len(plan.fragments), executor=exe.name,
             ncores=options.ncores, memory=options.memory, slots=options.slots)
    async with exe:
        outcome = await schedule(plan, options, exe, run_id=run_id)
    extras = _extras(run_id, exe.name, options, outcome)
    if outcome.failures:
        report = await anyio.to_thread.run_sync(_failure_report, plan, outcome, extras)
        raise RunFailed(report)
    return await anyio.to_thread.run_sync(assemble, plan, outcome.results, extras)


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
        "fragments": [rec.as_dict() for rec in outcome.records],
    }


def _failure_report(plan: Plan, outcome: ScheduleOutcome, extras: dict[str, Any]) -> FailureReport:
    failed_levels = {err.level for err in outcome.failures}
    levels = sorted({f.level for f in plan.fragments})
    complete = [lv for lv in levels if lv < min(failed_levels)]
    report = FailureReport(failed=list(outcome.failures), complete_levels=complete)
    if complete:
        try:
            data = plan.input.model_dump()
            data["specification"]["keywords"]["max_nbody"] = max(complete)
            partial_plan = make_plan(type(plan.input)(**data))
            if all(f.label in outcome.results for f in partial_plan.fragments):
                report.partial_result = assemble(partial_plan, outcome.results, extras)
        except Exception as exc:  # e.g. a multilevel input whose levels fix max_nbody
            log.warning("partial result not assembled", reason=str(exc))
    return report


def run(mbe_input: Any, **options: Any) -> Any:
    """Blocking :func:`run_manybody` for scripts; also works inside a running loop (Jupyter).

    In a plain script the run uses ``anyio.run``; when an event loop is already running in
    this thread, it runs on a private event-loop thread and this call blocks until it ends.
    Ctrl-C cancels the run in both cases.
    """
    call = functools.partial(run_manybody, mbe_input, **options)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(call)
    with anyio.from_thread.start_blocking_portal() as portal:
        future = portal.start_task_soon(call)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise
