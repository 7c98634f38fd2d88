"""EE-MBE against plain MBE: error of MBE(1..3) against the supersystem, ring water hexamer, HF/6-31G.

Each expansion runs through qcmb_async with PySCF (NoCP, ``return_total_data``); the embedded one with
TIP3P charges (O -0.834, H +0.417) on every fragment. The supersystem energy is PySCF run directly.
Prints a Markdown table (the one in docs/embedding.md).

    python scripts/ee_convergence.py [--ncores 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.molecules import hexamer

KCAL = 627.5094740631  # kcal/mol per hartree (CODATA 2014, QCElemental's)
TIP3P = [-0.834, 0.417, 0.417]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ncores", type=int, default=2)
    args = parser.parse_args()

    from pyscf import gto, scf
    from qcmanybody.models.v2 import ManyBodyInput

    import qcmb_async

    mol = hexamer()
    nfrag = len(mol.fragments)
    full = gto.M(atom=[(s, xyz) for s, xyz in zip(mol.symbols, mol.geometry, strict=True)], unit="Bohr",
                 basis="6-31g", verbose=0)
    mf = scf.RHF(full)
    mf.conv_tol = 1e-10
    reference = mf.kernel()

    rows = []
    for embedded in (False, True):
        keywords = {"bsse_type": "nocp", "max_nbody": 3, "return_total_data": True}
        if embedded:
            keywords["embedding_charges"] = {i: TIP3P for i in range(1, nfrag + 1)}
        inp = ManyBodyInput(**{"molecule": mol, "specification": {
            "driver": "energy", "keywords": keywords,
            "specification": {"(auto)": {"program": "pyscf", "driver": "energy",
                                         "model": {"method": "hf", "basis": "6-31g"},
                                         "keywords": {"conv_tol": 1e-10}}}}})
        props = qcmb_async.run(inp, ncores=args.ncores).properties.model_dump()
        errors = [(props[f"nocp_corrected_total_energy_through_{n}_body"] - reference) * KCAL for n in (1, 2, 3)]
        rows.append(("EE-MBE" if embedded else "MBE", errors))

    print(f"supersystem HF/6-31G: {reference:.10f} Eh\n")
    print("| expansion | MBE(1) | MBE(2) | MBE(3) |\n|---|---|---|---|")
    for name, errors in rows:
        print(f"| {name} | " + " | ".join(f"{e:+.2f}" for e in errors) + " |")
    print("\nerrors in kcal/mol (whole hexamer); fragments: 6 at MBE(1), 21 at MBE(2), 41 at MBE(3)")


if __name__ == "__main__":
    main()
