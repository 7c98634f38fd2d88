"""Environment settings: one model, one prefix, old names still read with a warning."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import pytest

from qcmb_async.errors import InputError
from qcmb_async.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[1]


def test_prefix_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in ("QCMB_ASYNC_STORE", "QCMB_ASYNC_DASK_SCHEDULER", "QCMB_DASK_SCHEDULER", "QCMB_ASYNC_PSI4_HARNESS",
                 "QCMB_ASYNC_QCENGINE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    s = get_settings()
    assert (s.store, s.dask_scheduler, s.psi4_harness) == (None, None, "auto")
    assert s.qcengine_cache_path is not None and s.qcengine_cache_path.name == "qcengine-globals.json"
    monkeypatch.setenv("QCMB_ASYNC_STORE", "OFF")
    monkeypatch.setenv("QCMB_ASYNC_QCENGINE_CACHE", "none")
    monkeypatch.setenv("QCMB_ASYNC_PSI4_HARNESS", "QCEngine")
    s = get_settings()
    assert s.store_disabled and s.qcengine_cache_path is None and s.psi4_harness == "qcengine"


def test_old_name_still_read_with_a_deprecation_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QCMB_ASYNC_DASK_SCHEDULER", raising=False)
    monkeypatch.setenv("QCMB_DASK_SCHEDULER", "tcp://127.0.0.1:8786")
    with pytest.warns(DeprecationWarning, match="QCMB_ASYNC_DASK_SCHEDULER"):
        assert get_settings().dask_scheduler == "tcp://127.0.0.1:8786"
    monkeypatch.setenv("QCMB_ASYNC_DASK_SCHEDULER", "tls://10.0.0.1:8786")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert get_settings().dask_scheduler == "tls://10.0.0.1:8786", "the new name wins"


def test_bad_value_is_an_input_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCMB_ASYNC_PSI4_HARNESS", "legacy-please")
    with pytest.raises(InputError, match="QCMB_ASYNC_PSI4_HARNESS"):
        get_settings()


def _docs_hook() -> Any:
    """docs/hooks/render_models.py, the mkdocs hook that renders the tables."""
    spec = importlib.util.spec_from_file_location("render_models", ROOT / "docs" / "hooks" / "render_models.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook


def test_every_setting_is_documented() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert "<!-- render: settings -->" in page
    rendered = _docs_hook().render(page)
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"
        assert f"`QCMB_ASYNC_{name.upper()}`" in rendered


def test_every_run_option_is_documented() -> None:
    from qcmb_async._core.options import RunOptions

    hook = _docs_hook()
    rendered = hook.render((ROOT / "docs" / "configuration.md").read_text())
    for name, field in RunOptions.model_fields.items():
        assert field.description, f"run option {name} has no description"
        if name not in hook.INTERNAL:
            assert f"| `{name}` |" in rendered, f"run option {name} missing from docs/configuration.md"


@pytest.mark.parametrize("victim", ["store", "passwd-like", "directory"])
def test_qcengine_cache_never_overwrites_a_file_that_is_not_a_cache(victim: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Naming /etc/passwd or a result store as the cache must be refused before anything runs, the file intact."""
    from qcmb_async import plan_manybody, run
    from tests.helpers import mbe_input

    target = tmp_path / "victim"
    if victim == "directory":
        target.mkdir()
    else:
        content = b"SQLite format 3\x00" + bytes(100) if victim == "store" else b"root:x:0:0:root:/root:/bin/sh\n"
        target.write_bytes(content)
    before = None if victim == "directory" else target.read_bytes()
    monkeypatch.setenv("QCMB_ASYNC_QCENGINE_CACHE", str(target))
    with pytest.raises(InputError, match="QCMB_ASYNC_QCENGINE_CACHE"):
        run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2), store=None)
    if before is not None:
        assert target.read_bytes() == before
    monkeypatch.setenv("QCMB_ASYNC_QCENGINE_CACHE", str(tmp_path / "new.json"))
    assert plan_manybody(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2)).fragments  # a new file is fine


def test_an_old_cache_file_is_still_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qcmb_async.settings import is_qcengine_cache

    old = tmp_path / "old.json"
    old.write_text('{"machine": {}, "values": {}}')  # written before the format key existed
    assert is_qcengine_cache(old)
    monkeypatch.setenv("QCMB_ASYNC_QCENGINE_CACHE", str(old))
    assert get_settings().qcengine_cache_path == old
