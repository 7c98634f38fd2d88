"""The typer application every command module registers with."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="qcmb-async",
    help="Run the fragments of a QCManyBody many-body expansion concurrently (qcmb_async).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
