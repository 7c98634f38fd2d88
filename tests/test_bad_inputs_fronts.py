"""Every bad input of the newer fronts is an ``InputError`` before anything runs: one table, API and CLI forms.

The companion of ``tests/test_bad_inputs.py`` (which covers ``run``'s input): here ``optimize``,
``frequencies``, the ASE calculator, the batch-cluster options (``cluster=``, ``--cluster``/``--job-*``),
Dask scheduler addresses and files, and the screening options. Each row names the front (API or CLI),
what is given, and a pattern the message must match (what is wrong, what to do); the API raises exactly
:class:`qcmb_async.InputError`, the CLI exits 2 with one ``error:`` paragraph and no traceback. Nothing may
run: QCEngine's ``compute`` and every executor's start are replaced by functions that fail the test.

The known members of issue 21 each have a row: unbounded file reads (``--constraints /dev/zero``), job
sizes (infinite, tiny), TLS addresses without credentials, scheduler files that are directories or binary,
the ASE calculator's arguments, wrong types for the drivers' arguments, geomeTRIC keywords it would ignore
or misuse, screening orders given twice or an empty ``--cutoff``, finite-difference steps below the noise.
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import qcmb_async
from qcmb_async import InputError
from tests.helpers import require_module
from tests.test_bad_inputs import mbe
from tests.test_cli import restore_logger  # noqa: F401 - fixture

#: The water dimer every row computes (if anything ran): PySCF HF/STO-3G, NoCP.
PYSCF = {"program": "pyscf", "method": "hf", "basis": "sto-3g"}
DIMER_POSITIONS = [(0, 0, 0), (0.757, 0.586, 0), (-0.757, 0.586, 0), (0, 0, 3), (0.757, 0.586, 3),
                   (-0.757, 0.586, 3)]


def dimer() -> dict[str, Any]:
    return mbe(**PYSCF)


@dataclass
class Case:
    id: str
    message: str
    """Regular expression the error message must match."""
    api: Callable[[Path], Any] | None = None
    """The API call, given the test's temporary directory."""
    cli: list[str] | None = None
    """Command-line arguments; ``{tmp}`` is the temporary directory, ``IN`` the dimer's JSON file."""
    files: dict[str, str | bytes] = field(default_factory=dict)
    needs: tuple[str, ...] = ()

    @property
    def front(self) -> str:
        return "api" if self.api is not None else "cli"


def _optimize(**kw: Any) -> Callable[[Path], Any]:
    return lambda tmp: qcmb_async.optimize_sync(dimer(), store=None, **kw)


def _frequencies(**kw: Any) -> Callable[[Path], Any]:
    return lambda tmp: qcmb_async.frequencies_sync(dimer(), store=None, **kw)


def _run(**kw: Any) -> Callable[[Path], Any]:
    return lambda tmp: qcmb_async.run(dimer(), store=None, **{
        k: (Path(str(v).format(tmp=tmp)) if isinstance(v, Path) else v) for k, v in kw.items()})


def _ase(atoms_positions: list[tuple[float, float, float]] | None = None, symbols: str = "OH2OH2",
         **kw: Any) -> Callable[[Path], Any]:
    """Make a ManyBodyCalculator with ``kw`` over the water dimer's defaults, attach it, ask for the energy."""

    def call(tmp: Path) -> Any:
        from ase import Atoms

        from qcmb_async.ase import ManyBodyCalculator

        args: dict[str, Any] = {"fragments": [[0, 1, 2], [3, 4, 5]], "program": "pyscf",
                                "model": {"method": "hf", "basis": "sto-3g"}, "store": None, **kw}
        atoms = Atoms(symbols, positions=atoms_positions or DIMER_POSITIONS)
        with ManyBodyCalculator(**args) as calc:
            atoms.calc = calc
            return atoms.get_potential_energy()

    return call


NAN = math.nan
BINARY = bytes(range(256)) * 4
NO_TLS = r"asks for TLS, but no TLS credentials are configured: set Dask's TLS configuration.*CA_FILE"

