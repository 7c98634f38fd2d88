"""The blocking and streaming fronts over :func:`~qcmb_async._runner.run_manybody` (httpx style).

``run`` for scripts (and inside Jupyter's running loop), with Ctrl-C and SIGTERM stopping the run
cleanly; ``open_run`` streams progress events as an async iterator. ``call_blocking`` is ``run``'s
machinery for any coroutine function: the drivers' blocking fronts (``optimize_sync``,
``frequencies_sync``) use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._core.outcome import unwrap_group
from ._logs import hold_quiet
from ._runner import run_manybody
from .errors import InputError, Terminated

if TYPE_CHECKING:
    from qcmanybody.models.v2 import ManyBodyResult

T = TypeVar("T")


def run(mbe_input: Any, **options: Any) -> ManyBodyResult:
    """Blocking :func:`run_manybody` for scripts; also works inside a running loop (Jupyter).

    In a plain script the run uses ``anyio.run``; when an event loop is already running in
    this thread, it runs on a private event-loop thread and this call blocks until it ends.
    Ctrl-C cancels the run in both cases. In a plain script SIGTERM (a batch scheduler's stop)
    cancels it the same way, then raises :class:`~qcmb_async.errors.Terminated` (unless the
    caller installed its own SIGTERM handler).
    """
    return call_blocking(run_manybody, mbe_input, **options)


def call_blocking(func: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
    """``await func(*args, **kwargs)`` from synchronous code: the machinery of :func:`run` and its siblings.

    No running loop in this thread: ``anyio.run``, with SIGTERM handled like Ctrl-C (see
    :func:`_sigterm_as_interrupt`). A running loop (Jupyter): a private event-loop thread; Ctrl-C in
    the caller's thread cancels the call there.
    """
    call = functools.partial(func, *args, **kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        box: dict[str, Any] = {}

        async def main() -> None:
            box["result"] = await call()

        # The result stays out of the loop's main task: asyncio.Runner formats that task (and
        # so the whole ManyBodyResult) on the way out, 0.1 s and more for a large expansion.
        # A Dask cluster's teardown goes on until the loop closes (cancelled callbacks): keep it quiet till then.
        with _sigterm_as_interrupt() as got, hold_quiet():
            try:
                anyio.run(main)
            except KeyboardInterrupt:
                if got:
                    raise Terminated(got[0]) from None
                raise
        return box["result"]
    with anyio.from_thread.start_blocking_portal() as portal:
        future = portal.start_task_soon(call)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[list[int]]:
    """While a run owns the main thread, SIGTERM stops it the way Ctrl-C does.

    Batch schedulers (SLURM, PBS, Kubernetes) send SIGTERM before SIGKILL. Python's default
    action ends the process at once, leaving program processes, worker processes and scratch
    directories behind and the store's run row at ``running``. Here SIGTERM is handed to the
    SIGINT handler the event loop installed (it cancels the run: programs killed, scratch
    removed); the yielded list receives the signal number. A handler the caller installed is
    left alone.
    """
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    sigint = signal.getsignal(signal.SIGINT)
    replaced = getattr(sigint, "__module__", None) == "dask_jobqueue.runner"
    if replaced:
        # Importing dask_jobqueue makes SIGINT call sys.exit(): the run would end with SystemExit (exit code 0)
        # instead of being cancelled. The event loop installs its own handler only over Python's default.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            yield got
            return
        with _sigterm_handler(got):
            yield got
    finally:
        if replaced:
            signal.signal(signal.SIGINT, sigint)


@contextlib.contextmanager
def _sigterm_handler(got: list[int]) -> Iterator[None]:
    """SIGTERM handed to the SIGINT handler in place when it arrives (see :func:`_sigterm_as_interrupt`)."""

    def on_term(signum: int, frame: Any) -> None:
        got.append(signum)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class RunHandle:
    """A run started by :func:`open_run`: iterate its events, then await its result."""

    def __init__(self, receive: Any, done: anyio.Event, box: dict[str, Any]) -> None:
        self._receive = receive
        self._done = done
        self._box = box

    def __aiter__(self) -> Any:
        return self._receive.__aiter__()

    async def result(self) -> ManyBodyResult:
        """The ``ManyBodyResult``; raises what :func:`run_manybody` raised."""
        await self._done.wait()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["result"]


@contextlib.asynccontextmanager
async def open_run(mbe_input: Any, **options: Any) -> AsyncIterator[RunHandle]:
    """Start :func:`run_manybody` and stream its progress events as an async iterator.

    >>> async with open_run(inp, ncores=8) as handle:
    ...     async for event in handle:
    ...         print(event)
    ...     result = await handle.result()

    Leaving the block before the run ended cancels it.
    """
    if "on_event" in options:
        raise InputError("open_run streams the events itself: do not pass on_event")
    send, receive = anyio.create_memory_object_stream[Any](max_buffer_size=math.inf)
    done = anyio.Event()
    box: dict[str, Any] = {}

    async def worker() -> None:
        async with send:
            try:
                box["result"] = await run_manybody(mbe_input, on_event=send.send, **options)
            except Exception as exc:
                box["error"] = exc
            finally:
                done.set()

    try:
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(worker)
            try:
                yield RunHandle(receive, done, box)
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The task group wraps what the caller's block raised (e.g. result()'s InputError): unwrap it.
        raise unwrap_group(group) from None
