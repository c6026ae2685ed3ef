"""One session: a core :class:`~msgtrans.core.connection.Connection` behind blocking calls.

Every method takes the transport lock (see :mod:`msgtrans.io_sync._loop`); blocking calls wait
on the transport condition with their timeout.  The socket side is an :class:`IO` object (a
stream channel, a QUIC client channel or a QUIC listener's per-session face), so this module
knows no socket and no protocol.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from .._driver import docs
from .._driver.docs import doc
from .._driver.session import SessionBase, SocketSide, check_batch_size
from ..core.connection import Connection
from ..core.errors import TransportError, TransportTimeoutError
from ..core.metrics import TransportMetrics
from ..core.packet import Buffer, Packet
from ..core.session import CloseReason, SessionState
from ._loop import IOLoop, wait_until
from ._message import Message

__all__ = ["IO", "Session", "serving_thread"]

logger = logging.getLogger("msgtrans.io_sync")

#: Set on ``Transport.serve``'s handler threads (``serving_thread.pool``): a send there that
#: waits for room in the send queue lends the thread's place in the pool to the other sessions
#: for as long as it waits (``pool.lend()``, a context manager), so a peer that never reads
#: holds a thread, not one of the pool's workers.
serving_thread = threading.local()


def _lend_worker() -> contextlib.AbstractContextManager[object]:
    pool = getattr(serving_thread, "pool", None)
    return pool.lend() if pool is not None else contextlib.nullcontext()



class IO(SocketSide, Protocol):
    """What a :class:`Session` needs from its socket side (internal; lock held)."""

    def request_flush(self) -> None:
        """Have the I/O thread write what the connection has (coalesced per iteration)."""

    def send_soon(self) -> None:
        """As :meth:`request_flush`, for a one-way send: more may follow at once (the loop
        may let the sender go on before it writes, to write them together)."""

    def write_now(self) -> None:
        """As :meth:`request_flush`, but a caller that will wait for the peer (a request, a
        response) may write the bytes itself when the I/O thread sleeps: no thread hop."""

    def pause_reading(self) -> None:
        """Stop reading from the socket (the application fell behind)."""

    def resume_reading(self) -> None:
        """Read from the socket again."""

    def abort(self) -> None:
        """Drop the socket without a close handshake (the I/O thread closes it)."""


class _Reply:
    """Where the I/O thread leaves the outcome of one request.

    The requesting thread waits on a lock of its own, released by :meth:`finish`, without the
    transport lock: the response wakes that one thread (not every thread waiting on the
    transport), and it returns without taking the transport lock again (which the I/O thread
    still holds for the rest of its iteration: a second sleep and wake-up otherwise).
    """

    __slots__ = ("done", "error", "message", "sent_at", "waiter")

    def __init__(self, sent_at: float) -> None:
        self.waiter = threading.Lock()
        self.waiter.acquire()  # held until finish(): acquiring it again waits for the outcome
        self.sent_at = sent_at
        self.done = False
        self.message: Message | None = None
        self.error: TransportError | None = None

    def finish(self, message: Message | None, error: TransportError | None) -> None:
        """Record the outcome and wake the waiter (transport lock held; once per reply)."""
        self.message = message
        self.error = error
        self.done = True
        self.waiter.release()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + max(0.0, timeout)


_SEND_TIMEOUT = """
    timeout: seconds to wait out backpressure (default: the builder's ``send_timeout``,
        30 s; a server session still paused after that is aborted)."""
_PAUSED_ERROR = """
    TransportTimeoutError: still paused after *timeout* or ``send_timeout`` (code
        ``timeout.elapsed``)."""
_RECEIVE_ARGS = """
Args:
    timeout: seconds to wait (default: until one comes or the session closes).
