"""Batch clusters on the real single-node SLURM: fragments sized from the jobs, and jobs that die before their worker.

Few and short (the machine has two cores and is shared). References: QCManyBody's own sequential computer.
Without SLURM these tests skip, under CI=true they fail (the ``slurm`` fixture of tests/test_hpc.py).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from qcmb_async import run_manybody
from qcmb_async.errors import ClusterError
from tests.helpers import mbe_input, waters
from tests.test_hpc import JOB, ROOT, TOL, _reference, _wait_no_jobs, slurm  # noqa: F401 - slurm: the fixture

pytestmark = pytest.mark.usefixtures("slurm")


def test_way_3_cluster_without_resources_is_sized_from_its_jobs(tmp_path: Path) -> None:
    """docs/hpc.md way 3 as users write it (no --resources), scaled to this shared 2-core machine: jobs of 1
    core and 2 GiB, up to 2 of them. The run has 2 cores, but no fragment may ask for more than one job has."""
    from dask_jobqueue import SLURMCluster

    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(3))
    reference = _reference(inp)

    async def main() -> Any:
        async with SLURMCluster(cores=1, memory="2GiB", processes=1, walltime="00:10:00", asynchronous=True,
                                job_name="qcmb-sizing", log_directory=str(tmp_path),
                                scheduler_options={"host": "127.0.0.1", "dashboard_address": None}) as cluster:
            cluster.adapt(minimum_jobs=0, maximum_jobs=2)
            with anyio.fail_after(240):
                return await run_manybody(inp, scheduler=cluster, store=None)

    result = anyio.run(main)
    assert abs(float(result.return_result) - reference) < TOL
    meta = result.extras["qcmb_async"]
    assert (meta["ncores"], meta["memory"]) == (2, pytest.approx(4.0))  # 2 jobs of 1 core and 2 GiB
    assert [(f["cores"], f["memory"]) for f in meta["fragments"]] == [(1, 2.0)] * len(meta["fragments"])
    assert _wait_no_jobs("qcmb-sizing") == []  # (other sessions' qcmb-worker jobs may share this SLURM)


def test_cli_one_core_jobs_run_one_core_fragments(tmp_path: Path) -> None:
    """`--job-cores 1 --job-memory 2 --max-jobs 2`: two cores in all, but no fragment may ask for both."""
    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(2))
    (tmp_path / "in.json").write_text(inp.model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "qcmb_async", "run", "in.json", "--cluster", "slurm", "--job-cores",
                          "1", "--job-memory", "2", "--max-jobs", "2", "--walltime", "00:10:00", "--no-store", "-o",
                          "out.json", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert abs(result["return_result"] - _reference(inp)) < TOL
    frags = result["extras"]["qcmb_async"]["fragments"]
    assert [(f["cores"], f["memory"]) for f in frags] == [(1, 2.0)] * len(frags)


@pytest.mark.parametrize("max_batch", [8, 1])
def test_jobs_that_die_before_their_worker_stop_the_run_quoting_their_log(tmp_path: Path, max_batch: int) -> None:
    """A prologue that fails: no worker ever connects; after 3 such jobs a ClusterError quotes the job's log,
    within a bounded time (no fragment timeout given), and the logs are kept (batched and single tasks)."""
    from qcmb_async.executors.dask import DaskExecutor

    inp = mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=waters(2))
    message = "qcmb-test: module nwchem/7.2 not found"
    shared = tmp_path / "hpc"
    exe = DaskExecutor(cluster={**JOB, "max_jobs": 1, "host": "127.0.0.1", "shared_directory": str(shared),
                                "prologue": [f"echo '{message}' >&2", "exit 3"]}, max_batch=max_batch)
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as err:
        anyio.run(functools.partial(run_manybody, inp, executor=exe, store=None))
    assert time.monotonic() - t0 < 180
    text = str(err.value)
    assert message in text and "3 batch jobs ended before their Dask worker connected" in text
    assert "exit code 3:0" in text
    kept = Path(err.value.logs or "")
    assert kept.is_dir() and kept.parent == shared, text
    assert any(message in p.read_text(errors="replace") for p in kept.iterdir())
    assert str(kept) in text
    assert not list(shared.glob("cluster-*"))  # the private directory (TLS files) is gone, only logs stay
    shutil.rmtree(shared, ignore_errors=True)
