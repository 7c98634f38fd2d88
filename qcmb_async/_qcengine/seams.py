"""Runtime seams into QCEngine that make it safe under concurrency.

QCEngine's files are never edited. Two problems are fixed from outside:

* **Global config race.** ``qcengine.config.get_global()`` publishes an empty dict and
  fills it over ~1 s without a lock, so concurrent first calls raise ``KeyError``.
  :func:`prime_qcengine` builds it once, under a lock, before any fragment runs, verifies
  every key and rebuilds it with safe fallbacks when it was left half-filled.
* **Process environment.** ``qcengine.compute`` wraps every call in
  ``util.environ_context``, which writes ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` into the
  process-wide ``os.environ``. Inside a qcmb_async fragment that context manager is
  replaced by one that keeps the values in a context variable, and ``util.popen`` is
  wrapped so a program process gets ``os.environ`` plus its own fragment's values. Outside
  a fragment both behave exactly as QCEngine's originals. The wrapper also records every
  program process a fragment starts, so timeouts and cancellation can kill them.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..settings import CACHE_FORMAT, get_settings, is_qcengine_cache
from . import guardian

REQUIRED_GLOBAL_KEYS = ("hostname", "memory", "username", "ncores", "nnodes", "cpuinfo", "cpu_brand")

_prime_lock = threading.Lock()
_install_lock = threading.Lock()

# --- program process grouping (switch for executors/processes.py workers) -----------------
#: Start every program process in its own session, so a timeout or cancellation can kill it
#: with its children (``os.killpg``). Worker processes of the process executor set this to
#: False: their programs stay in the worker's process group, and the executor kills worker
#: and programs together with one ``os.killpg(worker_pid, SIGKILL)`` -- even after the worker
#: itself died and its programs were orphaned.
PROGRAMS_IN_OWN_SESSION = True
# --- end program process grouping ------------------------------------------------------------
_installed = False
_originals: dict[str, Any] = {}


#: Prime QCEngine's globals before any fragment runs. Only tests that show the race turn it off.
PRIME = True
#: Keep OMP/MKL thread settings per fragment instead of in ``os.environ``. Only the test that
#: shows the leak turns it off.
ISOLATE_ENVIRONMENT = True


# --------------------------------------------------------------------------- priming


def _fallback_username() -> str:
    try:
        return getpass.getuser()
    except Exception:  # a uid with no passwd entry and no USER/LOGNAME
        return f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _build_globals() -> dict[str, Any]:
    """Rebuild QCEngine's global dict the way ``get_global`` does, never raising."""
    import psutil

    values: dict[str, Any] = {}
    try:
        values["hostname"] = socket.gethostname()
    except Exception:
        values["hostname"] = "localhost"
    values["memory"] = round(psutil.virtual_memory().available / (1024**3), 3)
    values["username"] = _fallback_username()
    proc = psutil.Process()
    if hasattr(proc, "cpu_affinity"):
        cpu_cnt = len(proc.cpu_affinity())
        physical = psutil.cpu_count(logical=False)
        if cpu_cnt == psutil.cpu_count(logical=True) and physical is not None:
            cpu_cnt = physical
    else:
        cpu_cnt = psutil.cpu_count(logical=False) or psutil.cpu_count(logical=True) or 1
    values["ncores"] = cpu_cnt
    values["nnodes"] = 1
    try:
        import cpuinfo

        values["cpuinfo"] = cpuinfo.get_cpu_info()
    except Exception:
        values["cpuinfo"] = {}
    values["cpu_brand"] = values["cpuinfo"].get("brand_raw", values["cpuinfo"].get("brand", "(unknown)"))
    return values


def _complete(values: dict[str, Any] | None) -> bool:
    return values is not None and all(k in values for k in REQUIRED_GLOBAL_KEYS)


#: Environment variable through which a parent hands its primed values to worker processes.
INHERIT_ENV = "QCMB_ASYNC_QCENGINE_GLOBALS"


def _inherited_globals() -> dict[str, Any] | None:
    raw = os.environ.get(INHERIT_ENV)
    if not raw:
        return None
    try:
        values = json.loads(raw)
    except ValueError:
        return None
    if not _complete(values) or values.get("hostname") != socket.gethostname():
        return None
    return values


