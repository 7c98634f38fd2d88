"""Thread executor: each fragment's blocking ``qcengine.compute`` on an anyio worker thread.

Right for programs QCEngine runs as a subprocess (NWChem, MOPAC, Psi4's command line,
CFOUR): the GIL is released while the program runs, and the QCEngine seams give every
program process its own environment.
"""

from __future__ import annotations

import time

import anyio

from .._core.contract import ErrorType, FragmentJob, JobOutcome
from .._qcengine.seams import FRAGMENT, FragmentContext
from .._qcengine.worker import execute_job, prepare_worker
from .base import ReusableExecutor

#: Seconds to wait for a worker thread to wind down after its program was killed.
_WIND_DOWN = 10.0


class ThreadExecutor(ReusableExecutor):
    """Runs fragments on anyio worker threads in this process, at most ``max_workers`` at once."""

    name = "threads"

    def __init__(self, max_workers: int = 64) -> None:
        self._max_workers = max_workers
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def max_workers(self) -> int:
        """The most fragments run at once."""
        return self._max_workers

    async def _start(self) -> None:
        # Our own limiter: anyio's default (40 threads) must not cap a large machine.
        self._limiter = anyio.CapacityLimiter(self._max_workers)
        await anyio.to_thread.run_sync(prepare_worker)

    async def _stop(self) -> None:
        self._limiter = None

    async def run(self, job: FragmentJob) -> JobOutcome:
        """Run ``job`` on a thread; on cancellation or timeout its program processes are killed."""
        ctx = FragmentContext(label=job.label, task_config=dict(job.task_config))
        # The context is copied into the worker thread by to_thread.run_sync.
        token = FRAGMENT.set(ctx)
        try:
            with anyio.move_on_after(job.timeout) as scope:
                try:
                    return await anyio.to_thread.run_sync(
                        execute_job, job, abandon_on_cancel=True, limiter=self._limiter
                    )
                except anyio.get_cancelled_exc_class():
                    await _stop(ctx)
                    raise
            assert scope.cancelled_caught
            await _stop(ctx)
            return JobOutcome.failure(
                job, ErrorType.TIMEOUT, f"fragment {job.label} exceeded its timeout of {job.timeout} s; program killed",
                start=time.time() - (job.timeout or 0.0),  # the thread may not report back: approximate
                worker="thread")
        finally:
            FRAGMENT.reset(token)


async def _stop(ctx: FragmentContext) -> None:
    """Kill the fragment's programs and give its thread a moment to return (shielded)."""
    with anyio.CancelScope(shield=True):
        ctx.kill_processes()
        with anyio.move_on_after(_WIND_DOWN):
            while ctx.started.is_set() and not ctx.done.is_set():
                ctx.kill_processes()  # a program may have started after the first kill
                await anyio.sleep(0.02)
