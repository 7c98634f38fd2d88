"""What the commands that run expansions share: the run options they pass to every MBE, JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ._console import Usage
from ._inputs import _check_writable, _load, _store_arg
from ._options import ResourceOptions, XyzOptions


def run_options(resources: ResourceOptions, *, with_scheduler: bool = True) -> dict[str, Any]:
    """The ``run_manybody`` options of the command line's resource options (``None``: not given)."""
    if resources.store is not None and resources.no_store:
        raise Usage("--store and --no-store contradict each other: give one")
    options: dict[str, Any] = {name: getattr(resources, name) for name in (
        "ncores", "memory", "fragment_ncores", "fragment_memory", "executor", "retries", "timeout")}
    if resources.no_store:
        options["store"] = None
    elif (store := _store_arg(resources.store)) is not None:
        options["store"] = str(store)
    if with_scheduler and resources.scheduler is not None:
        options["scheduler"] = resources.scheduler
    return options


def start_job(command: str, input: Path, xyz: XyzOptions, output: Path | None,
              resources: ResourceOptions) -> tuple[Any, dict[str, Any]]:
    """The input and run options of a command that runs many expansions (optimize, frequencies).

    Everything checked before anything runs: --driver refused (the command chooses), the input
    read, --output writable, the resource options turned into ``run_manybody`` options.
    """
    if xyz.driver is not None:
        raise Usage(f"--driver does not apply to {command}: it chooses what each expansion computes")
    mbe = _load(input, xyz)
    _check_writable("--output", output)
    return mbe, run_options(resources)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as JSON (numpy arrays become lists)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

    path.write_text(json.dumps(data, default=default, indent=1))
