"""The generalized MBE with hydrogen caps against independent references (real PySCF runs).

References: QCManyBody's sequential computer (disjoint fragments = the ordinary MBE), the textbook
inclusion-exclusion sum written in tests/gmbe_reference.py and run with PySCF directly, the uncut
molecule with PySCF directly, and central finite differences of the GMBE energy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qcelemental import constants
from qcelemental.models.v2 import Molecule

from qcmb_async import GMBEInput, InputError, plan_manybody, run
from tests import gmbe_reference as ref
from tests.helpers import require_module, require_program

DATA = Path(__file__).parent / "data"

# n-hexane (Å, MMFF94 geometry): C0..C5 then the hydrogens of each carbon in order.
HEXANE = [("C", 3.1315, 0.5144, -0.3471), ("C", 1.8291, 0.333, 0.4161), ("C", 0.6541, 0.091, -0.5309),
          ("C", -0.6541, -0.091, 0.2406), ("C", -1.8291, -0.333, -0.7065), ("C", -3.1315, -0.5144, 0.0567),
          ("H", 3.366, -0.3755, -0.9399), ("H", 3.9582, 0.6861, 0.3494), ("H", 3.0734, 1.3729, -1.0237),
          ("H", 1.6406, 1.2263, 1.0229), ("H", 1.9316, -0.5125, 1.1063), ("H", 0.8495, -0.8012, -1.1384),
          ("H", 0.5586, 0.9375, -1.2218), ("H", -0.8495, 0.8012, 0.848), ("H", -0.5586, -0.9375, 0.9314),
          ("H", -1.9316, 0.5125, -1.3966), ("H", -1.6406, -1.2263, -1.3133), ("H", -3.0734, -1.3729, 0.7334),
          ("H", -3.9582, -0.6861, -0.6398), ("H", -3.366, 0.3755, 0.6495)]
HEXANE_BONDS = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 6), (0, 7), (0, 8), (1, 9), (1, 10), (2, 11), (2, 12),
                (3, 13), (3, 14), (4, 15), (4, 16), (5, 17), (5, 18), (5, 19)]
HYDROGENS = {0: [6, 7, 8], 1: [9, 10], 2: [11, 12], 3: [13, 14], 4: [15, 16], 5: [17, 18, 19]}
SPEC = {"program": "pyscf", "driver": "energy", "model": {"method": "hf", "basis": "sto-3g"},
        "keywords": {"conv_tol": 1e-12}}


def _molecule(atoms: list[tuple[str, float, float, float]]) -> Molecule:
    xyz = np.array([a[1:] for a in atoms]) / constants.bohr2angstroms
    return Molecule(symbols=[a[0] for a in atoms], geometry=xyz, fix_com=True, fix_orientation=True)


def _carbons(*cs: int) -> list[int]:
    return sorted([*cs, *(h for c in cs for h in HYDROGENS[c])])


#: Overlapping primary fragments of hexane: C0-C2, C2-C4 (sharing C2), C4-C5 (sharing C4) ... with their H.
OVERLAPPING = [_carbons(0, 1, 2), _carbons(2, 3), _carbons(3, 4, 5)]


@pytest.fixture(scope="module")
def pyscf() -> None:
    require_program("pyscf")


@pytest.mark.parametrize("order", [1, 2, 3])
def test_overlapping_fragments_equal_the_textbook_sum(pyscf, order):
    mol = _molecule(HEXANE)
    inp = GMBEInput(molecule=mol, fragments=OVERLAPPING, max_nbody=order, specification=SPEC)
    result = run(inp, store=None)
    xyz = np.asarray(mol.geometry).reshape(-1, 3)
    expected = ref.gmbe_energy([a[0] for a in HEXANE], xyz, HEXANE_BONDS, OVERLAPPING, order,
                               ref.pyscf_energy("hf", "sto-3g"))
    assert result.properties.return_energy == pytest.approx(expected, abs=1e-9)
    assert result.return_result == pytest.approx(expected, abs=1e-9)
    subsystems = result.extras["gmbe"]["subsystems"]
    assert all(s["coefficients"][str(order)] != 0 for s in subsystems if str(order) in s["coefficients"])


def test_highest_order_is_the_uncut_molecule(pyscf):
    mol = _molecule(HEXANE)
    inp = GMBEInput(molecule=mol, fragments=OVERLAPPING, max_nbody=3, specification=SPEC)
    result = run(inp, store=None)
    xyz = np.asarray(mol.geometry).reshape(-1, 3)
    whole = ref.pyscf_energy("hf", "sto-3g")([a[0] for a in HEXANE], xyz)
    assert result.properties.total_energy_through[3] == pytest.approx(whole, abs=1e-9)
    top = [s for s in result.extras["gmbe"]["subsystems"] if "3" in s["coefficients"]]
    assert len(top) == 1 and top[0]["caps"] == [] and len(top[0]["atoms"]) == len(HEXANE)


def test_disjoint_fragments_are_the_ordinary_mbe(pyscf):
    from qcmanybody.models.v2 import ManyBodyInput
    from qcmanybody.v2 import ManyBodyComputer

    from tests.helpers import trimer

    water = trimer()
    frags = [[int(i) for i in f] for f in water.fragments]
    plain = Molecule(symbols=water.symbols, geometry=water.geometry, fix_com=True, fix_orientation=True)
    for order in (1, 2):
        # A tight orbital gradient: at PySCF's default (sqrt(conv_tol) = 1e-6) two converged SCFs from different
        # starting densities (warm starts here, cold in QCManyBody's loop) gave gradients 4.7e-8 apart.
        spec = {**SPEC, "driver": "gradient", "keywords": {**SPEC["keywords"], "conv_tol_grad": 1e-9}}
        result = run(GMBEInput(molecule=plain, fragments=frags, max_nbody=order, specification=spec), store=None)
        mbe = ManyBodyInput(molecule=water, specification={
            "driver": "gradient", "keywords": {"bsse_type": ["nocp"], "max_nbody": order},
            "specification": {"(auto)": spec}})
        sequential = ManyBodyComputer.from_manybodyinput(mbe)  # QCManyBody's own loop of qcengine.compute
        assert result.properties.return_energy == pytest.approx(
            sequential.properties.nocp_corrected_total_energy, abs=1e-9)
        assert np.abs(np.asarray(result.return_result) - np.asarray(sequential.return_result)).max() < 1e-9


def test_gradient_equals_finite_differences_with_caps_moving(pyscf):
    # Butane, fragments C0-C1 and C1-C2 and C2-C3 overlapping on one carbon: GMBE(1) with caps on both sides.
    butane_atoms = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12]  # C0-C3 of hexane and their hydrogens ...
    atoms = [HEXANE[i] for i in butane_atoms]
    # ... C3 of hexane gets one hydrogen more where C4 was (a methyl end): along the C3-C4 bond, 1.09 Å.
    c3, c4 = np.array(HEXANE[3][1:]), np.array(HEXANE[4][1:])
    atoms.append(("H", *(c3 + 1.09 * (c4 - c3) / np.linalg.norm(c4 - c3))))
    atoms.extend(HEXANE[i] for i in (13, 14))
    index = {old: new for new, old in enumerate([*butane_atoms, -1, 13, 14])}
    hs = {0: [6, 7, 8], 1: [9, 10], 2: [11, 12], 3: [-1, 13, 14]}
    frags = [sorted(index[a] for c in pair for a in (c, *hs[c])) for pair in ((0, 1), (1, 2), (2, 3))]
    mol = _molecule(atoms)
    spec = {**SPEC, "driver": "gradient"}
    result = run(GMBEInput(molecule=mol, fragments=frags, max_nbody=1, specification=spec), store=None)
    grad = np.asarray(result.return_result)
    assert any(s["caps"] for s in result.extras["gmbe"]["subsystems"])
    h = 1e-3
    xyz = np.asarray(mol.geometry).reshape(-1, 3)
    # Both atoms of a cut bond (C1, C2) and a hydrogen: the caps' chain rule lands on the cut bonds.
    for atom, axis in ((1, 0), (2, 1), (2, 2), (9, 0)):
        energies = []
        for sign in (1, -1):
            moved = xyz.copy()
            moved[atom, axis] += sign * h
            m = Molecule(symbols=mol.symbols, geometry=moved, fix_com=True, fix_orientation=True)
            energies.append(run(GMBEInput(molecule=m, fragments=frags, max_nbody=1, specification=SPEC),
                                store=None).return_result)
        fd = (energies[0] - energies[1]) / (2 * h)
        assert grad[atom, axis] == pytest.approx(fd, abs=1e-6), (atom, axis)


def test_bad_gmbe_inputs_are_refused_before_anything_runs():
    mol = _molecule(HEXANE)
    with pytest.raises(ValueError, match="in no fragment"):
        GMBEInput(molecule=mol, fragments=OVERLAPPING[:2], max_nbody=1, specification=SPEC)
    with pytest.raises(ValueError, match="contained in fragment"):
        GMBEInput(molecule=mol, fragments=[*OVERLAPPING, _carbons(0, 1)], max_nbody=1, specification=SPEC)
    with pytest.raises(ValueError, match="Hessians with caps"):
        GMBEInput(molecule=mol, fragments=OVERLAPPING, max_nbody=1, specification={**SPEC, "driver": "hessian"})
    with pytest.raises(ValueError, match="exceeds"):
        GMBEInput(molecule=mol, fragments=OVERLAPPING, max_nbody=4, specification=SPEC)
    # A fragment that cuts a C-H bond leaves an odd electron count once capped? No: caps keep it even; a charge
    # on one atom does not.
    with pytest.raises(InputError, match="odd electron count"):
        run(GMBEInput(molecule=mol, fragments=OVERLAPPING, max_nbody=1, specification=SPEC,
                      atom_charges=[1] + [0] * 19), store=None)
    with pytest.raises(InputError, match="unknown method"):
        run(GMBEInput(molecule=mol, fragments=OVERLAPPING, max_nbody=1,
                      specification={**SPEC, "model": {"method": "not-a-method", "basis": "sto-3g"}}), store=None)


def test_plan_counts_cancellations():
    mol = _molecule(HEXANE)
    # Two-carbon windows overlapping by one carbon: many intersections cancel at GMBE(2).
    frags = [_carbons(k, k + 1) for k in range(5)]
    plan = plan_manybody(GMBEInput(molecule=mol, fragments=frags, max_nbody=2, specification=SPEC))
    summary = plan.summary
    assert summary[1]["nmers"] == 5 and summary[1]["family"] == 9  # 5 fragments + 4 shared carbons
    assert summary[2]["cancelled"] > 0
    # Coefficients of GMBE(1): +1 per fragment, -1 per shared carbon (inclusion-exclusion by hand).
    coef = {tuple(s.atoms): s.coefficients.get(1) for s in plan.subsystems if 1 in s.coefficients}
    assert sorted(coef.values()) == [-1] * 4 + [1] * 5


def test_from_pdb_cuts_only_ca_c_bonds(tmp_path):
    require_module("gemmi")
    inp = GMBEInput.from_pdb(DATA / "ala4.pdb", residues_per_fragment=1, max_nbody=2, specification=SPEC)
    assert len(inp.fragments) == 4
    assert sorted(a for f in inp.fragments for a in f) == list(range(len(inp.molecule.symbols)))
    plan = plan_manybody(inp)
    from qcmb_async._core.gmbe_assemble import cut_bonds

    symbols = list(inp.molecule.symbols)
    cuts = cut_bonds(plan)
    assert len(cuts) == 3 and all(symbols[a] == symbols[b] == "C" for a, b in cuts)
    over = GMBEInput.from_pdb(DATA / "ala4.pdb", residues_per_fragment=2, overlap=1, max_nbody=2,
                              specification=SPEC)
    assert len(over.fragments) == 3
    assert set(over.fragments[0]) & set(over.fragments[1])


def test_pdb_charged_residues_must_be_confirmed(tmp_path):
    require_module("gemmi")
    from tests.test_gmbe_front import _protonated_ala4

    path = _protonated_ala4(tmp_path)  # a third hydrogen on N of residue 1 makes it NH3+
    with pytest.raises(InputError, match=r"A/ALA1 \(its hydrogens suggest \+1\)"):
        GMBEInput.from_pdb(path, max_nbody=1, specification=SPEC)
    inp = GMBEInput.from_pdb(path, max_nbody=1, specification=SPEC, residue_charges={"A/ALA1": 1})
    assert sum(inp.atom_charges) == 1


def _ethane() -> tuple[Molecule, list[list[int]]]:
    """Ethane (Å) split at its C-C bond into two methyls: each subsystem is a capped CH3 (methane)."""
    atoms = [("C", 0.0, 0.0, 0.0), ("C", 1.53, 0.0, 0.0), ("H", -0.39, 1.02, 0.0), ("H", -0.39, -0.51, 0.88),
             ("H", -0.39, -0.51, -0.88), ("H", 1.92, -1.02, 0.0), ("H", 1.92, 0.51, -0.88), ("H", 1.92, 0.51, 0.88)]
    return _molecule(atoms), [[0, 2, 3, 4], [1, 5, 6, 7]]


def test_optimize_and_finite_difference_frequencies_take_gmbe_inputs(pyscf):
    from qcmb_async import frequencies_sync, optimize_sync

    mol, frags = _ethane()
    inp = GMBEInput(molecule=mol, fragments=frags, max_nbody=1, specification=SPEC)
    first = run(inp.model_copy(update={"specification": {**SPEC, "driver": "gradient"}}), store=None)
    opt = optimize_sync(inp, maxiter=2, store=None)
    assert opt.energies[0] == pytest.approx(first.properties.return_energy, abs=1e-10)
    assert opt.energies[-1] < opt.energies[0]  # geomeTRIC steps downhill on the GMBE surface
    assert np.abs(np.asarray(opt.trajectory[0].return_result) - np.asarray(first.return_result)).max() < 1e-10
    with pytest.raises(InputError, match="finite-difference"):
        frequencies_sync(inp, method="analytic", store=None)
    step = 5e-3
    freq = frequencies_sync(inp, method="finite-difference", step=step, store=None)
    # One Hessian column by hand: central difference of two GMBE gradients run through run().
    xyz = np.asarray(mol.geometry).reshape(-1, 3)
    column = []
    for sign in (1, -1):
        moved = xyz.copy()
        moved[1, 0] += sign * step
        m = Molecule(symbols=mol.symbols, geometry=moved, fix_com=True, fix_orientation=True)
        g = run(GMBEInput(molecule=m, fragments=frags, max_nbody=1, specification={**SPEC, "driver": "gradient"}),
                store=None)
        column.append(np.asarray(g.return_result).reshape(-1))
    by_hand = (column[0] - column[1]) / (2 * step)
    hess = np.asarray(freq.hessian)
    # The driver symmetrises (H + H^T) / 2: the column differs from the raw one by the FD asymmetry only (O(h^2)).
    assert np.abs(hess[:, 3] - by_hand).max() < 1e-5
    assert np.abs(by_hand).max() > 0.1  # a real stretch constant, not zeros


def test_cli_plan_run_and_report_a_peptide(tmp_path, pyscf):
    require_module("gemmi")
    from tests.test_cli import cli

    pdb = str(DATA / "ala4.pdb")
    common = ["--gmbe", "2", "--program", "pyscf", "--method", "hf", "--basis", "sto-3g", "--no-store"]
    shown = cli("plan", pdb, *common, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "4 primary fragments" in shown.stdout and "3 bond(s) cut" in shown.stdout
    assert "subsystems per order" in shown.stdout and "nothing was computed" in shown.stdout
    out = tmp_path / "gmbe.json"
    done = cli("run", pdb, *common[:1], "1", *common[2:], "-o", str(out), cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "total energy GMBE(1)" in done.stdout
    import json

    data = json.loads(out.read_text())
    assert data["schema_name"] == "qcmb_async_gmbe_result" and len(data["extras"]["gmbe"]["subsystems"]) == 4
    # GMBE(1) of disjoint residues: the sum of the four capped residues (their energies, as computed).
    assert data["properties"]["return_energy"] == pytest.approx(
        sum(s["energy"] for s in data["extras"]["gmbe"]["subsystems"]), abs=1e-9)
    reported = cli("report", str(out), cwd=tmp_path)
    assert reported.returncode == 0 and "GMBE(1)" in reported.stdout
    bad = cli("plan", pdb, *common, "--bsse", "cp", cwd=tmp_path)
    assert bad.returncode == 2 and "NoCP" in bad.stderr
    xyz = tmp_path / "hexane.xyz"
    xyz.write_text(f"{len(HEXANE)}\n\n" + "\n".join(f"{s} {x} {y} {z}" for s, x, y, z in HEXANE) + "\n")
    needs = cli("plan", str(xyz), *common, cwd=tmp_path)
    assert needs.returncode == 2 and "--max-fragment-atoms" in needs.stderr
    split = cli("plan", str(xyz), *common, "--max-fragment-atoms", "8", cwd=tmp_path)
    assert split.returncode == 0, split.stderr
    assert "primary fragments" in split.stdout


def test_screened_orders_keep_every_atom_and_charges_must_be_placed():
    mol = _molecule(HEXANE)
    disjoint = [_carbons(0, 1), _carbons(2, 3), _carbons(4, 5)]
    one = plan_manybody(GMBEInput(molecule=mol, fragments=disjoint, max_nbody=1, specification=SPEC))
    # A cutoff no pair of fragments meets drops every dimer: GMBE(2) is then GMBE(1), never an empty sum.
    cut = plan_manybody(GMBEInput(molecule=mol, fragments=disjoint, max_nbody=2, specification=SPEC,
                                  distance_cutoffs={2: 1e-3}))
    assert {s.atoms: s.coefficients[2] for s in cut.subsystems if 2 in s.coefficients} == {
        s.atoms: s.coefficients[1] for s in one.subsystems}
    # Overlapping fragments, screening that keeps only neighbours (they share atoms: distance 0): every atom is
    # still counted once, the coefficients of the subsystems holding it add up to 1 (inclusion-exclusion).
    frags = [_carbons(k, k + 1) for k in range(5)]
    part = plan_manybody(GMBEInput(molecule=mol, fragments=frags, max_nbody=3, specification=SPEC,
                                   distance_cutoffs={2: 1e-3, 3: 1e-3}))
    for order in (1, 2, 3):
        for atom in range(len(HEXANE)):
            assert sum(s.coefficients[order] for s in part.subsystems
                       if order in s.coefficients and atom in s.atoms) == 1, (order, atom)
    charged = mol.model_copy(update={"molecular_charge": 1.0})
    with pytest.raises(ValueError, match="atom_charges is not given"):
        GMBEInput(molecule=charged, fragments=frags, max_nbody=1, specification=SPEC)
    # Fragments that cut a C-H bond: a cap cannot stand for a hydrogen.
    split_h = [[0, 1, 6, 7, 9, 10, 2, 11, 12, 3, 13, 14, 4, 15, 16, 5, 17, 18], [8, 19]]
    with pytest.raises(InputError, match="bond\\(s\\) to hydrogen"):
        plan_manybody(GMBEInput(molecule=mol, fragments=split_h, max_nbody=1, specification=SPEC))


def _ala4_carbonyl_first(tmp_path: Path) -> tuple[Path, list[tuple[str, int]]]:
    """The protonated ala4 (NH3+ on residue 1) with residue 1's C and O listed before its N and CA, serials
    renumbered in file order; also ``(atom name, residue number)`` per atom in that order."""
    from tests.test_gmbe_front import _protonated_ala4

    lines = [line for line in _protonated_ala4(tmp_path).read_text().splitlines() if line.startswith("ATOM")]
    res1 = [line for line in lines if line[22:26].strip() == "1"]
    first = [line for line in res1 if line[12:16].strip() in ("C", "O")]
    lines = first + [line for line in lines if line not in first]
    out = [f"{line[:6]}{k + 1:5d}{line[11:]}" for k, line in enumerate(lines)]
    path = tmp_path / "carbonyl_first.pdb"
    path.write_text("\n".join(out) + "\nEND\n")
    return path, [(line[12:16].strip(), int(line[22:26])) for line in out]


def test_residue_charge_sits_with_the_residues_ca_not_its_first_listed_atom(tmp_path):
    """Residue 1's C (listed first) travels with residue 2's piece; its +1 (the NH3+) must stay with its CA."""
    require_module("gemmi")
    path, atoms = _ala4_carbonyl_first(tmp_path)
    assert atoms[0] == ("C", 1)  # the premise: the first listed atom is not in residue 1's piece
    nh3 = next(k for k, a in enumerate(atoms) if a == ("N", 1))
    carbonyl = next(k for k, a in enumerate(atoms) if a == ("C", 1))
    inp = GMBEInput.from_pdb(path, residues_per_fragment=2, overlap=1, max_nbody=2, specification=SPEC,
                             residue_charges={"A/ALA1": 1})
    assert len(inp.fragments) == 3
    # The premise again: residue 1's C is in a primary fragment that does not hold its N (cut at CA-C).
    assert any(carbonyl in f and nh3 not in f for f in inp.fragments)
    # Hand count: the one charge (NH3+) belongs to every piece holding residue 1's N, nothing else is charged.
    for frag in inp.fragments:
        assert sum(inp.atom_charges[i] for i in frag) == (1 if nh3 in frag else 0), frag
    for sub in plan_manybody(inp).subsystems:
        assert sum(inp.atom_charges[i] for i in sub.atoms) == (1 if nh3 in sub.atoms else 0), sorted(sub.atoms)


def test_pdb_charge_column_gives_a_residues_charge_once(tmp_path):
    """"1+" in columns 79-80 of residue 1's N (the NH3+): read, not asked for, not added twice when also given."""
    require_module("gemmi")
    from tests.test_gmbe_front import _protonated_ala4

    lines = _protonated_ala4(tmp_path).read_text().splitlines()
    n1 = next(k for k, line in enumerate(lines) if line[12:16].strip() == "N" and line[22:26].strip() == "1")
    lines[n1] = lines[n1].ljust(78)[:78] + "1+"
    path = tmp_path / "column.pdb"
    path.write_text("\n".join(lines) + "\n")
    atoms = [line for line in lines if line.startswith(("ATOM", "HETATM"))]
    serials = sorted(int(line[6:11]) for line in atoms)  # atoms are read in serial order
    nh3 = serials.index(int(lines[n1][6:11]))
    for given in (None, {"A/ALA1": 1}):
        inp = GMBEInput.from_pdb(path, residues_per_fragment=1, max_nbody=1, specification=SPEC,
                                 residue_charges=given)
        # Hand count: +1 in the fragment holding residue 1's N, 0 elsewhere, +1 in all.
        assert [sum(inp.atom_charges[i] for i in f) for f in inp.fragments] == [
            1 if nh3 in f else 0 for f in inp.fragments]
        assert sum(inp.atom_charges) == 1
    with pytest.raises(InputError, match=r"A/ALA1: its charge column \(columns 79-80\) says \+1.*says -1"):
        GMBEInput.from_pdb(path, max_nbody=1, specification=SPEC, residue_charges={"A/ALA1": -1})


