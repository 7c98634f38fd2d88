"""Energy tables, named with QCManyBody's own ``BsseEnum`` terms."""

from __future__ import annotations

import re
from typing import Any

from qcmanybody.models.v2 import BsseEnum

#: What the tables call each BSSE treatment (QCManyBody's ``BsseEnum``).
BSSE_NAMES: dict[BsseEnum, str] = {
    BsseEnum.cp: "counterpoise-corrected (cp)",
    BsseEnum.nocp: "uncorrected (nocp)",
    BsseEnum.vmfc: "Valiron-Mayer function counterpoise (vmfc)",
}
_BSSE = "|".join(b.value for b in BsseEnum)
_TOTAL = re.compile(rf"^({_BSSE})_corrected_total_energy_through_(\d+)_body$")
_INTER = re.compile(rf"^({_BSSE})_corrected_interaction_energy_through_(\d+)_body$")
_CONTRIB = re.compile(rf"^({_BSSE})_corrected_(\d+)_body_contribution_to_energy$")


def _kcal_per_eh() -> float:
    from qcelemental import constants

    return float(constants.hartree2kcalmol)  # = conversion_factor("hartree", "kcal/mol"), without loading pint


def format_eh(value: float) -> str:
    """How the tables print an energy in hartree."""
    return f"{value:.10f}"


def format_kcal(value: float) -> str:
    """How the tables print an energy in kcal/mol (``value`` in hartree)."""
    return f"{value * _kcal_per_eh():.6f}"


def energy_rows(properties: Any) -> dict[str, list[tuple[int, str, float]]]:
    """``{bsse: [(n, quantity, E/Eh), ...]}`` from ``ManyBodyResult.properties``, ordered by n.

    Quantities: ``total`` (through n), ``interaction`` (through n), ``contribution`` (the
    n-body term); each only when the result has it.
    """
    data = properties.model_dump() if hasattr(properties, "model_dump") else dict(properties)
    found: dict[str, dict[tuple[int, int], tuple[str, float]]] = {}
    order = {"total": 0, "interaction": 1, "contribution": 2}
    for key, value in data.items():
        if value is None or not isinstance(value, int | float):
            continue
        for kind, rx in (("total", _TOTAL), ("interaction", _INTER), ("contribution", _CONTRIB)):
            m = rx.match(key)
            if m:
                n = int(m.group(2))
                found.setdefault(m.group(1), {})[(n, order[kind])] = (kind, float(value))
    out: dict[str, list[tuple[int, str, float]]] = {}
    for bsse in ("cp", "nocp", "vmfc"):
        if bsse in found:
            out[bsse] = [(n, kind, val) for (n, _), (kind, val) in sorted(found[bsse].items())]
    return out


def _energy_tables(console: Any, result: Any, heading: str | None = None) -> None:
    from rich import box
    from rich.table import Table

    if getattr(result, "schema_name", "") == "qcmb_async_gmbe_result":
        gmbe_result_tables(console, result, heading)
        return
    rows = energy_rows(result.properties)
    requested = [str(getattr(b, "value", b)) for b in result.input_data.specification.keywords.bsse_type]
    if heading:
        console.print(heading, markup=False, soft_wrap=True)
    if not rows:
        console.print("the result holds no many-body energies", markup=False, soft_wrap=True)
    order = list(dict.fromkeys([*requested, "cp", "nocp", "vmfc"]))  # requested first, in their order
    for bsse in sorted(rows, key=order.index):
        note = "" if bsse in requested else " (by-product)"
        table = Table(title=f"{BSSE_NAMES[bsse]}{note}", box=box.SIMPLE, title_justify="left")
        table.add_column("n", justify="right")
        table.add_column("quantity")
        table.add_column("E / Eh", justify="right")
        table.add_column("E / kcal/mol", justify="right")
        labels = {"total": "total energy through {n}-body", "interaction": "interaction energy through {n}-body",
                  "contribution": "{n}-body contribution"}
        for n, kind, value in rows[bsse]:
            table.add_row(str(n), labels[kind].format(n=n), format_eh(value), format_kcal(value))
        console.print(table)
    screening = ((result.extras or {}).get("qcmb_async") or {}).get("screening")
    if screening:
        screening_table(console, screening, title="screened expansion (dropped subsets contribute zero)")
    props = result.properties
    if props.return_energy is not None:
        console.print(f"return energy ({requested[0] if requested else '?'}): {format_eh(props.return_energy)} Eh "
                      f"= {format_kcal(props.return_energy)} kcal/mol", markup=False, soft_wrap=True)
    for name in ("return_gradient", "return_hessian"):
        value = getattr(props, name, None)
        if value is not None:
            shape = "x".join(str(d) for d in getattr(value, "shape", ()))
            console.print(f"{name}: {shape} array (written with --output)", markup=False, soft_wrap=True)


