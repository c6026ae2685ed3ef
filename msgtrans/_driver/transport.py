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

import builtins
import dataclasses
import logging
import socket
import threading
from collections import deque
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar, cast

from ..core.admission import AdmissionControl, AdmissionHook
from ..core.backplane import Envelope
from ..core.budget import MemoryBudget
from ..core.buffers import BufferPool
from ..core.config import (
    DEFAULT_FIRST_PACKET_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    ConnectionConfig,
    QuicServerConfig,
    ServerConfig,
    ServerConfigLike,
    to_config,
    to_server_config,
)
from ..core.connection import Connection, client_connection
from ..core.errormap import map_error
from ..core.errors import ConfigurationError, TransportConnectionError, TransportError
from ..core.expansion import ExpansionStrategy
from ..core.framing import DEFAULT_ZERO_COPY_THRESHOLD
from ..core.machine import Address
from ..core.metrics import MetricsSnapshot, TransportMetrics, render_prometheus
from ..core.packet import DEFAULT_LIMITS, Buffer, Limits
from ..core.pool import PoolMachine, PoolStatus
from ..core.session import DEFAULT_REQUEST_TIMEOUT, SessionState
from .admission import AcceptGate
from .builder import (
    DEFAULT_SEND_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    ShutdownReport,
    TransportBuilderBase,
)
from .cluster import BackplaneSettings, ClusterHub, parse_session_ref
from .forever import ForeverRegistry
from .pool import DEFAULT_POOL_MAX, DEFAULT_POOL_MIN, PoolDriverBase, PoolTracker, make_machine
from .quic import count_quic_refusals
from .workers import Supervisor


class _Closed(Protocol):
    @property
    def clean(self) -> bool: ...


class _Session(Protocol):
    """What the transport's half needs of a backend's session."""

    id: int
    packets_flushed: int
    forced: bool
    send_timeout: float | None
    _hub: ClusterHub | None

    @property
    def connection(self) -> Connection: ...

    @property
    def closed_event(self) -> _Closed | None: ...

    @property
    def state(self) -> SessionState: ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def awaiting_responses(self) -> bool: ...

    @property
    def pending_work(self) -> int: ...

    @property
    def has_inbox(self) -> bool: ...

    def hold_reading(self) -> None: ...

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


@dataclasses.dataclass(frozen=True)
class TransportDefaults:
    """What a builder sets for the whole transport besides the session settings (every field
    optional; ``TransportDefaults()`` changes nothing).

    Attributes:
        config: transport-wide config fields (``zero_copy_threshold``, ``max_payload``,
            ``max_ext_header``, ``max_sessions``, ``handshake_timeout``) applied to every config
            a connect, accept or pool uses (see :meth:`TransportBase._configured`).
        pool_min, pool_max, pool_target, pool_strategy: the defaults of ``transport.pool()``.
        buffer_pool: ``(sizes, counts)`` of the transport's own receive pool, or ``None`` (the
            process-wide one).
        on_shutdown: called with every :class:`ShutdownReport` (errors logged).
        send_timeout: seconds a send, request or respond of every session may wait for room
            in the send queue (the builder's ``send_timeout``; default 30).
        max_sessions_per_peer: live sessions one peer address may have (``None``: no limit).
        connection_rate: ``(per_second, burst)`` of the new-connection token bucket, or
            ``None`` (no rate limit).
        admission: the application's admission hook, or ``None``.
        admission_first_packet: the hook decides on TCP, TLS and QUIC sessions at their
            first message (``admission(hook, first_packet=True)``).
        backplane: the Redis backplane's settings, or ``None`` (groups stay local).
        workers: the worker processes ``serve()`` starts unless told otherwise (the builder's
            ``worker_threads``; default 1: it serves in this process).
    """

    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pool_min: int | None = None
    pool_max: int | None = None
    pool_target: int | None = None
    pool_strategy: ExpansionStrategy | None = None
    buffer_pool: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    on_shutdown: Callable[[ShutdownReport], object] | None = None
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    max_sessions_per_peer: int | None = None
    connection_rate: tuple[float, int] | None = None
    admission: AdmissionHook | None = None
    admission_first_packet: bool = False
    backplane: BackplaneSettings | None = None
    workers: int = 1


