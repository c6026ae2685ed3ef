"""Helpers of the worker-process tests: a free port, whether a pid is gone, and a fixture that
kills whatever process a test started and left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (bound to port 0, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gone(pid: int) -> bool:
    """Whether *pid* no longer runs (no such process, or a zombie nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def children(pid: int) -> set[int]:
    """The child pids of *pid* (every thread's, from /proc)."""
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children",
                                                    encoding="ascii") as f:
                out.update(int(p) for p in f.read().split())
    return out


def wait_until(predicate: object, timeout: float, what: str, step: float = 0.02) -> None:
    """Poll *predicate* (a callable) until it is true; AssertionError naming *what* after
    *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(step)


class Leftovers:
    """The pids a test started; all SIGKILLed at the end if still there."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def add(self, *pids: int) -> None:
        self.pids.update(pids)

    def kill_all(self) -> None:
        # Children first (a supervisor's workers), seen now or recorded earlier.
        for pid in list(self.pids):
            self.pids |= children(pid)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def leftovers() -> Iterator[Leftovers]:
    """Record every pid the test starts with ``leftovers.add``; none survives the test."""
    record = Leftovers()
    try:
        yield record
    finally:
        record.kill_all()
