"""The ``qcmb-async`` command line: ``run``, ``plan`` and ``report`` a many-body expansion.

Exit codes: 0 success; 1 a computation failed; 2 bad input or usage. Errors go to stderr as one
paragraph, with a traceback only under ``--debug``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import FragmentError, InputError, RunFailed, Terminated

__all__ = ["app", "energy_rows", "format_eh", "format_kcal", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
BSSE_NAMES = {"cp": "counterpoise-corrected (cp)", "nocp": "uncorrected (nocp)",
              "vmfc": "Valiron-Mayer function counterpoise (vmfc)"}
MESSAGE_LIMIT = 600

app = typer.Typer(
    name="qcmb-async",
    help="Run the fragments of a QCManyBody many-body expansion concurrently (qcmb_async).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class LogFormat(StrEnum):
    console = "console"
    json = "json"


class Driver(StrEnum):
    energy = "energy"
    gradient = "gradient"
    hessian = "hessian"


class OnError(StrEnum):
    raise_ = "raise"
    continue_ = "continue"


class Usage(Exception):
    """A usage problem found by the command line itself (exit code 2)."""


# -- consoles, logging, errors -------------------------------------------------------------
def _stdout() -> Any:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=160)
    return console


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (rich's progress display swaps it to draw cleanly)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _setup_logging(fmt: LogFormat, verbose: int, debug: bool) -> None:
    from ._core.logs import configure_logging

    if debug or verbose >= 2:
        level = "DEBUG"
    elif verbose == 1 or fmt is LogFormat.json:
        level = "INFO"
    else:
        level = "WARNING"
    handler = configure_logging(fmt.value, level, stream=_CurrentStderr())
    if fmt is LogFormat.console and level == "WARNING":
        handler.addFilter(_drop_reported_events)


def _drop_reported_events(record: logging.LogRecord) -> bool:
    """Quiet console: failures and retries are shown by the progress display and the error paragraph."""
    event = record.msg.get("event") if isinstance(record.msg, dict) else None
    return event not in ("fragment failed", "fragment retried",
                         "results not in the store: a rerun would recompute them")  # the CLI says it itself


def _short(text: str, debug: bool) -> str:
    text = " ".join(str(text).split())
    if debug or len(text) <= MESSAGE_LIMIT:
        return text
    return text[:MESSAGE_LIMIT] + " ... (full message with --debug)"


def _fragment_message(err: FragmentError, debug: bool) -> str:
    tries = f" after {err.attempts} attempts" if err.attempts > 1 else ""
    return (f"fragment {err.label} (n-body level {err.level}, program {err.program}) failed{tries}: "
            f"{err.error_type}: {_short(err.error_message if debug else err.cause, debug)}")


def _fail(message: str, code: int, exc: BaseException | None, debug: bool) -> typer.Exit:
    err = _stderr()
    if debug and exc is not None:
        traceback.print_exception(exc, file=sys.stderr)
    err.print(f"error: {message}", markup=False, soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """Map exceptions to exit codes and one readable paragraph on stderr."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except Terminated as exc:
        raise _fail(f"{exc} (run stopped, program processes and scratch removed)", 128 + exc.signum, exc,
                    debug) from None
    except KeyboardInterrupt as exc:
        raise _fail("interrupted", 130, exc, debug) from None
    except (InputError, Usage) as exc:
        raise _fail(str(exc), EXIT_USAGE, exc, debug) from None
    except RunFailed as exc:
        report = exc.report
        parts = [f"{len(report.failed)} fragment(s) failed; complete n-body levels: "
                 f"{', '.join(map(str, report.complete_levels)) or 'none'}."]
        parts += [f"- {_fragment_message(e, debug)}" for e in report.failed]
        raise _fail("\n".join(parts), EXIT_FAILED, exc, debug) from None
    except FragmentError as exc:
        raise _fail(_fragment_message(exc, debug) + " (other fragments were cancelled; --on-error continue "
                    "computes everything it can)", EXIT_FAILED, exc, debug) from None
    except Exception as exc:
        raise _fail(f"unexpected {type(exc).__name__}: {_short(str(exc), debug)} (rerun with --debug for the "
                    "traceback)", EXIT_FAILED, exc, debug) from None


