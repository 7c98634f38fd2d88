"""QCEngine harness for Psi4 before 1.4 (e.g. Debian's and Ubuntu's ``psi4`` 1.3.2 package).

QCEngine 0.50+ picks ``psi4 --json`` for these versions but sends a QCSchema v2 input, which
they reject (``KeyError: "Schema name of 'qcschema_atomic_input' not understood"``), and its
availability check starts ``psi4 --module`` two or three times per calculation, each leaving a
``timer.dat`` in the caller's working directory. This harness:

* converts the v2 ``AtomicInput`` to a QCSchema v1 document, runs ``psi4 --json`` on it and
  builds the v2 ``AtomicResult`` from what psi4 writes back (``properties.return_energy`` always,
  ``return_gradient`` (natom x 3, ghost atoms included) for gradients and Hessians (psi4's
  ``CURRENT GRADIENT``), ``return_hessian`` for Hessians);
* passes the fragment's cores (``--nthread`` and ``nthreads``) and memory (``memory``, 95 % of
  ``config.memory``, as QCEngine does) to psi4;
* runs psi4 with its working directory, ``--scratch``, ``PSI_SCRATCH`` and ``TMPDIR`` all set to
  one private scratch directory (under ``config.scratch_directory`` if given), so ``timer.dat``,
  ``psi.*.clean`` and psi4's output files never land anywhere else; the directory is removed
  afterwards unless ``config.scratch_messy``;
* starts psi4 through ``qcengine.util.execute``, so qcmb_async's popen seam gives it the
  fragment's environment and kills it on timeout or cancellation;
* looks for ``psi4`` and asks its version once per process (``psi4 --version``, in a throw-away
  directory; a failed or timed-out answer is not kept, the next use asks again) and never runs
  ``psi4 --module``.

Psi4 keywords (``specification.keywords``) go to psi4 unchanged (``scf_type``, ``mp2_type``,
``e_convergence``...); ``keywords["function_kwargs"]`` goes to psi4's driver call, e.g.
``{"dertype": 0}`` for a finite-difference gradient. Open-shell molecules get
``reference uhf`` unless a reference is given (QCEngine's rule).

Which harness runs: :func:`install` (called by ``register_harnesses()`` when a ``psi4`` executable
is on ``PATH``) puts a :class:`Psi4LegacyHarness` under the name ``"psi4"``. The first time it
is used it asks psi4 for its version; for versions QCEngine runs through ``psi4 --json``
(``< 1.4a2.dev160``) it runs them itself, for newer ones it puts QCEngine's own harness back in
the registry and hands every call to it. The choice is logged once per process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from qcelemental.models.v2 import AtomicResult
from qcelemental.util import parse_version, safe_version
from qcengine.exceptions import ResourceError, UnknownError
from qcengine.programs.model import ProgramHarness

from .._logs import get_logger
from ._psi4_schema import _classify, _to_v2, v1_document

if TYPE_CHECKING:
    from qcelemental.models.v2 import AtomicInput
    from qcengine.config import TaskConfig

__all__ = ["LEGACY_BEFORE", "OLDEST", "Psi4LegacyHarness", "Psi4Probe", "chosen_harness", "install", "probe_psi4"]

#: QCEngine runs ``psi4 --json`` below this version and ``psi4 --qcschema`` from it on.
LEGACY_BEFORE = "1.4a2.dev160"
#: QCEngine refuses Psi4 older than this; so does this harness.
OLDEST = "1.2"
#: Seconds ``psi4 --version`` may take before the probe gives up.
PROBE_TIMEOUT = 120

log = get_logger()

_lock = threading.RLock()
_probes: dict[str, Psi4Probe] = {}
_state: dict[str, Any] = {"original": None, "choice": None, "logged": False}


@dataclass(frozen=True)
class Psi4Probe:
    """What ``psi4 --version`` said about one executable (cached per process when it gave a version)."""

    path: str
    version: str | None
    error: str | None
    seconds: float

    @property
    def legacy(self) -> bool:
        """True when QCEngine would run this psi4 through ``psi4 --json`` (so this harness must)."""
        return self.version is not None and parse_version(self.version) < parse_version(LEGACY_BEFORE)


def psi4_executable() -> str | None:
    """The ``psi4`` on ``PATH``, or None."""
    return shutil.which("psi4")


def probe_psi4(path: str | None = None) -> Psi4Probe | None:
    """Ask ``psi4 --version``; None when there is no psi4.

    A successful answer is cached per process and executable; a failed one (non-zero exit, no
    version printed, timeout after :data:`PROBE_TIMEOUT` s, cannot start) is not: it comes back
    with ``error`` saying why (exit code, psi4's stderr, the timeout), and the next call asks
    again, so one slow or failed start does not make psi4 unusable until the process ends.
    Runs in a throw-away directory (psi4 writes ``timer.dat`` into its working directory even
    for ``--version``).
    """
    path = path or psi4_executable()
    if path is None:
        return None
    probe = _probes.get(path)
    if probe is not None:
        return probe
    with _lock:
        probe = _probes.get(path)
        if probe is not None:
            return probe
        start = time.perf_counter()
        version: str | None = None
        error: str | None = None
        try:
            # subprocess.run, not qcengine.util.execute: its timeout kills the process (QCEngine's popen
            # waits for the output pipes of a hung program to close).
            with tempfile.TemporaryDirectory(suffix="_psi4_version") as cwd:
                proc = subprocess.run([path, "--version"], cwd=cwd, capture_output=True, text=True,
                                      errors="replace", timeout=PROBE_TIMEOUT, check=False)
            stdout, stderr = proc.stdout.strip(), proc.stderr.strip()
            if proc.returncode == 0 and stdout:
                version = safe_version(stdout.split()[-1])
            else:
                error = (f"`{path} --version` exited with code {proc.returncode}"
                         + (f", stderr: {stderr[-2000:]!r}" if stderr else "")
                         + (f", stdout: {stdout[-500:]!r}" if stdout else ", printed no version"))
        except subprocess.TimeoutExpired:
            error = f"`{path} --version` did not answer within {PROBE_TIMEOUT} s (timed out, killed)"
        except Exception as exc:  # permissions, a missing interpreter, a broken installation
            error = f"`{path} --version` could not run: {type(exc).__name__}: {exc}"
        probe = Psi4Probe(path=path, version=version, error=error, seconds=time.perf_counter() - start)
        if error is None:
            _probes[path] = probe
        return probe


def install() -> None:
    """Put a :class:`Psi4LegacyHarness` under the name ``"psi4"`` (idempotent, thread-safe, no psi4 start).

    Shadows only QCEngine's own Psi4 harness (or an empty slot): a ``"psi4"`` harness someone
    else registered is left alone.
    """
    from qcengine.programs.base import programs, register_program, unregister_program
    from qcengine.programs.psi4 import Psi4Harness

    with _lock:
        current = programs.get("psi4")
        if isinstance(current, Psi4LegacyHarness) or _state["choice"] == "qcengine":
            return
        if current is not None and type(current) is not Psi4Harness:
            log.info("psi4 harness left alone", harness=type(current).__qualname__,
                     reason="not QCEngine's own Psi4 harness")
            return
        _state["original"] = current
        if current is not None:
            unregister_program("psi4")
        register_program(Psi4LegacyHarness())


def chosen_harness() -> str | None:
    """``"legacy"``, ``"qcengine"``, or None while no psi4 call has been made in this process."""
    return _state["choice"]


def _choose() -> Psi4Probe | None:
    """Decide once per process between this harness and QCEngine's; log the choice.

    Returns the probe when this harness runs psi4, None when QCEngine's harness does (after
    putting it back into QCEngine's registry).
    """
    probe = probe_psi4()
    with _lock:
        if _state["choice"] is None:
            if probe is not None and probe.error is not None:
                # A broken psi4 stays ours, so the error says why; nothing is decided yet.
                return probe
            _state["choice"] = "legacy" if probe is not None and probe.legacy else "qcengine"
            if _state["choice"] == "qcengine":
                _restore_original()
            log.info(
                "psi4 harness chosen",
                harness=("qcmb_async legacy harness: psi4 --json with QCSchema v1" if _state["choice"] == "legacy"
                         else "QCEngine's own Psi4 harness"),
                psi4=probe.path if probe else None,
                version=probe.version if probe else None,
                probe_seconds=round(probe.seconds, 3) if probe else None,
                reason=(f"psi4 {probe.version} < {LEGACY_BEFORE}: QCEngine would send it QCSchema v2, which it "
                        "cannot read" if _state["choice"] == "legacy" else
                        "no psi4 executable on PATH" if probe is None else
                        f"psi4 {probe.version} >= {LEGACY_BEFORE} speaks QCSchema v2"),
            )
        return probe if _state["choice"] == "legacy" else None


def _restore_original() -> None:
    from qcengine.programs.base import programs, register_program, unregister_program

    original = _state["original"]
    if isinstance(programs.get("psi4"), Psi4LegacyHarness):
        unregister_program("psi4")
        if original is not None:
            register_program(original)


def _original() -> ProgramHarness:
    original = _state["original"]
    if original is None:
        from qcengine.programs.psi4 import Psi4Harness

        original = _state["original"] = Psi4Harness()
    return original


#: Bump whenever a change here can change a result's numbers: the result store keys by harness version.
HARNESS_VERSION = 1


class Psi4LegacyHarness(ProgramHarness):
    """Psi4 < 1.4 through ``psi4 --json`` (QCSchema v1), one subprocess per calculation.

    Thread-safe: every call is its own psi4 process in its own scratch directory.
    """

    _defaults: ClassVar[dict[str, Any]] = {
        "name": "Psi4",
        "scratch": True,
        "thread_safe": True,
        "thread_parallel": True,
        "node_parallel": False,
        "managed_memory": True,
    }

    def found(self, raise_error: bool = False) -> bool:  # type: ignore[override]
        """True if a psi4 executable answers ``--version`` (asked once per process)."""
        probe = _choose()
        if probe is None and _state["choice"] == "qcengine":
            return bool(_original().found(raise_error=raise_error))
        if probe is not None and probe.error is None:
            return True
        if raise_error:
            detail = probe.error if probe is not None else "no `psi4` on PATH"
            raise ModuleNotFoundError(
                f"Psi4 cannot be used: {detail}. Install it with `apt-get install psi4` (Debian/Ubuntu, psi4 1.3.2) "
                "or `conda install psi4 -c conda-forge`, and check `which psi4`."
            )
        return False

    def get_version(self) -> str:
        """psi4's version (asked once per process)."""
        self.found(raise_error=True)
        probe = _choose()
        if probe is None:
            return str(_original().get_version())
        assert probe.version is not None
        return probe.version

    def qcmb_harness_version(self) -> str | None:
        """This harness's version when it runs psi4 itself (``None`` when QCEngine's harness does), part of the
        result store's keys (:data:`HARNESS_VERSION`)."""
        return str(HARNESS_VERSION) if _choose() is not None else None

    def compute(self, input_data: AtomicInput, config: TaskConfig) -> AtomicResult:
        """Run one psi4 calculation (or hand it to QCEngine's harness for psi4 >= 1.4)."""
        self.found(raise_error=True)
        probe = _choose()
        if probe is None:
            return _original().compute(input_data, config)
        assert probe.version is not None
        if parse_version(probe.version) < parse_version(OLDEST):
            raise ResourceError(f"Psi4 {probe.version} is too old: QCEngine and qcmb_async need psi4 >= {OLDEST}.")
        return _run_legacy(probe, input_data, config)


# ----------------------------------------------------------------------------- the run


def psi4_command(path: str, scratch: str, ncores: int) -> list[str]:
    """``psi4 --json data.json`` with ``scratch`` as psi4's scratch directory and ``ncores`` threads."""
    return [path, "--scratch", scratch, "--nthread", str(ncores), "--json", "data.json"]


def _environment(scratch: str, ncores: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if v is not None}
    env.update({
        "PSI_SCRATCH": scratch,
        "TMPDIR": scratch,
        "OMP_NUM_THREADS": str(ncores),
        "MKL_NUM_THREADS": str(ncores),
    })
    return env


def _run_legacy(probe: Psi4Probe, input_data: AtomicInput, config: TaskConfig) -> AtomicResult:
    from qcengine.util import execute, temporary_directory

    doc = v1_document(input_data, config)
    ncores = doc["nthreads"]
    with temporary_directory(parent=config.scratch_directory, suffix="_psi_scratch",
                             messy=config.scratch_messy) as tmpdir:
        scratch = str(Path(tmpdir).resolve())
        start = time.perf_counter()
        ok, out = execute(
            psi4_command(probe.path, scratch, ncores),
            {"data.json": json.dumps(doc)},
            ["data.json"],
            scratch_directory=str(Path(scratch).parent),
            scratch_name=Path(scratch).name,
            scratch_exist_ok=True,
            scratch_messy=True,  # the enclosing temporary_directory cleans up (or keeps, if messy)
            environment=_environment(scratch, ncores),
        )
        wall = time.perf_counter() - start
    if not ok:
        stderr = (out.get("stderr") or "").strip()
        stdout = (out.get("stdout") or "").strip()
        message = f"psi4 exited with code {out['proc'].returncode}:\n{stderr[-4000:] or stdout[-4000:]}"
        raise _classify(message, "execution_error")
    raw = (out.get("outfiles") or {}).get("data.json")
    try:
        result = json.loads(raw) if raw else {}
    except ValueError:
        result = {}
    if "success" not in result:
        raise UnknownError(f"psi4 did not write its result back to data.json; stderr: {out.get('stderr', '')[-4000:]}")
    if not result["success"]:
        error = result.get("error") or {}
        if isinstance(error, dict):
            message, etype = str(error.get("error_message", error)), str(error.get("error_type", "unknown_error"))
        else:
            message, etype = str(error), "internal_error"
        raw_output = result.get("raw_output") or ""
        if raw_output and "Traceback" not in message:
            message += "\n" + raw_output[-3000:]
        raise _classify(message, etype)
    return _to_v2(input_data, result, probe, doc, wall, config.memory)
