"""Input checks that need more than the model: programs present, electrons that fit, embedding charges.

:func:`check_input` runs them all before anything is computed; every problem is an
:class:`~qcmb_async.errors.InputError` that says what is wrong and what to do.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from qcmanybody.models.v2 import ManyBodyInput

from ..errors import InputError
from ..programs import PROGRAMS, traits


def install_hint(program: str) -> str:
    """How to install ``program`` (from :mod:`qcmb_async.programs`); else where to look."""
    return traits(program).install_hint or (f"see QCEngine's documentation of the {program!r} harness for what it "
                                            "needs on PATH or in Python")


def check_programs(programs: set[str], *, local: bool = True) -> None:
    """Every program must be known to QCEngine and (``local``) found on this machine.

    With ``local=False`` (fragments run on remote workers) availability is checked where
    each fragment runs instead.
    """
    import qcengine
    from qcengine.exceptions import InputError as QCEngineInputError

    from ..harnesses import register_harnesses

    register_harnesses()
    for name in sorted(programs):
        try:
            harness = qcengine.get_program(name, check=False)
        except (QCEngineInputError, KeyError):
            raise InputError(
                f"unknown program {name!r}: QCEngine has no harness of that name. "
                f"Programs available here: {', '.join(sorted(qcengine.list_available_programs())) or 'none'}"
            ) from None
        if local and not harness.found():
            raise InputError(
                f"program {name!r} is not available on this machine: {install_hint(name)}. Programs available "
                f"here: {', '.join(sorted(qcengine.list_available_programs())) or 'none'}"
            )


def used_specs(inp: ManyBodyInput) -> dict[str, Any]:
    """The specifications some n-body level runs: ``levels`` may leave others unused (QCManyBody ignores them)."""
    specs = dict(inp.specification.specification)
    levels = inp.specification.keywords.levels
    if not levels:
        return specs
    used = {k: v for k, v in specs.items() if k in {str(name) for name in levels.values()}}
    return used or specs  # levels naming no spec: QCManyBody says what is wrong


def embedding_programs() -> list[str]:
    """Programs that take QCManyBody's ``embedding_charges`` (``embedding_charges`` in :mod:`qcmb_async.programs`).

    QCManyBody's own computer hands them only to Psi4 (as ``function_kwargs.external_potentials``,
    psi4 >= 1.6); ``Plan.materialise`` does the same for Psi4 and leaves them in the fragment molecule's
    ``extras`` for our PySCF harness (PySCF QM/MM point charges).
    """
    return sorted(name for name, t in PROGRAMS.items() if t.embedding_charges)


#: QCManyBody's opt-in for EE-MBE (``ManyBodyCore`` raises without it).
EMBEDDING_ENV = "QCMANYBODY_EMBEDDING_CHARGES"


def check_embedding(inp: ManyBodyInput) -> None:
    """:class:`InputError` when ``embedding_charges`` would go to a program that cannot take them, or to a
    Hessian PySCF cannot compute with them.

    When the input gives ``embedding_charges`` and every program takes them, sets QCManyBody's opt-in
    ``QCMANYBODY_EMBEDDING_CHARGES=1`` in this process (once, with a warning in the log): giving the charges
    is the user's request for EE-MBE. Inputs without ``embedding_charges`` never touch the environment.
    """
    if not inp.specification.keywords.embedding_charges:
        return
    bad = sorted({s.program for s in used_specs(inp).values() if not traits(s.program).embedding_charges})
    if bad:
        raise InputError(
            f"embedding_charges cannot be used with program(s) {', '.join(bad)}: point charges can be passed only to "
            f"{', '.join(embedding_programs())} (psi4 as external_potentials, psi4 >= 1.6; pyscf as QM/MM point "
            "charges). Use one of those programs or remove embedding_charges")
    keywords = inp.specification.keywords
    if keywords.return_total_data is not True:
        raise InputError("embedding_charges need return_total_data: true: with embedding the fragments are not the "
                         "isolated monomers, so QCManyBody gives total energies only, no interaction energies")
    # QCManyBody pairs charges with atoms by zip(): a short list would silently leave atoms without a charge.
    for ifr, atoms in enumerate(inp.molecule.fragments or [], start=1):
        given = keywords.embedding_charges.get(ifr)
        if given is not None and len(given) != len(atoms):
            raise InputError(f"embedding_charges for fragment {ifr} has {len(given)} charge(s), the fragment has "
                             f"{len(atoms)} atom(s): give one charge per atom, in the fragment's atom order")
    driver = str(getattr(inp.specification.driver, "value", inp.specification.driver))
    if driver == "hessian" and any(s.program == "pyscf" for s in used_specs(inp).values()):
        from ..harnesses._pyscf_model import EMBEDDED_HESSIAN

        raise InputError(EMBEDDED_HESSIAN)
    if not os.environ.get(EMBEDDING_ENV):
        from .._logs import get_logger

        # Process-wide and never unset (unsetting could race another thread's QCManyBody computer); the
        # variable only unlocks inputs that give embedding_charges, so nothing else changes.
        os.environ[EMBEDDING_ENV] = "1"
        get_logger().warning(f"embedding_charges given: set {EMBEDDING_ENV}=1 in this process (QCManyBody's opt-in "
                             "for EE-MBE, which it marks as still in testing)")


#: Noble-gas cores (electrons) and, after a filled d shell, the d10 a valence-only method leaves out.
_NOBLE = (2, 10, 18, 36, 54)
_SEMIEMPIRICAL_METHODS = ("pm3", "pm6", "pm7", "am1", "mndo", "rm1", "pddg")
_ECP_NAMES = ("lanl", "def2-", "-pp", "sbkjc", "crenbl", "stuttgart", "ecp", "sdd")


def _valence(z: int) -> tuple[int, int] | None:
    """(valence electrons, valence orbitals) of a neutral atom in a semi-empirical method; None beyond Xe.

    Orbitals are counted generously (s, p and d from Na on) so that no valid input is refused.
    """
    if z > 54:
        return None
    if z <= 2:
        return z, 1
    core = max(n for n in _NOBLE if n < z)
    if 31 <= z <= 36 or 49 <= z <= 54:
        core += 10  # filled (n-1)d shell
    return z - core, 4 if z <= 10 else 9


@functools.lru_cache(maxsize=512)
def basis_functions(symbol: str, basis: str) -> tuple[int, bool] | None:
    """(Cartesian basis functions, carries an ECP) of one atom of ``symbol`` in ``basis``; None when unknown.

    Read from PySCF's basis library when PySCF is installed (Cartesian counts: never fewer than
    the spherical ones a program may use). Without PySCF, the cost model's table for H-Ar with
    a generous allowance, and ECP-looking names count as carrying an ECP beyond neon.
    """
    from qcelemental import periodictable

    z = int(periodictable.to_Z(symbol))
    try:
        from pyscf import gto
    except ImportError:
        from .cost import _BASIS_FUNCTIONS, _row

        table = _BASIS_FUNCTIONS.get(basis.lower().replace(" ", ""))
        if table is None or z > 18:
            return None
        ecp = z > 10 and any(tag in basis.lower() for tag in _ECP_NAMES)
        return int(table[_row(z)] * 1.5), ecp
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mol = gto.Mole()
            mol.atom = f"{symbol} 0 0 0"
            mol.basis = basis
            mol.cart = True
            mol.spin = z % 2
            mol.build(dump_input=False, parse_arg=False, verbose=0)
            ecp = bool(gto.basis.load_ecp(basis, symbol))
    except Exception:  # basis PySCF does not know (or not for this element): nothing to check against
        return None
    return int(mol.nao_cart()), ecp


def _ecp_core() -> Callable[[str, str], int] | None:
    try:
        from ..harnesses.pyscf import ecp_core_electrons  # type: ignore[attr-defined]
    except ImportError:
        return None
    return ecp_core_electrons  # type: ignore[no-any-return]


def fragment_electrons(mol: Any) -> list[tuple[list[str], float, int]]:
    """``(symbols of the real atoms, charge, multiplicity)`` of each fragment of a validated molecule."""
    symbols = list(mol.symbols)
    real = list(mol.real) if mol.real is not None else [True] * len(symbols)
    charges = list(mol.fragment_charges)
    mults = list(mol.fragment_multiplicities)
    return [([symbols[i] for i in frag if real[i]], float(charges[k]), int(mults[k]))
            for k, frag in enumerate(mol.fragments)]


def check_fragment_electrons(inp: ManyBodyInput) -> None:
    """Refuse a fragment whose electrons are negative, fractional, of the wrong parity, or cannot fit.

    Every fragment QCManyBody builds is a union of real fragments (charge and electrons add up,
    unpaired electrons too, as it combines fragments high spin) plus ghost atoms, which only add
    basis functions. So a union fits when each of its fragments fits: checking each fragment once
    is enough, O(atoms) however many fragments. "Fits": at most twice the basis functions
    (valence orbitals for semi-empirical methods), counted per program specification that runs.
    Bases PySCF cannot count, and atoms with ECPs (unless the core size is known), are not checked.
    """
    from qcelemental import periodictable

    frags = fragment_electrons(inp.molecule)
    specs = used_specs(inp)
    ecp_core = _ecp_core()
    for k, (symbols, charge, mult) in enumerate(frags, start=1):
        formula = _formula(symbols)
        zsum = sum(int(periodictable.to_Z(s)) for s in symbols)
        electrons = zsum - charge
        what = f"fragment {k} ({formula}, charge {charge:g}, multiplicity {mult})"
        if not float(electrons).is_integer():
            raise InputError(f"{what} would have {electrons:g} electrons, not a whole number: give whole fragment "
                             "charges")
        if electrons < 0:
            raise InputError(f"{what} would have {electrons:g} electrons: its charge is more than its nuclei's "
                             f"{zsum}; correct fragment_charges")
        unpaired = mult - 1
        if unpaired > electrons or (int(electrons) - unpaired) % 2:
            raise InputError(f"{what}: {int(electrons)} electrons cannot have multiplicity {mult} (an "
                             f"{'even' if int(electrons) % 2 == 0 else 'odd'} electron count needs an "
                             f"{'odd' if int(electrons) % 2 == 0 else 'even'} multiplicity of at most "
                             f"{int(electrons) + 1}); correct fragment_multiplicities or fragment_charges")
        for name, spec in specs.items():
            room = _room(symbols, spec, ecp_core)
            if room is None:
                continue
            cap, count, kind = room
            count_e = count - charge
            alpha = (count_e + unpaired) / 2
            if count_e < 0 or count_e > 2 * cap or alpha > cap:
                electrons_word = f"{kind} electrons" if kind else "electrons"
                detail = (f"{count_e:g} {electrons_word}" if count_e < 0 else
                          f"{count_e:g} {electrons_word} ({alpha:g} of one spin) but only {cap} "
                          f"{'valence orbitals' if kind == 'valence' else 'basis functions'} (room for "
                          f"{2 * cap})")
                raise InputError(f"{what} has {detail} with specification {name!r} ({spec.program} "
                                 f"{spec.model.method}/{spec.model.basis or '-'}): the charge cannot be right; "
                                 f"correct fragment_charges{'' if kind == 'valence' else ' (or use a larger basis)'}")


def _formula(symbols: list[str]) -> str:
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s.capitalize()] = counts.get(s.capitalize(), 0) + 1
    return "".join(f"{s}{n if n > 1 else ''}" for s, n in counts.items()) or "no real atoms"


def _room(symbols: list[str], spec: Any, ecp_core: Callable[[str, str], int] | None) -> tuple[int, float, str] | None:
    """(orbitals, electrons of the neutral atoms as the method counts them, kind) or None when unknown."""
    from qcelemental import periodictable

    basis = spec.model.basis
    method = str(spec.model.method).lower()
    semi = spec.program.lower() == "mopac" or (not basis and method.startswith(_SEMIEMPIRICAL_METHODS))
    tight_binding = not basis and spec.program.lower() == "tblite"
    if semi or tight_binding:
        cap = count = 0
        for s in symbols:
            z = int(periodictable.to_Z(s))
            val = _valence(z)
            if val is None:
                return None
            count += val[0]
            # GFN-xTB (tblite 0.8) has up to 2 orbitals on H (4 on He) and 5 on C-F (IPEA1): count 4 and 9.
            cap += (4 if z <= 2 else 9) if tight_binding else val[1]
        return cap, float(count), "valence"
    if not isinstance(basis, str) or not basis:
        return None
    cap = count = 0
    for s in symbols:
        nbf = basis_functions(s.capitalize(), basis)
        if nbf is None:
            return None
        count += int(periodictable.to_Z(s))
        if nbf[1]:
            if ecp_core is None:
                return None  # core size unknown: better no check than a wrong refusal
            try:
                count -= int(ecp_core(s.capitalize(), basis))
            except Exception:
                return None
        cap += nbf[0]
    return cap, float(count), ""


def check_input(inp: ManyBodyInput, *, local: bool = True) -> None:
    """Structural checks QCManyBody would only fail on later (or not at all)."""
    nfrag = len(inp.molecule.fragments) if inp.molecule.fragments is not None else 0
    if nfrag < 2:
        raise InputError(
            f"the molecule has {nfrag} fragment(s); a many-body expansion needs at least two. "
            "Separate fragments with '--' lines in the geometry string or set 'fragments'."
        )
    max_nbody = inp.specification.keywords.max_nbody
    if max_nbody is not None and max_nbody < 1:
        raise InputError(f"max_nbody={max_nbody}: give a whole number from 1 to the number of fragments ({nfrag})")
    real = inp.molecule.real
    if real is not None and not all(real):
        ghosts = [i + 1 for i, r in enumerate(real) if not r]
        shown = f"{ghosts[:10]}{' ...' if len(ghosts) > 10 else ''}"
        raise InputError(f"the input molecule has ghost atoms (atom(s) {shown}, "
                         "real=false / Gh(X) / @X): QCManyBody would compute them as real atoms in every fragment. "
                         "The expansion places ghosts itself (bsse_type cp/vmfc): make every input atom real")
    mults = [*(inp.molecule.fragment_multiplicities or []), inp.molecule.molecular_multiplicity]
    if any(m is not None and not float(m).is_integer() for m in mults):
        raise InputError(f"multiplicities must be whole numbers (2S+1), got fragment_multiplicities="
                         f"{list(inp.molecule.fragment_multiplicities or [])}, molecular_multiplicity="
                         f"{inp.molecule.molecular_multiplicity}: correct them")
    if max_nbody is not None and max_nbody > nfrag:
        raise InputError(
            f"max_nbody={max_nbody} is larger than the number of fragments ({nfrag}): "
            f"use max_nbody <= {nfrag}"
        )
    # Only specs some level runs: QCManyBody's own test inputs carry unused specs for other programs.
    specs = used_specs(inp)
    check_programs({spec.program for spec in specs.values()}, local=local)
    for spec in specs.values():
        if spec.program == "pyscf":  # keywords, drivers, basis sets / ECPs PySCF lacks, unknown methods: before any run
            from ..harnesses.pyscf import check_model, check_request

            check_request(spec.driver, spec.model.method, spec.keywords,
                          embedded=bool(inp.specification.keywords.embedding_charges))
            check_model(inp.molecule.symbols, spec.model)
        elif spec.program == "tblite":  # method, basis, driver, keyword values, solvent names
            from ..harnesses.tblite import check_request as check_tblite

            check_tblite(spec.driver, spec.model, spec.keywords)
    for spec in specs.values():
        known = traits(spec.program)
        method = str(spec.model.method).lower()
        if known.methods is not None and method not in known.methods:
            raise InputError(f"{spec.program} has no method {spec.model.method!r}: its QCEngine harness accepts "
                             f"{', '.join(sorted(known.methods))}")
        unknown = sorted(k for k in spec.keywords if str(k).lower() not in (known.keywords or set()))
        if known.keywords is not None and unknown:
            hint = " (warm_start is a keyword of program pyscf only)" if "warm_start" in unknown else ""
            raise InputError(f"{spec.program} does not take keyword(s) {', '.join(map(repr, unknown))}: its QCEngine "
                             f"harness accepts {', '.join(sorted(known.keywords)) or 'none'}{hint}")
    for spec in specs.values():
        if str(getattr(spec.driver, "value", spec.driver)) == "hessian" and not traits(spec.program).analytic_hessian:
            raise InputError(f"{spec.program} has no analytic Hessians (its harness computes energies and gradients): "
                             "take finite differences of MBE gradients instead (qcmb_async.frequencies(..., "
                             "method='finite-difference'), qcmb-async frequencies --hessian finite-difference)")
    check_embedding(inp)
    check_fragment_electrons(inp)
    check_ghost_atoms(inp, specs)


def check_ghost_atoms(inp: ManyBodyInput, specs: dict[str, Any]) -> None:
    """Refuse cp/vmfc when a level runs a program whose harness cannot place ghost atoms.

    Such a harness (``ProgramTraits.ghost_atoms`` False, decided from its code in :mod:`qcmb_async.programs`)
    computes every ghost as a real atom: the "counterpoise" fragments would be other molecules and the
    result meaningless (MOPAC water trimer "interaction energy" +534 kcal/mol, NoCP -4.9). Checked over the
    specifications some level runs, so a multilevel input with one such level is refused too.
    """
    bsse = {str(getattr(b, "value", b)) for b in (inp.specification.keywords.bsse_type or [])}
    wanted = sorted(bsse & {"cp", "vmfc"})
    names = sorted({s.program for s in specs.values() if not traits(s.program).ghost_atoms})
    if wanted and names:
        raise InputError(
            f"bsse_type {'/'.join(wanted)} needs ghost atoms, and {', '.join(names)} cannot place them: "
            f"{'its' if len(names) == 1 else 'their'} QCEngine harness does not honour ghost atoms (real=False): it "
            "computes them as real atoms (or fails), so those fragments would not be a BSSE correction. "
            "NoCP is what such a program can do: "
            "use bsse_type ['nocp'] (CLI: --bsse nocp, its default for such a program), or a program that places "
            "ghost atoms (pyscf, psi4, nwchem) for cp/vmfc")
