"""Input stage: accept what users have, check everything checkable, compute nothing."""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qcmanybody.models.v2 import ManyBodyInput

from ..errors import InputError, describe_validation
from .resources import default_memory, default_ncores

OnError = Literal["raise", "continue"]


@dataclass(frozen=True)
class RunOptions:
    """Validated run options (see :func:`qcmb_async.run_manybody` for their meaning)."""

    ncores: int
    memory: float
    fragment_ncores: int
    fragment_memory: float
    level_barrier: bool = False
    scratch_directory: str | None = None
    retries: int = 0
    timeout: float | None = None
    on_error: OnError = "raise"
    on_event: Callable[[Any], Any] | None = None
    order: str = "cost"
    """``"cost"``: largest estimated fragment first; ``"fifo"``: QCManyBody's order (baselines)."""
    auto_cores: bool = True
    """Cores per fragment left to the scheduler (``fragment_ncores`` not given)."""
    auto_memory: bool = True
    """Memory per fragment is a per-core share (``fragment_memory`` not given)."""

    @property
    def slots(self) -> int:
        """How many fragments can run at once."""
        return max(1, min(self.ncores // self.fragment_ncores, int(self.memory / self.fragment_memory + 1e-9)))


_pydantic_message = describe_validation


#: Above this many candidate combinations QCElemental's charge/multiplicity search
#: (``qcelemental.molparse.validate_and_fill_chgmult``, which tries every combination of
#: per-fragment values) takes more than about a second; measured here: a +1 water cluster with
#: no fragment charges 0.3 s at 6 fragments (~3e4 combinations), 3 s at 7, 108 s at 10.
CHGMULT_SEARCH_LIMIT = 100_000


def _z_per_atom(mol: Mapping[str, Any]) -> list[int] | None:
    """Electrons of each neutral atom (0 for ghosts), as QCElemental counts them; None if unsure."""
    from qcelemental import periodictable

    symbols = mol.get("symbols")
    if symbols is None:
        return None
    numbers = mol.get("atomic_numbers")
    real = mol.get("real")
    try:
        symbols = list(symbols)
        z = [int(n) for n in numbers] if numbers is not None else [int(periodictable.to_Z(str(s))) for s in symbols]
        if len(z) != len(symbols):
            return None
        if real is not None:
            real = [bool(r) for r in real]
            if len(real) != len(z):
                return None
            z = [zi if ri else 0 for zi, ri in zip(z, real, strict=True)]
    except Exception:
        return None
    return z


def _as_list(values: Any, n: int) -> list[float | None] | None:
    """``values`` as a list of ``n`` floats (None for missing ones); None when it cannot be read."""
    if values is None:
        return [None] * n
    try:
        out = [None if v is None else float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _whole(value: float) -> bool:
    return float(value).is_integer()


def _high_spin_sum(mults: list[float]) -> float:
    return 1 + sum(m - 1 for m in mults)


def fill_fragment_chgmult(mol: Any, source: str = "the molecule") -> Any:
    """Molecule data with the fragment charges/multiplicities QCElemental would derive, made explicit.

    QCElemental's ``validate_and_fill_chgmult`` tries every combination of candidate values
    for the missing per-fragment charges and multiplicities: exponential in the number of
    fragments (29 s and 4 GB for 24 waters, MemoryError beyond). Where its answer is unique we
    give it directly, so the resulting ``Molecule`` is the one QCElemental would build:

    - missing fragment charges are 0 when ``molecular_charge`` is absent or equals the sum of
      the given fragment charges (QCElemental's only candidates are then 0);
    - missing fragment multiplicities, once every charge is known, are 1 for an even electron
      count and 2 for an odd one, provided ``molecular_multiplicity`` is absent or equals the
      high-spin sum of the fragments' multiplicities (otherwise some fragment is high spin and
      QCElemental would pick which one).

    Values the user gave are never changed. When something remains for QCElemental to choose
    (a net charge without fragment charges; a total multiplicity above the singlet/doublet sum)
    the data is left as it is, unless QCElemental's search would exceed
    :data:`CHGMULT_SEARCH_LIMIT` combinations: then :class:`InputError` asks for explicit values.
    Data that is not a plain molecule dict (a ``Molecule`` object, ``validated=True``, one
    fragment, unreadable fields) is returned unchanged for QCElemental to judge.
    """
    if not isinstance(mol, Mapping) or mol.get("validated"):
        return mol
    frags = mol.get("fragments")
    try:
        frags = [[int(i) for i in frag] for frag in frags] if frags is not None else None
    except (TypeError, ValueError):
        return mol
    if not frags or len(frags) < 2:
        return mol
    n = len(frags)
    charges = _as_list(mol.get("fragment_charges"), n)
    mults = _as_list(mol.get("fragment_multiplicities"), n)
    if charges is None or mults is None or (None not in charges and None not in mults):
        return mol
    z = _z_per_atom(mol)
    try:
        neutral = [sum(z[i] for i in frag) for frag in frags] if z is not None else None
        total_charge = mol.get("molecular_charge")
        total_charge = None if total_charge is None else float(total_charge)
        total_mult = mol.get("molecular_multiplicity")
        total_mult = None if total_mult is None else float(total_mult)
    except (IndexError, TypeError, ValueError):
        return mol
    if neutral is None:
        return mol

    filled_c = list(charges)
    known_c = sum(c for c in charges if c is not None)
    if None in charges and (total_charge is None or total_charge == known_c):
        filled_c = [0.0 if c is None else c for c in charges]

    filled_m = list(mults)
    why = ""  # why multiplicities stay open, for the error message
    if None in mults and None not in filled_c:
        electrons = [zf - c for zf, c in zip(neutral, filled_c, strict=True)]
        bad = [i for i, e in enumerate(electrons, start=1) if not _whole(e) or e < 0]
        if bad:
            why = (f"with the fragment charges given, fragment(s) {bad[:5]} would have a negative or fractional "
                   "number of electrons")
        elif not all(m is None or _whole(m) for m in mults):
            why = "fragment_multiplicities holds values that are not whole numbers"
        else:
            trial = [m if m is not None else 1.0 if int(e) % 2 == 0 else 2.0
                     for e, m in zip(electrons, mults, strict=True)]
            if total_mult is None or total_mult == _high_spin_sum(trial):
                filled_m = trial
            else:
                why = (f"molecular_multiplicity={total_mult:g} is not what the fragments add up to as singlets and "
                       f"doublets ({_high_spin_sum(trial):g}): qcmb_async does not guess which fragments are high spin")

    if None in filled_c or None in filled_m:
        _check_search_size(filled_c, filled_m, total_charge, total_mult, source, why)
    if filled_c == charges and filled_m == mults:
        return mol
    out = dict(mol)
    if filled_c != charges:
        out["fragment_charges"] = filled_c
    if filled_m != mults:
        out["fragment_multiplicities"] = [int(m) if m is not None and _whole(m) else m for m in filled_m]
    return out


def _check_search_size(charges: list[float | None], mults: list[float | None], total_charge: float | None,
                       total_mult: float | None, source: str, why: str) -> None:
    """Raise :class:`InputError` when QCElemental's chg/mult search would be too large to wait for."""
    n = len(charges)
    open_c = charges.count(None)
    open_m = mults.count(None)
    per_mult = 2 if total_mult is None else max(2, int(total_mult))
    size = 2 ** open_c * per_mult ** open_m * (open_m + 1 if total_mult is None else 1)
    if size <= CHGMULT_SEARCH_LIMIT:
        return
    if open_c:
        given = "no" if open_c == n else "incomplete"
        what = (f"molecular_charge={float(total_charge or 0):g} with {given} fragment_charges: "
                "qcmb_async does not guess which fragment carries the charge")
        example = ('"fragment_charges": [-1, 0, 0, ...], "fragment_multiplicities": [1, 1, 1, ...]'
                   if total_charge is not None and total_charge < 0 else
                   '"fragment_charges": [1, 0, 0, ...], "fragment_multiplicities": [2, 1, 1, ...]')
    else:
        what = why or "fragment_multiplicities cannot be worked out"
        example = '"fragment_charges": [0, 0, 0, ...], "fragment_multiplicities": [3, 1, 1, ...]'
    raise InputError(
        f"{source} has {n} fragments and {what}; QCElemental would search every combination "
        f"(about {size:.0e} here, where 1e+05 take a second) or run out of memory. Give fragment_charges and "
        f"fragment_multiplicities explicitly in the molecule, one value per fragment ({n} each), e.g. {example}"
    )


def _prepare(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Make the molecule's fragment charges/multiplicities explicit before it is validated."""
    if isinstance(data.get("molecule"), Mapping):
        data["molecule"] = fill_fragment_chgmult(data["molecule"], f"the molecule of {source}")
    return data


def _from_dict(data: Mapping[str, Any], source: str) -> ManyBodyInput:
    from pydantic import ValidationError
    from qcelemental.exceptions import ValidationError as QCElementalValidationError

    data = _prepare(dict(data), source)
    if data.get("schema_version") == 1 or data.get("schema_name") == "qcschema_manybodyinput":
        try:
            from qcmanybody.models.v1 import ManyBodyInput as ManyBodyInputV1

            return ManyBodyInputV1(**data).convert_v(2)
        except Exception as exc:
            raise InputError(f"{source} is not a valid ManyBodyInput (QCSchema v1): {_pydantic_message(exc)}") from exc
    try:
        return ManyBodyInput(**data)
    except ValidationError as exc:
        raise InputError(
            f"{source} is not a valid ManyBodyInput: {_pydantic_message(exc)}. "
            "See qcmanybody.models.v2.ManyBodyInput for the expected layout."
        ) from exc
    except QCElementalValidationError as exc:
        raise InputError(f"the molecule of {source} is not valid: {exc}") from exc


def _read_file(path: Path) -> ManyBodyInput:
    if not path.exists():
        raise InputError(f"input file {str(path)!r} does not exist: check the path")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        kind = "YAML" if suffix in (".yaml", ".yml") else "JSON"
        raise InputError(f"input file {str(path)!r} is not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"input file {str(path)!r} must hold one ManyBodyInput object, found {type(data).__name__}")
    return _from_dict(data, f"input file {str(path)!r}")


def load_input(obj: Any) -> ManyBodyInput:
    """Convert a v2/v1 ``ManyBodyInput``, a dict, a JSON string or a JSON/YAML path to v2."""
    if isinstance(obj, ManyBodyInput):
        return obj
    if hasattr(obj, "convert_v") and type(obj).__name__ == "ManyBodyInput":
        return obj.convert_v(2)
    if isinstance(obj, Path):
        return _read_file(obj)
    if isinstance(obj, str):
        if obj.lstrip().startswith("{"):
            try:
                data = json.loads(obj)
            except json.JSONDecodeError as exc:
                raise InputError(f"input string is not valid JSON: {exc}") from exc
            return _from_dict(data, "input JSON")
        return _read_file(Path(obj))
    if isinstance(obj, Mapping):
        return _from_dict(obj, "input dict")
    raise InputError(
        f"cannot use a {type(obj).__name__} as input: pass a qcmanybody ManyBodyInput (v2 or v1), "
        "a dict, a JSON string, or the path of a JSON/YAML file"
    )


def _positive(name: str, value: Any, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        raise InputError(f"{name} must be a positive number, got {value!r}")
    if value <= 0:
        raise InputError(f"{name} must be positive, got {value!r}")
    if integer and int(value) != value:
        raise InputError(f"{name} must be a whole number of cores, got {value!r}")
    return float(value)


def check_programs(programs: set[str], *, local: bool = True) -> None:
    """Every program must be known to QCEngine and (``local``) found on this machine.

    With ``local=False`` (fragments run on remote workers) availability is checked where
    each fragment runs instead.
    """
    import qcengine
    from qcengine.exceptions import InputError as QCEngineInputError

    from ..harnesses import register_harnesses

    register_harnesses()
    for name in sorted(programs):
        try:
            harness = qcengine.get_program(name, check=False)
        except (QCEngineInputError, KeyError):
            raise InputError(
                f"unknown program {name!r}: QCEngine has no harness of that name. "
                f"Programs available here: {', '.join(sorted(qcengine.list_available_programs())) or 'none'}"
            ) from None
        if local and not harness.found():
            raise InputError(
                f"program {name!r} is not available on this machine: install it (e.g. apt-get install {name}, "
                f"or pip install {name}). Programs available here: "
                f"{', '.join(sorted(qcengine.list_available_programs())) or 'none'}"
            )


def check_input(inp: ManyBodyInput, *, local: bool = True) -> None:
    """Structural checks QCManyBody would only fail on later (or not at all)."""
    nfrag = len(inp.molecule.fragments) if inp.molecule.fragments is not None else 0
    if nfrag < 2:
        raise InputError(
            f"the molecule has {nfrag} fragment(s); a many-body expansion needs at least two. "
            "Separate fragments with '--' lines in the geometry string or set 'fragments'."
        )
    max_nbody = inp.specification.keywords.max_nbody
    if max_nbody is not None and max_nbody > nfrag:
        raise InputError(
            f"max_nbody={max_nbody} is larger than the number of fragments ({nfrag}): "
            f"use max_nbody <= {nfrag}"
        )
    check_programs({spec.program for spec in inp.specification.specification.values()}, local=local)
    for spec in inp.specification.specification.values():
        if spec.program == "pyscf":  # basis sets / ECPs PySCF cannot resolve, unknown methods: before any run
            from ..harnesses.pyscf import check_model

            check_model(inp.molecule.symbols, spec.model)
    bsse = {str(getattr(b, "value", b)) for b in (inp.specification.keywords.bsse_type or [])}
    if bsse & {"cp", "vmfc"} and any(s.program == "mopac" for s in inp.specification.specification.values()):
        from .._logs import get_logger

        # Same numbers as QCManyBody's own computer, but physically meaningless: say so.
        get_logger().warning("QCEngine's MOPAC harness writes ghost atoms as real atoms: cp/vmfc fragments are "
                             "computed with every ghost as a real atom, so these energies are not a BSSE "
                             "correction (use nocp with MOPAC)", bsse=sorted(bsse))


def make_options(
    *,
    ncores: Any = None,
    memory: Any = None,
    fragment_ncores: Any = None,
    fragment_memory: Any = None,
    level_barrier: bool = False,
    scratch_directory: str | os.PathLike[str] | None = None,
    retries: Any = 0,
    timeout: Any = None,
    on_error: str = "raise",
    on_event: Callable[[Any], Any] | None = None,
    order: str = "cost",
) -> RunOptions:
    """Validate run options and fill the defaults."""
    if order not in ("cost", "fifo"):
        raise InputError(f"order must be 'cost' or 'fifo', got {order!r}")
    total_cores = int(_positive("ncores", ncores, True)) if ncores is not None else default_ncores()
    total_mem = _positive("memory", memory, False) if memory is not None else default_memory()
    frag_cores = int(_positive("fragment_ncores", fragment_ncores, True)) if fragment_ncores is not None else 1
    if frag_cores > total_cores:
        raise InputError(
            f"fragment_ncores={frag_cores} is more than the run's total ncores={total_cores}: "
            "lower fragment_ncores or raise ncores"
        )
    if fragment_memory is not None:
        frag_mem = _positive("fragment_memory", fragment_memory, False)
        if frag_mem > total_mem + 1e-9:
            raise InputError(
                f"fragment_memory={frag_mem} GiB is more than the run's total memory={total_mem} GiB: "
                "lower fragment_memory or raise memory"
            )
    else:
        frag_mem = round(total_mem / max(1, total_cores // frag_cores), 6)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InputError(f"retries must be a whole number >= 0, got {retries!r}")
    tmo = _positive("timeout", timeout, False) if timeout is not None else None
    if on_error not in ("raise", "continue"):
        raise InputError(f"on_error must be 'raise' or 'continue', got {on_error!r}")
    scratch = None
    if scratch_directory is not None:
        scratch = str(scratch_directory)
        if not Path(scratch).is_dir():
            raise InputError(f"scratch_directory {scratch!r} does not exist or is not a directory")
    return RunOptions(
        ncores=total_cores,
        memory=total_mem,
        fragment_ncores=frag_cores,
        fragment_memory=frag_mem,
        level_barrier=bool(level_barrier),
        scratch_directory=scratch,
        retries=retries,
        timeout=tmo,
        on_error=on_error,  # type: ignore[arg-type]
        on_event=on_event,
        order=order,
        auto_cores=fragment_ncores is None,
        auto_memory=fragment_memory is None,
    )
