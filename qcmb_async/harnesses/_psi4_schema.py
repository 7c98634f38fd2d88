"""QCSchema translation for ``psi4 --json`` before 1.4: the v1 input document, psi4's errors, the v2 result."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
from qcelemental.models.v2 import AtomicProperties, AtomicResult, BasisSet, Provenance
from qcengine.exceptions import ConvergenceError, InputError, RandomError, ResourceError, UnknownError

if TYPE_CHECKING:
    from qcelemental.models.v2 import AtomicInput
    from qcengine.config import TaskConfig

    from .psi4_legacy import Psi4Probe

#: Share of ``config.memory`` given to psi4 (the Python interpreter around it needs the rest).
MEMORY_SHARE = 0.95
#: psi4 1.3 refuses less memory than this (bytes).
PSI4_MIN_MEMORY = 250 * 1024**2


def v1_document(input_data: AtomicInput, config: TaskConfig) -> dict[str, Any]:
    """The QCSchema v1 JSON document ``psi4 --json`` (< 1.4) reads, with cores and memory."""
    spec = input_data.specification
    if isinstance(spec.model.basis, BasisSet):
        raise InputError("Psi4 legacy harness: a QCSchema BasisSet is not supported; name the basis, e.g. 'sto-3g'.")
    doc: dict[str, Any] = json.loads(input_data.convert_v(1).json())
    doc["schema_name"] = "qcschema_input"
    doc["schema_version"] = 1
    doc["model"]["basis"] = doc["model"].get("basis") or ""  # e.g. HF-3c names no basis
    # psi4 moves and turns unfixed molecules: gradients would come back in psi4's frame.
    doc["molecule"]["fix_com"] = True
    doc["molecule"]["fix_orientation"] = True
    keywords = dict(doc.get("keywords") or {})
    if "external_potentials" in (keywords.get("function_kwargs") or {}):
        # psi4 < 1.6 has no such driver argument and would silently ignore the charges.
        raise InputError("Psi4 legacy harness: external point charges (function_kwargs external_potentials, "
                         "e.g. QCManyBody's embedding_charges) need psi4 >= 1.6; this psi4 would ignore them.")
    if input_data.molecule.molecular_multiplicity != 1 and "reference" not in {k.lower() for k in keywords}:
        keywords["reference"] = "uhf"
    doc["keywords"] = keywords
    ncores = int(config.ncores or 1)
    doc["nthreads"] = ncores
    doc["memory"] = psi4_memory(float(config.memory))
    doc["return_output"] = True
    return doc


def psi4_memory(gib: float) -> int:
    """Bytes psi4 may use out of a fragment's ``gib``: 95 %, but at least psi4's minimum of 250 MiB."""
    total = int(gib * 1024**3)
    if total < PSI4_MIN_MEMORY:
        raise InputError(f"Psi4 needs at least 250 MiB per calculation; this fragment has {gib:g} GiB. "
                         "Give it more (fragment_memory >= 0.25).")
    return max(int(total * MEMORY_SHARE), PSI4_MIN_MEMORY)


#: psi4 exception names (``error_type`` in its output) that mean the input asked for something impossible.
INPUT_ERROR_TYPES = frozenset({"ValidationError", "BasisSetNotFound", "MissingMethodError", "ManagedMethodError",
                               "UpgradeHelper"})
#: psi4 exception names that mean an iterative procedure did not converge.
CONVERGENCE_ERROR_TYPES = frozenset({"SCFConvergenceError", "ConvergenceError", "TDSCFConvergenceError",
                                     "OptimizationConvergenceError"})


def _classify(message: str, error_type: str) -> Exception:
    """QCEngine's error categories for a psi4 failure (QCEngine's rules, plus input and convergence types)."""
    if "PSIO Error" in message:
        return ResourceError(message) if "scratch directory" in message else RandomError(message)
    if any(s in message for s in ("SIGSEV", "SIGSEGV", "segmentation fault")):
        return RandomError(message)
    if (error_type in INPUT_ERROR_TYPES or "TypeError: set_global_option" in message
            or "RHF reference is only for singlets" in message):
        return InputError(message)
    if error_type in CONVERGENCE_ERROR_TYPES:
        return ConvergenceError(message)
    return UnknownError(message)


def _to_v2(input_data: AtomicInput, result: dict[str, Any], probe: Psi4Probe, doc: dict[str, Any],
           wall: float, memory_gib: float) -> AtomicResult:
    """The v2 ``AtomicResult`` from psi4's v1 output document."""
    driver = str(getattr(input_data.specification.driver, "value", input_data.specification.driver))
    natom = len(input_data.molecule.symbols)
    raw_props = dict(result.get("properties") or {})
    known = set(AtomicProperties.model_fields) - {"schema_name"}
    props = {k: v for k, v in raw_props.items() if k in known and v is not None}
    unknown = {k: v for k, v in raw_props.items() if k not in known}
    extras_in = dict(result.get("extras") or {})
    qcvars = extras_in.get("qcvars") or {}

    value = result.get("return_result")
    if driver == "energy":
        return_result: Any = float(value)
        props.setdefault("return_energy", return_result)
    elif driver == "gradient":
        return_result = np.asarray(value, dtype=float).reshape(natom, 3)
        props["return_gradient"] = return_result
        scf_grad = qcvars.get("SCF TOTAL GRADIENT")
        if scf_grad is not None and np.asarray(scf_grad).size == natom * 3:
            props["scf_total_gradient"] = np.asarray(scf_grad, dtype=float).reshape(natom, 3)
    elif driver == "hessian":
        return_result = np.asarray(value, dtype=float).reshape(3 * natom, 3 * natom)
        props["return_hessian"] = return_result
        # psi4's hessian() computes the gradient at the reference geometry first and leaves it in
        # CURRENT GRADIENT (analytic and finite-difference Hessians alike); QCEngine's harness for newer
        # psi4 returns it as return_gradient, and so do we.
        for qcvar, field in (("CURRENT GRADIENT", "return_gradient"), ("SCF TOTAL GRADIENT", "scf_total_gradient")):
            grad = qcvars.get(qcvar)
            if grad is not None and np.asarray(grad).size == natom * 3:
                props[field] = np.asarray(grad, dtype=float).reshape(natom, 3)
        scf_hess = qcvars.get("SCF TOTAL HESSIAN")
        if scf_hess is not None and np.asarray(scf_hess).size == (3 * natom) ** 2:
            props["scf_total_hessian"] = np.asarray(scf_hess, dtype=float).reshape(3 * natom, 3 * natom)
    else:  # properties: psi4's dict, as it came
        return_result = value
    if "return_energy" not in props and qcvars.get("CURRENT ENERGY") is not None:
        props["return_energy"] = float(qcvars["CURRENT ENERGY"])
    props.setdefault("calcinfo_natom", natom)

    extras = {k: v for k, v in extras_in.items() if k != "qcvars"}
    extras["qcvars"] = qcvars
    extras["psi4_legacy"] = {
        "harness": "qcmb_async.harnesses.psi4_legacy",
        "command": "psi4 --json",
        "nthreads": doc["nthreads"],
        "memory_bytes": doc["memory"],
        "wall_time": round(wall, 4),
        **({"other_properties": unknown} if unknown else {}),
    }
    provenance = Provenance(creator="Psi4", version=probe.version or "", routine="psi4.json.run_json (psi4 --json)",
                            nthreads=doc["nthreads"], memory=round(float(memory_gib), 3))
    return AtomicResult(
        input_data=input_data,
        molecule=input_data.molecule,
        properties=props,
        return_result=return_result,
        stdout=result.get("raw_output"),
        provenance=provenance,
        extras=extras,
        success=True,
    )
