"""QCEngine program harness for tblite (GFN-xTB tight binding; qcengine 0.52 ships none).

Runs tblite's Python API (``tblite.interface.Calculator``) in-process. Its OpenMP thread count is
set per fragment from ``config.ncores`` (threadpoolctl; restored afterwards); like PySCF it belongs
in worker processes, one fragment per process at a time (``thread_safe = False``).

Methods (``specification.model.method``, case-insensitive): ``gfn2-xtb``, ``gfn1-xtb``,
``ipea1-xtb``. No basis set: ``model.basis`` must be ``None`` or empty.

Drivers: energy, gradient (analytic, natom x 3, Eh/bohr). No Hessian: take finite differences of
gradients (``qcmb_async.frequencies(..., method="finite-difference")``).

Charge and multiplicity: the molecule's ``molecular_charge`` and ``molecular_multiplicity``;
tblite is given ``uhf = multiplicity - 1`` unpaired electrons.

Ghost atoms (``real=False``): tight binding has no basis functions to place on a ghost atom, so a
molecule with ghost atoms is refused (an ``InputError``), never computed with the ghosts as real
atoms (tblite's own QCSchema entry point does that). Counterpoise-corrected expansions (CP, VMFC)
are therefore impossible; NoCP is the expansion to run.

Keywords (``specification.keywords``, the names of QCEngine's ``xtb`` harness): see
:data:`SUPPORTED_KEYWORDS`. :func:`check_request` checks them before anything runs.

Fragments run through :func:`run_direct`, which calls the harness without ``qcengine.compute``'s
per-call machinery (input re-validation, environment juggling, a full dump and re-validation of
the result: ~0.4 ms of a 1-ms water fragment) and returns the same ``AtomicResult`` or
``FailedOperation``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from qcelemental.models.v2 import AtomicResult, Provenance
from qcelemental.util import which_import
from qcengine.exceptions import ConvergenceError, InputError, UnknownError
from qcengine.programs.model import ProgramHarness

from ..errors import InputError as QCMBInputError

if TYPE_CHECKING:
    from qcelemental.models.v2 import AtomicInput
    from qcengine.config import TaskConfig

__all__ = ["METHODS", "SUPPORTED_KEYWORDS", "TBLiteHarness", "check_request", "run_direct"]

#: Method names we accept (lower case) -> tblite's spelling.
METHODS: dict[str, str] = {"gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB", "ipea1-xtb": "IPEA1-xTB"}

#: Supported keywords and a one-line description of each (shown in error messages).
SUPPORTED_KEYWORDS: dict[str, str] = {
    "accuracy": "numerical accuracy of the SCC, smaller is tighter (float > 0, tblite's default 1.0)",
    "max_iterations": "maximum number of SCC iterations (int >= 1, tblite's default 250)",
    "electronic_temperature": "electronic temperature for Fermi smearing in kelvin (float >= 0, tblite's "
                              "default 300 K)",
    "solvent": "implicit solvent by name, e.g. 'water', 'methanol', 'toluene' (str; default none: gas phase)",
    "solvation_model": "'alpb' (default) or 'gbsa', the model used with solvent",
}

_SOLVATION_MODELS = {"alpb": "alpb-solvation", "gbsa": "gbsa-solvation"}
#: Boltzmann constant in Eh/K (the factor tblite's documentation gives for its temperature setting).
_KB_HARTREE_PER_KELVIN = 3.166808578545117e-6


def _method(method: Any) -> str:
    """tblite's name for ``method`` (case-insensitive); QCEngine ``InputError`` for any other."""
    name = str(method or "").strip().lower()
    if name not in METHODS:
        raise InputError(f"tblite harness: unknown method {method!r}: use one of {', '.join(METHODS)}.")
    return METHODS[name]


def _check_basis(basis: Any) -> None:
    if basis is None or (isinstance(basis, str) and not basis.strip()):
        return
    raise InputError(f"tblite harness: GFN-xTB has its own minimal basis; got basis {basis!r}. Leave "
                     "model.basis unset (None) or empty.")


def _check_driver(driver: str) -> None:
    if driver == "hessian":
        raise InputError("tblite harness: no analytic Hessians (energy and gradient only): take finite "
                         "differences of MBE gradients (qcmb_async.frequencies(..., method='finite-difference')).")
    if driver not in ("energy", "gradient"):
        raise InputError(f"tblite harness: driver {driver!r} is not supported (energy, gradient).")


