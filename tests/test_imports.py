"""The package's internal imports form no circle; the option table and the extraction config
import no heavy runtime."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys

import pytest


def _modules() -> dict[str, str]:
    """Every module of the package: dotted name -> source file.

    The stages live in their own folders (pyproject's package-dir), so each is walked too.
    """
    found = {}
    for root in ("featcache", *(f"featcache.{stage}" for stage in ("extract", "classify"))):
        package = importlib.import_module(root)
        found[root] = package.__file__
        for info in pkgutil.walk_packages(package.__path__, f"{root}."):
            spec = importlib.util.find_spec(info.name)
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                found[info.name] = spec.origin
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """featcache-internal imports, top-level and inside functions alike."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path of module names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _without_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges into a package's ``__init__`` only count where the importer is outside it."""
    return {
        name: {t for t in targets if not name.startswith(t + ".")}
        for name, targets in graph.items()
    }


def test_walk_finds_both_stages():
    modules = _modules()
    assert {"featcache.options", "featcache.extract.config", "featcache.classify.cli",
            "featcache.extract.compute.worker"} <= set(modules)
    graph = _graph(modules)
    assert "featcache.extract.compute.worker" in graph["featcache.extract.compute.distributed"]
    assert "featcache.options" in graph["featcache.extract.config"]


def test_no_import_circle():
    graph = _without_packages(_graph(_modules()))
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_finder_sees_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("module", ["featcache.options", "featcache.extract.config"])
def test_config_imports_no_runtime(module):
    code = f"import {module}, sys; print(sorted({{'torch', 'openvino'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
