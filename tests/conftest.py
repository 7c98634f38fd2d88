from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest

from tests.fakes import register_fakes

# Tests opt in to a result store explicitly; a shared default store would make runs reuse
# each other's fragments and hide what a test means to measure.
os.environ.setdefault("QCMB_ASYNC_STORE", "none")
# Likewise QCEngine's machine description is built fresh in every test process (the race and
# recovery tests need QCEngine's own first call); tests of the cache point it at a temp file.
os.environ.setdefault("QCMB_ASYNC_QCENGINE_CACHE", "none")
# Program processes inherit this, so a test looking for leftover programs finds only its own
# session's, not those of another test run on the same machine.
os.environ.setdefault("QCMB_TEST_SESSION", uuid.uuid4().hex)


@pytest.fixture(autouse=True, scope="session")
def _fakes() -> None:
    register_fakes()


@pytest.fixture(autouse=True)
def _restore_qcmb_logger() -> Iterator[None]:
    """Give every test the package logger as it found it.

    A CLI command invoked in-process (CliRunner) configures the ``qcmb_async`` logger for its run
    (handlers, ``propagate=False``, a level such as ``--quiet``'s ERROR); left behind, it hid later
    tests' INFO records from ``caplog`` depending on test order.
    """
    logger = logging.getLogger("qcmb_async")
    saved = (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
    logger.disabled = saved[3]