CASES = [
    # -- files the program reads: the input files' guards (regular, bounded, UTF-8) ----------------------
    Case("constraints /dev/zero", r"--constraints file '/dev/zero' is not a regular file \(a FIFO, device",
         cli=["optimize", "IN", "--constraints", "/dev/zero"]),
    Case("constraints directory", r"--constraints file .* is a directory: give a geomeTRIC constraints file",
         cli=["optimize", "IN", "--constraints", "{tmp}"]),
    Case("constraints binary", r"--constraints file .* is not UTF-8 text: byte 0x80 on line 1",
         cli=["optimize", "IN", "--constraints", "{tmp}/c.bin"], files={"c.bin": BINARY[128:]}),
    Case("constraints Path /dev/zero", r"constraints file '/dev/zero' is not a regular file",
         api=_optimize(constraints=Path("/dev/zero"))),
    Case("scheduler file directory", r"Dask scheduler file .* is a directory: give the JSON file `dask scheduler",
         cli=["run", "IN", "--scheduler-file", "{tmp}"]),
    Case("scheduler file binary", r"Dask scheduler file .* is not UTF-8 text",
         cli=["run", "IN", "--scheduler-file", "{tmp}/s.json"], files={"s.json": BINARY}),
    Case("scheduler file /dev/zero", r"Dask scheduler file '/dev/zero' is not a regular file",
         cli=["optimize", "IN", "--scheduler-file", "/dev/zero"]),
    Case("scheduler file without address", r"Dask scheduler file .* holds no scheduler 'address'",
         api=_run(scheduler=Path("{tmp}/s.json")), files={"s.json": '{"type": "Scheduler"}'}),
    Case("scheduler file directory, api", r"Dask scheduler file .* is a directory",
         api=_run(scheduler=Path("{tmp}"))),
    # -- batch-cluster job sizes and options -------------------------------------------------------------
    Case("job memory inf", r"job_memory must be a finite number of GiB >= 0\.25.*got inf",
         cli=["run", "IN", "--cluster", "slurm", "--job-memory", "inf"]),
    Case("job memory 1e-9", r"job_memory must be a finite number of GiB >= 0\.25.*got 1e-09",
         cli=["run", "IN", "--cluster", "slurm", "--job-memory", "1e-9"]),
    Case("job memory 0.001", r"job_memory must be a finite number of GiB >= 0\.25.*got 0\.001",
         cli=["run", "IN", "--cluster", "slurm", "--job-memory", "0.001"]),
    Case("job memory nan, optimize", r"job_memory must be a finite number of GiB >= 0\.25.*got nan",
         cli=["optimize", "IN", "--cluster", "slurm", "--job-memory", "nan"]),
    Case("job memory inf, frequencies", r"job_memory must be a finite number of GiB >= 0\.25",
         cli=["frequencies", "IN", "--cluster", "pbs", "--job-memory", "inf"]),
    Case("job cores 0", r"bad cluster options: job_cores.*greater than or equal to 1",
         cli=["run", "IN", "--cluster", "slurm", "--job-cores", "0"]),
    Case("job options without cluster", r"--job-memory size the jobs of --cluster: add --cluster slurm",
         cli=["frequencies", "IN", "--job-memory", "2"]),
    Case("walltime", r"walltime '1h' is not HH:MM:SS", cli=["optimize", "IN", "--cluster", "slurm", "--walltime",
                                                          "1h"]),
    Case("cluster and scheduler", r"--scheduler and --cluster contradict each other",
         cli=["optimize", "IN", "--cluster", "slurm", "--scheduler", "tcp://127.0.0.1:8786"]),
    Case("job memory inf, api", r"job_memory must be a finite number of GiB >= 0\.25",
         api=_run(cluster={"kind": "slurm", "job_memory": math.inf})),
    Case("job memory tiny, api", r"job_memory must be a finite number of GiB >= 0\.25",
         api=_run(cluster={"kind": "slurm", "job_memory": 1e-9})),
    Case("job memory a string, api", r"bad cluster options: job_memory",
         api=_run(cluster={"kind": "slurm", "job_memory": "lots"})),
    Case("unknown batch system", r"unknown batch system 'lsf': use one of pbs, slurm", api=_run(cluster="lsf")),
    Case("unknown cluster key", r"bad cluster options: .*nodes", api=_run(cluster={"kind": "slurm", "nodes": 2})),
    Case("cluster of a wrong type", r"cluster must be one of \['pbs', 'slurm'\], a dict or ClusterOptions",
         api=_optimize(cluster=42)),
    Case("job memory inf, optimize api", r"job_memory must be a finite number of GiB >= 0\.25",
         api=_optimize(cluster={"kind": "slurm", "job_memory": math.inf})),
    # -- Dask scheduler addresses -------------------------------------------------------------------
    Case("tls address without credentials", NO_TLS, cli=["run", "IN", "--scheduler", "tls://127.0.0.1:1"],
         needs=("distributed",)),
    Case("tls address without credentials, optimize", NO_TLS,
         cli=["optimize", "IN", "--scheduler", "tls://127.0.0.1:1"], needs=("distributed",)),
    Case("tls address without credentials, api", NO_TLS, api=_frequencies(scheduler="tls://127.0.0.1:1"),
         needs=("distributed",)),
    # -- optimize: the driver's own arguments --------------------------------------------------------------
    Case("constraints a number", r"constraints must be geomeTRIC constraint text .* got int 42",
         api=_optimize(constraints=42)),
    Case("constraints bytes", r"constraints must be geomeTRIC constraint text .* got bytes",
         api=_optimize(constraints=b"$freeze\nxyz 1\n")),
    Case("constraints a file name as text", r"constraints is text; to read the file .*cons\.txt.* pass "
         r"pathlib\.Path to it", api=lambda tmp: qcmb_async.optimize_sync(dimer(), store=None,
                                                                          constraints=str(tmp / "cons.txt")),
         files={"cons.txt": "$freeze\nxyz 1\n"}),
    Case("coordsys None", r"coordsys must be one of .*got None", api=_optimize(coordsys=None)),
    Case("convergence set a number", r"convergence_set must be the name of a geomeTRIC convergence set.*got 5",
         api=_optimize(convergence_set=5)),
    Case("geometric_params unknown", r"geometric_params: unknown or unsupported keyword\(s\) \['bogus'\]: "
         r"geomeTRIC would ignore them silently", api=_optimize(geometric_params={"bogus": 1})),
    Case("geometric_params transition state", r"unknown or unsupported keyword\(s\) \['transition'\]",
         api=_optimize(geometric_params={"transition": True})),
    Case("geometric_params NaN criterion", r"geometric_params\['convergence_grms'\] must be a finite number > 0, "
         r"got nan", api=_optimize(geometric_params={"convergence_grms": NAN})),
    Case("geometric_params negative trust", r"geometric_params\['trust'\] must be a finite number > 0, got -1",
         api=_optimize(geometric_params={"trust": -1})),
    Case("geometric_params zero tmax", r"geometric_params\['tmax'\] must be a finite number > 0",
         api=_optimize(geometric_params={"tmax": 0.0})),
    Case("geometric_params tmin above tmax", r"tmin 0\.5 is above tmax 0\.1",
         api=_optimize(geometric_params={"tmin": 0.5, "tmax": 0.1})),
    Case("geometric_params a list", r"geometric_params must be a dict of geomeTRIC OptParams keywords, got list",
         api=_optimize(geometric_params=["trust", 0.1])),
    Case("geometric_params maxiter text", r"geometric_params\['maxiter'\] must be a whole number >= 0",
         api=_optimize(geometric_params={"maxiter": "10"})),
    Case("maxiter zero", r"maxiter must be a whole number of optimization cycles >= 1", api=_optimize(maxiter=0)),
    Case("optimize screening", r"screening= does not apply to optimize, frequencies or the ASE calculator: the "
         r"kept subsets would change as atoms move", api=_optimize(screening={"distance": {2: 9.0}})),
    Case("optimize on_error", r"on_error= does not apply.*a failed fragment always stops the job",
         api=_optimize(on_error="continue")),
    Case("optimize unknown option", r"unknown option\(s\) \['ncore'\]: use ncores, memory",
         api=_optimize(ncore=2)),
    # -- frequencies ----------------------------------------------------------------------------------
    Case("method None", r"method must be 'analytic' or 'finite-difference', got None",
         api=_frequencies(method=None)),
    Case("method a number", r"method must be 'analytic' or 'finite-difference', got 2", api=_frequencies(method=2)),
    Case("step below the noise", r"step 1e-09 bohr is too small: the gradients' numerical noise.*at least 0\.0001",
         api=_frequencies(method="finite-difference", step=1e-9)),
    Case("step below the noise, cli", r"step 1e-05 bohr is too small",
         cli=["frequencies", "IN", "--hessian", "finite-difference", "--step", "1e-5"]),
    Case("step NaN", r"step must be a finite positive number of bohr",
         api=_frequencies(method="finite-difference", step=NAN)),
    Case("step too large", r"step 0\.5 bohr is too large", api=_frequencies(method="finite-difference", step=0.5)),
    Case("frequencies screening", r"screening= does not apply", api=_frequencies(screening={"distance": {2: 9.0}})),
    # -- screening options ------------------------------------------------------------------------------
    Case("cutoff order twice", r"--cutoff gives order 2 twice \(9 and 1\): give each order once",
         cli=["run", "IN", "--cutoff", "2:9,2:1"]),
    Case("cutoff empty", r"--cutoff is empty: give ORDER:VALUE pairs.*or leave --cutoff out",
         cli=["run", "IN", "--cutoff", ""]),
    Case("energy threshold empty", r"--energy-threshold is empty", cli=["run", "IN", "--energy-threshold", " "]),
    Case("energy threshold order twice", r"--energy-threshold gives order 3 twice",
         cli=["run", "IN", "--energy-threshold", "3:1e-5,3:1e-6"]),
    Case("cutoff not a pair", r"--cutoff: '9' is not ORDER:VALUE", cli=["run", "IN", "--cutoff", "9"]),
    Case("centroid with an empty cutoff", r"--cutoff is empty", cli=["run", "IN", "--cutoff", "", "--centroid"]),
    Case("screening order as number and text", r"screening distance: order 2 is given twice",
         api=_run(screening={"distance": {2: 9.0, "2": 1.0}})),
    Case("screening empty orders", r"screening is empty", api=_run(screening={"distance": {}})),
    Case("screening NaN cutoff", r"screening distance: order 2 needs a finite number >= 0",
         api=_run(screening={"distance": {2: NAN}})),
    Case("screening of a wrong type", r"screening must be a dict like", api=_run(screening="2:9")),
    # -- the ASE calculator: the same checks as run(), named, before any fragment --------------------------
    Case("ase model a string", r"model must be a dict with a 'method'", api=_ase(model="hf"), needs=("ase",)),
    Case("ase unknown basis", r"PySCF has no basis set 'no-such-basis'",
         api=_ase(model={"method": "hf", "basis": "no-such-basis"}), needs=("ase",)),
    Case("ase unknown bsse_type", r"bsse_type 'xyz' is not valid: use one or a list of 'cp', 'nocp', 'vmfc'",
         api=_ase(bsse_type="xyz"), needs=("ase",)),
    Case("ase charges of the wrong length", r"fragment_charges must give one charge per fragment \(2\), got \[0\]",
         api=_ase(fragment_charges=[0]), needs=("ase",)),
    Case("ase multiplicity zero", r"fragment_multiplicities\[1\] \(fragment 2\) must be a finite number >= 1",
         api=_ase(fragment_multiplicities=[1, 0]), needs=("ase",)),
    Case("ase odd electrons", r"fragment 2 \(charge 0\) has 9 electrons, so its multiplicity must be one of 2, 4",
         api=_ase(symbols="OH2OH", atoms_positions=[*DIMER_POSITIONS[:4], (0.97, 0, 3)],
                  fragments=[[0, 1, 2], [3, 4]]), needs=("ase",)),
    Case("ase two atoms at one place", r"Following atoms are too close",
         api=_ase(atoms_positions=[*DIMER_POSITIONS[:4], (0, 0, 3), (0.757, 0.586, 3)]), needs=("ase",)),
    Case("ase fragments not lists", r"fragments must be a non-empty list of lists of atom indices",
         api=_ase(fragments="012345"), needs=("ase",)),
    Case("ase max_nbody too large", r"max_nbody=3: give a whole number from 1 to the number of fragments \(2\)",
         api=_ase(max_nbody=3), needs=("ase",)),
    Case("ase unknown option", r"unknown option\(s\) \['cores'\]", api=_ase(cores=2), needs=("ase",)),
    Case("ase screening", r"screening= does not apply", api=_ase(screening={"distance": {2: 9.0}}),
         needs=("ase",)),
    Case("ase bad mbe_input", r"is not a valid ManyBodyInput", api=_ase(mbe_input={"molecule": {}}),
         needs=("ase",)),
]


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """QCEngine, every executor's start and the batch cluster fail the test if reached."""
    import qcengine

    from qcmb_async.executors import base, hpc

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a bad input reached the computation")

    monkeypatch.setattr(qcengine, "compute", boom)
    monkeypatch.setattr(base.ReusableExecutor, "__aenter__", boom)
    monkeypatch.setattr(hpc, "start_cluster", boom)


