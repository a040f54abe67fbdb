"""
The store's consumer-side protocols match the store (issue 17 item 4).

mailrelay/store/interfaces.py names, as typing.Protocol classes, the store methods each
service, web page and CLI command calls. The composed :class:`mailrelay.store.Storage` must
satisfy every one of them structurally: each member exists on it, is a coroutine function
exactly when the protocol's is (an async iterator when the protocol returns one), and takes
the same parameters (names, kinds, which have defaults). A store method renamed, made
synchronous or given another parameter without its protocol fails here, by name. A second
test keeps consumers from falling back to ``storage: Any``.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path
from typing import Any

import pytest

from mailrelay.store import Storage, interfaces

PACKAGE = Path(__file__).resolve().parent.parent / "mailrelay"

PROTOCOLS = [cls for cls in vars(interfaces).values()
             if isinstance(cls, type) and cls.__module__ == interfaces.__name__
             and getattr(cls, "_is_protocol", False)]


def own_members(protocol: type) -> dict[str, Any]:
    """The members a protocol class declares itself: methods and annotated attributes."""
    members: dict[str, Any] = {name: value for name, value in vars(protocol).items()
                               if (inspect.isfunction(value) or isinstance(value, property))
                               and not name.startswith("_")}
    for name, annotation in vars(protocol).get("__annotations__", {}).items():
        members[name] = annotation
    return members


def members_of(protocol: type) -> dict[str, Any]:
    """Every member of a protocol, its bases' included."""
    found: dict[str, Any] = {}
    for cls in reversed(protocol.__mro__):
        if cls in PROTOCOLS:
            found.update(own_members(cls))
    return found


def kind(function: Any) -> str:
    if inspect.iscoroutinefunction(function):
        return "coroutine function"
    if inspect.isasyncgenfunction(function) or str(function.__annotations__.get("return", "")).startswith("AsyncIterator"):
        return "async iterator"
    return "plain function"


def parameters(function: Any) -> list[tuple[str, Any, bool]]:
    return [(p.name, p.kind, p.default is not inspect.Parameter.empty)
            for p in inspect.signature(function).parameters.values()]


def instance_attributes(cls: type) -> set[str]:
    """Names assigned as ``self.<name>`` in the methods of ``cls`` and its bases."""
    names: set[str] = set()
    for base in cls.__mro__:
        if base is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(base))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
            for target in targets:
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id == "self"):
                    names.add(target.attr)
    return names


def test_the_module_has_protocols() -> None:
    assert len(PROTOCOLS) > 10
    assert all(members_of(protocol) for protocol in PROTOCOLS)


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda cls: cls.__name__)
def test_storage_satisfies_the_protocol(protocol: type) -> None:
    assigned = instance_attributes(Storage)
    for name, declared in own_members(protocol).items():
        where = f"{protocol.__name__}.{name}"
        if isinstance(declared, property):   # read-only: a class attribute (constant, nested class)
            assert hasattr(Storage, name), f"{where}: Storage has no attribute {name}"
            continue
        if not inspect.isfunction(declared):   # an annotated attribute: of the class or set in a method
            assert hasattr(Storage, name) or name in assigned, f"{where}: Storage has no attribute {name}"
            continue
        assert hasattr(Storage, name), f"{where}: Storage has no method {name}"
        actual = inspect.getattr_static(Storage, name)
        assert inspect.isfunction(actual), f"{where}: Storage.{name} is not a method"
        assert kind(actual) == kind(declared), \
            f"{where}: Storage.{name} is a {kind(actual)}, the protocol says {kind(declared)}"
        assert parameters(actual) == parameters(declared), \
            f"{where}: Storage.{name}{inspect.signature(actual)} != protocol {inspect.signature(declared)}"


CONSUMERS = sorted(str(p.relative_to(PACKAGE)) for folder in ("services", "web", "cli")
                   for p in (PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("module", CONSUMERS)
def test_consumers_name_the_storage_they_use(module: str) -> None:
    """No ``storage: Any`` (or unannotated storage) in services, web and cli: a protocol from
    mailrelay.store.interfaces says what the code calls."""
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    vague = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                if arg.arg in ("storage", "get_storage"):
                    annotation = ast.unparse(arg.annotation) if arg.annotation is not None else None
                    if isinstance(node, ast.Lambda):
                        continue   # a lambda's parameter is typed by what it is passed to
                    if annotation is None or "Any" in annotation:
                        vague.append(f"{getattr(node, 'name', 'lambda')}({arg.arg}: {annotation})")
    assert vague == [], f"mailrelay/{module}: storage parameters without a protocol: {vague}"
