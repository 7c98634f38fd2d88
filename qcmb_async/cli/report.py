"""``qcmb-async report``: energies and timings of a saved result, or a result store's runs."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError, describe_validation
from ._app import app
from ._console import Usage, _short, _stdout, with_log_options
from ._options import LogOptions, _opt
from ._render import _energy_tables


@app.command()
@with_log_options
def report(
    source: Annotated[Path, typer.Argument(help="A result JSON written by 'run', 'optimize' or 'frequencies "
                                                "--output', or a result store (.sqlite).", show_default=False,
                                           metavar="RESULT")],
    *,
    run_id: Annotated[str | None, _opt("--run", metavar="RUN_ID", help="Store: only this run's fragments.")] = None,
    logs: LogOptions,
) -> None:
    """Print the energies and per-fragment timings of a saved result, or a result store's runs."""
    if not source.exists():
        raise InputError(f"{str(source)!r} does not exist: give a result JSON (run --output) or a result store")
    if source.is_dir():
        raise InputError(f"{str(source)!r} is a directory: give a result JSON or a result store file")
    from .._core.inputs import check_input_path

    # A FIFO or device would block or never end: refused before it is opened.
    check_input_path(source, "result file", expect=_EXPECT, limit=MAX_RESULT_BYTES)
    with source.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(b"SQLite format 3"):
        _report_store(source, run_id)
    else:
        if run_id is not None:
            raise Usage("--run applies to result stores, not to a result JSON")
        _report_json(source)


#: Largest result JSON read, bytes (a result with every fragment's result kept can be large).
MAX_RESULT_BYTES = 1024**3
_EXPECT = "a result JSON (run, optimize or frequencies --output) or a result store"


def _read_json(path: Path) -> tuple[str, Any]:
    from .._core.inputs import read_text_file

    try:
        text = read_text_file(path, "result file", expect=_EXPECT, limit=MAX_RESULT_BYTES)
    except InputError as exc:
        if "UTF-8" in str(exc):
            raise InputError(f"{str(path)!r} is neither a result JSON (run --output) nor a result store") from None
        raise
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{str(path)!r} is not valid JSON ({exc}): give a file written by 'run --output'") from None


def _load_result(path: Path, text: str, data: Any) -> Any:
    from pydantic import ValidationError
    from qcmanybody.models.v2 import ManyBodyResult

    if isinstance(data, dict) and "input_data" not in data and "specification" in data and "molecule" in data:
        raise InputError(f"{str(path)!r} is a ManyBodyInput, not a result: compute it with 'qcmb-async run "
                         f"{path}', or report the file written by its --output")
    if isinstance(data, dict) and data.get("schema_name") == "qcmb_async_gmbe_result":
        from .._core.gmbe_assemble import GMBEResult

        try:
            return GMBEResult.model_validate_json(text)
        except ValidationError as exc:
            raise InputError(f"{str(path)!r} is not a valid GMBE result: {_short(describe_validation(exc), False)}"
                             ) from None
    try:
        return ManyBodyResult.model_validate_json(text)
    except ValidationError as exc:
        raise InputError(f"{str(path)!r} is not a ManyBodyResult: {_short(describe_validation(exc), False)}") from None