def _setup(case: Case, tmp: Path) -> None:
    require_module("pyscf")
    for name in case.needs:
        require_module(name)
    for name, content in case.files.items():
        (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())


API = [c for c in CASES if c.front == "api"]
CLI = [c for c in CASES if c.front == "cli"]


@pytest.mark.parametrize("case", API, ids=[c.id for c in API])
def test_api_refuses(case: Case, tmp_path: Path, nothing_runs: None) -> None:
    _setup(case, tmp_path)
    assert case.api is not None
    with pytest.raises(InputError) as info:
        case.api(tmp_path)
    assert type(info.value) is InputError
    assert re.search(case.message, str(info.value), re.S), str(info.value)


@pytest.mark.parametrize("case", CLI, ids=[c.id for c in CLI])
def test_cli_exits_2(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nothing_runs: None,
                     restore_logger: None) -> None:  # noqa: F811 - fixture
    from typer.testing import CliRunner

    from qcmb_async.cli import app

    _setup(case, tmp_path)
    assert case.cli is not None
    (tmp_path / "in.json").write_text(json.dumps(dimer()))
    monkeypatch.chdir(tmp_path)
    args = [str(tmp_path / "in.json") if a == "IN" else a.format(tmp=tmp_path) for a in case.cli]
    res = CliRunner().invoke(app, [*args, "--no-store"])
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    assert re.search(case.message, " ".join(res.stderr.split()), re.S), res.stderr


