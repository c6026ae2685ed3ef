"""QUIC sockets: a connected UDP socket per client session, and one UDP socket per server
listener driving the core's :class:`~msgtrans.core.quic_endpoint.QuicEndpoint`."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from .._driver.quic import _grow_receive_buffer, _quic_machine, _QuicSeat, _QuicTable
from ..core.config import QuicServerConfig
from ..core.connection import Connection, quic_endpoint
from ..core.errormap import map_error
from ..core.machine import Address
from ..core.quic_endpoint import QuicEndpoint
from ._session import Session

__all__ = ["QuicClientIO", "QuicListener", "start_quic_listener"]

logger = logging.getLogger("msgtrans.io_asyncio")

#: Datagrams read in one go once the socket is readable, before the connections' events are
#: handled and their answers (acknowledgements, flow-control credit) sent.
DRAIN_MAX = 64
_MAX_DATAGRAM = 65536


def _drain_socket(transport: asyncio.BaseTransport) -> socket.socket | None:
    """A duplicate of *transport*'s socket to read further datagrams from in one go, or
    ``None`` when the loop does not show its socket.

    asyncio hands a datagram protocol one datagram per readiness, so a burst costs one loop
    iteration (a poll) per datagram; reading the queue dry first lets one pass over the
    connections answer the whole burst.  The duplicate shares the kernel socket, so the
    transport sees exactly what is left.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    _grow_receive_buffer(sock)
    try:
        dup = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.dup().detach())
    except (OSError, AttributeError):
        return None
    dup.setblocking(False)
    return dup


def _more_datagrams(sock: socket.socket | None) -> list[tuple[bytes, Any]]:
    """Up to :data:`DRAIN_MAX` datagrams already queued on *sock* (none on an error: the
    transport reports it when it reads next)."""
    out: list[tuple[bytes, Any]] = []
    if sock is None:
        return out
    recvfrom = sock.recvfrom
    for _ in range(DRAIN_MAX):
        try:
            out.append(recvfrom(_MAX_DATAGRAM))
        except OSError:  # BlockingIOError: nothing more; anything else: the transport's
            break
    return out


