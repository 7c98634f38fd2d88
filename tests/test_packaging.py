"""What the built wheel and sdist carry: the typing marker, the licence, the console script, one version.

Installing the wheel in a fresh virtual environment and running it is scripts/check_wheel.sh (make test).
"""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("qcmb_async-*-py3-none-any.whl")
    (sdist,) = out.glob("qcmb_async-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def _version() -> str:
    namespace: dict[str, Any] = {}
    exec((ROOT / "qcmb_async" / "_version.py").read_text(), namespace)
    return str(namespace["__version__"])


@pytest.mark.slow
def test_wheel_contents(dists: dict[str, Path]) -> None:
    version = _version()
    assert dists["wheel"].name == f"qcmb_async-{version}-py3-none-any.whl"
    with zipfile.ZipFile(dists["wheel"]) as zf:
        names = set(zf.namelist())
        info = f"qcmb_async-{version}.dist-info"
        assert "qcmb_async/py.typed" in names
        assert f"{info}/licenses/LICENSE" in names
        assert "Neither the name of the copyright holder" in zf.read(f"{info}/licenses/LICENSE").decode()
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        meta = email.parser.Parser().parsestr(zf.read(f"{info}/METADATA").decode())
    assert "[console_scripts]" in entry_points and "qcmb-async = qcmb_async.cli:app" in entry_points
    assert meta["Version"] == version
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert meta["Requires-Python"] == PYPROJECT["project"]["requires-python"]
    assert "Typing :: Typed" in meta.get_all("Classifier")
    extras = set(meta.get_all("Provides-Extra"))
    assert {"pyscf", "xtb", "dask", "hpc", "ase", "opt", "docs", "test"} <= extras
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("pyscf-dispersion") and 'extra == "pyscf"' in r for r in requires)
    assert any(r.startswith("tblite") and 'extra == "xtb"' in r for r in requires)
    # trio is a base dependency: `plan` predicts the wall time on trio's virtual clock.
    assert any(r.startswith("trio") and "extra" not in r for r in requires)


@pytest.mark.slow
def test_sdist_contents(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "qcmb_async/py.typed",
            "qcmb_async/_version.py"} <= names


def test_the_test_extra_installs_every_feature() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    (self_ref,) = [r for r in extras["test"] if r.startswith("qcmb_async[")]
    named = set(self_ref[len("qcmb_async["):-1].split(","))
    assert named == set(extras) - {"test"}, "the test extra must pull in every other extra"
    assert any(r.startswith("build") for r in extras["test"]) and any(r.startswith("twine") for r in extras["test"])