def _machine_key() -> dict[str, Any]:
    import psutil

    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = str(int(psutil.boot_time()))
    return {"hostname": socket.gethostname(), "boot": boot, "uid": os.getuid() if hasattr(os, "getuid") else 0,
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


def _cache_path() -> Path | None:
    return get_settings().qcengine_cache_path


def _cached_globals() -> dict[str, Any] | None:
    """QCEngine's globals saved by an earlier run on this machine since its last boot."""
    import psutil

    path = _cache_path()
    if path is None:
        return None
    try:
        # $QCMB_ASYNC_QCENGINE_CACHE names it: a cache is a small regular file (not /dev/zero, not a FIFO).
        if not is_qcengine_cache(path):
            return None
        data = json.loads(path.read_text())
        if data.get("machine") != _machine_key():
            return None
        values = dict(data["values"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    # Memory is what is available now, as QCEngine's own first call would measure it.
    values["memory"] = round(psutil.virtual_memory().available / (1024**3), 3)
    return values if _complete(values) else None


def _save_globals(values: dict[str, Any]) -> None:
    path = _cache_path()
    if path is None:
        return
    if path.exists() and not is_qcengine_cache(path):
        return  # never replace a file that is not ours (settings refuse such a path up front)
    with contextlib.suppress(OSError, TypeError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, "machine": _machine_key(), "values": values}))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)  # atomic: concurrent runs never read half a file


def prime_qcengine() -> dict[str, Any]:
    """Build QCEngine's global config once, thread-safely, and make sure it is complete.

    Idempotent and cheap after the first call. Returns a copy of the global values.
    """
    import qcengine.config as qcng_config

    if not PRIME:
        return {}
    with _prime_lock:
        if _complete(qcng_config._global_values):
            return dict(qcng_config._global_values)
        inherited = _inherited_globals()
        if inherited is not None:
            # A worker process on the parent's machine: reuse its values, skip the ~1 s CPU probe.
            qcng_config._global_values = inherited
            return dict(inherited)
        cached = _cached_globals()
        if cached is not None:
            # QCEngine's CPU probe (py-cpuinfo) takes about a second; its answer does not
            # change until the machine reboots.
            qcng_config._global_values = cached
            return dict(cached)
        # A half-filled dict (an earlier call raised part way) would fail every later call.
        qcng_config._global_values = None
        try:
            qcng_config.get_global()
        except Exception:
            qcng_config._global_values = None
        if not _complete(qcng_config._global_values):
            qcng_config._global_values = _build_globals()
        _save_globals(dict(qcng_config._global_values))
        return dict(qcng_config._global_values)


# ------------------------------------------------------------------ per-fragment state


@dataclass
class FragmentContext:
    """Per-fragment state that travels into the worker in :data:`FRAGMENT` (a ContextVar)."""

    label: str
    task_config: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    processes: set[subprocess.Popen[bytes]] = field(default_factory=set)
    exits: list[tuple[str, int, int | None]] = field(default_factory=list)
    """(program, pid, return code) of every program process this fragment started, once it ended."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def thread_env(self) -> dict[str, str]:
        """The thread settings this fragment's programs must start with."""
        ncores = str(_threads_per_process(self.task_config))
        env = {"OMP_NUM_THREADS": ncores, "MKL_NUM_THREADS": ncores}
        get = self.task_config.get if isinstance(self.task_config, dict) else lambda k, d=None: d
        if not get("use_mpiexec", False):
            # An Open MPI program started without mpiexec (Debian's NWChem) otherwise forks an `orted` daemon in a
            # session of its own: killing the program's process group (timeout, Ctrl-C) leaves it running with
            # the program's output pipes open, so QCEngine's read, its worker thread and the interpreter's exit
            # wait for it (measured: an orphaned orted alive 15 minutes later). Isolated singletons start none.
            env["OMPI_MCA_ess_singleton_isolated"] = "1"
        return {**env, **self.env}

    def kill_processes(self) -> int:
        """SIGKILL every program process group this fragment started; returns how many."""
        with self.lock:
            self.cancelled.set()
            procs = list(self.processes)
        killed = 0
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if PROGRAMS_IN_OWN_SESSION:  # program grouping switch (see top of module)
                        os.killpg(proc.pid, signal.SIGKILL)
                    else:
                        proc.kill()
                    killed += 1
        return killed


