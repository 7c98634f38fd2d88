"""The user-facing ends of the generalized MBE: the ASE calculator, the CLI's residue charges, GMBE input files,
``plan``'s tables and the Hessian refusal.

References are independent of the product: the GMBE energy of tests/gmbe_reference.py (the textbook
inclusion-exclusion sum, caps placed there, PySCF run directly) and its central finite differences.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qcmb_async import GMBEInput
from tests import gmbe_reference as ref
from tests.helpers import require_module, require_program
from tests.test_gmbe import HEXANE, HEXANE_BONDS, OVERLAPPING, SPEC, _molecule

DATA = Path(__file__).parent / "data"
GRAD_SPEC = {**SPEC, "driver": "gradient"}


def _hexane_atoms() -> Any:
    from ase import Atoms

    return Atoms("".join(a[0] for a in HEXANE), positions=[a[1:] for a in HEXANE])


def _reference(positions_angstrom: np.ndarray, order: int) -> float:
    """GMBE(order) energy (Eh) of hexane with the overlapping fragments, by the textbook helper."""
    from ase.units import Bohr

    return ref.gmbe_energy([a[0] for a in HEXANE], np.asarray(positions_angstrom) / Bohr, HEXANE_BONDS, OVERLAPPING,
                           order, ref.pyscf_energy("hf", "sto-3g"))


def test_ase_calculator_takes_a_gmbe_input(tmp_path: Any) -> None:
    require_module("ase")
    require_program("pyscf")
    from ase.optimize import BFGS
    from ase.units import Bohr, Hartree

    from qcmb_async.ase import ManyBodyCalculator

    atoms = _hexane_atoms()
    inp = GMBEInput(molecule=_molecule(HEXANE), fragments=OVERLAPPING, max_nbody=2, specification=SPEC)
    with ManyBodyCalculator(mbe_input=inp, ncores=2, store=tmp_path / "store.sqlite") as calc:
        atoms.calc = calc
        energy = atoms.get_potential_energy() / Hartree
        forces = atoms.get_forces()
        result = calc.results["manybody_result"]
        assert result.schema_name == "qcmb_async_gmbe_result"
        assert any(s["caps"] for s in result.extras["gmbe"]["subsystems"])  # a capped expansion, not the molecule
        start = atoms.get_positions()
        assert energy == pytest.approx(_reference(start, 2), abs=1e-9)
        # Forces against central differences of the textbook energy: both atoms of a cut bond (C2-C3, the
        # caps' chain rule) and a hydrogen.
        h = 1e-3  # Å
        for atom, axis in ((2, 0), (3, 1), (11, 2)):
            energies = []
            for sign in (1, -1):
                moved = start.copy()
                moved[atom, axis] += sign * h
                energies.append(_reference(moved, 2))
            fd_force = -(energies[0] - energies[1]) / (2 * h / Bohr) * Hartree / Bohr  # eV/Å
            assert forces[atom, axis] == pytest.approx(fd_force, abs=1e-6 * Hartree / Bohr), (atom, axis)
        assert np.abs(forces).max() > 0.05
        # Two BFGS steps downhill; at the new positions the caps were placed again: the energy is the textbook
        # GMBE energy of the moved molecule (its caps built by the helper from the moved atoms).
        BFGS(atoms, logfile=None).run(fmax=1e-4, steps=2)
        assert len(calc.history) >= 3
        moved_energy = atoms.get_potential_energy() / Hartree
        assert moved_energy < energy - 1e-5
        assert np.abs(atoms.get_positions() - start).max() > 1e-3
        assert moved_energy == pytest.approx(_reference(atoms.get_positions(), 2), abs=1e-9)


def test_ase_calculator_refuses_other_atoms_for_a_gmbe_input() -> None:
    require_module("ase")
    from qcmb_async import InputError
    from qcmb_async.ase import ManyBodyCalculator

    inp = GMBEInput(molecule=_molecule(HEXANE), fragments=OVERLAPPING, max_nbody=1, specification=SPEC)
    atoms = _hexane_atoms()[::-1]  # the same atoms in another order
    with ManyBodyCalculator(mbe_input=inp.model_dump_json()) as calc:
        atoms.calc = calc
        with pytest.raises(InputError, match="same atoms in the same order"):
            atoms.get_potential_energy()


# -- the command line ------------------------------------------------------------------------------------------------


def _cli(*args: str) -> Any:
    """``qcmb-async ARGS --no-store`` in-process (typer's CliRunner); stderr/stdout with wrapping undone."""
    from typer.testing import CliRunner

    from qcmb_async.cli import app

    res = CliRunner().invoke(app, [*args, "--no-store"], env={"COLUMNS": "200", "QCMB_ASYNC_STORE": "none"})
    res.flat_err = " ".join(res.stderr.split())
    return res


def _refused(res: Any, *texts: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr, res.exception)
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    for text in texts:
        assert text in res.flat_err, (text, res.stderr)


PDB_ARGS = ("--program", "pyscf", "--method", "hf", "--basis", "sto-3g")


def _protonated_ala4(tmp_path: Path) -> Path:
    """ala4.pdb with a third hydrogen on the N-terminus (NH3+): residue A/ALA1 then needs its charge confirmed."""
    lines = (DATA / "ala4.pdb").read_text().splitlines()
    n_line = next(line for line in lines if line[12:16].strip() == "N" and line[22:26].strip() == "1")
    x, y, z = (float(n_line[30 + 8 * k:38 + 8 * k]) for k in range(3))
    extra = f"ATOM    999  H9  ALA A   1    {x + 0.6:8.3f}{y + 0.6:8.3f}{z + 0.5:8.3f}  1.00  0.00           H  "
    idx = lines.index(n_line)
    path = tmp_path / "nh3.pdb"
    path.write_text("\n".join([*lines[:idx + 1], extra, *lines[idx + 1:]]) + "\n")
    return path


def test_cli_residue_charges_for_a_gmbe(tmp_path: Path) -> None:
    require_module("gemmi")
    pdb = str(_protonated_ala4(tmp_path))
    # Unconfirmed: exit 2 before anything runs, the residue listed with what its hydrogens suggest, and the option
    # that would confirm it.
    _refused(_cli("plan", pdb, "--gmbe", "1", *PDB_ARGS), "charges are never guessed",
             "A/ALA1 (its hydrogens suggest +1)", "--charge A/ALA1=+1")
    # Confirmed, with or without the chain: the fragment holding the N-terminus carries +1, the others 0.
    for rule in ("A/ALA1=+1", "ala1=1"):
        res = _cli("plan", pdb, "--gmbe", "1", *PDB_ARGS, "--charge", rule)
        assert res.exit_code == 0, res.stderr
        rows = [line.split() for line in res.stdout.splitlines() if line.strip()[:1].isdigit() and "C" in line]
        charges = {int(r[0]): r[3] for r in rows[:4]}
        assert charges == {0: "+1", 1: "0", 2: "0", 3: "0"}, res.stdout
    _refused(_cli("plan", pdb, "--gmbe", "1", *PDB_ARGS, "--charge", "A/ALA9=+1"), "A/ALA9", "not residues of the file")
    _refused(_cli("plan", pdb, "--gmbe", "1", *PDB_ARGS, "--charge", "A/ALA1"), "RESIDUE=CHARGE")
    _refused(_cli("plan", pdb, "--gmbe", "1", *PDB_ARGS, "--charge", "A/ALA1=+1,ALA1=+1"), "given twice")
    xyz = tmp_path / "hexane.xyz"
    xyz.write_text(f"{len(HEXANE)}\n\n" + "\n".join(f"{s} {x} {y} {z}" for s, x, y, z in HEXANE) + "\n")
    _refused(_cli("plan", str(xyz), "--gmbe", "1", *PDB_ARGS, "--max-fragment-atoms", "8", "--charge", "C1=+1"),
             "XYZ file has none", "--fragments")


def test_cli_runs_a_charged_peptide_gmbe_with_the_confirmed_charge(tmp_path: Path) -> None:
    require_module("gemmi")
    require_program("pyscf")
    from qcelemental import constants
    from qcelemental.molutil import guess_connectivity

    from tests.test_cli import cli

    pdb = _protonated_ala4(tmp_path)
    out = tmp_path / "gmbe.json"
    done = cli("run", str(pdb), "--gmbe", "1", *PDB_ARGS, "--charge", "A/ALA1=+1", "-o", str(out), "--no-store",
               cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    # GMBE(1) of disjoint residues: the sum of the capped residues, here built and run with PySCF directly, the
    # residue holding the NH3+ nitrogen (atom 0, three hydrogens) with charge +1.
    from pyscf import gto, scf

    # The atoms in serial-number order (the added H9 has serial 999: last), as qcmb_async numbers them.
    lines = sorted((ln for ln in pdb.read_text().splitlines() if ln.startswith(("ATOM", "HETATM"))),
                   key=lambda ln: int(ln[6:11]))
    assert lines[0][12:16].strip() == "N" and lines[0][22:26].strip() == "1"
    symbols = [ln[76:78].strip() for ln in lines]
    xyz = np.array([[float(ln[30 + 8 * k:38 + 8 * k]) for k in range(3)] for ln in lines]) / constants.bohr2angstroms
    bonds = [tuple(map(int, b)) for b in guess_connectivity(symbols, xyz, 1.2)]
    total = 0.0
    for sub in data["extras"]["gmbe"]["subsystems"]:
        syms, coords = ref.capped(symbols, xyz, bonds, frozenset(sub["atoms"]))
        mol = gto.M(atom=[(s, tuple(c)) for s, c in zip(syms, coords, strict=True)], unit="Bohr", basis="sto-3g",
                    charge=1 if 0 in sub["atoms"] else 0, verbose=0)
        mf = scf.RHF(mol)
        mf.conv_tol = 1e-12
        total += mf.kernel()
    assert data["properties"]["return_energy"] == pytest.approx(total, abs=1e-8)


def _hexane_xyz(tmp_path: Path) -> Path:
    xyz = tmp_path / "hexane.xyz"
    xyz.write_text(f"{len(HEXANE)}\nn-hexane\n" + "\n".join(f"{s} {x} {y} {z}" for s, x, y, z in HEXANE) + "\n")
    return xyz


def test_cli_user_fragments_from_files_plan_and_run(tmp_path: Path) -> None:
    require_program("pyscf")
    from tests.test_cli import cli

    xyz = _hexane_xyz(tmp_path)
    frags = tmp_path / "frags.json"
    frags.write_text(json.dumps(OVERLAPPING))
    shown = _cli("plan", str(xyz), "--gmbe", "2", *PDB_ARGS, "--fragments", str(frags))
    assert shown.exit_code == 0, shown.stderr
    text = shown.stdout
    # What plan must show: primary fragments, cut bonds, subsystems per order with coefficients and the cancelled
    # count, each subsystem's coefficient, and the predicted cost.
    assert "3 primary fragments, 20 atoms" in text
    assert "cut bonds (0-based atoms): C1-C2, C2-C3, C3-C4" in text  # each fragment's edge bonds (by hand)
    assert "subsystems per order" in text and "cancelled (net 0)" in text
    # GMBE(1) of [C0-C2], [C2-C3], [C3-C5]: +1 for each fragment, -1 for the shared C2 and C3 units (by hand).
    assert re.search(r"^\s*1\s+3\s+5\s+0\s+5\s+-1x2, \+1x3\s*$", text, re.M), text
    assert re.search(r"predicted: .* of work, wall time .* on \d+ core\(s\)", text), text
    assert "nothing was computed" in text
    # The same fragments as a GMBEInput JSON file: the same plan.
    gmbe_json = tmp_path / "gmbe.json"
    gmbe_json.write_text(GMBEInput(molecule=_molecule(HEXANE), fragments=OVERLAPPING, max_nbody=2,
                                   specification=SPEC).model_dump_json())
    again = _cli("plan", str(gmbe_json))
    assert again.exit_code == 0, again.stderr
    assert again.stdout.split("predicted")[0] == text.split("predicted")[0]
    # Run end to end from both files: the textbook GMBE(2) energy (tests/gmbe_reference.py).
    expected = _reference(np.array([a[1:] for a in HEXANE]), 2)
    for args in ((str(xyz), "--gmbe", "2", *PDB_ARGS, "--keywords", '{"conv_tol": 1e-12}', "--fragments", str(frags)),
                 (str(gmbe_json),)):
        out = tmp_path / "result.json"
        done = cli("run", *args, "-o", str(out), "--no-store", cwd=tmp_path, timeout=600)
        assert done.returncode == 0, done.stderr
        assert "total energy GMBE(2)" in done.stdout
        assert json.loads(out.read_text())["properties"]["return_energy"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("content", "message"), [
    ([[0, 1, 2, 6, 7, 8, 9, 10], [2, 3, 4, 5, 11, 12, 13, 14, 15, 16, 17, 18, 19, 25]], "outside 0..19"),
    ([[0, 1, 2, 6, 7, 8, 9, 10, 11, 12], []], "fragment 1 is empty"),
    ([[0, 1, 6, 7, 8, 9, 10], [2, 3, 11, 12, 13, 14]], "atoms [4, 5, 15, 16, 17, 18, 19] are in no fragment"),
    ([[0, 1, "2"], [3]], "fragment 0 holds '2'"),
    ([[0, 1, 2.5], [3]], "fragment 0 holds 2.5"),
    ({"fragments": [[0, 1]], "charges": [0]}, "may have 'atom_charges'"),
    ("0-5", "JSON list of lists"),
    ("not json", "not valid JSON"),
])
def test_cli_bad_fragment_files_are_refused_before_anything_runs(tmp_path: Path, content: Any, message: str) -> None:
    xyz = _hexane_xyz(tmp_path)
    frags = tmp_path / "frags.json"
    frags.write_text(content if content == "not json" else json.dumps(content))
    # "run" with a program that would fail if it started: the refusal comes first (exit 2).
    _refused(_cli("run", str(xyz), "--gmbe", "1", *PDB_ARGS, "--fragments", str(frags)), message)


def test_cli_bad_gmbe_input_files_are_refused(tmp_path: Path) -> None:
    good = json.loads(GMBEInput(molecule=_molecule(HEXANE), fragments=OVERLAPPING, max_nbody=2,
                                specification=SPEC).model_dump_json())
    cases = [({**good, "fragments": [*OVERLAPPING[:2], [*OVERLAPPING[2], 20]]}, "outside 0..19"),
             ({**good, "fragments": [*OVERLAPPING[:2], []]}, "fragment 2 is empty"),
             ({**good, "fragments": OVERLAPPING[:2]}, "are in no fragment"),
             ({**good, "fragments": "0-5"}, "fragments"),
             ({**good, "max_nbody": "two"}, "max_nbody"),
             ({**good, "specification": {**SPEC, "driver": "hessian"}}, "Hessians with caps are not offered yet")]
    for k, (data, message) in enumerate(cases):
        path = tmp_path / f"bad{k}.json"
        path.write_text(json.dumps(data))
        _refused(_cli("run", str(path)), f"GMBE input file {str(path)!r} is not valid", message)


def test_cli_gmbe_hessians_are_refused_with_the_finite_difference_route(tmp_path: Path) -> None:
    require_module("gemmi")
    pdb = str(DATA / "ala4.pdb")
    _refused(_cli("run", pdb, "--gmbe", "1", *PDB_ARGS, "--driver", "hessian"),
             "Hessians with caps are not offered yet", "--hessian finite-difference")
    gmbe_json = tmp_path / "gmbe.json"
    gmbe_json.write_text(GMBEInput(molecule=_molecule(HEXANE), fragments=OVERLAPPING, max_nbody=1,
                                   specification=SPEC).model_dump_json())
    _refused(_cli("frequencies", str(gmbe_json)), "no analytic Hessians", "--hessian finite-difference")


def _textbook_counts(fragments: list[list[int]], order: int) -> tuple[int, int, int, dict[int, int]]:
    """``(n-mers, distinct subsystems, cancelled, {coefficient: how many})`` of GMBE(order) by the textbook sum:
    every non-empty subset J of the n-mers adds (-1)^(|J|+1) to the intersection of J (2^M subsets; small M)."""
    import itertools
    from collections import Counter

    nmers = sorted({frozenset().union(*(fragments[k] for k in combo))
                    for combo in itertools.combinations(range(len(fragments)), order)}, key=sorted)
    net: dict[frozenset[int], int] = {}
    for size in range(1, len(nmers) + 1):
        for subset in itertools.combinations(nmers, size):
            inter = frozenset.intersection(*subset)
            if inter:
                net[inter] = net.get(inter, 0) + (-1) ** (size + 1)
    kept = Counter(c for c in net.values() if c)
    return len(nmers), len(net), sum(1 for c in net.values() if c == 0), dict(kept)


def test_cli_plan_prints_cancellations_and_coefficients_per_order(tmp_path: Path) -> None:
    from tests.test_gmbe import _carbons

    xyz = _hexane_xyz(tmp_path)
    windows = [_carbons(k, k + 1) for k in range(5)]  # C0-C1, C1-C2, ... overlapping by one carbon
    frags = tmp_path / "windows.json"
    frags.write_text(json.dumps(windows))
    res = _cli("plan", str(xyz), "--gmbe", "3", *PDB_ARGS, "--fragments", str(frags), "--ncores", "2")
    assert res.exit_code == 0, res.stderr
    rows = {int(m.group(1)): m.groups()[1:] for m in re.finditer(
        r"^\s*(\d)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([-+0-9x, ]+?)\s*$", res.stdout, re.M)}
    cancelled_somewhere = False
    for order in (1, 2, 3):
        nmers, family, cancelled, coefs = _textbook_counts(windows, order)
        shown = rows[order]
        assert (int(shown[0]), int(shown[1]), int(shown[2]), int(shown[3])) == (
            nmers, family, cancelled, sum(coefs.values())), (order, res.stdout)
        assert shown[4] == ", ".join(f"{c:+d}x{n}" for c, n in sorted(coefs.items())), (order, res.stdout)
        cancelled_somewhere |= cancelled > 0
    assert cancelled_somewhere  # the case shows cancellations, not only zeros
    assert "subsystems computed (net coefficient in GMBE(n)" in res.stdout
    assert re.search(r"predicted: .* wall time .* on 2 core\(s\)", " ".join(res.stdout.split()))


def test_a_gmbe_input_file_named_by_a_string_is_a_gmbe(tmp_path: Path) -> None:
    from qcmb_async import InputError, plan_manybody

    path = tmp_path / "gmbe.json"
    path.write_text(GMBEInput(molecule=_molecule(HEXANE), fragments=OVERLAPPING, max_nbody=2,
                              specification=SPEC).model_dump_json())
    plan = plan_manybody(str(path))  # as a Path, a dict or JSON text it was already one
    assert len(plan.input.fragments) == 3 and plan.summary[2]["nmers"] == 3
    with pytest.raises(InputError, match="no file of that name"):
        plan_manybody(str(tmp_path / "missing.json"))
    with pytest.raises(InputError):
        plan_manybody("x" * 300 + ".json")  # a name the OS refuses: an InputError, not an OSError
