"""The awaitable face the asyncio and trio transports share: the message methods that only
hand over to a session (``send``, ``request``, ``receive``, ``message_stream``,
``send_to_all``), ``accept``, the two shutdowns, and the session stream's context-manager and
iterator protocol.

These are coroutines, unlike the rest of :mod:`msgtrans._driver`, but they await nothing but the
backend's own methods (a session's ``send``, the transport's ``broadcast`` and ``_shut``, the
stream's ``start`` and ``aclose``): no event loop's API, so one text serves both async backends.
The blocking backend has its own, with timeouts where these await.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..core.config import QuicServerConfig, ServerConfig, ServerConfigLike
from ..core.errors import TransportError
from ..core.groups import check_group
from ..core.packet import Buffer
from .builder import DEFAULT_SHUTDOWN_TIMEOUT
from .cluster import ClusterHub
from .transport import _datagram_server, _handler_failed

M = TypeVar("M")
M_co = TypeVar("M_co", covariant=True)
R = TypeVar("R")
St = TypeVar("St")
_T = TypeVar("_T")


class _AsyncSession(Protocol[M_co]):
    """What the facade needs of a backend's session."""

    @property
    def error(self) -> TransportError | None: ...

    async def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"") -> None:
        ...

    async def request(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"",
                      timeout: float | None = None) -> M_co: ...

    async def receive(self) -> M_co: ...


S = TypeVar("S", bound=_AsyncSession[Any])


