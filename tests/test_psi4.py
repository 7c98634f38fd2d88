"""Psi4 before 1.4 (Debian's psi4 1.3.2) through qcmb_async's legacy harness.

The tests that run psi4 skip when it is missing on a laptop and fail under CI=true
(``.ci/run`` installs it with apt). The unit tests at the top need no psi4.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import psutil
import pytest
import qcengine
from qcelemental.models.v2 import AtomicInput, AtomicResult, Molecule
from qcengine.programs.base import programs
from qcengine.programs.psi4 import Psi4Harness

import qcmb_async.harnesses as harnesses
from qcmb_async import run
from qcmb_async.executors.base import FragmentJob
from qcmb_async.executors.threads import ThreadExecutor
from qcmb_async.harnesses import _psi4_schema, psi4_legacy
from qcmb_async.harnesses.psi4_legacy import Psi4LegacyHarness, Psi4Probe
from tests.helpers import IN_CI, mbe_input, require_program, trimer

#: Tight SCF, conventional integrals: the same numbers as NWChem and PySCF.
PK = {"scf_type": "pk", "e_convergence": 1e-10, "d_convergence": 1e-10}
#: HF/STO-3G, first water of the trimer with the second one as ghost atoms (PySCF's and psi4's value).
E_MONOMER_A_GHOST_B = -74.9635438260
HF = {"method": "hf", "basis": "sto-3g"}


def _cp_monomer() -> Molecule:
    return trimer().get_fragment(real=[0], ghost=[1])


def _water() -> Molecule:
    return Molecule.from_data("O 0 0 0\nH 0 0.757 0.587\nH 0 -0.757 0.587")


def _input(mol: Molecule, driver: str = "energy", model: dict[str, Any] | None = None, **keywords: Any) -> AtomicInput:
    return AtomicInput(molecule=mol, specification={"driver": driver, "model": model or HF, "keywords": keywords})


def _as_dict(result: Any) -> dict[str, Any]:
    """A ``JobOutcome.result`` as a dict (an ``AtomicResult`` model or already a dict)."""
    return result.model_dump() if hasattr(result, "model_dump") else dict(result)


@pytest.fixture
def legacy() -> Psi4LegacyHarness:
    """psi4 < 1.4 must be installed (fail under CI=true) and handled by the legacy harness."""
    require_program("psi4")
    harness = qcengine.get_program("psi4")
    if not isinstance(harness, Psi4LegacyHarness):
        msg = f"psi4 {harness.get_version()} is >= 1.4: QCEngine's own harness runs it, not the legacy one"
        if IN_CI:
            pytest.fail(f"{msg}; .ci/run installs Debian's psi4 1.3.2")
        pytest.skip(msg)
    return harness


@pytest.fixture
def registry() -> Iterator[None]:
    """Restore QCEngine's registry and the harness module's per-process state after a test."""
    saved = (programs.get("psi4"), dict(psi4_legacy._state), dict(psi4_legacy._probes), harnesses._psi4_done)
    yield
    if saved[0] is None:
        programs.pop("psi4", None)
    else:
        programs["psi4"] = saved[0]
    psi4_legacy._state.clear()
    psi4_legacy._state.update(saved[1])
    psi4_legacy._probes.clear()
    psi4_legacy._probes.update(saved[2])
    harnesses._psi4_done = saved[3]


# ------------------------------------------------------------------ without psi4


def test_v1_document() -> None:
    config = qcengine.config.TaskConfig(ncores=3, memory=2.0, nnodes=1, retries=0, scratch_directory=None,
                                       mpiexec_command=None)
    oh = Molecule(symbols=["O", "H"], geometry=[0, 0, 0, 0, 0, 1.83], molecular_multiplicity=2)
    doc = _psi4_schema.v1_document(_input(oh, "gradient", scf_type="pk", MP2_TYPE="conv"), config)
    assert doc["schema_name"] == "qcschema_input" and doc["schema_version"] == 1
    assert doc["driver"] == "gradient" and doc["model"] == {"method": "hf", "basis": "sto-3g"}
    assert doc["keywords"] == {"scf_type": "pk", "MP2_TYPE": "conv", "reference": "uhf"}  # passed through
    assert doc["nthreads"] == 3 and doc["memory"] == int(2 * 1024**3 * 0.95) and doc["return_output"] is True
    assert _psi4_schema.psi4_memory(0.25) == 250 * 1024**2  # psi4's minimum, still within the fragment's share
    with pytest.raises(qcengine.exceptions.InputError, match="at least 250 MiB"):
        _psi4_schema.psi4_memory(0.2)
    assert doc["molecule"]["fix_com"] is True and doc["molecule"]["fix_orientation"] is True
    ghosted = psi4_legacy.v1_document(_input(_cp_monomer(), reference="rhf"), config)
    assert ghosted["molecule"]["real"] == [True] * 3 + [False] * 3
    assert ghosted["keywords"] == {"reference": "rhf"}

    with pytest.raises(qcengine.exceptions.InputError, match=r"psi4 >= 1\.6"):
        psi4_legacy.v1_document(_input(_water(), function_kwargs={"external_potentials": [[0.1, [5, 0, 0]]]}),
                                config)


def _psi4_at_nowhere(monkeypatch: pytest.MonkeyPatch, version: str | None) -> None:
    """psi4 "installed" at a path that does not exist, its version probe answered with ``version`` (``None``: not
    probed yet, so the probe runs and fails), and no harness chosen yet."""
    fake = "/nowhere/bin/psi4"
    monkeypatch.setattr(psi4_legacy, "psi4_executable", lambda: fake)
    if version is None:
        psi4_legacy._probes.pop(fake, None)
    else:
        psi4_legacy._probes[fake] = Psi4Probe(path=fake, version=version, error=None, seconds=0.0)
    psi4_legacy._state.update(original=None, choice=None)


def test_newer_psi4_gets_qcengine_harness_back(registry: None, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """psi4 >= 1.4: the first use puts QCEngine's own harness back into the registry, and logs it."""
    _psi4_at_nowhere(monkeypatch, "1.9.1")
    programs["psi4"] = original = Psi4Harness()
    psi4_legacy.install()
    psi4_legacy.install()  # idempotent
    assert isinstance(programs["psi4"], Psi4LegacyHarness)
    with caplog.at_level(logging.INFO, logger="qcmb_async"):
        assert psi4_legacy._choose() is None
    assert psi4_legacy.chosen_harness() == "qcengine"
    assert programs["psi4"] is original
    assert any("psi4 harness chosen" in str(r.msg) and "QCEngine's own" in str(r.msg) for r in caplog.records)
    psi4_legacy.install()  # decided: stays QCEngine's
    assert programs["psi4"] is original


