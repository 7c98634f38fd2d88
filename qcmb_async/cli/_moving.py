"""What the commands that run expansions share: their option groups, the run options they pass to every MBE,
JSON output."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._app import app
from ._console import Usage, _stderr, with_log_options
from ._inputs import _check_not_store, _check_outputs, _load, _store_arg, write_output
from ._options import (
    ClusterKind,
    ClusterOpt,
    JobCoresOpt,
    JobMemoryOpt,
    MaxJobsOpt,
    OutputOptions,
    QueueOpt,
    ResourceOptions,
    SchedulerFileOpt,
    WalltimeOpt,
    XyzOptions,
    _with_group,
    with_output_options,
    with_resource_options,
    with_xyz_options,
)


@dataclass(frozen=True)
class ClusterArgs:
    """Where the Dask workers of a command come from besides --scheduler (``None``: not given)."""

    scheduler_file: Path | None = None
    cluster: ClusterKind | None = None
    queue: str | None = None
    job_cores: int | None = None
    job_memory: float | None = None
    max_jobs: int | None = None
    walltime: str | None = None


_CLUSTER_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=annotation)
    for name, annotation in (("scheduler_file", SchedulerFileOpt), ("cluster", ClusterOpt), ("queue", QueueOpt),
                             ("job_cores", JobCoresOpt), ("job_memory", JobMemoryOpt), ("max_jobs", MaxJobsOpt),
                             ("walltime", WalltimeOpt))
]

#: Gives a command --scheduler-file, --cluster and the job options; it receives them as ``cluster_args: ClusterArgs``.
with_cluster_options = _with_group("cluster_args", ClusterArgs, _CLUSTER_PARAMETERS)


def dask_target(scheduler: str | None, args: ClusterArgs) -> dict[str, Any]:
    """``scheduler=``/``cluster=`` run options from --scheduler and :class:`ClusterArgs` (Usage/InputError if bad)."""
    from .run import _dask_target

    given = asdict(args)
    return _dask_target(scheduler, given.pop("scheduler_file"), given.pop("cluster"), **given)


def expansion_command(output_help: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Registers a command that runs expansions (run, optimize, frequencies) with the option groups they all take:
    the XYZ options (``xyz``), resources (``resources``), --output described by ``output_help`` and --timeline
    (``outputs``), and the log options (``logs``), whose error handling and log set-up its body runs in. Each
    group's options stand in the help where the command's parameter of that name stands."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        for group in (with_output_options(output_help), with_resource_options, with_xyz_options, with_log_options):
            command = group(command)
        return app.command()(command)

    return decorate


def run_options(resources: ResourceOptions, *, with_scheduler: bool = True) -> dict[str, Any]:
    """The ``run_manybody`` options of the command line's resource options (``None``: not given)."""
    if resources.store is not None and resources.no_store:
        raise Usage("--store and --no-store contradict each other: give one")
    options: dict[str, Any] = {name: getattr(resources, name) for name in (
        "ncores", "memory", "fragment_ncores", "fragment_memory", "executor", "retries", "timeout")}
    if resources.no_store:
        options["store"] = None
    elif (store := _store_arg(resources.store)) is not None:
        options["store"] = str(store)
    if with_scheduler and resources.scheduler is not None:
        options["scheduler"] = resources.scheduler
    return options


def check_outputs(input: Path, outputs: OutputOptions, resources: ResourceOptions) -> None:
    """--output and --timeline writable (not the input, not the result store; matplotlib there for a timeline),
    checked before anything runs (:class:`Usage` otherwise)."""
    _check_outputs(input, outputs.output, outputs.timeline)
    _check_not_store(_store_arg(resources.store), resources.no_store, output=outputs.output,
                     timeline=outputs.timeline)
    if outputs.timeline is not None:
        from ..timeline import _import_matplotlib

        try:
            _import_matplotlib()
        except ImportError as exc:
            raise Usage(f"--timeline: {exc}") from None


def start_job(command: str, input: Path, xyz: XyzOptions, outputs: OutputOptions,
              resources: ResourceOptions, cluster_args: ClusterArgs | None = None) -> tuple[Any, dict[str, Any]]:
    """The input and run options of a command that runs many expansions (optimize, frequencies).

    Everything checked before anything runs: --driver refused (the command chooses), the input
    read, the outputs (:func:`check_outputs`), the resource options turned into ``run_manybody`` options.
    """
    if xyz.driver is not None:
        raise Usage(f"--driver does not apply to {command}: it chooses what each expansion computes")
    mbe = _load(input, xyz)
    check_outputs(input, outputs, resources)
    options = run_options(resources, with_scheduler=False)
    options.update(dask_target(resources.scheduler, cluster_args or ClusterArgs()))
    return mbe, options


class _StepLog:
    """JSON logs: each finished step is a log line (stderr stays machine-readable, no live bar)."""

    def __enter__(self) -> _StepLog:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, event: Any) -> None:
        from dataclasses import asdict

        from .._logs import get_logger
        from ..events import StepFinished

        if isinstance(event, StepFinished):
            get_logger().info("step finished", **asdict(event))


def step_progress(json_logs: bool) -> Any:
    """The ``on_event`` callback (and context manager) showing a command's steps as they finish."""
    from ..progress import StepDisplay

    return _StepLog() if json_logs else StepDisplay(_stderr())


def write_timeline(result: Any, path: Path | None, json_logs: bool) -> None:
    """--timeline: one chart over every step's fragments (see :func:`qcmb_async.timeline.plot_timeline`)."""
    if path is None:
        return
    from ..timeline import plot_timeline

    figure = plot_timeline(result)
    write_output("--timeline", path, lambda fh: figure.savefig(fh, dpi=120, format=path.suffix[1:] or None))
    if not json_logs:
        _stderr().print(f"timeline written to {path}", markup=False, soft_wrap=True)


def write_json(path: Path, data: dict[str, Any], option: str = "--output") -> None:
    """``data`` as JSON (numpy arrays become lists), written atomically (a failure: exit 2 naming the path)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

    write_output(option, path, json.dumps(data, default=default, indent=1))
