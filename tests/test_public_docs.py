"""Every public name is documented, and the API reference renders it.

Walks the ``__all__`` of ``msgtrans.io_asyncio``, ``io_trio``, ``io_sync`` and ``msgtrans.core``:
each class and function, and each public method and property of those classes, needs a
docstring; a module-level constant (which cannot carry ``__doc__``) needs a ``#:`` comment line
directly above its assignment in the module that assigns it (the convention mkdocstrings and
Sphinx read).  Then each name must be reachable from a ``:::`` directive of ``docs/api/``: a
directive naming it, or naming the module it is exported from or defined in without a
``members:`` list that leaves it out.  No site is built; the pages are read as text.
"""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
import re
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
MODULES = ["msgtrans.io_asyncio", "msgtrans.io_trio", "msgtrans.io_sync", "msgtrans.core"]


def _module(name: str) -> ModuleType:
    if name == "msgtrans.io_trio":
        pytest.importorskip("trio")
    return importlib.import_module(name)


@cache
def _tree(module: str) -> ast.Module:
    source = inspect.getsource(sys.modules[module])
    return ast.parse(source)


def _resolve(module: str, name: str) -> tuple[str, ast.stmt] | None:
    """Where *name* of *module* is assigned: (module, the assignment), following ``from``
    imports (star imports too) through the package's own modules."""
    mod = importlib.import_module(module)
    tree = _tree(module)
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return module, node
    package = mod.__name__ if hasattr(mod, "__path__") else mod.__name__.rpartition(".")[0]
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        source = f"{base}.{node.module}" if node.module else base
        for alias in node.names:
            if alias.name == "*" and name in getattr(importlib.import_module(source),
                                                     "__all__", ()):
                return _resolve(source, name)
            if (alias.asname or alias.name) == name:
                return _resolve(source, alias.name)
    return None


def _has_doc_comment(module: str, node: ast.stmt) -> bool:
    lines = inspect.getsource(sys.modules[module]).splitlines()
    above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
    return above.startswith("#: ") and len(above) > 3


def _is_constant(obj: Any) -> bool:
    return not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj))


def _own_doc(obj: Any) -> str | None:
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        # A dataclass without a docstring gets its signature as one: that is not documentation.
        if isinstance(doc, str) and doc.startswith(f"{obj.__name__}("):
            return None
    else:
        doc = getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) and doc.strip() else None


def _public_members(cls: type) -> list[tuple[str, Any]]:
    """The public methods and properties of *cls*, its own and those it inherits from the
    package's classes (not from ``object``, ``Exception``, ``enum`` or ``tuple``)."""
    found = []
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        for owner in cls.__mro__:
            if name in owner.__dict__:
                break
        else:
            continue
        if not owner.__module__.startswith("msgtrans"):
            continue
        member = owner.__dict__[name]
        if isinstance(member, (property, staticmethod, classmethod)) or inspect.isfunction(member):
            found.append((f"{owner.__qualname__}.{name}", member))
    return found


def _undocumented(module: str, name: str) -> list[str]:
    obj = getattr(_module(module), name)
    if _is_constant(obj) or isinstance(obj, enum.Enum):
        where = _resolve(module, name)
        if where is None:
            return [f"{module}.{name}: its assignment was not found"]
        if not _has_doc_comment(*where):
            return [f"{module}.{name}: no `#: ` comment above its assignment in {where[0]}"]
        return []
    missing = [] if _own_doc(obj) else [f"{module}.{name}"]
    if inspect.isclass(obj):
        missing += [f"{module}.{name} -> {qual}" for qual, member in _public_members(obj)
                    if not _own_doc(member)]
    return missing


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_has_a_docstring(module: str) -> None:
    mod = _module(module)
    missing = [line for name in sorted(mod.__all__) for line in _undocumented(module, name)]
    assert not missing, "undocumented public names:\n" + "\n".join(missing)


_DIRECTIVE = re.compile(r"^::: ([\w.]+)\n((?:    .*\n|\n(?=    ))*)", re.MULTILINE)


def _directives() -> dict[str, list[str] | None]:
    """Each ``:::`` path of docs/api/, with its ``members:`` list (None: every public member;
    an empty list: none)."""
    found: dict[str, list[str] | None] = {}
    for page in sorted(API.rglob("*.md")):
        for path, options in _DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            listed = re.search(r"^\s+members:\s*(\S*)\n((?:\s+- .*\n)*)", options, re.MULTILINE)
            if listed is None:
                members: list[str] | None = None
            elif listed[1] == "false":
                members = []
            else:
                members = re.findall(r"- (\w+)", listed[2])
            found[path] = members
    return found


def _defined_in(module: str, name: str) -> str:
    """The module whose ``__all__`` documents *name* of *module* where it is defined."""
    obj = getattr(importlib.import_module(module), name)
    if _is_constant(obj) or isinstance(obj, enum.Enum):
        where = _resolve(module, name)
        return where[0] if where else module
    return obj.__module__


def _rendered(module: str, name: str, directives: dict[str, list[str] | None]) -> bool:
    for owner in {module, _defined_in(module, name)}:
        if f"{owner}.{name}" in directives:
            return True
        if owner in directives:
            members = directives[owner]
            exported = getattr(importlib.import_module(owner), "__all__", ())
            if (members is None and name in exported) or (members and name in members):
                return True
    return False


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_is_in_the_api_reference(module: str) -> None:
    mod = _module(module)
    directives = _directives()
    missing = [f"{module}.{name} (defined in {_defined_in(module, name)})"
               for name in sorted(mod.__all__) if not _rendered(module, name, directives)]
    assert not missing, "not rendered by any ::: directive in docs/api/:\n" + "\n".join(missing)


def test_the_checks_can_fail() -> None:
    """The detectors see what is missing: an uncommented constant, a dataclass without a
    docstring, a module left out by ``members:``."""
    where = _resolve("msgtrans.core.packet", "MAX_U32")
    assert where is not None and not _has_doc_comment(*where)
    where = _resolve("msgtrans.core", "HEADER_SIZE")
    assert where is not None and where[0] == "msgtrans.core.packet" and _has_doc_comment(*where)

    import dataclasses

    @dataclasses.dataclass
    class Bare:
        x: int

    assert _own_doc(Bare) is None
    assert not _rendered("msgtrans.core", "Packet", {"msgtrans.core.packet": ["Limits"]})
    assert _rendered("msgtrans.core", "Packet", {"msgtrans.core.packet": None})


def test_the_reference_pages_are_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in API.rglob("*.md"):
        assert f" {page.relative_to(ROOT / 'docs').as_posix()}\n" in nav, page
