"""Harmonic frequencies of an MBE: analytic Hessians, or finite differences in ONE scheduling pool.

Finite differences over an MBE elsewhere run a full MBE per displaced geometry, one after another.
Here every displacement is planned (QCManyBody enumerates its fragments), every fragment is built
and keyed by content (``Job.key``: program + canonical ``AtomicInput``), and the union of distinct
fragments is scheduled in one :class:`~qcmb_async._core.scheduler.Scheduler` run: no barrier
between displacements, and a fragment whose atoms a displacement did not move is the reference
geometry's fragment, computed once. Each displacement is then assembled by QCManyBody from its own
plan. A displaced atom changes only the fragments that contain (or, with CP, carry the basis of)
its monomer.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._core.assemble import assemble, component_properties
from ._core.gmbe import GMBEInput
from ._core.gmbe_assemble import assemble_gmbe
from ._core.gmbe_plan import GMBEPlan, plan_gmbe
from ._core.plan import Fragment, Job, Plan
from ._core.scheduler import Scheduler
from ._dynamics import (
    at_geometry,
    check_options,
    computed_and_cached,
    geometry,
    gradient_norms,
    kept_pool,
    off_loop,
    prepare,
    split_options,
    step_finished,
    step_started,
)
from ._fronts import call_blocking
from .errors import InputError, RunFailed

#: Default central-difference step, bohr (Psi4's findif default is 0.005 too).
STEP = 0.005


@dataclass
class FrequencyResult:
    """Harmonic analysis of an MBE Hessian.

    ``frequencies``: cm⁻¹, ascending, 3N-6 (3N-5 linear) values, imaginary ones as negative numbers.
    ``modes``: Cartesian displacement of each normal mode (3N x nmodes, unit-norm columns, not mass-weighted).
    ``hessian``: Eh/bohr², 3N x 3N, symmetric. ``gradient``: Eh/bohr at the reference geometry (N x 3)
    when the route computed it. ``energy``: Eh at the reference geometry when known.
    ``extras``: route, step (bohr), fragment counts (``fragments_computed``, ``fragments_cached``; finite
    differences also ``displacements``, ``fragments_planned``, ``fragments_distinct``), timings (s), and the
    scheduling run's ``run_id``, ``ncores``, ``started``/``finished`` (epoch s) and per-fragment records
    ``fragments`` (what :func:`qcmb_async.timeline.plot_timeline` draws).
    """

    frequencies: np.ndarray
    modes: np.ndarray
    hessian: np.ndarray
    method: str
    energy: float | None = None
    gradient: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def harmonic_analysis(hessian: Any, geometry: Any, masses: Any) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (cm⁻¹) and Cartesian normal modes with overall translations and rotations projected out.

    ``hessian``: Eh/bohr², 3N x 3N; ``geometry``: bohr, N x 3; ``masses``: amu, N (:func:`frequencies`
    uses the molecule's: QCElemental's most abundant isotopes unless the input sets them). The Hessian is
    mass-weighted, the 6 (5 for a linear molecule) rigid-body vectors about the centre of mass are
    orthonormalised, and the Hessian is diagonalised in their orthogonal complement (the textbook
    projection, e.g. Gaussian's "Vibrational analysis in Gaussian" white paper). Imaginary
    frequencies are returned as negative numbers.
    """
    import qcelemental as qcel

    h = np.asarray(hessian, dtype=float)
    xyz = np.asarray(geometry, dtype=float).reshape(-1, 3)
    m = np.asarray(masses, dtype=float).reshape(-1)
    n = len(m)
    if h.shape != (3 * n, 3 * n):
        raise InputError(f"Hessian of shape {h.shape} for {n} atoms: expected {(3 * n, 3 * n)}")
    sqm = np.repeat(np.sqrt(m), 3)
    hmw = h / np.outer(sqm, sqm)
    hmw = (hmw + hmw.T) / 2
    r = xyz - (m[:, None] * xyz).sum(axis=0) / m.sum()
    rigid = []
    for k in range(3):
        t = np.zeros((n, 3))
        t[:, k] = 1.0
        rigid.append(t.reshape(-1) * sqm)
    for k in range(3):
        axis = np.zeros(3)
        axis[k] = 1.0
        rigid.append(np.cross(axis, r).reshape(-1) * sqm)
    u, s, _ = np.linalg.svd(np.array(rigid).T, full_matrices=True)
    nrigid = int(np.sum(s > 1e-6 * s.max()))
    complement = u[:, nrigid:]
    vals, vecs = np.linalg.eigh(complement.T @ hmw @ complement)
    modes_mw = complement @ vecs
    modes = modes_mw / sqm[:, None]
    modes /= np.linalg.norm(modes, axis=0)
    # Eh / (bohr² amu) -> s⁻² -> cm⁻¹
    hartree = qcel.constants.get("hartree energy")
    bohr = qcel.constants.get("bohr radius")
    amu = qcel.constants.get("atomic mass constant")
    c_cm = qcel.constants.get("speed of light in vacuum") * 100.0
    to_wavenumber = np.sqrt(hartree / (bohr**2 * amu)) / (2 * np.pi * c_cm)
    freqs = np.sign(vals) * np.sqrt(np.abs(vals)) * to_wavenumber
    return freqs, modes


