"""The application's entry point: :class:`Transport`, its builder, :class:`SessionStream` and
:class:`ShutdownReport` -- blocking calls with timeouts, safe from any thread."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Literal, overload

from .._driver import docs
from .._driver.backplane import ThreadedRedisLink
from .._driver.builder import DEFAULT_SHUTDOWN_TIMEOUT, ShutdownReport, TransportBuilderBase
from .._driver.docs import doc
from .._driver.forever import check_policy
from .._driver.pool import check_pool_policy
from .._driver.reconnect import resolve_policy
from .._driver.transport import (
    SessionStreamBase,
    TransportBase,
    TransportDefaults,
    _datagram_server,
    _handler_failed,
    _no_request_handler,
    _send_result,
    _transport_args,
)
from .._driver.workers import worker_count
from ..core.backplane import Envelope
from ..core.config import ConnectionConfig, ServerConfig, ServerConfigLike, to_config
from ..core.connection import Connection
from ..core.errors import TransportConnectionError, TransportError, TransportTimeoutError
from ..core.expansion import ExpansionStrategy
from ..core.groups import check_group
from ..core.metrics import MetricsSnapshot
from ..core.packet import Buffer
from ..core.pool import PoolStatus
from ..core.reconnect import ReconnectPolicy
from ..core.session import SessionState
from ._channels import (
    QuicClientChannel,
    QuicListener,
    StreamChannel,
    StreamListener,
    open_quic_listener,
    open_stream_listener,
    tune_stream,
)
from ._forever import ConnectForever
from ._loop import IOLoop, wait_until
from ._message import Message
from ._pool import SessionPool
from ._reconnect import ReconnectingSession
from ._session import Session, serving_thread

__all__ = ["SessionStream", "ShutdownReport", "Transport", "TransportBuilder"]

logger = logging.getLogger("msgtrans.io_sync")

_SYNC_LIFETIME = """``with transport:``
shuts it down gracefully at the end.  The background work (sockets, QUIC timers,
keepalives) runs in one I/O thread, started by the first :meth:`connect` or :meth:`accept`
and joined by the shutdown; :meth:`serve` adds a small handler pool, joined when it
returns."""
_SYNC_RESOLVE = """
        Name resolution runs in the calling thread and is not bounded by it."""

#: Handler threads of one :meth:`Transport.serve` unless it says otherwise (``threads=``).
DEFAULT_SERVE_THREADS = 8
#: The old name of :data:`DEFAULT_SERVE_THREADS` (``serve(workers=)`` meant threads before
#: issue 14 made it worker processes, as on every backend).
DEFAULT_SERVE_WORKERS = DEFAULT_SERVE_THREADS
#: Seconds a delivery from the backplane waits for room in one session's send queue before that
#: session's copy is dropped (the delivery thread serves every session of the node).
BACKPLANE_SEND_TIMEOUT = 1.0
#: Threads one :meth:`Transport.serve` may add beyond its workers while handlers wait for room
#: in a send queue (see :class:`_Workers`).
MAX_LENT_WORKERS = 256


class TransportBuilder(TransportBuilderBase):
    """Builds a :class:`Transport`: ``Transport.builder().request_timeout(5).build()``.

    Every setter checks its arguments at once and returns the builder; ``build()`` checks the
    combination (the same setting given two ways is refused), ``settings()`` shows the effective
    settings as plain data (every method, default and conflict: "The transport builder" in
    docs/configuration.md).  Defaults: request timeout 10 s (the wire spec's), connect timeout
    from each config (10 s unless the URL or config says otherwise), graceful shutdown timeout
    5 s for ``with``.
    """

    def shutdown_timeout(self, seconds: float) -> TransportBuilder:
        """Seconds the graceful shutdown at the end of ``with`` may take (default 5).

        Raises:
            ConfigurationError: negative or not a number.
        """
        return super().shutdown_timeout(seconds)

    def build(self) -> Transport:
        """Return the transport.

        Raises:
            ConfigurationError: a setting or a combination is invalid (``field`` names it).
        """
        return Transport(**_transport_args(self))


@doc(
    docs.SESSION_STREAM, kind="an iterator and a context manager",
    safety="  Safe from any thread.",
)
class SessionStream(SessionStreamBase[Session]):

    def __init__(self, transport: Transport, configs: Iterable[Any]) -> None:
        super().__init__(configs)
        self._transport = transport
        self._loop: IOLoop | None = None
        # Its own condition on the transport lock: the thread waiting in accept() is woken by
        # a session delivered or the stream closed, not by every event of every session.
        self._cond: threading.Condition | None = None
        self._stream_listeners: list[StreamListener] = []
        self._quic_listeners: list[QuicListener] = []

    def start(self) -> None:
        """Open every listener.

        Raises:
            TransportError: an address cannot be bound; listeners opened so far are closed.
            ConfigurationError: a certificate cannot be loaded.
        """
        if self._started:
            return
        self._started = True
        transport = self._transport
        transport._check_open("accept")
        loop = self._loop = transport._ensure_loop()
        self._cond = threading.Condition(loop.lock)
        # A server node hears the other nodes from the moment it accepts sessions.
        transport._start_backplane()
        settings = transport._settings
        with loop.lock:
            transport._streams.add(self)
        try:
            for config in self._configs:
                datagram = _datagram_server(config)
                if datagram is not None:
                    quic = open_quic_listener(loop, datagram, transport._new_session,
                                              self._deliver, settings)
                    with loop.lock:
                        transport._quic_listeners.append(quic)
                    self._quic_listeners.append(quic)
                    loop.submit(quic.start)
                    self.addresses.append(quic.address)
                else:
                    listener = open_stream_listener(loop, config, transport._new_session,
                                                    self._deliver, settings,
                                                    on_refused=transport._refused)
                    self._stream_listeners.append(listener)
                    loop.submit(listener.start)
                    self.addresses.append(listener.address)
        except BaseException:
            self.close()
            raise

    def _deliver(self, session: Session) -> None:
        # I/O thread, lock held.
        if self._turned_away(session):
            return
        self._queue.append(session)
        assert self._cond is not None
        self._cond.notify_all()

    def close(self) -> None:
        """Stop accepting: close the listening sockets and end the iteration."""
        loop = self._loop
        if self._closed or loop is None:
            self._closed = True
            return
        with loop.lock:
            self._closed = True
            self._transport._streams.discard(self)
            for listener in self._stream_listeners:
                loop.submit(listener.close_now)
            for quic in self._quic_listeners:
                quic.close()  # the UDP socket stays for its sessions until the shutdown
            assert self._cond is not None
            self._cond.notify_all()

    def accept(self, timeout: float | None = None) -> Session:
        """Return the next accepted session (handshake complete).

        Raises:
            TransportTimeoutError: none came within *timeout* seconds.
            TransportConnectionError: the stream is closed (code ``connection.closed``).
        """
        self.start()
        loop, cond = self._loop, self._cond
        assert loop is not None and cond is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        with loop.lock:
            if not wait_until(cond, lambda: bool(self._queue) or self._closed, deadline):
                raise TransportTimeoutError("accept", timeout or 0.0)
            if not self._queue:
                raise TransportConnectionError(
                    "the session stream is closed", code="connection.closed", retryable=False,
                    operation="accept")
            return self._queue.popleft()

    def __enter__(self) -> SessionStream:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> SessionStream:
        return self

    def __next__(self) -> Session:
        try:
            return self.accept()
        except TransportConnectionError:
            raise StopIteration from None


class _Workers:
    """The threads of one :meth:`Transport.serve`: *workers* of them run tasks, and a thread
    whose handler waits for room in a send queue (its peer reads nothing) lends its place for
    as long as it waits (:meth:`lend`): another thread takes the queued tasks, so a peer that
    never reads holds one thread for at most the ``send_timeout`` (then its session is aborted)
    and never a worker the other sessions need.  At most *workers* + :data:`MAX_LENT_WORKERS`
    threads; threads above *workers* end once idle.

    Its own lock, taken after the transport lock (a send waits with that one held), never
    before it.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._tasks: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a task
        self._lent = 0  # threads whose handler waits in a send (their place is lent)
        self._closed = False

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on a thread of the pool.

        Raises:
            RuntimeError: the pool is shut down.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("the serve pool is shut down")
            self._tasks.append((fn, args))
            if self._idle:
                self._cond.notify()
            else:
                self._grow()

    def _grow(self) -> None:
        # Lock held: a thread more when fewer than `workers` are running tasks.
        alive = len(self._threads)
        if alive - self._lent < self._workers and alive < self._workers + MAX_LENT_WORKERS:
            thread = threading.Thread(target=self._work, name=f"{self._name}-{alive}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    @contextlib.contextmanager
    def lend(self) -> Iterator[None]:
        """While in this block the calling pool thread does not count as a worker."""
        with self._cond:
            self._lent += 1
            if self._tasks and not self._idle:
                self._grow()
        try:
            yield
        finally:
            with self._cond:
                self._lent -= 1
                if self._idle and len(self._threads) - self._lent > self._workers:
                    self._cond.notify()  # one thread too many now: an idle one ends

    def _work(self) -> None:
        serving_thread.pool = self
        me = threading.current_thread()
        cond = self._cond
        while True:
            with cond:
                while not self._tasks:
                    # More threads than workers (a lent one came back): this one ends.
                    if self._closed or len(self._threads) - self._lent > self._workers:
                        self._threads.remove(me)
                        return
                    self._idle += 1
                    cond.wait()
                    self._idle -= 1
                fn, args = self._tasks.popleft()
            try:
                fn(*args)
            except BaseException:  # a task's errors are its own (logged by it)
                logger.exception("serve task failed")
            # Not kept while this thread waits for the next task: the arguments name a
            # session, which would then outlive its connection for as long as the pool ran.
            del fn, args

    def shutdown(self) -> None:
        """Run the queued tasks, then end and join every thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = list(self._threads)
        me = threading.current_thread()
        for thread in threads:
            if thread is not me:
                thread.join()


class _Served:
    """What :class:`_ServeRun` knows of one session."""

    __slots__ = ("busy", "done", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.busy = False
        self.done = False


class _ServeRun:
    """One :meth:`Transport.serve` call: a small thread pool running the handler.

    A session's messages are handled one after another, in order, by at most one worker at a
    time (a drain task is submitted when a message arrives and none is running), so any number
    of sessions share the pool and a slow handler holds up only its own session.
    """

    def __init__(self, transport: Transport, loop: IOLoop, handler: Any, workers: int) -> None:
        self._transport = transport
        self._loop = loop
        self._handler = handler
        self._pool = _Workers(workers, "msgtrans-serve")
        # The sessions being served: each leaves once its handler saw it out (a list kept
        # every session, its connection and buffers, for as long as serve() ran).
        self._served: set[_Served] = set()
        self.finished = threading.Event()

    def add(self, session: Session) -> None:
        """Serve *session* (any thread)."""
        served = _Served(session)
        with self._loop.lock:
            self._served.add(served)
            session.inbox_listener = lambda: self._kick(served)
            served.busy = True
            self._pool.submit(self._run, served, True)

    def _kick(self, served: _Served) -> None:
        # Lock held (I/O thread or a receiving thread).
        if not served.busy and not served.done:
            served.busy = True
            try:
                self._pool.submit(self._run, served, False)
            except RuntimeError:  # the pool is shutting down: the session is being dropped
                served.busy = False

    def _run(self, served: _Served, first: bool) -> None:
        session = served.session
        handler = self._handler
        lock = self._loop.lock
        # Looked up once per drain task, not once per message.
        on_message = getattr(handler, "on_message", None)
        handle_request = self._handle_request
        lock_cond = self._loop.cond
        if first:
            _call(handler, "on_connected", session)
        while True:
            # Every queued message in one lock round trip; the handler runs without the lock,
            # so the I/O thread queues the next batch meanwhile.
            with lock:
                messages = session.take_messages()
                if not messages:
                    if not (session.is_closed or session.closed_event is not None):
                        served.busy = False
                        if self._transport._closing:
                            lock_cond.notify_all()  # a graceful shutdown waits for this
                        return
                    break
                # Closed by a shutdown: what arrives now came after its reads stopped (the
                # close handshake reads again) and cannot be answered one-way; requests can.
                late = self._transport._closing and session.state is not SessionState.OPEN
            for message in messages:
                if late and not message.is_request:
                    continue
                if message.is_request:
                    handle_request(session, message)
                elif on_message is not None:
                    try:
                        on_message(session, message)
                    except Exception as exc:
                        _handler_failed(logger, "on_message", session, exc)
                        _call(handler, "on_error", session, exc)
        if session.error is not None:
            _call(handler, "on_error", session, session.error.with_operation("receive"))
        _call(handler, "on_disconnected", session, session.close_reason)
        with lock:
            served.done = True
            self._served.discard(served)
            session.inbox_listener = None
            self._loop.cond.notify_all()

    def _handle_request(self, session: Session, message: Message) -> None:
        on_request = getattr(self._handler, "on_request", None)
        if on_request is None:
            _no_request_handler(logger, session, message)
            return
        try:
            result = on_request(session, message)
        except Exception as exc:
            _handler_failed(logger, "on_request", session, exc)
            _call(self._handler, "on_error", session, exc)
            return
        if not message.responded:
            try:
                message.respond(result if result is not None else b"")
            except TransportError as exc:
                _call(self._handler, "on_error", session, exc)

    def working(self) -> set[int]:
        """The ids of the sessions this run serves that have messages queued or in hand
        (lock held)."""
        return {s.session.id for s in self._served
                if not s.done and (s.busy or s.session._inbox)}

    def wait_sessions(self) -> None:
        """Wait until every served session ended and its handler saw it out."""
        with self._loop.lock:
            wait_until(self._loop.cond, lambda: all(s.done for s in self._served), None)

    def close(self) -> None:
        """Join the pool's threads."""
        self._pool.shutdown()
        self.finished.set()


@doc(
    docs.TRANSPORT, runtime="with blocking calls, safe from any thread", nursery="",
    with_="with", lifetime=_SYNC_LIFETIME,
)
class Transport(TransportBase[Session, SessionPool, QuicListener]):

    def __init__(
        self,
        *,
        settings: dict[str, Any] | None = None,
        connect_timeout: float | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        memory_limit: int | None = None,
        defaults: TransportDefaults | None = None,
    ) -> None:
        # The base's session table, counters, pools and QUIC listeners are guarded by the
        # loop's lock.
        super().__init__(settings=settings, connect_timeout=connect_timeout,
                         shutdown_timeout=shutdown_timeout, memory_limit=memory_limit,
                         defaults=defaults)
        self._state_lock = threading.Lock()  # the loop's creation and the shutdown's start
        self._loop: IOLoop | None = None
        # Guarded by the loop's lock:
        self._streams: set[SessionStream] = set()
        self._serve_runs: set[_ServeRun] = set()
        self._shutdown: Future[ShutdownReport] | None = None

    @staticmethod
    def builder() -> TransportBuilder:
        """Return a :class:`TransportBuilder` with the defaults."""
        return TransportBuilder()

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.graceful_shutdown(self._shutdown_timeout)

    # --- sessions ------------------------------------------------------------------------------

    def _ensure_loop(self) -> IOLoop:
        with self._state_lock:
            self._check_open("connect")
            if self._loop is None:
                self._loop = IOLoop(name=f"msgtrans-io-{id(self):x}")
                # Sessions join groups from any thread; the backplane's threads use it too.
                self._cluster.use_lock(self._loop.lock)
            return self._loop

    def _make_session(self, connection: Connection, session_id: int) -> Session:
        assert self._loop is not None
        return Session(connection, session_id, self._loop, on_finished=self._forget,
                       metrics=self._metrics)

    def _new_session(self, make: Callable[[int], Connection]) -> Session:
        loop = self._loop
        assert loop is not None
        with loop.lock:
            return super()._new_session(make)

    def sessions(self) -> list[Session]:
        """The open sessions (handshake complete, not closed), oldest first."""
        loop = self._loop
        if loop is None:
            return []
        with loop.lock:
            return super().sessions()

    @doc(docs.CONNECT_FOREVER, kind="an iterator", loop="for", handed="a thread",
         stop="``StopIteration``", close="sessions.close()", with_="with", nursery="")
    def connect_forever(self, target: str | ConnectionConfig, *,
                        policy: ReconnectPolicy | None = None,
                        timeout: float | None = None) -> ConnectForever:
        self._check_open("connect")
        return ConnectForever(self, to_config(target), check_policy(policy), timeout)
    @overload
    def connect(self, target: str | ConnectionConfig, *, timeout: float | None = None,
                reconnect: Literal[False] | None = None) -> Session: ...

    @overload
    def connect(self, target: str | ConnectionConfig, *, timeout: float | None = None,
                reconnect: Literal[True] | ReconnectPolicy) -> ReconnectingSession: ...

    @doc(docs.CONNECT, own="", nursery="", timeout=_SYNC_RESOLVE)
    def connect(self, target: str | ConnectionConfig, *, timeout: float | None = None,
                reconnect: bool | ReconnectPolicy | None = None
                ) -> Session | ReconnectingSession:
        if reconnect:
            return self._connect_reconnecting(target, timeout, reconnect)
        self._check_open("connect")
        config = to_config(target)
        limit = self._connect_limit(config, timeout)
        deadline = time.monotonic() + limit
        loop = self._ensure_loop()
        session: Session | None = None
        try:
            if config.transport_kind == "datagram":
                infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_DGRAM)
                family, addr = infos[0][0], infos[0][4]
                session = self._new_session(self._connection(config, addr))
                udp = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    udp.setblocking(False)
                    udp.connect(addr)
                except BaseException:
                    udp.close()
                    raise
                with loop.lock:
                    channel: QuicClientChannel | StreamChannel = QuicClientChannel(
                        loop, session, udp, addr)
            else:
                session = self._new_session(self._connection(config))
                # A blocking connect bounded by the time left (every address in turn, as
                # asyncio does); the socket goes non-blocking to the loop once connected.
                sock = socket.create_connection(
                    (config.host, config.port), timeout=max(deadline - time.monotonic(), 0.001))
                try:
                    sock.setblocking(False)
                    tune_stream(sock, config)
                except BaseException:
                    sock.close()
                    raise
                with loop.lock:
                    channel = StreamChannel(loop, session, sock)
            loop.submit(channel.start)
        except OSError as exc:
            error = self._connect_error(
                exc, config, session, timeout=limit if isinstance(exc, TimeoutError) else None,
                count=True)
            if session is not None:
                self._abandon(session, "connect failed")
            raise error from None
        except BaseException:
            if session is not None:
                self._abandon(session, "abandoned during connect")
            raise
        try:
            with loop.lock:
                if session.wait_established(deadline):
                    return session
        except BaseException:
            self._abandon(session, "abandoned during connect")
            raise
        self._abandon(session, "abandoned: connect timed out")
        raise self._connect_error(TimeoutError(), config, session, timeout=limit,
                                  count=True) from None

    def _connect_reconnecting(self, target: str | ConnectionConfig, timeout: float | None,
                              reconnect: bool | ReconnectPolicy) -> ReconnectingSession:
        policy = resolve_policy(reconnect)
        assert policy is not None
        config = to_config(target)
        first: Session = self.connect(config, timeout=timeout)
        reconnecting = ReconnectingSession(
            first, policy, connect=lambda: self.connect(config, timeout=timeout),
            metrics=self._metrics, on_closed=self._forget_on_shutdown)
        self._on_shutdown(reconnecting, reconnecting._shutdown)
        return reconnecting

    def _abandon(self, session: Session, reason: str) -> None:
        """Abort a session whose connect failed and wait (bounded) until the I/O thread
        released its socket, so a failed connect leaves nothing behind."""
        session.abort(reason)
        loop = self._loop
        if loop is not None and not loop.in_loop_thread():
            with loop.lock:
                wait_until(loop.cond, lambda: session.is_closed, time.monotonic() + 1.0)

    # --- messages ------------------------------------------------------------------------------

    def send(self, session: Session, data: Buffer, *, biz_type: int = 0,
             ext_header: Buffer = b"", timeout: float | None = None) -> None:
        """Send a one-way message on *session* (see :meth:`Session.send`)."""
        session.send(data, biz_type=biz_type, ext_header=ext_header, timeout=timeout)

    def request(self, session: Session, data: Buffer, *, biz_type: int = 0,
                ext_header: Buffer = b"", timeout: float | None = None) -> Message:
        """Send a request on *session* and return the response (see :meth:`Session.request`)."""
        return session.request(data, biz_type=biz_type, ext_header=ext_header, timeout=timeout)

    def receive(self, session: Session, timeout: float | None = None) -> Message:
        """Return the next one-way message or request on *session* (see
        :meth:`Session.receive`)."""
        return session.receive(timeout)

    def message_stream(self, session: Session,
                       timeout: float | None = None) -> Iterator[Message]:
        """Yield the messages and requests of *session* until it closes (see
        :meth:`Session.messages`).

        Raises:
            TransportError: the session ended with an error (a clean close just ends the
                iteration).
        """
        return session.messages(timeout)

    def broadcast(self, sessions: Iterable[Session], data: Buffer, *, biz_type: int = 0,
                  ext_header: Buffer = b"", timeout: float | None = None,
                  ) -> list[TransportError | None]:
        """Send one one-way message to each of *sessions*; return one result per session, in
        order: ``None`` when it was queued, else the :class:`TransportError`.

        The sends are queued one after another; *timeout* bounds each one's wait on
        backpressure (default: no limit), so one stalled peer cannot hold up the rest for
        ever.
        """
        out: list[TransportError | None] = []
        for session in sessions:
            try:
                session.send(data, biz_type=biz_type, ext_header=ext_header, timeout=timeout)
            except Exception as exc:
                out.append(_send_result(exc, session))
            else:
                out.append(None)
        return out

    def send_to_all(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"",
                    timeout: float | None = None) -> list[TransportError | None]:
        """:meth:`broadcast` to every open session of this transport (in :meth:`sessions`
        order) and, with a backplane (``builder.backplane``), to every session of every other
        node; return this transport's per-session results (the other nodes deliver on their
        own: see ``stats().backplane``)."""
        self._start_backplane()
        self._cluster.publish_all(data, biz_type, ext_header)
        return self.broadcast(self.sessions(), data, biz_type=biz_type, ext_header=ext_header,
                              timeout=timeout)

    def send_to_group(self, group: str, data: Buffer, *, biz_type: int = 0,
                      ext_header: Buffer = b"", timeout: float | None = None,
                      ) -> list[TransportError | None]:
        """Send a one-way message to every session that joined *group* (``session.join``):
        this transport's members get it as :meth:`broadcast` sends it (one result per member,
        in the order they joined; *timeout* bounds each one's wait on backpressure) and, with
        a backplane, every other node delivers it to its own members.

        Raises:
            ConfigurationError: *group* is not a valid group name.
        """
        check_group(group)
        self._start_backplane()
        self._cluster.publish_group(group, data, biz_type, ext_header)
        return self.broadcast(self.group_members(group), data, biz_type=biz_type,
                              ext_header=ext_header, timeout=timeout)

    def send_to_session(self, session: int | str, data: Buffer, *, biz_type: int = 0,
                        ext_header: Buffer = b"", timeout: float | None = None) -> None:
        """Send a one-way message to one session by reference: this transport's session
        ``id`` (an ``int``), or any node's ``session.cluster_id`` (``"NODE/ID"``; another
        node's is reached through the backplane, at most once and without an answer).

        Raises:
            ConfigurationError: *session* is not a session reference.
            TransportConnectionError: no such open session here, or it is on another node
                and there is no backplane (code ``connection.closed``); what the session's
                ``send`` raises.
            ResourceError: the backplane's buffer is full (``resource.exhausted``).
        """
        local = self._session_target(session, data, biz_type, ext_header)
        if local is not None:
            local.send(data, biz_type=biz_type, ext_header=ext_header, timeout=timeout)

    def group_members(self, group: str) -> list[Session]:
        """The open sessions of this transport in *group*, in the order they joined."""
        loop = self._loop
        with loop.lock if loop is not None else contextlib.nullcontext():
            return super().group_members(group)

    # --- the backplane -------------------------------------------------------------------------

    def _start_backplane(self) -> None:
        """Start the link to Redis once: redis-py's blocking client in two threads, under
        this transport's I/O lock (nothing without a backplane or after the shutdown)."""
        cluster = self._cluster
        if cluster.node is None or cluster.link is not None or self._closing:
            return
        loop = self._ensure_loop()
        with loop.lock:
            if cluster.link is not None:
                return
            assert cluster.settings is not None
            link = ThreadedRedisLink(cluster.settings.url, cluster.node, self._on_envelope,
                                     lock=loop.lock)
            cluster.link = link
        link.start()

    def _on_envelope(self, envelope: Envelope) -> None:
        # The link's reader thread, the lock not held: a slow session holds this delivery
        # for at most BACKPLANE_SEND_TIMEOUT, never the others' for ever.
        loop = self._loop
        if loop is None or self._closing:
            return
        with loop.lock:
            targets = self._envelope_targets(envelope)
        if targets:
            self.broadcast(targets, envelope.payload, biz_type=envelope.biz_type,
                           ext_header=envelope.ext_header, timeout=BACKPLANE_SEND_TIMEOUT)

    def _stop_backplane(self) -> None:
        link, self._cluster.link = self._cluster.link, None
        if isinstance(link, ThreadedRedisLink):
            link.close()

    # --- servers -------------------------------------------------------------------------------

    def accept(self, configs: ServerConfigLike | Iterable[ServerConfigLike]) -> SessionStream:
        """Listen on one config or on every config of a list (``TcpServerConfig``,
        ``WebSocketServerConfig``, ``QuicServerConfig`` or server URLs) and return the stream
        of accepted sessions; use it as ``with transport.accept("tcp://...") as sessions: for
        session in sessions: ...``.  The builder's transport-wide settings (``max_payload``,
        ``max_sessions``, ``handshake_timeout``...) apply to each config.

        Raises:
            ConfigurationError: a config is invalid, or sets a field the builder set to another
                value.
            (When entered) TransportError: an address cannot be bound.
        """
        return SessionStream(self, self._server_configs(configs))

    @doc(docs.SERVE, kind="",
         until="; block until the transport shuts down (from another thread) and the"
               " handlers saw their sessions out",
         runs="They run in a pool of *threads* threads (never the I/O thread), sessions"
              " concurrently, each one's messages in order.")
    def serve(self, configs: Iterable[ServerConfig | str] | SessionStream, handler: Any, *,
              threads: int = DEFAULT_SERVE_THREADS,
              workers: int | None = None) -> ShutdownReport | None:
        count = worker_count(workers, self._defaults.workers)
        if count > 1:
            from ._workers import serve_workers

            return serve_workers(self, configs, handler, count, threads)
        stream = configs if isinstance(configs, SessionStream) else self.accept(configs)
        stream.start()
        loop = self._loop
        assert loop is not None
        run = _ServeRun(self, loop, handler, threads)
        with loop.lock:
            self._serve_runs.add(run)
        try:
            with stream:
                for session in stream:
                    run.add(session)
            # Stopped by a shutdown: the sessions are closing; let the handlers see it out.
            run.wait_sessions()
        finally:
            run.close()
            with loop.lock:
                self._serve_runs.discard(run)
        return None

    # --- shutdown ------------------------------------------------------------------------------

    # --- pools and metrics ----------------------------------------------------------------------

    @doc(docs.POOL, waits="blocks", own="", nursery="")
    def pool(
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
                                             settings=settings, now=time.monotonic)
        loop = self._ensure_loop()
        pool = SessionPool(self, config, machine, loop=loop, reconnect=check_pool_policy(reconnect),
                           **self._pool_settings())
        with loop.lock:
            self._pools.add(pool)
        pool.start()
        try:
            pool.wait_started()
        except BaseException:
            pool.close()
            raise
        return pool

    def pool_status(self) -> PoolStatus:
        """The statuses of every open pool summed: connection, lease and step counts add up
        (steps of closed pools included, so they never go down), utilisation is weighted by
        each pool's lease capacity, ``last_decisions`` are the newest 16 of all pools."""
        loop = self._loop
        with loop.lock if loop is not None else contextlib.nullcontext():
            return super().pool_status()

    def stats(self) -> MetricsSnapshot:
        """Return every metric now, as plain immutable data (``.as_dict()`` for JSON): live
        sessions by protocol and state, sessions opened and closed, messages and payload bytes
        in and out, errors by ``error_code``, the request latency histogram, pool expansions
        and shrinks by trigger, and the summed :meth:`pool_status` once a pool was made."""
        loop = self._loop
        with loop.lock if loop is not None else contextlib.nullcontext():
            return super().stats()

    def graceful_shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> ShutdownReport:
        """Shut down: stop accepting, let requests in flight finish and queued messages leave
        until *timeout*, close every session with its protocol's close (WebSocket 1001, QUIC
        CONNECTION_CLOSE, TCP FIN), then drop whatever is left and stop the I/O thread.
        Calling it again (from any thread) returns the first call's report.

        Args:
            timeout: seconds for all of it (default 5.0).

        Returns:
            the :class:`ShutdownReport`.
        """
        return self._shut(timeout, drain=True)

    def shutdown(self, timeout: float = 1.0) -> ShutdownReport:
        """Shut down without waiting for requests in flight: close every session at once with
        its protocol's close, wait at most *timeout* seconds (default 1.0), drop the rest.

        Returns:
            the :class:`ShutdownReport`.
        """
        return self._shut(timeout, drain=False)

    def _drained(self, sessions: list[Session]) -> bool:
        # Lock held.  Graceful (the same on every backend): new reads stop, every message
        # read is handed to serve's handler and its answer queued, requests in flight both
        # ways are answered; the close then flushes what is queued.
        working: set[int] = set()
        for run in self._serve_runs:
            working |= run.working()
        return self._drain_finished(sessions, working)

    def _shut(self, timeout: float, *, drain: bool) -> ShutdownReport:
        with self._state_lock:
            first = self._shutdown is None
            if first:
                self._shutdown = Future()
                self._closing = True
            future = self._shutdown
            assert future is not None
        if not first:
            return future.result()
        self._forevers.stop_all()
        try:
            report = self._do_shutdown(timeout, drain)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        future.set_result(report)
        return report

    def _do_shutdown(self, timeout: float, drain: bool) -> ShutdownReport:
        start = time.monotonic()
        deadline = start + max(0.0, timeout)
        loop = self._loop
        if loop is None:
            return self._finish_shutdown((0, 0, 0), time.monotonic() - start)
        # Reconnecting sessions stop reconnecting; their threads end once their sessions,
        # closed below, are over.
        supervisors = [t for t in self._run_shutdown_closers()
                       if isinstance(t, threading.Thread)]
        # No more envelopes from other nodes.
        self._stop_backplane()
        for stream in list(self._streams):
            stream.close()
        with loop.lock:
            # Pools first: their waiting leases fail and their opens stop; their sessions are
            # the transport's and close with the rest below.
            pools = list(self._pools)
            for pool in pools:
                pool._begin_close()
        for pool in pools:
            pool.wait_tasks(0.5)
        with loop.lock:
            sessions, flushed_before = self._shutdown_sessions()
            cond = loop.cond
            if drain and sessions:
                wait_until(cond, lambda: self._drained(sessions), deadline)
            self._close_sessions(sessions)
            wait_until(cond, lambda: all(s.is_closed for s in sessions), deadline)
            self._abort_sessions(sessions)
            for quic in self._quic_listeners:
                loop.submit(quic.close_now)
            self._count_quic_refusals()  # before the listeners are forgotten
            # The I/O thread releases aborted sockets on its next turn; wait for that.
            wait_until(cond, lambda: all(s.is_closed for s in sessions)
                       and all(q.closed for q in self._quic_listeners),
                       time.monotonic() + 1.0)
            self._quic_listeners.clear()
            self._quic_refused.clear()
            runs = list(self._serve_runs)
        me_thread = threading.current_thread()
        for thread in supervisors:
            if thread is not me_thread:
                thread.join(max(deadline - time.monotonic(), 0.0) + 1.0)
        # Whatever is still open (a connect racing the shutdown) is closed by the loop's end.
        loop.stop()
        me = threading.current_thread().name
        for run in runs:
            if not me.startswith("msgtrans-serve"):  # a handler cannot wait for its own pool
                run.finished.wait(max(deadline - time.monotonic(), 0.0) + 1.0)
        with loop.lock:
            figures = self._shutdown_figures(sessions, flushed_before)
        return self._finish_shutdown(figures, time.monotonic() - start)


def _call(handler: Any, name: str, *args: Any) -> None:
    """Call the handler's optional method *name*; what it raises is logged and given to
    ``on_error`` (contained: it never ends the session or the server)."""
    method = getattr(handler, name, None)
    if method is None:
        return
    try:
        method(*args)
    except Exception as exc:
        if _handler_failed(logger, name, args[0], exc):
            _call(handler, "on_error", args[0], exc)
