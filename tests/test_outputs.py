"""Files the command line writes: whole or not at all, a failure names the path (exit 2); results usable as they are.

A full file system (a real tmpfs, mounted here when root) during ``optimize``: the result store's writes
fail (said once for the whole job, not per fragment or per gradient) and so does ``-o``: exit 2 naming the
path, no truncated file. ``optimize``'s final geometry is the command line's own fragment XYZ, which ``run``
reads back with the same fragments, charges and multiplicities.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import IN_CI, require_module, require_program, stored_ok

ROOT = Path(__file__).resolve().parents[1]

# A water and a hydroxide ion: one fragment charged, so the round trip has a charge to keep.
WATER_HYDROXIDE = """0 1
O -1.551007 -0.114520 0.000000
H -1.934259 0.762503 0.000000
H -0.599677 0.040712 0.000000
--
-1 1
O 1.350625 0.111469 0.000000
H 1.680398 -0.373741 -0.758561
"""
MODEL = ["--program", "pyscf", "--method", "hf", "--basis", "sto-3g", "--bsse", "nocp"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    env.pop("QCMB_ASYNC_STORE", None)
    return env


def test_write_atomic_leaves_the_old_file_when_a_write_fails(tmp_path: Path) -> None:
    from qcmb_async._files import write_atomic

    target = tmp_path / "out.json"
    target.write_text("previous result")
    os.chmod(target, 0o640)

    def half_then_fail(fh: object) -> None:
        fh.write(b"half a res")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as err:
        write_atomic(target, half_then_fail)
    assert err.value.filename == str(target)
    assert target.read_text() == "previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary file left
    write_atomic(target, "new result")
    assert target.read_text() == "new result"
    assert target.stat().st_mode & 0o777 == 0o640  # the file keeps its mode


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if IN_CI:
            pytest.fail("the full-disk test mounts a tmpfs and needs root, but CI=true")
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        if IN_CI:
            pytest.fail(f"cannot mount a tmpfs ({done.stderr.strip()}), but CI=true")
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.slow
def test_full_disk_during_optimize_is_exit_2_naming_the_output(tmp_path: Path) -> None:
    """-o on a full tmpfs, the store on one that fills mid-run: exit 2 naming -o, no -o file, one 'not stored' line."""
    require_module("geometric")
    require_program("pyscf")
    xyz = tmp_path / "in.xyz"
    xyz.write_text(WATER_HYDROXIDE)
    with _tmpfs(tmp_path / "disk", "2m") as disk, _tmpfs(tmp_path / "outdisk", "64k") as outdisk:
        _fill(outdisk)  # full from the start (the checks before the run can still create an empty file there)
        store, out = disk / "store.sqlite", outdisk / "opt.json"
        proc = subprocess.Popen([sys.executable, "-m", "qcmb_async", "optimize", str(xyz), *MODEL, "--ncores", "2",
                                 "--memory", "2", "--store", str(store), "-o", str(out)],
                                env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while proc.poll() is None and stored_ok(store) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # the first gradient's three fragments are in the store ...
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        stop = threading.Event()

        def keep_full() -> None:  # ... then its disk stays full (SQLite frees its log's space between runs)
            while not stop.is_set():
                _fill(disk)
                stop.wait(0.005)

        filler = threading.Thread(target=keep_full, daemon=True)
        filler.start()
        try:
            stdout, stderr = proc.communicate(timeout=600)
        finally:
            stop.set()
            filler.join(10)
        assert proc.returncode == 2, stderr[-3000:]
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1 and str(out) in errors[0] and "could not be written" in errors[0], lines
        assert not out.exists()  # not a 0-byte or truncated file
        assert not [p for p in outdisk.iterdir() if p.name.startswith(".opt.json")]  # nor its temporary file
        assert "unexpected" not in stderr and "Traceback" not in stderr
        # The store's failures (results, run rows) of every later gradient: one line for the whole job.
        store_lines = [ln for ln in lines if "not stored" in ln or "not recorded" in ln]
        assert len(store_lines) == 1, lines
        assert "final energy" in stdout  # the result itself was printed before the write failed


def _fill(directory: Path) -> None:
    """Write into ``directory`` until its file system is full."""
    for size in (65536, 4096, 512):
        with contextlib.suppress(OSError):
            fh = os.open(directory / f"filler-{size}-{time.monotonic_ns()}", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fh, b"\0" * size)
            finally:
                os.close(fh)


@pytest.mark.slow
def test_optimize_final_geometry_feeds_back_into_run(tmp_path: Path) -> None:
    """optimize prints and writes the final geometry as fragment XYZ; run reads it with the same fragments."""
    require_module("geometric")
    require_program("pyscf")
    xyz = tmp_path / "in.xyz"
    xyz.write_text(WATER_HYDROXIDE)
    done = subprocess.run([sys.executable, "-m", "qcmb_async", "optimize", str(xyz), *MODEL, "--ncores", "2",
                           "--memory", "2", "--no-store", "--maxiter", "3", "-o", "opt.json", "--xyz-output",
                           "final.xyz"], env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # converged or not within 3 cycles: both write it
    opt = json.loads((tmp_path / "opt.json").read_text())
    final = (tmp_path / "final.xyz").read_text()
    assert opt["final_xyz"] == final
    # What it prints is the same text (after the "final energy" line), so a copy from the terminal works too.
    printed = done.stdout[done.stdout.index("\n", done.stdout.index("final energy")) + 1:]
    assert printed.strip() == final.strip()
    assert "\n--\n" in final
    (tmp_path / "printed.xyz").write_text(printed)
    for name in ("final.xyz", "printed.xyz"):
        run = subprocess.run([sys.executable, "-m", "qcmb_async", "run", name, *MODEL, "--no-store", "-o",
                              f"{name}.json", "--quiet"], env=_env(), cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        mol = json.loads((tmp_path / f"{name}.json").read_text())["molecule"]
        want = opt["final_molecule"]
        assert [list(f) for f in mol["fragments"]] == [list(f) for f in want["fragments"]] == [[0, 1, 2], [3, 4]]
        assert mol["fragment_charges"] == want["fragment_charges"] == [0.0, -1.0]
        assert mol["fragment_multiplicities"] == want["fragment_multiplicities"] == [1, 1]
        assert mol["symbols"] == want["symbols"]
        # 10 decimals in Å, read back through QCElemental's parser: the geometry comes back to 1e-8 bohr
        # (5e-9 measured; far below any geometry's meaning, and below geomeTRIC's GAU step criteria by 10^5).
        assert np.allclose(np.asarray(mol["geometry"]), np.asarray(want["geometry"]), atol=1e-8, rtol=0)
        # ... and it is the optimized geometry, not the input's (the atoms moved).
        moved = np.abs(np.asarray(mol["geometry"]) - np.asarray(opt["steps"][0]["geometry"]).ravel()).max()
        assert moved > 1e-3, moved
