"""The import graph of common/ and recipes/: the layers contract in pyproject.toml holds, and nothing cycles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the packages under `root`, not the installed ones
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_the_recipes_apart_contract_covers_every_registered_recipe():
    """A recipe added to `recipes.RECIPES` is kept apart from the others from the day it is added: the contract
    takes every module of recipes/ by wildcard, and import-linter expands it to each registered recipe."""
    import grimp as graph_builder
    import tomllib

    from recipes import RECIPES

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    apart = next(c for c in contracts if c["id"] == "recipes-apart")
    graph = graph_builder.build_graph("recipes", "common")
    covered = set().union(*(graph.find_matching_modules(expression) for expression in apart["modules"]))
    missing = {f"recipes.{name}" for name in RECIPES} - covered
    assert not missing, f"the recipes-apart contract in pyproject.toml leaves out {sorted(missing)}"


def test_an_import_from_a_lower_layer_to_a_higher_one_breaks_the_contract(tmp_path):
    for package in ("common", "recipes"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert lint_imports(tmp_path).returncode == 0
    # Inside a function, as an import that dodged a cycle would be: the contract sees it all the same.
    with open(tmp_path / "common" / "data" / "labels.py", "a", encoding="utf-8") as module:
        module.write("\n\ndef _upward():\n    from common.training.single_run import train_evaluate_predict\n\n"
                     "    return train_evaluate_predict\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "common is layered: every import points down BROKEN" in result.stdout
    assert "common.data.labels -> common.training.single_run" in result.stdout


def test_no_module_of_common_is_in_an_import_cycle():
    """Function-level imports count: grimp reads every import statement, wherever it is."""
    graph = grimp.build_graph("common")
    imports = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    cycles = [component for component in strongly_connected(imports) if len(component) > 1]
    assert cycles == []
    assert not any(module in targets for module, targets in imports.items())


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of a directed graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in edges:
        if node not in index:
            visit(node)
    return components
