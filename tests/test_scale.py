"""Planning and assembly at scale (issue 25): what changes for 679,120-label expansions keeps the answers.

* The plan's labels are QCManyBody's, in ``iterate_molecules`` order, also for model-chemistry
  names the direct label format must not take (quotes, non-ASCII: JSON escapes them).
* A result assembled above ``CLUSTER_PROPERTIES_LIMIT`` labels (per-label ``cluster_properties``
  left out) equals QCManyBody's sequential computer (energy, gradient, every n-body property) to
  1e-9, with real tblite fragments; below the limit ``cluster_properties`` are QCManyBody's.

Skipped without tblite, except under CI=true.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from qcmanybody.models.v2 import ManyBodyInput

import qcmb_async
from qcmb_async._core import assemble as assemble_mod
from qcmb_async._core.plan import make_plan
from tests.helpers import mbe_input, require_program, waters


def _multilevel(names: list[str]) -> ManyBodyInput:
    """Three model chemistries with the given names: 1-body, 2-body, 3-body (four waters)."""
    spec = {name: {"program": "psi4", "model": {"method": method, "basis": "sto-3g"}, "driver": "energy"}
            for name, method in zip(names, ("hf", "mp2", "b3lyp"), strict=True)}
    return ManyBodyInput(molecule=waters(4), specification={
        "driver": "energy", "specification": spec,
        "keywords": {"bsse_type": ["nocp", "cp", "vmfc"], "levels": {1: names[0], 2: names[1], 3: names[2]}}})


@pytest.mark.parametrize("names", [["a", "b", "c"], ['mp2 "x"', "é-level", "back\\slash"]],
                         ids=["plain", "escaped"])
def test_plan_labels_are_qcmanybodys_in_its_order(names: list[str]) -> None:
    plan = make_plan(_multilevel(names))
    expected = [label for _mc, label, _mol in plan.computer.qcmb_core.iterate_molecules()]
    assert [f.label for f in plan.fragments] == expected
    assert all(f.level == len(f.real) for f in plan.fragments)


def _sequential(inp: ManyBodyInput) -> Any:
    from qcmanybody.v2 import ManyBodyComputer

    return ManyBodyComputer.from_manybodyinput(inp, build_tasks=True)


def _grid(n: int) -> Any:
    """``n`` waters 2.9 Å apart on a zig-zag, each turned differently: every n-body term is non-zero."""
    from tests.test_tblite import waters_grid

    return waters_grid(n)


@pytest.mark.parametrize("limit", [0, 10**9], ids=["properties-omitted", "properties-kept"])
def test_large_assembly_equals_sequential_computer(limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    require_program("tblite")
    inp = mbe_input("tblite", "gfn2-xtb", None, driver="gradient", bsse="nocp", max_nbody=3, molecule=_grid(5),
                    mb_keywords={"return_total_data": True})
    reference = _sequential(inp)
    monkeypatch.setattr(assemble_mod, "CLUSTER_PROPERTIES_LIMIT", limit)
    ours = qcmb_async.run(inp, ncores=2, executor="threads", store=None)
    np.testing.assert_allclose(np.asarray(ours.return_result), np.asarray(reference.return_result), atol=1e-9, rtol=0)
    theirs = reference.properties.model_dump()
    mine = ours.properties.model_dump()
    compared = 0
    for key, value in theirs.items():
        if value is None or isinstance(value, str) or key == "calcinfo_nmbe":
            continue
        np.testing.assert_allclose(np.asarray(mine[key], dtype=float), np.asarray(value, dtype=float), atol=1e-9,
                                   rtol=0, err_msg=key)
        compared += 1
    assert compared > 10
    labels = len(reference.cluster_properties)
    assert labels == 5 + 10 + 10
    if limit == 0:
        assert ours.cluster_properties == {}
        assert ours.extras["qcmb_async"]["cluster_properties_omitted"] == labels
    else:
        assert set(ours.cluster_properties) == set(reference.cluster_properties)
        assert "cluster_properties_omitted" not in ours.extras["qcmb_async"]
        for label, props in reference.cluster_properties.items():
            assert abs(ours.cluster_properties[label].return_energy - props.return_energy) < 1e-9
