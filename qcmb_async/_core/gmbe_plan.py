"""A GMBE plan: the subsystems as ordinary scheduler fragments (capped ``AtomicInput``s built lazily)."""

from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .cost import fragment_size, method_exponent
from .gmbe import GMBEInput, Subsystem, bonds_of, capped_geometry, gmbe_subsystems
from .plan import Fragment, Job

#: Model-chemistry key of GMBE fragments (QCManyBody's labels have none: one model chemistry per GMBE).
MC = "gmbe"


@dataclass
class GMBEPlan:
    """What the :class:`~qcmb_async._core.scheduler.Scheduler` reads of a plan, for a GMBE.

    ``fragments[k]`` is ``subsystems[k]``; labels are ``"gmbe:<atom ranges>"`` (0-based), unique per run.
    """

    input: GMBEInput
    subsystems: list[Subsystem]
    fragments: list[Fragment]
    bonds: list[tuple[int, int]]
    summary: dict[int, dict[str, int]]
    """Per order: ``nmers``, ``family`` (distinct subsystems), ``cancelled`` (net coefficient 0)."""
    inline: bool = False
    keep_results: bool = False
    """Only each subsystem's properties are kept (assembly needs nothing else)."""
    screen: Any = None
    """No screened QCManyBody expansion (the Scheduler reads this)."""
    make_fragment: Any = None
    by_label: dict[str, Subsystem] = field(default_factory=dict)

    @property
    def driver(self) -> str:
        return self.input.driver

    @property
    def specs(self) -> dict[str, dict[str, Any]]:
        """One model chemistry, as :attr:`Plan.specs` (the runner reads the programs from it)."""
        return {MC: {"program": str(self.input.specification["program"]).lower(),
                     "specification": self.input.specification}}

    @functools.cached_property
    def input_hash(self) -> str:
        return hashlib.sha256(self.input.model_dump_json().encode()).hexdigest()

    @functools.cached_property
    def _spec(self) -> Any:
        from qcelemental.models.v2 import AtomicSpecification

        spec = copy.deepcopy(self.input.specification)
        spec.setdefault("driver", "energy")
        spec.setdefault("keywords", {})
        return AtomicSpecification(**spec)

    def molecule(self, sub: Subsystem) -> Any:
        """The capped subsystem's ``Molecule``: its atoms in parent order, then one H per cap; input frame."""
        from qcelemental.models.v2 import Molecule

        mol = self.input.molecule
        symbols = [str(mol.symbols[i]) for i in sub.atoms] + ["H"] * len(sub.caps)
        charges = self.input.atom_charges
        charge = float(sum(charges[i] for i in sub.atoms)) if charges else 0.0
        return Molecule(symbols=symbols, geometry=capped_geometry(sub, mol.geometry), molecular_charge=charge,
                        molecular_multiplicity=1, fix_com=True, fix_orientation=True, fix_symmetry="c1")

    def materialise(self, frag: Fragment) -> Job:
        from qcelemental.models.v2 import AtomicInput

        sub = self.by_label[frag.label]
        spec = self._spec.model_copy(update={"keywords": copy.deepcopy(self._spec.keywords),
                                             "extras": copy.deepcopy(self._spec.extras)})
        return Job(AtomicInput(molecule=self.molecule(sub), specification=spec), program=frag.program)


def _electrons(inp: GMBEInput, sub: Subsystem, z: np.ndarray | None = None) -> int:
    """Electrons of ``sub`` with its caps; ``z``: the molecule's atomic numbers (QCElemental computes them per call)."""
    z = np.asarray(inp.molecule.atomic_numbers) if z is None else z
    charge = sum(inp.atom_charges[i] for i in sub.atoms) if inp.atom_charges else 0
    return int(z[list(sub.atoms)].sum()) + len(sub.caps) - int(charge)


def plan_gmbe(inp: GMBEInput) -> GMBEPlan:
    """Enumerate the GMBE's subsystems (nonzero coefficients only), caps and fragments (blocking).

    Raises:
        InputError: a subsystem with an odd electron count (radical caps or charges that do not add up).
    """
    bonds = bonds_of(inp)
    summary: dict[int, dict[str, int]] = {}
    subs = gmbe_subsystems(inp, bonds, summary)
    z = np.asarray(inp.molecule.atomic_numbers)  # once: 5,050 calls cost 10 s at 1,003 atoms
    odd = [s for s in subs if _electrons(inp, s, z) % 2]
    if odd:
        first = odd[0]
        bonded = {a for bond in bonds for a in bond}
        lone = [i for i in range(len(inp.molecule.symbols)) if i not in bonded]
        # An atom bonded to nothing in a covalent molecule: its bonds were not found at this geometry, most often
        # because the coordinates are in the wrong unit (then every cap and electron count is wrong too).
        hint = (f"; atoms {lone[:10]} are bonded to nothing at this geometry: are the coordinates in the right unit "
                "(Å in XYZ files and ASE, bohr in a QCElemental Molecule's geometry)?" if lone else "")
        raise InputError(f"{len(odd)} GMBE subsystem(s) have an odd electron count, e.g. atoms {first.label[5:]} "
                         f"({_electrons(inp, first)} electrons with {len(first.caps)} hydrogen cap(s)): open-shell "
                         "subsystems are not offered; check atom_charges and that fragments cut single bonds only"
                         + hint)
    spec = inp.specification
    program = str(spec["program"]).lower()
    model = spec.get("model") or {}
    method, basis = str(model.get("method", "")), model.get("basis")
    exponent = method_exponent(method, program)
    symbols = [str(s) for s in inp.molecule.symbols]
    fragments = []
    by_label = {}
    for sub in subs:
        size = fragment_size([symbols[i] for i in sub.atoms] + ["H"] * len(sub.caps), basis)
        order = min(sub.coefficients)
        frag = Fragment(label=sub.label, level=order, mc=MC, program=program, real=(), basis=(), size=size,
                        cost=size**exponent, group=f"{program}/{method}/{basis}")
        fragments.append(frag)
        by_label[sub.label] = sub
    return GMBEPlan(input=inp, subsystems=subs, fragments=fragments, bonds=bonds, summary=summary,
                    by_label=by_label)


