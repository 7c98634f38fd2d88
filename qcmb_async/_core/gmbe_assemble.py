"""GMBE assembly: sum each subsystem's energy (and capped gradient, by the chain rule) with its coefficient."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from .gmbe import GMBEInput, chain_rule
from .gmbe_plan import GMBEPlan


class GMBEProperties(BaseModel):
    """Energies (Eh) and gradients (Eh/bohr, natom x 3, input atom order) of the GMBE through each order."""

    model_config = ConfigDict(extra="forbid")

    return_energy: float
    return_gradient: list[list[float]] | None = None
    total_energy_through: dict[int, float]
    """GMBE(n) total energy for n = 1..max_nbody."""
    total_gradient_through: dict[int, list[list[float]]] | None = None
    subsystems_computed: int
    """Distinct subsystems computed (nonzero coefficient at some order)."""


class GMBEResult(BaseModel):
    """The result of a GMBE, shaped like QCSchema's ``ManyBodyResult`` where its fields fit.

    ``extras["gmbe"]`` lists every subsystem (0-based atoms, caps as ``[inside, outside, g]``, coefficient per
    order, energy), the primary fragments, cut bonds and, per order, n-mers, distinct and cancelled subsystems;
    ``extras["qcmb_async"]`` the run's records as for a ``ManyBodyResult``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    schema_name: Literal["qcmb_async_gmbe_result"] = "qcmb_async_gmbe_result"
    input_data: GMBEInput
    molecule: Any
    success: bool = True
    driver: str
    return_result: float | list[list[float]]
    properties: GMBEProperties
    extras: dict[str, Any]


def assemble_gmbe(plan: GMBEPlan, results: dict[str, dict[str, Any]], extras: dict[str, Any] | None = None
                  ) -> GMBEResult:
    """``results`` maps each fragment label to :func:`~qcmb_async._core.compact.component_properties`."""
    inp = plan.input
    natom = len(inp.molecule.symbols)
    driver = inp.driver
    orders = range(1, inp.max_nbody + 1)
    energy = dict.fromkeys(orders, 0.0)
    grads = {n: np.zeros((natom, 3)) for n in orders} if driver == "gradient" else None
    listed = []
    for sub in plan.subsystems:
        props = results[sub.label]
        e = float(props["energy"])
        spread = chain_rule(sub, props["gradient"], natom) if grads is not None else None
        for n, c in sub.coefficients.items():
            energy[n] += c * e
            if grads is not None:
                grads[n] += c * spread
        listed.append({"atoms": list(sub.atoms), "caps": [[c.inside, c.outside, c.g] for c in sub.caps],
                       "coefficients": {str(n): c for n, c in sub.coefficients.items()}, "energy": e})
    top = inp.max_nbody
    props = GMBEProperties(
        return_energy=energy[top],
        return_gradient=grads[top].tolist() if grads is not None else None,
        total_energy_through=energy,
        total_gradient_through={n: g.tolist() for n, g in grads.items()} if grads is not None else None,
        subsystems_computed=len(plan.subsystems))
    gmbe = {"primary_fragments": inp.fragments, "cut_bonds": cut_bonds(plan),
            "orders": {str(n): c for n, c in plan.summary.items()}, "subsystems": listed}
    return GMBEResult(input_data=inp, molecule=inp.molecule, driver=driver,
                      return_result=props.return_gradient if grads is not None else props.return_energy,
                      properties=props, extras={"gmbe": gmbe, "qcmb_async": extras or {}})


def cut_bonds(plan: GMBEPlan) -> list[list[int]]:
    """Bonds (0-based atom pairs) the fragmentation cut: those from an atom of a primary fragment to an atom outside
    it, each capped in that fragment (disjoint fragments: the bonds between fragments; overlapping ones: the bonds
    at each fragment's edge, though another fragment may hold both atoms)."""
    owner: dict[int, set[int]] = {}
    for k, frag in enumerate(plan.input.fragments):
        for a in frag:
            owner.setdefault(a, set()).add(k)
    return [[a, b] for a, b in plan.bonds if owner[a] != owner[b]]
