"""Shared pieces of the drivers that move atoms (optimize, frequencies, the ASE calculator).

Each of them runs many MBEs of one input at different geometries on ONE entered executor: the
input is loaded and checked once, then re-used with new coordinates (:func:`at_geometry`).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import numpy as np

from ._core.checks import check_input
from ._core.contract import Executor
from ._core.events import StepFinished, StepStarted, emit
from ._core.fragment import ORDER_KEY
from ._core.gmbe import GMBEInput
from ._core.gmbe_plan import as_gmbe_input, check_gmbe
from ._core.inputs import load_input
from ._core.options import make_options
from .errors import InputError
from .executors import resolve_executor

#: run_manybody options a driver passes through unchanged to every MBE it runs.
RUN_OPTIONS = ("ncores", "memory", "fragment_ncores", "fragment_memory", "level_barrier", "scratch_directory",
               "retries", "timeout", "on_event", "store")
#: Options that choose the one executor a driver enters for all its MBEs.
EXECUTOR_OPTIONS = ("executor", "scheduler", "cluster")
#: Every keyword option the drivers (optimize, frequencies, the ASE calculator) take (docs/dynamics.md lists them).
DRIVER_OPTIONS = (*RUN_OPTIONS, *EXECUTOR_OPTIONS)
#: run_manybody options the drivers refuse, and why.
REFUSED_OPTIONS = {
    "screening": "the kept subsets would change as atoms move (a cutoff crossed between two geometries makes the "
                 "energy jump, and finite differences across a jump are meaningless)",
    "on_error": "a gradient or Hessian with a fragment missing is no gradient: a failed fragment always stops the "
                "job (finished fragments stay in the result store)",
}


def prepare(mbe_input: Any, driver: str) -> Any:
    """Load and check ``mbe_input`` once; return it with ``driver`` and total (not interaction) results.

    Moving atoms needs the total energy and its derivatives: for CP/VMFC QCManyBody returns the
    interaction energy unless ``return_total_data`` is set, so it is set here. Blocking.
    """
    gmbe = as_gmbe_input(mbe_input)
    if gmbe is not None:
        return _prepare_gmbe(gmbe, driver)
    inp = load_input(mbe_input)
    data = inp.model_dump()
    spec = data["specification"]
    spec["driver"] = driver
    spec["keywords"]["return_total_data"] = True
    for atomic in spec["specification"].values():
        atomic["driver"] = driver
    # The frame must not move between steps: gradients are in the input's frame.
    data["molecule"] = {**data["molecule"], "fix_com": True, "fix_orientation": True}
    # Atoms move in the input molecule's (fragment) order: a file order kept from fragments found by bonds
    # would turn each gradient back to the file's order, which the step would then apply to the wrong atoms.
    data["molecule"]["extras"] = {k: v for k, v in (data["molecule"].get("extras") or {}).items()
                                  if k != ORDER_KEY}
    out = type(inp)(**data)
    check_input(out)
    return out


def _prepare_gmbe(inp: GMBEInput, driver: str) -> GMBEInput:
    """A generalized MBE with ``driver``, frame fixed; Hessians with caps are finite differences only."""
    if driver == "hessian":
        raise InputError("a generalized MBE has no analytic Hessians (caps): use method='finite-difference' "
                         "(qcmb-async frequencies --hessian finite-difference)")
    from ._core.gmbe import bonds_of

    mol = inp.molecule.model_copy(update={"fix_com": True, "fix_orientation": True})
    # The bonds (which are cut and capped) are those of the first geometry for every step: guessed again at
    # each step, a bond stretched past 1.2 x covalent radii would drop its cap and the surface would jump.
    out = inp.model_copy(update={"molecule": mol, "specification": {**inp.specification, "driver": driver},
                                 "bonds": bonds_of(inp)})
    check_gmbe(out)
    return out


def geometry(inp: Any) -> np.ndarray:
    """The input molecule's coordinates, bohr, shape (natom, 3)."""
    return np.asarray(inp.molecule.geometry, dtype=float).reshape(-1, 3)


def at_geometry(inp: Any, coords: Any) -> Any:
    """``inp`` with the molecule's coordinates replaced by ``coords`` (bohr, natom x 3); nothing else changes."""
    xyz = np.asarray(coords, dtype=float).reshape(-1, 3)
    if xyz.shape != geometry(inp).shape:
        raise InputError(f"coordinates of shape {xyz.shape} for a molecule of {len(inp.molecule.symbols)} atoms")
    if not np.all(np.isfinite(xyz)):
        raise InputError("coordinates must be finite numbers")
    mol = inp.molecule.model_copy(update={"geometry": xyz.copy()})
    return inp.model_copy(update={"molecule": mol})


def check_options(options: dict[str, Any]) -> None:
    """:class:`InputError` for an option the drivers do not take (before the input is even read)."""
    split_options(options)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], str | Executor, Any]:
    """``(run_manybody keyword options, executor, scheduler)``; unknown names are an ``InputError``.

    ``cluster=`` becomes the executor (a Dask executor starting that batch cluster once for the whole job).
    """
    options = dict(options)
    refused = sorted(set(options) & set(REFUSED_OPTIONS))
    if refused:
        raise InputError(f"{refused[0]}= does not apply to optimize, frequencies or the ASE calculator: "
                         f"{REFUSED_OPTIONS[refused[0]]}. They take {', '.join(DRIVER_OPTIONS)}")
    executor = options.pop("executor", "auto")
    scheduler = options.pop("scheduler", None)
    cluster = options.pop("cluster", None)
    unknown = sorted(map(str, set(options) - set(RUN_OPTIONS)))
    if unknown:
        raise InputError(f"unknown option(s) {unknown}: use {', '.join(DRIVER_OPTIONS)}")
    if cluster is not None:
        from ._runner import _cluster_executor

        executor, scheduler = _cluster_executor(cluster, executor, scheduler), None
    return options, executor, scheduler


