"""QUIC sockets: a connected UDP socket per client session, and one UDP socket per server
listener driving the core's :class:`~msgtrans.core.quic_endpoint.QuicEndpoint`."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

from .._driver.quic import _grow_receive_buffer, _quic_machine, _QuicSeat, _QuicTable
from ..core.config import QuicServerConfig
from ..core.connection import Connection, quic_endpoint
from ..core.errormap import map_error
from ..core.machine import Address
from ..core.quic_endpoint import QuicEndpoint
from ._session import Session
from ._stream import deliver_when_established

__all__ = ["QuicClientIO", "QuicListener", "open_quic_listener"]

logger = logging.getLogger("msgtrans.io_trio")

_MAX_DATAGRAM = 65536
#: A client's writer lets a sender that is still producing queue up to this many bytes (or
#: for this many scheduling rounds) before it cuts datagrams: every trio send is a checkpoint,
#: so without it each datagram would carry one or two small messages.
GATHER_BYTES = 16 * 1024
GATHER_ROUNDS = 64


class QuicClientIO:
    """The socket side of one QUIC client session: a UDP socket connected to the server."""

    def __init__(self, session: Session, sock: trio.socket.SocketType, peer: Address) -> None:
        self.session = session
        self._sock = sock
        self._peer = peer
        self._wake = trio.Event()
        _grow_receive_buffer(sock)

    @property
    def peer_address(self) -> Address | None:
        """The server's socket address."""
        return self._peer

    def wake(self) -> None:
        """Have the writer send the core's datagrams."""
        self._wake.set()

    def set_reading(self, reading: bool) -> None:
        """Hold or grant the peer's flow-control credit (aioquic grants on arrival otherwise)."""
        machine = _quic_machine(self.session.connection)
        if reading:
            machine.resume_reading()
            self.wake()  # the credit update leaves with the next datagrams
        else:
            machine.pause_reading()

    async def run(self, nursery: trio.Nursery) -> None:
        """Receive (a task in *nursery*, the session's) and send until the connection is
        over."""
        nursery.start_soon(self._reader)
        await self._writer()

    async def aclose(self) -> None:
        """Close the socket."""
        self._sock.close()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _reader(self) -> None:
        while True:
            try:
                data = await self._sock.recv(_MAX_DATAGRAM)
            except OSError as exc:
                # ICMP errors (port unreachable...): QUIC's own timers decide; only log them.
                logger.debug("session %s: UDP error %s", self.session.id, exc)
                continue
            self.session.feed_datagram(data, self._peer)

    async def _gather(self) -> None:
        """Yield while the sender keeps queueing, up to :data:`GATHER_BYTES`."""
        machine = _quic_machine(self.session.connection)
        queued = machine.gathered_bytes
        idle = 0
        for _ in range(GATHER_ROUNDS):
            if queued == 0 or queued >= GATHER_BYTES:
                return
            await trio.lowlevel.checkpoint()
            now = machine.gathered_bytes
            # trio may run this task before the sender in a round: only two rounds in a row
            # without growth mean the sender stopped (or waits), so send what there is.
            idle = idle + 1 if now == queued else 0
            if idle == 2:
                return
            queued = now

    async def _writer(self) -> None:
        session = self.session
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self._gather()
            for data, _addr in session.take_datagrams():
                try:
                    # The socket is connected: no address.
                    await self._sock.send(data)
                except OSError as exc:
                    logger.debug("session %s: UDP send failed: %s", session.id, exc)
            session.process()
            if session.machine_closed:
                return


class _ServerSessionIO(_QuicSeat):
    """The socket side of one accepted QUIC session: a seat on its listener's shared socket."""

    __slots__ = ("done",)

    def __init__(self, listener: QuicListener, session: Session, machine: Any) -> None:
        super().__init__(listener, session, machine, listener.wake)
        self.done = trio.Event()

    def wake(self) -> None:
        self._wake()
        if self._session.machine_closed:
            # No socket of its own: the session is over once its machine is.
            self.done.set()

    def set_reading(self, reading: bool) -> None:
        if reading:
            self._machine.resume_reading()
            self.wake()
        else:
            self._machine.pause_reading()

    async def run(self, nursery: trio.Nursery) -> None:
        await self.done.wait()

    async def aclose(self) -> None:
        self._close_machine()
        self._wake()
        await trio.lowlevel.cancel_shielded_checkpoint()


