"""What the TCP and UDP proxies share: their own thread with a selector, the socket pair that
wakes it, a clean stop that re-raises what the thread raised, and the context manager."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType
from typing import TypeVar

_P = TypeVar("_P", bound="ProxyThread")


class ProxyThread:
    """The base of a proxy: a subclass builds its sockets, then calls :meth:`_start`; its
    ``_run`` loops until ``_stopping``, stores what it raised in ``_error`` and closes its
    sockets and ``_wake_r`` on the way out."""

    def __init__(self, name: str) -> None:
        self._stopping = False
        self._error: BaseException | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

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

    def _wake(self) -> None:
        # OSError: already stopped, or the wakeup buffer is full (a wakeup is pending).
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
