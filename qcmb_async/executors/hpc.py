"""Batch clusters (SLURM, PBS) for the Dask executor, through dask-jobqueue (extra ``qcmb_async[hpc]``).

:class:`ClusterOptions` describes the batch jobs; :func:`start_cluster` submits nothing by itself: it
starts a Dask scheduler in this process, bound to one explicit address (never ``0.0.0.0``), with TLS
and temporary credentials, and lets Dask's ``adapt`` request jobs while fragments wait and release
them when the queue drains. Each job runs one ``dask worker`` declaring
``--resources cores=<job_cores>,memory=<job_memory GiB>``, so the Dask executor's per-fragment
``resources={"cores": n, "memory": GiB}`` keep fragments within their job's cores and memory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import InputError, describe_validation

__all__ = ["CLUSTER_KINDS", "ClusterOptions", "cluster_options", "job_id", "job_resources", "job_script", "max_jobs",
           "start_cluster", "stop_cluster"]

#: Batch systems a cluster can be started on, and their dask-jobqueue classes.
CLUSTER_KINDS: dict[str, str] = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
#: Smallest memory per job, GiB: a Dask worker process alone takes about 150 MiB.
MIN_JOB_MEMORY = 0.25
_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}:[0-5]\d:[0-5]\d$")


class ClusterOptions(BaseModel):
    """The batch jobs a cluster started for a run asks for (one Dask worker per job)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["slurm", "pbs"] = Field(description="Batch system: `slurm` or `pbs`.")
    queue: str | None = Field(None, description="Partition (SLURM) or queue (PBS); default: the system's.")
    account: str | None = Field(None, description="Account/project charged for the jobs.")
    job_cores: int = Field(1, ge=1, description="Cores per job (the worker's `cores` resource).")
    job_memory: float = Field(4.0, description="Memory per job, GiB, at least 0.25 (the worker's `memory` "
                                               "resource).")
    min_jobs: int = Field(0, ge=0, description="Jobs kept even when no fragment waits.")
    max_jobs: int = Field(1, ge=1, description="Most jobs at once.")
    walltime: str = Field("01:00:00", description="Job wall time, `HH:MM:SS` (or `D-HH:MM:SS`).")
    host: str | None = Field(None, description="Address the scheduler binds to and workers connect to; default: "
                                               "this host's address (the interface of the default route).")
    interface: str | None = Field(None, description="Network interface for scheduler and workers (e.g. `ib0`), "
                                                    "instead of `host`.")
    tls: bool = Field(True, description="TLS with temporary credentials between scheduler, workers and client.")
    shared_directory: str | None = Field(None, description="Directory on a file system the compute nodes see, for "
                                                           "job logs and the workers' temporary TLS files; "
                                                           "default `~/.cache/qcmb_async/hpc`.")
    job_directives: list[str] = Field(default_factory=list, description="Extra `#SBATCH`/`#PBS` options, e.g. "
                                                                         "`--constraint=avx2`.")
    prologue: list[str] = Field(default_factory=list, description="Shell lines run before the worker, e.g. "
                                                                  "`module load nwchem`.")
    python: str | None = Field(None, description="Python on the compute nodes; default: this one.")
    worker_args: list[str] = Field(default_factory=list, description="Extra `dask worker` arguments, e.g. "
                                                                     "`['--preload', 'mymodule']`.")

    @field_validator("job_memory")
    @classmethod
    def _job_memory(cls, value: float) -> float:
        import math

        # A Dask worker, its Python and one program need a few hundred MiB: a smaller job starts workers that
        # die at once (measured: 0.001 GiB), infinity or NaN is no size at all.
        if not math.isfinite(value) or value < MIN_JOB_MEMORY:
            raise ValueError(f"job_memory must be a finite number of GiB >= {MIN_JOB_MEMORY} (a worker and one "
                             f"program need that much), got {value!r}")
        return value

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str) -> str:
        if not _WALLTIME.match(value):
            raise ValueError(f"walltime {value!r} is not HH:MM:SS (or D-HH:MM:SS), e.g. 04:00:00")
        return value

    @field_validator("max_jobs")
    @classmethod
    def _max_jobs(cls, value: int, info: Any) -> int:
        low = info.data.get("min_jobs", 0)
        if value < low:
            raise ValueError(f"max_jobs ({value}) is below min_jobs ({low})")
        return value

    @property
    def resources(self) -> dict[str, float]:
        """The Dask worker resources one job declares: ``{"cores": job_cores, "memory": job_memory GiB}``."""
        return {"cores": float(self.job_cores), "memory": float(self.job_memory)}


