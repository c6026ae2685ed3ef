"""Every program in ``examples/`` (the ones docs/backends.md shows) runs, prints the reply and
exits 0."""

from __future__ import annotations

import os
import re
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


def test_pool_example_runs() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "asyncio_pool.py")],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6, lines
    grown = re.fullmatch(r"pool: grew from 2 to (\d+) sessions \((\d+) growth steps\)", lines[0])
    assert grown is not None and 2 < int(grown[1]) <= 16 and int(grown[2]) >= 1, lines[0]
    assert lines[1] == "big request answered: b'xxxxxxxx'"
    # A refused TCP connection is closed by the server: the client learns it on first use.
    assert lines[2].startswith("the 21st session: connection."), lines[2]
    assert lines[3] == "server: 201 messages in, 1 refused at max_sessions"
    assert lines[4] == "client: 201 requests timed"
    assert re.fullmatch(r"msgtrans_pool_expansions_total(\{[^}]*\})? \d+(\.0)?", lines[5]), lines[5]


def test_reconnect_example_runs() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "reconnect.py")],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "echo: before the restart",
        "disconnected (closed by the server), 0 messages lost unsent",
        "while down: connection.closed, retryable=True",
        "reconnected after 1 attempt(s)",
        "echo: after the restart",
        "reconnects: 1, metrics: {'tcp': 1}",
    ]


def test_docs_show_the_examples_as_they_are() -> None:
    """docs/backends.md shows each example verbatim, so what the page shows is what runs."""
    page = (ROOT / "docs" / "backends.md").read_text(encoding="utf-8")
    for backend in ("asyncio", "trio", "sync"):
        source = (ROOT / "examples" / f"{backend}_echo.py").read_text(encoding="utf-8")
        assert f"```python\n{source.rstrip()}\n```" in page, backend


def test_admission_example_runs() -> None:
    """examples/admission.py: the hook refuses /admin without a token with an HTTP 403 (the
    client sees a handshake error), lets it through with one, and the refusal is counted."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "admission.py")],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "echo: hello", "/admin without a token: connection.handshake", "echo: admin",
        "refused: {'admission': 1}",
    ]


@pytest.mark.parametrize("backend", ["asyncio", "trio", "sync"])
def test_getting_started_example_runs(backend: str) -> None:
    """docs/getting_started.md's programs: a server on tcp and ws, a request over each."""
    if backend == "trio":
        pytest.importorskip("trio")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    script = ROOT / "examples" / f"getting_started_{backend}.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=TIMEOUT, cwd=ROOT, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["tcp: HELLO", "ws: HELLO"]


def test_getting_started_includes_the_examples() -> None:
    """The page includes each program with pymdownx.snippets: the site shows the file that runs."""
    page = (ROOT / "docs" / "getting_started.md").read_text(encoding="utf-8")
    for backend in ("asyncio", "trio", "sync"):
        assert f'--8<-- "examples/getting_started_{backend}.py"' in page, backend
