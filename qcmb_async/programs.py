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

__all__ = ["INVARIANCE_TOLERANCE", "PROGRAMS", "ProgramTraits", "register_traits", "traits"]

#: Default invariance tolerance ``(gradient Eh/bohr, Hessian Eh/bohr²)``: about 10x the largest break measured
#: with default settings (DFT quadrature grids: PySCF/Psi4 B3LYP gradients up to 1.7e-5, PySCF B3LYP Hessians
#: 3.5e-4; HF/MP2 below 1e-6); a symmetry-reoriented NWChem result broke it by 0.02-0.1 (docs/troubleshooting.md).
INVARIANCE_TOLERANCE: tuple[float, float] = (1e-4, 3e-3)


@dataclass(frozen=True)
class ProgramTraits:
    """One program's capabilities, as far as scheduling and input checks need them."""

    name: str
    """QCEngine's program name (``qcengine.compute(..., program=name)``)."""
    in_process: bool = False
    """Runs inside the Python process (GIL-bound, process-global state): ``executor="auto"`` uses
    worker processes for it, unless it is also ``releases_gil`` and ``thread_safe``."""
    releases_gil: bool = False
    """In-process program whose computation runs in native code with the GIL released (e.g. a cffi
    binding), so fragments on threads compute in parallel."""
    thread_safe: bool = False
    """In-process program whose concurrent calculations in one process give the same results as one
    at a time (no shared mutable state). With ``releases_gil``: ``executor="auto"`` runs it on threads,
    which for millisecond fragments beats worker processes (no start-up, no hand-off per fragment)."""
    library: str | None = None
    """Module whose import loads an in-process program's native libraries (its OpenMP/BLAS pools):
    a worker imports it while warming up, so those pools are limited to each fragment's cores from
    the first fragment on (``_qcengine/threadlimit.py``)."""
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
    fix_symmetry: str | None = None
    """Set as every fragment molecule's ``fix_symmetry`` when the program would otherwise detect symmetry and
    move (symmetrize, reorient) the geometry: ``"c1"`` makes it compute the fragment as given, in the input
    frame (NWChem's autosym; QCElemental then writes ``symmetry c1``). ``None``: the molecule is sent as is."""
    invariance_tolerance: tuple[float, float] | None = INVARIANCE_TOLERANCE
    """``(gradient Eh/bohr, Hessian Eh/bohr²)``: the largest net force or torque per bohr of the fragment's
    extent, and the largest Hessian row-block sum or rotation residual, its fragment derivatives may show
    before they are failed as not invariant under rigid translation/rotation (``InvarianceError``; measured
    values in docs/troubleshooting.md). ``None``: not checked."""