@dataclass
class CompositePlan:
    """What the Scheduler reads of a :class:`Plan` for the distinct fragments of many plans.

    Each distinct fragment is labelled with its QCManyBody label (model chemistry, real and basis fragments)
    and the first displacement that needs it, e.g. ``'["(auto)", [1], [1, 2]] at displacement 3 of 36 (atom
    1 y +0.005 bohr)'`` (labels must be unique in one scheduling run, and a failure must say which fragment
    of which geometry failed); their jobs are already built, so the scheduler materialises them inline.
    """

    fragments: list[Fragment]
    jobs: dict[str, Job]
    inline: bool = True
    screen: Any = None
    """No screened expansion: every fragment is known before the run (the Scheduler reads this)."""
    make_fragment: Any = None

    def materialise(self, frag: Fragment) -> Job:
        return self.jobs[frag.label]


@dataclass
class _Displaced:
    plan: Plan | GMBEPlan
    keys: dict[str, str]
    """Label in ``plan`` -> label of the same content in the composite plan."""


def plan_displacements(inputs: list[Any], names: list[str] | None = None,
                       ) -> tuple[list[_Displaced], CompositePlan, int]:
    """Plan every input, build every fragment, keep the distinct ones; also the total planned (blocking).

    ``names``: what to call each input's geometry in fragment labels (default ``geometry <k>``).
    """
    from ._runner import _plan

    displaced: list[_Displaced] = []
    jobs: dict[str, Job] = {}
    by_content: dict[str, str] = {}  # content key -> composite label
    frags: list[Fragment] = []
    planned = 0
    for k, inp in enumerate(inputs):
        where = names[k] if names is not None else f"geometry {k}"
        plan = plan_gmbe(inp) if isinstance(inp, GMBEInput) else _plan(inp)
        keys = {}
        for frag in plan.fragments:
            job = plan.materialise(frag)
            planned += 1
            label = by_content.get(job.key)
            if label is None:
                # One (label, geometry) has one content: the composite label is unique.
                label = by_content[job.key] = f"{frag.label} at {where}"
                jobs[label] = job
                frags.append(dataclasses.replace(frag, label=label))
            keys[frag.label] = label
        displaced.append(_Displaced(plan, keys))
    return displaced, CompositePlan(frags, jobs), planned


def _displacement_names(natom: int, step: float) -> list[str]:
    """Names of :func:`_displacements`' geometries, in its order (atoms 1-based)."""
    count = 6 * natom
    names = ["the reference geometry"]
    for i in range(3 * natom):
        for sign in (1.0, -1.0):
            names.append(f"displacement {len(names)} of {count} (atom {i // 3 + 1} {'xyz'[i % 3]} "
                         f"{sign * step:+g} bohr)")
    return names


#: Largest finite-difference step accepted, bohr: beyond it the central difference measures anharmonicity,
#: not the Hessian (and displaced SCFs may not converge).
MAX_STEP = 0.1
#: Smallest finite-difference step accepted, bohr. A central difference divides the difference of two
#: gradients by 2h, so the gradients' noise e (SCF and integral thresholds: about 1e-8 to 1e-7 Eh/bohr with
#: tight settings, 1e-6 with programs' defaults) becomes a Hessian error of about e/h. At h = 1e-4 bohr and
#: e = 1e-7 that is 1e-3 Eh/bohr², under 0.5 % of a bond-stretch force constant (0.3-0.6 Eh/bohr²); at
#: h = 1e-9 it is 100 Eh/bohr² (measured: frequencies 4,326 cm⁻¹ off). The truncation error of the default
#: 0.005 bohr is already below that noise, so a smaller step only buys noise.
MIN_STEP = 1e-4


