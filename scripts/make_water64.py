"""Build the (H2O)64 cluster of ``scripts/data/water64.xyz`` reproducibly (GFN2-xTB local minimum).

Recipe (no internet, only installed packages):

1. 64 waters on a 4 x 4 x 4 simple cubic lattice, O-O 2.9 Å (``benchlib.molecules.water_lattice``,
   seed 0: random orientations, no two atoms of different waters closer than 1.75 Å);
2. relaxed with GFN2-xTB (tblite's ASE calculator, one OpenMP thread, ``accuracy=1``) by ASE's
   ``LBFGS`` until the largest force is below ``--fmax`` eV/Å (default 0.05) or ``--steps`` steps;
3. checked: every water intact (O-H 0.9-1.1 Å, no intermolecular contact below 1.4 Å), the binding
   energy per water against 64 isolated GFN2-xTB waters printed (liquid-like clusters of this size
   sit near -10 to -12 kcal/mol per water with GFN2-xTB);
4. written as XYZ (Å), waters in order, the comment line carrying the GFN2-xTB energy (Eh).

    OMP_NUM_THREADS=1 python scripts/make_water64.py [--out scripts/data/water64.xyz] [--fmax 0.05]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

HARTREE_EV = 27.211386245988
KCAL_PER_EH = 627.5094740631


def build(spacing: float = 2.9, n: int = 64, seed: int = 0):
    """The unrelaxed lattice cluster as ``ase.Atoms`` (Å)."""
    from ase import Atoms
    from benchlib.molecules import water_lattice
    from qcelemental import constants

    mol = water_lattice(n, spacing=spacing, seed=seed)
    return Atoms(symbols=[str(s) for s in mol.symbols], positions=np.asarray(mol.geometry) * constants.bohr2angstroms)


def gfn2(atoms) -> float:
    """GFN2-xTB energy of ``atoms`` in Eh (tblite)."""
    from tblite.interface import Calculator

    calc = Calculator("GFN2-xTB", atoms.numbers, atoms.positions / 0.52917721092)
    calc.set("verbosity", 0)
    return float(calc.singlepoint().get("energy"))


def check(atoms) -> dict[str, float]:
    """O-H range and closest intermolecular contact (Å); raises when a water broke or atoms clash."""
    pos = atoms.positions.reshape(-1, 3, 3)
    oh = np.linalg.norm(pos[:, 1:] - pos[:, :1], axis=-1)
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    owner = np.repeat(np.arange(len(pos)), 3)
    d[owner[:, None] == owner[None]] = np.inf
    report = {"oh_min": float(oh.min()), "oh_max": float(oh.max()), "closest_inter": float(d.min())}
    if not (oh.min() > 0.9 and oh.max() < 1.1 and d.min() > 1.4):
        raise ValueError(f"broken cluster: {report}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data" / "water64.xyz")
    parser.add_argument("--fmax", type=float, default=0.05, help="force convergence, eV/Å")
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    from ase.optimize import LBFGS
    from tblite.ase import TBLite

    atoms = build()
    atoms.calc = TBLite(method="GFN2-xTB", accuracy=1.0, verbosity=0)
    start = time.perf_counter()
    opt = LBFGS(atoms, logfile="-")
    nw = len(atoms) // 3

    def write(note: str) -> None:
        lines = [str(len(atoms)), f"(H2O){nw} GFN2-xTB LBFGS (scripts/make_water64.py) {note}"]
        lines += [f"{s:2s} {x:15.8f} {y:15.8f} {z:15.8f}" for s, (x, y, z) in zip(atoms.get_chemical_symbols(),
                                                                                   atoms.positions, strict=True)]
        args.out.write_text("\n".join(lines) + "\n")

    # A checkpoint every 10 steps: stopped early, the file is the geometry after that many steps (``--steps``).
    opt.attach(lambda: write(f"after {opt.nsteps} steps, not final"), interval=10)
    converged = opt.run(fmax=args.fmax, steps=args.steps)
    wall = time.perf_counter() - start
    report = check(atoms)
    energy = gfn2(atoms)
    mono = sum(gfn2(atoms[3 * i:3 * i + 3]) for i in range(nw))
    binding = (energy - mono) / nw * KCAL_PER_EH
    fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    print(f"converged={converged} steps={opt.nsteps} fmax={fmax:.4f} eV/A wall={wall:.0f} s E={energy:.10f} Eh "
          f"binding={binding:.2f} kcal/mol per water (unrelaxed monomers) {report}")
    write(f"--fmax {args.fmax} --steps {args.steps}: {opt.nsteps} steps, largest force {fmax:.4f} eV/A, "
          f"E(GFN2-xTB)={energy:.10f} Eh, binding {binding:.2f} kcal/mol per water")
    return 0 if converged else 1


if __name__ == "__main__":
    sys.exit(main())
