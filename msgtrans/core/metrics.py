"""Transport metrics: counters, gauges and a latency histogram, as data and as Prometheus text.

:class:`TransportMetrics` is fed by the drivers (a session opened, a message went out, an error
happened, a pool decided to grow) and hands out :class:`MetricsSnapshot` values: frozen plain
data, or a JSON-ready ``dict`` through :meth:`MetricsSnapshot.as_dict`.  :func:`render_prometheus`
turns a snapshot into the Prometheus text exposition format (version 0.0.4) for a ``/metrics``
endpoint.  Nothing here reads a clock or does I/O; the pool's own status is
:class:`~msgtrans.core.pool.PoolStatus` (re-exported here).

Label values that come from outside (protocol names, error codes) are escaped, never trusted;
free-text reasons of pool decisions are kept in the snapshot's recent events but never used as
labels, because every distinct value would make a new time series.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from itertools import pairwise
from types import MappingProxyType
from typing import Any

from .backplane import BackplaneStats
from .budget import MemoryBudget
from .buffers import BufferPool, BufferPoolStats, default_receive_pool
from .errors import ConfigurationError, TransportError
from .framing import ZERO_COPY, ZeroCopyCounters, ZeroCopyStats
from .pool import CloseConnections, OpenConnections, PoolDecision, PoolStatus, Trigger

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "Histogram",
    "HistogramSnapshot",
    "MemoryStats",
    "MetricsSnapshot",
    "PoolEvent",
    "PoolStatus",
    "TransportMetrics",
    "ZeroCopyStats",
    "render_prometheus",
]

#: Upper bounds (seconds) of the request latency histogram: 0.5 ms to 10 s.
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram as plain data, Prometheus style.

    Attributes:
        buckets: ``(upper bound, observations <= bound)`` pairs, cumulative, ending with
            ``(inf, count)``.
        sum: the sum of all observations.
        count: how many observations.
    """

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


