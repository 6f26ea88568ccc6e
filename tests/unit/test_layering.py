"""The module graph: no import circle anywhere in builder/, and no path composed under the
store's root outside store.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "builder"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every import of a builder module by another, lazy ones inside functions included;
    imports under `if TYPE_CHECKING:` are for annotations only and run never."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                       for n in ast.walk(node)}
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("builder"):
                assert node.module is not None
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("builder")}
        # `builder` itself only re-exports, lazily, by name (importlib)
        graph[name] = {m for m in found if m in modules and m not in (name, "builder")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_in_builder() -> None:
    graph = import_graph()
    assert len(graph) > 30
    assert cycles(graph) == []


def test_runs_and_locks_do_not_import_image_code() -> None:
    graph = import_graph()
    for module in ("builder.run", "builder.runner", "builder.lock", "builder.verify"):
        assert not any(m.startswith("builder.image") for m in graph[module]), module


def test_only_the_store_composes_paths_under_its_root() -> None:
    # `store.root / …`, or any root joined with a folder name only the store uses
    pattern = re.compile(r"store\.root\s*/|\.root\s*/\s*\"(objects|envs|runs|layers|blobs|"
                         r"images|by-recipe|by-output|verifications|sandbox)\"")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in PACKAGE.rglob("*.py")
                 if p.name != "store.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
