"""Long fragments for tests that kill the runner: PROGRAM METHOD BASIS NWATERS [--no-guardian] (NoCP, 2-body)."""

from __future__ import annotations

import sys

from qcmb_async import run
from tests.helpers import mbe_input, waters


def main() -> None:
    program, method, basis, nwat = sys.argv[1:5]
    if "--no-guardian" in sys.argv:
        from qcmb_async._qcengine import guardian

        guardian.ENABLED = False
    run(mbe_input(program, method, basis, bsse="nocp", max_nbody=2, molecule=waters(int(nwat))), ncores=2, memory=2,
        store=None)


if __name__ == "__main__":
    main()
