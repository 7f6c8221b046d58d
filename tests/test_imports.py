"""The package's import graph has no circle (issue 16: experiments are leaves)."""

from __future__ import annotations

import ast
from pathlib import Path

import genlab

ROOT = Path(genlab.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """genlab module -> the genlab modules it imports anywhere in its text (module level,
    inside functions, under TYPE_CHECKING), resolved to modules that exist."""
    files = {module_name(f): f for f in ROOT.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(head + ([base] if base else []))
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def test_the_circle_finder_finds_a_planted_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_the_experiments_and_their_shared_modules():
    graph = import_graph()
    assert "genlab.engine" in graph["genlab.experiments.dcgan"]
    assert "genlab.dcgan_nets" in graph["genlab.experiments.gan"]


def test_genlab_has_no_import_circle():
    assert find_circle(import_graph()) is None


def test_no_report_module_imports_an_experiment():
    """An experiment imports its report, never the other way round (genlab/reports/__init__.py)."""
    graph = import_graph()
    reports = [name for name in graph if name.startswith("genlab.reports.")]
    assert "genlab.reports.minimax" in reports
    assert {name: sorted(t for t in graph[name] if t.startswith("genlab.experiments")) for name in reports} == {
        name: [] for name in reports}


def test_no_experiment_imports_another_experiment():
    """Code two experiments share lives outside genlab/experiments/ (issue 16)."""
    graph = import_graph()
    experiments = [name for name in graph if name.startswith("genlab.experiments.")]
    assert {name: sorted(t for t in graph[name] if t.startswith("genlab.experiments.")) for name in experiments} == {
        name: [] for name in experiments}
