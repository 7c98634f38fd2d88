from __future__ import annotations

import pytest

from tests.fakes import register_fakes


@pytest.fixture(autouse=True, scope="session")
def _fakes() -> None:
    register_fakes()
