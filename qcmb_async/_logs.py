"""Structured logging: structlog on top of the stdlib ``qcmb_async`` logger.

The library configures nothing globally: its events go to ``logging.getLogger("qcmb_async")``,
so an application (or the command line, through :func:`configure_logging`) decides where
they go. Fields bound with ``structlog.contextvars`` reach lines written in worker threads.

Every record leaves structlog as a readable string (``fragment finished  label=... wall_time=0.1``), so
whatever handler ends up with it -- a root handler from ``logging.basicConfig()`` (PySCF's geomeTRIC
driver configures one), a file handler, pytest's capture -- prints a line, never a raw Python dict. The
event dict rides along on the record (``record.qcmb_event``) for :func:`configure_logging`'s console and
JSON renderers.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

_STDLIB_NAME = "qcmb_async"


def get_logger(**initial: Any) -> Any:
    """A structlog logger that forwards to the stdlib ``qcmb_async`` logger."""
    return structlog.wrap_logger(
        logging.getLogger(_STDLIB_NAME),
        processors=[
            # Filter first: a disabled level then costs one level check, not a context merge.
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            _render_for_stdlib,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        **initial,
    )


#: Keys the stdlib record shows itself (level, time) or that are not fields: left out of the plain line.
_NOT_IN_LINE = frozenset({"event", "level", "timestamp", "exc_info", "stack_info"})


def _value(value: Any) -> str:
    text = str(value)
    return repr(text) if (not text or any(c.isspace() for c in text) or "=" in text) else text


def plain_line(event_dict: dict[str, Any]) -> str:
    """``event  key=value key=value``: one readable line of an event dict (values with spaces quoted)."""
    fields = " ".join(f"{k}={_value(v)}" for k, v in event_dict.items() if k not in _NOT_IN_LINE)
    return f"{event_dict.get('event', '')}  {fields}" if fields else str(event_dict.get("event", ""))


def _render_for_stdlib(logger: Any, name: str, event_dict: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Last processor: the stdlib record's message is :func:`plain_line` (readable under any formatter); the
    event dict goes along as ``record.qcmb_event`` for :class:`_EventFormatter`."""
    kwargs: dict[str, Any] = {"extra": {"qcmb_event": dict(event_dict)}}
    if event_dict.get("exc_info"):
        # Plain handlers print the traceback from the record (ours from the event dict, see _EventFormatter).
        exc = event_dict["exc_info"]
        kwargs["exc_info"] = exc if isinstance(exc, BaseException | tuple) else True
    return (plain_line(event_dict),), kwargs  # no args: stdlib never %-formats it


class _EventFormatter(structlog.stdlib.ProcessorFormatter):
    """structlog's ``ProcessorFormatter`` over records of :func:`_render_for_stdlib`: renders their event dict."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "qcmb_event", None)
        if event is None:
            return super().format(record)
        record = logging.makeLogRecord(record.__dict__)
        record.msg, record.args = dict(event), ()
        record.exc_info = record.exc_text = None  # rendered from the event dict, not twice
        record._logger, record._name = None, record.levelname.lower()  # what wrap_for_formatter would attach
        return super().format(record)


def configure_logging(fmt: Literal["console", "json"] = "console", level: int | str = logging.INFO,
                      stream: Any = None) -> logging.Handler:
    """Attach a console or JSON renderer to the ``qcmb_async`` logger (used by the command line)."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_EventFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    logger = logging.getLogger(_STDLIB_NAME)
    for old in list(logger.handlers):
        if getattr(old, "_qcmb_async", False):
            logger.removeHandler(old)
    handler._qcmb_async = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler


#: Loggers of the libraries under the Dask executor: while a run tears a cluster down they report every
#: connection closing under them (``CommClosedError``, ``Exception in callback``) as errors with tracebacks.
TEARDOWN_LOGGERS = ("distributed", "dask_jobqueue", "tornado", "asyncio")
_saved_levels: dict[str, int] | None = None
_holds = 0


def quiet_teardown() -> None:
    """Silence :data:`TEARDOWN_LOGGERS` (and their existing children) until :func:`end_quiet_teardown`.

    Called when an executor starts closing a cluster: what those libraries log from then on is the
    teardown itself (connections closing, callbacks cancelled), not news for the user. Idempotent.
    """
    global _saved_levels
    if _saved_levels is not None:
        return
    names = [name for name in logging.root.manager.loggerDict
             if any(name == p or name.startswith(p + ".") for p in TEARDOWN_LOGGERS)]
    names += [p for p in TEARDOWN_LOGGERS if p not in names]
    _saved_levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def end_quiet_teardown(*, force: bool = False) -> None:
    """Restore the levels :func:`quiet_teardown` changed, unless a :func:`hold_quiet` block still runs."""
    global _saved_levels
    if _saved_levels is None or (_holds and not force):
        return
    saved, _saved_levels = _saved_levels, None
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


class hold_quiet:
    """Keep a teardown quiet until this block ends (callbacks of a closing cluster fire until its loop closes)."""

    def __enter__(self) -> None:
        global _holds
        _holds += 1

    def __exit__(self, *exc: object) -> None:
        global _holds
        _holds -= 1
        if not _holds:
            end_quiet_teardown()
