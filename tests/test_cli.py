"""The ``qcmb-async`` command line, tried as a new user would: subprocess runs on real MOPAC inputs."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from qcelemental.models.v2 import Molecule

from qcmb_async import events as ev
from qcmb_async import run
from qcmb_async.cli import energy_rows, format_eh, format_kcal
from qcmb_async.progress import ProgressDisplay
from tests.helpers import IN_CI, WATER_TRIMER, mbe_input, require_program

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QCMB_ASYNC_STORE": "none", "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "qcmb_async", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def write_trimer_xyz(path: Path, fragments: bool = True) -> Path:
    lines = [line for line in WATER_TRIMER.strip().splitlines() if fragments or line.strip() != "--"]
    natoms = sum(1 for line in lines if line.strip() != "--")
    path.write_text(f"{natoms}\nwater trimer\n" + "\n".join(lines) + "\n")
    return path


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for text in fragments:
        assert text in proc.stderr, (text, proc.stderr)


@pytest.fixture(scope="module")
def xyz_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One CLI run of the water trimer (NWChem HF/STO-3G, CP, 3-body) with --output and --timeline.

    NWChem, not MOPAC: CP needs a program that places ghost atoms (MOPAC's harness cannot; refused)."""
    require_program("nwchem")
    tmp = tmp_path_factory.mktemp("xyz")
    xyz = write_trimer_xyz(tmp / "trimer.xyz")
    proc = cli("run", str(xyz), "--program", "nwchem", "--method", "hf", "--basis", "sto-3g", "--bsse", "cp",
               "--max-nbody", "3",
               "--ncores", "2", "--no-store", "--output", "result.json", "--timeline", "timeline.png", cwd=tmp)
    return {"proc": proc, "dir": tmp}


def test_run_xyz_prints_the_direct_run_energies(xyz_run: dict[str, Any]) -> None:
    proc = xyz_run["proc"]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    direct = run(mbe_input("nwchem", "hf", "sto-3g", bsse="cp", max_nbody=3), ncores=2, store=None)
    props = direct.properties
    for n in (2, 3):
        value = getattr(props, f"cp_corrected_interaction_energy_through_{n}_body")
        line = next(line for line in proc.stdout.splitlines() if f"interaction energy through {n}-body" in line)
        assert format_eh(value) in line and format_kcal(value) in line, (line, value)
    contrib = props.cp_corrected_3_body_contribution_to_energy
    assert "3-body contribution" in proc.stdout and format_eh(contrib) in proc.stdout
    assert "counterpoise-corrected (cp)" in proc.stdout
    # CP alone has no total energies; the table must not invent any.
    assert "total energy through" not in proc.stdout
    assert "7/7 fragments done (7 computed, 0 failed)" in proc.stderr


def test_run_output_and_timeline_files(xyz_run: dict[str, Any]) -> None:
    from qcmanybody.models.v2 import ManyBodyResult

    assert xyz_run["proc"].returncode == 0, xyz_run["proc"].stderr
    result = ManyBodyResult.model_validate_json((xyz_run["dir"] / "result.json").read_text())
    assert len(result.extras["qcmb_async"]["fragments"]) == 7
    assert format_eh(result.properties.return_energy) in xyz_run["proc"].stdout
    png = xyz_run["dir"] / "timeline.png"
    assert png.stat().st_size > 5000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_result_json(xyz_run: dict[str, Any]) -> None:
    assert xyz_run["proc"].returncode == 0, xyz_run["proc"].stderr
    from qcmanybody.models.v2 import ManyBodyResult

    result = ManyBodyResult.model_validate_json((xyz_run["dir"] / "result.json").read_text())
    proc = cli("report", "result.json", cwd=xyz_run["dir"])
    assert proc.returncode == 0, proc.stderr
    # The same energy table as the run printed.
    run_table = [line for line in xyz_run["proc"].stdout.splitlines() if "energy through" in line]
    assert run_table and all(line in proc.stdout for line in run_table)
    # Per-fragment timings: one row per fragment with level, status, attempts, wall time, worker.
    for frag in result.extras["qcmb_async"]["fragments"]:
        row = next(line for line in proc.stdout.splitlines() if line.strip().startswith(frag["label"]))
        cells = row.split()
        assert f"{frag['end'] - frag['start']:.3f}" in cells
        assert str(frag["level"]) in cells and "ok" in cells
        assert frag["worker"] in row
    assert "efficiency" in proc.stdout and "makespan" in proc.stdout



