"""The transport's backend-neutral half: :class:`TransportBase` (the session table and ids, the
open check, stats and Prometheus output, refusal counting, the pools' tracking, the shutdown's
arithmetic), :class:`SessionStreamBase` (the accepted-session queue and what happens to a
session that arrives when nobody accepts any more), and the handler convention.

Everything here is synchronous and does no I/O: each backend's ``Transport`` subclasses
:class:`TransportBase` and keeps its sockets, tasks or threads, its waiting and its awaitable or
blocking public methods; it supplies one hook, :meth:`TransportBase._make_session`.  Methods
that the blocking backend calls under its lock are plain here; it overrides them to take it.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

from ..core.budget import MemoryBudget
from ..core.config import (
    ConnectionConfig,
    QuicServerConfig,
    ServerConfig,
    to_config,
    to_server_config,
)
from ..core.connection import Connection, client_connection
from ..core.errormap import map_error
from ..core.errors import TransportConnectionError, TransportError
from ..core.expansion import ExpansionStrategy
from ..core.machine import Address
from ..core.metrics import MetricsSnapshot, TransportMetrics, render_prometheus
from ..core.pool import PoolMachine, PoolStatus
from ..core.session import DEFAULT_REQUEST_TIMEOUT, SessionState
from .builder import DEFAULT_SHUTDOWN_TIMEOUT, TransportBuilderBase
from .pool import PoolDriverBase, PoolTracker, make_machine
from .quic import count_quic_refusals


class _Closed(Protocol):
    @property
    def clean(self) -> bool: ...


class _Session(Protocol):
    """What the transport's half needs of a backend's session."""

    id: int
    packets_flushed: int
    forced: bool

    @property
    def connection(self) -> Connection: ...

    @property
    def closed_event(self) -> _Closed | None: ...

    @property
    def state(self) -> SessionState: ...

    @property
    def is_closed(self) -> bool: ...

    def start_close(self, code: int | None = None, reason: str = "") -> None: ...

    def abort(self, reason: str = "aborted") -> None: ...


class _Endpoint(Protocol):
    @property
    def connections_refused(self) -> int: ...


class _QuicListener(Protocol):
    """What the transport's half needs of a backend's QUIC listener."""

    @property
    def endpoint(self) -> _Endpoint: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=_Session)
P = TypeVar("P", bound=PoolDriverBase[Any])
Q = TypeVar("Q", bound=_QuicListener)


def _transport_args(builder: TransportBuilderBase) -> dict[str, Any]:
    """The keyword arguments of the ``Transport`` *builder* builds (its session settings
    checked: ``ConfigurationError`` when one is invalid)."""
    return {
        "settings": builder._checked_settings(),
        "connect_timeout": builder._connect_timeout,
        "shutdown_timeout": builder._shutdown_timeout,
    }


#: The config of a listener on a datagram socket (what :func:`_datagram_server` answers): the
#: drivers type their datagram listeners by its role, not its protocol.
DatagramServerConfig = QuicServerConfig


def _datagram_server(config: ServerConfig) -> QuicServerConfig | None:
    """*config* when the core says its listener is a datagram socket (``transport_kind``),
    else ``None`` (a stream listener)."""
    return cast(QuicServerConfig, config) if config.transport_kind == "datagram" else None


def _numeric_addrinfo(host: str, port: int) -> list[tuple[Any, ...]] | None:
    """``getaddrinfo``'s answer for an IP address written out (``None`` for a name, or an
    IPv6 address with a zone, which only the resolver turns into a scope id).

    ``loop.getaddrinfo`` always runs in the default executor, a thread hand-off per connect
    (measured near 1 ms on a busy 2-core machine) for an answer known without asking.  The
    address is written back as ``inet_ntop`` writes it, the form ``recvfrom`` reports and QUIC
    compares the sender's address with.
    """
    if "%" in host:
        return None
    for family, sockaddr_tail in ((socket.AF_INET, ()), (socket.AF_INET6, (0, 0))):
        try:
            packed = socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        sockaddr = (socket.inet_ntop(family, packed), port, *sockaddr_tail)
        return [(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", sockaddr)]
    return None


def _send_result(result: BaseException | None, session: _Session) -> TransportError | None:
    """What :meth:`broadcast` reports for one session's send that ended with *result* (its
    exception, ``None`` when queued): a :class:`TransportError` as it is, any other error
    mapped; cancellation and exit are not results, they are raised."""
    if result is None or isinstance(result, TransportError):
        return result
    if isinstance(result, Exception):
        return map_error(result, operation="send", session_id=session.id)
    raise result


def _handler_failed(log: logging.Logger, name: str, session: Any) -> bool:
    """Log that the handler's *name* raised (with the traceback); whether the error goes on to
    ``on_error`` (not when ``on_error`` itself raised)."""
    log.exception("handler %s raised (session %s)", name, getattr(session, "id", "?"))
    return name != "on_error"


def _no_request_handler(log: logging.Logger, session: _Session, message: Any) -> None:
    """Log a request dropped because the handler has no ``on_request``."""
    log.warning("session %s: request %s dropped: the handler has no on_request",
                session.id, message.message_id)


class SessionStreamBase(Generic[S]):
    """The backend-neutral half of a ``SessionStream``: its configs, the queue of accepted
    sessions, its flags and the bound addresses.

    Attributes:
        addresses: the bound ``(host, port)`` of each listener, in the order of the configs
            (port 0 resolved), once started.
    """

    def __init__(self, configs: Iterable[Any]) -> None:
        self._configs: list[ServerConfig] = [to_server_config(c) for c in configs]
        self._queue: deque[S] = deque()
        self._closed = False
        self._started = False
        self.addresses: list[tuple[str, int]] = []

    def _turned_away(self, session: S) -> bool:
        """Close *session*, handshake complete, if the stream no longer accepts (with its
        protocol's going-away close); whether it did."""
        if self._closed:
            session.start_close(session.connection.going_away_code, "not accepting")
            return True
        return False


class TransportBase(Generic[S, P, Q]):
    """The backend-neutral half of a ``Transport`` (see the module text); the arguments are
    each backend's ``Transport``'s.

    ``memory_limit`` (bytes; default ``None``: no limit) makes one
    :class:`~msgtrans.core.budget.MemoryBudget` shared by every connection of the transport
    (it travels to the connection factories as the ``memory_budget`` setting): queued inbound
    messages and queued outbound bytes are counted against it, reading and sending pause near
    it, and a send that would pass it raises ``ResourceError`` (``resource.memory``); see
    ``docs/buffers.md``.  A ``memory_limit`` that is not a positive integer raises
    ``ConfigurationError`` (field ``memory_limit``).
    """

    def __init__(
        self,
        *,
        settings: dict[str, Any] | None = None,
        connect_timeout: float | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        memory_limit: int | None = None,
    ) -> None:
        self._settings: dict[str, Any] = dict(settings or {})
        self._connect_timeout = connect_timeout
        self._shutdown_timeout = shutdown_timeout
        self._memory_limit = memory_limit
        # One budget for every connection of the transport; the factories take it from the
        # settings like any other per-connection object (the drivers pass them through).
        self._memory_budget: MemoryBudget | None = (
            MemoryBudget(memory_limit) if memory_limit is not None else None
        )
        if self._memory_budget is not None:
            self._settings["memory_budget"] = self._memory_budget
        self._sessions: dict[int, S] = {}
        self._last_id = 0
        self._closing = False
        self._flushed_total = 0
        # Every session counts into these (see stats()); pools are tracked for pool_status().
        self._metrics = TransportMetrics()
        self._metrics.memory_budget = self._memory_budget
        self._pools: PoolTracker[P] = PoolTracker()
        self._quic_listeners: list[Q] = []
        # QUIC refusals are counted by each endpoint; what was already added to the metrics.
        self._quic_refused: dict[Q, int] = {}

    # --- sessions ------------------------------------------------------------------------------

    def _check_open(self, operation: str) -> None:
        if self._closing:
            raise TransportConnectionError(
                "the transport is shut down", code="connection.closed", retryable=False,
                operation=operation,
            )

    def _make_session(self, connection: Connection, session_id: int) -> S:
        """The backend's session for *connection* (the hook of :meth:`_new_session`)."""
        raise NotImplementedError

    def _new_session(self, make: Callable[[int], Connection]) -> S:
        self._last_id += 1
        session_id = self._last_id
        session = self._make_session(make(session_id), session_id)
        self._sessions[session_id] = session
        return session

    def _forget(self, session: S) -> None:
        if self._sessions.pop(session.id, None) is not None:
            self._flushed_total += session.packets_flushed

    def sessions(self) -> list[S]:
        """The open sessions (handshake complete, not closed), oldest first."""
        return [s for s in self._sessions.values() if s.state is SessionState.OPEN]

    def session_count(self) -> int:
        """How many sessions are open."""
        return len(self.sessions())

    def _connect_limit(self, config: ConnectionConfig, timeout: float | None) -> float:
        """Seconds a connect may take: *timeout*, else the builder's, else the config's."""
        if timeout is not None:
            return timeout
        if self._connect_timeout is not None:
            return self._connect_timeout
        return config.connect_timeout

    def _connection(self, config: ConnectionConfig,
                    resolved: Address | None = None) -> Callable[[int], Connection]:
        """What :meth:`_new_session` calls to make a client connection to *config* (to the
        address *resolved* already, for a datagram socket)."""
        settings = self._settings
        if resolved is None:
            return lambda sid: client_connection(config, session_id=sid, **settings)
        return lambda sid: client_connection(config, session_id=sid, resolved=resolved,
                                             **settings)

    def _connect_error(self, exc: BaseException, config: ConnectionConfig, session: S | None,
                       *, timeout: float | None = None, count: bool = False) -> TransportError:
        """*exc*, which ended a connect to *config*, as the error the connect raises (with the
        id of *session*, the half-open session if one was made; *timeout* for a timeout);
        counted into the metrics when *count* (where no other place counts it)."""
        error = map_error(exc, protocol=config.protocol, operation="connect",
                          session_id=session.id if session is not None else None,
                          timeout=timeout)
        if count:
            self._metrics.error(error)
        return error

    # --- pools and metrics ----------------------------------------------------------------------

    def _pool_machine(
        self, address: str | ConnectionConfig, sizes: tuple[int, int, int | None], *,
        strategy: ExpansionStrategy | None, settings: dict[str, Any], now: Callable[[], float],
    ) -> tuple[ConnectionConfig, PoolMachine]:
        """The config and the core's machine of a new pool (``transport.pool()``'s checks:
        the transport open, the address, the *sizes* ``(min, max, target)`` and the settings;
        *now* is the backend's clock)."""
        self._check_open("pool")
        config = to_config(address)
        machine = make_machine(*sizes, strategy=strategy, now=now(), settings=settings)
        return config, machine

    def _pool_settings(self) -> dict[str, Any]:
        """The keyword arguments every backend's ``SessionPool`` takes from the transport."""
        return {
            "metrics": self._metrics,
            "request_timeout": float(self._settings.get("request_timeout",
                                                        DEFAULT_REQUEST_TIMEOUT)),
            "on_closed": self._pools.closed,
        }

    def pools(self) -> list[P]:
        """The pools not closed yet, oldest first."""
        return list(self._pools)

    def pool_status(self) -> PoolStatus:
        """The statuses of every open pool summed: connection, lease and step counts add up
        (steps of closed pools included, so they never go down), utilisation is weighted by
        each pool's lease capacity, ``last_decisions`` are the newest 16 of all pools."""
        return self._pools.status()

    def stats(self) -> MetricsSnapshot:
        """Return every metric now, as plain immutable data (``.as_dict()`` for JSON): live
        sessions by protocol and state, sessions opened and closed, messages and payload bytes
        in and out, errors by ``error_code`` (``connection.refused_by_server`` counts the
        connections our listeners refused at ``max_sessions``), the request latency histogram,
        pool expansions and shrinks by trigger, the summed :meth:`pool_status` once a pool
        was made, and with a memory limit the budget's figures (``memory``: limit, bytes in
        use, peak, paused connections, refused sends)."""
        self._count_quic_refusals()
        if self._pools.used:
            self._metrics.observe_pool(self._pools.status())
        return self._metrics.snapshot()

    def stats_prometheus(self, prefix: str = "msgtrans") -> str:
        """Return :meth:`stats` in the Prometheus text exposition format (for ``/metrics``)."""
        return render_prometheus(self.stats(), prefix)

    def _refused(self) -> None:
        # A stream listener refused a connection at max_sessions.
        self._metrics.error("connection.refused_by_server")

    def _count_quic_refusals(self) -> None:
        count_quic_refusals(self._metrics, self._quic_listeners, self._quic_refused)

    # --- shutdown ------------------------------------------------------------------------------

    def _shutdown_sessions(self) -> tuple[list[S], int]:
        """The sessions a shutdown closes, and the messages flushed so far (its baseline)."""
        sessions = list(self._sessions.values())
        return sessions, self._flushed_total + sum(s.packets_flushed for s in sessions)

    def _close_sessions(self, sessions: list[S]) -> None:
        """Start every session's close (its protocol's going-away close) and stop the QUIC
        listeners' endpoints."""
        for session in sessions:
            session.start_close(session.connection.going_away_code, "shutdown")
        for quic in self._quic_listeners:
            quic.stop()

    @staticmethod
    def _abort_sessions(sessions: list[S]) -> None:
        """Drop every session whose close did not finish in time."""
        for session in sessions:
            if not session.is_closed:
                session.abort("aborted by shutdown")

    def _forget_quic_listeners(self) -> None:
        """Count the QUIC listeners' last refusals, then forget the listeners."""
        self._count_quic_refusals()
        self._quic_listeners.clear()
        self._quic_refused.clear()

    def _shutdown_figures(self, sessions: list[S], flushed_before: int) -> tuple[int, int, int]:
        """The shutdown report's ``closed_cleanly``, ``forced`` and ``messages_flushed`` for
        *sessions* (those the shutdown found), *flushed_before* being the baseline."""
        flushed = self._flushed_total + sum(
            s.packets_flushed for s in sessions if s.id in self._sessions
        ) - flushed_before
        clean = sum(
            1 for s in sessions
            if not s.forced and s.closed_event is not None and s.closed_event.clean
        )
        return clean, len(sessions) - clean, max(0, flushed)