class QuicListener(_QuicTable[Session, _ServerSessionIO]):
    """One UDP socket serving a QUIC server config through the core's endpoint: a
    reader task routing datagrams, a writer task sending, a timer task for the endpoint."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        endpoint: QuicEndpoint,
        *,
        new_session: Callable[[Callable[[int], Connection]], Session],
        spawn: Callable[..., None],
        on_established: Callable[[Session], None],
        settings: dict[str, Any],
    ) -> None:
        self._init_table(endpoint, new_session, on_established, settings)
        bound = sock.getsockname()
        self.address: Address = (bound[0], bound[1])
        self._sock = sock
        self._spawn = spawn
        self._wake = trio.Event()
        self._timer_event = trio.Event()
        # The deadline the timer task sleeps until (inf: none); see _rearm.
        self._timer_at = math.inf
        self._closed = trio.Event()
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        """Serve the socket until it closes (a task in the transport's nursery)."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader)
                    nursery.start_soon(self._timer_loop)
                    await self._writer()
                    nursery.cancel_scope.cancel()
        finally:
            self._sock.close()
            for session, seat in self._take_all():
                session.lost(None)
                seat.done.set()
            self._closed.set()

    async def _reader(self) -> None:
        sock = self._sock
        endpoint = self.endpoint
        while True:
            try:
                data, addr = await sock.recvfrom(_MAX_DATAGRAM)
            except OSError as exc:
                # ICMP errors from one peer must not stop the listener: log them.
                logger.debug("QUIC listener %s: UDP error %s", self.address, exc)
                continue
            now = trio.current_time()
            endpoint.receive_datagram(data, addr, now)
            self._accept(now)
            self._pump()

    def _attach(self, session: Session, machine: Any, now: float) -> _ServerSessionIO:
        seat = _ServerSessionIO(self, session, machine)
        self._spawn(session.run, seat)
        self._spawn(deliver_when_established, session, self._deliver)
        return seat

    def _session_over(self, session: Session, seat: _ServerSessionIO) -> None:
        seat.done.set()

    def _deliver(self, session: Session) -> None:
        self._on_established(session)

    def _pump(self) -> None:
        # Only the connections an input touched can have news (see _QuicTable._visit).
        self._visit(self.endpoint.take_touched(), account=False)
        self.wake()

    def wake(self) -> None:
        """Have the writer send every connection's datagrams (it re-arms the timer after)."""
        self._wake.set()

    def _rearm(self) -> None:
        # A flush moves deadlines (a CONNECTION_CLOSE that left starts the closing period,
        # acknowledgements arm loss timers): wake the timer task when the next deadline is
        # earlier than the one it sleeps until (a later one needs nothing: firing early is
        # harmless), or it could sleep past a closing period until an old ping deadline.
        deadline = self.endpoint.next_deadline()
        if deadline is not None and deadline < self._timer_at:
            self._timer_event.set()

    async def _writer(self) -> None:
        sock = self._sock
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            datagrams = self.endpoint.datagrams_to_send(now)
            if self._stopping:
                datagrams += self._end_closing_periods(now)
            # A session's packets left only if its machine was flushed (so touched): take the
            # touched now, before the sends yield to the reader (whose _pump would take the
            # flushed machines and leave them unaccounted); account for them after the sends.
            touched = self.endpoint.take_touched()
            for data, addr in datagrams:
                try:
                    await sock.sendto(data, addr)
                except OSError as exc:
                    logger.debug("QUIC listener %s: send failed: %s", self.address, exc)
            self._visit(touched, account=True)
            if self._stopping and self.endpoint.is_closed:
                return
            self._rearm()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.endpoint.next_deadline()
            self._timer_at = deadline if deadline is not None else math.inf
            if self._timer_event.is_set():
                self._timer_event = trio.Event()
            with trio.move_on_at(self._timer_at):
                await self._timer_event.wait()
                continue
            self._timer_at = math.inf
            self.endpoint.handle_timer(trio.current_time())
            self._pump()

    def stop(self) -> None:
        """Close the socket once every session on it is over (call after closing them); the
        connections skip QUIC's closing and draining periods (see _skip_closing_periods)."""
        self._skip_closing_periods()
        self._begin_stop()
        self._pump()

    def abort(self) -> None:
        """Drop the socket now."""
        self.scope.cancel()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed."""
        await self._closed.wait()


async def open_quic_listener(
    config: QuicServerConfig,
    new_session: Callable[[Callable[[int], Connection]], Session],
    spawn: Callable[..., None],
    on_established: Callable[[Session], None],
    settings: dict[str, Any],
) -> QuicListener:
    """Bind a UDP socket for *config*.

    Raises:
        TransportError: the address cannot be bound (mapped from the ``OSError``).
        ConfigurationError: the certificate cannot be loaded.
    """
    endpoint = quic_endpoint(config)
    host, port = config.addr
    try:
        infos = await trio.socket.getaddrinfo(host or None, port, type=trio.socket.SOCK_DGRAM,
                                              flags=trio.socket.AI_PASSIVE)
        family, kind, proto, _name, addr = infos[0]
        sock = trio.socket.socket(family, kind, proto)
    except OSError as exc:
        raise map_error(exc, protocol=config.protocol, operation="listen") from None
    try:
        if config.reuse_port:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise map_error(exc, protocol=config.protocol, operation="listen") from None
    _grow_receive_buffer(sock)
    return QuicListener(sock, endpoint, new_session=new_session, spawn=spawn,
                        on_established=on_established, settings=settings)