class Histogram:
    """Counts observations into buckets by upper bound (``le``), as Prometheus does.

    Args:
        buckets: the finite upper bounds, strictly increasing (default
            :data:`DEFAULT_LATENCY_BUCKETS`); an implicit ``+Inf`` bucket catches the rest.

    Raises:
        ConfigurationError: *buckets* empty, not strictly increasing or not finite.
    """

    __slots__ = ("_counts", "_sum", "bounds")

    def __init__(self, buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS) -> None:
        bounds = tuple(float(b) for b in buckets)
        if (
            not bounds
            or any(not math.isfinite(b) for b in bounds)
            or any(b <= a for a, b in pairwise(bounds))
        ):
            raise ConfigurationError(
                "buckets", f"need finite, strictly increasing upper bounds, got {bounds}"
            )
        self.bounds = bounds
        # Per-bucket (not cumulative) counts, the last one for +Inf: observing touches one slot.
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation.

        Raises:
            ValueError: *value* is negative or not a number (a latency cannot be).
        """
        if not value >= 0:  # also refuses NaN
            raise ValueError(f"observation must be >= 0, got {value}")
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self._counts)

    def snapshot(self) -> HistogramSnapshot:
        """Return the cumulative buckets, sum and count."""
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self._counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return HistogramSnapshot(tuple(cumulative), self._sum, running)


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """One pool expansion or shrink as recorded by :meth:`TransportMetrics.pool_event`.

    Attributes:
        kind: ``"expand"``, ``"shrink"`` or ``"refill"`` (or the caller's own word).
        trigger: a short stable cause (a :class:`~msgtrans.core.pool.Trigger` value).
        reason: the human-readable reason with its numbers.
    """

    kind: str
    trigger: str
    reason: str


@dataclass(frozen=True, slots=True)
class MemoryStats:
    """The figures of a transport's :class:`~msgtrans.core.budget.MemoryBudget` at one moment.

    Attributes:
        limit: the memory limit in bytes.
        in_use: bytes counted now (queued to send, received and not yet taken).
        peak: the most ever counted at once.
        paused_connections: sessions the budget holds paused now.
        refused: sends refused because they would have passed the limit.
    """

    limit: int
    in_use: int
    peak: int
    paused_connections: int
    refused: int

    @classmethod
    def of(cls, budget: MemoryBudget) -> MemoryStats:
        """The figures of *budget* now."""
        return cls(budget.limit, budget.in_use, budget.peak, budget.paused_connections,
                   budget.refused)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Every metric of a :class:`TransportMetrics` at one moment (plain, immutable data).

    Attributes:
        sessions: live sessions by ``(protocol, state)``.
        sessions_opened: sessions ever opened, by protocol.
        sessions_closed: sessions ever closed, by protocol.
        messages_in, messages_out: messages received and sent.
        bytes_in, bytes_out: their payload bytes.
        errors: errors by error code.
        request_latency: the request latency histogram (seconds).
        pool_events: pool expansions and shrinks by ``(kind, trigger)``.
        recent_pool_events: the last pool events with their reasons, oldest first.
        buffer_pool: the buffer pool's stats (last observed, else read from the metrics'
            live pool, by default the process-wide receive pool), or ``None``.
        pool: the connection pool's status last observed, or ``None``.
        zero_copy: the zero-copy counters (payloads at or above the zero-copy threshold:
            how many, how many handed out as views, bytes viewed and copied), or ``None``.
        memory: the transport's memory budget figures, or ``None`` without a memory limit.
        refusals: connections the server refused or dropped before they became sessions, by
            reason (``max_sessions``, ``per_peer``, ``rate``, ``admission``,
            ``first_packet_timeout``); all but the last are also in ``errors`` as
            ``connection.refused_by_server``.
        reconnects: connections a reconnecting client re-established after a loss, by
            protocol.
        reconnect_give_ups: reconnecting clients that gave up (a non-retryable error, or
            ``max_attempts`` reached), by protocol.
        disconnected_seconds: seconds reconnecting clients spent without a connection
            between a loss and the next connection (or the close), by protocol.
        backplane: the backplane's figures (link up, envelopes published, received, dropped,
            buffered, invalid, outages), or ``None`` without a backplane.
    """

    sessions: Mapping[tuple[str, str], int]
    sessions_opened: Mapping[str, int]
    sessions_closed: Mapping[str, int]
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    errors: Mapping[str, int]
    request_latency: HistogramSnapshot
    pool_events: Mapping[tuple[str, str], int]
    recent_pool_events: tuple[PoolEvent, ...]
    buffer_pool: BufferPoolStats | None
    pool: PoolStatus | None
    zero_copy: ZeroCopyStats | None = None
    memory: MemoryStats | None = None
    refusals: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    reconnects: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    reconnect_give_ups: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    disconnected_seconds: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({}))
    backplane: BackplaneStats | None = None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Picklable (a worker process sends its snapshots to its supervisor): the read-only
        # mappings travel as dicts and are made read-only again.
        return _unpickle_snapshot, tuple(
            dict(v) if isinstance(v, MappingProxyType) else v
            for v in (getattr(self, name) for name in self.__dataclass_fields__))

    @property
    def buffer_hit_rate(self) -> float | None:
        """The buffer pool's hit rate, or ``None`` when no buffer pool was observed."""
        return None if self.buffer_pool is None else self.buffer_pool.hit_rate

    @property
    def zero_copy_hit_rate(self) -> float | None:
        """The share of large payloads handed out zero-copy, or ``None`` without counters."""
        return None if self.zero_copy is None else self.zero_copy.hit_rate

    def as_dict(self) -> dict[str, Any]:
        """Return the snapshot as nested dicts, lists, strings and numbers (JSON-ready;
        ``+Inf`` bucket bounds become the string ``"+Inf"``)."""
        sessions: dict[str, dict[str, int]] = {}
        for (protocol, state), n in self.sessions.items():
            sessions.setdefault(protocol, {})[state] = n
        events: dict[str, dict[str, int]] = {}
        for (kind, trigger), n in self.pool_events.items():
            events.setdefault(kind, {})[trigger] = n
        pool: dict[str, Any] | None = None
        if self.pool is not None:
            pool = {
                "active_connections": self.pool.active_connections,
                "idle_connections": self.pool.idle_connections,
                "pending_connections": self.pool.pending_connections,
                "pool_utilization": self.pool.pool_utilization,
                "expansion_count": self.pool.expansion_count,
                "shrink_count": self.pool.shrink_count,
                "waiting_leases": self.pool.waiting_leases,
                "leases_in_use": self.pool.leases_in_use,
                "last_decisions": [
                    {
                        "decision": type(d).__name__,
                        "trigger": str(d.trigger),
                        "reason": d.reason,
                        "connections": (
                            d.count if isinstance(d, OpenConnections) else len(d.conn_ids)
                        ),
                    }
                    for d in self.pool.last_decisions
                ],
            }
        return {
            "sessions": sessions,
            "sessions_opened": dict(self.sessions_opened),
            "sessions_closed": dict(self.sessions_closed),
            "messages": {"in": self.messages_in, "out": self.messages_out},
            "bytes": {"in": self.bytes_in, "out": self.bytes_out},
            "errors": dict(self.errors),
            "request_latency": {
                "buckets": [
                    ["+Inf" if math.isinf(b) else b, n] for b, n in self.request_latency.buckets
                ],
                "sum": self.request_latency.sum,
                "count": self.request_latency.count,
            },
            "pool_events": events,
            "recent_pool_events": [asdict(e) for e in self.recent_pool_events],
            "buffer_pool": (
                None if self.buffer_pool is None
                else {**asdict(self.buffer_pool), "hit_rate": self.buffer_pool.hit_rate}
            ),
            "pool": pool,
            "zero_copy": (
                None if self.zero_copy is None
                else {**asdict(self.zero_copy), "hit_rate": self.zero_copy.hit_rate}
            ),
            "memory": None if self.memory is None else asdict(self.memory),
            "refusals": dict(self.refusals),
            "reconnects": dict(self.reconnects),
            "reconnect_give_ups": dict(self.reconnect_give_ups),
            "disconnected_seconds": dict(self.disconnected_seconds),
            "backplane": None if self.backplane is None else asdict(self.backplane),
        }


