"""Process executor: fragments run in a pool of long-lived worker processes.

Right for programs QCEngine runs inside the Python process (PySCF, xtb, ...): they hold the
GIL and keep process-global state, and only a separate process can be killed on a timeout.

Each worker is a fresh interpreter (``python -m qcmb_async.executors._procworker``) started
in its own session, so it leads a process group; the programs it starts stay in that group
(``_qcengine.seams.PROGRAMS_IN_OWN_SESSION = False`` in the worker). One
``os.killpg(worker_pid, SIGKILL)`` therefore stops a worker together with every program it
started, including programs orphaned by a worker that died. Workers start concurrently when
the executor is entered (QCEngine import and priming, ~1.5 s) and are reused for every
fragment, and for every run while the executor stays entered; a dead or killed worker is
replaced lazily by the next fragment that needs one.

Only picklable data crosses the boundary: the :class:`FragmentJob` in, the
:class:`JobOutcome` out, as length-prefixed pickle frames over the worker's stdin/stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from .._core.contract import ErrorType, FragmentJob, JobOutcome
from .._logs import get_logger
from ..errors import WorkerStartError
from ._procworker import HEADER, MAGIC
from .base import ReusableExecutor

__all__ = ["ProcessExecutor", "WorkerStartError"]

log = get_logger()

#: Seconds a worker may take to import QCEngine and prime itself.
START_TIMEOUT = 120.0
#: Seconds an idle worker gets to exit after the stop message before it is killed.
STOP_GRACE = 2.0
#: Seconds to wait for a killed worker to be reaped.
_REAP_TIMEOUT = 5.0
#: Characters of a dead worker's stderr log quoted in the error message.
_LOG_TAIL = 2000
#: Most bytes of stray output tolerated before the protocol starts.
_MAX_PREAMBLE = 1 << 20

_STREAM_ERRORS = (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError,
                  OSError, pickle.UnpicklingError, EOFError)


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"


def _worker_env() -> dict[str, str]:
    """This process's environment, with the directory holding ``qcmb_async`` on PYTHONPATH."""
    from .._qcengine.seams import INHERIT_ENV, prime_qcengine

    env = dict(os.environ)
    # Workers reuse this process's QCEngine globals instead of probing the CPU again (~1 s each).
    primed = prime_qcengine()
    if primed:
        env[INHERIT_ENV] = json.dumps(primed, default=str)
    root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env


