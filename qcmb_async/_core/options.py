"""Run options as one pydantic model (units in the field descriptions; the docs render them from here).

:func:`make_options` is the one way in: it validates what a caller gave ``run_manybody``, fills the
defaults from this machine, and turns any problem into an :class:`~qcmb_async.errors.InputError`
that says what is wrong and what to do.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import InputError, describe_validation
from .resources import default_memory, default_ncores

OnError = Literal["raise", "continue"]
_EVEN_SHARE = object()  # fragment_memory not given
_CHOICES = {"on_error": ("raise", "continue"), "order": ("cost", "fifo")}


class Screening(BaseModel):
    """Which n-body subsets a screened expansion keeps (see docs/screening.md).

    A subset of ``k`` fragments is kept only if every one of its ``(k-1)``-subsets is kept (the
    kept family is closed downwards) and it passes the test of its order, if any; every dropped
    subset contributes a zero ``k``-body increment. Orders without a cutoff or threshold keep
    every subset whose ``(k-1)``-subsets are all kept.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    distance: dict[int, float] = Field(default_factory=dict, description=(
        "Per order k >= 2, Å: keep a k-subset only if every pair of its fragments is within this distance."))
    energy: dict[int, float] = Field(default_factory=dict, description=(
        "Per order k >= 3, Eh: keep a k-subset only if the largest |(k-1)-body increment| of its (k-1)-subsets "
        "exceeds this threshold (decided during the run, from the BSSE treatment the result reports)."))
    metric: Literal["closest", "centroid"] = Field("closest", description=(
        "Fragment-fragment distance: `closest` = smallest atom-atom distance; `centroid` = distance between the "
        "fragments' geometric centres."))

    @field_validator("distance", "energy", mode="before")
    @classmethod
    def _orders(cls, value: Any, info: ValidationInfo) -> Any:
        name = str(info.field_name)
        unit, lowest = ("Å", 2) if name == "distance" else ("Eh", 3)
        if not isinstance(value, dict):
            raise ValueError(f"screening {name} must map n-body orders to {unit}, e.g. {{{lowest}: "
                             f"{9.0 if name == 'distance' else 1e-5}}}; got {value!r}")
        out: dict[int, float] = {}
        for key, val in value.items():
            try:
                order = int(key)
                if isinstance(key, bool) or (isinstance(key, float) and order != key) or (isinstance(key, str) and \
                        str(order) != key.strip()):
                    raise ValueError
            except (TypeError, ValueError):
                raise ValueError(f"screening {name}: order {key!r} is not a whole number") from None
            if order < lowest:
                why = ("monomers are never screened" if name == "distance" else
                       "order 2 would be decided from monomer total energies, not interactions: screen dimers "
                       "by distance")
                raise ValueError(f"screening {name}: order {order} is below {lowest} ({why})")
            if order in out:
                # {2: 9.0, "2": 1.0} (a dict built from text and numbers) would keep whichever came last.
                raise ValueError(f"screening {name}: order {order} is given twice ({out[order]:g} and {val!r}): "
                                 "give each order once")
            if isinstance(val, bool) or not isinstance(val, numbers.Real) or not math.isfinite(float(val)) \
                    or val < 0:
                raise ValueError(f"screening {name}: order {order} needs a finite number >= 0 ({unit}), "
                                 f"got {val!r}")
            out[order] = float(val)
        return out

    @property
    def orders(self) -> list[int]:
        return sorted(set(self.distance) | set(self.energy))

    def describe(self) -> dict[str, Any]:
        """Plain data for reports: cutoffs (Å), thresholds (Eh), metric."""
        return {"distance": {str(k): v for k, v in sorted(self.distance.items())},
                "energy": {str(k): v for k, v in sorted(self.energy.items())}, "metric": self.metric}


