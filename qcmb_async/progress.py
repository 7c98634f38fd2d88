"""Live progress of a run, as an ``on_event`` callback.

>>> from qcmb_async.progress import ProgressDisplay
>>> with ProgressDisplay() as progress:
...     result = run(mbe_input, on_event=progress)

In a terminal: rich progress bars (overall and one per n-body level, counts, ETA). In Jupyter:
the same bars, updated in place in the cell output (no ipywidgets needed). Elsewhere (output
piped to a file, CI logs) or with ``quiet=True``: no live display, only the final summary line
(nothing at all with ``quiet=True``).

:class:`StepDisplay` does the same for the drivers that move atoms (``optimize``, ``frequencies``):
one line per finished step, and a live bar for the step in flight.
"""

from __future__ import annotations

import time
from collections import Counter
from types import TracebackType
from typing import Any

from ._core import events as ev

__all__ = ["ProgressDisplay", "StepDisplay", "step_line"]


class _OnConsole:
    """A display drawing on a rich console, made on first use (stderr) unless one was given."""

    _console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console


class ProgressDisplay(_OnConsole):
    """Progress bars fed by :mod:`qcmb_async.events`; pass the instance as ``on_event``.

    Args:
        console: rich ``Console`` to draw on (default: a console on stderr).
        quiet: Show nothing, not even the final line.
        live: Force (``True``) or forbid (``False``) the live display; default: live in a
            terminal or in Jupyter, final line only otherwise.
        jupyter_interval: Seconds between notebook refreshes.
    """

    def __init__(self, console: Any = None, *, quiet: bool = False, live: bool | None = None,
                 jupyter_interval: float = 0.25) -> None:
        self.quiet = quiet
        self._console = console
        self._live_choice = live
        self._jupyter_interval = jupyter_interval
        self._progress: Any = None
        self._overall: Any = None
        self._levels: dict[int, Any] = {}
        self._level_done: Counter[int] = Counter()
        self._level_total: dict[int, int] = {}
        self._jupyter_handle: Any = None
        self._jupyter_last = 0.0
        self._started = time.monotonic()
        self._closed = False
        self.run_id: str | None = None
        self.total = 0
        self.done = 0
        self.succeeded = 0
        self.cached = 0
        self.failed = 0
        self.retried = 0
        self.wall_time: float | None = None
        self.events: list[Any] = []
        """Every event received, in order (handy for apps and tests)."""

    # -- setup -------------------------------------------------------------------------
    @property
    def is_jupyter(self) -> bool:
        return bool(self.console.is_jupyter)

    @property
    def live(self) -> bool:
        """Whether bars are drawn live (terminal or notebook) rather than only a final line."""
        if self.quiet:
            return False
        if self._live_choice is not None:
            return self._live_choice
        return bool(self.console.is_jupyter or (self.console.is_terminal and not self.console.is_dumb_terminal))

    def __enter__(self) -> ProgressDisplay:
        self._started = time.monotonic()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _make_progress(self) -> Any:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        if self.is_jupyter:
            # Rendered by hand into an IPython display (rich's own Jupyter Live needs ipywidgets).
            return Progress(*columns, console=self.console, auto_refresh=False, disable=True)
        return Progress(*columns, console=self.console, transient=False, redirect_stderr=True,
                        redirect_stdout=False)

    # -- the callback ------------------------------------------------------------------
    def __call__(self, event: Any) -> None:
        """Receive one progress event (sync: safe to pass as ``on_event``)."""
        self.events.append(event)
        if isinstance(event, ev.RunStarted):
            self._on_start(event)
        elif isinstance(event, ev.FragmentFinished):
            self.done += 1
            self.cached += bool(event.cached)
            self.succeeded += not event.cached
            self._advance(event.level)
        elif isinstance(event, ev.FragmentFailed):
            self.done += 1
            self.failed += 1
            self._advance(event.level)
        elif isinstance(event, ev.FragmentsReleased):
            self._on_released(event)
        elif isinstance(event, ev.FragmentRetried):
            self.retried += 1
            self._note(event.level)
        elif isinstance(event, ev.RunFinished):
            self.wall_time = event.wall_time
        self._refresh_jupyter(final=isinstance(event, ev.RunFinished))

    def _on_start(self, event: ev.RunStarted) -> None:
        self.run_id = event.run_id
        self.total = event.total
        self._level_total = dict(event.per_level)
        self._started = time.monotonic()
        if not self.live or self._progress is not None:
            return
        self._progress = self._make_progress()
        self._overall = self._progress.add_task("all fragments", total=event.total, note="")
        for level, count in sorted(event.per_level.items()):
            self._levels[level] = self._progress.add_task(f"{level}-body", total=count, note="")
        if not self.is_jupyter:
            self._progress.start()

    def _on_released(self, event: ev.FragmentsReleased) -> None:
        """Energy screening added fragments: the bars' totals grow."""
        self.total = event.total
        for level, count in event.per_level.items():
            self._level_total[level] = self._level_total.get(level, 0) + count
        if self._progress is None:
            return
        self._progress.update(self._overall, total=event.total)
        for level, count in event.per_level.items():
            if level in self._levels:
                self._progress.update(self._levels[level], total=self._level_total[level])
            else:
                self._levels[level] = self._progress.add_task(f"{level}-body", total=count, note="")

    def _note(self, level: int) -> None:
        if self._progress is None:
            return
        parts = []
        if self.failed:
            parts.append(f"[red]{self.failed} failed[/]")
        if self.retried:
            parts.append(f"[yellow]{self.retried} retried[/]")
        if self.cached:
            parts.append(f"{self.cached} cached")
        self._progress.update(self._overall, note=", ".join(parts))

    def _advance(self, level: int) -> None:
        self._level_done[level] += 1
        if self._progress is None:
            return
        self._progress.advance(self._overall)
        if level in self._levels:
            self._progress.advance(self._levels[level])
        self._note(level)

    def _refresh_jupyter(self, final: bool = False) -> None:
        if self._progress is None or not self.is_jupyter:
            return
        now = time.monotonic()
        if not final and now - self._jupyter_last < self._jupyter_interval:
            return
        self._jupyter_last = now
        from io import StringIO

        from IPython.display import display
        from rich.console import Console

        render = Console(record=True, file=StringIO(), width=100, force_jupyter=False, force_terminal=False)
        render.print(self._progress.make_tasks_table(self._progress.tasks))
        html = render.export_html(inline_styles=True, code_format="<pre>{code}</pre>", clear=False)
        bundle = {"text/html": html, "text/plain": render.export_text()}
        if self._jupyter_handle is None:
            self._jupyter_handle = display(bundle, raw=True, display_id=True)
        else:
            self._jupyter_handle.update(bundle, raw=True)

    # -- the end -----------------------------------------------------------------------
    def summary(self) -> str:
        """One line: what was computed, reused, failed and retried, and the wall time."""
        wall = self.wall_time if self.wall_time is not None else time.monotonic() - self._started
        parts = [f"{self.succeeded} computed"]
        if self.cached:
            parts.append(f"{self.cached} from the result store")
        parts.append(f"{self.failed} failed")
        if self.retried:
            parts.append(f"{self.retried} retries")
        run = f"run {self.run_id}: " if self.run_id else ""
        return f"{run}{self.done}/{self.total} fragments done ({', '.join(parts)}) in {wall:.2f} s"

    def close(self) -> None:
        """Stop the live display and print the final line (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._progress is not None:
            if self.is_jupyter:
                self._refresh_jupyter(final=True)
            else:
                self._progress.stop()
        if not self.quiet and self.run_id is not None:
            self.console.print(self.summary(), highlight=False, markup=False, soft_wrap=True)


def step_line(event: ev.StepFinished) -> str:
    """One line for a finished step: energy (Eh), gradient rms/max (Eh/bohr), fragments, wall time (s)."""
    # frequencies: the one step is the scheduling pass over every displacement (or the one Hessian MBE)
    parts = [f"step {event.step:3d}" if event.kind != "frequencies" else "Hessian"]
    if event.energy is not None:
        parts.append(f"E = {event.energy:.10f} Eh")
    if event.gradient_rms is not None and event.gradient_max is not None:
        parts.append(f"grad rms {event.gradient_rms:.2e} max {event.gradient_max:.2e} Eh/bohr")
    parts.append(f"fragments computed {event.computed}, from the store {event.cached}")
    parts.append(f"{event.wall_time:.2f} s")
    return "  ".join(parts)


class StepDisplay(_OnConsole):
    """Progress of a driver that moves atoms (optimize, frequencies, the ASE calculator); pass it as ``on_event``.

    Prints one line per finished step (:func:`step_line`) as it ends. In a terminal a live bar below
    those lines follows the step in flight (its fragments done of all, from the store, elapsed time);
    elsewhere (piped output, CI logs, Jupyter) only the lines are printed.

    Args:
        console: rich ``Console`` to draw on (default: a console on stderr).
        live: Force (``True``) or forbid (``False``) the live bar; default: in a terminal only.
    """

    def __init__(self, console: Any = None, *, live: bool | None = None) -> None:
        self._console = console
        self._live_choice = live
        self._progress: Any = None
        self._task: Any = None
        self._cached = 0
        self._closed = False
        self.steps: list[ev.StepFinished] = []
        """Every finished step's event, in order."""

    @property
    def live(self) -> bool:
        if self._live_choice is not None:
            return self._live_choice
        return bool(self.console.is_terminal and not self.console.is_dumb_terminal and not self.console.is_jupyter)

    def __enter__(self) -> StepDisplay:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __call__(self, event: Any) -> None:
        """Receive one progress event (sync: safe to pass as ``on_event``)."""
        if isinstance(event, ev.StepStarted):
            self._start_step(event)
        elif isinstance(event, ev.StepFinished):
            self.steps.append(event)
            if self._task is not None:
                self._progress.refresh()  # the step's last state, then its bar goes
                self._progress.remove_task(self._task)
                self._task = None
            (self._progress.console if self._progress is not None else self.console).print(
                step_line(event), markup=False, highlight=False, soft_wrap=True)
        elif self._task is None:
            return
        elif isinstance(event, ev.RunStarted | ev.FragmentsReleased):
            # Drawn now: steps and runs are few; fragment events ride rich's own refresh (10 per second).
            self._progress.update(self._task, total=event.total, refresh=True)
        elif isinstance(event, ev.FragmentFinished | ev.FragmentFailed):
            self._cached += bool(getattr(event, "cached", False))
            self._progress.update(self._task, advance=1, cached=self._cached)

    def _start_step(self, event: ev.StepStarted) -> None:
        if not self.live:
            return
        if self._progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(bar_width=30),
                                      MofNCompleteColumn(), TextColumn("fragments ({task.fields[cached]} from the "
                                                                       "store)"),
                                      TimeElapsedColumn(), console=self.console, transient=True,
                                      redirect_stderr=True, redirect_stdout=False)
            self._progress.start()
        self._cached = 0
        self._task = self._progress.add_task(f"step {event.step}", total=None, cached=0)

    def close(self) -> None:
        """Stop the live bar (idempotent); the step lines stay."""
        if self._closed:
            return
        self._closed = True
        if self._progress is not None:
            self._progress.stop()
