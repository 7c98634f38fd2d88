"""Scratch directories on Dask workers: every temporary file of a fragment lives in one that is removed.

A Dask worker cannot stop a thread: a fragment cancelled on it (the run interrupted, a timeout) runs on,
and a worker whose batch job is cancelled (``scancel``, the cluster closing) exits while it runs. In-process
PySCF then leaves its temporary HDF5 files (SCF chkfiles, integral files) in the system temporary
directory for good. So, like the local process pool (a private ``TMPDIR`` removed with the pool):

* each worker process gets a private directory ``qcmb-async-worker-*`` in its temporary directory (with an
  ``owner`` file), PySCF's ``lib.param.TMPDIR`` points into it;
* it is each fragment's QCEngine ``scratch_directory`` (unless the job names one; QCEngine removes the
  directory it makes there per program run) and its programs' ``TMPDIR``;
* the worker's directory is removed by a worker plugin's ``teardown`` when the worker closes (a
  cancelled job's SIGTERM closes it), at interpreter exit, and, if the worker was SIGKILLed, by the next
  worker process on that host (directories whose owner process is gone).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

PREFIX = "qcmb-async-worker-"
PLUGIN_NAME = "qcmb-async-scratch"

_lock = threading.Lock()
_dir: Path | None = None


def _owner(pid: int | None = None) -> str:
    import psutil

    proc = psutil.Process(pid)
    return f"{socket.gethostname()} {proc.pid} {proc.create_time():.3f}"


def _sweep(base: Path) -> None:
    """Remove the scratch directories of worker processes on this host that died without cleaning up."""
    host = socket.gethostname()
    for path in base.glob(PREFIX + "*"):
        try:
            owner = (path / "owner").read_text()
            owner_host, pid, _ = owner.split()
        except (OSError, ValueError):
            continue
        if owner_host != host:
            continue
        try:
            alive = _owner(int(pid)) == owner
        except Exception:  # psutil.NoSuchProcess and friends: that process is gone
            alive = False
        if not alive:
            shutil.rmtree(path, ignore_errors=True)


def worker_scratch() -> Path:
    """This worker process's private scratch directory (created, and PySCF pointed at it, on first use)."""
    global _dir
    with _lock:
        if _dir is not None and _dir.is_dir():
            return _dir
        base = Path(tempfile.gettempdir())
        _sweep(base)
        path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
        (path / "owner").write_text(_owner())
        if _dir is None:
            atexit.register(remove_worker_scratch)
        _dir = path
    return path


def _point_pyscf(path: Path, program: str) -> None:
    # PySCF reads lib.param.TMPDIR whenever it opens a temporary file (process-global, like the directory).
    import sys

    if program == "pyscf" or "pyscf" in sys.modules:
        with contextlib.suppress(ImportError):
            from pyscf import lib

            if str(path) != lib.param.TMPDIR:
                _pyscf_before.setdefault("TMPDIR", lib.param.TMPDIR)
                lib.param.TMPDIR = str(path)


#: PySCF's temporary directory before a worker pointed it at its scratch: put back when the scratch goes (a
#: worker inside the client's own process, e.g. ``LocalCluster(processes=False)``, must not leave PySCF
#: pointing at a removed directory for the rest of that process).
_pyscf_before: dict[str, str] = {}


def _restore_pyscf(path: Path) -> None:
    import sys

    if "pyscf" not in sys.modules or "TMPDIR" not in _pyscf_before:
        return
    with contextlib.suppress(ImportError):
        from pyscf import lib

        if str(path) == lib.param.TMPDIR:
            lib.param.TMPDIR = _pyscf_before.pop("TMPDIR")


def remove_worker_scratch() -> None:
    """Remove this worker process's scratch directory (whatever still runs in it)."""
    global _dir
    with _lock:
        path, _dir = _dir, None
    if path is not None:
        _restore_pyscf(path)
        shutil.rmtree(path, ignore_errors=True)


def use_worker_scratch(program: str, task_config: dict[str, Any], env: dict[str, str]) -> Path:
    """Point a fragment's temporary files into :func:`worker_scratch`.

    Sets ``task_config["scratch_directory"]`` (unless the job gave one: QCEngine makes and removes a
    directory per program run inside it) and ``env["TMPDIR"]`` (its program processes' temporary
    directory) in place; PySCF's process-wide temporary directory is the worker's. One directory per
    worker, not per fragment: QCEngine's task configuration stays the same from fragment to fragment
    (cached, see :func:`qcmb_async._qcengine.seams._cached_get_config`).
    """
    base = worker_scratch()
    _point_pyscf(base, program)
    if not task_config.get("scratch_directory"):
        task_config["scratch_directory"] = str(base)
    env.setdefault("TMPDIR", str(base))
    return base


def _remove_on_sigterm() -> None:
    """On SIGTERM remove the scratch directory, then do what the signal did before.

    A batch job's cancellation (``scancel``, or the cluster closing its jobs) sends SIGTERM to every process
    of the job at once: the worker process under a nanny dies of it at once (Python's default action), so
    neither ``teardown`` nor ``atexit`` runs. Only the main thread may set handlers (the worker's loop runs
    there); a handler someone else installed is called after ours.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if getattr(previous, "_qcmb_async", False):
        return

    def on_term(signum: int, frame: Any) -> None:
        remove_worker_scratch()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    on_term._qcmb_async = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, on_term)


class ScratchCleanup(WorkerPlugin):
    """Worker plugin: the worker's scratch directory exists from setup and is removed at teardown."""

    name = PLUGIN_NAME

    def setup(self, worker: Any) -> None:
        worker_scratch()
        _remove_on_sigterm()

    def teardown(self, worker: Any) -> None:
        remove_worker_scratch()


def register_cleanup(client: Any) -> Any:
    """``client.register_plugin`` of :class:`ScratchCleanup` (every worker, including those that join later)."""
    return client.register_plugin(ScratchCleanup(), name=PLUGIN_NAME)
