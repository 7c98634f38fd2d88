"""Run 8 concurrent FAKE probe fragments with different core counts; print what each program saw.

Run in a fresh interpreter; ``--no-isolation`` switches the fix off.
"""

from __future__ import annotations

import json
import os
import sys

import anyio
from qcelemental.models.v2 import AtomicInput, Molecule

from qcmb_async.executors.base import FragmentJob
from qcmb_async.executors.threads import ThreadExecutor
from tests.fakes import register_fakes

N = 8


async def main() -> None:
    if "--no-isolation" in sys.argv:
        from qcmb_async._qcengine import seams

        seams.ISOLATE_ENVIRONMENT = False
    register_fakes()
    water = Molecule.from_data("O 0 0 0\nH 0 0.76 0.59\nH 0 -0.76 0.59")
    inp = AtomicInput(molecule=water, specification={"driver": "energy", "model": {"method": "fake"},
                                                     "keywords": {"delay": 0.3}}).model_dump()
    jobs = [FragmentJob(label=f"probe{i}", nbody=1, program="qcmb-fake-probe", atomic_input=inp,
                        task_config={"ncores": i, "memory": 0.25 * i, "scratch_directory": None, "retries": 0})
            for i in range(1, N + 1)]
    before = dict(os.environ)
    outcomes: dict[str, object] = {}

    async def one(job: FragmentJob) -> None:
        outcomes[job.label] = await exe.run(job)

    async with ThreadExecutor(max_workers=N) as exe, anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(one, job)
    after = dict(os.environ)
    report = {"errors": [], "mismatches": [], "environ_changed": before != after,
              "leaked": {k: after.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
                         if before.get(k) != after.get(k)}}
    for job in jobs:
        out = outcomes[job.label]
        if not out.success:  # type: ignore[attr-defined]
            report["errors"].append(f"{out.error_type}: {out.error_message}")  # type: ignore[attr-defined]
            continue
        res = out.result  # type: ignore[attr-defined]
        extras = res["extras"] if isinstance(res, dict) else res.extras
        want = str(job.ncores)
        seen = extras["seen_env"]
        if seen != {"OMP_NUM_THREADS": want, "MKL_NUM_THREADS": want} or extras["config_ncores"] != job.ncores \
                or abs(extras["config_memory"] - job.memory) > 1e-9:
            report["mismatches"].append({"job": job.label, "want": want, "seen": seen,
                                         "config": [extras["config_ncores"], extras["config_memory"]]})
    print(json.dumps(report))


if __name__ == "__main__":
    anyio.run(main)