def _parse_keywords(keywords: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate keywords (case-insensitive names) and return them; absent ones stay tblite's defaults."""
    kw = {str(k).lower(): v for k, v in (keywords or {}).items()}
    unknown = sorted(set(kw) - set(SUPPORTED_KEYWORDS))
    if unknown:
        listing = "; ".join(f"{k}: {d}" for k, d in SUPPORTED_KEYWORDS.items())
        raise InputError(f"tblite harness: unknown keyword(s) {unknown}. Supported keywords are: {listing}.")

    def number(name: str) -> float:
        value = kw[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise InputError(f"tblite harness: keyword {name}={value!r} must be a number.")
        return float(value)

    out: dict[str, Any] = {}
    if kw.get("accuracy") is not None:
        if not number("accuracy") > 0:
            raise InputError(f"tblite harness: keyword accuracy={kw['accuracy']!r} must be a positive number.")
        out["accuracy"] = float(kw["accuracy"])
    if kw.get("max_iterations") is not None:
        value = kw["max_iterations"]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise InputError(f"tblite harness: keyword max_iterations={value!r} must be an integer >= 1.")
        out["max_iterations"] = int(value)
    if kw.get("electronic_temperature") is not None:
        if not number("electronic_temperature") >= 0:  # tblite takes a negative one silently
            raise InputError(f"tblite harness: keyword electronic_temperature={kw['electronic_temperature']!r} "
                             "must be a temperature in kelvin >= 0.")
        out["electronic_temperature"] = float(kw["electronic_temperature"])
    model = kw.get("solvation_model")
    if model is not None and str(model).lower() not in _SOLVATION_MODELS:
        raise InputError(f"tblite harness: keyword solvation_model={model!r} must be one of "
                         f"{', '.join(_SOLVATION_MODELS)}.")
    solvent = kw.get("solvent")
    if solvent is not None and (not isinstance(solvent, str) or not solvent.strip()):
        raise InputError(f"tblite harness: keyword solvent={solvent!r} must be a solvent name, e.g. 'water'.")
    if solvent is not None and str(solvent).strip().lower() != "none":
        out["solvent"] = str(solvent).strip().lower()
        out["solvation_model"] = str(model or "alpb").lower()
    elif model is not None:
        raise InputError(f"tblite harness: keyword solvation_model={model!r} needs a solvent (keyword solvent).")
    return out


def _configure(calc: Any, kw: Mapping[str, Any]) -> None:
    """Apply parsed keywords to a ``tblite.interface.Calculator`` (tblite errors propagate)."""
    calc.set("verbosity", 0)
    if "accuracy" in kw:
        calc.set("accuracy", kw["accuracy"])
    if "max_iterations" in kw:
        calc.set("max-iter", kw["max_iterations"])
    if "electronic_temperature" in kw:
        calc.set("temperature", kw["electronic_temperature"] * _KB_HARTREE_PER_KELVIN)
    if "solvent" in kw:
        calc.add(_SOLVATION_MODELS[kw["solvation_model"]], kw["solvent"])


def check_request(driver: Any, model: Any, keywords: Mapping[str, Any] | None) -> None:
    """Refuse, before anything runs, a request this harness would refuse in every fragment.

    ``driver``: energy/gradient/hessian (enum or str); ``model``: a QCSchema model (``.method``,
    ``.basis``) or a mapping with those keys; ``keywords``: the specification's program keywords
    (:data:`SUPPORTED_KEYWORDS`). When tblite is importable here, a named solvent is tried on H2 (a
    calculator build, no SCC: well under a millisecond), so an unknown solvent is refused up front too.

    Raises:
        qcmb_async.errors.InputError: naming the method, basis, driver, keyword or solvent and what to do.
    """
    get = model.get if isinstance(model, Mapping) else lambda key: getattr(model, key, None)
    try:
        method = _method(get("method"))
        _check_basis(get("basis"))
        _check_driver(str(getattr(driver, "value", driver)))
        kw = _parse_keywords(keywords)
        if "solvent" in kw and which_import("tblite", return_bool=True):
            from tblite.exceptions import TBLiteRuntimeError, TBLiteValueError
            from tblite.interface import Calculator

            calc = Calculator(method, np.array([1, 1]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4]]),
                              color=False, logger=lambda _msg: None)
            try:
                _configure(calc, kw)
            except (TBLiteRuntimeError, TBLiteValueError) as err:
                raise InputError(f"tblite harness: solvent {kw['solvent']!r} ({kw['solvation_model']}): {err}. "
                                 "Name a solvent tblite's ALPB/GBSA parametrisation knows (e.g. water, methanol, "
                                 "acetonitrile, toluene, chcl3).") from None
    except InputError as err:
        raise QCMBInputError(str(err)) from None


