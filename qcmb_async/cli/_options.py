"""Options shared by the commands (typer ``Annotated`` types) and their enumerations."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer


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


def _opt(*names: str, metavar: str | None = None, help: str) -> Any:
    return typer.Option(*names, metavar=metavar, help=help)


InputArg = Annotated[Path, typer.Argument(help="ManyBodyInput as JSON or YAML, an XYZ file with '--' lines "
                                                "between fragments, or an XYZ/PDB/mmCIF cluster whose molecules "
                                                "are found (--fragments molecules).", show_default=False,
                                           metavar="INPUT")]
MethodOpt = Annotated[str | None, _opt("--method", metavar="METHOD", help="XYZ input: method, e.g. pm7, mp2.")]
BasisOpt = Annotated[str | None, _opt("--basis", metavar="BASIS", help="XYZ input: basis set (none for "
                                                                        "semi-empirical methods).")]
ProgramOpt = Annotated[str | None, _opt("--program", metavar="PROGRAM", help="XYZ input: QCEngine program, e.g. "
                                                                              "mopac, psi4, nwchem.")]
BsseOpt = Annotated[list[str] | None, _opt("--bsse", metavar="cp,nocp,vmfc", help="XYZ input: BSSE treatment(s); "
                                                                                   "repeat or comma separate. "
                                                                                   "Default cp; nocp for a "
                                                                                   "program that cannot place "
                                                                                   "ghost atoms (tblite, xtb, "
                                                                                   "mopac).")]
MaxNbodyOpt = Annotated[int | None, _opt("--max-nbody", metavar="N", help="XYZ input: highest n-body level.")]
KeywordsOpt = Annotated[str | None, _opt("--keywords", metavar="JSON", help="XYZ input: program keywords, a JSON "
                                                                             "object.")]
DriverOpt = Annotated[Driver | None, _opt("--driver", help="XYZ input: energy (default), gradient or hessian.")]
ChargeOpt = Annotated[str | None, _opt("--charge", metavar="Q[,Q...]", help="XYZ input: fragment charges, one per "
                                                                             "fragment or one for all. Default 0. "
                                                                             "Fragments found from bonds: also rules "
                                                                             "by element, formula or PDB residue, "
                                                                             "e.g. Na=+1,Cl=-1,SO4=-2. "
                                                                             "--gmbe with a PDB file: residue "
                                                                             "charges, e.g. A/LYS5=+1,ASP12=-1.")]
GmbeOpt = Annotated[int | None, _opt("--gmbe", metavar="N", help="PDB/XYZ input: a generalized MBE of order N with "
                                                                 "hydrogen caps (covalent molecules: peptides from "
                                                                 "PDB files, others cut at sp3 C-C bonds).")]
ResiduesOpt = Annotated[int | None, _opt("--residues-per-fragment", metavar="K", help="--gmbe with a PDB file: "
                                                                                      "residues per primary "
                                                                                      "fragment (default 1).")]
OverlapOpt = Annotated[int | None, _opt("--overlap", metavar="K", help="--gmbe with a PDB file: residues shared by "
                                                                       "consecutive fragments (default 0).")]
MaxAtomsOpt = Annotated[int | None, _opt("--max-fragment-atoms", metavar="N", help="--gmbe with an XYZ file: "
                                                                                   "cut it at sp3 C-C bonds into "
                                                                                   "primary fragments of at most N "
                                                                                   "atoms.")]
FragmentsOpt = Annotated[str | None, _opt("--fragments", metavar="file|molecules", help="XYZ input: 'file' (the "
                                                                                        "'--' lines; default) or "
                                                                                        "'molecules' (covalently "
                                                                                        "bonded molecules found "
                                                                                        "from the geometry; "
                                                                                        "always for PDB/mmCIF). "
                                                                                        "--gmbe with an XYZ "
                                                                                        "file: a JSON file of "
                                                                                        "primary fragments.")]
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
SchedulerFileOpt = Annotated[Path | None, _opt("--scheduler-file", metavar="PATH", help="Dask scheduler file (JSON "
                                                                                       "written by `dask scheduler "
                                                                                       "--scheduler-file`).")]


class ClusterKind(StrEnum):
    slurm = "slurm"
    pbs = "pbs"


ClusterOpt = Annotated[ClusterKind | None, _opt("--cluster", help="Start a batch cluster (Dask workers in jobs) for "
                                                                  "this run.")]
QueueOpt = Annotated[str | None, _opt("--queue", metavar="QUEUE", help="--cluster: partition/queue of the jobs.")]
JobCoresOpt = Annotated[int | None, _opt("--job-cores", metavar="N", help="--cluster: cores per job (default 1).")]
JobMemoryOpt = Annotated[float | None, _opt("--job-memory", metavar="GIB",
                                             help="--cluster: GiB per job (default 4, at least 0.25).")]
MaxJobsOpt = Annotated[int | None, _opt("--max-jobs", metavar="N", help="--cluster: most jobs at once (default 1); "
                                                                        "jobs come and go with the waiting "
                                                                        "fragments.")]
WalltimeOpt = Annotated[str | None, _opt("--walltime", metavar="HH:MM:SS", help="--cluster: job wall time (default "
                                                                                "01:00:00).")]
StoreOpt = Annotated[str | None, _opt("--store", metavar="PATH", help="SQLite result store (default: one in the "
                                                                        "user cache directory).")]
NoStoreOpt = Annotated[bool, _opt("--no-store", help="Use no result store.")]
RetriesOpt = Annotated[int, _opt("--retries", metavar="N", help="Extra attempts for transient failures.")]
TimeoutOpt = Annotated[float | None, _opt("--timeout", metavar="SECONDS", help="Seconds per fragment attempt.")]
OnErrorOpt = Annotated[OnError, _opt("--on-error", help="raise: stop at the first failure; continue: compute all "
                                                        "that can be.")]
BarrierOpt = Annotated[bool, _opt("--level-barrier", help="Finish each n-body level before the next.")]
TimelineOpt = Annotated[Path | None, _opt("--timeline", metavar="FILE.png", help="Write a Gantt chart of the "
                                                                                 "fragments (PNG, SVG, PDF).")]


@dataclass(frozen=True)
class XyzOptions:
    """What to compute for an XYZ input (``None``: not given); a ManyBodyInput file carries its own."""

    method: str | None = None
    basis: str | None = None
    program: str | None = None
    bsse: list[str] | None = None
    max_nbody: int | None = None
    keywords: str | None = None
    driver: Driver | None = None
    charge: str | None = None
    multiplicity: str | None = None
    fragments: str | None = None
    gmbe: int | None = None
    residues_per_fragment: int | None = None
    overlap: int | None = None
    max_fragment_atoms: int | None = None


def _parameters(*specs: tuple[str, Any, Any]) -> list[inspect.Parameter]:
    """A group's command parameters from ``(name, Annotated type, default)`` triples."""
    return [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)
            for name, annotation, default in specs]


