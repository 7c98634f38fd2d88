"""``qcmb-async frequencies``: harmonic frequencies of a many-body expansion."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from ._console import Usage, _stdout
from ._moving import (
    ClusterArgs,
    expansion_command,
    start_job,
    step_progress,
    with_cluster_options,
    write_json,
    write_timeline,
)
from ._options import (
    InputArg,
    LogOptions,
    OutputOptions,
    ResourceOptions,
    XyzOptions,
)


class Route(StrEnum):
    analytic = "analytic"
    finite_difference = "finite-difference"


RouteOpt = Annotated[Route, typer.Option("--hessian", help="analytic: MBE of analytic fragment Hessians; "
                                                           "finite-difference: central differences of MBE "
                                                           "gradients, all displacements in one pool.")]
StepOpt = Annotated[float | None, typer.Option("--step", metavar="BOHR",
                                               help="Finite-difference step, bohr (default 0.005).")]


@expansion_command("Write frequencies, normal modes and Hessian as JSON.")
@with_cluster_options
def frequencies(
    input: InputArg,
    *,
    xyz: XyzOptions,
    hessian: RouteOpt = Route.analytic,
    step: StepOpt = None,
    resources: ResourceOptions,
    cluster_args: ClusterArgs,
    outputs: OutputOptions,
    logs: LogOptions,
) -> None:
    """Harmonic frequencies (cm⁻¹, translations and rotations projected out) of a many-body expansion."""
    if step is not None and hessian is Route.analytic:
        raise Usage("--step applies to --hessian finite-difference only (the analytic Hessian takes no step)")
    mbe, options = start_job("frequencies", input, xyz, outputs, resources, cluster_args)
    result = _frequencies(mbe, options, route=hessian.value, step=step, json_logs=logs.json)
    write_timeline(result, outputs.timeline, logs.json)
    if outputs.output is not None:
        write_json(outputs.output, {"frequencies_cm-1": result.frequencies, "modes": result.modes,
                                    "hessian": result.hessian, "energy": result.energy, "gradient": result.gradient,
                                    "method": result.method,
                                    "extras": {k: v for k, v in result.extras.items() if k != "fragments"}})


def _frequencies(mbe: Any, options: dict[str, Any], *, route: str, step: float | None, json_logs: bool) -> Any:
    from .._frequencies import STEP, frequencies_sync

    step = STEP if step is None else step
    with step_progress(json_logs) as progress:
        result = frequencies_sync(mbe, method=route, step=step, on_event=progress, **options)
    out = _stdout()
    out.print(f"harmonic frequencies (cm⁻¹, {route} Hessian; imaginary ones negative):", markup=False)
    freqs = [f"{f:10.2f}" for f in result.frequencies]
    for i in range(0, len(freqs), 6):
        out.print("".join(freqs[i:i + 6]), markup=False)
    ex = result.extras
    if route == "finite-difference":
        out.print(f"{ex['displacements']} displacements: {ex['fragments_planned']} fragment calculations planned, "
                  f"{ex['fragments_distinct']} distinct, {ex['fragments_computed']} computed, "
                  f"{ex['fragments_cached']} from the store; {ex['wall_time']:.1f} s", markup=False, soft_wrap=True)
    return result