def test_gmbe_json_without_schema_name_is_read_as_a_gmbe(tmp_path, pyscf):
    """A GMBE file that leaves out schema_name (its top-level "fragments" says what it is) runs as a GMBE: the
    textbook GMBE(1) sum; a broken one is named as a GMBEInput with the field to add, not a ManyBodyInput."""
    import json

    from typer.testing import CliRunner

    from qcmb_async.cli import app

    mol = _molecule(HEXANE)
    data = {"molecule": json.loads(mol.model_dump_json()), "fragments": OVERLAPPING, "max_nbody": 1,
            "specification": SPEC}
    path = tmp_path / "gmbe.json"
    path.write_text(json.dumps(data))
    xyz = np.asarray(mol.geometry).reshape(-1, 3)
    expected = ref.gmbe_energy([a[0] for a in HEXANE], xyz, HEXANE_BONDS, OVERLAPPING, 1,
                               ref.pyscf_energy("hf", "sto-3g"))
    assert run(path, store=None).properties.return_energy == pytest.approx(expected, abs=1e-9)
    assert run(dict(data), store=None).properties.return_energy == pytest.approx(expected, abs=1e-9)
    res = CliRunner().invoke(app, ["plan", str(path), "--no-store"])
    assert res.exit_code == 0, res.output
    assert "GMBE" in res.stdout or "generalized" in res.stdout, res.stdout
    del data["max_nbody"]
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"read as a GMBEInput for its top-level 'fragments'.*schema_name.*"
                                         r"max_nbody"):
        plan_manybody(path)
