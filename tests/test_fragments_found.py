"""Fragments found from bonds in XYZ and PDB files (issue: fragments found for you).

Expected values come from the hand-split file (the user's own '--' lines) run through the same
public path, and from permutations written in the test; charges from rules written here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from qcmb_async import InputError, read_pdb, read_xyz, run
from tests.helpers import require_module, require_program
from tests.test_cli import cli

# A water trimer (Å), and the same atoms shuffled across molecules.
_W = [("O", 0.0, 0.0, 0.0), ("H", 0.0, 0.757, 0.587), ("H", 0.0, -0.757, 0.587)]
_SHIFTS = [(0.0, 0.0, 0.0), (2.9, 0.3, 0.1), (1.2, 2.6, -0.2)]
TRIMER = [[(s, x + dx, y + dy, z + dz) for s, x, y, z in _W] for dx, dy, dz in _SHIFTS]
SHUFFLE = [3, 0, 7, 1, 5, 2, 8, 4, 6]  # file atom k is atom SHUFFLE[k] of the ordered trimer


def _xyz(atoms: list[tuple[str, float, float, float]], split: list[int] | None = None) -> str:
    lines = [str(len(atoms)), "test"]
    for i, (s, x, y, z) in enumerate(atoms):
        if split and i in split:
            lines.append("--")
        lines.append(f"{s} {x:.6f} {y:.6f} {z:.6f}")
    return "\n".join(lines) + "\n"


def _lattice(n: int, spacing: float = 3.1) -> list[list[tuple[str, float, float, float]]]:
    """``n`` waters on a cubic grid (Å), each in a different orientation."""
    out = []
    side = int(np.ceil(n ** (1 / 3)))
    rng = np.random.default_rng(7)
    for k in range(n):
        origin = np.array([k % side, (k // side) % side, k // side**2], dtype=float) * spacing
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        out.append([(s, *(origin + q @ np.array([x, y, z]))) for s, x, y, z in _W])
    return out


@pytest.fixture
def files(tmp_path):
    flat = [a for mol in TRIMER for a in mol]
    paths = {
        "split": tmp_path / "split.xyz",
        "plain": tmp_path / "plain.xyz",
        "shuffled": tmp_path / "shuffled.xyz",
    }
    paths["split"].write_text(_xyz(flat, split=[3, 6]))
    paths["plain"].write_text(_xyz(flat))
    paths["shuffled"].write_text(_xyz([flat[i] for i in SHUFFLE]))
    return paths


def test_sixteen_waters_found_equal_the_hand_split_input(tmp_path):
    waters = _lattice(16)
    flat = [a for mol in waters for a in mol]
    (tmp_path / "split.xyz").write_text(_xyz(flat, split=[3 * k for k in range(1, 16)]))
    (tmp_path / "plain.xyz").write_text(_xyz(flat))
    kw = {"method": "hf", "basis": "sto-3g", "program": "pyscf", "bsse": ["cp"], "max_nbody": 2}
    by_hand = read_xyz(tmp_path / "split.xyz", **kw)
    found = read_xyz(tmp_path / "plain.xyz", fragments="molecules", **kw)
    assert json.loads(found.model_dump_json()) == json.loads(by_hand.model_dump_json())
    assert len(found.molecule.fragments) == 16


def test_found_fragments_give_the_hand_split_result(files):
    require_program("mopac")
    kw = {"method": "pm7", "program": "mopac", "bsse": ["nocp"], "driver": "gradient"}
    by_hand = run(read_xyz(files["split"], **kw), store=None)
    found = run(read_xyz(files["plain"], fragments="molecules", **kw), store=None)
    assert found.properties.return_energy == pytest.approx(by_hand.properties.return_energy, abs=1e-10)
    assert np.abs(np.asarray(found.return_result) - np.asarray(by_hand.return_result)).max() < 1e-10


def test_shuffled_atoms_give_the_same_energy_and_a_gradient_in_file_order(files):
    require_program("mopac")
    kw = {"method": "pm7", "program": "mopac", "bsse": ["nocp"], "driver": "gradient"}
    by_hand = run(read_xyz(files["split"], **kw), store=None)
    inp = read_xyz(files["shuffled"], fragments="molecules", **kw)
    # The calculation runs on contiguous fragments: the molecules are the trimer's, in first-atom order.
    assert [len(f) for f in inp.molecule.fragments] == [3, 3, 3]
    shuffled = run(inp, store=None)
    assert shuffled.properties.return_energy == pytest.approx(by_hand.properties.return_energy, abs=1e-10)
    expected = np.asarray(by_hand.return_result)[SHUFFLE]  # row k: file atom k
    # MOPAC prints gradients to ~1e-11 Eh/bohr after unit conversion; the order is what is tested here.
    assert np.abs(np.asarray(shuffled.return_result) - expected).max() < 1e-9
    assert np.abs(np.asarray(shuffled.properties.return_gradient) - expected).max() < 1e-9
    through2 = np.asarray(by_hand.properties.nocp_corrected_total_gradient_through_2_body)[SHUFFLE]
    assert np.abs(np.asarray(shuffled.properties.nocp_corrected_total_gradient_through_2_body) - through2).max() < 1e-9
    # result.molecule is the file's molecule, row for row with the gradient.
    geometry = np.asarray(by_hand.molecule.geometry).reshape(-1, 3)[SHUFFLE]
    assert np.abs(np.asarray(shuffled.molecule.geometry).reshape(-1, 3) - geometry).max() < 1e-12
    assert list(shuffled.molecule.symbols) == [a[0] for a in (np.array([a for m in TRIMER for a in m],
                                                                           dtype=object)[SHUFFLE])]


def test_found_mode_refuses_dashes_and_charge_lines(files, tmp_path):
    with pytest.raises(InputError, match="'--' line"):
        read_xyz(files["split"], fragments="molecules", method="hf", basis="sto-3g", program="pyscf")
    with pytest.raises(InputError, match="unknown fragments mode"):
        read_xyz(files["plain"], fragments="residues", method="hf", basis="sto-3g", program="pyscf")
    with pytest.raises(InputError, match="rules"):
        read_xyz(files["split"], charges={"Na": 1}, method="hf", basis="sto-3g", program="pyscf")
    with pytest.raises(InputError, match="fragments='molecules'"):
        read_xyz(files["plain"], method="hf", basis="sto-3g", program="pyscf")  # single fragment without '--'


def test_one_covalent_molecule_is_not_split(tmp_path):
    ethanol = [("C", 0.0, 0.0, 0.0), ("C", 1.52, 0.0, 0.0), ("O", 2.0, 1.35, 0.0), ("H", -0.36, 1.03, 0.0),
               ("H", -0.36, -0.51, 0.89), ("H", -0.36, -0.51, -0.89), ("H", 1.88, -0.51, 0.89),
               ("H", 1.88, -0.51, -0.89), ("H", 2.97, 1.33, 0.0)]
    (tmp_path / "ethanol.xyz").write_text(_xyz(ethanol))
    with pytest.raises(InputError, match="1 molecule"):
        read_xyz(tmp_path / "ethanol.xyz", fragments="molecules", method="hf", basis="sto-3g", program="pyscf")


def _pdb(records: list[tuple[str, str, str, int, str, tuple[float, float, float], str]]) -> str:
    """PDB text from ``(record, atom name, residue, residue number, chain, xyz, charge)`` rows (fixed columns)."""
    lines = []
    for serial, (rec, name, res, seq, chain, (x, y, z), charge) in enumerate(records, start=1):
        element = "".join(c for c in name if c.isalpha())[:2] if len(name) > 1 and name[:2] in ("NA", "CL") else \
            name[0]
        lines.append(f"{rec:<6}{serial:>5} {name:<4} {res:>3} {chain}{seq:>4}    {x:8.3f}{y:8.3f}{z:8.3f}"
                     f"{1.0:6.2f}{0.0:6.2f}          {element:>2}{charge:>2}")
    return "\n".join([*lines, "END"]) + "\n"


def _salt_water(charge_column: bool = False) -> str:
    rows = []
    for k, mol in enumerate(TRIMER[:2], start=1):
        for (_s, x, y, z), name in zip(mol, ("O", "H1", "H2"), strict=True):
            rows.append(("HETATM", name, "HOH", k, "A", (x, y, z), ""))
    rows.append(("HETATM", "NA", "NA", 3, "A", (6.0, 0.0, 0.0), "1+" if charge_column else ""))
    rows.append(("HETATM", "CL", "CL", 4, "A", (-4.0, 0.0, 0.0), "1-" if charge_column else ""))
    return _pdb(rows)


def test_pdb_waters_and_ions_need_their_charges(tmp_path):
    path = tmp_path / "salt.pdb"
    path.write_text(_salt_water())
    kw = {"method": "hf", "basis": "sto-3g", "program": "pyscf", "bsse": ["nocp"], "max_nbody": 2}
    with pytest.raises(InputError) as err:
        read_pdb(path, **kw)
    text = str(err.value)
    assert "fragment 3 (Na" in text and "fragment 4 (Cl" in text and "fragment 1 " not in text
    inp = read_pdb(path, charges={"Na": 1, "Cl": -1}, **kw)
    assert [len(f) for f in inp.molecule.fragments] == [3, 3, 1, 1]
    assert list(inp.molecule.fragment_charges) == [0, 0, 1, -1]
    assert list(inp.molecule.fragment_multiplicities) == [1, 1, 1, 1]
    by_residue = read_pdb(path, charges={"NA": 1, "CL": -1}, **kw)  # PDB residue names
    assert list(by_residue.molecule.fragment_charges) == [0, 0, 1, -1]
    with pytest.raises(InputError, match="'K' matches no fragment"):
        read_pdb(path, charges={"Na": 1, "Cl": -1, "K": 1}, **kw)
    column = tmp_path / "salt-charged.pdb"
    column.write_text(_salt_water(charge_column=True))
    assert list(read_pdb(column, **kw).molecule.fragment_charges) == [0, 0, 1, -1]


def test_pdb_without_hydrogens_and_polymers_are_refused(tmp_path):
    bare = tmp_path / "bare.pdb"
    bare.write_text(_pdb([("HETATM", "O", "HOH", 1, "A", (0.0, 0.0, 0.0), ""),
                          ("HETATM", "O", "HOH", 2, "A", (3.0, 0.0, 0.0), "")]))
    with pytest.raises(InputError, match="no hydrogen"):
        read_pdb(bare, method="hf", basis="sto-3g", program="pyscf")
    # Two glycines joined by a peptide bond (N-C distance 1.33 Å): one polymer, not two fragments.
    gly = [("N", (0.0, 0.0, 0.0)), ("CA", (1.45, 0.0, 0.0)), ("C", (2.0, 1.42, 0.0)), ("O", (1.3, 2.4, 0.0)),
           ("H", (-0.5, -0.9, 0.0)), ("HA2", (1.8, -0.5, 0.9)), ("HA3", (1.8, -0.5, -0.9))]
    rows = []
    for seq, (dx, dy) in ((1, (0.0, 0.0)), (2, (3.33, 1.42))):  # residue 2's N sits 1.33 Å from residue 1's C
        for name, (x, y, z) in gly:
            rows.append(("ATOM", name, "GLY", seq, "A", (x + dx, y + dy, z), ""))
    path = tmp_path / "digly.pdb"
    path.write_text(_pdb(rows))
    with pytest.raises(InputError, match="covalent polymer"):
        read_pdb(path, method="hf", basis="sto-3g", program="pyscf")


def test_odd_electron_fragment_needs_a_multiplicity(tmp_path):
    hydroxyl = [("O", 5.0, 0.0, 0.0), ("H", 5.97, 0.0, 0.0)]
    path = tmp_path / "radical.xyz"
    path.write_text(_xyz([*TRIMER[0], *hydroxyl]))
    kw = {"method": "hf", "basis": "sto-3g", "program": "pyscf", "bsse": ["nocp"]}
    with pytest.raises(InputError, match=r"fragment 2 \(HO.*odd"):
        read_xyz(path, fragments="molecules", **kw)
    radical = read_xyz(path, fragments="molecules", multiplicities={"OH": 2}, **kw)
    assert list(radical.molecule.fragment_multiplicities) == [1, 2]
    anion = read_xyz(path, fragments="molecules", charges={"OH": -1}, **kw)
    assert list(anion.molecule.fragment_charges) == [0, -1]
    assert list(anion.molecule.fragment_multiplicities) == [1, 1]


def test_cli_plan_shows_the_fragments_found(tmp_path):
    path = tmp_path / "salt.pdb"
    path.write_text(_salt_water())
    args = ["plan", str(path), "--program", "pyscf", "--method", "hf", "--basis", "sto-3g", "--bsse", "nocp",
            "--max-nbody", "2", "--no-store"]
    refused = cli(*args, cwd=tmp_path)
    assert refused.returncode == 2
    assert "Na" in refused.stderr and "charge" in refused.stderr
    shown = cli(*args, "--charge", "Na=+1,Cl=-1", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "4 fragments found from bonds" in shown.stdout
    table = shown.stdout.split("fragments found", 2)[-1]
    assert "H2O" in table and "Na" in table and "Cl" in table and "+1" in table and "-1" in table
    assert "nothing was computed" in shown.stdout
    bad = cli(*args, "--charge", "Na=one", cwd=tmp_path)
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr


def test_interleaved_pdb_residues_keep_the_file_order(tmp_path):
    # Three waters whose atoms alternate between residues in the file (gemmi groups them by residue).
    order = [(1, 0), (2, 0), (1, 1), (2, 1), (1, 2), (3, 0), (2, 2), (3, 1), (3, 2)]  # (residue, atom of water)
    rows = [("HETATM", ("O", "H1", "H2")[k], "HOH", res, "A", TRIMER[res - 1][k][1:], "") for res, k in order]
    path = tmp_path / "interleaved.pdb"
    path.write_text(_pdb(rows))
    inp = read_pdb(path, method="hf", basis="sto-3g", program="pyscf", bsse=["nocp"])
    from qcmb_async._core.fragment import ORDER_KEY

    file_order = inp.molecule.extras[ORDER_KEY]  # file index of each molecule atom
    assert [file_order[int(a)] for a in inp.molecule.fragments[0]] == [0, 2, 4]
    assert [file_order[int(a)] for a in inp.molecule.fragments[2]] == [5, 7, 8]


def test_lone_heavy_atoms_and_cations_next_to_water(tmp_path):
    kw = {"method": "hf", "basis": "sto-3g", "program": "pyscf", "bsse": ["nocp"]}
    bare_o = tmp_path / "bare_o.xyz"
    bare_o.write_text(_xyz([*TRIMER[0], ("O", 5.0, 0.0, 0.0)]))
    with pytest.raises(InputError, match=r"lone O atom \(its hydrogens missing\?\)"):
        read_xyz(bare_o, fragments="molecules", **kw)
    # Na+ 2.4 Å from a water oxygen (its first shell) is an ion of its own, not part of an "H2NaO" molecule.
    close = tmp_path / "na_water.xyz"
    close.write_text(_xyz([*TRIMER[0], ("Na", -2.4, 0.0, 0.0)]))
    inp = read_xyz(close, fragments="molecules", charges={"Na": 1}, **kw)
    assert [len(f) for f in inp.molecule.fragments] == [3, 1]
    assert list(inp.molecule.fragment_charges) == [0, 1]
    with pytest.raises(InputError, match="not a whole number"):
        read_xyz(close, fragments="molecules", charges={"Na": "1"}, **kw)


def test_alternative_conformations_keep_conformer_a_in_every_residue(tmp_path):
    # Residue 1 lists altloc B before A, residue 2 A before B: keeping the first-listed would mix conformers.
    from qcmb_async._core.pdb import read_pdb_atoms

    rows = [
        "ATOM      1  N   ALA A   1       0.000   0.000   0.000  1.00  0.00           N",
        "ATOM      2  CA BALA A   1       1.458   0.000   0.000  0.40  0.00           C",
        "ATOM      3  CA AALA A   1       1.500   0.100   0.000  0.60  0.00           C",
        "ATOM      4  H   ALA A   1       2.000   1.400   0.000  1.00  0.00           H",
        "ATOM      5  N   GLY A   2       4.000   0.000   0.000  1.00  0.00           N",
        "ATOM      6  CA AGLY A   2       5.000   0.000   0.000  0.50  0.00           C",
        "ATOM      7  CA BGLY A   2       5.200   0.000   0.000  0.50  0.00           C",
    ]
    path = tmp_path / "altloc.pdb"
    path.write_text("\n".join(rows) + "\nEND\n")
    atoms, _residues, _charges, _ids = read_pdb_atoms(path)
    assert [a[1] for a in atoms] == [0.0, 1.5, 2.0, 4.0, 5.0]  # the A positions of both residues


def test_pdb_charge_column_on_one_atom_leaves_the_blank_ones_unsaid(tmp_path):
    """Column 79-80 "1+" on the Na only: read as +1; a Mg with a blank column is asked for, not taken as Mg(0)."""
    lines = _salt_water().splitlines()
    na = next(k for k, line in enumerate(lines) if line[17:20] == " NA")
    cl = next(k for k, line in enumerate(lines) if line[17:20] == " CL")
    lines[na] = lines[na][:78] + "1+"
    lines[cl] = lines[cl][:12] + "MG    MG" + lines[cl][20:76] + "MG  "
    path = tmp_path / "na-mg.pdb"
    path.write_text("\n".join(lines) + "\n")
    kw = {"method": "hf", "basis": "sto-3g", "program": "pyscf", "bsse": ["nocp"], "max_nbody": 2}
    with pytest.raises(InputError) as err:
        read_pdb(path, **kw)
    text = str(err.value)
    assert "fragment 4 (Mg" in text and "fragment 3 " not in text, text
    assert list(read_pdb(path, charges={"MG": 2}, **kw).molecule.fragment_charges) == [0, 0, 1, 2]


@pytest.mark.parametrize("column", ["X+", "++", "a1"])
def test_pdb_charge_column_that_is_not_a_charge_is_refused(tmp_path: Path, column: str) -> None:
    """gemmi reads junk in columns 79-80 as 0 ("no charge given"): it must be an error naming the line."""
    require_module("gemmi")
    from qcmb_async._core.pdb import read_pdb_atoms

    lines = (Path(__file__).resolve().parents[1] / "docs" / "examples" / "peptide.pdb").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(("ATOM  ", "HETATM")))
    lines[first] = lines[first].ljust(80)[:78] + column
    bad = tmp_path / "bad.pdb"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"line {first + 1}: formal charge '{re.escape(column)}' \(columns 79-80\)"):
        read_pdb_atoms(bad)
    lines[first] = lines[first][:78] + "1+"
    bad.write_text("\n".join(lines) + "\n")
    assert read_pdb_atoms(bad)[2][0] == 1  # a real charge still reads