def _nan_energy(data: dict[str, Any]) -> None:
    data["return_result"] = float("nan")
    key = next(k for k in data["properties"] if "interaction_energy_through_2_body" in k)
    data["properties"][key] = float("inf")


#: A result JSON edited by hand: the records run --output writes, broken one way each.
BROKEN_RESULTS = [
    ("fragments not a list", lambda d: d["extras"]["qcmb_async"].update(fragments={"a": 1}), "malformed"),
    ("records not a dict", lambda d: d["extras"].update(qcmb_async=[1, 2]), "malformed"),
    ("record label a dict", lambda d: d["extras"]["qcmb_async"]["fragments"][0].update(label={"x": 1}), "label"),
    ("record start a word", lambda d: d["extras"]["qcmb_async"]["fragments"][0].update(start="soon"), "start"),
    ("fragments missing", lambda d: d["extras"]["qcmb_async"].pop("fragments"), "fragments"),
    ("nan energies", _nan_energy, "NaN or infinite value at return_result"),
]


@pytest.mark.parametrize(("case", "edit", "message"), BROKEN_RESULTS, ids=[c for c, _, _ in BROKEN_RESULTS])
def test_report_refuses_a_broken_result_json(xyz_run: dict[str, Any], tmp_path: Path, restore_logger: None,
                                             case: str, edit: Any, message: str) -> None:
    from typer.testing import CliRunner

    from qcmb_async.cli import app

    assert xyz_run["proc"].returncode == 0, xyz_run["proc"].stderr
    data = json.loads((xyz_run["dir"] / "result.json").read_text())
    edit(data)
    (tmp_path / "broken.json").write_text(json.dumps(data))  # json writes NaN/Infinity as such
    res = CliRunner().invoke(app, ["report", str(tmp_path / "broken.json")])
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert res.stderr.startswith("error: ") and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "unexpected" not in res.stderr
    assert "nan" not in res.stdout.lower() and "inf" not in res.stdout.lower()

def test_run_json_input_matches_direct_run(tmp_path: Path) -> None:
    require_program("nwchem")
    inp = tmp_path / "input.json"
    inp.write_text(mbe_input("nwchem", "hf", "sto-3g", bsse=["nocp", "cp"], max_nbody=2).model_dump_json())
    proc = cli("run", str(inp), "--ncores", "2", "--fragment-ncores", "1", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet: no progress, no summary, no logs
    direct = run(str(inp), ncores=2, store=None)
    rows = energy_rows(direct.properties)
    assert set(rows) == {"cp", "nocp"}
    for bsse in ("nocp", "cp"):
        for n, kind, value in rows[bsse]:
            assert format_eh(value) in proc.stdout, (bsse, n, kind)
    nocp_total = direct.properties.nocp_corrected_total_energy_through_2_body
    line = next(line for line in proc.stdout.splitlines() if "total energy through 2-body" in line)
    assert format_eh(nocp_total) in line
    assert proc.stdout.index("uncorrected (nocp)") < proc.stdout.index("counterpoise-corrected (cp)")


def test_plan_counts_and_computes_nothing(tmp_path: Path) -> None:
    require_program("mopac")
    xyz = write_trimer_xyz(tmp_path / "trimer.xyz")
    proc = cli("plan", str(xyz), "--program", "mopac", "--method", "pm7", "--bsse", "nocp", "--max-nbody", "3",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()
            if line.strip()[:1].isdigit() or line.strip().startswith("total")}
    assert rows["1"][1:5] == ["(auto)", "mopac", "pm7", "3"]
    assert rows["2"][4] == "3" and rows["3"][4] == "1" and rows["total"][1] == "7"
    assert "3 fragments, 9 atoms; driver energy; BSSE nocp; max_nbody 3" in proc.stdout
    assert "nothing was computed" in proc.stdout
    assert list(tmp_path.iterdir()) == [xyz]


def test_plan_in_process_never_calls_qcengine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              restore_logger: None) -> None:
    import qcengine
    from typer.testing import CliRunner

    from qcmb_async.cli import app

    require_program("nwchem")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("plan must not compute")

    monkeypatch.setattr(qcengine, "compute", boom)
    xyz = write_trimer_xyz(tmp_path / "trimer.xyz")
    res = CliRunner().invoke(app, ["plan", str(xyz), "--program", "nwchem", "--method", "hf", "--basis", "sto-3g",
                                   "--bsse", "cp,nocp",
                                   "--max-nbody", "2"])
    assert res.exit_code == 0, res.output
    assert "BSSE cp, nocp; max_nbody 2" in res.output


