"""The program registry: one place for what qcmb_async knows about each program."""

from __future__ import annotations

import pytest

from qcmb_async.programs import PROGRAMS, ProgramTraits, register_traits, traits


def test_known_programs_and_their_capabilities() -> None:
    # In-process harnesses must never share a process's threads (GIL, global state): PySCF is one.
    assert traits("pyscf").in_process and not traits("nwchem").in_process
    # NWChem takes cores only through MPI, which QCEngine's task_config does not launch.
    assert traits("nwchem").parallel_fraction == 0.0
    # QCEngine's MOPAC harness writes ghost atoms as real atoms.
    assert not traits("mopac").ghost_atoms and traits("psi4").ghost_atoms
    assert traits("MOPAC") is traits("mopac")


def test_install_hints_name_no_package_that_does_not_exist() -> None:
    # There is no Debian `cfour` package and no PyPI `qchem` package (CFOUR is licensed by its authors).
    for entry in PROGRAMS.values():
        assert entry.install_hint, f"{entry.name} has no install hint"
    assert "apt-get install cfour" not in traits("cfour").install_hint
    assert "pip install qchem" not in " ".join(t.install_hint for t in PROGRAMS.values())


def test_unknown_program_is_seeded_from_qcengine_flags() -> None:
    from qcengine.programs.base import programs

    name = next(n for n, h in programs.items() if n not in PROGRAMS and h._defaults.get("thread_parallel"))
    assert traits(name).parallel_fraction > 0, f"QCEngine marks {name} thread_parallel"
    assert traits("no-such-program") == ProgramTraits("no-such-program")


def test_register_traits_replaces_an_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PROGRAMS, "gamess", traits("gamess"))
    register_traits(ProgramTraits("gamess", parallel_fraction=0.5))
    assert traits("gamess").parallel_fraction == 0.5
