"""Assemble stage: QCManyBody does all the many-body arithmetic from our fragment results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qcmanybody.utils import delabeler

from . import fill
from .compact import component_properties
from .fill import analyze_kept, complete_properties, unscreened_label_count
from .fragment import restore_file_order
from .plan import Plan, make_plan
from .screening import subset_of

if TYPE_CHECKING:
    from qcmanybody.models.v2 import ManyBodyResult

#: Above this many labels the result's ``cluster_properties`` (one validated ``AtomicProperties`` per
#: label, about 1.9 KB each: 1.3 GB for the 679,120 labels of an unscreened (H2O)64 MBE(4)) is left
#: empty; every number of the expansion is computed as before, and each fragment's result stays in the
#: result store. ``result.extras["qcmb_async"]["cluster_properties_omitted"]`` says how many were left out.
CLUSTER_PROPERTIES_LIMIT = 100_000

def keeps_results(plan: Plan) -> bool:
    """Whether the ``ManyBodyResult`` carries every fragment's ``AtomicResult`` (protocol ``all``)."""
    return plan.keep_results


def driver_of(plan: Plan) -> str:
    return plan.driver


def slim(plan: Plan, result: Any) -> Any:
    """What assembly needs of one fragment result: all of it, or only its properties.

    Unless the input's protocols ask for ``cluster_results="all"``, QCManyBody drops the
    fragments' ``AtomicResult``s from its result; keeping only the numbers makes memory grow
    with fragments in flight rather than with the size of the expansion.
    """
    if isinstance(result, dict) or keeps_results(plan):
        return result
    return component_properties(result, driver_of(plan))


def assemble(plan: Plan, results: dict[str, Any], extras: dict[str, Any] | None = None) -> ManyBodyResult:
    """Build the ``ManyBodyResult`` (v2) from fragment results exactly as QCManyBody would.

    ``results`` maps every label of ``plan`` to its ``AtomicResult`` or to its properties as
    :func:`slim` keeps them. ``extras`` lands in ``result.extras["qcmb_async"]``. For a screened
    plan the labels of dropped subsets get zero-increment values (:mod:`~qcmb_async._core.fill`)
    and QCManyBody's ``analyze()`` still does the arithmetic.
    """
    missing = [f.label for f in plan.fragments if f.label not in results]
    if missing:
        raise ValueError(f"cannot assemble: {len(missing)} fragment result(s) missing, e.g. {missing[0]}")
    # Same label order as QCManyBody's sequential loop (iterate_molecules order).
    ordered = {f.label: results[f.label] for f in plan.fragments}
    kept = plan.screen.kept_family() if plan.screen is not None else None
    result = _assemble(plan.computer, ordered, kept, keeps_results(plan), driver_of(plan), extras)
    # Fragments found from bonds may have reordered the file's atoms: derivatives go back to its order.
    return restore_file_order(result, plan.input.molecule)


def _assemble(computer: Any, ordered: dict[str, Any], kept: set[tuple[int, ...]] | None, keep_all: bool,
              driver: str, extras: dict[str, Any] | None) -> ManyBodyResult:
    if all(isinstance(res, dict) for res in ordered.values()):
        props = ordered  # already properties (slimmed): no second map of every label (679,120 at (H2O)64 MBE(4))
    else:
        props = {label: res if isinstance(res, dict) else component_properties(res, driver)
                 for label, res in ordered.items()}
    computed = len(props)
    core = computer.qcmb_core
    if kept is not None and len(core.nbodies_per_mc_level) == 1 and unscreened_label_count(core) > fill.FILL_LIMIT:
        # Too many labels to fill for analyze(): the same sums from the kept increments directly.
        analyzed = analyze_kept(core, kept, props)
    else:
        if kept is not None:
            props = complete_properties(core, kept, props)
        analyzed = core.analyze(props)
    analyzed["nbody_number"] = computed
    omitted = 0
    if len(analyzed["component_properties"]) > CLUSTER_PROPERTIES_LIMIT:
        omitted = len(analyzed["component_properties"])
        analyzed["component_properties"] = {}
    full = {label: res for label, res in ordered.items() if not isinstance(res, dict)}
    if keep_all and len(full) != len(ordered):
        raise ValueError("cannot assemble: cluster_results='all' needs every fragment's AtomicResult")
    mbres = computer.get_results(external_results=analyzed, component_results=full if keep_all else {})
    if omitted:
        extras = {**(extras or {}), "cluster_properties_omitted": omitted}
    if extras is not None:
        mbres = mbres.model_copy(update={"extras": {**mbres.extras, "qcmb_async": extras}})
    return mbres


def assemble_through(plan: Plan, nbody: int, results: dict[str, Any],
                     extras: dict[str, Any] | None = None) -> ManyBodyResult | None:
    """MBE(``nbody``) result from the results of a larger plan, or ``None`` when it cannot be built.

    Re-plans the same input with ``max_nbody=nbody`` (QCManyBody decides which fragments that
    needs) and assembles it if every one of them is in ``results``. Multilevel inputs whose
    ``levels`` fix the n-body range cannot be truncated and give ``None``. A screened plan keeps
    its kept family up to ``nbody`` (decided so far).
    """
    try:
        data = plan.input.model_dump()
        data["specification"]["keywords"]["max_nbody"] = nbody
        sub_input = type(plan.input)(**data)
        if plan.screen is not None:
            from qcmanybody.v2 import ManyBodyComputer

            computer = ManyBodyComputer.from_manybodyinput(sub_input, build_tasks=False)
        else:
            sub = make_plan(sub_input)
    except Exception:
        return None
    if plan.screen is None:
        if not all(f.label in results for f in sub.fragments):
            return None
        return assemble(sub, results, extras)
    kept = {s for s in plan.screen.kept_family() if len(s) <= nbody}
    nfrag = computer.qcmb_core.nfragments
    ordered = {}
    for label, res in results.items():
        _, real, basis = delabeler(label)
        if subset_of(tuple(real), tuple(basis), nfrag) in kept:
            ordered[label] = res
    try:
        return _assemble(computer, ordered, kept, keeps_results(plan), driver_of(plan), extras)
    except (ValueError, KeyError):
        return None  # a kept fragment of MBE(nbody) has no result (failed)
