"""Small in-process fragments (tblite, xtb) on the default executor, and tblite without QCEngine's per-call cost.

Expected values come from QCEngine's own route (``qcengine.compute`` with our harness registered), tblite's
and xtb's Python APIs called here, and QCManyBody's sequential computer.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qcelemental.models.v2 import AtomicInput

import qcmb_async
from qcmb_async.executors import resolve_executor
from tests.helpers import mbe_input, require_module, require_program
from tests.test_tblite import waters_grid


class _Options:
    slots = 2


def _dump(result: Any) -> dict[str, Any]:
    """A result as JSON data without the one field that differs between two calls: the wall time."""
    data = json.loads(result.model_dump_json())
    for holder in (data, data.get("input_data") or {}):
        (holder.get("provenance") or {}).pop("wall_time", None)
    return data


def _direct_and_qcengine(inp: AtomicInput) -> tuple[Any, Any]:
    import qcengine

    from qcmb_async._qcengine.worker import prepare_worker
    from qcmb_async.harnesses import direct_runner

    prepare_worker()
    run = direct_runner("tblite")
    assert run is not None
    before = inp.model_dump_json()
    direct = run(inp, {"ncores": 1, "memory": 1.0})
    assert inp.model_dump_json() == before  # the caller's input is untouched
    via = qcengine.compute(inp.model_copy(deep=True), "tblite", raise_error=False,
                           task_config={"ncores": 1, "memory": 1.0}, return_version=2)
    return direct, via


@pytest.mark.parametrize("driver", ["energy", "gradient"])
def test_direct_tblite_route_returns_what_qcengine_compute_returns(driver: str) -> None:
    require_program("tblite")
    from tblite.interface import Calculator

    mol = waters_grid(3)
    inp = AtomicInput(molecule=mol, specification={"driver": driver, "model": {"method": "gfn2-xtb"},
                                                    "program": "tblite", "keywords": {"accuracy": 0.5}})
    direct, via = _direct_and_qcengine(inp)
    assert direct.success and via.success
    assert _dump(direct) == _dump(via)
    assert direct.provenance.wall_time > 0 and direct.provenance.hostname == via.provenance.hostname
    # and against tblite run here
    calc = Calculator("GFN2-xTB", np.asarray(mol.atomic_numbers), np.asarray(mol.geometry).reshape(-1, 3),
                      color=False, logger=lambda _msg: None)
    calc.set("verbosity", 0)
    calc.set("accuracy", 0.5)
    res = calc.singlepoint()
    assert abs(direct.properties.return_energy - res.get("energy")) < 1e-12
    if driver == "gradient":
        assert np.abs(np.asarray(direct.return_result) - res.get("gradient")).max() < 1e-12


@pytest.mark.parametrize("keywords", [{"max_iterations": 1}, {"solvent": "no-such-solvent"}])
def test_direct_tblite_route_fails_as_qcengine_compute_does(keywords: dict[str, Any]) -> None:
    require_program("tblite")
    inp = AtomicInput(molecule=waters_grid(2), specification={"driver": "energy", "model": {"method": "gfn2-xtb"},
                                                              "program": "tblite", "keywords": keywords})
    direct, via = _direct_and_qcengine(inp)
    assert not direct.success and not via.success
    assert direct.error.error_type == via.error.error_type
    assert direct.error.error_message == via.error.error_message
    assert _dump(direct) == _dump(via)


def test_auto_runs_gil_free_thread_safe_programs_on_threads(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="qcmb_async"):
        assert resolve_executor("auto", {"tblite"}, _Options()).name == "threads"
        assert resolve_executor("auto", {"xtb", "tblite"}, _Options()).name == "threads"
    reasons = [str(r.__dict__) for r in caplog.records if "executor chosen" in r.getMessage()]
    assert len(reasons) == 2 and all("release the GIL and are thread-safe" in r for r in reasons)
    # PySCF holds the GIL in Python code and keeps process-global state: worker processes, alone or mixed.
    assert resolve_executor("auto", {"pyscf"}, _Options()).name == "processes"
    assert resolve_executor("auto", {"pyscf", "tblite"}, _Options()).name == "processes"
    assert resolve_executor("auto", {"mopac"}, _Options()).name == "threads"


def _fragments(n: int, max_nbody: int) -> list[tuple[int, ...]]:
    return [c for k in range(1, max_nbody + 1) for c in itertools.combinations(range(n), k)]


@pytest.mark.parametrize("program", ["tblite", "xtb"])
def test_concurrent_calculators_equal_serial_ones(program: str) -> None:
    """What ``thread_safe=True`` claims: fragments computed on 4 threads at once equal those computed alone."""
    require_program(program)
    mol = waters_grid(6)
    z = np.asarray(mol.atomic_numbers)
    xyz = np.asarray(mol.geometry).reshape(-1, 3)
    if program == "tblite":
        from tblite.interface import Calculator

        def run(frag: tuple[int, ...]) -> tuple[float, np.ndarray]:
            idx = np.concatenate([mol.fragments[i] for i in frag])
            calc = Calculator("GFN2-xTB", z[idx], xyz[idx], color=False, logger=lambda _msg: None)
            calc.set("verbosity", 0)
            res = calc.singlepoint()
            return float(res.get("energy")), np.asarray(res.get("gradient"))
    else:
        from xtb.interface import Calculator as XCalculator
        from xtb.libxtb import VERBOSITY_MUTED
        from xtb.utils import get_method

        def run(frag: tuple[int, ...]) -> tuple[float, np.ndarray]:
            idx = np.concatenate([mol.fragments[i] for i in frag])
            calc = XCalculator(get_method("GFN2-xTB"), z[idx], xyz[idx])
            calc.set_verbosity(VERBOSITY_MUTED)
            res = calc.singlepoint()
            return float(res.get_energy()), np.asarray(res.get_gradient())

    from qcmb_async._qcengine.threadlimit import limit_threads

    frags = _fragments(6, 3)
    with limit_threads(program, 1):  # one OpenMP thread: sums in a fixed order, bitwise comparable
        serial = [run(f) for f in frags]

    def limited(frag: tuple[int, ...]) -> tuple[float, np.ndarray]:
        with limit_threads(program, 1):
            return run(frag)

    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(limited, frags * 2))
    for (e1, g1), (e2, g2) in zip(serial * 2, concurrent, strict=True):
        assert abs(e1 - e2) < 1e-12 and np.abs(g1 - g2).max() < 1e-12


@pytest.mark.parametrize("program", ["tblite", "xtb"])
def test_in_process_thread_pools_are_limited_to_the_allotment(program: str) -> None:
    require_program(program)
    threadpoolctl = require_module("threadpoolctl")
    from qcmb_async._qcengine.threadlimit import limit_threads
    from qcmb_async.programs import traits

    module = traits(program).library
    assert module is not None
    with limit_threads(program, 1):  # imports ``module``: its OpenMP runtime is loaded and limited
        pools = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "openmp"]
        assert pools and all(p["num_threads"] == 1 for p in pools)
        if program == "xtb":  # its wheel bundles libgomp and OpenBLAS
            bundled = [p for p in threadpoolctl.threadpool_info() if "xtb.libs" in p["filepath"]]
            assert len(bundled) == 2 and all(p["num_threads"] == 1 for p in bundled)
    with limit_threads("mopac", 1):  # a subprocess program: nothing to limit here
        pass


@pytest.mark.parametrize("program", ["tblite", "xtb"])
def test_default_executor_gives_the_sequential_answer(program: str, caplog: pytest.LogCaptureFixture) -> None:
    """NoCP MBE(3) of 5 waters on ``executor="auto"`` (threads) equals QCManyBody's sequential computer."""
    require_program(program)
    from qcmanybody.v2 import ManyBodyComputer

    inp = mbe_input(program, "gfn2-xtb", None, bsse="nocp", max_nbody=3, molecule=waters_grid(5))
    with caplog.at_level(logging.INFO, logger="qcmb_async"):
        ours = qcmb_async.run(inp, ncores=2, memory=2, store=None)
    assert any("executor chosen" in r.getMessage() and "threads" in str(r.__dict__) for r in caplog.records)
    reference = ManyBodyComputer.from_manybodyinput(inp)
    for key in ("nocp_corrected_total_energy", "nocp_corrected_interaction_energy"):
        assert abs(ours.properties.model_dump()[key] - reference.properties.model_dump()[key]) < 1e-9


