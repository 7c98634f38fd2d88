"""qcmb_async returns what QCManyBody's sequential computer returns, on real programs."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import qcengine
from qcengine.programs.mopac import MopacHarness
from qcmanybody.models.v2 import ManyBodyInput
from qcmanybody.v2 import ManyBodyComputer

from qcmb_async import run
from tests.helpers import mbe_input, multilevel_input, require_program

TOL = 1e-9


class MopacWithGradientProperty(MopacHarness):
    """Reference-only MOPAC: also fills ``properties.return_gradient`` so QCManyBody's own
    sequential computer can run gradients (it fails with KeyError 'ret_gradient' otherwise)."""

    _defaults: ClassVar[dict[str, Any]] = {**MopacHarness._defaults, "name": "mopac-ref"}

    def compute(self, input_model: Any, config: Any) -> Any:
        res = super().compute(input_model, config)
        if input_model.specification.driver == "gradient" and res.properties.return_gradient is None:
            res = res.model_copy(update={"properties": res.properties.model_copy(
                update={"return_gradient": res.return_result,
                        "calcinfo_natom": len(input_model.molecule.symbols)})})
        return res


def _register_ref() -> None:
    from qcengine.programs.base import programs

    if "mopac-ref" not in programs:
        qcengine.register_program(MopacWithGradientProperty())


def _with_program(inp: ManyBodyInput, program: str) -> ManyBodyInput:
    data = inp.model_dump()
    for spec in data["specification"]["specification"].values():
        spec["program"] = program
    return ManyBodyInput(**data)


def sequential(inp: ManyBodyInput) -> Any:
    if any(s.program == "nwchem" for s in inp.specification.specification.values()):
        # qcmb_async sends NWChem fragments with fix_symmetry c1 (computed as given: tests/test_frames.py);
        # QCManyBody's computer does the same when the parent molecule says c1.
        data = inp.model_dump()
        data["molecule"] = inp.molecule.model_copy(update={"fix_symmetry": "c1"})
        inp = ManyBodyInput(**data)
    if any(s.program == "mopac" for s in inp.specification.specification.values()) and \
            inp.specification.driver == "gradient":
        _register_ref()
        inp = _with_program(inp, "mopac-ref")
    return ManyBodyComputer.from_manybodyinput(inp)


def assert_same(ours: Any, ref: Any, tol: float = TOL) -> None:
    assert ours.success
    a, b = np.asarray(ours.return_result, dtype=float), np.asarray(ref.return_result, dtype=float)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=tol)
    pa, pb = ours.properties.model_dump(), ref.properties.model_dump()
    assert pa.keys() == pb.keys()
    for key, vb in pb.items():
        va = pa[key]
        if isinstance(vb, float):
            assert va == pytest.approx(vb, abs=tol), key
        elif isinstance(vb, dict):  # e.g. energy_body_dict
            assert va.keys() == vb.keys(), key
            for k2 in vb:
                np.testing.assert_allclose(np.asarray(va[k2], dtype=float), np.asarray(vb[k2], dtype=float),
                                           rtol=0, atol=tol, err_msg=f"{key}[{k2}]")
        elif vb is not None and not isinstance(vb, str | int):
            np.testing.assert_allclose(np.asarray(va, dtype=float), np.asarray(vb, dtype=float), rtol=0, atol=tol,
                                       err_msg=key)
        else:
            assert va == vb, key
    assert set(ours.cluster_properties) == set(ref.cluster_properties)


#: NoCP only: MOPAC's harness cannot place ghost atoms, so cp/vmfc are refused (PYSCF_RTD_CASES cover them).
MOPAC_CASES = [
    (bsse, nb, rtd, drv)
    for bsse in ("nocp",)
    for nb in (2, 3)
    for rtd in (False, True)
    for drv in ("energy", "gradient")
]


@pytest.mark.parametrize(("bsse", "max_nbody", "rtd", "driver"), MOPAC_CASES)
def test_mopac_matches_sequential(bsse: str, max_nbody: int, rtd: bool, driver: str) -> None:
    require_program("mopac")
    inp = mbe_input("mopac", "pm7", None, driver=driver, bsse=bsse, max_nbody=max_nbody,
                    mb_keywords={"return_total_data": rtd})
    assert_same(run(inp, ncores=2, memory=2), sequential(inp))


@pytest.mark.parametrize(("bsse", "driver"), [("cp", "energy"), ("cp", "gradient"), ("vmfc", "energy"),
                                             ("vmfc", "gradient")])
def test_pyscf_return_total_data_matches_sequential(bsse: str, driver: str) -> None:
    """CP/VMFC with return_total_data (what MOPAC covered before it was refused cp/vmfc), 2-body, HF/STO-3G."""
    require_program("pyscf")
    inp = mbe_input("pyscf", "hf", "sto-3g", driver=driver, bsse=bsse, max_nbody=2,
                    mb_keywords={"return_total_data": True})
    assert_same(run(inp, ncores=2, memory=2, executor="threads"), sequential(inp))


def test_mopac_supersystem_ie_only() -> None:
    require_program("mopac")
    inp = mbe_input("mopac", "pm7", None, bsse=["nocp"], max_nbody=3, mb_keywords={"supersystem_ie_only": True})
    ours = run(inp, ncores=2, memory=2)
    assert len(ours.cluster_properties) == 4
    assert_same(ours, sequential(inp))


def test_mopac_multilevel_with_supersystem() -> None:
    require_program("mopac")
    inp = multilevel_input()
    ours = run(inp, ncores=2, memory=2)
    assert {f["program"] for f in ours.extras["qcmb_async"]["fragments"]} == {"mopac"}
    assert_same(ours, sequential(inp))


@pytest.mark.parametrize(("bsse", "driver", "max_nbody"), [("cp", "energy", 3), ("nocp", "gradient", 2),
                                                           ("vmfc", "energy", 2)])
def test_nwchem_matches_sequential(bsse: str, driver: str, max_nbody: int) -> None:
    require_program("nwchem")
    inp = mbe_input("nwchem", "hf", "sto-3g", driver=driver, bsse=bsse, max_nbody=max_nbody)
    assert_same(run(inp, ncores=2, memory=2), sequential(inp))


@pytest.mark.parametrize(("bsse", "driver", "max_nbody"), [("cp", "energy", 3), ("nocp", "gradient", 2),
                                                           ("cp", "gradient", 2), ("vmfc", "energy", 3)])
def test_pyscf_matches_sequential(bsse: str, driver: str, max_nbody: int) -> None:
    require_program("pyscf")
    inp = mbe_input("pyscf", "hf", "sto-3g", driver=driver, bsse=bsse, max_nbody=max_nbody)
    assert_same(run(inp, ncores=2, memory=2, executor="threads"), sequential(inp))


def test_mopac_gradient_fix_is_needed() -> None:
    """QCManyBody's own computer fails on MOPAC gradients; qcmb_async does not."""
    require_program("mopac")
    inp = mbe_input("mopac", "pm7", None, driver="gradient", bsse="nocp", max_nbody=2)
    with pytest.raises(KeyError, match="ret_gradient"):
        ManyBodyComputer.from_manybodyinput(inp)
    assert np.asarray(run(inp, ncores=2, memory=2).return_result).shape == (9, 3)


@pytest.mark.parametrize("protocol", ["none", "all"])
def test_cluster_results_protocol_is_honoured(protocol: str) -> None:
    """By default QCManyBody drops fragment results (we keep only their numbers); "all" keeps them."""
    require_program("mopac")
    inp = mbe_input("mopac", "pm7", None, driver="gradient", bsse="nocp", max_nbody=2)
    data = inp.model_dump()
    data["specification"]["protocols"] = {"cluster_results": protocol}
    inp = ManyBodyInput(**data)
    ours, ref = run(inp, ncores=2, memory=2), sequential(inp)
    assert_same(ours, ref)
    assert set(ours.cluster_results) == set(ref.cluster_results)
    assert len(ours.cluster_results) == (6 if protocol == "all" else 0)
    for label, res in ref.cluster_results.items():
        np.testing.assert_allclose(ours.cluster_results[label].return_result, res.return_result, atol=1e-9)
