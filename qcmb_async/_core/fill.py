"""Assembly of a screened expansion: dropped labels get the values that make their increments zero.

QCManyBody's ``analyze()`` wants a value for every label it planned. For each label of a dropped
subset this module computes, bottom-up from the kept values, the value that makes the dropped
subset's increment exactly zero, for every property (energy, gradient, Hessian) and every BSSE
treatment's own labels; then QCManyBody's own arithmetic assembles the result. Equivalently, the
fills define the one property function whose many-body increments equal the computed ones on the
kept family and vanish outside it, so every exact MBE formula QCManyBody applies to it gives the
sum of the kept increments:

- NoCP labels ``(T, T)`` and CP labels ``(T, all)``: the value of a dropped ``T`` is the sum of the
  increments of its kept proper subsets (in the same basis), ``Δ(V) = E(V) - Σ_{U⊊V} Δ(U)``.
- VMFC labels ``(U, B)`` of a dropped basis ``B``: the NoCP value of ``(U, U)`` (computed or
  filled) when NoCP labels exist for this model chemistry, else zero; either way the VMFC term
  ``Σ_{U⊆B} (-1)^{|B|-|U|} E(U, B)`` of ``B`` vanishes.

Gradients and Hessians are summed in the whole cluster's shape and cut back to the label's atoms
with QCManyBody's own ``resize_gradient``/``resize_hessian``.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from .plan import iterate_labels
from .screening import Subset, subset_of


def _proper_subsets(t: Subset) -> list[Subset]:
    return [u for n in range(1, len(t)) for u in combinations(t, n)]


def complete_properties(core: Any, kept: set[Subset], props: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Properties for every label ``core`` planned: computed ones from ``props``, dropped ones filled.

    ``props`` maps labels (QCManyBody's strings) to ``{"energy": float, "gradient": array, ...}``;
    ``kept`` is the kept family (sorted tuples, 1-based). Raises ``ValueError`` when a kept label
    has no result. The returned dict is in QCManyBody's label order.
    """
    from qcmanybody.utils import labeler

    nfrag = core.nfragments
    everything: Subset = tuple(range(1, nfrag + 1))
    keys = iterate_labels(core)
    names = [(mc, real, basis, labeler(mc, real, basis)) for mc, real, basis in keys]
    present = {(mc, real, basis) for mc, real, basis, _ in names}
    missing = [lab for mc, real, basis, lab in names
               if subset_of(real, basis, nfrag) in kept and lab not in props]
    if missing:
        raise ValueError(f"cannot assemble: {len(missing)} kept fragment result(s) missing, e.g. {missing[0]}")
    if all(lab in props for *_, lab in names):
        return {lab: props[lab] for *_, lab in names}  # nothing dropped: exactly the unscreened input
    by_key = {(mc, real, basis): props[lab] for mc, real, basis, lab in names if lab in props}
    properties = sorted({p for v in props.values() for p in v})
    filled: dict[str, dict[str, Any]] = {}
    for p in properties:
        fill = _Filler(core, kept, by_key, p, present, everything)
        for mc, real, basis, lab in names:
            if lab in props:
                continue
            filled.setdefault(lab, {})[p] = fill.value(mc, real, basis)
    return {lab: props[lab] if lab in props else filled[lab] for *_, lab in names}


