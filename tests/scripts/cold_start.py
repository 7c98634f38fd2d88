"""16 MOPAC fragments start at once in a fresh interpreter; prints OK or the error.

``--no-prime`` switches QCEngine priming off (shows the race the priming fixes).
"""

from __future__ import annotations

import sys

from qcmb_async import run
from tests.helpers import mbe_input, waters


def main() -> int:
    if "--no-prime" in sys.argv:
        from qcmb_async._qcengine import seams

        seams.PRIME = False
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=1, molecule=waters(16))
    try:
        result = run(inp, ncores=16, memory=16)
    except Exception as exc:
        print(f"FAIL {type(exc).__name__}: {exc}"[:2000])
        return 1
    print(f"OK {len(result.cluster_properties)} fragments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
