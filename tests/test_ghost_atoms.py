"""Ghost atoms: cp/vmfc only with programs whose QCEngine harness places them (issue 20).

Three independent checks of each registry entry's ``ghost_atoms``:

* the table below, written from reading each QCEngine 0.52 harness (and the packages' QCSchema entry
  points it calls), must equal the registry;
* harnesses that build their input file without the program installed (``build_input``) are probed
  with a ghost atom: it must come out as a ghost (or be left out, or refused) exactly when the
  registry says the program places ghosts;
* installed programs compute a water with its neighbour as ghosts: honoured ghosts give nearly the
  bare monomer's energy, ignored ones exactly the dimer's.

Then every ghost-less entry must refuse cp and vmfc (and accept nocp) through ``check_input``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from qcmanybody.models.v2 import ManyBodyInput

from qcmb_async.errors import InputError
from qcmb_async.programs import PROGRAMS, traits
from tests.helpers import mbe_input, require_program, trimer

ROOT = Path(__file__).resolve().parent.parent

#: Program -> does its QCEngine 0.52 harness honour ``real=False``? (what the code does with a ghost)
HARNESS_CODE: dict[str, tuple[bool, str]] = {
    "pyscf": (True, "qcmb_async's harness: ghost-El atoms"),
    "tblite": (False, "qcmb_async's harness: tight binding has no basis functions for ghosts; it refuses them"),
    "psi4": (True, "the QCSchema molecule keeps real; psi4 reads it"),
    "nwchem": (True, "to_string(dtype='nwchem'): bqEl centres"),
    "cfour": (True, "to_string(dtype='cfour'): GH atoms, SPECIAL basis"),
    "molpro": (True, "to_string(dtype='molpro'): dummy,i card"),
    "terachem": (True, "to_string(dtype='terachem'): XEl"),
    "jaguar": (True, "JaguarInput._setCounterpoise per ghost"),
    "adcc": (True, "psi4.core.Molecule.from_schema keeps real"),
    "orca": (True, "no harness in QCEngine 0.52; QCElemental's orca format writes El:"),
    "dftd3": (True, "ghost_format='' leaves ghosts out; zero gradient rows"),
    "gcp": (True, "ghost_format='' leaves ghosts out; zero gradient rows"),
    "mctc-gcp": (True, "ghost_format='' leaves ghosts out; zero gradient rows"),
    "mp2d": (True, "ghost_format='' leaves ghosts out; zero gradient rows"),
    "dftd4": (True, "dftd4.qcschema masks atomic_numbers/geometry with real"),
    "s-dftd3": (True, "dftd3.qcschema masks atomic_numbers/geometry with real"),
    "mopac": (False, "build_input writes every symbol"),
    "xtb": (False, "xtb.qcschema Calculator(atomic_numbers) without real"),
    "qchem": (False, "own $molecule block with plain symbols ('real is False' never true for numpy bools)"),
    "gamess": (False, "raises 'can't handle ghost atoms yet'"),
    "turbomole": (False, "to_string(dtype='turbomole') writes plain elements, control never zeroes charges"),
    "mrchem": (False, "to_string(dtype='mrchem') writes plain elements"),
    "terachem_pbs": (False, "tcpb sends symbols and geometry only"),
    "terachem_fe": (False, "tcpb sends symbols and geometry only"),
    "rdkit": (False, "RDKit molecule from symbols"),
    "openmm": (False, "RDKit/CMILES molecule from symbols"),
    "torchani": (False, "species from symbols"),
    "mace": (False, "atomic_numbers"),
    "aimnet2": (False, "atomic_numbers"),
    "orb": (False, "atomic_numbers"),
    "qcore": (False, "atomic_numbers"),
    "entos": (False, "atomic_numbers"),
}

GHOSTLESS = sorted(name for name, (ok, _) in HARNESS_CODE.items() if not ok)


def _qcengine_programs() -> set[str]:
    from qcengine.programs.base import programs

    from qcmb_async.harnesses import register_harnesses

    register_harnesses()
    # QCEngine's own harnesses and ours (the test suite's fakes are registered too: not programs).
    return {name for name, h in programs.items() if type(h).__module__.startswith(("qcengine.", "qcmb_async."))}


def test_every_registry_entry_and_qcengine_harness_is_decided() -> None:
    assert set(PROGRAMS) <= set(HARNESS_CODE), sorted(set(PROGRAMS) - set(HARNESS_CODE))
    undecided = _qcengine_programs() - set(PROGRAMS)
    assert not undecided, f"QCEngine harnesses without a registry entry (ghost atoms undecided): {sorted(undecided)}"


@pytest.mark.parametrize("name", sorted(HARNESS_CODE))
def test_registry_flag_is_what_the_harness_code_does(name: str) -> None:
    assert traits(name).ghost_atoms is HARNESS_CODE[name][0], HARNESS_CODE[name][1]


# --------------------------------------------------------------------- probes of QCEngine's build_input

#: Harness -> (method, basis) whose build_input runs here without the program.
BUILDABLE = {"mopac": ("pm7", None), "nwchem": ("hf", "sto-3g"), "molpro": ("hf", "sto-3g"),
             "terachem": ("hf", "sto-3g"), "qchem": ("hf", "sto-3g"), "gamess": ("hf", "sto-3g"),
             "dftd3": ("b3lyp-d3", None), "gcp": ("hf3c", None)}


def _ghost_in_input(name: str) -> bool:
    """Build ``name``'s input for Ne with a ghost He 5 bohr away; True if the He is a ghost there.

    Ghost if: the He line carries the program's ghost syntax (``bqHe``, ``XHe``, a ``dummy,2`` card),
    or the He is left out (dispersion corrections); the harness refusing the input counts as not placing it.
    """
    import qcengine
    from qcelemental.models.v2 import AtomicInput, Molecule
    from qcengine.config import TaskConfig
    from qcengine.exceptions import InputError as QCEngineInputError

    method, basis = BUILDABLE[name]
    mol = Molecule(symbols=["Ne", "He"], geometry=[0.0, 0.0, 0.0, 0.0, 0.0, 5.0], real=[True, False])
    inp = AtomicInput(molecule=mol, specification={"driver": "energy", "model": {"method": method, "basis": basis}})
    config = TaskConfig(ncores=1, memory=1, nnodes=1, retries=0, scratch_messy=False, scratch_directory=None,
                        mpiexec_command=None)
    try:
        files = qcengine.get_program(name, check=False).build_input(inp, config)["infiles"]
    except QCEngineInputError:
        return False
    text = "\n".join(v for v in files.values() if isinstance(v, str))
    lines = [line.split() for line in text.splitlines() if line.split()]
    he = [cells for cells in lines if cells[0].lower() in {"he", "bqhe", "xhe"} and len(cells) >= 4]
    if not he:
        return True  # left out of the geometry
    if any(cells[0].lower() in {"bqhe", "xhe"} for cells in he):
        return True
    return any(line.replace(" ", "").lower() == "dummy,2" for line in text.splitlines())


@pytest.mark.parametrize("name", sorted(BUILDABLE))
def test_harness_input_places_the_ghost_exactly_when_the_registry_says(name: str) -> None:
    assert _ghost_in_input(name) is traits(name).ghost_atoms


# --------------------------------------------------------------------- installed programs, computed

#: program -> (method, basis) for the computed probe.
COMPUTED = {"mopac": ("pm7", None), "xtb": ("gfn2-xtb", None), "pyscf": ("hf", "sto-3g"),
            "nwchem": ("hf", "sto-3g"), "psi4": ("hf", "sto-3g")}


@pytest.mark.parametrize("name", sorted(COMPUTED))
def test_computed_ghost_energy_matches_the_registry(name: str) -> None:
    """Water 1 with water 2 as ghosts: honoured ghosts give nearly water 1's own energy (BSSE is mEh);
    ghosts computed as real atoms give the dimer's energy to the last digit."""
    if name == "xtb":
        from tests.helpers import require_module

        require_module("xtb")
    require_program(name)
    import qcengine
    from qcelemental.models.v2 import AtomicInput

    method, basis = COMPUTED[name]

    def energy(mol: Any) -> float:
        inp = AtomicInput(molecule=mol, specification={"driver": "energy", "model": {"method": method,
                                                                                   "basis": basis}})
        res = qcengine.compute(inp, name, raise_error=True, task_config={"ncores": 1, "memory": 1})
        return float(res.return_result)

    t = trimer()
    ghosted, dimer, bare = (energy(t.get_fragment(real=[0], ghost=[1])), energy(t.get_fragment(real=[0, 1])),
                            energy(t.get_fragment(real=[0])))
    if traits(name).ghost_atoms:
        assert abs(ghosted - bare) < 1e-2 and abs(ghosted - dimer) > 10.0, (ghosted, bare, dimer)
    else:
        assert ghosted == pytest.approx(dimer, abs=1e-8) and abs(ghosted - bare) > 1e-2, (ghosted, bare, dimer)


