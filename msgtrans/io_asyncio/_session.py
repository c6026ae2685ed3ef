"""One session: a core :class:`~msgtrans.core.connection.Connection` driven on the event loop.

:class:`Session` turns the connection's events into awaitables (the inbox, response futures,
the established and finished futures) and owns the connection's one timer.  The socket side is
an :class:`IO` object (a stream protocol, a QUIC client socket or a QUIC server listener), so
this module knows no socket and no protocol.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Protocol

from .._backend import take_batch
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
from ..core.packet import Buffer, Packet, PacketType
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

_ONE_WAY = PacketType.ONE_WAY
_REQUEST = PacketType.REQUEST
_RESPONSE = PacketType.RESPONSE

logger = logging.getLogger("msgtrans.io_asyncio")



class IO(Protocol):
    """What a :class:`Session` needs from its socket side (internal)."""

    def flush(self) -> None:
        """Write what the connection has to send now; close the socket once it is over."""

    def schedule_flush(self) -> None:
        """Arrange one :meth:`flush` soon (coalesces the sends of one loop iteration)."""

    def pause_reading(self) -> None:
        """Stop reading from the socket (the application fell behind)."""

    def resume_reading(self) -> None:
        """Read from the socket again."""

    def abort(self) -> None:
        """Drop the socket now, without a close handshake."""

    @property
    def peer_address(self) -> Address | None:
        """The peer's socket address, when known."""


