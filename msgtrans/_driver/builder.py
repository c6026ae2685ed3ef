"""The transport builder's settings and the shutdown report, the same for every backend: each
backend's ``TransportBuilder`` adds only ``build()``, and every backend's shutdown returns this
:class:`ShutdownReport`.

Every setting is a row of :data:`_SETTINGS` (its name, which is also the builder method's and the
key of :meth:`TransportBuilderBase.settings`, its default, and where it goes: the sessions'
machine, every config, the pools or the transport itself).  A method checks its arguments at
once and records the value as set explicitly; :meth:`TransportBuilderBase._checked` checks the
combination when the transport is built.
"""

from __future__ import annotations

import builtins
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TypeVar

from ..core.admission import TokenBucket
from ..core.backplane import DEFAULT_BACKPLANE_BUFFER_BYTES, DEFAULT_BACKPLANE_BUFFER_MESSAGES
from ..core.compression import CompressionPolicy
from ..core.config import DEFAULT_FIRST_PACKET_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, MAX_TIMEOUT
from ..core.errors import ConfigurationError
from ..core.expansion import ExpansionStrategy
from ..core.framing import DEFAULT_ZERO_COPY_THRESHOLD
from ..core.metrics import MetricsSnapshot
from ..core.packet import DEFAULT_MAX_EXT_HEADER, DEFAULT_MAX_PAYLOAD, MAX_U16, MAX_U32
from ..core.session import (
    DEFAULT_RECEIVE_MAX_BYTES,
    DEFAULT_RECEIVE_MAX_MESSAGES,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SEND_HIGH_WATER_BYTES,
    DEFAULT_SEND_HIGH_WATER_MESSAGES,
    DEFAULT_SEND_LOW_WATER_BYTES,
    DEFAULT_SEND_LOW_WATER_MESSAGES,
    SessionMachine,
)
from .cluster import BackplaneSettings
from .pool import DEFAULT_POOL_MAX, DEFAULT_POOL_MIN, DEFAULT_POOL_TARGET

__all__ = [
    "BUILDER_FIELDS",
    "DEFAULT_SEND_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_WORKER_THREADS",
    "ShutdownReport",
    "TransportBuilderBase",
]

#: Seconds the graceful shutdown at the end of a transport's ``with`` block may take.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
#: Seconds a send, request or respond may wait for room in the send queue (see
#: ``TransportBuilderBase.send_timeout``).
DEFAULT_SEND_TIMEOUT = 30.0
#: Server worker processes (issue 14 makes servers use it; today every backend runs one).
DEFAULT_WORKER_THREADS = 1
_MIB = 1024 * 1024
_MAX_INT = 2**63 - 1

_B = TypeVar("_B", bound="TransportBuilderBase")


@dataclass(frozen=True)
class ShutdownReport:
    """What a shutdown did (every backend's ``graceful_shutdown`` and ``shutdown`` return one).

    Attributes:
        closed_cleanly: sessions whose close handshake completed.
        forced: sessions that were dropped (their transport aborted) or ended uncleanly.
        messages_flushed: messages (including responses) that left during the shutdown.
        elapsed: seconds the shutdown took.
        metrics: the transport's final :class:`~msgtrans.core.metrics.MetricsSnapshot`, taken
            once the shutdown ended (``None`` only in a report made by hand).
    """

    closed_cleanly: int
    forced: int
    messages_flushed: int
    elapsed: float
    metrics: MetricsSnapshot | None = None


# --- the table of settings -----------------------------------------------------------------------

#: Where a setting goes: the sessions' machine (``Transport(settings=)``), every config a
#: connect, accept or pool uses (``Transport(config_overrides=)``), the pools' defaults, or the
#: transport itself.
_SESSION, _CONFIG, _POOL, _TRANSPORT = "session", "config", "pool", "transport"


