"""Real MOPAC behind thin test wrappers: count computations, inject failures.

These run the real program; only the bookkeeping around it is added.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, ClassVar

import qcengine
from qcengine.exceptions import RandomError, UnknownError
from qcengine.programs.mopac import MopacHarness


class CountingMopac(MopacHarness):
    """MOPAC that appends one line per finished computation to ``$QCMB_TEST_COUNT_FILE``."""

    _defaults: ClassVar[dict[str, Any]] = {**MopacHarness._defaults, "name": "mopac-counting"}

    def compute(self, input_model: Any, config: Any) -> Any:
        res = super().compute(input_model, config)
        path = os.environ.get("QCMB_TEST_COUNT_FILE")
        if path:
            # O_APPEND writes of one short line are atomic, even from several threads.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{sum(input_model.molecule.real)}\n".encode())
            finally:
                os.close(fd)
        return res


class FlakyMopac(MopacHarness):
    """MOPAC whose attempts fail with QCEngine's RandomError at rate ``$QCMB_TEST_FAIL_RATE``.

    Which attempts fail is a hash of the fragment's geometry and its attempt number, not a
    random draw: the same ~20 % of attempts fail in every run, whatever other tests did to
    the ``random`` module's state.
    """

    _defaults: ClassVar[dict[str, Any]] = {**MopacHarness._defaults, "name": "mopac-flaky"}
    attempts: ClassVar[list[bool]] = []
    _seen: ClassVar[dict[str, int]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def compute(self, input_model: Any, config: Any) -> Any:
        mol = input_model.molecule
        ident = hashlib.sha256(f"{mol.geometry.round(6).tolist()}{mol.real}".encode()).hexdigest()
        with FlakyMopac._lock:
            n = FlakyMopac._seen[ident] = FlakyMopac._seen.get(ident, 0) + 1
        draw = int(hashlib.sha256(f"{ident}:{n}".encode()).hexdigest()[:8], 16) / 16**8
        fail = draw < float(os.environ.get("QCMB_TEST_FAIL_RATE", "0.2"))
        FlakyMopac.attempts.append(fail)
        if fail:
            raise RandomError("injected transient failure")
        return super().compute(input_model, config)


class FailingMopac(MopacHarness):
    """MOPAC that always fails for a fragment with ``$QCMB_TEST_FAIL_REAL`` (default 9) real atoms."""

    _defaults: ClassVar[dict[str, Any]] = {**MopacHarness._defaults, "name": "mopac-failing"}

    def compute(self, input_model: Any, config: Any) -> Any:
        if sum(input_model.molecule.real) == int(os.environ.get("QCMB_TEST_FAIL_REAL", "9")):
            raise UnknownError("injected permanent failure: SCF exploded")
        return super().compute(input_model, config)


def register_wrappers() -> None:
    from qcengine.programs.base import programs

    for harness in (CountingMopac(), FlakyMopac(), FailingMopac()):
        if harness.name not in programs:
            qcengine.register_program(harness)


def dask_setup(worker: Any = None) -> None:
    """``dask worker --preload tests.wrappers``: the wrappers exist on batch-job workers too."""
    register_wrappers()
