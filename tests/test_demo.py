"""The command line's demo runs every protocol end to end and says so."""

from __future__ import annotations

import subprocess
import sys

import pytest

from msgtrans.__main__ import main


def test_demo_passes_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
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
