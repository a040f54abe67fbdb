"""
No module of the mailrelay package over MAX_MODULE_LINES lines, no class over MAX_CLASS_LINES
(issue 17, "Done when": no module over about 800 lines, no class over about 400 lines).

A module's size is its number of lines; a class's is ``end_lineno - lineno`` of its
``ClassDef`` (nested classes count on their own too, named ``Outer.Inner``). There is no
exception: a module or class that grows over its limit is split.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

PACKAGE = Path(__file__).resolve().parent.parent / "mailrelay"

MAX_MODULE_LINES = 800
MAX_CLASS_LINES = 400

def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def module_lines() -> dict[str, int]:
    """``{path relative to mailrelay/: number of lines}`` for every module of the package."""
    return {relative(p): len(p.read_text(encoding="utf-8").splitlines()) for p in modules()}


def class_spans(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    """``(qualified name, end_lineno - lineno)`` of every class in ``tree``, nested ones too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef):
            name = f"{prefix}{node.name}"
            assert node.end_lineno is not None
            yield name, node.end_lineno - node.lineno
            yield from class_spans(node, f"{name}.")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from class_spans(node, f"{prefix}{node.name}.<locals>.")
        else:
            yield from class_spans(node, prefix)


def class_lines() -> dict[str, int]:
    """``{"path::Class": span}`` for every class of the package."""
    spans: dict[str, int] = {}
    for path in modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for name, span in class_spans(tree):
            spans[f"{relative(path)}::{name}"] = span
    return spans


def test_no_module_over_the_limit() -> None:
    too_long = {path: n for path, n in module_lines().items()
                if n > MAX_MODULE_LINES}
    assert not too_long, (f"modules over {MAX_MODULE_LINES} lines (split them): "
                          + ", ".join(f"mailrelay/{p} ({n})" for p, n in sorted(too_long.items())))


def test_no_class_over_the_limit() -> None:
    too_long = {name: n for name, n in class_lines().items()
                if n > MAX_CLASS_LINES}
    assert not too_long, (f"classes over {MAX_CLASS_LINES} lines (split them): "
                          + ", ".join(f"mailrelay/{c} ({n})" for c, n in sorted(too_long.items())))

