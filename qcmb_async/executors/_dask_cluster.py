"""The Dask executor's view of its cluster: workers and what they declare, checks before a run, scheduler files.

A mixin of :class:`~qcmb_async.executors.dask.DaskExecutor` (it reads the executor's client, resource names
and batch-job template) and the helpers that tell Clients, clusters and addresses apart.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import anyio

from .._core.contract import FragmentJob
from .._logs import get_logger
from ..errors import InputError
from ._dask_worker import _prepare_dask_worker

log = get_logger()

_WORKER_SYNTAX = 'dask worker tcp://<scheduler>:8786 --resources "cores=16,memory=64"'


_GIB = 1024**3


@dataclass(frozen=True)
class _WorkerInfo:
    address: str
    name: str
    resources: dict[str, float]
    """What the worker declares (``--resources``)."""
    nthreads: int = 0
    memory_limit: float = 0.0
    """Dask's memory limit of the worker, GiB (0: none)."""


def _offer(w: _WorkerInfo, declared: bool, cores: str, memory: str, host_memory: float) -> dict[str, float]:
    """What ``w`` offers fragments: its declared resources, else its threads and memory limit (GiB).

    A worker without a memory limit offers ``host_memory`` (a safe share of its host's memory).
    """
    if declared:
        return dict(w.resources)
    return {cores: float(w.nthreads), memory: w.memory_limit if w.memory_limit > 0 else host_memory}


