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
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .._logs import get_logger
from ..errors import InputError, describe_validation

_log = get_logger()

__all__ = ["CLUSTER_KINDS", "ClusterOptions", "JobWatch", "cluster_options", "job_id", "job_resources", "job_script",
           "job_worker", "keep_logs", "max_jobs", "start_cluster", "stop_cluster"]

#: Batch systems a cluster can be started on, and their dask-jobqueue classes.
CLUSTER_KINDS: dict[str, str] = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
_IMPORT_LOCK = threading.Lock()

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


def _interface_address(interface: str) -> str | None:
    """The IPv4 address of network interface ``interface`` (``None`` when it has none)."""
    import psutil

    for addr in psutil.net_if_addrs().get(interface, []):
        if addr.family == socket.AF_INET:
            return str(addr.address)
    return None


def _jobqueue_class(kind: str) -> Any:
    try:
        dask_jobqueue = _import_jobqueue()
    except ImportError as exc:
        raise InputError(f"cluster={kind!r} needs dask-jobqueue: pip install 'qcmb_async[hpc]' ({exc})") from exc
    return getattr(dask_jobqueue, CLUSTER_KINDS[kind])


def _import_jobqueue() -> Any:
    """``import dask_jobqueue`` without its side effect on this process's SIGINT handler.

    ``dask_jobqueue.runner`` (imported by the package) replaces the SIGINT handler with ``sys.exit()`` at import
    time. Imported mid-run, that replaces the event loop's handler: Ctrl-C and SIGTERM (handed to the SIGINT
    handler by :func:`qcmb_async.run`) then raise ``SystemExit`` inside the loop (exit code 0, tracebacks from
    every callback) instead of cancelling the run; outside the main thread (``run()`` in Jupyter) the import
    fails outright (``signal only works in main thread``). So for the import ``signal.signal`` leaves SIGINT
    alone; nothing else is affected.
    """
    import signal

    if sys.modules.get("dask_jobqueue") is not None:
        return sys.modules["dask_jobqueue"]
    with _IMPORT_LOCK:
        original = signal.signal

        def keep_sigint(signum: int, handler: Any) -> Any:
            if signum == signal.SIGINT:
                return signal.getsignal(signum)
            return original(signum, handler)

        signal.signal = keep_sigint  # type: ignore[assignment]
        try:
            import dask_jobqueue
        finally:
            signal.signal = original  # type: ignore[assignment]
    return dask_jobqueue


def _kwargs(opts: ClusterOptions, shared: Path, security: Any) -> dict[str, Any]:
    res = opts.resources
    # No dashboard: it is an unauthenticated web server. The scheduler still serves a few HTTP routes
    # (health, metrics): dask-jobqueue's default puts them on 0.0.0.0:8787 (and warns when that port is
    # taken), so they go to the scheduler's own address on a free port.
    scheduler_options: dict[str, Any] = {"dashboard": False}
    if opts.interface is not None:
        scheduler_options["interface"] = opts.interface
        host = _interface_address(opts.interface)
    else:
        host = scheduler_options["host"] = opts.host or default_host()
    if host is not None:
        scheduler_options["dashboard_address"] = f"{host}:0"
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


async def stop_cluster(cluster: Any, shared: Path | None, *, keep: bool = False) -> Path | None:
    """Close a cluster :func:`start_cluster` started (its jobs are cancelled) and remove its files.

    ``keep``: the run failed, so its job logs are kept (see :func:`keep_logs`); returns where, if any.
    """
    kept = None
    try:
        await cluster.close()
    finally:
        _forget_credentials(cluster)
        if shared is not None:
            if keep:
                kept = keep_logs(shared)
                if kept is not None:
                    _log.warning("batch job logs kept", path=str(kept))
            shutil.rmtree(shared, ignore_errors=True)
    return kept


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


def job_worker(cluster: Any) -> tuple[float, float] | None:
    """``(threads, memory GiB)`` of one worker of a dask-jobqueue ``cluster``'s jobs, or ``None``.

    ``SLURMCluster(cores=32, memory="120GiB", processes=1)``: ``(32, 120)``; with ``processes=4`` each worker
    has a quarter. What a worker offers fragments when the job script declares no resources.
    """
    job = getattr(cluster, "_dummy_job", None)  # the job template dask-jobqueue renders scripts from
    threads = getattr(job, "worker_process_threads", None)
    process_memory = getattr(job, "worker_process_memory", None)
    if not threads or not process_memory:
        return None
    if isinstance(process_memory, str):  # dask-jobqueue keeps it formatted ("4.00GiB")
        from dask.utils import parse_bytes

        process_memory = parse_bytes(process_memory.replace(" ", ""))
    return float(threads), float(process_memory) / 1024**3


def _processes(cluster: Any) -> int:
    return int(getattr(getattr(cluster, "_dummy_job", None), "worker_processes", 1) or 1)


def max_jobs(cluster: Any) -> int | None:
    """The most workers a dask-jobqueue ``cluster`` will run: its adaptive maximum, else the jobs asked for.

    Counted in workers (jobs times worker processes per job: ``processes=``).
    """
    adaptive = getattr(cluster, "_adaptive", None)  # set by cluster.adapt(); no public accessor
    maximum = getattr(adaptive, "maximum", None)
    if isinstance(maximum, (int, float)) and maximum != float("inf"):
        # dask-jobqueue's adapt(maximum_jobs=N) sets N x processes workers.
        return int(maximum)
    spec = getattr(cluster, "worker_spec", None)
    return len(spec) * _processes(cluster) if spec else None


def job_id() -> str:
    """This batch job's id, for messages from a worker (``""`` outside a batch job)."""
    for name, system in (("SLURM_JOB_ID", "SLURM"), ("PBS_JOBID", "PBS")):
        if os.environ.get(name):
            return f"{system} job {os.environ[name]}"
    return ""