@pytest.fixture
def restore_logger() -> Any:
    logger = logging.getLogger("qcmb_async")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


#: Tried as a new user would: a subprocess each (run concurrently).
BAD_INPUTS = [
    ("missing file", ["run", "nope.json"], "input file 'nope.json' does not exist"),
    ("bad json", ["run", "bad.json"], "input file 'bad.json' is not valid JSON"),
    ("xyz without fragments", ["run", "flat.xyz", "--program", "mopac", "--method", "pm7"],
     "has a single fragment: a many-body expansion needs at least two"),
    ("unknown program", ["run", "trimer.xyz", "--program", "no-such-program", "--method", "pm7"],
     "unknown program 'no-such-program'"),
    ("negative cores", ["run", "trimer.xyz", "--program", "mopac", "--method", "pm7", "--ncores", "-1"],
     "ncores must be positive, got -1"),
    ("usage: no input", ["run"], "Missing argument 'INPUT'"),
    ("usage: unknown option", ["plan", "trimer.xyz", "--frobnicate"], "No such option: --frobnicate"),
]
#: The same checks in-process (typer's CliRunner), which saves a cold start each.
MORE_BAD_INPUTS = [
    ("xyz without method", ["run", "trimer.xyz", "--program", "mopac"], "an XYZ input needs --method"),
    ("xyz options on json", ["run", "bad.json", "--method", "pm7"], "--method applies to .xyz inputs only"),
    ("bad bsse", ["plan", "trimer.xyz", "--program", "mopac", "--method", "pm7", "--bsse", "cp,xx"],
     "unknown BSSE treatment 'xx'"),
    ("bad keywords", ["plan", "trimer.xyz", "--program", "mopac", "--method", "pm7", "--keywords", "{x"],
     "--keywords is not valid JSON"),
    ("bad charges", ["plan", "trimer.xyz", "--program", "mopac", "--method", "pm7", "--charge", "0,1"],
     "--charge got 2 values for 3 fragments"),
    ("odd electrons", ["plan", "trimer.xyz", "--program", "mopac", "--method", "pm7", "--charge", "1"],
     "has 9 electrons, so its multiplicity must be one of 2, 4, 6"),
    ("store and no store", ["run", "trimer.xyz", "--program", "mopac", "--method", "pm7", "--store", "s.sqlite",
                            "--no-store"], "--store and --no-store contradict each other"),
    ("missing output dir", ["run", "trimer.xyz", "--program", "mopac", "--method", "pm7", "-o", "no/dir/r.json"],
     "directory"),
    # Output paths are checked before anything runs: a failure there must not throw away a finished run.
    *((f"output {case}", ["run", "trimer.xyz", "--program", "mopac", "--method", "pm7", *opts], message)
      for case, opts, message in [
          ("is a directory", ["-o", "."], "--output '.' is a directory"),
          ("unwritable", ["-o", "/proc/r.json"], "--output '/proc/r.json' cannot be written"),
          ("under a file", ["-o", "trimer.xyz/r.json"], "trimer.xyz' is not a directory"),
          ("timeline format", ["--timeline", "tl.txt"], "matplotlib cannot write .txt files; use one of"),
          ("timeline is a directory", ["--timeline", "."], "--timeline '.' is a directory"),
          ("is the input", ["-o", "trimer.xyz"], "is the input file"),
          ("symlink to the input", ["-o", "link.xyz"], "is the input file"),
          ("hard link to the input", ["-o", "hard.xyz"], "is the input file"),
          ("timeline is the input", ["--timeline", "./trimer.xyz"], "--timeline 'trimer.xyz' is the input"),
          ("is the timeline", ["-o", "same.png", "--timeline", "./same.png"], "are the same file"),
      ]),
    ("empty bsse", ["plan", "trimer.xyz", "--program", "mopac", "--method", "pm7", "--bsse", ""],
     "the BSSE list is empty"),
    ("empty store", ["run", "trimer.xyz", "--program", "mopac", "--method", "pm7", "--store", ""],
     "--store is empty"),
    ("dask without a scheduler", ["run", "trimer.xyz", "--program", "mopac", "--method", "pm7", "--bsse", "nocp",
                                  "--executor", "dask", "--no-store"], "--scheduler tcp://host:8786"),
    ("plan a result store", ["plan", "foreign.sqlite"], "is an SQLite database (a qcmb_async result store?)"),
    ("molecule json", ["plan", "molecule.json"], "is a molecule, not a ManyBodyInput"),
    ("report missing", ["report", "nope.json"], "'nope.json' does not exist"),
    ("report an input", ["report", "input.json"], "is a ManyBodyInput, not a result"),
    ("report a binary file", ["report", "junk.bin"], "is neither a result JSON (run --output) nor a result store"),
    ("report a foreign sqlite", ["report", "foreign.sqlite"], "but not a qcmb_async store"),
]


