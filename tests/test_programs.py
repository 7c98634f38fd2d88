"""The program registry: one place for what qcmb_async knows about each program."""

from __future__ import annotations

import pytest

from qcmb_async.programs import PROGRAMS, ProgramTraits, register_traits, traits


def test_known_programs_and_their_capabilities() -> None:
    # In-process harnesses must never share a process's threads (GIL, global state): PySCF is one.
    assert traits("pyscf").in_process and not traits("nwchem").in_process
    # NWChem takes cores only through MPI: as ranks (QCEngine's use_mpiexec), never as threads.
    assert traits("nwchem").mpi and not traits("pyscf").mpi and not traits("mopac").mpi
    # QCEngine's MOPAC harness writes ghost atoms as real atoms.
    assert not traits("mopac").ghost_atoms and traits("psi4").ghost_atoms
    assert traits("MOPAC") is traits("mopac")


def test_install_hints_name_no_package_that_does_not_exist() -> None:
    # There is no Debian `cfour` package and no PyPI `qchem` package (CFOUR is licensed by its authors).
    for entry in PROGRAMS.values():
        assert entry.install_hint, f"{entry.name} has no install hint"
    assert "apt-get install cfour" not in traits("cfour").install_hint
    assert "pip install qchem" not in " ".join(t.install_hint for t in PROGRAMS.values())


def test_unknown_program_is_seeded_from_qcengine_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from qcengine.programs.base import programs

    # Every QCEngine 0.52 harness has an entry now (ghost atoms decided per program): take one out.
    name = next(n for n, h in programs.items() if h._defaults.get("thread_parallel"))
    monkeypatch.delitem(PROGRAMS, name, raising=False)
    assert traits(name).parallel_fraction > 0, f"QCEngine marks {name} thread_parallel"
    assert traits("no-such-program") == ProgramTraits("no-such-program")


def test_register_traits_replaces_an_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PROGRAMS, "gamess", traits("gamess"))
    register_traits(ProgramTraits("gamess", parallel_fraction=0.5))
    assert traits("gamess").parallel_fraction == 0.5


def test_mopac_methods_and_keywords_are_what_qcengines_harness_accepts() -> None:
    """The registry's data against QCEngine's own MOPAC harness (``build_input``; no program run)."""
    import qcengine
    from qcelemental.models.v2 import AtomicInput, Molecule
    from qcengine.config import TaskConfig
    from qcengine.exceptions import InputError as QCEngineInputError

    harness = qcengine.get_program("mopac", check=False)
    mol = Molecule(symbols=["He"], geometry=[0.0, 0.0, 0.0])
    config = TaskConfig(ncores=1, memory=1, nnodes=1, retries=0, scratch_messy=False, scratch_directory=None,
                        mpiexec_command=None)

    def build(method: str, keywords: dict[str, object]) -> None:
        inp = AtomicInput(molecule=mol, specification={"driver": "energy", "model": {"method": method},
                                                       "keywords": keywords})
        harness.build_input(inp, config)

    entry = traits("mopac")
    assert entry.methods is not None and entry.keywords is not None
    for method in entry.methods:
        build(method, {})
    build("pm7", {k: 1 for k in entry.keywords})
    with pytest.raises(QCEngineInputError):
        build("pm8", {})
    with pytest.raises(QCEngineInputError):
        build("pm7", {"warm_start": True})
