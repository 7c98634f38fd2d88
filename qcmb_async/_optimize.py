"""Geometry optimization of an MBE with geomeTRIC, every gradient an MBE on one kept worker pool.

geomeTRIC (extra ``opt``) is synchronous: it runs on a worker thread and its engine
(:class:`_ManyBodyEngine`, a ``geometric.engine.Engine``) hands each gradient back to the event
loop (``anyio.from_thread.run``), where it is one :func:`~qcmb_async.run_manybody` on the executor
entered once for the whole optimization. Cancelling the caller cancels the MBE in flight (its
program processes are killed) and ends the optimization. Every finished fragment is in the result
store: rerunning a killed optimization follows the same path and takes the finished gradients'
fragments from the store instead of computing them.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import numpy as np

from ._core.outcome import unwrap_group
from ._dynamics import check_options, geometry, gradient_step, kept_pool, prepare
from ._fronts import call_blocking
from .errors import InputError

#: geomeTRIC coordinate systems (``--coordsys``): TRIC handles clusters of molecules best.
COORDSYS = ("tric", "dlc", "hdlc", "prim", "tric-p", "cart")
#: geomeTRIC 1.1's convergence sets, named in the error for an unknown one (geomeTRIC itself decides).
CONVERGENCE_SETS = ("GAU", "GAU_LOOSE", "GAU_TIGHT", "GAU_VERYTIGHT", "NWCHEM_LOOSE", "TURBOMOLE", "INTERFRAG_TIGHT")


@dataclass
class OptimizationResult:
    """A finished (or stopped) optimization, shaped like QCSchema's ``OptimizationResult``.

    ``final_molecule``: QCElemental v2 ``Molecule`` at the last geometry (bohr). ``energies``: Eh per
    gradient evaluation. ``trajectory``: the ``ManyBodyResult`` of each evaluation. ``steps``: one
    record per evaluation: ``step`` (1-based), ``energy`` (Eh), ``gradient_rms``/``gradient_max`` (Eh/bohr),
    ``wall_time`` (s), ``computed``/``cached`` fragments (computed, read from the result store),
    ``scf_iterations`` per fragment when the results carry them, ``geometry`` (bohr, natom x 3), ``run_id``.
    ``success``: geomeTRIC converged; otherwise ``error`` says why.
    """

    success: bool
    final_molecule: Any
    energies: list[float]
    trajectory: list[Any]
    steps: list[dict[str, Any]]
    error: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def final_energy(self) -> float:
        """Energy (Eh) at the last evaluated geometry."""
        return self.energies[-1]


class _Stopped(BaseException):
    """Raised inside geomeTRIC's thread when the optimization was cancelled or a gradient failed."""


async def _drive(optimizer: Callable[[Callable[[np.ndarray], Any]], np.ndarray],
                 step: Callable[[np.ndarray], Any]) -> tuple[np.ndarray | None, str | None]:
    """Run the blocking ``optimizer(evaluate)`` on a thread; each ``evaluate`` is ``await step(coords)`` here.

    The MBEs run in this task, not in tasks started from the thread: cancelling the caller cancels
    the MBE in flight at once (program processes killed) and geomeTRIC's thread is told to stop
    (:class:`_Stopped` out of its ``evaluate``); it is not waited for. Returns the final coordinates,
    or ``None`` and geomeTRIC's reason when it gave up.
    """
    send, receive = anyio.create_memory_object_stream[tuple[np.ndarray, queue.Queue[Any]]](math.inf)
    stopped = threading.Event()
    box: dict[str, Any] = {}

    def evaluate(coords: np.ndarray) -> Any:
        if stopped.is_set():
            raise _Stopped
        reply: queue.Queue[Any] = queue.Queue(maxsize=1)
        try:
            anyio.from_thread.run_sync(send.send_nowait, (coords, reply))
        except Exception:  # the loop or the stream is gone: the optimization was stopped
            raise _Stopped from None
        out = reply.get()
        if isinstance(out, _Stopped):
            raise out
        return out

    def work() -> None:
        from geometric.errors import GeomOptNotConvergedError, GeomOptStructureError

        try:
            box["final"] = optimizer(evaluate)
        except _Stopped:
            pass
        except (GeomOptNotConvergedError, GeomOptStructureError) as exc:
            box["error"] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            box["raised"] = exc

    async def run_thread() -> None:
        try:
            await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        finally:
            send.close()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_thread)
            try:
                async with receive:
                    async for coords, reply in receive:
                        try:
                            out = await step(coords)
                        except BaseException:
                            reply.put(_Stopped())
                            raise
                        reply.put(out)
            except BaseException:
                stopped.set()
                tg.cancel_scope.cancel()
                raise
    except BaseExceptionGroup as group:
        raise unwrap_group(group) from None
    if "raised" in box:
        raise box["raised"]
    return box.get("final"), box.get("error")