def test_someone_elses_psi4_harness_is_left_alone(registry: None) -> None:
    class Custom(Psi4Harness):
        pass

    custom = Custom()
    programs["psi4"] = custom
    psi4_legacy._state.update(original=None, choice=None)
    psi4_legacy.install()
    assert programs["psi4"] is custom


def test_old_psi4_is_chosen_and_logged(registry: None, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    _psi4_at_nowhere(monkeypatch, "1.3.2")
    programs["psi4"] = Psi4Harness()
    psi4_legacy.install()
    harness = programs["psi4"]
    with caplog.at_level(logging.INFO, logger="qcmb_async"):
        assert harness.found() is True
        assert harness.get_version() == "1.3.2"
    assert psi4_legacy.chosen_harness() == "legacy" and programs["psi4"] is harness
    chosen = [r for r in caplog.records if "psi4 harness chosen" in str(r.msg)]
    assert len(chosen) == 1 and "legacy" in str(chosen[0].msg)


def test_broken_psi4_is_not_found(registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _psi4_at_nowhere(monkeypatch, None)
    programs["psi4"] = Psi4Harness()
    psi4_legacy.install()
    harness = programs["psi4"]
    assert harness.found() is False  # `/nowhere/bin/psi4 --version` cannot start
    with pytest.raises(ModuleNotFoundError, match="apt-get install psi4"):
        harness.found(raise_error=True)
    assert psi4_legacy.chosen_harness() is None


def _fake_psi4(directory: Path, body: str) -> Path:
    """A fake ``psi4`` executable (a shell script) standing in for a failing psi4 start."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "psi4"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def test_probe_timeout_is_reported_and_not_cached(registry: None, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    fake = _fake_psi4(tmp_path / "fake", "sleep 30\n")
    monkeypatch.setattr(psi4_legacy, "PROBE_TIMEOUT", 1)
    start = time.perf_counter()
    probe = psi4_legacy.probe_psi4(str(fake))
    assert time.perf_counter() - start < 10  # killed at the timeout, not waited for
    assert probe is not None and probe.version is None
    assert probe.error == f"`{fake} --version` did not answer within 1 s (timed out, killed)"
    assert str(fake) not in psi4_legacy._probes


def test_failed_probe_is_not_cached(registry: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One failed `psi4 --version` start, then a good one, in one process: psi4 is usable after all,
    and the failure said why (exit code, psi4's stderr)."""
    real = psi4_legacy.psi4_executable()
    if real is None:
        require_program("psi4")  # skips on a laptop, fails under CI=true
    flag = tmp_path / "fail-next-start"
    flag.touch()
    fake = _fake_psi4(tmp_path / "fake", f'if [ -e "{flag}" ]; then echo "fake psi4: simulated start failure" >&2; '
                                         f'exit 3; fi\nexec "{real}" "$@"\n')
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert psi4_legacy.psi4_executable() == str(fake)
    psi4_legacy._state.update(original=None, choice=None)
    programs["psi4"] = Psi4Harness()
    psi4_legacy.install()
    harness = programs["psi4"]

    assert harness.found() is False
    with pytest.raises(ModuleNotFoundError) as err:
        harness.found(raise_error=True)
    assert f"`{fake} --version` exited with code 3" in str(err.value)
    assert "fake psi4: simulated start failure" in str(err.value)
    assert psi4_legacy.chosen_harness() is None

    flag.unlink()  # the next start works (the real psi4 behind the same path)
    assert harness.found() is True
    assert psi4_legacy.chosen_harness() == "legacy"
    res = qcengine.compute(_input(_cp_monomer(), **PK), "psi4", raise_error=True,
                           task_config={"ncores": 1, "memory": 0.5})
    assert res.return_result == pytest.approx(E_MONOMER_A_GHOST_B, abs=1e-8)


def test_opt_out_keeps_qcengine_harness(registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Psi4Harness()
    programs["psi4"] = original
    psi4_legacy._state.update(original=None, choice=None)
    harnesses._psi4_done = False
    monkeypatch.setenv(harnesses.PSI4_HARNESS_ENV, "qcengine")
    harnesses.register_harnesses()
    assert programs["psi4"] is original


# --------------------------------------------------------------------- with psi4


def test_registered_once_and_checks_cached(legacy: Psi4LegacyHarness) -> None:
    assert harnesses.register_harnesses() is not None
    assert qcengine.get_program("psi4") is legacy  # idempotent: the same instance
    assert legacy.get_version() == psi4_legacy.probe_psi4().version
    assert psi4_legacy.chosen_harness() == "legacy"
    assert legacy.thread_safe and legacy.name == "Psi4"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    for _ in range(50):  # cached: no psi4 process per check
        assert legacy.found() and qcengine.get_program("psi4").get_version()
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_energy_gradient_ghosts_and_keywords(legacy: Psi4LegacyHarness, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mol = _cp_monomer()
    energy = qcengine.compute(_input(mol, **PK), "psi4", raise_error=True, task_config={"ncores": 1, "memory": 0.5})
    assert isinstance(energy, AtomicResult) and energy.schema_version == 2
    p = energy.properties
    assert energy.return_result == pytest.approx(E_MONOMER_A_GHOST_B, abs=1e-8)
    assert p.return_energy == p.scf_total_energy == energy.return_result
    assert p.calcinfo_natom == 6 and p.calcinfo_nbasis == 14 and p.calcinfo_nalpha == 5  # ghosts: basis only
    assert energy.provenance.creator == "Psi4" and energy.provenance.version == legacy.get_version()
    assert energy.molecule == mol
    # keywords reached psi4
    assert "SCF Algorithm Type is PK" in energy.stdout and "Energy threshold   = 1.00e-10" in energy.stdout
    assert "Gh(O)" in energy.stdout

    grad = qcengine.compute(_input(mol, "gradient", **PK), "psi4", raise_error=True,
                            task_config={"ncores": 2, "memory": 0.5})
    g = np.asarray(grad.return_result)
    assert g.shape == (6, 3)  # one row per atom, ghosts included
    np.testing.assert_array_equal(grad.properties.return_gradient, g)
    assert grad.properties.return_energy == pytest.approx(energy.return_result, abs=1e-10)
    assert np.abs(g[3:]).max() > 1e-6  # the ghost rows are real (basis functions move)
    np.testing.assert_allclose(g.sum(axis=0), 0.0, atol=1e-8)

    # psi4's own finite differences of energies (function_kwargs reach psi4's driver)
    fd = qcengine.compute(_input(mol, "gradient", function_kwargs={"dertype": 0}, disp_size=0.001, **PK), "psi4",
                          raise_error=True, task_config={"ncores": 2, "memory": 0.5})
    assert "finite difference" in fd.stdout.lower()
    np.testing.assert_allclose(np.asarray(fd.return_result), g, rtol=0, atol=1e-6)
    assert list(tmp_path.iterdir()) == []  # no timer.dat here


def test_mp2_conv_matches_pyscf(legacy: Psi4LegacyHarness) -> None:
    require_program("pyscf")
    mol = _cp_monomer()
    model = {"method": "mp2", "basis": "sto-3g"}
    res = qcengine.compute(_input(mol, model=model, mp2_type="conv", **PK), "psi4", raise_error=True,
                           task_config={"ncores": 1, "memory": 0.5})
    p = res.properties
    assert res.return_result == p.return_energy == p.mp2_total_energy
    ref = qcengine.compute(_input(mol, model=model, conv_tol=1e-12), "pyscf", raise_error=True,
                           task_config={"ncores": 1, "memory": 0.5})
    assert res.return_result == pytest.approx(ref.return_result, abs=1e-8)  # conventional MP2: DF would be off
    assert p.mp2_correlation_energy == pytest.approx(ref.properties.mp2_correlation_energy, abs=1e-8)


def test_errors_are_classified(legacy: Psi4LegacyHarness) -> None:
    cases = [
        ({"no_such_option": 1}, HF, "input_error", "NO_SUCH_OPTION is not a valid option"),
        ({}, {"method": "no-such-method", "basis": "sto-3g"}, "input_error", "is not available"),
        ({"maxiter": 2, "fail_on_maxiter": True, "scf_type": "pk"}, HF, "convergence_error", "Could not converge"),
    ]
    for keywords, model, etype, text in cases:
        res = qcengine.compute(_input(_water(), model=model, **keywords), "psi4", raise_error=False,
                               task_config={"ncores": 1, "memory": 0.5})
        assert not res.success
        assert res.error.error_type == etype, res.error
        assert text in res.error.error_message


def test_trimer_cp_3body_matches_nwchem_and_pyscf(legacy: Psi4LegacyHarness) -> None:
    """Water trimer, CP, 3-body, HF/STO-3G: psi4 = NWChem = PySCF (energy 1e-7 Eh, gradient 1e-6)."""
    require_program("nwchem")
    require_program("pyscf")
    common = {"ncores": 2, "memory": 2, "store": None}
    energy = run(mbe_input("psi4", "hf", "sto-3g", bsse="cp", max_nbody=3, keywords=PK), **common)
    assert energy.extras["qcmb_async"]["executor"] == "threads"  # psi4's command line: threads suffice
    psi4 = run(mbe_input("psi4", "hf", "sto-3g", driver="gradient", bsse="cp", max_nbody=3, keywords=PK), **common)
    nwchem = run(mbe_input("nwchem", "hf", "sto-3g", driver="gradient", bsse="cp", max_nbody=3,
                           keywords={"scf__thresh": 1e-8, "scf__tol2e": 1e-14}), **common)
    pyscf = run(mbe_input("pyscf", "hf", "sto-3g", driver="gradient", bsse="cp", max_nbody=3,
                          keywords={"conv_tol": 1e-12, "conv_tol_grad": 1e-8}), **common, executor="threads")

    ie = energy.properties.cp_corrected_interaction_energy
    assert energy.return_result == pytest.approx(ie, abs=1e-12)
    assert -0.01 < ie < 0  # bound, and not a sum of total energies
    assert psi4.properties.cp_corrected_interaction_energy == pytest.approx(ie, abs=1e-9)
    for ref in (nwchem, pyscf):
        assert ref.properties.cp_corrected_interaction_energy == pytest.approx(ie, abs=1e-7)
        np.testing.assert_allclose(np.asarray(psi4.return_result), np.asarray(ref.return_result), rtol=0, atol=1e-6)
    assert np.asarray(psi4.return_result).shape == (9, 3)


def test_sixteen_concurrent_fragments(legacy: Psi4LegacyHarness, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """16 psi4 fragments at once on threads: no errors, nothing left in cwd, $HOME or scratch,
    each fragment ran with its own thread count and memory."""
    cwd, home, scratch = tmp_path / "cwd", tmp_path / "home", tmp_path / "scratch"
    for d in (cwd, home, scratch):
        d.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    inp = _input(_water(), scf_type="pk").model_dump()
    jobs = [FragmentJob(label=f"water{i}", nbody=1, program="psi4", atomic_input=inp,
                        task_config={"ncores": 1 + i % 4, "memory": 0.25 * (1 + i % 3),
                                     "scratch_directory": str(scratch), "retries": 0})
            for i in range(16)]
    before = dict(os.environ)
    outcomes: dict[str, Any] = {}

    async def main() -> None:
        async def one(job: FragmentJob) -> None:
            outcomes[job.label] = await exe.run(job)

        async with ThreadExecutor(max_workers=16) as exe, anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(one, job)

    anyio.run(main)
    assert dict(os.environ) == before
    errors = [f"{o.label}: {o.error_type}: {o.error_message}" for o in outcomes.values() if not o.success]
    assert errors == []
    overlap = sorted((o.start, o.end) for o in outcomes.values())
    assert max(s for s, _ in overlap) < min(e for _, e in overlap)  # all 16 ran at the same time
    for job in jobs:
        res = _as_dict(outcomes[job.label].result)
        assert res["return_result"] == pytest.approx(_as_dict(outcomes["water0"].result)["return_result"], abs=1e-9)
        threads, mib = map(int, re.search(r"(\d+) Threads,\s+(\d+) MiB Core", res["stdout"]).groups())
        assert threads == job.ncores, job.label
        assert mib == max(250, int(job.memory * 1024 * 0.95)), job.label
        assert res["extras"]["psi4_legacy"]["nthreads"] == job.ncores
    assert list(cwd.iterdir()) == []  # no timer.dat
    assert list(home.iterdir()) == []
    assert list(scratch.iterdir()) == []  # every fragment's directory removed


def test_timeout_kills_psi4(legacy: Psi4LegacyHarness, tmp_path: Path) -> None:
    """psi4 is started through QCEngine's popen, so qcmb_async's timeout kills it."""
    big = Molecule.from_data("\n".join(f"O {3 * i} 0 0\nH {3 * i} 0.757 0.587\nH {3 * i} -0.757 0.587"
                                       for i in range(6)))
    job = FragmentJob(label="slow", nbody=1, program="psi4",
                      atomic_input=_input(big, "hessian", model={"method": "hf", "basis": "cc-pvdz"}).model_dump(),
                      task_config={"ncores": 1, "memory": 0.5, "scratch_directory": str(tmp_path), "retries": 0},
                      timeout=1.5)

    async def main() -> Any:
        async with ThreadExecutor(max_workers=1) as exe:
            return await exe.run(job)

    outcome = anyio.run(main)
    assert not outcome.success and outcome.error_type == "TimeoutError"
    assert not [p for p in psutil.Process().children(recursive=True) if "psi4" in " ".join(p.cmdline())]
    assert list(tmp_path.iterdir()) == []


def test_process_workers_register_the_harness(legacy: Psi4LegacyHarness) -> None:
    """Worker processes register the legacy harness themselves (prepare_worker)."""
    inp = mbe_input("psi4", "hf", "sto-3g", bsse="nocp", max_nbody=2, molecule=trimer().get_fragment([0, 1]),
                    keywords=PK)
    res = run(inp, ncores=2, memory=1, executor="processes", store=None)
    assert res.extras["qcmb_async"]["executor"] == "processes"
    # HF/STO-3G, no counterpoise: the same number PySCF gives
    assert res.properties.nocp_corrected_interaction_energy == pytest.approx(-0.0088137201700, abs=1e-8)
