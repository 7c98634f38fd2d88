"""``qcmb-async plan``: the fragments per n-body level and model chemistry; computes nothing."""

from __future__ import annotations

from typing import Any

from ._app import app
from ._console import _stderr, _stdout, with_log_options
from ._inputs import _load, _store_arg, bsse_notice
from ._options import (
    InputArg,
    LogOptions,
    NcoresOpt,
    NoStoreOpt,
    ScreeningOptions,
    StoreOpt,
    XyzOptions,
    with_screening_options,
    with_xyz_options,
)
from ._render import screening_table

PDB_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")


@app.command()
@with_log_options
@with_xyz_options
@with_screening_options
def plan(
    input: InputArg,
    *,
    xyz: XyzOptions,
    screen: ScreeningOptions,
    ncores: NcoresOpt = None,
    store: StoreOpt = None,
    no_store: NoStoreOpt = False,
    logs: LogOptions,
) -> None:
    """Show the fragments per n-body level and model chemistry, what screening keeps and the predicted
    wall time on --ncores cores; computes nothing."""
    screening = screen.spec()
    store_file = _store_arg(store)
    mbe = _load(input, xyz)
    from .. import plan_manybody
    from .._core.options import make_options

    cores = make_options(ncores=ncores).ncores
    the_plan = plan_manybody(mbe, screening=screening)
    console = _stdout()
    if xyz.gmbe is None and (xyz.fragments == "molecules" or input.suffix.lower() in PDB_SUFFIXES):
        _print_found(console, the_plan.input.molecule)
    if getattr(the_plan, "subsystems", None) is not None:  # a generalized MBE
        from ._render import gmbe_plan_tables

        gmbe_plan_tables(console, the_plan)
    else:
        _print_plan(console, the_plan)
    if the_plan.screen is not None:
        from .._core.screening import subset_of

        cost: dict[int, float] = {}
        for frag in the_plan.fragments:
            order = len(subset_of(frag.real, frag.basis, the_plan.screen.nfrag))
            cost[order] = cost.get(order, 0.0) + frag.cost
        screening_table(console, the_plan.screen.summary(), cost=cost,
                        title="screened expansion (planned before the run)")
    where = None if no_store else (str(store_file) if store_file else "default")
    _print_prediction(console, the_plan, cores, where)
    notice = bsse_notice(xyz)
    if notice is not None:
        _stderr().print(notice, markup=False, soft_wrap=True)