# --------------------------------------------------------------------- refused up front


def _spec_input(name: str, bsse: str) -> ManyBodyInput:
    method = {"mopac": "pm7", "xtb": "gfn2-xtb", "tblite": "gfn2-xtb"}.get(name, "hf")
    return mbe_input(name, method, None, bsse=bsse, max_nbody=2)


@pytest.mark.parametrize("name", GHOSTLESS)
def test_ghostless_program_refuses_cp_and_vmfc_and_accepts_nocp(name: str) -> None:
    from qcmb_async._core.checks import check_input

    for bsse in ("cp", "vmfc"):
        with pytest.raises(InputError, match=rf"bsse_type {bsse} needs ghost atoms, and {name} cannot place "
                                             r"them.*NoCP is what such a program can do.*--bsse nocp"):
            check_input(_spec_input(name, bsse), local=False)
    check_input(_spec_input(name, "nocp"), local=False)


def test_cp_with_nocp_alongside_is_refused_too() -> None:
    from qcmb_async._core.checks import check_input

    with pytest.raises(InputError, match="bsse_type cp needs ghost atoms, and mopac"):
        check_input(mbe_input("mopac", "pm7", None, bsse=["nocp", "cp"], max_nbody=2), local=False)


def _multilevel(levels: dict[Any, str], bsse: str) -> ManyBodyInput:
    specs = {"semi": {"program": "mopac", "model": {"method": "pm7"}, "driver": "energy"},
             "hf": {"program": "nwchem", "model": {"method": "hf", "basis": "sto-3g"}, "driver": "energy"}}
    return ManyBodyInput(molecule=trimer(), specification={
        "driver": "energy", "keywords": {"bsse_type": [bsse], "levels": levels}, "specification": specs})


