"""structlog: fragment fields reach log lines written in worker threads; the library configures nothing."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from qcmb_async import run
from qcmb_async._logs import configure_logging
from tests.helpers import WATER_TRIMER, mbe_input, require_program

ROOT = Path(__file__).resolve().parents[1]
FRAGMENT_FIELDS = ("run_id", "label", "nbody", "program", "cores", "memory")


@pytest.fixture
def restore_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("qcmb_async")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def _lines(stream: StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_worker_thread_lines_carry_the_fragment_fields(restore_logger: logging.Logger) -> None:
    require_program("mopac")
    stream = StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    result = run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=3), ncores=2, fragment_memory=0.5,
                 store=None)
    meta = result.extras["qcmb_async"]
    lines = _lines(stream)  # every line is JSON
    labels = {f["label"] for f in meta["fragments"]}

    computed = [line for line in lines if line["event"] == "qcengine compute returned"]
    assert len(computed) == len(labels) == 7
    for line in computed:
        for key in (*FRAGMENT_FIELDS, "worker", "wall_time"):
            assert key in line, (key, line)
        assert line["run_id"] == meta["run_id"]
        assert line["program"] == "mopac" and line["cores"] == 1 and line["memory"] == 0.5
        assert "worker thread" in line["worker"]  # written in the executor's thread, not the event loop's
    assert {line["label"] for line in computed} == labels
    by_label = {f["label"]: f for f in meta["fragments"]}
    assert all(line["nbody"] == by_label[line["label"]]["level"] for line in computed)

    finished = [line for line in lines if line["event"] == "fragment finished"]
    assert {line["label"] for line in finished} == labels
    for line in finished:
        assert all(key in line for key in (*FRAGMENT_FIELDS, "worker", "wall_time"))
        assert line["level"] == "info"
    # Context never leaks: lines outside a fragment have no fragment label.
    planned = next(line for line in lines if line["event"] == "run planned")
    assert "label" not in planned and planned["run_id"] == meta["run_id"]


def test_console_renderer(restore_logger: logging.Logger) -> None:
    require_program("mopac")
    stream = StringIO()
    configure_logging("console", "INFO", stream=stream)
    run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2), ncores=2, store=None)
    text = stream.getvalue()
    finished = [line for line in text.splitlines() if "fragment finished" in line]
    assert len(finished) == 6
    assert all("label=" in line and "nbody=" in line and "wall_time=" in line for line in finished)
    assert "qcengine compute returned" not in text  # DEBUG is filtered at INFO


def test_the_library_configures_nothing() -> None:
    code = (
        "import logging, qcmb_async, qcmb_async.cli, qcmb_async.progress, qcmb_async.timeline\n"
        "lg = logging.getLogger('qcmb_async')\n"
        "real = [h for h in lg.handlers if not isinstance(h, logging.NullHandler)]\n"
        "print(len(real), lg.level, lg.propagate, len(logging.getLogger().handlers))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["0", "0", "True", "0"]


def test_cli_json_logs_are_json_only(tmp_path: Path) -> None:
    require_program("mopac")
    xyz = tmp_path / "dimer.xyz"
    xyz.write_text("\n".join(WATER_TRIMER.strip().splitlines()[:7]) + "\n")  # two waters, headerless XYZ
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QCMB_ASYNC_STORE": "none"}
    proc = subprocess.run([sys.executable, "-m", "qcmb_async", "run", str(xyz), "--program", "mopac", "--method",
                           "pm7", "--bsse", "nocp", "--log-format", "json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    finished = [line for line in lines if line["event"] == "fragment finished"]
    assert len(finished) == 3 and all(all(k in line for k in FRAGMENT_FIELDS) for line in finished)
    summary = lines[-1]
    assert summary["event"] == "run summary" and summary["computed"] == 3 and summary["failed"] == 0
    assert "uncorrected (nocp)" in proc.stdout


@pytest.fixture
def root_handler() -> Iterator[StringIO]:
    """A root handler as ``logging.basicConfig()`` makes one (PySCF's geomeTRIC driver does), removed after."""
    root = logging.getLogger()
    stream = StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(saved)


def test_records_read_as_lines_under_a_root_handler_someone_else_configured(
        root_handler: StringIO, restore_logger: logging.Logger) -> None:
    """Issue 20: under a plain root handler every qcmb_async event printed as a raw Python dict."""
    from qcmb_async._logs import get_logger

    restore_logger.handlers[:] = []
    restore_logger.propagate = True
    restore_logger.setLevel(logging.DEBUG)
    log = get_logger()
    log.info("fragment finished", label='["(auto)", [1], [1, 2]]', wall_time=0.25, share="50%")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.exception("event callback failed", event_type="LevelComplete")
    text = root_handler.getvalue()
    lines = text.splitlines()
    assert lines[0] == """INFO:qcmb_async:fragment finished  label='["(auto)", [1], [1, 2]]' wall_time=0.25 share=50%"""
    assert lines[1] == "ERROR:qcmb_async:event callback failed  event_type=LevelComplete"
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError: division by zero" in text
    assert "{'" not in text and "'event':" not in text  # no dict repr anywhere


def test_a_real_run_logs_lines_not_dicts_under_a_root_handler(root_handler: StringIO,
                                                              restore_logger: logging.Logger) -> None:
    require_program("mopac")
    restore_logger.handlers[:] = []
    restore_logger.propagate = True
    restore_logger.setLevel(logging.DEBUG)
    run(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2), ncores=2, executor="threads", store=None)
    lines = [line for line in root_handler.getvalue().splitlines() if line.startswith(("DEBUG:qcmb_async:",
                                                                                        "INFO:qcmb_async:"))]
    finished = [line for line in lines if line.split(":", 2)[2].startswith("fragment finished  ")]
    assert len(finished) == 6, lines  # NoCP MBE(2) of the trimer: 3 monomers, 3 dimers
    assert all("label=" in line and "wall_time=" in line for line in finished)
    assert not any("{'" in line for line in lines), [line for line in lines if "{'" in line][:3]


def test_configured_json_and_console_lines_are_unchanged(restore_logger: logging.Logger) -> None:
    """configure_logging renders the event dict itself (JSON fields intact), not the plain line."""
    from qcmb_async._logs import get_logger

    stream = StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    get_logger().info("fragment finished", label="a b", wall_time=0.5)
    (line,) = _lines(stream)
    assert line["event"] == "fragment finished" and line["label"] == "a b" and line["wall_time"] == 0.5
    assert line["level"] == "info" and "timestamp" in line
    stream = StringIO()
    configure_logging("console", "DEBUG", stream=stream)
    get_logger().warning("fragment retried", attempt=2)
    text = stream.getvalue()
    assert "[warning  ] fragment retried" in text and "attempt=2" in text