def screening_table(console: Any, summary: dict[str, Any], *, cost: dict[int, float] | None = None,
                    title: str = "screening") -> None:
    """Per order: subsets possible, kept, dropped (and the cutoff or threshold); ``cost`` adds each order's share."""
    from rich import box
    from rich.table import Table

    dist, energy = summary.get("distance") or {}, summary.get("energy") or {}
    metric = "centroids" if summary.get("metric") == "centroid" else "closest atoms"
    table = Table(box=box.SIMPLE, title=title, title_justify="left")
    for name in ("n-body", "possible", "kept", "dropped", "kept %", "test"):
        table.add_column(name, justify="left" if name == "test" else "right")
    if cost is not None:
        table.add_column("est. cost", justify="right")
    total = sum(cost.values()) if cost else 0.0
    for order, row in summary["orders"].items():
        tests = []
        if order in dist:
            tests.append(f"pairs <= {dist[order]:g} Å ({metric})")
        if order in energy:
            tests.append(f"max |{int(order) - 1}-body increment| > {energy[order]:g} Eh")
        kept_share = row["kept"] / row["possible"] if row["possible"] else 0.0
        cells = [order, f"{row['possible']:,}", f"{row['kept']:,}", f"{row['dropped']:,}", f"{kept_share:.1%}",
                 "; ".join(tests) or ("all" if order == "1" else "all (k-1)-subsets kept")]
        if cost is not None:
            cells.append(f"{cost.get(int(order), 0.0) / total:.0%}" if total else "-")
        table.add_row(*cells)
    console.print(table)
    if energy:
        console.print(f"energy screening decides orders >= {min(map(int, energy))} during the run (from the "
                      f"{summary.get('screened_bsse', '?')} increments); a plan counts those orders as not yet kept",
                      markup=False, soft_wrap=True)