def test_multilevel_with_one_ghostless_level_is_refused() -> None:
    from qcmb_async._core.checks import check_input

    with pytest.raises(InputError, match="bsse_type cp needs ghost atoms, and mopac cannot place them"):
        check_input(_multilevel({1: "hf", 2: "semi"}, "cp"), local=False)
    check_input(_multilevel({1: "hf", 2: "semi"}, "nocp"), local=False)
    # A spec no level runs is ignored (QCManyBody ignores it): CP with NWChem at every level is fine.
    check_input(_multilevel({1: "hf", 2: "hf"}, "cp"), local=False)


@pytest.mark.parametrize("name", ["pyscf", "psi4", "nwchem"])
def test_programs_that_place_ghosts_accept_cp_and_vmfc(name: str) -> None:
    require_program(name)
    from qcmb_async._core.checks import check_input

    for bsse in ("cp", "vmfc"):
        check_input(mbe_input(name, "hf", "sto-3g", bsse=bsse, max_nbody=2))


def test_api_run_of_mopac_cp_raises_input_error_before_computing(monkeypatch: pytest.MonkeyPatch) -> None:
    import qcengine

    from qcmb_async import run

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing may be computed")

    monkeypatch.setattr(qcengine, "compute", boom)
    with pytest.raises(InputError, match="mopac cannot place them"):
        run(mbe_input("mopac", "pm7", None, bsse="cp", max_nbody=2), executor="threads", store=None)