def _unpickle_snapshot(*values: Any) -> MetricsSnapshot:
    parts: list[Any] = [MappingProxyType(v) if isinstance(v, dict) else v for v in values]
    return MetricsSnapshot(*parts)


def _label(value: str | Enum) -> str:
    # str() of msgtrans enums is their value; plain strings pass through.
    return value.value if isinstance(value, Enum) else str(value)


class TransportMetrics:
    """The counters and gauges of one transport, fed by its driver.

    Args:
        latency_buckets: upper bounds of the request latency histogram (default
            :data:`DEFAULT_LATENCY_BUCKETS`).
        recent_events: pool events remembered with their reasons (default 32).
        buffer_pool: the buffer pool whose stats each snapshot reads unless
            :meth:`observe_buffer_pool` gave some: a pool, a function returning one, or
            ``None`` (default :func:`~msgtrans.core.buffers.default_receive_pool`, the pool
            every connection receives into unless told otherwise; process-wide).
        zero_copy: the zero-copy counters each snapshot reads (default
            :data:`~msgtrans.core.framing.ZERO_COPY`, process-wide; ``None``: none).

    Raises:
        ConfigurationError: bad buckets, or *recent_events* below 1.
    """

    def __init__(
        self,
        latency_buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
        recent_events: int = 32,
        *,
        buffer_pool: BufferPool | Callable[[], BufferPool] | None = default_receive_pool,
        zero_copy: ZeroCopyCounters | None = ZERO_COPY,
    ) -> None:
        if recent_events < 1:
            raise ConfigurationError("recent_events", f"must be at least 1, got {recent_events}")
        self._sessions: dict[tuple[str, str], int] = {}
        self._opened: dict[str, int] = {}
        self._closed: dict[str, int] = {}
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._errors: dict[str, int] = {}
        self._refusals: dict[str, int] = {}
        self._reconnects: dict[str, int] = {}
        self._give_ups: dict[str, int] = {}
        self._disconnected: dict[str, float] = {}
        self._latency = Histogram(latency_buckets)
        self._pool_events: dict[tuple[str, str], int] = {}
        self._recent: deque[PoolEvent] = deque(maxlen=recent_events)
        self._buffer_pool: BufferPoolStats | None = None
        self._pool: PoolStatus | None = None
        self._buffer_source = buffer_pool
        self._zero_copy = zero_copy
        #: The transport's memory budget, read live by every snapshot (``None``: no limit).
        self.memory_budget: MemoryBudget | None = None

    # --- sessions ------------------------------------------------------------------------------

    def session_opened(self, protocol: str | Enum, state: str | Enum = "connecting") -> None:
        """Count a new session of *protocol*, now in *state* (default ``"connecting"``)."""
        protocol = _label(protocol)
        self._opened[protocol] = self._opened.get(protocol, 0) + 1
        self._add_session(protocol, _label(state), 1)

    def session_moved(self, protocol: str | Enum, old: str | Enum, new: str | Enum) -> None:
        """Move one live session of *protocol* from state *old* to *new*."""
        protocol = _label(protocol)
        self._add_session(protocol, _label(old), -1)
        self._add_session(protocol, _label(new), 1)

    def session_closed(self, protocol: str | Enum, state: str | Enum = "open") -> None:
        """Count a session of *protocol* that was in *state* (default ``"open"``) as closed.
        Closed sessions leave the live gauge; they are counted in ``sessions_closed``."""
        protocol = _label(protocol)
        self._closed[protocol] = self._closed.get(protocol, 0) + 1
        self._add_session(protocol, _label(state), -1)

    def _add_session(self, protocol: str, state: str, delta: int) -> None:
        # A gauge never goes below 0: a driver that reports a close it never opened gets a
        # wrong count of zero rather than an exception in the middle of closing.
        key = (protocol, state)
        self._sessions[key] = max(0, self._sessions.get(key, 0) + delta)

    # --- traffic, errors, latency --------------------------------------------------------------

    def message_in(self, nbytes: int) -> None:
        """Count one received message of *nbytes* payload bytes."""
        self.messages_in += 1
        self.bytes_in += nbytes

    def message_out(self, nbytes: int) -> None:
        """Count one sent message of *nbytes* payload bytes."""
        self.messages_out += 1
        self.bytes_out += nbytes

    def error(self, error: TransportError | str) -> None:
        """Count one error by its error code (pass the error or the code)."""
        code = error.error_code if isinstance(error, TransportError) else error
        self._errors[code] = self._errors.get(code, 0) + 1

    def refusal(self, reason: str) -> None:
        """Count one connection refused for *reason* (see :attr:`MetricsSnapshot.refusals`):
        every reason but ``first_packet_timeout`` (a session dropped, not refused) counts
        as a ``connection.refused_by_server`` error too."""
        self._refusals[reason] = self._refusals.get(reason, 0) + 1
        if reason != "first_packet_timeout":
            self.error("connection.refused_by_server")

    def reconnected(self, protocol: str | Enum, down_seconds: float) -> None:
        """Count one connection of *protocol* re-established by a reconnecting client after
        *down_seconds* without one."""
        protocol = _label(protocol)
        self._reconnects[protocol] = self._reconnects.get(protocol, 0) + 1
        self.disconnected(protocol, down_seconds)

    def disconnected(self, protocol: str | Enum, seconds: float) -> None:
        """Add *seconds* a reconnecting client of *protocol* spent without a connection
        (negative values count as 0)."""
        protocol = _label(protocol)
        self._disconnected[protocol] = self._disconnected.get(protocol, 0.0) + max(0.0, seconds)

    def reconnect_give_up(self, protocol: str | Enum) -> None:
        """Count one reconnecting client of *protocol* that gave up."""
        protocol = _label(protocol)
        self._give_ups[protocol] = self._give_ups.get(protocol, 0) + 1

    def request_latency(self, seconds: float) -> None:
        """Record how long one request waited for its response.

        Raises:
            ValueError: *seconds* is negative or not a number.
        """
        self._latency.observe(seconds)

    # --- pools ---------------------------------------------------------------------------------

    def pool_event(self, kind: str, reason: str, trigger: str | Enum = "unspecified") -> None:
        """Count one pool event (*kind* ``"expand"``, ``"shrink"``...) by *trigger* and remember
        its *reason*."""
        trigger = _label(trigger)
        key = (kind, trigger)
        self._pool_events[key] = self._pool_events.get(key, 0) + 1
        self._recent.append(PoolEvent(kind, trigger, reason))

    def pool_decision(self, decision: PoolDecision) -> None:
        """Record a :class:`~msgtrans.core.pool.PoolMachine` decision as a pool event: an
        open is an ``"expand"`` (``"refill"`` when it restores the minimum), a close a
        ``"shrink"``; lease assignments are not events and are ignored."""
        if isinstance(decision, OpenConnections):
            kind = "refill" if decision.trigger is Trigger.MINIMUM else "expand"
            self.pool_event(kind, decision.reason, decision.trigger)
        elif isinstance(decision, CloseConnections):
            self.pool_event("shrink", decision.reason, decision.trigger)

    def observe_pool(self, status: PoolStatus) -> None:
        """Keep *status* as the connection pool's current state (gauges)."""
        self._pool = status

    def observe_buffer_pool(self, stats: BufferPoolStats) -> None:
        """Keep *stats* as the buffer pool's current state (hit rate, memory in use), instead of
        reading the live pool given at construction."""
        self._buffer_pool = stats

    def _buffer_stats(self) -> BufferPoolStats | None:
        if self._buffer_pool is not None:
            return self._buffer_pool
        source = self._buffer_source
        if source is None:
            return None
        pool = source if isinstance(source, BufferPool) else source()
        return pool.stats()

    # --- output --------------------------------------------------------------------------------

    def snapshot(self) -> MetricsSnapshot:
        """Return every metric as immutable plain data."""
        return MetricsSnapshot(
            sessions=MappingProxyType(dict(self._sessions)),
            sessions_opened=MappingProxyType(dict(self._opened)),
            sessions_closed=MappingProxyType(dict(self._closed)),
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            errors=MappingProxyType(dict(self._errors)),
            request_latency=self._latency.snapshot(),
            pool_events=MappingProxyType(dict(self._pool_events)),
            recent_pool_events=tuple(self._recent),
            buffer_pool=self._buffer_stats(),
            pool=self._pool,
            zero_copy=None if self._zero_copy is None else self._zero_copy.snapshot(),
            memory=None if self.memory_budget is None else MemoryStats.of(self.memory_budget),
            refusals=MappingProxyType(dict(self._refusals)),
            reconnects=MappingProxyType(dict(self._reconnects)),
            reconnect_give_ups=MappingProxyType(dict(self._give_ups)),
            disconnected_seconds=MappingProxyType(dict(self._disconnected)),
        )

    def render_prometheus(self, prefix: str = "msgtrans") -> str:
        """Return :func:`render_prometheus` of a fresh snapshot."""
        return render_prometheus(self.snapshot(), prefix)