class _Filler:
    """Fill values of one property, memoised per increment."""

    def __init__(self, core: Any, kept: set[Subset], known: dict[tuple[str, Subset, Subset], Any], prop: str,
                 present: set[tuple[str, Subset, Subset]], everything: Subset) -> None:
        self.core, self.kept, self.known, self.prop = core, kept, known, prop
        self.present, self.everything = present, everything
        self.delta: dict[tuple[str, Subset, bool], Any] = {}

    def _full(self, value: Any, basis: Subset) -> Any:
        if self.prop == "gradient":
            return self.core.resize_gradient(value, basis)
        if self.prop == "hessian":
            return self.core.resize_hessian(value, basis)
        return value

    def _cut(self, value: Any, basis: Subset) -> Any:
        if self.prop == "gradient":
            return self.core.resize_gradient(value, basis, reverse=True)
        if self.prop == "hessian":
            return self.core.resize_hessian(value, basis, reverse=True)
        return value

    def _zero(self) -> Any:
        import numpy as np

        nat = len(self.core.molecule.symbols)
        if self.prop == "gradient":
            return np.zeros((nat, 3))
        if self.prop == "hessian":
            return np.zeros((3 * nat, 3 * nat))
        return 0.0

    def _basis(self, t: Subset, cp: bool) -> Subset:
        return self.everything if cp else t

    def _raw(self, mc: str, t: Subset, cp: bool) -> Any:
        """Computed value of a kept subset's label, in the cluster's shape."""
        basis = self._basis(t, cp)
        return self._full(self.known[(mc, t, basis)][self.prop], basis)

    def increment(self, mc: str, t: Subset, cp: bool) -> Any:
        """``Δ(t) = E(t) - Σ_{u⊊t} Δ(u)`` over the kept family (NoCP: own basis; CP: cluster basis)."""
        key = (mc, t, cp)
        if key not in self.delta:
            self.delta[key] = self._raw(mc, t, cp) - self._sum_below(mc, t, cp)
        return self.delta[key]

    def _sum_below(self, mc: str, t: Subset, cp: bool) -> Any:
        total = self._zero()
        for u in _proper_subsets(t):
            if u in self.kept:
                total = total + self.increment(mc, u, cp)
        return total

    def _nocp_value(self, mc: str, t: Subset) -> Any:
        """Value of ``(t, t)`` in the cluster's shape: computed when kept, else the zero-increment fill."""
        if (mc, t, t) in self.known:
            return self._full(self.known[(mc, t, t)][self.prop], t)
        return self._sum_below(mc, t, False)

    def value(self, mc: str, real: Subset, basis: Subset) -> Any:
        if basis == self.everything and real != basis:  # CP label (T, all)
            return self._cut(self._sum_below(mc, real, True), basis)
        if real == basis:
            if (mc, real, real) in self.present and not self._vmfc_only(mc):
                return self._cut(self._sum_below(mc, real, False), basis)
            return self._cut(self._zero(), basis)
        # VMFC ghost label (U, B) of a dropped basis B.
        if self._vmfc_only(mc):
            return self._cut(self._zero(), basis)
        return self._cut(self._nocp_value(mc, real), basis)

    def _vmfc_only(self, mc: str) -> bool:
        """VMFC labels without NoCP ones in this model chemistry: every dropped label is zero."""
        return "nocp" not in {str(getattr(b, "value", b)) for b in self.core.bsse_type}


#: Above this many labels in the unscreened expansion a screened run is assembled from its kept
#: increments directly (:func:`analyze_kept`) instead of filling every dropped label for ``analyze()``.
FILL_LIMIT = 200_000


def unscreened_label_count(core: Any) -> int:
    """Labels QCManyBody would plan without screening (counted, not enumerated)."""
    from math import comb

    n, total = core.nfragments, 0
    bsse = {str(getattr(b, "value", b)) for b in core.bsse_type}
    for nbs in core.nbodies_per_mc_level.values():
        ints = [int(x) for x in nbs if x != "supersystem"]
        if not ints:
            continue
        top = max(ints)
        subsets = sum(comb(n, k) for k in range(1, top + 1))
        total += subsets * (("nocp" in bsse) + ("cp" in bsse))
        if "vmfc" in bsse:
            total += sum(comb(n, k) * (2 ** k - 1) for k in ints)
    return total