# -- energies ------------------------------------------------------------------------------
_TOTAL = re.compile(r"^(cp|nocp|vmfc)_corrected_total_energy_through_(\d+)_body$")
_INTER = re.compile(r"^(cp|nocp|vmfc)_corrected_interaction_energy_through_(\d+)_body$")
_CONTRIB = re.compile(r"^(cp|nocp|vmfc)_corrected_(\d+)_body_contribution_to_energy$")


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
    props = result.properties
    if props.return_energy is not None:
        console.print(f"return energy ({requested[0] if requested else '?'}): {format_eh(props.return_energy)} Eh "
                      f"= {format_kcal(props.return_energy)} kcal/mol", markup=False, soft_wrap=True)
    for name in ("return_gradient", "return_hessian"):
        value = getattr(props, name, None)
        if value is not None:
            shape = "x".join(str(d) for d in getattr(value, "shape", ()))
            console.print(f"{name}: {shape} array (written with --output)", markup=False, soft_wrap=True)


# -- inputs --------------------------------------------------------------------------------
def _ints(name: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--{name} takes whole numbers, one per fragment, comma separated; got {text!r}") from None


_XYZ_ONLY = ("method", "basis", "program", "bsse", "max_nbody", "keywords", "charge", "multiplicity")


def _load(path: Path, *, method: str | None, basis: str | None, program: str | None, bsse: list[str] | None,
          max_nbody: int | None, keywords: str | None, driver: Driver | None, charge: str | None,
          multiplicity: str | None) -> Any:
    """The ``run_manybody`` input for ``path``: a ManyBodyInput for .xyz, else the path itself."""
    from ._core.inputs import check_input_path

    check_input_path(path)  # a directory, FIFO or device: refused before anything opens it
    if path.suffix.lower() == ".xyz":
        missing = [opt for opt, val in (("--method", method), ("--program", program)) if not val]
        if missing:
            raise Usage(f"an XYZ input needs {' and '.join(missing)} (and --basis, --bsse, --max-nbody as "
                        "needed) to say what to compute, e.g. --program mopac --method pm7")
        from ._core.xyz import parse_keywords, xyz_input

        return xyz_input(path, method=str(method), program=str(program), basis=basis, bsse=bsse,
                         max_nbody=max_nbody, keywords=parse_keywords(keywords),
                         driver=(driver or Driver.energy).value, charges=_ints("charge", charge),
                         multiplicities=_ints("multiplicity", multiplicity))
    given = {"method": method, "basis": basis, "program": program, "bsse": bsse, "max_nbody": max_nbody,
             "keywords": keywords, "charge": charge, "multiplicity": multiplicity, "driver": driver}
    extra = [f"--{k.replace('_', '-')}" for k, v in given.items() if v]
    if extra:
        verb = "applies" if len(extra) == 1 else "apply"
        raise Usage(f"{', '.join(extra)} {verb} to .xyz inputs only: {str(path)!r} is a ManyBodyInput (JSON/YAML) "
                    "that carries its own specification; edit it instead")
    return path


def _check_writable(option: str, path: Path | None) -> None:
    if path is None:
        return
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise Usage(f"{option} {str(path)!r}: directory {str(parent)!r} does not exist")


def _store_path(store: Path | None, no_store: bool) -> Path | None:
    """The result store a run will open (mirrors ``runner.open_store``), or ``None``."""
    if no_store:
        return None
    if store is not None:
        return store
    env = os.environ.get("QCMB_ASYNC_STORE", "").strip()
    if env.lower() in ("none", "off", "0", "false"):
        return None
    if env:
        return Path(env)
    from ._core.store import default_store_path

    return default_store_path()


def _check_not_store(store: Path | None, no_store: bool, **outputs: Path | None) -> None:
    """Refuse an output file that is the result store or one of its -wal/-shm files (writing it destroys the store)."""
    path = _store_path(store, no_store)
    if path is None:
        return
    target = path.expanduser().resolve()
    forbidden = {str(target), f"{target}-wal", f"{target}-shm", f"{target}-journal"}
    for option, out in outputs.items():
        if out is None:
            continue
        resolved = out.expanduser().resolve()
        same = str(resolved) in forbidden
        with contextlib.suppress(OSError):  # hard links and bind mounts: same inode
            same = same or (resolved.exists() and target.exists() and os.path.samefile(resolved, target))
        if same:
            raise Usage(f"--{option} {str(out)!r} is the result store {str(path)!r} (or one of its -wal/-shm "
                        "files): writing the result there would destroy every stored fragment. Give another "
                        "output path")


def _supported(name: str) -> bool:
    from . import run_manybody

    params = inspect.signature(run_manybody).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


# -- shared options ------------------------------------------------------------------------
def _opt(*names: str, metavar: str | None = None, help: str) -> Any:
    return typer.Option(*names, metavar=metavar, help=help)


InputArg = Annotated[Path, typer.Argument(help="ManyBodyInput as JSON or YAML, or an XYZ file with '--' lines "
                                                "between fragments.", show_default=False, metavar="INPUT")]
MethodOpt = Annotated[str | None, _opt("--method", metavar="METHOD", help="XYZ input: method, e.g. pm7, mp2.")]
BasisOpt = Annotated[str | None, _opt("--basis", metavar="BASIS", help="XYZ input: basis set (none for "
                                                                        "semi-empirical methods).")]
ProgramOpt = Annotated[str | None, _opt("--program", metavar="PROGRAM", help="XYZ input: QCEngine program, e.g. "
                                                                              "mopac, psi4, nwchem.")]
BsseOpt = Annotated[list[str] | None, _opt("--bsse", metavar="cp,nocp,vmfc", help="XYZ input: BSSE treatment(s); "
                                                                                   "repeat or comma separate. "
                                                                                   "Default cp.")]
MaxNbodyOpt = Annotated[int | None, _opt("--max-nbody", metavar="N", help="XYZ input: highest n-body level.")]
KeywordsOpt = Annotated[str | None, _opt("--keywords", metavar="JSON", help="XYZ input: program keywords, a JSON "
                                                                             "object.")]
DriverOpt = Annotated[Driver | None, _opt("--driver", help="XYZ input: energy (default), gradient or hessian.")]
ChargeOpt = Annotated[str | None, _opt("--charge", metavar="Q[,Q...]", help="XYZ input: fragment charges, one per "
                                                                             "fragment or one for all. Default 0.")]
MultOpt = Annotated[str | None, _opt("--multiplicity", metavar="M[,M...]", help="XYZ input: fragment "
                                                                                 "multiplicities, one per fragment "
                                                                                 "or one for all. Default: a "
                                                                                 "fragment's 'charge mult' line, "
                                                                                 "else 1 for an even and 2 for an "
                                                                                 "odd electron count (neutral "
                                                                                 "fragments), 1 for fragments "
                                                                                 "charged with --charge.")]
LogFormatOpt = Annotated[LogFormat, _opt("--log-format", help="Log lines on stderr: console or json.")]
QuietOpt = Annotated[bool, _opt("--quiet", "-q", help="No progress display or summary line.")]
DebugOpt = Annotated[bool, _opt("--debug", help="Debug logs, and a traceback with errors.")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log lines (-v info, -vv debug).")]
NcoresOpt = Annotated[int | None, _opt("--ncores", metavar="N", help="Total cores (default: all this process may "
                                                                      "use).")]
MemoryOpt = Annotated[float | None, _opt("--memory", metavar="GIB", help="Total memory in GiB (default: 80% of "
                                                                          "the free memory).")]
FragNcoresOpt = Annotated[int | None, _opt("--fragment-ncores", metavar="N", help="Cores per fragment (default 1).")]
FragMemoryOpt = Annotated[float | None, _opt("--fragment-memory", metavar="GIB", help="GiB per fragment (default: "
                                                                                      "an even share).")]
ExecutorOpt = Annotated[str, _opt("--executor", metavar="NAME", help="auto, threads, processes or dask.")]
SchedulerOpt = Annotated[str | None, _opt("--scheduler", metavar="ADDRESS", help="Dask scheduler address.")]
StoreOpt = Annotated[Path | None, _opt("--store", metavar="PATH", help="SQLite result store (default: one in the "
                                                                        "user cache directory).")]
NoStoreOpt = Annotated[bool, _opt("--no-store", help="Use no result store.")]
RetriesOpt = Annotated[int, _opt("--retries", metavar="N", help="Extra attempts for transient failures.")]
TimeoutOpt = Annotated[float | None, _opt("--timeout", metavar="SECONDS", help="Seconds per fragment attempt.")]
OnErrorOpt = Annotated[OnError, _opt("--on-error", help="raise: stop at the first failure; continue: compute all "
                                                        "that can be.")]
BarrierOpt = Annotated[bool, _opt("--level-barrier", help="Finish each n-body level before the next.")]
OutputOpt = Annotated[Path | None, _opt("--output", "-o", metavar="RESULT.json", help="Write the ManyBodyResult "
                                                                                      "JSON here.")]
TimelineOpt = Annotated[Path | None, _opt("--timeline", metavar="FILE.png", help="Write a Gantt chart of the "
                                                                                 "fragments (PNG, SVG, PDF).")]


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"qcmb-async {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    """Run, plan and report QCManyBody many-body expansions with concurrent fragments."""


# -- run -----------------------------------------------------------------------------------
@app.command()
def run(
    input: InputArg,
    method: MethodOpt = None,
    basis: BasisOpt = None,
    program: ProgramOpt = None,
    bsse: BsseOpt = None,
    max_nbody: MaxNbodyOpt = None,
    keywords: KeywordsOpt = None,
    driver: DriverOpt = None,
    charge: ChargeOpt = None,
    multiplicity: MultOpt = None,
    ncores: NcoresOpt = None,
    memory: MemoryOpt = None,
    fragment_ncores: FragNcoresOpt = None,
    fragment_memory: FragMemoryOpt = None,
    executor: ExecutorOpt = "auto",
    scheduler: SchedulerOpt = None,
    store: StoreOpt = None,
    no_store: NoStoreOpt = False,
    retries: RetriesOpt = 0,
    timeout: TimeoutOpt = None,
    on_error: OnErrorOpt = OnError.raise_,
    level_barrier: BarrierOpt = False,
    output: OutputOpt = None,
    timeline: TimelineOpt = None,
    log_format: LogFormatOpt = LogFormat.console,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    debug: DebugOpt = False,
) -> None:
    """Compute a many-body expansion and print its energies."""
    with _errors(debug):
        _setup_logging(log_format, verbose, debug)
        mbe = _load(input, method=method, basis=basis, program=program, bsse=bsse, max_nbody=max_nbody,
                    keywords=keywords, driver=driver, charge=charge, multiplicity=multiplicity)
        _check_writable("--output", output)
        _check_writable("--timeline", timeline)
        _check_not_store(store, no_store, output=output, timeline=timeline)
        if timeline is not None:
            from .timeline import _import_matplotlib

            try:
                _import_matplotlib()
            except ImportError as exc:
                raise Usage(f"--timeline: {exc}") from None
        options: dict[str, Any] = {
            "ncores": ncores, "memory": memory, "fragment_ncores": fragment_ncores,
            "fragment_memory": fragment_memory, "executor": executor, "retries": retries, "timeout": timeout,
            "on_error": on_error.value, "level_barrier": level_barrier,
        }
        if store is not None and no_store:
            raise Usage("--store and --no-store contradict each other: give one")
        if no_store:
            options["store"] = None
        elif store is not None:
            options["store"] = str(store)
        if scheduler is not None:
            options["scheduler"] = scheduler
        for name in ("store", "scheduler"):
            if name in options and not _supported(name):
                raise Usage(f"--{name.replace('_', '-')} is not supported by this version of qcmb_async")
        if quiet and log_format is LogFormat.console and logging.getLogger("qcmb_async").level == logging.WARNING:
            # --quiet: only the final lines; advisories (e.g. MOPAC and ghost atoms) stay out of it.
            logging.getLogger("qcmb_async").setLevel(logging.ERROR)
        _run(mbe, options, output=output, timeline=timeline, quiet=quiet, json_logs=log_format is LogFormat.json)


def _run(mbe: Any, options: dict[str, Any], *, output: Path | None, timeline: Path | None, quiet: bool,
         json_logs: bool) -> None:
    from . import run as run_sync
    from ._core.logs import get_logger
    from .progress import ProgressDisplay

    out = _stdout()
    # With JSON logs stderr stays machine-readable: the summary becomes a log line, no bars.
    progress = ProgressDisplay(_stderr(), quiet=quiet or json_logs)
    try:
        with progress:
            result = run_sync(mbe, on_event=progress, **options)
    except RunFailed as exc:
        partial = exc.report.partial_result
        if partial is not None:
            through = max(exc.report.complete_levels)
            _energy_tables(out, partial, heading=f"partial result through {through}-body (complete levels only)")
            if output is not None:
                output.write_text(partial.model_dump_json())
        raise
    finally:
        if json_logs:
            get_logger().info("run summary", run_id=progress.run_id, total=progress.total, done=progress.done,
                              computed=progress.succeeded, cached=progress.cached, failed=progress.failed,
                              retries=progress.retried, wall_time=progress.wall_time)
    _energy_tables(out, result)
    not_stored = int(((result.extras or {}).get("qcmb_async") or {}).get("not_stored") or 0)
    if not_stored:
        # Said once, here, not once per fragment: a full disk fails every write the same way.
        _stderr().print(f"warning: {not_stored} computed result(s) are not in the result store (it could not be "
                        "written; see the first 'result not stored' log line for why): a rerun would recompute "
                        "them", markup=False, soft_wrap=True)
    if output is not None:
        output.write_text(result.model_dump_json())
        if not quiet and not json_logs:
            _stderr().print(f"result written to {output}", markup=False, soft_wrap=True)
    if timeline is not None:
        from .timeline import plot_timeline

        plot_timeline(result, timeline)
        if not quiet and not json_logs:
            _stderr().print(f"timeline written to {timeline}", markup=False, soft_wrap=True)


# -- plan ----------------------------------------------------------------------------------
@app.command()
def plan(
    input: InputArg,
    method: MethodOpt = None,
    basis: BasisOpt = None,
    program: ProgramOpt = None,
    bsse: BsseOpt = None,
    max_nbody: MaxNbodyOpt = None,
    keywords: KeywordsOpt = None,
    driver: DriverOpt = None,
    charge: ChargeOpt = None,
    multiplicity: MultOpt = None,
    log_format: LogFormatOpt = LogFormat.console,
    verbose: VerboseOpt = 0,
    debug: DebugOpt = False,
) -> None:
    """Show the fragments per n-body level and model chemistry; computes nothing."""
    with _errors(debug):
        _setup_logging(log_format, verbose, debug)
        mbe = _load(input, method=method, basis=basis, program=program, bsse=bsse, max_nbody=max_nbody,
                    keywords=keywords, driver=driver, charge=charge, multiplicity=multiplicity)
        from . import plan_manybody

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


# -- report --------------------------------------------------------------------------------
@app.command()
def report(
    source: Annotated[Path, typer.Argument(help="A result JSON written by 'run --output', or a result store "
                                                "(.sqlite).", show_default=False, metavar="RESULT")],
    run_id: Annotated[str | None, _opt("--run", metavar="RUN_ID", help="Store: only this run's fragments.")] = None,
    debug: DebugOpt = False,
) -> None:
    """Print the energies and per-fragment timings of a saved result, or a result store's runs."""
    with _errors(debug):
        if not source.exists():
            raise InputError(f"{str(source)!r} does not exist: give a result JSON (run --output) or a result store")
        if source.is_dir():
            raise InputError(f"{str(source)!r} is a directory: give a result JSON or a result store file")
        with source.open("rb") as fh:
            head = fh.read(16)
        if head.startswith(b"SQLite format 3"):
            _report_store(source, run_id)
        else:
            if run_id is not None:
                raise Usage("--run applies to result stores, not to a result JSON")
            _report_json(source)


def _load_result(path: Path) -> Any:
    from pydantic import ValidationError
    from qcmanybody.models.v2 import ManyBodyResult

    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InputError(f"{str(path)!r} is neither a result JSON (run --output) nor a result store") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{str(path)!r} is not valid JSON ({exc}): give a file written by 'run --output'") from None
    if isinstance(data, dict) and "input_data" not in data and "specification" in data and "molecule" in data:
        raise InputError(f"{str(path)!r} is a ManyBodyInput, not a result: compute it with 'qcmb-async run "
                         f"{path}', or report the file written by its --output")
    try:
        return ManyBodyResult.model_validate_json(text)
    except ValidationError as exc:
        from ._core.inputs import _pydantic_message

        raise InputError(f"{str(path)!r} is not a ManyBodyResult: {_short(_pydantic_message(exc), False)}") from None


def _report_json(path: Path) -> None:
    from rich import box
    from rich.table import Table

    from .timeline import timeline_stats

    result = _load_result(path)
    out = _stdout()
    _energy_tables(out, result)
    meta = (result.extras or {}).get("qcmb_async")
    if not meta:
        out.print("no per-fragment records: this result was not computed by qcmb_async", markup=False, soft_wrap=True)
        return
    frags = sorted(meta.get("fragments", []), key=lambda f: (f.get("start") or math.inf, f.get("label", "")))
    table = Table(box=box.SIMPLE, title="fragments", title_justify="left")
    for name, justify in (("fragment", "left"), ("n-body", "right"), ("status", "left"), ("attempts", "right"),
                          ("wall / s", "right"), ("worker", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for frag in frags:
        wall = (frag["end"] - frag["start"]) if frag.get("start") is not None and frag.get("end") else None
        table.add_row(frag.get("label", "?"), str(frag.get("level", "")), str(frag.get("status", "")),
                      str(frag.get("attempts", "")), f"{wall:.3f}" if wall is not None else "-",
                      str(frag.get("worker") or "-"))
    out.print(table)
    stats = timeline_stats(result)
    eff = f"{stats['efficiency']:.2f}" if stats["efficiency"] is not None else "n/a"
    out.print(f"run {meta.get('run_id', '?')}: {len(frags)} fragments on {stats['ncores']} cores "
              f"({meta.get('executor', '?')} executor); makespan {stats['makespan']:.2f} s, lower bound "
              f"{stats['lower_bound']:.2f} s, efficiency {eff}, idle {stats['idle_fraction']:.0%}", markup=False,
              soft_wrap=True)


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return str(ts) if ts is not None else "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _report_store(path: Path, run_id: str | None) -> None:
    from rich import box
    from rich.table import Table

    try:
        from ._core.store import ResultStore, StoreError
    except ImportError:
        raise Usage("reading a result store needs qcmb_async._core.store, which this installation of qcmb_async "
                    "lacks: update qcmb_async") from None
    try:
        store = ResultStore(path, readonly=True)
    except StoreError as exc:
        raise InputError(str(exc)) from None
    try:
        runs = list(store.runs())
        frags = list(store.fragments(run_id=run_id))
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    out = _stdout()
    table = Table(box=box.SIMPLE, title=f"runs in {path}", title_justify="left")
    for name in ("run", "status", "started", "finished", "wall / s"):
        table.add_column(name)
    for r in runs:
        started, finished = r.get("started"), r.get("finished")
        wall = f"{finished - started:.2f}" if isinstance(started, int | float) and isinstance(
            finished, int | float) else "-"
        table.add_row(str(r.get("run_id", "?")), str(r.get("status", "-")), _when(started), _when(finished), wall)
    out.print(table)
    programs = sorted({str(f.get("program", "")) for f in frags})
    title = f"fragments of run {run_id}" if run_id else "fragments"
    if len(programs) == 1:
        title += f" ({programs[0]})"
    ftable = Table(box=box.SIMPLE, title=title, title_justify="left")
    ftable.add_column("fragment", no_wrap=True)
    ftable.add_column("n-body", justify="right")
    if len(programs) > 1:
        ftable.add_column("program")
    for name, justify in (("status", "left"), ("attempts", "right"), ("wall / s", "right"), ("worker", "left"),
                          ("run", "left")):
        ftable.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for f in sorted(frags, key=lambda f: (f.get("level") or 0, f.get("label", ""))):
        attempts = f.get("attempts")
        if isinstance(attempts, list):
            attempts = len(attempts)
        wall = f.get("wall_time")
        status = str(f.get("status", "-"))
        if f.get("error_type"):
            status += f" ({f['error_type']})"
        cells = [str(f.get("label", "?")), str(f.get("level", ""))]
        if len(programs) > 1:
            cells.append(str(f.get("program", "")))
        cells += [status, str(attempts if attempts is not None else "-"),
                  f"{wall:.3f}" if isinstance(wall, int | float) else "-", str(f.get("worker") or "-"),
                  str(f.get("run_id") or "-")]
        ftable.add_row(*cells)
    out.print(ftable)
    ok = sum(f.get("status") == "ok" for f in frags)
    out.print(f"{len(runs)} run(s); {len(frags)} fragment record(s), {ok} ok", markup=False, soft_wrap=True)


def main() -> None:
    """Entry point of ``python -m qcmb_async`` and the ``qcmb-async`` script."""
    app(prog_name="qcmb-async")


if __name__ == "__main__":
    main()
