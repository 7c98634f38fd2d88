"""Exceptions raised by qcmb_async."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The one module errors.py builds on: pure text functions that import nothing of the package (the
# lowest layer in tests/test_architecture.py), so the exception tree stays at the bottom of the graph.
from ._core.causes import extract_cause


class QCMBAsyncError(Exception):
    """Base class of every qcmb_async error."""


class InputError(QCMBAsyncError, ValueError):
    """Bad input, found before anything was computed. The message says what to change."""


class QCMBAsyncWarning(UserWarning):
    """A result QCManyBody would give too, but that is probably not what you want (said once, not refused)."""


class StoreError(QCMBAsyncError):
    """The result store cannot be used (corrupt, foreign, locked, unreadable, or from an incompatible version)."""


class WorkerStartError(QCMBAsyncError, RuntimeError):
    """A worker process could not be started or failed to prepare itself."""


class ClusterError(QCMBAsyncError, RuntimeError):
    """The batch cluster cannot run the fragments: e.g. its jobs end before their Dask worker connects.

    :attr:`logs` names the kept job logs (a directory or files), when there are any.
    """

    def __init__(self, message: str, logs: str | None = None) -> None:
        super().__init__(message)
        self.logs = logs


def describe_validation(exc: Exception) -> str:
    """One line per problem of a pydantic ``ValidationError`` (``field.path: message``), for InputErrors.

    An unknown field says to remove it or check its spelling; other exceptions give ``str(exc)``.
    """
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        if err.get("type") == "extra_forbidden":
            lines.append(f"unknown field '{loc}': remove it or check its spelling")
        else:
            lines.append(f"{loc or '(input)'}: {err.get('msg')}")
    return "; ".join(lines) or str(exc)


class FragmentError(QCMBAsyncError, RuntimeError):
    """A fragment calculation failed.

    Names the fragment and keeps QCEngine's original error type and full message unchanged in
    :attr:`error_type` and :attr:`error_message`; :attr:`cause` is the program's own error
    line(s) extracted from that message (for NWChem, not the echoed input deck that fills its
    first kilobytes), which is what ``str(err)`` shows. :attr:`result` is QCEngine's
    ``FailedOperation`` as a dict when there was one.
    """

    def __init__(
        self,
        label: str,
        level: int,
        program: str,
        error_type: str,
        error_message: str,
        attempts: int = 1,
        result: dict[str, Any] | None = None,
    ) -> None:
        self.label = label
        self.level = level
        self.program = program
        self.error_type = error_type
        self.error_message = error_message
        self.attempts = attempts
        self.result = result
        self.cause = extract_cause(error_message, error_type=error_type)
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(
            f"fragment {label} (n-body level {level}, program {program}) failed{tries}: "
            f"{error_type}: {self.cause}"
        )

    def __reduce__(self) -> Any:  # picklable (Dask, process pools) despite the keyword-rich __init__
        return (type(self), (self.label, self.level, self.program, self.error_type, self.error_message,
                             self.attempts, self.result))


class Terminated(KeyboardInterrupt):
    """The run was stopped by a termination signal (SIGTERM from a batch scheduler), cleanly like Ctrl-C.

    A ``KeyboardInterrupt`` so code that handles Ctrl-C handles it too; :attr:`signum` is the
    signal's number (the command line exits with ``128 + signum``, 143 for SIGTERM).
    """

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


@dataclass
class FailureReport:
    """What an ``on_error="continue"`` run could and could not compute."""

    failed: list[FragmentError] = field(default_factory=list)
    complete_levels: list[int] = field(default_factory=list)
    """n-body levels all of whose fragments (and all lower levels') succeeded."""
    partial_result: Any = None
    """``ManyBodyResult`` through the highest complete level, when one could be assembled."""

    def __str__(self) -> str:
        lines = [f"{len(self.failed)} fragment(s) failed:"]
        lines += [f"  - {err}" for err in self.failed]
        lines.append(f"complete n-body levels: {self.complete_levels or 'none'}")
        return "\n".join(lines)


class RunFailed(QCMBAsyncError, RuntimeError):
    """Raised after an ``on_error="continue"`` run in which some fragments failed."""

    def __init__(self, report: FailureReport) -> None:
        self.report = report
        super().__init__(str(report))
