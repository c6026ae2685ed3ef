"""One session: a core :class:`~msgtrans.core.connection.Connection` driven by trio tasks.

:class:`Session` turns the connection's events into awaitables (the inbox, one-shot response
slots, the established and finished events) and runs the connection's timer.  The socket side is
an :class:`IO` object (a stream socket, a QUIC client socket or a seat on a QUIC server
listener); :meth:`Session.run` is the one task that owns a session, and every task it starts
lives in its nursery.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Protocol

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

from .._backend import take_batch
from .._pool_base import SessionMetrics
from ..core.connection import Connection
from ..core.errormap import map_error
from ..core.errors import Protocol as WireProtocol
from ..core.errors import TransportConnectionError, TransportError
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
from ._message import Message

__all__ = ["IO", "Session"]

logger = logging.getLogger("msgtrans.io_trio")

#: How many calls in a row :meth:`Session.send` and :meth:`Session.receive` may return without
#: a schedule point while they need not wait (each call is always a cancel point).  Yielding on
#: every call costs a trip through trio's scheduler per message, and lets the writer task wake
#: once per message; once per batch keeps other tasks fair and the writer's batches full.
BATCH_CALLS = 64



class IO(Protocol):
    """What a :class:`Session` needs from its socket side (internal)."""

    async def run(self) -> None:
        """Move bytes until the connection is over; return then (the socket may stay open)."""

    async def aclose(self) -> None:
        """Release the socket (must not block: called shielded, also after a cancel)."""

    def wake(self) -> None:
        """Have the writer flush what the connection has to send (one flush per batch)."""

    def set_reading(self, reading: bool) -> None:
        """Pause (``False``) or resume reading from the socket."""

    @property
    def peer_address(self) -> Address | None:
        """The peer's socket address, when known."""


class _Slot:
    """A one-shot result for one request: set once, awaited once."""

    __slots__ = ("error", "event", "message")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.message: Message | None = None
        self.error: TransportError | None = None