def cluster_options(cluster: str | dict[str, Any] | ClusterOptions, **overrides: Any) -> ClusterOptions:
    """``cluster="slurm"`` / a dict / :class:`ClusterOptions` (+ overrides that are not ``None``) as options.

    Raises :class:`~qcmb_async.errors.InputError` for unknown batch systems or bad job sizes.
    """
    from pydantic import ValidationError

    if isinstance(cluster, ClusterOptions):
        data = cluster.model_dump()
    elif isinstance(cluster, str):
        data = {"kind": cluster.strip().lower()}
    elif isinstance(cluster, dict):
        data = dict(cluster)
    else:
        raise InputError(f"cluster must be one of {sorted(CLUSTER_KINDS)}, a dict or ClusterOptions, got {cluster!r}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    if data.get("kind") not in CLUSTER_KINDS:
        raise InputError(f"unknown batch system {data.get('kind')!r}: use one of {', '.join(sorted(CLUSTER_KINDS))}")
    try:
        return ClusterOptions(**data)
    except ValidationError as exc:
        raise InputError(f"bad cluster options: {describe_validation(exc)}") from exc


def default_host() -> str:
    """This host's address for workers to reach: the default route's source address, else loopback.

    No packet is sent: connecting a UDP socket only asks the kernel which source address it would use.
    """
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere for real
        address = sock.getsockname()[0]
        if not ipaddress.ip_address(address).is_unspecified:
            return str(address)
    with contextlib.suppress(OSError):
        return socket.gethostbyname(socket.gethostname())
    return "127.0.0.1"


def _jobqueue_class(kind: str) -> Any:
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise InputError(f"cluster={kind!r} needs dask-jobqueue: pip install 'qcmb_async[hpc]' ({exc})") from exc
    return getattr(dask_jobqueue, CLUSTER_KINDS[kind])


def _kwargs(opts: ClusterOptions, shared: Path, security: Any) -> dict[str, Any]:
    res = opts.resources
    # No dashboard: it is an unauthenticated web server.
    scheduler_options: dict[str, Any] = {"dashboard": False}
    if opts.interface is not None:
        scheduler_options["interface"] = opts.interface
    else:
        scheduler_options["host"] = opts.host or default_host()
    kwargs: dict[str, Any] = {
        "cores": opts.job_cores,
        "processes": 1,
        # Dask's memory limit per worker is the job's; SLURM/PBS get the same in the job header.
        "memory": f"{opts.job_memory}GiB",
        "walltime": opts.walltime,
        "queue": opts.queue,
        "account": opts.account,
        "interface": opts.interface,
        "job_name": "qcmb-worker",
        "worker_extra_args": ["--resources", f"cores={opts.job_cores:g},memory={res['memory']:g}",
                              *_lifetime(opts.walltime), *opts.worker_args],
        "job_extra_directives": list(opts.job_directives),
        "job_script_prologue": list(opts.prologue),
        "python": opts.python or sys.executable,
        "log_directory": str(shared / "logs"),
        "shared_temp_directory": str(shared),
        "scheduler_options": scheduler_options,
        "security": security,
        "asynchronous": True,
    }
    return kwargs


def walltime_seconds(walltime: str) -> int:
    """``[D-]HH:MM:SS`` in seconds."""
    days, _, clock = walltime.rpartition("-")
    h, m, sec = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + sec


def _lifetime(walltime: str) -> list[str]:
    """Workers leave on their own a little before the batch system kills their job at its walltime.

    A worker that retires is replaced by adapt while fragments wait; one killed at the walltime loses
    the fragments it runs (Dask reruns them elsewhere). Staggered, so the jobs do not all leave at once.
    """
    total = walltime_seconds(walltime)
    if total < 600:
        return []
    margin = min(300, total // 10)
    return ["--lifetime", f"{total - margin}s", "--lifetime-stagger", f"{margin // 2}s"]


def _shared_directory(opts: ClusterOptions) -> Path:
    base = Path(opts.shared_directory or "~/.cache/qcmb_async/hpc").expanduser()
    base.mkdir(parents=True, exist_ok=True)
    _sweep(base)
    # Private (0700): the workers' TLS key is written here for the jobs to read.
    path = Path(tempfile.mkdtemp(prefix="cluster-", dir=base))
    (path / "owner").write_text(_owner())
    return path


def _owner(pid: int | None = None) -> str:
    import psutil

    proc = psutil.Process(pid)
    return f"{socket.gethostname()} {proc.pid} {proc.create_time():.3f}"


def _sweep(base: Path) -> None:
    """Remove the directories of clusters whose process died on this host (a killed run cannot clean up)."""
    host = socket.gethostname()
    for path in base.glob("cluster-*"):
        try:
            owner_host, pid, _ = (path / "owner").read_text().split()
        except (OSError, ValueError):
            continue
        if owner_host != host:
            continue
        try:
            alive = _owner(int(pid)) == (path / "owner").read_text()
        except Exception:  # psutil.NoSuchProcess and friends: that process is gone
            alive = False
        if not alive:
            shutil.rmtree(path, ignore_errors=True)


def _security(opts: ClusterOptions) -> Any:
    if not opts.tls:
        return None
    from distributed.security import Security

    try:
        return Security.temporary()
    except ImportError as exc:
        raise InputError(f"TLS for the cluster needs the `cryptography` package: pip install 'qcmb_async[hpc]' "
                         f"({exc}). (From Python only, on a trusted network: cluster={{'kind': {opts.kind!r}, "
                         "'tls': False}; the command line always uses TLS)") from exc


def job_script(opts: ClusterOptions) -> str:
    """The batch script one job of ``opts`` would run (starts no scheduler that outlives the call)."""
    cls = _jobqueue_class(opts.kind)
    shared = _shared_directory(opts)
    try:
        kwargs = {**_kwargs(opts, shared, _security(opts)), "asynchronous": False}
        kwargs["scheduler_options"] = {**kwargs["scheduler_options"], "port": 0}
        cluster = cls(**kwargs)
        try:
            return str(cluster.job_script())
        finally:
            cluster.close()
            _forget_credentials(cluster)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _forget_credentials(cluster: Any) -> None:
    # dask-jobqueue keeps the workers' TLS files as NamedTemporaryFile attributes: closing deletes them.
    for name in list(vars(cluster)):
        if name.startswith("_job_") and hasattr(getattr(cluster, name), "close"):
            with contextlib.suppress(OSError):
                getattr(cluster, name).close()


async def stop_cluster(cluster: Any, shared: Path | None) -> None:
    """Close a cluster :func:`start_cluster` started (its jobs are cancelled) and remove its files."""
    try:
        await cluster.close()
    finally:
        _forget_credentials(cluster)
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)


async def start_cluster(opts: ClusterOptions) -> tuple[Any, Path]:
    """Start an asynchronous dask-jobqueue cluster for ``opts``, adapting between min and max jobs.

    Returns the cluster and its private shared directory (remove it after ``await cluster.close()``).
    """
    cls = _jobqueue_class(opts.kind)
    shared = _shared_directory(opts)
    try:
        cluster = await cls(**_kwargs(opts, shared, _security(opts)))
        try:
            await _check_submission(opts, cluster, shared)
        except BaseException:
            await stop_cluster(cluster, None)
            raise
        # Jobs come while fragments wait and go when the queue drains (Dask's Adaptive, every second).
        cluster.adapt(minimum_jobs=opts.min_jobs, maximum_jobs=opts.max_jobs, interval="1s", wait_count=5,
                      target_duration="2s")
    except BaseException:
        shutil.rmtree(shared, ignore_errors=True)
        raise
    return cluster, shared


async def _check_submission(opts: ClusterOptions, cluster: Any, shared: Path) -> None:
    """Let SLURM validate the job (``sbatch --test-only``) before any fragment waits for it.

    dask-jobqueue only logs a failed submission (and retries), so a bad partition, account or size would
    leave the run waiting for a job that never comes. PBS has no such dry run: there the job logs tell.
    """
    import anyio

    if opts.kind != "slurm" or shutil.which("sbatch") is None:
        return
    script = shared / "check-job.sh"
    script.write_text(str(cluster.job_script()))
    done = await anyio.run_process(["sbatch", "--test-only", str(script)], check=False)
    if done.returncode != 0:
        why = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise InputError(f"SLURM refuses the batch job for the Dask workers: {why}. Check --queue, the account, "
                         f"--job-cores/--job-memory and --walltime against the partition's limits (`sinfo`, "
                         f"`scontrol show partition`)")


_RESOURCES = re.compile(r"--resources[ =]+['\"]?([A-Za-z0-9_.=,\-]+)")


def job_resources(cluster: Any) -> dict[str, float] | None:
    """Worker resources one job of a dask-jobqueue ``cluster`` declares (from its job script), or ``None``."""
    script = getattr(cluster, "job_script", None)
    if script is None:
        return None
    try:
        text = str(script())
    except Exception:
        return None
    match = _RESOURCES.search(text)
    if match is None:
        return None
    out: dict[str, float] = {}
    for item in match.group(1).split(","):
        name, _, value = item.partition("=")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def max_jobs(cluster: Any) -> int | None:
    """The most jobs a dask-jobqueue ``cluster`` will run: its adaptive maximum, else the jobs asked for."""
    adaptive = getattr(cluster, "_adaptive", None)  # set by cluster.adapt(); no public accessor
    maximum = getattr(adaptive, "maximum", None)
    if isinstance(maximum, (int, float)) and maximum != float("inf"):
        return int(maximum)
    spec = getattr(cluster, "worker_spec", None)
    return len(spec) if spec else None


def job_id() -> str:
    """This batch job's id, for messages from a worker (``""`` outside a batch job)."""
    for name, system in (("SLURM_JOB_ID", "SLURM"), ("PBS_JOBID", "PBS")):
        if os.environ.get(name):
            return f"{system} job {os.environ[name]}"
    return ""