def gmbe_plan_tables(console: Any, plan: Any, listed: int = 40) -> None:
    """A GMBE plan: primary fragments, cut bonds, subsystems per order (coefficients, cancellations) and the first
    ``listed`` subsystems with their coefficients."""
    from collections import Counter

    from rich import box
    from rich.table import Table

    from .._core.gmbe_assemble import cut_bonds

    inp = plan.input
    symbols = [str(s) for s in inp.molecule.symbols]
    cuts = cut_bonds(plan)
    console.print(f"generalized MBE of order {inp.max_nbody}: {len(inp.fragments)} primary fragments, "
                  f"{len(symbols)} atoms, {len(cuts)} bond(s) cut and capped with hydrogen; driver {inp.driver}",
                  markup=False, soft_wrap=True)
    frags = Table(box=box.SIMPLE, title="primary fragments", title_justify="left")
    for name, justify in (("#", "right"), ("atoms", "right"), ("formula", "left"), ("charge", "right"),
                          ("shared with", "left")):
        frags.add_column(name, justify=justify)  # type: ignore[arg-type]
    sets = [set(f) for f in inp.fragments]
    charges = inp.atom_charges or [0] * len(symbols)
    for k, frag in enumerate(inp.fragments):
        counts = Counter(symbols[a] for a in frag)
        formula = "".join(f"{el}{counts[el] if counts[el] > 1 else ''}" for el in sorted(counts))
        shared = [str(j) for j in range(len(sets)) if j != k and sets[j] & sets[k]]
        charge = sum(charges[a] for a in frag)
        frags.add_row(str(k), str(len(frag)), formula, f"{charge:+d}" if charge else "0", ", ".join(shared) or "-")
    console.print(frags)
    if cuts:
        shown = ", ".join(f"{symbols[a]}{a}-{symbols[b]}{b}" for a, b in cuts[:12])
        console.print(f"cut bonds (0-based atoms): {shown}{' ...' if len(cuts) > 12 else ''}", markup=False,
                      soft_wrap=True)
    table = Table(box=box.SIMPLE, title="subsystems per order", title_justify="left")
    for name in ("order", "n-mers", "distinct subsystems", "cancelled (net 0)", "computed", "coefficients"):
        table.add_column(name, justify="right")
    for order, counts in sorted(plan.summary.items()):
        coefs = Counter(s.coefficients[order] for s in plan.subsystems if order in s.coefficients)
        table.add_row(str(order), str(counts["nmers"]), str(counts["family"]), str(counts["cancelled"]),
                      str(sum(coefs.values())), ", ".join(f"{c:+d}x{n}" for c, n in sorted(coefs.items())))
    table.add_section()
    table.add_row("all", "", "", "", str(len(plan.subsystems)), "")
    console.print(table)
    _subsystem_table(console, plan, symbols, listed)
    console.print("nothing was computed (plan only)", markup=False, soft_wrap=True)


def _subsystem_table(console: Any, plan: Any, symbols: list[str], listed: int) -> None:
    """Each subsystem computed (the first ``listed``, largest first): atoms, caps, coefficient per order."""
    from rich import box
    from rich.table import Table

    orders = sorted(plan.summary)
    subs = plan.subsystems
    title = "subsystems computed (net coefficient in GMBE(n); blank: not in that order)"
    if len(subs) > listed:
        title += f"; the first {listed} of {len(subs)}"
    table = Table(box=box.SIMPLE, title=title, title_justify="left")
    table.add_column("label (0-based atoms)")
    table.add_column("atoms", justify="right")
    table.add_column("caps", justify="right")
    for order in orders:
        table.add_column(f"GMBE({order})", justify="right")
    for sub in subs[:listed]:
        table.add_row(sub.label, str(len(sub.atoms)), str(len(sub.caps)),
                      *(f"{sub.coefficients[o]:+d}" if o in sub.coefficients else "" for o in orders))
    console.print(table)


def gmbe_result_tables(console: Any, result: Any, heading: str | None = None) -> None:
    """A GMBE result: total energy through each order, subsystems computed."""
    from rich import box
    from rich.table import Table

    if heading:
        console.print(heading, markup=False, soft_wrap=True)
    props = result.properties
    table = Table(title="generalized MBE (hydrogen caps)", box=box.SIMPLE, title_justify="left")
    table.add_column("n", justify="right")
    table.add_column("quantity")
    table.add_column("E / Eh", justify="right")
    table.add_column("change / kcal/mol", justify="right")
    previous = None
    for n, value in sorted(props.total_energy_through.items()):
        change = format_kcal(value - previous) if previous is not None else ""
        table.add_row(str(n), f"total energy GMBE({n})", format_eh(value), change)
        previous = value
    console.print(table)
    console.print(f"return energy: {format_eh(props.return_energy)} Eh from {props.subsystems_computed} subsystems",
                  markup=False, soft_wrap=True)
    if props.return_gradient is not None:
        import numpy as np

        grad = np.asarray(props.return_gradient)
        console.print(f"return gradient: {grad.shape[0]} x 3, largest |component| {np.abs(grad).max():.6g} Eh/bohr",
                      markup=False, soft_wrap=True)
