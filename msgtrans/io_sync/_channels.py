"""The sockets: stream connections, QUIC client sockets, TCP listeners and QUIC listeners, each a
:class:`~msgtrans.io_sync._loop.Channel` of the transport's I/O loop.

Every method here runs on the I/O thread with the transport lock held, except the few marked
"any thread" (they only set flags and ask the loop to flush).  TLS lives in the core (its
``TlsMachine``), so every stream socket is plain TCP.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from .._driver.admission import accept_gate
from .._driver.quic import _RECEIVE_BUFFER as QUIC_RECEIVE_BUFFER
from .._driver.quic import _grow_receive_buffer, _quic_machine, _QuicSeat, _QuicTable
from ..core.config import QuicServerConfig
from ..core.connection import Connection, quic_endpoint, server_connection
from ..core.errormap import map_error
from ..core.machine import Address
from ..core.packet import Buffer
from ..core.quic_endpoint import QuicEndpoint
from ._loop import Channel, IOLoop
from ._session import Session

__all__ = [
    "QUIC_RECEIVE_BUFFER",
    "QuicClientChannel",
    "QuicListener",
    "StreamChannel",
    "StreamListener",
    "open_quic_listener",
    "open_stream_listener",
]

logger = logging.getLogger("msgtrans.io_sync")

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

#: Reads per socket per loop iteration: a busy socket must not starve the others.
_READS_PER_TURN = 16
#: Connections a listener accepts per loop iteration (until EAGAIN, at most this many): a burst
#: is taken in a few iterations, each of which also serves the sessions already accepted.
_ACCEPTS_PER_TURN = 64
#: Buffers per ``sendmsg`` call (IOV_MAX is 1024 on Linux, less elsewhere).
_IOV_BATCH = 512
#: The channel's own write buffer (what the kernel did not take yet): above HIGH the
#: application's sends wait, below LOW they go on (asyncio's transport defaults, scaled up).
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024

NewSession = Callable[[Callable[[int], Connection]], Session]


def _as_bytes_view(buffer: Buffer) -> memoryview:
    view = memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class _SessionChannel(Channel):
    """What the socket of one session has, stream or QUIC: its peer, its session's timers,
    the abort from any thread and the close."""

    def __init__(self, loop: IOLoop, session: Session, sock: socket.socket,
                 peer: Address | None) -> None:
        self.loop = loop
        self.session = session
        self.sock = sock
        self._peer = peer
        self._aborting = False
        self._closed = False
        self._started = False  # registered and the connection started (I/O thread)
        session.set_io(self)  # type: ignore[arg-type]  # each subclass is an IO

    def __repr__(self) -> str:
        return f"<{type(self).__name__} session={self.session.id}>"

    @property
    def peer_address(self) -> Address | None:
        """The peer's socket address."""
        return self._peer

    def _loop_flush(self) -> None:
        if not self._closed:
            self.loop.request_flush(self)

    def abort(self) -> None:
        """Drop the socket (the loop closes it at its next flush; any thread)."""
        self._aborting = True
        if self._closed:
            self.session.socket_gone()
        else:
            self._loop_flush()

    def start(self) -> None:
        """Register with the loop and start the core connection."""
        if self._aborting or not self.loop.running:
            self._close()
            return
        self.loop.add(self, READ)
        self.session.attach(self, time.monotonic())  # type: ignore[arg-type]  # (see set_io)
        self._started = True

    def deadline(self) -> float | None:
        """The session's next deadline."""
        return self.session.deadline()

    def on_timer(self, now: float) -> None:
        """Fire the session's timers."""
        self.session.on_timer(now)

    def close_now(self) -> None:
        """The loop is ending: drop the socket."""
        self.session.lost(None, time.monotonic())
        self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.loop.remove(self)
            if self.sock is not None:
                self.sock.close()
        self.session.socket_gone()


