"""The docs run: every fenced code block of docs/*.md and README.md is run here or skipped for a stated reason.

``RUN`` and ``SKIP`` name each block by its page and first line. A Python block runs (top-level
``await`` allowed) with the names the docs assume already bound -- ``inp``/``mbe_input`` is
docs/examples/input.json (water dimer, PySCF HF/STO-3G, NoCP MBE(2), at its GAU_VERYTIGHT minimum, so the
docs' optimizations take a few gradients), ``trimer`` the water trimer,
``atoms`` its ASE ``Atoms``, ``scan`` two geometries of the dimer -- in a directory holding
docs/examples/ (trimer.xyz, input.json, cluster.xyz), with one result store shared by all blocks (the
same fragments are computed once). A shell block runs each ``qcmb-async`` command as a subprocess and
expects exit 0. Resource sizes written for a big machine (``ncores=16``, ``--memory 16``) are scaled to
this one, and ``RUN`` lists any other substitution. A block in neither table fails
``test_every_block_is_run_or_skipped``: a new block is run or consciously excluded.

Also here: docs/configuration.md's generated tables are up to date with the models, docs/dynamics.md
lists exactly the options the drivers take, and the TLS example binds the dashboards to 127.0.0.1.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import WATER_TRIMER, require_module, require_program

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = ROOT / "docs" / "examples"


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    text: str

    @property
    def key(self) -> tuple[str, str]:
        first = next(line.strip() for line in self.text.splitlines() if line.strip())
        return self.page, first

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in PAGES:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            match = re.match(r"^\s*```(\S*)\s*$", lines[i])
            if match:
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
                found.append(Block(str(path.relative_to(ROOT)), i + 1, match.group(1), "\n".join(lines[i + 1:end])))
                i = end
            i += 1
    return found


#: Languages that are diagrams or printed output, never run.
NOT_CODE = {"": "a diagram or listing, not code", "text": "printed output or a file listing, not code",
            "mermaid": "a diagram"}


@dataclass(frozen=True)
class Run:
    """How a block runs here: substitutions (on top of the resource scaling), what it needs, slow or not."""

    subs: dict[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ("pyscf",)
    slow: bool = False


#: Resource sizes in the docs are for a big machine; this one has two cores (shared).
SCALE = [(r"\bncores=(8|16)\b", "ncores=2"), (r"\bmemory=16\b", "memory=2"), (r"--ncores (8|16)\b", "--ncores 2"),
         (r"--memory 16\b", "--memory 2"), (r"\bmax_workers=8\b", "max_workers=2")]
#: The screening page's examples need an expansion to four bodies: six waters, MOPAC PM7.
CLUSTER_OPTIONS = "--program mopac --method pm7 --bsse nocp --max-nbody 4"

RUN: dict[tuple[str, str], Run] = {
    ("README.md", "from qcmb_async import run_manybody, run"): Run(),
    ("README.md", "qcmb-async run trimer.xyz --program pyscf --method hf --basis sto-3g --bsse cp --max-nbody 3"):
        Run(needs=("pyscf", "mopac"), slow=True),
    ("docs/cli.md", "qcmb-async run trimer.xyz --program pyscf --method hf --basis sto-3g --bsse cp --max-nbody 3 \\"):
        Run(subs={"~/.cache/qcmb_async/results.sqlite": "{store}"}, needs=("pyscf", "mopac", "nwchem",
                                                                            "matplotlib"), slow=True),
    ("docs/cli.md", "qcmb-async optimize input.json --convergence GAU_TIGHT --maxiter 100 -o opt.json"):
        Run(needs=("pyscf", "geometric"), slow=True),
    ("docs/dynamics.md", "from ase.optimize import BFGS"):
        Run(subs={'"6-31g"': '"sto-3g"', "fmax=0.01)": "fmax=0.01, steps=2)"}, needs=("pyscf", "ase"), slow=True),
    ("docs/dynamics.md", "from qcmb_async import optimize, optimize_sync"): Run(needs=("pyscf", "geometric")),
    ("docs/dynamics.md", "from qcmb_async import frequencies"): Run(),
    ("docs/dynamics.md", "from qcmb_async import optimize_sync"): Run(needs=("pyscf", "geometric", "matplotlib")),
    ("docs/dynamics.md", "qcmb-async optimize input.json --convergence GAU_TIGHT --ncores 8 -o opt.json"):
        Run(needs=("pyscf", "geometric"), slow=True),
    ("docs/executors.md", 'await run_manybody(inp, executor="threads")'):
        Run(subs={"tcp://head:8786": "{dask}"}, needs=("pyscf", "distributed")),
    ("docs/executors.md", "from qcmb_async import run_manybody"): Run(),
    ("docs/executors.md", "from distributed import Client, LocalCluster"):
        Run(needs=("pyscf", "distributed", "cryptography"), slow=True),
    ("docs/index.md", "from qcmb_async import run_manybody, run"): Run(),
    ("docs/performance.md", "from qcmb_async.simulate import Workload, simulate, synthetic_workload"):
        # Replaying needs every fragment's measured time: no result store (the shared one serves them cached).
        # The synthetic plan scaled from 100,000 to 5,000 fragments (scripts/bench.py simulates the full size).
        Run(subs={"qcmb_async.run(mbe_input, ncores=2)": "qcmb_async.run(mbe_input, ncores=2, store=None)",
                  "synthetic_workload(100_000, seed=1)": "synthetic_workload(5_000, seed=1)"}, slow=True),
    ("docs/programs.md", "inp = ManyBodyInput(molecule=trimer, specification={"): Run(needs=("psi4",), slow=True),
    ("docs/quickstart.md", "from qcelemental.models.v2 import Molecule"): Run(),
    ("docs/quickstart.md", "from qcmb_async import open_run"): Run(),
    ("docs/screening.md", 'result = await run_manybody(inp, screening={"distance": {2: 9.0, 3: 7.0, 4: 5.5}})   # Å, '
                          "per order"): Run(needs=("mopac",)),
    ("docs/snapshots.md", "qcmb-async plan snapshot.xyz --fragments molecules --program pyscf --method hf --basis "
                          "sto-3g \\"): Run(needs=("pyscf",), slow=True),
    ("docs/snapshots.md", "from qcmb_async import read_xyz, run"): Run(slow=True),
    ("docs/snapshots.md", "from qcmb_async import read_pdb, run"): Run(needs=("pyscf", "gemmi")),
    ("docs/snapshots.md", "qcmb-async run salt.pdb --charge Na=+1,Cl=-1 --program pyscf --method hf --basis sto-3g "
                          "--bsse nocp"): Run(needs=("pyscf", "gemmi"), slow=True),
    ("docs/gmbe.md", "from qcmb_async import GMBEInput, run"): Run(needs=("pyscf", "gemmi"), slow=True),
    ("docs/gmbe.md", "qcmb-async plan peptide.pdb --gmbe 3 --program pyscf --method hf --basis sto-3g"):
        Run(needs=("pyscf", "gemmi"), slow=True),
    ("docs/gmbe.md", "qcmb-async plan hexane.xyz --gmbe 2 --fragments hexane-fragments.json --program pyscf "
                     "--method hf --basis sto-3g"): Run(needs=("pyscf",), slow=True),
    ("docs/gmbe.md", "import json"):
        Run(subs={"fmax=0.01)": "fmax=0.01, steps=2)"}, needs=("pyscf", "ase"), slow=True),
    # A water hexamer at HF/STO-3G (the page's 6-31G: minutes here); water_hexamer is bound by _namespace.
    ("docs/embedding.md", "from qcmanybody.models.v2 import ManyBodyInput"):
        Run(subs={'"6-31g"': '"sto-3g"'}, slow=True),
    ("docs/screening.md", "$ qcmb-async plan cluster.xyz --program mopac --method pm7 --bsse nocp --max-nbody 4 "
                          "--cutoff 2:9,3:7,4:5.5 --ncores 8"):
        Run(subs={" ... ": f" {CLUSTER_OPTIONS} "}, needs=("mopac",)),
}

_CLUSTER_JOBS = "sized for a real batch cluster (partition 'normal', 32-core jobs); tests/test_hpc.py runs the same "
SKIP: dict[tuple[str, str], str] = {
    ("docs/gmbe.md", "qcmb-async plan protein.pdb --gmbe 2 --charge A/LYS5=+1,A/ASP12=-1,A/GLU20=-1 --program pyscf "
                     "--method hf --basis sto-3g"):
        "names a protein not shipped here; tests/test_gmbe_front.py runs --charge on a protonated tetrapeptide",
    ("README.md", "make example   # pip-installs qcmb_async with PySCF, runs a water-trimer CP MBE (HF/STO-3G, up to "
                  "3-body)"): "installs packages; `make test` runs this suite itself",
    ("docs/quickstart.md", "pip install -e '.[pyscf]'        # qcmb_async + PySCF (pip-only QC program)"):
        "installs packages",
    ("docs/programs.md", "apt-get install -y --no-install-recommends nwchem mopac psi4"): "installs packages",
    ("README.md", "pip install 'qcmb_async[pyscf]'    # the base install with PySCF (and pyscf-dispersion for "
                  "DFT-D3/D4)"): "installs packages; scripts/check_wheel.sh installs the wheel in a fresh venv",
    ("docs/upgrading.md", "pip install --upgrade 'qcmb_async[pyscf]'     # add the extras you use: xtb, dask, hpc, "
                          "ase, opt, timeline"): "installs packages",
    ("docs/troubleshooting.md", "import dataclasses"):
        "changes the process-wide program registry (every later test would run with the loosened tolerance); "
        "tests/test_frames.py registers and restores traits the same way",
    ("docs/performance.md", "PYTHONPATH=$PWD python scripts/bench_nwchem_mpi.py sim --cores 64 16   # the simulator "
                            "(seconds)"): "a benchmark (its measure step runs NWChem for minutes)",
    ("docs/programs.md", 'ProgramTraits("orca", parallel_fraction=0.8,'):
        "a fragment of the registry's dict in qcmb_async/programs.py (ORCA is not installed here)",
    ("docs/executors.md", "dask scheduler --host 127.0.0.1 --dashboard-address 127.0.0.1:8787"):
        "starts a scheduler and a worker that serve until stopped; tests/test_dask*.py start clusters from Python",
    ("docs/executors.md", 'openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 365 -subj '
                          '"/CN=my-dask-ca"'):
        "makes certificates and starts servers meant for several machines; the TLS path is run by the "
        "LocalCluster(protocol='tls://') block of the same page",
    ("docs/executors.md", "export DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True"):
        "needs the certificates above and a TLS scheduler on host 'head'",
    ("docs/executors.md", "from distributed import Client"): "needs the certificates above and a TLS scheduler on "
                                                              "host 'head'",
    ("docs/hpc.md", "qcmb-async run big.json --cluster slurm --queue normal --job-cores 32 --job-memory 120 \\"):
        _CLUSTER_JOBS + "command against the local SLURM",
    ("docs/hpc.md", "from qcmb_async import run_manybody"): _CLUSTER_JOBS + "call against the local SLURM",
    ("docs/hpc.md", "sbatch --ntasks=8 --cpus-per-task=4 --mem-per-cpu=3G --time=04:00:00 \\"):
        _CLUSTER_JOBS + "allocation script against the local SLURM",
    ("docs/hpc.md", "from dask_jobqueue import SLURMCluster"): _CLUSTER_JOBS + "SLURMCluster against the local SLURM",
    ("docs/performance.md", "PYTHONPATH=$PWD python scripts/bench_mopac_tail.py --repeats 5 --store existing "
                            "--compare /tmp/before --name after"):
        "a benchmark (a minute of MOPAC runs per store mode; needs a copy of the package to compare with)",
    ("docs/performance.md", "$ python scripts/bench.py            # about 11 minutes on 2 cores"):
        "the full benchmark, about 11 minutes",
    ("docs/screening.md", '{"distance": {"2": 9.0, "3": 7.0}, "energy": {}, "metric": "closest",'):
        "printed output (a result's extras, with elisions), not code",
}


def _classified(block: Block) -> Run | str:
    if block.lang in NOT_CODE:
        return NOT_CODE[block.lang]
    if block.key in SKIP:
        return SKIP[block.key]
    if block.key in RUN:
        return RUN[block.key]
    raise AssertionError(f"{block.id} ({block.lang}) starting {block.key[1]!r} is neither in RUN nor in SKIP of "
                         "tests/test_docs.py: run it there, or skip it with a reason")


def test_every_block_is_run_or_skipped() -> None:
    found = blocks()
    for block in found:
        _classified(block)
        assert block.lang in {*NOT_CODE, "python", "bash", "console"}, f"{block.id}: unknown language {block.lang!r}"
    keys = {b.key for b in found}
    stale = sorted((set(RUN) | set(SKIP)) - keys)
    assert not stale, f"RUN/SKIP name blocks no page has any more: {stale}"
    assert len(found) > 30 and sum(1 for b in found if isinstance(_classified(b), Run)) >= 19


# ---------------------------------------------------------------- running the blocks

RUNNABLE = [b for b in blocks() if isinstance(_classified(b), Run)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with docs/examples/ in it, and the result store every block shares."""
    path = tmp_path_factory.mktemp("docs")
    for item in EXAMPLES.iterdir():
        shutil.copy(item, path / item.name)
    return path