def _transport_args(builder: TransportBuilderBase) -> dict[str, Any]:
    """The keyword arguments of the ``Transport`` *builder* builds (its settings checked:
    ``ConfigurationError`` naming the field when one, or a combination, is invalid)."""
    checked = builder._checked()
    pool = checked["pool"]
    buffers = checked["buffer_pool"]
    return {
        "settings": checked["settings"],
        "connect_timeout": checked["connect_timeout"],
        "shutdown_timeout": checked["shutdown_timeout"],
        "memory_limit": checked["memory_limit"],
        "defaults": TransportDefaults(
            config=checked["config"], pool_min=pool.get("min"), pool_max=pool.get("max"),
            pool_target=pool.get("target"), pool_strategy=pool["strategy"],
            buffer_pool=None if buffers is None else (tuple(buffers["sizes"]),
                                                      tuple(buffers["counts"])),
            on_shutdown=checked["on_shutdown"], send_timeout=checked["send_timeout"],
            max_sessions_per_peer=checked["max_sessions_per_peer"],
            connection_rate=checked["connection_rate"],
            admission=checked["admission"],
            admission_first_packet=checked["admission_first_packet"],
            backplane=checked["backplane"],
            workers=checked["workers"],
        ),
    }


#: What a config field the builder sets is when the config leaves it alone: a config with this
#: value takes the builder's, one with another value conflicts with it.
_CONFIG_DEFAULTS: dict[str, object] = {
    "zero_copy_threshold": DEFAULT_ZERO_COPY_THRESHOLD,
    "max_payload": DEFAULT_LIMITS.max_payload,
    "max_ext_header": DEFAULT_LIMITS.max_ext_header,
    "max_sessions": None,
    "handshake_timeout": DEFAULT_HANDSHAKE_TIMEOUT,
    "first_packet_timeout": DEFAULT_FIRST_PACKET_TIMEOUT,
}
_LIMIT_FIELDS = ("max_payload", "max_ext_header")
#: Distinct configs whose transport-wide version is remembered (a connect loop over one URL
#: applies the builder's fields once, not per connect).
_CONFIGURED_CACHE = 256
_C = TypeVar("_C", ConnectionConfig, ServerConfig)


def apply_config_defaults(config: _C, fields: Mapping[str, Any]) -> _C:
    """*config* with the transport-wide *fields* (see :data:`_CONFIG_DEFAULTS`) it has: a field
    the config leaves at its default takes the transport's value; ``handshake_timeout`` and
    ``max_sessions`` apply to the server configs that have them.

    Raises:
        ConfigurationError: the config sets a field to a value other than its default and the
            transport's (``field`` names it): given two ways, neither silently wins.
    """
    changes: dict[str, Any] = {}
    limits: dict[str, int] = {}
    for name, value in fields.items():
        if name in _LIMIT_FIELDS:
            current = getattr(config.limits, name)
        elif hasattr(config, name):
            current = getattr(config, name)
        else:
            continue
        if current == value:
            continue
        if current != _CONFIG_DEFAULTS[name]:
            raise ConfigurationError(
                name, f"the {type(config).__name__} sets {current!r} and the transport builder "
                f"{value!r}: give it one way")
        if name in _LIMIT_FIELDS:
            limits[name] = value
        else:
            changes[name] = value
    if limits:
        changes["limits"] = Limits(**{**dataclasses.asdict(config.limits), **limits})
    return dataclasses.replace(config, **changes) if changes else config


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