def _engine_class() -> Any:
    import geometric.engine

    class _ManyBodyEngine(geometric.engine.Engine):  # type: ignore[misc]
        """geomeTRIC engine whose energy and gradient are one MBE (``evaluate(coords) -> (E, grad)``)."""

        def __init__(self, molecule: Any, evaluate: Callable[[np.ndarray], tuple[float, np.ndarray]]) -> None:
            super().__init__(molecule)
            self.evaluate = evaluate

        def calc_new(self, coords: np.ndarray, dirname: str) -> dict[str, Any]:
            energy, grad = self.evaluate(np.asarray(coords, dtype=float).reshape(-1, 3))
            return {"energy": energy, "gradient": np.asarray(grad, dtype=float).reshape(-1)}

    return _ManyBodyEngine


def _geometric_molecule(symbols: list[str], coords: np.ndarray) -> Any:
    import geometric.molecule
    from geometric.nifty import bohr2ang

    mol = geometric.molecule.Molecule()
    mol.elem = list(symbols)
    mol.xyzs = [np.asarray(coords, dtype=float).reshape(-1, 3) * bohr2ang]
    mol.build_topology()
    return mol


#: ``geometric_params`` keywords passed to geomeTRIC's ``OptParams`` (the rest of its keywords select other jobs --
#: transition states, IRC, MECI, Hessians, frequencies -- this driver does not run, or write files): value kinds.
GEOMETRIC_PARAMS: dict[str, str] = {
    **{f"convergence_{k}": "positive" for k in ("energy", "grms", "gmax", "drms", "dmax", "cmax", "molpro_gmax",
                                                 "molpro_dmax")},
    "trust": "positive", "tmax": "positive", "tmin": "positive", "enforce": "nonnegative", "epsilon": "nonnegative",
    "check": "count", "subfrctor": "count", "verbose": "count", "usedmax": "flag", "qccnv": "flag", "molcnv": "flag",
    "reset": "flag", "convergence_set": "name", "maxiter": "count",
}


