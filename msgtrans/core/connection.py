"""One connection: the right protocol machine for a config, joined to a session machine.

Drivers create connections from configs through this module and never name a protocol
themselves: :func:`client_connection` picks TCP, TLS over TCP, WebSocket (over TLS for ``wss``)
or QUIC from the config (or URL), and :func:`server_connection` does the same for an accepted
stream socket.  QUIC servers take their connections from a
:class:`~msgtrans.core.quic_endpoint.QuicEndpoint` (see :func:`quic_endpoint`) and wrap each in
a :class:`Connection`.

A :class:`Connection` is driven like any machine (bytes or datagrams in, ``events()`` out, bytes
or datagrams to write, ``next_deadline()`` / ``handle_timer(now)``) and offers the application's
operations (``send``, ``request``, ``respond``, ``close``).  Its events are the protocol events
that concern the application (established, close started, closed, write paused and resumed,
errors) interleaved, in order, with the session events (messages, requests, responses, failed
requests, read pause and resume, session closed).

Every connection receives big packets (payloads at or above the zero-copy threshold) into
buffers lent by a :class:`~msgtrans.core.buffers.BufferPool`: by default the process-wide
:func:`~msgtrans.core.buffers.default_receive_pool`, or the one given as ``buffer_pool=`` (``None``
turns pooling off).  The application gives a buffer back with ``Message.release()``; see
``docs/buffers.md``.  WebSocket connections take it through a decoder that only holds the pool
and its counters (the machine assembles big messages into buffers lent from it).

The connections of one transport may share a :class:`~msgtrans.core.budget.MemoryBudget`
(``memory_budget=``): the session machine charges it with its send backlog and its received
messages not yet taken, and pauses reading or sending near the limit (see
:meth:`SessionMachine.attach_budget <msgtrans.core.session.SessionMachine.attach_budget>`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal

from .budget import MemoryBudget
from .buffers import BufferPool, default_receive_pool
from .config import (
    ConnectionConfig,
    QuicConfig,
    QuicServerConfig,
    ServerConfig,
    TcpConfig,
    TcpServerConfig,
    WebSocketConfig,
    WebSocketServerConfig,
    to_config,
    to_server_config,
)
from .errors import ConfigurationError, Protocol, TransportError
from .events import (
    CloseStarted,
    ConnectionClosed,
    ConnectionEstablished,
    Event,
    PacketReceived,
)
from .framing import PacketDecoder
from .machine import Address, DatagramMachine, MachineState, ProtocolMachine, StreamMachine
from .packet import HEADER_SIZE, MAX_U16, Buffer, Packet, PacketType, wire_size_of
from .quic import QuicMachine
from .quic_endpoint import QuicEndpoint
from .session import CloseReason, SessionEvent, SessionMachine, SessionState
from .tcp import TcpMachine
from .tls import TlsMachine
from .websocket import WebSocketClientMachine, WebSocketServerMachine

__all__ = [
    "DEFAULT_POOL",
    "Connection",
    "ConnectionEvent",
    "client_connection",
    "quic_endpoint",
    "quic_server_connection",
    "server_connection",
]

_ONE_WAY = PacketType.ONE_WAY
_REQUEST = PacketType.REQUEST
_RESPONSE = PacketType.RESPONSE
_LIVE = (MachineState.IDLE, MachineState.HANDSHAKING, MachineState.OPEN)


class _DefaultPool:
    """The type of :data:`DEFAULT_POOL`."""

    def __repr__(self) -> str:
        return "DEFAULT_POOL"


#: ``buffer_pool=DEFAULT_POOL`` (the default): the process-wide
#: :func:`~msgtrans.core.buffers.default_receive_pool`.
DEFAULT_POOL: Final = _DefaultPool()

#: What ``buffer_pool=`` takes: a pool, ``None`` (no pooling) or :data:`DEFAULT_POOL`.
PoolChoice = BufferPool | None | _DefaultPool


def _decoder_of(machine: ProtocolMachine) -> PacketDecoder | None:
    """The machine's packet decoder: the ``_decoder`` of a TCP or QUIC machine, reached
    through a TLS machine's ``inner`` (the machines do not expose it; WebSocket's holds only the
    pool and the counters)."""
    layer: object = machine
    for _ in range(3):
        decoder = getattr(layer, "_decoder", None)
        if isinstance(decoder, PacketDecoder):
            return decoder
        layer = getattr(layer, "inner", None)
        if layer is None:
            break
    return None


def _attach_pool(machine: ProtocolMachine, choice: PoolChoice) -> BufferPool | None:
    """Give the machine's packet decoder its buffer pool; return the pool (``None`` when the
    machine has no decoder of ours, or pooling is off).

    The decoder sits one or two layers down (TLS wraps the TCP machine) and the machines do
    not take a pool themselves yet, so it is found here (:func:`_decoder_of`).
    """
    decoder = _decoder_of(machine)
    if decoder is None:
        return None
    if decoder.buffer_pool is None:
        decoder.buffer_pool = default_receive_pool() if isinstance(choice, _DefaultPool) else choice
    return decoder.buffer_pool

#: What :meth:`Connection.events` returns: protocol events and session events, in order.
ConnectionEvent = Event | SessionEvent


class Connection:
    """A protocol machine and its session machine, driven as one.

    Args:
        machine: the protocol machine (not started yet).
        session: the session machine; by default a new one with the spec's defaults.
        session_id: the id for a default session machine.
        buffer_pool: lends the buffers big received packets land in (default
            :data:`DEFAULT_POOL`, the process-wide receive pool; ``None``: no pooling).  A
            decoder that already has a pool keeps it.
        memory_budget: the transport's memory budget, shared by its connections; the session
            machine charges it (default ``None``: no budget, the hot paths unchanged).

    Attributes:
        machine: the protocol machine.
        session: the session machine.
        established: the ``ConnectionEstablished`` event once the handshake completed.
        buffer_pool: the pool big packets are received into, or ``None``.
        memory_budget: the budget the session charges, or ``None``.
        going_away_code: the close code for :meth:`close` when this end goes away (a
            shutdown, a listener that stopped accepting): WebSocket's 1001, else ``None``.
        plain_tcp: the machine itself when it is plain TCP (no TLS, no WebSocket), else
            ``None``: a driver's fast path may then queue and receive packets through
            :meth:`TcpMachine.queue_message <msgtrans.core.tcp.TcpMachine.queue_message>` and
            :meth:`~msgtrans.core.tcp.TcpMachine.receive_packets` directly.
        queue_send: ``queue_send(payload, biz_type, ext_header, now) -> bool``, the drivers'
            one send path: :meth:`send` without the packet handed back.  It counts the
            message in the send backlog and in the ``unflushed_*`` counters, and returns
            whether the driver must handle :meth:`events` now (the send paused, or the machine
            is a datagram one, whose flow control may have news).  Chosen once, at
            construction: on plain TCP the header is written from the fields and no
            :class:`Packet` is made.  Raises as :meth:`send`.
        queue_request: ``queue_request(payload, biz_type, ext_header, timeout, now) -> int``:
            :meth:`request` the same way; returns the request id (the request is withdrawn
            when the machine refuses it).  Raises as :meth:`request`.
        queue_response: ``queue_response(request, payload, biz_type, ext_header, now) ->
            bool``: :meth:`respond` to a request packet we received, the same way (*biz_type*
            ``None``: the request's).  Raises as :meth:`respond`.
        unflushed_bytes: wire bytes the ``queue_*`` paths queued since the driver last
            accounted a flush (:meth:`take_unflushed`); ``unflushed_payload`` their payload
            bytes, ``unflushed_packets`` their count.
    """

    def __init__(
        self,
        machine: ProtocolMachine,
        session: SessionMachine | None = None,
        *,
        session_id: int | str = 0,
        buffer_pool: PoolChoice = DEFAULT_POOL,
        memory_budget: MemoryBudget | None = None,
    ) -> None:
        self.machine = machine
        # The machine's kind, found once: isinstance() against the ABCs costs more than the
        # calls it guards, and every received chunk and write passes through one.
        self._stream_machine = machine if isinstance(machine, StreamMachine) else None
        self._datagram_machine = machine if isinstance(machine, DatagramMachine) else None
        # Whether the machine's events() only hands over its list (TCP, WebSocket, QUIC), so
        # that has_events being false means there is nothing to do.  TLS's also moves the
        # inner machine's events and state up: it is always called.
        self._plain_events = type(machine).events is ProtocolMachine.events
        self.buffer_pool = _attach_pool(machine, buffer_pool)
        self.going_away_code = machine.going_away_code
        self.plain_tcp: TcpMachine | None = machine if type(machine) is TcpMachine else None
        # The send paths, bound once: a driver calls one method per operation and never
        # learns which protocol or which header size is under it.
        self.queue_send: Callable[[Buffer, int, Buffer, float], bool]
        self.queue_request: Callable[[Buffer, int, Buffer, float | None, float], int]
        self.queue_response: Callable[[Packet, Buffer, int | None, Buffer, float], bool]
        # A session that compresses takes the packet path: the fields path writes the header
        # of an uncompressed payload.
        if self.plain_tcp is not None and (session is None or session.compression is None):
            self.queue_send = self._queue_send_fields
            self.queue_request = self._queue_request_fields
            self.queue_response = self._queue_response_fields
        else:
            self.queue_send = self._queue_send_packet
            self.queue_request = self._queue_request_packet
            self.queue_response = self._queue_response_packet
        # Only a datagram machine may emit something when a packet is queued.
        self._look_after_queue = self._stream_machine is None
        self.unflushed_bytes = 0
        self.unflushed_payload = 0
        self.unflushed_packets = 0
        self.session = session if session is not None else SessionMachine(session_id)
        if memory_budget is not None:
            self.session.attach_budget(memory_budget)
        self.memory_budget = self.session.memory_budget
        self.established: ConnectionEstablished | None = None
        self._events: list[ConnectionEvent] = []
        self._now = 0.0

    # --- what the connection is ----------------------------------------------------------------

    @property
    def protocol(self) -> Protocol:
        """The transport: ``TCP``, ``WEBSOCKET`` or ``QUIC``."""
        return self.machine.protocol

    @property
    def transport_kind(self) -> Literal["stream", "datagram"]:
        """Whether the driver needs a stream socket or a datagram socket for this connection."""
        return self.machine.transport_kind

    @property
    def is_closed(self) -> bool:
        """Whether the protocol machine has closed."""
        return self.machine.is_closed

    @property
    def write_closed(self) -> bool:
        """Whether the driver should shut the write side of its stream socket."""
        return isinstance(self.machine, StreamMachine) and self.machine.write_closed

    # --- the application's operations ----------------------------------------------------------

    def send(
        self, payload: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"", now: float
    ) -> Packet:
        """Send a one-way message; return the packet sent.

        Raises:
            TransportConnectionError: the session is closing or closed.
            ResourceError: the payload is over the limit.
        """
        packet = self.session.send(payload, biz_type=biz_type, ext_header=ext_header, now=now)
        self._send(packet)
        return packet

    def request(
        self,
        payload: Buffer,
        *,
        biz_type: int = 0,
        ext_header: Buffer = b"",
        timeout: float | None = None,
        now: float,
    ) -> int:
        """Send a request; return its id.  A ``ResponseReceived`` or ``RequestFailed`` event with
        that id follows.

        Raises:
            TransportConnectionError: the session is closing or closed.
            ResourceError: too many requests pending, or the payload is over the limit.
        """
        packet = self.session.request(
            payload, biz_type=biz_type, ext_header=ext_header, timeout=timeout, now=now
        )
        try:
            self._send(packet)
        except TransportError:
            self.session.cancel(packet.message_id)
            raise
        return packet.message_id

    def respond(
        self,
        request: Packet | int,
        payload: Buffer,
        *,
        biz_type: int | None = None,
        ext_header: Buffer = b"",
        now: float,
    ) -> Packet:
        """Send the response to *request* (a request packet or its id); return the packet.

        Raises:
            TransportConnectionError: the session is closed.
        """
        packet = self.session.respond(
            request, payload, biz_type=biz_type, ext_header=ext_header, now=now
        )
        self._send(packet)
        return packet

    def close(self, code: int | None = None, reason: str = "") -> None:
        """Close gracefully: what is queued still leaves, then the protocol's close handshake."""
        self.session.begin_close(CloseReason.LOCAL, reason)
        self.machine.close(code, reason)
        self._pump(self._now)

    def _send(self, packet: Packet) -> None:
        self.machine.send_packet(packet)
        self.session.packet_queued(packet.wire_size)

    # --- the drivers' send paths (see queue_send in the class docstring) -----------------------

    def _queue_send_packet(
        self, payload: Buffer, biz_type: int, ext_header: Buffer, now: float
    ) -> bool:
        session = self.session
        self.machine.send_packet(
            session.send(payload, biz_type=biz_type, ext_header=ext_header, now=now)
        )
        size = len(payload)
        wire = size + HEADER_SIZE + len(ext_header)
        self.unflushed_bytes += wire
        self.unflushed_payload += size
        self.unflushed_packets += 1
        return session.packet_queued(wire) or self._look_after_queue

    def _queue_send_fields(
        self, payload: Buffer, biz_type: int, ext_header: Buffer, now: float
    ) -> bool:
        if not 0 <= biz_type <= 0xFF or len(ext_header) > MAX_U16:
            return self._queue_send_packet(payload, biz_type, ext_header, now)  # raises
        session = self.session
        size = len(payload)
        self.plain_tcp.queue_message(  # type: ignore[union-attr]  # bound only when set
            _ONE_WAY, session.stamp_send(size, now), biz_type, payload, ext_header
        )
        wire = size + HEADER_SIZE + len(ext_header)
        self.unflushed_bytes += wire
        self.unflushed_payload += size
        self.unflushed_packets += 1
        return session.packet_queued(wire)

    def _queue_request_packet(
        self, payload: Buffer, biz_type: int, ext_header: Buffer, timeout: float | None,
        now: float,
    ) -> int:
        session = self.session
        packet = session.request(
            payload, biz_type=biz_type, ext_header=ext_header, timeout=timeout, now=now
        )
        request_id = packet.message_id
        try:
            self.machine.send_packet(packet)
        except TransportError:
            session.cancel(request_id)
            raise
        self._count_queued(len(payload), len(ext_header))
        return request_id

    def _queue_request_fields(
        self, payload: Buffer, biz_type: int, ext_header: Buffer, timeout: float | None,
        now: float,
    ) -> int:
        if not 0 <= biz_type <= 0xFF or len(ext_header) > MAX_U16:
            return self._queue_request_packet(payload, biz_type, ext_header, timeout, now)
        session = self.session
        size = len(payload)
        request_id = session.stamp_request(size, timeout=timeout, now=now)
        try:
            self.plain_tcp.queue_message(  # type: ignore[union-attr]  # bound only when set
                _REQUEST, request_id, biz_type, payload, ext_header
            )
        except TransportError:
            session.cancel(request_id)
            raise
        self._count_queued(size, len(ext_header))
        return request_id

    def _queue_response_packet(
        self, request: Packet, payload: Buffer, biz_type: int | None, ext_header: Buffer,
        now: float,
    ) -> bool:
        self.machine.send_packet(self.session.respond(
            request, payload, biz_type=biz_type, ext_header=ext_header, now=now
        ))
        return self._count_queued(len(payload), len(ext_header)) or self._look_after_queue

    def _queue_response_fields(
        self, request: Packet, payload: Buffer, biz_type: int | None, ext_header: Buffer,
        now: float,
    ) -> bool:
        if biz_type is None:
            biz_type = request.biz_type
        elif not 0 <= biz_type <= 0xFF:
            return self._queue_response_packet(request, payload, biz_type, ext_header, now)
        if len(ext_header) > MAX_U16 or request.packet_type is not _REQUEST:
            return self._queue_response_packet(request, payload, biz_type, ext_header, now)
        size = len(payload)
        self.session.stamp_response(size, now)
        self.plain_tcp.queue_message(  # type: ignore[union-attr]  # bound only when set
            _RESPONSE, request.message_id, biz_type, payload, ext_header
        )
        return self._count_queued(size, len(ext_header))

    def _count_queued(self, size: int, ext_size: int) -> bool:
        wire = size + HEADER_SIZE + ext_size
        self.unflushed_bytes += wire
        self.unflushed_payload += size
        self.unflushed_packets += 1
        return self.session.packet_queued(wire)

    def queue_packets(self, packets: list[Packet]) -> None:
        """Queue *packets* the session machine made (a batch of sends), in order, and count
        them as the ``queue_*`` paths do, even when the machine refuses one (the session
        counted them as sent).

        Raises:
            TransportConnectionError, ResourceError: as :meth:`send`; the packets before the
                one refused stay queued.
        """
        wire = wire_size_of(packets)
        try:
            self.machine.send_packets(packets)
        finally:
            self.unflushed_bytes += wire
            self.unflushed_payload += sum(len(packet.payload) for packet in packets)
            self.unflushed_packets += len(packets)
            self.session.packet_queued(wire, len(packets))

    def take_unflushed(self) -> tuple[int, int, bool]:
        """Account everything queued since the last call as handed to the socket: the session's
        send backlog shrinks.  Returns ``(packets, payload bytes, resumed)``: the first two
        for the driver's metrics, *resumed* whether the session machine emitted an event
        (``SendResumed``) the driver should handle; ``(0, 0, False)`` when nothing was queued.

        For a driver that takes the bytes with :meth:`data_to_send` or
        :meth:`datagrams_to_send` and counts them as flushed then.
        """
        packets = self.unflushed_packets
        if not packets:
            return 0, 0, False
        payload = self.unflushed_payload
        resumed = self.session.flushed(self.unflushed_bytes, packets)
        self.unflushed_bytes = self.unflushed_packets = self.unflushed_payload = 0
        return packets, payload, resumed

    # --- the driver's side ---------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Start the protocol machine (right after the socket connected or was accepted)."""
        self._now = now
        self.machine.start(now)
        self._pump(now)

    def receive_data(self, data: Buffer, now: float) -> None:
        """Feed bytes from a stream socket (``b""`` is EOF)."""
        self._now = now
        self._stream().receive_data(data, now)
        self._pump(now)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Return memory to receive into (the zero-copy path); then call :meth:`buffer_updated`."""
        return self._stream().get_buffer(sizehint)

    def buffer_updated(self, nbytes: int, now: float) -> None:
        """Account for *nbytes* received into the last :meth:`get_buffer`."""
        self._now = now
        self._stream().buffer_updated(nbytes, now)
        self._pump(now)

    def data_to_send(self) -> list[Buffer]:
        """Return the bytes to write to a stream socket and forget them."""
        return self._stream().data_to_send()

    def flushed(self, nbytes: int, packets: int = 1) -> None:
        """Tell the session the OS took *nbytes* (send-side watermarks)."""
        self.session.flushed(nbytes, packets)
        self._drain_session()

    def connection_lost(self, now: float, error: TransportError | None = None) -> None:
        """Tell the connection its socket broke."""
        self._now = now
        if isinstance(self.machine, StreamMachine):
            self.machine.connection_lost(now, error)
        else:
            self.session.closed(CloseReason.ERROR, error)
        self._pump(now)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Feed a datagram (QUIC client connections)."""
        self._now = now
        self._datagram().receive_datagram(data, addr, now)
        self._pump(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Return the datagrams to send (QUIC client connections)."""
        grams = self._datagram().datagrams_to_send(now)
        self._pump(now)
        return grams

    def next_deadline(self) -> float | None:
        """Return the earliest deadline of the protocol and session machines, or ``None``."""
        a = self.machine.next_deadline()
        b = self.session.next_deadline()
        if a is None:
            return b
        return a if b is None else min(a, b)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at *now* in both machines."""
        self._now = now
        self.machine.handle_timer(now)
        self.session.handle_timer(now)
        self._pump(now)

    def events(self) -> list[ConnectionEvent]:
        """Return what happened since the last call, oldest first, and forget it."""
        self._pump(self._now)
        events = self._events
        self._events = []
        return events

    def message_delivered(self, nbytes: int) -> None:
        """A received message was queued for the application (receive-side bound)."""
        self.session.message_delivered(nbytes)
        self._drain_session()

    def message_consumed(self, nbytes: int) -> None:
        """The application took a queued message (receive-side bound)."""
        self.session.message_consumed(nbytes)
        self._drain_session()

    # --- plumbing ------------------------------------------------------------------------------

    def _stream(self) -> StreamMachine:
        machine = self._stream_machine
        if machine is None:
            raise ConfigurationError("transport", "this connection needs a datagram socket")
        return machine

    def _datagram(self) -> DatagramMachine:
        machine = self._datagram_machine
        if machine is None:
            raise ConfigurationError("transport", "this connection needs a stream socket")
        return machine

    def _drain_session(self) -> None:
        self._events.extend(self.session.events())

    def _pump(self, now: float) -> None:
        session = self.session
        out = self._events
        machine = self.machine
        # Most calls (a write flushed, a chunk that completed nothing) leave both machines
        # quiet: then only the idle-close check below remains.
        if self._plain_events and not machine.has_events:
            if session.has_events:
                out.extend(session.events())
            if session.state is SessionState.CLOSED and machine.state in _LIVE:
                self._close_under_session(now)
            return
        for event in machine.events():
            if type(event) is PacketReceived:
                session.receive_packet(event.packet, now)
                out.extend(session.events())
                continue
            if isinstance(event, ConnectionEstablished):
                self.established = event
                session.established(now)
            elif isinstance(event, CloseStarted):
                session.begin_close(
                    CloseReason.PEER_CLOSED if event.by_peer else CloseReason.LOCAL, event.reason
                )
            elif isinstance(event, ConnectionClosed):
                if self.buffer_pool is not None:
                    # The receive area goes back to the pool for the next connection.
                    decoder = _decoder_of(self.machine)
                    if decoder is not None:
                        decoder.release_buffers()
                out.append(event)
                reason = (
                    CloseReason.ERROR if event.error is not None
                    else CloseReason.PEER_CLOSED if session.close_reason is None
                    else None
                )
                session.closed(reason, event.error, event.reason or None)
                out.extend(session.events())
                continue
            out.append(event)
        out.extend(session.events())
        if session.state is SessionState.CLOSED and machine.state in _LIVE:
            self._close_under_session(now)

    def _close_under_session(self, now: float) -> None:
        # The session gave up (idle timeout): close the connection under it.  The machine is no
        # longer live afterwards, so this runs once.
        reason = self.session.close_reason
        self.machine.close(None, reason.value if reason is not None else "")
        if reason in _SILENT_PEER and isinstance(self.machine, StreamMachine):
            # A peer that never spoke msgtrans, or went silent for idle_timeout, is not waited
            # for (close_timeout) to finish the close handshake: the socket goes as soon as
            # the close bytes are written.  A client that reconnects after a silent network cut
            # notices it at idle_timeout, not close_timeout later.
            self.machine.connection_lost(now, None)
        self._pump(now)


#: Close reasons that mean the peer said nothing for a while: not waited for to close.
_SILENT_PEER = frozenset({CloseReason.FIRST_PACKET_TIMEOUT, CloseReason.IDLE_TIMEOUT})


# --- factories ----------------------------------------------------------------------------------


def client_connection(
    target: str | ConnectionConfig,
    *,
    session_id: int | str = 0,
    resolved: Address | None = None,
    buffer_pool: PoolChoice = DEFAULT_POOL,
    memory_budget: MemoryBudget | None = None,
    **session: Any,
) -> Connection:
    """Return the client connection for *target* (a config or a URL), not started yet.

    Args:
        target: the config or URL.
        session_id: the new session's id.
        resolved: the socket address the driver actually sends to, once it resolved the
            host name (QUIC ignores datagrams from any other address); default: the
            config's ``(host, port)``.
        buffer_pool: see :class:`Connection` (default: the process-wide receive pool).
        memory_budget: see :class:`Connection` (default ``None``: no budget).
        session: keyword arguments for :class:`~msgtrans.core.session.SessionMachine`
            (``request_timeout`` and friends).

    Raises:
        ConfigurationError: *target* is invalid.
    """
    config = to_config(target)
    machine: ProtocolMachine
    if isinstance(config, TcpConfig):
        machine = TcpMachine(
            is_client=True, limits=config.limits, zero_copy_threshold=config.zero_copy_threshold
        )
        if config.tls is not None:
            machine = TlsMachine(
                machine,
                config.tls.client_context(),
                server_hostname=config.tls_server_name,
                handshake_timeout=config.connect_timeout,
            )
    elif isinstance(config, WebSocketConfig):
        machine = WebSocketClientMachine(
            _host_header(config.host, config.port, 443 if config.secure else 80),
            config.path,
            subprotocols=config.subprotocols,
            extra_headers=config.headers,
            limits=config.limits,
            zero_copy_threshold=config.zero_copy_threshold,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            close_timeout=config.close_timeout,
            handshake_timeout=config.connect_timeout,
        )
        if config.tls is not None:
            machine = TlsMachine(
                machine,
                config.tls.client_context(),
                server_hostname=config.tls_server_name,
                handshake_timeout=config.connect_timeout,
            )
    else:
        assert isinstance(config, QuicConfig)
        machine = QuicMachine.client(
            resolved or config.addr,
            server_name=config.tls_server_name,
            cert_verification=config.cert_verification,
            ca_file=config.ca_file,
            alpn=config.alpn,
            idle_timeout=config.idle_timeout,
            handshake_timeout=config.connect_timeout,
            limits=config.limits,
            zero_copy_threshold=config.zero_copy_threshold,
            max_frame=config.max_frame,
            loopback_datagram_size=config.loopback_datagram_size,
            closing_period=config.closing_period,
        )
    return Connection(machine, SessionMachine(session_id, **session), buffer_pool=buffer_pool,
                      memory_budget=memory_budget)


def server_connection(
    target: str | TcpServerConfig | WebSocketServerConfig,
    *,
    session_id: int | str = 0,
    tls_context: Any = None,
    buffer_pool: PoolChoice = DEFAULT_POOL,
    memory_budget: MemoryBudget | None = None,
    **session: Any,
) -> Connection:
    """Return the server side of an accepted stream connection, not started yet.

    Args:
        target: the listener's config (TCP or WebSocket; QUIC uses :func:`quic_endpoint`).
        session_id: the new session's id.
        tls_context: an ``ssl.SSLContext`` to reuse for every accepted connection (building one
            per connection would load the certificate each time); default: built from the
            config's TLS settings.
        buffer_pool: see :class:`Connection` (default: the process-wide receive pool).
        memory_budget: see :class:`Connection` (default ``None``: no budget).
        session: keyword arguments for :class:`~msgtrans.core.session.SessionMachine`.

    Raises:
        ConfigurationError: *target* is a QUIC config or invalid.
    """
    config: ServerConfig = to_server_config(target)
    machine: StreamMachine
    if isinstance(config, TcpServerConfig):
        machine = TcpMachine(
            is_client=False, limits=config.limits, zero_copy_threshold=config.zero_copy_threshold
        )
    elif isinstance(config, WebSocketServerConfig):
        machine = WebSocketServerMachine(
            path=config.path,
            subprotocols=config.subprotocols,
            limits=config.limits,
            zero_copy_threshold=config.zero_copy_threshold,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            close_timeout=config.close_timeout,
            handshake_timeout=config.handshake_timeout,
            text_policy="error" if config.text_messages == "close" else "ignore",
        )
    else:
        raise ConfigurationError(
            "config", "QUIC servers accept through quic_endpoint(), not server_connection()"
        )
    if config.tls is not None:
        context = tls_context if tls_context is not None else config.tls.server_context()
        machine = TlsMachine(machine, context, handshake_timeout=config.handshake_timeout)
    session_machine = SessionMachine(session_id, **session)
    # A connection that completed its handshake but never speaks msgtrans is dropped too.
    session_machine.require_first_packet(config.first_packet_timeout)
    return Connection(machine, session_machine, buffer_pool=buffer_pool,
                      memory_budget=memory_budget)


def quic_server_connection(
    machine: QuicMachine,
    *,
    session_id: int | str = 0,
    buffer_pool: PoolChoice = DEFAULT_POOL,
    memory_budget: MemoryBudget | None = None,
    **session: Any,
) -> Connection:
    """Return the connection for a QUIC server machine that a
    :class:`~msgtrans.core.quic_endpoint.QuicEndpoint` accepted (``endpoint.accept()``).

    Args:
        machine: the accepted machine (the endpoint already started it).
        session_id: the new session's id.
        buffer_pool: see :class:`Connection` (default: the process-wide receive pool).
        memory_budget: see :class:`Connection` (default ``None``: no budget).
        session: keyword arguments for :class:`~msgtrans.core.session.SessionMachine`.
    """
    return Connection(machine, SessionMachine(session_id, **session), buffer_pool=buffer_pool,
                      memory_budget=memory_budget)


def quic_endpoint(target: str | QuicServerConfig) -> QuicEndpoint:
    """Return the QUIC server endpoint for *target*: it routes every datagram of one UDP socket.

    Wrap each machine it accepts with :func:`quic_server_connection`.

    Raises:
        ConfigurationError: *target* is not a QUIC server config, or its certificate is bad.
    """
    config = to_server_config(target)
    if not isinstance(config, QuicServerConfig):
        raise ConfigurationError("config", f"needs a QUIC server config, got {config!r}")
    return QuicEndpoint(
        certificate=config.cert_file,
        private_key=config.key_file,
        alpn=config.alpn,
        idle_timeout=config.idle_timeout,
        limits=config.limits,
        zero_copy_threshold=config.zero_copy_threshold,
        max_connections=config.max_sessions,
        max_frame=config.max_frame,
        loopback_datagram_size=config.loopback_datagram_size,
        closing_period=config.closing_period,
        handshake_timeout=config.handshake_timeout,
        retry=config.retry == "always",
        retry_threshold=config.retry_threshold if config.retry == "auto" else None,
        max_half_open=config.max_half_open,
    )


def _host_header(host: str, port: int, default_port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == default_port else f"{name}:{port}"

