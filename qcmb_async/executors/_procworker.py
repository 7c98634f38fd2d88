"""Entry point of one :class:`~qcmb_async.executors.processes.ProcessExecutor` worker process.

Started as ``python -m qcmb_async.executors._procworker [--warm prog1,prog2]`` in its own session (the worker is
its process group's leader). Protocol, over private duplicates of the original stdin/stdout:

* worker -> parent: :data:`MAGIC`, then ``("ready", pid)`` or ``("failed", traceback)``;
* parent -> worker: ``("run", FragmentJob)``, answered by ``("outcome", JobOutcome)``;
* parent -> worker: ``("stop",)``, answered by ``("stopped",)``; the worker exits at end of
  input (and at end of input at any other time).

Every message is a frame: an 8-byte big-endian length, then a pickle. Right after start the
worker points fds 0 and 1 away from the pipes (stdin: ``/dev/null``; stdout: its stderr log),
so programs and libraries can neither read protocol bytes nor write into the protocol.
Anything printed before that (while packages import) precedes :data:`MAGIC` and is skipped.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import IO, Any

#: Marks the start of the framed protocol on the worker's stdout.
MAGIC = b"\x00\x00QCMB-ASYNC-PROCWORKER-1\x00\x00"
HEADER = struct.Struct("!Q")


def _take_protocol_fds() -> tuple[IO[bytes], IO[bytes]]:
    """Keep private copies of stdin/stdout for the protocol; repoint fds 0 and 1."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # stray prints land in the worker's stderr log, never in the protocol
    return proto_in, proto_out


def _send(out: IO[bytes], message: Any) -> None:
    import pickle

    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(HEADER.pack(len(data)) + data)
    out.flush()


def _receive(inp: IO[bytes]) -> Any:
    """The next message, or ``None`` at end of input."""
    import pickle

    header = inp.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    data = inp.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def _watch_parent(parent: int) -> None:
    """Kill this worker's whole process group (worker and programs) once the parent is gone."""
    import signal
    import time

    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os.killpg(0, signal.SIGKILL)


def _truncate_log() -> None:
    """Start each fragment with an empty stderr log (the parent reports its tail if we die)."""
    import contextlib

    with contextlib.suppress(OSError):
        os.ftruncate(2, 0)


def _run(job: Any) -> Any:
    """``execute_job`` that turns anything escaping it into a failed outcome."""
    import socket
    import time
    import traceback

    from .._core.contract import JobOutcome
    from .._qcengine.worker import execute_job

    start = time.time()
    try:
        return execute_job(job)
    except BaseException as exc:
        return JobOutcome.failure(job, type(exc).__name__, f"{exc}\n{traceback.format_exc()}", start=start,
                                  host=socket.gethostname(), pid=os.getpid(),
                                  worker=f"{socket.gethostname()}:{os.getpid()}:MainThread")


def main() -> int:
    """Serve fragments until told to stop."""
    proto_in, proto_out = _take_protocol_fds()
    import faulthandler
    import threading
    import traceback

    faulthandler.enable()  # a crash in native code leaves a traceback in the stderr log
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()
    proto_out.write(MAGIC)
    try:
        from .._qcengine import seams as qcengine_seams
        from .._qcengine.worker import prepare_worker

        # Programs stay in this worker's process group: the parent kills both with one killpg.
        qcengine_seams.PROGRAMS_IN_OWN_SESSION = False
        prepare_worker()
        warm = sys.argv[sys.argv.index("--warm") + 1] if "--warm" in sys.argv else ""
        if warm:
            from .._qcengine.worker import warm_program

            for name in warm.split(","):
                warm_program(name)  # e.g. imports pyscf now, not in the first fragment
    except BaseException:
        _send(proto_out, ("failed", traceback.format_exc()))
        return 1
    _send(proto_out, ("ready", os.getpid()))
    while True:
        message = _receive(proto_in)
        if message is None:
            return 0
        if message[0] == "stop":
            # Acknowledge, then stay alive until the parent closes our stdin: the parent sweeps
            # this process group (leftover programs) while its leader still exists.
            _send(proto_out, ("stopped",))
            while proto_in.read(65536):
                pass
            return 0
        if message[0] != "run":
            print(f"qcmb_async worker: unknown message {message[0]!r}", file=sys.stderr)
            return 2
        _truncate_log()
        outcome = _run(message[1])
        try:
            _send(proto_out, ("outcome", outcome))
        except Exception as exc:  # an unpicklable result: report it instead of dying
            outcome.result = {}
            outcome.success = False
            outcome.error_type = type(exc).__name__
            outcome.error_message = f"worker could not send the outcome of fragment {outcome.label}: {exc}"
            _send(proto_out, ("outcome", outcome))


if __name__ == "__main__":
    sys.exit(main())
