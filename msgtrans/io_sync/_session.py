"""One session: a core :class:`~msgtrans.core.connection.Connection` behind blocking calls.

Every method takes the transport lock (see :mod:`msgtrans.io_sync._loop`); blocking calls wait
on the transport condition with their timeout.  The socket side is an :class:`IO` object (a
stream channel, a QUIC client channel or a QUIC listener's per-session face), so this module
knows no socket and no protocol.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from .._backend import take_batch
from .._pool_base import SessionMetrics
from ..core.connection import Connection
from ..core.errormap import map_error
from ..core.errors import Protocol as WireProtocol
from ..core.errors import TransportConnectionError, TransportError, TransportTimeoutError
from ..core.events import (
    ConnectionClosed,
    ConnectionEstablished,
    ErrorOccurred,
    WritePaused,
    WriteResumed,
)
from ..core.machine import Address, StreamMachine
from ..core.metrics import TransportMetrics
from ..core.packet import Buffer, Packet
from ..core.session import (
    CloseReason,
    MessageReceived,
    ReadPaused,
    ReadResumed,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
    SendPaused,
    SendResumed,
    SessionClosed,
    SessionState,
)
from ._loop import IOLoop, wait_until
from ._message import Message

__all__ = ["IO", "Session"]

logger = logging.getLogger("msgtrans.io_sync")



class IO(Protocol):
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

    @property
    def peer_address(self) -> Address | None:
        """The peer's socket address, when known."""


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


