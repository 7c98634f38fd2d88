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
            its coordinates replaced by the atoms' at every step.
        **options: Passed to every :func:`qcmb_async.run_manybody` call: ``ncores``, ``memory``,
            ``fragment_ncores``, ``fragment_memory``, ``executor`` (name or an Executor instance),
            ``scheduler``, ``scratch_directory``, ``retries``, ``timeout``, ``on_event``, ``store``.

    After each calculation ``calc.results["manybody_result"]`` is the ``ManyBodyResult`` and
    ``calc.history`` has one record per MBE run (a step): ``step``, ``energy`` (Eh), ``gradient_rms`` and
    ``gradient_max`` (Eh/bohr), ``wall_time`` (s), fragments ``computed`` and ``cached`` (taken from the
    store), ``scf_iterations`` per fragment when the results carry them, ``geometry`` (bohr), ``run_id``.
    An ``on_event`` callback receives :class:`~qcmb_async.events.StepStarted` / ``StepFinished``
    (``kind="ase"``) around each MBE's fragment events, on the calculator's event-loop thread.

    Raises:
        InputError: bad fragments or input, when the calculator is made or at the first calculation; periodic
        Atoms; Atoms whose elements differ from those of the first calculation.
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
        if mbe_input is None and (fragments is None or program is None or model is None):
            raise InputError("ManyBodyCalculator needs fragments=, program= and model= (or mbe_input=)")
        self._spec = {"fragments": [list(map(int, f)) for f in fragments] if fragments is not None else None,
                      "program": program, "model": model, "bsse_type": bsse_type, "max_nbody": max_nbody,
                      "keywords": keywords or {}, "fragment_charges": fragment_charges,
                      "fragment_multiplicities": fragment_multiplicities}
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
        from qcelemental.models.v2 import Molecule
        from qcmanybody.models.v2 import ManyBodyInput

        symbols = list(atoms.get_chemical_symbols())
        coords = np.asarray(atoms.get_positions(), dtype=float) / Bohr
        if self._given is not None:
            from qcmb_async._core.inputs import load_input

            inp = load_input(self._given)
            if list(inp.molecule.symbols) != symbols:
                raise InputError(f"mbe_input's molecule has atoms {list(inp.molecule.symbols)}, the Atoms {symbols}: "
                                 "they must be the same atoms in the same order")
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
        mol = Molecule(
            symbols=symbols, geometry=coords, fragments=frags,
            fragment_charges=list(spec["fragment_charges"] or [0.0] * nfrag),
            fragment_multiplicities=list(spec["fragment_multiplicities"] or [1] * nfrag),
            fix_com=True, fix_orientation=True,
            molecular_charge=float(sum(spec["fragment_charges"] or [0.0] * nfrag)))
        bsse = [spec["bsse_type"]] if isinstance(spec["bsse_type"], str) else list(spec["bsse_type"])
        kw: dict[str, Any] = {"bsse_type": bsse}
        if spec["max_nbody"] is not None:
            kw["max_nbody"] = spec["max_nbody"]
        return ManyBodyInput(molecule=mol, specification={
            "driver": "gradient", "keywords": kw,
            "specification": {"(auto)": {"program": spec["program"], "model": spec["model"],
                                         "driver": "gradient", "keywords": spec["keywords"]}}})

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
        coords = np.asarray(self.atoms.get_positions(), dtype=float) / Bohr
        assert self._session is not None
        result, record = self._session.run(self._inp, coords, len(self.history) + 1)
        grad = np.asarray(result.properties.return_gradient, dtype=float).reshape(-1, 3)
        self.results = {"energy": record["energy"] * Hartree, "forces": -grad * Hartree / Bohr,
                        "manybody_result": result}
        self.history.append(record)
