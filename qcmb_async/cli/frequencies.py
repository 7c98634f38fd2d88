"""``qcmb-async frequencies``: harmonic frequencies of a many-body expansion."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ._app import app
from ._console import Usage, _errors, _setup_logging, _stdout
from ._moving import ClusterArgs, start_job, step_progress, with_cluster_options, write_json, write_timeline
from ._options import (
    DebugOpt,
    InputArg,
    LogFormat,
    LogFormatOpt,
    ResourceOptions,
    TimelineOpt,
    VerboseOpt,
    XyzOptions,
    with_resource_options,
    with_xyz_options,
)


class Route(StrEnum):
    analytic = "analytic"
    finite_difference = "finite-difference"


RouteOpt = Annotated[Route, typer.Option("--hessian", help="analytic: MBE of analytic fragment Hessians; "
                                                           "finite-difference: central differences of MBE "
                                                           "gradients, all displacements in one pool.")]
StepOpt = Annotated[float | None, typer.Option("--step", metavar="BOHR",
                                               help="Finite-difference step, bohr (default 0.005).")]
JsonOutOpt = Annotated[Path | None, typer.Option("--output", "-o", metavar="RESULT.json",
                                                 help="Write frequencies, normal modes and Hessian as JSON.")]


@app.command()
@with_xyz_options
@with_resource_options
@with_cluster_options
def frequencies(
    input: InputArg,
    xyz: XyzOptions,
    hessian: RouteOpt = Route.analytic,
    step: StepOpt = None,
    resources: ResourceOptions = ResourceOptions(),  # replaced by the option group (with_resource_options)
    cluster_args: ClusterArgs = ClusterArgs(),  # replaced by the option group (with_cluster_options)
    output: JsonOutOpt = None,
    timeline: TimelineOpt = None,
    log_format: LogFormatOpt = LogFormat.console,
    verbose: VerboseOpt = 0,
    debug: DebugOpt = False,
) -> None:
    """Harmonic frequencies (cm⁻¹, translations and rotations projected out) of a many-body expansion."""
    with _errors(debug):
        _setup_logging(log_format, verbose, debug)
        if step is not None and hessian is Route.analytic:
            raise Usage("--step applies to --hessian finite-difference only (the analytic Hessian takes no step)")
        mbe, options = start_job("frequencies", input, xyz, output, resources, timeline, cluster_args)
        json_logs = log_format is LogFormat.json
        result = _frequencies(mbe, options, route=hessian.value, step=step, json_logs=json_logs)
        write_timeline(result, timeline, json_logs)
        if output is not None:
            write_json(output, {"frequencies_cm-1": result.frequencies, "modes": result.modes,
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