class _ClusterChecks:
    """Mixin: what the executor knows and checks of the cluster's workers."""

    client: Any
    cores_resource: str
    memory_resource: str
    program_resources: bool
    connect_timeout: float
    _workers: dict[str, _WorkerInfo]
    _template: dict[str, float] | None
    _max_jobs: int | None
    _scheduler_file: Any
    _template_plain: bool
    _declared: bool
    """Whether fragments ask Dask for the cores/memory resources (some worker declares them)."""
    _host_memory: float
    _source: str

    def _needs(self, job: FragmentJob) -> dict[str, float]:
        """What ``job`` needs of one worker: cores, memory (GiB) and, with ``program_resources``, its program."""
        # Floored to 1e-6 GiB: shares like 8/3 GiB must not sum to a hair more than the worker declares.
        memory = math.floor(job.memory * 1e6) / 1e6
        res: dict[str, float] = {self.cores_resource: job.ncores, self.memory_resource: memory}
        if self.program_resources:
            res[job.program] = job.ncores
        return res

    def _resources(self, job: FragmentJob) -> dict[str, float] | None:
        """The Dask ``resources=`` of ``job``'s task: none from workers that declare none.

        Without declared resources Dask's thread slots and the gate on the worker
        (``_dask_worker._Gate``: cores <= nthreads, memory <= memory_limit) bound what runs at once.
        """
        if self._declared:
            return self._needs(job)
        return {job.program: job.ncores} if self.program_resources else None

    async def _refresh_workers(self) -> dict[str, _WorkerInfo]:
        # An asynchronous Client's scheduler_info() is a cached summary without workers: ask the scheduler.
        try:
            info = await self.client.scheduler.identity(n_workers=-1)
        except TypeError:  # distributed before n_workers existed: identity() lists every worker
            info = await self.client.scheduler.identity()
        self._workers = {
            addr: _WorkerInfo(addr, str(w.get("name", addr)), dict(w.get("resources") or {}),
                              int(w.get("nthreads") or 0), float(w.get("memory_limit") or 0) / _GIB)
            for addr, w in info.get("workers", {}).items()
        }
        return self._workers

    def _declares(self, resources: dict[str, float]) -> bool:
        return self.cores_resource in resources and self.memory_resource in resources

    def _offers(self, w: _WorkerInfo) -> dict[str, float]:
        return _offer(w, self._declared, self.cores_resource, self.memory_resource, self._host_memory)

    def _fitting(self, job: FragmentJob) -> list[str] | None:
        """Workers without declared resources whose threads and memory limit hold ``job`` (``None``: all do)."""
        if self._declared or self._template is not None:
            return None
        fit = [a for a, w in self._workers.items() if w.nthreads >= job.ncores
               and self._offers(w)[self.memory_resource] >= job.memory - 1e-6]
        return None if len(fit) == len(self._workers) else fit

    async def _check_workers(self) -> None:
        client = self.client
        with contextlib.suppress(TimeoutError):
            await client.wait_for_workers(1, timeout=self.connect_timeout)
        workers = await self._refresh_workers()
        where = client.scheduler.address
        if not workers:
            raise InputError(
                f"the Dask cluster at {where} has no workers (waited {self.connect_timeout} s): start some with "
                f"`{_WORKER_SYNTAX}`"
            )
        # Workers that declare cores and memory are what fragments ask for; a plain Dask cluster (none declares
        # them) is used as it is: its workers' threads and memory limits size the fragments instead.
        self._declared = any(self._declares(w.resources) for w in workers.values())
        if not self._declared:
            self._host_memory = await self._worker_host_memory()
        source = (f"declared resources {self.cores_resource!r}/{self.memory_resource!r}" if self._declared
                  else "worker threads (nthreads) and memory_limit: no worker declares "
                       f"{self.cores_resource!r}/{self.memory_resource!r} resources")
        self._source = source
        log.info("Dask workers", scheduler=where, workers=len(workers), sizing=source,
                 offers={w.name: self._offers(w) for w in list(workers.values())[:16]})

    async def _worker_host_memory(self) -> float:
        """GiB a worker without a memory limit offers: the smallest safe share of its host's memory."""
        from ._dask_worker import _host_memory

        with contextlib.suppress(Exception), anyio.move_on_after(self.connect_timeout):
            replies = await self.client.run(_host_memory, on_error="return")
            values = [v for v in replies.values() if isinstance(v, float) and v > 0]
            if values:
                return min(values)
        from .._core.resources import default_memory

        return default_memory()

    async def _prepare_workers(self) -> None:
        from ._dask_scratch import register_cleanup

        # Every worker, also those that join later, removes its fragments' temporary files when it closes.
        await register_cleanup(self.client)
        replies = await self.client.run(_prepare_dask_worker, on_error="return")
        broken = {addr: reply for addr, reply in replies.items() if isinstance(reply, BaseException)}
        if broken:
            detail = "; ".join(f"{addr}: {type(e).__name__}: {e}" for addr, e in broken.items())
            raise InputError(
                f"could not prepare QCEngine on Dask worker(s) ({detail}). Every worker needs qcmb_async "
                "and qcengine installed in the Python environment that runs `dask worker`"
            )

    def _check_template(self) -> None:
        assert self._template is not None
        self._declared = not self._template_plain and self._declares(self._template)
        self._source = ("the batch jobs' declared resources" if self._declared
                        else "the batch jobs' worker threads and memory (no --resources declared)")
        log.info("Dask batch jobs", sizing=self._source, each_worker=self._template, most_workers=self._max_jobs)
        if not self._max_jobs:
            raise InputError("the dask-jobqueue cluster may start no job: call cluster.adapt(minimum_jobs=..., "
                             "maximum_jobs=N) or cluster.scale(jobs=N) before the run")

    async def _read_scheduler_file(self) -> str:
        """The address in the scheduler file, waiting up to ``connect_timeout`` for it to be written."""
        path = self._scheduler_file
        assert path is not None
        with anyio.move_on_after(self.connect_timeout):
            while True:
                address = scheduler_file_address(path)
                if address is not None:
                    return address
                await anyio.sleep(0.2)
        raise InputError(f"no Dask scheduler address in the scheduler file {str(path)!r} after {self.connect_timeout} "
                         "s: start `dask scheduler --scheduler-file PATH` first (see docs/hpc.md)")


    async def _unsatisfiable(self, resources: dict[str, float]) -> str | None:
        """Why no current worker could ever run a task asking for ``resources`` (``None``: some can)."""

        def fits_job(template: dict[str, float]) -> bool:
            return all(template.get(r, 0.0) >= amount - 1e-6 for r, amount in resources.items())

        if not self._declared:
            resources = {k: v for k, v in resources.items() if k in (self.cores_resource, self.memory_resource)}
        if self._template is not None:
            # Workers of batch jobs come and go: what matters is whether a job could run it.
            if fits_job(self._template):
                return None
            return (f"no batch job of the cluster can run a fragment asking for {resources} (memory in GiB): the "
                    f"largest job's worker offers {self._template}. Give fragment_ncores/fragment_memory at most "
                    "that, or raise --job-cores/--job-memory")

        def fits(w: _WorkerInfo) -> bool:  # what a worker offers, declared or not
            offer = self._offers(w)
            return all(offer.get(r, 0.0) >= amount - 1e-6 for r, amount in resources.items())

        if any(fits(w) for w in self._workers.values()):
            return None
        workers = await self._refresh_workers()  # workers may have joined since
        if any(fits(w) for w in workers.values()):
            return None
        offers = {w.name: self._offers(w) for w in workers.values()}
        return (
            f"no worker of the Dask cluster can run a fragment asking for {resources} (memory in GiB); the "
            f"workers offer {offers} ({self._source}). Give fragment_ncores/fragment_memory at most the largest "
            f"worker's, or start workers with enough, e.g. `{_WORKER_SYNTAX}`"
        )


