"""Start ``python -m msgtrans serve`` as a subprocess and read back its JSON line of addresses."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0  # seconds for the interpreter to start, import and bind
STOP_TIMEOUT = 5.0  # seconds a graceful stop may take


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line the server writes on stdout, or an AssertionError after *timeout*."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no address line from the server within {timeout} s")
    # The server writes the line in one flushed write, so this does not block.
    line = proc.stdout.readline()
    assert line, f"the server exited early (status {proc.poll()})"
    return line


@contextlib.contextmanager
def serve(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """Run ``python -m msgtrans serve *args``; yield the process and its address line.  The
    process is stopped on the way out unless the test already stopped it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgtrans", "serve", "--log-level", "WARNING", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )
    try:
        yield proc, json.loads(read_line(proc, START_TIMEOUT))
    finally:
        if proc.poll() is None:
            # SIGTERM first, so the server removes its generated certificate; SIGKILL if not
            # gone in time.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate(timeout=STOP_TIMEOUT)  # reaps it and closes the pipes


def port_of(address: str) -> int:
    """The port of ``HOST:PORT`` or ``ws://HOST:PORT/``."""
    return int(address.rstrip("/").rsplit(":", 1)[1])
