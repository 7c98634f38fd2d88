"""Fragment charges and multiplicities made explicit where QCElemental's own search would explode."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InputError

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


#: Largest coordinate magnitude accepted, bohr (about 0.5 mm): far beyond any cluster, far below where
#: QCElemental's distance checks overflow (its message is then a bare ``KeyError: 'geom'``).
MAX_COORDINATE = 1e7


def coordinate_problem(geometry: Any) -> str | None:
    """Why ``geometry`` (bohr, any shape) cannot be a molecule's, or None."""
    import numpy as np

    try:
        values = np.abs(np.asarray(geometry, dtype=float))
    except (TypeError, ValueError):
        return None  # QCElemental reports what it is
    if values.size and values.max() > MAX_COORDINATE:  # NaN compares False: check_finite reports those
        return (f"a coordinate of {values.max():.3g} bohr is beyond the {MAX_COORDINATE:.0e} bohr accepted: "
                "a unit mix-up or a corrupted number? Give coordinates of a molecular cluster")
    return None


def fragment_chgmult_problem(electrons: list[int | None], charges: list[float], mults: list[float]) -> str | None:
    """Which fragment's charge and multiplicity cannot go together, or None.

    ``electrons``: electrons of each neutral fragment (None if unknown). A multiplicity ``2S + 1``
    needs ``2S`` unpaired electrons: ``multiplicity - 1`` has the parity of the electron count and is
    at most that count.
    """
    for i, (neutral, c, m) in enumerate(zip(electrons, charges, mults, strict=True), start=1):
        if neutral is None or not _whole(c) or not _whole(m):
            continue
        n = neutral - int(c)
        if n < 0:
            return (f"fragment {i} has charge {c:g} but only {neutral} electrons when neutral: lower its charge")
        if int(m) - 1 > n or (int(m) - 1) % 2 != n % 2:
            fits = "1, 3, 5..." if n % 2 == 0 else "2, 4, 6..."
            return (f"fragment {i} (charge {c:g}) has {n} electrons, so its multiplicity must be one of {fits} "
                    f"(at most {n + 1}), not {m:g}: correct its charge or multiplicity")
    return None


def chgmult_problem(mol: Mapping[str, Any]) -> str | None:
    """:func:`fragment_chgmult_problem` for molecule data with every fragment charge and multiplicity given."""
    try:
        frags = [[int(i) for i in frag] for frag in mol.get("fragments") or []]
        n = len(frags)
        charges, mults = _as_list(mol.get("fragment_charges"), n), _as_list(mol.get("fragment_multiplicities"), n)
        z = _z_per_atom(mol)
        if not frags or z is None or charges is None or mults is None or None in charges or None in mults:
            return None
        electrons: list[int | None] = [sum(z[i] for i in frag) for frag in frags]
    except (TypeError, ValueError, IndexError):
        return None
    return fragment_chgmult_problem(electrons, charges, mults)  # type: ignore[arg-type]


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