def make_executor(inp: Any, run_options: dict[str, Any], executor: str | Executor, scheduler: Any) -> Executor:
    """The executor a driver enters once and reuses for every MBE (see ``executors.resolve_executor``)."""
    from ._runner import _unsized

    sizes = {k: run_options.get(k) for k in ("ncores", "memory", "fragment_ncores", "fragment_memory")}
    if scheduler is not None or executor == "dask" or getattr(executor, "name", None) == "dask":
        sizes = _unsized(sizes)  # a cluster's workers size the runs, once they are known (run_manybody)
    options = make_options(**sizes)
    if isinstance(inp, GMBEInput):
        return resolve_executor(executor, {str(inp.specification["program"]).lower()}, options, scheduler)
    specs = inp.specification.specification.values()
    return resolve_executor(executor, {s.program for s in specs}, options, scheduler,
                            psiapi=any(s.program == "psi4" and (s.extras or {}).get("psiapi") for s in specs))


@contextlib.asynccontextmanager
async def kept_pool(inp: Any, options: dict[str, Any]) -> AsyncIterator[tuple[Executor, dict[str, Any]]]:
    """Enter the executor once; yield it with the options every ``run_manybody`` call gets."""
    from ._core.scheduler import STORE_FAILURES, StoreFailures

    run_options, executor, scheduler = split_options(options)
    exe = make_executor(inp, run_options, executor, scheduler)
    # One "result not stored" line for the whole job (a full disk fails every run's writes alike).
    token = STORE_FAILURES.set(StoreFailures(job=True))
    try:
        async with exe:
            yield exe, run_options
    finally:
        STORE_FAILURES.reset(token)


def computed_and_cached(result: Any) -> tuple[int, int]:
    """Fragments computed and fragments read from the store in one ``run_manybody`` result."""
    records = (result.extras.get("qcmb_async") or {}).get("fragments", [])
    cached = sum(1 for r in records if r.get("status") == "cached")
    return len(records) - cached, cached


def scf_iterations(result: Any) -> list[int]:
    """SCF iterations of each fragment, when the result carries its fragments' results (protocol ``all``)."""
    out = []
    for res in (getattr(result, "cluster_results", None) or {}).values():
        it = getattr(getattr(res, "properties", None), "scf_iterations", None)
        if it is not None:
            out.append(int(it))
    return out


async def run_at(inp: Any, coords: Any, exe: Executor, run_options: dict[str, Any]) -> Any:
    """One MBE of ``inp`` at ``coords`` (bohr) on the entered ``exe``."""
    from ._runner import run_manybody

    moved = at_geometry(inp, coords)
    return await run_manybody(moved, executor=exe, **run_options)


def gradient_norms(grad: Any) -> tuple[float | None, float | None]:
    """Root mean square and largest absolute component of a gradient (Eh/bohr); ``(None, None)`` without one."""
    if grad is None:
        return None, None
    g = np.asarray(grad, dtype=float)
    return float(np.sqrt(np.mean(g**2))), float(np.abs(g).max())


async def step_started(kind: str, step: int, coords: Any, run_options: dict[str, Any]) -> None:
    """Send :class:`StepStarted` to the run's ``on_event`` (if any)."""
    xyz = tuple(tuple(map(float, row)) for row in np.asarray(coords, dtype=float).reshape(-1, 3))
    await emit(run_options.get("on_event"), StepStarted(kind=kind, step=step, geometry=xyz))


async def step_finished(kind: str, record: dict[str, Any], run_options: dict[str, Any]) -> None:
    """Send :class:`StepFinished` for a step's ``record`` (see :func:`gradient_step`) to ``on_event``."""
    await emit(run_options.get("on_event"), StepFinished(
        kind=kind, step=record["step"], energy=record["energy"], gradient_rms=record["gradient_rms"],
        gradient_max=record["gradient_max"], computed=record["computed"], cached=record["cached"],
        wall_time=record["wall_time"], run_id=record.get("run_id")))


async def gradient_step(kind: str, step: int, inp: Any, coords: Any, exe: Executor,
                        run_options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """One MBE gradient at ``coords`` (bohr) as step ``step`` of a driver, between its step events.

    Returns the ``ManyBodyResult`` and the step's record: ``step``, ``energy`` (Eh), ``gradient_rms`` and
    ``gradient_max`` (Eh/bohr), ``wall_time`` (s), ``computed`` and ``cached`` fragments, ``scf_iterations``
    (per fragment, when the results carry them), ``geometry`` (bohr, natom x 3 nested lists), ``run_id``.
    """
    await step_started(kind, step, coords, run_options)
    start = time.perf_counter()
    res = await run_at(inp, coords, exe, run_options)
    grad = np.asarray(res.properties.return_gradient, dtype=float).reshape(-1, 3)
    computed, cached = computed_and_cached(res)
    rms, gmax = gradient_norms(grad)
    record = {"step": step, "energy": float(res.properties.return_energy), "gradient_rms": rms,
              "gradient_max": gmax, "wall_time": time.perf_counter() - start, "computed": computed,
              "cached": cached, "scf_iterations": scf_iterations(res),
              "geometry": np.asarray(coords, dtype=float).reshape(-1, 3).tolist(),
              "run_id": (res.extras.get("qcmb_async") or {}).get("run_id")}
    await step_finished(kind, record, run_options)
    return res, record


async def off_loop(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking function on a worker thread."""
    return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))