class StreamChannel(_SessionChannel):
    """The socket of one stream session (TCP, TLS, WebSocket, WSS): reads into the core's
    buffer (zero copy), writes the core's buffers with ``sendmsg`` and keeps the unsent tail."""

    def __init__(self, loop: IOLoop, session: Session, sock: socket.socket) -> None:
        try:
            peer: Address | None = tuple(sock.getpeername())
        except OSError:
            peer = None
        super().__init__(loop, session, sock, peer)
        self._conn = session.connection
        self._out: list[memoryview] = []
        self._out_bytes = 0
        self._reading = True
        self._eof_received = False
        self._eof_written = False

    # --- the session's side (any thread) -------------------------------------------------------

    def request_flush(self) -> None:
        """Have the loop write soon (lock held, any thread).

        From an application thread while the loop sleeps, the core's bytes are taken here
        first, and the loop is woken only when there is something for it to do: bytes to
        write, the close, a deadline sooner than its planned wake-up.  Taking a message from
        the inbox (once per message on a server) then costs no wake-up of the I/O thread; a
        sender wakes it once per batch as before (later sends find it woken already).
        """
        self._flush_here(False)

    def send_soon(self) -> None:
        """:meth:`request_flush` after a one-way send (lock held, any thread): a loop woken
        for it lets the sender queue more before it writes (see :meth:`IOLoop.request_flush`)."""
        self._flush_here(False, burst=True)

    def write_now(self) -> None:
        """:meth:`request_flush`, and while the loop sleeps, write the core's bytes from this
        thread (lock held, any thread).

        The loop sleeping means it is not writing (it writes only awake), so this thread may
        use the socket: a non-blocking ``sendmsg`` of what the core has.  What the kernel does
        not take (or an error) is left to the loop, woken for it as by :meth:`request_flush`.
        A request or a response then leaves without waking the I/O thread at all.
        """
        self._flush_here(True)

    def _flush_here(self, write: bool, *, burst: bool = False) -> None:
        if self._closed:
            return
        loop = self.loop
        if (loop.woken or self._aborting or not self._started or not loop.running
                or loop.in_loop_thread()):
            loop.request_flush(self, burst=burst)
            return
        session = self.session
        self._take_output(session)
        if write and self._out:
            try:
                sent = self.sock.sendmsg(self._out[:_IOV_BATCH])  # type: ignore[union-attr]
            except OSError:
                pass  # EAGAIN, or an error the loop's own write meets and handles
            else:
                self._advance(sent)
        if (self._out or session.write_closed or session.machine_closed
                or not loop.wakes_before(session.deadline())):
            loop.request_flush(self, burst=burst)

    def _take_output(self, session: Session) -> None:
        # The core's bytes onto the unsent queue, each as a bytes view (sendmsg takes those).
        for buffer in session.take_output():
            view = _as_bytes_view(buffer)
            if view.nbytes:
                self._out.append(view)
                self._out_bytes += view.nbytes

    def pause_reading(self) -> None:
        """Stop reading: the application fell behind."""
        self._reading = False
        self._loop_flush()

    def resume_reading(self) -> None:
        """Read again."""
        self._reading = True
        self._loop_flush()

    # --- the loop's side -----------------------------------------------------------------------

    def on_ready(self, mask: int, now: float) -> None:
        """Read what arrived; a writable socket gets the unsent tail."""
        if mask & READ:
            self._read(now)
        if mask & WRITE:
            self.loop.request_flush(self)

    def _read(self, now: float) -> None:
        for _ in range(_READS_PER_TURN):
            if not self._reading or self._eof_received or self._closed:
                return
            buffer = self._conn.get_buffer(-1)
            try:
                nbytes = self.sock.recv_into(buffer)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                self._conn.machine.unused_buffer()  # an idle connection holds no receive area
                return
            except OSError as exc:
                self.session.lost(exc, now)
                self._close()
                return
            if nbytes == 0:
                self._eof_received = True
                self.session.feed_eof(now)
                self.loop.request_flush(self)
                return
            self.session.feed(nbytes, now)

    def flush(self, now: float) -> None:
        """Write the core's bytes; shut the write side once; close once the core is done."""
        if self._closed:
            return
        if self._aborting:
            self._close()
            return
        session = self.session
        # Read before the output is taken: an application thread may close the session in
        # between, and the bytes it queued before closing must leave before the FIN (a FIN
        # first makes their write fail with EPIPE).  Nothing can be queued after a close.
        write_closed = session.write_closed
        self._take_output(session)
        if self._out and not self._write(now):
            return
        if not self._out and write_closed and not self._eof_written:
            self._eof_written = True
            # The peer may be gone already (ENOTCONN after its reset): the read says so.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        if self._out_bytes > _HIGH_WATER:
            self.session.set_socket_paused(True)
        elif self._out_bytes <= _LOW_WATER:
            self.session.set_socket_paused(False)
        session.process()
        if session.machine_closed and not self._out:
            # What the machine queued before it closed (after the take above) goes first.
            self._take_output(session)
            if not self._out:
                self._close()
                return
        mask = (READ if self._reading and not self._eof_received else 0) | (
            WRITE if self._out else 0)
        self.loop.set_interest(self, mask)

    def _write(self, now: float) -> bool:
        sock = self.sock
        assert sock is not None
        while self._out:
            batch = self._out[:_IOV_BATCH]
            try:
                # The buffers are ours (the core forgot them) and only this thread writes to
                # the socket, so the kernel's time need not hold up the application's sends.
                with self.loop.unlocked():
                    sent = sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                self._out.clear()
                self._out_bytes = 0
                self.session.lost(exc, now)
                self._close()
                return False
            self._advance(sent)
        return True

    def _advance(self, sent: int) -> None:
        # The kernel took *sent* bytes from the front of the unsent buffers.
        self._out_bytes -= sent
        out = self._out
        done = 0
        while sent:
            head = out[done]
            if sent >= head.nbytes:
                sent -= head.nbytes
                done += 1
            else:
                out[done] = head[sent:]
                sent = 0
        del out[:done]

    def _close(self) -> None:
        self._out.clear()
        super()._close()