#: Top-level keys a GMBEInput has and a ManyBodyInput never has (its fragments sit in the molecule, its
#: max_nbody in specification.keywords). A dict without schema_name is read as a GMBEInput when it has a top-level
#: ``fragments`` (a GMBEInput cannot do without it; a misplaced max_nbody alone is left to the ManyBodyInput checks).
GMBE_ONLY_KEYS = ("fragments", "max_nbody", "atom_charges", "bonds", "distance_cutoffs")


def _is_gmbe_dict(data: Any) -> bool:
    """A GMBEInput dict: its schema name, or no schema name and top-level primary ``fragments``."""
    if not isinstance(data, dict):
        return False
    if "schema_name" in data:
        return data["schema_name"] == "qcmb_async_gmbe_input"
    return "fragments" in data


def _source(data: dict[str, Any], source: str) -> str:
    """Say how a GMBEInput without schema_name was recognised, so a message about it is not a puzzle."""
    if "schema_name" in data:
        return source
    keys = ", ".join(repr(k) for k in GMBE_ONLY_KEYS if k in data)
    return (f"{source} (read as a GMBEInput for its top-level {keys}; add \"schema_name\": "
            "\"qcmb_async_gmbe_input\" to say so)")


def as_gmbe_input(obj: Any) -> GMBEInput | None:
    """``obj`` as a GMBEInput when it is one (model, dict or JSON/YAML with its schema name, or without one but with
    a key only a GMBEInput has, :data:`GMBE_ONLY_KEYS`), else ``None``."""
    if isinstance(obj, GMBEInput):
        return obj
    if _is_gmbe_dict(obj):
        return _validated(obj, _source(obj, "the GMBE input"))
    if isinstance(obj, str) and obj.lstrip().startswith("{"):
        import json

        try:
            data = json.loads(obj)
        except ValueError:
            return None  # not JSON: load_input says why
        return _validated(data, _source(data, "the GMBE input")) if _is_gmbe_dict(data) else None
    if isinstance(obj, str) and len(obj) < 4096 and "\n" not in obj and "\0" not in obj:
        obj = Path(obj)  # a file name, as load_input takes one: a GMBEInput file is read below
    if isinstance(obj, Path) and obj.suffix.lower() in (".json", ".yaml", ".yml") and _is_file(obj):
        from .inputs import read_text_file

        text = read_text_file(obj)
        named = "qcmb_async_gmbe_input" in text
        if not named and "fragments" not in text:
            return None  # an ordinary ManyBodyInput file: load_input reads it
        import json

        from .inputs import _yaml_load

        try:
            data = _yaml_load(text) if obj.suffix.lower() != ".json" else json.loads(text)
        except Exception as exc:
            if not named:
                return None  # load_input says what is wrong with the file
            raise InputError(f"input file {str(obj)!r} is not valid: {exc}") from None
        if _is_gmbe_dict(data):
            return _validated(data, _source(data, f"GMBE input file {str(obj)!r}"))
    return None


def _is_file(path: Path) -> bool:
    """``path`` names a regular file (a name the OS refuses, e.g. too long, is none: load_input then says why)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _validated(data: dict[str, Any], source: str = "the GMBE input") -> GMBEInput:
    from pydantic import ValidationError

    from .inputs import _pydantic_message

    try:
        return GMBEInput(**data)
    except ValidationError as exc:
        raise InputError(f"{source} is not valid: {_pydantic_message(exc)}") from None


def check_gmbe(inp: GMBEInput, *, local: bool = True) -> None:
    """What ``run_manybody`` checks of a ManyBodyInput's specification, for the GMBE's one model chemistry:
    the program is installed (``local``), PySCF's keywords, method and basis for these elements, the
    methods and keywords the registry knows for the program (blocking; InputError)."""
    from qcelemental.models.v2 import AtomicSpecification

    from ..programs import traits
    from .checks import check_programs

    try:
        spec = AtomicSpecification(**{"keywords": {}, **inp.specification, "driver": inp.driver})
    except Exception as exc:
        raise InputError(f"the GMBE specification is not valid: {exc}") from None
    check_programs({spec.program}, local=local)
    if spec.program == "pyscf":
        from ..harnesses.pyscf import check_model, check_request

        check_request(inp.driver, spec.model.method, spec.keywords)
        check_model([*list(inp.molecule.symbols), "H"], spec.model)  # caps are hydrogens
    elif spec.program == "tblite":  # method, basis, driver, keyword values, solvent names
        from ..harnesses.tblite import check_request as check_tblite

        check_tblite(inp.driver, spec.model, spec.keywords)
    known = traits(spec.program)
    if known.methods is not None and str(spec.model.method).lower() not in known.methods:
        raise InputError(f"{spec.program} has no method {spec.model.method!r}: its QCEngine harness accepts "
                         f"{', '.join(sorted(known.methods))}")
    unknown = sorted(k for k in spec.keywords if str(k).lower() not in (known.keywords or set()))
    if known.keywords is not None and unknown:
        raise InputError(f"{spec.program} does not take keyword(s) {', '.join(map(repr, unknown))}")
