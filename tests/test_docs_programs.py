"""docs/programs.md's "what each program can do" table is the program registry's (docs/hooks/program_table.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from qcmb_async.programs import PROGRAMS

ROOT = Path(__file__).resolve().parents[1]


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("program_table", ROOT / "docs" / "hooks" / "program_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_in_the_markdown_file_is_the_registrys() -> None:
    hook = _hook()
    text = (ROOT / "docs" / "programs.md").read_text(encoding="utf-8")
    assert hook.current(text) == hook.block(), "docs/programs.md is stale: run python docs/hooks/program_table.py"


def test_every_registry_entry_has_a_row_saying_what_it_can_do() -> None:
    rows = _hook().table().splitlines()[2:]
    assert len(rows) == len(PROGRAMS)
    by_name = {row.split("|")[1].strip().strip("`"): row.split("|") for row in rows}
    assert set(by_name) == set(PROGRAMS)
    # columns: program, runs as, CP/VMFC, analytic Hessian, embedding charges, cores, cost model, methods, install
    tblite = [cell.strip() for cell in by_name["tblite"]]
    assert tblite[3].startswith("**no**") and tblite[4] == "**no**" and "GIL-free → threads" in tblite[2]
    assert "`gfn2-xtb`" in tblite[8] and "qcmb_async[xtb]" in tblite[9]
    pyscf = [cell.strip() for cell in by_name["pyscf"]]
    assert "worker processes" in pyscf[2]
    assert pyscf[3] == "yes" and pyscf[4] == "yes" and "b3lyp-d3bj" in pyscf[8] and "r2scan-d4" in pyscf[8]
    assert [cell.strip() for cell in by_name["psi4"]][5] == "yes"  # embedding charges


def test_the_hook_renders_a_stale_block_afresh() -> None:
    hook = _hook()
    stale = f"before\n{hook.START}\n| old | table |\n{hook.END}\nafter"
    assert hook.render(stale) == f"before\n{hook.block()}\nafter"
    assert hook.render("no block here") == "no block here"
