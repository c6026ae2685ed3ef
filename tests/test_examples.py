"""Every program in ``examples/`` (the ones docs/backends.md shows) runs, prints the reply and
exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .interop.serverproc import ROOT

pytestmark = pytest.mark.network

TIMEOUT = 60.0  # seconds for the interpreter to start, import, and run the whole example


@pytest.mark.parametrize("backend", ["asyncio", "trio", "sync"])
def test_example_runs(backend: str) -> None:
    if backend == "trio":
        pytest.importorskip("trio")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    # subprocess.run kills the child when the timeout expires.
    result = subprocess.run([sys.executable, str(ROOT / "examples" / f"{backend}_echo.py")],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "echo: hello", "one-way", "shutdown: 1 closed cleanly, 0 forced",
    ]


def test_docs_show_the_examples_as_they_are() -> None:
    """docs/backends.md shows each example verbatim, so what the page shows is what runs."""
    page = (ROOT / "docs" / "backends.md").read_text(encoding="utf-8")
    for backend in ("asyncio", "trio", "sync"):
        source = (ROOT / "examples" / f"{backend}_echo.py").read_text(encoding="utf-8")
        assert f"```python\n{source.rstrip()}\n```" in page, backend