#: The registry. Values measured or read from the harnesses shipped with QCEngine 0.52 and ours.
#: ``ghost_atoms`` per entry: what the harness does with an atom whose ``molecule.real`` is False (read from its
#: code; tests/test_ghost_atoms.py probes the harnesses' own ``build_input`` where it runs without the program).
PROGRAMS: dict[str, ProgramTraits] = {t.name: t for t in (
    # ghosts: our harness makes them PySCF ``ghost-El`` atoms (basis functions, no nucleus, no electrons).
    # embedding_charges: our harness takes QCManyBody's charges as PySCF QM/MM point charges.
    ProgramTraits("pyscf", in_process=True, parallel_fraction=0.85, embedding_charges=True,
                  install_hint="pip install pyscf (or pip install 'qcmb_async[pyscf]'; its harness ships with "
                               "qcmb_async)"),
    # QCManyBody hands embedding_charges only to Psi4 (function_kwargs.external_potentials, psi4 >= 1.6).
    # ghosts: psi4 reads ``real`` from the QCSchema molecule (ours and QCEngine's harness pass it through).
    ProgramTraits("psi4", parallel_fraction=0.85, embedding_charges=True,
                  install_hint="apt-get install psi4 (Debian/Ubuntu, psi4 1.3.2) or conda install -c conda-forge psi4"),
    # ghosts: QCElemental's nwchem format writes them as ``bqEl`` centres with the element's basis.
    # NWChem's autosym symmetrizes and reorients: ghost-atom (CP) derivatives came back in another frame.
    # MPI ranks; 0.8: a prior for NWChem's SCF/gradients, refitted per group from measured runs.
    ProgramTraits("nwchem", parallel_fraction=0.8, mpi=True, fix_symmetry="c1",
                  install_hint="apt-get install nwchem (Debian/Ubuntu) or conda install -c conda-forge nwchem"),
    # methods and keywords: what QCEngine 0.52's MOPAC harness (build_input) accepts; anything else fails there.
    # ghosts: build_input writes every atom's symbol and coordinates, ``real`` unread: a ghost is a real atom.
    # invariance_tolerance: no quadrature grid, but MOPAC prints gradients with few digits: breaks measured
    # below 3e-7 Eh/bohr on water clusters, 1.04e-5 on a capped tetrapeptide (GMBE subsystem).
    ProgramTraits("mopac", parallel_fraction=0.6, semi_empirical=True, ghost_atoms=False, analytic_hessian=False,
                  invariance_tolerance=(1e-4, 1e-3),
                  methods=frozenset({"mndo", "am1", "pm3", "rm1", "mndod", "pm6", "pm6-d3", "pm6-dh+", "pm6-dh2",
                                     "pm6-dh2x", "pm6-d3h4", "pm6-3dh4x", "pm7", "pm7-ts"}),
                  keywords=frozenset({"iter", "pulay"}),
                  install_hint="apt-get install mopac (Debian/Ubuntu) or conda install -c conda-forge mopac"),
    # ghosts: QCElemental's cfour format writes ``GH`` atoms and the harness a SPECIAL basis for them.
    ProgramTraits("cfour", parallel_fraction=0.8,
                  install_hint="CFOUR is not in package managers: obtain it from https://cfour.de under its licence "
                               "and put xcfour on PATH"),
    # ghosts: the harness writes its own $molecule block with the plain symbol (its ``real is False`` refusal
    # never fires: ``real`` holds numpy booleans), so a ghost is a real atom.
    ProgramTraits("qchem", ghost_atoms=False,
                  install_hint="Q-Chem is commercial software: obtain a licensed copy from "
                               "https://www.q-chem.com and put qchem on PATH"),
    # ghosts: the harness raises "GAMESS+QCEngine can't handle ghost atoms yet" for any real=False atom.
    ProgramTraits("gamess", ghost_atoms=False,
                  install_hint="GAMESS is not in package managers: obtain it from its authors "
                               "(https://www.msg.chem.iastate.edu) under its licence and put rungms on PATH"),
    # No harness in QCEngine 0.52 (one registered later gets QCElemental's orca format: ghosts as ``El:``).
    ProgramTraits("orca", install_hint="ORCA is not in package managers: download it from "
                                       "https://orcaforum.kofo.mpg.de (free for academic use) and put orca on PATH"),
    # ghosts: QCElemental's molpro format adds a ``dummy,i,...`` card (zero charge, basis kept).
    ProgramTraits("molpro", install_hint="Molpro is commercial software: obtain a licensed copy from "
                                         "https://www.molpro.net"),
    # ghosts: QCElemental's turbomole format writes them as plain elements and the harness never zeroes their
    # charge in the control file: a ghost is a real atom.
    ProgramTraits("turbomole", ghost_atoms=False,
                  install_hint="TURBOMOLE is commercial software: obtain a licensed copy from its vendor"),
    # ghosts: QCElemental's terachem format writes ``XEl`` (TeraChem's ghost-atom syntax).
    ProgramTraits("terachem", install_hint="TeraChem is commercial software: obtain a licensed copy from its vendor"),
    # ghosts (both): the tcpb client sends only molecule.symbols and geometry to the server.
    ProgramTraits("terachem_pbs", ghost_atoms=False,
                  install_hint="TeraChem is commercial software (a running TeraChem server) plus pip install tcpb"),
    ProgramTraits("terachem_fe", ghost_atoms=False,
                  install_hint="TeraChem is commercial software (a running TeraChem server) plus pip install tcpb"),
    # Our harness (harnesses/tblite.py): GFN-xTB has no basis functions for ghosts, it refuses them; no Hessian driver.
    # parallel_fraction 0: measured here (2 shared cores), 2 OpenMP threads were slower than 1 for a water trimer
    # (1.2 vs 0.9 ms), hexamer (19 vs 7 ms) and (H2O)20 (236 vs 38 ms): MBE fragments get one core each.
    # releases_gil/thread_safe: a cffi binding (GIL released around every C call); concurrent Calculators on 4
    # threads gave bit-identical energies and gradients for all 92 octamer MBE(3) fragments (tests/test_peer.py).
    ProgramTraits("tblite", in_process=True, parallel_fraction=0.0, semi_empirical=True,
                  releases_gil=True, thread_safe=True, library="tblite.interface",
                  ghost_atoms=False, analytic_hessian=False,
                  methods=frozenset({"gfn2-xtb", "gfn1-xtb", "ipea1-xtb"}),
                  keywords=frozenset({"accuracy", "max_iterations", "electronic_temperature", "solvent",
                                      "solvation_model"}),
                  install_hint="pip install 'qcmb_async[xtb]' (tblite; its harness ships with qcmb_async)"),
    # ghosts: QCEngine calls xtb-python's xtb.qcschema.harness.run_qcschema, which builds its Calculator from
    # molecule.atomic_numbers with no real mask: a ghost is a real atom (measured: CP water dimer +10.15 Eh).
    # releases_gil/thread_safe: cffi, like tblite; QCEngine's harness says thread_safe; concurrent fragments
    # measured bit-identical to serial ones. Its harness ignores ncores: the worker limits its bundled OpenMP
    # and OpenBLAS pools (library=) -- unlimited, 2 spinning OpenMP threads per process made a 1-ms fragment
    # take up to ~200 ms on this 2-core machine under load.
    ProgramTraits("xtb", in_process=True, parallel_fraction=0.6, semi_empirical=True, ghost_atoms=False,
                  releases_gil=True, thread_safe=True, library="xtb.interface",
                  install_hint="conda install -c conda-forge xtb-python"),
    # ghosts (rdkit, openmm): the molecule is built from molecule.symbols (openmm: via RDKit or a CMILES string).
    ProgramTraits("rdkit", in_process=True, force_field=True, ghost_atoms=False, install_hint="pip install rdkit"),
    ProgramTraits("openmm", in_process=True, force_field=True, ghost_atoms=False,
                  install_hint="conda install -c conda-forge openmm"),
    # ghosts (torchani, mace, aimnet2, orb, qcore/entos): species from molecule.symbols / atomic_numbers with no
    # real mask. A basis-free model has no BSSE to correct either.
    ProgramTraits("torchani", in_process=True, ghost_atoms=False, install_hint="pip install torchani"),
    ProgramTraits("mace", in_process=True, ghost_atoms=False,
                  install_hint="conda install -c conda-forge pymace (QCEngine's hint)"),
    ProgramTraits("aimnet2", in_process=True, ghost_atoms=False,
                  install_hint="pip install git+https://github.com/jthorton/AIMNet2.git@main (QCEngine's hint)"),
    ProgramTraits("orb", in_process=True, ghost_atoms=False, install_hint="pip install orb-models"),
    ProgramTraits("qcore", in_process=True, parallel_fraction=0.8, ghost_atoms=False,
                  install_hint="conda install py-qcore -c entos -c conda-forge (QCEngine's hint)"),
    ProgramTraits("entos", in_process=True, parallel_fraction=0.8, ghost_atoms=False,
                  install_hint="conda install py-qcore -c entos -c conda-forge (QCEngine's hint)"),
    # ghosts: the MRChem input takes QCElemental's mrchem format, which writes them as plain elements.
    ProgramTraits("mrchem", parallel_fraction=0.8, ghost_atoms=False,
                  install_hint="see https://mrchem.readthedocs.io (QCEngine's hint)"),
    # ghosts: adcc's SCF is psi4's, built from the QCSchema molecule with its ``real`` flags.
    ProgramTraits("adcc", in_process=True, parallel_fraction=0.8,
                  install_hint="conda install adcc psi4 -c conda-forge (QCEngine's hint)"),
    # ghosts (dftd3, gcp, mctc-gcp, mp2d): the geometry file omits them (ghost_format="") and their gradient
    # rows are zero; dftd4, s-dftd3: the packages' run_qcschema mask atomic_numbers/geometry with ``real``.
    ProgramTraits("dftd3", install_hint="conda install dftd3 -c psi4 (QCEngine's hint)"),
    ProgramTraits("gcp", install_hint="conda install gcp -c psi4 (QCEngine's hint)"),
    ProgramTraits("mctc-gcp", install_hint="conda install gcp-correction -c conda-forge (QCEngine's hint)"),
    ProgramTraits("mp2d", install_hint="conda install mp2d -c psi4 (QCEngine's hint)"),
    ProgramTraits("dftd4", in_process=True, parallel_fraction=0.8, install_hint="pip install dftd4 (its Python API)"),
    ProgramTraits("s-dftd3", in_process=True, parallel_fraction=0.8, install_hint="pip install dftd3 (its Python API)"),
    # ghosts: the harness marks each real=False atom a counterpoise atom (JaguarInput._setCounterpoise).
    ProgramTraits("jaguar", parallel_fraction=0.8,
                  install_hint="Jaguar is commercial software: run from a Schrodinger Python environment with "
                               "SCHRODINGER set"),
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
