"""The application's entry point: :class:`Transport`, its builder, :class:`SessionStream` and
:class:`ShutdownReport`."""

# The metrics and pool hooks of this module: sessions get the transport's TransportMetrics (they
# count their own traffic, per batch), listeners report refusals, pools report their decisions;
# stats() and pool_status() only read.

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import types
from asyncio.tasks import _enter_task, _leave_task
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from typing import Any, Literal, overload

from .._driver import docs
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
    _numeric_addrinfo,
    _send_result,
    _transport_args,
)
from .._driver.workers import worker_count
from ..core.backplane import Envelope
from ..core.config import ConnectionConfig, ServerConfig, to_config
from ..core.connection import Connection
from ..core.errors import TransportError
from ..core.expansion import ExpansionStrategy
from ..core.packet import Buffer, PacketType
from ..core.reconnect import ReconnectPolicy
from ..core.session import SessionState
from ._backplane import AsyncRedisLink
from ._forever import ConnectForever
from ._message import Message
from ._pool import SessionPool
from ._quic import QuicClientIO, QuicListener, start_quic_listener
from ._reconnect import ReconnectingSession
from ._session import Session
from ._stream import StreamIO, StreamListener, start_stream_listener

__all__ = ["SessionStream", "ShutdownReport", "Transport", "TransportBuilder"]

logger = logging.getLogger("msgtrans.io_asyncio")
_call = handler_caller(logger)

_LIFETIME = """``async with
transport:`` shuts it down gracefully at the end.  All methods must be called from the event
loop's thread."""

_REQUEST = PacketType.REQUEST
_OPEN = SessionState.OPEN


class TransportBuilder(TransportBuilderBase):
    """Builds a :class:`Transport`: ``Transport.builder().request_timeout(5).build()``.

    Every setter checks its arguments at once and returns the builder; ``build()`` checks the
    combination (the same setting given two ways is refused), ``settings()`` shows the effective
    settings as plain data (every method, default and conflict: "The transport builder" in
    docs/configuration.md).  Defaults: request timeout 10 s (the wire spec's), connect timeout
    from each config (10 s unless the URL or config says otherwise), graceful shutdown timeout
    5 s for ``async with``.
    """

    def build(self) -> Transport:
        """Return the transport.

        Raises:
            ConfigurationError: a setting or a combination is invalid (``field`` names it).
        """
        return Transport(**_transport_args(self))


@doc(docs.SESSION_STREAM, kind="an async iterator and an async context manager", safety="")
class SessionStream(SessionStreamBase[Session], AsyncStreamFacade):

    def __init__(self, transport: Transport, configs: Iterable[Any]) -> None:
        super().__init__(configs)
        self._transport = transport
        self._event = asyncio.Event()
        self._stream_listeners: list[StreamListener] = []
        self._quic_listeners: list[QuicListener] = []
        # Set by Transport.serve: each accepted session is handed straight to it from the
        # accepting callback, rather than queued for the iterator to wake up and take.
        self._on_session: Callable[[Session], None] | None = None

    async def _open_quic(self, config: DatagramServerConfig) -> QuicListener:
        transport = self._transport
        return await start_quic_listener(config, transport._new_session, self._deliver,
                                         transport._settings)

    async def _open_stream(self, config: ServerConfig) -> StreamListener:
        transport = self._transport
        return await start_stream_listener(config, transport._new_session, self._deliver,
                                           transport._settings, on_refused=transport._refused)

    def _deliver(self, session: Session) -> None:
        if self._turned_away(session):
            return
        if self._on_session is not None:
            self._on_session(session)
            return
        self._queue.append(session)
        self._event.set()

    async def __anext__(self) -> Session:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()
        return self._queue.popleft()


