"""What qcmb_async knows about each QC program, in one registry (capabilities as data).

The scheduler, cost model, executors and input checks read a program's :class:`ProgramTraits`
here and nowhere else; adding a program is one entry in :data:`PROGRAMS` (plus its harness
when QCEngine has none, registered in :mod:`qcmb_async.harnesses`). A program without an entry
gets traits seeded from its QCEngine harness's own flags (``thread_parallel``), see :func:`traits`.
docs/programs.md ("Adding a program") walks through it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

__all__ = ["PROGRAMS", "ProgramTraits", "register_traits", "traits"]


@dataclass(frozen=True)
class ProgramTraits:
    """One program's capabilities, as far as scheduling and input checks need them."""

    name: str
    """QCEngine's program name (``qcengine.compute(..., program=name)``)."""
    in_process: bool = False
    """Runs inside the Python process (GIL-bound, process-global state): ``executor="auto"`` uses
    worker processes for it, never threads."""
    parallel_fraction: float = 0.0
    """Share of its run time its own threads parallelise when given ``ncores`` in the task config
    (Amdahl's law, 0..1); 0 = one core is all it uses. With ``mpi=True`` it is the share its MPI
    ranks parallelise (a prior: the cost model refits it from fragments run on different core counts)."""
    mpi: bool = False
    """Takes cores only as MPI ranks (QCEngine's ``use_mpiexec``/``mpiexec_command``), never as threads:
    a fragment given k cores is started under ``mpiexec`` with k ranks (``_qcengine/mpi.py``)."""
    semi_empirical: bool = False
    """Cost counts valence orbitals, not basis functions; cost exponent 2.5."""
    force_field: bool = False
    """Cost grows linearly with size."""
    ghost_atoms: bool = True
    """Its QCEngine harness honours ghost atoms (``real=False``); ``False``: CP/VMFC are meaningless."""
    analytic_hessian: bool = True
    """Its harness computes the ``hessian`` driver; ``False``: refused before anything runs (take finite
    differences of gradients: :func:`qcmb_async.frequencies` with ``method="finite-difference"``)."""
    embedding_charges: bool = False
    """Its QCEngine harness passes ``embedding_charges`` point charges to the program."""
    methods: frozenset[str] | None = None
    """Methods its harness accepts (lower case); ``None``: not known here, the program judges at run time."""
    keywords: frozenset[str] | None = None
    """Keywords its harness accepts (lower case); ``None``: not known here, the program judges at run time."""
    install_hint: str = ""
    """How to install it, shown when it is missing."""


#: The registry. Values measured or read from the harnesses shipped with QCEngine 0.52 and ours.
PROGRAMS: dict[str, ProgramTraits] = {t.name: t for t in (
    # embedding_charges: our harness takes QCManyBody's charges as PySCF QM/MM point charges.
    ProgramTraits("pyscf", in_process=True, parallel_fraction=0.85, embedding_charges=True,
                  install_hint="pip install pyscf (or pip install 'qcmb_async[pyscf]'; its harness ships with "
                               "qcmb_async)"),
    # QCManyBody hands embedding_charges only to Psi4 (function_kwargs.external_potentials, psi4 >= 1.6).
    ProgramTraits("psi4", parallel_fraction=0.85, embedding_charges=True,
                  install_hint="apt-get install psi4 (Debian/Ubuntu, psi4 1.3.2) or conda install -c conda-forge psi4"),
    # MPI ranks; 0.8: a prior for NWChem's SCF/gradients, refitted per group from measured runs.
    ProgramTraits("nwchem", parallel_fraction=0.8, mpi=True,
                  install_hint="apt-get install nwchem (Debian/Ubuntu) or conda install -c conda-forge nwchem"),
    # methods and keywords: what QCEngine 0.52's MOPAC harness (build_input) accepts; anything else fails there.
    ProgramTraits("mopac", parallel_fraction=0.6, semi_empirical=True, ghost_atoms=False, analytic_hessian=False,
                  methods=frozenset({"mndo", "am1", "pm3", "rm1", "mndod", "pm6", "pm6-d3", "pm6-dh+", "pm6-dh2",
                                     "pm6-dh2x", "pm6-d3h4", "pm6-3dh4x", "pm7", "pm7-ts"}),
                  keywords=frozenset({"iter", "pulay"}),
                  install_hint="apt-get install mopac (Debian/Ubuntu) or conda install -c conda-forge mopac"),
    ProgramTraits("cfour", parallel_fraction=0.8,
                  install_hint="CFOUR is not in package managers: obtain it from https://cfour.de under its licence "
                               "and put xcfour on PATH"),
    ProgramTraits("qchem", install_hint="Q-Chem is commercial software: obtain a licensed copy from "
                                        "https://www.q-chem.com and put qchem on PATH"),
    ProgramTraits("gamess", install_hint="GAMESS is not in package managers: obtain it from its authors "
                                         "(https://www.msg.chem.iastate.edu) under its licence and put rungms on PATH"),
    ProgramTraits("orca", install_hint="ORCA is not in package managers: download it from "
                                       "https://orcaforum.kofo.mpg.de (free for academic use) and put orca on PATH"),
    ProgramTraits("molpro", install_hint="Molpro is commercial software: obtain a licensed copy from "
                                         "https://www.molpro.net"),
    ProgramTraits("turbomole", install_hint="TURBOMOLE is commercial software: obtain a licensed copy from its vendor"),
    ProgramTraits("terachem", install_hint="TeraChem is commercial software: obtain a licensed copy from its vendor"),
    ProgramTraits("xtb", in_process=True, parallel_fraction=0.6, semi_empirical=True,
                  install_hint="conda install -c conda-forge xtb-python"),
    ProgramTraits("rdkit", in_process=True, force_field=True, install_hint="pip install rdkit"),
    ProgramTraits("openmm", in_process=True, force_field=True, install_hint="conda install -c conda-forge openmm"),
    ProgramTraits("torchani", in_process=True, install_hint="pip install torchani"),
    ProgramTraits("mace", in_process=True, install_hint="conda install -c conda-forge pymace (QCEngine's hint)"),
    ProgramTraits("aimnet2", in_process=True,
                  install_hint="pip install git+https://github.com/jthorton/AIMNet2.git@main (QCEngine's hint)"),
)}

_lock = threading.Lock()
_seeded: dict[str, ProgramTraits] = {}


def register_traits(new: ProgramTraits) -> None:
    """Add or replace a program's traits (for a harness registered with QCEngine at run time)."""
    with _lock:
        PROGRAMS[new.name] = new
        _seeded.pop(new.name, None)


def traits(name: str) -> ProgramTraits:
    """The traits of program ``name``: its registry entry, else seeded from its QCEngine harness.

    A harness QCEngine marks ``thread_parallel`` is assumed to use its cores at 80 %; one that is
    not, only one core. Unknown names get the defaults (one core, subprocess, ghost atoms).
    """
    key = name.lower()
    known = PROGRAMS.get(key)
    if known is not None:
        return known
    with _lock:
        if key not in _seeded:
            _seeded[key] = _from_qcengine(key)
        return _seeded[key]


def _from_qcengine(name: str) -> ProgramTraits:
    try:
        from qcengine.programs.base import programs

        defaults = getattr(programs.get(name), "_defaults", {}) or {}
    except ImportError:
        defaults = {}
    base = ProgramTraits(name)
    return replace(base, parallel_fraction=0.8) if defaults.get("thread_parallel") else base
