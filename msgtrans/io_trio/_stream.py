"""Stream sockets (TCP, TLS over TCP, WebSocket, WSS): the socket side of one session, and
listeners.

TLS lives in the core (its ``TlsMachine``), so every stream socket here is plain TCP, opened with
:func:`trio.open_tcp_stream` or accepted from :func:`trio.open_tcp_listeners`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

from .._driver.admission import accept_gate
from .._driver.writes import skip_sent
from ..core.connection import Connection, server_connection
from ..core.errormap import map_error
from ..core.machine import Address
from ..core.packet import Buffer
from ._session import Session
from ._wakeup import Wakeup

__all__ = ["StreamIO", "StreamListener", "deliver_when_established", "open_stream_listener"]

logger = logging.getLogger("msgtrans.io_trio")

# A batch grows up to this size before it is written (see StreamIO._gather); without
# sendmsg, small buffers are joined up to it and larger ones go out on their own, uncopied.
_JOIN_LIMIT = 64 * 1024
# Parts per sendmsg(): well under every platform's IOV_MAX (1024 on Linux).
_MAX_PARTS = 512
# Connections a listener accepts per wake-up: a burst is taken without a scheduler round per
# connection, and the sessions it started get to run between batches.
_ACCEPT_BATCH = 64
# How many scheduler rounds the writer lets other ready tasks add to a batch before it writes
# (see StreamIO._writer); each round costs one trio checkpoint, far less than a send().
_BATCH_ROUNDS = 64


class StreamIO:
    """The socket side of one stream session: a reader task receiving straight into the core's
    buffer (zero copy) and a writer task sending what the core returns, once per batch."""

    def __init__(self, session: Session, stream: trio.SocketStream, *, nodelay: bool = True,
                 keepalive: bool = True) -> None:
        self.session = session
        self._stream = stream
        self._sock = stream.socket
        # A vectored write hands the core's parts (headers, large payloads by reference) to
        # the kernel as they are: no join, no copy.  trio sockets have it on Unix.
        self._sendmsg: Callable[[list[Buffer]], Awaitable[int]] | None = getattr(
            self._sock, "sendmsg", None)
        self._wake = Wakeup()  # the writer waits for it
        # Output the reader took from the connection, to go before what the writer takes next.
        self._carry: list[Buffer] = []
        # The writer is between its wake-up and its next wait (taking, writing): it takes what
        # the core has once its write is done, so the reader must not take it meanwhile.
        self._writing = False
        # Set while reading is paused (None: reading; made only when paused).
        self._paused: trio.Event | None = None
        self._eof_written = False
        if self._sock.family in (socket.AF_INET, socket.AF_INET6):
            # trio turns TCP_NODELAY on; honour the config either way.
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(nodelay))
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(keepalive))
        try:
            peer = self._sock.getpeername()
        except OSError:
            peer = None
        self._peer: Address | None = tuple(peer) if peer is not None else None

    @property
    def peer_address(self) -> Address | None:
        """The peer's socket address."""
        return self._peer

    def wake(self) -> None:
        """Have the writer flush (all wake-ups before it runs make one flush)."""
        self._wake.set()

    def set_reading(self, reading: bool) -> None:
        """Pause or resume the reader (the application fell behind / caught up)."""
        if reading:
            paused = self._paused
            if paused is not None:
                self._paused = None
                paused.set()
        elif self._paused is None:
            self._paused = trio.Event()

    async def run(self, nursery: trio.Nursery) -> None:
        """Read (a task in *nursery*, the session's) and write until the core is over (the
        writer decides: it sends the last bytes)."""
        nursery.start_soon(self._reader)
        await self._writer()

    async def aclose(self) -> None:
        """Close the socket (never blocks)."""
        await trio.aclose_forcefully(self._stream)

    async def _reader(self) -> None:
        session = self.session
        conn = session.connection
        sock = self._sock
        drained = True
        while True:
            paused = self._paused
            if paused is not None:
                # Only when paused: Event.wait() is a checkpoint even when set, and recv_into
                # below is one already, so a set event would cost a scheduler round per read.
                await paused.wait()
            try:
                if drained:
                    # The last read was short (or none yet): wait for bytes before taking the
                    # core's receive area, so that an idle connection holds none (recv_into
                    # would hold it while it waits).  The read below then finds them at once.
                    await trio.lowlevel.wait_readable(sock)
                area = conn.get_buffer(-1)
                nbytes = await sock.recv_into(area)
            except OSError as exc:
                session.lost(exc)
                # The writer ends the session's task (and so releases the socket) only once
                # woken: a reset must wake it as an EOF does, or the session lives forever.
                self._wake.set()
                return
            drained = nbytes < len(area)
            area.release()  # no view of the area is kept while the next read waits
            if not nbytes:
                session.feed_eof()
                return
            session.feed(nbytes)
            # Most input has nothing to answer (TCP never does): wake the writer only when
            # there is output (TLS, WebSocket control frames) or the connection ended.
            if self._writing or self._carry:
                # The writer is busy (it takes the core's output again after each write, and
                # checks the close after its last) or already woken for a carry.  Taking the
                # output here would pile it up in the carry, counted as flushed, while the peer
                # does not read: no send bound would pause the application, and so no receive
                # bound would ever pause this reader.
                continue
            output = session.take_output()
            if output:
                self._carry += output
                self._wake.set()
            elif session.machine_closed or session.write_closed:
                self._wake.set()

    async def _writer(self) -> None:
        session = self.session
        while True:
            await self._wake.wait()  # and clears it
            self._writing = True
            try:
                # Until the core has nothing more: sends and a close may come in while
                # send_all waits, and the EOF must go after every byte queued before it.
                while output := await self._gather(self._take()):
                    await self._write(output)
                if session.write_closed and not self._eof_written:
                    self._eof_written = True
                    # The peer may be gone already (its reset); the reader reports that.
                    with contextlib.suppress(trio.BrokenResourceError, OSError):
                        await self._stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                session.lost(exc)
            self._writing = False
            session.process()
            if session.machine_closed:
                return

    async def _write(self, parts: list[Buffer]) -> None:
        """Write *parts* whole and in order: one ``sendmsg`` per :data:`_MAX_PARTS` parts (a
        partial write goes on from where it stopped), else ``send_all`` per joined batch."""
        sendmsg = self._sendmsg
        if sendmsg is None:
            for chunk in _batches(parts):
                if chunk:
                    await self._stream.send_all(chunk)
            return
        i, n = 0, len(parts)
        while i < n:
            batch = parts[i:i + _MAX_PARTS] if i or n > _MAX_PARTS else parts
            sent = await sendmsg(batch)
            i = skip_sent(parts, i, batch, sent)

    def _take(self) -> list[Buffer]:
        # The reader's carry first: it left the connection before what take_output returns.
        if self._carry:
            carried, self._carry = self._carry, []
            return carried + self.session.take_output()
        return self.session.take_output()

    async def _gather(self, output: list[Buffer]) -> list[Buffer]:
        """Grow *output* into a batch: yield to the other ready tasks and take what they
        queued meanwhile, for as long as each round brings more (an application sending in a
        loop yields once per message), up to ``_JOIN_LIMIT`` bytes or ``_BATCH_ROUNDS``
        rounds.  A lone request costs one scheduler round before it leaves; a stream of sends
        costs one ``send()`` per batch instead of one per message.
        """
        if not output:
            return output
        size = sum(len(chunk) for chunk in output)
        rounds = 0
        while size < _JOIN_LIMIT and rounds < _BATCH_ROUNDS:
            rounds += 1
            await trio.lowlevel.cancel_shielded_checkpoint()
            more = self._take()
            if not more:
                break
            output += more
            size += sum(len(chunk) for chunk in more)
        return output


