"""The invariance guard: a fragment's derivatives must not move the fragment as a whole.

An isolated fragment's energy does not change when the whole fragment (ghost atoms included: they
carry basis functions that move with it) is translated or rotated rigidly. So, at any geometry
``r`` (natom x 3, bohr, the frame the fragment was sent in):

* its gradient ``g`` (natom x 3, Eh/bohr) sums to zero over atoms, ``sum_i g_i = 0`` (translation), and
  exerts no torque, ``sum_i (r_i - c) x g_i = 0`` (rotation; ``c`` the centroid);
* its Hessian ``H`` (3N x 3N, Eh/bohr^2) has every 3x3 row block summing to zero over the atoms,
  ``sum_j H_ij = 0`` (the derivative of the translation condition), and, differentiating
  ``g(R r) = R g(r)`` for a rotation ``R = exp(theta [w]x)`` at ``theta = 0``,
  ``sum_j H_ij (w x r_j) = w x g_i`` for each axis ``w``: the three axes give every component of ``g_i``
  twice, so this is checked against the result's gradient, or for self-consistency when it has none.

A derivative that breaks these by more than the program's tolerance
(:attr:`~qcmb_async.programs.ProgramTraits.invariance_tolerance`, measured per program and method, see
docs/troubleshooting.md) was computed in another frame (a program that symmetrized or reoriented the
geometry), for other atoms, or is numerically broken; the scheduler fails the fragment
(``InvarianceError``) rather than assemble it. Fragments with external point charges (embedding charges)
are not isolated and are not checked. Cost: a few numpy operations on natom x 3 (and 3N x 3N) arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..programs import traits
from .compact import CompactResult, component_properties


def _external_charges(atomic_input: Any) -> bool:
    """Whether the fragment sits in external point charges (then its energy depends on where it is)."""
    mol = atomic_input.molecule
    if (mol.extras or {}).get("embedding_charges"):
        return True
    fkw = (atomic_input.specification.keywords or {}).get("function_kwargs") or {}
    return bool(fkw.get("external_potentials"))


def _derivatives(result: Any) -> dict[str, Any]:
    """``{"gradient": ..., "hessian": ...}`` (those present) of an ``AtomicResult`` or a compact result."""
    if isinstance(result, CompactResult):
        return result.properties
    if isinstance(result, dict):
        if "input_data" not in result:
            return result  # properties already slimmed
        from qcelemental.models.v2 import AtomicResult

        result = AtomicResult(**result)
    driver = result.input_data.specification.driver
    return component_properties(result, str(getattr(driver, "value", driver)))


def violations(geometry: Any, gradient: Any = None, hessian: Any = None) -> dict[str, float]:
    """Largest breaks of rigid-motion invariance of derivatives at ``geometry`` (natom x 3, bohr).

    Returns those that apply: ``net_force`` (norm of ``sum_i g_i``, Eh/bohr), ``torque`` (norm of
    ``sum_i (r_i - c) x g_i`` divided by the largest distance from the centroid ``c``, at least 1 bohr:
    Eh/bohr), ``hessian_translation`` (largest element of ``sum_j H_ij``, Eh/bohr^2), ``hessian_rotation``
    (largest element of ``sum_j H_ij (w x r_j) - w x g_i`` over the three axes ``w``, divided like the
    torque: Eh/bohr^2; without a gradient, ``g`` is the one the Hessian implies, so only its self-consistency
    is judged). Arrays of the wrong shape are not judged (empty result).
    """
    r = np.asarray(geometry, dtype=float).reshape(-1, 3)
    n = len(r)
    rel = r - r.mean(axis=0)
    extent = max(1.0, float(np.linalg.norm(rel, axis=1).max())) if n else 1.0
    out: dict[str, float] = {}
    g = None
    if gradient is not None:
        g = np.asarray(gradient, dtype=float)
        if g.size != 3 * n:
            return {}
        g = g.reshape(n, 3)
        out["net_force"] = float(np.linalg.norm(g.sum(axis=0)))
        out["torque"] = float(np.linalg.norm(np.cross(rel, g).sum(axis=0))) / extent
    if hessian is not None:
        h = np.asarray(hessian, dtype=float)
        if h.size != 9 * n * n:
            return out
        h = h.reshape(3 * n, 3 * n)
        out["hessian_translation"] = float(np.abs(h.reshape(n, 3, n, 3).sum(axis=2)).max())
        # m[k, i] = sum_j H_ij (e_k x r_j) must be e_k x g_i = (0, -gz, gy), (gz, 0, -gx), (-gy, gx, 0) for
        # k = x, y, z: each gradient component appears twice, so the Hessian alone implies a gradient and
        # must agree with itself (and with the result's gradient when it has one).
        m = np.stack([(h @ np.cross(axis, rel).reshape(-1)).reshape(n, 3) for axis in np.eye(3)])
        implied = np.stack([m[2, :, 1] - m[1, :, 2], m[0, :, 2] - m[2, :, 0], m[1, :, 0] - m[0, :, 1]], axis=1) / 2
        ref = implied if g is None else g
        expected = np.stack([np.cross(axis, ref) for axis in np.eye(3)])
        out["hessian_rotation"] = float(np.abs(m - expected).max()) / extent
    return out


_WHAT = {
    "net_force": ("net force on the fragment", "Eh/bohr"),
    "torque": ("torque on the fragment per bohr of its extent", "Eh/bohr"),
    "hessian_translation": ("Hessian row-block sum (translation)", "Eh/bohr^2"),
    "hessian_rotation": ("Hessian rotation condition", "Eh/bohr^2"),
}


def check(program: str, atomic_input: Any, result: Any) -> str | None:
    """``None`` when ``result``'s derivatives are invariant within ``program``'s tolerance; else why not.

    ``atomic_input``: the fragment's ``AtomicInput`` (its molecule is the frame the derivatives must be in);
    ``result``: its ``AtomicResult``, :class:`~qcmb_async._core.compact.CompactResult` or properties dict.
    Energies alone, fragments in external charges and programs whose tolerance is ``None`` pass.
    """
    tol = traits(program).invariance_tolerance
    if tol is None:
        return None
    props = _derivatives(result)
    if props.get("gradient") is None and props.get("hessian") is None:
        return None
    if _external_charges(atomic_input):
        return None
    found = violations(atomic_input.molecule.geometry, props.get("gradient"), props.get("hessian"))
    grad_tol, hess_tol = tol
    bad = []
    for name, value in found.items():
        limit = hess_tol if name.startswith("hessian") else grad_tol
        if not value <= limit:  # NaN fails too
            what, unit = _WHAT[name]
            bad.append(f"{what} {value:.3g} {unit} (tolerance {limit:g})")
    if not bad:
        return None
    natom = len(atomic_input.molecule.symbols)
    ghosts = natom - int(sum(bool(x) for x in atomic_input.molecule.real))
    return (f"{program}'s derivatives are not invariant under rigid translation/rotation of the fragment "
            f"({natom} atoms, {ghosts} ghost): " + "; ".join(bad) + ". An isolated fragment's gradient sums to "
            "zero and exerts no torque, and its Hessian row blocks sum to zero and turn with it, in the frame it was "
            "sent in. "
            "Likely reasons: the program symmetrized or reoriented the geometry and returned derivatives in its "
            "own frame (NWChem without 'symmetry c1'), rows for other atoms, or a numerically loose calculation "
            "(a coarse DFT grid: use a finer grid; or, if that is intended, raise the program's "
            "invariance_tolerance, see docs/troubleshooting.md)")
