"""The user-facing ends of the generalized MBE: the ASE calculator, the CLI's residue charges, GMBE input files,
``plan``'s tables and the Hessian refusal.

References are independent of the product: the GMBE energy of tests/gmbe_reference.py (the textbook
inclusion-exclusion sum, caps placed there, PySCF run directly) and its central finite differences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qcmb_async import GMBEInput
from tests import gmbe_reference as ref
from tests.helpers import require_module, require_program
from tests.test_gmbe import HEXANE, HEXANE_BONDS, OVERLAPPING, SPEC, _molecule

DATA = Path(__file__).parent / "data"
GRAD_SPEC = {**SPEC, "driver": "gradient"}


def _hexane_atoms() -> Any:
    from ase import Atoms

    return Atoms("".join(a[0] for a in HEXANE), positions=[a[1:] for a in HEXANE])


def _reference(positions_angstrom: np.ndarray, order: int) -> float:
    """GMBE(order) energy (Eh) of hexane with the overlapping fragments, by the textbook helper."""
    from ase.units import Bohr

    return ref.gmbe_energy([a[0] for a in HEXANE], np.asarray(positions_angstrom) / Bohr, HEXANE_BONDS, OVERLAPPING,
                           order, ref.pyscf_energy("hf", "sto-3g"))


def test_ase_calculator_takes_a_gmbe_input(tmp_path: Any) -> None:
    require_module("ase")
    require_program("pyscf")
    from ase.optimize import BFGS
    from ase.units import Bohr, Hartree

    from qcmb_async.ase import ManyBodyCalculator

    atoms = _hexane_atoms()
    inp = GMBEInput(molecule=_molecule(HEXANE), fragments=OVERLAPPING, max_nbody=2, specification=SPEC)
    with ManyBodyCalculator(mbe_input=inp, ncores=2, store=tmp_path / "store.sqlite") as calc:
        atoms.calc = calc
        energy = atoms.get_potential_energy() / Hartree
        forces = atoms.get_forces()
        result = calc.results["manybody_result"]
        assert result.schema_name == "qcmb_async_gmbe_result"
        assert any(s["caps"] for s in result.extras["gmbe"]["subsystems"])  # a capped expansion, not the molecule
        start = atoms.get_positions()
        assert energy == pytest.approx(_reference(start, 2), abs=1e-9)
        # Forces against central differences of the textbook energy: both atoms of a cut bond (C2-C3, the
        # caps' chain rule) and a hydrogen.
        h = 1e-3  # Å
        for atom, axis in ((2, 0), (3, 1), (11, 2)):
            energies = []
            for sign in (1, -1):
                moved = start.copy()
                moved[atom, axis] += sign * h
                energies.append(_reference(moved, 2))
            fd_force = -(energies[0] - energies[1]) / (2 * h / Bohr) * Hartree / Bohr  # eV/Å
            assert forces[atom, axis] == pytest.approx(fd_force, abs=1e-6 * Hartree / Bohr), (atom, axis)
        assert np.abs(forces).max() > 0.05
        # Two BFGS steps downhill; at the new positions the caps were placed again: the energy is the textbook
        # GMBE energy of the moved molecule (its caps built by the helper from the moved atoms).
        BFGS(atoms, logfile=None).run(fmax=1e-4, steps=2)
        assert len(calc.history) >= 3
        moved_energy = atoms.get_potential_energy() / Hartree
        assert moved_energy < energy - 1e-5
        assert np.abs(atoms.get_positions() - start).max() > 1e-3
        assert moved_energy == pytest.approx(_reference(atoms.get_positions(), 2), abs=1e-9)


def test_ase_calculator_refuses_other_atoms_for_a_gmbe_input() -> None:
    require_module("ase")
    from qcmb_async import InputError
    from qcmb_async.ase import ManyBodyCalculator

    inp = GMBEInput(molecule=_molecule(HEXANE), fragments=OVERLAPPING, max_nbody=1, specification=SPEC)
    atoms = _hexane_atoms()[::-1]  # the same atoms in another order
    with ManyBodyCalculator(mbe_input=inp.model_dump_json()) as calc:
        atoms.calc = calc
        with pytest.raises(InputError, match="same atoms in the same order"):
            atoms.get_potential_energy()
