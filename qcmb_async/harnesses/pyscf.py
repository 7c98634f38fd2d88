"""QCEngine program harness for PySCF (qcengine 0.52 ships none).

Runs PySCF in-process. PySCF's thread count (``pyscf.lib.num_threads``) is process-global, so
two fragments in one process would fight over it: run this harness in worker processes, one
fragment per process at a time (``thread_safe = False``).

Methods (``specification.model.method``, case-insensitive):
    * ``hf`` / ``scf``: RHF for singlets, UHF otherwise;
    * ``mp2``: (U)MP2 on top of the (R/U)HF reference, all electrons correlated;
    * any PySCF/libxc functional name (``b3lyp``, ``pbe``, ``pbe0``, ``wb97x-v``...): RKS/UKS.
      Dispersion suffixes (``-d3bj``, ``-d4``) need the ``pyscf-dispersion`` package.

Drivers: energy; gradient (HF, DFT, conventional MP2); hessian (HF, DFT).

Keywords (``specification.keywords``): ``conv_tol`` (default 1e-10), ``conv_tol_grad``,
``max_cycle``, ``xc_grid`` (``grids.level``, DFT only), ``density_fit`` (bool; DF-SCF and DF-MP2,
no DF-MP2 gradient).

Effective core potentials: every real atom gets exactly the ECP its basis set defines for its
element in PySCF's basis library (``pyscf.gto.basis.load_ecp``), whatever the atomic number:
LANL2DZ from Na on, def2-* from Rb on, cc-pVXZ-PP, SBKJC, CRENBL, Stuttgart... A basis set PySCF
cannot resolve for an element (no basis functions, or an ECP the Basis Set Exchange lists that
PySCF's library lacks) is an ``InputError`` naming basis and element; :func:`check_model` says so
before anything runs. :func:`ecp_core_electrons` gives the core electrons an ECP replaces.

Ghost atoms (``molecule.real`` False) become PySCF ``ghost-<El>`` atoms: basis functions, no
nuclear charge, no electrons, no ECP. PySCF returns gradient and Hessian entries for them too (the
Pulay terms of their basis functions), so ``return_result`` always has one row per input atom,
ghosts included, in input order. PySCF is given the real atoms first and the ghosts after them
(results are permuted back to input order): see :func:`_real_first` for why.

Hessian runs also return the gradient at the same geometry (``properties.return_gradient``), as
QCEngine's own harnesses do.

External point charges (EE-MBE): when the molecule's ``extras["embedding_charges"]`` holds
``[[q, [x, y, z]], ...]`` (bohr; QCManyBody writes it with ``embedding_charges``), the SCF runs in their
field (``pyscf.qmmm.mm_charge``, bare point charges). As with Psi4's ``external_potentials``, on which
QCManyBody's EE reference values rest, the energy includes the charges' interaction with the electrons and
the nuclei, not among themselves; the gradient is the derivative with respect to the molecule's atoms with
the charges held where they are (QCManyBody's EE-MBE gradients are assembled from these; checked against its
het4 reference). The derivative with respect to the charges' positions (HF/DFT) is returned apart, in
``extras["pyscf"]["embedding_gradient"]`` (``(k, 3)`` Eh/bohr, one row per charge, in the input's order),
with ``extras["pyscf"]["embedding_nuclear_energy"]`` (the charge-nucleus energy, included in
``return_energy``). No Hessian with charges (PySCF's QM/MM has none).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from qcelemental.models.v2 import AtomicResult, Provenance
from qcelemental.util import safe_version, which_import
from qcengine.exceptions import ConvergenceError, InputError, UnknownError
from qcengine.programs.model import ProgramHarness

from .._logs import get_logger
from . import _pyscf_warm
from ._pyscf_disp import real_atoms_dispersion
from ._pyscf_model import (
    SUPPORTED_KEYWORDS,
    _basis_name,
    _check_driver,
    _classify_method,
    _element,
    _parse_keywords,
    _resolve,
    _Unresolvable,
    check_model,
    check_request,
    ecp_core_electrons,
    embedding_charges,
)
from ._pyscf_warm import _WARM, _warm_key

__all__ = ["SUPPORTED_KEYWORDS", "PySCFHarness", "check_model", "check_request", "ecp_core_electrons"]

_log = get_logger()

if TYPE_CHECKING:
    from qcelemental.models.v2 import AtomicInput
    from qcengine.config import TaskConfig

def _real_first(real: list[bool]) -> list[int]:
    """Input atom indices in the order PySCF is given them: real atoms first, then ghosts.

    Why: PySCF (2.x) solves the coupled-perturbed HF/KS equations of a Hessian for all atoms'
    displacements in one block Krylov solve (``pyscf.lib.krylov``). Its subspace is built by
    Gram-Schmidt in atom order from unnormalised vectors and it stops, or drops a vector, on their
    absolute norms (``lindep`` 1e-13), not on the true residual; so the answer depends on the atom
    order, most when small right-hand sides (ghost atoms: only basis functions move) come first.
    Measured here (water trimer fragment [3] in the basis of [2, 3], HF/STO-3G): ghost water
    first, the solve ends with a residual of 6.8e-4 and the real atoms' Hessian block is 6.8e-6
    Eh/bohr^2 off a central finite difference of analytic gradients, whatever ``conv_tol_cpscf``;
    real atoms first, residual 3e-6 and 2e-8 off, as is a ghost-first molecule solved with the real
    atoms first in ``atmlst``. The one-electron, two-electron and nuclear parts of the Hessian do
    not depend on the order (1e-12), nor do energies and gradients; all drivers use this order.
    """
    return [i for i, r in enumerate(real) if r] + [i for i, r in enumerate(real) if not r]


#: Bump whenever a change here can change a result's numbers (defaults, convergence, grids): stored results
#: of another harness version are then never reused (the result store keys by program and harness version).
HARNESS_VERSION = 2  # 2: Hessians with a tighter SCF orbital gradient and CPHF (HESSIAN_CONV_TOL_GRAD, ...)

#: SCF orbital-gradient threshold for the ``hessian`` driver unless ``conv_tol_grad`` is given. PySCF's default
#: (sqrt(conv_tol) = 1e-5 at conv_tol 1e-10) leaves analytic Hessians 3-6e-7 Eh/bohr^2 off a Richardson
#: extrapolated central difference of tightly converged analytic gradients (water HF/STO-3G, bare and with
#: ghosts), beyond QCManyBody's 1e-7 test tolerance; 1e-9 with the CPHF threshold below: 1.5e-10.
HESSIAN_CONV_TOL_GRAD = 1e-9
#: PySCF's ``conv_tol_cpscf`` for Hessians (its default 1e-8; PySCF multiplies it by the atoms solved together).
HESSIAN_CONV_TOL_CPSCF = 1e-10


def _tighten_for_hessian(mf: Any, kw: dict[str, Any]) -> None:
    """Converge the SCF and the coupled-perturbed equations tightly enough for Hessians good to 1e-8."""
    if kw["conv_tol_grad"] is None:
        mf.conv_tol_grad = min(HESSIAN_CONV_TOL_GRAD, float(mf.conv_tol) ** 0.5)
    mf.conv_tol_cpscf = HESSIAN_CONV_TOL_CPSCF


class PySCFHarness(ProgramHarness):
    """QCEngine harness for PySCF: HF, DFT and MP2 energies, gradients and (HF/DFT) Hessians.

    Resources: ``config.ncores`` sets ``pyscf.lib.num_threads`` -- process-global state, restored
    after the calculation, which is why in-process harnesses belong in worker processes (one
    fragment per process); ``config.memory`` (GiB) sets ``mol.max_memory`` (MB).
    """

    _defaults: ClassVar[dict[str, Any]] = {
        "name": "PySCF",
        "scratch": False,
        "thread_safe": False,
        "thread_parallel": True,
        "node_parallel": False,
        "managed_memory": True,
    }

    @staticmethod
    def found(raise_error: bool = False) -> bool:
        """True if pyscf is importable (``ModuleNotFoundError`` with install hint if raise_error)."""
        return which_import(
            "pyscf",
            return_bool=True,
            raise_error=raise_error,
            raise_msg="Please install via `pip install pyscf`.",
        )

    def get_version(self) -> str:
        """The version of the importable pyscf (from its package metadata: no 0.6 s import)."""
        self.found(raise_error=True)
        from importlib.metadata import PackageNotFoundError, version

        try:
            return safe_version(version("pyscf"))
        except PackageNotFoundError:  # a source checkout on sys.path
            import pyscf

            return safe_version(pyscf.__version__)

    def qcmb_harness_version(self) -> str:
        """This harness's version, part of the result store's keys (:data:`HARNESS_VERSION`)."""
        return str(HARNESS_VERSION)

    # -- building blocks --------------------------------------------------------------

    @staticmethod
    def _build_mol(input_data: AtomicInput, config: TaskConfig) -> tuple[Any, list[int]]:
        """A built ``pyscf.gto.Mole`` in bohr, and ``order`` (PySCF atom k is input atom ``order[k]``).

        Real atoms first, then ghosts (``ghost-El``: basis functions only); each real atom with
        the ECP its basis set defines for its element; charge/spin from the molecule.
        """
        from pyscf import gto

        qmol = input_data.molecule
        try:
            basis = _basis_name(input_data.specification.model.basis)
        except _Unresolvable as err:
            raise InputError(str(err)) from None

        charge = float(qmol.molecular_charge)
        mult = float(qmol.molecular_multiplicity)
        if abs(charge - round(charge)) > 1e-6 or abs(mult - round(mult)) > 1e-6 or round(mult) < 1:
            raise InputError(
                f"PySCF harness: needs an integer charge and multiplicity >= 1, got {charge} and {mult}."
            )

        geometry = np.asarray(qmol.geometry, dtype=float).reshape(-1, 3)
        real = [bool(r) for r in qmol.real]
        order = _real_first(real)
        atoms = []
        ecp: dict[str, str] = {}
        core: list[int] = []  # core electrons each PySCF atom's ECP must replace
        for i in order:
            symbol = _element(qmol.symbols[i])
            try:
                ncore = _resolve(symbol, basis)  # ghosts too: they carry the basis functions
            except _Unresolvable as err:
                raise InputError(f"PySCF harness: {err}") from None
            if not real[i]:
                ncore = 0  # no nucleus, no electrons, no ECP
            atoms.append((symbol if real[i] else f"ghost-{symbol}", tuple(float(c) for c in geometry[i])))
            if ncore:
                ecp[symbol] = basis  # PySCF gives it to real atoms of that element only, never to ghosts
            core.append(ncore)

        mol = gto.Mole()
        mol.atom = atoms
        mol.unit = "Bohr"
        mol.basis = basis
        mol.ecp = ecp
        mol.charge = round(charge)
        mol.spin = round(mult) - 1
        mol.verbose = 0
        if config.memory:
            mol.max_memory = float(config.memory) * 1024  # GiB -> MB
        try:
            mol.build(dump_input=False, parse_arg=False)
        except (RuntimeError, KeyError, ValueError) as err:  # BasisNotFoundError is a RuntimeError
            msg = f"PySCF harness: cannot build the molecule with basis {basis!r}: {err}"
            raise InputError(msg) from None
        built = [int(mol.atom_nelec_core(k)) for k in range(mol.natm)]
        if built != core:  # PySCF's own assignment must be the one asked for: never a silent all-electron atom
            raise UnknownError(f"PySCF harness: ECP core electrons per atom {built} differ from the basis set's "
                               f"{core}.")
        return mol, order

    @staticmethod
    def _build_scf(mol: Any, kind: str, xc: str | None, kw: dict[str, Any], external: Any = None) -> Any:
        """An unconverged SCF object: (R/U)HF or (R/U)KS from the multiplicity, options applied.

        ``external``: ``(coords (k, 3) bohr, charges (k,))`` point charges the SCF runs in, or ``None``.
        """
        from pyscf import dft, qmmm, scf

        restricted = mol.spin == 0
        if kind == "dft":
            mf = dft.RKS(mol) if restricted else dft.UKS(mol)
            mf.xc = xc
            if kw["xc_grid"] is not None:
                mf.grids.level = kw["xc_grid"]
        else:
            mf = scf.RHF(mol) if restricted else scf.UHF(mol)
        mf.conv_tol = kw["conv_tol"]
        if kw["conv_tol_grad"] is not None:
            mf.conv_tol_grad = kw["conv_tol_grad"]
        if kw["max_cycle"] is not None:
            mf.max_cycle = kw["max_cycle"]
        if kw["density_fit"]:
            mf = mf.density_fit()
        if external is not None:
            mf = qmmm.mm_charge(mf, external[0], external[1], unit="Bohr")
        mf.verbose = 0
        return mf

    # -- compute ----------------------------------------------------------------------

    def compute(self, input_data: AtomicInput, config: TaskConfig) -> AtomicResult:
        """Run one PySCF calculation and return a QCSchema v2 ``AtomicResult``."""
        self.found(raise_error=True)
        import pyscf
        from pyscf import lib

        spec = input_data.specification
        driver = getattr(spec.driver, "value", spec.driver)
        method = spec.model.method
        kw = _parse_keywords(spec.keywords)
        kind, xc = _classify_method(method)
        external = embedding_charges(input_data.molecule.extras)

        _check_driver(driver, kind, kw, external is not None)

        previous_threads = lib.num_threads()
        if config.ncores:
            lib.num_threads(int(config.ncores))
        # numpy's own BLAS ignores lib.num_threads: without a limit a "1-core" fragment runs
        # BLAS on every core, and concurrent fragments oversubscribe the machine.
        limits = _blas_limits(int(config.ncores)) if config.ncores else contextlib.nullcontext()
        try:
            with limits:
                mol, order = self._build_mol(input_data, config)
                # QCManyBody names each fragment after its real and ghost fragments: part of its identity.
                kw["_name"] = input_data.molecule.name
                props, return_result, extras = self._run(mol, kind, xc, kw, driver, method, order, external)
        finally:
            lib.num_threads(previous_threads)

        natom = len(input_data.molecule.symbols)
        props["calcinfo_natom"] = natom
        stdout = self._summary(input_data, mol, props, driver, kw, extras)

        ret_data: dict[str, Any] = {
            "input_data": input_data,
            "molecule": input_data.molecule,
            "properties": props,
            "return_result": return_result,
            "stdout": stdout,
            "provenance": Provenance(creator="PySCF", version=pyscf.__version__, routine="pyscf"),
            "extras": {"pyscf": extras},
            "success": True,
        }
        return AtomicResult(**ret_data)

    def _run(
        self, mol: Any, kind: str, xc: str | None, kw: dict[str, Any], driver: str, method: str, order: list[int],
        external: Any = None,
    ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        """Do the calculation; return (properties, return_result, extras), per-atom arrays in input order.

        ``order``: PySCF atom k is input atom ``order[k]`` (see :meth:`_build_mol`); ``external``: point charges
        ``(coords, charges)`` or ``None`` (see :func:`embedding_charges`).
        """
        from pyscf import lib, mp

        mf = real_atoms_dispersion(self._build_scf(mol, kind, xc, kw, external))  # ghosts have no dispersion
        if driver == "hessian":
            _tighten_for_hessian(mf, kw)
        warm_key = _warm_key(mol, kind, xc, kw) if kw["warm_start"] else None
        dm0 = _WARM.guess(warm_key, mol) if warm_key is not None else None
        fallback: dict[str, Any] | None = None
        if dm0 is not None and _pyscf_warm.WARM_START_MAX_CYCLE is not None:
            mf.max_cycle = min(mf.max_cycle, _pyscf_warm.WARM_START_MAX_CYCLE)
        mf.kernel(dm0=dm0)  # PySCF errors propagate: QCEngine reports them as unknown_error with the traceback
        if dm0 is not None and not mf.converged:
            # A guess from other geometries can stall where the cold guess converges (a different state's
            # density, a DIIS trap): the fragment must not fail for an optimisation. Start again from PySCF's
            # own guess, with the full max_cycle, and say so.
            fallback = {"warm_cycles": int(getattr(mf, "cycles", 0) or 0), "warm_max_cycle": int(mf.max_cycle),
                        "warm_energy": float(mf.e_tot)}
            _log.info("warm-started SCF did not converge; cold guess used", molecule=kw.get("_name"),
                      **fallback)
            mf = self._build_scf(mol, kind, xc, kw)
            mf.kernel()
        cycles = getattr(mf, "cycles", None)
        if not mf.converged:
            raise ConvergenceError(
                f"PySCF {type(mf).__name__} for {method!r} did not converge in {mf.max_cycle} cycles "
                f"(conv_tol={mf.conv_tol}); try a larger max_cycle or a looser conv_tol."
            )

        nalpha, nbeta = mol.nelec
        props: dict[str, Any] = {
            "nuclear_repulsion_energy": float(mol.energy_nuc()),
            "calcinfo_nbasis": int(mol.nao_nr()),
            "calcinfo_nmo": int(np.asarray(mf.mo_energy).shape[-1]),
            "calcinfo_nalpha": int(nalpha),
            "calcinfo_nbeta": int(nbeta),
            "scf_total_energy": float(mf.e_tot),
            "scf_dipole_moment": np.asarray(mf.dip_moment(unit="AU", verbose=0), dtype=float),
        }
        if cycles is not None:
            props["scf_iterations"] = int(cycles)
        summary = getattr(mf, "scf_summary", {})
        if "e1" in summary:
            props["scf_one_electron_energy"] = float(summary["e1"])
        if kind == "hf" and "e2" in summary:  # for DFT PySCF lumps exact exchange into exc: not split here
            props["scf_two_electron_energy"] = float(summary["e2"])
        extras: dict[str, Any] = {"scf_class": type(mf).__name__, "xc": xc, "threads": int(lib.num_threads())}
        if external is not None:
            extras["embedding_charges"] = len(external[1])
            # mf.energy_nuc() is QM/MM's: nuclei-nuclei plus nuclei-charges (in E); the QM part alone is above.
            extras["embedding_nuclear_energy"] = float(mf.energy_nuc() - mol.energy_nuc())
        if warm_key is not None:
            _WARM.keep(warm_key, mol, (mf.mo_coeff, mf.mo_occ))
            extras["warm_start"] = dm0 is not None and fallback is None
            if fallback is not None:
                extras["warm_start_fallback"] = fallback

        solver = mf
        props["return_energy"] = float(mf.e_tot)
        if kind == "mp2":
            pt = mp.MP2(mf)
            pt.verbose = 0
            pt.kernel()
            solver = pt
            extras["mp2_class"] = type(pt).__name__
            props["mp2_correlation_energy"] = float(pt.e_corr)
            props["mp2_doubles_energy"] = float(pt.e_corr)
            props["mp2_singles_energy"] = 0.0
            props["mp2_total_energy"] = float(pt.e_tot)
            for attr, field in (
                ("e_corr_ss", "mp2_same_spin_correlation_energy"),
                ("e_corr_os", "mp2_opposite_spin_correlation_energy"),
            ):
                value = getattr(pt, attr, None)
                if value is not None:
                    props[field] = float(value)
            props["return_energy"] = props["mp2_total_energy"]

        natom = mol.natm
        if driver == "energy":
            return_result: Any = props["return_energy"]
        elif driver == "gradient":
            grad = _gradient_in_input_order(solver, natom, order)
            props["return_gradient"] = grad
            if kind != "mp2":
                props["scf_total_gradient"] = grad
                if external is not None:
                    extras["embedding_gradient"] = _charge_gradient(mf).tolist()
            return_result = grad
        else:  # hessian, HF/DFT only; the gradient at the same geometry comes with it (QCEngine's harnesses do)
            grad = _gradient_in_input_order(mf, natom, order)
            props["return_gradient"] = grad
            props["scf_total_gradient"] = grad
            hess4 = np.asarray(mf.Hessian().kernel(), dtype=float)  # (natom, natom, 3, 3), PySCF's atom order
            back = np.empty_like(hess4)
            back[np.ix_(order, order)] = hess4
            hess = back.transpose(0, 2, 1, 3).reshape(3 * natom, 3 * natom)
            props["return_hessian"] = hess
            props["scf_total_hessian"] = hess
            return_result = hess
        return props, return_result, extras

    @staticmethod
    def _summary(
        input_data: AtomicInput,
        mol: Any,
        props: dict[str, Any],
        driver: str,
        kw: dict[str, Any],
        extras: dict[str, Any],
    ) -> str:
        """A short human-readable account of the calculation."""
        model = input_data.specification.model
        natom = mol.natm
        nghost = natom - int(sum(bool(r) for r in input_data.molecule.real))
        lines = [
            f"PySCF {model.method}/{model.basis} {driver} ({extras['scf_class']}"
            + (", density fitting" if kw["density_fit"] else "")
            + ")",
            f"atoms {natom} (ghost {nghost}), charge {mol.charge}, multiplicity {mol.spin + 1}, "
            f"basis functions {props['calcinfo_nbasis']}, threads {extras['threads']}, "
            f"max_memory {mol.max_memory:.0f} MB",
            *([f"external point charges {extras['embedding_charges']} (charge-nucleus energy "
               f"{extras['embedding_nuclear_energy']:.10f} Eh, included)"] if "embedding_charges" in extras else []),
            f"SCF converged in {props.get('scf_iterations', '?')} iterations: E(SCF) = "
            f"{props['scf_total_energy']:.10f} Eh",
        ]
        if "mp2_total_energy" in props:
            lines.append(
                f"MP2 correlation = {props['mp2_correlation_energy']:.10f} Eh, "
                f"E(MP2) = {props['mp2_total_energy']:.10f} Eh"
            )
        lines.append(f"return_energy = {props['return_energy']:.10f} Eh")
        if "return_gradient" in props:
            rms = math.sqrt(float(np.mean(np.square(props["return_gradient"]))))
            lines.append(f"gradient rms = {rms:.3e} Eh/bohr")
        return "\n".join(lines) + "\n"




def _gradient_in_input_order(solver: Any, natom: int, order: list[int]) -> np.ndarray:
    """The analytic gradient (natom x 3, Eh/bohr) of an SCF/MP2 object, rows in input atom order."""
    grad = np.asarray(solver.nuc_grad_method().kernel(), dtype=float).reshape(natom, 3)
    back = np.empty_like(grad)
    back[order] = grad
    return back


def _charge_gradient(mf: Any) -> np.ndarray:
    """Derivative of a QM/MM SCF energy with respect to its point charges' positions, ``(k, 3)`` Eh/bohr.

    Electrons (Hellmann-Feynman: the SCF energy is stationary in the orbitals and the basis does not move
    with the charges) plus nuclei; PySCF's ``grad_hcore_mm`` and ``grad_nuc_mm``.
    """
    grad = mf.nuc_grad_method()
    dm = np.asarray(mf.make_rdm1())
    if dm.ndim == 3:  # UHF/UKS: alpha + beta
        dm = dm[0] + dm[1]
    return np.asarray(grad.grad_hcore_mm(dm) + grad.grad_nuc_mm(), dtype=float).reshape(-1, 3)


def _blas_limits(ncores: int) -> Any:
    """Limit every BLAS/OpenMP pool in the process to ``ncores`` (threadpoolctl), if available."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an optional speed-up, never a requirement
        return contextlib.nullcontext()
    return threadpool_limits(limits=ncores)
