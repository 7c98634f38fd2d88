"""Empirical dispersion (DFT-D3/D4 through ``pyscf-dispersion``) of the real atoms only, for jobs with ghosts.

PySCF computes ``mf.disp`` / ``-d3bj`` / ``-d4`` corrections on ``mf.mol`` as it is, ghost atoms
included (as atoms of nuclear charge 0). Measured here (pyscf 2.15, pyscf-dispersion 1.7, S22 water
dimer, one water ghosted): D3(BJ) comes out 4e-10 Eh off the bare monomer's, but D4 gives -1.3e-7 Eh
instead of -3.1e-4 Eh, because D4's charge model takes the ghosts as atoms; a counterpoise-corrected
B3LYP-D4 interaction energy was 6e-4 Eh off. A ghost atom is only basis functions, so its dispersion
must be exactly that of the real atoms: :func:`real_atoms_dispersion` makes PySCF's energy, gradient
and Hessian hooks compute it on a molecule of the real atoms alone, with zero rows for the ghosts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["real_atoms_dispersion"]


def real_atoms_dispersion(mf: Any) -> Any:
    """``mf`` (an unconverged PySCF SCF object), whose dispersion hooks see the real atoms only.

    Does nothing when ``mf`` has no dispersion correction or its molecule no ghost atoms. Otherwise the
    instance's ``get_dispersion`` (energy, Eh), and those of the gradient (natm x 3, Eh/bohr) and Hessian
    (natm x natm x 3 x 3) objects it makes, are computed by a twin SCF object built on the real atoms
    (same functional, charge and spin), padded with zeros for the ghost atoms.
    """
    from pyscf import gto

    if not mf.do_disp():
        return mf
    mol = mf.mol
    real = [i for i in range(mol.natm) if not gto.mole.is_ghost_atom(mol.atom_symbol(i))]
    if len(real) == mol.natm:
        return mf
    sub = gto.Mole()
    sub.atom = [(mol.atom_symbol(i), tuple(mol.atom_coord(i))) for i in real]
    sub.unit = "Bohr"
    sub.basis = mol.basis  # needed to build the Mole; the dispersion models read only elements and positions
    sub.ecp = mol.ecp
    sub.charge = mol.charge  # D4's charge model uses the total charge
    sub.spin = mol.spin
    sub.verbose = 0
    sub.build(dump_input=False, parse_arg=False)
    twin = _twin(mf, sub)
    natm = mol.natm

    def energy(*args: Any, **kwargs: Any) -> float:
        return float(twin.get_dispersion(*args, **kwargs))

    def padded_gradient(*args: Any, **kwargs: Any) -> np.ndarray:
        out = np.zeros((natm, 3))
        out[real] = twin.nuc_grad_method().get_dispersion(*args, **kwargs)
        return out

    def padded_hessian(*args: Any, **kwargs: Any) -> np.ndarray:
        out = np.zeros((natm, natm, 3, 3))
        out[np.ix_(real, real)] = twin.Hessian().get_dispersion(*args, **kwargs)
        return out

    make_gradient, make_hessian = mf.nuc_grad_method, mf.Hessian

    def gradient_object(*args: Any, **kwargs: Any) -> Any:
        obj = make_gradient(*args, **kwargs)
        obj.get_dispersion = padded_gradient
        return obj

    def hessian_object(*args: Any, **kwargs: Any) -> Any:
        obj = make_hessian(*args, **kwargs)
        obj.get_dispersion = padded_hessian
        return obj

    mf.get_dispersion = energy
    mf.nuc_grad_method = gradient_object
    mf.Hessian = hessian_object
    return mf


def _twin(mf: Any, sub: Any) -> Any:
    """A Kohn-Sham (or HF) object on ``sub`` with ``mf``'s functional and dispersion settings; never run."""
    from pyscf import dft, scf

    restricted = sub.spin == 0
    if isinstance(mf, scf.hf.KohnShamDFT):  # not hasattr: SCF objects forward unknown attributes
        twin = dft.RKS(sub) if restricted else dft.UKS(sub)
        twin.xc = mf.xc
    else:
        twin = scf.RHF(sub) if restricted else scf.UHF(sub)
    if getattr(mf, "disp", None) is not None:
        twin.disp = mf.disp
    twin.verbose = 0
    return twin
