"""A griffe extension for the API reference: docstrings set at import time, reST roles.

The backends' classes and methods take their docstrings from ``msgtrans._driver.docs`` through
the ``@doc(...)`` decorator, so their source has none for griffe's static analysis to read.  For
every class, function and method of the package still without a docstring once it is loaded,
this reads the docstring the imported object really has (what ``help()`` shows).

A module-level constant cannot carry ``__doc__``: its documentation is the ``#:`` comment lines
directly above its assignment (the Sphinx convention, which ``tests/test_public_docs.py``
requires), and griffe reads only a string after the assignment; this reads the comment.

The docstrings are Google style with Sphinx roles (``:class:`~msgtrans.core.Packet```), which
Markdown would show as they are: each role becomes inline code of the name it shows, and a
paragraph ending in ``::`` (a reST literal block follows) ends in ``:``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import griffe


def _runtime_object(path: str) -> Any:
    """The imported object at dotted *path*, or None."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        module = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is not None and module.startswith(error.name):
                continue  # not a module: a class or function inside one
            # A module of the package that cannot be imported would lose its docstrings
            # without a word: fail the build instead.
            raise RuntimeError(f"the API reference cannot import {path} ({error}): "
                               "pip install -e '.[docs]'") from error
        try:
            for name in parts[split:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


_ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(?<=\S)::$", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    name = match[2]
    return f"`{name.rsplit('.', 1)[-1] if match[1] else name}`"


def markdown_of(text: str) -> str:
    """*text* with its reST roles and literal-block markers in Markdown."""
    return _LITERAL.sub(":", _ROLE.sub(_role, text))


@functools.cache
def _source_lines(filepath: str) -> list[str]:
    return Path(filepath).read_text(encoding="utf-8").splitlines()


def doc_comment(filepath: str, lineno: int) -> str | None:
    """The ``#:`` comment lines directly above line *lineno* (1-based) of *filepath*."""
    lines = _source_lines(filepath)
    found: list[str] = []
    index = lineno - 2
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        found.insert(0, lines[index].lstrip()[2:].strip())
        index -= 1
    return "\n".join(found) or None


def _own_doc(obj: Any) -> str | None:
    if isinstance(obj, property):
        obj = obj.fget
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) and doc.strip() else None


class RuntimeDocstrings(griffe.Extension):
    """Fill missing docstrings of classes and functions from the imported objects."""

    _parser: griffe.Parser | None = griffe.Parser.google
    _options: dict[str, Any] | None = None

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Walk the loaded package once it is complete."""
        if pkg.docstring is not None:
            pkg.docstring.value = markdown_of(pkg.docstring.value)
            # Parsed as the loader parses the docstrings it read itself (Google style).
            self._parser = pkg.docstring.parser
            self._options = pkg.docstring.parser_options
        self._walk(pkg)

    def _walk(self, obj: griffe.Object) -> None:
        for member in obj.members.values():
            if member.is_alias:
                continue
            code = member.kind in (griffe.Kind.CLASS, griffe.Kind.FUNCTION)
            if code and member.docstring is None:
                doc = _own_doc(_runtime_object(member.path))
                if doc is not None:
                    member.docstring = griffe.Docstring(
                        inspect.cleandoc(doc), parent=member, parser=self._parser,
                        parser_options=self._options)
            if (member.kind is griffe.Kind.ATTRIBUTE and member.docstring is None
                    and member.lineno is not None and isinstance(member.filepath, Path)):
                comment = doc_comment(str(member.filepath), member.lineno)
                if comment is not None:
                    member.docstring = griffe.Docstring(
                        comment, parent=member, parser=self._parser,
                        parser_options=self._options)
            if member.docstring is not None:
                member.docstring.value = markdown_of(member.docstring.value)
            if member.kind in (griffe.Kind.MODULE, griffe.Kind.CLASS):
                self._walk(member)