def _check_step(step: Any) -> None:
    """A finite-difference step must be a finite number of bohr in [:data:`MIN_STEP`, :data:`MAX_STEP`]."""
    number = isinstance(step, int | float | np.integer | np.floating) and not isinstance(step, bool)
    if not (number and math.isfinite(step) and step > 0):
        raise InputError(f"step must be a finite positive number of bohr (default {STEP}), got {step!r}")
    if step > MAX_STEP:
        raise InputError(f"step {step!r} bohr is too large for a harmonic Hessian: at most {MAX_STEP} bohr "
                         f"(default {STEP}, what Psi4 and PySCF use by default is of that order)")
    if step < MIN_STEP:
        raise InputError(f"step {step!r} bohr is too small: the gradients' numerical noise (about 1e-7 Eh/bohr) "
                         f"divided by the step would swamp the Hessian. Use at least {MIN_STEP} bohr (default "
                         f"{STEP})")


def _displacements(coords: np.ndarray, step: float) -> list[np.ndarray]:
    """Reference first, then +step and -step for every Cartesian coordinate (atom-major, x y z)."""
    out = [coords]
    for i in range(coords.size):
        for sign in (1.0, -1.0):
            moved = coords.copy().reshape(-1)
            moved[i] += sign * step
            out.append(moved.reshape(-1, 3))
    return out


def _assemble_gradients(displaced: list[_Displaced], results: dict[str, Any]) -> list[Any]:
    out = []
    for d in displaced:
        own = {label: results[key] for label, key in d.keys.items()}
        res = assemble_gmbe(d.plan, own) if isinstance(d.plan, GMBEPlan) else assemble(d.plan, own)
        out.append(res)
    return out


async def finite_difference_hessian(inp: Any, exe: Any, run_options: dict[str, Any], *,
                                    step: float = STEP) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """Central-difference Hessian (Eh/bohr²) of MBE gradients, all displacements in one scheduling run.

    ``inp``: a gradient input from :func:`~qcmb_async._dynamics.prepare`; ``exe``: an entered executor.
    Returns ``(hessian, reference ManyBodyResult, counts)``; ``counts`` also has the scheduling run's
    ``run_id``, ``ncores``, ``started``/``finished`` (epoch s) and fragment records (``fragments``).
    """
    from ._runner import open_store, sized_options

    _check_step(step)
    t0 = time.perf_counter()
    coords = geometry(inp)
    inputs = [at_geometry(inp, c) for c in _displacements(coords, step)]
    displaced, composite, planned = await off_loop(plan_displacements, inputs,
                                                   _displacement_names(len(coords), step))
    t_plan = time.perf_counter() - t0
    opts = dict(run_options)
    store = opts.pop("store", "default")
    # Sized from the entered executor's workers (a Dask cluster), not from this machine.
    options = sized_options(exe, opts)
    result_store = await off_loop(open_store, store)
    try:
        run_id = uuid.uuid4().hex[:12]
        outcome = await Scheduler(composite, options, exe, run_id=run_id, store=result_store,  # type: ignore[arg-type]
                                  keep=lambda r: component_properties(r, "gradient")).run()
    finally:
        if result_store is not None:
            result_store.close()
    run_extras = {"run_id": run_id, "ncores": options.ncores, "started": outcome.started,
                  "finished": outcome.finished}
    if outcome.failures:
        from .errors import FailureReport

        raise RunFailed(FailureReport(failed=list(outcome.failures), complete_levels=[]))
    t_run = time.perf_counter() - t0 - t_plan
    results = await off_loop(_assemble_gradients, displaced, outcome.results)
    grads = [np.asarray(r.properties.return_gradient, dtype=float).reshape(-1) for r in results]
    n3 = coords.size
    hess = np.empty((n3, n3))
    for i in range(n3):
        hess[:, i] = (grads[1 + 2 * i] - grads[2 + 2 * i]) / (2 * step)
    hess = (hess + hess.T) / 2
    cached = sum(1 for r in outcome.records if r.status == "cached")
    counts = {
        "displacements": len(inputs) - 1,
        "fragments_planned": planned,
        "fragments_distinct": len(composite.fragments),
        "fragments_computed": len(composite.fragments) - cached,
        "fragments_cached": cached,
        "plan_time": t_plan,
        "schedule_time": t_run,
        "assemble_time": time.perf_counter() - t0 - t_plan - t_run,
        **run_extras,
        "fragments": [rec.as_dict() for rec in outcome.records],
    }
    return hess, results[0], counts


