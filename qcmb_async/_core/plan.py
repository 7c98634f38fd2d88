"""Plan stage: QCManyBody enumerates the fragments; each becomes a cheap, lazily built job.

Enumerating labels from QCManyBody's ``compute_map`` takes milliseconds even for thousands of
fragments; building each fragment's ``Molecule`` and ``AtomicInput`` is what costs (about a
millisecond each). So a :class:`Plan` holds light :class:`Fragment` records, and the schedule
stage calls :meth:`Plan.materialise` just before a fragment runs: the first fragments start
while the rest are not built yet, and memory grows with fragments in flight, not with the plan.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qcmanybody.models.v2 import ManyBodyInput
from qcmanybody.utils import labeler

from ..errors import InputError
from ..programs import traits
from .cost import fragment_size, method_exponent
from .options import Screening
from .screening import Expansion, LabelKey, plan_expansion

#: Bumped when the way fragment keys are computed changes (keys index the result store).
KEY_VERSION = 2


@dataclass(frozen=True, slots=True)
class Fragment:
    """One QC calculation of the expansion, before its molecule is built."""

    label: str
    """QCManyBody's label: ``'["<model chem>", [real fragments], [basis fragments]]'``."""
    level: int
    """n-body level: the number of real fragments."""
    mc: str
    """Model-chemistry key of ``specification.specification`` (``"(auto)"`` for one level)."""
    program: str
    real: tuple[int, ...]
    """Real fragments (1-based)."""
    basis: tuple[int, ...]
    """Fragments carrying basis functions, real or ghost (1-based)."""
    size: float
    """Size for the cost model: basis functions of real and ghost atoms, or electrons."""
    cost: float
    """A-priori relative cost, ``size ** exponent(method)``; the cost model calibrates it."""
    group: str = ""
    """Cost-model group: fragments of one program and model chemistry share a calibration."""


class Job:
    """A materialised fragment: what the worker runs and what the result store is keyed by."""

    __slots__ = ("_key", "_program", "_spec_json", "atomic_input")

    def __init__(self, atomic_input: Any, key: str | None = None, *, program: str = "",
                 spec_json: str | None = None) -> None:
        self.atomic_input = atomic_input
        """QCSchema v2 ``AtomicInput`` (the model), exactly what QCManyBody's own loop would run."""
        self._key = key
        self._program = program
        # The key's sorted JSON of the specification when the plan made it once for every fragment of a
        # model chemistry (equal content); None: the key serialises this job's own.
        self._spec_json = spec_json

    @property
    def key(self) -> str:
        """Content hash of program, its version and the input: identical fragments share it across runs.

        Computed on first use (about 0.05 ms; the program's version asked once per process): a run without
        a result store never needs it.
        """
        if self._key is None:
            self._key = _key(self._program, self.atomic_input, spec_json=self._spec_json)
        return self._key