_XYZ_PARAMETERS = _parameters(
    ("method", MethodOpt, None), ("basis", BasisOpt, None), ("program", ProgramOpt, None), ("bsse", BsseOpt, None),
    ("max_nbody", MaxNbodyOpt, None), ("keywords", KeywordsOpt, None), ("driver", DriverOpt, None),
    ("charge", ChargeOpt, None), ("multiplicity", MultOpt, None), ("fragments", FragmentsOpt, None),
    ("gmbe", GmbeOpt, None), ("residues_per_fragment", ResiduesOpt, None), ("overlap", OverlapOpt, None),
    ("max_fragment_atoms", MaxAtomsOpt, None))


def _with_group(name: str, group: type, parameters: list[inspect.Parameter],
                around: Callable[[Any], contextlib.AbstractContextManager[None]] | None = None,
                ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator giving a command ``parameters`` where its parameter ``name`` stands; it receives them as one
    ``group`` instance. One declaration for every command that takes the group, so the commands cannot drift.
    ``around(value)``: a context the command's body runs in (the log options' error handling and log set-up)."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        names = list(signature.parameters)
        at = names.index(name)
        own = list(signature.parameters.values())
        # The group's options take the placeholder's kind: ``*, resources: ResourceOptions`` (keyword-only, no
        # made-up default) is how a command names a group.
        new = [*own[:at], *(q.replace(kind=own[at].kind) for q in parameters), *own[at + 1:]]

        @functools.wraps(command)
        def wrapper(**kwargs: object) -> None:
            value = group(**{p.name: kwargs.pop(p.name) for p in parameters})
            with around(value) if around is not None else contextlib.nullcontext():
                command(**{name: value}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=new)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in new}
        return wrapper

    return decorate


#: Gives a command the XYZ options; it receives them as ``xyz: XyzOptions``.
with_xyz_options = _with_group("xyz", XyzOptions, _XYZ_PARAMETERS)


@dataclass(frozen=True)
class ResourceOptions:
    """Where and with what the expansions of a command run (``None``: not given)."""

    ncores: int | None = None
    memory: float | None = None
    fragment_ncores: int | None = None
    fragment_memory: float | None = None
    executor: str = "auto"
    scheduler: str | None = None
    store: str | None = None
    no_store: bool = False
    retries: int = 0
    timeout: float | None = None


_RESOURCE_PARAMETERS = _parameters(
    ("ncores", NcoresOpt, None), ("memory", MemoryOpt, None), ("fragment_ncores", FragNcoresOpt, None),
    ("fragment_memory", FragMemoryOpt, None), ("executor", ExecutorOpt, "auto"),
    ("scheduler", SchedulerOpt, None), ("store", StoreOpt, None), ("no_store", NoStoreOpt, False),
    ("retries", RetriesOpt, 0), ("timeout", TimeoutOpt, None))

