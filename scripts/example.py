"""README example: water trimer, counterpoise-corrected, up to 3-body, HF/STO-3G on PySCF.

PySCF installs with pip alone, so this runs on a fresh machine after `pip install -e .[pyscf]`.
"""

from __future__ import annotations

import time

from qcelemental import constants
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput

from qcmb_async import run

TRIMER = """
O -1.551007 -0.114520  0.000000
H -1.934259  0.762503  0.000000
H -0.599677  0.040712  0.000000
--
O  1.350625  0.111469  0.000000
H  1.680398 -0.373741 -0.758561
H  1.680398 -0.373741  0.758561
--
O -0.100000  0.300000  2.900000
H -0.300000  1.200000  3.200000
H  0.100000 -0.200000  3.700000
"""


def main() -> None:
    mbe_input = ManyBodyInput(
        molecule=Molecule.from_data(TRIMER),
        specification={
            "driver": "energy",
            "keywords": {"bsse_type": ["cp"], "max_nbody": 3},
            "specification": {
                "(auto)": {"program": "pyscf", "model": {"method": "hf", "basis": "sto-3g"}, "driver": "energy"}
            },
        },
    )
    t0 = time.perf_counter()
    result = run(mbe_input)  # all cores this process may use, a safe share of memory
    wall = time.perf_counter() - t0
    props = result.properties
    kcal = constants.conversion_factor("hartree", "kcal/mol")
    meta = result.extras["qcmb_async"]
    print(f"water trimer, CP, HF/STO-3G on PySCF: {len(meta['fragments'])} fragments on "
          f"{meta['ncores']} cores ({meta['executor']}) in {wall:.1f} s")
    print(f"{'':28s}{'Eh':>16s}{'kcal/mol':>12s}")
    for n in (2, 3):
        contrib = getattr(props, f"cp_corrected_{n}_body_contribution_to_energy")
        print(f"{n}-body contribution         {contrib:16.10f}{contrib * kcal:12.4f}")
    for n in (2, 3):
        ie = getattr(props, f"cp_corrected_interaction_energy_through_{n}_body")
        print(f"interaction energy, {n}-body  {ie:16.10f}{ie * kcal:12.4f}")
    print(f"CP interaction energy        {props.cp_corrected_interaction_energy:16.10f}"
          f"{props.cp_corrected_interaction_energy * kcal:12.4f}")


if __name__ == "__main__":
    main()
