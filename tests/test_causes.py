"""Failed fragments keep their cause: the program's own error line, a signal that killed it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from qcmanybody.v2 import ManyBodyComputer

from qcmb_async import FragmentError, run
from tests.helpers import mbe_input, require_program, waters

ROOT = Path(__file__).resolve().parents[1]


def _fail(inp: Any, **options: Any) -> FragmentError:
    with pytest.raises(FragmentError) as info:
        run(inp, store=None, ncores=1, **options)
    return info.value


def _no_deck(text: str) -> None:
    # What a cut-off QCEngine message of NWChem showed instead of the cause.
    assert "INPUT:" not in text and "echo" not in text and "geometry units" not in text, text


@pytest.mark.parametrize(("program", "method", "basis", "options", "wanted"), [
    # NWChem: an unknown basis name -> its library lookup error (and the file it looked for).
    ("nwchem", "hf", "nosuchbasis", {}, ["non-existing file", "nosuchbasis", "failed opening basis file"]),
    # NWChem: a memory request it cannot meet -> MA's allocation failure, not the echoed deck.
    ("nwchem", "hf", "sto-3g", {"memory": 50000}, ["ma_init failed", "could not allocate"]),
    # Psi4 1.3.2 (JSON mode): the final exception line of its traceback.
    ("psi4", "hf", "nosuchbasis", {}, ["BasisSetNotFound", "Unable to find a basis set"]),
], ids=["nwchem-basis", "nwchem-memory", "psi4-basis"])
def test_fragment_error_names_the_programs_own_cause(program: str, method: str, basis: str,
                                                      options: dict[str, Any], wanted: list[str]) -> None:
    require_program(program)
    err = _fail(mbe_input(program, method, basis, bsse="nocp", max_nbody=2, molecule=waters(2)), **options)
    message = str(err)
    for word in wanted:
        assert word in message, message
    _no_deck(message)
    assert err.label in message and f"program {program}" in message
    assert len(message) < 1000
    # The full text is kept for --debug and the store.
    for word in wanted:
        assert word in err.error_message
    assert len(err.error_message) > len(err.cause)


def test_cli_shows_the_cause_and_debug_the_full_output(tmp_path: Path) -> None:
    require_program("nwchem")
    inp = tmp_path / "in.json"
    inp.write_text(mbe_input("nwchem", "hf", "nosuchbasis", bsse="nocp", max_nbody=2,
                             molecule=waters(2)).model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QCMB_ASYNC_STORE": "none"}
    cmd = [sys.executable, "-m", "qcmb_async", "run", str(inp), "--ncores", "1", "-q"]
    short = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert short.returncode == 1, short.stderr
    assert "failed opening basis file" in short.stderr and "non-existing file" in short.stderr, short.stderr
    _no_deck(short.stderr)
    full = subprocess.run([*cmd, "--debug"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert full.returncode == 1
    assert "INPUT:" in full.stderr and "failed opening basis file" in full.stderr



def test_mopac_failure_keeps_mopacs_error_line_not_its_banner() -> None:
    # Two OH2+ doublets: the dimer (charge +2, triplet) is an MS=1 state MOPAC's RHF active space cannot span.
    require_program("mopac")
    mol = waters(2)
    mol = type(mol)(**{**mol.model_dump(), "molecular_charge": 2.0, "molecular_multiplicity": 3,
                       "fragment_charges": [1.0, 1.0], "fragment_multiplicities": [2, 2]})
    err = _fail(mbe_input("mopac", "pm7", None, bsse="nocp", max_nbody=2, molecule=mol))
    assert "SPECIFIED SPIN COMPONENT NOT SPANNED BY ACTIVE SPACE" in err.cause, err.cause
    assert "MOPAC v" not in err.cause and "Digital Object Identifier" not in err.cause, err.cause
    assert "SPECIFIED SPIN COMPONENT" in str(err)


@pytest.mark.parametrize(("deck", "wanted"), [
    ("PM7 FOOBARKEY 1SCF\nwater\n\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n", "UNRECOGNIZED KEY-WORDS: (FOOBARKEY)"),
    ("PM7 SINGLET 1SCF\nOH\n\nO 0 0 0\nH 0.96 0 0\n", "SINGLET SPECIFIED WITH ODD NUMBER OF ELECTRONS"),
    ("PM7 1SCF\nclash\n\nO 0 0 0\nH 0 0 0\nH -0.24 0.93 0\n", "GEOMETRY IN ERROR"),
], ids=["unknown-keyword", "odd-singlet", "atoms-on-top"])
def test_mopac_cause_from_its_real_output(tmp_path: Path, deck: str, wanted: str) -> None:
    # MOPAC run directly (no QCEngine) on a bad deck: its own output file, whole, squashed to one line
    # (as a log shows it), and cut off before its closing message box (a killed run).
    require_program("mopac")
    from qcmb_async._core.causes import extract_cause

    (tmp_path / "bad.mop").write_text(deck)
    subprocess.run(["mopac", "bad.mop"], cwd=tmp_path, capture_output=True, timeout=60)
    out = (tmp_path / "bad.out").read_text()
    assert "Error and normal termination messages" in out
    cut = out.split("Error and normal termination messages")[0]
    for text in (out, " ".join(out.split()), cut):
        cause = extract_cause(text)
        assert wanted in cause, cause
        assert "JOB ENDED NORMALLY" not in cause and "MOPAC v" not in cause and "Digital Object" not in cause

# -- a program process killed by a signal ------------------------------------------------------
def _kill_first_nwchem(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first NWChem process this test process starts, as soon as it is seen (no guess of its run time)."""
    me = psutil.Process()
    while not stop.is_set():
        for child in me.children(recursive=True):
            try:
                # QCEngine's version check runs `nwchem v.nw` first (cached afterwards): leave that one alone.
                if child.name().startswith("nwchem") and "v.nw" not in child.cmdline():
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)
                    return
            except (psutil.Error, ProcessLookupError):
                continue
        time.sleep(0.01)


def _run_killing_nwchem(inp: Any, retries: int) -> tuple[Any, list[int]]:
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_nwchem, args=(killed, stop), daemon=True)
    killer.start()
    try:
        try:
            out: Any = run(inp, store=None, ncores=1, memory=2, retries=retries, executor="threads")
        except FragmentError as exc:
            out = exc
    finally:
        stop.set()
        killer.join(10)
    assert killed, "NWChem was never seen running"
    return out, killed


def _nwchem_dimer() -> Any:
    # HF/cc-pVDZ water dimer: ~1 s per fragment, time enough to kill one mid-run.
    # Marked c1 as qcmb_async sends every NWChem fragment (registry): QCManyBody's sequential reference then runs
    # the same symmetry-free jobs (autosym converges symmetric fragments along another path, ~3e-9 Eh apart).
    dimer = waters(2, spacing=3.0).model_copy(update={"fix_symmetry": "c1"})
    return mbe_input("nwchem", "hf", "cc-pvdz", bsse="nocp", max_nbody=2, molecule=dimer)


def test_program_killed_by_a_signal_is_named_and_not_retried_without_retries() -> None:
    require_program("nwchem")
    err, killed = _run_killing_nwchem(_nwchem_dimer(), retries=0)
    assert isinstance(err, FragmentError), err
    assert err.error_type == "ProgramKilled"
    assert f"program nwchem (pid {killed[0]}) was killed by SIGKILL" in str(err)
    assert err.label in str(err) and "fragment" in str(err)
    assert "KeyError" not in str(err)  # what QCEngine's parser tripped over afterwards


def test_program_killed_by_a_signal_is_retried() -> None:
    require_program("nwchem")
    inp = _nwchem_dimer()
    result, _killed = _run_killing_nwchem(inp, retries=1)
    assert not isinstance(result, Exception), result
    reference = ManyBodyComputer.from_manybodyinput(inp)  # QCManyBody's own sequential computer
    assert abs(result.properties.return_energy - reference.properties.return_energy) < 1e-9
    records = result.extras["qcmb_async"]["fragments"]
    retried = [r for r in records if r["attempts"] == 2]
    assert len(retried) == 1
    assert retried[0]["history"][0]["error_type"] == "ProgramKilled"
    assert "SIGKILL" in retried[0]["history"][0]["error_message"]
