"""Settings read from the environment: one model, one prefix (``QCMB_ASYNC_``).

Like QCEngine's ``TaskConfig`` this is a pydantic settings model; every module that needs a
setting calls :func:`get_settings` (read afresh each time: cheap, and tests may change the
environment). Names used before this model existed are still read, with a
``DeprecationWarning``: ``QCMB_DASK_SCHEDULER`` → ``QCMB_ASYNC_DASK_SCHEDULER``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import InputError

__all__ = ["CACHE_FORMAT", "DEPRECATED_NAMES", "Settings", "get_settings", "is_qcengine_cache"]

_OFF = frozenset({"none", "off", "0", "false", "no"})

#: Old environment variable -> the setting that replaces it.
DEPRECATED_NAMES: dict[str, str] = {"QCMB_DASK_SCHEDULER": "dask_scheduler"}


class Settings(BaseSettings):
    """qcmb_async's environment settings (``QCMB_ASYNC_<NAME>``, case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="QCMB_ASYNC_", extra="ignore", case_sensitive=False)

    store: str | None = Field(
        None, description="Result store path (SQLite file) used when `store=\"default\"`; `none` disables the "
                          "store. Unset: `qcmb_async/results.sqlite` in the user cache directory.")
    dask_scheduler: str | None = Field(
        None, description="Dask scheduler address (`tcp://host:8786`, `tls://...`) for `executor=\"dask\"` when "
                          "no `scheduler=` is given.")
    psi4_harness: Literal["auto", "qcengine"] = Field(
        "auto", description="`auto`: psi4 < 1.4 runs through qcmb_async's legacy harness; `qcengine`: always "
                            "QCEngine's own Psi4 harness.")
    qcengine_cache: str | None = Field(
        None, description="File caching QCEngine's machine description (its CPU probe takes ~1 s) per boot; "
                          "`none` disables. Unset: `qcengine-globals.json` in the user cache directory.")

    warm_start_dir: str | None = Field(
        None, description="Directory where the PySCF harness keeps each fragment's last converged orbitals "
                          "(up to 8 geometries, the points of its guess extrapolation) for the `warm_start` keyword. "
                          "Unset: `warm-start` in the user cache directory.")

    @field_validator("store", "dask_scheduler", "qcengine_cache", "warm_start_dir", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("qcengine_cache")
    @classmethod
    def _not_someone_elses_file(cls, value: str | None) -> str | None:
        # The cache is rewritten in place: naming /etc/passwd or a result store must not destroy it.
        if value is None or value.strip().lower() in _OFF:
            return value
        path = Path(value.strip()).expanduser()
        if path.is_dir():
            raise ValueError(f"{value!r} is a directory: name a file (it is created), or 'none'")
        if path.exists() and not is_qcengine_cache(path):
            raise ValueError(f"{value!r} exists and is not a qcmb_async QCEngine cache file (it would be "
                             "overwritten): name a new file, or 'none'")
        return value

    @field_validator("psi4_harness", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def store_disabled(self) -> bool:
        """Whether ``QCMB_ASYNC_STORE`` switches the default store off."""
        return self.store is not None and self.store.strip().lower() in _OFF

    @property
    def qcengine_cache_path(self) -> Path | None:
        """Where QCEngine's machine description is cached, or ``None`` when caching is off."""
        if self.qcengine_cache is not None:
            raw = self.qcengine_cache.strip()
            return None if raw.lower() in _OFF else Path(raw).expanduser()
        import platformdirs

        return Path(platformdirs.user_cache_dir("qcmb_async")) / "qcengine-globals.json"

    @property
    def warm_start_path(self) -> Path:
        """Where the PySCF harness keeps orbitals for warm starts."""
        if self.warm_start_dir is not None:
            return Path(self.warm_start_dir.strip()).expanduser()
        import platformdirs

        return Path(platformdirs.user_cache_dir("qcmb_async")) / "warm-start"


#: The first key of a QCEngine cache file qcmb_async writes (see ``_qcengine/seams.py``).
CACHE_FORMAT = "qcmb_async-qcengine-globals"


def is_qcengine_cache(path: Path) -> bool:
    """Whether ``path`` is a regular file holding a QCEngine cache qcmb_async wrote (safe to replace)."""
    import json

    try:
        if not path.is_file() or path.stat().st_size > 1_000_000:
            return False
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    # Files written before the format key existed carry just these two keys.
    return isinstance(data, dict) and (data.get("format") == CACHE_FORMAT or set(data) == {"machine", "values"})


def get_settings() -> Settings:
    """The settings from the environment now (old variable names read with a DeprecationWarning)."""
    given: dict[str, str] = {}
    for old, field in DEPRECATED_NAMES.items():
        value = os.environ.get(old)
        if value is None:
            continue
        new = f"QCMB_ASYNC_{field.upper()}"
        warnings.warn(f"the environment variable {old} is deprecated: use {new}", DeprecationWarning, stacklevel=2)
        if new not in os.environ:
            given[field] = value
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"QCMB_ASYNC_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise InputError(f"bad qcmb_async environment setting: {problems}") from None