class AsyncStreamFacade:
    """A backend's ``SessionStream`` as an async context manager and iterator: ``start`` opens
    the listeners, ``aclose`` stops accepting.  The backend supplies ``_open_stream(config)``
    and ``_open_quic(config)`` (a started listener each), ``_checkpoint()`` (trio's yields to
    its scheduler), ``_event`` (set when a session is queued or the stream closes) and
    ``__anext__``; :class:`~msgtrans._driver.transport.SessionStreamBase` the rest."""

    if TYPE_CHECKING:
        _transport: Any
        _configs: list[ServerConfig]
        _started: bool
        _closed: bool
        _event: Any
        _stream_listeners: list[Any]
        _quic_listeners: list[Any]
        addresses: list[tuple[str, int]]

        async def _open_stream(self, config: ServerConfig) -> Any: ...

        async def _open_quic(self, config: QuicServerConfig) -> Any: ...

    async def _checkpoint(self) -> None:
        """Nothing to yield to (asyncio); trio's checkpoints."""

    async def start(self) -> None:
        """Open every listener.

        Raises:
            TransportError: an address cannot be bound; listeners opened so far are closed.
            ConfigurationError: a certificate cannot be loaded (trio: or the transport has no
                nursery).
        """
        if self._started:
            return
        transport = self._transport
        transport._check_open("accept")
        self._started = True
        transport._streams.add(self)
        # A server node hears the other nodes from the moment it accepts sessions.
        transport._start_backplane()
        try:
            for config in self._configs:
                datagram = _datagram_server(config)
                if datagram is not None:
                    quic = await self._open_quic(datagram)
                    transport._quic_listeners.append(quic)
                    self._quic_listeners.append(quic)
                    self.addresses.append((quic.address[0], quic.address[1]))
                else:
                    listener = await self._open_stream(config)
                    self._stream_listeners.append(listener)
                    self.addresses.append((listener.address[0], listener.address[1]))
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Stop accepting: close the listening sockets and end the iteration."""
        if not self._closed:
            self._closed = True
            self._transport._streams.discard(self)
            for listener in self._stream_listeners:
                listener.close()
            for quic in self._quic_listeners:
                quic.close()  # the UDP socket stays for its sessions until the transport shuts down
            self._event.set()
        await self._checkpoint()

    async def __aenter__(self: _T) -> _T:
        await self.start()  # type: ignore[attr-defined]  # defined above
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self: _T) -> _T:
        return self


class AsyncTransportFacade(Generic[S, M, R, St]):
    """The asyncio and trio ``Transport``'s methods that hand over to a session, ``accept``,
    the shutdowns and ``async with`` (trio's enters its nursery too).  The backend supplies
    ``sessions()`` (from :class:`~msgtrans._driver.transport.TransportBase`), ``broadcast``,
    ``_shut`` and the class attribute ``_stream_type`` (its ``SessionStream``)."""

    _stream_type: Callable[[Any, Iterable[Any]], St]

    if TYPE_CHECKING:
        _shutdown_timeout: float

        def sessions(self) -> list[S]: ...

        async def broadcast(self, sessions: Iterable[S], data: Buffer, *, biz_type: int = 0,
                            ext_header: Buffer = b"") -> list[TransportError | None]: ...

        _cluster: ClusterHub

        def _start_backplane(self) -> None: ...

        def group_members(self, group: str) -> list[S]: ...

        def _session_target(self, ref: int | str, data: Buffer, biz_type: int,
                            ext_header: Buffer) -> S | None: ...

        async def _shut(self, timeout: float, *, drain: bool) -> R: ...

        def _server_configs(
            self, configs: ServerConfigLike | Iterable[ServerConfigLike]
        ) -> list[ServerConfig]: ...

    async def __aenter__(self: _T) -> _T:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Shut down gracefully, within the transport's ``shutdown_timeout``."""
        await self.graceful_shutdown(self._shutdown_timeout)

    # --- messages ------------------------------------------------------------------------------

    async def send(self, session: S, data: Buffer, *, biz_type: int = 0,
                   ext_header: Buffer = b"") -> None:
        """Send a one-way message on *session* (see :meth:`Session.send`)."""
        await session.send(data, biz_type=biz_type, ext_header=ext_header)

    async def request(self, session: S, data: Buffer, *, biz_type: int = 0,
                      ext_header: Buffer = b"", timeout: float | None = None) -> M:
        """Send a request on *session* and return the response (see :meth:`Session.request`)."""
        reply: M = await session.request(data, biz_type=biz_type, ext_header=ext_header,
                                         timeout=timeout)
        return reply

    async def receive(self, session: S) -> M:
        """Return the next one-way message or request on *session* (see
        :meth:`Session.receive`)."""
        message: M = await session.receive()
        return message

    async def message_stream(self, session: S) -> AsyncIterator[M]:
        """Yield the messages and requests of *session* until it closes.

        Raises:
            TransportError: the session ended with an error (a clean close just ends the
                iteration).
        """
        while True:
            try:
                message: M = await session.receive()
            except TransportError:
                if session.error is None:
                    return
                raise
            yield message

    async def send_to_all(self, data: Buffer, *, biz_type: int = 0,
                          ext_header: Buffer = b"") -> list[TransportError | None]:
        """:meth:`broadcast` to every open session of this transport (in :meth:`sessions`
        order) and, with a backplane (``builder.backplane``), to every session of every other
        node; return this transport's per-session results (the other nodes deliver on their
        own: see ``stats().backplane``)."""
        self._start_backplane()
        self._cluster.publish_all(data, biz_type, ext_header)
        return await self.broadcast(self.sessions(), data, biz_type=biz_type,
                                    ext_header=ext_header)

    async def send_to_group(self, group: str, data: Buffer, *, biz_type: int = 0,
                            ext_header: Buffer = b"") -> list[TransportError | None]:
        """Send a one-way message to every session that joined *group* (``session.join``):
        this transport's members get it as :meth:`broadcast` sends it (one result per member,
        in the order they joined: ``None`` when queued, else the error) and, with a backplane,
        every other node delivers it to its own members.

        Raises:
            ConfigurationError: *group* is not a valid group name.
        """
        check_group(group)
        self._start_backplane()
        self._cluster.publish_group(group, data, biz_type, ext_header)
        return await self.broadcast(self.group_members(group), data, biz_type=biz_type,
                                    ext_header=ext_header)

    async def send_to_session(self, session: int | str, data: Buffer, *, biz_type: int = 0,
                              ext_header: Buffer = b"") -> None:
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
            await local.send(data, biz_type=biz_type, ext_header=ext_header)

    # --- servers -------------------------------------------------------------------------------

    def accept(self, configs: ServerConfigLike | Iterable[ServerConfigLike]) -> St:
        """Listen on one config or on every config of a list (``TcpServerConfig``,
        ``WebSocketServerConfig``, ``QuicServerConfig`` or server URLs) and return the stream
        of accepted sessions; use it as ``async with transport.accept("tcp://...") as
        sessions``.  The builder's transport-wide settings (``max_payload``, ``max_sessions``,
        ``handshake_timeout``...) apply to each config.

        Raises:
            ConfigurationError: a config is invalid, or sets a field the builder set to another
                value.
            (When entered) TransportError: an address cannot be bound.
        """
        return self._stream_type(self, self._server_configs(configs))

    # --- shutdown ------------------------------------------------------------------------------

    async def graceful_shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> R:
        """Shut down: stop accepting, let requests in flight finish and queued messages leave
        until *timeout*, close every session with its protocol's close (WebSocket 1001, QUIC
        CONNECTION_CLOSE, TCP FIN), then drop whatever is left.  Calling it again returns the
        first call's report.

        Args:
            timeout: seconds for all of it (default 5.0).

        Returns:
            the :class:`ShutdownReport`.
        """
        return await self._shut(timeout, drain=True)

    async def shutdown(self, timeout: float = 1.0) -> R:
        """Shut down without waiting for requests in flight: close every session at once with
        its protocol's close, wait at most *timeout* seconds (default 1.0), drop the rest.

        Returns:
            the :class:`ShutdownReport`.
        """
        return await self._shut(timeout, drain=False)


def handler_caller(logger: logging.Logger) -> Callable[..., Coroutine[Any, Any, None]]:
    """Return ``call(handler, name, *args)``: await the handler's optional async method *name*
    (a missing one is skipped); what it raises is logged on *logger* and given to the
    handler's ``on_error`` (contained: it never ends the session or the server)."""

    async def call(handler: Any, name: str, *args: Any) -> None:
        method = getattr(handler, name, None)
        if method is None:
            return
        try:
            await method(*args)
        except Exception as exc:
            if _handler_failed(logger, name, args[0], exc):
                await call(handler, "on_error", args[0], exc)

    return call
