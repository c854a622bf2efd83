"""The package's layers stay layers: no import cycle, every import points down, modules stay small.

    ops (the op contract)  <  core (tracker, state, config, checkpoints)  <  distributed  <  the
    application (CLI commands, offline scorer, demo, integrations)

Imports are read from the source (function-level ones included), so a lazy import that climbs a
layer counts as much as a top-level one.
"""

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO

PACKAGE = REPO / "tdds_kernels"
LAYERS = {"ops": 0, "core": 1, "data": 1, "distributed": 2}  # everything else: the application (3)
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The package modules `name` imports (by its source), resolved to modules that exist."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import mod` imports the module; `from mod import name` the module mod
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            if t in MODULES and t != name and t != "tdds_kernels":
                out.add(t)
    return out


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.get(parts[1], 3) if len(parts) > 1 else 3


def test_no_import_cycle():
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n) :] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    up = sorted(n for n in GRAPH[name] if layer(n) > layer(name))
    assert not up, f"{name} (layer {layer(name)}) imports from a higher layer: {up}"


def test_the_layers_exist_and_the_graph_is_read():
    assert {"tdds_kernels.ops.schema", "tdds_kernels.core.tracker", "tdds_kernels.distributed.sharded"} <= set(MODULES)
    assert "tdds_kernels.ops.registry" in GRAPH["tdds_kernels.core.tracker"]
    assert "tdds_kernels.core.tracker" in GRAPH["tdds_kernels.distributed.sharded"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]}: {lines} lines (split it by what it does)"


# ---------------------------------------------------------------- private members stay private
# A private name (`_x`, not dunder) belongs to the module that defines it: neighbours call public
# methods. Defined = assigned (`self._x = ...`, `_x = ...`) or declared (def / class) in a module.
# Justified exceptions, "module: name", each with its reason:
PRIVATE_ALLOWED = {
    # The Triton package shares its jit helpers between its kernel modules (one kernel family).
    "tdds_kernels.ops.triton: _update_kernel",
    "tdds_kernels.ops.triton.update_topk: _to_storage",
}


def _private_names(tree) -> tuple[set[str], list[tuple[int, str]]]:
    defined, used = set(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("tdds_kernels")):
            # `from .mod import _x`: another module's private name
            used += [(node.lineno, a.name) for a in node.names if a.name.startswith("_") and a.name[:2] != "__"]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base_is_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if isinstance(node.ctx, ast.Store) and base_is_self:
                defined.add(node.attr)
            else:
                used.append((node.lineno, node.attr))
    return defined, used


PRIVATE = {name: _private_names(ast.parse(path.read_text())) for name, path in MODULES.items()}


def test_no_module_reaches_into_another_modules_private_members():
    owners = {}
    for name, (defined, _) in PRIVATE.items():
        for attr in defined:
            owners.setdefault(attr, set()).add(name)
    found = []
    for name, (defined, used) in PRIVATE.items():
        for line, attr in used:
            # Another module's private member: defined in the package, but not in this module.
            if attr in owners and f"{name}: {attr}" not in PRIVATE_ALLOWED and attr not in defined:
                found.append(f"{MODULES[name].relative_to(REPO)}:{line}: ._{attr[1:]} of {sorted(owners[attr])}")
    assert not found, "private members used outside their module:\n" + "\n".join(found)


def test_the_private_member_check_can_fail():
    source = "from .collectives import _COL\ndef f(t):\n    t.local._record(1)\n    t._state.x = 2\n"
    defined, used = _private_names(ast.parse(source))
    assert {attr for _, attr in used} == {"_COL", "_record", "_state"} and not defined & {"_COL", "_record", "_state"}