def _is_client(obj: object) -> bool:
    try:
        import distributed
    except ImportError:
        return False
    return isinstance(obj, distributed.Client)


def _client_loop(client: Any) -> Any:
    loop = getattr(client, "loop", None)
    return getattr(loop, "asyncio_loop", None)


def _client_address(client: Any) -> str:
    scheduler = getattr(client, "scheduler", None)
    address = getattr(scheduler, "address", None)
    if not address:
        raise InputError(f"the given Dask Client {client!r} is not connected to a scheduler")
    return str(address)


#: Largest scheduler file read, bytes (Dask writes a few hundred).
_SCHEDULER_FILE_LIMIT = 1024 * 1024


def scheduler_file_address(path: Any) -> str | None:
    """The address a Dask scheduler file holds; ``None`` while it does not exist or is not complete JSON yet.

    Read with the input files' guards: a directory, FIFO, device, binary or oversized file can never become a
    scheduler file, so it is an :class:`InputError` at once instead of a wait until the connect timeout; so is
    complete JSON without an ``address``.
    """
    import json
    from pathlib import Path

    from .._core.inputs import read_text_file

    path = Path(path)
    try:
        path.stat()
    except FileNotFoundError:
        return None  # not written yet: `dask scheduler --scheduler-file` may still be starting
    except OSError:
        pass  # read_text_file says what is wrong
    expect = "the JSON file `dask scheduler --scheduler-file PATH` writes"
    text = read_text_file(path, "Dask scheduler file", expect=expect, limit=_SCHEDULER_FILE_LIMIT)
    try:
        data = json.loads(text)
    except ValueError:
        return None  # being written (Dask does not write it atomically)
    address = data.get("address") if isinstance(data, dict) else None
    if not isinstance(address, str) or not address.strip():
        raise InputError(f"Dask scheduler file {str(path)!r} holds no scheduler 'address': give {expect}")
    return address.strip()


def tls_problem(address: str, security: Any) -> str | None:
    """Why a Client could not speak TLS to ``address`` with ``security`` (``None``: it can, or no TLS needed).

    Without credentials distributed fails deep inside its TLS connector with a ``TypeError`` about
    ``ssl_context``; Dask's own configuration (``distributed.comm.tls.*``) is what a plain address uses.
    """
    if not address.lower().startswith("tls://"):
        return None
    try:
        from distributed.security import Security
    except ImportError:
        return None  # the executor says to install the dask extra when it starts

    try:
        args = (security if security is not None else Security()).get_connection_args("client")
    except Exception as exc:  # unreadable certificate files and the like
        return f"its TLS credentials cannot be loaded: {type(exc).__name__}: {exc}"
    if args.get("ssl_context") is None:
        return ("no TLS credentials are configured: set Dask's TLS configuration (the environment variables "
                "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
                "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY, or the same keys in a Dask YAML file), or from Python "
                "pass scheduler=Client(address, security=Security(...)); see docs/executors.md")
    return None
