"""
Every module of the mailrelay package opens with a man-page style header (issue 17 item 11).

The header is the module's docstring: a one-line summary, then the sections JOB,
SECURITY, STANDARDS, DIAGNOSTICS and CONFIGURATION, each a line of its own at the start
of a line (the body indented below it). A new module without them fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mailrelay"

SECTIONS = ("JOB", "SECURITY", "STANDARDS", "DIAGNOSTICS", "CONFIGURATION")

MODULES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def missing_sections(path: Path) -> list[str]:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return [s for s in SECTIONS if not re.search(rf"^{s}$", docstring, re.MULTILINE)]


def test_the_package_has_modules() -> None:
    assert len(MODULES) > 10


@pytest.mark.parametrize("module", MODULES)
def test_module_header_has_every_section(module: str) -> None:
    path = PACKAGE / module
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert docstring.strip(), f"mailrelay/{module} has no docstring"
    summary = docstring.strip().splitlines()[0]
    assert summary not in SECTIONS, f"mailrelay/{module}: the header opens with a one-line summary"
    assert missing_sections(path) == [], f"mailrelay/{module}: header sections missing"

