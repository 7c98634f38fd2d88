"""Warm starts for the PySCF harness: a fragment's last converged orbitals seed its next SCF."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

#: Largest displacement of any atom (bohr) for which a fragment's previous density seeds its SCF.
WARM_START_MAX_SHIFT = 0.5


def _warm_key(mol: Any, kind: str, xc: str | None, kw: dict[str, Any]) -> tuple[Any, ...]:
    """A fragment's identity whatever its coordinates: molecule name (QCManyBody's names say which real and
    ghost fragments), atoms (ghosts marked), basis, charge, spin, method."""
    atoms = tuple(mol.atom_symbol(k) for k in range(mol.natm))
    ecp = tuple(sorted(mol.ecp.items())) if isinstance(mol.ecp, dict) else str(mol.ecp)
    return (kw.get("_name"), atoms, str(mol.basis), ecp, int(mol.charge), int(mol.spin), kind, xc,
            bool(kw["density_fit"]))


class _WarmStarts:
    """Each fragment's last converged orbitals and coordinates, shared by the worker processes of a machine.

    Kept as small ``.npz`` files in ``$QCMB_ASYNC_WARM_START_DIR`` (default ``<user cache dir>/qcmb_async/
    warm-start``; one per fragment
    identity, replaced atomically), because the scheduler sends a fragment to whichever worker is
    free: a per-process memory would miss most of the time. Not the temporary directory: QCEngine
    points it at each fragment's own scratch directory, removed after the fragment.
    A density from a nearby geometry is only a starting guess:
    the SCF still converges to ``conv_tol``, so results agree with a cold start to that threshold.
    """

    @property
    def directory(self) -> str:
        from ..settings import get_settings

        return str(get_settings().warm_start_path)

    def _path(self, key: tuple[Any, ...]) -> str:
        import os

        return os.path.join(self.directory, hashlib.sha256(repr(key).encode()).hexdigest()[:32] + ".npz")

    def guess(self, key: tuple[Any, ...], mol: Any) -> np.ndarray | None:
        """A density for ``mol`` from the fragment's last orbitals, or ``None`` (not seen, or moved too far).

        The occupied orbitals are Löwdin-orthonormalised in the new geometry's overlap metric (the
        basis functions moved with the atoms), so the guess is an idempotent density of the right
        electron count, not the old density in a basis it no longer fits.
        """
        try:
            with np.load(self._path(key)) as data:
                coords, mo_coeff, mo_occ = data["coords"], data["mo_coeff"], data["mo_occ"]
        except (OSError, KeyError, ValueError):
            return None
        if coords.shape != mol.atom_coords().shape or \
                np.abs(coords - mol.atom_coords()).max() > WARM_START_MAX_SHIFT:
            return None
        s = mol.intor_symmetric("int1e_ovlp")
        spins = [(mo_coeff, mo_occ)] if mo_occ.ndim == 1 else list(zip(mo_coeff, mo_occ, strict=True))
        dms = []
        for c, occ in spins:
            if c.shape[0] != s.shape[0]:
                return None
            cocc = c[:, occ > 0]
            w, v = np.linalg.eigh(cocc.T @ s @ cocc)
            if w.min() < 1e-8:
                return None  # orbitals no longer independent in the new basis: start afresh
            cocc = cocc @ (v / np.sqrt(w)) @ v.T
            dms.append((cocc * occ[occ > 0]) @ cocc.T)
        return dms[0] if len(dms) == 1 else np.array(dms)

    def keep(self, key: tuple[Any, ...], mol: Any, orbitals: tuple[Any, Any]) -> None:
        import tempfile

        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, coords=mol.atom_coords(), mo_coeff=np.asarray(orbitals[0]),
                         mo_occ=np.asarray(orbitals[1]))
            os.replace(tmp, self._path(key))
        except OSError:
            pass  # a guess not kept only costs SCF cycles next time


_WARM = _WarmStarts()