# -- what is near the same checks is accepted --------------------------------------------------------------


def test_valid_values_at_the_bounds_are_accepted(tmp_path: Path) -> None:
    from qcmb_async._frequencies import MIN_STEP, _check_step
    from qcmb_async._optimize import check_arguments
    from qcmb_async.cli._options import screening_option
    from qcmb_async.executors.hpc import MIN_JOB_MEMORY, cluster_options

    _check_step(MIN_STEP)  # the floor itself
    _check_step(0.005)
    with pytest.raises(InputError, match="too small"):
        _check_step(MIN_STEP * 0.99)
    assert cluster_options("slurm", job_memory=MIN_JOB_MEMORY).job_memory == 0.25
    with pytest.raises(InputError, match="job_memory"):
        cluster_options("slurm", job_memory=0.24)
    (tmp_path / "c.txt").write_text("$freeze\nxyz 1\n")
    text, params = check_arguments(coordsys="tric", constraints=tmp_path / "c.txt", convergence_set="GAU_TIGHT",
                                   geometric_params={"convergence_grms": 1e-4, "trust": 0.05, "tmax": 0.2,
                                                     "usedmax": True, "maxiter": 5})
    assert text == "$freeze\nxyz 1\n"
    assert params == {"convergence_grms": 1e-4, "trust": 0.05, "tmax": 0.2, "usedmax": True, "maxiter": 5}
    assert screening_option("2:9,3:7", "3:1e-5", True) == {"distance": {2: 9.0, 3: 7.0}, "energy": {3: 1e-5},
                                                          "metric": "centroid"}
    assert screening_option(None, None, False) is None