@dataclass
class Plan:
    """The planned run: QCManyBody's computer (needed to assemble) and the fragments."""

    input: ManyBodyInput
    computer: Any
    """``qcmanybody.v2.ManyBodyComputer`` built with ``build_tasks=False``."""
    fragments: list[Fragment] = field(default_factory=list)
    """In QCManyBody's own order (``iterate_molecules``), which assembly keeps."""
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model chemistry: ``{"program": ..., "specification": {...}}``."""
    keep_results: bool = True
    """The input's protocols ask for every fragment's ``AtomicResult`` in the result."""
    driver: str = "energy"
    inline: bool = False
    """Materialise on the event loop (only for plans whose fragments cost nothing to build)."""
    screen: Expansion | None = None
    """A screened expansion: its kept family, and (energy screening) the fragments released as it decides."""
    make_fragment: Any = field(default=None, repr=False)
    """``(mc, real, basis) -> Fragment`` for fragments released during the run (screened plans)."""
    _fast: dict[str | None, bool] = field(default_factory=dict, repr=False)
    """Per ``fix_symmetry`` sent: whether :func:`_fast_fragment` reproduces QCElemental here (checked on first use)."""
    _arrays: _ParentArrays | None = field(default=None, repr=False)
    _spec_models: dict[str, Any] = field(default_factory=dict, repr=False)
    """Per model chemistry: its validated ``AtomicSpecification`` (or ``None``: validate a copy per fragment)."""
    _spec_jsons: dict[str, str] = field(default_factory=dict, repr=False)
    """Per model chemistry: the sorted JSON of its shared specification, as the store key writes it."""

    @property
    def input_hash(self) -> str:
        """Content hash of the ManyBodyInput (identifies 'the same run' in the result store)."""
        return input_hash(self.input)

    def molecule(self, frag: Fragment) -> Any:
        """The fragment's ``Molecule``: what ``ManyBodyCore.iterate_molecules`` yields, frame-fixed, and with the
        ``fix_symmetry`` its program needs to compute it as given (``ProgramTraits.fix_symmetry``: NWChem's ``c1``)."""
        core = self.computer.qcmb_core
        real0 = [x - 1 for x in frag.real]
        # Same expression as QCManyBody's, so the set's iteration order (and the name) match.
        ghost0 = [x - 1 for x in set(frag.basis) - set(frag.real)]
        updates: dict[str, Any] = {"fix_com": True, "fix_orientation": True}
        if core.molecule.fix_symmetry == "c1":
            updates["fix_symmetry"] = "c1"
        symmetry = traits(frag.program).fix_symmetry
        if symmetry is not None:
            # The program would symmetrize/reorient the geometry: have it compute the fragment as given.
            updates["fix_symmetry"] = symmetry
        fast = self._fast.get(updates.get("fix_symmetry"))
        if fast is None:
            with _fast_lock:
                fast = self._fast.get(updates.get("fix_symmetry"))
                if fast is None:
                    # Once per set of updates (programs differ in fix_symmetry in a multilevel plan).
                    fast = self._fast[updates.get("fix_symmetry")] = _fast_path_agrees(core.molecule, real0,
                                                                                        ghost0, updates)
        if fast:
            if self._arrays is None:
                self._arrays = _ParentArrays.of(core.molecule)
            mol = _fast_fragment(core.molecule, real0, ghost0, self._arrays, updates)
        else:
            mol = core.molecule.get_fragment(real0, ghost0, orient=False, group_fragments=False)
            mol = mol.model_copy(update=updates)
        if core.embedding_charges:
            charges = []
            for ifr in sorted(set(range(1, core.nfragments + 1)) - set(frag.basis)):
                positions = core.molecule.get_fragment(ifr - 1).geometry.tolist()
                charges.extend([[chg, i] for i, chg in zip(positions, core.embedding_charges[ifr], strict=False)])
            mol.extras["embedding_charges"] = charges
        return mol

    def materialise(self, frag: Fragment) -> Job:
        """Build the fragment's ``AtomicInput`` and store key (CPU-bound: about a millisecond)."""
        from qcelemental.models.v2 import AtomicInput

        mol = self.molecule(frag)
        shared = self._spec_model(frag.mc)
        if shared is not None:
            # Validated once per model chemistry; each job gets its own copies of the dicts a program
            # (or the embedding-charge branch below) may change, as the deep copy below would give.
            spec: Any = shared.model_copy(update={"keywords": copy.deepcopy(shared.keywords),
                                                  "extras": copy.deepcopy(shared.extras)})
        else:
            spec = copy.deepcopy(self.specs[frag.mc]["specification"])
        atomic = AtomicInput(molecule=mol, specification=spec)
        spec_json = self._spec_jsons.get(frag.mc) if shared is not None else None
        if shared is not None and spec_json is None:
            spec_json = self._spec_jsons[frag.mc] = json.dumps(shared.model_dump(mode="json"), sort_keys=True)
        # QCManyBody's own loop: Psi4 takes the charges as external_potentials. Our PySCF harness reads them where
        # QCManyBody put them, the molecule's extras (part of the store key either way); check_embedding refuses
        # every other program before anything runs.
        if mol.extras.get("embedding_charges") and frag.program not in ("psi4", "pyscf"):
            raise RuntimeError(f"Don't know how to handle external charges in {frag.program}")
        if mol.extras.get("embedding_charges") and frag.program == "psi4":
            fkw = atomic.specification.keywords.get("function_kwargs", {})
            fkw.update({"external_potentials": mol.extras["embedding_charges"]})
            atomic.specification.keywords["function_kwargs"] = fkw
            spec_json = None  # this fragment's keywords differ from its model chemistry's
        return Job(atomic, program=frag.program, spec_json=spec_json)

    def _spec_model(self, mc: str) -> Any:
        """``mc``'s ``AtomicSpecification``, validated once; ``None`` when it holds mutable data beyond
        ``keywords``/``extras`` (error-correction policies, a basis-set model): then deep-copied per fragment."""
        if mc not in self._spec_models:
            from pydantic import BaseModel
            from qcelemental.models.v2 import AtomicSpecification

            model = AtomicSpecification(**copy.deepcopy(self.specs[mc]["specification"]))
            plain = model.protocols.error_correction.policies is None and not isinstance(model.model.basis, BaseModel)
            self._spec_models[mc] = model if plain else None
        return self._spec_models[mc]


_fast_lock = threading.Lock()


@dataclass(frozen=True)
class _ParentArrays:
    """The parent molecule's per-atom arrays (QCElemental recomputes some on every access)."""

    symbols: Any
    geometry: Any
    masses: Any
    fragments: list[list[int]]
    charges: list[float]
    multiplicities: list[int]

    @classmethod
    def of(cls, mol: Any) -> _ParentArrays:
        return cls(np.array([str(x) for x in mol.symbols]), np.asarray(mol.geometry),
                   np.array(mol.masses, dtype=float), [[int(i) for i in fr] for fr in mol.fragments],
                   [float(c) for c in mol.fragment_charges], [int(m) for m in mol.fragment_multiplicities])


def _fast_fragment(parent: Any, real: list[int], ghost: list[int], arrays: _ParentArrays | None = None,
                   updates: dict[str, Any] | None = None) -> Any:
    """``parent.get_fragment(real, ghost, orient=False, group_fragments=False)`` without re-validation,
    then ``.model_copy(update=updates)`` (built in directly: one model fewer per fragment).

    QCElemental re-validates every fragment it cuts from an already validated molecule (about a
    millisecond each, most of the plan stage's cost). For closed-shell fragments the validated
    result is known: slices of the parent, charge the sum of the real fragments' charges,
    singlet. Anything else (open shells) takes QCElemental's own path.
    """
    from qcelemental.models.v2 import Molecule

    arr = arrays or _ParentArrays.of(parent)
    if any(arr.multiplicities[i] != 1 for i in real):
        mol = parent.get_fragment(real, ghost, orient=False, group_fragments=False)
        return mol.model_copy(update=updates) if updates else mol
    sel = set(real) | set(ghost)
    real_set = set(real)
    atoms: list[int] = []
    mask: list[bool] = []
    fragments = []
    charges: list[float] = []
    for ifr, fr in enumerate(arr.fragments):
        if ifr in sel:
            # Atoms in the parent's order, fragments renumbered: what group_fragments=False
            # produces when the parent's fragments are contiguous and ascending (checked once).
            fragments.append(np.arange(len(atoms), len(atoms) + len(fr), dtype=np.int32))
            atoms.extend(fr)
            mask.extend([ifr in real_set] * len(fr))
            charges.append(arr.charges[ifr] if ifr in real_set else 0.0)
    idx = np.array(atoms)
    fixed: dict[str, Any] = {"fix_com": False, "fix_orientation": False, **(updates or {})}
    return Molecule(
        validate=False,
        schema_name="qcschema_molecule",
        schema_version=parent.schema_version,
        validated=True,
        symbols=arr.symbols[idx],
        geometry=arr.geometry[idx],
        name=(parent.name if parent.name is not None else "") + " (" + str(real) + "," + str(ghost) + ")",
        molecular_charge=float(sum(charges)),
        molecular_multiplicity=1,
        masses=arr.masses[idx],
        real=np.array(mask, dtype=bool),
        fragments=fragments,
        fragment_charges=charges,
        fragment_multiplicities=[1] * len(charges),
        provenance=_provenance(),
        extras={},
        **fixed,
    )


@functools.cache
def _provenance() -> Any:
    """One frozen ``Provenance`` (strings only) shared by every fast-built fragment."""
    import qcelemental
    from qcelemental.models.v2 import Provenance

    return Provenance(creator="QCElemental", version=qcelemental.__version__,
                      routine="qcelemental.molparse.from_schema")


def _fast_path_agrees(parent: Any, real: list[int], ghost: list[int], updates: dict[str, Any] | None = None) -> bool:
    """True when :func:`_fast_fragment` gives QCElemental's own molecule (with ``updates``) for this parent."""
    flat = [int(i) for fr in parent.fragments for i in fr]
    if flat != list(range(len(parent.symbols))):
        return False  # non-contiguous fragments: atom order would differ
    try:
        slow = parent.get_fragment(real, ghost, orient=False, group_fragments=False)
        slow = slow.model_copy(update=updates) if updates else slow
        fast = _fast_fragment(parent, real, ghost, updates=updates)
        return bool(slow.model_dump_json() == fast.model_dump_json()
                    and slow.get_hash() == fast.get_hash())
    except Exception:
        return False


def _key(program: str, atomic: Any, version: str | None = None, *, spec_json: str | None = None) -> str:
    """SHA-256 of ``json.dumps({"v": KEY_VERSION, "program": ..., "version": ..., "input": ...}, sort_keys=True)``.

    ``input`` is ``json.loads(atomic.model_dump_json(exclude={"id", "provenance"}))``: the recipe every store's
    keys were made with. This computes the same string with less work: ``model_dump(mode="json")`` is that
    dict without writing and parsing the JSON text, and the outer object's members after ``"input"`` (sorted:
    ``program``, ``v``, ``version``) are formatted once per program and version. ``spec_json``: the
    ``json.dumps(..., sort_keys=True)`` of ``atomic.specification`` made once per model chemistry (the plan's).
    """
    from .versions import program_version

    # The program's version is part of the key: a result of another version (an upgrade) is never reused.
    tail = _key_tail(program.lower(), program_version(program) if version is None else version)
    text = None
    if spec_json is not None:
        data = atomic.model_dump(mode="json", exclude={"id", "provenance", "specification"})
        if all(k < "specification" for k in data):  # sort_keys puts it last: append it to the rest
            head = json.dumps(data, sort_keys=True)[:-1] + (", " if data else "")
            text = head + '"specification": ' + spec_json + "}"
    if text is None:
        text = json.dumps(atomic.model_dump(mode="json", exclude={"id", "provenance"}), sort_keys=True)
    digest = hashlib.sha256(b'{"input": ')
    digest.update(text.encode())
    digest.update(tail)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _key_tail(program: str, version: str) -> bytes:
    """What ``json.dumps(..., sort_keys=True)`` of the key's object writes after its ``"input"`` member."""
    return (', "program": ' + json.dumps(program) + ', "v": ' + json.dumps(KEY_VERSION)
            + ', "version": ' + json.dumps(version) + "}").encode()


def input_hash(inp: ManyBodyInput) -> str:
    """Content hash of a ManyBodyInput (the result store's ``runs.input_hash``), without planning it."""
    return hashlib.sha256(inp.model_dump_json().encode()).hexdigest()


def fragment_key(program: str, atomic_input: dict[str, Any], version: str | None = None) -> str:
    """Canonical content hash of a fragment calculation (program and its version, geometry, ghosts, charge,
    spec...). ``version``: default :func:`~qcmb_async._core.versions.program_version` (cached per process)."""
    from qcelemental.models.v2 import AtomicInput

    return _key(program, AtomicInput(**copy.deepcopy(atomic_input)), version)


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


def iterate_labels(core: Any) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """``(mc, real, basis)`` of every fragment, de-duplicated, in ``iterate_molecules`` order."""
    # Keyed like QCManyBody's labels (model chemistry, real, basis) without building the
    # label string (json.dumps) for every duplicate across n-body lists.
    seen: set[tuple[str, tuple[int, ...], tuple[int, ...]]] = set()
    out: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for mc, compute_dict in core.compute_map.items():
        for compute_list in compute_dict["all"].values():
            for real, basis in compute_list:
                item = (mc, tuple(real), tuple(basis))
                if item not in seen:
                    seen.add(item)
                    out.append(item)
    return out


class _FragmentMaker:
    """Builds :class:`Fragment` records (size and a-priori cost) for labels of one computer.

    Called once per fragment of the plan (679,120 times for an unscreened MBE(4) of 64 waters), so
    what repeats is computed once: each model chemistry's program, exponent and cost group, each
    fragment's size, and the ``(size, cost)`` floats of each distinct size (shared objects). Labels
    are formatted directly when the model-chemistry name is JSON-plain (checked against
    QCManyBody's ``labeler`` once per name); a fragment whose basis equals its real fragments shares
    one tuple for both.
    """

    def __init__(self, computer: Any, specs: dict[str, dict[str, Any]]) -> None:
        parent = computer.qcmb_core.molecule
        self.specs = specs
        self.frag_atoms = [list(map(int, f)) for f in parent.fragments]
        self.symbols = list(parent.symbols)
        self.charges = list(parent.fragment_charges)
        self.sizes: dict[tuple[str, int], float] = {}  # (mc, fragment) -> size of that fragment's atoms
        self._mc: dict[str, tuple[str, str | None, float, str, str | None]] = {}
        self._costs: dict[tuple[float, float], tuple[float, float]] = {}

    def _model(self, mc: str) -> tuple[str, str | None, float, str, str | None]:
        """``(program, basis, exponent, group, label prefix or None)`` of model chemistry ``mc``."""
        if mc not in self._mc:
            spec = self.specs[mc]["specification"]
            model = spec["model"]
            program = self.specs[mc]["program"]
            prefix: str | None = json.dumps([str(mc)])[:-1] + ", ["
            # Only when the direct format is QCManyBody's label for this name (no escaping differences).
            if labeler(mc, (1, 2), (1, 2, 3)) != prefix + "1, 2], [1, 2, 3]]":
                prefix = None
            self._mc[mc] = (program, model.get("basis"), method_exponent(str(model["method"]), program),
                            f"{program}:{mc}", prefix)
        return self._mc[mc]

    def __call__(self, key: LabelKey) -> Fragment:
        mc, real, basis = key
        program, basis_name, exponent, group, prefix = self._model(mc)
        size = 0.0
        for ifr in basis:
            k = (mc, ifr)
            if k not in self.sizes:
                # Ghost atoms carry basis functions; their electrons are not counted.
                self.sizes[k] = fragment_size([self.symbols[a] for a in self.frag_atoms[ifr - 1]], basis_name,
                                              charge=self.charges[ifr - 1])
            size += self.sizes[k]
        sized = self._costs.get((size, exponent))
        if sized is None:
            sized = self._costs[(size, exponent)] = (size, size ** exponent)
        real = tuple(real)
        basis = real if tuple(basis) == real else tuple(basis)
        if prefix is not None:
            # json.dumps of a list of ints: "[1, 2]"; the same string QCManyBody's labeler makes.
            label = f"{prefix}{', '.join(map(str, real))}], [{', '.join(map(str, basis))}]]"
        else:
            label = labeler(mc, real, basis)
        return Fragment(label=label, level=len(real), mc=mc, program=program, real=real, basis=basis,
                        size=sized[0], cost=sized[1], group=group)


def make_plan(inp: ManyBodyInput, screening: Screening | None = None) -> Plan:
    """Plan ``inp`` with QCManyBody: enumerate fragments and estimate their cost; build nothing.

    With ``screening`` only the kept subsets' fragments are planned (enumerated while pruning,
    never all ``C(N, n)``); energy screening plans the lower orders and releases the rest during
    the run. Raises :class:`~qcmb_async.errors.InputError` when the screening cannot apply.
    """
    from qcmanybody.v2 import ManyBodyComputer

    computer = ManyBodyComputer.from_manybodyinput(inp, build_tasks=False)
    specs = _specifications(computer)
    undefined = sorted({str(mc) for mc in computer.levels.values()} - set(specs))
    if undefined:
        # QCManyBody rewrites `levels` (e.g. a 'supersystem' level with max_nbody equal to the number of
        # fragments becomes {n: '(auto)'}); its own computer would then fail looking the name up.
        raise InputError(f"QCManyBody resolved the input's levels to {dict(computer.levels)}, which name model "
                         f"chemistr{'y' if len(undefined) == 1 else 'ies'} {undefined} the specification does not "
                         f"define (it defines {sorted(specs)}). Give levels whose names are all in 'specification' "
                         "(a 'supersystem' level needs max_nbody below the number of fragments)")
    maker = _FragmentMaker(computer, specs)
    screen = plan_expansion(screening, computer) if screening is not None else None
    keys = iterate_labels(computer.qcmb_core) if screen is None else screen.initial
    fragments = [maker(key) for key in keys]
    proto = inp.specification.protocols.cluster_results
    driver = computer.driver
    return Plan(input=inp, computer=computer, fragments=fragments, specs=specs,
                keep_results=str(getattr(proto, "value", proto)) == "all",
                driver=str(getattr(driver, "value", driver)), screen=screen, make_fragment=maker)
