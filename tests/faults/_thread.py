"""What the TCP and UDP proxies share: their own thread with a selector, the socket pair that
wakes it, commands run on that thread for the test's thread, a clean stop that re-raises what
the thread raised, and the context manager."""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

_P = TypeVar("_P", bound="ProxyThread")
COMMAND_WAIT = 5.0  # seconds a command may wait for the proxy's thread to run it


class ProxyThread:
    """The base of a proxy: a subclass builds its sockets, then calls :meth:`_start`; its
    ``_run`` loops until ``_stopping``, calls :meth:`_run_commands` once per turn, stores what
    it raised in ``_error`` and closes its sockets and ``_wake_r`` on the way out."""

    def __init__(self, name: str) -> None:
        self._stopping = False
        self._error: BaseException | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._commands_lock = threading.Lock()
        self._commands: collections.deque[
            tuple[Callable[[], None], threading.Event, list[BaseException]]] = collections.deque()

    def _start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Close every socket and join the thread; re-raise what the thread raised."""
        self._stopping = True
        self._wake()
        self._thread.join(5.0)
        assert not self._thread.is_alive(), "the proxy thread did not stop"
        self._wake_w.close()
        if self._error is not None:
            raise self._error

    def __enter__(self: _P) -> _P:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _command(self, action: Callable[[], None]) -> None:
        """Run *action* on the proxy's thread between two turns of its loop and return once it
        has run (re-raising what it raised), so that it takes effect at one definite moment:
        before anything the caller does after the call reaches the proxy."""
        if threading.current_thread() is self._thread:
            action()
            return
        done = threading.Event()
        raised: list[BaseException] = []
        with self._commands_lock:
            self._commands.append((action, done, raised))
        self._wake()
        end = time.monotonic() + COMMAND_WAIT
        while not done.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() >= end:
                with self._commands_lock, contextlib.suppress(ValueError):
                    self._commands.remove((action, done, raised))
                raise RuntimeError("the proxy thread is not running") from self._error
        if raised:
            raise raised[0]

    def _run_commands(self) -> None:
        """Run the commands waiting (on the proxy's thread); a command's error goes back to its
        caller, not to the thread."""
        while True:
            with self._commands_lock:
                if not self._commands:
                    return
                action, done, raised = self._commands.popleft()
            try:
                action()
            except Exception as exc:
                raised.append(exc)
            finally:
                done.set()

    def _wake(self) -> None:
        # OSError: already stopped, or the wakeup buffer is full (a wakeup is pending).
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
