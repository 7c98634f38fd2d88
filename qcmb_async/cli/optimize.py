"""``qcmb-async optimize``: optimize a cluster's geometry with geomeTRIC, every gradient an MBE."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._app import app
from ._console import EXIT_FAILED, Usage, _errors, _setup_logging, _stderr, _stdout
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

CoordsysOpt = Annotated[str, typer.Option("--coordsys", metavar="NAME",
                                          help="geomeTRIC coordinates: tric (default), dlc, hdlc, prim, tric-p, cart.")]
ConvergenceOpt = Annotated[str, typer.Option("--convergence", metavar="SET",
                                             help="geomeTRIC convergence set: GAU (default), GAU_TIGHT, "
                                                  "GAU_VERYTIGHT, NWCHEM_LOOSE, TURBOMOLE, INTERFRAG_TIGHT...")]
MaxiterOpt = Annotated[int, typer.Option(
    "--maxiter", metavar="N", help="Most optimization cycles (up to N+1 gradients: the first is at the input "
    "geometry).")]
ConstraintsOpt = Annotated[Path | None, typer.Option("--constraints", metavar="FILE",
                                                     help="geomeTRIC constraints file ($freeze, $set, ...).")]
JsonOutOpt = Annotated[Path | None, typer.Option("--output", "-o", metavar="RESULT.json",
                                                 help="Write the steps, energies and final geometry as JSON.")]


@app.command()
@with_xyz_options
@with_resource_options
@with_cluster_options
def optimize(
    input: InputArg,
    xyz: XyzOptions,
    coordsys: CoordsysOpt = "tric",
    convergence: ConvergenceOpt = "GAU",
    maxiter: MaxiterOpt = 300,
    constraints: ConstraintsOpt = None,
    resources: ResourceOptions = ResourceOptions(),  # replaced by the option group (with_resource_options)
    cluster_args: ClusterArgs = ClusterArgs(),  # replaced by the option group (with_cluster_options)
    output: JsonOutOpt = None,
    timeline: TimelineOpt = None,
    log_format: LogFormatOpt = LogFormat.console,
    verbose: VerboseOpt = 0,
    debug: DebugOpt = False,
) -> None:
    """Optimize the geometry with geomeTRIC; each gradient is a many-body expansion (needs qcmb_async[opt]).

    One line per gradient as it finishes (energy, gradient rms/max, fragments computed and from the store,
    wall time). Ctrl-C stops it cleanly; rerun with the same --store to resume at the interrupted step.
    """
    with _errors(debug):
        _setup_logging(log_format, verbose, debug)
        mbe, options = start_job("optimize", input, xyz, output, resources, timeline, cluster_args)
        try:
            import geometric  # noqa: F401
        except ImportError:
            raise Usage("optimize needs geomeTRIC: pip install 'qcmb_async[opt]'") from None
        cons = None
        if constraints is not None:
            from .._core.inputs import read_text_file

            # The input files' guards: /dev/zero, a FIFO or a huge file is refused, not read without end.
            cons = read_text_file(constraints, "--constraints file",
                                  expect="a geomeTRIC constraints file ($freeze, $set, ...)")
        json_logs = log_format is LogFormat.json
        result = _optimize(mbe, options, json_logs=json_logs, coordsys=coordsys, convergence=convergence,
                           maxiter=maxiter, constraints=cons)
        write_timeline(result, timeline, json_logs)
        if output is not None:
            write_json(output, {
                "success": result.success, "error": result.error, "final_energy": result.final_energy,
                "final_molecule": result.final_molecule.model_dump(mode="json"), "energies": result.energies,
                "steps": result.steps, "extras": result.extras})
        if not result.success:
            _stderr().print(f"error: not converged: {result.error}", markup=False, soft_wrap=True)
            raise typer.Exit(EXIT_FAILED)


def _optimize(mbe: Any, options: dict[str, Any], *, json_logs: bool, **kwargs: Any) -> Any:
    from .._optimize import optimize_sync

    with step_progress(json_logs) as progress:
        result = optimize_sync(mbe, convergence_set=kwargs["convergence"], coordsys=kwargs["coordsys"],
                               maxiter=kwargs["maxiter"], constraints=kwargs["constraints"], on_event=progress,
                               **options)
    if result.steps:
        out = _stdout()
        mol = result.final_molecule
        out.print(f"final energy {result.final_energy:.10f} Eh after {len(result.steps)} gradients "
                  f"({'converged' if result.success else 'not converged'})", markup=False, soft_wrap=True)
        out.print(mol.to_string(dtype="xyz", units="Angstrom"), markup=False, soft_wrap=True)
    return result
