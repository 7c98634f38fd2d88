"""NWChem on several cores: MPI ranks through QCEngine's task config give the one-rank answer.

Expected values come from NWChem run on one rank (the program itself, not our code); the
rank count and per-rank memory are read from NWChem's own output.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from qcelemental.models.v2 import AtomicInput, Molecule

from qcmb_async import run
from qcmb_async._core.contract import FragmentJob
from qcmb_async._qcengine.mpi import default_mpiexec_command, mpi_task_config
from qcmb_async._qcengine.seams import _threads_per_process
from tests.helpers import WATER_TRIMER, mbe_input, require_executable, require_program

#: Tight SCF so the two runs agree to far below 1e-9 Eh.
TIGHT = {"scf__thresh": 1e-10, "scf__tol2e": 1e-14}


def test_mpi_task_config_only_for_mpi_programs_on_several_cores() -> None:
    require_executable("mpiexec")
    base = {"ncores": 2, "memory": 1.0, "retries": 0}
    cfg = mpi_task_config("nwchem", base)
    assert cfg["use_mpiexec"] is True and cfg["cores_per_rank"] == 1
    assert "{total_ranks}" in cfg["mpiexec_command"] and "{ranks_per_node}" in cfg["mpiexec_command"]
    assert base == {"ncores": 2, "memory": 1.0, "retries": 0}  # the caller's dict is not edited
    assert mpi_task_config("nwchem", {**base, "ncores": 1}) == {**base, "ncores": 1}
    assert mpi_task_config("pyscf", base) == base  # threads, not ranks
    given = {**base, "use_mpiexec": False}
    assert mpi_task_config("nwchem", given) == given  # the caller decided


def test_without_mpiexec_nwchem_stays_on_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no mpiexec to find
    given = {"ncores": 2, "memory": 1.0}
    assert mpi_task_config("nwchem", given) == given


def test_ranks_never_get_less_than_the_least_memory_per_rank() -> None:
    require_executable("mpiexec")
    from qcmb_async._qcengine.mpi import MIN_RANK_MEMORY

    # 4 cores, memory for only 2 ranks: 2 ranks of 2 cores each.
    cfg = mpi_task_config("nwchem", {"ncores": 4, "memory": 2 * MIN_RANK_MEMORY})
    assert cfg["ncores"] // cfg["cores_per_rank"] == 2
    assert cfg["memory"] / (cfg["ncores"] // cfg["cores_per_rank"]) >= MIN_RANK_MEMORY
    # Memory for one rank only: no mpiexec at all.
    assert "use_mpiexec" not in mpi_task_config("nwchem", {"ncores": 4, "memory": MIN_RANK_MEMORY})


def test_mpiexec_command_is_what_qcengine_accepts_and_runs_as_root() -> None:
    require_executable("mpiexec")
    from qcengine.config import get_config
    from qcengine.util import create_mpi_invocation

    command = default_mpiexec_command()
    assert command is not None
    config = get_config(task_config=mpi_task_config("nwchem", {"ncores": 3, "memory": 1.0}))
    argv = create_mpi_invocation("nwchem", config)
    assert argv[1:3] == ["-n", "3"] and argv[-1] == "nwchem"
    if "openrte" in command or "--bind-to" in command:  # OpenMPI refuses root without the flag
        assert ("--allow-run-as-root" in argv) == (os.geteuid() == 0)


def test_threads_per_process_is_cores_per_rank_under_mpiexec() -> None:
    assert _threads_per_process({"ncores": 4}) == 4
    assert _threads_per_process({"ncores": 4, "use_mpiexec": True, "cores_per_rank": 1}) == 1
    assert _threads_per_process({"ncores": 4, "use_mpiexec": True, "cores_per_rank": 2}) == 2


def _atomic(geometry: str) -> AtomicInput:
    mol = Molecule.from_data(geometry + "\nsymmetry c1\nno_com\nno_reorient")
    return AtomicInput(molecule=mol, specification={
        "driver": "gradient", "model": {"method": "hf", "basis": "sto-3g"}, "keywords": TIGHT})


def _execute(inp: AtomicInput, ncores: int) -> tuple[float, np.ndarray, str]:
    from qcmb_async._qcengine.worker import execute_job

    job = FragmentJob(label=f"mpi-{ncores}", nbody=1, program="nwchem", atomic_input=inp,
                      task_config={"ncores": ncores, "memory": 1.0, "retries": 0})
    out = execute_job(job)
    assert out.success, out.error_message
    res = out.result
    return float(res.properties.return_energy), np.asarray(res.return_result), res.stdout


@pytest.mark.parametrize("geometry", [
    # A CP dimer fragment: second water as ghosts (basis functions, no nuclei or electrons).
    "\n".join(WATER_TRIMER.strip().split("--")[0].strip().splitlines()
              + ["@" + line.strip() for line in WATER_TRIMER.strip().split("--")[1].strip().splitlines()]),
    WATER_TRIMER.replace("--", ""),
], ids=["cp-dimer", "trimer"])
def test_two_ranks_equal_one_rank(geometry: str) -> None:
    require_program("nwchem")
    require_executable("mpiexec")
    e1, g1, out1 = _execute(_atomic(geometry), 1)
    e2, g2, out2 = _execute(_atomic(geometry), 2)
    assert re.search(r"nproc\s*=\s*1\b", out1) and re.search(r"nproc\s*=\s*2\b", out2)
    # NWChem's memory directive is per process: two ranks get half of the fragment's memory each.
    m1 = int(re.search(r"^memory (\d+) double", out1, re.M).group(1))
    m2 = int(re.search(r"^memory (\d+) double", out2, re.M).group(1))
    assert m2 * 2 <= m1
    assert abs(e1 - e2) < 1e-9
    assert np.abs(g1 - g2).max() < 1e-9


def test_mbe_with_two_rank_fragments_equals_one_rank() -> None:
    require_program("nwchem")
    require_executable("mpiexec")
    from qcelemental.models.v2 import Molecule as Mol

    dimer = Mol.from_data("\n--\n".join(WATER_TRIMER.strip().split("--")[:2]) + "\nsymmetry c1")
    inp = mbe_input("nwchem", "hf", "sto-3g", driver="gradient", bsse="nocp", max_nbody=2,
                    molecule=dimer, keywords=TIGHT)
    # No result store: the second run must compute every fragment, not reuse the first run's.
    one = run(inp, ncores=2, memory=2, fragment_ncores=1, store=None)
    two = run(inp, ncores=2, memory=2, fragment_ncores=2, store=None)
    records = two.extras["qcmb_async"]["fragments"]
    assert records and all(r["cores"] == 2 and r["status"] == "ok" for r in records)
    assert abs(one.properties.return_energy - two.properties.return_energy) < 1e-9
    assert np.abs(np.asarray(one.return_result) - np.asarray(two.return_result)).max() < 1e-9


def test_mpi_ranks_start_with_one_thread_each_and_os_environ_untouched() -> None:
    require_executable("mpiexec")
    from qcengine.config import get_config

    from qcmb_async._qcengine import seams

    seams.install_seams()
    config = get_config(task_config=mpi_task_config("nwchem", {"ncores": 2, "memory": 1.0}))
    before = dict(os.environ)
    ctx = seams.FragmentContext(label="omp", task_config={"ncores": 2, "memory": 1.0})
    token = seams.FRAGMENT.set(ctx)
    try:
        with seams._fragment_environ_context(config=config):
            env = seams._program_env(None)
    finally:
        seams.FRAGMENT.reset(token)
    assert env["OMP_NUM_THREADS"] == "1" and env["MKL_NUM_THREADS"] == "1"
    assert dict(os.environ) == before