@dataclass(frozen=True)
class _Setting:
    """One row of :data:`_SETTINGS`.

    Attributes:
        name: the builder method, and the key in ``settings()``.
        default: the value ``settings()`` shows when the method was not called (plain data).
        route: where the value goes (see above).
        session_keys: for a session setting, the ``SessionMachine`` keyword each part of the
            value sets (the value's own key -> the machine's keyword; ``""`` for a scalar).
    """

    name: str
    default: object
    route: str
    session_keys: Mapping[str, str] | None = None


_SETTINGS: tuple[_Setting, ...] = (
    _Setting("request_timeout", DEFAULT_REQUEST_TIMEOUT, _SESSION, {"": "request_timeout"}),
    _Setting("connect_timeout", None, _TRANSPORT),
    _Setting("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT, _TRANSPORT),
    _Setting("send_timeout", DEFAULT_SEND_TIMEOUT, _TRANSPORT),
    _Setting("connection_pool",
             {"min": DEFAULT_POOL_MIN, "max": DEFAULT_POOL_MAX, "target": DEFAULT_POOL_TARGET},
             _POOL),
    _Setting("pool_expansion_strategy", "SmartExpansion()", _POOL),
    _Setting("buffer_pool", None, _TRANSPORT),
    _Setting("memory_limit", None, _TRANSPORT),
    _Setting("zero_copy_threshold", DEFAULT_ZERO_COPY_THRESHOLD, _CONFIG),
    _Setting("worker_threads", DEFAULT_WORKER_THREADS, _TRANSPORT),
    _Setting("max_payload", DEFAULT_MAX_PAYLOAD, _CONFIG),
    _Setting("max_ext_header", DEFAULT_MAX_EXT_HEADER, _CONFIG),
    _Setting("max_sessions", None, _CONFIG),
    _Setting("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT, _CONFIG),
    _Setting("first_packet_timeout", DEFAULT_FIRST_PACKET_TIMEOUT, _CONFIG),
    _Setting("max_sessions_per_peer", None, _TRANSPORT),
    _Setting("connection_rate", None, _TRANSPORT),
    _Setting("admission", None, _TRANSPORT),
    _Setting("backplane", None, _TRANSPORT),
    _Setting("receive_queue",
             {"max_messages": DEFAULT_RECEIVE_MAX_MESSAGES, "max_bytes": DEFAULT_RECEIVE_MAX_BYTES},
             _SESSION,
             {"max_messages": "receive_max_messages", "max_bytes": "receive_max_bytes"}),
    _Setting("send_queue",
             {"high_water_bytes": DEFAULT_SEND_HIGH_WATER_BYTES,
              "low_water_bytes": DEFAULT_SEND_LOW_WATER_BYTES,
              "high_water_messages": DEFAULT_SEND_HIGH_WATER_MESSAGES,
              "low_water_messages": DEFAULT_SEND_LOW_WATER_MESSAGES},
             _SESSION,
             {"high_water_bytes": "send_high_water_bytes",
              "low_water_bytes": "send_low_water_bytes",
              "high_water_messages": "send_high_water_messages",
              "low_water_messages": "send_low_water_messages"}),
    _Setting("idle_timeout", None, _SESSION, {"": "idle_timeout"}),
    _Setting("heartbeat_interval", None, _SESSION, {"": "heartbeat_interval"}),
    _Setting("compression", None, _SESSION,
             {"threshold": "compress_threshold", "method": "compression",
              "level": "compression_level"}),
    _Setting("session_settings", {}, _SESSION),
)
_BY_NAME = {s.name: s for s in _SETTINGS}

#: Every name a builder's ``ConfigurationError.field`` can carry: the methods, their arguments
#: and the session machine's keywords they set.
BUILDER_FIELDS: frozenset[str] = frozenset(
    {s.name for s in _SETTINGS}
    | {"min", "max", "target", "sizes", "counts", "on_shutdown", "connection_rate.burst"}
    | {f"{s.name}.{part}" for s in _SETTINGS for part in (s.session_keys or {}) if part}
    | {key for s in _SETTINGS for key in (s.session_keys or {}).values()}
    | set(inspect.signature(SessionMachine).parameters) - {"session_id"}
)


# --- checks --------------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _check_seconds(name: str, value: object, high: float = math.inf) -> float:
    if not _is_number(value) or not 0 < value < math.inf or value > high:  # type: ignore[operator]
        bound = f" (at most {high:g})" if high < math.inf else ""
        raise ConfigurationError(
            name, f"must be a positive finite number of seconds{bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_int(name: str, value: object, low: int, high: int = _MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(name, f"must be an integer in [{low}, {high}], got {value!r}")
    return value


class TransportBuilderBase:
    """The settings of a backend's ``TransportBuilder``; the backend adds ``build()``.

    Every method checks its arguments at once (``ConfigurationError`` naming the field), records
    the value as set explicitly and returns the builder.  ``build()`` checks the combination:
    ``min <= target <= max``, the buffer pool within ``memory_limit``, ``zero_copy_threshold``
    at most ``max_payload``, and no setting given through two routes (a method and
    :meth:`session_settings`), which is refused rather than one silently winning.
    """

    def __init__(self) -> None:
        # Explicitly set values by setting name (see _SETTINGS); defaults are not stored.
        self._set: dict[str, Any] = {}
        self._session: dict[str, Any] = {}
        self._strategy: ExpansionStrategy | None = None
        self._on_shutdown: Callable[[ShutdownReport], object] | None = None
        self._admission_first_packet = False  # admission(hook, first_packet=...)

    # --- timeouts --------------------------------------------------------------------------------

    def request_timeout(self: _B, seconds: float) -> _B:
        """Seconds a request waits for its response unless the call says otherwise (default
        10, the wire spec's).

        Raises:
            ConfigurationError: not a positive finite number.
        """
        self._set["request_timeout"] = _check_seconds("request_timeout", seconds)
        return self

    def connect_timeout(self: _B, seconds: float) -> _B:
        """Seconds :meth:`Transport.connect` may take, handshakes included (default: each
        config's ``connect_timeout``).

        Raises:
            ConfigurationError: not a positive finite number.
        """
        self._set["connect_timeout"] = _check_seconds("connect_timeout", seconds)
        return self

    def shutdown_timeout(self: _B, seconds: float) -> _B:
        """Seconds the graceful shutdown at the end of ``async with`` may take (default 5).

        Raises:
            ConfigurationError: negative or not a number.
        """
        if not _is_number(seconds) or not 0 <= seconds < math.inf:
            raise ConfigurationError("shutdown_timeout", f"must be >= 0 seconds, got {seconds!r}")
        self._set["shutdown_timeout"] = float(seconds)
        return self

    def send_timeout(self: _B, seconds: float) -> _B:
        """Seconds a ``send()``, ``request()`` or ``respond()`` may wait for room in the send
        queue, on every session of the transport (default 30).  Past it the call raises
        ``TransportTimeoutError`` (operation ``send``, ``request`` or ``respond``), counted in
        the metrics' errors; a server session whose peer reads nothing for that long is
        aborted too, so a client that never reads cannot hold a handler for ever.  A blocking
        ``send(timeout=...)`` given by the caller replaces it for that call (and aborts
        nothing).

        Raises:
            ConfigurationError: not a positive finite number.
        """
        self._set["send_timeout"] = _check_seconds("send_timeout", seconds)
        return self

    def handshake_timeout(self: _B, seconds: float) -> _B:
        """Seconds a server's new connection has for its handshakes, on every server config the
        transport listens with: TLS and WebSocket on TCP and WebSocket configs, the QUIC
        handshake on QUIC configs (each connection's handshake deadline; default 10).

        Raises:
            ConfigurationError: not a positive number of at most 1,000,000 seconds.
        """
        # The configs' own bound: the value goes into every server config.
        self._set["handshake_timeout"] = _check_seconds("handshake_timeout", seconds,
                                                        MAX_TIMEOUT)
        return self

    def first_packet_timeout(self: _B, seconds: float | None) -> _B:
        """Seconds a server's new connection may go, once its handshakes completed (plain TCP:
        once accepted), without one complete msgtrans packet; then it is closed (close reason
        ``first_packet_timeout``, counted in ``stats().refusals``).  On every TCP and
        WebSocket server config the transport listens with (default 30; ``None``: no limit).
        QUIC has no such step: its ``idle_timeout`` closes a silent connection.

        Raises:
            ConfigurationError: not ``None`` or a positive number of at most 1,000,000
                seconds.
        """
        self._set["first_packet_timeout"] = (
            None if seconds is None
            else _check_seconds("first_packet_timeout", seconds, MAX_TIMEOUT))
        return self

    def idle_timeout(self: _B, seconds: float) -> _B:
        """Close a session when nothing arrived from its peer for *seconds* (default: never;
        close reason ``idle_timeout``).

        Raises:
            ConfigurationError: not a positive finite number.
        """
        self._set["idle_timeout"] = _check_seconds("idle_timeout", seconds)
        return self

    def heartbeat_interval(self: _B, seconds: float) -> _B:
        """A heartbeat comes due on every session that sent nothing for *seconds* (default: no
        heartbeats).  Today it is only counted (``SessionStats.heartbeats``): the v1 wire
        format has no heartbeat packet, so nothing is sent on TCP, and WebSocket and QUIC keep
        their own pings (the configs' ``ping_interval``).

        Raises:
            ConfigurationError: not a positive finite number.
        """
        self._set["heartbeat_interval"] = _check_seconds("heartbeat_interval", seconds)
        return self

    # --- pools -----------------------------------------------------------------------------------

    def connection_pool(self: _B, min: int, max: int, target: int | None = None) -> _B:
        """The defaults of every ``transport.pool(...)``: sessions kept open (*min*, default 2),
        never exceeded (*max*, default 64) and the expected need the growth aims at (*target*,
        default 16 kept between them).  An argument given to ``pool()`` itself wins for that
        pool (a per-call override); a builder target outside that pool's range is clamped.

        Raises:
            ConfigurationError: *min* below 0, *max* below 1, or not ``min <= target <= max``.
        """
        low = _check_int("min", min, 0)
        high = _check_int("max", max, 1)
        if low > high:
            raise ConfigurationError("min", f"must be at most max ({high}), got {low}")
        if target is None:
            aim = builtins.max(low, builtins.min(DEFAULT_POOL_TARGET, high))
        else:
            aim = _check_int("target", target, 0)
            if not low <= aim <= high:
                raise ConfigurationError(
                    "target", f"must be between min ({low}) and max ({high}), got {aim}")
        self._set["connection_pool"] = {"min": low, "max": high, "target": aim}
        return self

    def pool_expansion_strategy(self: _B, strategy: ExpansionStrategy) -> _B:
        """How every ``transport.pool(...)`` grows unless the call says otherwise: a
        :class:`SmartExpansion` (the default), :class:`FixedExpansion` or any object with
        ``calculate_next_size(current, target, maximum)``.

        Raises:
            ConfigurationError: *strategy* has no ``calculate_next_size``.
        """
        if not callable(getattr(strategy, "calculate_next_size", None)):
            raise ConfigurationError(
                "pool_expansion_strategy",
                f"needs a calculate_next_size(current, target, maximum) method, got {strategy!r}")
        self._strategy = strategy
        self._set["pool_expansion_strategy"] = repr(strategy)
        return self

    # --- memory ----------------------------------------------------------------------------------

    def buffer_pool(self: _B, sizes: Sequence[int], counts: Sequence[int]) -> _B:
        """Give the transport its own receive buffer pool: big received packets (payload at
        least ``zero_copy_threshold``, plus its 16-byte header and ext header) land in the
        smallest of these size classes (bytes, strictly increasing) that fits, and up to
        *counts* of each are kept for reuse once given back (none made in advance); what it
        keeps is freed at shutdown.  Default: the process-wide receive pool (classes for 64 KiB,
        256 KiB, 1 MiB and 4 MiB payloads).  ``sum(size * count)`` must fit ``memory_limit``.

        Raises:
            ConfigurationError: sizes empty, below 1 or not increasing; counts negative or not
                one per size.
        """
        sizes_t = tuple(sizes) if isinstance(sizes, (list, tuple)) else None
        counts_t = tuple(counts) if isinstance(counts, (list, tuple)) else None
        if not sizes_t or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes_t
        ) or any(b <= a for a, b in pairwise(sizes_t)):
            raise ConfigurationError(
                "sizes", f"need one or more sizes >= 1 bytes, strictly increasing: {sizes!r}")
        if counts_t is None or len(counts_t) != len(sizes_t) or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts_t
        ):
            raise ConfigurationError(
                "counts", f"need {len(sizes_t)} counts >= 0 (one per size), got {counts!r}")
        self._set["buffer_pool"] = {"sizes": list(sizes_t), "counts": list(counts_t)}
        return self

    def memory_limit(self: _B, mb: float) -> _B:
        """Bound the memory the transport's receive buffers, queued inbound messages and queued
        outbound bytes may use together, in MiB (default: no limit).  Near the limit the
        transport applies backpressure, past it refuses with ``ResourceError``.

        Raises:
            ConfigurationError: not a positive finite number.
        """
        if not _is_number(mb) or not 1 <= mb * _MIB <= _MAX_INT:
            raise ConfigurationError("memory_limit",
                                     f"must be a positive number of MiB, got {mb!r}")
        self._set["memory_limit"] = mb
        return self

    def zero_copy_threshold(self: _B, nbytes: int) -> _B:
        """Receive payloads of at least *nbytes* into a buffer of their own, handed to the
        application as a view (no copy), on every config the transport uses (default 64 KiB).
        At most ``max_payload``.

        Raises:
            ConfigurationError: not an integer >= 1.
        """
        self._set["zero_copy_threshold"] = _check_int("zero_copy_threshold", nbytes, 1)
        return self

    def worker_threads(self: _B, count: int) -> _B:
        """Worker processes every ``serve()`` of the transport starts unless it says
        otherwise with ``serve(workers=)`` (default 1: serve in this process).  With more, the
        calling process supervises that many forked worker processes sharing each listening
        port (``SO_REUSEPORT``); see "Worker processes" in docs/scaling.md.  (The name is the
        plan's; they are processes.  The blocking backend's handler threads are
        ``serve(threads=)``.)

        Raises:
            ConfigurationError: not an integer in [1, 1024].
        """
        self._set["worker_threads"] = _check_int("worker_threads", count, 1, 1024)
        return self

    # --- limits ----------------------------------------------------------------------------------

    def max_payload(self: _B, nbytes: int) -> _B:
        """The largest payload any session of the transport accepts, on the wire and after
        decompression, in bytes (default 16 MiB); bigger ones are refused with
        ``ResourceError`` (``resource.payload``).

        Raises:
            ConfigurationError: not an integer in [0, 2**32 - 1].
        """
        self._set["max_payload"] = _check_int("max_payload", nbytes, 0, MAX_U32)
        return self

    def max_ext_header(self: _B, nbytes: int) -> _B:
        """The largest ext header any session of the transport accepts, in bytes (default
        4 KiB).

        Raises:
            ConfigurationError: not an integer in [0, 65535].
        """
        self._set["max_ext_header"] = _check_int("max_ext_header", nbytes, 0, MAX_U16)
        return self

    def max_sessions(self: _B, count: int) -> _B:
        """The most sessions each listener of the transport serves at once; more connections
        are refused (default: no limit).

        Raises:
            ConfigurationError: not an integer in [1, 2**31].
        """
        self._set["max_sessions"] = _check_int("max_sessions", count, 1, 2**31)
        return self

    def max_sessions_per_peer(self: _B, count: int) -> _B:
        """The most live sessions one peer address (its host; every port counts together)
        may have with the transport's listeners at once, all protocols together; more of its
        connections are refused at accept (QUIC: once its handshake completed), counted as
        ``per_peer`` in ``stats().refusals`` (default: no limit).

        Raises:
            ConfigurationError: not an integer in [1, 2**31].
        """
        self._set["max_sessions_per_peer"] = _check_int("max_sessions_per_peer", count, 1,
                                                        2**31)
        return self

    def connection_rate(self: _B, per_second: float, burst: int | None = None) -> _B:
        """Limit new connections with a token bucket of *burst* tokens (default: *per_second*
        rounded up) refilled at *per_second*: a connection that finds it empty is refused at
        accept, counted as ``rate`` in ``stats().refusals`` (default: no limit).  The bucket
        is global to the transport (all listeners and peers), bounding a flood from many
        addresses; :meth:`max_sessions_per_peer` bounds one address.

        Raises:
            ConfigurationError: *per_second* not a positive finite number (field
                ``connection_rate``) or *burst* not an integer >= 1
                (``connection_rate.burst``).
        """
        if burst is None and _is_number(per_second) and 0 < per_second < math.inf:
            burst = builtins.max(1, math.ceil(per_second))
        bucket = TokenBucket(per_second, burst if burst is not None else 0)  # checks both
        self._set["connection_rate"] = {"per_second": bucket.rate, "burst": bucket.burst}
        return self

    def admission(self: _B, hook: Callable[[Any], object], *, first_packet: bool = False
                  ) -> _B:
        """Let *hook* accept or refuse every server session before ``accept()`` hands it
        out: it gets a :class:`~msgtrans.core.admission.Candidate` (protocol, peer and local
        address; for WebSocket the request path and headers; for TLS and WSS the client
        certificate) and returns ``None`` (or ``True``) to accept or a
        :class:`~msgtrans.core.admission.Refuse` (or ``False``) to refuse.  A refused
        WebSocket upgrade is answered with the refusal's HTTP status (403 by default, or 401)
        and closed; a refused TCP or TLS session is dropped at once with a RST, a QUIC one
        with a CONNECTION_CLOSE (application error 3, ``REFUSED``).

        With *first_packet* ``True``, TCP, TLS and QUIC sessions are held back until their
        first message (one-way or request) arrived, and the hook decides then, with that
        message in ``candidate.first_packet`` (a
        :class:`~msgtrans.core.admission.FirstPacket` copy); an accepted session is handed
        out with that message as its first one.  A session with no message within
        ``first_packet_timeout`` (the listener's; QUIC: this builder's, default 30 s) is
        dropped without asking the hook (``first_packet_timeout`` in ``stats().refusals``).
        WebSocket sessions are decided at their upgrade request either way (path, headers).

        Counted as ``admission`` in ``stats().refusals``.  A hook
        that raises refuses (logged).  It is called on the backend's I/O side (asyncio: the
        event loop; trio: the trio thread; blocking: the I/O thread, with the transport's
        lock held), so it must be quick and must not call the transport (default: none).

        Raises:
            ConfigurationError: *hook* is not callable.
        """
        if not callable(hook):
            raise ConfigurationError("admission", f"must be callable, got {hook!r}")
        if not isinstance(first_packet, bool):
            raise ConfigurationError("admission.first_packet",
                                     f"must be True or False, got {first_packet!r}")
        self._set["admission"] = hook
        self._admission_first_packet = first_packet
        return self

    def backplane(self: _B, url: str, *, prefix: str = "msgtrans", node_id: str | None = None,
                  max_buffered: int = DEFAULT_BACKPLANE_BUFFER_MESSAGES,
                  max_buffered_bytes: int = DEFAULT_BACKPLANE_BUFFER_BYTES) -> _B:
        """Link this transport to the other nodes of a cluster through Redis pub/sub at *url*
        (``redis://HOST:PORT/DB``, ``rediss://`` or ``unix://``; needs redis-py: ``pip install
        'msgtrans[redis]'``): ``send_to_all``, ``send_to_group`` and ``send_to_session`` then
        reach the sessions of every node with the same *prefix* (default ``"msgtrans"``), not
        only this one's.  *node_id* names this node (default: random); while Redis is down or
        slow, up to *max_buffered* messages (default 10,000) and *max_buffered_bytes* (default
        16 MiB) wait for it, newer ones are dropped and counted (``stats().backplane``), and
        the link reconnects with backoff.  Local delivery never waits for Redis.  See
        ``docs/scaling.md``.  Default: no backplane (groups and ``send_to_all`` are local).

        Raises:
            ConfigurationError: a bad URL, prefix, node id or bound (``field`` names it).
        """
        settings = BackplaneSettings(url, prefix, node_id, max_buffered,
                                     max_buffered_bytes).check()
        self._set["backplane"] = {"url": settings.url, "prefix": settings.prefix,
                                  "node_id": settings.node_id,
                                  "max_buffered": settings.max_buffered,
                                  "max_buffered_bytes": settings.max_buffered_bytes}
        return self

    # --- queues ----------------------------------------------------------------------------------

    def receive_queue(self: _B, *, max_messages: int | None = None,
                      max_bytes: int | None = None) -> _B:
        """Bound each session's queue of received messages the application has not taken:
        at *max_messages* (default 1024) or *max_bytes* of payload (default 16 MiB) the session
        stops reading its socket until the application takes some.

        Raises:
            ConfigurationError: a bound not an integer >= 1.
        """
        self._merge("receive_queue", {"max_messages": max_messages, "max_bytes": max_bytes}, 1)
        return self

    def send_queue(self: _B, *, high_water_bytes: int | None = None,
                   low_water_bytes: int | None = None, high_water_messages: int | None = None,
                   low_water_messages: int | None = None) -> _B:
        """Each session's send watermarks: senders pause when the bytes (default 1 MiB) or
        messages (default 1024) queued for the socket reach the high watermark and resume
        below the low one (defaults 256 KiB and 256).

        Raises:
            ConfigurationError: a watermark not an integer (high >= 1, low >= 0), or a low one
                above its high one (checked by ``build()`` against the defaults too).
        """
        self._merge("send_queue", {"high_water_bytes": high_water_bytes,
                                   "high_water_messages": high_water_messages}, 1)
        self._merge("send_queue", {"low_water_bytes": low_water_bytes,
                                   "low_water_messages": low_water_messages}, 0)
        return self

    def compression(self: _B, threshold: int, method: str = "zlib",
                    level: int | None = None) -> _B:
        """Compress every outgoing payload of at least *threshold* bytes with *method*
        (``"zlib"``, the default, or ``"zstd"``, which needs ``msgtrans[zstd]``) at *level*
        (default: the method's own; zlib -1..9, zstd 1..22); smaller payloads leave as they
        are (default: nothing is compressed).  Every msgtrans peer decompresses what a packet
        says, bounded by its ``max_payload``, so only the sender needs this.

        Raises:
            ConfigurationError: *threshold* not a positive whole number (field
                ``compress_threshold``), an unknown or missing method (``compression``) or a
                level out of range (``compression_level``).
        """
        policy = CompressionPolicy(threshold, method, level)  # checks now
        self._set["compression"] = {"threshold": policy.threshold, "method": policy.method,
                                    "level": policy.level}
        return self

    def _merge(self, name: str, parts: dict[str, int | None], low: int) -> None:
        given = {k: _check_int(f"{name}.{k}", v, low) for k, v in parts.items() if v is not None}
        self._set[name] = {**self._set.get(name, {}), **given}

    def session_settings(self: _B, **settings: Any) -> _B:
        """Other settings of every session's machine (``max_pending_requests``... see
        :class:`~msgtrans.core.session.SessionMachine`); checked by ``build()``.  A setting a
        builder method sets too (``request_timeout``, ``idle_timeout``, the queues' bounds...)
        is refused by ``build()``: give it one way."""
        self._session.update(settings)
        return self

    def on_shutdown(self: _B, callback: Callable[[ShutdownReport], object]) -> _B:
        """Call *callback* with the :class:`ShutdownReport` (final metrics included) after every
        shutdown of the transport; what it raises is logged, not raised (default: none).

        Raises:
            ConfigurationError: *callback* is not callable.
        """
        if not callable(callback):
            raise ConfigurationError("on_shutdown", f"must be callable, got {callback!r}")
        self._on_shutdown = callback
        return self

    # --- the result ------------------------------------------------------------------------------

    def settings(self) -> dict[str, object]:
        """Return the effective settings as plain data (numbers, strings, lists, dicts, None;
        JSON-able), keyed by the builder's method names: what was set, defaults filled."""
        out: dict[str, object] = {}
        for setting in _SETTINGS:
            value = self._set.get(setting.name, setting.default)
            if isinstance(setting.default, dict) and setting.name in self._set:
                value = {**setting.default, **value}
            out[setting.name] = _plain(value)
        out["session_settings"] = _plain(self._session)
        return out

    def _checked(self) -> dict[str, Any]:
        """The checked pieces ``_transport_args`` builds the transport from: ``settings`` (the
        session machine's keywords), ``config`` (transport-wide config fields), ``pool`` (the
        pools' defaults), ``buffer_pool`` and the scalars.

        Raises:
            ConfigurationError: a combination is invalid (the field named).
        """
        explicit = self._set
        session: dict[str, Any] = {"request_timeout": DEFAULT_REQUEST_TIMEOUT}
        for setting in _SETTINGS:
            if setting.session_keys is None or setting.name not in explicit:
                continue
            value = explicit[setting.name]
            for part, key in setting.session_keys.items():
                if part and part not in value:
                    continue
                if key in self._session:
                    raise ConfigurationError(
                        key, f"given twice: by {setting.name}() and by session_settings(); "
                        "give it one way")
                session[key] = value[part] if part else value
        session.update(self._session)
        try:
            SessionMachine(0, **session)  # validates every setting now, not at first connect
        except TypeError as exc:
            raise ConfigurationError("session_settings", str(exc)) from exc
        zero_copy = explicit.get("zero_copy_threshold")
        max_payload = explicit.get("max_payload", DEFAULT_MAX_PAYLOAD)
        if zero_copy is not None and zero_copy > max_payload:
            raise ConfigurationError(
                "zero_copy_threshold",
                f"{zero_copy} is above max_payload ({max_payload}): no payload could use it")
        memory = explicit.get("memory_limit")
        limit = None if memory is None else int(memory * _MIB)
        buffers = explicit.get("buffer_pool")
        if buffers is not None and limit is not None:
            total = sum(s * c for s, c in zip(buffers["sizes"], buffers["counts"], strict=True))
            if total > limit:
                raise ConfigurationError(
                    "buffer_pool", f"its {total} bytes (sizes x counts) exceed memory_limit "
                    f"({limit} bytes)")
        pool = explicit.get("connection_pool", {})
        return {
            "settings": session,
            "config": {name: explicit[name] for name, s in _BY_NAME.items()
                       if s.route == _CONFIG and name in explicit},
            "pool": {**pool, "strategy": self._strategy},
            "buffer_pool": buffers,
            "memory_limit": limit,
            "connect_timeout": explicit.get("connect_timeout"),
            "shutdown_timeout": explicit.get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT),
            "send_timeout": explicit.get("send_timeout", DEFAULT_SEND_TIMEOUT),
            "on_shutdown": self._on_shutdown,
            "max_sessions_per_peer": explicit.get("max_sessions_per_peer"),
            "connection_rate": None if "connection_rate" not in explicit else (
                explicit["connection_rate"]["per_second"], explicit["connection_rate"]["burst"]),
            "admission": explicit.get("admission"),
            "admission_first_packet": (
                "admission" in explicit and self._admission_first_packet),
            "backplane": (BackplaneSettings(**explicit["backplane"])
                          if "backplane" in explicit else None),
            "workers": explicit.get("worker_threads", DEFAULT_WORKER_THREADS),
        }


def _plain(value: object) -> object:
    """*value* as JSON-able data (tuples become lists, other objects their ``repr``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)