def _bad_files(tmp: Path) -> Path:
    write_trimer_xyz(tmp / "trimer.xyz")
    write_trimer_xyz(tmp / "flat.xyz", fragments=False)
    (tmp / "link.xyz").symlink_to("trimer.xyz")
    os.link(tmp / "trimer.xyz", tmp / "hard.xyz")
    (tmp / "bad.json").write_text('{"molecule": ')
    (tmp / "input.json").write_text(mbe_input("mopac", "pm7", None, bsse="nocp").model_dump_json())
    (tmp / "junk.bin").write_bytes(bytes(range(128, 256)))
    (tmp / "molecule.json").write_text(Molecule.from_data(WATER_TRIMER).model_dump_json())
    con = sqlite3.connect(tmp / "foreign.sqlite")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    return tmp


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every subprocess bad-input case plus one with --debug, run concurrently (each is a ~2 s cold start)."""
    tmp = _bad_files(tmp_path_factory.mktemp("bad"))
    cases = [*((case, args) for case, args, _ in BAD_INPUTS), ("debug", ["run", "nope.json", "--debug"])]
    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 1) + 1)) as pool:
        futures = {case: pool.submit(cli, *args, cwd=tmp) for case, args in cases}
    return {case: fut.result() for case, fut in futures.items()}


@pytest.mark.parametrize(("case", "args", "message"), BAD_INPUTS, ids=[c for c, _, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_a_message(bad_runs: dict[str, Any], case: str, args: list[str],
                                          message: str) -> None:
    proc = bad_runs[case]
    assert_clean_error(proc, 2, message)
    if not case.startswith("usage"):
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stdout == ""


@pytest.mark.parametrize(("case", "args", "message"), MORE_BAD_INPUTS, ids=[c for c, _, _ in MORE_BAD_INPUTS])
def test_more_bad_inputs_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logger: None, case: str,
                                args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from qcmb_async.cli import app

    monkeypatch.chdir(_bad_files(tmp_path))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert res.stderr.startswith("error: ") and message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_debug_shows_the_traceback(bad_runs: dict[str, Any]) -> None:
    proc = bad_runs["debug"]
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "InputError" in proc.stderr
    assert "error: input file 'nope.json' does not exist" in proc.stderr


def test_failed_computation_exits_1(tmp_path: Path) -> None:
    require_program("mopac")
    xyz = write_trimer_xyz(tmp_path / "trimer.xyz")
    # In QCEngine's list of MOPAC methods (so not refused up front), unknown to this MOPAC: fails at run time.
    args = ["run", str(xyz), "--program", "mopac", "--method", "pm6-3dh4x", "--bsse", "nocp", "--ncores", "2"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        stop = pool.submit(cli, *args, cwd=tmp_path)
        cont = pool.submit(cli, *args, "--on-error", "continue", "--output", "partial.json", cwd=tmp_path)
    proc = stop.result()
    assert_clean_error(proc, 1, "(n-body level ", "program mopac) failed: ",
                       'The method requested: "PM6-3DH4X" does not exist.')
    proc = cont.result()
    assert_clean_error(proc, 1, "error: 7 fragment(s) failed; complete n-body levels: none.")
    assert proc.stderr.count('The method requested: "PM6-3DH4X" does not exist.') == 7
    assert "fragment failed" not in proc.stderr  # no log lines repeating the paragraph on a quiet console
    assert not (tmp_path / "partial.json").exists()  # nothing complete, nothing written


def test_report_store(tmp_path: Path) -> None:
    """``run --store`` then ``report STORE`` lists the run and its fragments."""
    require_program("mopac")
    try:
        import qcmb_async._core.store  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("qcmb_async._core.store is missing, but CI=true")
        pytest.skip("the result store is not in this checkout yet")
    from qcmb_async import plan_manybody

    xyz = write_trimer_xyz(tmp_path / "trimer.xyz")
    proc = cli("run", str(xyz), "--program", "mopac", "--method", "pm7", "--bsse", "nocp", "--max-nbody", "2",
               "--store", "s.sqlite",
               "--ncores", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = cli("report", "s.sqlite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    labels = [f.label for f in plan_manybody(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2)).fragments]
    n = len(labels)
    assert f"1 run(s); {n} fragment record(s), {n} ok" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.strip().startswith('["(auto)"')]
    assert sorted(row.split("]]")[0].strip() + "]]" for row in rows) == sorted(labels)
    assert all(" ok " in row and "worker thread" in row for row in rows)
    assert "fragments (mopac)" in proc.stdout


# -- the progress display (no programs needed) -------------------------------------------------
def _events() -> list[Any]:
    rid = "r1"
    return [
        ev.RunStarted(rid, 3, {1: 2, 2: 1}, 2, 4.0),
        ev.FragmentStarted(rid, "a", 1, "mopac", 1, 1.0, 1),
        ev.FragmentFinished(rid, "a", 1, "mopac", 0.1, "w"),
        ev.FragmentStarted(rid, "b", 1, "mopac", 1, 1.0, 1),
        ev.FragmentRetried(rid, "b", 1, "mopac", 1, "random_error", "boom", 0.0),
        ev.FragmentFinished(rid, "b", 1, "mopac", 0.1, "w"),
        ev.LevelComplete(rid, 1, 2, 2),
        ev.FragmentFailed(rid, "ab", 2, "mopac", 1, "input_error", "bad"),
        ev.LevelComplete(rid, 2, 1, 1),
        ev.RunFinished(rid, 2, 1, 1.5),
    ]


def _console(terminal: bool) -> Any:
    from rich.console import Console

    return Console(file=StringIO(), force_terminal=terminal, force_jupyter=False, width=120)


def test_progress_not_a_terminal_prints_only_the_final_line() -> None:
    console = _console(False)
    with ProgressDisplay(console) as progress:
        for event in _events():
            progress(event)
    assert not progress.live
    out = console.file.getvalue()
    assert out == "run r1: 3/3 fragments done (2 computed, 1 failed, 1 retries) in 1.50 s\n"
    assert (progress.done, progress.failed, progress.retried) == (3, 1, 1)


def test_progress_quiet_prints_nothing() -> None:
    console = _console(True)
    with ProgressDisplay(console, quiet=True) as progress:
        for event in _events():
            progress(event)
    assert console.file.getvalue() == ""
    assert len(progress.events) == len(_events())


def test_progress_terminal_draws_overall_and_level_bars() -> None:
    console = _console(True)
    with ProgressDisplay(console) as progress:
        for event in _events():
            progress(event)
    assert progress.live
    out = console.file.getvalue()
    for text in ("all fragments", "1-body", "2-body", "3/3", "2/2", "1/1", "1 failed", "1 retried", "ETA"):
        assert text in out, text
    assert out.rstrip().endswith("3/3 fragments done (2 computed, 1 failed, 1 retries) in 1.50 s")


def _step_events() -> list[Any]:
    geom = ((0.0, 0.0, 0.0), (0.0, 0.0, 1.8))
    return [
        ev.StepStarted("optimize", 1, geom),
        ev.RunStarted("r1", 3, {1: 2, 2: 1}, 2, 2.0),
        ev.FragmentFinished("r1", "a", 1, "pyscf", 0.0, "store", cached=True),
        ev.FragmentFinished("r1", "b", 1, "pyscf", 0.2, "h:1:1"),
        ev.FragmentFinished("r1", "c", 2, "pyscf", 0.4, "h:1:2"),
        ev.RunFinished("r1", 3, 0, 0.5),
        ev.StepFinished("optimize", 1, -149.935375926, 2.53e-2, 5.07e-2, 2, 1, 0.61, "r1"),
        ev.StepStarted("optimize", 2, geom),
        ev.RunStarted("r2", 3, {1: 2, 2: 1}, 2, 2.0),
    ]


def test_steps_not_a_terminal_print_one_line_per_finished_step() -> None:
    from qcmb_async.progress import StepDisplay

    console = _console(False)
    with StepDisplay(console) as display:
        for event in _step_events():
            display(event)
    assert not display.live
    assert console.file.getvalue() == ("step   1  E = -149.9353759260 Eh  grad rms 2.53e-02 max 5.07e-02 Eh/bohr  "
                                       "fragments computed 2, from the store 1  0.61 s\n")
    assert [e.step for e in display.steps] == [1]


def test_steps_terminal_draws_a_bar_for_the_step_in_flight() -> None:
    from qcmb_async.progress import StepDisplay

    console = _console(True)
    with StepDisplay(console) as display:
        for event in _step_events():
            display(event)
        drawn = console.file.getvalue()
    assert display.live
    for text in ("step 1", "3/3", "1 from the store", "step 2", "0/3"):
        assert text in drawn, text
    assert "step   1  E = -149.9353759260 Eh" in drawn


def test_energy_rows_vmfc_orders_levels() -> None:
    props = {"vmfc_corrected_total_energy_through_1_body": -1.0,
             "vmfc_corrected_2_body_contribution_to_energy": 0.1,
             "vmfc_corrected_interaction_energy_through_2_body": 0.1,
             "vmfc_corrected_total_energy_through_2_body": -0.9,
             "cp_corrected_interaction_energy_through_2_body": None,
             "return_energy": -0.9}
    rows = energy_rows(props)
    assert list(rows) == ["vmfc"]
    assert rows["vmfc"] == [(1, "total", -1.0), (2, "total", -0.9), (2, "interaction", 0.1), (2, "contribution", 0.1)]
    assert json.dumps(rows)
