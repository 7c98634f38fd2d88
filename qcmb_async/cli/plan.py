"""``qcmb-async plan``: the fragments per n-body level and model chemistry; computes nothing."""

from __future__ import annotations

from typing import Any

from ._app import app
from ._console import _errors, _setup_logging, _stdout
from ._inputs import _load
from ._options import (
    DebugOpt,
    InputArg,
    LogFormat,
    LogFormatOpt,
    VerboseOpt,
    XyzOptions,
    with_xyz_options,
)


@app.command()
@with_xyz_options
def plan(
    input: InputArg,
    xyz: XyzOptions,
    log_format: LogFormatOpt = LogFormat.console,
    verbose: VerboseOpt = 0,
    debug: DebugOpt = False,
) -> None:
    """Show the fragments per n-body level and model chemistry; computes nothing."""
    with _errors(debug):
        _setup_logging(log_format, verbose, debug)
        mbe = _load(input, xyz)
        from .. import plan_manybody

        _print_plan(_stdout(), plan_manybody(mbe))


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