class _Worker:
    """One worker process and its protocol streams (parent side)."""

    def __init__(self, process: Process, log_path: Path) -> None:
        self.process = process
        self.pid = process.pid
        self.log_path = log_path
        self.discarded = False
        assert process.stdout is not None and process.stdin is not None
        self._out = BufferedByteReceiveStream(process.stdout)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def handshake(self) -> None:
        """Skip output printed before the protocol started; wait for ``ready``."""
        await self._out.receive_until(MAGIC, _MAX_PREAMBLE)
        message = await self.receive()
        if message[0] != "ready":
            raise WorkerStartError(f"worker process {self.pid} failed to prepare itself:\n{message[1]}")

    async def send(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        assert self.process.stdin is not None
        await self.process.stdin.send(HEADER.pack(len(data)) + data)

    async def receive(self) -> Any:
        (size,) = HEADER.unpack(await self._out.receive_exactly(HEADER.size))
        return pickle.loads(await self._out.receive_exactly(size))

    def kill_group(self) -> None:
        """SIGKILL the worker's process group: the worker and every program it started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def reap(self) -> int | None:
        """Wait (bounded) for the worker to exit; its exit status, or ``None``."""
        with anyio.move_on_after(_REAP_TIMEOUT):
            return await self.process.wait()
        return self.process.returncode

    async def close_streams(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-_LOG_TAIL:].strip()


class ProcessExecutor(ReusableExecutor):
    """Runs fragments in up to ``max_workers`` long-lived worker processes, one fragment each at a time.

    Workers start when the executor is entered and stop at the last exit; entered once around
    several runs, the pool serves them all (see :class:`~qcmb_async.executors.base.ReusableExecutor`).
    """

    name = "processes"

    def __init__(self, max_workers: int, *, warm: Iterable[str] = (), start_timeout: float = START_TIMEOUT,
                 stop_grace: float = STOP_GRACE) -> None:
        """``warm``: programs every worker loads while it starts (e.g. ``{"pyscf"}``: importing PySCF
        takes ~2 s, which would otherwise land in -- and count against the timeout of -- the
        first fragment each worker runs)."""
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self._max_workers = max_workers
        self._warm = sorted(set(warm))
        self._start_timeout = start_timeout
        self._stop_grace = stop_grace
        self._slots: anyio.Semaphore | None = None
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._tmp: Path | None = None
        self._spawned = 0
        self._host = socket.gethostname()

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the worker processes alive now (idle or busy)."""
        return sorted(w.pid for w in self._workers if w.alive)

    @property
    def max_workers(self) -> int:
        """The most fragments this pool runs at once."""
        return self._max_workers

    async def _start(self) -> None:
        """Start ``max_workers`` workers concurrently; each registers harnesses and primes QCEngine."""
        self._slots = anyio.Semaphore(self._max_workers)
        self._tmp = Path(tempfile.mkdtemp(prefix="qcmb-async-workers-"))
        errors: list[BaseException] = []

        async def start_one() -> None:
            try:
                self._idle.append(await self._spawn())
            except Exception as exc:
                errors.append(exc)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self._max_workers):
                    tg.start_soon(start_one)
        except BaseException:
            await self._shutdown()
            raise
        if errors:
            await self._shutdown()
            raise errors[0]
        log.debug("worker processes started", executor=self.name, pids=self.worker_pids)

    async def _stop(self) -> None:
        """Stop every worker: idle ones get a stop message and a short grace, the rest are killed."""
        await self._shutdown()

    async def run(self, job: FragmentJob) -> JobOutcome:
        """Run ``job`` on an idle worker; timeout or cancellation kills the worker with its programs."""
        if self._slots is None:
            raise RuntimeError("ProcessExecutor is not running: use 'async with ProcessExecutor(...)'")
        async with self._slots:
            worker = await self._checkout()
            keep = False
            try:
                sent = time.time()
                died = False
                message: Any = None
                with anyio.move_on_after(job.timeout) as scope:
                    try:
                        await worker.send(("run", job))
                        message = await worker.receive()
                    except _STREAM_ERRORS:
                        died = True
                if scope.cancelled_caught:
                    await self._discard(worker)
                    return self._failure(job, worker, sent, ErrorType.TIMEOUT,
                                         f"fragment {job.label} exceeded its timeout of {job.timeout} s; "
                                         f"worker process {worker.pid} and its programs killed")
                if died or not (isinstance(message, tuple) and message[0] == "outcome"):
                    return await self._worker_died(worker, job, sent, None if died else message)
                keep = True
                outcome: JobOutcome = message[1]
                return outcome
            finally:
                if keep and worker.alive and self._slots is not None:
                    self._idle.append(worker)
                else:
                    await self._discard(worker)

    # ------------------------------------------------------------------ internals

    async def _checkout(self) -> _Worker:
        """An idle live worker, or a new one (replacing one that died or was killed)."""
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                return worker
            log.warning("idle worker process died; replacing it", pid=worker.pid,
                        status=_describe_exit(worker.process.returncode))
            await self._discard(worker)
        return await self._spawn()

    async def _spawn(self) -> _Worker:
        if self._tmp is None:
            raise RuntimeError("ProcessExecutor is shut down")
        self._spawned += 1
        log_path = self._tmp / f"worker-{self._spawned}.log"
        with open(log_path, "ab") as err:
            command = [sys.executable, "-m", "qcmb_async.executors._procworker"]
            if self._warm:
                command += ["--warm", ",".join(self._warm)]
            process = await anyio.open_process(
                command,
                # TMPDIR inside the pool's directory: temporary files of in-process programs (PySCF's
                # chkfiles) of a worker killed by a timeout, a cancellation or SIGTERM go with that directory.
                stderr=err, start_new_session=True, env={**_worker_env(), "TMPDIR": str(self._tmp)},
            )
        worker = _Worker(process, log_path)
        self._workers.add(worker)
        try:
            with anyio.fail_after(self._start_timeout):
                await worker.handshake()
        except WorkerStartError:
            await self._discard(worker)
            raise
        except Exception as exc:
            await self._discard(worker)
            raise WorkerStartError(f"worker process {worker.pid} did not start ({type(exc).__name__}: {exc}); "
                                   f"{_describe_exit(worker.process.returncode)}; its stderr:\n"
                                   f"{worker.log_tail()}") from exc
        except BaseException:  # cancelled while starting
            await self._discard(worker)
            raise
        return worker

    async def _discard(self, worker: _Worker) -> int | None:
        """Kill the worker with its programs, reap it, forget it (shielded, bounded)."""
        with anyio.CancelScope(shield=True):
            if worker.discarded:
                return worker.process.returncode
            worker.discarded = True
            # While the worker is not reaped its pid cannot be reused, so killpg is safe. A worker
            # that died on its own may leave orphaned programs, which keep the group id alive.
            if worker.process.returncode != 0:
                worker.kill_group()
            await worker.close_streams()
            returncode = await worker.reap()
            self._workers.discard(worker)
            with contextlib.suppress(ValueError):
                self._idle.remove(worker)
            return returncode

    async def _worker_died(self, worker: _Worker, job: FragmentJob, sent: float, message: Any) -> JobOutcome:
        # Read the exit status before the kill sweep so the report names the real cause.
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            await worker.process.wait()
        status = _describe_exit(worker.process.returncode)
        await self._discard(worker)
        what = f"sent an unexpected message {message!r:.200}" if message is not None else f"died ({status})"
        tail = worker.log_tail()
        text = f"worker process {worker.pid} {what} while running fragment {job.label}"
        log.warning("worker process died", pid=worker.pid, status=status, label=job.label)
        message = f"{text}\nworker stderr:\n{tail}" if tail else text
        return self._failure(job, worker, sent, ErrorType.WORKER_DIED, message)

    def _failure(self, job: FragmentJob, worker: _Worker, start: float, error_type: str, message: str
                 ) -> JobOutcome:
        return JobOutcome.failure(job, error_type, message, start=start, host=self._host,
                                  worker=f"{self._host}:{worker.pid}", pid=worker.pid)

    async def _shutdown(self) -> None:
        with anyio.CancelScope(shield=True):
            idle, self._idle = self._idle, []
            self._slots = None

            async def stop(worker: _Worker, graceful: bool) -> None:
                if graceful and worker.alive:
                    with contextlib.suppress(*_STREAM_ERRORS), anyio.move_on_after(self._stop_grace):
                        await worker.send(("stop",))
                        await worker.receive()  # ("stopped",): idle, waiting for end of input
                await self._discard(worker)  # sweeps the group (leftover programs) and reaps

            async with anyio.create_task_group() as tg:
                for worker in list(self._workers):
                    tg.start_soon(stop, worker, worker in idle)
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
