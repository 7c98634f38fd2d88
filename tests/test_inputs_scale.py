"""Many-fragment inputs load and plan in seconds: fragment charges/multiplicities are made explicit.

QCElemental's ``validate_and_fill_chgmult`` tries every combination of the missing
per-fragment charges and multiplicities (0.7 s at 20 waters, 29 s / 4 GB at 24, MemoryError
beyond). ``qcmb_async`` fills in the values when QCElemental's answer is unique; these tests
check the filled-in molecule is exactly the one QCElemental builds by itself, that 64-fragment
clusters load and plan quickly from every input form, and that the cases left to QCElemental
(a net charge without fragment charges, a high-spin total multiplicity) fail early with a
message saying what to give when the search would be too large.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput

from qcmb_async import InputError, plan_manybody
from qcmb_async._core.chgmult import CHGMULT_SEARCH_LIMIT, fill_fragment_chgmult
from qcmb_async._core.inputs import load_input
from qcmb_async._core.xyz import build_molecule, parse_xyz
from tests.helpers import require_program
from tests.test_cli import cli

# Geometries in bohr (the schema unit).
WATER = [("O", (0.0, 0.0, 0.0)), ("H", (1.43, 1.108, 0.0)), ("H", (-1.43, 1.108, 0.0))]
HYDROXYL = [("O", (0.0, 0.0, 0.0)), ("H", (1.83, 0.0, 0.0))]
SODIUM = [("Na", (0.0, 0.0, 0.0))]
SPACING = 6.0  # bohr between fragment origins: no atoms too close, QCElemental does not mind the rest
ANGSTROM = 0.52917721067


def cluster(*kinds: list[tuple[str, tuple[float, float, float]]], **fields: Any) -> dict[str, Any]:
    """Molecule data (a schema dict, as in a JSON input) of the given fragments on a 4x4xN grid."""
    symbols: list[str] = []
    geometry: list[float] = []
    fragments: list[list[int]] = []
    for i, kind in enumerate(kinds):
        origin = (SPACING * (i % 4), SPACING * ((i // 4) % 4), SPACING * (i // 16))
        fragments.append(list(range(len(symbols), len(symbols) + len(kind))))
        for symbol, xyz in kind:
            symbols.append(symbol)
            geometry.extend(o + x for o, x in zip(origin, xyz, strict=True))
    return {"symbols": symbols, "geometry": geometry, "fragments": fragments, **fields}


def waters(n: int, **fields: Any) -> dict[str, Any]:
    return cluster(*([WATER] * n), **fields)


def mbe_dict(molecule: dict[str, Any], *, v1: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "molecule": molecule,
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": ["nocp"], "max_nbody": 2},
            "specification": {
                "(auto)": {"program": "mopac", "model": {"method": "pm7"}, "driver": "energy", "keywords": {}}
            },
        },
    }
    if v1:
        data["schema_name"] = "qcschema_manybodyinput"
        data["schema_version"] = 1
    return data


# The module (``qcelemental.molparse.from_arrays`` is also the name of a function there).
qcel_from_arrays = importlib.import_module("qcelemental.molparse.from_arrays")

CHGMULT = ("fragment_charges", "fragment_multiplicities", "molecular_charge", "molecular_multiplicity")


def chgmult(mol: Any) -> dict[str, Any]:
    dump = mol.model_dump()
    return {key: dump[key] for key in CHGMULT}


@pytest.fixture
def no_big_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail at once, instead of using gigabytes, if QCElemental is asked to search a large cluster."""
    original = qcel_from_arrays.validate_and_fill_chgmult

    def guarded(*args: Any, **kwargs: Any) -> Any:
        charges, mults = kwargs["fragment_charges"], kwargs["fragment_multiplicities"]
        if len(charges) > 12 and (None in charges or None in mults):
            raise AssertionError(f"QCElemental's chg/mult search entered for {len(charges)} fragments")
        return original(*args, **kwargs)

    monkeypatch.setattr(qcel_from_arrays, "validate_and_fill_chgmult", guarded)