class QuicClientIO(asyncio.DatagramProtocol):
    """The socket side of one QUIC client session: a UDP socket connected to the server."""

    def __init__(self, session: Session, peer: Address) -> None:
        self.session = session
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._peer = peer
        self._flush_handle: asyncio.Handle | None = None
        self._closing = False
        self._sock: socket.socket | None = None

    @property
    def peer_address(self) -> Address | None:
        """The server's socket address."""
        return self._peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the core connection (queues the Initial packet)."""
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._sock = _drain_socket(transport)
        self.session.attach(self)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Feed a datagram, and any others already queued, to the core; then handle the
        events and send the answers once."""
        try:
            more = _more_datagrams(self._sock)
            if more:
                connection = self.session.connection
                now = self._loop.time()
                for data_, addr_ in [(data, addr), *more[:-1]]:
                    connection.receive_datagram(data_, addr_, now)
                data, addr = more[-1]
            self.session.feed_datagram(data, addr)
        except Exception:
            logger.exception("session %s: driver error; dropping the connection", self.session.id)
            self.session.abort("dropped after a driver error")

    def error_received(self, exc: Exception) -> None:
        """ICMP errors (port unreachable...): QUIC's own timers decide; only log them."""
        logger.debug("session %s: UDP error %s", self.session.id, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed: end the session."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.session.lost(exc)

    def schedule_flush(self) -> None:
        """Arrange one flush this loop iteration."""
        if self._flush_handle is None and not self._closing:
            self._flush_handle = self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_handle = None
        self.flush()

    def flush(self) -> None:
        """Send the core's datagrams; close the socket once the connection is over."""
        transport = self._transport
        if transport is None or self._closing:
            return
        for data, _addr in self.session.take_datagrams():
            # The socket is connected: no address (asyncio refuses one that differs in form).
            transport.sendto(data)
        self.session.process()
        if self.session.machine_closed:
            self._closing = True
            transport.close()

    def pause_reading(self) -> None:
        """Stop granting the peer flow-control credit: the application fell behind."""
        _quic_machine(self.session.connection).pause_reading()

    def resume_reading(self) -> None:
        """Grant credit again; the update leaves with the next datagrams."""
        _quic_machine(self.session.connection).resume_reading()
        self.schedule_flush()

    def abort(self) -> None:
        """Drop the socket now."""
        self._closing = True
        if self._transport is not None:
            self._transport.abort()
        else:
            self.session.socket_gone()


class _ServerSessionIO(_QuicSeat):
    """The socket side of one accepted QUIC session: its listener's shared socket."""

    __slots__ = ()

    def schedule_flush(self) -> None:
        self._wake()

    def flush(self) -> None:
        self._wake()
        if self._session.machine_closed:
            # No socket of its own: the session is over once its machine is.
            self._listener.forget(self._machine)
            self._session.socket_gone()


class QuicListener(_QuicTable[Session, _ServerSessionIO], asyncio.DatagramProtocol):
    """One UDP socket serving a QUIC server config through the core's endpoint."""

    def __init__(
        self,
        endpoint: QuicEndpoint,
        new_session: Callable[[Callable[[int], Connection]], Session],
        on_established: Callable[[Session], None],
        settings: dict[str, Any],
    ) -> None:
        self._init_table(endpoint, new_session, on_established, settings)
        self.address: Address = ("", 0)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._sock: socket.socket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the socket."""
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._sock = _drain_socket(transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Route a datagram, and any others already queued, through the endpoint; wrap new
        connections in sessions; then handle the events and send the answers once."""
        now = self._loop.time()
        receive = self.endpoint.receive_datagram
        receive(data, addr, now)
        for data_, addr_ in _more_datagrams(self._sock):
            receive(data_, addr_, now)
        self._accept(now)
        self._pump()

    def error_received(self, exc: Exception) -> None:
        """ICMP errors from one peer must not stop the listener: log them."""
        logger.debug("QUIC listener %s: UDP error %s", self.address, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket closed: every session still here is over."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._timer is not None:
            self._timer.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        for session, _seat in self._take_all():
            session.lost(exc)
        if not self._closed.done():
            self._closed.set_result(None)

    def _attach(self, session: Session, machine: Any, now: float) -> _ServerSessionIO:
        seat = _ServerSessionIO(self, session, machine, self.schedule_flush)
        session.when_established(self._on_established)
        session.attach(seat)
        return seat

    def _session_over(self, session: Session, seat: _ServerSessionIO) -> None:
        session.socket_gone()

    def _pump(self) -> None:
        # Only the connections an input touched can have news (see _QuicTable._visit).
        self._visit(self.endpoint.take_touched(), account=False)
        self.flush()

    def schedule_flush(self) -> None:
        """Arrange one flush this loop iteration."""
        if self._flush_handle is None and self._transport is not None:
            self._flush_handle = self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_handle = None
        self.flush()

    def flush(self) -> None:
        """Send every connection's datagrams; re-arm the endpoint's timer."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        now = self._loop.time()
        for data, addr in self.endpoint.datagrams_to_send(now):
            transport.sendto(data, addr)
        # A session's packets left only if its machine was flushed, and a machine was flushed
        # only if it was touched: the others have nothing to account or process.
        self._visit(self.endpoint.take_touched(), account=True)
        if self._stopping and self.endpoint.is_closed:
            transport.close()
            return
        self._rearm()

    def _rearm(self) -> None:
        deadline = self.endpoint.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.endpoint.handle_timer(self._loop.time())
        self._pump()

    def stop(self) -> None:
        """Close the socket once every session on it is over (call after closing them)."""
        self._begin_stop()
        self.flush()

    def abort(self) -> None:
        """Drop the socket now."""
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed."""
        await asyncio.shield(self._closed)


async def start_quic_listener(
    config: QuicServerConfig,
    new_session: Callable[[Callable[[int], Connection]], Session],
    on_established: Callable[[Session], None],
    settings: dict[str, Any],
) -> QuicListener:
    """Listen for *config* on a UDP socket.

    Raises:
        TransportError: the address cannot be bound (mapped from the ``OSError``).
        ConfigurationError: the certificate cannot be loaded.
    """
    loop = asyncio.get_running_loop()
    endpoint = quic_endpoint(config)
    listener = QuicListener(endpoint, new_session, on_established, settings)
    try:
        await loop.create_datagram_endpoint(lambda: listener, local_addr=config.addr,
                                            reuse_port=config.reuse_port or None)
    except OSError as exc:
        raise map_error(exc, protocol=config.protocol, operation="listen") from exc
    assert listener._transport is not None
    bound = listener._transport.get_extra_info("sockname")
    listener.address = (bound[0], bound[1])
    return listener