@pytest.fixture(scope="module")
def dask_address() -> Any:
    """A local Dask scheduler with one worker declaring cores and memory, started only if a block asks."""
    holder: dict[str, Any] = {}

    def get() -> str:
        if "cluster" not in holder:
            from distributed import LocalCluster

            holder["cluster"] = LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                                             dashboard_address="127.0.0.1:0", resources={"cores": 2, "memory": 2})
        return str(holder["cluster"].scheduler_address)

    yield get
    if "cluster" in holder:
        holder["cluster"].close()


def _text(block: Block, run: Run, workdir: Path, dask: Any) -> str:
    text = block.text
    for pattern, repl in SCALE:
        text = re.sub(pattern, repl, text)
    for old, new in run.subs.items():
        assert old in text, f"{block.id}: substitution {old!r} no longer matches the block"
        text = text.replace(old, new.format(store=workdir / "store.sqlite",
                                            dask=dask() if "{dask}" in new else ""))
    return text


def _needs(run: Run) -> None:
    for name in run.needs:
        if name in ("pyscf", "mopac", "nwchem", "psi4"):
            require_program(name)
        else:
            require_module(name)


def _namespace(block: Block, workdir: Path) -> dict[str, Any]:
    """The names the docs assume are bound."""
    import numpy as np
    from qcelemental.models.v2 import Molecule
    from qcmanybody.models.v2 import ManyBodyInput

    import qcmb_async
    from qcmb_async import run, run_manybody

    inp = qcmb_async._core.inputs.load_input(workdir / "input.json")
    moved = inp.molecule.model_copy(update={"geometry": np.asarray(inp.molecule.geometry) * 1.01})
    ns: dict[str, Any] = {"__name__": "__main__", "qcmb_async": qcmb_async, "run": run, "run_manybody": run_manybody,
                          "ManyBodyInput": ManyBodyInput, "Molecule": Molecule, "inp": inp, "mbe_input": inp,
                          "trimer": Molecule.from_data(WATER_TRIMER),
                          "scan": [inp, inp.model_copy(update={"molecule": moved})]}
    if block.page == "docs/dynamics.md":
        from ase import Atoms

        trimer = ns["trimer"]
        ns["atoms"] = Atoms(list(trimer.symbols), positions=np.asarray(trimer.geometry) * 0.529177210903)
    if block.page == "docs/embedding.md":
        from tests.helpers import waters

        ns["water_hexamer"] = waters(6)
    if block.page == "docs/screening.md":
        ns["inp"] = qcmb_async.read_xyz(workdir / "cluster.xyz", program="mopac", method="pm7", bsse=["nocp"],
                                        max_nbody=4)
    return ns


