"""Open MPI programs get a session directory of their own, so two started at once cannot collide.

Every Open MPI process (Debian's NWChem as a singleton, or ``mpiexec``) creates and removes the top
session directory ``$TMPDIR/ompi.<host>.<uid>``. Two NWChem fragments started side by side raced on
it in CI ("mkdir ... File exists; orte_init failed"). The race itself is rare and cannot be forced,
so these tests block the shared path outright with a file -- the same fault made certain: a program
that still used the shared directory fails. The expected energy is NWChem's own, run through
``qcengine.compute`` outside qcmb_async with a clean ``TMPDIR``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import pytest
import qcengine
from qcelemental.models.v2 import AtomicInput, Molecule

from qcmb_async import run
from qcmb_async._qcengine import seams
from tests.helpers import WATER_TRIMER, mbe_input, require_executable, require_program

DIMER = "\n--\n".join(WATER_TRIMER.strip().split("--")[:2]) + "\nsymmetry c1\nno_com\nno_reorient"


def _direct_dimer_energy() -> float:
    """The water dimer's HF/STO-3G energy from NWChem through QCEngine alone (no qcmb_async seams)."""
    mol = Molecule.from_data(DIMER.replace("--", ""))
    inp = AtomicInput(molecule=mol, specification={"driver": "energy",
                                                   "model": {"method": "hf", "basis": "sto-3g"}})
    res = qcengine.compute(inp, "nwchem", task_config={"ncores": 1, "memory": 1.0})
    assert res.success, res.error
    return float(res.properties.return_energy)


def _block_shared_session_dir(tmp: Path) -> Path:
    """Put a plain file where Open MPI's shared top session directory would go."""
    blocker = tmp / f"ompi.{socket.gethostname()}.{os.getuid()}"
    blocker.write_text("not a directory\n")
    return blocker


@pytest.mark.parametrize("fragment_ncores", [1, 2], ids=["singletons", "mpiexec-2-ranks"])
def test_nwchem_fragments_do_not_share_an_open_mpi_session_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fragment_ncores: int) -> None:
    require_program("nwchem")
    if fragment_ncores > 1:
        require_executable("mpiexec")
    expected = _direct_dimer_energy()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    blocker = _block_shared_session_dir(tmp)
    monkeypatch.setenv("TMPDIR", str(tmp))
    inp = mbe_input("nwchem", "hf", "sto-3g", bsse="nocp", max_nbody=2, molecule=Molecule.from_data(DIMER))
    # Two cores, one-core fragments: the two monomers start at the same moment.
    result = run(inp, ncores=2, memory=2, fragment_ncores=fragment_ncores, store=None, executor="threads")
    records = result.extras["qcmb_async"]["fragments"]
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    # NoCP MBE(2) of a dimer is the dimer itself.
    assert abs(result.properties.nocp_corrected_total_energy - expected) < 1e-9
    # The private session directories are gone; the blocking file is untouched.
    assert sorted(p.name for p in tmp.iterdir()) == [blocker.name]


def test_a_user_chosen_session_base_is_kept_as_the_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``OMPI_MCA_orte_tmpdir_base`` set by the user: each program's directory goes below it."""
    base = tmp_path / "base"
    base.mkdir()
    monkeypatch.setenv("OMPI_MCA_orte_tmpdir_base", str(base))
    seams.install_seams()
    seen: list[str] = []

    def one(label: str) -> None:
        from qcengine.util import execute

        token = seams.FRAGMENT.set(seams.FragmentContext(label=label, task_config={"ncores": 1}))
        try:
            ok, out = execute(["sh", "-c", 'test -d "$OMPI_MCA_orte_tmpdir_base" && echo "$OMPI_MCA_orte_tmpdir_base"'])
        finally:
            seams.FRAGMENT.reset(token)
        assert ok, out
        seen.append(out["stdout"].strip())

    async def both() -> None:
        async with anyio.create_task_group() as tg:
            for label in ("a", "b"):
                tg.start_soon(anyio.to_thread.run_sync, one, label)

    anyio.run(both)
    assert len(set(seen)) == 2
    assert all(Path(s).parent == base and Path(s).name.startswith("ompi-") for s in seen)
    assert list(base.iterdir()) == []  # removed once each program ended
    assert os.environ["OMPI_MCA_orte_tmpdir_base"] == str(base)  # noqa: SIM112 (Open MPI spells it so)
