"""Generalized MBE of a peptide: subsystems, cancellations, wall/LB and the error against the supersystem.

Usage: PYTHONPATH=. python scripts/bench_gmbe.py [--program pyscf|tblite] [--orders 1 2 3] [--ncores 2]

Peptide: poly-L-alanine, 12 residues (scripts/data/ala12.pdb, 123 atoms), one residue per primary
fragment (cut at Ca-C) and windows of two residues overlapping by one. For each order: subsystems
computed and cancelled, wall time, wall / lower bound (qcmb_async.simulate.makespan_lower_bound over the
measured fragment times), and the error per residue against the supersystem energy computed directly
with the same program. Also the planning time of a 100-residue protein (scripts/data/ala100.pdb).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from qcmb_async import GMBEInput, run
from qcmb_async._core.gmbe_plan import plan_gmbe
from qcmb_async.simulate import makespan_lower_bound

DATA = Path(__file__).parent / "data"
KCAL = 627.509474


def supersystem(program: str, method: str, basis: str | None, inp: GMBEInput) -> float:
    """The uncut peptide's energy with the program run directly (not through qcmb_async)."""
    mol = inp.molecule
    xyz = np.asarray(mol.geometry).reshape(-1, 3)
    symbols = [str(s) for s in mol.symbols]
    if program == "pyscf":
        from pyscf import gto, scf

        m = gto.M(atom=[(s, tuple(c)) for s, c in zip(symbols, xyz, strict=True)], unit="Bohr", basis=basis,
                  verbose=0, symmetry=False)
        mf = scf.RHF(m)
        mf.conv_tol = 1e-10
        return float(mf.kernel())
    from qcelemental import periodictable
    from tblite.interface import Calculator

    calc = Calculator(method.upper().replace("XTB", "xTB"), np.array([periodictable.to_Z(s) for s in symbols]), xyz)
    calc.set("verbosity", 0)
    return float(calc.singlepoint().get("energy"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--program", default="pyscf", choices=("pyscf", "tblite"))
    parser.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--ncores", type=int, default=2)
    args = parser.parse_args()
    method, basis = ("hf", "sto-3g") if args.program == "pyscf" else ("gfn2-xtb", None)
    spec = {"program": args.program, "driver": "energy", "model": {"method": method, "basis": basis}, "keywords": {}}
    pdb = DATA / "ala12.pdb"
    nres = 12
    print(f"poly-Ala {nres} residues ({pdb.name}), {args.program} {method}{'/' + basis if basis else ''}, "
          f"{args.ncores} cores, store off")
    reference = None
    t0 = time.perf_counter()
    for label, kw in (("1 residue per fragment", {}), ("2 residues, overlap 1", {"residues_per_fragment": 2,
                                                                                  "overlap": 1})):
        for order in args.orders:
            inp = GMBEInput.from_pdb(pdb, max_nbody=order, specification=spec, **kw)
            if order > len(inp.fragments):
                continue
            if reference is None:
                t0 = time.perf_counter()
                reference = supersystem(args.program, method, basis, inp)
                print(f"supersystem {reference:.10f} Eh ({time.perf_counter() - t0:.1f} s, run directly)")
            plan = plan_gmbe(inp)
            cancelled = sum(c["cancelled"] for c in plan.summary.values())
            t = time.perf_counter()
            result = run(inp, ncores=args.ncores, store=None)
            wall = time.perf_counter() - t
            meta = result.extras["qcmb_async"]
            durations = [r["end"] - r["start"] for r in meta["fragments"] if r.get("end") and r.get("start")]
            cores = [r.get("cores", 1) for r in meta["fragments"] if r.get("end") and r.get("start")]
            bound = makespan_lower_bound(durations, args.ncores, cores=cores)
            err = (result.properties.return_energy - reference) * KCAL
            print(f"  {label}, GMBE({order}): {len(plan.subsystems)} subsystems computed, {cancelled} cancelled; "
                  f"schedule {meta['wall_time']:.2f} s (whole run {wall:.2f} s), "
                  f"wall/LB {meta['wall_time'] / bound:.3f}; "
                  f"error {err:+.3f} kcal/mol ({err / nres:+.4f} per residue)")
    big = DATA / "ala100.pdb"
    if big.exists():
        for kw in ({"max_nbody": 2}, {"max_nbody": 3, "distance_cutoffs": {2: 8.0, 3: 6.0}}):
            t = time.perf_counter()
            inp = GMBEInput.from_pdb(big, specification=spec, **kw)
            plan = plan_gmbe(inp)
            print(f"planning a 100-residue protein ({len(inp.molecule.symbols)} atoms), {kw}: "
                  f"{time.perf_counter() - t:.2f} s, {len(plan.subsystems)} subsystems (target <= 5 s)")


if __name__ == "__main__":
    main()
