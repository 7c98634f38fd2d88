"""Every fragment is computed as given, in the input frame, and its derivatives are checked for that.

* NWChem (autosym would symmetrize and reorient) against PySCF (no symmetry: computes each fragment in the
  input frame), whole MBE results, HF/STO-3G with tight thresholds, for symmetric clusters of several point
  groups: Cs and C2h water dimers, a C3h water trimer, the linear (D-inf-h) HF dimer, T-shaped (C2v) He-H2;
  gradients CP and NoCP, analytic Hessians CP and NoCP, finite-difference Hessians (``frequencies``).
* Frame covariance of single fragments on every program here: the gradient of a rigidly rotated fragment is
  the rotated gradient (a textbook identity; ghost atoms included where the program has them).
* The invariance guard: textbook pair-potential derivatives pass and rotated ones fail; a FAKE harness that
  returns a rotated or shifted gradient (or a broken Hessian) fails the fragment with ``InvarianceError``
  and a message saying what is wrong; the registry's tolerances are the documented ones and hold with room to
  spare for results measured here; a failed finite-difference fragment is named by label and displacement.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import qcengine
from qcelemental.models.v2 import AtomicInput, AtomicProperties, AtomicResult, Molecule

from qcmb_async import FragmentError, frequencies_sync, run
from qcmb_async._core.invariance import check, violations
from qcmb_async.harnesses.pyscf import PySCFHarness
from qcmb_async.programs import INVARIANCE_TOLERANCE, PROGRAMS, traits
from tests.helpers import mbe_input, require_program

NWCHEM_TIGHT = {"scf__thresh": 1e-10, "scf__tol2e": 1e-14}
PYSCF_TIGHT = {"conv_tol": 1e-12, "conv_tol_grad": 1e-9}
PSI4_TIGHT = {"scf_type": "pk", "e_convergence": 1e-10, "d_convergence": 1e-10}
KEYWORDS = {"nwchem": NWCHEM_TIGHT, "pyscf": PYSCF_TIGHT, "psi4": PSI4_TIGHT, "mopac": {}}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"


def _water(center: tuple[float, float, float], angle: float) -> list[tuple[str, np.ndarray]]:
    """A planar water (Å) in the xy plane, rotated by ``angle`` about z, its O at ``center``."""
    pts = np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]])
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return [(sym, rot @ p + np.asarray(center)) for sym, p in zip("OHH", pts, strict=True)]


def _block(atoms: list[tuple[str, np.ndarray]]) -> str:
    return "\n".join(f"{sym} {x:.6f} {y:.6f} {z:.6f}" for sym, (x, y, z) in atoms)


#: Planar water dimer of the quickstart (Cs).
CS = """
O  -1.551007  -0.114520   0.000000
H  -1.934259   0.762503   0.000000
H  -0.599677   0.040712   0.000000
--
O   1.350625   0.111469   0.000000
H   1.680398  -0.373741  -0.758561
H   1.680398  -0.373741   0.758561
"""
_W = _water((-1.5, 0.3, 0.0), 0.4)
#: Planar water dimer with an inversion centre (C2h).
C2H = _block(_W) + "\n--\n" + _block([(s, -p) for s, p in _W])
#: Three planar waters related by 120° rotations about z (C3h; written to 6 decimals, so only nearly).
C3H = "\n--\n".join(_block(_water((2.4 * np.cos(t), 2.4 * np.sin(t), 0.0), t + 0.3))
                    for t in (0.0, 2 * np.pi / 3, 4 * np.pi / 3))
#: Linear symmetric HF dimer H-F...F-H (D-inf-h).
DINFH = "H 0 0 -2.3\nF 0 0 -1.4\n--\nF 0 0 1.4\nH 0 0 2.3"
#: T-shaped He...H2 (C2v): small enough for finite differences on NWChem.
HEH2 = "H -0.37 0 0\nH 0.37 0 0\n--\nHe 0 0 2.8"
MOLECULES = {"Cs": CS, "C2h": C2H, "C3h": C3H, "Dinfh": DINFH, "C2v": HEH2}


def _input(program: str, name: str, driver: str, bsse: str) -> Any:
    return mbe_input(program, "hf", "sto-3g", driver=driver, bsse=bsse, max_nbody=2,
                     molecule=Molecule.from_data(MOLECULES[name]), keywords=KEYWORDS[program],
                     mb_keywords={"return_total_data": True})


def _mbe(program: str, name: str, driver: str, bsse: str) -> Any:
    executor = "threads" if program == "pyscf" else "auto"
    return run(_input(program, name, driver, bsse), ncores=2, memory=2, store=None, executor=executor)


# -- NWChem computes every fragment as given ---------------------------------------------------------------------


@pytest.mark.parametrize(("program", "name", "bsse"), [
    ("nwchem", "Cs", "cp"), ("nwchem", "Cs", "nocp"), ("nwchem", "C2h", "cp"), ("nwchem", "C3h", "cp"),
    ("nwchem", "Dinfh", "cp"), ("psi4", "Cs", "cp"),
])
def test_mbe_gradient_equals_pyscf(program: str, name: str, bsse: str) -> None:
    require_program(program)
    require_program("pyscf")
    ours, ref = _mbe(program, name, "gradient", bsse), _mbe("pyscf", name, "gradient", bsse)
    assert ours.properties.return_energy == pytest.approx(ref.properties.return_energy, abs=1e-8)
    grad, expected = np.asarray(ours.return_result), np.asarray(ref.return_result)
    assert np.abs(expected).max() > 1e-3  # real forces, not zeros
    # Before: NWChem's CP gradient of the Cs dimer was off by 0.11 Eh/bohr, the C3h trimer's by 9e-7.
    np.testing.assert_allclose(grad, expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("bsse", ["cp", "nocp"])
def test_nwchem_analytic_hessian_and_frequencies_equal_pyscf(bsse: str) -> None:
    require_program("nwchem")
    require_program("pyscf")
    from qcmb_async import frequencies_sync

    inp = _input("nwchem", "Cs", "hessian", bsse)
    freq = frequencies_sync(inp, method="analytic", ncores=2, memory=2, store=None)
    ref = frequencies_sync(_input("pyscf", "Cs", "hessian", bsse), method="analytic", ncores=2, memory=2,
                           store=None, executor="threads")
    # Before: CP frequencies were off by thousands of cm-1.
    np.testing.assert_allclose(freq.hessian, ref.hessian, rtol=0, atol=1e-6)
    np.testing.assert_allclose(freq.frequencies, ref.frequencies, rtol=0, atol=0.1)


def test_nwchem_finite_difference_hessian_equals_pyscf() -> None:
    """CP finite differences: displaced, nearly symmetric fragments (ghosts included) are computed as displaced.

    Reference: the same central differences over PySCF's MBE gradients (the same O(step²) error, 2e-5 here),
    and PySCF's analytic MBE Hessian within that error.
    """
    require_program("nwchem")
    require_program("pyscf")
    options: dict[str, Any] = {"method": "finite-difference", "ncores": 2, "memory": 2, "store": None}
    freq = frequencies_sync(_input("nwchem", "C2v", "gradient", "cp"), **options)
    ref = frequencies_sync(_input("pyscf", "C2v", "gradient", "cp"), **options, executor="threads")
    np.testing.assert_allclose(freq.hessian, ref.hessian, rtol=0, atol=1e-7)
    np.testing.assert_allclose(freq.frequencies, ref.frequencies, rtol=0, atol=0.01)
    analytic = np.asarray(_mbe("pyscf", "C2v", "hessian", "cp").return_result)
    np.testing.assert_allclose(freq.hessian, (analytic + analytic.T) / 2, rtol=0, atol=5e-5)


# -- every program returns derivatives in the frame it was given ------------------------------------------------


def _rotation() -> np.ndarray:
    """A rotation about an axis of no symmetry, by 0.7 rad (Rodrigues' formula)."""
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(0.7) * k + (1 - np.cos(0.7)) * k @ k


def _gradient(program: str, mol: Molecule) -> np.ndarray:
    model = {"method": "pm7", "basis": None} if program == "mopac" else {"method": "hf", "basis": "sto-3g"}
    inp = AtomicInput(molecule=mol, specification={"driver": "gradient", "model": model,
                                                    "keywords": KEYWORDS[program]})
    res = qcengine.compute(inp, program, raise_error=True, task_config={"ncores": 1, "memory": 0.5})
    assert isinstance(res, AtomicResult)
    return np.asarray(res.return_result, dtype=float).reshape(-1, 3)


@pytest.mark.parametrize("program", ["nwchem", "psi4", "pyscf", "mopac"])
def test_fragment_gradient_turns_with_the_fragment(program: str) -> None:
    """g(R r) = R g(r): the Cs dimer's first water in the basis of the second (ghosts; MOPAC: the dimer)."""
    require_program(program)
    from qcmb_async._core.plan import make_plan

    inp = mbe_input(program, "hf", "sto-3g", driver="gradient", bsse="cp" if program != "mopac" else "nocp",
                    max_nbody=2, molecule=Molecule.from_data(CS), keywords=KEYWORDS[program])
    plan = make_plan(inp)
    frag = next(f for f in plan.fragments if (f.real, f.basis) == (((1,), (1, 2)) if program != "mopac"
                                                                    else ((1, 2), (1, 2))))
    mol = plan.molecule(frag)  # what qcmb_async sends the program
    rot = _rotation()
    turned = mol.model_copy(update={"geometry": np.asarray(mol.geometry) @ rot.T})
    g, g_turned = _gradient(program, mol), _gradient(program, turned)
    assert np.abs(g).max() > 1e-3
    # MOPAC's default SCF (its harness takes no convergence keyword) converges turned geometries to 7e-6 Eh/bohr
    # apart; a gradient left in another frame is off by 1e-2 here.
    np.testing.assert_allclose(g_turned, g @ rot.T, rtol=0, atol=2e-5 if program == "mopac" else 1e-7)


# -- the invariance guard ----------------------------------------------------------------------------------------


def _pair_potential(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian of E = sum_{i<j} (|r_i - r_j| - 1)² / 2 (textbook, written here)."""
    n = len(r)
    g = np.zeros((n, 3))
    h = np.zeros((n, 3, n, 3))
    for i in range(n):
        for j in range(i + 1, n):
            d = r[i] - r[j]
            dist = np.linalg.norm(d)
            u = d / dist
            g[i] += (dist - 1) * u
            g[j] -= (dist - 1) * u
            block = np.outer(u, u) + (dist - 1) / dist * (np.eye(3) - np.outer(u, u))
            h[i, :, i, :] += block
            h[j, :, j, :] += block
            h[i, :, j, :] -= block
            h[j, :, i, :] -= block
    return g, h.reshape(3 * n, 3 * n)


def test_violations_of_textbook_derivatives() -> None:
    r = np.random.default_rng(7).normal(size=(5, 3)) * 2
    g, h = _pair_potential(r)
    ok = violations(r, g, h)
    assert set(ok) == {"net_force", "torque", "hessian_translation", "hessian_rotation"}
    assert max(ok.values()) < 1e-12
    rot = _rotation()
    turned = violations(r, g @ rot.T, h)  # gradient in another frame
    assert turned["net_force"] < 1e-12 and turned["torque"] > 1e-2 and turned["hessian_rotation"] > 1e-2
    shifted = violations(r, g + np.array([0.0, 0.0, 1e-3]), h)
    assert shifted["net_force"] == pytest.approx(5e-3)
    bad_h = h.copy()
    bad_h[0, 4] += 1e-2
    bad_h[4, 0] += 1e-2
    assert violations(r, g, bad_h)["hessian_translation"] == pytest.approx(1e-2)
    # the same Hessian turned block by block keeps its translation sums but breaks the rotation condition
    big = np.kron(np.eye(5), rot)
    assert violations(r, g, big @ h @ big.T)["hessian_rotation"] > 1e-2


class FakeTurnedPySCF(PySCFHarness):
    """FAKE program: PySCF's result with the gradient (and Hessian) turned into another frame, as a harness
    that reoriented the molecule and did not turn back would return; ``keywords["fake_shift"]`` instead adds a
    constant force to every atom; ``keywords["fake_hessian"]`` breaks one Hessian element (``"turn"``: turns
    its 3x3 blocks and drops the gradient)."""

    _defaults: ClassVar[dict[str, Any]] = {**PySCFHarness._defaults, "name": "qcmb-fake-turned"}

    def compute(self, input_data: Any, config: Any) -> AtomicResult:
        kw = dict(input_data.specification.keywords)
        shift = kw.pop("fake_shift", None)
        hess_fault = kw.pop("fake_hessian", False)
        real = input_data.model_copy(update={"specification": input_data.specification.model_copy(
            update={"keywords": kw})})
        res = super().compute(real, config)
        props = res.properties.model_dump(exclude_none=True)
        rot = _rotation()
        if props.get("return_gradient") is not None and not hess_fault:
            g = np.asarray(props["return_gradient"]).reshape(-1, 3)
            g = g + np.asarray(shift) if shift is not None else g @ rot.T
            props["return_gradient"] = g
            if res.input_data.specification.driver == "gradient":
                return res.model_copy(update={"properties": AtomicProperties(**props), "return_result": g})
        if props.get("return_hessian") is not None:
            h = np.array(props["return_hessian"])
            if hess_fault == "turn":  # blocks in another frame, and no gradient to compare with (as NWChem's)
                big = np.kron(np.eye(len(h) // 3), rot)
                h = big @ h @ big.T
                props.pop("return_gradient", None)
                props.pop("scf_total_gradient", None)
            else:
                h[0, 4] += 0.05
                h[4, 0] += 0.05
            props["return_hessian"] = h
            return res.model_copy(update={"properties": AtomicProperties(**props), "return_result": h})
        return res


@pytest.fixture
def fake_turned() -> Any:
    from qcengine.programs.base import programs

    qcengine.register_program(FakeTurnedPySCF())
    yield "qcmb-fake-turned"
    programs.pop("qcmb-fake-turned", None)


@pytest.mark.parametrize(("driver", "keywords", "expected"), [
    ("gradient", {}, "torque on the fragment"),
    ("gradient", {"fake_shift": [0.0, 2e-3, 0.0]}, "net force on the fragment 0.0"),
    ("hessian", {"fake_hessian": True}, "Hessian row-block sum"),
    ("hessian", {"fake_hessian": "turn"}, "Hessian rotation condition"),
])
def test_guard_fails_a_fragment_in_another_frame(fake_turned: str, driver: str, keywords: dict[str, Any],
                                                 expected: str) -> None:
    require_program("pyscf")
    inp = mbe_input(fake_turned, "hf", "sto-3g", driver=driver, bsse="cp", max_nbody=2,
                    molecule=Molecule.from_data(CS), keywords={**PYSCF_TIGHT, **keywords})
    with pytest.raises(FragmentError) as info:
        run(inp, ncores=2, memory=2, store=None, executor="threads")
    err = info.value
    assert err.error_type == "InvarianceError"
    assert expected in err.error_message and "tolerance" in err.error_message
    assert "reoriented" in err.error_message  # says what likely went wrong
    assert re.fullmatch(r'\["\(auto\)", \[\d\], \[[\d, ]+\]\]', err.label)


def test_guard_keeps_correct_results_and_judges_stored_ones(fake_turned: str, tmp_path: Any) -> None:
    """The same fragments unturned pass; a stored result that fails the check is computed again."""
    require_program("pyscf")
    store = tmp_path / "store.sqlite"
    good = run(mbe_input("pyscf", "hf", "sto-3g", driver="gradient", bsse="cp", max_nbody=2,
                         molecule=Molecule.from_data(CS), keywords=PYSCF_TIGHT),
               ncores=2, memory=2, store=str(store), executor="threads")
    meta = good.extras["qcmb_async"]
    assert all(f["status"] == "ok" for f in meta["fragments"])
    # corrupt one stored gradient (turned into another frame): the next run must not reuse it
    import json

    from qcmb_async._core.plan import make_plan
    from qcmb_async._core.store import ResultStore

    plan = make_plan(mbe_input("pyscf", "hf", "sto-3g", driver="gradient", bsse="cp", max_nbody=2,
                               molecule=Molecule.from_data(CS), keywords=PYSCF_TIGHT))
    frag = next(f for f in plan.fragments if f.level == 1 and len(f.basis) == 2)
    key = plan.materialise(frag).key
    rs = ResultStore(store)
    data = rs.get_many([key])[key]
    g = np.asarray(data["return_result"]).reshape(-1, 3) @ _rotation().T
    data["return_result"] = g.tolist()
    data["properties"]["return_gradient"] = g.tolist()
    rs.put(key, label=frag.label, level=frag.level, program="pyscf", result_json=json.dumps(data), run_id="test",
           attempts=[])
    rs.close()
    again = run(mbe_input("pyscf", "hf", "sto-3g", driver="gradient", bsse="cp", max_nbody=2,
                          molecule=Molecule.from_data(CS), keywords=PYSCF_TIGHT),
                ncores=2, memory=2, store=str(store), executor="threads")
    statuses = [f["status"] for f in again.extras["qcmb_async"]["fragments"]]
    assert statuses.count("ok") == 1 and statuses.count("cached") == len(statuses) - 1
    np.testing.assert_allclose(np.asarray(again.return_result), np.asarray(good.return_result), rtol=0, atol=1e-8)


def test_failed_finite_difference_fragment_is_named_by_label_and_displacement(fake_turned: str) -> None:
    require_program("pyscf")
    inp = mbe_input(fake_turned, "hf", "sto-3g", driver="gradient", bsse="nocp", max_nbody=2,
                    molecule=Molecule.from_data(HEH2), keywords=PYSCF_TIGHT)
    with pytest.raises(FragmentError) as info:
        frequencies_sync(inp, method="finite-difference", ncores=1, memory=1, store=None, executor="threads")
    label = info.value.label
    assert re.fullmatch(r'\["\(auto\)", \[[\d, ]+\], \[[\d, ]+\]\] at (the reference geometry|displacement '
                        r'\d+ of 18 \(atom \d [xyz] [+-]0\.005 bohr\))', label), label
    assert label in str(info.value) and "InvarianceError" in str(info.value)


# -- tolerances: as documented, and met by real results with room to spare --------------------------------------


def test_registry_tolerances_are_the_documented_ones() -> None:
    text = DOCS.read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| `\(([^)]*)\)` \|", text, flags=re.MULTILINE))
    assert table, "docs/troubleshooting.md lists the invariance tolerances"
    default = table.pop("default")
    assert tuple(float(x) for x in default.split(",")) == INVARIANCE_TOLERANCE
    for name, value in table.items():
        assert PROGRAMS[name].invariance_tolerance == tuple(float(x) for x in value.split(",")), name
    for name, entry in PROGRAMS.items():
        if entry.invariance_tolerance != INVARIANCE_TOLERANCE:
            assert name in table, f"{name}'s own tolerance is not documented"


@pytest.mark.parametrize(("program", "method", "basis", "driver", "keywords"), [
    ("pyscf", "b3lyp", "6-31g", "gradient", {}),      # default grids: the largest break measured
    ("pyscf", "mp2", "6-31g", "gradient", {}),
    ("pyscf", "hf", "sto-3g", "hessian", {}),
    ("nwchem", "hf", "sto-3g", "gradient", {}),
    ("psi4", "hf", "sto-3g", "gradient", {"scf_type": "pk"}),
    ("mopac", "pm7", None, "gradient", {}),
])
def test_measured_breaks_are_well_inside_the_tolerance(program: str, method: str, basis: str | None,
                                                       driver: str, keywords: dict[str, Any]) -> None:
    """A CP fragment (the Cs dimer's first water in the dimer basis; MOPAC: the dimer) at default settings."""
    require_program(program)
    from qcmb_async._core.plan import make_plan

    inp = mbe_input(program, method, basis, driver=driver, bsse="cp" if program != "mopac" else "nocp",
                    max_nbody=2, molecule=Molecule.from_data(CS), keywords=keywords)
    plan = make_plan(inp)
    frag = next(f for f in plan.fragments if f.level == 1 and len(f.basis) == 2) if program != "mopac" else \
        next(f for f in plan.fragments if f.level == 2)
    job = plan.materialise(frag)
    res = qcengine.compute(job.atomic_input, program, raise_error=True, task_config={"ncores": 1, "memory": 1})
    props = res.properties
    found = violations(job.atomic_input.molecule.geometry, props.return_gradient if props.return_gradient is not None
                       else res.return_result, props.return_hessian)
    grad_tol, hess_tol = traits(program).invariance_tolerance or (0.0, 0.0)
    for name, value in found.items():
        limit = hess_tol if name.startswith("hessian") else grad_tol
        assert value < limit / 5, (name, value, limit)
    assert check(program, job.atomic_input, res) is None
