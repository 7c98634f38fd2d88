"""An ASE calculator whose energy and forces are a many-body expansion run by qcmb_async.

>>> from qcmb_async.ase import ManyBodyCalculator
>>> atoms.calc = ManyBodyCalculator(fragments=[[0, 1, 2], [3, 4, 5]], program="pyscf",
...                                 model={"method": "hf", "basis": "6-31g"}, bsse_type="cp", max_nbody=2)
>>> BFGS(atoms).run(fmax=0.01)
>>> atoms.calc.close()        # or: with ManyBodyCalculator(...) as calc: ...

Needs the ``ase`` extra (``pip install qcmb_async[ase]``). ASE calls :meth:`calculate` synchronously,
so the calculator owns a private event-loop thread (an anyio blocking portal) that enters one
executor (worker pool) when the calculator is made and keeps it for every step; :meth:`close`, the
context manager's exit, or garbage collection stop it. The fragments stay the same when ASE moves
atoms. ASE only recomputes when the atoms changed (``Calculator.check_state``), and the result store
(if enabled) serves any fragment computed before.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.from_thread
import numpy as np

try:
    from ase.calculators.calculator import Calculator, all_changes
    from ase.units import Bohr, Hartree
except ImportError as _exc:  # the extra's pip line, not a bare "No module named 'ase'"
    raise ModuleNotFoundError(f"qcmb_async.ase needs ASE: pip install 'qcmb_async[ase]' ({_exc})",
                              name="ase") from _exc

from qcmb_async._core.gmbe import GMBEInput
from qcmb_async._dynamics import gradient_step, kept_pool, prepare
from qcmb_async.errors import InputError

__all__ = ["ManyBodyCalculator"]


class _Session:
    """A private event-loop thread holding one entered executor; closed exactly once."""

    def __init__(self, inp: Any, options: dict[str, Any]) -> None:
        self._cm = anyio.from_thread.start_blocking_portal()
        self.portal = self._cm.__enter__()
        self._lock = threading.Lock()
        self.closed = False
        self._stop: anyio.Event | None = None
        from qcmb_async._core.scheduler import StoreFailures

        self._store_failures = StoreFailures(job=True)
        try:
            self._holder, state = self.portal.start_task(self._hold, inp, options)
            self.exe, self.run_options = state
        except BaseException:
            self._cm.__exit__(None, None, None)
            raise

    async def _hold(self, inp: Any, options: dict[str, Any], *, task_status: Any) -> None:
        # Entered and exited in this one task: executors may keep task groups open while running.
        async with kept_pool(inp, options) as state:
            self._stop = anyio.Event()
            task_status.started(state)
            await self._stop.wait()

    async def _step(self, step: int, inp: Any, coords: np.ndarray) -> tuple[Any, dict[str, Any]]:
        from qcmb_async._core.scheduler import STORE_FAILURES

        # Each step is its own portal task: the job's store failures (logged once for all steps) go with it.
        token = STORE_FAILURES.set(self._store_failures)
        try:
            return await gradient_step("ase", step, inp, coords, self.exe, self.run_options)
        finally:
            STORE_FAILURES.reset(token)

    def run(self, inp: Any, coords: np.ndarray, step: int) -> tuple[Any, dict[str, Any]]:
        if self.closed:
            raise RuntimeError("this ManyBodyCalculator is closed")
        future = self.portal.start_task_soon(self._step, step, inp, coords)
        try:
            return future.result()
        except KeyboardInterrupt:
            # Ctrl-C lands in the caller's thread: cancel the MBE in flight (its programs are killed) too.
            future.cancel()
            raise

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        try:
            if self._stop is not None:
                self.portal.call(self._stop.set)
            self._holder.result()
        finally:
            self._cm.__exit__(None, None, None)


class ManyBodyCalculator(Calculator):
    """ASE calculator: energy (eV) and forces (eV/Å) of a QCManyBody many-body expansion.

    Args:
        fragments: Atom indices (0-based, into the ``Atoms`` the calculator is attached to) of each
            fragment, e.g. ``[[0, 1, 2], [3, 4, 5]]``. Every atom in exactly one fragment.
        program: QCEngine program name (``"pyscf"``, ``"psi4"``, ``"nwchem"``...).
        model: ``{"method": ..., "basis": ...}``.
        bsse_type: ``"nocp"``, ``"cp"`` or ``"vmfc"``. Total energies are always returned
            (``return_total_data`` is set): forces of an interaction energy would not move a cluster.
        max_nbody: Truncation of the expansion (default: all fragments).
        keywords: Program keywords (``specification.keywords``).
        fragment_charges, fragment_multiplicities: Per fragment (default neutral singlets).
        mbe_input: Instead of the arguments above, a ``ManyBodyInput`` (or dict/file) whose molecule
            has the atoms in the same order: its fragments, charges and specification are kept and
            its coordinates replaced by the atoms' at every step. A :class:`~qcmb_async.GMBEInput`
            (generalized MBE with hydrogen caps) is taken too: its primary fragments, atom charges and
            bonds (those of the first geometry unless it names them) are kept; the caps are placed again
            from the new positions at every step, and their forces go to the two atoms of each cut bond.
        **options: The drivers' options (``qcmb_async._dynamics.DRIVER_OPTIONS``): ``ncores``, ``memory``,
            ``fragment_ncores``, ``fragment_memory``, ``level_barrier``, ``scratch_directory``, ``retries``,
            ``timeout``, ``on_event``, ``store`` go to every MBE; ``executor`` (name or an Executor instance),
            ``scheduler`` or ``cluster`` choose the one executor kept for all steps.

    After each calculation ``calc.results["manybody_result"]`` is the ``ManyBodyResult`` (a ``GMBEResult`` for a
    GMBEInput) and
    ``calc.history`` has one record per MBE run (a step): ``step``, ``energy`` (Eh), ``gradient_rms`` and
    ``gradient_max`` (Eh/bohr), ``wall_time`` (s), fragments ``computed`` and ``cached`` (taken from the
    store), ``scf_iterations`` per fragment when the results carry them, ``geometry`` (bohr), ``run_id``.
    An ``on_event`` callback receives :class:`~qcmb_async.events.StepStarted` / ``StepFinished``
    (``kind="ase"``) around each MBE's fragment events, on the calculator's event-loop thread.

    Raises:
        InputError: bad arguments or options when the calculator is made (types, one charge/multiplicity per
        fragment, bsse_type, max_nbody, an ``mbe_input`` run() would refuse); at the first calculation
        whatever run()'s input checks refuse (multiplicities against electrons, naming the fragment; atoms on
        top of each other; basis sets the program lacks); periodic Atoms; Atoms whose elements differ from
        those of the first calculation; non-zero ``atoms.get_initial_charges()`` that contradict the input's
        charges (per fragment sum; per atom for a GMBEInput's ``atom_charges``): charges come from the input.
    """

    implemented_properties = ("energy", "forces")
    default_parameters: dict[str, Any] = {}

    def __init__(self, fragments: Sequence[Sequence[int]] | None = None, *, program: str | None = None,
                 model: dict[str, Any] | None = None, bsse_type: str | Sequence[str] = "nocp",
                 max_nbody: int | None = None, keywords: dict[str, Any] | None = None,
                 fragment_charges: Sequence[float] | None = None,
                 fragment_multiplicities: Sequence[int] | None = None,
                 mbe_input: Any = None, **options: Any) -> None:
        super().__init__()
        from qcmb_async._dynamics import check_options

        check_options(options)
        if mbe_input is not None:
            from qcmb_async._core.gmbe_plan import as_gmbe_input
            from qcmb_async._core.inputs import load_input

            # Checked now, as run() checks it: the atoms only replace its coordinates later. A GMBEInput (or its
            # dict/JSON/file) stays a generalized MBE: its fragments, bonds and charges are kept, caps recomputed.
            gmbe = as_gmbe_input(mbe_input)
            mbe_input = gmbe if gmbe is not None else load_input(mbe_input)
        elif fragments is None or program is None or model is None:
            raise InputError("ManyBodyCalculator needs fragments=, program= and model= (or mbe_input=)")
        self._spec = _check_spec(fragments, program=program, model=model, bsse_type=bsse_type,
                                 max_nbody=max_nbody, keywords=keywords, fragment_charges=fragment_charges,
                                 fragment_multiplicities=fragment_multiplicities) if mbe_input is None else {}
        self._given = mbe_input
        self._options = options
        self._inp: Any = None
        self._session: _Session | None = None
        self._finalizer: weakref.finalize | None = None
        self.history: list[dict[str, Any]] = []

    # -- lifecycle -----------------------------------------------------------------------

    def _start(self, atoms: Any) -> None:
        if self._session is not None:
            return
        self._check_initial_charges(atoms)  # first: a contradiction would otherwise surface as another error
        self._inp = prepare(self._input_for(atoms), "gradient")
        self._session = _Session(self._inp, self._options)
        # Garbage collection closes the pool too; the finalizer must not hold the calculator.
        self._finalizer = weakref.finalize(self, self._session.close)

    def close(self) -> None:
        """Stop the worker pool and the private event loop (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> ManyBodyCalculator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- input -----------------------------------------------------------------------------

    def _input_for(self, atoms: Any) -> Any:
        """The ManyBodyInput at ``atoms``, through run()'s input checks (:class:`InputError` naming the problem)."""
        from qcmb_async._core.inputs import _from_dict, check_finite, revalidate_molecule

        symbols = list(atoms.get_chemical_symbols())
        coords = np.asarray(atoms.get_positions(), dtype=float) / Bohr
        if self._given is not None:
            inp = self._given
            if list(inp.molecule.symbols) != symbols:
                raise InputError(f"mbe_input's molecule has atoms {[str(s) for s in inp.molecule.symbols]}, the "
                                 f"Atoms {symbols}: "
                                 "they must be the same atoms in the same order")
            if isinstance(inp, GMBEInput):
                # The calculation starts at the Atoms' positions (not the input's): its bonds, and so which
                # bonds are cut and capped, are those of the Atoms.
                from qcmb_async._dynamics import at_geometry

                return at_geometry(inp, coords)
            return inp
        spec = self._spec
        frags = spec["fragments"]
        flat = sorted(i for f in frags for i in f)
        if flat != list(range(len(symbols))):
            raise InputError(f"fragments must hold every atom index 0..{len(symbols) - 1} exactly once, got {frags}")
        # QCElemental wants the atoms of each fragment contiguous: reorder, then keep the map.
        order = [i for f in frags for i in f]
        if order != list(range(len(symbols))):
            raise InputError("fragments must list contiguous, increasing atom ranges (reorder the Atoms so each "
                             f"fragment's atoms are together), got {frags}")
        nfrag = len(frags)
        charges = list(spec["fragment_charges"] or [0.0] * nfrag)
        molecule = {
            "symbols": symbols, "geometry": coords.reshape(-1).tolist(), "fragments": frags,
            "fragment_charges": charges,
            "fragment_multiplicities": list(spec["fragment_multiplicities"] or [1] * nfrag),
            "molecular_charge": float(sum(charges)), "fix_com": True, "fix_orientation": True}
        kw: dict[str, Any] = {"bsse_type": spec["bsse_type"]}
        if spec["max_nbody"] is not None:
            kw["max_nbody"] = spec["max_nbody"]
        data = {"molecule": molecule, "specification": {
            "driver": "gradient", "keywords": kw,
            "specification": {"(auto)": {"program": spec["program"], "model": spec["model"],
                                         "driver": "gradient", "keywords": spec["keywords"]}}}}
        # The checks load_input gives a dict (and their messages naming the fragment), as run() does.
        source = "the ManyBodyCalculator's Atoms and arguments"
        inp = _from_dict(data, source)
        check_finite(inp, source)
        revalidate_molecule(inp.molecule, source)
        return inp

    def _check_initial_charges(self, atoms: Any) -> None:
        """Refuse Atoms whose ``get_initial_charges()`` contradict the charges the calculation uses (InputError).

        The charges come from the input (``fragment_charges=``, a ManyBodyInput's molecule, a GMBEInput's
        ``atom_charges``), never from the Atoms; all-zero initial charges (ASE's default) say nothing. Non-zero
        ones must match: per atom for a GMBEInput (its subsystems sum ``atom_charges`` over their atoms, so where a
        charge sits matters), per fragment sum for an ordinary MBE.
        """
        given = np.asarray(atoms.get_initial_charges(), dtype=float)
        if not np.any(given):
            return
        inp = self._given
        if isinstance(inp, GMBEInput):
            used = [float(q) for q in (inp.atom_charges or [0] * len(given))]
            if len(used) != len(given):
                return  # other atoms than the input's: _input_for says so
            bad = [i for i in range(len(given)) if abs(given[i] - used[i]) > 1e-6]
            if bad:
                raise InputError(f"the Atoms' initial charges differ from the GMBEInput's atom_charges at atom(s) "
                                 f"{bad[:10]} (Atoms {[float(given[i]) for i in bad[:10]]}, GMBEInput "
                                 f"{[used[i] for i in bad[:10]]}): the calculation takes its charges from "
                                 "atom_charges. Give them there (GMBEInput(atom_charges=[...])), or zero the Atoms' "
                                 "initial charges (atoms.set_initial_charges(None))")
            return
        if inp is not None:
            frags = [list(f) for f in inp.molecule.fragments]
            used = [float(q) for q in inp.molecule.fragment_charges]
        else:
            frags = self._spec["fragments"]
            used = [float(q) for q in (self._spec["fragment_charges"] or [0.0] * len(frags))]
        if any(i >= len(given) for f in frags for i in f):
            return  # other atoms than the fragments name: _input_for says so
        sums = [float(sum(given[i] for i in f)) for f in frags]
        bad = [k for k, (a, b) in enumerate(zip(sums, used, strict=True)) if abs(a - b) > 1e-6]
        if bad:
            raise InputError(f"the Atoms' initial charges add up to {[round(sums[k], 6) for k in bad[:10]]} on "
                             f"fragment(s) {bad[:10]}, whose charges are {[used[k] for k in bad[:10]]}: the "
                             "calculation takes fragment charges from fragment_charges= (or the mbe_input's "
                             "molecule), not from the Atoms. Give them there, or zero the Atoms' initial charges "
                             "(atoms.set_initial_charges(None))")

    # -- ASE's entry point --------------------------------------------------------------

    def calculate(self, atoms: Any = None, properties: Any = ("energy",), system_changes: Any = all_changes) -> None:
        """Run one MBE gradient at ``atoms``' positions; fill ``results`` (eV, eV/Å)."""
        super().calculate(atoms, properties, system_changes)
        if any(self.atoms.pbc):
            raise InputError(f"the Atoms are periodic (pbc={list(self.atoms.pbc)}): a many-body expansion is of a "
                             "finite cluster; set atoms.pbc = False to compute the cluster as it is")
        self._start(self.atoms)
        symbols = list(self.atoms.get_chemical_symbols())
        if symbols != list(self._inp.molecule.symbols):
            raise InputError(f"the Atoms are {symbols}, the calculator was started with "
                             f"{list(self._inp.molecule.symbols)}: its fragments and specification are for those "
                             "atoms; make a new ManyBodyCalculator for other atoms")
        self._check_initial_charges(self.atoms)  # they may have been set since the last step
        coords = np.asarray(self.atoms.get_positions(), dtype=float) / Bohr
        assert self._session is not None
        result, record = self._session.run(self._inp, coords, len(self.history) + 1)
        grad = np.asarray(result.properties.return_gradient, dtype=float).reshape(-1, 3)
        self.results = {"energy": record["energy"] * Hartree, "forces": -grad * Hartree / Bohr,
                        "manybody_result": result}
        self.history.append(record)


def _check_spec(fragments: Any, **given: Any) -> dict[str, Any]:
    """The calculator's arguments checked before any atoms are seen; :class:`InputError` for the first bad one.

    What needs the atoms (every atom in one fragment, electrons against multiplicities, atoms on top of each
    other, the model against the program) is checked at the first calculation, by run()'s input checks.
    """
    import math

    def whole(value: Any) -> bool:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)

    def seq(value: Any) -> bool:
        return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes)

    if not seq(fragments) or not len(fragments) or not all(
            seq(f) and len(f) and all(whole(i) and i >= 0 for i in f) for f in fragments):
        raise InputError(f"fragments must be a non-empty list of lists of atom indices (0-based whole numbers), e.g. "
                         f"[[0, 1, 2], [3, 4, 5]]; got {fragments!r}")
    frags = [[int(i) for i in f] for f in fragments]
    nfrag = len(frags)
    program, model = given["program"], given["model"]
    if not isinstance(program, str) or not program.strip():
        raise InputError(f"program must be a QCEngine program name such as 'pyscf', got {program!r}")
    if not isinstance(model, dict) or not isinstance(model.get("method"), str):
        raise InputError(f"model must be a dict with a 'method' (and usually a 'basis'), e.g. "
                         f"{{'method': 'hf', 'basis': 'sto-3g'}}; got {model!r}")
    bsse = given["bsse_type"]
    bsse_list = [bsse] if isinstance(bsse, str) else list(bsse) if seq(bsse) else None
    allowed = ("cp", "nocp", "vmfc")
    if not bsse_list or not all(isinstance(b, str) and b.lower() in allowed for b in bsse_list):
        raise InputError(f"bsse_type {bsse!r} is not valid: use one or a list of {', '.join(map(repr, allowed))}")
    max_nbody = given["max_nbody"]
    if max_nbody is not None and not (whole(max_nbody) and 1 <= max_nbody <= nfrag):
        raise InputError(f"max_nbody={max_nbody!r}: give a whole number from 1 to the number of fragments ({nfrag})")
    keywords = given["keywords"]
    if keywords is not None and not isinstance(keywords, dict):
        raise InputError(f"keywords must be a dict of program keywords, got {type(keywords).__name__}")
    for name, kind in (("fragment_charges", "charge"), ("fragment_multiplicities", "multiplicity")):
        values = given[name]
        if values is None:
            continue
        if not seq(values) or len(values) != nfrag:
            raise InputError(f"{name} must give one {kind} per fragment ({nfrag}), got {values!r}")
        for i, v in enumerate(values):
            ok = (isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
                  and math.isfinite(v) and (kind == "charge" or v >= 1))
            if not ok:
                raise InputError(f"{name}[{i}] (fragment {i + 1}) must be a finite number"
                                 f"{'' if kind == 'charge' else ' >= 1'}, got {v!r}")
    return {"fragments": frags, "program": program, "model": model, "bsse_type": [b.lower() for b in bsse_list],
            "max_nbody": max_nbody, "keywords": keywords or {},
            "fragment_charges": None if given["fragment_charges"] is None else [float(v) for v in
                                                                                given["fragment_charges"]],
            "fragment_multiplicities": None if given["fragment_multiplicities"] is None else [
                int(v) if float(v).is_integer() else float(v) for v in given["fragment_multiplicities"]]}
