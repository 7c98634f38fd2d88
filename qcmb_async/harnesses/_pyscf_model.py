"""What the PySCF harness accepts: keywords, methods, and basis sets with their ECPs, checked before any run."""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from qcelemental.util import which_import
from qcengine.exceptions import InputError

from ..errors import InputError as QCMBInputError

#: Supported keywords and a one-line description of each (shown in error messages).
SUPPORTED_KEYWORDS: dict[str, str] = {
    "conv_tol": "SCF energy convergence threshold (float, default 1e-10)",
    "conv_tol_grad": "SCF orbital-gradient convergence threshold (float, default sqrt(conv_tol))",
    "max_cycle": "maximum number of SCF iterations (int, default 50)",
    "xc_grid": "DFT integration grid level, 0-9 (int, PySCF default 3)",
    "density_fit": "density fitting for SCF and MP2 (bool, default False)",
    "warm_start": "seed the SCF with a density extrapolated from this fragment's last converged ones (up to 8, "
                  "each within 0.5 bohr of the new geometry) (bool, default False)",
}

#: Why a Hessian with embedding charges is refused (harness and input checks say the same).
EMBEDDED_HESSIAN = ("PySCF harness: no analytic Hessian with external point charges (embedding_charges; PySCF's "
                    "QM/MM has none): take finite differences of the EE-MBE gradients instead "
                    "(qcmb_async.frequencies(..., method='finite-difference')).")

_HF_NAMES = frozenset({"hf", "scf"})
_MP2_NAMES = frozenset({"mp2"})


def _parse_keywords(keywords: dict[str, Any]) -> dict[str, Any]:
    """Validate keywords (case-insensitive names) and return them with defaults filled in."""
    kw = {str(k).lower(): v for k, v in (keywords or {}).items()}
    unknown = sorted(set(kw) - set(SUPPORTED_KEYWORDS))
    if unknown:
        listing = "; ".join(f"{k}: {d}" for k, d in SUPPORTED_KEYWORDS.items())
        raise InputError(f"PySCF harness: unknown keyword(s) {unknown}. Supported keywords are: {listing}.")
    out: dict[str, Any] = {"conv_tol": 1e-10, "conv_tol_grad": None, "max_cycle": None, "xc_grid": None}
    for name in ("conv_tol", "conv_tol_grad"):
        if kw.get(name) is not None:
            value = kw[name]
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise InputError(f"PySCF harness: keyword {name}={value!r} must be a positive number.")
            out[name] = float(value)
    for name, low, high in (("max_cycle", 1, None), ("xc_grid", 0, 9)):
        if kw.get(name) is not None:
            value = kw[name]
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and int(value) == value
            if not ok or value < low or (high is not None and value > high):
                bounds = f"between {low} and {high}" if high is not None else f">= {low}"
                raise InputError(f"PySCF harness: keyword {name}={value!r} must be an integer {bounds}.")
            out[name] = int(value)
    density_fit = kw.get("density_fit", False)
    if not isinstance(density_fit, bool):
        raise InputError(f"PySCF harness: keyword density_fit={density_fit!r} must be true or false.")
    out["density_fit"] = density_fit
    warm = kw.get("warm_start", False)
    if not isinstance(warm, bool):
        raise InputError(f"PySCF harness: keyword warm_start={warm!r} must be true or false.")
    out["warm_start"] = warm
    return out


def _check_driver(driver: str, kind: str, kw: dict[str, Any], embedded: bool = False) -> None:
    """What this harness cannot compute for a driver and method kind (``_classify_method``), with external point
    charges (``embedded``) or without; QCEngine ``InputError``."""
    if driver not in ("energy", "gradient", "hessian"):
        raise InputError(f"PySCF harness: driver {driver!r} is not supported (energy/gradient/hessian).")
    if driver == "hessian" and embedded:
        raise InputError(EMBEDDED_HESSIAN)
    if driver == "hessian" and kind == "mp2":
        raise InputError("PySCF harness: hessian is not supported for MP2 (only HF and DFT): take finite "
                         "differences of MP2 gradients (qcmb_async.frequencies(..., method='finite-difference')).")
    if driver == "gradient" and kind == "mp2" and kw["density_fit"]:
        raise InputError("PySCF harness: density-fitted MP2 gradients are not available in PySCF.")


