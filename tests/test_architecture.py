"""Guards the shape of the package: the import graph has no cycle and nothing reaches back up
the pipeline input -> plan -> schedule -> execute -> assemble (docs/architecture.md draws it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qcmb_async"

#: Layers, lowest first. A module may import from its own layer or a lower one, never a higher one.
#: Inside ``_core`` the pipeline stages are layers too: a stage imports upstream stages' data types,
#: never a downstream stage.
LAYERS: list[set[str]] = [
    {"_version", "_core", "_core.causes"},                              # leaves: import nothing of the package
    {"errors", "_logs", "_files", "programs", "settings",
     "_core.compact", "_core.contract", "_core.events", "_core.resources"},  # foundation
    {"harnesses"},
    {"_core.cost", "_core.chgmult", "_core.xyz", "_core.fragment", "_core.pdb", "_core.inputs", "_core.options",
     "_core.checks", "_core.versions"},  # input
    {"_core.screening", "_core.plan", "_core.gmbe", "_core.gmbe_fragment", "_core.gmbe_plan"},  # plan
    {"_core.ready", "_core.store_layout", "_core.store", "_core.outcome", "_core.invariance",
     "_core.scheduler"},                                               # schedule
    {"_qcengine", "executors"},                                        # execute
    {"_core.fill", "_core.assemble", "_core.gmbe_assemble"},          # assemble
    {"_runner", "simulate", "_synthetic"},                             # the pipeline put together
    {"_fronts"},                                                       # blocking and streaming fronts
    {"_dynamics", "_optimize", "_frequencies"},                        # drivers running many MBEs
    {"events", "store", "__init__"},                                   # the public facade
    {"cli", "timeline", "progress", "__main__", "ase"},                # front ends
]


def _unit(module: str) -> str:
    """``_core.plan`` for modules of ``_core``; the top-level module or package otherwise."""
    parts = module.split(".")
    if parts[0] == "_core" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def _layer(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"module unit {unit!r} is in no layer of tests/test_architecture.py: place it there")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports (relative to the package), anywhere in the file."""
    return _imports_in(path.read_text(), _module_name(path), is_package=path.name == "__init__.py")


def _imports_in(source: str, name: str, *, is_package: bool = False) -> set[str]:
    """Modules of the package that the source of module ``name`` imports: at module level, lazily inside
    functions and methods (``ast.walk`` visits every node, so an import that waits for its first call still
    counts), and through ``importlib.import_module("qcmb_async....")`` with a literal name."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                and node.args[0].value.split(".")[0] == "qcmb_async"):
            found.add(".".join(node.args[0].value.split(".")[1:]) or "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "qcmb_async":
                target = node.module.split(".")[1:]
            else:
                continue
            if not target:  # ``from . import x`` / ``from qcmb_async import x``: x may be a module
                found.update(alias.name for alias in node.names)
                target = ["__init__"]
            found.add(".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "qcmb_async":
                    found.add(".".join(alias.name.split(".")[1:]) or "__init__")
    return found


def _edges() -> list[tuple[str, str]]:
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    edges = []
    for path in PACKAGE.rglob("*.py"):
        src = _unit(_module_name(path))
        for target in _imports(path):
            if target not in modules and target.rsplit(".", 1)[0] in modules:
                target = target.rsplit(".", 1)[0]  # ``from .x import name``
            if target in modules:
                dst = _unit(target)
                if dst != src:
                    edges.append((src, dst))
    return edges


def test_no_module_reaches_up() -> None:
    bad = sorted({(a, b) for a, b in _edges() if _layer(a) < _layer(b)})
    assert not bad, "imports that reach up a layer (see LAYERS):\n" + "\n".join(f"  {a} -> {b}" for a, b in bad)


def test_no_import_cycle_between_units() -> None:
    graph: dict[str, set[str]] = {}
    for a, b in _edges():
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if not state.get(nxt):
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in list(graph):
        if not state.get(node):
            visit(node, [node])


def test_the_guard_sees_a_violation() -> None:
    # The checker itself must be able to fail: the scheduler importing an executor would reach up.
    assert _layer(_unit("_core.scheduler")) < _layer(_unit("executors.threads"))
    assert ("_runner", "executors") in set(_edges())


LAZY_REACH_UP = """
from __future__ import annotations

from ..errors import InputError


def check(x):
    if x:
        from ..executors.threads import ThreadExecutor  # lazy: only when called

        return ThreadExecutor
    import importlib

    return importlib.import_module("qcmb_async.cli")
"""


def test_the_guard_sees_a_lazy_import_reaching_up() -> None:
    # A function-level import (and an import_module with a literal name) counts like one at the top.
    found = _imports_in(LAZY_REACH_UP, "_core.scheduler")
    assert found == {"errors", "executors.threads", "cli"}
    src = _unit("_core.scheduler")
    assert all(_layer(src) < _layer(_unit(target)) for target in ("executors.threads", "cli"))


def test_leaves_import_nothing_of_the_package() -> None:
    """The lowest layer's modules are what errors.py may build on: they import no module of the package."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    for name in LAYERS[0]:
        path = modules[name] if name in modules else PACKAGE / name.replace(".", "/") / "__init__.py"
        assert not _imports(path), f"{name} is in the lowest layer but imports {_imports(path)}"