class Session:
    """One connection to a peer, as the application sees it.

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
        on_finished: Callable[[Session], None] | None = None,
        metrics: TransportMetrics | None = None,
    ) -> None:
        self.id = session_id
        self._conn = conn
        self._sm = conn.session
        # Stream machines (TCP, TLS, WebSocket) emit nothing when a packet is queued, so a send
        # needs the events round trip only when the session machine emitted (SendPaused);
        # held typed so the hot path skips Connection's isinstance checks on an ABC.
        machine = conn.machine
        self._stream_machine: StreamMachine | None = (
            machine if isinstance(machine, StreamMachine) else None
        )
        # Calls of send() / receive() since their last schedule point (see BATCH_CALLS).
        self._sends = 0
        self._receives = 0
        self._io: IO | None = None
        self._on_finished = on_finished
        self._finish_callbacks: list[Callable[[Session], None]] = []
        self._inbox: deque[Message] = deque()
        self._inbox_event = trio.Event()
        self._responses: dict[int, _Slot] = {}
        # Requests from the peer not answered yet: graceful shutdown waits for them.
        self._unanswered: set[int] = set()
        self._established = trio.Event()
        self._established_error: TransportError | None = None
        self._finished = trio.Event()
        self._writable = trio.Event()
        self._writable.set()
        self._session_paused = False  # SendPaused from the session machine
        self._machine_paused = False  # WritePaused from the protocol machine
        self._timer_event = trio.Event()
        self._timer_at: float | None = None
        self._unflushed_bytes = 0
        self._unflushed_packets = 0
        self._work_done = trio.Event()
        self._processing = False
        # Created now, not in run(): abort() may come before the task started.
        self._scope = trio.CancelScope()
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
        """The transport: ``TCP``, ``WEBSOCKET`` or ``QUIC``."""
        return self._conn.protocol

    @property
    def peer_address(self) -> Address | None:
        """The peer's socket address, or ``None`` before the socket connected."""
        return self._io.peer_address if self._io is not None else None

    @property
    def state(self) -> SessionState:
        """``CONNECTING``, ``OPEN``, ``CLOSING`` or ``CLOSED``."""
        return self._conn.session.state

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the session closed (or began closing), or ``None`` while it is open."""
        return self._conn.session.close_reason

    @property
    def is_closed(self) -> bool:
        """Whether the session is over and its socket released."""
        return bool(self._finished.is_set())

    @property
    def connection(self) -> Connection:
        """The core connection under this session (for inspection and statistics)."""
        return self._conn

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.protocol.value} {self.state.value}>"

    # --- the application's operations ----------------------------------------------------------

    async def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"") -> None:
        """Send a one-way message.  Waits while the send side is paused (backpressure); returns
        once the message is queued (the writer task sends it with the rest of the batch).

        Every call is a cancel point; while the session is writable, only every
        :data:`BATCH_CALLS`-th call is also a schedule point (yields to other tasks), so a
        loop of sends queues a batch that the writer task sends in one write.

        Raises:
            TransportConnectionError: the session is closing or closed.
            ResourceError: the payload is over the limit.
            ConfigurationError: *biz_type* or *ext_header* is out of range.
        """
        if self._sends < BATCH_CALLS and self._writable.is_set():
            self._sends += 1
            await trio.lowlevel.checkpoint_if_cancelled()
            if self.closed_event is not None or self._finished.is_set():
                raise self._closed_error("send")
        else:
            self._sends = 0
            await self._wait_writable("send")
        machine = self._stream_machine
        try:
            if machine is None:
                packet = self._conn.send(data, biz_type=biz_type, ext_header=ext_header,
                                         now=trio.current_time())
                size = len(packet.payload)
                wire = packet.wire_size
            else:
                # Connection.send, inlined for stream machines: make the packet, queue it,
                # count the backlog.
                sm = self._sm
                packet = sm.send(data, biz_type=biz_type, ext_header=ext_header,
                                 now=trio.current_time())
                machine.send_packet(packet)
                size = len(packet.payload)
                wire = size + 16 + len(ext_header)
                sm.packet_queued(wire)
        except TransportError as exc:
            raise self._count(self._enrich(exc, "send")) from None
        self._queued(wire, size)

    async def request(
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

        Cancelling the call (a cancel scope, a deadline) withdraws the request: a late response
        is dropped and nothing stays pending in the core.
        """
        await self._wait_writable("request")
        sent_at = trio.current_time()
        try:
            request_id = self._conn.request(
                data, biz_type=biz_type, ext_header=ext_header, timeout=timeout,
                now=trio.current_time(),
            )
        except TransportError as exc:
            raise self._count(self._enrich(exc, "request")) from None
        slot = _Slot()
        self._responses[request_id] = slot
        # Queued and flushed only need the same measure; this one is close to the wire size.
        size = len(memoryview(data))
        self._queued(size + 16 + len(ext_header), size)
        self._rearm()  # the request's deadline
        try:
            await slot.event.wait()
        except BaseException:
            # Cancelled (or interrupted): withdraw the request so nothing stays pending.
            if self._responses.pop(request_id, None) is not None:
                self._conn.session.cancel(request_id)
                self._rearm()
                self._work_done.set()
            raise
        if slot.error is not None:
            raise slot.error
        assert slot.message is not None
        if self._metrics is not None:
            self._metrics.metrics.request_latency(trio.current_time() - sent_at)
        return slot.message

    async def receive(self) -> Message:
        """Return the next one-way message or request from the peer (in arrival order).

        Cancelling the call never loses a message: a message is only taken from the queue by
        a call that returns it.

        Raises:
            TransportConnectionError: the session closed and every message was taken (code
                ``connection.closed``), or the error that ended the session.
        """
        if await self._wait_inbox():
            self._receives = 0
        elif self._receives < BATCH_CALLS:
            # A message was waiting: no trip through the scheduler, but once per batch.
            self._receives += 1
        else:
            self._receives = 0
            # Nothing can be cancelled from here until the message is handed over.
            await trio.lowlevel.cancel_shielded_checkpoint()
        message = self._inbox.popleft()
        sm = self._sm
        sm.message_consumed(len(message.payload))
        if sm.has_events:  # ReadResumed: the reader goes on
            self._process()
        return message

    async def receive_many(self, max_messages: int | None = None) -> list[Message]:
        """Return every one-way message and request queued from the peer (at least one, in
        arrival order), waiting for the first if none is queued.  A server loop that handles
        what arrived in one batch costs one wake-up per batch instead of one per message.

        Args:
            max_messages: take at most this many (default ``None``: all that are queued).

        Cancelling the call never loses a message: messages are only taken from the queue by
        a call that returns them.  Always a checkpoint.

        Raises:
            ValueError: *max_messages* is below 1.
            TransportConnectionError: the session closed and every message was taken (code
                ``connection.closed``), or the error that ended the session.
        """
        if max_messages is not None and max_messages < 1:
            raise ValueError(f"max_messages must be 1 or more, got {max_messages}")
        waited = await self._wait_inbox()
        self._receives = 0
        if not waited:
            # The checkpoint: nothing can be cancelled from here until the batch is handed over.
            await trio.lowlevel.cancel_shielded_checkpoint()
        messages = take_batch(self._inbox, max_messages, self._sm)
        if self._sm.has_events:
            self._process()
        return messages

    async def _wait_inbox(self) -> bool:
        """Wait until a message is queued (a cancel point); return whether it had to wait (then
        it was also a schedule point).

        Raises:
            TransportConnectionError: the session is over and the queue is empty.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while not self._inbox:
            if self._finished.is_set() or self.closed_event is not None:
                raise self._closed_error("receive")
            if self._inbox_event.is_set():
                self._inbox_event = trio.Event()
            await self._inbox_event.wait()
            waited = True
        return waited

    async def close(
        self, code: int | None = None, reason: str = "", *, timeout: float = 10.0
    ) -> None:
        """Close gracefully: queued messages still leave, then the protocol's close handshake
        (TCP FIN, WebSocket Close, QUIC CONNECTION_CLOSE).  Waits for the close to complete,
        at most *timeout* seconds, then drops the connection.  Closing twice is harmless.

        Args:
            code: the WebSocket close code (default 1000) or QUIC application error code
                (default 0); ignored on TCP.
            reason: the reason text sent where the protocol carries one.
            timeout: seconds to wait for the close handshake (default 10.0).
        """
        if not self._finished.is_set():
            self.start_close(code, reason)
            with trio.move_on_after(timeout):
                await self._finished.wait()
            if not self._finished.is_set():
                self.abort()
                await self._finished.wait()

    async def wait_closed(self) -> None:
        """Wait until the session is over and its socket released."""
        await self._finished.wait()

    def start_close(self, code: int | None = None, reason: str = "") -> None:
        """Begin a graceful close without waiting for it (see :meth:`close`)."""
        if self._finished.is_set():
            return
        if not self._conn.machine.is_closed:
            self._conn.close(code, reason)
        self._after_input()

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection now, without a close handshake (pending requests fail with
        ``connection.aborted``)."""
        if self._finished.is_set():
            return
        self.forced = True
        error = TransportConnectionError(
            f"the session was {reason}", code="connection.aborted", retryable=False,
            session_id=self.id,
        )
        self._conn.connection_lost(trio.current_time(), error)
        self._process()
        # The session's task releases the socket on its way out; without one, nothing to release.
        self._scope.cancel()
        if self._io is None:
            self._socket_gone()

    # --- for the transport ---------------------------------------------------------------------

    @property
    def pending_work(self) -> int:
        """Requests in flight both ways (ours waiting for a response, the peer's waiting for
        our answer)."""
        return len(self._responses) + len(self._unanswered)

    async def wait_idle(self) -> None:
        """Wait until no request is in flight either way (or the session is over)."""
        while self.pending_work and not self._finished.is_set():
            if self._work_done.is_set():
                self._work_done = trio.Event()
            await self._work_done.wait()

    async def wait_established(self) -> None:
        """Wait for the handshake to complete.

        Raises:
            TransportError: the handshake failed or the connection closed first.
        """
        await self._established.wait()
        if self._established_error is not None:
            raise self._established_error

    def when_finished(self, callback: Callable[[Session], None]) -> None:
        """Call *callback* with this session once it is over and its socket released."""
        if self._finished.is_set():
            callback(self)
        else:
            self._finish_callbacks.append(callback)

    async def run(self, io: IO) -> None:
        """The session's task: start the connection, run its socket side and its timer until
        it is over, release the socket.  Never raises (but ``Cancelled``): a driver bug drops
        the connection, logged, instead of tearing down the nursery it lives in."""
        self._io = io
        try:
            with self._scope:
                try:
                    self._conn.start(trio.current_time())
                    self._after_input()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._timer_loop)
                        await io.run()
                        nursery.cancel_scope.cancel()
                except Exception as exc:
                    logger.exception("session %s: driver error; dropping the connection",
                                     self.id)
                    self.lost(exc)
        finally:
            with trio.CancelScope(shield=True):
                await io.aclose()
            self.lost(None)

    # --- the driver's side ---------------------------------------------------------------------

    def feed(self, nbytes: int) -> None:
        """Bytes arrived in the connection's buffer (stream sockets).  The caller wakes its
        writer if the connection has something to send now (:meth:`take_output`) or is over."""
        self._conn.buffer_updated(nbytes, trio.current_time())
        self._process()

    def feed_eof(self) -> None:
        """The peer shut its write side."""
        self._conn.receive_data(b"", trio.current_time())
        self._after_input()

    def feed_datagram(self, data: bytes, addr: Address) -> None:
        """A datagram arrived (QUIC client sockets)."""
        self._conn.receive_datagram(data, addr, trio.current_time())
        self._after_input()

    def lost(self, exc: BaseException | None) -> None:
        """The socket closed or broke (*exc*: why, if it broke): the core learns it."""
        if not self._conn.machine.is_closed:
            error = (
                map_error(exc, protocol=self.protocol, operation="receive", session_id=self.id)
                if exc is not None else None
            )
            self._conn.connection_lost(trio.current_time(), error)
            self._process()
        if exc is None:
            self._socket_gone()

    def _socket_gone(self) -> None:
        if self._finished.is_set():
            return
        if self.closed_event is None:
            # The core saw no close (should not happen): fail what waits all the same.
            self._fail_waiters(self._closed_error("receive"))
        if not self._established.is_set():
            self._established_error = self._closed_error("connect")
            self._established.set()
        self._finished.set()
        self._inbox_event.set()
        self._writable.set()
        self._work_done.set()
        self._timer_event.set()
        if self._metrics is not None:
            self._metrics.closed()
        if self._on_finished is not None:
            self._on_finished(self)
        for callback in self._finish_callbacks:
            callback(self)
        self._finish_callbacks.clear()

    def take_output(self) -> list[Buffer]:
        """Return the bytes to write and account them as flushed (stream sockets)."""
        data = self._conn.data_to_send()
        self._account_flushed()
        return data

    def take_datagrams(self) -> list[tuple[bytes, Address]]:
        """Return the datagrams to send and account them as flushed (QUIC client)."""
        grams = self._conn.datagrams_to_send(trio.current_time())
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

    async def _timer_loop(self) -> None:
        # Sleeps until the core's next deadline; _rearm wakes it when an earlier one appears.
        # A later deadline needs no wake-up: firing early is harmless, the loop just re-reads.
        while True:
            deadline = self._conn.next_deadline()
            self._timer_at = deadline
            if self._timer_event.is_set():
                self._timer_event = trio.Event()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._timer_event.wait()
                continue
            self._timer_at = None
            self._conn.handle_timer(trio.current_time())
            self._after_input()

    # --- plumbing ------------------------------------------------------------------------------

    def _after_input(self) -> None:
        self._process()
        if self._io is not None:
            self._io.wake()

    def _queued(self, nbytes: int, payload: int) -> None:
        self._unflushed_payload += payload
        self._unflushed_bytes += nbytes
        self._unflushed_packets += 1
        if self._stream_machine is None or self._sm.has_events:
            # QUIC may pause on flow control; a stream machine only when the session did.
            self._process()
        if self._io is not None:
            self._io.wake()

    def process(self) -> None:
        """Handle the connection's pending events and re-arm its timer."""
        self._process()

    def _process(self) -> None:
        if self._processing:
            return  # a handler below called back in; the outer loop picks the events up
        self._processing = True
        try:
            while True:
                events = self._conn.events()
                if not events:
                    break
                for event in events:
                    self._handle(event)
        finally:
            self._processing = False
        if self._metrics is not None:
            self._update_metrics(self._metrics)
        self._rearm()

    def _handle(self, event: object) -> None:
        kind = type(event)
        if kind is MessageReceived or kind is RequestReceived:
            packet: Packet = event.packet  # type: ignore[attr-defined]
            responder = self._respond if kind is RequestReceived else None
            if responder is not None:
                self._unanswered.add(packet.message_id)
            self._inbox.append(Message(packet, self.id, responder))
            size = len(packet.payload)
            # The session machine's events (ReadPaused) come with the next events() call of
            # the loop in _process.
            self._sm.message_delivered(size)
            self._in_messages += 1
            self._in_bytes += size
            self._inbox_event.set()
        elif kind is ResponseReceived:
            assert isinstance(event, ResponseReceived)
            self._in_messages += 1
            self._in_bytes += len(event.packet.payload)
            slot = self._responses.pop(event.request_id, None)
            if slot is not None:
                slot.message = Message(event.packet, self.id)
                slot.event.set()
            self._work_done.set()
        elif kind is RequestFailed:
            assert isinstance(event, RequestFailed)
            slot = self._responses.pop(event.request_id, None)
            if slot is not None:
                slot.error = self._count(self._enrich(event.error, "request"))
                slot.event.set()
            self._work_done.set()
        elif kind is ConnectionEstablished:
            assert isinstance(event, ConnectionEstablished)
            self.established = event
            self._established.set()
        elif kind is SendPaused or kind is SendResumed:
            self._session_paused = kind is SendPaused
            self._update_writable()
        elif kind is WritePaused or kind is WriteResumed:
            self._machine_paused = kind is WritePaused
            self._update_writable()
        elif kind is ReadPaused or kind is ReadResumed:
            if self._io is not None:
                self._io.set_reading(kind is ReadResumed)
        elif kind is ErrorOccurred:
            assert isinstance(event, ErrorOccurred)
            self._set_error(event.error)
        elif kind is ConnectionClosed:
            assert isinstance(event, ConnectionClosed)
            self.closed_event = event
            if event.error is not None:
                self._set_error(event.error)
            if not self._established.is_set():
                error = self.error or self._closed_error("connect")
                self._established_error = self._enrich(error, "connect")
                self._established.set()
            self._inbox_event.set()
            self._update_writable()
        elif kind is SessionClosed:
            assert isinstance(event, SessionClosed)
            if event.error is not None:
                self._set_error(event.error)
            self._fail_waiters(self._closed_error("request"))
            self._inbox_event.set()
            self._update_writable()
        # HeartbeatDue: the protocol machines keep their own pings; nothing to do here.

    def _fail_waiters(self, error: TransportError) -> None:
        responses, self._responses = self._responses, {}
        for slot in responses.values():
            slot.error = error
            slot.event.set()
        self._work_done.set()

    def _update_writable(self) -> None:
        over = self.closed_event is not None or self._finished.is_set()
        if over or not (self._session_paused or self._machine_paused):
            self._writable.set()
        elif self._writable.is_set():
            self._writable = trio.Event()

    async def _wait_writable(self, operation: str) -> None:
        await self._writable.wait()  # a checkpoint even when writable
        while not self._writable.is_set():
            await self._writable.wait()
        if self.closed_event is not None or self._finished.is_set():
            raise self._closed_error(operation)

    def _rearm(self) -> None:
        deadline = self._conn.next_deadline()
        at = self._timer_at
        if deadline is not None and (at is None or deadline < at):
            self._timer_at = deadline
            self._timer_event.set()

    async def _respond(
        self, request: Packet, data: Buffer, biz_type: int | None, ext_header: Buffer
    ) -> None:
        self._unanswered.discard(request.message_id)
        self._work_done.set()
        # Answers are allowed while closing, so only a finished connection refuses them.
        await self._writable.wait()
        while not self._writable.is_set():
            await self._writable.wait()
        if self._finished.is_set() or self.closed_event is not None:
            raise self._closed_error("respond")
        try:
            packet = self._conn.respond(
                request, data, biz_type=biz_type, ext_header=ext_header, now=trio.current_time()
            )
        except TransportError as exc:
            raise self._count(self._enrich(exc, "respond")) from None
        self._queued(packet.wire_size, len(packet.payload))

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

    def _set_error(self, error: TransportError) -> None:
        if self.error is None:
            self.error = self._enrich(error, "receive")
            # A session that never opened is a failed connect: connect() counts that one.
            if self.established is not None:
                self._count(self.error)

    def _count(self, error: TransportError) -> TransportError:
        if self._metrics is not None:
            self._metrics.error(error)
        return error

    def _enrich(self, error: TransportError, operation: str) -> TransportError:
        return map_error(error, operation=operation, session_id=self.id)