def _print_found(console: Any, molecule: Any, listed: int = 30) -> None:
    """The fragments found from bonds: formula, file atoms, charge, multiplicity (each when few, else grouped)."""
    from rich import box
    from rich.table import Table

    from .._core.fragment import ORDER_KEY, _ranges, formula

    order = (molecule.extras or {}).get(ORDER_KEY) or list(range(len(molecule.symbols)))
    rows = []
    for i, atoms in enumerate(molecule.fragments, start=1):
        idx = [int(a) for a in atoms]
        rows.append((i, formula([molecule.symbols[a] for a in idx]), _ranges([order[a] for a in idx]),
                     _signed(molecule.fragment_charges[i - 1]), f"{molecule.fragment_multiplicities[i - 1]:g}"))
    reordered = ORDER_KEY in (molecule.extras or {})
    console.print(f"{len(rows)} fragments found from bonds (covalently bonded molecules)"
                  + ("; atoms reordered into fragment order, results come back in the file's order" if reordered
                     else ""), markup=False, soft_wrap=True)
    table = Table(box=box.SIMPLE, title="fragments found", title_justify="left")
    if len(rows) <= listed:
        for name, justify in (("#", "right"), ("formula", "left"), ("atoms in file", "left"), ("charge", "right"),
                              ("mult", "right")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for row in rows:
            table.add_row(str(row[0]), *row[1:])
    else:
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, name, _, charge, mult in rows:
            groups.setdefault((name, charge, mult), []).append(i)
        for name, justify in (("formula", "left"), ("charge", "right"), ("mult", "right"), ("count", "right"),
                              ("fragments", "left")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for (name, charge, mult), members in groups.items():
            table.add_row(name, charge, mult, str(len(members)), _ranges([m - 1 for m in members]))
    console.print(table)


def _print_plan(console: Any, the_plan: Any) -> None:
    from rich import box
    from rich.table import Table

    inp = the_plan.input
    kw = inp.specification.keywords
    nfrag = len(inp.molecule.fragments)
    bsse = ", ".join(str(getattr(b, "value", b)) for b in kw.bsse_type)
    max_nbody = kw.max_nbody if kw.max_nbody is not None else nfrag
    console.print(f"{nfrag} fragments, {len(inp.molecule.symbols)} atoms; driver {inp.specification.driver.value}; "
                  f"BSSE {bsse}; max_nbody {max_nbody}", markup=False, soft_wrap=True)
    specs = inp.specification.specification
    total_cost = sum(f.cost for f in the_plan.fragments) or 1.0
    table = Table(box=box.SIMPLE, title="planned fragment calculations", title_justify="left")
    for name, justify in (("n-body", "right"), ("model chemistry", "left"), ("program", "left"),
                          ("method/basis", "left"), ("fragments", "right"), ("est. cost", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    groups: dict[tuple[int, str], list[Any]] = {}
    for frag in the_plan.fragments:
        groups.setdefault((frag.level, frag.mc), []).append(frag)
    for (level, mc), frags in sorted(groups.items()):
        spec = specs[mc]
        model = f"{spec.model.method}/{spec.model.basis}" if spec.model.basis else spec.model.method
        cost = sum(f.cost for f in frags) / total_cost
        table.add_row(str(level), mc, spec.program, model, str(len(frags)), f"{cost:.0%}")
    table.add_section()
    table.add_row("total", "", "", "", str(len(the_plan.fragments)), "100%")
    console.print(table)
    console.print("nothing was computed (plan only)", markup=False, soft_wrap=True)


def _print_prediction(console: Any, the_plan: Any, ncores: int, store: str | None) -> None:
    """Predicted wall time on ``ncores`` from the cost model, simulated with the real scheduler.

    Seconds need a calibration: fragments of this very plan already in the result store (their
    measured times) calibrate the cost model; without any the prediction is in cost-model units.
    """
    from .._core.cost import CostModel
    from ..simulate import simulate

    frags = the_plan.fragments
    if not frags:
        return
    model = CostModel()
    calibrated = _calibrate(the_plan, model, store)
    durations = {f.label: model.estimate(f.group, f.size) if calibrated else f.cost for f in frags}
    try:
        sim = simulate(frags, ncores, durations=durations)
    except ImportError as exc:  # trio missing (an install with --no-deps): the plan stands, the prediction goes
        console.print(f"predicted wall time: not available ({exc})", markup=False, soft_wrap=True)
        return
    unit = "s" if calibrated else "cost units"
    total = sum(durations.values())
    console.print(f"predicted: {total:,.4g} {unit} of work, wall time {sim.makespan:,.4g} {unit} on {ncores} "
                  f"core(s) (simulated with the real scheduler; speed-up {total / sim.makespan:.2f})"
                  + (f"; calibrated from {calibrated} fragment(s) found in the result store" if calibrated else
                     "; no fragment of this plan is in the result store, so times are relative"),
                  markup=False, soft_wrap=True)


def _calibrate(the_plan: Any, model: Any, store: str | None, sample: int = 256) -> int:
    """Feed ``model`` the measured times of up to ``sample`` of the plan's fragments found in the store."""
    if store is None:
        return 0
    from ..store import ResultStore, StoreError, store_path

    path = store_path(store)
    if path is None or not path.exists():
        return 0
    step = max(1, len(the_plan.fragments) // sample)
    picked = the_plan.fragments[::step][:sample]
    try:
        jobs = {the_plan.materialise(f).key: f for f in picked}
        with ResultStore(path, readonly=True) as rs:
            found = rs.get_many(list(jobs))
    except (StoreError, OSError):
        return 0
    n = 0
    for key, data in found.items():
        wall = ((data.get("provenance") or {}) if isinstance(data, dict) else {}).get("wall_time")
        if wall:
            frag = jobs[key]
            model.observe(frag.group, frag.size, float(wall))
            n += 1
    return n


def _signed(charge: float) -> str:
    return f"{charge:+g}" if charge else "0"
