"""qcmb_async.ase.ManyBodyCalculator with real PySCF.

* NoCP MBE(2) of a water dimer is the dimer: energy (eV) and forces (eV/Å) against PySCF run
  directly here; ASE asking twice at one geometry runs one MBE; a geometry seen before is served
  from the result store (no fragment computed).
* NVE molecular dynamics of a water trimer, MBE(2) NoCP, 20 steps: total energy drifts no more than
  the same MD with a supersystem calculator (PySCF directly) does, plus a small margin.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.helpers import WATER_TRIMER, require_module, require_program

TIGHT = {"conv_tol": 1e-11, "conv_tol_grad": 1e-8}


def _atoms(n: int) -> Any:
    from ase import Atoms

    lines = [ln.split() for ln in WATER_TRIMER.strip().splitlines() if ln.strip() != "--"][: 3 * n]
    return Atoms("".join(ln[0] for ln in lines), positions=[[float(x) for x in ln[1:]] for ln in lines])


class _PySCFSupersystem:
    """A minimal ASE calculator running PySCF RHF on the whole system (the independent reference)."""

    def __new__(cls, basis: str) -> Any:
        from ase.calculators.calculator import Calculator, all_changes
        from ase.units import Bohr, Hartree

        class Calc(Calculator):
            implemented_properties = ("energy", "forces")

            def calculate(self, atoms: Any = None, properties: Any = ("energy",),
                          system_changes: Any = all_changes) -> None:
                from pyscf import gto, scf

                super().calculate(atoms, properties, system_changes)
                mol = gto.M(atom=[(s, tuple(p)) for s, p in zip(self.atoms.get_chemical_symbols(),
                                                                 self.atoms.get_positions(), strict=True)],
                            unit="Angstrom", basis=basis, verbose=0)
                mf = scf.RHF(mol)
                mf.conv_tol, mf.conv_tol_grad = TIGHT["conv_tol"], TIGHT["conv_tol_grad"]
                mf.kernel()
                grad = mf.nuc_grad_method().kernel()
                self.results = {"energy": mf.e_tot * Hartree, "forces": -np.asarray(grad) * Hartree / Bohr}

        return Calc()


def test_dimer_energy_forces_and_no_recompute(tmp_path: Any) -> None:
    require_module("ase")
    require_program("pyscf")
    from ase.units import Bohr, Hartree

    from qcmb_async import events as ev
    from qcmb_async.ase import ManyBodyCalculator

    atoms = _atoms(2)
    ref = _atoms(2)
    ref.calc = _PySCFSupersystem("sto-3g")
    seen: list[Any] = []
    with ManyBodyCalculator(fragments=[[0, 1, 2], [3, 4, 5]], program="pyscf",
                            model={"method": "hf", "basis": "sto-3g"}, keywords=TIGHT, bsse_type="nocp",
                            max_nbody=2, ncores=2, memory=2, store=tmp_path / "store.sqlite",
                            on_event=seen.append) as calc:
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        assert len(calc.history) == 1  # forces came with the energy: ASE asked, nothing ran again
        assert calc.history[0]["computed"] == 3
        assert energy == pytest.approx(ref.get_potential_energy(), abs=1e-7)
        np.testing.assert_allclose(forces, ref.get_forces(), rtol=0, atol=1e-6)
        assert np.abs(forces).max() > 0.1  # real forces, not zeros

        original = atoms.get_positions()
        atoms.positions[0, 0] += 0.05
        moved = atoms.get_forces()
        assert len(calc.history) == 2
        # one water moved: its monomer and the dimer are new, the other monomer is the store's
        assert (calc.history[1]["computed"], calc.history[1]["cached"]) == (2, 1)
        assert not np.allclose(moved, forces)
        atoms.set_positions(original)
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-10)
        assert (calc.history[2]["computed"], calc.history[2]["cached"]) == (0, 3)
    assert calc._session is not None and calc._session.closed
    # one StepStarted/StepFinished pair per MBE, numbered, at the atoms' positions, with PySCF's numbers
    starts = [e for e in seen if isinstance(e, ev.StepStarted)]
    ends = [e for e in seen if isinstance(e, ev.StepFinished)]
    assert [(e.kind, e.step) for e in starts] == [(e.kind, e.step) for e in ends] == [("ase", k) for k in (1, 2, 3)]
    np.testing.assert_allclose(np.asarray(starts[0].geometry) * Bohr, original, rtol=0, atol=1e-12)
    assert ends[0].energy * Hartree == pytest.approx(ref.get_potential_energy(), abs=1e-7)
    assert ends[0].gradient_max * Hartree / Bohr == pytest.approx(np.abs(ref.get_forces()).max(), abs=1e-6)
    assert [(e.computed, e.cached) for e in ends] == [(3, 0), (2, 1), (0, 3)]


def test_periodic_atoms_and_changed_elements_are_input_errors(tmp_path: Any) -> None:
    require_module("ase")
    require_program("pyscf")
    from qcmb_async import InputError
    from qcmb_async.ase import ManyBodyCalculator

    seen: list[Any] = []
    with ManyBodyCalculator(fragments=[[0, 1, 2], [3, 4, 5]], program="pyscf",
                            model={"method": "hf", "basis": "sto-3g"}, ncores=1, store=tmp_path / "store.sqlite",
                            on_event=seen.append) as calc:
        periodic = _atoms(2)
        periodic.set_cell([12.0, 12.0, 12.0])
        periodic.pbc = True
        periodic.calc = calc
        with pytest.raises(InputError, match="periodic"):
            periodic.get_potential_energy()
        assert seen == [] and calc.history == []  # nothing ran

        atoms = _atoms(2)
        atoms.calc = calc
        atoms.get_potential_energy()
        assert len(calc.history) == 1
        atoms.numbers[3] = 16  # the second water's O becomes S: same atom count, another molecule
        with pytest.raises(InputError, match="make a new ManyBodyCalculator"):
            atoms.get_potential_energy()
        assert len(calc.history) == 1  # not computed as the old water dimer


@pytest.mark.slow
def test_nve_md_conserves_energy_like_the_supersystem() -> None:
    require_module("ase")
    require_program("pyscf")
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from qcmb_async.ase import ManyBodyCalculator

    def drift(calc: Any) -> tuple[float, list[float]]:
        atoms = _atoms(3)
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(7))
        atoms.calc = calc
        totals: list[float] = []
        dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
        dyn.attach(lambda: totals.append(atoms.get_potential_energy() + atoms.get_kinetic_energy()), interval=1)
        dyn.run(20)
        return max(totals) - min(totals), totals

    with ManyBodyCalculator(fragments=[[0, 1, 2], [3, 4, 5], [6, 7, 8]], program="pyscf",
                            model={"method": "hf", "basis": "sto-3g"}, keywords=TIGHT, bsse_type="nocp",
                            max_nbody=2, ncores=2, memory=2, store=None) as calc:
        mbe_drift, totals = drift(calc)
        assert len(calc.history) == 21  # one MBE per step (plus the start), none repeated
    super_drift, super_totals = drift(_PySCFSupersystem("sto-3g"))
    assert len(totals) == 21
    # MBE(2) is a different (smooth) potential: its drift is the integrator's, like the supersystem's.
    assert mbe_drift <= 2 * super_drift + 1e-4, (mbe_drift, super_drift)
    # and the two trajectories are genuinely different potentials (the 3-body term is missing)
    assert abs(totals[0] - super_totals[0]) > 1e-4


def test_garbage_collection_stops_the_pool() -> None:
    require_module("ase")
    require_program("pyscf")
    import gc
    import time

    import psutil

    from qcmb_async.ase import ManyBodyCalculator

    atoms = _atoms(2)
    calc = ManyBodyCalculator(fragments=[[0, 1, 2], [3, 4, 5]], program="pyscf",
                              model={"method": "hf", "basis": "sto-3g"}, bsse_type="nocp", max_nbody=2,
                              ncores=2, memory=2, store=None, executor="processes")
    atoms.calc = calc
    atoms.get_potential_energy()
    pids = {int(r["pid"]) for r in calc.results["manybody_result"].extras["qcmb_async"]["fragments"]}
    session = calc._session
    assert pids and all(psutil.pid_exists(p) for p in pids)  # the pool outlives the calculation
    del calc, atoms
    gc.collect()
    assert session is not None and session.closed
    deadline = time.time() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
        assert time.time() < deadline, "worker processes still running after the calculator was collected"
        time.sleep(0.1)


def test_initial_charges_must_agree_with_the_inputs_charges() -> None:
    """Atoms' initial charges are never silently ignored: matching ones compute (water + Li+, HF/STO-3G, equal to
    PySCF's own RHF of the charged supersystem: a full NoCP expansion is exact); contradicting ones, for an MBE
    or a GMBEInput, are an InputError before anything runs."""
    require_module("ase")
    require_program("pyscf")
    from ase import Atoms
    from ase.units import Hartree
    from pyscf import gto, scf

    from qcmb_async import GMBEInput, InputError
    from qcmb_async.ase import ManyBodyCalculator

    positions = [(0.0, 0.0, 0.0), (0.757, 0.586, 0.0), (-0.757, 0.586, 0.0), (0.0, -2.0, 0.0)]
    atoms = Atoms("OH2Li", positions=positions)
    atoms.set_initial_charges([0, 0, 0, 1])
    kw: dict[str, Any] = {"program": "pyscf", "model": {"method": "hf", "basis": "sto-3g"}, "keywords": TIGHT,
                          "executor": "threads", "store": None}
    with ManyBodyCalculator([[0, 1, 2], [3]], fragment_charges=[0, 1], **kw) as calc:
        atoms.calc = calc
        energy = atoms.get_potential_energy()
    mf = scf.RHF(gto.M(atom=list(zip(["O", "H", "H", "Li"], positions, strict=True)),
                       unit="Angstrom", basis="sto-3g", charge=1, verbose=0))
    mf.conv_tol = TIGHT["conv_tol"]
    assert energy == pytest.approx(mf.kernel() * Hartree, abs=1e-6)
    with ManyBodyCalculator([[0, 1, 2], [3]], **kw) as calc:  # fragment charges left at 0: the Atoms say +1
        atoms.calc = calc
        with pytest.raises(InputError, match=r"initial charges add up to \[1\.0\] on fragment\(s\) \[1\]"):
            atoms.get_potential_energy()
    # A GMBEInput: per atom, against atom_charges (none given: all 0).
    from tests.test_gmbe import _ethane

    mol, frags = _ethane()
    gmbe = GMBEInput(molecule=mol, fragments=frags, max_nbody=1,
                     specification={"program": "pyscf", "model": {"method": "hf", "basis": "sto-3g"}})
    ethane = Atoms(list(mol.symbols), positions=np.asarray(mol.geometry).reshape(-1, 3) * 0.52917721067)
    ethane.set_initial_charges([1, 0, 0, 0, 0, 0, 0, -1])
    with ManyBodyCalculator(mbe_input=gmbe, executor="threads", store=None) as calc:
        ethane.calc = calc
        with pytest.raises(InputError, match=r"differ from the GMBEInput's atom_charges at atom\(s\) \[0, 7\]"):
            ethane.get_potential_energy()
