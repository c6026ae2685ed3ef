"""``python -m msgtrans docs``: build the documentation site, or serve it locally.

The site is ``mkdocs.yml`` and ``docs/`` of a source checkout, built with mkdocs-material and
mkdocstrings (the extra ``docs``: ``pip install -e '.[docs]'``).  ``docs`` builds it into
``site/`` with warnings as errors (a broken link, a missing anchor or a page left out of the
navigation fails, as in CI); ``docs --serve`` serves it on ``127.0.0.1:PORT`` and rebuilds it
on every change.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["DEFAULT_PORT", "REQUIRED", "add_arguments", "command", "main", "missing_packages",
           "run"]

#: The port ``docs --serve`` listens on unless ``--port`` says otherwise (mkdocs' own default).
DEFAULT_PORT = 8000
#: The modules the site needs, and the package that installs each (all in the extra ``docs``).
REQUIRED = {"mkdocs": "mkdocs", "material": "mkdocs-material", "mkdocstrings": "mkdocstrings",
            "mkdocstrings_handlers.python": "mkdocstrings-python"}

_ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``docs`` command's options."""
    parser.add_argument("--serve", action="store_true",
                        help="serve the site locally and rebuild it on every change, instead "
                             "of building it into site/")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"the port --serve listens on, on 127.0.0.1 (default "
                             f"{DEFAULT_PORT})")


def missing_packages() -> list[str]:
    """The packages of the ``docs`` extra that are not installed."""
    missing = []
    for module, package in REQUIRED.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package of a dotted name is missing
            found = False
        if not found:
            missing.append(package)
    return missing


def command(args: argparse.Namespace, root: Path = _ROOT) -> list[str]:
    """The mkdocs command line that *args* ask for, on the checkout at *root*."""
    config = str(root / "mkdocs.yml")
    if args.serve:
        return [sys.executable, "-m", "mkdocs", "serve", "-f", config,
                "-a", f"127.0.0.1:{args.port}"]
    return [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config,
            "-d", str(root / "site")]


def main(args: argparse.Namespace, root: Path = _ROOT) -> int:
    """Build or serve the site; return the exit status (2: it cannot be built here)."""
    if not (root / "mkdocs.yml").is_file():
        print(f"no mkdocs.yml in {root}: the documentation is built from a source checkout "
              "(git clone, then pip install -e '.[docs]')", file=sys.stderr)
        return 2
    missing = missing_packages()
    if missing:
        print(f"the docs extra is not installed (missing: {', '.join(missing)}): "
              "pip install -e '.[docs]'", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"--port must be 1..65535, got {args.port}", file=sys.stderr)
        return 2
    # The API reference imports the package: this checkout's, first on the path.
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, NO_MKDOCS_2_WARNING="1")
    return run(command(args, root), root, env)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Run mkdocs and return its exit status; Ctrl-C or SIGTERM end it too (``--serve`` runs
    until one of them)."""
    child = subprocess.Popen(argv, cwd=cwd, env=env)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return child.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
