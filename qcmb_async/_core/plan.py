"""Plan stage: QCManyBody enumerates the fragments; we turn each into a runnable job."""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from qcmanybody.models.v2 import ManyBodyInput
from qcmanybody.utils import delabeler

#: Bumped when the way fragment keys are computed changes (keys index the result store).
KEY_VERSION = 1


@dataclass(frozen=True)
class Fragment:
    """One QC calculation of the expansion."""

    label: str
    """QCManyBody's label: ``'["<model chem>", [real fragments], [basis fragments]]'``."""
    level: int
    """n-body level: the number of real fragments."""
    mc: str
    """Model-chemistry key of ``specification.specification`` (``"(auto)"`` for one level)."""
    program: str
    molecule: Any
    """The fragment's QCElemental ``Molecule`` (v2); ghost atoms have ``real=False``."""
    atomic_input: dict[str, Any]
    """QCSchema v2 ``AtomicInput`` as a dict, exactly what QCManyBody's own loop would run."""
    key: str
    """Content hash of program + input: identical fragments share it across runs."""
    cost: float
    """Relative cost estimate (see :func:`estimate_cost`)."""

    @property
    def real(self) -> list[int]:
        return list(delabeler(self.label)[1])

    @property
    def basis(self) -> list[int]:
        return list(delabeler(self.label)[2])


@dataclass
class Plan:
    """The planned run: QCManyBody's computer (needed to assemble) and the fragments."""

    input: ManyBodyInput
    computer: Any
    """``qcmanybody.v2.ManyBodyComputer`` built with ``build_tasks=False``."""
    fragments: list[Fragment] = field(default_factory=list)

    @property
    def input_hash(self) -> str:
        """Content hash of the ManyBodyInput (identifies 'the same run' in the result store)."""
        return hashlib.sha256(self.input.model_dump_json().encode()).hexdigest()

    def by_level(self) -> dict[int, list[Fragment]]:
        """Fragments grouped by n-body level, levels ascending."""
        out: dict[int, list[Fragment]] = {}
        for frag in sorted(self.fragments, key=lambda f: f.level):
            out.setdefault(frag.level, []).append(frag)
        return out

    def counts(self) -> dict[tuple[int, str], int]:
        """Number of fragments per (level, model chemistry)."""
        return dict(sorted(Counter((f.level, f.mc) for f in self.fragments).items()))

    @property
    def programs(self) -> set[str]:
        return {f.program for f in self.fragments}


def estimate_cost(natoms_with_basis: int) -> float:
    """SCF-like cost: cubic in the number of atoms that carry basis functions (real or ghost)."""
    return float(natoms_with_basis) ** 3


def fragment_key(program: str, atomic_input: dict[str, Any]) -> str:
    """Canonical content hash of a fragment calculation (geometry, ghosts, charge, spec...)."""
    from qcelemental.models.v2 import AtomicInput

    canonical = AtomicInput(**copy.deepcopy(atomic_input)).model_dump_json(exclude={"id", "provenance"})
    payload = json.dumps({"v": KEY_VERSION, "program": program.lower(), "input": json.loads(canonical)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _specifications(computer: Any) -> dict[str, dict[str, Any]]:
    # Same extraction as qcmanybody.v2.ManyBodyComputer.from_manybodyinput's own loop.
    specs: dict[str, dict[str, Any]] = {}
    for mc, spec in computer.input_data.specification.specification.items():
        data = spec.model_dump()
        program = data.pop("program")
        data["driver"] = computer.driver  # the many-body driver overrides the atomic one
        data.pop("schema_name", None)
        specs[mc] = {"program": program, "specification": data}
    return specs


def make_plan(inp: ManyBodyInput) -> Plan:
    """Plan ``inp`` with QCManyBody (CPU-bound: call it off the event loop)."""
    from qcelemental.models.v2 import AtomicInput
    from qcmanybody.v2 import ManyBodyComputer

    computer = ManyBodyComputer.from_manybodyinput(inp, build_tasks=False)
    specs = _specifications(computer)
    fragments: list[Fragment] = []
    for mc, label, mol in computer.qcmb_core.iterate_molecules():
        program = specs[mc]["program"]
        atomic = AtomicInput(molecule=mol, specification=copy.deepcopy(specs[mc]["specification"]))
        if mol.extras.get("embedding_charges"):
            if program != "psi4":
                raise RuntimeError(f"Don't know how to handle external charges in {program}")
            fkw = atomic.specification.keywords.get("function_kwargs", {})
            fkw.update({"external_potentials": mol.extras["embedding_charges"]})
            atomic.specification.keywords["function_kwargs"] = fkw
        data = atomic.model_dump()
        _, real, _basis = delabeler(label)
        fragments.append(
            Fragment(
                label=label,
                level=len(real),
                mc=mc,
                program=program,
                molecule=mol,
                atomic_input=data,
                key=fragment_key(program, data),
                cost=estimate_cost(len(mol.symbols)),
            )
        )
    return Plan(input=inp, computer=computer, fragments=fragments)
