"""``python -m msgtrans serve --workers N`` as a subprocess (asyncio): one port served by two
processes, a killed worker restarted, a clean stop with the summed report, the restart-rate
bound, and port 0 refused."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import msgtrans.io_sync as mt

from .interop.serverproc import ROOT, read_line
from .workerprocs import Leftovers, children, free_port, gone, wait_until

pytestmark = pytest.mark.network

START = 20.0  # seconds for the supervisor and its workers to start and listen
STOP = 15.0  # seconds a graceful stop of everything may take (5 s shutdown + grace + slack)
SERVED = re.compile(r"msgtrans\.cli\.serve\[(\d+)\]: session \d+ connected")
STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


@pytest.fixture
def leftovers() -> Iterator[Leftovers]:
    record = Leftovers()
    try:
        yield record
    finally:
        record.kill_all()


class Server:
    """A ``serve --workers`` subprocess whose stderr lines are collected by a thread."""

    def __init__(self, leftovers: Leftovers, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "msgtrans", "serve", "--log-level", "INFO", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        leftovers.add(self.proc.pid)
        self._leftovers = leftovers
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            self._new.put(line)
            for match in STARTED.finditer(line):
                self._leftovers.add(int(match.group(2)))

    def wait_line(self, pattern: re.Pattern[str] | str, timeout: float) -> re.Match[str]:
        """The first stderr line (already seen or coming) matching *pattern*."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        for line in list(self.lines):
            match = rx.search(line)
            if match:
                return match
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no stderr line matching {rx.pattern!r} within "
                                     f"{timeout} s:\n{''.join(self.lines[-30:])}")
            try:
                line = self._new.get(timeout=left)
            except queue.Empty:
                continue
            match = rx.search(line)
            if match:
                return match

    def served_by(self) -> set[int]:
        return {int(m.group(1)) for line in list(self.lines) for m in SERVED.finditer(line)}

    def finish(self, timeout: float) -> tuple[int, str]:
        """Wait for the exit; its status and the rest of stdout."""
        status = self.proc.wait(timeout=timeout)
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self._reader.join(timeout)
        return status, out


def _request(port: int) -> None:
    """One short session: connect, one request, close."""
    with mt.Transport() as client:
        session = client.connect(f"tcp://127.0.0.1:{port}", timeout=5.0)
        assert session.request(b"ping", timeout=5.0).payload == b"ping"
        session.close()


def _serve_until(server: Server, port: int, pids: set[int], limit: int = 400) -> None:
    """Short sessions until every one of *pids* served one (the kernel picks the worker)."""
    for _ in range(limit):
        _request(port)
        if pids <= server.served_by():
            return
    raise AssertionError(f"{limit} sessions were served by {server.served_by()}, not all "
                         f"of {pids}")


def test_two_workers_share_a_port_survive_a_kill_and_stop_cleanly(
        leftovers: Leftovers) -> None:
    port = free_port()
    server = Server(leftovers, "--workers", "2", "--tcp", f"127.0.0.1:{port}")
    line = json.loads(read_line(server.proc, START))
    assert line["tcp"] == f"127.0.0.1:{port}" and line["pid"] == server.proc.pid
    first = set(line["workers"])
    assert len(first) == 2 and first == children(server.proc.pid)

    _serve_until(server, port, first)  # both workers served sessions on the one port

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: gone(victim), 5.0, f"the killed worker {victim} reaped")
    match = server.wait_line(
        rf"worker (\d+) \(pid {victim}\) ended \(signal SIGKILL\); restarting", 10.0)
    slot_started = re.compile(rf"worker {match.group(1)} started \(pid (\d+)\)")

    def starts() -> list[int]:
        return [int(m.group(1)) for line in list(server.lines)
                for m in slot_started.finditer(line)]

    wait_until(lambda: len(starts()) == 2, 10.0, "the slot restarted")
    new = starts()[-1]
    assert new not in first
    survivors = (first - {victim}) | {new}
    wait_until(lambda: children(server.proc.pid) == survivors, 5.0, "the new worker running")
    _serve_until(server, port, {new})  # the port keeps serving, the new worker included

    with mt.Transport() as client:
        # Open while the server stops: closed by its worker's graceful shutdown, cleanly.
        held = client.connect(f"tcp://127.0.0.1:{port}", timeout=5.0)
        assert held.request(b"held", timeout=5.0).payload == b"held"
        os.kill(server.proc.pid, signal.SIGTERM)
        status, out = server.finish(STOP)
        held.wait_closed(5.0)
    assert status == 0
    for pid in first | survivors:
        assert gone(pid), pid
    report = json.loads(out.strip().splitlines()[-1])["shutdown"]
    served = len([line for line in server.lines if SERVED.search(line)])
    # The summed report's metrics: every session's request of both workers, the killed one's
    # counted up to its last report (sent every second, so maybe not all of them).
    assert 0 < report["messages_in"] <= served
    assert report["workers_given_up"] == []
    assert report["closed_cleanly"] == 1 and report["forced"] == 0
    server.wait_line(r"shut down \(2 workers summed\): 1 closed cleanly", 1.0)


def test_workers_end_when_their_supervisor_is_killed(leftovers: Leftovers) -> None:
    port = free_port()
    server = Server(leftovers, "--workers", "2", "--tcp", f"127.0.0.1:{port}")
    workers = json.loads(read_line(server.proc, START))["workers"]
    os.kill(server.proc.pid, signal.SIGKILL)
    server.finish(STOP)
    # Each worker sees its supervisor's pipe end and shuts down gracefully on its own.
    wait_until(lambda: all(gone(pid) for pid in workers), STOP, "no orphaned worker")


def test_a_worker_that_cannot_start_is_given_up_after_the_restart_bound(
        leftovers: Leftovers) -> None:
    # The port is taken by a socket without SO_REUSEPORT: every worker fails to listen.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = Server(leftovers, "--workers", "2", "--tcp", f"127.0.0.1:{port}")
        status, out = server.finish(30.0)
    assert status == 1
    text = "".join(server.lines)
    # Each slot: started once, restarted 5 times (the bound: 5 in 60 s), then given up.
    for slot in (0, 1):
        assert len(re.findall(rf"worker {slot} started", text)) == 6, text[-3000:]
        assert re.search(rf"worker {slot} \(pid \d+\) ended \(exit status 1\): it ended 6 "
                         r"times within 60 s; not restarting it", text), text[-3000:]
    assert "every worker was given up" in text
    assert json.loads(out.strip().splitlines()[-1])["shutdown"]["workers_given_up"] == [0, 1]
    for pid in leftovers.pids:
        assert gone(pid), pid


def test_workers_need_every_port() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "msgtrans", "serve", "--workers", "2"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=env, check=False)
    assert result.returncode == 2
    assert "--workers 2 needs every port given" in result.stderr
    assert "--tcp 127.0.0.1:0" in result.stderr


def test_workers_from_the_config_file_and_the_environment(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    config = folder / "serve.toml"
    config.write_text("[serve]\nworkers = 3\n", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    shown = subprocess.run(
        [sys.executable, "-m", "msgtrans", "serve", "--config", str(config), "--print-config"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=env, check=True)
    assert json.loads(shown.stdout)["serve"]["workers"] == 3
    # The builder's worker_threads (here from the environment) is the default of --workers.
    result = subprocess.run(
        [sys.executable, "-m", "msgtrans", "serve"], capture_output=True, text=True,
        timeout=30, cwd=ROOT, env={**env, "MSGTRANS_WORKER_THREADS": "2"}, check=False)
    assert result.returncode == 2
    assert "--workers 2 needs every port given" in result.stderr
