"""qcmb_async.optimize (geomeTRIC) and PySCF warm starts, with real PySCF (HF/STO-3G waters).

* NoCP MBE(3) of a water trimer is the trimer: optimizing it reaches the geometry and energy that
  geomeTRIC's own ``run_optimizer`` reaches with an engine running QCEngine on the whole trimer.
* CP-corrected MBE gradients (total data) agree with central differences of CP energies computed by
  QCManyBody's own sequential computer.
* A cancelled optimization, rerun against the same store (through ``optimize_sync``), computes none of the
  finished gradients again; its step events carry what PySCF gives on the whole dimer.
* Warm starts: same energies (1e-8 Eh) and gradients at the same geometries, fewer SCF cycles.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import anyio
import numpy as np
import pytest
import qcengine
from qcelemental.models.v2 import AtomicInput, Molecule
from qcmanybody.models.v2 import ManyBodyInput

from qcmb_async import optimize, optimize_sync, run
from tests.helpers import WATER_TRIMER, mbe_input, require_module, require_program, trimer

TIGHT = {"conv_tol": 1e-11, "conv_tol_grad": 1e-8}
DIMER = "\n".join(WATER_TRIMER.strip().splitlines()[:7])


@pytest.mark.slow
def test_trimer_mbe3_nocp_optimizes_like_the_supersystem(tmp_path: Any) -> None:
    require_module("geometric")
    require_program("pyscf")
    import geometric.engine
    import geometric.molecule
    import geometric.optimize
    from geometric.nifty import ang2bohr, bohr2ang

    mol = trimer()
    inp = mbe_input("pyscf", "hf", "sto-3g", bsse="nocp", max_nbody=3, molecule=mol, keywords=TIGHT)
    ours = anyio.run(lambda: optimize(inp, convergence_set="GAU_TIGHT", ncores=2, memory=2, store=None))
    assert ours.success, ours.error
    assert len(ours.steps) > 3 and all(s["computed"] == 7 for s in ours.steps)

    # independent: geomeTRIC's own driver, an engine running QCEngine on the whole trimer
    class Supersystem(geometric.engine.Engine):  # type: ignore[misc]
        def calc_new(self, coords: np.ndarray, dirname: str) -> dict[str, Any]:
            m = Molecule(**{**mol.model_dump(), "geometry": coords.reshape(-1, 3), "fix_com": True,
                            "fix_orientation": True})
            res = qcengine.compute(AtomicInput(molecule=m, specification={
                "driver": "gradient", "model": {"method": "hf", "basis": "sto-3g"}, "keywords": TIGHT}),
                "pyscf", raise_error=True, task_config={"ncores": 2, "memory": 2})
            return {"energy": float(res.properties.return_energy),
                    "gradient": np.asarray(res.return_result, dtype=float).reshape(-1)}

    gm = geometric.molecule.Molecule()
    gm.elem = [str(s) for s in mol.symbols]
    gm.xyzs = [np.asarray(mol.geometry, dtype=float).reshape(-1, 3) * bohr2ang]
    progress = geometric.optimize.run_optimizer(customengine=Supersystem(gm), convergence_set="GAU_TIGHT",
                                                input=str(tmp_path / "ref"), prefix=str(tmp_path / "ref"))
    ref_xyz = np.asarray(progress.xyzs[-1], dtype=float) * ang2bohr
    ref_energy = float(progress.qm_energies[-1])

    assert ours.final_energy == pytest.approx(ref_energy, abs=1e-6)
    np.testing.assert_allclose(np.asarray(ours.final_molecule.geometry), ref_xyz, rtol=0, atol=1e-4)
    assert ours.final_energy < ours.energies[0] - 1e-3  # it really moved downhill


def test_cp_gradient_matches_finite_differences_of_cp_energies() -> None:
    require_program("pyscf")
    from qcmanybody.v2 import ManyBodyComputer

    dimer = Molecule.from_data(DIMER)
    grad_inp = mbe_input("pyscf", "hf", "sto-3g", driver="gradient", bsse="cp", max_nbody=2, molecule=dimer,
                         keywords=TIGHT, mb_keywords={"return_total_data": True})
    grad = np.asarray(run(grad_inp, ncores=2, memory=2, store=None).properties.return_gradient).reshape(-1)
    h = 1e-3
    x0 = np.asarray(dimer.geometry, dtype=float).reshape(-1)
    for i in (0, 4, 11):  # an O x, an H y, the second water's H z
        energies = []
        for sign in (1, -1):
            x = x0.copy()
            x[i] += sign * h
            moved = Molecule(**{**dimer.model_dump(), "geometry": x.reshape(-1, 3), "fix_com": True,
                                "fix_orientation": True})
            e_inp = mbe_input("pyscf", "hf", "sto-3g", bsse="cp", max_nbody=2, molecule=moved, keywords=TIGHT,
                              mb_keywords={"return_total_data": True})
            # QCManyBody's own sequential computer: independent of our scheduler and assembly
            energies.append(float(ManyBodyComputer.from_manybodyinput(e_inp, build_tasks=True).return_result))
        fd = (energies[0] - energies[1]) / (2 * h)
        assert grad[i] == pytest.approx(fd, abs=1e-6), i
    assert np.abs(grad).max() > 1e-3


def _pyscf_dimer(coords_bohr: Any) -> tuple[float, np.ndarray]:
    """RHF/STO-3G energy (Eh) and gradient (Eh/bohr) of the water dimer at ``coords_bohr``, PySCF directly."""
    from pyscf import gto, scf

    symbols = [ln.split()[0] for ln in DIMER.splitlines() if ln.strip() != "--"]
    mol = gto.M(atom=[(s, tuple(p)) for s, p in zip(symbols, np.asarray(coords_bohr).reshape(-1, 3), strict=True)],
                unit="Bohr", basis="sto-3g", verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol, mf.conv_tol_grad = TIGHT["conv_tol"], TIGHT["conv_tol_grad"]
    return float(mf.kernel()), np.asarray(mf.nuc_grad_method().kernel())


def test_killed_optimization_resumes_from_the_store(tmp_path: Any) -> None:
    require_module("geometric")
    require_program("pyscf")
    from qcmb_async import events as ev
    from qcmb_async._core.store import ResultStore

    inp = mbe_input("pyscf", "hf", "sto-3g", bsse="nocp", max_nbody=2, molecule=Molecule.from_data(DIMER),
                    keywords=TIGHT)
    store = tmp_path / "store.sqlite"
    seen: list[Any] = []

    async def killed() -> None:
        with anyio.CancelScope() as scope:
            def on_event(event: Any) -> None:
                seen.append(event)
                if isinstance(event, ev.StepFinished) and event.step == 3:
                    scope.cancel()  # like Ctrl-C after the third gradient
            await optimize(inp, on_event=on_event, ncores=2, memory=2, store=store)
        assert scope.cancelled_caught

    anyio.run(killed)
    started = [e for e in seen if isinstance(e, ev.StepStarted)]
    first = [e for e in seen if isinstance(e, ev.StepFinished)]
    assert [(e.kind, e.step) for e in started] == [(e.kind, e.step) for e in first] == [("optimize", k)
                                                                                     for k in (1, 2, 3)]
    assert all((e.computed, e.cached) == (3, 0) for e in first)
    # each step's fragment events sit between its StepStarted and StepFinished, and belong to its run
    for k, finished in enumerate(first):
        i, j = seen.index(started[k]), seen.index(finished)
        runs = {e.run_id for e in seen[i + 1:j] if isinstance(e, ev.FragmentFinished)}
        assert runs == {finished.run_id}
    # the events' numbers against PySCF on the whole dimer (NoCP MBE(2) of a dimer is the dimer)
    for s, f in ((started[0], first[0]), (started[2], first[2])):
        energy, grad = _pyscf_dimer(s.geometry)
        assert f.energy == pytest.approx(energy, abs=1e-8)
        assert f.gradient_rms == pytest.approx(np.sqrt(np.mean(grad**2)), abs=1e-6)
        assert f.gradient_max == pytest.approx(np.abs(grad).max(), abs=1e-6)
    with ResultStore(store, readonly=True) as st:
        assert sum(r["status"] == "ok" for r in st.fragments()) == 9

    rerun = optimize_sync(inp, ncores=2, memory=2, store=store)  # the blocking front, from plain code
    assert rerun.success, rerun.error
    assert len(rerun.steps) > 3
    # the finished gradients come from the store, step for step, and only they
    for old, s, new in zip(first, started, rerun.steps[:3], strict=True):
        assert (new["computed"], new["cached"]) == (0, 3)
        assert new["energy"] == old.energy
        assert new["geometry"] == [list(xyz) for xyz in s.geometry]
    assert rerun.steps[3]["computed"] > 0

    # one timeline over every step: the store's steps took no time, the others' fragments carry their step
    from qcmb_async.timeline import plot_timeline, timeline_intervals

    per_step: dict[int, int] = {}
    for iv in timeline_intervals(rerun):
        per_step[iv.step] = per_step.get(iv.step, 0) + 1  # type: ignore[index]
    assert per_step == {rec["step"]: rec["computed"] for rec in rerun.steps if rec["computed"]}
    if importlib.util.find_spec("matplotlib") is not None:
        fig = plot_timeline(rerun, tmp_path / "steps.png")
        assert (tmp_path / "steps.png").read_bytes()[:4] == b"\x89PNG"
        marks = {t.get_text() for t in fig.axes[0].texts}
        assert marks == {str(rec["step"]) for rec in rerun.steps if rec["computed"]}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"maxiter": 0}, "maxiter must be a whole number"),
    ({"maxiter": -1}, "maxiter must be a whole number"),
    ({"maxiter": 2.5}, "maxiter must be a whole number"),
    ({"convergence_set": "BOGUS"}, "unknown geomeTRIC convergence set 'BOGUS': use one of GAU,"),
    ({"constraints": "distance 1 4\n"}, "Mode ($freeze, $set, $scan) must be set"),
    ({"constraints": "$freeze\ndistance 1 99\n"}, "higher atom indices"),
    ({"constraints": "$set\ndistance 1 4 abc\n"}, "could not convert string to float"),
])
def test_bad_optimizer_options_are_input_errors_before_anything_runs(tmp_path: Any, kwargs: dict[str, Any],
                                                                     message: str) -> None:
    require_module("geometric")
    require_program("pyscf")
    from qcmb_async import InputError

    inp = mbe_input("pyscf", "hf", "sto-3g", bsse="nocp", max_nbody=2, molecule=Molecule.from_data(DIMER))
    seen: list[Any] = []
    with pytest.raises(InputError) as info:
        optimize_sync(inp, store=tmp_path / "store.sqlite", on_event=seen.append, **kwargs)
    assert message in str(info.value)
    assert seen == []  # no step started, no fragment run
    assert not (tmp_path / "store.sqlite").exists()


def test_warm_starts_give_the_same_results_in_fewer_scf_cycles(tmp_path: Any, monkeypatch: Any) -> None:
    require_module("geometric")
    require_program("pyscf")
    monkeypatch.setenv("QCMB_ASYNC_WARM_START_DIR", str(tmp_path / "warm"))  # no orbitals from other runs

    def inp(warm: bool) -> ManyBodyInput:
        base = mbe_input("pyscf", "hf", "sto-3g", bsse="cp", max_nbody=2, molecule=Molecule.from_data(DIMER),
                         keywords={**TIGHT, "warm_start": warm})
        data = base.model_dump()
        data["specification"]["protocols"] = {"cluster_results": "all"}  # fragments' SCF iterations
        return ManyBodyInput(**data)

    # one worker process: every fragment finds its previous density in that worker
    cold = anyio.run(lambda: optimize(inp(False), maxiter=6, executor="processes", ncores=1, memory=2, store=None))
    warm = anyio.run(lambda: optimize(inp(True), maxiter=6, executor="processes", ncores=1, memory=2, store=None))
    n = min(len(cold.steps), len(warm.steps))
    assert n >= 3
    # Step 2 is at the same geometry in both runs (step 1 had no warm start), and is warm-started:
    np.testing.assert_allclose(warm.steps[1]["geometry"], cold.steps[1]["geometry"], rtol=0, atol=1e-9)
    assert warm.steps[1]["energy"] == pytest.approx(cold.steps[1]["energy"], abs=1e-8)
    np.testing.assert_allclose(warm.trajectory[1].properties.return_gradient,
                               cold.trajectory[1].properties.return_gradient, rtol=0, atol=1e-6)
    for c, w in zip(cold.steps[:n], warm.steps[:n], strict=True):
        # later geometries drift apart by the SCF's convergence noise in the gradients, energies with them
        dx = np.abs(np.asarray(w["geometry"]) - np.asarray(c["geometry"])).max()
        assert dx < 1e-5
        assert abs(w["energy"] - c["energy"]) <= 1e-8 + 18 * dx * c["gradient_max"]
        assert len(w["scf_iterations"]) == len(c["scf_iterations"]) == 5
    assert cold.steps[0]["scf_iterations"] == warm.steps[0]["scf_iterations"]  # nothing to start from yet
    later_cold = sum(sum(s["scf_iterations"]) for s in cold.steps[1:n])
    later_warm = sum(sum(s["scf_iterations"]) for s in warm.steps[1:n])
    # measured here: 14 % fewer at these tight thresholds, 27 % at the default conv_tol (1e-10)
    assert later_warm < 0.9 * later_cold, (later_warm, later_cold)
