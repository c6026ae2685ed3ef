"""A client session that re-establishes its connection: :class:`ReconnectingSession` on the
blocking backend (the shared half is :mod:`msgtrans._driver.reconnect`).

Its supervisor is a thread: it blocks until the current session is over, asks the reconnect
machine, waits the delay (on a condition that ``close()``, ``abort()`` and the transport's
shutdown notify) and connects again.  The state is guarded by the object's own lock, never
held while a session or the transport is called (the I/O thread never takes it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType

from .._driver import docs
from .._driver.docs import doc
from .._driver.reconnect import Disconnect, ReconnectingBase, cut_error, ended, may_resend
from ..core.errors import TransportError, TransportTimeoutError
from ..core.metrics import TransportMetrics
from ..core.packet import Buffer
from ..core.reconnect import GiveUp, ReconnectPolicy, Retry
from ._message import Message
from ._session import Session

__all__ = ["ReconnectingSession"]

logger = logging.getLogger("msgtrans.io_sync")

_SEND_WAIT = """; *timeout* (seconds; default ``None``: the send timeout) bounds
both that wait and the wait for room in the send queue"""


@doc(docs.RECONNECTING_SESSION, made="``transport.connect(target, reconnect=...)``",
     safety="  Safe to use from many threads; its supervisor is a thread of its own.")
class ReconnectingSession(ReconnectingBase[Session]):

    def __init__(self, first: Session, policy: ReconnectPolicy, *,
                 connect: Callable[[], Session], metrics: TransportMetrics,
                 on_closed: Callable[[ReconnectingSession], None]) -> None:
        self._cond = threading.Condition(threading.Lock())
        super().__init__(first, policy, metrics=metrics, clock=time.monotonic, logger=logger,
                         on_closed=on_closed)
        self._connect = connect
        self._thread = threading.Thread(target=self._supervise, daemon=True,
                                        name=f"msgtrans-reconnect-{first.id}")
        self._thread.start()

    # --- the application's operations ----------------------------------------------------------

    @doc(docs.RECONNECTING_SEND, timeout=_SEND_WAIT)
    def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"",
             timeout: float | None = None, wait_reconnect: bool = True) -> None:
        current = self._current
        if current is not None:
            try:
                return current.send(data, biz_type=biz_type, ext_header=ext_header,
                                    timeout=timeout)
            except TransportError:  # the session's end (nothing was queued): wait
                if not ended(current):
                    raise
        deadline = _deadline(self._send_timeout if timeout is None else timeout)
        while True:
            session = self._wait_session("send", deadline, wait_reconnect)
            try:
                return session.send(data, biz_type=biz_type, ext_header=ext_header,
                                    timeout=_left(deadline))
            except TransportError:
                if not ended(session):
                    raise

    @doc(docs.RECONNECTING_REQUEST)
    def request(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"",
                timeout: float | None = None, idempotent: bool = False,
                wait_reconnect: bool = True) -> Message:
        limit = self._request_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            session = self._usable() or self._wait_session("request", deadline, wait_reconnect)
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                return session.request(data, biz_type=biz_type, ext_header=ext_header,
                                       timeout=remaining)
            except TransportError as exc:
                if not ended(session) or exc.error_code == "timeout.request":
                    raise
                if self._closed and self._final is None:
                    raise self._closed_error("request") from exc
                if not may_resend(exc, idempotent):
                    raise cut_error(exc) from None

    @doc(docs.RECONNECTING_RECEIVE, timeout="""  With *timeout* (seconds; default ``None``:
no limit) it waits at most that long in all, then raises ``TransportTimeoutError``.""")
    def receive(self, timeout: float | None = None) -> Message:
        deadline = _deadline(timeout)
        while True:
            session = self._wait_reader(deadline, timeout)
            try:
                return session.receive(_left(deadline))
            except TransportError:
                if not ended(session):
                    raise

    def receive_many(self, max_messages: int | None = None,
                     timeout: float | None = None) -> list[Message]:
        """Every queued message (at most *max_messages*), waiting for the first (at most
        *timeout* seconds); messages of one connection only (call again for the next).  See
        :meth:`receive`."""
        deadline = _deadline(timeout)
        while True:
            session = self._wait_reader(deadline, timeout)
            try:
                return session.receive_many(max_messages, _left(deadline))
            except TransportError:
                if not ended(session):
                    raise

    def messages(self, timeout: float | None = None) -> Iterator[Message]:
        """Yield the messages and requests of every connection in turn until :meth:`close`.

        Args:
            timeout: seconds each wait may take (default: no limit).

        Raises:
            TransportError: it gave up (the give-up error); ``TransportTimeoutError`` when a
                wait exceeded *timeout*.
        """
        while True:
            try:
                message = self.receive(timeout)
            except TransportTimeoutError:
                raise
            except TransportError:
                if self._final is None and self._closed:
                    return
                raise
            yield message

    def __iter__(self) -> Iterator[Message]:
        return self.messages()

    @doc(docs.RECONNECTING_CLOSE)
    def close(self, code: int | None = None, reason: str = "", *,
              timeout: float = 10.0) -> None:
        self._stop()
        current = self._current
        if current is not None:
            current.close(code, reason, timeout=timeout)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def abort(self, reason: str = "aborted") -> None:
        """Stop reconnecting and drop the current connection now, without a close handshake
        (pending requests fail with ``connection.aborted``).  Idempotent."""
        self._stop()
        current = self._current
        if current is not None:
            current.abort(reason)

    def wait_connected(self, timeout: float | None = None) -> Session:
        """Wait until a connection is up and return its session (at once when one is).

        Raises:
            TransportTimeoutError: not connected within *timeout* seconds (code
                ``timeout.connect``; default ``None``: no limit).
            TransportError: closed, or given up (the give-up error).
        """
        return self._wait_session("connect", _deadline(timeout), True)

    def __enter__(self) -> ReconnectingSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- waiting -------------------------------------------------------------------------------

    def _wait_session(self, operation: str, deadline: float | None, wait: bool) -> Session:
        start = time.monotonic()
        with self._cond:
            while True:
                if self._closed:
                    raise self._closed_error(operation)
                session = self._usable()
                if session is not None:
                    return session
                if not wait:
                    raise self._down_error(operation)
                left = _left(deadline)
                if left is not None and left <= 0:
                    raise self._wait_timed_out(operation, time.monotonic() - start)
                # The supervisor notifies when it sees the end, a new connection or a give-up;
                # close() when it closes.
                self._cond.wait(left)

    def _wait_reader(self, deadline: float | None, timeout: float | None) -> Session:
        with self._cond:
            while True:
                session = self._reader()
                if session is not None:
                    return session
                if self._closed:
                    raise self._closed_error("receive")
                left = _left(deadline)
                if left is not None and left <= 0:
                    raise TransportTimeoutError("receive", timeout or 0.0)
                self._cond.wait(left)

    # --- the supervisor ------------------------------------------------------------------------

    def _stop(self) -> None:
        """Closed by the application or the transport: stop the supervisor (no wait)."""
        with self._cond:
            closed = self._mark_closed()
            self._cond.notify_all()
        if closed:
            self._on_closed(self)

    def _shutdown(self) -> threading.Thread:
        """The transport's shutdown: stop, and hand it the thread to join (once the sessions
        are closed: the thread waits for its session's end)."""
        self._stop()
        return self._thread

    def _supervise(self) -> None:
        try:
            self._watch()
        except Exception:  # pragma: no cover - a driver bug: close rather than hang waiters
            logger.exception("the reconnect supervisor failed; closing")
            self._stop()

    def _watch(self) -> None:
        while True:
            session = self._current
            if session is None:
                return
            session.wait_closed()
            with self._cond:
                info: Disconnect | None = self._lost(session)
                self._cond.notify_all()
            if info is None:
                return
            self._fire_disconnected(info)
            decision = info.decision
            while isinstance(decision, Retry):
                with self._cond:
                    if self._cond.wait_for(lambda: self._closed, decision.delay):
                        return
                    self._attempting()
                try:
                    new = self._connect()
                except TransportError as exc:
                    with self._cond:
                        if self._closed:
                            return
                        decision = self._failed(exc)
                        self._cond.notify_all()
                    continue
                with self._cond:
                    closed = self._closed
                    if not closed:
                        attempts = self._adopt(new)
                        self._cond.notify_all()
                if closed:
                    new.abort("the reconnecting session closed")
                    return
                self._fire_reconnected(attempts)
                break
            if isinstance(decision, GiveUp):
                self._on_closed(self)
                return


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)
