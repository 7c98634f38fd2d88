"""Every bad input is an ``InputError`` before anything runs: one table, file and API forms.

Each case names the input (a file for the command line, the object or path for the API),
the exact error class (:class:`qcmb_async.InputError`, CLI exit 2) and a pattern the message
must match saying what is wrong and what to do. Nothing may run: QCEngine's ``compute`` and
the executor are replaced by functions that fail the test, and the result store given to the
run must not be created.

The second half checks the other side: valid inputs near the same checks are not refused
(ECP bases, ions that fit, radicals, a specification for a program not installed that no
level uses -- computed and compared with QCManyBody's own sequential computer).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput

import qcmb_async
from qcmb_async import InputError
from qcmb_async._core import inputs as inputs_mod
from tests.helpers import require_module, require_program
from tests.test_cli import restore_logger  # noqa: F401 - fixture

# Water dimer in bohr (the schema unit), fragments of three atoms.
WATER2 = {
    "symbols": ["O", "H", "H", "O", "H", "H"],
    "geometry": [0.0, 0.0, 0.0, 1.43, 1.108, 0.0, -1.43, 1.108, 0.0,
                 0.0, 0.0, 6.0, 1.43, 1.108, 6.0, -1.43, 1.108, 6.0],
    "fragments": [[0, 1, 2], [3, 4, 5]],
    "fragment_charges": [0, 0],
    "fragment_multiplicities": [1, 1],
}
WATER3 = {
    "symbols": ["O", "H", "H"] * 3,
    "geometry": [*WATER2["geometry"], 0.0, 0.0, 12.0, 1.43, 1.108, 12.0, -1.43, 1.108, 12.0],
    "fragments": [[0, 1, 2], [3, 4, 5], [6, 7, 8]],
    "fragment_charges": [0, 0, 0],
    "fragment_multiplicities": [1, 1, 1],
}
XYZ_DIMER = ("6\nwater dimer\nO 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n--\n"
             "O 0 0 3\nH 0.757 0.586 3\nH -0.757 0.586 3\n")
PSI4_STRING = "0 1\nO 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n--\n0 1\nO 0 0 3\nH 0.757 0.586 3\nH -0.757 0.586 3"


def mbe(molecule: dict[str, Any] | None = None, *, program: str = "mopac", method: str = "pm7",
        basis: str | None = None, **keywords: Any) -> dict[str, Any]:
    """A ManyBodyInput as a plain dict (what a JSON file holds)."""
    return {
        "molecule": copy.deepcopy(molecule or WATER2),
        "specification": {
            "driver": "energy",
            "keywords": {"bsse_type": ["nocp"], **keywords},
            "specification": {"(auto)": {"program": program, "model": {"method": method, "basis": basis},
                                         "driver": "energy", "keywords": {}}},
        },
    }


def edit(path: str, value: Any, **kw: Any) -> dict[str, Any]:
    """``mbe(**kw)`` with the value at a dotted ``path`` replaced (``molecule.geometry.5``)."""
    data = mbe(**kw)
    *parents, last = path.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def _hessian(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` asking for the MBE Hessian (both drivers)."""
    data["specification"]["driver"] = "hessian"
    data["specification"]["specification"]["(auto)"]["driver"] = "hessian"
    return data


def validated_dump(**changes: Any) -> dict[str, Any]:
    """A ManyBodyInput dict whose molecule is QCElemental's own dump (``validated: true``), then edited."""
    mol = Molecule(**WATER2).model_dump(mode="json")
    assert mol["validated"] is True
    mol.update(changes)
    return mbe(mol)


@dataclass
class Case:
    """One bad input: how to present it and what the refusal must say."""

    id: str
    message: str
    """Regex over the message: what is wrong ... what to do."""
    data: dict[str, Any] | None = None
    """Input as a dict: written to ``input.json`` (file form) and passed as is (API form)."""
    files: dict[str, bytes | str] = field(default_factory=dict)
    """Extra files; ``arg`` names the one given to the CLI/API as the path."""
    arg: str | None = None
    cli_args: list[str] = field(default_factory=list)
    api_options: dict[str, Any] = field(default_factory=dict)
    api_input: Callable[[Path], Any] | None = None
    """API form when it is not the dict / path (built from the case's directory)."""
    command: str = "run"
    cli: bool = True
    api: bool = True
    needs: tuple[str, ...] = ("mopac",)


