"""A watchdog process that kills this process's program process groups once this process is gone.

Programs run on worker threads start in their own session (so a timeout can ``killpg`` them
with their children), which also means nothing stops them when the Python process that
started them is SIGKILLed, OOM-killed or crashes: an NWChem left behind keeps its cores busy
while the rerun that resumes from the result store starts its own -- more cores in use than
the run was given.

The guardian is a tiny separate interpreter (``python -S``, standard library only, its own
session so a terminal's Ctrl-C does not reach it) that reads ``+PGID`` / ``-PGID`` lines from a
pipe. When the pipe reaches end of file -- this process exited, however it died -- it sends
SIGKILL to every group still registered and exits. Started lazily by the first program;
one per process. (Worker processes of the process executor need none: their programs stay in
the worker's group, which a thread in the worker kills when its parent goes.)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading

from .._logs import get_logger

__all__ = ["forget", "guard"]

log = get_logger()

_SCRIPT = """
import os, signal, sys
groups = set()
for line in sys.stdin:
    try:
        pgid = int(line[1:])
    except ValueError:
        continue
    if line[0] == "+":
        groups.add(pgid)
    else:
        groups.discard(pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""

_lock = threading.Lock()
_proc: subprocess.Popen[str] | None = None
_owner = 0  # pid that started _proc: a forked child must not write into its parent's guardian
_groups: set[int] = set()


#: Start the guardian. Only the test that shows programs outliving a killed runner turns it off.
ENABLED = True


def _start() -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-S", "-c", _SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True, close_fds=True)
    assert proc.stdin is not None
    for pgid in _groups:  # a replacement guardian takes over what the dead one watched
        proc.stdin.write(f"+{pgid}\n")
    proc.stdin.flush()
    return proc


def _send(line: str) -> None:
    global _proc, _owner
    for _ in range(2):
        if _proc is None or _owner != os.getpid() or _proc.poll() is not None:
            _proc, _owner = _start(), os.getpid()
        try:
            assert _proc.stdin is not None
            _proc.stdin.write(line)
            _proc.stdin.flush()
            return
        except (BrokenPipeError, OSError, ValueError):
            _proc = None


def guard(pgid: int) -> None:
    """Have the guardian kill process group ``pgid`` if this process dies before :func:`forget`."""
    if not ENABLED:
        return
    with _lock:
        _groups.add(pgid)
        try:
            _send(f"+{pgid}\n")
        except OSError as exc:  # no guardian is no reason to fail the fragment
            log.warning("could not start the program guardian", error=str(exc))


def forget(pgid: int) -> None:
    """The group ``pgid`` has ended (or was killed): stop watching it."""
    with _lock:
        if pgid not in _groups:
            return
        _groups.discard(pgid)
        with contextlib.suppress(OSError):
            _send(f"-{pgid}\n")
