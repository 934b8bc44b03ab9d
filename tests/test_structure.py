"""The code's shape: imports run one way (no cycle among the project's modules, counting the imports inside
functions and the package ``__init__``s each import runs), and the value types load nothing heavy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from search.settings import REPO_ROOT

PACKAGES = ("search", "ui")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO_ROOT / package).rglob("*.py"))}


def type_checking_only(tree: ast.Module) -> set[int]:
    """The ids of import nodes under ``if TYPE_CHECKING:`` (they never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for statement in node.body for child in ast.walk(statement))
    return skipped


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules that importing ``name`` runs directly: what it imports (anywhere but under
    TYPE_CHECKING), and for each, the packages above it that are not also above ``name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = type_checking_only(tree)
    targets = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                           for alias in node.names)
    edges = set()
    own = {".".join(name.split(".")[:end]) for end in range(1, name.count(".") + 2)}
    for target in targets:
        parts = target.split(".")
        for end in range(1, len(parts) + 1):
            step = ".".join(parts[:end])
            if step in known and step not in own:
                edges.add(step)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    known = modules()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert not cycles(graph)
    assert "search.evidence.attribution" in graph["search.rerank.pointwise"]  # at the top, not inside a function


def test_the_finder_sees_a_cycle_through_a_package_init() -> None:
    graph = {"a": {"b.events"}, "b.events": {"b"}, "b": {"b.pointwise"}, "b.pointwise": {"a"}}
    assert cycles(graph) == [["a", "b", "b.events", "b.pointwise"]]


def test_reading_events_loads_no_reranker_engine_index_or_metric() -> None:
    """``search.rerank.events`` (and the other value types) import nothing of the project, and no package ``__init__``
    on the way loads FAISS, the stemmer, ir-measures, NumPy or PyTorch."""
    code = ("import sys, search.rerank.events, search.rerank.probe, search.evidence.sentences, search.trec; "
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=REPO_ROOT).stdout.split())
    ours = {name for name in loaded if name.split(".")[0] in PACKAGES}
    assert ours <= {"search", "search.lazy", "search.rerank", "search.rerank.events", "search.rerank.probe",
                    "search.evidence", "search.evidence.sentences", "search.trec", "search.corpus", "search.irds",
                    "search.settings"}
    assert not loaded & {"faiss", "Stemmer", "ir_measures", "numpy", "torch", "transformers"}