def test_molecules_found_without_pint_are_qcelementals() -> None:
    """``find_molecules`` bonds atoms as QCElemental's ``guess_connectivity`` does (it no longer calls it:
    pint's registry cost most of a small CLI run)."""
    from qcelemental.molutil import guess_connectivity

    from qcmb_async._core.fragment import _NEVER_BONDED, components, find_molecules

    rng = np.random.default_rng(7)
    bonds = 0
    symbols = ["O", "H", "H", "C", "N", "Na", "Cl", "Fe", "Xe", "H", "S", "Br", "Li", "He", "B", "P"] * 3
    for trial in range(20):
        geom = rng.uniform(0.0, 9.0 + trial, size=(len(symbols), 3))  # bohr; dense enough for many bonds
        reference = [(int(a), int(b)) for a, b in guess_connectivity(symbols, geom, threshold=1.2)
                     if not {symbols[int(a)], symbols[int(b)]} & _NEVER_BONDED]
        assert find_molecules(symbols, geom) == components(len(symbols), reference)
        bonds += len(reference)
    assert bonds > 50  # the comparison covered bonded atoms, not only isolated ones


def test_libraries_a_program_loads_itself_are_limited_from_its_second_fragment() -> None:
    """A program without ``ProgramTraits.library`` loads its OpenMP runtime during its first fragment; the
    pools are rescanned after it, so the second fragment runs on the allotment (fresh interpreter: the
    runtime must not be loaded before)."""
    require_program("tblite")
    code = """
import threadpoolctl
from qcmb_async.programs import ProgramTraits, register_traits
from qcmb_async._qcengine.threadlimit import limit_threads
register_traits(ProgramTraits("omp-late", in_process=True))
assert not any(p["user_api"] == "openmp" for p in threadpoolctl.threadpool_info())
with limit_threads("omp-late", 1):
    import tblite.interface  # the 'program' loads libgomp during its first fragment
with limit_threads("omp-late", 1):
    pools = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "openmp"]
print(sorted({p["num_threads"] for p in pools}))
"""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[1]"
