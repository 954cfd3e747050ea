"""The Python package is layered, and every import points down (docs/architecture.md):

    _C, simt, reference  <  ops  <  distributed  <  functional  <  nn, parametrizations
    <  patching, fold  <  models, explain, bench, experiments, the package itself

Read from the source (imports at module level and inside functions alike), because importing any
submodule runs norm_ext/__init__.py, which imports every layer. A module may import its own layer
or one below, never one above, and the graph of imports has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "norm_ext"

LAYERS = [
    {"norm_ext._C", "norm_ext._simt", "norm_ext.simt", "norm_ext.reference"},
    {"norm_ext.ops"},
    {"norm_ext.distributed"},
    {"norm_ext.functional"},
    {"norm_ext.nn", "norm_ext.parametrizations"},
    {"norm_ext.patching", "norm_ext.fold"},
    {"norm_ext", "norm_ext.__main__", "norm_ext.models", "norm_ext.explain", "norm_ext.bench", "norm_ext.experiments"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for depth, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members if m != "norm_ext"):
            return depth
    if module == "norm_ext":
        return len(LAYERS) - 1
    raise AssertionError(f"{module} has no layer: add it to LAYERS in tests/test_layering.py")


def is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.is_dir() or any(path.parent.glob(path.name + ".*"))


def norm_ext_imports(name: str, is_package: bool, source: str) -> set[str]:
    """The norm_ext modules that module `name`'s source imports, resolved to full names."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "norm_ext")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if base.split(".")[0] != "norm_ext":
                continue
            # `from . import nn` names a module; `from .functional import layer_norm` a member.
            found.update(f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names)
    found.discard(name)
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {module_name(p): norm_ext_imports(module_name(p), p.name == "__init__.py", p.read_text()) for p in SOURCES}


def test_every_module_has_a_layer():
    for module in GRAPH:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    upward = {imported for imported in GRAPH[module] if layer_of(imported) > layer_of(module)}
    assert not upward, f"{module} (layer {layer_of(module)}) imports from a layer above it: {sorted(upward)}"


def test_no_import_cycle():
    # A package imports its submodules through __init__; its submodules' imports of the package
    # itself (`from .. import functional`) name a sibling, so the edges are module to module.
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for imported in sorted(GRAPH.get(module, ())):
            if state.get(imported) == 1:
                cycle = trail[trail.index(imported) :] + [imported] if imported in trail else trail + [imported]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, trail + [imported])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_check_sees_an_upward_import():
    # What the old circle looked like: the collectives module reaching for the modules, lazily.
    source = "def convert(m):\n    from .nn import SyncBatchNorm\n    from . import ops\n"
    imported = norm_ext_imports("norm_ext.distributed", False, source)
    assert imported == {"norm_ext.nn", "norm_ext.ops"}
    assert layer_of("norm_ext.nn") > layer_of("norm_ext.distributed") > layer_of("norm_ext.ops")