def embedding_charges(extras: Mapping[str, Any] | None) -> tuple[Any, Any] | None:
    """External point charges of a fragment: ``(coords, charges)`` or ``None`` when it has none.

    ``extras``: the fragment molecule's ``extras``; QCManyBody (``ManyBodyCore.iterate_molecules``, when
    ``embedding_charges`` is given) puts ``"embedding_charges": [[q, [x, y, z]], ...]`` there: charge ``q``
    (e) at position ``(x, y, z)`` (bohr, the parent's frame, the fragment molecule's frame too since QCManyBody
    fixes its orientation and centre). Returns ``coords`` ``(k, 3)`` bohr and ``charges`` ``(k,)`` as float
    arrays. Raises QCEngine's ``InputError`` for a malformed or non-finite entry.
    """
    import numpy as np

    raw = (extras or {}).get("embedding_charges")
    if not raw:
        return None
    try:
        charges = np.array([float(item[0]) for item in raw], dtype=float)
        coords = np.array([[float(c) for c in item[1]] for item in raw], dtype=float).reshape(len(raw), 3)
    except (TypeError, ValueError, IndexError):
        raise InputError("PySCF harness: molecule.extras['embedding_charges'] must be a list of [charge, [x, y, z]] "
                         "(bohr), as QCManyBody writes it.") from None
    if not (np.isfinite(charges).all() and np.isfinite(coords).all()):
        raise InputError("PySCF harness: molecule.extras['embedding_charges'] holds NaN or infinite numbers.")
    return coords, charges


def check_request(driver: Any, method: str, keywords: dict[str, Any] | None, *, embedded: bool = False) -> None:
    """Refuse, before anything runs, a request this harness would refuse in every fragment.

    ``driver``: energy/gradient/hessian (enum or str); ``method``; ``keywords``: the specification's program
    keywords (see ``SUPPORTED_KEYWORDS``); ``embedded``: fragments get ``embedding_charges`` (no Hessian then).
    Unknown methods are :func:`check_model`'s business.

    Raises:
        qcmb_async.errors.InputError: naming the keyword and what it must be, or the driver the method lacks.
    """
    try:
        kw = _parse_keywords(keywords or {})
        try:
            kind, _ = _classify_method(method)
        except InputError:
            return  # check_model names an unknown method
        _check_driver(str(getattr(driver, "value", driver)), kind, kw, embedded)
    except InputError as err:
        raise QCMBInputError(str(err)) from None


def _classify_method(method: str) -> tuple[str, str | None]:
    """Return ("hf" | "mp2" | "dft", xc) for a method name; InputError if PySCF cannot run it."""
    name = (method or "").strip().lower()
    if name in _HF_NAMES:
        return "hf", None
    if name in _MP2_NAMES:
        return "mp2", None

    from pyscf.dft import libxc
    from pyscf.scf.dispersion import parse_dft

    supported = "HF ('hf'/'scf'), 'mp2', or a DFT functional known to PySCF/libxc (e.g. 'b3lyp', 'pbe')"
    try:
        xc, _, disp = parse_dft(name)
        libxc.parse_xc(xc)
    except (KeyError, ValueError, NotImplementedError) as err:
        msg = f"PySCF harness: unknown method {method!r} ({err}). Supported: {supported}."
        raise InputError(msg) from None
    if disp is not None and not which_import("pyscf.dispersion", return_bool=True):
        raise InputError(
            f"PySCF harness: method {method!r} has a dispersion correction ({disp}), which needs the "
            "pyscf-dispersion package: `pip install pyscf-dispersion`."
        )
    return "dft", name


# -- basis sets and effective core potentials -------------------------------------------


class _Unresolvable(ValueError):
    """PySCF cannot give an element the basis set (and ECP) asked for; the message says which.

    ``kind``: ``"basis"`` (no basis functions) or ``"ecp"`` (the basis set's ECP is missing).
    """

    def __init__(self, message: str, kind: str = "basis") -> None:
        super().__init__(message)
        self.kind = kind


def _basis_name(basis: Any) -> str:
    if not basis or not isinstance(basis, str) or not basis.strip():
        raise _Unresolvable("PySCF harness: specification.model.basis must name a basis set, e.g. 'sto-3g'.")
    return basis.strip().lower()