def _records(path: Path, meta: Any) -> dict[str, Any]:
    """``extras["qcmb_async"]`` checked against the shape ``run`` writes, else :class:`InputError`."""
    from pydantic import BaseModel, ConfigDict, FiniteFloat, PositiveInt, ValidationError

    class _Attempt(BaseModel):
        model_config = ConfigDict(extra="allow")
        start: FiniteFloat | None = None
        end: FiniteFloat | None = None
        error_type: str | None = None

    class _Record(BaseModel):
        model_config = ConfigDict(extra="allow")
        label: str = "?"
        level: int | None = None
        status: str | None = None
        attempts: int | list[Any] | None = None
        start: FiniteFloat | None = None
        end: FiniteFloat | None = None
        worker: str | int | None = None
        cores: PositiveInt | None = None
        history: list[_Attempt] | None = None

    class _Meta(BaseModel):
        model_config = ConfigDict(extra="allow")
        fragments: list[_Record]
        run_id: str | None = None
        executor: str | None = None
        ncores: PositiveInt | None = None
        started: FiniteFloat | None = None
        finished: FiniteFloat | None = None

    try:
        return _Meta.model_validate(meta).model_dump()
    except ValidationError as exc:
        raise InputError(f"{str(path)!r}: its per-fragment records (extras.qcmb_async) are malformed: "
                         f"{_short(describe_validation(exc), False)}. The file was edited or not written by "
                         "'qcmb-async run --output'; rerun the calculation (the result store keeps its fragments)"
                         ) from None


def _check_energies(path: Path, result: Any) -> None:
    """Refuse a result whose energies are NaN or infinite: printing them as numbers would pass them off as real."""
    from .._core.inputs import _nonfinite

    for name in ("return_result", "properties"):
        where = _nonfinite(getattr(result, name, None), name)
        if where is not None:
            raise InputError(f"{str(path)!r} holds a NaN or infinite value at {where}: it is not a usable result "
                             "(the file was edited, or written by a failed run); rerun the calculation")


def _report_json(path: Path) -> None:
    from rich import box
    from rich.table import Table

    from ..timeline import timeline_stats

    text, data = _read_json(path)
    if isinstance(data, dict) and "frequencies_cm-1" in data:
        _report_frequencies(path, data)
        return
    if isinstance(data, dict) and "final_molecule" in data and "steps" in data:
        _report_optimization(path, data)
        return
    result = _load_result(path, text, data)
    _check_energies(path, result)
    raw = (result.extras or {}).get("qcmb_async")
    meta = _records(path, raw) if raw is not None else None
    out = _stdout()
    _energy_tables(out, result)
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
    try:
        stats = timeline_stats(result)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{str(path)!r}: its per-fragment records (extras.qcmb_async) are malformed: {exc}") from None
    eff = f"{stats['efficiency']:.2f}" if stats["efficiency"] is not None else "n/a"
    out.print(f"run {meta.get('run_id', '?')}: {len(frags)} fragments on {stats['ncores']} cores "
              f"({meta.get('executor', '?')} executor); makespan {stats['makespan']:.2f} s, lower bound "
              f"{stats['lower_bound']:.2f} s, efficiency {eff}, idle {stats['idle_fraction']:.0%}", markup=False,
              soft_wrap=True)


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return str(ts) if ts is not None else "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _versions(summary: Any) -> str:
    """``"nwchem 7.0.2-N-A, pyscf 2.15.0+harness.1"`` from a run's summary; ``-`` for runs before versions."""
    versions = summary.get("program_versions") if isinstance(summary, dict) else None
    if not isinstance(versions, dict) or not versions:
        return "-"
    return ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))


def _report_store(path: Path, run_id: str | None) -> None:
    from rich import box
    from rich.table import Table

    from ..store import ResultStore, StoreError
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
    for name in ("run", "status", "started", "finished", "wall / s", "program versions"):
        table.add_column(name)
    for r in runs:
        started, finished = r.get("started"), r.get("finished")
        wall = f"{finished - started:.2f}" if isinstance(started, int | float) and isinstance(
            finished, int | float) else "-"
        table.add_row(str(r.get("run_id", "?")), str(r.get("status", "-")), _when(started), _when(finished), wall,
                      _versions(r.get("summary")))
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
    ftable.add_column("version")  # the program version the result was computed (and keyed) with
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
        cells.append(str(f.get("program_version") or "unknown"))
        cells += [status, str(attempts if attempts is not None else "-"),
                  f"{wall:.3f}" if isinstance(wall, int | float) else "-", str(f.get("worker") or "-"),
                  str(f.get("run_id") or "-")]
        ftable.add_row(*cells)
    out.print(ftable)
    ok = sum(f.get("status") == "ok" for f in frags)
    out.print(f"{len(runs)} run(s); {len(frags)} fragment record(s), {ok} ok", markup=False, soft_wrap=True)


