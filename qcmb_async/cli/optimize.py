"""``qcmb-async optimize``: optimize a cluster's geometry with geomeTRIC, every gradient an MBE."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._console import EXIT_FAILED, Usage, _stderr, _stdout
from ._inputs import _check_writable, _same_file, write_output
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

CoordsysOpt = Annotated[str, typer.Option("--coordsys", metavar="NAME",
                                          help="geomeTRIC coordinates: tric (default), dlc, hdlc, prim, tric-p, cart.")]
ConvergenceOpt = Annotated[str, typer.Option("--convergence", metavar="SET",
                                             help="geomeTRIC convergence set: GAU (default), GAU_TIGHT, "
                                                  "GAU_VERYTIGHT, NWCHEM_LOOSE, TURBOMOLE, INTERFRAG_TIGHT...")]
MaxiterOpt = Annotated[int, typer.Option(
    "--maxiter", metavar="N", help="Most optimization cycles (up to N+1 gradients: the first is at the input "
    "geometry).")]
XyzOutOpt = Annotated[Path | None, typer.Option(
    "--xyz-output", metavar="FINAL.xyz", help="Write the final geometry as a fragment XYZ file ('--' between "
    "fragments, charge and multiplicity lines): the input of `qcmb-async run`.")]
ConstraintsOpt = Annotated[Path | None, typer.Option("--constraints", metavar="FILE",
                                                     help="geomeTRIC constraints file ($freeze, $set, ...).")]


@expansion_command("Write the steps, energies and final geometry as JSON.")
@with_cluster_options
def optimize(
    input: InputArg,
    *,
    xyz: XyzOptions,
    coordsys: CoordsysOpt = "tric",
    convergence: ConvergenceOpt = "GAU",
    maxiter: MaxiterOpt = 300,
    constraints: ConstraintsOpt = None,
    xyz_output: XyzOutOpt = None,
    resources: ResourceOptions,
    cluster_args: ClusterArgs,
    outputs: OutputOptions,
    logs: LogOptions,
) -> None:
    """Optimize the geometry with geomeTRIC; each gradient is a many-body expansion (needs qcmb_async[opt]).

    One line per gradient as it finishes (energy, gradient rms/max, fragments computed and from the store,
    wall time). Ctrl-C stops it cleanly; rerun with the same --store to resume at the interrupted step.
    """
    mbe, options = start_job("optimize", input, xyz, outputs, resources, cluster_args)
    if xyz_output is not None:
        _check_writable("--xyz-output", xyz_output)
        for option, other in (("the input", input), ("--output", outputs.output), ("--timeline", outputs.timeline)):
            if other is not None and _same_file(xyz_output, other):
                raise Usage(f"--xyz-output {str(xyz_output)!r} is {option} file: give another path")
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
    result = _optimize(mbe, options, json_logs=logs.json, coordsys=coordsys, convergence=convergence,
                       maxiter=maxiter, constraints=cons)
    write_timeline(result, outputs.timeline, logs.json)
    final_xyz = _final_xyz(result)
    if outputs.output is not None:
        write_json(outputs.output, {
            "success": result.success, "error": result.error, "final_energy": result.final_energy,
            "final_molecule": result.final_molecule.model_dump(mode="json"), "final_xyz": final_xyz,
            "energies": result.energies, "steps": result.steps, "extras": result.extras})
    if xyz_output is not None:
        write_output("--xyz-output", xyz_output, final_xyz)
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
        out.print(f"final energy {result.final_energy:.10f} Eh after {len(result.steps)} gradients "
                  f"({'converged' if result.success else 'not converged'})", markup=False, soft_wrap=True)
        # The command line's own fragment XYZ ('--' lines, charge and multiplicity): `run` reads it back.
        out.print(_final_xyz(result), markup=False, soft_wrap=True, end="")
    return result


def _final_xyz(result: Any) -> str:
    from .._core.xyz import format_xyz

    state = "converged" if result.success else "not converged"
    energy = f"{result.final_energy:.10f} Eh" if result.final_energy is not None else "no energy"
    return format_xyz(result.final_molecule, comment=f"qcmb-async optimize: final geometry ({state}), {energy}")