async def frequencies(mbe_input: Any, *, method: str = "analytic", step: float = STEP,
                      **options: Any) -> FrequencyResult:
    """Harmonic frequencies (cm⁻¹) of a many-body expansion, rigid-body motion projected out.

    Args:
        mbe_input: A ``ManyBodyInput`` (or dict/JSON/YAML path) at the geometry to analyse; its driver is
            replaced. CP/VMFC use total energies (``return_total_data``).
        method: ``"analytic"``: one MBE of analytic fragment Hessians (the program must have them,
            e.g. PySCF HF/DFT); ``"finite-difference"``: central differences of MBE gradients, ``step``
            bohr, every displacement's fragments in one scheduling pool with identical fragments
            computed once.
        step: Finite-difference step, bohr, from :data:`MIN_STEP` to :data:`MAX_STEP`.
        **options: the ``run_manybody`` options in ``qcmb_async._dynamics.DRIVER_OPTIONS`` (``ncores``,
            ``memory``, ``executor``, ``scheduler``, ``cluster``, ``store``, ``on_event``...; not ``screening`` or
            ``on_error``, see docs/dynamics.md); one executor is entered for the whole job. The job is one step:
            ``on_event`` receives
            :class:`~qcmb_async.events.StepStarted` (``kind="frequencies"``), the fragment events of the one
            scheduling run (finite differences: fragments named by QCManyBody label and the first displacement
            that needs them), then
            :class:`~qcmb_async.events.StepFinished` (reference energy Eh, gradient rms/max Eh/bohr when
            known, fragments computed and cached, wall time s).

    Returns:
        :class:`FrequencyResult`.

    Raises:
        InputError: bad input, method or options, a ``step`` that is not a finite number of bohr in
        [MIN_STEP, MAX_STEP] (finite differences), before anything runs; FragmentError / RunFailed: a fragment failed.
    """
    if not isinstance(method, str) or method.lower().replace("_", "-") not in ("analytic", "finite-difference"):
        raise InputError(f"method must be 'analytic' or 'finite-difference', got {method!r}")
    route = method.lower().replace("_", "-")
    if route == "finite-difference":
        _check_step(step)
    check_options(options)
    inp = await off_loop(prepare, mbe_input, "hessian" if route == "analytic" else "gradient")
    t0 = time.perf_counter()
    async with kept_pool(inp, options) as (exe, run_options):
        await step_started("frequencies", 1, geometry(inp), run_options)
        if route == "analytic":
            from ._runner import run_manybody

            ref = await run_manybody(inp, executor=exe, **run_options)
            hess = np.asarray(ref.return_result, dtype=float)
            hess = (hess + hess.T) / 2
            meta = ref.extras.get("qcmb_async") or {}
            computed, cached = computed_and_cached(ref)
            extras: dict[str, Any] = {"fragments_computed": computed, "fragments_cached": cached,
                                      **{k: meta.get(k) for k in ("run_id", "ncores", "started", "finished")},
                                      "fragments": meta.get("fragments", [])}
        else:
            hess, ref, extras = await finite_difference_hessian(inp, exe, run_options, step=step)
            extras["step"] = step
        extras["wall_time"] = time.perf_counter() - t0
        energy = float(ref.properties.return_energy) if ref.properties.return_energy is not None else None
        grad = ref.properties.return_gradient
        rms, gmax = gradient_norms(grad)
        await step_finished("frequencies", {
            "step": 1, "energy": energy, "gradient_rms": rms, "gradient_max": gmax,
            "computed": extras["fragments_computed"], "cached": extras["fragments_cached"],
            "wall_time": extras["wall_time"], "run_id": extras.get("run_id")}, run_options)
    extras["method"] = route
    freqs, modes = harmonic_analysis(hess, geometry(inp), inp.molecule.masses)
    return FrequencyResult(frequencies=freqs, modes=modes, hessian=hess, method=route, energy=energy,
                           gradient=np.asarray(grad, dtype=float).reshape(-1, 3) if grad is not None else None,
                           extras=extras)


def frequencies_sync(mbe_input: Any, **options: Any) -> FrequencyResult:
    """Blocking :func:`frequencies` for scripts; also works inside a running loop (Jupyter).

    Takes :func:`frequencies`' arguments and returns its :class:`FrequencyResult`. Runs like
    :func:`qcmb_async.run`: ``anyio.run`` in a plain script, a private event-loop thread when a loop
    already runs in this thread; Ctrl-C (and SIGTERM in a plain script, then
    :class:`~qcmb_async.errors.Terminated`) cancels it, keeping finished fragments in the result store.
    """
    return call_blocking(frequencies, mbe_input, **options)


# `split_options` is re-exported for the CLI's option checks.
__all__ = ["FrequencyResult", "finite_difference_hessian", "frequencies", "frequencies_sync", "harmonic_analysis",
           "split_options"]