def make_screening(value: Any) -> Screening | None:
    """``None``, a :class:`Screening` or its dict form, validated; :class:`InputError` when wrong."""
    if value is None or isinstance(value, Screening):
        return value
    if not isinstance(value, dict):
        raise InputError(f"screening must be a dict like {{'distance': {{2: 9.0}}}} or "
                         f"{{'energy': {{3: 1e-5}}}}, got {type(value).__name__}")
    unknown = set(value) - {"distance", "energy", "metric"}
    if unknown:
        raise InputError(f"screening: unknown key(s) {sorted(map(str, unknown))}; use 'distance' (Å per order), "
                         f"'energy' (Eh per order) and optionally 'metric' ('closest' or 'centroid')")
    try:
        spec = Screening(**value)
    except ValidationError as exc:
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, ValueError):
                raise InputError(str(cause)) from None
        raise InputError(f"bad screening: {describe_validation(exc)}") from None
    if not spec.distance and not spec.energy:
        raise InputError("screening is empty: give 'distance' and/or 'energy' cutoffs per order, or leave it out")
    return spec


class RunOptions(BaseModel):
    """Validated run options (keyword arguments of :func:`qcmb_async.run_manybody`)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    ncores: int = Field(default_factory=default_ncores, description=(
        "Total cores the run may use. Default: this process's CPU affinity (Dask: the cores its workers declare, "
        "else their threads; batch clusters: what the jobs may grow to)."))
    memory: float = Field(default_factory=default_memory, description=(
        "Total memory the run may use, GiB. Default: 80 % of the memory available now (Dask: the workers' declared "
        "memory, else their memory limits)."))
    fragment_ncores: int = Field(1, description=(
        "Cores per fragment (QCEngine `task_config.ncores`, `OMP_NUM_THREADS`; MPI ranks for NWChem); setting it "
        "fixes it for every fragment (1: NWChem on one rank). Unset: the scheduler chooses, 1, or more for a few "
        "large fragments of a threaded or MPI program when that shortens the run (Dask: never more than the largest "
        "worker or batch job has)."))
    max_fragment_ncores: int | None = Field(None, description=(
        "Most cores one fragment may have: the largest worker's or batch job's (set from the executor)."))
    auto_max_ncores: int | None = Field(None, description=(
        "Most cores the scheduler gives one fragment by itself on a cluster (set from the executor)."))
    max_fragment_memory: float | None = Field(None, description=(
        "Most GiB one fragment may have: the largest worker's or batch job's (set from the executor)."))
    memory_per_core: float | None = Field(None, description=(
        "GiB per core an automatically sized fragment gets at most: the workers' (set from the executor)."))
    fragment_memory: float = Field(description=(
        "Memory per fragment, GiB. Unset: an even share, `memory / (ncores // fragment_ncores)`, for each core "
        "the fragment gets (Dask: at most the workers' GiB per core, so a fragment fits a worker)."))
    level_barrier: bool = Field(False, description=(
        "Finish every n-body level before starting the next (off: fragments do not depend on each other)."))
    scratch_directory: str | None = Field(None, description=(
        "Parent directory for programs' scratch files; `$VAR` and `~` expanded as QCEngine does. Default: "
        "QCEngine's own (`QCENGINE_SCRATCH_DIRECTORY`, `qcengine.yaml`, else the system temporary directory)."))
    retries: int = Field(0, description=(
        "Extra attempts for transient failures (QCEngine `random_error`, timeouts, dead workers, killed programs)."))
    timeout: float | None = Field(None, description=(
        "Seconds per fragment attempt; the program process is killed after that. Default: no limit."))
    on_error: OnError = Field("raise", description=(
        "`raise`: stop at the first failed fragment; `continue`: compute all that can be, then raise `RunFailed`."))
    on_event: Callable[[Any], Any] | None = Field(None, exclude=True, description=(
        "Sync or async callable receiving progress events (`qcmb_async.events`)."))
    order: Literal["cost", "fifo"] = Field("cost", description=(
        "`cost`: largest predicted fragment first; `fifo`: QCManyBody's order (benchmark baselines)."))
    auto_cores: bool = Field(True, description="Cores per fragment left to the scheduler (`fragment_ncores` unset).")
    auto_memory: bool = Field(True, description="Memory per fragment is a per-core share (`fragment_memory` unset).")
    screening: Screening | None = Field(None, description=(
        "Screened expansion: `{'distance': {2: 9.0, 3: 7.0}}` (Å per order) and/or `{'energy': {3: 1e-5}}` "
        "(Eh per order); dropped subsets contribute zero increments. Default: the full expansion."))

    @property
    def slots(self) -> int:
        """How many fragments can run at once."""
        return max(1, min(self.ncores // self.fragment_ncores, int(self.memory / self.fragment_memory + 1e-9)))

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        # ``None`` means "not given" for every option: the machine's defaults, and the scheduler chooses.
        if not isinstance(data, dict):
            return data
        given = {k: v for k, v in data.items() if v is not None}
        given.setdefault("auto_cores", data.get("fragment_ncores") is None)
        given.setdefault("auto_memory", data.get("fragment_memory") is None)
        given.setdefault("fragment_memory", _EVEN_SHARE)  # filled in once ncores and memory are known
        return given

    @field_validator("ncores", "fragment_ncores", mode="before")
    @classmethod
    def _cores(cls, value: Any, info: ValidationInfo) -> Any:
        return int(_positive(str(info.field_name), value, integer=True))

    @field_validator("memory", "timeout", mode="before")
    @classmethod
    def _amount(cls, value: Any, info: ValidationInfo) -> Any:
        return _positive(str(info.field_name), value, integer=False)

    @field_validator("fragment_memory", mode="before")
    @classmethod
    def _fragment_memory(cls, value: Any, info: ValidationInfo) -> Any:
        if value is _EVEN_SHARE:
            cores, memory, per = info.data.get("ncores"), info.data.get("memory"), info.data.get("fragment_ncores")
            if cores is None or memory is None or per is None:
                return value  # an earlier field failed; its error is the one to report
            share = round(memory / max(1, cores // per), 6)
            per_core = info.data.get("memory_per_core")
            if per_core is not None:
                # A cluster's workers, not the run's total over its cores, bound what one fragment may have
                # (floored: such shares must not sum to a hair more than a worker has).
                share = min(share, math.floor(per * per_core * 1e6) / 1e6)
            if share <= 0:
                raise ValueError(f"memory={memory} GiB over ncores={cores} leaves {share} GiB per fragment: give "
                                 "fewer cores, more memory, or fragment_memory")
            return share
        return _positive("fragment_memory", value, integer=False)

    @field_validator("screening", mode="before")
    @classmethod
    def _screening(cls, value: Any) -> Any:
        return make_screening(value)

    @field_validator("retries", mode="before")
    @classmethod
    def _retries(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"retries must be a whole number >= 0, got {value!r}")
        return value

    @field_validator("on_error", "order", mode="before")
    @classmethod
    def _choice(cls, value: Any, info: ValidationInfo) -> Any:
        first, second = _CHOICES[str(info.field_name)]
        if value not in (first, second):
            raise ValueError(f"{info.field_name} must be {first!r} or {second!r}, got {value!r}")
        return value

    @field_validator("scratch_directory", mode="before")
    @classmethod
    def _scratch(cls, value: Any) -> Any:
        return expand_scratch(value)

    @model_validator(mode="after")
    def _fits(self) -> RunOptions:
        if self.max_fragment_ncores is not None and self.fragment_ncores > self.max_fragment_ncores:
            raise ValueError(f"fragment_ncores={self.fragment_ncores} is more than the largest worker or batch job "
                             f"offers ({self.max_fragment_ncores} cores, {self.max_fragment_memory:g} GiB): "
                             f"give at most {self.max_fragment_ncores}, or start larger workers or jobs")
        if self.max_fragment_memory is not None and self.fragment_memory > self.max_fragment_memory + 1e-9:
            raise ValueError(f"fragment_memory={self.fragment_memory} GiB is more than the largest worker or batch "
                             f"job offers ({self.max_fragment_ncores} cores, {self.max_fragment_memory:g} GiB): "
                             f"give at most {self.max_fragment_memory:g}, or start larger workers or jobs")
        if self.fragment_ncores > self.ncores:
            raise ValueError(f"fragment_ncores={self.fragment_ncores} is more than the run's total "
                             f"ncores={self.ncores}: lower fragment_ncores or raise ncores")
        if self.fragment_memory > self.memory + 1e-9:
            raise ValueError(f"fragment_memory={self.fragment_memory} GiB is more than the run's total "
                             f"memory={self.memory} GiB: lower fragment_memory or raise memory")
        return self


def options_for(executor: Any, **given: Any) -> RunOptions:
    """Run options sized for an entered ``executor`` (``given`` as for :func:`make_options`; ``None`` = not given).

    An executor with a ``capacity`` (Dask: its workers or batch jobs) sets the totals the caller left out; one
    with ``limits`` (:class:`~qcmb_async._core.resources.WorkerLimits`) also bounds one fragment: the
    automatic cores per fragment never exceed the largest worker's, the automatic memory per fragment is at
    most ``cores x`` the workers' memory per core, and ``fragment_ncores``/``fragment_memory`` above the largest
    worker are an :class:`InputError` naming it. Other executors: :func:`make_options` as it is.
    """
    capacity = getattr(executor, "capacity", None)
    if capacity is None:
        return make_options(**given)
    sized = dict(given)
    if sized.get("ncores") is None:
        sized["ncores"] = max(1, int(capacity[0]))
    if sized.get("memory") is None:
        sized["memory"] = capacity[1] if capacity[1] > 0 else None
    limits = getattr(executor, "limits", None)
    if limits is not None:
        sized.update(max_fragment_ncores=limits.cores, max_fragment_memory=limits.memory,
                     memory_per_core=limits.per_core, auto_max_ncores=limits.auto_cores or limits.cores)
    return make_options(**sized)


def make_options(**given: Any) -> RunOptions:
    """Validate run options (``None`` = not given) and fill the defaults; :class:`InputError` if one is wrong."""
    try:
        return RunOptions(**given)
    except ValidationError as exc:
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, ValueError):  # our own message: what is wrong and what to do
                raise InputError(str(cause)) from None
        raise InputError(f"bad run option: {describe_validation(exc)}") from None


def _positive(name: str, value: Any, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if math.isinf(float(value)):
        omit = " (leave it out for no limit)" if name == "timeout" else " (leave it out for the default)"
        raise ValueError(f"{name} must be a finite number, got {value!r}: give a value{omit}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if integer and int(value) != value:
        raise ValueError(f"{name} must be a whole number of cores, got {value!r}")
    return float(value)


def expand_scratch(scratch_directory: str | os.PathLike[str]) -> str:
    """``$VAR``/``${VAR}`` and ``~`` expanded as QCEngine expands its task_config; the directory must exist.

    QCEngine would turn a path still starting with ``$`` (an unset variable) into "no scratch
    directory" and put scratch files in the system temporary directory: refused here instead.
    Raises ``ValueError`` (an :class:`InputError`) naming the directory.
    """
    given = os.fspath(scratch_directory)
    if not isinstance(given, str) or not given.strip():
        raise InputError(f"scratch_directory must name a directory, got {scratch_directory!r}")
    scratch = os.path.expanduser(os.path.expandvars(given))
    if "$" in scratch:
        raise InputError(f"scratch_directory {given!r}: environment variable(s) in it are not set (expanded to "
                         f"{scratch!r}): set them or give the directory itself")
    if not Path(scratch).is_dir():
        shown = given if scratch == given else f"{given!r} (= {scratch!r})"
        raise InputError(f"scratch_directory {shown} does not exist or is not a directory: create it first")
    return scratch
