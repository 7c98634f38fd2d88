"""Bad input to the generalized MBE, found by attacking it as a newcomer: each is refused before anything runs,
with what is wrong and what to do (CLI exit 2, never a traceback).

The PDB files are tests/data/ala4.pdb edited line by line here (a water, an ion, a second chain, repeated serial
numbers, a NaN coordinate, an atom given twice), so what each test expects follows from the edit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from qcelemental.models.v2 import Molecule

from qcmb_async import GMBEInput, InputError, plan_manybody
from tests.helpers import require_module
from tests.test_gmbe import HEXANE, OVERLAPPING, SPEC, _molecule
from tests.test_gmbe_front import _cli, _refused

DATA = Path(__file__).parent / "data"
XTB = {"program": "tblite", "method": "gfn2-xtb", "bsse": ["nocp"]}
PDB_ARGS = ("--program", "pyscf", "--method", "hf", "--basis", "sto-3g")


def _gmbe(**changes: Any) -> GMBEInput:
    args: dict[str, Any] = {"molecule": _molecule(HEXANE), "fragments": OVERLAPPING, "max_nbody": 2,
                            "specification": SPEC}
    args.update(changes)
    return GMBEInput(**args)


@pytest.mark.parametrize("field, value", [
    ("fragments", [[True, False, *OVERLAPPING[0][2:]], *OVERLAPPING[1:]]),  # True, False were atoms 1 and 0
    ("fragments", [[str(i) for i in OVERLAPPING[0]], *OVERLAPPING[1:]]),
    ("fragments", [[float(i) for i in OVERLAPPING[0]], *OVERLAPPING[1:]]),
    ("max_nbody", True),
    ("max_nbody", "2"),
    ("atom_charges", [True] + [0] * 19),
    ("bonds", [("0", 1)]),
    ("distance_cutoffs", {2: True}),
    ("distance_cutoffs", {2: "6.0"}),
])
def test_numbers_of_the_wrong_type_are_refused_not_converted(field: str, value: Any) -> None:
    # pydantic's lax mode turned True into atom 1, "3" into 3 and 2.0 into 2 without a word.
    with pytest.raises(ValidationError, match=r"is not a whole number|is not a length"):
        _gmbe(**{field: value})


def test_numpy_integers_and_json_round_trips_are_still_accepted() -> None:
    inp = _gmbe(fragments=[list(np.asarray(f, dtype=np.int64)) for f in OVERLAPPING], max_nbody=np.int32(2),
                distance_cutoffs={2: 6.0})
    assert inp.fragments == OVERLAPPING and inp.max_nbody == 2
    back = GMBEInput.model_validate_json(inp.model_dump_json())  # JSON object keys are strings: "2"
    assert back.distance_cutoffs == {2: 6.0} and back.fragments == OVERLAPPING


def test_a_fragment_given_twice_is_named_as_such() -> None:
    with pytest.raises(ValidationError, match="fragments 0 and 1 hold the same atoms"):
        _gmbe(fragments=[OVERLAPPING[0], *OVERLAPPING])


def test_a_charge_or_spin_on_the_molecule_alone_is_not_dropped() -> None:
    symbols, xyz = [a[0] for a in HEXANE], _molecule(HEXANE).geometry
    triplet = Molecule(symbols=symbols, geometry=xyz, molecular_multiplicity=3)
    with pytest.raises(ValidationError, match="multiplicity 3: the GMBE computes closed-shell"):
        _gmbe(molecule=triplet)
    cation = Molecule(symbols=symbols, geometry=xyz, molecular_charge=2)
    with pytest.raises(ValidationError, match="charge 2 but atom_charges add up to 0"):
        _gmbe(molecule=cation, atom_charges=[0] * 20)
    # Agreeing charges are fine (the charge on C0 and C5, the molecule's +2).
    assert sum(_gmbe(molecule=cation, atom_charges=[1, 0, 0, 0, 0, 1] + [0] * 14).atom_charges) == 2


def test_a_molecule_qcelemental_refuses_is_a_validation_error_not_its_raw_exception() -> None:
    xyz = np.asarray(_molecule(HEXANE).geometry).reshape(-1, 3)
    data = {"symbols": [a[0] for a in HEXANE], "geometry": np.vstack([xyz[:19], xyz[:1]])}  # atom 19 on atom 0
    with pytest.raises(ValidationError, match=r"the molecule is not valid: .*too close"):
        _gmbe(molecule=data)


def test_a_hydrogen_split_from_its_atom_by_overlapping_fragments_is_refused() -> None:
    # Fragment 1 holds H6 without C0 (it is bonded to C0, which only fragment 0 holds); every pair of fragments
    # shares H6 or C0, so the old check (bonds between fragments sharing nothing) let it through, and fragment 1
    # was computed with a "cap" 0.6 A from H6 on the H6-C0 bond.
    frags = [OVERLAPPING[0], [*OVERLAPPING[1], 6], OVERLAPPING[2]]
    with pytest.raises(InputError, match="fragment 1 holds atom 6 \\(H\\) but not atom 0 \\(C\\)"):
        plan_manybody(_gmbe(fragments=frags))


# --- PDB and XYZ files on the command line ---------------------------------------------------------------------

def _ala4() -> list[str]:
    return [ln for ln in (DATA / "ala4.pdb").read_text().splitlines() if ln.startswith(("ATOM", "HETATM"))]


def _write(tmp_path: Path, name: str, lines: list[str]) -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _plan(path: str, *args: str) -> Any:
    return _cli("plan", path, "--gmbe", "2", *PDB_ARGS, *args)


def test_pdb_coordinates_must_be_finite(tmp_path: Path) -> None:
    require_module("gemmi")
    lines = _ala4()
    lines[3] = lines[3][:30] + "     nan" + lines[3][38:]
    path = _write(tmp_path, "nan.pdb", lines)
    _refused(_plan(path), "atom 'O' of residue ALA 1", "must be finite")
    _refused(_cli("plan", path, "--fragments", "molecules", *PDB_ARGS), "must be finite")


def test_atoms_on_top_of_each_other_exit_2_naming_the_file(tmp_path: Path) -> None:
    require_module("gemmi")
    lines = _ala4()
    lines.append(lines[0][:6] + "   99" + lines[0][11:12] + " N2 " + lines[0][16:])  # N of ALA1 once more
    _refused(_plan(_write(tmp_path, "twice.pdb", lines)), "twice.pdb", "too close")
    xyz = ["21", "hexane and its C0 again", *(f"{s} {x} {y} {z}" for s, x, y, z in HEXANE),
           "C {} {} {}".format(*HEXANE[0][1:])]
    _refused(_plan(_write(tmp_path, "twice.xyz", xyz), "--max-fragment-atoms", "10"), "twice.xyz", "too close")


def test_a_molecule_beside_the_peptide_is_named_and_the_chain_keeps_its_c_terminus(tmp_path: Path) -> None:
    require_module("gemmi")
    water = ["HETATM   99  O   HOH W   1      20.000  20.000  20.000  1.00  0.00           O  ",
             "HETATM  100  H1  HOH W   1      20.957  20.000  20.000  1.00  0.00           H  ",
             "HETATM  101  H2  HOH W   1      19.760  20.927  20.000  1.00  0.00           H  "]
    # Before: the C-terminus of A/ALA4 was cut off (the water was "the last residue") and the error named it.
    _refused(_plan(_write(tmp_path, "water.pdb", _ala4() + water)), "3 atoms of residue(s) W/HOH1", "no CA atom")
    ion = ["HETATM   99 NA    NA B   1      15.000  15.000  15.000  1.00  0.00          NA  "]
    _refused(_plan(_write(tmp_path, "ion.pdb", _ala4() + ion)), "1 atoms of residue(s) B/NA1", "no CA atom")


def test_two_separate_chains_are_cut_within_each_chain(tmp_path: Path) -> None:
    require_module("gemmi")
    chain_b = [ln[:6] + f"{int(ln[6:11]) + 100:5d}" + ln[11:21] + "B" + ln[22:30] + f"{float(ln[30:38]) + 12:8.3f}"
               + ln[38:] for ln in _ala4()]
    path = _write(tmp_path, "dimer.pdb", [*_ala4(), "TER", *chain_b])
    inp = GMBEInput.from_pdb(path, max_nbody=1, specification=SPEC)
    names = [ln[12:16].strip() for ln in _ala4() + chain_b]
    # One residue unit per fragment, one CA each; 3 CA-C bonds cut per chain (none at either chain's end).
    assert len(inp.fragments) == 8
    assert all(sum(names[a] == "CA" for a in frag) == 1 for frag in inp.fragments)
    from qcmb_async._core.gmbe_assemble import cut_bonds

    cuts = cut_bonds(plan_manybody(inp))
    assert len(cuts) == 6 and all({names[a], names[b]} == {"CA", "C"} for a, b in cuts)


def test_repeated_serial_numbers_keep_atom_names_with_their_atoms(tmp_path: Path) -> None:
    require_module("gemmi")
    same = [ln[:6] + "    1" + ln[11:] for ln in _ala4()]  # every serial number 1
    reference = GMBEInput.from_pdb(DATA / "ala4.pdb", max_nbody=1, specification=SPEC)
    inp = GMBEInput.from_pdb(_write(tmp_path, "serial1.pdb", same), max_nbody=1, specification=SPEC)
    # gemmi groups atoms by residue when serial numbers tie, so the order differs; the residue units must not.
    def formulas(g: GMBEInput) -> list[str]:
        return ["".join(sorted(str(g.molecule.symbols[a]) for a in frag)) for frag in g.fragments]

    assert formulas(inp) == formulas(reference)
    assert float(plan_manybody(inp).subsystems[0].coefficients[1]) == 1.0


def test_fragments_file_with_the_gmbe_json_round_trip(tmp_path: Path) -> None:
    # A GMBEInput written by model_dump_json with distance_cutoffs runs as it is (string keys in JSON).
    inp = _gmbe(distance_cutoffs={2: 6.0})
    path = tmp_path / "gmbe.json"
    path.write_text(inp.model_dump_json())
    res = _cli("plan", str(path))
    assert res.exit_code == 0, res.stderr
    assert json.loads(path.read_text())["distance_cutoffs"] == {"2": 6.0}


def test_an_xyz_file_in_bohr_is_suspected_when_no_atoms_are_bonded(tmp_path: Path) -> None:
    from qcmb_async import read_xyz

    bohr = 1 / 0.52917721
    lines = ["6", "two waters, coordinates in bohr by mistake",
             *(f"{s} {x * bohr:.5f} {y * bohr:.5f} {z * bohr:.5f}" for s, x, y, z in (
                 ("O", 0.0, 0.0, 0.0), ("H", 0.96, 0.0, 0.0), ("H", -0.24, 0.93, 0.0),
                 ("O", 3.0, 0.0, 0.0), ("H", 3.96, 0.0, 0.0), ("H", 2.76, 0.93, 0.0)))]
    path = _write(tmp_path, "bohr.xyz", lines)
    with pytest.raises(InputError, match=r"no two atoms are bonded .* if the file is in bohr"):
        read_xyz(path, fragments="molecules", **XTB)
    # In Å the same file is two waters, no question asked.
    angstrom = ["6", "two waters", *(f"{s} {float(x) / bohr:.5f} {float(y) / bohr:.5f} {float(z) / bohr:.5f}"
                                      for s, x, y, z in (ln.split() for ln in lines[2:]))]
    inp = read_xyz(_write(tmp_path, "ang.xyz", angstrom), fragments="molecules", **XTB)
    assert len(inp.molecule.fragments) == 2


def test_coordinates_in_the_wrong_unit_are_suspected_when_subsystems_go_odd() -> None:
    # Å values converted to bohr twice: nothing is bonded, so no bond is cut, no cap placed, and the fragments
    # that split hexane's C-C bonds have odd electron counts; the error says why that probably happened.
    xyz = np.asarray(_molecule(HEXANE).geometry).reshape(-1, 3) / 0.52917721
    far = Molecule(symbols=[a[0] for a in HEXANE], geometry=xyz, fix_com=True, fix_orientation=True)
    with pytest.raises(InputError, match=r"odd electron count.*bonded to nothing at this geometry.*right unit"):
        plan_manybody(_gmbe(molecule=far))


def test_the_ase_calculator_names_mismatched_atoms_readably() -> None:
    require_module("ase")
    from ase import Atoms

    from qcmb_async.ase import ManyBodyCalculator

    atoms = Atoms("Si" + "".join(a[0] for a in HEXANE[1:]), positions=[a[1:] for a in HEXANE])
    with ManyBodyCalculator(mbe_input=_gmbe(max_nbody=1)) as calc:
        atoms.calc = calc
        with pytest.raises(InputError, match=r"has atoms \['C', 'C',.*the Atoms \['Si', 'C'"):
            atoms.get_potential_energy()


def test_a_gmbe_input_file_with_gmbe_is_told_to_leave_the_option_out(tmp_path: Path) -> None:
    path = tmp_path / "gmbe.json"
    path.write_text(_gmbe().model_dump_json())
    _refused(_cli("plan", str(path), "--gmbe", "2"), "carries its own order: leave --gmbe out")


def test_capped_peptides_keep_their_ace_and_nme_caps_with_the_neighbouring_residue(tmp_path: Path) -> None:
    require_module("gemmi")
    # ala4.pdb with its first residue renamed ACE and its last NME, their CA atoms renamed CH3: no CA in either,
    # as in ACE-(ALA)n-NME peptides. Each cap has to travel with its neighbour (ALA2, ALA3), never be cut off.
    lines = []
    for ln in _ala4():
        res = ln[22:26].strip()
        if res in ("1", "4"):
            ln = ln[:17] + ("ACE" if res == "1" else "NME") + ln[20:]
            if ln[12:16].strip() == "CA":
                ln = ln[:12] + " CH3" + ln[16:]
        lines.append(ln)
    inp = GMBEInput.from_pdb(_write(tmp_path, "capped.pdb", lines), max_nbody=1, specification=SPEC)
    residue = [ln[17:20] + ln[22:26].strip() for ln in lines]
    # (ALA2's carbonyl travels with ALA3, as every residue unit's carbonyl is the residue before's.)
    assert [sorted({residue[a] for a in f}) for f in inp.fragments] == [["ACE1", "ALA2"], ["ALA2", "ALA3", "NME4"]]
    from qcmb_async._core.gmbe_assemble import cut_bonds

    assert len(cut_bonds(plan_manybody(inp))) == 1  # the CA-C bond of ALA2 only


def test_a_metal_bonded_to_the_chain_needs_its_charge(tmp_path: Path) -> None:
    require_module("gemmi")
    # A Zn 2.0 Å from ALA2's carbonyl O (bonded to it alone, so it joins ALA3's unit): it was computed as Zn(0).
    zinc = "HETATM   44 ZN    ZN A   5       0.189   1.925   1.896  1.00  0.00          ZN  "
    path = _write(tmp_path, "zn.pdb", [*_ala4(), zinc])
    with pytest.raises(InputError, match=r"A/ZN5 \(not an amino acid: .* yours to give\)"):
        GMBEInput.from_pdb(path, max_nbody=1, specification=SPEC)
    inp = GMBEInput.from_pdb(path, max_nbody=1, specification=SPEC, residue_charges={"A/ZN5": 2})
    assert sum(inp.atom_charges) == 2 and inp.atom_charges[-1] == 2  # on the Zn, the residue's one atom
    _refused(_plan(path), "A/ZN5", "yours to give", "--charge RESIDUE=Q")


def test_a_bond_to_a_metal_is_never_capped(tmp_path: Path) -> None:
    require_module("gemmi")
    # The Zn of the test above, bonded to ALA2's carbonyl O (which travels with ALA3's unit): fragments that put
    # the Zn alone with ALA4's unit cut the Zn-O bond.
    zinc = "HETATM   44 ZN    ZN A   5       0.189   1.925   1.896  1.00  0.00          ZN  "
    from_pdb = GMBEInput.from_pdb(_write(tmp_path, "zn.pdb", [*_ala4(), zinc]), max_nbody=1, specification=SPEC,
                                  residue_charges={"A/ZN5": 2})
    zn = len(from_pdb.molecule.symbols) - 1
    frags = [[a for a in f if a != zn] for f in from_pdb.fragments]
    frags[-1].append(zn)
    inp = from_pdb.model_copy(update={"fragments": frags})
    assert zn not in GMBEInput.model_validate(inp.model_dump()).fragments[2]
    with pytest.raises(InputError, match=r"cut 1 bond\(s\) to a metal, e\.g\. fragment 2 holds atom \d+ \(O\)"):
        plan_manybody(inp)
