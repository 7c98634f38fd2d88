"""Screened expansions: subsystems computed, wall time and error per monomer against the unscreened MBE.

Each case runs the unscreened expansion once (the reference), then each screening with a fresh
(no) result store, so every fragment of a screened run is really computed. Planning 100 waters at
4-body measures time and traced memory of distance screening alone.
"""

from __future__ import annotations

import math
import resource
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

from qcmb_async import plan_manybody, run

from .molecules import mbe, water_lattice

KCAL_PER_EH = 627.509474


@dataclass
class ScreeningCase:
    key: str
    title: str
    nwaters: int
    program: str
    method: str
    basis: str | None
    bsse: str
    max_nbody: int
    screenings: list[dict[str, Any]] = field(default_factory=list)

    def input(self) -> Any:
        return mbe(water_lattice(self.nwaters), self.program, self.method, self.basis, bsse=self.bsse,
                   max_nbody=self.max_nbody, keep_all=False)


CASES = [
    ScreeningCase("w20-mbe4-mopac", "(H2O)20 MBE(4), NoCP, MOPAC PM7", 20, "mopac", "pm7", None, "nocp", 4, [
        {"distance": {2: 8.0, 3: 6.0, 4: 5.0}},
        {"distance": {2: 6.0, 3: 5.0, 4: 4.5}},
        {"distance": {2: 5.0, 3: 4.0, 4: 3.5}},
        {"distance": {2: 7.0, 3: 5.5, 4: 4.8}},
        {"distance": {2: 8.0, 3: 5.5, 4: 4.5}},
        {"energy": {3: 1e-4, 4: 1e-5}},
        {"distance": {2: 8.0, 3: 6.0}, "energy": {4: 1e-4}},
        {"distance": {2: 8.0}, "energy": {3: 2e-4, 4: 5e-5}},
    ]),
    ScreeningCase("w32-mbe3-mopac", "(H2O)32 MBE(3), NoCP, MOPAC PM7", 32, "mopac", "pm7", None, "nocp", 3, [
        {"distance": {2: 8.0, 3: 6.0}},
        {"distance": {2: 6.0, 3: 4.5}},
        {"energy": {3: 1e-4}},
    ]),
    ScreeningCase("w6-mbe3-cp-pyscf", "(H2O)6 MBE(3), CP, PySCF HF/STO-3G", 6, "pyscf", "hf", "sto-3g", "cp", 3, [
        {"distance": {2: 5.0, 3: 4.0}},
        {"distance": {2: 3.5, 3: 2.5}},
        {"energy": {3: 2e-3}},
    ]),
]


def _upper_body_share(summary: dict[str, Any] | None, nfrag: int, max_nbody: int) -> float:
    """Kept share of the >= 3-body subsystems."""
    possible = sum(math.comb(nfrag, k) for k in range(3, max_nbody + 1))
    if summary is None:
        return 1.0
    kept = sum(summary["orders"][str(k)]["kept"] for k in range(3, max_nbody + 1))
    return kept / possible if possible else 1.0


