"""Structured logging: structlog on top of the stdlib ``qcmb_async`` logger.

The library configures nothing globally: its events go to ``logging.getLogger("qcmb_async")``,
so an application (or the command line, through :func:`configure_logging`) decides where
they go. Fields bound with ``structlog.contextvars`` reach lines written in worker threads.
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
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        **initial,
    )


def configure_logging(fmt: Literal["console", "json"] = "console", level: int | str = logging.INFO,
                      stream: Any = None) -> logging.Handler:
    """Attach a console or JSON renderer to the ``qcmb_async`` logger (used by the command line)."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
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
