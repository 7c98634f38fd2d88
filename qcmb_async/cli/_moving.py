"""What the commands that run expansions share: the run options they pass to every MBE, JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ._console import Usage


def run_options(*, ncores: int | None, memory: float | None, fragment_ncores: int | None,
                fragment_memory: float | None, executor: str, retries: int, timeout: float | None,
                store: Path | None, no_store: bool, scheduler: str | None) -> dict[str, Any]:
    """The ``run_manybody`` options of the command line (``None``: not given)."""
    if store is not None and no_store:
        raise Usage("--store and --no-store contradict each other: give one")
    options: dict[str, Any] = {"ncores": ncores, "memory": memory, "fragment_ncores": fragment_ncores,
                               "fragment_memory": fragment_memory, "executor": executor, "retries": retries,
                               "timeout": timeout}
    if no_store:
        options["store"] = None
    elif store is not None:
        options["store"] = str(store)
    if scheduler is not None:
        options["scheduler"] = scheduler
    return options


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as JSON (numpy arrays become lists)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

    path.write_text(json.dumps(data, default=default, indent=1))