_controller: Any = None


def _thread_limit(ncores: int) -> Any:
    """Limit tblite's OpenMP pool (and any BLAS pool) to ``ncores`` threads for one calculation.

    One threadpoolctl controller per process, made after tblite is loaded (so it sees its OpenMP
    runtime); its ``limit`` costs ~0.01 ms, a fresh ``threadpool_limits`` 0.5 ms (measured here), which
    matters for millisecond fragments. Without threadpoolctl, tblite's OpenMP default applies.
    """
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # an optional limit, never a requirement
            return contextlib.nullcontext()
        _controller = ThreadpoolController()
    return _controller.limit(limits=ncores)


class TBLiteHarness(ProgramHarness):
    """QCEngine harness for tblite: GFN2-xTB, GFN1-xTB and IPEA1-xTB energies and gradients.

    Resources: ``config.ncores`` sets the OpenMP thread count for the calculation (process-global,
    restored afterwards); ``config.memory`` is not used (tblite takes no memory limit).
    """

    _defaults: ClassVar[dict[str, Any]] = {
        "name": "tblite",
        "scratch": False,
        "thread_safe": False,
        "thread_parallel": True,
        "node_parallel": False,
        "managed_memory": False,
    }
    version_cache: ClassVar[dict[str, str]] = {}

    @staticmethod
    def found(raise_error: bool = False) -> bool:
        """True if tblite is importable (``ModuleNotFoundError`` with install hint if raise_error)."""
        return which_import(
            "tblite",
            return_bool=True,
            raise_error=raise_error,
            raise_msg="Please install via `pip install 'qcmb_async[xtb]'` (or `pip install tblite`).",
        )

    def get_version(self) -> str:
        """tblite's library version, e.g. ``"0.8.0"``."""
        self.found(raise_error=True)
        if "tblite" not in self.version_cache:
            from tblite.library import get_version

            self.version_cache["tblite"] = ".".join(str(v) for v in get_version())
        return self.version_cache["tblite"]

    def compute(self, input_data: AtomicInput, config: TaskConfig) -> AtomicResult:
        """Run one tblite calculation and return a QCSchema v2 ``AtomicResult``.

        Errors: method, basis, driver, keywords, ghost atoms and non-integer charge/multiplicity are
        QCEngine ``InputError``s; tblite's own errors keep tblite's message (SCC not converged:
        ``ConvergenceError``; electrons and unpaired electrons that do not fit and other errors raised
        while the calculator is set up: ``InputError``; anything else: ``UnknownError``).
        """
        self.found(raise_error=True)
        from tblite.exceptions import TBLiteRuntimeError, TBLiteTypeError, TBLiteValueError
        from tblite.interface import Calculator

        spec = input_data.specification
        driver = str(getattr(spec.driver, "value", spec.driver))
        method = _method(spec.model.method)
        _check_basis(spec.model.basis)
        _check_driver(driver)
        kw = _parse_keywords(spec.keywords)

        qmol = input_data.molecule
        name = qmol.name
        real = [bool(r) for r in qmol.real]
        if not all(real):
            ghosts = [i + 1 for i, r in enumerate(real) if not r]
            raise InputError(f"tblite harness: molecule {name!r} has ghost atoms (atoms {ghosts[:10]}"
                             f"{' ...' if len(ghosts) > 10 else ''}): tight binding cannot place basis functions "
                             "without a nucleus. Counterpoise corrections (bsse_type cp/vmfc) need another "
                             "program; use bsse_type nocp with tblite.")
        charge = float(qmol.molecular_charge)
        mult = float(qmol.molecular_multiplicity)
        if abs(charge - round(charge)) > 1e-6 or abs(mult - round(mult)) > 1e-6 or round(mult) < 1:
            raise InputError(f"tblite harness: molecule {name!r} needs an integer charge and multiplicity >= 1, "
                             f"got {charge} and {mult}.")

        numbers_ = np.asarray(qmol.atomic_numbers, dtype=np.int32)
        positions = np.asarray(qmol.geometry, dtype=float).reshape(-1, 3)  # bohr, as tblite wants
        log: list[str] = []
        what = f"tblite {method} {driver} of {name!r} (charge {round(charge)}, multiplicity {round(mult)})"
        limits = _thread_limit(int(config.ncores)) if config.ncores else contextlib.nullcontext()
        with limits:
            try:
                calc = Calculator(method, numbers_, positions, charge=float(round(charge)),
                                  uhf=round(mult) - 1, color=False, logger=log.append)
                _configure(calc, kw)
            except (TBLiteRuntimeError, TBLiteValueError, TBLiteTypeError) as err:
                raise InputError(f"{what}: {err}") from None
            try:
                res = calc.singlepoint()
            except TBLiteRuntimeError as err:
                text = str(err)
                if "not converged" in text.lower():
                    raise ConvergenceError(f"{what}: {text} (keywords max_iterations, accuracy, "
                                           "electronic_temperature).") from None
                if "electrons" in text.lower():  # e.g. "Total number of electrons (8) and number unpaired ..."
                    raise InputError(f"{what}: {text}") from None
                raise UnknownError(f"{what}: {text}") from None
            energy = float(res.get("energy"))
            gradient = np.asarray(res.get("gradient"), dtype=float).reshape(-1, 3) if driver == "gradient" else None
            threads = _openmp_threads()

        natom = len(numbers_)
        props: dict[str, Any] = {
            "calcinfo_natom": natom,
            "return_energy": energy,
            "scf_total_energy": energy,
        }  # no dipole: tblite builds its whole post-processing dictionary for it (~0.4 ms, a quarter of a water)
        return_result: Any = energy
        if gradient is not None:
            props["return_gradient"] = gradient
            props["scf_total_gradient"] = gradient
            return_result = gradient
        solvation = f", solvent {kw['solvent']} ({kw['solvation_model'].upper()})" if "solvent" in kw else ""
        stdout = "\n".join([*log, f"{what}{solvation}: {natom} atoms, OpenMP threads {threads}",
                            f"return_energy = {energy:.12f} Eh"]) + "\n"
        return AtomicResult(
            input_data=input_data,
            molecule=input_data.molecule,
            properties=props,
            return_result=return_result,
            stdout=stdout,
            provenance=Provenance(creator="tblite", version=self.get_version(), routine="tblite.interface"),
            extras={"tblite": {"method": method, "keywords": kw, "threads": threads}},
            success=True,
        )