class _ListenerChannel(Channel):
    """What a listening socket has, stream or QUIC: its bound address and its start."""

    def __init__(self, loop: IOLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        bound = sock.getsockname()
        self.address: tuple[str, int] = (bound[0], bound[1])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address}>"

    def start(self) -> None:
        """Register with the loop."""
        if not self.loop.running:
            self.close_now()
            return
        self.loop.add(self, READ)


class StreamListener(_ListenerChannel):
    """One listening socket for a stream server config."""

    def __init__(self, loop: IOLoop, sock: socket.socket, config: Any, *,
                 new_session: NewSession, on_established: Callable[[Session], None],
                 settings: dict[str, Any],
                 on_refused: Callable[[], None] | None = None) -> None:
        super().__init__(loop, sock)
        self.config = config
        self._on_refused = on_refused
        self._new_session = new_session
        self._on_established = on_established
        self._settings = settings
        self._tls_context: ssl.SSLContext | None = (
            config.tls.server_context() if config.tls is not None else None)
        self._live: set[Session] = set()  # for max_sessions
        self._gate = accept_gate(on_refused)

    def on_ready(self, mask: int, now: float) -> None:
        """Accept what is waiting (up to :data:`_ACCEPTS_PER_TURN`)."""
        for _ in range(_ACCEPTS_PER_TURN):
            if self.sock is None:
                return
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: the listener goes on; the next turn may succeed.
                logger.warning("listener %s: accept failed: %s", self.address, exc)
                return
            self._accepted(sock, addr)

    def _accepted(self, sock: socket.socket, peer: Any = None) -> None:
        config = self.config
        if not self._gate.admit(config, len(self._live), peer):
            sock.close()
            return
        sock.setblocking(False)
        tune_stream(sock, config)
        tls_context = self._tls_context
        settings = self._settings
        session = self._new_session(
            lambda sid: server_connection(config, session_id=sid, tls_context=tls_context,
                                          **settings))
        self._live.add(session)
        session.when_finished(self._live.discard)
        self._gate.track(session, peer, sock.getsockname)
        session.when_established(self._on_established)
        StreamChannel(self.loop, session, sock).start()

    def close_now(self) -> None:
        """Stop accepting (sessions already accepted go on)."""
        self.loop.remove(self)
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def tune_stream(sock: socket.socket, config: Any) -> None:
    """Apply the config's ``nodelay`` and ``keepalive`` to a connected TCP socket."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,
                        int(getattr(config, "nodelay", True)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE,
                        int(getattr(config, "keepalive", True)))


def _bind(host: str, port: int, kind: socket.SocketKind, reuse_port: bool = False
          ) -> socket.socket:
    infos = socket.getaddrinfo(host or None, port, type=kind, flags=socket.AI_PASSIVE)
    family, _type, proto, _name, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if kind == socket.SOCK_STREAM and hasattr(socket, "SO_REUSEADDR"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def open_stream_listener(loop: IOLoop, config: Any, new_session: NewSession,
                         on_established: Callable[[Session], None],
                         settings: dict[str, Any], *,
                         on_refused: Callable[[], None] | None = None) -> StreamListener:
    """Bind and listen for *config* (any thread); call :meth:`StreamListener.start` on the
    loop.  *on_refused* (optional) is called (I/O thread, lock held) for each connection
    refused at ``max_sessions``.

    Raises:
        TransportError: the address cannot be bound (mapped from the ``OSError``).
        ConfigurationError: the TLS certificate cannot be loaded.
    """
    host, port = config.addr
    try:
        sock = _bind(host, port, socket.SOCK_STREAM, getattr(config, "reuse_port", False))
    except OSError as exc:
        raise map_error(exc, protocol=config.protocol, operation="listen") from exc
    try:
        sock.listen(config.backlog)
        return StreamListener(loop, sock, config, new_session=new_session,
                              on_established=on_established, settings=settings,
                              on_refused=on_refused)
    except BaseException:
        sock.close()
        raise


# --- QUIC --------------------------------------------------------------------------------------


class QuicClientChannel(_SessionChannel):
    """The socket of one QUIC client session: a UDP socket connected to the server."""

    def __init__(self, loop: IOLoop, session: Session, sock: socket.socket,
                 peer: Address) -> None:
        super().__init__(loop, session, sock, peer)
        _grow_receive_buffer(sock)

    #: Have the loop send soon (any thread); from another thread than the loop's, writing now
    #: is the same (QUIC datagrams leave from the I/O thread).
    request_flush = write_now = _SessionChannel._loop_flush

    def send_soon(self) -> None:
        """:meth:`request_flush` after a one-way send (see :meth:`IOLoop.request_flush`)."""
        if not self._closed:
            self.loop.request_flush(self, burst=True)

    def pause_reading(self) -> None:
        """Stop granting the peer flow-control credit: the application fell behind."""
        _quic_machine(self.session.connection).pause_reading()

    def resume_reading(self) -> None:
        """Grant credit again; the update leaves with the next datagrams."""
        _quic_machine(self.session.connection).resume_reading()
        self._loop_flush()

    def on_ready(self, mask: int, now: float) -> None:
        """Feed the datagrams that arrived."""
        sock = self.sock
        assert sock is not None
        for _ in range(_READS_PER_TURN * 4):
            if self._closed:
                return
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP errors (port unreachable...): QUIC's own timers decide; only log them.
                logger.debug("session %s: UDP error %s", self.session.id, exc)
                continue
            self.session.feed_datagram(data, addr, now)

    def flush(self, now: float) -> None:
        """Send the core's datagrams; close the socket once the connection is over."""
        if self._closed:
            return
        if self._aborting:
            self._close()
            return
        sock = self.sock
        assert sock is not None
        for data, _addr in self.session.take_datagrams(now):
            # A full socket buffer or an ICMP error drops the datagram: QUIC retransmits.
            with contextlib.suppress(OSError):
                sock.send(data)
        self.session.process()
        if self.session.machine_closed:
            self._close()