@functools.lru_cache(maxsize=1024)
def _resolve(symbol: str, basis: str) -> int:
    """Core electrons the ECP of ``basis`` replaces for element ``symbol`` (0: none).

    Raises :class:`_Unresolvable` when PySCF has no basis functions for the element, or when the
    Basis Set Exchange (PySCF's ``BSE_META``) says the basis uses an ECP for it that PySCF's
    library cannot load (e.g. aug-cc-pVDZ-PP for Cu): running all-electron in a valence basis
    would give a wrong energy without any error.
    """
    from pyscf import gto

    with warnings.catch_warnings():  # "Basis may be available in basis-set-exchange": we say it ourselves
        warnings.simplefilter("ignore")
        try:
            shells = gto.basis.load(basis, symbol)
        except Exception as err:  # BasisNotFoundError (a RuntimeError), KeyError, parse errors
            raise _Unresolvable(
                f"PySCF has no basis set {basis!r} for element {symbol} ({type(err).__name__}: "
                f"{' '.join(str(err).split())}). "
                "Choose a basis set PySCF defines for every element of the molecule (pyscf.gto.basis)."
            ) from None
        if not shells:
            raise _Unresolvable(f"PySCF's basis set {basis!r} has no functions for element {symbol}: choose another.")
        try:
            ecp = gto.basis.load_ecp(basis, symbol)
        except Exception:  # names PySCF has no ECP file for; the BSE check below decides
            ecp = None
    _, bse_ecp_atoms = gto.mole.bse_predefined_ecp(basis, symbol)
    if not ecp:
        if bse_ecp_atoms:
            raise _Unresolvable(
                f"basis set {basis!r} uses an effective core potential for element {symbol}, but PySCF's "
                "basis library has none for it: the atom would run all-electron in a valence basis. Choose a "
                "basis set PySCF defines with its ECP (e.g. def2-svp, lanl2dz) or another program.",
                kind="ecp",
            )
        return 0
    return int(ecp[0])


def ecp_core_electrons(symbol: str, basis: str) -> int:
    """Core electrons replaced by the ECP ``basis`` defines for element ``symbol`` in PySCF (0: none).

    ``symbol``: element symbol, any case (``"K"``, ``"rb"``); ``basis``: basis set name, any case
    (``"LANL2DZ"``). For example ``ecp_core_electrons("K", "lanl2dz") == 10`` and
    ``ecp_core_electrons("K", "def2-svp") == 0``. Cached per process.

    Raises:
        qcmb_async.errors.InputError: PySCF cannot resolve ``basis`` for the element (see
            :func:`check_model`).
    """
    try:
        return _resolve(_element(symbol), _basis_name(basis))
    except _Unresolvable as err:
        raise QCMBInputError(str(err)) from None


def _element(symbol: str) -> str:
    """``"k"`` / ``"K"`` -> ``"K"`` (PySCF's and QCElemental's spelling)."""
    return str(symbol).strip().capitalize()


def check_model(symbols: Iterable[str], model: Any) -> None:
    """Refuse, before anything runs, a model PySCF cannot run on these elements.

    ``symbols``: the molecule's element symbols (ghosts included: they need basis functions);
    ``model``: a QCSchema model (``.method``, ``.basis``) or a mapping with those keys.
    Checks that the method is one this harness runs and that PySCF resolves the basis set
    (with the ECP it defines) for every element. Does nothing when pyscf is not importable here
    (fragments running on other machines are checked there).

    Raises:
        qcmb_async.errors.InputError: naming the basis set and the element, or the method.
    """
    if not which_import("pyscf", return_bool=True):  # remote workers run it: nothing to check against here
        return
    get = model.get if isinstance(model, Mapping) else lambda key: getattr(model, key, None)
    try:
        _classify_method(get("method"))
        basis = _basis_name(get("basis"))
    except (_Unresolvable, InputError) as err:
        raise QCMBInputError(str(err)) from None
    bad: dict[str, _Unresolvable] = {}
    for symbol in sorted({_element(s) for s in symbols}):
        try:
            _resolve(symbol, basis)
        except _Unresolvable as err:
            bad[symbol] = err
    if len(bad) == 1:
        raise QCMBInputError(str(next(iter(bad.values()))))
    if bad:  # one sentence per kind of failure, naming every element
        no_basis = [el for el, err in bad.items() if err.kind == "basis"]
        no_ecp = [el for el, err in bad.items() if err.kind == "ecp"]
        parts = []
        if no_basis:
            parts.append(f"PySCF has no basis set {basis!r} for {_elements(no_basis)}.")
        if no_ecp:
            parts.append(f"Basis set {basis!r} uses an effective core potential for {_elements(no_ecp)} that PySCF's "
                         "basis library lacks: those atoms would run all-electron in a valence basis.")
        parts.append("Choose a basis set PySCF defines, with its ECPs, for every element of the molecule "
                     "(pyscf.gto.basis), or another program.")
        raise QCMBInputError(" ".join(parts))


def _elements(symbols: list[str]) -> str:
    return ("element " if len(symbols) == 1 else "elements ") + ", ".join(symbols)