def check_arguments(*, coordsys: Any, constraints: Any, convergence_set: Any,
                    geometric_params: Any) -> tuple[str | None, dict[str, Any]]:
    """Type and range checks of :func:`optimize`'s own arguments; the constraint text and the extra OptParams.

    geomeTRIC reads its keywords with ``kwargs.get``: an unknown name is silently ignored, and a NaN
    criterion or a negative trust radius is taken as given (measured: NaN criteria never converge; trust -1
    is clamped to tmin and crawls). So every keyword is named in :data:`GEOMETRIC_PARAMS` and its value
    checked here, before any gradient. ``constraints`` is geomeTRIC constraint text, or a path
    (``pathlib.Path``) to a constraint file, read with the input files' guards. Raises :class:`InputError`.
    """
    import os

    if not isinstance(coordsys, str):
        raise InputError(f"coordsys must be one of {COORDSYS} (a string), got {coordsys!r}")
    if not isinstance(convergence_set, str):
        raise InputError(f"convergence_set must be the name of a geomeTRIC convergence set "
                         f"({', '.join(CONVERGENCE_SETS)}), got {convergence_set!r}")
    if isinstance(constraints, os.PathLike):
        from pathlib import Path

        from ._core.inputs import read_text_file

        constraints = read_text_file(Path(constraints), "constraints file",
                                     expect="a geomeTRIC constraints file ($freeze, $set, ...)")
    elif constraints is not None and not isinstance(constraints, str):
        raise InputError(f"constraints must be geomeTRIC constraint text (a string with $freeze, $set... lines) or "
                         f"a pathlib.Path to such a file, got {type(constraints).__name__} {constraints!r}")
    if geometric_params is None:
        return constraints, {}
    if not isinstance(geometric_params, dict):
        raise InputError(f"geometric_params must be a dict of geomeTRIC OptParams keywords, got "
                         f"{type(geometric_params).__name__}")
    unknown = sorted(str(k) for k in geometric_params if k not in GEOMETRIC_PARAMS)
    if unknown:
        raise InputError(f"geometric_params: unknown or unsupported keyword(s) {unknown}: geomeTRIC would ignore "
                         f"them silently. Use {', '.join(sorted(GEOMETRIC_PARAMS))}")
    for name, value in geometric_params.items():
        kind = GEOMETRIC_PARAMS[name]
        real = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
        if kind in ("positive", "nonnegative"):
            if not (real and math.isfinite(value) and (value > 0 if kind == "positive" else value >= 0)):
                bound = "> 0" if kind == "positive" else ">= 0"
                raise InputError(f"geometric_params[{name!r}] must be a finite number {bound}, got {value!r}")
        elif kind == "count":
            if not (isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 0):
                raise InputError(f"geometric_params[{name!r}] must be a whole number >= 0, got {value!r}")
        elif kind == "flag" and not isinstance(value, bool):
            raise InputError(f"geometric_params[{name!r}] must be True or False, got {value!r}")
        elif kind == "name" and not isinstance(value, str):
            raise InputError(f"geometric_params[{name!r}] must be a string, got {value!r}")
    trust = {k: geometric_params[k] for k in ("tmin", "trust", "tmax") if k in geometric_params}
    if "tmin" in trust and "tmax" in trust and trust["tmin"] > trust["tmax"]:
        raise InputError(f"geometric_params: tmin {trust['tmin']} is above tmax {trust['tmax']} (bohr)")
    return constraints, dict(geometric_params)


