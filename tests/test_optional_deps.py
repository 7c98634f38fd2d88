"""Every command works from the base install plus the program's extra; a missing optional part is one
clear message with the extra's pip line (exit 2), never an "unexpected ImportError".

A module is made missing the way Python itself spells it: ``sys.modules[name] = None`` (for the
module and every submodule already imported) makes ``import name`` raise ``ImportError``. The
wheel check (scripts/check_wheel.sh) does the same for real in a fresh virtual environment with only
the base install and ``[pyscf]``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.helpers import WATER_TRIMER, require_module, require_program

#: The first two waters of the trimer the other tests use, as an XYZ file with a fragment separator.
DIMER_XYZ = "6\nwater dimer\n" + "--\n".join(WATER_TRIMER.strip().split("--\n")[:2])
PYSCF_HF = ["--program", "pyscf", "--method", "hf", "--basis", "sto-3g"]


def hide(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``import name`` (and any ``name.sub``) raise ImportError for this test."""
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Any]:
    """Invoke ``qcmb-async`` in this process (so hidden modules stay hidden) in ``tmp_path``."""
    from qcmb_async.cli import app

    logger = logging.getLogger("qcmb_async")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    (tmp_path / "w.xyz").write_text(DIMER_XYZ)

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(app, [a.replace("{dir}", str(tmp_path)) for a in args])

    yield invoke
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def assert_usage(res: Any, *fragments: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr, res.exception)
    assert res.stderr.startswith("error: "), res.stderr
    assert "unexpected" not in res.stderr and "Traceback" not in res.stderr, res.stderr
    for text in fragments:
        assert text in res.stderr, res.stderr


def test_plan_without_trio_still_plans(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    require_program("pyscf")
    hide(monkeypatch, "trio")
    res = cli("plan", "{dir}/w.xyz", *PYSCF_HF, "--bsse", "cp", "--no-store")
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    # CP dimer: two monomers in the dimer basis and the dimer itself.
    assert "total" in res.stdout and " 3 " in res.stdout.split("total")[1].splitlines()[0]
    assert "predicted wall time: not available" in res.stdout and "pip install trio" in res.stdout


def test_timeline_without_matplotlib_is_a_usage_error(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    require_program("pyscf")
    hide(monkeypatch, "matplotlib")
    res = cli("run", "{dir}/w.xyz", *PYSCF_HF, "--no-store", "--timeline", "{dir}/t.png")
    assert_usage(res, "--timeline", "pip install 'qcmb_async[timeline]'")
    from qcmb_async.timeline import plot_timeline

    with pytest.raises(ImportError, match=r"pip install 'qcmb_async\[timeline\]'"):
        plot_timeline({"fragments": []}, None)


@pytest.mark.parametrize("missing", ["matplotlib", "threadpoolctl"])
def test_run_and_report_without(missing: str, cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """run and report need neither matplotlib nor threadpoolctl (PySCF's BLAS cap, an optional speed-up; threads
    executor, so the PySCF harness runs in this process). The numbers come from PySCF directly (no-CP 2-body
    interaction energy of the dimer)."""
    pyscf = require_module("pyscf")
    hide(monkeypatch, missing)
    res = cli("run", "{dir}/w.xyz", *PYSCF_HF, "--bsse", "nocp", "--no-store", "-q", "-o", "{dir}/r.json",
              "--executor", "threads")
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    rep = cli("report", "{dir}/r.json")
    assert rep.exit_code == 0, (rep.stdout, rep.stderr, rep.exception)

    atoms = [line for line in DIMER_XYZ.splitlines()[2:] if line.strip() != "--"]

    def hf(lines: list[str]) -> float:
        mol = pyscf.gto.M(atom="\n".join(lines), basis="sto-3g", unit="Angstrom", verbose=0)
        return float(pyscf.scf.RHF(mol).run().e_tot)

    expected = hf(atoms) - hf(atoms[:3]) - hf(atoms[3:])
    import json

    result = json.loads((tmp_path / "r.json").read_text())
    assert result["return_result"] == pytest.approx(expected, abs=1e-7)
    assert f"{expected:.10f}" in rep.stdout


def test_dask_executor_without_distributed(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    require_program("pyscf")
    hide(monkeypatch, "distributed")
    res = cli("run", "{dir}/w.xyz", *PYSCF_HF, "--no-store", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9")
    assert_usage(res, "qcmb_async[dask]")


def test_cluster_without_dask_jobqueue(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    require_program("pyscf")
    require_module("distributed")
    hide(monkeypatch, "dask_jobqueue")
    res = cli("run", "{dir}/w.xyz", *PYSCF_HF, "--no-store", "--cluster", "slurm")
    assert_usage(res, "needs dask-jobqueue", "pip install 'qcmb_async[hpc]'")


def test_cluster_tls_without_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    require_module("distributed")
    from qcmb_async.errors import InputError
    from qcmb_async.executors import hpc

    hide(monkeypatch, "cryptography")
    with pytest.raises(InputError, match=r"pip install 'qcmb_async\[hpc\]'"):
        hpc._security(hpc.cluster_options("slurm"))


def test_ase_calculator_without_ase(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "ase")
    monkeypatch.delitem(sys.modules, "qcmb_async.ase", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'qcmb_async\[ase\]'"):
        import qcmb_async.ase  # noqa: F401


def test_optimize_without_geometric(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    require_program("pyscf")
    hide(monkeypatch, "geometric")
    res = cli("optimize", "{dir}/w.xyz", *PYSCF_HF, "--no-store")
    assert_usage(res, "pip install 'qcmb_async[opt]'")
    from qcmb_async import optimize_sync
    from tests.helpers import mbe_input

    with pytest.raises(ModuleNotFoundError, match=r"pip install 'qcmb_async\[opt\]'"):
        optimize_sync(mbe_input("pyscf", "hf", "sto-3g", driver="gradient", max_nbody=1))


def test_dispersion_without_pyscf_dispersion(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    require_program("pyscf")
    hide(monkeypatch, "pyscf.dispersion")
    res = cli("plan", "{dir}/w.xyz", "--program", "pyscf", "--method", "b3lyp-d3bj", "--basis", "sto-3g",
              "--no-store")
    assert_usage(res, "pyscf-dispersion")


def test_version_names_the_stack_and_the_programs(cli: Any) -> None:
    import importlib.metadata

    from qcmb_async import __version__

    res = cli("--version")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"qcmb-async {__version__}"
    for dist in ("qcengine", "qcmanybody", "qcelemental"):
        assert any(line.split() == [dist, importlib.metadata.version(dist)] for line in lines), res.stdout
    for program in ("pyscf", "tblite", "nwchem", "mopac", "psi4"):
        (line,) = [x for x in lines if x.split()[:1] == [program]]
        assert line.split(maxsplit=1)[1] == "not found" or line.split()[1][0].isdigit() or "found at /" in line


def test_importing_the_package_and_its_cli_loads_no_optional_module() -> None:
    """Optional modules are imported where their feature is used, never by ``import qcmb_async`` or the CLI's
    start-up: a fresh interpreter (this test process may have imported them already)."""
    import subprocess

    optional = ["matplotlib", "distributed", "dask", "dask_jobqueue", "cryptography", "ase", "geometric", "pyscf",
                "tblite", "threadpoolctl", "mkdocs", "xtb"]
    code = ("import sys, qcmb_async, qcmb_async.cli, qcmb_async.store, qcmb_async.events, qcmb_async.progress, "
            f"qcmb_async.timeline, qcmb_async.simulate; print([m for m in {optional!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
