"""Execute docs/notebooks/quickstart.ipynb so it cannot rot."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import require_module, require_program

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
