"""The command line's demo runs every protocol end to end and says so: over real sockets on
loopback by default, joined in memory with ``--memory``."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from msgtrans.__main__ import main

pytestmark = [
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]


def _demo_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("msgtrans-demo-*"))


@pytest.mark.network
def test_live_demo_passes_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    before = _demo_dirs()
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out
    assert "FAIL" not in out
    for scheme in ("tcp://", "tls://", "ws://", "wss://", "quic://"):
        assert scheme in out
    assert out.count("server -> client request answered") == 5
    assert out.count("broadcast to all 5 clients reached this one") == 5
    assert out.count("closed cleanly by the server's graceful shutdown") == 5
    assert "server shutdown: 5 closed cleanly, 0 forced" in out
    assert _demo_dirs() == before  # the generated certificate is gone


def test_memory_demo_passes_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--memory"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out
    assert "FAIL" not in out
    for scheme in ("tcp://", "tls://", "ws://", "wss://", "quic://"):
        assert scheme in out
    assert out.count("closed cleanly") == 5


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_module_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "msgtrans", "--version"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("msgtrans ")