class Session:
    """One connection to a peer, as the application sees it; safe to use from many threads.

    Sessions come from :meth:`Transport.connect` and from accepting (``Transport.accept`` /
    ``Transport.serve``); they are not created directly.

    Attributes:
        id: the transport-wide session id (1, 2, ...).
        established: the core's ``ConnectionEstablished`` event (TLS version, ALPN, WebSocket
            subprotocol and headers), once the handshake completed; else ``None``.
        closed_event: the core's ``ConnectionClosed`` event (``clean``, close ``code`` and
            ``reason``) once the connection ended; else ``None``.
        error: the :class:`TransportError` that ended the session, or ``None``.
        forced: ``True`` when the session was aborted (no close handshake).
        packets_flushed: messages handed to the socket so far.
    """

    def __init__(
        self,
        conn: Connection,
        session_id: int,
        loop: IOLoop,
        on_finished: Callable[[Session], None] | None = None,
        metrics: TransportMetrics | None = None,
    ) -> None:
        self.id = session_id
        self._conn = conn
        self._sm = conn.session
        # Stream machines (TCP, TLS, WebSocket) emit nothing when a packet is queued, so a send
        # needs the events round trip only when the session machine emitted (SendPaused); QUIC
        # may pause on flow control, so it always takes it.  Held typed so the per-send call
        # skips Connection's isinstance check on an ABC (a slow path in CPython).
        machine = conn.machine
        self._stream_machine: StreamMachine | None = (
            machine if isinstance(machine, StreamMachine) else None)
        self._loop = loop
        self._lock = loop.lock
        self._cond = loop.cond
        self._io: IO | None = None
        self._inbox: deque[Message] = deque()
        self._responses: dict[int, _Reply] = {}
        # Requests from the peer not answered yet: graceful shutdown waits for them.
        self._unanswered: set[int] = set()
        self._established_done = False
        self._established_error: TransportError | None = None
        self._finished = False
        self._session_paused = False  # SendPaused from the session machine
        self._machine_paused = False  # WritePaused from the protocol machine
        self._socket_paused = False  # the channel's own write buffer is over its mark
        self._unflushed_bytes = 0
        self._unflushed_packets = 0
        self._processing = False
        # Any of the three pauses, the end of the session: what makes send() take the slow path.
        self._blocked = False
        self._arrived = False  # a message was queued during this _process pass
        self._on_established: list[Callable[[Session], None]] = []
        self._on_finished: list[Callable[[Session], None]] = (
            [on_finished] if on_finished is not None else [])
        # serve(): told (lock held, I/O thread) when a message arrives or the session ends.
        self.inbox_listener: Callable[[], None] | None = None
        self.packets_flushed = 0
        self.established: ConnectionEstablished | None = None
        self.closed_event: ConnectionClosed | None = None
        self.error: TransportError | None = None
        self.forced = False
        # The transport's metrics (None: not counted); messages out are counted per flush.
        self._metrics = (SessionMetrics(metrics, conn.protocol, conn.session.state)
                         if metrics is not None else None)
        self._unflushed_payload = 0
        # Received messages are added up here and handed to the metrics once per _process.
        self._in_messages = 0
        self._in_bytes = 0

    # --- what the session is -------------------------------------------------------------------

    @property
    def protocol(self) -> WireProtocol:
        """The transport: ``TCP``, ``WEBSOCKET`` or ``QUIC`` (TLS is inside TCP and WebSocket;
        see :attr:`established`)."""
        return self._conn.protocol

    @property
    def peer_address(self) -> Address | None:
        """The peer's socket address, or ``None`` before the socket connected."""
        io = self._io
        return io.peer_address if io is not None else None

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

    @property
    def is_closed(self) -> bool:
        """Whether the session is over and its socket released."""
        return self._finished

    @property
    def connection(self) -> Connection:
        """The core connection under this session (for inspection; hold no reference across
        threads without the transport's lock)."""
        return self._conn

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.protocol.value} {self._conn.session.state.value}>"

    # --- the application's operations ----------------------------------------------------------

    def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"",
             timeout: float | None = None) -> None:
        """Send a one-way message.  Blocks only while the send side is paused (backpressure);
        returns once the message is queued (the I/O thread writes it right away).

        Args:
            data: the payload.
            biz_type: the application's type tag, 0..255 (default 0).
            ext_header: the extension header (default empty).
            timeout: seconds to wait out backpressure (default: no limit).

        Raises:
            TransportConnectionError: the session is closing or closed.
            TransportTimeoutError: still paused after *timeout* (code ``timeout.elapsed``).
            ResourceError: the payload is over the limit.
            ConfigurationError: *biz_type* or *ext_header* is out of range.
        """
        with self._lock:
            if self._blocked:
                self._wait_writable("send", _deadline(timeout), timeout)
            machine = self._stream_machine
            try:
                if machine is None:
                    packet = self._conn.send(data, biz_type=biz_type, ext_header=ext_header,
                                             now=time.monotonic())
                    size = len(packet.payload)
                    wire = packet.wire_size
                else:
                    # Connection.send inlined for stream machines (two calls and two wire_size
                    # lookups less per message): make the packet, queue it, count the backlog.
                    sm = self._sm
                    packet = sm.send(data, biz_type=biz_type, ext_header=ext_header,
                                     now=time.monotonic())
                    machine.send_packet(packet)
                    size = len(packet.payload)
                    wire = size + 16 + len(packet.ext_header)
                    sm.packet_queued(wire)
            except TransportError as exc:
                raise self._count(self._enrich(exc, "send")) from None
            self._queued(wire, size)

    def request(
        self,
        data: Buffer,
        *,
        biz_type: int = 0,
        ext_header: Buffer = b"",
        timeout: float | None = None,
    ) -> Message:
        """Send a request and return the peer's response.

        Args:
            data: the payload.
            biz_type: the application's type tag (default 0).
            ext_header: the extension header (default empty).
            timeout: seconds to wait for the response (default: the transport's
                ``request_timeout``, 10 s unless the builder changed it).

        Raises:
            TransportTimeoutError: no response in time (code ``timeout.request``).
            TransportConnectionError: the session is closing or closed, or closed before the
                response came.
            ResourceError: too many requests pending, or the payload is over the limit.

        An exception in the waiting thread (``KeyboardInterrupt``) withdraws the request: a
        late response is dropped.
        """
        with self._lock:
            if self._blocked:
                self._wait_writable("request", _deadline(timeout), timeout)
            sent_at = time.monotonic()
            try:
                request_id = self._conn.request(
                    data, biz_type=biz_type, ext_header=ext_header, timeout=timeout,
                    now=time.monotonic(),
                )
            except TransportError as exc:
                raise self._count(self._enrich(exc, "request")) from None
            reply = _Reply(sent_at)
            self._responses[request_id] = reply
            # Only queued and flushed using the same measure matters for the watermarks; the
            # payload length is close enough for requests.
            size = len(memoryview(data))
            self._queued(size + 16 + len(ext_header), size, direct=True)
        try:
            # The core's request timer ends the wait (RequestFailed) as does the close
            # (SessionClosed): no timeout of our own is needed here.
            reply.waiter.acquire()
        except BaseException:
            with self._lock:
                if self._responses.pop(request_id, None) is not None:
                    self._conn.session.cancel(request_id)
                    self._touch()
                    self._cond.notify_all()
            raise
        if reply.error is not None:
            raise reply.error
        assert reply.message is not None
        return reply.message

    def receive(self, timeout: float | None = None) -> Message:
        """Return the next one-way message or request from the peer (in arrival order).

        Args:
            timeout: seconds to wait (default: until one comes or the session closes).

        Raises:
            TransportTimeoutError: nothing came in time (code ``timeout.elapsed``); the next
                message stays queued for the next call.
            TransportConnectionError: the session closed and every message was taken (code
                ``connection.closed``), or the error that ended the session.
        """
        deadline = _deadline(timeout)
        with self._lock:
            if not wait_until(self._cond, self._has_message_or_end, deadline):
                raise TransportTimeoutError("receive", timeout or 0.0, session_id=self.id)
            message = self.take_message()
            if message is None:
                raise self._closed_error("receive")
            return message

    def receive_many(self, max_messages: int | None = None,
                     timeout: float | None = None) -> list[Message]:
        """Return every one-way message and request queued from the peer (at least one, in
        arrival order), waiting for the first if none is queued.  A consumer that handles what
        arrived in one batch takes the transport lock once per batch instead of once per
        message.

        Args:
            max_messages: take at most this many (default ``None``: all that are queued).
            timeout: seconds to wait for the first (default: until one comes or the session
                closes).

        Raises:
            ValueError: *max_messages* is below 1.
            TransportTimeoutError: nothing came in time (code ``timeout.elapsed``).
            TransportConnectionError: the session closed and every message was taken (code
                ``connection.closed``), or the error that ended the session.
        """
        if max_messages is not None and max_messages < 1:
            raise ValueError(f"max_messages must be 1 or more, got {max_messages}")
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

    def close(self, code: int | None = None, reason: str = "", *, timeout: float = 10.0) -> None:
        """Close gracefully: queued messages still leave, then the protocol's close handshake
        (TCP FIN, WebSocket Close, QUIC CONNECTION_CLOSE).  Waits for the close to complete,
        at most *timeout* seconds, then drops the connection.  Closing twice is harmless.

        Args:
            code: the WebSocket close code (default 1000) or QUIC application error code
                (default 0); ignored on TCP.
            reason: the reason text sent where the protocol carries one.
            timeout: seconds to wait for the close handshake (default 10.0).
        """
        with self._lock:
            if self._finished:
                return
            self.start_close(code, reason)
            if not wait_until(self._cond, lambda: self._finished, _deadline(timeout)):
                self.abort()

    def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the session is over and its socket released.

        Raises:
            TransportTimeoutError: still open after *timeout* seconds.
        """
        with self._lock:
            if not wait_until(self._cond, lambda: self._finished, _deadline(timeout)):
                raise TransportTimeoutError("close", timeout or 0.0, session_id=self.id)

    def start_close(self, code: int | None = None, reason: str = "") -> None:
        """Begin a graceful close without waiting for it (see :meth:`close`)."""
        with self._lock:
            if self._finished:
                return
            if not self._conn.machine.is_closed:
                self._conn.close(code, reason)
            self._after_input()

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection now, without a close handshake (pending requests fail with
        ``connection.aborted``); the I/O thread releases the socket."""
        with self._lock:
            if self._finished:
                return
            self.forced = True
            error = TransportConnectionError(
                f"the session was {reason}", code="connection.aborted", retryable=False,
                session_id=self.id,
            )
            self._conn.connection_lost(time.monotonic(), error)
            self._process()
            if self._io is not None:
                self._io.abort()
            else:
                self.socket_gone()

    # --- for the transport (lock held unless said) ---------------------------------------------

    @property
    def pending_work(self) -> int:
        """Requests in flight both ways (ours waiting for a response, the peer's waiting for
        our answer)."""
        return len(self._responses) + len(self._unanswered)

    def _has_message_or_end(self) -> bool:
        return bool(self._inbox) or self._finished or self.closed_event is not None

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
        messages = take_batch(self._inbox, max_messages, self._sm)
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

    def when_finished(self, callback: Callable[[Session], None]) -> None:
        """Call *callback* (lock held) once the session is over and its socket released."""
        self._on_finished.append(callback)

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
            self._update_blocked()
            self._cond.notify_all()

    def feed(self, nbytes: int, now: float) -> None:
        """Bytes arrived in the connection's buffer (stream sockets)."""
        self._conn.buffer_updated(nbytes, now)
        self._after_input()

    def feed_eof(self, now: float) -> None:
        """The peer shut its write side."""
        self._conn.receive_data(b"", now)
        self._after_input()

    def feed_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """A datagram arrived (QUIC client sockets)."""
        self._conn.receive_datagram(data, addr, now)
        self._after_input()

    def lost(self, exc: BaseException | None, now: float) -> None:
        """The socket broke (or the loop is ending); the channel closes it."""
        if not self._conn.machine.is_closed:
            error = (
                map_error(exc, protocol=self.protocol, operation="receive", session_id=self.id)
                if exc is not None else None
            )
            self._conn.connection_lost(now, error)
            self._process()

    def socket_gone(self) -> None:
        """The socket is released: the session is over."""
        if self._finished:
            return
        if self.closed_event is None:
            # The core saw no close (should not happen): fail what waits all the same.
            self._fail_waiters(self._closed_error("receive"))
        self._finished = True
        self._blocked = True
        if self._metrics is not None:
            self._metrics.closed()
        if not self._established_done:
            self._established_done = True
            self._established_error = self._closed_error("connect")
        callbacks, self._on_finished = self._on_finished, []
        for callback in callbacks:
            callback(self)
        self._notify_inbox()
        self._cond.notify_all()

    def take_output(self) -> list[Buffer]:
        """Return the bytes to write and account them as flushed (stream sockets)."""
        data = self._conn.data_to_send()
        self._account_flushed()
        return data

    def take_datagrams(self, now: float) -> list[tuple[bytes, Address]]:
        """Return the datagrams to send and account them as flushed (QUIC client)."""
        grams = self._conn.datagrams_to_send(now)
        self._account_flushed()
        return grams

    def account_flushed(self) -> None:
        """The endpoint sent this session's datagrams (QUIC server)."""
        self._account_flushed()

    def _account_flushed(self) -> None:
        if self._unflushed_packets:
            self.packets_flushed += self._unflushed_packets
            self._conn.flushed(self._unflushed_bytes, self._unflushed_packets)
            if self._metrics is not None:
                # Counted when handed to the socket, once per flush.
                self._metrics.metrics.messages_out += self._unflushed_packets
                self._metrics.metrics.bytes_out += self._unflushed_payload
            self._unflushed_bytes = self._unflushed_packets = self._unflushed_payload = 0

    @property
    def write_closed(self) -> bool:
        """Whether the core wants the write side shut (stream sockets)."""
        return self._conn.write_closed

    @property
    def machine_closed(self) -> bool:
        """Whether the protocol machine is over (the socket may close after the last write)."""
        return self._conn.machine.is_closed

    def deadline(self) -> float | None:
        """The connection's next deadline (``None`` once over)."""
        return None if self._finished else self._conn.next_deadline()

    def on_timer(self, now: float) -> None:
        """The connection's deadline came."""
        self._conn.handle_timer(now)
        self._after_input()

    def process(self) -> None:
        """Handle the connection's pending events."""
        self._process()

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

    def _queued(self, nbytes: int, payload: int, *, direct: bool = False) -> None:
        self._unflushed_payload += payload
        self._unflushed_bytes += nbytes
        self._unflushed_packets += 1
        # Queueing a packet on a stream machine emits nothing unless the session machine
        # paused: the events round trip (and its wake-ups) is skipped on the hot path.
        if self._stream_machine is None or self._sm.has_events:
            self._process()
        io = self._io
        if io is None:
            self._loop.wake()
        elif direct:
            # A request or a response: someone waits for the peer's answer, so the bytes leave
            # from this thread when the I/O thread sleeps (one thread hop less each way).
            # One-way sends stay with the I/O thread, which batches a burst into one write.
            io.write_now()
        else:
            io.send_soon()

    def _process(self) -> None:
        if self._processing:
            return  # a callback below called back in; the outer loop picks the events up
        self._processing = True
        handled = False
        try:
            while True:
                events = self._conn.events()
                if not events:
                    break
                handled = True
                for event in events:
                    self._handle(event)
        finally:
            self._processing = False
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

    def _handle(self, event: object) -> None:
        kind = type(event)
        if kind is MessageReceived or kind is RequestReceived:
            packet: Packet = event.packet  # type: ignore[attr-defined]
            responder = self._respond if kind is RequestReceived else None
            if responder is not None:
                self._unanswered.add(packet.message_id)
            self._inbox.append(Message(packet, self.id, responder))
            size = len(packet.payload)
            # The session machine's own call: a ReadPaused it emits is picked up by the next
            # round of _process (no events round trip per message).
            self._sm.message_delivered(size)
            self._in_messages += 1
            self._in_bytes += size
            self._arrived = True
        elif kind is ResponseReceived:
            assert isinstance(event, ResponseReceived)
            self._in_messages += 1
            self._in_bytes += len(event.packet.payload)
            reply = self._responses.pop(event.request_id, None)
            if reply is not None:
                if self._metrics is not None:
                    # Measured when the response arrives (the waiter may wake later).
                    self._metrics.metrics.request_latency(time.monotonic() - reply.sent_at)
                reply.finish(Message(event.packet, self.id), None)
        elif kind is RequestFailed:
            assert isinstance(event, RequestFailed)
            reply = self._responses.pop(event.request_id, None)
            if reply is not None:
                reply.finish(None, self._count(self._enrich(event.error, "request")))
        elif kind is ConnectionEstablished:
            assert isinstance(event, ConnectionEstablished)
            self.established = event
            if not self._established_done:
                self._established_done = True
                for callback in self._on_established:
                    callback(self)
        elif kind is SendPaused or kind is SendResumed:
            self._session_paused = kind is SendPaused
            self._update_blocked()
        elif kind is WritePaused or kind is WriteResumed:
            self._machine_paused = kind is WritePaused
            self._update_blocked()
        elif kind is ReadPaused:
            if self._io is not None:
                self._io.pause_reading()
        elif kind is ReadResumed:
            if self._io is not None:
                self._io.resume_reading()
        elif kind is ErrorOccurred:
            assert isinstance(event, ErrorOccurred)
            if self.error is None:
                self.error = self._count(self._enrich(event.error, "receive"))
        elif kind is ConnectionClosed:
            assert isinstance(event, ConnectionClosed)
            self.closed_event = event
            self._blocked = True
            if event.error is not None and self.error is None:
                self.error = self._count(self._enrich(event.error, "receive"))
            if not self._established_done:
                self._established_done = True
                error = self.error or self._closed_error("connect")
                self._established_error = self._enrich(error, "connect")
                logger.info("session %s: handshake failed: %s", self.id, error)
            self._notify_inbox()
        elif kind is SessionClosed:
            assert isinstance(event, SessionClosed)
            if event.error is not None and self.error is None:
                self.error = self._count(self._enrich(event.error, "receive"))
            self._fail_waiters(self._closed_error("request"))
            self._notify_inbox()
        # HeartbeatDue: the protocol machines keep their own pings; nothing to do here.

    def _fail_waiters(self, error: TransportError) -> None:
        responses, self._responses = self._responses, {}
        for reply in responses.values():
            reply.finish(None, error)

    def _update_blocked(self) -> None:
        self._blocked = (self._session_paused or self._machine_paused or self._socket_paused
                         or self.closed_event is not None or self._finished)

    def _writable(self) -> bool:
        over = self.closed_event is not None or self._finished
        return over or not (self._session_paused or self._machine_paused or self._socket_paused)

    def _wait_writable(self, operation: str, deadline: float | None,
                       timeout: float | None) -> None:
        if not wait_until(self._cond, self._writable, deadline):
            raise TransportTimeoutError(operation, timeout or 0.0, session_id=self.id,
                                        reason=f"{operation}: still paused by backpressure "
                                               f"after {timeout or 0.0:g} s")
        if self.closed_event is not None or self._finished:
            raise self._closed_error(operation)

    def _respond(self, request: Packet, data: Buffer, biz_type: int | None,
                 ext_header: Buffer) -> None:
        with self._lock:
            self._unanswered.discard(request.message_id)
            self._cond.notify_all()
            # Answers are allowed while closing, so only a finished connection refuses them.
            wait_until(self._cond, self._writable, None)
            if self._finished or self.closed_event is not None:
                raise self._closed_error("respond")
            try:
                packet = self._conn.respond(
                    request, data, biz_type=biz_type, ext_header=ext_header,
                    now=time.monotonic(),
                )
            except TransportError as exc:
                raise self._count(self._enrich(exc, "respond")) from None
            self._queued(packet.wire_size, len(packet.payload), direct=True)

    def _closed_error(self, operation: str) -> TransportError:
        if self.error is not None:
            return self.error.with_operation(operation)
        return TransportConnectionError(
            f"the {self.protocol.value} session is closed", code="connection.closed",
            retryable=False, session_id=self.id, operation=operation,
        )

    def _update_metrics(self, counted: SessionMetrics) -> None:
        # Once per _process pass: the messages of the batch, and the gauge's state.
        if self._in_messages:
            counted.metrics.messages_in += self._in_messages
            counted.metrics.bytes_in += self._in_bytes
            self._in_messages = self._in_bytes = 0
        counted.state(self._conn.session.state)

    def _count(self, error: TransportError) -> TransportError:
        if self._metrics is not None:
            self._metrics.error(error)
        return error

    def _enrich(self, error: TransportError, operation: str) -> TransportError:
        return map_error(error, operation=operation, session_id=self.id)