class Session:
    """One connection to a peer, as the application sees it.

    Sessions come from :meth:`Transport.connect` and from accepting (``Transport.accept`` /
    ``Transport.serve``); they are not created directly.

    Attributes:
        id: the transport-wide session id (1, 2, ...).
        protocol: the transport under it: ``Protocol.TCP``, ``WEBSOCKET`` or ``QUIC`` (TLS is
            inside TCP and WebSocket; see :attr:`established`).
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
        loop: asyncio.AbstractEventLoop,
        on_finished: Callable[[Session], None] | None = None,
        metrics: TransportMetrics | None = None,
    ) -> None:
        self.id = session_id
        self._conn = conn
        self._loop = loop
        self._io: IO | None = None
        self._sm = conn.session
        self._request_timeout = conn.session.request_timeout  # fixed for the session's life
        # Stream machines (TCP, TLS, WebSocket) emit nothing when a packet is queued, so a send
        # only needs the events round trip when the session machine itself emitted (SendPaused);
        # QUIC may pause on flow control, so it always takes it.
        machine = conn.machine
        self._lazy_send = isinstance(machine, StreamMachine)
        # Held typed so the per-write calls skip Connection's isinstance check on an ABC (a
        # slow path in CPython, several per message otherwise).
        self._stream_machine: StreamMachine | None = (
            machine if isinstance(machine, StreamMachine) else None
        )
        # Plain TCP (not TLS over it): feed takes the machine's packets directly.
        self._tcp = conn.plain_tcp
        # The timer is re-armed after input only when something other than messages and
        # responses happened (those never bring a deadline nearer; see _rearm).
        self._deadline_moved = True
        # True while input is processed: sends made meanwhile (handlers run from the protocol
        # callback, future callbacks) leave with the one flush that ends the batch.
        self._batching = False
        self._on_finished = on_finished
        self._inbox: deque[Message] = deque()
        self._inbox_event = asyncio.Event()
        # Set by Transport.serve while its loop for this session waits: takes a message
        # straight from the protocol callback (True) or declines it (False: queued as usual).
        self.dispatch: Callable[[Message], bool] | None = None
        self._responses: dict[int, asyncio.Future[Message]] = {}
        # Requests from the peer not answered yet: graceful shutdown waits for them.
        self._unanswered: set[int] = set()
        self._established: asyncio.Future[None] = loop.create_future()
        self._finished: asyncio.Future[None] = loop.create_future()
        self._writable = asyncio.Event()
        self._writable.set()
        # True while a send must wait or fail: not writable, or the connection is over.  One
        # attribute for the hot paths to test instead of three calls.
        self._blocked = False
        # The loop's clock: asyncio's own loop.time() is time.monotonic() behind a Python
        # call; read the clock directly then (uvloop and others keep their own).
        self._time: Callable[[], float] = (
            time.monotonic
            if getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time
            else loop.time
        )
        # The same for loop.create_future() (a Python call around asyncio.Future).
        self._new_future: Callable[[], asyncio.Future[Message]] = (
            partial(asyncio.Future, loop=loop)
            if getattr(type(loop), "create_future", None) is asyncio.BaseEventLoop.create_future
            else loop.create_future
        )
        self._session_paused = False  # SendPaused from the session machine
        self._machine_paused = False  # WritePaused from the protocol machine
        self._socket_paused = False  # pause_writing from asyncio
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._unflushed_bytes = 0
        # Packets queued since the last take_output (the stream driver's flush skips the
        # output round trip on a TCP connection when there are none).
        self.unflushed_packets = 0
        # The session machine emitted SendResumed in the last take_output (the stream
        # driver's flush then runs process(); on TCP nothing else emits there).
        self.flush_emitted = False
        self.packets_flushed = 0
        self.established: ConnectionEstablished | None = None
        self.closed_event: ConnectionClosed | None = None
        self.error: TransportError | None = None
        self.forced = False
        self._processing = False
        self._again = False  # a nested _process call was folded into the running one
        self._work_done = asyncio.Event()
        self._idle_waiters = 0  # wait_idle calls: _work_done is only set when someone waits
        # Metrics are counted per batch (one flush, one _process pass), not per message: the
        # hot path only adds to these plain ints.
        self._metrics = metrics
        self._metric_state: str | None = None  # the state the live-session gauge counts us in
        self._metric_state_seen: SessionState | None = None  # ... as an enum, compared cheaply
        self._unflushed_payload = 0
        self._in_messages = 0
        self._in_bytes = 0
        if metrics is not None:
            self._metric_state = conn.session.state.value
            metrics.session_opened(conn.protocol, self._metric_state)

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
        return self._finished.done()

    @property
    def connection(self) -> Connection:
        """The core connection under this session (for inspection and statistics)."""
        return self._conn

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.protocol.value} {self.state.value}>"

    # --- the application's operations ----------------------------------------------------------

    async def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"") -> None:
        """Send a one-way message.  Waits while the send side is paused (backpressure); returns
        once the message is queued (it leaves within this loop iteration).

        Args:
            data: the payload.
            biz_type: the application's type tag, 0..255 (default 0).
            ext_header: the extension header (default empty).

        Raises:
            TransportConnectionError: the session is closing or closed.
            ResourceError: the payload is over the limit.
            ConfigurationError: *biz_type* or *ext_header* is out of range.
        """
        if self._blocked:
            await self._wait_writable("send")
        tcp = self._tcp
        if tcp is not None and 0 <= biz_type <= 0xFF and len(ext_header) <= 0xFFFF:
            # Plain TCP: the header is written from the fields, no Packet is made (the checks
            # above are Packet's; anything out of range takes the general path, which raises).
            sm = self._sm
            size = len(data)
            wire = size + 16 + len(ext_header)
            try:
                tcp.queue_message(_ONE_WAY, sm.stamp_send(size, self._time()), biz_type, data,
                                  ext_header)
                paused = sm.packet_queued(wire)
            except TransportError as exc:
                raise self._count(self._enrich(exc, "send")) from None
            # _queued, inlined; a stream machine emits nothing when a packet is queued.
            self._unflushed_bytes += wire
            self._unflushed_payload += size
            self.unflushed_packets += 1
            if paused:
                self._process()
            if not self._batching and self._io is not None:
                self._io.schedule_flush()
            return
        machine = self._stream_machine
        try:
            if machine is None:
                packet = self._conn.send(data, biz_type=biz_type, ext_header=ext_header,
                                         now=self._time())
                size = len(data)
                wire = packet.wire_size
            else:
                # Connection.send, inlined for stream machines (two calls and two wire_size
                # lookups less per message): make the packet, queue it, count the backlog.
                sm = self._sm
                machine.send_packet(
                    sm.send(data, biz_type=biz_type, ext_header=ext_header, now=self._time())
                )
                size = len(data)
                wire = size + 16 + len(ext_header)
                sm.packet_queued(wire)
        except TransportError as exc:
            raise self._count(self._enrich(exc, "send")) from None
        self._queued(wire, size)

    async def send_many(self, payloads: Iterable[Buffer], *, biz_type: int = 0) -> None:
        """Send each of *payloads* as its own one-way message, in order, in one write.

        The same as ``await send(p, biz_type=biz_type)`` for each payload (consecutive message
        ids, the peer receives them one by one, no extension header) but it waits for
        backpressure once, before the first, and hands the whole batch to the socket in one
        write: the batch may take the send backlog over its high watermark, and the next send
        waits for it to drain.  An empty iterable sends nothing.  Returns once the messages are
        queued.

        Args:
            payloads: the message bodies (any buffers; read before this returns, except that
                payloads of 16 KiB or more on TCP are written by reference: do not modify them
                until the next send returns).
            biz_type: the type tag of every message, 0..255 (default 0).

        Raises:
            TransportConnectionError: the session is closing or closed (nothing was sent).
            ResourceError: a payload is over the limit; the messages before it are sent, it and
                the ones after it are not.
            ConfigurationError: *biz_type* is out of range (nothing was sent).
        """
        if self._blocked:
            await self._wait_writable("send")
        sm = self._sm
        now = self._time()
        make = sm.send
        packets: list[Packet] = []
        wire = payload_bytes = 0
        try:
            for data in payloads:
                packet = make(data, biz_type=biz_type, now=now)
                packets.append(packet)
                size = len(data)
                payload_bytes += size
                wire += size + 16
        except TransportError as exc:
            raise self._count(self._enrich(exc, "send")) from None
        finally:
            # Whatever was made is sent, so the peer sees consecutive ids and nothing the
            # session counted as sent goes missing.
            if packets:
                self._send_batch(packets, wire, payload_bytes)

    def _send_batch(self, packets: list[Packet], wire: int, payload_bytes: int) -> None:
        try:
            self._conn.machine.send_packets(packets)
        except TransportError as exc:
            raise self._count(self._enrich(exc, "send")) from None
        finally:
            self._sm.packet_queued(wire, len(packets))
            self._queued(wire, payload_bytes, len(packets))

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

        Cancelling the call withdraws the request: a late response is dropped.
        """
        if self._blocked:
            await self._wait_writable("request")
        sent_at = self._time()
        machine = self._stream_machine
        tcp = self._tcp
        paused: bool | None = None
        try:
            if tcp is not None and 0 <= biz_type <= 0xFF and len(ext_header) <= 0xFFFF:
                # Plain TCP: no Packet made (see send).
                sm = self._sm
                request_id = sm.stamp_request(len(data), timeout=timeout, now=sent_at)
                try:
                    tcp.queue_message(_REQUEST, request_id, biz_type, data, ext_header)
                except TransportError:
                    sm.cancel(request_id)
                    raise
                paused = sm.packet_queued(len(data) + 16 + len(ext_header))
            elif machine is None:
                request_id = self._conn.request(
                    data, biz_type=biz_type, ext_header=ext_header, timeout=timeout,
                    now=sent_at,
                )
            else:
                # Connection.request, inlined for stream machines (see send).
                sm = self._sm
                packet = sm.request(
                    data, biz_type=biz_type, ext_header=ext_header, timeout=timeout,
                    now=sent_at,
                )
                request_id = packet.message_id
                try:
                    machine.send_packet(packet)
                except TransportError:
                    sm.cancel(request_id)
                    raise
                sm.packet_queued(len(data) + 16 + len(ext_header))
        except TransportError as exc:
            raise self._count(self._enrich(exc, "request")) from None
        future: asyncio.Future[Message] = self._new_future()
        self._responses[request_id] = future
        # The packet's exact size does not matter for the watermarks, only that queued and
        # flushed use the same measure; the payload length is close enough for requests.
        size = len(data)
        # The timer only ever moves earlier (see _rearm): a request whose deadline is not
        # before the armed one costs no timer work at all.
        at = self._timer_at
        if at is None or sent_at + (
            timeout if timeout is not None else self._request_timeout
        ) < at:
            self._rearm()
        wire = size + 16 + len(ext_header)
        if paused is None:
            self._queued(wire, size, 1, None)
        else:
            # Plain TCP: _queued, inlined as in send.
            self._unflushed_bytes += wire
            self._unflushed_payload += size
            self.unflushed_packets += 1
            if paused:
                self._process()
            if not self._batching and self._io is not None:
                self._io.schedule_flush()
        try:
            response = await future
            if self._metrics is not None:
                self._metrics.request_latency(self._time() - sent_at)
            return response
        except asyncio.CancelledError:
            # Withdraw the request so nothing stays pending in the core.
            if self._responses.pop(request_id, None) is not None:
                self._conn.session.cancel(request_id)
                self._rearm()
                self._work_done.set()
            raise

    async def receive(self) -> Message:
        """Return the next one-way message or request from the peer (in arrival order).

        Cancelling the call leaves the message in the queue for the next call.

        Raises:
            TransportConnectionError: the session closed and every message was taken (code
                ``connection.closed``), or the error that ended the session.
        """
        while not self._inbox:
            if self._finished.done() or self.closed_event is not None:
                raise self._closed_error("receive")
            self._inbox_event.clear()
            await self._inbox_event.wait()
        return self._take()

    async def receive_many(self, max_messages: int | None = None) -> list[Message]:
        """Return every one-way message and request queued from the peer (at least one, in
        arrival order), waiting for the first if none is queued.  A consumer that handles what
        arrived in one batch costs one wake-up per batch instead of one per message.

        Args:
            max_messages: take at most this many (default ``None``: all that are queued).

        Cancelling the call never loses a message: messages are only taken from the queue by
        a call that returns them.

        Raises:
            ValueError: *max_messages* is below 1.
            TransportConnectionError: the session closed and every message was taken (code
                ``connection.closed``), or the error that ended the session.
        """
        if max_messages is not None and max_messages < 1:
            raise ValueError(f"max_messages must be 1 or more, got {max_messages}")
        while not self._inbox:
            if self._finished.done() or self.closed_event is not None:
                raise self._closed_error("receive")
            self._inbox_event.clear()
            await self._inbox_event.wait()
        sm = self._sm
        messages = take_batch(self._inbox, max_messages, sm)
        if sm.has_events:  # ReadResumed: reading goes on
            self._process()
        return messages

    def receive_nowait(self) -> Message | None:
        """Return the next message if one is waiting, else ``None`` (never waits; a closed
        session with nothing left also gives ``None``: :meth:`receive` says why)."""
        return self._take() if self._inbox else None

    async def wait_inbox(self) -> None:
        """Wait until a message is queued, the session is over, or :meth:`kick` is called
        (returns at once if one of those is already so)."""
        if not self._inbox and not (self._finished.done() or self.closed_event is not None):
            self._inbox_event.clear()
            await self._inbox_event.wait()

    def kick(self) -> None:
        """Wake :meth:`wait_inbox` (and :meth:`receive`, which goes back to waiting if nothing
        is queued)."""
        self._inbox_event.set()

    def _take(self) -> Message:
        message = self._inbox.popleft()
        sm = self._sm
        # What Connection.message_consumed does, minus the events round trip when the session
        # machine emitted nothing (it only may when reading was paused).
        sm.message_consumed(len(message.payload))
        if sm.has_events:
            self._process()
        return message

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
        if not self._finished.done():
            self.start_close(code, reason)
            try:
                # Shielded: cancelling close() must not cancel the session's own future.
                if sys.version_info >= (3, 11):
                    # A timeout scope in this task: wait_for would wrap the wait in a task
                    # of its own (one more task and loop pass per close).
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(self._finished)
                else:  # pragma: no cover - Python 3.10
                    await asyncio.wait_for(asyncio.shield(self._finished), timeout)
            except asyncio.TimeoutError:
                self.abort()

    async def wait_closed(self) -> None:
        """Wait until the session is over and its socket released."""
        await asyncio.shield(self._finished)

    def start_close(self, code: int | None = None, reason: str = "") -> None:
        """Begin a graceful close without waiting for it (see :meth:`close`)."""
        if self._finished.done():
            return
        if self._conn.machine.is_closed:
            self._after_input()
            return
        self._conn.close(code, reason)
        self._after_input()

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection now, without a close handshake (pending requests fail with
        ``connection.aborted``)."""
        if self._finished.done():
            return
        self.forced = True
        error = TransportConnectionError(
            f"the session was {reason}", code="connection.aborted", retryable=False,
            session_id=self.id,
        )
        self._conn.connection_lost(self._time(), error)
        self._process()
        if self._io is not None:
            self._io.abort()
        else:
            self.socket_gone()

    # --- for the transport ---------------------------------------------------------------------

    @property
    def pending_work(self) -> int:
        """Requests in flight both ways (ours waiting for a response, the peer's waiting for
        our answer)."""
        return len(self._responses) + len(self._unanswered)

    async def wait_idle(self) -> None:
        """Wait until no request is in flight either way (or the session is over)."""
        self._idle_waiters += 1
        try:
            while self.pending_work and not self._finished.done():
                self._work_done.clear()
                await self._work_done.wait()
        finally:
            self._idle_waiters -= 1

    async def wait_established(self) -> None:
        """Wait for the handshake to complete.

        Raises:
            TransportError: the handshake failed or the connection closed first.
        """
        await asyncio.shield(self._established)

    def when_established(self, callback: Callable[[Session], None]) -> None:
        """Call *callback* with this session once its handshake completed; a failed handshake
        is logged (it never reaches the application, and never stops a listener)."""

        def done(future: asyncio.Future[None]) -> None:
            if future.cancelled():
                return
            error = future.exception()
            if error is not None:
                logger.info("session %s: handshake failed: %s", self.id, error)
                return
            callback(self)

        self._established.add_done_callback(done)

    def when_finished(self, callback: Callable[[Session], None]) -> None:
        """Call *callback* with this session once it is over and its socket released."""
        self._finished.add_done_callback(lambda _future: callback(self))

    # --- the driver's side ---------------------------------------------------------------------

    def attach(self, io: IO) -> None:
        """Give the session its socket side and start the connection."""
        self._io = io
        self._conn.start(self._time())
        self._after_input()

    def set_socket_paused(self, paused: bool) -> None:
        """asyncio's pause_writing / resume_writing."""
        self._socket_paused = paused
        self._update_writable()

    def feed(self, nbytes: int) -> None:
        """Bytes arrived in the connection's buffer (stream sockets)."""
        now = self._time()
        tcp = self._tcp
        if tcp is None:
            self._conn.buffer_updated(nbytes, now)
            self._after_input()
            return
        # Plain TCP: the packets go from the machine to the session machine and on to the
        # application here, which is all Connection and the events would do with them (no
        # PacketReceived, MessageReceived or ResponseReceived objects, no events round trip).
        # Anything else the bytes caused is left queued in the machine and pumped through
        # Connection as usual (buffer_updated(0) only pumps).
        packets = tcp.receive_packets(nbytes, now)
        if packets is None:
            self._conn.buffer_updated(0, now)
            self._after_input()
            return
        if not packets:
            self._after_input()
            return
        # As _after_input and _process would: sends made by handlers leave with the one flush
        # at the end, and a nested _process call is folded into the _process below.
        self._batching = True
        try:
            self._processing = True
            self._again = False
            try:
                accept = self._sm.accept_packet
                for packet in packets:
                    kind = accept(packet, now)
                    if kind is _RESPONSE:
                        # _response, inlined: a client's one call per response.
                        future = self._responses.pop(packet.message_id, None)
                        if future is not None and not future.done():
                            future.set_result(Message(packet, self.id))
                        self._in_messages += 1
                        self._in_bytes += len(packet.payload)
                        if self._idle_waiters:
                            self._work_done.set()
                    elif kind is not None:
                        self._deliver(packet, kind is _REQUEST)
            finally:
                self._processing = False
            # The event lists read directly (the has_events properties are a Python call
            # each); a plain TCP machine wraps no other machine, so its own list is all.
            if self._again or self._sm._events or tcp._events:
                self._process()
            elif self._deadline_moved:
                self._after_process()
            else:
                # _after_process's usual case inlined (no state move, no timer to move): the
                # batch's counters only, without two Python calls per read.
                metrics = self._metrics
                if metrics is not None and self._in_messages:
                    metrics.messages_in += self._in_messages
                    metrics.bytes_in += self._in_bytes
                    self._in_messages = self._in_bytes = 0
                if not self.unflushed_packets:
                    # No event at all and nothing queued (a client reading its responses):
                    # the machine's state did not move (every move emits an event) and there
                    # is nothing to write, so the flush would only look and find nothing.
                    return
        finally:
            self._batching = False
        if self._io is not None:
            self._io.flush()

    def feed_eof(self) -> None:
        """The peer shut its write side."""
        self._conn.receive_data(b"", self._time())
        self._after_input()

    def feed_datagram(self, data: bytes, addr: Address) -> None:
        """A datagram arrived (QUIC client sockets)."""
        self._conn.receive_datagram(data, addr, self._time())
        self._after_input()

    def lost(self, exc: BaseException | None) -> None:
        """The socket closed or broke."""
        if not self._conn.machine.is_closed:
            error = (
                map_error(exc, protocol=self.protocol, operation="receive", session_id=self.id)
                if exc is not None else None
            )
            self._conn.connection_lost(self._time(), error)
            self._process()
        self.socket_gone()

    def socket_gone(self) -> None:
        """The socket is released: the session is over."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.closed_event is None:
            # The core saw no close (should not happen): fail what waits all the same.
            self._fail_waiters(self._closed_error("receive"))
        if not self._finished.done():
            self._finished.set_result(None)
            if self._metrics is not None and self._metric_state is not None:
                self._metrics.session_closed(self.protocol, self._metric_state)
                self._metric_state = None  # out of the gauge for good
            if not self._established.done():
                self._established.set_exception(self._closed_error("connect"))
                self._established.exception()  # retrieved: nobody may be waiting
            self._inbox_event.set()
            self._blocked = True
            self._writable.set()
            self._work_done.set()
            if self._on_finished is not None:
                self._on_finished(self)

    def take_output(self) -> list[Buffer]:
        """Return the bytes to write and account them as flushed (stream sockets)."""
        machine = self._stream_machine
        data = machine.data_to_send() if machine is not None else self._conn.data_to_send()
        packets = self.unflushed_packets
        if packets:
            # _account_flushed, inlined: this runs once per write.
            self.packets_flushed += packets
            if self._sm.flushed(self._unflushed_bytes, packets):
                self.flush_emitted = True
            metrics = self._metrics
            if metrics is not None:
                metrics.messages_out += packets
                metrics.bytes_out += self._unflushed_payload
            self._unflushed_bytes = self.unflushed_packets = self._unflushed_payload = 0
        return data

    def take_datagrams(self) -> list[tuple[bytes, Address]]:
        """Return the datagrams to send and account them as flushed (QUIC client)."""
        grams = self._conn.datagrams_to_send(self._time())
        self._account_flushed()
        return grams

    def account_flushed(self) -> None:
        """The endpoint sent this session's datagrams (QUIC server)."""
        self._account_flushed()

    def _account_flushed(self) -> None:
        if self.unflushed_packets:
            self.packets_flushed += self.unflushed_packets
            # The session machine directly (what Connection.flushed does, minus draining its
            # events): process_if_pending sees whether it emitted SendResumed.
            if self._sm.flushed(self._unflushed_bytes, self.unflushed_packets):
                self.flush_emitted = True
            metrics = self._metrics
            if metrics is not None:
                # Counted when handed to the socket, once per flush.
                metrics.messages_out += self.unflushed_packets
                metrics.bytes_out += self._unflushed_payload
            self._unflushed_bytes = self.unflushed_packets = self._unflushed_payload = 0

    @property
    def write_closed(self) -> bool:
        """Whether the core wants the write side shut (stream sockets)."""
        machine = self._stream_machine
        return machine.write_closed if machine is not None else self._conn.write_closed

    @property
    def machine_closed(self) -> bool:
        """Whether the protocol machine is over (the socket may close after the last write)."""
        return self._conn.machine.is_closed

    def on_timer(self) -> None:
        """The connection's deadline came."""
        self._timer = None
        self._timer_at = None
        self._deadline_moved = True
        self._conn.handle_timer(self._time())
        self._after_input()

    # --- plumbing ------------------------------------------------------------------------------

    def _after_input(self) -> None:
        if self._batching:
            self._process()  # re-entered from a handler: the outer call flushes
            return
        self._batching = True
        try:
            self._process()
        finally:
            self._batching = False
        if self._io is not None:
            self._io.flush()

    def _queued(
        self, nbytes: int, payload: int, packets: int = 1, paused: bool | None = None
    ) -> None:
        # paused: what packet_queued returned, when the caller has it (else ask has_events).
        self._unflushed_bytes += nbytes
        self._unflushed_payload += payload
        self.unflushed_packets += packets
        if not self._lazy_send or (self._sm.has_events if paused is None else paused):
            self._process()
        if self._batching:
            return  # the flush that ends this batch takes it
        io = self._io
        if io is not None:
            io.schedule_flush()

    def process(self) -> None:
        """Handle the connection's pending events and re-arm its timer."""
        self._process()

    def process_if_pending(self) -> None:
        """:meth:`process`, skipped on stream connections when no machine has an event (the
        flush after a write usually has none)."""
        if not self._lazy_send or self._sm.has_events or self._conn.machine.has_events:
            self._process()

    def _process(self) -> None:
        if self._processing:
            self._again = True  # a handler below called back in; the outer loop goes on
            return
        self._processing = True
        conn = self._conn
        sm = self._sm
        machine = conn.machine
        handle = self._handle
        lazy = self._lazy_send
        try:
            while True:
                self._again = False
                events = conn.events()
                if not events:
                    break
                for event in events:
                    handle(event)
                # Another round only when handling the batch emitted something (one
                # Connection.events() round trip less per batch on the hot path).
                if lazy and not (self._again or sm.has_events or machine.has_events):
                    break
        finally:
            self._processing = False
        self._after_process()

    def _after_process(self) -> None:
        if self._metrics is not None:
            # The state only moves with an event other than a message (which sets
            # _deadline_moved): look at it only then.
            self._update_metrics(self._metrics, self._deadline_moved)
        if self._deadline_moved:
            self._deadline_moved = False
            self._rearm()

    def _update_metrics(self, metrics: TransportMetrics, state_may_move: bool = True) -> None:
        # Once per _process pass: the messages of the batch, and the gauge's state.
        if self._in_messages:
            metrics.messages_in += self._in_messages
            metrics.bytes_in += self._in_bytes
            self._in_messages = self._in_bytes = 0
        old = self._metric_state
        if old is not None and state_may_move:
            state = self._sm.state
            if state is not self._metric_state_seen:
                self._metric_state_seen = state
                new = state.value
                if new != old:
                    metrics.session_moved(self.protocol, old, new)
                    self._metric_state = new

    def _count(self, error: TransportError) -> TransportError:
        if self._metrics is not None:
            self._metrics.error(error)
        return error

    def _set_error(self, error: TransportError) -> None:
        if self.error is None:
            self.error = self._enrich(error, "receive")
            # A session that never opened is a failed connect: connect() counts that one.
            if self.established is not None:
                self._count(self.error)

    def _handle(self, event: object) -> None:
        kind = type(event)
        if kind is MessageReceived:
            self._deliver(event.packet, False)  # type: ignore[attr-defined]
            return
        if kind is RequestReceived:
            self._deliver(event.packet, True)  # type: ignore[attr-defined]
            return
        if kind is ResponseReceived:
            response: ResponseReceived = event  # type: ignore[assignment]
            self._response(response.request_id, response.packet)
            return
        # Anything else may bring a deadline nearer (a close, a handshake, a state change).
        self._deadline_moved = True
        if kind is RequestFailed:
            assert isinstance(event, RequestFailed)
            future = self._responses.pop(event.request_id, None)
            if future is not None and not future.done():
                future.set_exception(self._count(self._enrich(event.error, "request")))
            self._work_done.set()
        elif kind is ConnectionEstablished:
            assert isinstance(event, ConnectionEstablished)
            self.established = event
            if not self._established.done():
                self._established.set_result(None)
        elif kind is SendPaused or kind is SendResumed:
            self._session_paused = kind is SendPaused
            self._update_writable()
        elif kind is WritePaused or kind is WriteResumed:
            self._machine_paused = kind is WritePaused
            self._update_writable()
        elif kind is ReadPaused:
            if self._io is not None:
                self._io.pause_reading()
        elif kind is ReadResumed:
            if self._io is not None:
                self._io.resume_reading()
        elif kind is ErrorOccurred:
            assert isinstance(event, ErrorOccurred)
            self._set_error(event.error)
        elif kind is ConnectionClosed:
            assert isinstance(event, ConnectionClosed)
            self.closed_event = event
            if event.error is not None:
                self._set_error(event.error)
            if not self._established.done():
                error = self.error or self._closed_error("connect")
                self._established.set_exception(self._enrich(error, "connect"))
                self._established.exception()  # retrieved: the connect may have gone already
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

    def _deliver(self, packet: Packet, is_request: bool) -> None:
        """A one-way message or a request for the application (MessageReceived /
        RequestReceived)."""
        responder = self._respond if is_request else None
        message = Message(packet, self.id, responder)
        size = len(packet.payload)
        self._in_messages += 1
        self._in_bytes += size
        if is_request:
            self._unanswered.add(packet.message_id)
        dispatch = self.dispatch
        if dispatch is not None and not self._inbox and dispatch(message):
            return  # taken from this callback: never queued, no task woken for it
        self._inbox.append(message)
        # The session machine directly (Connection.message_delivered would drain its
        # events, hiding a ReadPaused from the check that ends _process's loop).
        self._sm.message_delivered(size)
        self._inbox_event.set()

    def _response(self, request_id: int, packet: Packet) -> None:
        """The response to our request *request_id* (ResponseReceived)."""
        future = self._responses.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(Message(packet, self.id))
        self._in_messages += 1
        self._in_bytes += len(packet.payload)
        if self._idle_waiters:
            self._work_done.set()

    def _fail_waiters(self, error: TransportError) -> None:
        responses, self._responses = self._responses, {}
        for future in responses.values():
            if not future.done():
                future.set_exception(error)

    def _update_writable(self) -> None:
        over = self.closed_event is not None or self._finished.done()
        if over or not (self._session_paused or self._machine_paused or self._socket_paused):
            self._writable.set()
        else:
            self._writable.clear()
        self._blocked = over or not self._writable.is_set()

    async def _wait_writable(self, operation: str) -> None:
        while not self._writable.is_set():
            await self._writable.wait()
        if self.closed_event is not None or self._finished.done():
            raise self._closed_error(operation)

    def _rearm(self) -> None:
        # One timer per session, moved only when the earliest deadline moves earlier.  A
        # deadline that went away or moved later (a request answered, a handshake done) keeps
        # the timer: it fires early, handle_timer does nothing harmful then (the machines allow
        # early calls) and on_timer re-arms at the real deadline.  So a request/response costs
        # no call_at/cancel pair, only this comparison.
        deadline = self._conn.next_deadline()
        at = self._timer_at
        if deadline is None or (at is not None and deadline >= at) or self._finished.done():
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self.on_timer)

    async def _respond(
        self, request: Packet, data: Buffer, biz_type: int | None, ext_header: Buffer
    ) -> None:
        self._unanswered.discard(request.message_id)
        self._work_done.set()
        if self._blocked:
            await self._wait_writable_for_respond()
        self._respond_now(request, data, biz_type, ext_header)

    def try_respond(self, message: Message, data: Buffer) -> bool:
        """Answer the request *message* with *data* at once, if nothing holds sends back.

        For servers answering from their receive loop: it skips ``Message.respond``'s await.
        Returns ``False`` and does nothing while the send side is paused (await
        ``message.respond(data)`` then, which waits).

        Raises:
            TransportConnectionError: *message* is not a request or was already answered
                (code ``connection.failed``), or the session is closed.
        """
        # The message's packet and flag read directly: each property is a Python call, and
        # this runs once per request a server answers.
        packet = message._packet
        if packet.packet_type is not _REQUEST or message._responded:
            raise TransportConnectionError(
                f"message {packet.message_id} is not an unanswered request",
                code="connection.failed", retryable=False, session_id=self.id,
                operation="respond",
            )
        if self._blocked and not self._writable.is_set():
            return False
        message._responded = True
        self._unanswered.discard(packet.message_id)
        if self._idle_waiters:
            self._work_done.set()
        if self._blocked and (self._finished.done() or self.closed_event is not None):
            raise self._closed_error("respond")
        self._respond_now(packet, data, None, b"")
        return True

    def _respond_now(
        self, request: Packet, data: Buffer, biz_type: int | None, ext_header: Buffer
    ) -> None:
        tcp = self._tcp
        if tcp is not None and (biz_type is None or 0 <= biz_type <= 0xFF) \
                and len(ext_header) <= 0xFFFF:
            # Plain TCP: no Packet made (see send); *request* is a request we received.
            sm = self._sm
            size = len(data)
            wire = size + 16 + len(ext_header)
            try:
                sm.stamp_response(size, self._time())
                tcp.queue_message(
                    _RESPONSE, request.message_id,
                    request.biz_type if biz_type is None else biz_type, data, ext_header,
                )
                paused = sm.packet_queued(wire)
            except TransportError as exc:
                raise self._count(self._enrich(exc, "respond")) from None
            # _queued, inlined as in send: a server answers from its read, in a batch, and
            # the flush that ends the batch takes the response.
            self._unflushed_bytes += wire
            self._unflushed_payload += size
            self.unflushed_packets += 1
            if paused:
                self._process()
            if not self._batching and self._io is not None:
                self._io.schedule_flush()
            return
        machine = self._stream_machine
        try:
            if machine is None:
                packet = self._conn.respond(
                    request, data, biz_type=biz_type, ext_header=ext_header,
                    now=self._time(),
                )
            else:
                # Connection.respond, inlined for stream machines (see send).
                packet = self._sm.respond(
                    request, data, biz_type=biz_type, ext_header=ext_header,
                    now=self._time(),
                )
                machine.send_packet(packet)
                self._sm.packet_queued(len(data) + 16 + len(ext_header))
        except TransportError as exc:
            raise self._count(self._enrich(exc, "respond")) from None
        self._queued(len(data) + 16 + len(ext_header), len(data))

    async def _wait_writable_for_respond(self) -> None:
        # Answers are allowed while closing, so only a finished connection refuses them.
        while not self._writable.is_set():
            await self._writable.wait()
        if self._finished.done() or self.closed_event is not None:
            raise self._closed_error("respond")

    def _closed_error(self, operation: str) -> TransportError:
        if self.error is not None:
            return self.error.with_operation(operation)
        return TransportConnectionError(
            f"the {self.protocol.value} session is closed", code="connection.closed",
            retryable=False, session_id=self.id, operation=operation,
        )

    def _enrich(self, error: TransportError, operation: str) -> TransportError:
        return map_error(error, operation=operation, session_id=self.id)
