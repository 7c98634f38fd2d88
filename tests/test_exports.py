"""Guards the public surface (trio's test_exports): what ``import qcmb_async`` offers changes only on purpose."""

from __future__ import annotations

import inspect

import qcmb_async

#: The public API. Changing it is an API change: update this list, the docs and the changelog together.
PUBLIC = {
    "__version__", "Executor", "FailureReport", "Fragment", "FragmentError", "FragmentJob", "InputError",
    "JobOutcome", "Plan", "QCMBAsyncError", "RunFailed", "RunHandle", "Terminated", "events", "open_run",
    "plan_manybody", "prime_qcengine", "read_pdb", "read_xyz", "run", "run_manybody",
    "GMBEInput", "GMBEResult", "optimize", "frequencies", "OptimizationResult", "FrequencyResult", "optimize_sync",
    "frequencies_sync",
}

#: The progress events (``qcmb_async.events``): fragment events of every run, step events of the drivers.
EVENTS = {
    "Event", "RunStarted", "FragmentsReleased", "FragmentStarted", "FragmentFinished", "FragmentRetried",
    "FragmentFailed", "LevelComplete", "RunFinished", "StepStarted", "StepFinished",
}


def test_all_is_the_public_api() -> None:
    assert set(qcmb_async.__all__) == PUBLIC
    for name in qcmb_async.__all__:
        assert hasattr(qcmb_async, name), f"qcmb_async.__all__ names {name!r}, which the package does not define"


def test_events_are_the_public_events() -> None:
    from qcmb_async import events

    assert set(events.__all__) == EVENTS
    for name in EVENTS - {"Event"}:
        cls = getattr(events, name)
        assert inspect.getdoc(cls), f"qcmb_async.events.{name} has no docstring"
        assert cls in events.Event.__args__, f"qcmb_async.events.Event does not include {name}"


def test_no_private_module_leaks_into_the_namespace() -> None:
    public = {n for n in dir(qcmb_async) if not n.startswith("_")}
    # Subpackages users import explicitly (``qcmb_async.executors.threads``...) may appear once imported.
    modules = {"executors", "errors", "harnesses", "programs", "settings", "store", "cli", "timeline", "progress",
               "simulate", "ase"}
    extra = public - PUBLIC - modules - {"logging", "annotations"}
    assert not extra, f"names in qcmb_async's namespace that are not public API: {sorted(extra)}"


def test_every_public_callable_and_class_is_documented() -> None:
    for name in PUBLIC - {"__version__", "events"}:
        obj = getattr(qcmb_async, name)
        assert inspect.getdoc(obj), f"qcmb_async.{name} has no docstring"


def test_errors_share_one_base() -> None:
    for name in ("InputError", "FragmentError", "RunFailed"):
        assert issubclass(getattr(qcmb_async, name), qcmb_async.QCMBAsyncError)
    assert issubclass(qcmb_async.InputError, ValueError)  # callers that catch ValueError keep working