class _ServerSessionIO(_QuicSeat):
    """The socket side of one accepted QUIC session: its listener's shared socket."""

    __slots__ = ()

    def request_flush(self) -> None:
        self._wake()

    write_now = request_flush  # the datagrams leave from the I/O thread anyway

    def send_soon(self) -> None:
        self._listener.request_flush(burst=True)


class QuicListener(_QuicTable[Session, _ServerSessionIO], _ListenerChannel):
    """One UDP socket serving a QUIC server config through the core's endpoint."""

    def __init__(self, loop: IOLoop, sock: socket.socket, endpoint: QuicEndpoint, *,
                 new_session: NewSession, on_established: Callable[[Session], None],
                 settings: dict[str, Any]) -> None:
        _ListenerChannel.__init__(self, loop, sock)
        self._init_table(endpoint, new_session, on_established, settings)
        self.closed = False

    def request_flush(self, *, burst: bool = False) -> None:
        """Have the loop send soon (any thread); *burst*: after a one-way send."""
        if not self.closed:
            self.loop.request_flush(self, burst=burst)

    def on_ready(self, mask: int, now: float) -> None:
        """Route the datagrams through the endpoint; wrap new connections in sessions."""
        sock = self.sock
        assert sock is not None
        for _ in range(_READS_PER_TURN * 4):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # ICMP errors from one peer must not stop the listener: log them.
                logger.debug("QUIC listener %s: UDP error %s", self.address, exc)
                continue
            self.endpoint.receive_datagram(data, addr, now)
        self._accept(now)
        self._pump()

    def _attach(self, session: Session, machine: Any, now: float) -> _ServerSessionIO:
        seat = _ServerSessionIO(self, session, machine, self.request_flush)
        session.when_established(self._on_established)
        session.attach(seat, now)
        return seat

    def _session_over(self, session: Session, seat: _ServerSessionIO) -> None:
        session.socket_gone()

    def _pump(self) -> None:
        # Only the connections an input touched can have news (see _QuicTable._visit).
        self._visit(self.endpoint.take_touched(), account=False)
        self.loop.request_flush(self)

    def deadline(self) -> float | None:
        """The endpoint's deadline, or the soonest of its sessions'."""
        soonest = self.endpoint.next_deadline()
        for session, _seat in self._seats.values():
            deadline = session.deadline()
            if deadline is not None and (soonest is None or deadline < soonest):
                soonest = deadline
        return soonest

    def on_timer(self, now: float) -> None:
        """Fire the endpoint's timers and the sessions' own."""
        deadline = self.endpoint.next_deadline()
        if deadline is not None and deadline <= now:
            self.endpoint.handle_timer(now)
        for session, _seat in list(self._seats.values()):
            deadline = session.deadline()
            if deadline is not None and deadline <= now:
                session.on_timer(now)
        self._pump()

    def flush(self, now: float) -> None:
        """Send every connection's datagrams; close the socket once stopped and done."""
        sock = self.sock
        if sock is None:
            return
        for data, addr in self.endpoint.datagrams_to_send(now):
            with contextlib.suppress(OSError):
                sock.sendto(data, addr)
        # A session's packets left only if its machine was flushed, and a flushed machine is
        # touched: the others have nothing to account or process.
        self._visit(self.endpoint.take_touched(), account=True)
        if self._stopping and self.endpoint.is_closed:
            self.close_now()

    def stop(self) -> None:
        """Close the socket once every session on it is over (call after closing them)."""
        self._begin_stop()
        self.request_flush()

    def close_now(self) -> None:
        """Drop the socket now; every session still on it is over."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove(self)
        now = time.monotonic()
        for session, _seat in self._take_all():
            session.lost(None, now)
            session.socket_gone()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.loop.cond.notify_all()


def open_quic_listener(loop: IOLoop, config: QuicServerConfig, new_session: NewSession,
                       on_established: Callable[[Session], None],
                       settings: dict[str, Any]) -> QuicListener:
    """Bind a UDP socket for *config* (any thread); call :meth:`QuicListener.start` on the
    loop.

    Raises:
        TransportError: the address cannot be bound (mapped from the ``OSError``).
        ConfigurationError: the certificate cannot be loaded.
    """
    endpoint = quic_endpoint(config)
    host, port = config.addr
    try:
        sock = _bind(host, port, socket.SOCK_DGRAM, config.reuse_port)
    except OSError as exc:
        raise map_error(exc, protocol=config.protocol, operation="listen") from exc
    _grow_receive_buffer(sock)
    return QuicListener(loop, sock, endpoint, new_session=new_session,
                        on_established=on_established, settings=settings)
