"""``transport.connect_forever()`` on the blocking backend: :class:`ConnectForever`, a plain
iterator of sessions (the decisions are :class:`msgtrans._driver.forever.ForeverBase`'s)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._driver import docs
from .._driver.docs import doc
from .._driver.forever import ForeverBase
from ..core.config import ConnectionConfig
from ..core.errors import TransportError
from ..core.reconnect import ReconnectPolicy
from ._session import Session

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["ConnectForever"]


@doc(docs.CONNECT_FOREVER_ITERATOR, kind="an iterator", loop="for", close="sessions.close()",
     with_="with", stop="StopIteration",
     safety="  Iterate from one thread; :meth:`close` may come from any thread.")
class ConnectForever(ForeverBase[Session]):

    _transport: Transport

    def __init__(self, transport: Transport, config: ConnectionConfig, policy: ReconnectPolicy,
                 timeout: float | None) -> None:
        super().__init__(transport, config, policy, timeout, time.monotonic)
        self._connect = transport.connect
        self._wake = threading.Event()

    def _notify(self) -> None:
        self._wake.set()

    def _metrics_lock(self) -> contextlib.AbstractContextManager[Any]:
        loop = self._transport._loop
        return loop.lock if loop is not None else contextlib.nullcontext()

    def _wait(self, done: Callable[[], bool], deadline: float | None) -> None:
        # Until done() or the deadline; every notify re-checks (a spurious wake only loops).
        while not done():
            self._wake.clear()
            if done():
                return
            timeout = None if deadline is None else deadline - self._clock()
            if timeout is not None and timeout <= 0:
                return
            self._wake.wait(timeout)

    def __iter__(self) -> ConnectForever:
        return self

    def __next__(self) -> Session:
        if self._stop_iteration_now():
            raise StopIteration
        if self._current is not None:
            self._wait(self._current_over, None)
            self._session_over()
        while not self._should_stop():
            if self._clock() < self._next_at:
                self._wait(self._stop_requested, self._next_at)
                continue
            try:
                session = self._connect(self._config, timeout=self._timeout)
            except TransportError as exc:
                self._attempt_failed(exc)
                continue
            if self._opened(session):
                return session
            session.close(timeout=1.0)  # stopped while connecting: nobody wants it
        raise StopIteration

    def close(self) -> None:
        """Stop the iterator (see :meth:`stop`); the sessions it yielded stay open."""
        self.stop()

    def __enter__(self) -> ConnectForever:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
