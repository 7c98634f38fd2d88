"""Store keys are the strings of the documented recipe (docs/store.md), however they are computed.

Every existing store is addressed by these keys: a faster key that differed by one byte would make every
stored result unreachable. The expected keys are made here from the recipe itself, written out in the test:
SHA-256 of ``json.dumps({"v": 2, "program": <program, lower case>, "version": <its version>,
"input": <the AtomicInput's JSON without id and provenance, parsed>}, sort_keys=True)``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from qcelemental.models.v2 import AtomicInput, Molecule

from qcmb_async._core.plan import fragment_key, make_plan
from qcmb_async._core.versions import program_version
from tests.helpers import mbe_input, multilevel_input, trimer, waters


def _recipe(program: str, atomic: Any, version: str) -> str:
    """The key as docs/store.md describes it (KEY_VERSION 2), from the model's own JSON text."""
    canonical = json.loads(atomic.model_dump_json(exclude={"id", "provenance"}))
    payload = json.dumps({"v": 2, "program": program.lower(), "version": version, "input": canonical},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@pytest.mark.parametrize(("program", "method", "basis", "bsse"), [
    ("tblite", "gfn2-xtb", None, "nocp"), ("mopac", "pm7", None, "cp"), ("nwchem", "hf", "sto-3g", "vmfc")])
def test_job_keys_follow_the_recipe(program: str, method: str, basis: str | None, bsse: str) -> None:
    plan = make_plan(mbe_input(program, method, basis, bsse=bsse, max_nbody=3, molecule=waters(4)))
    version = program_version(program)
    for frag in plan.fragments:
        job = plan.materialise(frag)
        assert job.key == _recipe(frag.program, job.atomic_input, version), frag.label


def test_multilevel_keys_follow_the_recipe() -> None:
    plan = make_plan(multilevel_input())
    for frag in plan.fragments:
        job = plan.materialise(frag)
        assert job.key == _recipe(frag.program, job.atomic_input, program_version(frag.program)), frag.label


def test_keys_of_awkward_inputs_follow_the_recipe() -> None:
    """Keywords and extras of every JSON kind (nested, unicode, tiny and huge floats, negative zero, tuples,
    infinities, which JSON writes as null), a program name in capitals, versions with odd characters."""
    mol: Molecule = trimer()
    spec = {"program": "psi4", "driver": "gradient", "model": {"method": "B3LYP-D3(BJ)", "basis": "def2-svp"},
            "keywords": {"scf_type": "df", "e_convergence": 1e-10, "big": 1.5e300, "neg": -0.0, "n": 10**20,
                         "nested": {"b": [1, (2, 3)], "a": "ångström \u2603 \"quoted\""}, "inf": float("inf"),
                         "function_kwargs": {"external_potentials": [[-0.834, [0.1, -2.0e-7, 3.25]]]}},
            "extras": {"z": None, "a": True}}
    atomic = AtomicInput(molecule=mol.model_copy(update={"extras": {"embedding_charges": [[0.417, [1.0, 2.0, 3.0]]]}}),
                         specification=spec)
    for program, version in (("psi4", "1.3.2"), ("Psi4", "unknown"), ("psi4", "1.9+harness.2 \"é\"\\")):
        expected = _recipe(program, atomic, version)
        assert fragment_key(program, atomic.model_dump(), version) == expected
    # A key differs when any part of the recipe does (the test would notice a recipe that ignored one).
    assert len({_recipe("psi4", atomic, "1"), _recipe("psi4", atomic, "2"), _recipe("nwchem", atomic, "1")}) == 3
