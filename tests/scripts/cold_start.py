"""16 MOPAC fragments start at once in a fresh interpreter; prints OK or the error.

QCMB_ASYNC_UNSAFE_NO_PRIME=1 switches QCEngine priming off.
"""

from __future__ import annotations

import sys

from qcmb_async import run
from tests.helpers import mbe_input, waters


def main() -> int:
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
