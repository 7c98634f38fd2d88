"""``qcmb-async run``: compute a many-body expansion and print its energies."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import RunFailed
from ._app import app
from ._console import Usage, _errors, _setup_logging, _stderr, _stdout
from ._inputs import _check_not_store, _check_outputs, _load, _store_arg, write_output
from ._moving import run_options
from ._options import (
    BarrierOpt,
    CentroidOpt,
    ClusterOpt,
    CutoffOpt,
    DebugOpt,
    EnergyScreenOpt,
    InputArg,
    JobCoresOpt,
    JobMemoryOpt,
    LogFormat,
    LogFormatOpt,
    MaxJobsOpt,
    OnError,
    OnErrorOpt,
    OutputOpt,
    QueueOpt,
    QuietOpt,
    ResourceOptions,
    SchedulerFileOpt,
    TimelineOpt,
    VerboseOpt,
    WalltimeOpt,
    XyzOptions,
    screening_option,
    with_resource_options,
    with_xyz_options,
)
from ._render import _energy_tables


@app.command()
@with_xyz_options
@with_resource_options
def run(
    input: InputArg,
    xyz: XyzOptions,
    resources: ResourceOptions,
    scheduler_file: SchedulerFileOpt = None,
    cluster: ClusterOpt = None,
    queue: QueueOpt = None,
    job_cores: JobCoresOpt = None,
    job_memory: JobMemoryOpt = None,
    max_jobs: MaxJobsOpt = None,
    walltime: WalltimeOpt = None,
    on_error: OnErrorOpt = OnError.raise_,
    level_barrier: BarrierOpt = False,
    cutoff: CutoffOpt = None,
    energy_threshold: EnergyScreenOpt = None,
    centroid: CentroidOpt = False,
    output: OutputOpt = None,
    timeline: TimelineOpt = None,
    log_format: LogFormatOpt = LogFormat.console,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    debug: DebugOpt = False,
) -> None:
    """Compute a many-body expansion and print its energies."""
    with _errors(debug):
        _setup_logging(log_format, verbose, debug)
        store_file = _store_arg(resources.store)
        mbe = _load(input, xyz)
        _check_outputs(input, output, timeline)
        _check_not_store(store_file, resources.no_store, output=output, timeline=timeline)
        if timeline is not None:
            from ..timeline import _import_matplotlib

            try:
                _import_matplotlib()
            except ImportError as exc:
                raise Usage(f"--timeline: {exc}") from None
        options = run_options(resources, with_scheduler=False)
        options.update(on_error=on_error.value, level_barrier=level_barrier,
                       screening=screening_option(cutoff, energy_threshold, centroid))
        options.update(_dask_target(resources.scheduler, scheduler_file, cluster, queue=queue, job_cores=job_cores,
                                    job_memory=job_memory, max_jobs=max_jobs, walltime=walltime))
        if quiet and log_format is LogFormat.console and logging.getLogger("qcmb_async").level == logging.WARNING:
            # --quiet: only the final lines; advisories (e.g. MOPAC and ghost atoms) stay out of it.
            logging.getLogger("qcmb_async").setLevel(logging.ERROR)
        _run(mbe, options, output=output, timeline=timeline, quiet=quiet, json_logs=log_format is LogFormat.json)


def _dask_target(scheduler: str | None, scheduler_file: Path | None, cluster: Any, **jobs: Any) -> dict[str, Any]:
    """``scheduler=``/``cluster=`` from --scheduler, --scheduler-file, --cluster and the job options."""
    given = [name for name, value in (("--scheduler", scheduler), ("--scheduler-file", scheduler_file),
                                      ("--cluster", cluster)) if value is not None]
    if len(given) > 1:
        raise Usage(f"{' and '.join(given)} contradict each other: give one")
    job_flags = [f"--{k.replace('_', '-')}" for k, v in jobs.items() if v is not None]
    if job_flags and cluster is None:
        raise Usage(f"{', '.join(job_flags)} size the jobs of --cluster: add --cluster slurm (or pbs)")
    if cluster is not None:
        from ..executors.hpc import cluster_options

        return {"cluster": cluster_options(cluster.value, **jobs)}
    if scheduler_file is not None:
        return {"scheduler": scheduler_file}
    return {"scheduler": scheduler} if scheduler is not None else {}


def _run(mbe: Any, options: dict[str, Any], *, output: Path | None, timeline: Path | None, quiet: bool,
         json_logs: bool) -> None:
    from .. import run as run_sync
    from .._logs import get_logger
    from ..progress import ProgressDisplay

    out = _stdout()
    # With JSON logs stderr stays machine-readable: the summary becomes a log line, no bars.
    progress = ProgressDisplay(_stderr(), quiet=quiet or json_logs)
    try:
        with progress:
            result = run_sync(mbe, on_event=progress, **options)
    except RunFailed as exc:
        partial = exc.report.partial_result
        if partial is not None:
            through = max(exc.report.complete_levels)
            _energy_tables(out, partial, heading=f"partial result through {through}-body (complete levels only)")
            if output is not None:
                write_output("--output", output, partial.model_dump_json())
        raise
    finally:
        if json_logs:
            get_logger().info("run summary", run_id=progress.run_id, total=progress.total, done=progress.done,
                              computed=progress.succeeded, cached=progress.cached, failed=progress.failed,
                              retries=progress.retried, wall_time=progress.wall_time)
    _energy_tables(out, result)
    not_stored = int(((result.extras or {}).get("qcmb_async") or {}).get("not_stored") or 0)
    if not_stored:
        # Said once, here, not once per fragment: a full disk fails every write the same way.
        _stderr().print(f"warning: {not_stored} computed result(s) are not in the result store (it could not be "
                        "written; see the first 'result not stored' log line for why): a rerun would recompute "
                        "them", markup=False, soft_wrap=True)
    if output is not None:
        write_output("--output", output, result.model_dump_json())
        if not quiet and not json_logs:
            _stderr().print(f"result written to {output}", markup=False, soft_wrap=True)
    if timeline is not None:
        from ..timeline import plot_timeline

        figure = plot_timeline(result)
        write_output("--timeline", timeline, lambda fh: figure.savefig(fh, dpi=120, format=timeline.suffix[1:] or None))
        if not quiet and not json_logs:
            _stderr().print(f"timeline written to {timeline}", markup=False, soft_wrap=True)