"""
_RECEIVE_TIMEOUT_ERROR = """
    TransportTimeoutError: nothing came in time (code ``timeout.elapsed``); the next
        message stays queued for the next call."""
_RECEIVE_TIMEOUT = """
    timeout: seconds to wait for the first (default: until one comes or the session
        closes)."""
_TIMEOUT_ERROR = """
    TransportTimeoutError: nothing came in time (code ``timeout.elapsed``)."""


@doc(docs.SESSION, safety="; safe to use from many threads")
class Session(SessionBase[Message, _Reply, IO]):

    _message_type = Message
    # connect() leaves a failed handshake's error to the session to count.
    _count_early_errors = True

    def __init__(
        self,
        conn: Connection,
        session_id: int,
        loop: IOLoop,
        on_finished: Callable[[Session], None] | None = None,
        metrics: TransportMetrics | None = None,
    ) -> None:
        super().__init__(conn, session_id, on_finished, metrics, time.monotonic)
        self._loop = loop
        self._lock = loop.lock
        self._cond = loop.cond
        # Any of the three pauses, the end of the session: what makes send() take the slow path.
        self._blocked = False
        self._arrived = False  # a message was queued during this _process pass
        self._wake_inbox = self._mark_arrived
        self._on_established: list[Callable[[Session], None]] = []
        # serve(): told (lock held, I/O thread) when a message arrives or the session ends.
        self.inbox_listener: Callable[[], None] | None = None

    # --- what the session is -------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """``CONNECTING``, ``OPEN``, ``CLOSING`` or ``CLOSED``."""
        with self._lock:
            return self._conn.session.state

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the session closed (or began closing), or ``None`` while it is open."""
        with self._lock:
            return self._conn.session.close_reason

    # --- the application's operations ----------------------------------------------------------

    @doc(docs.SEND, waits="Blocks only", leaves="the I/O thread writes it right away", more="",
         timeout=_SEND_TIMEOUT, timeout_error=_PAUSED_ERROR)
    def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"",
             timeout: float | None = None) -> None:
        with self._lock:
            if self._blocked:
                self._wait_writable("send", timeout)
            self._queue_send(data, biz_type, ext_header)
            io = self._io
            if io is None:
                self._loop.wake()
            else:
                io.send_soon()

    @doc(docs.REQUEST, withdrawn="An exception in the waiting thread (``KeyboardInterrupt``)")
    def request(
        self,
        data: Buffer,
        *,
        biz_type: int = 0,
        ext_header: Buffer = b"",
        timeout: float | None = None,
    ) -> Message:
        with self._lock:
            if self._blocked:
                self._wait_writable("request", timeout)
            reply = _Reply(time.monotonic())
            request_id = self._queue_request(data, biz_type, ext_header, timeout=timeout,
                                             now=reply.sent_at, waiter=reply)
            self._write_now()
        try:
            # The core's request timer ends the wait (RequestFailed) as does the close
            # (SessionClosed): no timeout of our own is needed here.
            reply.waiter.acquire()
        except BaseException:
            with self._lock:
                self._withdraw(request_id)
            raise
        if reply.error is not None:
            raise reply.error
        assert reply.message is not None
        return reply.message

    @doc(docs.RECEIVE, cancel="", args=_RECEIVE_ARGS, timeout_error=_RECEIVE_TIMEOUT_ERROR)
    def receive(self, timeout: float | None = None) -> Message:
        deadline = _deadline(timeout)
        with self._lock:
            if not wait_until(self._cond, self._has_message_or_end, deadline):
                raise TransportTimeoutError("receive", timeout or 0.0, session_id=self.id)
            message = self.take_message()
            if message is None:
                raise self._closed_error("receive")
            return message

    @doc(docs.RECEIVE_MANY, cancel="",
         saves="takes the transport lock once per batch instead of once per\nmessage",
         timeout=_RECEIVE_TIMEOUT, timeout_error=_TIMEOUT_ERROR)
    def receive_many(self, max_messages: int | None = None,
                     timeout: float | None = None) -> list[Message]:
        check_batch_size(max_messages)
        deadline = _deadline(timeout)
        with self._lock:
            if not wait_until(self._cond, self._has_message_or_end, deadline):
                raise TransportTimeoutError("receive", timeout or 0.0, session_id=self.id)
            messages = self.take_messages(max_messages)
            if not messages:
                raise self._closed_error("receive")
            return messages

    def messages(self, timeout: float | None = None) -> Iterator[Message]:
        """Yield the messages and requests of this session until it closes.

        Args:
            timeout: seconds each wait may take (default: no limit).

        Raises:
            TransportError: the session ended with an error (a clean close just ends the
                iteration); ``TransportTimeoutError`` when a wait exceeded *timeout*.
        """
        while True:
            try:
                message = self.receive(timeout)
            except TransportTimeoutError:
                raise
            except TransportError:
                if self.error is None:
                    return
                raise
            yield message

    @doc(docs.CLOSE)
    def close(self, code: int | None = None, reason: str = "", *, timeout: float = 10.0) -> None:
        with self._lock:
            if self._released:
                return
            self.start_close(code, reason)
            if not wait_until(self._cond, lambda: self._released, _deadline(timeout)):
                self.abort()

    def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the session is over and its socket released.

        Raises:
            TransportTimeoutError: still open after *timeout* seconds.
        """
        with self._lock:
            if not wait_until(self._cond, lambda: self._released, _deadline(timeout)):
                raise TransportTimeoutError("close", timeout or 0.0, session_id=self.id)

    def start_close(self, code: int | None = None, reason: str = "") -> None:
        """Begin a graceful close without waiting for it (see :meth:`close`)."""
        with self._lock:
            super().start_close(code, reason)

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection now, without a close handshake (pending requests fail with
        ``connection.aborted``); the I/O thread releases the socket."""
        with self._lock:
            super().abort(reason)

    def _drop(self) -> None:
        if self._io is not None:
            self._io.abort()
        else:
            self.socket_gone()

    # --- for the transport (lock held unless said) ---------------------------------------------

    def _has_message_or_end(self) -> bool:
        return bool(self._inbox) or self._released or self.closed_event is not None

    def take_message(self) -> Message | None:
        """Pop the next message (lock held), or ``None`` when there is none."""
        if not self._inbox:
            return None
        message = self._inbox.popleft()
        self._sm.message_consumed(len(message.payload))
        self._consumed()
        return message

    def take_messages(self, max_messages: int | None = None) -> list[Message]:
        """Pop every queued message at once (at most *max_messages*), oldest first (lock
        held); an empty list when there is none.

        One call accounts the whole batch to the receive bound (reading resumes once, if it
        was paused) where :meth:`take_message` does it message by message: a consumer that
        handles messages outside the lock (``Transport.serve``) takes the lock once per batch
        instead of once per message.
        """
        if not self._inbox:
            return []
        messages = self._take_batch(max_messages)
        self._consumed()
        return messages

    def _consumed(self) -> None:
        # Taking messages changes no output and no deadline; it emits only ReadResumed (when
        # the inbox fell to half its bound): the I/O thread hears of it only then.
        if self._sm.has_events:
            self._process()
            self._touch()

    def wait_established(self, deadline: float | None) -> bool:
        """Wait (lock held) until the handshake completed or failed; ``False`` on timeout.

        Raises:
            TransportError: the handshake failed or the connection closed first.
        """
        if not wait_until(self._cond, lambda: self._established_done, deadline):
            return False
        if self._established_error is not None:
            raise self._established_error
        return True

    def when_established(self, callback: Callable[[Session], None]) -> None:
        """Call *callback* (lock held) once the handshake completed; a failed handshake is
        logged (it never reaches the application, and never stops a listener)."""
        self._on_established.append(callback)

    # --- the driver's side (I/O thread, lock held) ---------------------------------------------

    def set_io(self, io: IO) -> None:
        """Give the session its socket side (before the socket is registered)."""
        self._io = io

    def attach(self, io: IO, now: float) -> None:
        """Give the session its socket side and start the connection."""
        self._io = io
        self._conn.start(now)
        self._after_input()

    def set_socket_paused(self, paused: bool) -> None:
        """The channel's write buffer crossed a watermark."""
        if paused != self._socket_paused:
            self._socket_paused = paused
            self._update_writable()
            self._cond.notify_all()

    def feed(self, nbytes: int, now: float) -> None:
        """Bytes arrived in the connection's buffer (stream sockets)."""
        self._conn.buffer_updated(nbytes, now)
        self._after_input()

    def _on_released(self) -> None:
        self._blocked = True
        self._notify_inbox()
        self._cond.notify_all()

    def _mark_arrived(self) -> None:
        # The listener (serve's drain task) hears once per _process pass (see _after_process).
        self._arrived = True

    def _request_withdrawn(self) -> None:
        self._touch()
        self._cond.notify_all()

    def _settle(self, waiter: _Reply, message: Message | None,
                error: TransportError | None) -> None:
        if message is not None and self._metrics is not None:
            # Measured when the response arrives (the waiter may wake later).
            self._metrics.request_latency(time.monotonic() - waiter.sent_at)
        waiter.finish(message, error)

    def _handshake_settled(self) -> None:
        error = self._established_error
        if error is not None:
            logger.info("session %s: handshake failed: %s", self.id, error)
            return
        for callback in self._on_established:
            callback(self)

    def deadline(self) -> float | None:
        """The connection's next deadline (``None`` once over)."""
        return None if self._released else self._conn.next_deadline()

    def on_timer(self, now: float) -> None:
        """The connection's deadline came."""
        self._conn.handle_timer(now)
        self._after_input()

    # --- plumbing ------------------------------------------------------------------------------

    def _touch(self) -> None:
        # Core state changed outside the I/O thread: output or deadlines may have too.
        if self._io is not None:
            self._io.request_flush()
        else:
            self._loop.wake()

    def _after_input(self) -> None:
        self._process()
        self._touch()

    def _write_now(self) -> None:
        # A request or a response: someone waits for the peer's answer, so the bytes leave
        # from this thread when the I/O thread sleeps (one thread hop less each way).  One-way
        # sends stay with the I/O thread, which batches a burst into one write.
        io = self._io
        if io is None:
            self._loop.wake()
        else:
            io.write_now()

    def _after_process(self, handled: bool = True) -> None:
        if self._arrived:
            # The listener (serve's drain task) hears once per batch of messages.
            self._arrived = False
            self._notify_inbox()
        if self._metrics is not None:
            self._update_metrics(self._metrics)
        if handled:
            # Every waiter's predicate is moved by an event (or by a path that notifies on its
            # own: the socket's pause, the end of the session): no event, no wake-up.
            self._cond.notify_all()

    def _notify_inbox(self) -> None:
        listener = self.inbox_listener
        if listener is not None:
            listener()

    def _update_writable(self) -> None:
        self._blocked = (self._session_paused or self._machine_paused or self._socket_paused
                         or self.closed_event is not None or self._released)

    def _wait_writable(self, operation: str, timeout: float | None) -> None:
        # The caller's timeout is its own choice (it gives up, the session stays); the
        # default one is the send_timeout, past which a server session is aborted.
        limit = timeout if timeout is not None else self.send_timeout
        with _lend_worker():
            writable = wait_until(self._cond, self._can_write, _deadline(limit))
        if not writable:
            assert limit is not None
            if timeout is None:
                raise self._send_timed_out(operation, limit)
            raise TransportTimeoutError(operation, timeout, session_id=self.id,
                                        reason=f"{operation}: still paused by backpressure "
                                               f"after {timeout:g} s")
        self._check_open(operation)

    def _respond(self, request: Packet, data: Buffer, biz_type: int | None,
                 ext_header: Buffer) -> None:
        with self._lock:
            self._unanswered.discard(request.message_id)
            self._cond.notify_all()
            # Answers are allowed while closing, so only a finished connection refuses them.
            if not self._can_write():
                limit = self.send_timeout
                with _lend_worker():
                    writable = wait_until(self._cond, self._can_write, _deadline(limit))
                if not writable:
                    assert limit is not None
                    raise self._send_timed_out("respond", limit)
            if self._released or self.closed_event is not None:
                raise self._closed_error("respond")
            self._queue_response(request, data, biz_type, ext_header)
            self._write_now()