def _fifo(tmp: Path) -> str:
    os.mkfifo(tmp / "fifo.json")
    return "fifo.json"


#: 9**7 "lol"s (4.8 million) once expanded, from well under a kilobyte; the first alias is on line 3.
ALIAS_BOMB = "\n".join(
    ["extras:", '  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"  {chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(6)]
    + [f"{key}: {json.dumps(value)}" for key, value in mbe().items()]
) + "\n"

CASES: list[Case] = [
    # -- non-finite numbers, wherever they are ------------------------------------------------
    Case("nan geometry", r"NaN or infinite number at molecule\.geometry\[5\].*correct that value",
         data=edit("molecule.geometry.5", math.nan)),
    Case("inf fragment charge", r"NaN or infinite number at molecule\.fragment_charges\[0\].*correct",
         data=edit("molecule.fragment_charges.0", math.inf)),
    Case("nan molecular charge", r"NaN or infinite number at molecule\.molecular_charge.*correct",
         data=edit("molecule.molecular_charge", math.nan)),
    Case("nan multiplicity", r"NaN or infinite number at molecule\.fragment_multiplicities\[1\].*correct",
         data=edit("molecule.fragment_multiplicities.1", math.nan)),
    Case("-inf mass", r"NaN or infinite number at molecule\.masses\[2\].*correct",
         data=edit("molecule.masses", [15.99, 1.008, -math.inf, 15.99, 1.008, 1.008])),
    Case("nan embedding charge", r"NaN or infinite number at specification\.keywords\.embedding_charges.*correct",
         data=mbe(embedding_charges={"1": [-0.8, 0.4, 0.4], "2": [-0.8, math.nan, 0.4]})),
    Case("inf program keyword", r"NaN or infinite number at specification\.specification\.\(auto\)\.keywords\.x",
         data=edit("specification.specification.(auto).keywords", {"x": math.inf})),
    Case("yaml .nan coordinate", r"NaN or infinite number at molecule\.geometry\[0\].*correct",
         files={"in.yaml": json.dumps(mbe()).replace("[0.0, 0.0, 0.0, 1.43", "[.nan, 0.0, 0.0, 1.43", 1)},
         arg="in.yaml"),
    Case("xyz nan coordinate", r"line 4: coordinates must be finite.*correct that atom",
         files={"in.xyz": XYZ_DIMER.replace("H 0.757 0.586 0\n", "H nan 0.586 0\n", 1)}, arg="in.xyz",
         cli_args=["--program", "mopac", "--method", "pm7"], api=False),
    Case("memory inf", r"memory must be a finite number, got inf.*leave it out", data=mbe(),
         cli_args=["--memory", "inf"], api_options={"memory": math.inf}),
    Case("timeout inf", r"timeout must be a finite number.*leave it out for no limit", data=mbe(),
         cli_args=["--timeout", "inf"], api_options={"timeout": math.inf}),
    Case("fragment memory nan", r"fragment_memory must be a positive number, got nan", data=mbe(),
         cli_args=["--fragment-memory", "nan"], api_options={"fragment_memory": math.nan}),
    # -- electrons that cannot fit, or cannot be --------------------------------------------------
    Case("water -30 mopac", r"fragment 1 \(OH2, charge -30.*38 valence electrons.*6 valence orbitals.*correct "
         r"fragment_charges", data=edit("molecule.fragment_charges", [-30, 0])),
    Case("water +9 mopac", r"fragment 2 \(OH2, charge 9.*-1 valence electrons.*correct fragment_charges",
         data=mbe({**WATER2, "fragment_charges": [0, 9], "fragment_multiplicities": [1, 2]})),
    Case("water -5 hf/sto-3g", r"fragment 1 \(OH2, charge -5.*15 electrons \(8 of one spin\) but only 7 basis "
         r"functions.*correct fragment_charges", needs=("pyscf",),
         data=edit("molecule.fragment_multiplicities", [2, 1],
                   molecule={**WATER2, "fragment_charges": [-5, 0]}, program="pyscf", method="hf", basis="sto-3g")),
    # -- program keywords every fragment would refuse ---------------------------------------------
    Case("pyscf warm_start 'yes'", r"PySCF harness: keyword warm_start='yes' must be true or false", needs=("pyscf",),
         data=edit("specification.specification.(auto).keywords", {"warm_start": "yes"}, program="pyscf",
                   method="hf", basis="sto-3g")),
    Case("pyscf keyword typo", r"PySCF harness: unknown keyword\(s\) \['warm_strat'\]\. Supported keywords are: "
         r"conv_tol", needs=("pyscf",),
         data=edit("specification.specification.(auto).keywords", {"warm_strat": True}, program="pyscf",
                   method="hf", basis="sto-3g")),
    # -- a driver the program cannot compute ------------------------------------------------------
    Case("mopac hessian", r"mopac has no analytic Hessians.*finite-difference", data=_hessian(mbe())),
    Case("mopac frequencies (analytic by default)", r"mopac has no analytic Hessians.*--hessian finite-difference",
         data=mbe(), command="frequencies", api=False),
    Case("pyscf mp2 hessian", r"hessian is not supported for MP2.*finite differences of MP2 gradients",
         needs=("pyscf",), data=_hessian(mbe(program="pyscf", method="mp2", basis="sto-3g"))),
    Case("xyz --charge -30", r"fragment 1 \(OH2, charge -30.*valence orbitals.*correct fragment_charges",
         files={"in.xyz": XYZ_DIMER}, arg="in.xyz", cli_args=["--program", "mopac", "--method", "pm7",
                                                              "--charge", "-30,0"], api=False),
    Case("fractional electrons", r"fragment 1 .*1\.5 electrons, not a whole number: give whole fragment charges",
         data=mbe({"symbols": ["He", "He"], "geometry": [0, 0, 0, 0, 0, 6], "fragments": [[0], [1]],
                   "fragment_charges": [0.5, -0.5], "fragment_multiplicities": [1, 1]})),
    # -- the file's word is not taken --------------------------------------------------------------
    Case("validated, atoms on one spot", r"molecule of .* is not valid: .*too close.*Correct the molecule",
         data=validated_dump(geometry=[0.0] * 3 + [0.0] * 3 + WATER2["geometry"][6:])),
    Case("validated, wrong multiplicity", r"molecule of .* is not valid: fragment 1 \(charge 0\) has 10 electrons, "
         r"so its multiplicity must be one of 1, 3, 5.*not 2: correct its charge or multiplicity",
         data=validated_dump(fragment_multiplicities=[2, 1])),
    # -- methods and keywords a harness's data says it refuses (MOPAC) ---------------------------------
    Case("mopac method pm8", r"mopac has no method 'pm8': its QCEngine harness accepts am1, .*pm7",
         data=mbe(method="pm8")),
    Case("mopac warm_start", r"mopac does not take keyword\(s\) 'warm_start': its QCEngine harness accepts iter, "
         r"pulay \(warm_start is a keyword of program pyscf only\)",
         data=edit("specification.specification.(auto).keywords", {"warm_start": True})),
    # -- charges and multiplicities that cannot go together; coordinates no molecule has --------------
    Case("cation given singlet", r"fragment 2 \(charge 1\) has 9 electrons, so its multiplicity must be one of "
         r"2, 4, 6.*not 1: correct its charge or multiplicity",
         data=mbe({**WATER2, "fragment_charges": [0, 1], "fragment_multiplicities": [1, 1]})),
    Case("multiplicity beyond the electrons", r"fragment 1 \(charge 0\) has 2 electrons, so its multiplicity must be "
         r"one of 1, 3, 5.*\(at most 3\), not 5",
         data=mbe({"symbols": ["He", "He"], "geometry": [0, 0, 0, 0, 0, 6], "fragments": [[0], [1]],
                   "fragment_charges": [0, 0], "fragment_multiplicities": [5, 1]})),
    Case("xyz --charge 0,1", r"fragment 2 \(charge 1\) has 9 electrons, so its multiplicity must be one of 2, 4, 6"
         r".*--charge/--multiplicity, or a 'charge multiplicity' line opening the fragment",
         files={"in.xyz": XYZ_DIMER}, arg="in.xyz", cli_args=["--program", "mopac", "--method", "pm7",
                                                              "--charge", "0,1"], api=False),
    Case("coordinate 1e200 bohr", r"a coordinate of 1e\+200 bohr is beyond the 1e\+07 bohr accepted: a unit mix-up",
         data=edit("molecule.geometry.5", 1e200)),
    Case("xyz coordinate 1e308", r"a coordinate of inf bohr is beyond the 1e\+07 bohr accepted",
         files={"in.xyz": XYZ_DIMER.replace("O 0 0 3", "O 0 0 1e308")}, arg="in.xyz",
         cli_args=["--program", "mopac", "--method", "pm7"], api=False),
    Case("validated object, atoms on one spot", r"molecule of .* is not valid: .*too close.*Correct the molecule",
         cli=False, api_input=lambda tmp: ManyBodyInput(**{
             **mbe(), "molecule": Molecule(**{**WATER2, "geometry": [0.0] * 6 + WATER2["geometry"][6:]},
                                           validated=True)})),
    # -- malformed content --------------------------------------------------------------------------
    Case("bsse_type 5", r"bsse_type 5 is not valid: use one or a list of 'cp', 'nocp', 'vmfc'",
         data=edit("specification.keywords.bsse_type", 5)),
    Case("bsse_type [cp, 5]", r"bsse_type \['cp', 5\] is not valid: use one",
         data=edit("specification.keywords.bsse_type", ["cp", 5])),
    Case("unknown element", r"NotAnElementError: Xx.*Use element symbols QCElemental knows",
         data=edit("molecule.symbols", ["O", "H", "H", "Xx", "H", "H"])),
    Case("unknown element in xyz", r"is not a valid molecule: NotAnElementError",
         files={"in.xyz": XYZ_DIMER.replace("O 0 0 3", "Qq 0 0 3")}, arg="in.xyz",
         cli_args=["--program", "mopac", "--method", "pm7"], api=False),
    Case("latin-1 xyz comment", r"is not UTF-8 text: byte 0xe9 on line 2.*Save the file as UTF-8",
         files={"in.xyz": XYZ_DIMER.replace("water dimer", "caf\u00e9 dimer").encode("latin-1")}, arg="in.xyz",
         cli_args=["--program", "mopac", "--method", "pm7"], api=False),
    Case("latin-1 json", r"is not UTF-8 text: byte 0xe9 on line 1.*Save the file as UTF-8",
         files={"in.json": json.dumps({**mbe(), "extras": {"note": "caf\u00e9"}}, ensure_ascii=False)
                .encode("latin-1")}, arg="in.json"),
    Case("yaml alias bomb", r"YAML aliases \('\*a', line 3\) are not accepted.*Write the values out in full",
         files={"bomb.yaml": ALIAS_BOMB}, arg="bomb.yaml"),
    Case("embedding charges with nwchem", r"embedding_charges cannot be used with program\(s\) nwchem.*only to "
         r"psi4, pyscf.*remove embedding_charges", needs=("nwchem",),
         data=mbe(program="nwchem", method="hf", basis="sto-3g",
                  embedding_charges={"1": [-0.8, 0.4, 0.4], "2": [-0.8, 0.4, 0.4]})),
    Case("embedding charges, plan", r"embedding_charges cannot be used with program\(s\) mopac.*only to psi4, pyscf",
         data=mbe(embedding_charges={"1": [-0.8, 0.4, 0.4], "2": [-0.8, 0.4, 0.4]}), command="plan", api=False),
    # -- paths that are not input files -------------------------------------------------------------
    Case("directory", r"is a directory: give a JSON, YAML or XYZ file", files={"dir.json/x": ""}, arg="dir.json"),
    Case("fifo", r"is not a regular file \(a FIFO, device or socket\): save the input to a file",
         api_input=lambda tmp: str(tmp / _fifo(tmp)), cli=False),
    Case("fifo, cli", r"is not a regular file \(a FIFO, device or socket\): save the input to a file",
         arg="fifo.json", api=False, files={"__fifo__": "fifo.json"}),
    Case("/dev/zero", r"is not a regular file.*save the input to a file", arg="/dev/zero"),
    Case("too large", r"has 67108865 bytes, more than the 67108864 an input may have: check it is the right file",
         files={"__sparse__": "big.json"}, arg="big.json"),
    Case("unreadable", r"cannot be read: Permission denied\. Check its permissions", files={"locked.json": "{}"},
         arg="locked.json"),
    Case("file name too long", r"cannot be used: File name too long\. Give the path of a readable", arg="x" * 300),
    Case("psi4 molecule string", r"is a molecule, not a ManyBodyInput.*ManyBodyInput\(molecule=Molecule\.from_data",
         cli=False, api_input=lambda tmp: PSI4_STRING),
    Case("missing path string", r"is not JSON and no file of that name exists: check the path",
         cli=False, api_input=lambda tmp: str(tmp / "nope.json")),
    Case("scratch from an unset variable", r"scratch_directory '\$QCMB_TEST_UNSET/s': environment variable\(s\) "
         r"in it are not set.*set them", data=mbe(), cli=False,
         api_options={"scratch_directory": "$QCMB_TEST_UNSET/s"}),
    Case("scratch missing", r"scratch_directory .* does not exist or is not a directory: create it", data=mbe(),
         cli=False, api_options={"scratch_directory": "~/qcmb-no-such-dir"}),
    # -- found by a newcomer's review ------------------------------------------------------------
    Case("max_nbody zero", r"max_nbody=0: give a whole number from 1 to the number of fragments \(2\)",
         data=mbe(max_nbody=0)),
    Case("ghost atom in the input", r"ghost atoms \(atom\(s\) \[1\].*make every input atom real",
         data=mbe({**WATER2, "real": [False, True, True, True, True, True]})),
    Case("fractional multiplicity", r"multiplicities must be whole numbers.*1\.5.*correct them",
         data=mbe({**WATER2, "fragment_multiplicities": [1.5, 1], "molecular_multiplicity": 1.5})),
    Case("levels naming no spec", r"name model chemistr.*\(auto\).*specification does not define.*supersystem",
         data=edit("specification.specification", {
             n: {"program": "mopac", "model": {"method": "pm7"}, "driver": "energy"} for n in ("a", "b", "c")},
             molecule=WATER3, max_nbody=3, levels={"1": "a", "2": "b", "supersystem": "c"}),
         command="plan", api=False),  # found while planning: before any fragment, after the executor is chosen
    Case("embedding charges without return_total_data", r"embedding_charges need return_total_data: true",
         needs=("pyscf",), data=mbe(program="pyscf", method="hf", basis="sto-3g",
                                    embedding_charges={"1": [-0.8, 0.4, 0.4], "2": [-0.8, 0.4, 0.4]})),
    Case("embedding charges one short", r"embedding_charges for fragment 2 has 2 charge\(s\), the fragment has 3 "
         r"atom\(s\): give one charge per atom", needs=("pyscf",),
         data=mbe(program="pyscf", method="hf", basis="sto-3g", return_total_data=True,
                  embedding_charges={"1": [-0.8, 0.4, 0.4], "2": [-0.8, 0.4]})),
    Case("embedding charges with a pyscf hessian", r"no analytic Hessian with external point charges.*"
         r"finite differences", needs=("pyscf",),
         data=_hessian(mbe(program="pyscf", method="hf", basis="sto-3g", return_total_data=True,
                           embedding_charges={"1": [-0.8, 0.4, 0.4], "2": [-0.8, 0.4, 0.4]}))),
    Case("ncores leaving no memory", r"leaves 0\.0 GiB per fragment: give fewer cores, more memory", data=mbe(),
         cli_args=["--ncores", "10000000", "--memory", "1"], api_options={"ncores": 10**7, "memory": 1}),
]


def _materialise(case: Case, tmp: Path) -> str | None:
    """Write the case's files into ``tmp``; the CLI argument (path) or None."""
    for name, content in case.files.items():
        if name == "__fifo__":
            os.mkfifo(tmp / str(content))
            continue
        if name == "__sparse__":
            with open(tmp / str(content), "wb") as fh:
                fh.truncate(inputs_mod.MAX_INPUT_BYTES + 1)
            continue
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:  # not Path.open: the fixture makes that fail for locked.json
            fh.write(content if isinstance(content, bytes) else content.encode())
    if case.arg is not None:
        return case.arg
    if case.data is not None:
        (tmp / "input.json").write_text(json.dumps(case.data))  # NaN/Infinity as JSON writes them
        return "input.json"
    return None


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """QCEngine and the executors fail the test if reached; ``locked.json`` cannot be opened (we are root)."""
    import qcengine

    from qcmb_async import _runner as runner

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a bad input reached the computation")

    monkeypatch.setattr(qcengine, "compute", boom)
    monkeypatch.setattr(runner, "resolve_executor", boom)
    monkeypatch.delenv("QCMB_TEST_UNSET", raising=False)
    real_open = Path.open

    def guarded_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "locked.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded_open)


def _needs(case: Case) -> None:
    for name in case.needs:
        if name == "pyscf":
            require_module("pyscf")
        else:
            require_program(name)


@pytest.mark.parametrize("case", [c for c in CASES if c.api], ids=[c.id for c in CASES if c.api])
def test_api_refuses(case: Case, tmp_path: Path, nothing_runs: None) -> None:
    _needs(case)
    arg = _materialise(case, tmp_path)
    if case.api_input is not None:
        obj = case.api_input(tmp_path)
    elif case.arg is not None:
        obj = case.arg if os.path.isabs(case.arg) or len(case.arg) > 255 else str(tmp_path / case.arg)
    else:
        obj = copy.deepcopy(case.data)
    assert arg is not None or obj is not None
    store = tmp_path / "api-store.sqlite"
    with pytest.raises(InputError) as info:
        qcmb_async.run(obj, store=str(store), **case.api_options)
    assert type(info.value) is InputError
    assert re.search(case.message, str(info.value), re.S), str(info.value)
    assert not store.exists()


@pytest.mark.parametrize("case", [c for c in CASES if c.cli], ids=[c.id for c in CASES if c.cli])
def test_cli_exits_2(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nothing_runs: None,
                     restore_logger: None) -> None:  # noqa: F811 - fixture
    from typer.testing import CliRunner

    from qcmb_async.cli import app

    _needs(case)
    arg = _materialise(case, tmp_path)
    assert arg is not None
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "cli-store.sqlite"
    args = [case.command, arg, *case.cli_args] + (["--store", str(store)] if case.command == "run" else [])
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    assert re.search(case.message, res.stderr.replace("\n", " "), re.S), res.stderr
    assert not store.exists()


# -- valid inputs near the same checks are accepted -------------------------------------------------
K_WATER = "1 1\nK 0 0 2.7\n--\n0 1\nO 0 0 0\nH 0.757 -0.586 0\nH -0.757 -0.586 0"


def _plan(molecule: str, program: str, method: str, basis: str | None) -> int:
    mol = Molecule.from_data(molecule).model_dump(mode="json")
    return len(qcmb_async.plan_manybody(mbe(mol, program=program, method=method, basis=basis)).fragments)


@pytest.mark.parametrize(("molecule", "program", "method", "basis"), [
    (K_WATER, "pyscf", "hf", "lanl2dz"),  # ECP on K: all-electron count would exceed the basis
    (K_WATER, "nwchem", "hf", "lanl2dz"),
    ("1 1\nRb 0 0 3.0\n--\n0 1\nO 0 0 0\nH 0.757 -0.586 0\nH -0.757 -0.586 0", "pyscf", "hf", "def2-svp"),
    ("-4 1\nO 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n--\n0 1\nHe 0 0 4", "pyscf", "hf", "sto-3g"),  # 14 e in 7
    ("0 2\nO 0 0 0\nH 0.97 0 0\n--\n0 2\nO 0 0 4\nH 0.97 0 4", "pyscf", "hf", "sto-3g"),  # radicals
    ("-4 1\nO 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n--\n0 1\nHe 0 0 4", "mopac", "pm7", None),  # 12 in 6
    ("8 1\nO 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n--\n0 1\nHe 0 0 4", "mopac", "pm7", None),  # 0 valence
    ("-1 1\nBr 0 0 0\n--\n0 1\nO 0 0 3.2\nH 0.757 0.586 3.2\nH -0.757 0.586 3.2", "mopac", "pm7", None),
    ("-1 1\nBr 0 0 0\n--\n0 1\nO 0 0 3.2\nH 0.757 0.586 3.2\nH -0.757 0.586 3.2", "pyscf", "hf", "cc-pvdz"),
], ids=["K+ lanl2dz pyscf", "K+ lanl2dz nwchem", "Rb+ def2-svp", "water -4 sto-3g", "OH radicals",
        "water -4 pm7", "water +8 pm7", "Br- pm7", "Br- cc-pvdz"])
def test_valid_inputs_are_not_refused(molecule: str, program: str, method: str, basis: str | None) -> None:
    require_module("pyscf") if program == "pyscf" else require_program(program)
    assert _plan(molecule, program, method, basis) == 3  # two monomers and the dimer (NoCP)


def test_one_electron_more_than_fits_is_refused() -> None:
    """The boundary, counted by hand: water in STO-3G has 7 functions (O 1s 2s 2p; H 1s): 14 electrons fit."""
    require_module("pyscf")
    base = "{c} {m}\nO 0 0 0\nH 0.757 0.586 0\nH -0.757 0.586 0\n--\n0 1\nHe 0 0 4"
    assert _plan(base.format(c=-4, m=1), "pyscf", "hf", "sto-3g") == 3
    with pytest.raises(InputError, match=r"15 electrons \(8 of one spin\) but only 7 basis functions"):
        _plan(base.format(c=-5, m=2), "pyscf", "hf", "sto-3g")
    # Triplet with 14 electrons: 8 alpha in 7 functions cannot be.
    with pytest.raises(InputError, match=r"14 electrons \(8 of one spin\) but only 7 basis functions"):
        _plan(base.format(c=-4, m=3), "pyscf", "hf", "sto-3g")


def test_unused_spec_for_a_missing_program_runs_like_qcmanybody(tmp_path: Path) -> None:
    """QCManyBody's multilevel test inputs carry specs no level uses (CFOUR here, not installed): run them."""
    import qcengine
    from qcmanybody.v2 import ManyBodyComputer

    require_program("nwchem")
    assert "cfour" not in qcengine.list_available_programs()
    he2 = Molecule.from_data("He 0 0 0\n--\nHe 0 0 2.0")
    specs = {"nwc-hf": {"program": "nwchem", "model": {"method": "hf", "basis": "6-31g"}, "driver": "energy",
                        "keywords": {}}}
    both = {**specs, "c4-hf": {"program": "cfour", "model": {"method": "hf", "basis": "6-31g"}, "driver": "energy",
                               "keywords": {}}}

    def make(spec: dict[str, Any]) -> ManyBodyInput:
        return ManyBodyInput(molecule=he2, specification={
            "driver": "energy", "keywords": {"bsse_type": ["nocp"], "levels": {2: "nwc-hf"}},
            "specification": spec})

    ours = qcmb_async.run(make(both), store=None)
    reference = ManyBodyComputer.from_manybodyinput(make(specs))  # sequential: qcng.compute per fragment
    assert len(ours.extras["qcmb_async"]["fragments"]) == 3
    assert ours.properties.return_energy == pytest.approx(reference.properties.return_energy, abs=1e-9)
    interaction = ours.properties.nocp_corrected_interaction_energy_through_2_body
    assert interaction == pytest.approx(reference.properties.nocp_corrected_interaction_energy_through_2_body,
                                        abs=1e-9)


def test_scratch_directory_expands_like_qcengine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qcengine.config import parse_environment

    from qcmb_async._core.options import make_options

    (tmp_path / "home").mkdir()
    (tmp_path / "scratch").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MY_SCRATCH", str(tmp_path / "scratch"))
    for given in ("$MY_SCRATCH", "${MY_SCRATCH}", "~", str(tmp_path / "scratch")):
        expected = parse_environment({"scratch_directory": given})["scratch_directory"]
        assert make_options(scratch_directory=given).scratch_directory == expected


def test_no_scratch_directory_leaves_qcengines_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a scratch_directory QCEngine's own setting (QCENGINE_SCRATCH_DIRECTORY) applies."""
    import qcengine

    from qcmb_async._core.options import make_options
    from qcmb_async._core.scheduler import _task_config

    monkeypatch.setenv("QCENGINE_SCRATCH_DIRECTORY", str(tmp_path))
    config = _task_config(make_options(ncores=1, memory=1.0))
    assert "scratch_directory" not in config
    assert qcengine.config.get_config(task_config=config).scratch_directory == str(tmp_path)
    given = _task_config(make_options(ncores=1, memory=1.0, scratch_directory=str(tmp_path / "..")))
    assert qcengine.config.get_config(task_config=given).scratch_directory == str(tmp_path / "..")


def test_install_hints_name_no_package_that_does_not_exist() -> None:
    from qcmb_async._core.checks import install_hint

    assert "cfour.de" in install_hint("cfour") and "apt-get" not in install_hint("cfour")
    assert "commercial" in install_hint("qchem") and "pip" not in install_hint("qchem")
    assert install_hint("nwchem").startswith("apt-get install nwchem")


def test_multiplicity_help_says_what_the_default_is() -> None:
    from typer.testing import CliRunner

    from qcmb_async.cli import app

    res = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    text = " ".join(res.output.replace("\u2502", " ").split())  # without the box's side lines
    assert "Default 1." not in text
    assert re.search(r"1 for an even and 2 for an odd electron count", text), text


def test_store_argument_of_the_wrong_kind_is_refused_before_workers_start() -> None:
    from qcmb_async import run

    with pytest.raises(InputError, match="store= must be a file path, 'default' or None, got 5"):
        run(mbe(), store=5)