def run_case(case: ScreeningCase, ncores: int, reference: dict[str, Any] | None = None,
             only: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The unscreened run (or ``reference``: its row from an earlier run of this case), then each screening
    (or only those in ``only``)."""
    inp = case.input()
    if reference is None:
        t0 = time.perf_counter()
        full = run(inp, store=None, ncores=ncores)
        full_wall = time.perf_counter() - t0
        reference = {"screening": None, "fragments": len(full.extras["qcmb_async"]["fragments"]),
                     "fragments_pct": 100.0, "upper_body_pct": 100.0, "wall_s": full_wall,
                     "energy_eh": float(full.properties.return_energy), "error_kcal_per_monomer": 0.0}
    e_full, n_full = reference["energy_eh"], reference["fragments"]
    rows = [reference]
    for spec in case.screenings if only is None else only:
        t0 = time.perf_counter()
        res = run(inp, store=None, ncores=ncores, screening=spec)
        wall = time.perf_counter() - t0
        summary = res.extras["qcmb_async"]["screening"]
        n = len(res.extras["qcmb_async"]["fragments"])
        err = abs(float(res.properties.return_energy) - e_full) * KCAL_PER_EH / case.nwaters
        rows.append({"screening": spec, "fragments": n, "fragments_pct": 100.0 * n / n_full,
                     "upper_body_pct": 100.0 * _upper_body_share(summary, case.nwaters, case.max_nbody),
                     "wall_s": wall, "energy_eh": float(res.properties.return_energy),
                     "error_kcal_per_monomer": err, "orders": summary["orders"]})
    return {"key": case.key, "title": case.title, "ncores": ncores, "rows": rows}


def planning_100(cutoffs: dict[int, float] | None = None) -> dict[str, Any]:
    """Distance screening of 100 waters, MBE(4): time and traced peak memory of planning alone."""
    cutoffs = cutoffs or {2: 9.0, 3: 7.0, 4: 5.5}
    inp = mbe(water_lattice(100), "mopac", "pm7", None, bsse="nocp", max_nbody=4, keep_all=False)
    plan_manybody(inp, screening={"distance": {2: 1.0}})  # imports warm
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    plan = plan_manybody(inp, screening={"distance": cutoffs})
    elapsed = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    plan_manybody(inp, screening={"distance": cutoffs})
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    orders = plan.screen.summary()["orders"]
    return {"cutoffs": cutoffs, "seconds": elapsed, "traced_peak_mib": peak,
            "max_rss_growth_mib": (rss1 - rss0) / 1024, "fragments": len(plan.fragments),
            "kept": {k: v["kept"] for k, v in orders.items()},
            "possible": {k: v["possible"] for k, v in orders.items()}}


def run_large(ncores: int, cutoffs: dict[int, float] | None = None) -> dict[str, Any]:
    """A screened (H2O)100 MBE(4) MOPAC PM7 NoCP run: no unscreened reference (3.9 M tetramers); wall
    time, fragments computed and the time to assemble (from the kept increments directly)."""

    cutoffs = cutoffs or {2: 6.0, 3: 5.0, 4: 4.5}
    inp = mbe(water_lattice(100), "mopac", "pm7", None, bsse="nocp", max_nbody=4, keep_all=False)
    t0 = time.perf_counter()
    res = run(inp, store=None, ncores=ncores, screening={"distance": cutoffs})
    wall = time.perf_counter() - t0
    meta = res.extras["qcmb_async"]
    return {"cutoffs": cutoffs, "wall_s": wall, "schedule_s": meta["wall_time"],
            "assembly_and_planning_s": wall - meta["wall_time"], "fragments": len(meta["fragments"]),
            "kept": {k: v["kept"] for k, v in meta["screening"]["orders"].items()},
            "energy_eh": float(res.properties.return_energy)}


def describe(spec: dict[str, Any] | None) -> str:
    if spec is None:
        return "unscreened"
    parts = []
    if spec.get("distance"):
        parts.append("d " + ",".join(f"{k}:{v:g}" for k, v in spec["distance"].items()) + " Å")
    if spec.get("energy"):
        parts.append("E " + ",".join(f"{k}:{v:g}" for k, v in spec["energy"].items()) + " Eh")
    return "; ".join(parts)


def markdown(cases: list[dict[str, Any]], planning: dict[str, Any], large: dict[str, Any] | None = None) -> str:
    lines = []
    for case in cases:
        lines.append(f"**{case['title']}** ({case['ncores']} cores)\n")
        lines.append("| screening | fragments | % of full | % of ≥3-body | wall / s | error / (kcal/mol per monomer) |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for r in case["rows"]:
            lines.append(f"| {describe(r['screening'])} | {r['fragments']:,} | {r['fragments_pct']:.1f} | "
                         f"{r['upper_body_pct']:.1f} | {r['wall_s']:.1f} | {r['error_kcal_per_monomer']:.4f} |")
        lines.append("")
    p = planning
    lines.append(f"Planning 100 waters MBE(4), cutoffs {p['cutoffs']}: {p['seconds']:.2f} s, traced peak "
                 f"{p['traced_peak_mib']:.1f} MiB, max RSS growth {p['max_rss_growth_mib']:.1f} MiB, "
                 f"{p['fragments']:,} fragments kept (per order {p['kept']} of {p['possible']}).")
    if large is not None:
        lines.append("")
        lines.append(f"Screened (H2O)100 MBE(4), MOPAC PM7 NoCP, cutoffs {large['cutoffs']} Å: {large['fragments']:,} "
                     f"fragments (per order {large['kept']}), {large['wall_s']:.1f} s wall of which "
                     f"{large['schedule_s']:.1f} s scheduling/computing and {large['assembly_and_planning_s']:.1f} s "
                     f"planning, start-up and assembly.")
    return "\n".join(lines)