# --- Prometheus text format ---------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


_Sample = tuple[str, Mapping[str, str], float]


class _Writer:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[_Sample]
    ) -> None:
        full = f"{self.prefix}_{name}"
        self.lines.append(f"# HELP {full} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {full} {kind}")
        for suffix, labels, value in samples:
            rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            braces = f"{{{rendered}}}" if rendered else ""
            self.lines.append(f"{full}{suffix}{braces} {_number(value)}")

    def single(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text, [("", {}, value)])


def render_prometheus(source: MetricsSnapshot | TransportMetrics, prefix: str = "msgtrans") -> str:
    """Render *source* in the Prometheus text exposition format 0.0.4.

    Every family has ``# HELP`` and ``# TYPE`` lines; label values are escaped; the latency
    histogram has cumulative ``_bucket`` samples ending in ``le="+Inf"``, then ``_sum`` and
    ``_count``.  Buffer and connection pool families appear once a pool was observed.

    Args:
        source: a snapshot, or metrics to snapshot now.
        prefix: put before every metric name (default ``"msgtrans"``).

    Raises:
        ConfigurationError: *prefix* is not a valid metric name.
    """
    if not _METRIC_NAME.fullmatch(prefix):
        raise ConfigurationError("prefix", f"not a valid Prometheus metric name: {prefix!r}")
    snap = source.snapshot() if isinstance(source, TransportMetrics) else source
    out = _Writer(prefix)
    out.family("sessions", "gauge", "Live sessions by protocol and state.", [
        ("", {"protocol": p, "state": s}, n) for (p, s), n in sorted(snap.sessions.items())
    ])
    out.family("sessions_opened_total", "counter", "Sessions opened, by protocol.", [
        ("", {"protocol": p}, n) for p, n in sorted(snap.sessions_opened.items())
    ])
    out.family("sessions_closed_total", "counter", "Sessions closed, by protocol.", [
        ("", {"protocol": p}, n) for p, n in sorted(snap.sessions_closed.items())
    ])
    out.family("messages_total", "counter", "Messages, by direction.", [
        ("", {"direction": "in"}, snap.messages_in),
        ("", {"direction": "out"}, snap.messages_out),
    ])
    out.family("bytes_total", "counter", "Message payload bytes, by direction.", [
        ("", {"direction": "in"}, snap.bytes_in),
        ("", {"direction": "out"}, snap.bytes_out),
    ])
    out.family("errors_total", "counter", "Errors, by error code.", [
        ("", {"code": c}, n) for c, n in sorted(snap.errors.items())
    ])
    out.family("connections_refused_total", "counter",
               "Connections refused or dropped before becoming sessions, by reason.", [
                   ("", {"reason": r}, n) for r, n in sorted(snap.refusals.items())
               ])
    out.family("reconnects_total", "counter",
               "Connections re-established by reconnecting clients, by protocol.", [
                   ("", {"protocol": p}, n) for p, n in sorted(snap.reconnects.items())
               ])
    out.family("reconnect_give_ups_total", "counter",
               "Reconnecting clients that gave up, by protocol.", [
                   ("", {"protocol": p}, n) for p, n in sorted(snap.reconnect_give_ups.items())
               ])
    out.family("disconnected_seconds_total", "counter",
               "Seconds reconnecting clients spent without a connection, by protocol.", [
                   ("", {"protocol": p}, n) for p, n in sorted(snap.disconnected_seconds.items())
               ])
    hist = snap.request_latency
    out.family(
        "request_latency_seconds",
        "histogram",
        "Seconds from sending a request to its response.",
        [
            *(("_bucket", {"le": _number(b)}, n) for b, n in hist.buckets),
            ("_sum", {}, hist.sum),
            ("_count", {}, hist.count),
        ],
    )
    out.family("pool_events_total", "counter", "Connection pool expansions and shrinks, "
               "by kind and trigger.", [
        ("", {"kind": k, "trigger": t}, n) for (k, t), n in sorted(snap.pool_events.items())
    ])
    buf = snap.buffer_pool
    if buf is not None:
        out.single("buffer_pool_hits_total", "counter", "Buffers served from a free list.",
                   buf.hits)
        out.single("buffer_pool_misses_total", "counter", "Buffers that had to be allocated.",
                   buf.misses)
        out.single("buffer_pool_hit_ratio", "gauge", "Buffer pool hits / acquires.",
                   buf.hit_rate)
        out.single("buffer_pool_bytes_in_use", "gauge", "Buffer bytes handed out.",
                   buf.bytes_in_use)
        out.single("buffer_pool_bytes_allocated", "gauge", "Buffer bytes held, used or free.",
                   buf.bytes_allocated)
        out.single("buffer_pool_refused_total", "counter",
                   "Buffer acquires refused by the memory limit.", buf.refused)
        out.single("buffer_pool_lent", "gauge",
                   "Buffers lent to received messages and not given back.", buf.lent)
        out.single("buffer_pool_collected_total", "counter",
                   "Lent buffers never given back (freed by the garbage collector).",
                   buf.collected)
    zc = snap.zero_copy
    if zc is not None:
        out.single("zero_copy_large_payloads_total", "counter",
                   "Received payloads at or above the zero-copy threshold.", zc.large_payloads)
        out.single("zero_copy_payloads_total", "counter",
                   "Large payloads handed out as views of the memory they were received into.",
                   zc.zero_copy_payloads)
        out.single("zero_copy_hit_ratio", "gauge",
                   "Zero-copy payloads / large payloads.", zc.hit_rate)
        out.family("zero_copy_bytes_total", "counter",
                   "Bytes of large payloads, by how they reached the application.", [
            ("", {"mode": "viewed"}, zc.bytes_viewed),
            ("", {"mode": "copied"}, zc.bytes_copied),
        ])
    mem = snap.memory
    if mem is not None:
        out.single("memory_limit_bytes", "gauge", "The transport's memory limit.", mem.limit)
        out.single("memory_in_use_bytes", "gauge",
                   "Bytes counted against the memory limit (queued both ways).", mem.in_use)
        out.single("memory_peak_bytes", "gauge", "The most bytes ever counted at once.",
                   mem.peak)
        out.single("memory_paused_connections", "gauge",
                   "Sessions paused by the memory limit.", mem.paused_connections)
        out.single("memory_refused_total", "counter",
                   "Sends refused because they would pass the memory limit.", mem.refused)
    bp = snap.backplane
    if bp is not None:
        out.single("backplane_connected", "gauge", "1 while the backplane link is up.",
                   int(bp.connected))
        out.single("backplane_published_total", "counter",
                   "Envelopes handed to the backplane.", bp.published)
        out.single("backplane_received_total", "counter",
                   "Envelopes from other nodes delivered here.", bp.received)
        out.single("backplane_dropped_total", "counter",
                   "Outbound envelopes dropped: the buffer was full while the backplane was "
                   "down or slow.", bp.dropped)
        out.single("backplane_buffered", "gauge", "Envelopes waiting for the backplane.",
                   bp.buffered)
        out.single("backplane_buffered_bytes", "gauge", "Bytes waiting for the backplane.",
                   bp.buffered_bytes)
        out.single("backplane_invalid_total", "counter",
                   "Messages on the backplane's channels that were not envelopes.", bp.invalid)
        out.single("backplane_outages_total", "counter", "Times the backplane link went down.",
                   bp.outages)
    pool = snap.pool
    if pool is not None:
        out.family("pool_connections", "gauge", "Pooled connections, by state.", [
            ("", {"state": "active"}, pool.active_connections),
            ("", {"state": "idle"}, pool.idle_connections),
            ("", {"state": "pending"}, pool.pending_connections),
        ])
        out.single("pool_utilization", "gauge", "Leases in use / lease capacity.",
                   pool.pool_utilization)
        out.single("pool_waiting_leases", "gauge", "Leases waiting for a connection.",
                   pool.waiting_leases)
        out.single("pool_expansions_total", "counter", "Pool growth steps.",
                   pool.expansion_count)
        out.single("pool_shrinks_total", "counter", "Pool shrink steps.", pool.shrink_count)
    return "\n".join(out.lines) + "\n"
