"""A user's plain script: no event loop anywhere, just run()."""

from qcmb_async import run
from tests.helpers import mbe_input

result = run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3), ncores=2, memory=2)
print(f"IE {result.return_result:.10f}")