def _handler_failed(log: logging.Logger, name: str, session: Any,
                    exc: BaseException | None = None) -> bool:
    """Log that the handler's *name* raised *exc* (with the traceback); whether the error goes
    on to ``on_error`` (not when ``on_error`` itself raised).

    A :class:`TransportError` raised once *session* closed or began closing (its peer reset,
    it was aborted: each queued message's send fails the same way, nothing the handler could
    do) is counted in the session's ``late_handler_errors`` and logged once per session, at
    INFO and without the traceback: a peer must not make the server write a line per message.
    """
    if isinstance(exc, TransportError) and _session_gone(session):
        session.late_handler_errors += 1
        if session.late_handler_errors == 1:
            log.info("session %s: handler %s failed after the session closed: %s; further "
                     "such errors of this session are not logged", session.id, name, str(exc))
    else:
        log.exception("handler %s raised (session %s)", name, getattr(session, "id", "?"))
    return name != "on_error"


def _session_gone(session: Any) -> bool:
    """Whether *session* (a backend's session, or whatever a handler was called with) closed or
    began closing."""
    state = getattr(session, "state", None)
    return state is SessionState.CLOSING or state is SessionState.CLOSED or bool(
        getattr(session, "is_closed", False))


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

    def _deliver(self, session: S) -> None:
        """Hand *session*, handshake complete, to ``accept()`` unless :meth:`_turned_away`
        (each backend's)."""
        raise NotImplementedError

    def _turned_away(self, session: S) -> bool:
        """Close *session*, handshake complete, if the stream no longer accepts (with its
        protocol's going-away close) or the transport's admission refuses it (the hook; the
        QUIC sessions' per-peer and rate limits); whether it did, or holds it (the hook
        decides at its first message: ``admission(hook, first_packet=True)``), which is
        ``True`` too: the gate gives it to :meth:`_deliver` again once the hook accepted it."""
        if self._closed:
            session.start_close(session.connection.going_away_code, "not accepting")
            return True
        # Each backend's stream keeps its transport as _transport.
        transport = getattr(self, "_transport", None)
        gate = getattr(transport, "_gate", None)
        # A session held for its first message comes back through the backend's _deliver.
        return gate is not None and not gate.established(session, self._deliver)


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
        defaults: TransportDefaults | None = None,
    ) -> None:
        # What a worker process of serve(workers=N) builds its own transport from.
        self._init_args: dict[str, Any] = {
            "settings": settings, "connect_timeout": connect_timeout,
            "shutdown_timeout": shutdown_timeout, "memory_limit": memory_limit,
            "defaults": defaults}
        # serve(workers=N)'s supervisor (see _driver/workers.py): stats() merges its workers'.
        self._supervisor: Supervisor | None = None
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
        self._defaults = defaults = defaults or TransportDefaults()
        self._configured_cache: dict[Any, Any] = {}
        # The transport's own receive pool, lent from by every connection (the process-wide
        # one otherwise); dropped at shutdown.  Its lock: buffers come back from any thread.
        self._buffer_pool: BufferPool | None = None
        if defaults.buffer_pool is not None:
            sizes, counts = defaults.buffer_pool
            # Nothing made in advance, as the process-wide receive pool: a transport that never
            # receives a big payload costs nothing.
            self._buffer_pool = BufferPool(sizes, counts, preallocate=(0,) * len(sizes),
                                           lock=threading.Lock())
            self._settings["buffer_pool"] = self._buffer_pool
        self._sessions: dict[int, S] = {}
        self._last_id = 0
        self._closing = False
        self._flushed_total = 0
        # The async backends' serve loops: session id -> a message in hand; and what wakes a
        # draining graceful shutdown when one goes idle (see _serving).
        self._served: dict[int, bool] = {}
        self._drain_wake: Callable[[], None] | None = None
        # Every session counts into these (see stats()); pools are tracked for pool_status().
        self._metrics = (TransportMetrics() if self._buffer_pool is None
                         else TransportMetrics(buffer_pool=self._buffer_pool))
        self._metrics.memory_budget = self._memory_budget
        self._pools: PoolTracker[P] = PoolTracker()
        # The connect_forever iterators, stopped (a backoff ended) when the shutdown starts.
        self._forevers = ForeverRegistry()
        # What the shutdown stops first (reconnecting sessions' supervisors): key -> closer.
        self._shutdown_closers: dict[int, Callable[[], object]] = {}
        # Groups, and the backplane when one is configured (the backend starts its link).
        self._cluster = ClusterHub(defaults.backplane)
        self._quic_listeners: list[Q] = []
        # QUIC refusals are counted by each endpoint; what was already added to the metrics.
        self._quic_refused: dict[Q, int] = {}
        # Every listener's accept-time check (max_sessions, per peer, rate, the hook).
        rate = defaults.connection_rate
        self._gate = AcceptGate(
            self._metrics,
            AdmissionControl(max_sessions_per_peer=defaults.max_sessions_per_peer,
                             rate=None if rate is None else rate[0],
                             burst=None if rate is None else rate[1]),
            defaults.admission, first_packet=defaults.admission_first_packet,
            first_packet_timeout=defaults.config.get("first_packet_timeout",
                                                     DEFAULT_FIRST_PACKET_TIMEOUT))

    # --- sessions ------------------------------------------------------------------------------

    def _check_open(self, operation: str) -> None:
        if self._closing:
            raise TransportConnectionError(
                "the transport is shut down", code="connection.closed", retryable=False,
                operation=operation,
            )

    def _on_shutdown(self, key: object, closer: Callable[[], object]) -> None:
        """Have the shutdown call *closer* (filed under *key*) before it closes the sessions:
        an object that would open new sessions (a reconnecting session's supervisor) stops
        there.  What *closer* returns is handed back by :meth:`_run_shutdown_closers` (the
        backend waits for it: a task, an event, a thread)."""
        self._shutdown_closers[id(key)] = closer

    def _forget_on_shutdown(self, key: object) -> None:
        """*key* closed on its own: the shutdown has nothing to stop."""
        self._shutdown_closers.pop(id(key), None)

    def _run_shutdown_closers(self) -> list[object]:
        """Call every closer :meth:`_on_shutdown` filed (once; what one raises is logged) and
        return what they returned, for the backend to wait on."""
        closers = list(self._shutdown_closers.values())
        self._shutdown_closers.clear()
        results: list[object] = []
        for closer in closers:
            try:
                results.append(closer())
            except Exception:
                backend = type(self).__module__.rsplit(".", 1)[0]
                logging.getLogger(backend).exception("a shutdown closer raised")
        return results

    def _make_session(self, connection: Connection, session_id: int) -> S:
        """The backend's session for *connection* (the hook of :meth:`_new_session`)."""
        raise NotImplementedError

    def _new_session(self, make: Callable[[int], Connection]) -> S:
        self._last_id += 1
        session_id = self._last_id
        session = self._make_session(make(session_id), session_id)
        session.send_timeout = self._defaults.send_timeout
        session._hub = self._cluster
        self._sessions[session_id] = session
        return session

    def _forget(self, session: S) -> None:
        if self._sessions.pop(session.id, None) is not None:
            self._flushed_total += session.packets_flushed
            if self._cluster.groups.groups_of(session.id):
                self._cluster.forget(session.id)

    # --- groups and the backplane --------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This transport's node id: the backplane's (``builder.backplane(node_id=)``, else
        random), or a random one without a backplane; the first half of every session's
        ``cluster_id``."""
        return self._cluster.node_id

    def groups(self) -> list[str]:
        """The groups with at least one session of this transport."""
        with self._cluster.lock:
            return self._cluster.groups.groups()

    def group_members(self, group: str) -> list[S]:
        """The open sessions of this transport in *group*, in the order they joined."""
        sessions = self._sessions
        found = [sessions.get(i) for i in self._cluster.members(group)]
        return [s for s in found if s is not None and s.state is SessionState.OPEN]

    def _session_target(self, ref: int | str, data: Buffer, biz_type: int,
                        ext_header: Buffer) -> S | None:
        """What ``send_to_session`` sends to: the local open session *ref* names, or ``None``
        when *ref* is another node's and the message was handed to the backplane.

        Raises:
            ConfigurationError: *ref* is not a session reference (see
                :func:`~msgtrans._driver.cluster.parse_session_ref`).
            TransportConnectionError: no such open session here, or it is on another node
                and there is no backplane (code ``connection.closed``).
            ResourceError: the backplane's buffer is full (``resource.exhausted``).
        """
        node, session_id = parse_session_ref(ref)
        if node is not None and node != self._cluster.node_id:
            self._start_backplane()
            if not self._cluster.publish_session(node, session_id, data, biz_type, ext_header):
                raise self._cluster.buffer_full()
            return None
        with self._cluster.lock:
            session = self._sessions.get(session_id)
        if session is None or session.state is not SessionState.OPEN:
            raise TransportConnectionError(f"no open session {ref!r} here",
                                           code="connection.closed", retryable=False,
                                           operation="send_to_session")
        return session

    def _start_backplane(self) -> None:
        """Start the backend's link to Redis once (the backends override it; without a
        backplane there is nothing to start)."""

    def _envelope_targets(self, envelope: Envelope) -> list[S]:
        """The open local sessions an envelope from another node is for."""
        ids = self._cluster.targets(envelope)
        if ids is None:
            return self.sessions()
        sessions = self._sessions
        found = [sessions.get(i) for i in ids]
        return [s for s in found if s is not None and s.state is SessionState.OPEN]

    def sessions(self) -> list[S]:
        """The open sessions (handshake complete, not closed), oldest first."""
        return [s for s in self._sessions.values() if s.state is SessionState.OPEN]

    def session_count(self) -> int:
        """How many sessions are open."""
        return len(self.sessions())

    def _configured(self, config: _C) -> _C:
        """*config* with the builder's transport-wide fields (:func:`apply_config_defaults`);
        as it is when the builder set none.

        Raises:
            ConfigurationError: the config sets one of them to another value.
        """
        fields = self._defaults.config
        if not fields:
            return config
        cache = self._configured_cache
        try:
            done = cache.get(config)
        except TypeError:  # an unhashable field (a config made with a list): no caching
            return apply_config_defaults(config, fields)
        if done is None:
            done = apply_config_defaults(config, fields)
            if len(cache) >= _CONFIGURED_CACHE:
                cache.clear()
            cache[config] = done
        return cast(_C, done)

    def _server_configs(
        self, configs: ServerConfigLike | Iterable[ServerConfigLike]
    ) -> list[ServerConfig]:
        """What ``accept()`` listens on: one config or URL, or several, as server configs with
        the builder's transport-wide fields.

        Raises:
            ConfigurationError: a config is invalid or conflicts with the builder.
        """
        if isinstance(configs, str) or not isinstance(configs, Iterable):
            configs = [configs]
        return [self._configured(to_server_config(c)) for c in configs]

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
        address *resolved* already, for a datagram socket), with the builder's transport-wide
        config fields.

        Raises:
            ConfigurationError: *config* conflicts with the builder's transport-wide fields.
        """
        settings = self._settings
        config = self._configured(config)
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
        self, address: str | ConnectionConfig,
        sizes: tuple[int | None, int | None, int | None], *,
        strategy: ExpansionStrategy | None, settings: dict[str, Any], now: Callable[[], float],
    ) -> tuple[ConnectionConfig, PoolMachine]:
        """The config and the core's machine of a new pool (``transport.pool()``'s checks:
        the transport open, the address, the *sizes* ``(min, max, target)`` and the settings;
        *now* is the backend's clock).

        A size or *strategy* left ``None`` is the builder's ``connection_pool`` /
        ``pool_expansion_strategy`` value, else the default (min 2, max 64, target 16 kept
        between them, :class:`SmartExpansion`); what the call gives wins.  The builder's target
        is clamped into the call's ``[min, max]`` when the call gives either.
        """
        self._check_open("pool")
        config = self._configured(to_config(address))
        defaults = self._defaults
        low, high, target = sizes
        low = defaults.pool_min if low is None else low
        high = defaults.pool_max if high is None else high
        low = DEFAULT_POOL_MIN if low is None else low
        high = DEFAULT_POOL_MAX if high is None else high
        if target is None and defaults.pool_target is not None:
            target = builtins.max(low, builtins.min(defaults.pool_target, high))
        if strategy is None:
            strategy = defaults.pool_strategy
        machine = make_machine(low, high, target, strategy=strategy, now=now(),
                               settings=settings)
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
        own = self._metrics.snapshot()
        backplane = self._cluster.stats()
        if backplane is not None:
            own = dataclasses.replace(own, backplane=backplane)
        # With serve(workers=N): this process's own metrics and every worker's, merged.
        return own if self._supervisor is None else self._supervisor.stats(own)

    def stats_prometheus(self, prefix: str = "msgtrans") -> str:
        """Return :meth:`stats` in the Prometheus text exposition format (for ``/metrics``)."""
        return render_prometheus(self.stats(), prefix)

    @property
    def _refused(self) -> AcceptGate:
        # What the backends hand each stream listener as its on_refused: the transport's gate
        # (called, it counts a refusal at max_sessions, as this method did before).
        return self._gate

    def _count_quic_refusals(self) -> None:
        count_quic_refusals(self._metrics, self._quic_listeners, self._quic_refused)

    # --- shutdown ------------------------------------------------------------------------------

    def _shutdown_sessions(self) -> tuple[list[S], int]:
        """The sessions a shutdown closes, and the messages flushed so far (its baseline)."""
        sessions = list(self._sessions.values())
        return sessions, self._flushed_total + sum(s.packets_flushed for s in sessions)

    @staticmethod
    def _stop_new_reads(sessions: list[S]) -> bool:
        """A graceful shutdown's "new reads stop": hold reading on every session of
        *sessions* none of whose own requests waits for its response (that one comes by
        reading: its session holds once it came); whether every open one is held."""
        held = True
        for session in sessions:
            if session.is_closed:
                continue
            if session.awaiting_responses:
                held = False
            else:
                session.hold_reading()
        return held

    def _drain_finished(self, sessions: list[S], working: Container[int]) -> bool:
        """Whether a graceful shutdown's drain is done (the same on every backend): new reads
        stop (:meth:`_stop_new_reads`), and every open session of *sessions* has no request in
        flight either way and is not in *working* (the ids whose ``serve`` handler has a
        message queued or in hand).  The close then flushes what the handlers queued."""
        held = self._stop_new_reads(sessions)
        return held and all(s.is_closed or not (s.pending_work or s.id in working)
                            for s in sessions)

    def _serving(self, session: S, in_hand: bool) -> None:
        """The async backends' ``serve`` loop of *session* took a message in hand (or is
        about to run), or has none and waits (*in_hand* false: a draining shutdown is woken
        to look again)."""
        self._served[session.id] = in_hand
        if not in_hand and self._drain_wake is not None:
            self._drain_wake()

    def _served_ended(self, session: S) -> None:
        """The ``serve`` loop of *session* ended (a draining shutdown is woken)."""
        self._served.pop(session.id, None)
        if self._drain_wake is not None:
            self._drain_wake()

    def _serve_working(self) -> set[int]:
        """The ids of the sessions whose async ``serve`` loop has a message in hand or
        queued (what :meth:`_drain_finished` waits for)."""
        sessions = self._sessions
        working = set()
        for sid, in_hand in self._served.items():
            if in_hand:
                working.add(sid)
            else:
                session = sessions.get(sid)
                if session is not None and session.has_inbox:
                    working.add(sid)
        return working

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

    def _finish_shutdown(self, figures: tuple[int, int, int], elapsed: float) -> ShutdownReport:
        """The report of the shutdown that just ended (*figures* from
        :meth:`_shutdown_figures`, *elapsed* seconds), with the final metrics; the transport's
        own buffer pool drops its free buffers, and the builder's ``on_shutdown`` callback gets
        the report (what it raises is logged).  Called once per transport, with no lock held."""
        if self._buffer_pool is not None:
            self._buffer_pool.drop_free()
        report = ShutdownReport(*figures, elapsed=elapsed, metrics=self.stats())
        callback = self._defaults.on_shutdown
        if callback is not None:
            try:
                callback(report)
            except Exception:
                # The backend's logger (msgtrans.io_asyncio...), as for its handlers' errors.
                backend = type(self).__module__.rsplit(".", 1)[0]
                logging.getLogger(backend).exception("the on_shutdown callback raised")
        return report

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