def analyze_kept(core: Any, kept: set[Subset], props: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What ``core.analyze()`` returns, computed from the kept increments alone (one model chemistry).

    For expansions whose full label set is too large to fill (:data:`FILL_LIMIT`): the body
    dictionaries are the sums of the kept increments (NoCP, CP in the cluster basis plus monomers in
    their own basis, VMFC basis terms), then QCManyBody's own ``print_nbody_energy`` and
    ``collect_vars`` turn them into its summary and properties. Memory and time grow with the kept
    family, not with C(N, n). Raises ``ValueError`` for multilevel inputs or missing kept results.
    """
    from qcmanybody.utils import collect_vars, delabeler, modelchem_labels, print_nbody_energy

    if len(core.nbodies_per_mc_level) != 1:
        raise ValueError("direct screened assembly handles one model chemistry; multilevel inputs are filled")
    mc, nbs = next(iter(core.nbodies_per_mc_level.items()))
    nbodies = [int(x) for x in nbs]
    top = max(nbodies)
    nfrag = core.nfragments
    everything: Subset = tuple(range(1, nfrag + 1))
    bsse = [b for b in core.bsse_type]
    names = {str(getattr(b, "value", b)) for b in bsse}
    keyed = {}
    for label, value in props.items():
        _, real, basis = delabeler(label)
        keyed[(tuple(real), tuple(basis))] = value
    available = {"energy"} | {p for v in props.values() for p in v}
    embedded = bool(core.embedding_charges)
    results: dict[str, Any] = {}
    component_properties: dict[str, dict[str, Any]] = {}
    body_dicts: dict[str, dict[str, dict[int, Any]]] = {}
    by_order: dict[int, list[Subset]] = {}
    for s in kept:
        by_order.setdefault(len(s), []).append(s)
    for prop in sorted(available):
        filler = _Filler(core, kept, {(mc, r, b): v for (r, b), v in keyed.items()}, prop, set(), everything)

        def val(real: Subset, basis: Subset, _f: _Filler = filler) -> Any:
            return _f._full(keyed[(real, basis)][_f.prop], basis)

        bodies: dict[str, dict[int, Any]] = {}
        if "nocp" in names:
            level = {k: sum((filler.increment(mc, s, False) for s in by_order.get(k, [])), filler._zero())
                     for k in range(1, top + 1)}
            bodies["nocp"] = _cumulative(level, top, filler._zero())
        if "cp" in names:
            mono = [(i,) for i in everything if ((i,), (i,)) in keyed]
            start = sum((val(m, m) for m in mono), filler._zero()) if mono else filler._zero()
            level = {k: sum((filler.increment(mc, s, True) for s in by_order.get(k, [])), filler._zero())
                     for k in range(2, top + 1)}
            level[1] = start
            bodies["cp"] = _cumulative(level, top, filler._zero())
        if "vmfc" in names:
            level = {}
            for k in range(1, top + 1):
                total = filler._zero()
                for b in by_order.get(k, []):
                    for n in range(1, k + 1):
                        for t in combinations(b, n):
                            total = total + (-1) ** (k - n) * val(t, b)
                level[k] = total
            bodies["vmfc"] = _cumulative(level, top, filler._zero())
        ret_bsse = str(getattr(core.return_bsse_type, "value", core.return_bsse_type))
        ret = bodies[ret_bsse][top]
        if not core.return_total_data:
            ret = ret - bodies[ret_bsse][1]
        results[f"ret_{prop}"] = ret
        body_dicts[prop] = bodies
        for (real, basis), value in keyed.items():
            if prop in value:
                lab = _label(mc, real, basis)
                component_properties.setdefault(lab, {})["calcinfo_natom"] = len(core.molecule.symbols)
                component_properties[lab][f"return_{prop}"] = val(real, basis)
    nbody_dict: dict[str, Any] = {}
    stdout = ""
    labels = modelchem_labels(core.nbodies_per_mc_level, presorted=True)
    for b in bsse:
        bt = str(getattr(b, "value", b))
        stdout += print_nbody_energy(body_dicts["energy"][bt], f"{b.formal()} ({b.abbr()})", nfrag, labels,
                                     embedded, core.supersystem_ie_only, None)
    for prop, bodies in body_dicts.items():
        for b in bsse:
            bt = str(getattr(b, "value", b))
            nbody_dict.update(collect_vars(bt, prop, bodies[bt], top, embedded, core.supersystem_ie_only,
                                           core.has_supersystem))
    out = {**results, "results": nbody_dict, "component_properties": component_properties, "stdout": stdout}
    for prop, bodies in body_dicts.items():
        out[f"{prop}_body_dict"] = bodies
    out["energy_body_dict"] = {str(k) + bt: v for bt, d in body_dicts["energy"].items() for k, v in d.items()}
    return out


def _cumulative(level: dict[int, Any], top: int, zero: Any) -> dict[int, Any]:
    out, running = {}, zero
    for k in range(1, top + 1):
        running = running + level.get(k, zero)
        out[k] = running
    return out


def _label(mc: str, real: Subset, basis: Subset) -> str:
    from qcmanybody.utils import labeler

    return labeler(mc, real, basis)