def _batches(data: list[Buffer]) -> list[Buffer]:
    if len(data) <= 1:
        return data
    out: list[Buffer] = []
    small: list[Buffer] = []
    size = 0
    for chunk in data:
        n = len(chunk)
        if n >= _JOIN_LIMIT:
            if small:
                out.append(b"".join(small))
                small, size = [], 0
            out.append(chunk)
            continue
        small.append(chunk)
        size += n
        if size >= _JOIN_LIMIT:
            out.append(b"".join(small))
            small, size = [], 0
    if small:
        out.append(b"".join(small) if len(small) > 1 else small[0])
    return out


class StreamListener:
    """The listening sockets of one TCP or WebSocket server config and their accept loop."""

    def __init__(
        self,
        config: Any,
        listeners: list[trio.SocketListener],
        *,
        new_session: Callable[[Callable[[int], Connection]], Session],
        spawn: Callable[..., None],
        on_established: Callable[[Session], None],
        settings: dict[str, Any],
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._on_refused = on_refused
        self._gate = accept_gate(on_refused)
        self.listeners = listeners
        bound = listeners[0].socket.getsockname()
        self.address: Address = (bound[0], bound[1])
        self._new_session = new_session
        self._spawn = spawn
        self._on_established = on_established
        self._settings = settings
        self._tls_context = config.tls.server_context() if config.tls is not None else None
        self._live: set[Session] = set()
        self._batches: list[_AcceptBatch] = []
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        """Accept until :meth:`close` (a task in the transport's nursery)."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    for listener in self.listeners:
                        nursery.start_soon(self._accept_loop, listener)
        finally:
            for batch in self._batches:
                batch.close()
            with trio.CancelScope(shield=True):
                for listener in self.listeners:
                    await trio.aclose_forcefully(listener)

    def close(self) -> None:
        """Stop accepting (sessions already accepted go on)."""
        self.scope.cancel()

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        config = self.config
        batch = _AcceptBatch(listener)
        self._batches.append(batch)  # closed by run()
        while True:
            try:
                stream = await batch.next()
            except OSError as exc:
                # EMFILE and friends: log, breathe, go on (a listener must not die of it).
                logger.warning("listener %s: accept failed: %s", self.address, exc)
                await trio.sleep(0.1)
                continue
            sock = stream.socket
            try:
                peer = sock.getpeername()
            except OSError:
                peer = None
            if not self._gate.admit(config, len(self._live), peer):
                await trio.aclose_forcefully(stream)
                continue
            try:
                session = self._new_session(
                    lambda sid: server_connection(
                        config, session_id=sid, tls_context=self._tls_context, **self._settings
                    )
                )
                io = StreamIO(session, stream, nodelay=getattr(config, "nodelay", True),
                              keepalive=getattr(config, "keepalive", True))
            except Exception:
                logger.exception("listener %s: cannot set up a connection", self.address)
                self._gate.cancel(peer)
                await trio.aclose_forcefully(stream)
                continue
            self._live.add(session)
            session.when_finished(self._live.discard)
            self._gate.track(session, peer, sock.getsockname)
            self._spawn(session.run, io)
            self._spawn(deliver_when_established, session, self._on_established)


class _AcceptBatch:
    """The connections of one listening socket, accepted in batches: every connection waiting
    at a wake-up, up to :data:`_ACCEPT_BATCH`, without a checkpoint between them.

    ``SocketListener.accept`` is a checkpoint per connection: under a flood, each one waits
    for a whole scheduler round of every other task (the new sessions' among them), and the
    listen queue overflows.  The accepts go through a duplicate of the listening descriptor
    (the same socket) with the standard library's non-blocking ``accept``.
    """

    def __init__(self, listener: trio.SocketListener) -> None:
        self._listener = listener
        self._ready: collections.deque[socket.socket] = collections.deque()
        self._sock: socket.socket | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._sock = socket.socket(fileno=os.dup(listener.socket.fileno()))

    async def next(self) -> trio.SocketStream:
        """The next connection (waits for one).

        Raises:
            OSError: the accept failed (EMFILE...).
        """
        sock = self._sock
        if sock is None:  # no duplicate descriptor on this platform
            return await self._listener.accept()
        while not self._ready:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(_ACCEPT_BATCH):
                try:
                    accepted, _addr = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    if self._ready:
                        break  # these first; the error comes again on the next call
                    raise
                self._ready.append(accepted)
        return trio.SocketStream(trio.socket.from_stdlib_socket(self._ready.popleft()))

    def close(self) -> None:
        """Release the duplicate descriptor and the connections not handed out yet."""
        while self._ready:
            self._ready.popleft().close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def deliver_when_established(session: Session,
                                   deliver: Callable[[Session], None]) -> None:
    """Hand *session* out once its handshake completed; a failed handshake is only logged (it
    never reaches the application, and never stops a listener)."""
    try:
        await session.wait_established()
    except Exception as exc:
        logger.info("session %s: handshake failed: %s", session.id, exc)
        return
    deliver(session)


async def open_stream_listener(
    config: Any,
    new_session: Callable[[Callable[[int], Connection]], Session],
    spawn: Callable[..., None],
    on_established: Callable[[Session], None],
    settings: dict[str, Any],
    *,
    on_refused: Callable[[], None] | None = None,
) -> StreamListener:
    """Bind the listening sockets of *config* (a TCP or WebSocket server config).
    *on_refused* (optional) is called for each connection refused at ``max_sessions``.

    Raises:
        TransportError: the address cannot be bound (mapped from the ``OSError``).
        ConfigurationError: the TLS certificate cannot be loaded.
    """
    host, port = config.addr
    try:
        if getattr(config, "reuse_port", False):
            listeners = await _reuse_port_listeners(host, port, config.backlog)
        else:
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=config.backlog)
    except OSError as exc:
        raise map_error(exc, protocol=config.protocol, operation="listen") from None
    try:
        return StreamListener(config, listeners, new_session=new_session, spawn=spawn,
                              on_established=on_established, settings=settings,
                              on_refused=on_refused)
    except BaseException:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        raise


async def _reuse_port_listeners(host: str, port: int, backlog: int) -> list[trio.SocketListener]:
    """What ``trio.open_tcp_listeners`` makes, with ``SO_REUSEPORT`` set on every socket
    before it is bound (trio has no option for it); for ``serve(workers=N)``.

    Raises:
        OSError: an address cannot be resolved or bound.
    """
    infos = await trio.socket.getaddrinfo(host or None, port, type=trio.socket.SOCK_STREAM,
                                          flags=trio.socket.AI_PASSIVE)
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _name, addr in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(addr)
                sock.listen(backlog)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners
