"""Generalized MBE of a peptide: subsystems, cancellations, wall/LB and the error against the supersystem.

Usage: PYTHONPATH=. python scripts/bench_gmbe.py [--programs tblite pyscf] [--ncores 2]
       [--fragmentations 1:0:3 2:1:3] [--pyscf-fragmentations 1:0:3 2:1:2 2:0:3] [--no-planning]

Peptide: poly-L-alanine, 12 residues (scripts/data/ala12.pdb, 123 atoms), cut at Ca-C. A fragmentation
``R:O:N`` is ``residues_per_fragment`` R, ``overlap`` O between consecutive windows, highest order N. Each
(program, fragmentation) is run once, at GMBE(N), with no result store: that run computes every subsystem
of GMBE(1..N) (a subsystem is computed once whatever the orders it serves), and its assembly gives the
total energy through each order. Per order: the subsystems a GMBE(n) run alone would compute (nonzero
coefficient at some order <= n), the distinct subsystems whose coefficients cancel to zero (never
computed), and the error against the supersystem energy computed directly with the same program
(tblite's Calculator or PySCF's RHF, not through qcmb_async), in kcal/mol total and per residue. Per run:
schedule wall time and wall / lower bound (qcmb_async.simulate.makespan_lower_bound over the measured
fragment times). Also the planning time of a 100-residue protein (scripts/data/ala100.pdb).

Programs: tblite GFN2-xTB and PySCF HF/STO-3G (default keywords; the subsystems at qcmb_async's PySCF
conv_tol 1e-10, the supersystem converged to 1e-8 Eh from a density-fitted guess). Writes
scripts/results/bench-gmbe.json (date, load, git commit) or --output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from qcmb_async import GMBEInput, run
from qcmb_async._core.gmbe_plan import plan_gmbe
from qcmb_async.simulate import makespan_lower_bound

DATA = Path(__file__).parent / "data"
RESULTS = Path(__file__).parent / "results"
KCAL = 627.5094740631  # kcal/mol per Eh (CODATA 2018)
RESIDUES = 12
MODELS = {"tblite": ("gfn2-xtb", None), "pyscf": ("hf", "sto-3g")}


def supersystem(program: str, inp: GMBEInput) -> float:
    """The uncut peptide's energy (Eh) with the program run directly (not through qcmb_async)."""
    mol = inp.molecule
    xyz = np.asarray(mol.geometry).reshape(-1, 3)
    if program == "pyscf":
        from pyscf import gto, scf

        m = gto.M(atom=[(str(s), tuple(c)) for s, c in zip(mol.symbols, xyz, strict=True)], unit="Bohr",
                  basis="sto-3g", verbose=0, symmetry=False)
        # A direct Fock build of the 367-AO peptide costs ~80 CPU s, so start from the density-fitted SCF's
        # density and polish with exact integrals: the energy is the conventional RHF one, converged to 1e-8 Eh.
        guess = scf.RHF(m).density_fit()
        guess.conv_tol = 1e-8
        guess.kernel()
        mf = scf.RHF(m)
        mf.conv_tol = 1e-8
        mf.conv_check = False  # the extra confirming cycle is one more 80 s build
        energy = float(mf.kernel(dm0=guess.make_rdm1()))
        if not mf.converged:
            raise RuntimeError("the supersystem SCF did not converge")
        return energy
    from tblite.interface import Calculator

    calc = Calculator("GFN2-xTB", np.asarray(mol.atomic_numbers), xyz)
    calc.set("verbosity", 0)
    return float(calc.singlepoint().get("energy"))


def parse_fragmentation(text: str) -> tuple[int, int, int]:
    """``"R:O:N"`` -> (residues_per_fragment, overlap, highest order)."""
    try:
        r, o, n = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"fragmentation {text!r}: give R:O:N, e.g. 2:1:3") from None
    return r, o, n


def run_case(program: str, frag: tuple[int, int, int], reference: float, ncores: int) -> dict[str, Any]:
    """One GMBE(N) run of the peptide; the row per order (see the module docstring)."""
    method, basis = MODELS[program]
    spec = {"program": program, "driver": "energy", "model": {"method": method, "basis": basis}, "keywords": {}}
    r, o, top = frag
    inp = GMBEInput.from_pdb(DATA / "ala12.pdb", residues_per_fragment=r, overlap=o, max_nbody=top,
                             specification=spec)
    t = time.perf_counter()
    plan = plan_gmbe(inp)
    planning = time.perf_counter() - t
    load_start = os.getloadavg()
    t = time.perf_counter()
    result = run(inp, ncores=ncores, store=None)
    whole = time.perf_counter() - t
    meta = result.extras["qcmb_async"]
    done = [f for f in meta["fragments"] if f.get("end") and f.get("start")]
    bound = makespan_lower_bound([f["end"] - f["start"] for f in done], ncores, cores=[f.get("cores", 1) for f in done])
    orders = []
    for n in range(1, top + 1):
        err = (result.properties.total_energy_through[n] - reference) * KCAL
        orders.append({
            "order": n, "nmers": plan.summary[n]["nmers"], "distinct": plan.summary[n]["family"],
            "cancelled": plan.summary[n]["cancelled"],
            "computed": sum(1 for s in plan.subsystems if min(s.coefficients) <= n),
            "energy": result.properties.total_energy_through[n], "error_kcal": err,
            "error_kcal_per_residue": err / RESIDUES})
    row = {"program": program, "method": method, "basis": basis, "residues_per_fragment": r, "overlap": o,
           "primary_fragments": len(inp.fragments), "max_nbody": top, "subsystems": len(plan.subsystems),
           "largest_subsystem_atoms": max(len(s.atoms) + len(s.caps) for s in plan.subsystems),
           "planning_s": planning, "schedule_wall_s": meta["wall_time"], "whole_run_s": whole,
           "lower_bound_s": bound, "wall_over_lb": meta["wall_time"] / bound,
           "fragment_seconds": sum(f["end"] - f["start"] for f in done), "load_start": load_start,
           "load_end": os.getloadavg(), "orders": orders}
    return row


def planning_100(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for kw in ({"max_nbody": 2}, {"max_nbody": 3, "distance_cutoffs": {2: 8.0, 3: 6.0}}):
        t = time.perf_counter()
        inp = GMBEInput.from_pdb(DATA / "ala100.pdb", specification=spec, **kw)
        plan = plan_gmbe(inp)
        out.append({"options": kw, "atoms": len(inp.molecule.symbols), "seconds": time.perf_counter() - t,
                    "subsystems": len(plan.subsystems)})
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| program | fragments | order | subsystems computed | cancelled (net 0) | error vs supersystem, "
             "kcal/mol (per residue) | run: schedule wall, wall/LB |", "|---|---|---|---:|---:|---:|---|"]
    for row in rows:
        name = "GFN2-xTB" if row["program"] == "tblite" else "HF/STO-3G"
        frags = (f"{row['residues_per_fragment']} residue{'s' if row['residues_per_fragment'] > 1 else ''}"
                 + (f", overlap {row['overlap']}" if row["overlap"] else ""))
        for o in row["orders"]:
            run_cell = (f"GMBE({row['max_nbody']}) run: {row['schedule_wall_s']:.1f} s, {row['wall_over_lb']:.3f}"
                        if o["order"] == row["max_nbody"] else "")
            lines.append(f"| {name} | {frags} | GMBE({o['order']}) | {o['computed']} | {o['cancelled']} | "
                         f"{o['error_kcal']:+.3f} ({o['error_kcal_per_residue']:+.4f}) | {run_cell} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", nargs="+", default=["tblite", "pyscf"], choices=sorted(MODELS))
    parser.add_argument("--fragmentations", nargs="+", type=parse_fragmentation, default=[(1, 0, 3), (2, 1, 3)],
                        help="R:O:N per run for GFN2-xTB (default 1:0:3 2:1:3)")
    parser.add_argument("--pyscf-fragmentations", nargs="+", type=parse_fragmentation,
                        default=[(1, 0, 3), (2, 1, 2), (2, 0, 3)],
                        help="R:O:N per run for HF/STO-3G (default 1:0:3 2:1:2 2:0:3: the 727 subsystems of up to "
                             "70 atoms of 2:1:3 take hours of PySCF on two busy cores)")
    parser.add_argument("--ncores", type=int, default=2)
    parser.add_argument("--no-planning", action="store_true", help="skip planning the 100-residue protein")
    parser.add_argument("--output", type=Path, default=RESULTS / "bench-gmbe.json")
    args = parser.parse_args()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    print(f"poly-Ala {RESIDUES} residues (ala12.pdb, 123 atoms), {args.ncores} cores, store off; "
          f"load {load_start[0]:.1f}", flush=True)
    supers: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    for program in args.programs:
        method, basis = MODELS[program]
        spec = {"program": program, "driver": "energy", "model": {"method": method, "basis": basis}, "keywords": {}}
        inp = GMBEInput.from_pdb(DATA / "ala12.pdb", max_nbody=1, specification=spec)
        t = time.perf_counter()
        energy = supersystem(program, inp)
        supers[program] = {"energy": energy, "seconds": time.perf_counter() - t}
        print(f"{program} {method}{'/' + basis if basis else ''}: supersystem {energy:.10f} Eh "
              f"({supers[program]['seconds']:.1f} s, run directly)", flush=True)
        for frag in args.pyscf_fragmentations if program == "pyscf" else args.fragmentations:
            row = run_case(program, frag, energy, args.ncores)
            rows.append(row)
            save(args.output, started, load_start, args.ncores, supers, rows, None)  # a partial run keeps its rows
            print(json.dumps({k: v for k, v in row.items() if k != "orders"}), flush=True)
            for o in row["orders"]:
                print(f"  {frag[0]} res/fragment, overlap {frag[1]}, GMBE({o['order']}): {o['computed']} subsystems "
                      f"computed, {o['cancelled']} cancelled; error {o['error_kcal']:+.3f} kcal/mol "
                      f"({o['error_kcal_per_residue']:+.4f} per residue)", flush=True)
    planning = None
    if not args.no_planning and (DATA / "ala100.pdb").exists():
        planning = planning_100({"program": "tblite", "driver": "energy", "model": {"method": "gfn2-xtb"},
                                 "keywords": {}})
        for p in planning:
            print(f"planning a 100-residue protein ({p['atoms']} atoms), {p['options']}: {p['seconds']:.2f} s, "
                  f"{p['subsystems']} subsystems (target <= 5 s)", flush=True)
    save(args.output, started, load_start, args.ncores, supers, rows, planning)
    print(markdown(rows))


def save(path: Path, started: str, load_start: tuple[float, ...], ncores: int, supers: dict[str, Any],
         rows: list[dict[str, Any]], planning: list[dict[str, Any]] | None) -> None:
    """Write the results JSON (after every run, so an interrupted benchmark keeps what it measured)."""
    git = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    meta = {"started": started, "finished": datetime.now(UTC).isoformat(timespec="seconds"), "git": git,
            "cpus": os.cpu_count(), "ncores": ncores, "load_start": load_start, "load_end": os.getloadavg()}
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "supersystem": supers, "rows": rows, "planning_100": planning},
                               indent=1))


if __name__ == "__main__":
    main()
