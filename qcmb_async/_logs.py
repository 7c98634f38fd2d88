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
