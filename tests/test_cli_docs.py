"""``python -m msgtrans docs``: the mkdocs command it runs, and a clear error without the extra.

The site itself is built by CI (``.ci/run``: ``mkdocs build --strict``), not here."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from msgtrans.__main__ import main
from msgtrans.cli import docs

ROOT = Path(__file__).resolve().parents[1]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    docs.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_build_is_strict_into_site() -> None:
    assert docs.command(_args(), ROOT) == [
        sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
        "-d", str(ROOT / "site")]


def test_serve_on_the_port() -> None:
    assert docs.command(_args("--serve", "--port", "8123"), ROOT) == [
        sys.executable, "-m", "mkdocs", "serve", "-f", str(ROOT / "mkdocs.yml"),
        "-a", "127.0.0.1:8123"]


def test_runs_mkdocs_in_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], Path, str]] = []
    monkeypatch.setattr(docs, "missing_packages", list)
    monkeypatch.setattr(docs, "run",
                        lambda argv, cwd, env: calls.append((argv, cwd, env["PYTHONPATH"])) or 0)
    assert main(["docs", "--serve", "--port", "8124"]) == 0
    (argv, cwd, path), = calls
    assert argv[-1] == "127.0.0.1:8124" and cwd == ROOT
    assert path.split(os.pathsep)[0] == str(ROOT)


def test_a_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    real = docs.importlib.util.find_spec
    monkeypatch.setattr(docs.importlib.util, "find_spec",
                        lambda name: None if name == "material" else real(name))
    assert main(["docs"]) == 2
    err = capsys.readouterr().err
    assert "mkdocs-material" in err and "pip install -e '.[docs]'" in err


def test_outside_a_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert docs.main(_args(), tmp_path) == 2
    assert "source checkout" in capsys.readouterr().err


def test_a_bad_port(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(docs, "missing_packages", list)
    assert main(["docs", "--serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_missing_packages_with_no_parent_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def find_spec(name: str) -> None:
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(docs.importlib.util, "find_spec", find_spec)
    assert docs.missing_packages() == list(docs.REQUIRED.values())


def test_run_returns_the_exit_status(tmp_path: Path) -> None:
    assert docs.run([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, dict(os.environ)) == 3


def test_sigterm_ends_the_child_too(tmp_path: Path) -> None:
    """A SIGTERM to ``docs --serve`` stops the mkdocs it started, not only itself."""
    code = (
        "import os, signal, subprocess, sys, threading\n"
        "from pathlib import Path\n"
        "from msgtrans.cli import docs\n"
        "child = Path(sys.argv[1])\n"
        "threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
        "docs.run([sys.executable, '-c', 'import os, time; "
        "open(os.environ[\"PIDFILE\"], \"w\").write(str(os.getpid())); time.sleep(60)'],"
        " child.parent, dict(os.environ, PIDFILE=str(child)))\n"
    )
    pidfile = tmp_path / "pid"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    result = subprocess.run([sys.executable, "-c", code, str(pidfile)], env=env, timeout=30,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