#: Batch jobs that may end without their worker ever connecting before the run stops.
DEAD_JOBS = 3
#: Seconds between looks at the cluster's jobs.
WATCH_INTERVAL = 2.0
_ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
          "TIMEOUT")
_LOG_TAIL = 1500


class JobWatch:
    """Counts a dask-jobqueue SLURM cluster's batch jobs that end before their Dask worker ever connects.

    Such a job (a bad prologue, a missing module, a Python without qcmb_async) leaves dask-jobqueue
    believing it still runs: adapt requests no replacement and fragments wait forever. Every
    ``interval`` seconds :meth:`check` asks SLURM (``scontrol show job``) about the jobs whose worker has not
    connected; one that ended is counted, its log read (``StdErr``/``StdOut`` of the job) and the job
    dropped from the cluster, so adapt may request another. After ``limit`` of them :meth:`check`
    raises :class:`~qcmb_async.errors.ClusterError` quoting the last one's log.
    """

    def __init__(self, cluster: Any, limit: int = DEAD_JOBS) -> None:
        self.cluster = cluster
        self.limit = limit
        self.dead: dict[str, str] = {}
        """SLURM job id -> why it ended and the tail of its log."""
        self._connected: set[str] = set()

    @staticmethod
    def applies(cluster: Any) -> bool:
        """Whether ``cluster`` is a dask-jobqueue SLURM cluster on a host with ``scontrol``."""
        job = getattr(cluster, "_dummy_job", None)
        return type(job).__name__ == "SLURMJob" and shutil.which("scontrol") is not None

    def _seen(self) -> set[str]:
        names = {str(w.get("name")) for w in (getattr(self.cluster, "scheduler_info", None) or {}).get(
            "workers", {}).values()}
        for job_name in list(getattr(self.cluster, "workers", {})):
            # One worker per job is named like the job; several (processes=N) as "<job>-<i>".
            if any(n == str(job_name) or n.startswith(f"{job_name}-") for n in names):
                self._connected.add(str(job_name))
        return self._connected

    async def check(self) -> None:
        """Look at the jobs once; raise :class:`ClusterError` when ``limit`` ended without a worker."""
        import anyio

        connected = self._seen()
        planned = getattr(self.cluster, "worker_spec", {})
        for name, job in list(getattr(self.cluster, "workers", {}).items()):
            job_id = getattr(job, "job_id", None)
            # A job adapt is releasing (gone from the plan) is cancelled on purpose: not a dead one.
            if not job_id or str(name) in connected or job_id in self.dead or name not in planned:
                continue
            ended = await anyio.to_thread.run_sync(_slurm_job_end, str(job_id), getattr(job, "log_directory", None),
                                                   getattr(job, "job_name", None))
            if ended is None:
                continue
            self._seen()
            if str(name) in self._connected or name not in planned:
                continue  # its worker connected after all, or adapt released it meanwhile
            self.dead[job_id] = ended
            _log.warning("batch job ended before its Dask worker connected", job=job_id, dead=len(self.dead),
                         limit=self.limit, detail=ended[-500:])
            with contextlib.suppress(Exception):
                # Dropped from the cluster's plan, so adapt may request a new job instead (scancel of an ended
                # job does nothing).
                await self.cluster.scale_down([name])
        if len(self.dead) >= self.limit:
            from ..errors import ClusterError

            last_id, last = list(self.dead.items())[-1]
            raise ClusterError(
                f"{len(self.dead)} batch jobs ended before their Dask worker connected (SLURM jobs "
                f"{', '.join(self.dead)}); the last one, job {last_id}: {last}. Fix the job (prologue, modules, "
                "python, --queue/--account) and run again.")


def _slurm_job_end(job_id: str, log_directory: str | None, job_name: str | None) -> str | None:
    """Why SLURM job ``job_id`` ended and the tail of its logs, or ``None`` while it is pending or running."""
    import subprocess

    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    fields: dict[str, str] = {}
    if out.returncode == 0:
        for item in out.stdout.split():
            key, _, value = item.partition("=")
            fields.setdefault(key, value)
        state = fields.get("JobState", "")
        if state not in _ENDED:
            return None
    elif "invalid job id" not in (out.stderr + out.stdout).lower():
        return None  # scontrol could not answer: look again later
    # Gone from scontrol (MinJobAge passed): the job ended; its logs are where dask-jobqueue put them.
    guess = [str(Path(log_directory) / f"{job_name}-{job_id}.{ext}") for ext in ("err", "out")] if log_directory \
        else []
    paths = [p for p in dict.fromkeys([fields.get("StdErr", ""), fields.get("StdOut", ""), *guess]) if p]
    tails = []
    for path in paths:
        with contextlib.suppress(OSError):
            text = Path(path).read_bytes()[-_LOG_TAIL:].decode(errors="replace").strip()
            if text:
                tails.append(f"{path}: {text}")
    state = fields.get("JobState", "gone from scontrol")
    why = f"state {state}, exit code {fields.get('ExitCode', '?')}"
    return f"{why}; log {' | '.join(tails)}" if tails else f"{why}; no log found ({', '.join(paths) or 'no path'})"


def keep_logs(shared: Path) -> Path | None:
    """Move a started cluster's job logs out of its private directory before it is removed; the new place.

    Kept under the shared directory's parent as ``logs-<cluster directory name>`` (not swept away with the
    directories of dead clusters). ``None`` when there are none.
    """
    logs = shared / "logs"
    if not logs.is_dir() or not any(logs.iterdir()):
        return None
    target = shared.parent / f"logs-{shared.name}"
    with contextlib.suppress(OSError):
        shutil.move(str(logs), str(target))
        return target
    return None