def _threads_per_process(config: Any) -> int:
    """Threads each program process may use: ``ncores``, or ``cores_per_rank`` when it runs as MPI ranks.

    QCEngine's own ``environ_context`` sets ``ncores`` threads; under ``mpiexec`` every one of the
    ranks would then start that many BLAS/OpenMP threads (ranks x ncores threads on ncores cores).
    """
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    if get("use_mpiexec", False):
        return int(get("cores_per_rank", 1) or 1)
    return int(get("ncores", 1) or 1)


FRAGMENT: ContextVar[FragmentContext | None] = ContextVar("qcmb_async_fragment", default=None)
"""Set by the executor around each fragment; read by the worker and the QCEngine seams."""

_ENV_OVERLAY: ContextVar[dict[str, str] | None] = ContextVar("qcmb_async_env_overlay", default=None)


def current_thread_env() -> dict[str, str]:
    """Environment overlay of the fragment running in this context (for in-process harnesses)."""
    overlay = _ENV_OVERLAY.get()
    if overlay is not None:
        return dict(overlay)
    frag = FRAGMENT.get()
    return frag.thread_env() if frag is not None else {}


@contextlib.contextmanager
def _fragment_environ_context(config: Any = None, env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Drop-in for ``qcengine.util.environ_context`` that never touches ``os.environ`` in a fragment."""
    if FRAGMENT.get() is None:
        with _originals["environ_context"](config=config, env=env) as temp:
            yield temp
        return
    overlay = dict(_ENV_OVERLAY.get() or {})
    if config is not None:
        threads = str(_threads_per_process(config))
        overlay["OMP_NUM_THREADS"] = threads
        overlay["MKL_NUM_THREADS"] = threads
    if env:
        overlay.update(env)
    token = _ENV_OVERLAY.set(overlay)
    try:
        yield dict(overlay)
    finally:
        _ENV_OVERLAY.reset(token)


def _program_env(given: dict[str, str] | None) -> dict[str, str]:
    """The environment a program process of the current fragment must start with."""
    overlay = current_thread_env()
    base = dict(os.environ)
    if given is None:
        return {**base, **overlay}
    env = dict(given)
    for key, value in overlay.items():
        # A harness that copied os.environ meant "the process environment inside
        # environ_context": substitute the fragment's value for the untouched process one.
        if key not in env or env[key] == base.get(key):
            env[key] = value
    return env


def _own_mpi_session_dir(env: dict[str, str]) -> str | None:
    """Give the program its own Open MPI session directory (sets ``OMPI_MCA_orte_tmpdir_base`` in ``env``).

    Every Open MPI process (a singleton NWChem, or ``mpiexec``) creates and, at exit, removes the
    top session directory ``<base>/ompi.<host>.<uid>``; two started side by side race on it, and the
    loser dies in ``orte_init`` ("mkdir ... File exists", seen in CI with two worker processes). A
    leftover file or a directory of another user at that path stops every run. A directory of the
    program's own under the base the user chose (or ``TMPDIR``) has neither fault. Returns the
    directory to remove once the program ended, or None when it could not be made (the program then
    runs with the shared base, as it would without qcmb_async).
    """
    base = env.get("OMPI_MCA_orte_tmpdir_base") or env.get("TMPDIR") or tempfile.gettempdir()
    try:
        # Short: Open MPI puts its rendezvous sockets below it, and a Unix socket path has 108 bytes.
        session = tempfile.mkdtemp(prefix="ompi-", dir=base)
    except OSError:
        return None
    env["OMPI_MCA_orte_tmpdir_base"] = session
    return session


@contextlib.contextmanager
def _fragment_popen(
    args: list[str],
    append_prefix: bool = False,
    popen_kwargs: dict[str, Any] | None = None,
    pass_output_forward: bool = False,
) -> Iterator[dict[str, Any]]:
    """Wrap ``qcengine.util.popen``: own environment, own process group, and registration."""
    frag = FRAGMENT.get()
    original = _originals["popen"]
    if frag is None:
        with original(args, append_prefix, popen_kwargs, pass_output_forward) as ret:
            yield ret
        return
    if frag.cancelled.is_set():
        raise RuntimeError(f"fragment {frag.label} was cancelled before its program started")
    kwargs = dict(popen_kwargs or {})
    kwargs["env"] = _program_env(kwargs.get("env"))
    session = _own_mpi_session_dir(kwargs["env"])
    try:
        with _registered_popen(frag, args, append_prefix, kwargs, pass_output_forward) as ret:
            yield ret
    finally:  # also when the program could not start; a killed program leaves its session behind
        if session is not None:
            shutil.rmtree(session, ignore_errors=True)


@contextlib.contextmanager
def _registered_popen(
    frag: FragmentContext,
    args: list[str],
    append_prefix: bool,
    kwargs: dict[str, Any],
    pass_output_forward: bool,
) -> Iterator[dict[str, Any]]:
    """QCEngine's popen in the program's own process group, registered with the fragment."""
    # Own session: a timeout or cancellation kills the program with all its children.
    if PROGRAMS_IN_OWN_SESSION:  # program grouping switch (see top of module)
        kwargs.setdefault("start_new_session", True)
    with _originals["popen"](args, append_prefix, kwargs, pass_output_forward) as ret:
        own_group = PROGRAMS_IN_OWN_SESSION and kwargs.get("start_new_session")
        if own_group:  # killed with its children if this process dies (guardian.py)
            guardian.guard(ret["proc"].pid)
        with frag.lock:
            frag.processes.add(ret["proc"])
            late = frag.cancelled.is_set()
        if late:
            frag.kill_processes()
        try:
            yield ret
        finally:
            with frag.lock:
                frag.processes.discard(ret["proc"])
                # A negative code is a signal (e.g. -9): the worker reports "killed by SIGKILL".
                frag.exits.append((os.path.basename(str(args[0])) if args else "?", ret["proc"].pid,
                                   ret["proc"].poll()))
            if own_group:
                guardian.forget(ret["proc"].pid)


def install_seams() -> None:
    """Install the environment-isolation seams into QCEngine (idempotent, thread-safe)."""
    global _installed
    if _installed or not ISOLATE_ENVIRONMENT:
        return
    with _install_lock:
        if _installed:
            return
        # sys.modules, not attribute access: ``qcengine.compute`` is shadowed by the function.
        qcng_compute = importlib.import_module("qcengine.compute")
        qcng_util = importlib.import_module("qcengine.util")

        _originals["environ_context"] = qcng_util.environ_context
        _originals["popen"] = qcng_util.popen
        _originals["get_config"] = qcng_compute.get_config
        # compute() looks the name up in its own module globals; util.execute looks up popen.
        qcng_compute.environ_context = _fragment_environ_context
        qcng_util.popen = _fragment_popen
        qcng_compute.get_config = _cached_get_config
        _installed = True


_config_cache: dict[Any, Any] = {}
_CONFIG_CACHE_MAX = 256


def _qcengine_environment() -> tuple[tuple[str, str], ...]:
    """The ``QCENGINE_*`` variables of ``os.environ`` (any case), sorted.

    Called once per fragment: decoding every key of ``os.environ`` cost ~0.04 ms a call, so the raw
    bytes keys are tested first where CPython keeps them (``os.environ._data`` on POSIX).
    """
    data = getattr(os.environ, "_data", None)
    if os.name != "posix" or not isinstance(data, dict):
        return tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith("QCENGINE_")))
    hits = [k for k in data if isinstance(k, bytes) and k[:9].upper() == b"QCENGINE_"]
    return tuple(sorted((os.fsdecode(k), os.fsdecode(data[k])) for k in hits))


def _cached_get_config(*, hostname: Any = None, task_config: dict[str, Any] | None = None) -> Any:
    """QCEngine's ``get_config``, remembered for identical inputs.

    ``get_config`` builds a pydantic-settings ``TaskConfig`` on every ``compute()`` call (about
    0.4 ms, most of QCEngine's own cost per call). Its answer depends only on the task config,
    the ``QCENGINE_*`` environment variables and the node description (fixed once QCEngine is
    primed), so the same inputs get a copy of the same answer. Values that expand environment
    variables or ``~`` are not cached.
    """
    original = _originals["get_config"]
    if hostname is not None or not task_config:
        return original(hostname=hostname, task_config=task_config)
    try:
        items = tuple(sorted(task_config.items()))
        hash(items)
    except TypeError:
        return original(hostname=hostname, task_config=task_config)
    if any(isinstance(v, str) and ("$" in v or "~" in v) for _, v in items):
        return original(hostname=hostname, task_config=task_config)
    env = _qcengine_environment()
    key = (items, env)
    cached = _config_cache.get(key)
    if cached is None:
        cached = original(hostname=hostname, task_config=task_config)
        if len(_config_cache) >= _CONFIG_CACHE_MAX:
            _config_cache.clear()
        _config_cache[key] = cached
    return cached.model_copy()
