"""FAKE QCEngine harnesses for scheduler unit tests (never a stand-in for real-program tests).

``qcmb-fake-sleep`` sleeps for ``keywords["sleep"]`` seconds (releasing the GIL like a
subprocess program would) and returns a deterministic made-up energy; with ``keywords["calls_file"]``
it appends one line per call to that file (calls counted across worker processes).
``qcmb-fake-probe`` starts a real child process through ``qcengine.util.execute`` that
records the environment it was started with.
``qcmb-fake-noop`` returns a fixed energy at once (scheduler overhead benchmarks).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, ClassVar

import qcengine
from qcelemental.models.v2 import AtomicResult
from qcengine.exceptions import RandomError, UnknownError
from qcengine.programs.model import ProgramHarness
from qcengine.util import execute

CALLS: list[dict[str, Any]] = []
_calls_lock = threading.Lock()


def _result(input_model: Any, energy: float, extra: dict[str, Any] | None = None) -> AtomicResult:
    return AtomicResult(
        **{
            "input_data": input_model,
            "molecule": input_model.molecule,
            "extras": extra or {},
            "properties": {"return_energy": energy},
            "return_result": energy,
            "success": True,
            "provenance": {"creator": "qcmb-fake", "version": "0", "routine": "tests.fakes"},
        }
    )


class _FakeHarness(ProgramHarness):
    """What every FAKE harness shares: always found, version 0, thread-safe, no scratch."""

    _defaults: ClassVar[dict[str, Any]] = {
        "name": "qcmb-fake",
        "scratch": False,
        "thread_safe": True,
        "thread_parallel": False,
        "node_parallel": False,
        "managed_memory": False,
    }

    def found(self, raise_error: bool = False) -> bool:
        return True

    def get_version(self) -> str:
        return "0"


class FakeSleepHarness(_FakeHarness):
    """FAKE program: sleeps, then returns -(number of real atoms) + tiny geometry term."""

    _defaults: ClassVar[dict[str, Any]] = {**_FakeHarness._defaults, "name": "qcmb-fake-sleep"}

    def compute(self, input_model: Any, config: Any) -> AtomicResult:
        kw = input_model.specification.keywords
        start = time.time()
        mol = input_model.molecule
        label = ",".join(str(i) for i in range(len(mol.real)) if mol.real[i])
        fail = kw.get("fail_real_atoms")
        if fail is not None and sum(mol.real) in fail:
            raise UnknownError(f"fake failure for a fragment with {sum(mol.real)} real atoms")
        calls = kw.get("calls_file")
        if calls:
            # One line per call, written when it starts (another process may append too): which fragment,
            # by the sum of its absolute coordinates (the geometry term of the energy below).
            with open(calls, "a") as fh:
                fh.write(f"{float(sum(abs(mol.geometry).ravel())):.8f}\n")
        time.sleep(float(kw.get("sleep", 0.05)))
        end = time.time()
        with _calls_lock:
            CALLS.append({"start": start, "end": end, "ncores": config.ncores, "memory": config.memory})
        energy = -float(sum(mol.real)) + 1e-3 * float(sum(abs(mol.geometry).ravel()))
        return _result(input_model, energy, {"label": label})


class FakeProbeHarness(_FakeHarness):
    """FAKE program whose child process records the environment it was started with.

    It waits ``keywords["delay"]`` seconds between QCEngine's environment set-up and the
    child's start, which is exactly where another thread's environment would leak in.
    """

    _defaults: ClassVar[dict[str, Any]] = {**_FakeHarness._defaults, "name": "qcmb-fake-probe", "scratch": True}

    def compute(self, input_model: Any, config: Any) -> AtomicResult:
        time.sleep(float(input_model.specification.keywords.get("delay", 0.2)))
        keys = "('OMP_NUM_THREADS', 'MKL_NUM_THREADS')"
        code = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {keys}}}))"
        ok, out = execute([sys.executable, "-c", code], scratch_directory=config.scratch_directory)
        if not ok:
            raise RandomError(out["stderr"])
        seen = json.loads(out["stdout"].strip().splitlines()[-1])
        return _result(input_model, -1.0, {"seen_env": seen, "config_ncores": config.ncores,
                                           "config_memory": config.memory})


class FakeNoopHarness(FakeSleepHarness):
    """FAKE program that does nothing: energy -1.0 at once (measures QCEngine's and our own overhead)."""

    _defaults: ClassVar[dict[str, Any]] = {**FakeSleepHarness._defaults, "name": "qcmb-fake-noop"}

    def compute(self, input_model: Any, config: Any) -> AtomicResult:
        return _result(input_model, -1.0)


def register_fakes() -> None:
    """Register the fake harnesses with QCEngine (idempotent)."""
    from qcengine.programs.base import programs

    for harness in (FakeSleepHarness(), FakeProbeHarness(), FakeNoopHarness()):
        if harness.name not in programs:
            qcengine.register_program(harness)
