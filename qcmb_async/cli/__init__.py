"""The ``qcmb-async`` command line: ``run``, ``plan``, ``report``, ``optimize`` and ``frequencies``.

One command per module (:mod:`.run`, :mod:`.plan`, :mod:`.report`, :mod:`.optimize`, :mod:`.frequencies`),
registered on the typer application in :mod:`._app`; options and the option groups commands share in
:mod:`._options`, consoles, the exception-to-exit-code map and the log options' group in :mod:`._console`,
what the commands that run expansions share in :mod:`._moving`, tables in :mod:`._render`, input/output
paths in :mod:`._inputs`, ``--version`` in :mod:`._versions`.

Exit codes: 0 success; 1 a computation failed; 2 bad input or usage. Errors go to stderr as one
paragraph, with a traceback only under ``--debug``.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from ._app import app
from ._render import energy_rows, format_eh, format_kcal

__all__ = ["COMMANDS", "app", "energy_rows", "format_eh", "format_kcal", "main"]

#: Command modules, in the order ``qcmb-async --help`` lists them; importing one registers it on ``app``.
COMMANDS = ("run", "plan", "report", "optimize", "frequencies")
for _name in COMMANDS:
    importlib.import_module(f"{__name__}.{_name}")


def _version(value: bool) -> None:
    if value:
        from ._versions import version_lines

        typer.echo("\n".join(version_lines()))
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the versions of qcmb-async, QCEngine, QCManyBody, "
                                                "QCElemental and the programs found here, and exit.")] = False) -> None:
    """Run, plan and report QCManyBody many-body expansions with concurrent fragments."""


def main() -> None:
    """Entry point of ``python -m qcmb_async`` and the ``qcmb-async`` script."""
    app(prog_name="qcmb-async")
