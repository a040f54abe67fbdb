"""
The package's import graph is acyclic (issue 17 item 5).

Every module under ``mailrelay/`` is parsed with :mod:`ast` and each import of a mailrelay
module is an edge, wherever it stands: an import inside a function is a dependency all the
same, only a later one. A cycle fails the test, which prints it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mailrelay"


def module_name(path: Path) -> str:
    parts = ["mailrelay", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: {mailrelay modules it imports}}`` for every module of the package."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}

    def resolve(name: str) -> str | None:
        # `from mailrelay.x import y`: y is a module when mailrelay.x.y is one, else a name in x.
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target.split(".")[0] != "mailrelay":
                    continue
                found = resolve(target)
                if found is not None and found != name:
                    graph[name].add(found)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_graph_sees_function_level_imports() -> None:
    """The graph is built from real imports, including those inside functions."""
    graph = import_graph()
    assert "mailrelay.config" in graph["mailrelay.store.connection"]
    assert "mailrelay.cli.common" in graph["mailrelay.cli.main"]


def test_import_graph_is_acyclic() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_function_level_imports_say_why() -> None:
    """A mailrelay module imported inside a function (only for an optional dependency) carries
    a comment saying why, on its line or on one of the two lines before it."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines), str(path))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mailrelay" \
                        or isinstance(node, ast.Import) and any(a.name.split(".")[0] == "mailrelay"
                                                                for a in node.names):
                    nearby = lines[max(0, node.lineno - 3):node.lineno]
                    if not any("#" in line for line in nearby):
                        unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not unexplained, "function-level imports of mailrelay modules without a reason: " + ", ".join(
        sorted(set(unexplained)))