#: Gives a command the resource options; it receives them as ``resources: ResourceOptions``.
with_resource_options = _with_group("resources", ResourceOptions, _RESOURCE_PARAMETERS)


@dataclass(frozen=True)
class LogOptions:
    """How a command logs (stderr) and reports errors: --log-format, -v, --debug."""

    log_format: LogFormat = LogFormat.console
    verbose: int = 0
    debug: bool = False

    @property
    def json(self) -> bool:
        """JSON log lines: stderr stays machine-readable (no live display, summaries as log lines)."""
        return self.log_format is LogFormat.json


LOG_PARAMETERS = _parameters(("log_format", LogFormatOpt, LogFormat.console), ("verbose", VerboseOpt, 0),
                             ("debug", DebugOpt, False))
"""The log options' parameters; ``_console.with_log_options`` gives them to a command with the error handling."""


@dataclass(frozen=True)
class OutputOptions:
    """What a command writes besides stdout: --output (JSON) and --timeline (a chart); ``None``: not asked."""

    output: Path | None = None
    timeline: Path | None = None


def with_output_options(output_help: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Gives a command ``--output/-o`` (JSON, described by ``output_help``) and ``--timeline``; it receives them as
    ``outputs: OutputOptions``."""
    output = Annotated[Path | None, _opt("--output", "-o", metavar="RESULT.json", help=output_help)]
    return _with_group("outputs", OutputOptions, _parameters(("output", output, None), ("timeline", TimelineOpt, None)))


CutoffOpt = Annotated[str | None, _opt("--cutoff", metavar="K:Å[,K:Å...]", help="Distance screening: keep a "
                                                                                "k-subset only if every pair of "
                                                                                "its fragments is within the "
                                                                                "order's cutoff (Å, closest "
                                                                                "atoms), e.g. 2:9,3:7.")]
EnergyScreenOpt = Annotated[str | None, _opt("--energy-threshold", metavar="K:EH[,K:EH...]", help="Energy "
                                                                                                   "screening (Eh) "
                                                                                                   "per order >= 3, "
                                                                                                   "e.g. 3:1e-5.")]
CentroidOpt = Annotated[bool, _opt("--centroid", help="Distance screening between fragment centroids instead of "
                                                      "closest atoms.")]


@dataclass(frozen=True)
class ScreeningOptions:
    """--cutoff, --energy-threshold, --centroid as given (``None``/``False``: not given)."""

    cutoff: str | None = None
    energy_threshold: str | None = None
    centroid: bool = False

    def spec(self) -> dict[str, Any] | None:
        """The ``screening`` run option (:func:`screening_option`; InputError if a flag is bad)."""
        return screening_option(self.cutoff, self.energy_threshold, self.centroid)


#: Gives a command the screening options; it receives them as ``screen: ScreeningOptions``.
with_screening_options = _with_group("screen", ScreeningOptions, _parameters(
    ("cutoff", CutoffOpt, None), ("energy_threshold", EnergyScreenOpt, None), ("centroid", CentroidOpt, False)))


def screening_option(cutoff: str | None, energy: str | None, centroid: bool) -> dict[str, Any] | None:
    """The ``screening`` run option from ``--cutoff``/``--energy-threshold``/``--centroid`` (InputError if bad)."""
    from ..errors import InputError

    def parse(flag: str, text: str) -> dict[int, float]:
        example = "2:9,3:7" if flag == "--cutoff" else "3:1e-5"
        if not text.strip():
            # An empty value would otherwise mean "no screening" without a word.
            raise InputError(f"{flag} is empty: give ORDER:VALUE pairs (e.g. {flag} {example}), or leave {flag} out "
                             "for the full expansion")
        out: dict[int, float] = {}
        for item in text.split(","):
            order, sep, value = item.strip().partition(":")
            try:
                if not sep:
                    raise ValueError
                key = int(order)
                number = float(value)
            except ValueError:
                raise InputError(f"{flag}: {item.strip()!r} is not ORDER:VALUE (e.g. {flag} {example})") from None
            if key in out:
                raise InputError(f"{flag} gives order {key} twice ({out[key]:g} and {number:g}): give each order once")
            out[key] = number
        return out

    spec: dict[str, Any] = {}
    if cutoff is not None:
        spec["distance"] = parse("--cutoff", cutoff)
    if energy is not None:
        spec["energy"] = parse("--energy-threshold", energy)
    if centroid:
        if cutoff is None:
            raise InputError("--centroid changes how --cutoff measures distances: give --cutoff too")
        spec["metric"] = "centroid"
    return spec or None
