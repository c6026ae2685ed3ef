"""The application's entry point: :class:`Transport`, its builder, :class:`SessionStream` and
:class:`ShutdownReport`, on trio.

Every task lives in a nursery the application sees: the transport's (``async with transport:``
opens one; ``Transport(nursery=...)`` uses the caller's) holds the sessions and listeners, and
:meth:`Transport.serve` holds the handler tasks of its sessions in its own.  Errors meant as one
:class:`TransportError` are raised as that error, never wrapped in an exception group.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Literal, NoReturn, overload

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

from .._driver import docs
from .._driver.backplane import ThreadedRedisLink
from .._driver.builder import DEFAULT_SHUTDOWN_TIMEOUT, ShutdownReport, TransportBuilderBase
from .._driver.docs import doc
from .._driver.facade import AsyncStreamFacade, AsyncTransportFacade, handler_caller
from .._driver.forever import check_policy
from .._driver.pool import check_pool_policy
from .._driver.reconnect import resolve_policy
from .._driver.transport import (
    DatagramServerConfig,
    SessionStreamBase,
    TransportBase,
    TransportDefaults,
    _handler_failed,
    _no_request_handler,
    _send_result,
    _transport_args,
)
from .._driver.workers import worker_count
from ..core.backplane import Envelope
from ..core.config import ConnectionConfig, ServerConfig, to_config
from ..core.connection import Connection
from ..core.errormap import map_error
from ..core.errors import ConfigurationError, TransportConnectionError, TransportError
from ..core.expansion import ExpansionStrategy
from ..core.packet import Buffer
from ..core.reconnect import ReconnectPolicy
from ..core.session import SessionState
from ._forever import ConnectForever
from ._message import Message
from ._pool import SessionPool
from ._quic import QuicClientIO, QuicListener, open_quic_listener
from ._reconnect import ReconnectingSession
from ._session import Session
from ._stream import StreamIO, StreamListener, open_stream_listener
from ._timers import Timers

__all__ = ["SessionStream", "ShutdownReport", "Transport", "TransportBuilder"]

logger = logging.getLogger("msgtrans.io_trio")
_call = handler_caller(logger)

_TRIO_LIFETIME = """Its tasks need a
nursery: ``async with transport:`` opens one (and shuts the transport down gracefully at the
end), or pass your own as ``nursery=`` (then call :meth:`graceful_shutdown` or
:meth:`shutdown` before that nursery can end: sessions and listeners run until then)."""
_NURSERY_ARG = """nursery: a nursery for the transport's tasks (default: the one ``async with``
        opens).
    """
_TRIO_CONNECT = """The session's tasks run in the transport's nursery.  Cancelling the call (or
an enclosing deadline) abandons the half-open connection."""


class TransportBuilder(TransportBuilderBase):
    """Builds a :class:`Transport`: ``Transport.builder().request_timeout(5).build()``.

    Every setter checks its arguments at once and returns the builder; ``build()`` checks the
    combination (the same setting given two ways is refused), ``settings()`` shows the effective
    settings as plain data (every method, default and conflict: "The transport builder" in
    docs/configuration.md).  Defaults: request timeout 10 s (the wire spec's), connect timeout
    from each config (10 s unless the URL or config says otherwise), graceful shutdown timeout
    5 s for ``async with``.
    """

    def build(self, nursery: trio.Nursery | None = None) -> Transport:
        """Return the transport.

        Args:
            nursery: a nursery of the caller's for the transport's tasks (default: the one
                ``async with transport:`` opens).

        Raises:
            ConfigurationError: a setting or a combination is invalid (``field`` names it).
        """
        return Transport(nursery=nursery, **_transport_args(self))



def _single(exc: BaseException) -> BaseException:
    """What to raise for *exc*: a group of one is its member (recursively); a group of several
    ordinary errors is one :class:`TransportError`; anything else is left as it is.

    Trio 0.22 raises ``MultiError`` (or, with ``strict_exception_groups``, an exception group);
    Python 3.10 has no builtin ``ExceptionGroup``.  Both carry ``exceptions``, which is all
    this looks at.
    """
    members = getattr(exc, "exceptions", None)
    if not isinstance(members, (list, tuple)) or not members:
        return exc
    if len(members) == 1 and isinstance(members[0], BaseException):
        return _single(members[0])
    if all(isinstance(m, Exception) for m in members):
        return map_error(exc)
    return exc


def _reraise(exc: BaseException) -> NoReturn:
    single = _single(exc)
    if single is exc:
        raise exc
    raise single from None


async def _abandon(holder: list[Session], reason: str) -> None:
    """Abort a half-open session and wait (shielded, bounded) until its task released the
    socket, so a failed connect leaves nothing behind."""
    if not holder:
        return
    session = holder[0]
    session.abort(reason)
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        await session.wait_closed()


async def _wait_all(waits: list[Callable[[], Any]], deadline: float) -> None:
    """Run every wait concurrently until all are done or *deadline* (trio time) passes."""
    if not waits:
        return
    with trio.move_on_at(deadline):
        async with trio.open_nursery() as nursery:
            for wait in waits:
                nursery.start_soon(wait)


@doc(docs.SESSION_STREAM, kind="an async iterator and an async context manager", safety="")
class SessionStream(SessionStreamBase[Session], AsyncStreamFacade):

    def __init__(self, transport: Transport, configs: Iterable[Any]) -> None:
        super().__init__(configs)
        self._transport = transport
        self._event = trio.Event()
        self._stream_listeners: list[StreamListener] = []
        self._quic_listeners: list[QuicListener] = []

    async def _open_quic(self, config: DatagramServerConfig) -> QuicListener:
        transport = self._transport
        spawn = transport._spawner("accept")
        quic = await open_quic_listener(config, transport._new_session, spawn, self._deliver,
                                        transport._settings)
        spawn(quic.run)
        return quic

    async def _open_stream(self, config: ServerConfig) -> StreamListener:
        transport = self._transport
        spawn = transport._spawner("accept")
        listener = await open_stream_listener(config, transport._new_session, spawn,
                                              self._deliver, transport._settings,
                                              on_refused=transport._refused)
        spawn(listener.run)
        return listener

    async def _checkpoint(self) -> None:
        await trio.lowlevel.checkpoint()

    def _deliver(self, session: Session) -> None:
        if self._turned_away(session):
            return
        self._queue.append(session)
        self._event.set()

    async def __anext__(self) -> Session:
        # Cancel-safe like Session.receive: a session leaves the queue only when returned.
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            if self._event.is_set():
                self._event = trio.Event()
            await self._event.wait()
        session = self._queue.popleft()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return session


@doc(
    docs.TRANSPORT, runtime="on trio", with_="async with", nursery=_NURSERY_ARG,
    lifetime=_TRIO_LIFETIME,
)
class Transport(TransportBase[Session, SessionPool, QuicListener],
                AsyncTransportFacade[Session, Message, ShutdownReport, SessionStream]):

    def __init__(
        self,
        *,
        nursery: trio.Nursery | None = None,
        settings: dict[str, Any] | None = None,
        connect_timeout: float | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        memory_limit: int | None = None,
        defaults: TransportDefaults | None = None,
    ) -> None:
        super().__init__(settings=settings, connect_timeout=connect_timeout,
                         shutdown_timeout=shutdown_timeout, memory_limit=memory_limit,
                         defaults=defaults)
        self._nursery = nursery
        self._nursery_cm: Any = None
        self._streams: set[SessionStream] = set()
        self._handler_scopes: set[trio.CancelScope] = set()
        self._shutdown_done: trio.Event | None = None
        self._report: ShutdownReport | None = None
        # The sessions' deadlines: one task in the transport's nursery for all of them.
        self._timers = Timers(self._spawn_timers)

    _stream_type = SessionStream

    @staticmethod
    def builder() -> TransportBuilder:
        """Return a :class:`TransportBuilder` with the defaults."""
        return TransportBuilder()

    async def __aenter__(self) -> Transport:
        if self._nursery is None:
            cm = trio.open_nursery()
            self._nursery = await cm.__aenter__()
            self._nursery_cm = cm
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # Shielded and bounded: leaving must clean up even when the body was cancelled
            # (then at once, without waiting for requests in flight).
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self._shutdown_timeout + 2.0):
                    if exc is None or isinstance(exc, Exception):
                        await self.graceful_shutdown(self._shutdown_timeout)
                    else:
                        await self.shutdown(min(1.0, self._shutdown_timeout))
        finally:
            cm, self._nursery_cm = self._nursery_cm, None
            if cm is not None:
                assert self._nursery is not None
                self._nursery.cancel_scope.cancel()
                self._nursery = None
                # The body's exception is not handed to the nursery: it propagates as it is,
                # never wrapped in a group; the nursery's tasks contain their own errors.
                try:
                    await cm.__aexit__(None, None, None)
                except BaseException as group:
                    _reraise(group)

    # --- sessions ------------------------------------------------------------------------------

    def _spawner(self, operation: str) -> Callable[..., None]:
        nursery = self._nursery
        if nursery is None:
            raise ConfigurationError(
                "nursery",
                f"cannot {operation}: the transport has no nursery; use 'async with transport:' "
                "or Transport(nursery=...)",
            )
        spawn: Callable[..., None] = nursery.start_soon
        return spawn

    def _spawn_timers(self, run: Callable[[], Any]) -> None:
        nursery = self._nursery
        if nursery is None:
            raise RuntimeError("the transport has no nursery")
        nursery.start_soon(run, name="msgtrans.io_trio timers")

    def _make_session(self, connection: Connection, session_id: int) -> Session:
        return Session(connection, session_id, on_finished=self._forget, metrics=self._metrics,
                       timers=self._timers)

    @overload
    async def connect(self, target: str | ConnectionConfig, *, timeout: float | None = None,
                      reconnect: Literal[False] | None = None) -> Session: ...

    @overload
    async def connect(self, target: str | ConnectionConfig, *, timeout: float | None = None,
                      reconnect: Literal[True] | ReconnectPolicy) -> ReconnectingSession: ...

    @doc(docs.CONNECT, own=_TRIO_CONNECT, timeout="", nursery=", or the transport has no nursery")
    async def connect(self, target: str | ConnectionConfig, *, timeout: float | None = None,
                      reconnect: bool | ReconnectPolicy | None = None
                      ) -> Session | ReconnectingSession:
        if reconnect:
            return await self._connect_reconnecting(target, timeout, reconnect)
        self._check_open("connect")
        config = to_config(target)
        spawn = self._spawner("connect")
        limit = self._connect_limit(config, timeout)
        holder: list[Session] = []
        try:
            with trio.fail_after(limit):
                return await self._open(config, holder, spawn)
        except trio.TooSlowError as exc:
            error = self._connect_error(exc, config, holder[0] if holder else None,
                                        timeout=limit, count=True)
            await _abandon(holder, "abandoned: connect timed out")
            raise error from None
        except TransportError as exc:
            self._metrics.error(exc)
            await _abandon(holder, "abandoned during connect")
            raise
        except BaseException:
            await _abandon(holder, "abandoned during connect")
            raise

    @doc(docs.CONNECT_FOREVER, kind="an async iterator", loop="async for",
         handed="a task of a nursery", stop="``StopAsyncIteration``",
         close="await sessions.aclose()", with_="async with",
         nursery=", or the transport has no nursery")
    def connect_forever(self, target: str | ConnectionConfig, *,
                        policy: ReconnectPolicy | None = None,
                        timeout: float | None = None) -> ConnectForever:
        self._check_open("connect")
        config = to_config(target)
        self._spawner("connect")
        return ConnectForever(self, config, check_policy(policy), timeout)
    async def _connect_reconnecting(self, target: str | ConnectionConfig,
                                    timeout: float | None,
                                    reconnect: bool | ReconnectPolicy) -> ReconnectingSession:
        policy = resolve_policy(reconnect)
        assert policy is not None
        config = to_config(target)
        spawn = self._spawner("connect")
        first: Session = await self.connect(config, timeout=timeout)
        reconnecting = ReconnectingSession(
            first, policy, connect=lambda: self.connect(config, timeout=timeout),
            metrics=self._metrics, spawn=spawn, on_closed=self._forget_on_shutdown)
        self._on_shutdown(reconnecting, reconnecting._shutdown)
        return reconnecting

    async def _open(self, config: ConnectionConfig, holder: list[Session],
                    spawn: Callable[..., None]) -> Session:
        sock: trio.socket.SocketType | None = None
        try:
            if config.transport_kind == "datagram":
                infos = await trio.socket.getaddrinfo(config.host, config.port,
                                                      type=trio.socket.SOCK_DGRAM)
                family, kind, proto, _name, addr = infos[0]
                session = self._new_session(self._connection(config, addr))
                holder.append(session)
                sock = trio.socket.socket(family, kind, proto)
                await sock.connect(addr)
                spawn(session.run, QuicClientIO(session, sock, addr))
            else:
                session = self._new_session(self._connection(config))
                holder.append(session)
                stream = await trio.open_tcp_stream(config.host, config.port)
                try:
                    io = StreamIO(session, stream, nodelay=getattr(config, "nodelay", True),
                                  keepalive=getattr(config, "keepalive", True))
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                spawn(session.run, io)
        except Exception as exc:
            if sock is not None:
                sock.close()
            if not isinstance(exc, OSError) and getattr(exc, "exceptions", None) is None:
                raise
            error = self._connect_error(_single(exc), config, holder[0] if holder else None)
            if holder:
                holder[0].abort("connect failed")
                holder.clear()
            raise error from None
        await session.wait_established()
        return session

    # --- messages ------------------------------------------------------------------------------

    async def broadcast(self, sessions: Iterable[Session], data: Buffer, *, biz_type: int = 0,
                        ext_header: Buffer = b"") -> list[TransportError | None]:
        """Send one one-way message to each of *sessions* (concurrently: one slow peer does
        not hold up the others); return one result per session, in order: ``None`` when it
        was queued, else the :class:`TransportError`."""
        targets = list(sessions)
        results: list[TransportError | None] = [None] * len(targets)

        async def one(index: int, session: Session) -> None:
            try:
                await session.send(data, biz_type=biz_type, ext_header=ext_header)
            except Exception as exc:
                results[index] = _send_result(exc, session)

        try:
            async with trio.open_nursery() as nursery:
                for index, session in enumerate(targets):
                    nursery.start_soon(one, index, session)
        except BaseException as exc:
            _reraise(exc)  # cancellation and exit are not results
        return results

    # --- servers -------------------------------------------------------------------------------

    @doc(docs.SERVE, until=" until cancelled or the transport shuts down", kind="async ",
         runs="Sessions are served concurrently, each by a task in a nursery of this call,"
              " each one's messages in order.")
    async def serve(
        self, configs: Iterable[ServerConfig | str] | SessionStream, handler: Any, *,
        workers: int | None = None,
    ) -> ShutdownReport | None:
        count = worker_count(workers, self._defaults.workers)
        if count > 1:
            from ._workers import serve_workers

            return await serve_workers(self, configs, handler, count)
        stream = configs if isinstance(configs, SessionStream) else self.accept(configs)
        try:
            async with stream, trio.open_nursery() as handlers:
                self._handler_scopes.add(handlers.cancel_scope)
                try:
                    async for session in stream:
                        self._serving(session, True)  # a shutdown's drain waits for its loop
                        handlers.start_soon(self._serve_session, session, handler)
                finally:
                    # Stopped by a shutdown: the sessions are closing; the handlers see it
                    # out (the shutdown cancels them once the sessions are over).
                    await stream.aclose()
        except BaseException as exc:
            _reraise(exc)
        return None

    async def _serve_session(self, session: Session, handler: Any) -> None:
        try:
            await _call(handler, "on_connected", session)
            on_message = getattr(handler, "on_message", None)  # looked up once per session
            while True:
                # Everything queued at once: one wake-up per batch, not one per message.
                # Between batches nothing is in hand: a draining shutdown may look.
                self._serving(session, False)
                try:
                    batch = await session.receive_many()
                except TransportError as exc:
                    if session.error is not None:
                        await _call(handler, "on_error", session, exc)
                    break
                self._serving(session, True)
                await self._serve_batch(session, handler, on_message, batch)
                # Nothing held while the next batch is awaited: an idle session keeps no
                # message (nor the batch's list) alive.
                del batch
        finally:
            self._served_ended(session)
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await _call(handler, "on_disconnected", session, session.close_reason)

    async def _serve_batch(self, session: Session, handler: Any, on_message: Any,
                           batch: list[Message]) -> None:
        for message in batch:
            if message.is_request:
                await self._handle_request(session, handler, message)
            elif on_message is not None:
                if self._closing and session.state is not SessionState.OPEN:
                    # Read by the close handshake after a graceful shutdown stopped
                    # new reads: a one-way message can no longer be answered.
                    continue
                try:
                    await on_message(session, message)
                except Exception as exc:
                    _handler_failed(logger, "on_message", session, exc)
                    await _call(handler, "on_error", session, exc)

    async def _handle_request(self, session: Session, handler: Any, message: Message) -> None:
        on_request = getattr(handler, "on_request", None)
        if on_request is None:
            _no_request_handler(logger, session, message)
            return
        try:
            result = await on_request(session, message)
        except Exception as exc:
            _handler_failed(logger, "on_request", session, exc)
            await _call(handler, "on_error", session, exc)
            return
        if not message.responded:
            try:
                await message.respond(result if result is not None else b"")
            except TransportError as exc:
                await _call(handler, "on_error", session, exc)

    # --- pools and metrics ----------------------------------------------------------------------

    @doc(
        docs.POOL, waits="waits", own="  Its tasks run in the transport's nursery.",
        nursery=", or the transport has no nursery",
    )
    async def pool(
        self,
        address: str | ConnectionConfig,
        /,
        *,
        min: int | None = None,
        max: int | None = None,
        target: int | None = None,
        strategy: ExpansionStrategy | None = None,
        reconnect: ReconnectPolicy | None = None,
        **settings: Any,
    ) -> SessionPool:
        config, machine = self._pool_machine(address, (min, max, target), strategy=strategy,
                                             settings=settings, now=trio.current_time)
        pool = SessionPool(self, config, machine, spawn=self._spawner("pool"),
                           reconnect=check_pool_policy(reconnect),
                           **self._pool_settings())
        self._pools.add(pool)
        pool.start()
        try:
            await pool.wait_started()
        except BaseException:
            with trio.CancelScope(shield=True):
                await pool.close()
            raise
        return pool

    # --- shutdown ------------------------------------------------------------------------------

    # --- the backplane -------------------------------------------------------------------------

    def _start_backplane(self) -> None:
        """Start the link to Redis once: redis-py's blocking client in two threads (redis-py
        has no trio client), delivering into this trio run through its token (nothing without
        a backplane, after the shutdown, or without a nursery: the next call starts it)."""
        cluster = self._cluster
        if (cluster.node is None or cluster.link is not None or self._closing
                or self._nursery is None):
            return
        assert cluster.settings is not None
        token = trio.lowlevel.current_trio_token()

        def deliver(envelope: Envelope) -> None:
            # The link's reader thread: hand the envelope to the trio run.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._on_envelope, envelope)

        link = ThreadedRedisLink(cluster.settings.url, cluster.node, deliver)
        cluster.use_lock(link.lock)
        cluster.link = link
        link.start()

    def _on_envelope(self, envelope: Envelope) -> None:
        nursery = self._nursery
        if nursery is None or self._closing:
            return
        targets = self._envelope_targets(envelope)
        if targets:
            nursery.start_soon(functools.partial(
                self.broadcast, targets, envelope.payload, biz_type=envelope.biz_type,
                ext_header=envelope.ext_header))

    async def _stop_backplane(self) -> None:
        link, self._cluster.link = self._cluster.link, None
        if isinstance(link, ThreadedRedisLink):
            # Its threads wake within READ_POLL; joining them must not block the trio thread.
            await trio.to_thread.run_sync(link.close)

    async def _shut(self, timeout: float, *, drain: bool) -> ShutdownReport:
        if self._shutdown_done is not None:
            await self._shutdown_done.wait()
            if self._report is None:
                raise TransportConnectionError(
                    "the first shutdown did not finish", code="connection.aborted",
                    retryable=False, operation="shutdown",
                )
            return self._report
        self._shutdown_done = trio.Event()
        self._closing = True
        self._forevers.stop_all()
        try:
            self._report = await self._do_shutdown(timeout, drain)
        finally:
            self._shutdown_done.set()
        return self._report

    async def _drain(self, sessions: list[Session], deadline: float) -> None:
        # Until _drain_finished or the deadline; woken when a serve loop goes idle or ends
        # (_serving), or a session's requests in flight are done.
        with trio.move_on_at(deadline):
            try:
                while not self._drain_finished(sessions, self._serve_working()):
                    wake = trio.Event()
                    self._drain_wake = wake.set
                    async with trio.open_nursery() as nursery:
                        async def first(wait: Callable[[], Any]) -> None:
                            await wait()
                            nursery.cancel_scope.cancel()

                        nursery.start_soon(first, wake.wait)
                        for s in sessions:
                            if s.pending_work and not s.is_closed:
                                nursery.start_soon(first, s.wait_idle)
            finally:
                self._drain_wake = None

    async def _do_shutdown(self, timeout: float, drain: bool) -> ShutdownReport:
        start = trio.current_time()
        deadline = start + max(0.0, timeout)
        # Reconnecting sessions stop their supervisors first (their sessions close below).
        supervisors = [e for e in self._run_shutdown_closers() if isinstance(e, trio.Event)]
        await _wait_all([e.wait for e in supervisors], deadline + 1.0)
        # No more envelopes from other nodes; deliveries under way finish with the drain.
        await self._stop_backplane()
        # Pools first: their waiting leases fail and their opens stop; their sessions are the
        # transport's and close with the rest below.
        pools = list(self._pools)
        for pool in pools:
            pool._begin_close()
        for pool in pools:
            await pool.wait_tasks()
        for stream in list(self._streams):
            await stream.aclose()
        sessions, flushed_before = self._shutdown_sessions()
        if drain:
            await self._drain(sessions, deadline)
        self._close_sessions(sessions)
        await _wait_all([s.wait_closed for s in sessions], deadline)
        self._abort_sessions(sessions)
        for quic in self._quic_listeners:
            quic.abort()
        # Aborted sessions release their sockets as their tasks unwind; wait for that so
        # nothing is left open when the caller's nursery ends.
        waits = [s.wait_closed for s in sessions] + [q.wait_closed for q in self._quic_listeners]
        await _wait_all(waits, trio.current_time() + 1.0)
        self._forget_quic_listeners()
        for scope in list(self._handler_scopes):
            scope.cancel()
        self._handler_scopes.clear()
        return self._finish_shutdown(self._shutdown_figures(sessions, flushed_before),
                                     trio.current_time() - start)
