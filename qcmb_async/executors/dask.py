"""Dask executor: each fragment is a task on a ``distributed`` cluster, sized by worker resources.

Workers declare what they offer, e.g. ``dask worker tcp://head:8786 --resources "cores=16,memory=64"``
(memory in GiB); every fragment asks for ``{"cores": ncores, "memory": memory}`` of its ``task_config``,
so Dask never runs more fragments on a worker than its declared cores and memory allow.
Workers need qcmb_async (same version) and the programs importable/on their ``PATH``.

Timing, cancellation and lost workers:

* A fragment's ``timeout`` is enforced on the worker, from the moment the fragment starts there: its
  program processes are killed and a ``TimeoutError`` outcome comes back. The client also stops waiting
  after ``timeout + timeout_grace`` (queueing, transfer, a stuck in-process program), cancels the task
  and returns ``TimeoutError`` itself.
* Cancelling the awaiting task cancels the Dask future and, best effort, kills the fragment's program
  processes on whichever worker runs it (``client.run``). Dask cannot stop a worker thread: an
  in-process program (PySCF, ...) runs to its end, only its result is dropped.
* A worker lost mid-run: Dask reschedules its tasks elsewhere (``distributed.scheduler.allowed-failures``);
  if Dask gives up, the outcome's ``error_type`` is ``KilledWorker``, which the scheduler retries.
  Program processes run in their own sessions: those of a worker killed by SIGKILL run to their end.
  A fragment that no current worker could ever run fails at once (``ResourcesUnavailable``); one whose
  fitting workers all left after submission waits for a new one (a ``timeout`` bounds that wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .._core.contract import ErrorType, FragmentJob, JobOutcome
from .._core.resources import WorkerLimits
from .._logs import end_quiet_teardown, get_logger, quiet_teardown
from ..errors import InputError
from ..settings import get_settings
from ._dask_batch import _Batching, _Entry, _task_key
from ._dask_cluster import (
    _client_address,
    _client_loop,
    _ClusterChecks,
    _is_client,
    _WorkerInfo,
    scheduler_file_address,
    tls_problem,
)
from ._dask_worker import _failed, _kill_on_worker, _run_on_worker
from .base import ReusableExecutor

if TYPE_CHECKING:
    import distributed

_log = get_logger()
#: Environment variable naming the scheduler when none is passed.
SCHEDULER_ENV = "QCMB_ASYNC_DASK_SCHEDULER"
_THREE_WAYS = (
    f"DaskExecutor(scheduler='tcp://host:8786'), DaskExecutor(scheduler=<distributed.Client or a dask-jobqueue "
    f"cluster>), DaskExecutor(scheduler=Path('scheduler.json')) (a scheduler file), DaskExecutor(cluster='slurm'), "
    f"or the environment variable {SCHEDULER_ENV}=tcp://host:8786 (on the qcmb-async command line: "
    f"--scheduler tcp://host:8786, --scheduler-file scheduler.json or --cluster slurm)"
)
#: Seconds allowed for remote kills and for closing the client.
_REMOTE_CALL_TIMEOUT = 10.0


#: Most fragments the run hands over for deep-queue tasks, across all cores.
_DEEP_HOLD = 4096


def _reset_by_peer(exc: BaseException) -> bool:
    """Whether a failed connect was reset by the other side (a TLS server answering plain TCP does that)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ConnectionResetError) or "Connection reset by peer" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class DaskExecutor(_Batching, _ClusterChecks, ReusableExecutor):
    """Runs fragments as tasks on a Dask ``distributed`` cluster (asyncio backend only).

    Connects when entered, disconnects at the last exit: entered once around several runs, one
    connection serves them all (see :class:`~qcmb_async.executors.base.ReusableExecutor`).

    Args:
        scheduler: Scheduler address (``"tcp://host:8786"``), a ``distributed.Client``, a Dask cluster object
            (e.g. dask-jobqueue's ``SLURMCluster``; used as it is, left open), a scheduler file
            (a :class:`pathlib.Path` to the JSON ``dask scheduler --scheduler-file`` writes; waited for up to
            ``connect_timeout``), or ``None`` to read ``$QCMB_ASYNC_DASK_SCHEDULER``. An asynchronous Client on
            the running event loop is used as it is and left open. A synchronous Client (or one bound to another
            event loop, e.g. when :func:`qcmb_async.run` runs the core on its private loop) cannot be awaited here: the
            executor connects its own asynchronous Client to the same scheduler and closes it on exit;
            the given Client is not touched.
        cores_resource: Name of the worker resource counting cores.
        memory_resource: Name of the worker resource counting memory in GiB.
        program_resources: Also ask for ``{program: ncores}``, so fragments only run on workers that
            declare the program, e.g. ``--resources "cores=16,memory=64,nwchem=16"``.
        connect_timeout: Seconds to connect to the scheduler and to wait for a first worker.
        timeout_grace: Seconds the client waits beyond a fragment's ``timeout`` before giving up on it.
        max_batch: Most fragments in one Dask task (1: no batching). Small fragments are batched so that
            the measured per-task transport is ``transport_share`` of the task's predicted time; large ones
            stay one per task. Records, events and the store stay per fragment.
        batch_window: Seconds a batch waits for more small fragments before it is submitted.
        transport_share: Target share of a task's time spent in transport.
        deep_batch: Most fragments in one Dask task when many small ones wait: then a task takes half an
            even share of the waiting fragments per core (guided self-scheduling: tasks shrink as the queue
            drains, the last ones are single fragments); ``max_batch`` or less turns this off.
        deep_share: Target share of a deep-queue task's time spent in transport (the executor then asks the
            run for enough fragments to form them: four such tasks per core in hand).
        stream_interval: A batch task predicted to run longer sends finished outcomes back while it runs, at most
            every this many seconds (a fragment that takes longer: as soon as it is done), so each fragment's result
            is stored and announced when it exists, and a worker lost mid-task loses none that were sent: Dask's
            rerun of the task skips them. ``None``: outcomes come back when the whole task ends.
        direct_to_workers: Fetch results from the workers directly instead of through the scheduler (less
            work for the scheduler; needs this process to reach the workers). ``None``: Dask's default.
        cluster: Start a batch cluster for the run instead (``"slurm"``, ``"pbs"``, a dict or
            :class:`~qcmb_async.executors.hpc.ClusterOptions`; extra ``qcmb_async[hpc]``): TLS, adaptive jobs,
            closed (jobs cancelled) at the last exit. Exclusive with ``scheduler``.

    With a dask-jobqueue cluster (given or started) the executor does not wait for workers: fragments are
    submitted at once, Dask's ``adapt`` requests jobs for them, and the first fragment starts when the first
    job does. Capacity and what a fragment may ask for come from the job template (its ``--resources``).
    """

    name = "dask"

    def __init__(
        self,
        scheduler: str | distributed.Client | None = None,
        *,
        cores_resource: str = "cores",
        memory_resource: str = "memory",
        program_resources: bool = False,
        connect_timeout: float = 30.0,
        timeout_grace: float = 30.0,
        cluster: Any = None,
        max_batch: int = 8,
        batch_window: float = 0.002,
        transport_share: float = 0.05,
        deep_batch: int = 64,
        deep_share: float = 0.0025,
        direct_to_workers: bool | None = None,
        stream_interval: float | None = 0.25,
    ) -> None:
        self._given_client: Any = None
        self._given_cluster: Any = None
        self._cluster_options: Any = None
        self._scheduler_file: Path | None = None
        self._address: str | None = None
        if cluster is not None:
            from .hpc import cluster_options

            if scheduler is not None:
                raise InputError("give either scheduler= (an existing Dask cluster) or cluster= (start one), not both")
            self._cluster_options = cluster_options(cluster)
        elif scheduler is None:
            scheduler = get_settings().dask_scheduler
            if scheduler is None:
                raise InputError(f"the Dask executor needs a scheduler: pass one of {_THREE_WAYS}")
        if self._cluster_options is not None:
            pass
        elif isinstance(scheduler, str):
            if not scheduler.strip():
                raise InputError(f"empty Dask scheduler address: pass one of {_THREE_WAYS}")
            self._address = scheduler.strip()
            problem = tls_problem(self._address, None)
            if problem:
                raise InputError(f"the Dask scheduler address {self._address!r} asks for TLS, but {problem}")
        elif isinstance(scheduler, os.PathLike):
            self._scheduler_file = Path(scheduler)
            scheduler_file_address(self._scheduler_file)  # can it ever be one? (a directory, a binary file...)
        elif _is_client(scheduler):
            self._given_client = scheduler
        elif hasattr(scheduler, "scheduler_address"):
            self._given_cluster = scheduler
        else:
            raise InputError(f"scheduler must be an address string, a scheduler file Path, a distributed.Client or a "
                             f"Dask cluster, got {scheduler!r}")
        self.cores_resource = cores_resource
        self.memory_resource = memory_resource
        self.program_resources = program_resources
        self.connect_timeout = connect_timeout
        self.timeout_grace = timeout_grace
        self._client: Any = None
        self._owns_client = False
        self._workers: dict[str, _WorkerInfo] = {}
        self._inflight: set[str] = set()
        self._cluster: Any = None
        """The dask-jobqueue cluster started here (closed at the last exit)."""
        self._shared: Path | None = None
        self._template: dict[str, float] | None = None
        """Resources one batch job's worker declares, when the cluster is a dask-jobqueue one."""
        self._max_jobs: int | None = None
        self._declared = True
        """Whether fragments ask Dask for the cores/memory resources: some worker (or the job) declares them."""
        self._host_memory = 0.0
        self._template_plain = False
        """The template's cores/memory are the job worker's threads and memory, not declared resources."""
        self._source = ""
        self._watch: Any = None
        """Batch-job watcher (``hpc.JobWatch``): jobs that end before their worker connects."""
        self._watcher: asyncio.Future[None] | None = None
        self._cluster_error: BaseException | None = None
        self._keep_logs = False
        self._single: set[asyncio.Future[Any]] = set()
        """Waits on single-fragment tasks (``max_batch=1``), cancelled when the watcher gives up."""
        self.kept_logs: Path | None = None
        """Where a failed run's batch job logs were kept (a cluster started for the run)."""
        from .._core.cost import CostModel

        self.direct_to_workers = direct_to_workers
        self.max_batch = max(1, int(max_batch))
        self.batch_window = batch_window
        self.transport_share = transport_share
        self.deep_batch = max(1, int(deep_batch))
        self.deep_share = deep_share
        self._deep_hint = 1
        """Largest deep-queue task size the cost model allowed so far (sizes the queue depth)."""
        self._model = CostModel()
        self._calibrated: set[str] = set()
        self._transport = 0.005
        """Seconds one task costs beyond its work (submit, scheduling, result transfer): measured on tasks."""
        self._overheads: list[float] = []
        self._batch_hint = 1
        self._pending: dict[Any, deque[_Entry]] = {}
        self._outstanding: dict[Any, int] = {}
        self._pump_handle: asyncio.Handle | None = None
        self._pump_at = 0.0
        self._batches: set[asyncio.Future[None]] = set()
        self.stream_interval = stream_interval
        self._topic: str | None = None
        """The Dask event topic batch tasks send outcomes on (subscribed while entered)."""
        self._streaming: dict[str, Any] = {}
        """Task key -> its ``_Task``, for tasks that send outcomes back while they run."""

    @property
    def client(self) -> distributed.Client:
        """The asynchronous Client in use (inside ``async with`` only)."""
        if self._client is None:
            raise RuntimeError("DaskExecutor is not entered: use `async with DaskExecutor(...) as exe`")
        return self._client

    @property
    def capacity(self) -> tuple[float, float]:
        """Total declared ``(cores, memory GiB)`` of the workers seen last (inside ``async with``).

        For a dask-jobqueue cluster: one job's resources times the most jobs it may run (jobs are requested
        as fragments wait, so the run is sized for the cluster it may grow to, not the workers up now).
        """
        if self._template is not None and self._max_jobs:
            return (self._template.get(self.cores_resource, 0.0) * self._max_jobs,
                    self._template.get(self.memory_resource, 0.0) * self._max_jobs)
        offers = [self._offers(w) for w in self._workers.values()]
        cores = sum(o.get(self.cores_resource, 0.0) for o in offers)
        memory = sum(o.get(self.memory_resource, 0.0) for o in offers)
        return cores, memory

    @property
    def limits(self) -> WorkerLimits | None:
        """What one fragment may have: the largest worker's (or batch job's) cores and memory (inside ``async with``).

        Workers that declare ``cores``/``memory`` resources offer those; a plain Dask cluster's workers
        their ``nthreads`` and ``memory_limit``. Read by the run to size fragments (``options_for``).
        """
        if self._template is not None:
            shapes = [(self._template.get(self.cores_resource, 0.0), self._template.get(self.memory_resource, 0.0))]
        else:
            offers = [self._offers(w) for w in self._workers.values()]
            shapes = [(o.get(self.cores_resource, 0.0), o.get(self.memory_resource, 0.0)) for o in offers]
        # Dask places a task without resources on any worker: automatic sizes fit the smallest one.
        return WorkerLimits.of(shapes, self._source or "Dask workers",
                               anywhere=not self._declared and self._template is None)

    async def _start(self) -> None:
        """Connect, check workers and their resources, and prepare QCEngine on every worker."""
        import asyncio

        try:
            import distributed
        except ImportError as exc:
            raise InputError(f"the Dask executor needs `pip install qcmb_async[dask]`: {exc}") from exc
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise InputError("the Dask executor needs anyio's asyncio backend (distributed runs on asyncio)") from None
        given = self._given_client
        cluster = self._given_cluster
        if self._cluster_options is not None:
            from .hpc import start_cluster

            self._cluster, self._shared = await start_cluster(self._cluster_options)
            cluster = self._cluster
        if self._scheduler_file is not None:
            self._address = await self._read_scheduler_file()
            problem = tls_problem(self._address, None)
            if problem:
                raise InputError(f"the scheduler file {str(self._scheduler_file)!r} names {self._address!r}, a TLS "
                                 f"address, but {problem}")
        if given is not None and given.asynchronous and _client_loop(given) is loop:
            self._client, self._owns_client = await given, False
        else:
            if cluster is not None:
                address, security = str(cluster.scheduler_address), getattr(cluster, "security", None)
            else:
                address = self._address if given is None else _client_address(given)
                security = getattr(given, "security", None)
            client = None
            try:
                # A given Client's or cluster's TLS credentials (distributed.security.Security) go with its address.
                client = distributed.Client(address, asynchronous=True, timeout=self.connect_timeout,
                                            set_as_default=False, security=security,
                                            direct_to_workers=self.direct_to_workers)
                with anyio.fail_after(self.connect_timeout + 5):
                    self._client = await client
            except BaseException as exc:
                # Closed here, or its __del__ complains later about a closed event loop.
                if client is not None:
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception), anyio.move_on_after(5):
                        await client.close()
                await self._close()
                if not isinstance(exc, (OSError, TimeoutError, ValueError)):
                    raise
                if _reset_by_peer(exc) and str(address).lower().startswith("tcp://"):
                    raise InputError(
                        f"the Dask scheduler at {address!r} accepted the connection and then reset it: it is most "
                        f"likely a TLS scheduler (started with --protocol tls). Address it as "
                        f"{'tls://' + str(address)[6:]!r} with TLS credentials (see docs/executors.md, "
                        "'Several machines')") from exc
                raise InputError(
                    f"could not connect to the Dask scheduler at {address!r} within {self.connect_timeout} s: {exc}. "
                    f"Start one with `dask scheduler` and pass its address ({_THREE_WAYS})"
                ) from exc
            self._owns_client = True
        try:
            if cluster is not None:
                from .hpc import job_resources, job_worker, max_jobs

                self._template, self._max_jobs = job_resources(cluster), max_jobs(cluster)
                plain = job_worker(cluster)
                if plain is not None and not self._declares(self._template or {}):
                    # No cores/memory resources in the job script: the job's worker threads and memory stand in.
                    self._template = {**(self._template or {}), self.cores_resource: plain[0],
                                      self.memory_resource: plain[1]}
                    self._template_plain = True
            if self._template is not None:
                self._check_template()
            else:
                await self._check_workers()
            await self._prepare_workers()
            if self.max_batch > 1 and self.stream_interval is not None:
                from ._dask_batch import _nonce

                self._topic = f"qcmb-async-outcomes-{_nonce}-{id(self):x}"
                self._client.subscribe_topic(self._topic, self._on_stream)
            if cluster is not None and self._template is not None:
                from .hpc import JobWatch

                if JobWatch.applies(cluster):
                    self._watch = JobWatch(cluster)
                    self._watcher = asyncio.ensure_future(self._watch_jobs())
        except BaseException:
            await self._close()
            raise

    async def _watch_jobs(self) -> None:
        """Look at the batch jobs every few seconds; stop the run when too many end before their worker connects."""
        from ..errors import ClusterError
        from .hpc import WATCH_INTERVAL

        assert self._watch is not None
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                await self._watch.check()
            except ClusterError as exc:
                if self._shared is not None:
                    # The cluster's private directory goes when it closes: its job logs are moved out first.
                    logs, kept = self._shared / "logs", self._shared.parent / f"logs-{self._shared.name}"
                    exc = ClusterError(f"{str(exc).replace(str(logs), str(kept))} The batch job logs are kept in "
                                       f"{kept}", logs=str(kept))
                self._cluster_error = exc
                self._fail_everything()
                return
            except Exception as exc:  # a look that failed (scontrol hung, ...): the next one may work
                _log.warning("could not look at the batch jobs", error=f"{type(exc).__name__}: {exc}")

    async def _unless_broken(self, future: Any) -> Any:
        """``await future``, or ``None`` as soon as the batch-job watcher gives up on the cluster."""
        waiter = asyncio.ensure_future(self._await(future))
        self._single.add(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._cluster_error is not None and task is not None and not task.cancelling():
                return None  # only the inner wait was cancelled (by the watcher), not this fragment
            raise
        finally:
            self._single.discard(waiter)

    @staticmethod
    async def _await(future: Any) -> Any:
        return await future

    def _fail_everything(self) -> None:
        """Release every fragment waiting here or in a task: :meth:`run` raises the cluster's error for them."""
        for waiter in list(self._single):
            waiter.cancel()
        for task in list(self._batches):
            task.cancel()
        for pending in self._pending.values():
            while pending:
                entry = pending.popleft()
                entry.outcome = _failed(entry.job, ErrorType.CANCELLED, str(self._cluster_error))
                entry.done.set()

    async def __aexit__(self, *exc_info: Any) -> None:
        """Leave (see the base class); a failed run keeps the job logs of a cluster started for it."""
        exc_type = exc_info[0] if exc_info else None
        if isinstance(exc_type, type) and not issubclass(exc_type, (asyncio.CancelledError, KeyboardInterrupt)):
            self._keep_logs = True  # they say why jobs died
        await super().__aexit__(*exc_info)

    async def _stop(self) -> None:
        """Kill programs of fragments still in flight, then close the Client if this executor opened it."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        quiet_teardown()
        if self._pump_handle is not None:
            self._pump_handle.cancel()
            self._pump_handle = None
        for task in list(self._batches):
            task.cancel()
        for pending in self._pending.values():
            while pending:  # never submitted: nothing to kill, only their waiters to release
                entry = pending.popleft()
                entry.outcome = _failed(entry.job, ErrorType.CANCELLED,
                                        f"fragment {entry.job.label}: the executor stopped before it was submitted")
                entry.done.set()
        with anyio.CancelScope(shield=True):
            if self._inflight and self._client is not None:
                await self._kill_remote(sorted(self._inflight))
            await self._close()

    @property
    def queue_depth(self) -> float:
        """How many fragments per core the executor wants in hand (read by the run's resource pool).

        2 (one running, one queued on the worker, so no core waits for a round trip to this process) until
        the cost model predicts fragments short enough to batch, then three batches per core: one running,
        one queued, one filling here; with deep-queue tasks (``deep_batch``) enough for four of them per core.
        The workers' declared resources still bound what runs at once.
        """
        if self.max_batch <= 1:
            return 1.0
        if self._batch_hint <= 1:
            return 2.0
        base = 3.0 * self._batch_hint
        if self.deep_batch <= self.max_batch:
            return base
        # Deep-queue tasks take half an even share per core: four of them per core must be in hand, but
        # never more than _DEEP_HOLD materialised fragments in all (a huge cluster of tiny fragments).
        return max(base, min(4.0 * self._deep_hint, _DEEP_HOLD / max(1.0, self.capacity[0])))

    async def run(self, job: FragmentJob) -> JobOutcome:
        """Submit ``job`` to the cluster and await its outcome (see the module docstring for failures).

        Raises :class:`~qcmb_async.errors.ClusterError` when the cluster's batch jobs keep ending before their
        worker connects (see :class:`~qcmb_async.executors.hpc.JobWatch`).
        """
        if self._cluster_error is not None:
            raise self._cluster_error
        if self.max_batch <= 1:
            return await self._run_single(job)
        outcome = await self._run_pooled(job)
        if self._cluster_error is not None:
            raise self._cluster_error
        return outcome

    async def _run_single(self, job: FragmentJob) -> JobOutcome:
        """One fragment, one Dask task (``max_batch=1``)."""
        from distributed.scheduler import KilledWorker

        client = self.client
        resources = self._resources(job)
        unmet = None
        key = _task_key(job)
        unmet = unmet or await self._unsatisfiable(self._needs(job))
        if unmet:
            return _failed(job, ErrorType.RESOURCES_UNAVAILABLE, unmet)
        future = client.submit(_run_on_worker, job, key, gated=not self._declared, resources=resources,
                               workers=self._fitting(job), allow_other_workers=False, pure=False, key=key)
        self._inflight.add(key)
        submitted = time.time()
        try:
            wait = None if job.timeout is None else job.timeout + self.timeout_grace
            with anyio.move_on_after(wait):
                try:
                    outcome: JobOutcome = await (future if self._watch is None else self._unless_broken(future))
                    if self._cluster_error is not None:
                        await self._abandon(future, key)
                        raise self._cluster_error
                    return outcome
                except KilledWorker as exc:
                    return _failed(job, ErrorType.KILLED_WORKER, f"Dask gave up on fragment {job.label}: {exc}",
                                   submitted)
                except anyio.get_cancelled_exc_class():
                    # Our own deadline or the caller cancelling: either way the task must go.
                    await self._abandon(future, key)
                    raise
                except Exception as exc:
                    if exc is self._cluster_error:
                        raise  # the cluster cannot run anything: the run stops (not this fragment's failure)
                    return _failed(job, type(exc).__name__, f"Dask task {key} failed: {exc}", submitted)
            return _failed(
                job, ErrorType.TIMEOUT,
                f"fragment {job.label} gave no result within its timeout of {job.timeout} s "
                f"(+{self.timeout_grace} s grace for queueing on the cluster); Dask task cancelled, programs killed",
                submitted,
            )
        finally:
            self._inflight.discard(key)

    async def _abandon(self, future: Any, key: str, fragment_keys: list[str] | None = None) -> None:
        """Cancel the task and kill its program processes wherever it runs (shielded, best effort)."""
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception), anyio.move_on_after(_REMOTE_CALL_TIMEOUT):
                await self.client.cancel([future], reason="qcmb_async: fragment cancelled or timed out")
            await self._kill_remote(fragment_keys or [key])

    async def _kill_remote(self, keys: list[str]) -> None:
        with contextlib.suppress(Exception), anyio.move_on_after(_REMOTE_CALL_TIMEOUT):
            await self.client.run(_kill_on_worker, keys, on_error="ignore")

    async def _close(self) -> None:
        # Closing the connections makes distributed/tornado log every callback still using them, with
        # tracebacks: the teardown is ours and expected, so those loggers stay quiet while it runs.
        quiet_teardown()
        try:
            await self._close_all()
        finally:
            end_quiet_teardown()

    async def _close_all(self) -> None:
        client, self._client = self._client, None
        topic, self._topic = self._topic, None
        if client is not None and topic is not None:
            with contextlib.suppress(Exception):  # a client already closed has no subscription left
                client.unsubscribe_topic(topic)
        if client is not None and self._owns_client:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception), \
                    anyio.move_on_after(_REMOTE_CALL_TIMEOUT):
                await client.close()
        cluster, self._cluster = self._cluster, None
        shared, self._shared = self._shared, None
        if cluster is not None:
            from .hpc import stop_cluster

            # Cancels the batch jobs (scancel/qdel), stops the scheduler, removes the TLS files.
            keep = self._keep_logs or self._cluster_error is not None
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception), anyio.move_on_after(60):
                self.kept_logs = await stop_cluster(cluster, shared, keep=keep)