@pytest.mark.parametrize("program", sorted(HARNESS_CODE))
def test_default_bsse_follows_the_programs_ghost_atoms(tmp_path: Path, program: str) -> None:
    """No BSSE given: cp where the harness places ghosts, nocp (with a warning naming why) where it cannot."""
    from qcmb_async import read_xyz
    from qcmb_async.errors import QCMBAsyncWarning

    (tmp_path / "dimer.xyz").write_text(_DIMER_XYZ)
    places, _ = HARNESS_CODE[program]
    if places:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error", QCMBAsyncWarning)
            inp = read_xyz(tmp_path / "dimer.xyz", method="hf", program=program)
        assert [b.value for b in inp.specification.keywords.bsse_type] == ["cp"]
        return
    with pytest.warns(QCMBAsyncWarning, match=f"given: nocp, because {program} cannot place ghost atoms"):
        inp = read_xyz(tmp_path / "dimer.xyz", method="hf", program=program)
    assert [b.value for b in inp.specification.keywords.bsse_type] == ["nocp"]
    # What the user chose is kept, and a cp they chose is still refused before anything runs.
    chosen = read_xyz(tmp_path / "dimer.xyz", method="hf", program=program, bsse=["cp"])
    with pytest.raises(InputError, match=f"{program} cannot place them"):
        from qcmb_async._core.checks import check_ghost_atoms, used_specs

        check_ghost_atoms(chosen, used_specs(chosen))


_DIMER_XYZ = """6
water dimer, 3 A apart
O 0.000 0.000 0.000
H 0.757 0.586 0.000
H -0.757 0.586 0.000
--
O 0.000 0.000 3.000
H 0.757 0.586 3.000
H -0.757 0.586 3.000
"""


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QCMB_ASYNC_STORE": "none", "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "qcmb_async", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(("program", "method"), [("tblite", "gfn2-xtb"), ("mopac", "pm7"), ("xtb", "gfn2-xtb")])
def test_cli_plan_without_bsse_uses_nocp_for_a_ghostless_program(tmp_path: Path, program: str, method: str) -> None:
    """`qcmb-async plan dimer.xyz --program tblite` plans nocp and says so; `--bsse cp` stays exit 2."""
    require_program(program)
    (tmp_path / "dimer.xyz").write_text(_DIMER_XYZ)
    proc = _cli(tmp_path, "plan", "dimer.xyz", "--program", program, "--method", method)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "BSSE nocp;" in proc.stdout
    assert f"note: no BSSE treatment given: nocp, because {program} cannot place ghost atoms" in proc.stderr
    chosen = _cli(tmp_path, "plan", "dimer.xyz", "--program", program, "--method", method, "--bsse", "cp")
    assert chosen.returncode == 2, (chosen.stdout, chosen.stderr)
    assert chosen.stderr.startswith("error: bsse_type cp needs ghost atoms") and "--bsse nocp" in chosen.stderr
    assert "Traceback" not in chosen.stderr


def test_cli_run_without_bsse_with_tblite_is_the_nocp_interaction_energy(tmp_path: Path) -> None:
    """`qcmb-async run dimer.xyz --program tblite --method gfn2-xtb`: exit 0, E(AB) - E(A) - E(B) from tblite."""
    require_program("tblite")
    import json

    import numpy as np
    from qcelemental import constants
    from tblite.interface import Calculator

    (tmp_path / "dimer.xyz").write_text(_DIMER_XYZ)
    proc = _cli(tmp_path, "run", "dimer.xyz", "--program", "tblite", "--method", "gfn2-xtb", "-o", "out.json")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "note: no BSSE treatment given: nocp, because tblite cannot place ghost atoms" in proc.stderr
    assert "uncorrected (nocp)" in proc.stdout and "counterpoise" not in proc.stdout
    props = json.loads((tmp_path / "out.json").read_text())["properties"]
    rows = [line.split() for line in _DIMER_XYZ.splitlines()[2:] if line != "--"]
    numbers = np.array([{"O": 8, "H": 1}[r[0]] for r in rows])
    xyz = np.array([[float(v) for v in r[1:]] for r in rows]) / constants.bohr2angstroms

    def energy(idx: list[int]) -> float:  # tblite's own API, as a user would call it
        calc = Calculator("GFN2-xTB", numbers[idx], xyz[idx])
        calc.set("verbosity", 0)
        return float(calc.singlepoint().get("energy"))

    expected = energy([0, 1, 2, 3, 4, 5]) - energy([0, 1, 2]) - energy([3, 4, 5])
    assert props["nocp_corrected_interaction_energy_through_2_body"] == pytest.approx(expected, abs=1e-8)
    assert props.get("cp_corrected_interaction_energy_through_2_body") is None