def _malformed(path: Path, kind: str, exc: Exception) -> InputError:
    return InputError(f"{str(path)!r} looks like the output of 'qcmb-async {kind} --output' but is malformed "
                      f"({_short(str(exc), False)}): the file was edited or cut short; run {kind} again (the result "
                      "store keeps its fragments)")


def _report_frequencies(path: Path, data: dict[str, Any]) -> None:
    """``frequencies --output``: the harmonic frequencies, the route and the fragment counts."""
    from .._core.inputs import _nonfinite

    try:
        freqs = [float(f) for f in data["frequencies_cm-1"]]
        method = str(data.get("method", "?"))
        energy = data.get("energy")
        extras = data.get("extras") or {}
        if not isinstance(extras, dict) or (energy is not None and not isinstance(energy, int | float)):
            raise TypeError("extras must be an object and energy a number")
    except (TypeError, ValueError, KeyError) as exc:
        raise _malformed(path, "frequencies", exc) from None
    if _nonfinite(freqs, "frequencies_cm-1") is not None:
        raise _malformed(path, "frequencies", ValueError("a frequency is NaN or infinite"))
    out = _stdout()
    out.print(f"harmonic frequencies of {path} (cm⁻¹, {method} Hessian; imaginary ones negative):", markup=False,
              soft_wrap=True)
    cells = [f"{f:10.2f}" for f in freqs]
    for i in range(0, len(cells), 6):
        out.print("".join(cells[i:i + 6]), markup=False)
    if energy is not None:
        out.print(f"energy at the reference geometry {energy:.10f} Eh", markup=False)
    counts = {k: extras.get(k) for k in ("fragments_computed", "fragments_cached", "wall_time")}
    if all(isinstance(v, int | float) for v in counts.values()):
        out.print(f"{counts['fragments_computed']} fragments computed, {counts['fragments_cached']} from the store; "
                  f"{counts['wall_time']:.1f} s", markup=False, soft_wrap=True)


def _report_optimization(path: Path, data: dict[str, Any]) -> None:
    """``optimize --output``: one row per gradient, then whether it converged and the final energy."""
    from rich import box
    from rich.table import Table

    def num(value: Any, fmt: str) -> str:
        return format(value, fmt) if isinstance(value, int | float) and not isinstance(value, bool) else "-"

    try:
        steps = list(data["steps"])
        if not all(isinstance(s, dict) for s in steps):
            raise TypeError("every step must be an object")
        success = bool(data.get("success"))
        final = data.get("final_energy")
        symbols = list(data["final_molecule"]["symbols"])
    except (TypeError, ValueError, KeyError) as exc:
        raise _malformed(path, "optimize", exc) from None
    out = _stdout()
    table = Table(box=box.SIMPLE, title=f"optimization steps in {path}", title_justify="left")
    for name in ("step", "energy / Eh", "grad rms", "grad max", "computed", "cached", "wall / s"):
        table.add_column(name, justify="right")
    for s in steps:
        table.add_row(num(s.get("step"), "d"), num(s.get("energy"), ".10f"), num(s.get("gradient_rms"), ".2e"),
                      num(s.get("gradient_max"), ".2e"), num(s.get("computed"), "d"), num(s.get("cached"), "d"),
                      num(s.get("wall_time"), ".2f"))
    out.print(table)
    state = "converged" if success else f"not converged ({data.get('error') or 'no reason recorded'})"
    out.print(f"{state} after {len(steps)} gradients; final energy {num(final, '.10f')} Eh, {len(symbols)} atoms",
              markup=False, soft_wrap=True)
