"""Execute docs/notebooks/quickstart.ipynb so it cannot rot; interrupt runs in a real Jupyter kernel."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil

from tests.helpers import alive, require_module, require_program

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs() -> None:
    require_program("pyscf")
    nbformat = require_module("nbformat")
    nbclient = require_module("nbclient")
    require_module("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "CP interaction energy:" in text and "MBE(2) interaction energy:" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)


def _shell_reply(kc: Any, msg_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]


def _nwchems(kernel: psutil.Process) -> list[psutil.Process]:
    try:
        return [c for c in kernel.children(recursive=True) if c.name().startswith("nwchem")]
    except psutil.Error:
        return []


_SETUP = """
import sys
sys.path.insert(0, {root!r})
import qcmb_async
from tests.helpers import mbe_input, waters
# Two ~10 s NWChem dimers run first (largest first), side by side: an interrupt lands mid-fragment.
inp = mbe_input("nwchem", "hf", "aug-cc-pvtz", bsse="nocp", max_nbody=2, molecule=waters(4))
"""


def test_interrupting_a_kernel_cell_stops_the_run_and_its_programs() -> None:
    """Jupyter's "Interrupt kernel" on a cell awaiting run_manybody, and on one calling run()."""
    require_program("nwchem")
    require_module("jupyter_client")
    require_module("ipykernel")
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        pid: list[str] = []
        kc.execute_interactive("import os; print(os.getpid())", timeout=60,
                               output_hook=lambda m: pid.append(m["content"].get("text", "")))
        kernel = psutil.Process(int("".join(pid).strip()))
        reply = kc.execute_interactive(_SETUP.format(root=str(NOTEBOOK.parents[2])), timeout=120)
        assert reply["content"]["status"] == "ok", reply["content"]
        for cell, expected in (("res = await qcmb_async.run_manybody(inp, ncores=2, memory=2, store=None)",
                                "CancelledError"),
                               ("res = qcmb_async.run(inp, ncores=2, memory=2, store=None)", "KeyboardInterrupt")):
            msg_id = kc.execute(cell)
            deadline = time.monotonic() + 60
            while not [p for p in alive(_nwchems(kernel)) if time.time() - p.create_time() > 1.0]:
                assert time.monotonic() < deadline, "NWChem never started"
                time.sleep(0.05)
            programs = alive(_nwchems(kernel))
            interrupted = time.monotonic()
            km.interrupt_kernel()
            content = _shell_reply(kc, msg_id, timeout=30)
            waited = time.monotonic() - interrupted
            assert content["status"] == "error" and content["ename"] == expected, content
            # Without waking the loop, the await form waits for a fragment to finish (~8 s more here).
            assert waited < 4.0, f"the cell took {waited:.1f} s to stop after the interrupt"
            while alive(programs) and time.monotonic() - interrupted < 10:
                time.sleep(0.05)
            assert alive(programs) == [] and alive(_nwchems(kernel)) == []
            reply = kc.execute_interactive("assert 'res' not in globals()", timeout=30)  # no result was assigned
            assert reply["content"]["status"] == "ok", reply["content"]
        # Errors keep their type through the wake-up task group, and the kernel still works.
        reply = kc.execute_interactive("await qcmb_async.run_manybody(inp, ncores=0)", timeout=60)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "InputError", reply["content"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
