"""
mailrelay/mail/ is pure (issue 17): no I/O, no Redis, no network, no reactor.

Every module under ``mailrelay/mail/`` is parsed with :mod:`ast`; each import, wherever it
stands (a function-local import counts), is checked against FORBIDDEN. A mailrelay module
outside mail/ that a mail/ module imports is checked the same way, and so on through its own
imports: a pure module cannot reach the reactor through a helper either.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mailrelay"
MAIL = PACKAGE / "mail"

#: Import prefixes a pure module must not reach: the reactor and network clients, the
#: store (Redis), and the layers above mail/ (services, protocol engines, web, CLI, daemon).
FORBIDDEN = ("twisted.internet", "twisted.web", "txredisapi", "treq", "psycopg", "psycopg2",
             "mailrelay.store", "mailrelay.services", "mailrelay.smtp", "mailrelay.web", "mailrelay.cli",
             "mailrelay.service", "mailrelay.redisproc")

#: Known exceptions, each (importing module, imported name): why. Keep this short.
ALLOWED: dict[tuple[str, str], str] = {}


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_name(path: Path) -> str:
    parts = ["mailrelay", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, package: str) -> list[tuple[str, str]]:
    """``[(module imported, full name imported)]`` of a module's source, relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(base, f"{base}.{alias.name}") for alias in node.names]
    return found


def module_path(name: str) -> Path | None:
    """The file of mailrelay module ``name`` (or of the module a ``from x import y`` names)."""
    while name.startswith("mailrelay"):
        relative = Path(*name.split(".")[1:])
        for candidate in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py"):
            if name != "mailrelay" and candidate.is_file():
                return candidate
        name = name.rpartition(".")[0]
    return None


def impurities(sources: dict[str, str], roots: list[str] | None = None) -> list[str]:
    """
    The forbidden imports reachable from ``roots`` (default: every module of ``sources``,
    {module name: source}), as lines ``importer imports name``. A mailrelay module they
    import is read from ``sources`` when there, else from the package.
    """
    problems = []
    todo = list(sources if roots is None else roots)
    seen = set(todo)
    while todo:
        name = todo.pop()
        path = None if name in sources else module_path(name)
        if path is not None:
            source = path.read_text(encoding="utf-8")
            package = module_name(path) if path.name == "__init__.py" else name.rpartition(".")[0]
        elif name in sources:
            source, package = sources[name], name.rpartition(".")[0]
        else:
            continue
        for module, full in imports_of(source, package):
            if (name, full) in ALLOWED:
                continue
            if [p for p in FORBIDDEN if _matches(module, p) or _matches(full, p)]:
                problems.append(f"{name} imports {full}")
                continue
            if not module.startswith("mailrelay"):
                continue
            if full in sources or module in sources:
                target: str | None = full if full in sources else module
            else:
                target_path = module_path(full) or module_path(module)
                target = module_name(target_path) if target_path is not None else None
            if target is not None and target not in seen:
                seen.add(target)
                todo.append(target)
    return sorted(problems)


def mail_modules() -> dict[str, str]:
    return {module_name(p): p.read_text(encoding="utf-8") for p in sorted(MAIL.rglob("*.py"))}


def test_mail_has_the_pure_modules() -> None:
    assert {"mailrelay.mail.message", "mailrelay.mail.dkim", "mailrelay.mail.dsn",
            "mailrelay.mail.verp"} <= set(mail_modules())


def test_mail_modules_import_nothing_impure() -> None:
    assert impurities(mail_modules()) == []


def test_the_check_finds_direct_local_relative_and_indirect_imports() -> None:
    """The checker itself: a forbidden import is found wherever it stands."""
    sources = {
        "mailrelay.mail.direct": "from twisted.internet import defer\n",
        "mailrelay.mail.local": "def f():\n    import txredisapi\n",
        "mailrelay.mail.relative": "from ..store import Storage\n",
        # pure itself, but through a helper outside mail/ it reaches treq
        "mailrelay.mail.indirect": "from mailrelay.mail import message\nfrom mailrelay import helper\n",
        "mailrelay.helper": "import treq\n",
        "mailrelay.mail.fine": "import email.utils\nfrom twisted.logger import Logger\nfrom . import message\n",
    }
    roots = [name for name in sources if name.startswith("mailrelay.mail.")]
    assert impurities(sources, roots) == [
        "mailrelay.helper imports treq",
        "mailrelay.mail.direct imports twisted.internet.defer",
        "mailrelay.mail.local imports txredisapi",
        "mailrelay.mail.relative imports mailrelay.store.Storage",
    ]
    assert impurities(sources, ["mailrelay.mail.fine"]) == []
