"""``qcmb-async run``: compute a many-body expansion and print its energies."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import RunFailed
from ._console import Usage, _stderr, _stdout
from ._inputs import _load, _store_arg, bsse_notice, write_output
from ._moving import check_outputs, expansion_command, run_options
from ._options import (
    BarrierOpt,
    ClusterOpt,
    InputArg,
    JobCoresOpt,
    JobMemoryOpt,
    LogFormat,
    LogOptions,
    MaxJobsOpt,
    OnError,
    OnErrorOpt,
    OutputOptions,
    QueueOpt,
    QuietOpt,
    ResourceOptions,
    SchedulerFileOpt,
    ScreeningOptions,
    WalltimeOpt,
    XyzOptions,
    with_screening_options,
)
from ._render import _energy_tables


@expansion_command("Write the ManyBodyResult JSON here.")
@with_screening_options
def run(
    input: InputArg,
    *,
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
    screen: ScreeningOptions,
    outputs: OutputOptions,
    quiet: QuietOpt = False,
    logs: LogOptions,
) -> None:
    """Compute a many-body expansion and print its energies."""
    _store_arg(resources.store)  # a bad --store is named before the input is read
    mbe = _load(input, xyz)
    check_outputs(input, outputs, resources)
    options = run_options(resources, with_scheduler=False)
    options.update(on_error=on_error.value, level_barrier=level_barrier,
                   screening=screen.spec())
    options.update(_dask_target(resources.scheduler, scheduler_file, cluster, queue=queue, job_cores=job_cores,
                                job_memory=job_memory, max_jobs=max_jobs, walltime=walltime))
    if quiet and logs.log_format is LogFormat.console and logging.getLogger("qcmb_async").level == logging.WARNING:
        # --quiet: only the final lines; advisories (e.g. MOPAC and ghost atoms) stay out of it.
        logging.getLogger("qcmb_async").setLevel(logging.ERROR)
    _run(mbe, options, output=outputs.output, timeline=outputs.timeline, quiet=quiet, json_logs=logs.json)
    notice = bsse_notice(xyz)
    if notice is not None and not quiet:  # after the run: an error found on the way stays the only paragraph
        if logs.json:
            from .._logs import get_logger

            get_logger().warning(notice)
        else:
            _stderr().print(notice, markup=False, soft_wrap=True)


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
        write_output("--timeline", timeline,
                     lambda fh: figure.savefig(fh, dpi=120, format=timeline.suffix[1:] or None))
        if not quiet and not json_logs:
            _stderr().print(f"timeline written to {timeline}", markup=False, soft_wrap=True)
