"""The soak's server: ``python -m msgtrans serve`` in a subprocess of its own, so its memory,
descriptors and threads are its own in ``/proc`` and nothing of the soak's client side counts.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["ServerProcess", "client_urls"]

#: Seconds the server may take to print its addresses.
START_TIMEOUT = 30.0
#: Seconds it may take to exit after SIGTERM (its graceful shutdown allows 5) before it is killed.
STOP_TIMEOUT = 15.0


def client_urls(bound: dict[str, str], protocols: list[str]) -> list[str]:
    """The URLs a client connects to for each of *protocols*, from the server's JSON line
    *bound* (with its ``ca`` for the TLS protocols)."""
    urls = []
    for name in protocols:
        where = bound[name]
        url = where if name in ("ws", "wss") else f"{name}://{where}"
        if name in ("tls", "wss", "quic"):
            url += f"?ca={bound['ca']}"
        urls.append(url)
    return urls


class ServerProcess:
    """One ``serve`` subprocess on 127.0.0.1 with free ports.

    Args:
        backend: its ``--backend``.
        protocols: what it serves.
        log: the file its stderr (WARNING and above) goes to.
    """

    def __init__(self, backend: str, protocols: list[str], log: Path) -> None:
        self.log = log
        self.bound: dict[str, str] = {}
        command = [sys.executable, "-m", "msgtrans", "serve", "--backend", backend,
                   "--log-level", "WARNING"]
        for name in protocols:
            command += [f"--{name}", "127.0.0.1:0"]
        env = dict(os.environ)
        # The same msgtrans as this process, wherever it was imported from.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._log_file: IO[bytes] = open(log, "wb")  # noqa: SIM115 - closed in stop()
        # A session of its own: Ctrl-C in the terminal reaches the soak, which closes its
        # sessions first and only then stops the server.
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._log_file, env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def start(self) -> dict[str, str]:
        """Wait (at most :data:`START_TIMEOUT`) for the JSON line of addresses; return it.

        Raises:
            RuntimeError: the server exited or printed nothing in time (its log's tail says
                why).
        """
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"the server did not start: {self.log_tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    continue  # EOF: poll() sees the exit on the next turn
                self.bound = json.loads(line)
                return self.bound

    def alive(self) -> bool:
        """Whether the server is still running."""
        return self.proc.poll() is None

    def log_lines(self) -> list[str]:
        """What the server logged so far."""
        self._log_file.flush()
        return self.log.read_text(errors="replace").splitlines()

    def log_tail(self, lines: int = 5) -> str:
        """The last *lines* of its log, joined with `` | ``."""
        return " | ".join(self.log_lines()[-lines:]) or "(nothing logged)"

    def stop(self) -> int | None:
        """SIGTERM (a graceful shutdown), then SIGKILL after :data:`STOP_TIMEOUT`; return its
        exit status (``None``: it had to be killed)."""
        status: int | None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                status = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
                status = None
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._log_file.close()
        return status

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.returncode is None:
            self.stop()
