"""Consoles, log set-up, and the one place exceptions become exit codes and an error paragraph."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import typer

from ..errors import ClusterError, FragmentError, InputError, RunFailed, Terminated
from ._options import LOG_PARAMETERS, LogFormat, LogOptions, _with_group

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MESSAGE_LIMIT = 600


class Usage(Exception):
    """A usage problem found by the command line itself (exit code 2)."""


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
    import warnings

    from .._logs import configure_logging
    from ..errors import QCMBAsyncWarning

    # The command line says these itself, as log lines; the API's Python warnings would repeat them.
    warnings.simplefilter("ignore", QCMBAsyncWarning)

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
    # The event dict rides on the record (qcmb_async._logs); older records carried it as the message.
    data = getattr(record, "qcmb_event", None) or (record.msg if isinstance(record.msg, dict) else None)
    event = data.get("event") if isinstance(data, dict) else None
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
    except ClusterError as exc:
        raise _fail(str(exc), EXIT_FAILED, exc, debug) from None
    except FragmentError as exc:
        raise _fail(_fragment_message(exc, debug) + " (other fragments were cancelled; --on-error continue "
                    "computes everything it can)", EXIT_FAILED, exc, debug) from None
    except Exception as exc:
        raise _fail(f"unexpected {type(exc).__name__}: {_short(str(exc), debug)} (rerun with --debug for the "
                    "traceback)", EXIT_FAILED, exc, debug) from None


@contextlib.contextmanager
def _logged(logs: LogOptions) -> Iterator[None]:
    """A command's body: exceptions mapped to exit codes (:func:`_errors`), logging set up from its options."""
    with _errors(logs.debug):
        _setup_logging(logs.log_format, logs.verbose, logs.debug)
        yield


#: Gives a command --log-format, -v and --debug (``logs: LogOptions``) and runs its body under :func:`_logged`:
#: the opening every command shares, declared once.
with_log_options = _with_group("logs", LogOptions, LOG_PARAMETERS, around=_logged)