def _openmp_threads() -> int | None:
    """OpenMP threads tblite would use now (from the cached controller), None when unknown."""
    if _controller is None:
        return None
    pools = [p for p in _controller.info() if p.get("user_api") == "openmp"]
    return int(pools[0]["num_threads"]) if pools else None


_harness: TBLiteHarness | None = None


def run_direct(input_data: AtomicInput, task_config: Mapping[str, Any]) -> Any:
    """What ``qcengine.compute(input_data, "tblite", raise_error=False, task_config=task_config,
    return_version=2)`` returns, without its per-call machinery.

    The same ``AtomicResult`` (QCEngine's provenance augments and ``wall_time`` added) or
    ``FailedOperation`` (QCEngine's error types; an unexpected exception becomes an ``unknown_error``
    with its traceback, as QCEngine reports it). ``input_data`` is not modified. Inputs QCEngine
    would treat specially (a ``_qcengine_local_config`` in the extras) go through ``qcengine.compute``.
    """
    import importlib
    import time
    import traceback

    if "_qcengine_local_config" in (input_data.specification.extras or {}):
        import qcengine

        return qcengine.compute(input_data, "tblite", raise_error=False, task_config=dict(task_config),
                                return_version=2)
    from qcelemental.models.v2 import FailedOperation
    from qcengine.config import get_provenance_augments
    from qcengine.exceptions import QCEngineException

    global _harness
    if _harness is None:
        _harness = TBLiteHarness()
    # qcengine.compute's own get_config (cached by qcmb_async's seam once installed).
    config = importlib.import_module("qcengine.compute").get_config(task_config=dict(task_config))
    start = time.time()

    def augmented(provenance: Provenance) -> Provenance:
        # What QCEngine's handle_output_metadata adds to the provenance of what it returns.
        return Provenance(**{**provenance.model_dump(), **get_provenance_augments(), "wall_time": time.time() - start})

    try:
        result = _harness.compute(input_data, config)
    except Exception as exc:
        if isinstance(exc, QCEngineException):
            error = {"error_type": exc.error_type, "error_message": exc.error_message}
            if exc.extras is not None:
                error["extras"] = exc.extras
        else:  # QCEngine shows the traceback of an unexpected error
            error = {"error_type": "unknown_error",
                     "error_message": "QCEngine Execution Error:\n" + traceback.format_exc()}
        # QCEngine's FailedOperation carries the input with the augmented provenance.
        failed_input = input_data.model_copy(update={"provenance": augmented(input_data.provenance)})
        return FailedOperation(input_data=failed_input, error=error, success=False)
    return result.model_copy(update={"provenance": augmented(result.provenance)})
