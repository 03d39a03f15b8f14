"""The package's floors: imports run downward only (config at the ground, then data, model, the training
and the measuring rooms, then what a user runs), and no two modules import each other in a loop."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "stage1_ds"
#: Each module's floor by its longest matching prefix; a module may import its own floor or lower ones,
#: except the two rooms of the training floor, which never import each other (`SIBLINGS`).
FLOORS = {
    "stage1_ds.errors": 0,
    "stage1_ds.config": 0,
    "stage1_ds.timeframes": 0,
    "stage1_ds.logs": 0,
    "stage1_ds.version": 0,
    "stage1_ds.outputs": 0,
    "stage1_ds.data": 1,
    "stage1_ds.model": 2,
    "stage1_ds.encoding": 3,
    "stage1_ds.card": 5,
    "stage1_ds.train": 4,
    "stage1_ds.evaluation": 4,
    "stage1_ds.export": 5,
    "stage1_ds.encoder": 5,
    "stage1_ds.doctor": 5,
    "stage1_ds.benchmark": 5,
    "stage1_ds.finetune": 5,
    "stage1_ds.experiments": 6,
    "stage1_ds.cli": 6,
    "stage1_ds.entry": 6,
    "stage1_ds.__main__": 6,
    "stage1_ds": 6,
}
SIBLINGS = ("stage1_ds.train", "stage1_ds.evaluation")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _floor(module: str) -> int:
    return FLOORS[max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)]


def _room(module: str) -> str | None:
    return next((s for s in SIBLINGS if module == s or module.startswith(s + ".")), None)


def _imports(module: str, top_level_only: bool) -> set[str]:
    """The package's modules that ``module`` imports (at its top level only, or anywhere in it)."""
    tree = ast.parse(MODULES[module].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("stage1_ds")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stage1_ds"):
            for alias in node.names:  # `from stage1_ds.data import figures` imports a module
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return {name for name in found if name in MODULES and name != module}


def test_every_module_has_a_floor() -> None:
    assert all(any(m == p or m.startswith(p + ".") for p in FLOORS) for m in MODULES)


def test_imports_run_downward_only() -> None:
    upward = []
    for module in MODULES:
        for imported in _imports(module, top_level_only=False):
            higher = _floor(imported) > _floor(module)
            sideways = None not in (_room(module), _room(imported)) and _room(module) != _room(imported)
            if higher or sideways:
                upward.append(
                    f"{module} (floor {_floor(module)}) imports {imported} (floor {_floor(imported)})"
                )
    assert not upward, "\n".join(upward)


def test_no_modules_import_each_other_in_a_loop() -> None:
    graph = {module: _imports(module, top_level_only=False) for module in MODULES}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    loops: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                loops.append(" -> ".join([*path[path.index(imported) :], imported]))
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    # A package's __init__ re-exporting its modules is not a loop of rooms: only loops between modules
    # that are not each other's package.
    real = [loop for loop in loops if not all(a.startswith(b) or b.startswith(a) for a, b in _pairs(loop))]
    assert not real, "\n".join(real)


def _pairs(loop: str) -> list[tuple[str, str]]:
    names = loop.split(" -> ")
    return list(itertools.pairwise(names))