def check_geometric(symbols: list[str], coords: np.ndarray, *, maxiter: Any, constraints: str | None,
                    params: dict[str, Any]) -> None:
    """Refuse what geomeTRIC would refuse (or misread) only once the pool runs; ``InputError`` naming it. Blocking.

    ``maxiter`` must be a whole number >= 1 (geomeTRIC takes 0 and -1 and still computes gradients), the
    ``OptParams`` keywords (convergence set...) must be accepted by geomeTRIC, the constraint text must parse
    for this molecule (atom numbers 1-based, within the molecule).
    """
    import geometric.optimize
    import geometric.params

    if isinstance(maxiter, bool) or not isinstance(maxiter, int | np.integer) or maxiter < 1:
        raise InputError(f"maxiter must be a whole number of optimization cycles >= 1, got {maxiter!r}")
    try:
        # OptParams edits some of its arguments (the 'converge' list): give it a copy.
        geometric.params.OptParams(**copy.deepcopy(params))
    except KeyError as exc:
        name = params.get("convergence_set")
        if exc.args and isinstance(name, str) and exc.args[0] == name.upper():
            raise InputError(f"unknown geomeTRIC convergence set {name!r}: use one of "
                             f"{', '.join(CONVERGENCE_SETS)}") from None
        raise InputError(f"geomeTRIC refused the optimizer options {params}: KeyError {exc}") from None
    except (ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise InputError(f"geomeTRIC refused the optimizer options {params}: {exc}") from None
    if constraints:
        try:
            geometric.optimize.parse_constraints(_geometric_molecule(symbols, coords), constraints)
        except (RuntimeError, ValueError, IndexError, KeyError) as exc:
            import os

            hint = ""
            if "\n" not in constraints.strip() and os.path.isfile(constraints.strip()):
                hint = f" (constraints is text; to read the file {constraints.strip()!r} pass pathlib.Path to it)"
            raise InputError(f"the constraints are not valid for this {len(symbols)}-atom molecule: {exc}{hint}. "
                             "Use geomeTRIC's constraint format: a $freeze, $set or $scan line, then lines such "
                             "as 'distance 1 4' or 'xyz 1-3' (atoms numbered from 1)") from None


def run_geometric(symbols: list[str], coords: np.ndarray, evaluate: Callable[[np.ndarray], tuple[float, np.ndarray]],
                  *, coordsys: str = "tric", constraints: str | None = None,
                  params: dict[str, Any] | None = None) -> np.ndarray:
    """Optimize with geomeTRIC's Python API; return the final coordinates (bohr, N x 3). Blocking.

    ``evaluate(coords_bohr) -> (energy Eh, gradient Eh/bohr)``; ``constraints``: geomeTRIC
    constraint-file text; ``params``: geomeTRIC ``OptParams`` keywords (``convergence_set``,
    ``maxiter``...). Raises geomeTRIC's ``GeomOptNotConvergedError`` when it gives up.
    """
    import geometric.internal as gi
    import geometric.optimize
    import geometric.params
    from geometric.nifty import ang2bohr

    classes = {"cart": (gi.CartesianCoordinates, False, False), "prim": (gi.PrimitiveInternalCoordinates, True, False),
               "dlc": (gi.DelocalizedInternalCoordinates, True, False),
               "hdlc": (gi.DelocalizedInternalCoordinates, False, True),
               "tric-p": (gi.PrimitiveInternalCoordinates, False, False),
               "tric": (gi.DelocalizedInternalCoordinates, False, False)}
    if coordsys.lower() not in classes:
        raise InputError(f"coordsys must be one of {COORDSYS}, got {coordsys!r}")
    mol = _geometric_molecule(symbols, coords)
    engine = _engine_class()(mol, evaluate)
    opt_params = geometric.params.OptParams(**(params or {}))
    cons = cvals = None
    if constraints:
        cons, cvals = geometric.optimize.parse_constraints(mol, constraints)
    cls, connect, addcart = classes[coordsys.lower()]
    ic = cls(mol, build=True, connect=connect, addcart=addcart, constraints=cons,
             cvals=cvals[0] if cvals is not None else None)
    with tempfile.TemporaryDirectory(prefix="qcmb_async-geometric-") as tmp:
        progress = geometric.optimize.Optimize(np.asarray(coords, dtype=float).reshape(-1) * 1.0, mol, ic, engine,
                                               tmp, opt_params)
    return np.asarray(progress.xyzs[-1], dtype=float) * ang2bohr


async def optimize(mbe_input: Any, *, coordsys: str = "tric", constraints: str | os.PathLike[str] | None = None,
                   convergence_set: str = "GAU", maxiter: int = 300, geometric_params: dict[str, Any] | None = None,
                   **options: Any) -> OptimizationResult:
    """Optimize the geometry of ``mbe_input``'s molecule with geomeTRIC; every gradient is one MBE.

    Args:
        mbe_input: ``ManyBodyInput`` (or dict/JSON/YAML path); its driver becomes ``gradient``. CP and
            VMFC optimize total energies (``return_total_data`` is set).
        coordsys: geomeTRIC coordinate system (:data:`COORDSYS`), TRIC by default.
        constraints: geomeTRIC constraint-file text (``$freeze``, ``$set``...), or a ``pathlib.Path`` to such a
            file (read as input files are: a regular UTF-8 file of bounded size); optional.
        convergence_set: geomeTRIC convergence set (``GAU``, ``GAU_TIGHT``, ``GAU_VERYTIGHT``, ...).
        maxiter: Most optimization cycles; geomeTRIC computes up to ``maxiter + 1`` gradients (the first at the
            input geometry).
        geometric_params: More geomeTRIC ``OptParams`` keywords, those named in :data:`GEOMETRIC_PARAMS`
            (convergence criteria, trust radii...), each checked.
        **options: the ``run_manybody`` options in ``qcmb_async._dynamics.DRIVER_OPTIONS`` (``ncores``, ``memory``,
            ``executor``, ``scheduler``, ``cluster``, ``store``, ``on_event``...; not ``screening`` or
            ``on_error``, see docs/dynamics.md); one executor (one batch cluster) is entered for the whole
            optimization. ``on_event`` receives, per gradient,
            :class:`~qcmb_async.events.StepStarted` (``kind="optimize"``, the geometry in bohr), that MBE's
            fragment events, then :class:`~qcmb_async.events.StepFinished` (energy Eh, gradient rms/max
            Eh/bohr, fragments computed and cached, wall time s).

    Returns:
        :class:`OptimizationResult` (``success`` False with ``error`` when geomeTRIC did not converge).

    Raises:
        InputError: bad input or options, before anything runs (also ``maxiter`` < 1, a convergence set or
        ``geometric_params`` geomeTRIC refuses or would ignore, NaN or non-positive criteria and trust radii,
        constraints of the wrong type or that do not parse for this molecule);
        ModuleNotFoundError: geomeTRIC is not installed (``pip install qcmb_async[opt]``);
        FragmentError / RunFailed: a fragment failed.
    """
    try:
        import geometric  # noqa: F401
    except ImportError as exc:
        raise ModuleNotFoundError("optimize() needs geomeTRIC: pip install 'qcmb_async[opt]'") from exc
    constraints, extra = await anyio.to_thread.run_sync(functools.partial(
        check_arguments, coordsys=coordsys, constraints=constraints, convergence_set=convergence_set,
        geometric_params=geometric_params))
    if coordsys.lower() not in COORDSYS:
        raise InputError(f"coordsys must be one of {COORDSYS}, got {coordsys!r}")
    check_options(options)
    inp = await anyio.to_thread.run_sync(prepare, mbe_input, "gradient")
    symbols = [str(s) for s in inp.molecule.symbols]
    params = {"convergence_set": convergence_set, "maxiter": maxiter, **extra}
    await anyio.to_thread.run_sync(functools.partial(check_geometric, symbols, geometry(inp), maxiter=params["maxiter"],
                                                     constraints=constraints, params=params))
    steps: list[dict[str, Any]] = []
    trajectory: list[Any] = []
    t0 = time.perf_counter()

    async with kept_pool(inp, options) as (exe, run_options):

        async def step(coords: np.ndarray) -> tuple[float, np.ndarray]:
            res, record = await gradient_step("optimize", len(steps) + 1, inp, coords, exe, run_options)
            steps.append(record)
            trajectory.append(res)
            return record["energy"], np.asarray(res.properties.return_gradient, dtype=float).reshape(-1, 3)

        final, error = await _drive(lambda evaluate: run_geometric(
            symbols, geometry(inp), evaluate, coordsys=coordsys, constraints=constraints, params=params), step)
    if final is None:
        final = np.asarray(steps[-1]["geometry"]) if steps else geometry(inp)
    mol = inp.molecule.model_copy(update={"geometry": np.asarray(final, dtype=float)})
    return OptimizationResult(success=error is None, final_molecule=mol, energies=[s["energy"] for s in steps],
                              trajectory=trajectory, steps=steps, error=error,
                              extras={"wall_time": time.perf_counter() - t0, "evaluations": len(steps),
                                      "executor": exe.name, "coordsys": coordsys,
                                      "convergence_set": convergence_set})


def optimize_sync(mbe_input: Any, **options: Any) -> OptimizationResult:
    """Blocking :func:`optimize` for scripts; also works inside a running loop (Jupyter).

    Takes :func:`optimize`'s arguments and returns its :class:`OptimizationResult`. Runs like
    :func:`qcmb_async.run`: ``anyio.run`` in a plain script, a private event-loop thread when a loop
    already runs in this thread. Ctrl-C cancels the gradient in flight (its program processes are killed)
    and stops geomeTRIC; in a plain script SIGTERM does the same, then raises
    :class:`~qcmb_async.errors.Terminated`. Finished fragments stay in the result store: running the same
    optimization again resumes at the interrupted step.
    """
    return call_blocking(optimize, mbe_input, **options)