def timed_plan(mbe_input: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    plan = plan_manybody(mbe_input)
    return plan, time.perf_counter() - start


# -- equivalence: the filled-in molecule is the one QCElemental builds itself ------------------
EQUIVALENT = {
    "water trimer": waters(3),
    "water trimer, charge 0": waters(3, molecular_charge=0),
    "water trimer, singlet": waters(3, molecular_multiplicity=1),
    "water trimer, charge 0 singlet": waters(3, molecular_charge=0.0, molecular_multiplicity=1),
    "OH radical + water": cluster(HYDROXYL, WATER),
    "OH radical + water, doublet": cluster(HYDROXYL, WATER, molecular_multiplicity=2),
    "two OH radicals + water": cluster(HYDROXYL, WATER, HYDROXYL),
    "two OH radicals + water, triplet": cluster(HYDROXYL, WATER, HYDROXYL, molecular_multiplicity=3),
    "Na atom + 2 waters": cluster(SODIUM, WATER, WATER),
    "OH- + 2 waters, fragment charges given": cluster(HYDROXYL, WATER, WATER, fragment_charges=[-1, 0, 0]),
    "OH- + 2 waters, fragment and total charge": cluster(HYDROXYL, WATER, WATER, fragment_charges=[-1.0, 0.0, 0.0],
                                                         molecular_charge=-1),
    "OH- + water, total singlet": cluster(HYDROXYL, WATER, fragment_charges=[-1, 0], molecular_multiplicity=1),
    "Na+ + OH- + water": cluster(SODIUM, HYDROXYL, WATER, fragment_charges=[1, -1, 0]),
    "partial charges: OH + water, one charge given": cluster(HYDROXYL, WATER, fragment_charges=[None, 0.0]),
    "partial charges, rest must be 0": cluster(HYDROXYL, WATER, WATER, fragment_charges=[-1, None, None]),
    "partial multiplicities given": cluster(HYDROXYL, WATER, HYDROXYL, fragment_multiplicities=[None, 1, 2]),
    "multiplicities given, charges missing": cluster(HYDROXYL, WATER, fragment_multiplicities=[2, 1]),
    "ghost fragment": waters(3, real=[False] * 3 + [True] * 6),
    "ghost OH in a radical cluster": cluster(HYDROXYL, HYDROXYL, WATER, real=[False, False] + [True] * 5),
    "atomic numbers instead of symbol lookup": cluster(HYDROXYL, WATER, atomic_numbers=[8, 1, 8, 1, 1]),
    # Left for QCElemental to decide (small enough): the net charge, the high-spin fragment.
    "charged trimer, no fragment charges": waters(3, molecular_charge=1),
    "anionic dimer, no fragment charges": cluster(HYDROXYL, WATER, molecular_charge=-1),
    "high-spin total over water + OH": cluster(HYDROXYL, WATER, molecular_multiplicity=4),
    "triplet water trimer": waters(3, molecular_multiplicity=3),
}

LEFT_TO_QCELEMENTAL = {
    "charged trimer, no fragment charges": (None, None),
    "anionic dimer, no fragment charges": (None, None),
    "high-spin total over water + OH": ([0.0, 0.0], None),
    "triplet water trimer": ([0.0, 0.0, 0.0], None),
}


@pytest.mark.parametrize("name", list(EQUIVALENT))
def test_filled_molecule_is_qcelementals_own(name: str) -> None:
    data = EQUIVALENT[name]
    own = Molecule(**data)
    filled = fill_fragment_chgmult(data)
    ours = Molecule(**filled)
    assert chgmult(ours) == chgmult(own)
    assert ours.model_dump_json() == own.model_dump_json()
    assert ours.get_hash() == own.get_hash()
    if name in LEFT_TO_QCELEMENTAL:
        charges, mults = LEFT_TO_QCELEMENTAL[name]
        assert filled.get("fragment_charges") == charges
        assert filled.get("fragment_multiplicities") == mults
    else:
        n = len(data["fragments"])
        assert len(filled["fragment_charges"]) == n and None not in filled["fragment_charges"]
        assert len(filled["fragment_multiplicities"]) == n and None not in filled["fragment_multiplicities"]
    assert data == EQUIVALENT[name]  # the caller's dict is not changed


def test_user_values_are_kept() -> None:
    data = cluster(HYDROXYL, WATER, fragment_charges=[-1, 0], fragment_multiplicities=[1, 1])
    assert fill_fragment_chgmult(data) is data
    data = waters(3, fragment_multiplicities=[3, 1, 1])
    filled = fill_fragment_chgmult(data)
    assert filled["fragment_multiplicities"] == [3, 1, 1] and filled["fragment_charges"] == [0.0, 0.0, 0.0]
    assert chgmult(Molecule(**filled)) == chgmult(Molecule(**data))


@pytest.mark.parametrize("data", [
    waters(1),
    {"symbols": ["He"], "geometry": [0, 0, 0]},
    waters(3, validated=True),
    waters(3, fragment_charges=[0, 0]),  # wrong length: QCElemental says so
    cluster(WATER, [("Xq", (0.0, 0.0, 0.0))]),  # unknown element: QCElemental says so
])
def test_unusual_data_is_left_to_qcelemental(data: dict[str, Any]) -> None:
    assert fill_fragment_chgmult(data) is data


def test_inconsistent_values_still_fail_in_qcelemental() -> None:
    from qcelemental.exceptions import ValidationError

    # Filled-in or not, a neutral fragment with a singlet OH is impossible.
    data = cluster(HYDROXYL, WATER, fragment_multiplicities=[1, None])
    with pytest.raises(ValidationError):
        Molecule(**data)
    with pytest.raises(ValidationError):
        Molecule(**fill_fragment_chgmult(data))
    # ... and ours says which fragment and why, before QCElemental's general message
    with pytest.raises(InputError, match=r"the molecule of input dict is not valid: fragment 1 \(charge 0\) has 9 "
                       r"electrons, so its multiplicity must be one of 2, 4, 6"):
        load_input(mbe_dict(data))


@pytest.mark.parametrize("v1", [False, True], ids=["v2 dict", "v1 dict"])
def test_load_input_builds_qcelementals_molecule(v1: bool) -> None:
    data = cluster(HYDROXYL, WATER, WATER, molecular_multiplicity=2)
    ours = load_input(mbe_dict(data, v1=v1))
    if v1:
        from qcmanybody.models.v1 import ManyBodyInput as ManyBodyInputV1

        own = ManyBodyInputV1(**mbe_dict(data, v1=True)).convert_v(2)
    else:
        own = ManyBodyInput(**mbe_dict(data))
    assert chgmult(ours.molecule) == chgmult(own.molecule)
    assert ours.molecule.model_dump_json() == own.molecule.model_dump_json()
    assert ours.molecule.fragment_multiplicities == [2, 1, 1]


XYZ_CASES = {
    "waters": ("O 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n--\nO 3 0 0\nH 3.757 0.586 0\nH 2.243 0.586 0", None),
    "OH radical + water": ("O 0 0 0\nH 0.97 0 0\n--\nO 3 0 0\nH 3.757 0.586 0\nH 2.243 0.586 0", None),
    "OH- + water (--charge)": ("O 0 0 0\nH 0.97 0 0\n--\nO 3 0 0\nH 3.757 0.586 0\nH 2.243 0.586 0", [-1, 0]),
    "ghost He + Na": ("@He 0 0 0\n--\nNa 3 0 0", None),
    "labelled atoms": ("O1 0 0 0\nH_a 0.97 0 0\n--\nO2 3 0 0\nH_b 3.757 0.586 0\nH_c 2.243 0.586 0", None),
}


@pytest.mark.parametrize("name", list(XYZ_CASES))
def test_xyz_defaults_are_qcelementals(name: str) -> None:
    text, charges = XYZ_CASES[name]
    ours = build_molecule(parse_xyz(text), charges=charges)
    if charges is not None:
        # A charge alone cannot be written in a molecule string: QCElemental gets it as data.
        plain = Molecule.from_data("no_com\nno_reorient\n" + text)
        own = Molecule(**{**plain.model_dump(), "fragment_charges": charges, "fragment_multiplicities": None,
                          "molecular_charge": None, "molecular_multiplicity": None, "validated": False})
    else:
        own = Molecule.from_data("no_com\nno_reorient\n" + text)
    assert chgmult(ours) == chgmult(own)


def test_xyz_odd_electron_ion_needs_a_multiplicity() -> None:
    """A charged fragment given no multiplicity stays a singlet: an odd-electron ion is an error, not a guess."""
    text = "O 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n--\nO 3 0 0\nH 3.757 0.586 0\nH 2.243 0.586 0"
    with pytest.raises(InputError, match=r"fragment 1 \(charge 1\) has 9 electrons, so its multiplicity must be "
                       r"one of 2, 4, 6.*--charge/--multiplicity"):
        build_molecule(parse_xyz(text), charges=[1, 0])
    mol = build_molecule(parse_xyz(text), charges=[1, 0], multiplicities=[2, 1])
    assert chgmult(mol)["fragment_multiplicities"] == [2, 1] and mol.molecular_multiplicity == 2


def test_xyz_file_values_still_win() -> None:
    text = "0 3\nO 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n--\nO 3 0 0\nH 3.757 0.586 0\nH 2.243 0.586 0"
    mol = build_molecule(parse_xyz(text))
    assert mol.fragment_multiplicities == [3, 1] and mol.molecular_multiplicity == 3


# -- scale: 64 waters from every input form ------------------------------------------------------
N = 64
N_FRAGMENTS = N + N * (N - 1) // 2  # nocp, max_nbody 2: 64 monomers + 2016 dimers


@pytest.mark.timeout(120)
@pytest.mark.parametrize("form", ["dict", "v1 dict", "JSON string", "JSON file", "YAML file"])
def test_64_waters_load_and_plan_in_seconds(form: str, tmp_path: Path, no_big_search: None) -> None:
    require_program("mopac")
    data = mbe_dict(waters(N), v1=form == "v1 dict")
    if form == "JSON string":
        given: Any = json.dumps(data)
    elif form == "JSON file":
        given = tmp_path / "waters64.json"
        given.write_text(json.dumps(data))
    elif form == "YAML file":
        import yaml

        given = tmp_path / "waters64.yaml"
        given.write_text(yaml.safe_dump(data))
    else:
        given = data
    plan, seconds = timed_plan(given)
    assert seconds < 10, f"{form}: {seconds:.1f} s"
    assert len(plan.fragments) == N_FRAGMENTS
    assert sum(f.level == 1 for f in plan.fragments) == N
    mol = plan.input.molecule
    assert mol.fragment_charges == [0.0] * N and mol.fragment_multiplicities == [1] * N
    assert mol.molecular_charge == 0.0 and mol.molecular_multiplicity == 1
    plan.materialise(plan.fragments[-1])  # a dimer builds too


@pytest.mark.timeout(120)
def test_64_fragments_with_radicals_and_ions(no_big_search: None) -> None:
    """Explicit fragment charges of an ion; radicals' multiplicities filled in."""
    require_program("mopac")
    kinds = [HYDROXYL, HYDROXYL] + [WATER] * (N - 2)
    data = cluster(*kinds, fragment_charges=[-1.0, 0.0] + [0.0] * (N - 2), molecular_charge=-1)
    plan, seconds = timed_plan(mbe_dict(data))
    assert seconds < 10
    assert len(plan.fragments) == N_FRAGMENTS
    mol = plan.input.molecule
    assert mol.fragment_multiplicities == [1, 2] + [1] * (N - 2)
    assert mol.molecular_charge == -1.0 and mol.molecular_multiplicity == 2


def write_waters_xyz(path: Path, n: int, radical_first: bool = False) -> Path:
    lines: list[str] = []
    for i in range(n):
        x, y, z = 3.2 * (i % 4), 3.2 * ((i // 4) % 4), 3.2 * (i // 16)
        if i:
            lines.append("--")
        lines.append(f"O {x:.4f} {y:.4f} {z:.4f}")
        lines.append(f"H {x + 0.97:.4f} {y:.4f} {z:.4f}")
        if not (radical_first and i == 0):
            lines.append(f"H {x - 0.757:.4f} {y + 0.586:.4f} {z:.4f}")
    natoms = sum(1 for line in lines if line != "--")
    path.write_text(f"{natoms}\n{n} fragments\n" + "\n".join(lines) + "\n")
    return path


@pytest.mark.timeout(120)
def test_64_fragment_xyz_through_the_cli_loader(tmp_path: Path, no_big_search: None) -> None:
    require_program("mopac")
    from qcmb_async.cli._inputs import _load
    from qcmb_async.cli._options import XyzOptions

    xyz = write_waters_xyz(tmp_path / "waters64.xyz", N, radical_first=True)
    start = time.perf_counter()
    mbe = _load(xyz, XyzOptions(method="pm7", program="mopac", bsse=["nocp"], max_nbody=2))
    plan = plan_manybody(mbe)
    seconds = time.perf_counter() - start
    assert seconds < 10
    assert len(plan.fragments) == N_FRAGMENTS
    assert plan.input.molecule.fragment_multiplicities == [2] + [1] * (N - 1)  # the OH radical is a doublet


@pytest.mark.timeout(180)
def test_64_fragment_xyz_cli_plan(tmp_path: Path) -> None:
    require_program("mopac")
    xyz = write_waters_xyz(tmp_path / "waters64.xyz", N)
    start = time.perf_counter()
    proc = cli("plan", str(xyz), "--program", "mopac", "--method", "pm7", "--bsse", "nocp", "--max-nbody", "2",
               cwd=tmp_path, timeout=120)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert f"{N} fragments, {3 * N} atoms" in proc.stdout
    assert str(N_FRAGMENTS) in proc.stdout
    assert seconds < 30  # includes starting Python and importing QCEngine


# -- what is left to QCElemental, and when we refuse -------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("charge", [1, -1])
def test_net_charge_without_fragment_charges_many_fragments(charge: int, no_big_search: None) -> None:
    data = mbe_dict(waters(N, molecular_charge=charge))
    start = time.perf_counter()
    with pytest.raises(InputError) as info:
        load_input(data)
    assert time.perf_counter() - start < 5
    msg = str(info.value)
    assert f"the molecule of input dict has {N} fragments and molecular_charge={charge} with no fragment_charges" in msg
    assert "does not guess which fragment carries the charge" in msg
    assert f"Give fragment_charges and fragment_multiplicities explicitly in the molecule, one value per fragment " \
           f"({N} each)" in msg
    example = '"fragment_charges": [-1, 0, 0, ...]' if charge < 0 else '"fragment_charges": [1, 0, 0, ...]'
    assert example in msg


def test_net_charge_without_fragment_charges_few_fragments() -> None:
    """Small enough for QCElemental's own choice (it puts the charge on the first fragment)."""
    data = waters(4, molecular_charge=1)
    assert fill_fragment_chgmult(data) is data
    inp = load_input(mbe_dict(data))
    assert inp.molecule.fragment_charges == [1.0, 0.0, 0.0, 0.0]
    assert inp.molecule.fragment_multiplicities == [2, 1, 1, 1]


def test_search_limit_boundary() -> None:
    # +1 water clusters: 2**n * 2**n * (n + 1) combinations; 6 fragments (0.3 s) pass, 7 (3 s) do not.
    assert 2**6 * 2**6 * 7 <= CHGMULT_SEARCH_LIMIT < 2**7 * 2**7 * 8
    fill_fragment_chgmult(waters(6, molecular_charge=1))
    with pytest.raises(InputError, match="7 fragments and molecular_charge=1"):
        fill_fragment_chgmult(waters(7, molecular_charge=1))


@pytest.mark.timeout(60)
def test_high_spin_total_many_fragments(no_big_search: None) -> None:
    with pytest.raises(InputError) as info:
        load_input(mbe_dict(waters(N, molecular_multiplicity=3)))
    msg = str(info.value)
    assert "molecular_multiplicity=3 is not what the fragments add up to as singlets and doublets (1)" in msg
    assert "does not guess which fragments are high spin" in msg
    assert '"fragment_multiplicities": [3, 1, 1, ...]' in msg


@pytest.mark.timeout(60)
def test_impossible_fragment_charges_many_fragments(no_big_search: None) -> None:
    data = waters(N, fragment_charges=[12.0] + [0.0] * (N - 1))
    with pytest.raises(InputError, match=r"fragment\(s\) \[1\] would have a negative or fractional number of "
                                         "electrons"):
        load_input(mbe_dict(data))


@pytest.mark.timeout(60)
def test_net_charge_with_explicit_fragment_values_is_fast(no_big_search: None) -> None:
    data = waters(N, molecular_charge=1, fragment_charges=[1.0] + [0.0] * (N - 1))
    inp = load_input(mbe_dict(data))
    assert inp.molecule.fragment_multiplicities == [2] + [1] * (N - 1)
    assert inp.molecule.molecular_multiplicity == 2


def test_input_checks_of_2000_waters_are_linear() -> None:
    """The NaN scan, re-validation and electron check are linear: 2000 fragments (6000 atoms) in seconds.

    Measured here: QCElemental building the molecule 0.9 s, NaN scans 0.01 s, re-validation
    0.25 s, electron check 0.08 s (one pass over the fragments, not over their subsets).
    """
    from qcmb_async._core.checks import check_fragment_electrons

    n = 2000
    mol = waters(n, fragment_charges=[0] * n, fragment_multiplicities=[1] * n)
    mol["fragment_charges"][-1] = -30  # the last fragment cannot hold 38 valence electrons in 6 orbitals
    start = time.perf_counter()
    inp = load_input(mbe_dict(mol))  # includes the NaN scan and QCElemental's re-validation
    loaded = time.perf_counter()
    with pytest.raises(InputError, match=r"fragment 2000 \(OH2, charge -30,.*38 valence electrons"):
        check_fragment_electrons(inp)
    assert loaded - start < 6.0
    assert time.perf_counter() - loaded < 0.5