def _run_python(code_text: str, ns: dict[str, Any], where: str) -> None:
    import anyio

    code = compile(code_text, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:
        async def main() -> None:
            await eval(code, ns)  # the docs' own code

        anyio.run(main)
    else:
        exec(code, ns)  # the docs' own code


def _commands(text: str) -> list[list[str]]:
    """The ``qcmb-async`` commands of a shell block (continuation lines joined, prompts and comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ").strip()
        if not line:
            continue
        words = shlex.split(line, comments=True)
        assert words and words[0] == "qcmb-async", f"a RUN shell block may hold only qcmb-async commands: {line!r}"
        out.append([os.path.expanduser(w) for w in words[1:]])
    return out


@pytest.mark.parametrize("block", [pytest.param(b, marks=[pytest.mark.slow] if RUN[b.key].slow else [], id=b.id)
                                   for b in RUNNABLE])
def test_block_runs(block: Block, workdir: Path, dask_address: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RUN[block.key]
    _needs(run)
    text = _text(block, run, workdir, dask_address)
    store = str(workdir / "store.sqlite")
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("QCMB_ASYNC_STORE", store)
    if block.lang == "python":
        ns = _namespace(block, workdir)
        _run_python(text, ns, block.id)
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QCMB_ASYNC_STORE": store, "COLUMNS": "160"}
    if any(cmd[:2] == ["report", "result.json"] for cmd in _commands(text)) and not (workdir / "result.json").exists():
        # README's `report result.json` reports what cli.md's `run ... --output result.json` wrote.
        subprocess.run([sys.executable, "-m", "qcmb_async", "run", "trimer.xyz", "--program", "pyscf", "--method",
                        "hf", "--basis", "sto-3g", "--bsse", "cp", "--max-nbody", "3", "--ncores", "2", "--output",
                        "result.json"], cwd=workdir, env=env, check=True, capture_output=True, timeout=300)
    for args in _commands(text):
        proc = subprocess.run([sys.executable, "-m", "qcmb_async", *args], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------- generated and listed docs


def _render_hook() -> Any:
    spec = importlib.util.spec_from_file_location("render_models", ROOT / "docs" / "hooks" / "render_models.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook


def test_configuration_tables_are_in_the_file_and_up_to_date() -> None:
    hook = _render_hook()
    for page in hook.PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        assert hook.render(text) == text, f"{page} is out of date: run python docs/hooks/render_models.py"
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert "| `QCMB_ASYNC_QCENGINE_CACHE` |" in text and "| `screening` |" in text
    assert "QCMB_ASYNC_QCENGINE_CACHE" in (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")


def test_dynamics_page_lists_exactly_the_drivers_options() -> None:
    from qcmb_async import _dynamics
    from qcmb_async._runner import run_manybody

    text = (ROOT / "docs" / "dynamics.md").read_text(encoding="utf-8")
    section = text.split("<!-- driver-options -->")[1].split("<!-- /driver-options -->")[0]
    # the option names are the backticked identifiers before any example (`cluster={...}`)
    listed = re.findall(r"`([a-z_]+)`", re.sub(r"\(e\.g\..*?\)", "", section, flags=re.S))
    assert sorted(listed) == sorted(_dynamics.DRIVER_OPTIONS), listed
    refused = text.split("<!-- /driver-options -->")[1].split("On the command line")[0]
    assert sorted(re.findall(r"^\* `([a-z_]+)`", refused, re.M)) == sorted(_dynamics.REFUSED_OPTIONS)
    # every run_manybody keyword is taken or refused by the drivers: a new option forces a decision
    keywords = {n for n, p in inspect.signature(run_manybody).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert keywords == set(_dynamics.DRIVER_OPTIONS) | set(_dynamics.REFUSED_OPTIONS)


def test_tls_example_binds_both_dashboards_to_loopback() -> None:
    text = (ROOT / "docs" / "executors.md").read_text(encoding="utf-8")
    tls = text.split("dask scheduler --protocol tls")[1].split("```")[0]
    scheduler, worker = tls.split("dask worker")
    assert "--dashboard-address 127.0.0.1:" in scheduler or "--no-dashboard" in scheduler
    assert "--dashboard-address 127.0.0.1:" in worker
