"""The result store keys results by program version (issue 20 §2): an upgrade never reuses old results."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qcmb_async import run
from qcmb_async._core import versions
from qcmb_async._core.store import ResultStore
from tests.helpers import mbe_input, require_program

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_versions() -> Iterator[None]:
    """Every test starts and ends with no cached version (a faked one must not leak into other tests)."""
    versions.clear_cache()
    yield
    versions.clear_cache()


def _mopac_version() -> str:
    """MOPAC's own word for its version (independent of qcmb_async)."""
    out = subprocess.run(["mopac", "-V"], capture_output=True, text=True, timeout=60).stdout
    found = re.search(r"MOPAC version\s+(\S+)", out)
    assert found, out
    return found.group(1)


def _dimer() -> Any:
    return mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2)


def _statuses(result: Any) -> set[str]:
    return {r["status"] for r in result.extras["qcmb_async"]["fragments"]}


def _report(store: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    proc = subprocess.run([sys.executable, "-m", "qcmb_async", "report", str(store)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_mopac_version_is_the_programs_not_the_harness_constant() -> None:
    """QCEngine 0.52's MOPAC harness says "2016" whatever is installed; the store must key by the real one."""
    require_program("mopac")
    import qcengine

    assert qcengine.get_program("mopac").get_version() == "2016"
    assert versions.program_version("mopac") == _mopac_version()


def test_a_result_of_another_program_version_is_never_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Version A's rows are not reused by a run of version B; both stay; the report names both versions."""
    require_program("mopac")
    store = tmp_path / "s.sqlite"
    real = _mopac_version()
    first = run(_dimer(), ncores=2, executor="threads", store=store)
    assert _statuses(first) == {"ok"}
    assert first.extras["qcmb_async"]["program_versions"] == {"mopac": real}

    # "Upgrade" MOPAC: this process now reads another version (what a new binary would print).
    upgraded = "23.1.0-upgrade"
    versions.clear_cache()
    real_lookup = versions._lookup
    monkeypatch.setattr(versions, "_lookup", lambda name: upgraded if name == "mopac" else real_lookup(name))
    second = run(_dimer(), ncores=2, executor="threads", store=store)
    assert _statuses(second) == {"ok"}, "a result of MOPAC " + real + " was reused by MOPAC " + upgraded
    assert second.extras["qcmb_async"]["program_versions"] == {"mopac": upgraded}
    third = run(_dimer(), ncores=2, executor="threads", store=store)
    assert _statuses(third) == {"cached"}  # the same version reuses its own

    with ResultStore(store, readonly=True) as db:
        rows = db.fragments()
    n = len(first.extras["qcmb_async"]["fragments"])
    assert len(rows) == 2 * n
    assert sorted(r["program_version"] for r in rows) == sorted([real] * n + [upgraded] * n)
    text = _report(store)
    assert f"mopac {real}" in text and f"mopac {upgraded}" in text


def test_version_is_asked_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_program("mopac")
    calls: list[str] = []
    real_lookup = versions._lookup

    def counting(name: str) -> str:
        calls.append(name)
        return real_lookup(name)

    monkeypatch.setattr(versions, "_lookup", counting)
    for _ in range(2):
        run(_dimer(), ncores=2, executor="threads", store=tmp_path / "s.sqlite")
    assert calls == ["mopac"]
    run(_dimer(), ncores=2, executor="threads", store=None)  # no store: no key, nothing asked
    assert calls == ["mopac"]


def test_pyscf_key_carries_our_harness_version(monkeypatch: pytest.MonkeyPatch) -> None:
    require_program("pyscf")
    from importlib.metadata import version

    from qcmb_async._core.plan import make_plan
    from qcmb_async.harnesses import pyscf as harness

    assert versions.program_version("pyscf") == f"{version('pyscf')}+harness.{harness.HARNESS_VERSION}"
    plan = make_plan(mbe_input("pyscf", "hf", "sto-3g", bsse="nocp", max_nbody=1))
    before = plan.materialise(plan.fragments[0]).key
    monkeypatch.setattr(harness, "HARNESS_VERSION", harness.HARNESS_VERSION + 1)
    versions.clear_cache()
    assert plan.materialise(plan.fragments[0]).key != before


def _key_v1(program: str, atomic: Any) -> str:
    """The key stores written before versions were keyed: sha256 of {"v": 1, program, input} (no version)."""
    canonical = atomic.model_dump_json(exclude={"id", "provenance"})
    payload = json.dumps({"v": 1, "program": program.lower(), "input": json.loads(canonical)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def test_rows_of_a_store_from_before_versions_are_not_reused(tmp_path: Path) -> None:
    """An old store (no program_version column, keys without a version): opened, migrated, its rows kept,
    listed as version unknown, and never reused."""
    require_program("mopac")
    from qcmb_async._core.plan import make_plan

    store = tmp_path / "old.sqlite"
    first = run(_dimer(), ncores=2, executor="threads", store=store)
    plan = make_plan(_dimer())
    old_keys = {plan.materialise(f).key: _key_v1("mopac", plan.materialise(f).atomic_input) for f in plan.fragments}
    con = sqlite3.connect(store)
    for new, old in old_keys.items():
        con.execute("UPDATE fragments SET key = ? WHERE key = ?", (old, new))
    con.execute("ALTER TABLE fragments DROP COLUMN program_version")
    con.commit()
    con.close()

    second = run(_dimer(), ncores=2, executor="threads", store=store)
    assert _statuses(second) == {"ok"}
    assert second.return_result == pytest.approx(first.return_result, abs=1e-10)
    with ResultStore(store, readonly=True) as db:
        rows = db.fragments()
    assert sorted(r["key"] for r in rows if r["program_version"] is None) == sorted(old_keys.values())
    assert "unknown" in _report(store)
