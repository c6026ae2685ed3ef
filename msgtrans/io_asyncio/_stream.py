"""Stream sockets (TCP, TLS over TCP, WebSocket, WSS): an ``asyncio.BufferedProtocol`` per
connection, and listeners.

TLS lives in the core (its ``TlsMachine``), so every stream socket here is plain TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
from asyncio import selector_events
from collections.abc import Callable
from typing import Any, cast

from .._driver.admission import accept_gate
from .._driver.writes import skip_sent
from ..core.connection import Connection, server_connection
from ..core.errormap import map_error
from ..core.machine import Address, MachineState, StreamMachine
from ..core.packet import Buffer
from ._session import Session

__all__ = ["StreamIO", "start_stream_listener"]

logger = logging.getLogger("msgtrans.io_asyncio")

_CLOSED = MachineState.CLOSED

#: Up to Python 3.11, asyncio's selector transport joins the parts given to writelines() into
#: one bytes object: a copy of every large payload.  There the parts are written with one
#: sendmsg() of our own while asyncio's buffer is empty (3.12 does that itself).
_JOINING_WRITELINES = sys.version_info < (3, 12)
_SELECTOR_TRANSPORT: type | None = getattr(selector_events, "_SelectorSocketTransport", None)
#: Parts per sendmsg(): well under every platform's IOV_MAX (1024 on Linux).
_MAX_IOV = 512
#: A read at least this big suggests a bulk stream: read on at once (see StreamIO._read_on),
#: at most _READ_ON_MAX more times per readiness event (fair to the loop's other sockets).
_READ_ON_FROM = 16 * 1024
_READ_ON_MAX = 16


def _raw_recv_into(transport: asyncio.BaseTransport) -> Callable[[memoryview], int] | None:
    """The socket's ``recv_into`` when *transport* is asyncio's plain selector socket
    transport (the one that reads once per readiness event), else ``None``."""
    if type(transport) is not _SELECTOR_TRANSPORT:
        return None
    sock = getattr(transport, "_sock", None)
    return cast("Callable[[memoryview], int] | None", getattr(sock, "recv_into", None))


def _raw_sendmsg(transport: asyncio.BaseTransport) -> Callable[[list[Buffer]], int] | None:
    """The socket's ``sendmsg`` when *transport* is asyncio's plain selector socket transport
    on a Python whose writelines() copies, else ``None`` (uvloop, 3.12+, Windows' proactor:
    their own writelines() is used)."""
    if not _JOINING_WRITELINES or type(transport) is not _SELECTOR_TRANSPORT:
        return None
    sock = getattr(transport, "_sock", None)
    sendmsg = getattr(sock, "sendmsg", None)
    return cast("Callable[[list[Buffer]], int] | None", sendmsg)


class StreamIO(asyncio.BufferedProtocol):
    """The socket side of one stream session: reads into the core's buffer, writes what the
    core returns, once per loop iteration (write coalescing)."""

    def __init__(self, session: Session, *, nodelay: bool = True, keepalive: bool = True) -> None:
        self.session = session
        self._conn = session.connection
        # The machine itself, typed: get_buffer goes straight to it (Connection.get_buffer
        # would check isinstance against an ABC on every read).
        self._machine = cast(StreamMachine, self._conn.machine)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._nodelay = nodelay
        self._keepalive = keepalive
        self._flush_handle: asyncio.Handle | None = None
        # A send was written through since the last input or scheduled flush: the next sends
        # coalesce into one scheduled flush instead of one write each.
        self._wrote_through = False
        self._eof_written = False
        self._closing = False
        self._peer: Address | None = None
        # A TCP machine writes only the packets the session queued: the flush after input
        # skips the output round trip when none were.  TLS and WebSocket machines have bytes
        # of their own (handshakes, pongs, closes), so they always ask.
        self._packets_only = self._conn.plain_tcp is not None
        self._sendmsg: Callable[[list[Buffer]], int] | None = None
        self._recv_into: Callable[[memoryview], int] | None = None
        # asyncio calls protocol.get_buffer(); the machine's own method answers it directly
        # (one Python call less per read), and a TCP machine's decoder itself while the
        # connection is not closed (one more): flush and connection_lost switch back to the
        # machine's method once it is (flush runs after every input that can close it).
        self.get_buffer = (  # type: ignore[method-assign]
            self._machine.open_get_buffer if self._packets_only  # type: ignore[attr-defined]
            else self._machine.get_buffer
        )

    # --- asyncio's side ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Set the socket options and start the core connection."""
        self._transport = cast(asyncio.Transport, transport)
        self._sendmsg = _raw_sendmsg(transport)
        self._recv_into = _raw_recv_into(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio's selector transport turns TCP_NODELAY on itself: set it only when the
            # config turns it off or another transport (uvloop, proactor) may not have.
            if not self._nodelay or type(transport) is not _SELECTOR_TRANSPORT:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self._nodelay))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(self._keepalive))
        peer = transport.get_extra_info("peername")
        self._peer = tuple(peer) if peer is not None else None
        self._guard(self.session.attach, self)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Hand asyncio the core's receive buffer (the zero-copy path)."""
        return self._machine.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        """Feed the bytes asyncio read into the core (and, after a big read, read on)."""
        self._wrote_through = False
        # _guard, inlined: this runs once per read.
        try:
            self.session.feed(nbytes)
            if nbytes >= _READ_ON_FROM and self._recv_into is not None:
                self._read_on(self._recv_into)
        except Exception:
            self._dropped()

    def _read_on(self, recv_into: Callable[[memoryview], int]) -> None:
        """Read again at once, a few times, while reads come back big.

        asyncio reads once per readiness event, so a bulk stream costs a loop pass and an
        epoll_wait per read; a big payload is received into its own buffer, one read per
        message.  Reading on here while the socket has more saves those for each further read.
        What is unusual is left to asyncio's own next read, which reports it its usual way:
        nothing to read (EAGAIN), EOF, an error.  Stops when reading is paused or the
        connection is closing.
        """
        transport = self._transport
        assert transport is not None
        machine = self._machine
        feed = self.session.feed
        for _ in range(_READ_ON_MAX):
            if self._closing or not transport.is_reading():
                return
            area = machine.get_buffer(-1)
            try:
                n = recv_into(area)
            except OSError:  # BlockingIOError (nothing more), or a failure asyncio will report
                machine.unused_buffer()  # an idle connection holds no receive area
                return
            finally:
                area.release()
            if not n:
                return  # EOF: asyncio's next read sees it too
            feed(n)
            if n < _READ_ON_FROM:
                return

    def eof_received(self) -> bool:
        """Feed EOF to the core; keep the socket open so the core can finish its half-close."""
        self._guard(self.session.feed_eof)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed: end the session."""
        self.get_buffer = self._machine.get_buffer  # type: ignore[method-assign]
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.session.lost(exc)

    def pause_writing(self) -> None:
        """asyncio's write buffer is over its high-water mark: hold the application's sends."""
        self.session.set_socket_paused(True)

    def resume_writing(self) -> None:
        """asyncio's write buffer drained: sends may go on."""
        self.session.set_socket_paused(False)

    # --- the session's side --------------------------------------------------------------------

    @property
    def peer_address(self) -> Address | None:
        """The peer's socket address."""
        return self._peer

    def schedule_flush(self) -> None:
        """Write the send now, or arrange one flush soon for it and whatever follows.

        The first send after input (or after a scheduled flush) is written through at once: a
        request or a response waits for no loop pass, and no callback is scheduled for it.
        A second send before the next input schedules one flush with ``call_soon`` that takes
        every send made until then in one write, so a burst of small sends costs two writes,
        not one each.
        """
        if self._flush_handle is not None or self._closing:
            return
        if self._wrote_through:
            self._flush_handle = self._loop.call_soon(self._scheduled_flush)
        else:
            self._wrote_through = True
            try:
                self.flush()
            except Exception:
                self._dropped()

    def _scheduled_flush(self) -> None:
        self._flush_handle = None
        self._wrote_through = False
        self._guard(self.flush)

    def flush(self) -> None:
        """Write what the core has; shut the write side once; close once the core is done."""
        transport = self._transport
        if transport is None or self._closing:
            return
        session = self.session
        machine = self._machine
        if session.unflushed_packets or not self._packets_only:
            data = session.take_output()
            if data:
                if len(data) == 1:
                    transport.write(data[0])
                elif self._sendmsg is not None:
                    self._write_parts(transport, self._sendmsg, data)
                else:
                    transport.writelines(data)
        if machine.write_closed and not self._eof_written:
            self._eof_written = True
            if transport.can_write_eof():
                # The peer may be gone already (ENOTCONN after its reset); connection_lost
                # follows and tells the core.
                with contextlib.suppress(OSError):
                    transport.write_eof()
        if not self._packets_only:
            session.process_if_pending()
        elif session.flush_emitted:
            # A TCP machine emits nothing when its output is taken; the session machine only
            # SendResumed, which take_output reported.
            session.flush_emitted = False
            session.process()
        if machine.state is _CLOSED:
            # close() lets asyncio write what is buffered first, then connection_lost follows.
            self.get_buffer = machine.get_buffer  # type: ignore[method-assign]
            self._closing = True
            transport.close()

    @staticmethod
    def _write_parts(
        transport: asyncio.Transport, sendmsg: Callable[[list[Buffer]], int], parts: list[Buffer]
    ) -> None:
        """Write *parts* in order without joining them (asyncio 3.11's writelines would).

        While asyncio holds nothing unsent, the parts go to the socket in one ``sendmsg``
        straight from their own memory (a large payload is never copied on its way out);
        what the socket does not take, and everything while asyncio's buffer is not empty,
        goes through ``transport.write`` part by part, so asyncio keeps the order, the
        write-ready callback and the pause_writing / resume_writing signals as usual.
        """
        i = 0
        n = len(parts)
        while i < n and not transport.get_write_buffer_size() and not transport.is_closing():
            batch = parts[i : i + _MAX_IOV]
            try:
                sent = sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                # A broken socket: transport.write below meets the same error and reports it
                # the asyncio way (connection_lost follows).
                break
            end = i + len(batch)
            i = skip_sent(parts, i, batch, sent)
            if i < end:
                break  # the socket is full: the rest goes through asyncio's buffer
        write = transport.write
        while i < n:
            write(parts[i])
            i += 1

    def pause_reading(self) -> None:
        """Stop reading: the application fell behind."""
        if self._transport is not None and not self._closing:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again."""
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()

    def abort(self) -> None:
        """Drop the socket now."""
        self._closing = True
        if self._transport is not None:
            self._transport.abort()
        else:
            self.session.socket_gone()

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        # An exception escaping a protocol callback would make asyncio close the socket with a
        # "fatal error" log and nothing told to the core; drop the connection the same way but
        # through the session so every waiter learns why.
        try:
            fn(*args)
        except Exception:
            self._dropped()

    def _dropped(self) -> None:
        # Called from an except block: logs the exception being handled.
        logger.exception("session %s: driver error; dropping the connection", self.session.id)
        self.session.abort("dropped after a driver error")


class _Admit(asyncio.Protocol):
    """A new connection's first protocol: asks the listener's *admit* (which knows its peer
    only now) for the session's :class:`StreamIO`, then hands the transport to it, or closes
    it at once when admission refuses it."""

    def __init__(self, admit: Callable[[asyncio.BaseTransport], StreamIO | None]) -> None:
        self._admit = admit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        try:
            io = self._admit(transport)
        except Exception:
            logger.exception("cannot set up an accepted connection")
            io = None
        if io is None:
            cast(asyncio.Transport, transport).abort()
            return
        # Before the transport's first read: every byte goes to the session's protocol.
        transport.set_protocol(io)
        io.connection_made(transport)


class StreamListener:
    """One listening socket for a TCP or WebSocket server config."""

    def __init__(self, server: asyncio.Server, address: Address) -> None:
        self.server = server
        self.address = address

    def close(self) -> None:
        """Stop accepting (sessions already accepted go on)."""
        self.server.close()


async def start_stream_listener(
    config: Any,
    new_session: Callable[[Callable[[int], Connection]], Session],
    on_established: Callable[[Session], None],
    settings: dict[str, Any],
    on_refused: Callable[[], None] | None = None,
) -> StreamListener:
    """Listen for *config* (a TCP or WebSocket server config).

    *new_session* makes a session from a function that builds its core :class:`Connection`
    for a session id; *settings* are the session machine's keyword arguments;
    *on_established* gets it once its handshake completed.  A failed handshake is logged and
    never stops the listener.  *on_refused* (optional) is the transport's
    :class:`~msgtrans._driver.admission.AcceptGate` (or a callable called for each connection
    refused at ``max_sessions``).

    Raises:
        TransportError: the address cannot be bound (mapped from the ``OSError``).
        ConfigurationError: the TLS certificate cannot be loaded.
    """
    loop = asyncio.get_running_loop()
    tls_context: ssl.SSLContext | None = (
        config.tls.server_context() if config.tls is not None else None
    )

    # Sessions of this listener, for max_sessions.
    live: set[Session] = set()
    gate = accept_gate(on_refused)

    def admit(transport: asyncio.BaseTransport) -> StreamIO | None:
        peer = transport.get_extra_info("peername")
        if not gate.admit(config, len(live), peer):
            return None
        try:
            session = new_session(
                lambda sid: server_connection(
                    config, session_id=sid, tls_context=tls_context, **settings
                )
            )
        except BaseException:
            gate.cancel(peer)
            raise
        live.add(session)
        session.when_finished(live.discard)
        gate.track(session, peer, lambda: transport.get_extra_info("sockname"))
        session.when_established(on_established)
        return StreamIO(session, nodelay=getattr(config, "nodelay", True),
                        keepalive=getattr(config, "keepalive", True))

    def factory() -> asyncio.BaseProtocol:
        return _Admit(admit)

    host, port = config.addr
    try:
        server = await loop.create_server(factory, host, port, backlog=config.backlog,
                                          reuse_port=getattr(config, "reuse_port", False))
    except OSError as exc:
        raise map_error(exc, protocol=config.protocol, operation="listen") from exc
    bound = server.sockets[0].getsockname()
    return StreamListener(server, (bound[0], bound[1]))
