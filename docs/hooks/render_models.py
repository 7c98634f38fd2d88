"""mkdocs hook: tables in the docs rendered from the pydantic models, so they cannot drift.

A page line ``<!-- render: settings -->`` becomes the table of :class:`qcmb_async.settings.Settings`,
``<!-- render: run-options -->`` the table of :class:`qcmb_async._core.options.RunOptions`.
"""

from __future__ import annotations

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


def render(markdown: str) -> str:
    """Replace every render marker in ``markdown``."""
    if "<!-- render: settings -->" in markdown:
        from qcmb_async.settings import Settings

        table = model_table(Settings, prefix="QCMB_ASYNC_", header=("variable", "default", "meaning"))
        markdown = markdown.replace("<!-- render: settings -->", table)
    if "<!-- render: run-options -->" in markdown:
        from qcmb_async._core.options import RunOptions

        table = model_table(RunOptions, header=("option", "default", "meaning"))
        markdown = markdown.replace("<!-- render: run-options -->", table)
    return markdown


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs entry point."""
    return render(markdown)
