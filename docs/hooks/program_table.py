"""The "what each program can do" table of docs/programs.md, generated from the program registry.

The table lives in the markdown file itself, between ``<!-- programs-table:start -->`` and
``<!-- programs-table:end -->``, so it reads the same on GitHub as on the site;
``tests/test_docs_programs.py`` fails when it no longer matches :data:`qcmb_async.programs.PROGRAMS`.
After changing the registry, rewrite it with::

    python docs/hooks/program_table.py

As an mkdocs hook it also renders the block afresh at build time, so the site never shows a stale table.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

START = "<!-- programs-table:start -->"
END = "<!-- programs-table:end -->"
PAGE = Path(__file__).resolve().parents[1] / "programs.md"

#: Methods of programs whose registry entry does not list them (``methods=None``): a line for the reader.
METHOD_NOTES = {
    "pyscf": "HF, MP2, any libxc functional; DFT-D3/D4: `b3lyp-d3bj`, `b3lyp-d3zero`, `pbe0-d3bj`, "
             "`r2scan-d4`, `b3lyp-d4`, ... (pyscf-dispersion, in the extra)",
    "psi4": "what psi4 runs (HF, DFT and `-d3bj`/`-d4` with dftd3/dftd4 installed, MP2, CC, SAPT, ...)",
    "nwchem": "what NWChem runs (HF, DFT, MP2, CC, ...)",
    "xtb": "`gfn1-xtb`, `gfn2-xtb` (xtb-python)",
}


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _row(t: Any) -> str:
    """One table row of a :class:`qcmb_async.programs.ProgramTraits`."""
    runs = ("subprocess → threads" if not t.in_process else
            "in-process, GIL-free → threads" if t.releases_gil and t.thread_safe else "in-process → worker processes")
    kind = "MPI ranks" if getattr(t, "mpi", False) else "threads"
    cores = f"{kind} ({t.parallel_fraction:.2f} parallel)" if t.parallel_fraction > 0 else "one core"
    cost = "semi-empirical" if t.semi_empirical else "force field" if t.force_field else "basis functions"
    if t.methods is not None:
        methods = ", ".join(f"`{m}`" for m in sorted(t.methods))
    else:
        methods = METHOD_NOTES.get(t.name, "whatever its QCEngine harness runs")
    ghosts = "yes" if t.ghost_atoms else "**no** (nocp only)"
    cells = [f"`{t.name}`", runs, ghosts, _yes(t.analytic_hessian), "yes" if t.embedding_charges else "no",
             cores, cost, methods, t.install_hint.replace("|", "\\|")]
    return "| " + " | ".join(cells) + " |"


def table() -> str:
    """The markdown table, one row per registry entry in registry order."""
    from qcmb_async.programs import PROGRAMS

    header = ("| program | runs as (`executor=\"auto\"`) | CP/VMFC (ghost atoms) | analytic Hessian | "
              "embedding charges (EE-MBE) | cores per fragment | cost model | methods | install |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(t) for t in PROGRAMS.values()]
    return "\n".join(lines)


def block() -> str:
    """The table between its markers, as it must stand in docs/programs.md."""
    return (f"{START}\n<!-- generated from qcmb_async/programs.py by docs/hooks/program_table.py: do not edit -->\n"
            f"{table()}\n{END}")


_BLOCK = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)


def render(markdown: str) -> str:
    """``markdown`` with its programs-table block (if any) regenerated."""
    return _BLOCK.sub(lambda _m: block(), markdown)


def current(markdown: str) -> str | None:
    """The programs-table block as it stands in ``markdown``, None when it has none."""
    match = _BLOCK.search(markdown)
    return match.group(0) if match else None


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs entry point."""
    return render(markdown)


def main() -> int:
    """Rewrite the block in docs/programs.md; exit status 0."""
    text = PAGE.read_text(encoding="utf-8")
    if current(text) is None:
        print(f"{PAGE}: no {START} ... {END} block", file=sys.stderr)
        return 1
    PAGE.write_text(render(text), encoding="utf-8")
    print(f"{PAGE}: table rewritten from the registry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