@doc(
    docs.TRANSPORT, runtime="on an asyncio event loop", nursery="", with_="async with",
    lifetime=_LIFETIME,
)
class Transport(TransportBase[Session, SessionPool, QuicListener],
                AsyncTransportFacade[Session, Message, ShutdownReport, SessionStream]):

    def __init__(
        self,
        *,
        settings: dict[str, Any] | None = None,
        connect_timeout: float | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        memory_limit: int | None = None,
        defaults: TransportDefaults | None = None,
    ) -> None:
        super().__init__(settings=settings, connect_timeout=connect_timeout,
                         shutdown_timeout=shutdown_timeout, memory_limit=memory_limit,
                         defaults=defaults)
        self._streams: set[SessionStream] = set()
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._shutdown: asyncio.Future[ShutdownReport] | None = None
        # Deliveries of envelopes from other nodes (one broadcast task each).
        self._backplane_tasks: set[asyncio.Task[Any]] = set()

    _stream_type = SessionStream

    @staticmethod
    def builder() -> TransportBuilder:
        """Return a :class:`TransportBuilder` with the defaults."""
        return TransportBuilder()

    # --- sessions ------------------------------------------------------------------------------

    def _make_session(self, connection: Connection, session_id: int) -> Session:
        return Session(connection, session_id, asyncio.get_running_loop(),
                       on_finished=self._forget, metrics=self._metrics)

    @overload
    async def connect(self, target: str | ConnectionConfig, *, timeout: float | None = None,
                      reconnect: Literal[False] | None = None) -> Session: ...

    @overload
    async def connect(self, target: str | ConnectionConfig, *, timeout: float | None = None,
                      reconnect: Literal[True] | ReconnectPolicy) -> ReconnectingSession: ...

    @doc(docs.CONNECT, own="", timeout="", nursery="")
    async def connect(self, target: str | ConnectionConfig, *, timeout: float | None = None,
                      reconnect: bool | ReconnectPolicy | None = None
                      ) -> Session | ReconnectingSession:
        if reconnect:
            return await self._connect_reconnecting(target, timeout, reconnect)
        self._check_open("connect")
        config = to_config(target)
        limit = self._connect_limit(config, timeout)
        holder: list[Session] = []
        try:
            if sys.version_info >= (3, 11):
                # A timeout scope runs _open in this task; wait_for would wrap it in a task of
                # its own (one more task and loop pass per connect).
                async with asyncio.timeout(limit):
                    return await self._open(config, holder)
            else:  # pragma: no cover - Python 3.10
                return await asyncio.wait_for(self._open(config, holder), limit)
        except asyncio.TimeoutError as exc:
            error = self._connect_error(exc, config, holder[0] if holder else None,
                                        timeout=limit, count=True)
            if holder:
                self._abandon(holder[0], "abandoned: connect timed out")
            raise error from None
        except TransportError as exc:
            # A session that never opened does not count its own error: this is the one count.
            self._metrics.error(exc)
            if holder:
                self._abandon(holder[0], "abandoned during connect")
            raise
        except BaseException:
            if holder:
                self._abandon(holder[0], "abandoned during connect")
            raise

    @doc(docs.CONNECT_FOREVER, kind="an async iterator", loop="async for", handed="a task",
         stop="``StopAsyncIteration``", close="await sessions.aclose()", with_="async with",
         nursery="")
    def connect_forever(self, target: str | ConnectionConfig, *,
                        policy: ReconnectPolicy | None = None,
                        timeout: float | None = None) -> ConnectForever:
        self._check_open("connect")
        return ConnectForever(self, to_config(target), check_policy(policy), timeout)
    async def _connect_reconnecting(self, target: str | ConnectionConfig,
                                    timeout: float | None,
                                    reconnect: bool | ReconnectPolicy) -> ReconnectingSession:
        policy = resolve_policy(reconnect)
        assert policy is not None
        config = to_config(target)
        first: Session = await self.connect(config, timeout=timeout)
        reconnecting = ReconnectingSession(
            first, policy, connect=lambda: self.connect(config, timeout=timeout),
            metrics=self._metrics, on_closed=self._forget_on_shutdown)
        self._on_shutdown(reconnecting, reconnecting._shutdown)
        return reconnecting

    def _abandon(self, session: Session, reason: str) -> None:
        # Forgotten now, not when the aborted socket reports its loss on the next loop pass:
        # a shutdown in between would count it forced (trio and sync forget at once too).
        session.abort(reason)
        self._forget(session)

    async def _open(self, config: ConnectionConfig, holder: list[Session]) -> Session:
        loop = asyncio.get_running_loop()
        try:
            if config.transport_kind == "datagram":
                infos = _numeric_addrinfo(config.host, config.port) or await loop.getaddrinfo(
                    config.host, config.port, type=socket.SOCK_DGRAM
                )
                addr = infos[0][4]
                session = self._new_session(self._connection(config, addr))
                holder.append(session)
                await loop.create_datagram_endpoint(
                    lambda: QuicClientIO(session, addr), remote_addr=(str(addr[0]), int(addr[1])),
                    family=infos[0][0],
                )
            else:
                session = self._new_session(self._connection(config))
                holder.append(session)
                await loop.create_connection(
                    lambda: StreamIO(session, nodelay=getattr(config, "nodelay", True),
                                     keepalive=getattr(config, "keepalive", True)),
                    config.host, config.port,
                )
        except OSError as exc:
            error = self._connect_error(exc, config, holder[0] if holder else None)
            if holder:
                holder[0].abort("connect failed")
            raise error from None
        await session.wait_established()
        return session

    # --- messages ------------------------------------------------------------------------------

    async def broadcast(self, sessions: Iterable[Session], data: Buffer, *, biz_type: int = 0,
                        ext_header: Buffer = b"") -> list[TransportError | None]:
        """Send one one-way message to each of *sessions*; return one result per session, in
        order: ``None`` when it was queued, else the :class:`TransportError`."""
        targets = list(sessions)
        results = await asyncio.gather(
            *(s.send(data, biz_type=biz_type, ext_header=ext_header) for s in targets),
            return_exceptions=True,
        )
        # Queued sends (None) taken as they are: no call per session on the usual path.
        return [None if r is None else _send_result(r, s)
                for s, r in zip(targets, results, strict=True)]

    # --- servers -------------------------------------------------------------------------------

    @doc(docs.SERVE, until=" until cancelled or the transport shuts down", kind="async ",
         runs="Sessions are served concurrently, each one's messages in order.")
    async def serve(
        self, configs: Iterable[ServerConfig | str] | SessionStream, handler: Any, *,
        workers: int | None = None,
    ) -> ShutdownReport | None:
        count = worker_count(workers, self._defaults.workers)
        if count > 1:
            from ._workers import serve_workers

            return await serve_workers(self, configs, handler, count)
        loop = asyncio.get_running_loop()
        tasks = self._handler_tasks
        mine: set[asyncio.Task[None]] = set()
        def start(session: Session) -> None:
            self._serving(session, True)  # a shutdown's drain waits until its loop is idle
            task = loop.create_task(self._serve_session(session, handler))
            tasks.add(task)
            mine.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(mine.discard)

        try:
            stream = configs if isinstance(configs, SessionStream) else self.accept(configs)
            async with stream:
                # Sessions queued before serve began go first, in order; later ones are
                # started from the accepting callback itself (no wake-up of this loop each).
                while stream._queue:
                    start(stream._queue.popleft())
                stream._on_session = start
                try:
                    async for session in stream:
                        start(session)
                finally:
                    stream._on_session = None
            # Stopped by a shutdown: the sessions are closing; let the handlers see it out.
            if mine:
                await asyncio.gather(*mine, return_exceptions=True)
        except asyncio.CancelledError:
            for task in mine:
                task.cancel()
            if mine:
                await asyncio.gather(*mine, return_exceptions=True)
            raise
        return None

    async def _serve_session(self, session: Session, handler: Any) -> None:
        await _call(handler, "on_connected", session)
        # Looked up once per session, not per message.
        on_message = getattr(handler, "on_message", None)
        on_request = getattr(handler, "on_request", None)
        loop = asyncio.get_running_loop()
        me = asyncio.current_task(loop)
        # Work the protocol callback handed over, in arrival order: the rest of a handler that
        # suspended, or what its first step left to do (an error to report, a paused answer).
        later: deque[Coroutine[Any, Any, None]] = deque()
        idle = False

        def dispatch(message: Message) -> bool:
            # Runs a handler's first step right in the protocol callback while this loop waits
            # (one wake-up and one loop pass less per message); the handler runs as this task
            # (current_task() is it), so what it does is what it would do here.  Declines
            # (the message is queued as usual) unless this loop is idle with nothing pending.
            if not idle or later or me is None:
                return False
            # The packet's field and the message's flag read directly: the properties are a
            # Python call each, on every message.
            is_request = message._packet.packet_type is _REQUEST
            if not is_request and self._closing and session.state is not _OPEN:
                return True  # read by the close handshake, after reads stopped: dropped
            method = on_request if is_request else on_message
            if method is None:
                return False
            try:
                # Refuses (RuntimeError) when a task is running: this callback then came from
                # a task's own call (a handler's send that fed input), not from the loop.  One
                # call instead of asking current_task() first.
                _enter_task(loop, me)
            except RuntimeError:
                return False
            try:
                coro = method(session, message)
            except BaseException:
                _leave_task(loop, me)
                raise
            try:
                yielded = coro.send(None)
            except StopIteration as stop:
                if is_request and not message._responded:
                    result = stop.value
                    data = result if result is not None else b""
                    try:
                        if not session.try_respond(message, data):
                            later.append(_answer(handler, session, message, data))
                    except TransportError as exc:
                        later.append(_call(handler, "on_error", session, exc))
                return True
            except Exception as exc:
                _handler_failed(logger, "on_request" if is_request else "on_message", session,
                                exc)
                later.append(_call(handler, "on_error", session, exc))
            except BaseException as exc:
                # CancelledError and friends end this loop, as they would have raised here.
                later.append(_reraise(exc))
            else:
                rest = _resume(coro, yielded)
                later.append(
                    self._handle_request(session, handler, None, message, rest) if is_request
                    else _finish_message(handler, session, rest)
                )
            finally:
                _leave_task(loop, me)
            if later:
                self._serving(session, True)  # the rest is this loop's: a drain waits for it
            session.kick()
            return True

        take = session.receive_nowait
        session.dispatch = dispatch
        try:
            while True:
                while later:
                    await later.popleft()
                # Take what is already queued without a coroutine round trip per message; wait
                # (one wake-up per received batch) only when the queue is empty.
                message = take()
                if message is None:
                    if session.closed_event is not None or session.is_closed:
                        # Nothing queued and the session closing: receive() could only raise.
                        # A clean close ends here without making that error (one exception
                        # per served session less).
                        if session.error is None:
                            break
                        try:
                            message = await session.receive()
                        except TransportError as exc:
                            await _call(handler, "on_error", session, exc)
                            break
                    else:
                        idle = True
                        self._serving(session, False)
                        try:
                            await session.wait_inbox()
                        finally:
                            idle = False
                            self._serving(session, True)
                        continue
                if message.is_request:
                    await self._handle_request(session, handler, on_request, message)
                elif on_message is not None:
                    if self._closing and session.state is not _OPEN:
                        # Read by the close handshake after a graceful shutdown stopped new
                        # reads: a one-way message can no longer be answered; dropped.
                        continue
                    try:
                        await on_message(session, message)
                    except Exception as exc:
                        _handler_failed(logger, "on_message", session, exc)
                        await _call(handler, "on_error", session, exc)
        finally:
            self._served_ended(session)
            session.dispatch = None
            while later:
                later.popleft().close()
            await _call(handler, "on_disconnected", session, session.close_reason)

    async def _handle_request(
        self, session: Session, handler: Any, on_request: Any, message: Message,
        started: Awaitable[Any] | None = None,
    ) -> None:
        # started: the rest of an on_request the protocol callback began (see dispatch).
        if started is None and on_request is None:
            _no_request_handler(logger, session, message)
            return
        try:
            result = await (started if started is not None else on_request(session, message))
        except Exception as exc:
            _handler_failed(logger, "on_request", session, exc)
            await _call(handler, "on_error", session, exc)
            return
        if not message.responded:
            data = result if result is not None else b""
            try:
                if not session.try_respond(message, data):
                    await message.respond(data)
            except TransportError as exc:
                await _call(handler, "on_error", session, exc)

    # --- pools and metrics ----------------------------------------------------------------------

    @doc(docs.POOL, waits="waits", own="", nursery="")
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
                                             settings=settings, now=asyncio.get_running_loop().time)
        pool = SessionPool(self, config, machine, reconnect=check_pool_policy(reconnect),
                           **self._pool_settings())
        self._pools.add(pool)
        pool.start()
        try:
            await pool.wait_started()
        except BaseException:
            await pool.close()
            raise
        return pool

    # --- the backplane -------------------------------------------------------------------------

    def _start_backplane(self) -> None:
        """Start the link to Redis once, on the running loop (nothing without a backplane,
        after the shutdown, or outside a running loop: the next call starts it)."""
        cluster = self._cluster
        if cluster.node is None or cluster.link is not None or self._closing:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        assert cluster.settings is not None
        link = AsyncRedisLink(cluster.settings.url, cluster.node, self._on_envelope)
        cluster.link = link
        link.start()

    def _on_envelope(self, envelope: Envelope) -> None:
        targets = self._envelope_targets(envelope)
        if not targets:
            return
        task = asyncio.get_running_loop().create_task(self.broadcast(
            targets, envelope.payload, biz_type=envelope.biz_type,
            ext_header=envelope.ext_header))
        self._backplane_tasks.add(task)
        task.add_done_callback(self._backplane_tasks.discard)

    async def _stop_backplane(self) -> None:
        link, self._cluster.link = self._cluster.link, None
        if isinstance(link, AsyncRedisLink):
            await link.aclose()

    # --- shutdown ------------------------------------------------------------------------------

    async def _shut(self, timeout: float, *, drain: bool) -> ShutdownReport:
        if self._shutdown is not None:
            return await asyncio.shield(self._shutdown)
        loop = asyncio.get_running_loop()
        self._shutdown = loop.create_future()
        self._closing = True
        self._forevers.stop_all()
        try:
            report = await self._do_shutdown(loop, timeout, drain)
        except BaseException as exc:
            self._shutdown.set_exception(exc)
            self._shutdown.exception()
            raise
        self._shutdown.set_result(report)
        return report

    async def _do_shutdown(self, loop: asyncio.AbstractEventLoop, timeout: float,
                           drain: bool) -> ShutdownReport:
        start = loop.time()
        deadline = start + max(0.0, timeout)
        # Reconnecting sessions stop their supervisors first (their sessions close below).
        supervisors = [t for t in self._run_shutdown_closers() if isinstance(t, asyncio.Task)]
        if supervisors:
            await asyncio.gather(*supervisors, return_exceptions=True)
        # No more envelopes from other nodes; deliveries under way finish with the drain.
        await self._stop_backplane()
        for stream in list(self._streams):
            await stream.aclose()
        # Pools stop opening and fail their waiting leases; their sessions close with the rest.
        pools = list(self._pools)
        for pool in pools:
            pool._begin_close()
        for pool in pools:
            await pool.wait_tasks()
        sessions, flushed_before = self._shutdown_sessions()
        if drain and sessions:
            await self._drain(sessions, deadline, loop)
        self._close_sessions(sessions)
        if sessions:
            await _bounded(asyncio.gather(*(s.wait_closed() for s in sessions)), deadline, loop)
        self._abort_sessions(sessions)
        for quic in self._quic_listeners:
            quic.abort()
        # Aborted sockets report connection_lost on the next loop iteration; wait for that so
        # nothing is left open when the caller closes the loop.
        waits = [s.wait_closed() for s in sessions]
        waits += [q.wait_closed() for q in self._quic_listeners]
        if waits:
            await _bounded(asyncio.gather(*waits), loop.time() + 1.0, loop)
        self._forget_quic_listeners()
        tasks = list(self._handler_tasks)
        for task in tasks:
            if not task.done():
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return self._finish_shutdown(self._shutdown_figures(sessions, flushed_before),
                                     loop.time() - start)


    async def _drain(self, sessions: list[Session], deadline: float,
                     loop: asyncio.AbstractEventLoop) -> None:
        # Until _drain_finished or the deadline; woken when a serve loop goes idle or ends
        # (_serving), or a session's requests in flight are done.
        wake = asyncio.Event()
        self._drain_wake = wake.set
        try:
            while not self._drain_finished(sessions, self._serve_working()):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                wake.clear()
                waits: list[asyncio.Task[Any]] = [loop.create_task(wake.wait())]
                waits += [loop.create_task(s.wait_idle()) for s in sessions
                          if s.pending_work and not s.is_closed]
                try:
                    await asyncio.wait(waits, timeout=remaining,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in waits:
                        task.cancel()
                    await asyncio.gather(*waits, return_exceptions=True)
        finally:
            self._drain_wake = None


async def _bounded(awaitable: Any, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
    """Await *awaitable* until *deadline* (loop time); give up quietly after it."""
    remaining = deadline - loop.time()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(awaitable, max(remaining, 0.0))


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Go on with *coro*, which already ran up to yielding *yielded*, inside the awaiting
    task: what ``await coro`` would do had the task started it (values and exceptions the
    task sends are passed on; the coroutine's return value is returned)."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # every exception the task throws goes to the coroutine
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _finish_message(handler: Any, session: Session, rest: Awaitable[Any]) -> None:
    """The rest of an ``on_message`` the protocol callback began; errors as :func:`_call`."""
    try:
        await rest
    except Exception as exc:
        _handler_failed(logger, "on_message", session, exc)
        await _call(handler, "on_error", session, exc)


async def _reraise(exc: BaseException) -> None:
    """Raise *exc* in the awaiting task."""
    raise exc


async def _answer(handler: Any, session: Session, message: Message, data: Buffer) -> None:
    """Send an answer that had to wait (the send side was paused)."""
    try:
        await message.respond(data)
    except TransportError as exc:
        await _call(handler, "on_error", session, exc)
