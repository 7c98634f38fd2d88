"""Bad input fails before any computation with a message that says what to do; failures name the fragment."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import anyio
import psutil
import pytest
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput

from qcmb_async import FragmentError, InputError, run, run_manybody
from tests.fakes import CALLS
from tests.helpers import mbe_input, require_program, trimer, waters


def fake(**kw: object) -> ManyBodyInput:
    return mbe_input("qcmb-fake-sleep", "fake", "none", bsse="nocp", max_nbody=2, keywords={"sleep": 0.01}, **kw)


@pytest.fixture(autouse=True)
def _no_calls() -> None:
    CALLS.clear()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ncores": 0}, "ncores must be positive, got 0"),
        ({"ncores": -2}, "ncores must be positive, got -2"),
        ({"ncores": "eight"}, "ncores must be a positive number, got 'eight'"),
        ({"ncores": 1.5}, "ncores must be a whole number of cores, got 1.5"),
        ({"memory": 0}, "memory must be positive, got 0"),
        ({"memory": "lots"}, "memory must be a positive number, got 'lots'"),
        ({"memory": float("nan")}, "memory must be a positive number"),
        ({"ncores": 2, "fragment_ncores": 4}, "fragment_ncores=4 is more than the run's total ncores=2"),
        ({"memory": 4, "fragment_memory": 8}, "fragment_memory=8.0 GiB is more than the run's total memory=4.0 GiB"),
        ({"retries": -1}, "retries must be a whole number >= 0"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"on_error": "ignore"}, "on_error must be 'raise' or 'continue'"),
        ({"executor": "gpu"}, "unknown executor 'gpu'"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        run(fake(), **options)
    assert CALLS == []


def test_one_fragment_molecule() -> None:
    inp = fake(molecule=Molecule.from_data("O 0 0 0\nH 0 0.76 0.59\nH 0 -0.76 0.59"))
    with pytest.raises(InputError, match=r"has 1 fragment.*needs at least two.*'--' lines"):
        run(inp)
    assert CALLS == []


def test_max_nbody_above_fragment_count() -> None:
    with pytest.raises(InputError, match=r"max_nbody=4 is larger than the number of fragments \(3\)"):
        run(mbe_input("qcmb-fake-sleep", "fake", "none", bsse="nocp", max_nbody=4))
    assert CALLS == []


def test_unknown_program_lists_available_ones() -> None:
    with pytest.raises(InputError, match=r"unknown program 'nosuchcode'.*Programs available here:.*qcmb-fake-sleep"):
        run(mbe_input("nosuchcode", "hf", "sto-3g"))


def test_unavailable_program() -> None:
    with pytest.raises(InputError, match=r"program 'cfour' is not available on this machine.*available here"):
        run(mbe_input("cfour", "hf", "sto-3g"))


def test_malformed_json_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"molecule": ')
    with pytest.raises(InputError, match=r"bad\.json' is not valid JSON"):
        run(bad)
    with pytest.raises(InputError, match="input string is not valid JSON"):
        run('{"molecule": ')
    with pytest.raises(InputError, match=r"missing\.json' does not exist"):
        run(tmp_path / "missing.json")


def test_unknown_fields(tmp_path: Path) -> None:
    data = json.loads(fake().model_dump_json())
    data["colour"] = "blue"
    with pytest.raises(InputError, match="unknown field 'colour': remove it or check its spelling"):
        run(data)
    data.pop("colour")
    data["specification"]["keywords"]["max_nbdy"] = 2
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"unknown field 'specification\.keywords\.max_nbdy'"):
        run(path)
    assert CALLS == []


def test_json_yaml_dict_and_v1_inputs_are_accepted(tmp_path: Path) -> None:
    import yaml
    from qcmanybody.models.v1 import ManyBodyInput as ManyBodyInputV1

    inp = fake()
    reference = run(inp, ncores=2, memory=2).return_result
    js = tmp_path / "in.json"
    js.write_text(inp.model_dump_json())
    ym = tmp_path / "in.yaml"
    ym.write_text(yaml.safe_dump(json.loads(inp.model_dump_json())))
    v1 = ManyBodyInputV1(**json.loads(inp.convert_v(1).json()))
    for form in (js, str(js), ym, json.loads(js.read_text()), js.read_text(), v1):
        assert run(form, ncores=2, memory=2).return_result == pytest.approx(reference, abs=1e-12)


def test_fake_failure_names_the_fragment() -> None:
    inp = mbe_input("qcmb-fake-sleep", "fake", "none", bsse="nocp", max_nbody=2,
                    keywords={"sleep": 0.01, "fail_real_atoms": [6]})
    with pytest.raises(FragmentError) as info:
        run(inp, ncores=2, memory=2)
    err = info.value
    assert err.level == 2 and err.program == "qcmb-fake-sleep"
    assert err.error_type == "unknown_error"  # QCEngine's own error_type, unchanged
    assert err.error_message == "QCEngine Unknown Error: fake failure for a fragment with 6 real atoms"
    assert err.label in str(err) and "n-body level 2" in str(err)


@pytest.mark.asyncio
async def test_nwchem_failure_cancels_fragments_in_flight() -> None:
    """Level-2 fragments use a basis NWChem does not know; the rest is cancelled and killed."""
    require_program("nwchem")
    inp = ManyBodyInput(
        molecule=waters(4),
        specification={
            "driver": "energy",
            "keywords": {"bsse_type": ["nocp"], "levels": {1: "good", 2: "bad"}},
            "specification": {
                "good": {"program": "nwchem", "model": {"method": "hf", "basis": "6-31g*"}, "driver": "energy"},
                "bad": {"program": "nwchem", "model": {"method": "hf", "basis": "no-such-basis"},
                        "driver": "energy"},
            },
        },
    )
    t0 = time.monotonic()
    with anyio.fail_after(120), pytest.raises(FragmentError) as info:
        await run_manybody(inp, ncores=2, memory=2)
    err = info.value
    assert err.program == "nwchem" and '"bad"' in err.label and err.level in (1, 2)
    assert err.error_type  # QCEngine's own type, unchanged
    assert "no-such-basis" in err.error_message.lower() or "basis" in err.error_message.lower()
    assert time.monotonic() - t0 < 120
    await anyio.sleep(0.5)
    # Our programs are this process's children (their sessions differ, their parent does not);
    # other sessions on the machine may run nwchem at the same time.
    mine = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "nwchem" in proc.name() and proc.status() != psutil.STATUS_ZOMBIE:
                mine.append(proc)
    assert not mine


def test_trimer_still_fine_after_errors() -> None:
    # Errors must not leave global state behind.
    res = run(mbe_input("qcmb-fake-sleep", "fake", "none", bsse="cp", max_nbody=3, molecule=trimer(),
                        keywords={"sleep": 0.0}), ncores=2, memory=2)
    assert res.success


def test_auto_executor_choice_per_program() -> None:
    from types import SimpleNamespace

    from qcmb_async.executors import resolve_executor

    opts = SimpleNamespace(slots=2)
    assert resolve_executor("auto", {"nwchem"}, opts).name == "threads"
    assert resolve_executor("auto", {"pyscf"}, opts).name == "processes"
    assert resolve_executor("auto", {"psi4"}, opts, psiapi=True).name == "processes"
    with pytest.raises(InputError, match=r"cannot run Psi4's in-process mode.*executor='processes'"):
        resolve_executor("threads", {"psi4"}, opts, psiapi=True)
    from qcmb_async.executors.threads import ThreadExecutor

    with pytest.raises(InputError, match=r"cannot run Psi4's in-process mode"):  # an instance is no way round it
        resolve_executor(ThreadExecutor(2), {"psi4"}, opts, psiapi=True)
    with pytest.raises(InputError, match="scheduler= is only used by executor='dask'"):
        resolve_executor("threads", {"nwchem"}, opts, scheduler="tcp://127.0.0.1:1")
