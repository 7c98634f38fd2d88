"""Tables in the docs generated from the pydantic models, so they cannot drift.

Between a page line ``<!-- render: settings -->`` and the next ``<!-- /render -->`` stands the table of
:class:`qcmb_async.settings.Settings`; after ``<!-- render: run-options -->`` the table of
:class:`qcmb_async._core.options.RunOptions`. The tables are written into the markdown file itself (a
reader of the repository sees them): ``python docs/hooks/render_models.py`` regenerates them, and
``tests/test_docs.py`` fails when a file is out of date with the models. As an mkdocs hook it renders
the same tables into the built site.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

#: RunOptions fields the scheduler sets itself (not keyword arguments of run_manybody).
INTERNAL = {"order", "auto_cores", "auto_memory", "max_fragment_ncores", "max_fragment_memory",
            "memory_per_core", "auto_max_ncores"}
#: Options whose model default is only a placeholder: unset, the scheduler chooses (the description says how).
UNSET_MEANS_CHOSEN = {"fragment_ncores"}


def model_table(model: type[BaseModel], *, prefix: str = "", header: tuple[str, str, str]) -> str:
    """A markdown table of ``model``'s fields: name (with ``prefix``), default, description."""
    rows = [f"| {' | '.join(header)} |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in INTERNAL:
            continue
        if field.default_factory is not None or field.is_required() or name in UNSET_MEANS_CHOSEN:
            default = "see meaning"
        else:
            default = "unset" if field.default is None else f"`{field.default!r}`"
        text = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{prefix}{name.upper() if prefix else name}` | {default} | {text} |")
    return "\n".join(rows)


#: Pages holding render markers, relative to the repository root.
PAGES = ("docs/configuration.md",)
END = "<!-- /render -->"


def _tables() -> dict[str, str]:
    from qcmb_async._core.options import RunOptions
    from qcmb_async.settings import Settings

    return {"settings": model_table(Settings, prefix="QCMB_ASYNC_", header=("variable", "default", "meaning")),
            "run-options": model_table(RunOptions, header=("option", "default", "meaning"))}


def render(markdown: str) -> str:
    """``markdown`` with the table after every render marker regenerated (up to ``<!-- /render -->``)."""
    tables = _tables()

    def table(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in tables:
            raise ValueError(f"unknown render marker {name!r}: use one of {sorted(tables)}")
        return f"<!-- render: {name} -->\n\n{tables[name]}\n\n{END}"

    # A marker with its old table up to the end marker, or a bare marker (the table not written yet).
    return re.sub(r"<!-- render: ([\w-]+) -->(?:.*?" + re.escape(END) + r")?", table, markdown, flags=re.S)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs entry point."""
    return render(markdown)


def main(root: Path) -> int:
    """Rewrite the pages whose tables are out of date; print which."""
    for page in PAGES:
        path = root / page
        text = path.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"rendered the tables of {page}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main(Path(__file__).resolve().parents[2]))
