from __future__ import annotations

import os

import pytest

from tests.fakes import register_fakes

# Tests opt in to a result store explicitly; a shared default store would make runs reuse
# each other's fragments and hide what a test means to measure.
os.environ.setdefault("QCMB_ASYNC_STORE", "none")
# Likewise QCEngine's machine description is built fresh in every test process (the race and
# recovery tests need QCEngine's own first call); tests of the cache point it at a temp file.
os.environ.setdefault("QCMB_ASYNC_QCENGINE_CACHE", "none")


@pytest.fixture(autouse=True, scope="session")
def _fakes() -> None:
    register_fakes()
