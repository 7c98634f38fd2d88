"""qcmb_async: run the fragments of a QCManyBody many-body expansion concurrently.

>>> from qcmb_async import run_manybody, run, optimize_sync
>>> result = await run_manybody(mbe_input, ncores=8, memory=16)   # async apps, notebooks
>>> result = run(mbe_input, ncores=8, memory=16)                  # scripts
>>> opt = optimize_sync(mbe_input, ncores=8)                      # geomeTRIC; await optimize(...) in async code

The result is the ``ManyBodyResult`` QCManyBody's sequential computer returns for the same
input. See docs/architecture.md for how it works.
"""

from __future__ import annotations

import logging

from . import events
from ._core.contract import Executor, FragmentJob, JobOutcome
from ._core.gmbe import GMBEInput
from ._core.gmbe_assemble import GMBEResult
from ._core.pdb import pdb_input as read_pdb
from ._core.plan import Fragment, Plan
from ._core.xyz import xyz_input as read_xyz
from ._frequencies import FrequencyResult, frequencies, frequencies_sync
from ._fronts import RunHandle, open_run, run
from ._optimize import OptimizationResult, optimize, optimize_sync
from ._qcengine.seams import prime_qcengine
from ._runner import plan_manybody, run_manybody
from ._version import __version__
from .errors import FailureReport, FragmentError, InputError, QCMBAsyncError, RunFailed, Terminated

# A library configures no logging; NullHandler keeps Python's last-resort handler from
# printing our structured events as raw dicts when the application configured nothing.
logging.getLogger("qcmb_async").addHandler(logging.NullHandler())

__all__ = [
    "Executor",
    "FailureReport",
    "Fragment",
    "FragmentError",
    "FragmentJob",
    "FrequencyResult",
    "GMBEInput",
    "GMBEResult",
    "InputError",
    "JobOutcome",
    "OptimizationResult",
    "Plan",
    "QCMBAsyncError",
    "RunFailed",
    "RunHandle",
    "Terminated",
    "__version__",
    "events",
    "frequencies",
    "frequencies_sync",
    "open_run",
    "optimize",
    "optimize_sync",
    "plan_manybody",
    "prime_qcengine",
    "read_pdb",
    "read_xyz",
    "run",
    "run_manybody",
]