def test_every_geometric_param_we_allow_is_one_geometric_reads() -> None:
    """The allow-list must not name a keyword geomeTRIC ignores (it reads them with ``kwargs.get('name'``)."""
    import inspect

    geometric = require_module("geometric.params")
    from qcmb_async._optimize import GEOMETRIC_PARAMS

    source = inspect.getsource(sys.modules["geometric.params"].OptParams)
    read = set(re.findall(r"kwargs\.get\('(\w+)'", source))
    assert geometric is not None and set(GEOMETRIC_PARAMS) <= read, set(GEOMETRIC_PARAMS) - read


def test_a_tls_scheduler_addressed_as_tcp_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real TLS scheduler (temporary credentials) reached with tcp://: the error says TLS, not 'start one'."""
    import qcengine

    monkeypatch.setattr(qcengine, "compute", lambda *a, **k: pytest.fail("a fragment ran"))
    require_module("distributed")
    require_module("cryptography")
    script = ("import asyncio, sys\nfrom distributed import Scheduler\nfrom distributed.security import Security\n"
              "async def main():\n"
              "    async with Scheduler(host='127.0.0.1', port=0, protocol='tls', security=Security.temporary(),\n"
              "                         dashboard=False) as s:\n"
              "        print(s.address, flush=True)\n"
              "        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)\n"
              "asyncio.run(main())\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()  # printed once the scheduler listens
        assert address.startswith("tls://"), address
        tcp = "tcp://" + address[len("tls://"):]
        with pytest.raises(InputError, match=r"accepted the connection and then reset it: it is most likely a TLS "
                                             rf"scheduler.*Address it as '{re.escape(address)}' with TLS"):
            qcmb_async.run(copy.deepcopy(dimer()), scheduler=tcp, store=None)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


# -- the report command on what optimize and frequencies write --------------------------------------------

OPTIMIZE_OUTPUT = {
    "success": True, "error": None, "final_energy": -149.9342,
    "final_molecule": {"symbols": ["O", "H", "H", "O", "H", "H"], "geometry": [0.0] * 18},
    "energies": [-149.93, -149.9342],
    "steps": [{"step": 1, "energy": -149.93, "gradient_rms": 0.012, "gradient_max": 0.031, "computed": 3,
               "cached": 0, "wall_time": 1.5},
              {"step": 2, "energy": -149.9342, "gradient_rms": 1e-4, "gradient_max": 3e-4, "computed": 3,
               "cached": 0, "wall_time": 1.25}],
    "extras": {"evaluations": 2},
}
FREQUENCIES_OUTPUT = {"frequencies_cm-1": [12.5, 101.25, 4100.0], "modes": [], "hessian": [], "energy": -149.93,
                      "gradient": None, "method": "finite-difference",
                      "extras": {"fragments_computed": 75, "fragments_cached": 0, "wall_time": 12.0}}


def test_report_says_what_an_optimize_or_frequencies_output_holds(tmp_path: Path,
                                                                  restore_logger: None) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from qcmb_async.cli import app

    (tmp_path / "opt.json").write_text(json.dumps(OPTIMIZE_OUTPUT))
    (tmp_path / "freq.json").write_text(json.dumps(FREQUENCIES_OUTPUT))
    res = CliRunner().invoke(app, ["report", str(tmp_path / "opt.json")], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    assert "pydantic" not in res.output and "validation" not in res.output
    assert re.search(r"2\s+-149\.9342000000\s+1\.00e-04\s+3\.00e-04\s+3\s+0\s+1\.25", res.stdout), res.stdout
    assert "converged after 2 gradients; final energy -149.9342000000 Eh, 6 atoms" in res.stdout
    res = CliRunner().invoke(app, ["report", str(tmp_path / "freq.json")], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    assert "finite-difference Hessian" in res.stdout
    assert "     12.50    101.25   4100.00" in res.stdout
    assert "75 fragments computed, 0 from the store" in res.stdout
    broken = {**OPTIMIZE_OUTPUT, "final_molecule": 5}
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    res = CliRunner().invoke(app, ["report", str(tmp_path / "bad.json")])
    assert res.exit_code == 2
    assert "looks like the output of 'qcmb-async optimize --output' but is malformed" in " ".join(res.stderr.split())
    res = CliRunner().invoke(app, ["report", "/dev/zero"])
    assert res.exit_code == 2 and "is not a regular file" in res.stderr


# -- hints that name what each front can do --------------------------------------------------------------


def test_import_without_ase_names_the_pip_line() -> None:
    code = ("import sys; sys.modules['ase'] = None\n"
            "try:\n    import qcmb_async.ase\nexcept ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert "qcmb_async.ase needs ASE: pip install 'qcmb_async[ase]'" in out.stdout, (out.stdout, out.stderr)


def test_missing_cryptography_hint_says_what_each_front_can_do(monkeypatch: pytest.MonkeyPatch) -> None:
    require_module("distributed")
    from distributed.security import Security

    from qcmb_async.executors import hpc

    def no_cryptography() -> Any:
        raise ImportError("No module named 'cryptography'")

    monkeypatch.setattr(Security, "temporary", staticmethod(no_cryptography))
    with pytest.raises(InputError) as info:
        hpc._security(hpc.cluster_options("slurm"))
    text = str(info.value)
    assert "pip install 'qcmb_async[hpc]'" in text
    assert "cluster={'kind': 'slurm', 'tls': False}" in text and "the command line always uses TLS" in text
    assert "pass tls=False" not in text
