"""Who may open a session, decided without I/O: per-peer session counts, a token bucket for
the rate of new connections, a throttle for the refusal log, and what the application's
admission hook sees (:class:`Candidate`) and answers (:class:`Refuse`).

The driver calls :meth:`AdmissionControl.admit` for each connection it accepted (with its
peer's host and the time: no clock is read here), :meth:`AdmissionControl.release` when an
admitted one is over, and logs what :meth:`AdmissionControl.log_refusal` returns.  Every piece is
also usable alone (:class:`TokenBucket`, :class:`PeerCounts`, :class:`RefusalLog`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import ConfigurationError
from .machine import Address
from .packet import Packet, PacketType

__all__ = [
    "DEFAULT_LOG_INTERVAL",
    "AdmissionControl",
    "AdmissionHook",
    "Candidate",
    "FirstPacket",
    "PeerCounts",
    "RefusalLog",
    "RefusalReason",
    "Refuse",
    "TokenBucket",
    "refusal",
]

#: Seconds between two log lines about the refusals of one peer.
DEFAULT_LOG_INTERVAL = 10.0
#: Peers the refusal log remembers at most; beyond, further peers share one line.
_MAX_LOGGED_PEERS = 1024
#: The key under which peers beyond _MAX_LOGGED_PEERS are logged together.
OTHER_PEERS = "*"


class RefusalReason(str, Enum):
    """Why a connection was refused (the label of the metrics' refusal counters)."""

    MAX_SESSIONS = "max_sessions"  # the listener serves max_sessions already
    PER_PEER = "per_peer"  # the peer's address has max_sessions_per_peer sessions already
    RATE = "rate"  # the connection rate's token bucket is empty
    ADMISSION = "admission"  # the application's admission hook refused it
    FIRST_PACKET_TIMEOUT = "first_packet_timeout"  # no complete packet in first_packet_timeout

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class FirstPacket:
    """The first packet of a session, as the admission hook sees it with
    ``admission(hook, first_packet=True)``: a frozen copy (the session's own packet may be a
    view of the receive buffer; this one owns its bytes, so the hook may keep it).

    Attributes:
        packet_type: ``PacketType.ONE_WAY`` or ``PacketType.REQUEST`` (a response is never
            a first packet the hook sees: nothing was asked yet).
        message_id: the packet's id (a request's: the one its response will carry).
        biz_type: the application's type byte.
        payload: the (decompressed) payload, a copy (at most the listener's ``max_payload``).
        ext_header: the extension header, a copy.
    """

    packet_type: PacketType
    message_id: int
    biz_type: int
    payload: bytes
    ext_header: bytes

    @classmethod
    def of(cls, packet: Packet) -> FirstPacket:
        """The hook's copy of *packet*."""
        return cls(packet.packet_type, packet.message_id, packet.biz_type,
                   bytes(packet.payload), bytes(packet.ext_header))


@dataclass(frozen=True)
class Candidate:
    """A session the admission hook decides on, before ``accept()`` hands it out.

    Attributes:
        protocol: ``"tcp"``, ``"tls"``, ``"ws"``, ``"wss"`` or ``"quic"``.
        peer_address: the peer's socket address, or ``None`` when unknown.
        local_address: the address it connected to, or ``None`` when unknown.
        path: for WebSocket, the request target (path and query); else ``None``.
        headers: for WebSocket, the request's headers as ``(lower-case name, value)``
            pairs; else empty.
        peer_certificate: for TLS and WSS, the client certificate as
            ``ssl.SSLSocket.getpeercert()`` gives it when the server asked for one (a ``ca``
            in its TLS config) and the client sent one; else ``None``.
        first_packet: with ``admission(hook, first_packet=True)``, on TCP, TLS and QUIC, the
            session's first packet (a :class:`FirstPacket`), which the application still gets
            as its first message when the hook accepts; else ``None`` (WebSocket always: its
            hook runs at the upgrade request, on the path and headers).
    """

    protocol: str
    peer_address: Address | None
    local_address: Address | None
    path: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    peer_certificate: Mapping[str, Any] | None = field(default=None, repr=False)
    first_packet: FirstPacket | None = field(default=None, repr=False)

    def header(self, name: str) -> str | None:
        """The first value of the request header *name* (any case), or ``None``."""
        name = name.lower()
        return next((v for n, v in self.headers if n == name), None)


@dataclass(frozen=True)
class Refuse:
    """What an admission hook returns to refuse a session.

    Attributes:
        status: the HTTP status a WebSocket upgrade is answered with (default 403; 401 asks
            for credentials); other protocols just close.
        reason: said in the refusal's log line, the HTTP response body and the close reason
            (default ``"refused"``).
    """

    status: int = 403
    reason: str = "refused"

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int) \
                or not 400 <= self.status <= 599:
            raise ConfigurationError("status", f"must be an HTTP error status (400-599), "
                                     f"got {self.status!r}")


#: The admission hook: a :class:`Candidate` in, ``None`` (or ``True``) to accept, a
#: :class:`Refuse` (or ``False``) to refuse.
AdmissionHook = Callable[[Candidate], "Refuse | bool | None"]


def refusal(answer: object) -> Refuse | None:
    """What an admission hook's *answer* means: ``None`` accepts (the hook returned ``None``
    or ``True``), else the :class:`Refuse` it returned (any other answer: ``Refuse()``)."""
    if answer is None or answer is True:
        return None
    return answer if isinstance(answer, Refuse) else Refuse()


class TokenBucket:
    """A token bucket: *burst* tokens at most, refilled at *rate* per second; full at first.

    Raises:
        ConfigurationError: *rate* not a positive finite number (field ``connection_rate``)
            or *burst* not an integer >= 1 (``connection_rate.burst``).
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) \
                or not 0 < rate < math.inf:
            raise ConfigurationError("connection_rate",
                                     f"must be a positive number per second, got {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigurationError("connection_rate.burst",
                                     f"must be an integer >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def tokens(self, now: float) -> float:
        """The tokens available at *now* (refilled, never above ``burst``)."""
        self._refill(now)
        return self._tokens

    def take(self, now: float) -> bool:
        """Take one token at *now*; whether there was one (``False`` leaves the bucket as it
        was)."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _refill(self, now: float) -> None:
        last = self._last
        # A clock that steps back refills nothing (and does not owe tokens either).
        if last is not None and now > last:
            self._tokens = min(float(self.burst), self._tokens + (now - last) * self.rate)
        if last is None or now > last:
            self._last = now


class PeerCounts:
    """Live sessions per peer address, bounded by *limit* (``None``: counted, never refused).

    Raises:
        ConfigurationError: *limit* not an integer >= 1 (field ``max_sessions_per_peer``).
    """

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int | None) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise ConfigurationError("max_sessions_per_peer",
                                     f"must be an integer >= 1, got {limit!r}")
        self.limit = limit
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, peer: str) -> int:
        """The live sessions of *peer*."""
        return self._counts.get(peer, 0)

    def full(self, peer: str) -> bool:
        """Whether *peer* has ``limit`` sessions already."""
        return self.limit is not None and self._counts.get(peer, 0) >= self.limit

    def add(self, peer: str) -> None:
        """Count one more session of *peer*."""
        self._counts[peer] = self._counts.get(peer, 0) + 1

    def remove(self, peer: str) -> None:
        """Count one session of *peer* less (a peer at 0 is forgotten: the table holds only
        peers with live sessions; a remove without an add does nothing)."""
        n = self._counts.get(peer, 0)
        if n > 1:
            self._counts[peer] = n - 1
        else:
            self._counts.pop(peer, None)


class RefusalLog:
    """Says when to log a refusal: once per peer per *interval* seconds, with the number of
    refusals since the last line (so a flood makes one line per peer per interval, not one per
    connection).  At most 1024 peers are remembered; further ones share the key ``"*"``.

    Raises:
        ConfigurationError: *interval* not a positive number (field ``log_interval``).
    """

    __slots__ = ("_peers", "interval")

    def __init__(self, interval: float = DEFAULT_LOG_INTERVAL) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
                or not 0 < interval < math.inf:
            raise ConfigurationError("log_interval",
                                     f"must be a positive number of seconds, got {interval!r}")
        self.interval = float(interval)
        # peer -> [when its last line was logged, refusals not logged since]
        self._peers: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def refused(self, peer: str, now: float) -> int | None:
        """A connection of *peer* was refused at *now*: the number of refusals to log now
        (this one and those held back since the last line), or ``None`` to log nothing."""
        peers = self._peers
        entry = peers.get(peer)
        if entry is None and len(peers) >= _MAX_LOGGED_PEERS:
            self._forget_quiet(now)
            if len(peers) >= _MAX_LOGGED_PEERS:
                peer = OTHER_PEERS
                entry = peers.get(peer)
        if entry is None:
            peers[peer] = [now, 0.0]
            return 1
        if now >= entry[0] + self.interval or now < entry[0]:
            count = int(entry[1]) + 1
            entry[0] = now
            entry[1] = 0.0
            return count
        entry[1] += 1
        return None

    def held_back(self, peer: str) -> int:
        """Refusals of *peer* not logged yet."""
        entry = self._peers.get(peer)
        return 0 if entry is None else int(entry[1])

    def _forget_quiet(self, now: float) -> None:
        # Peers whose interval is over and that have nothing held back need no entry: their
        # next refusal is logged at once either way.
        interval = self.interval
        quiet = [p for p, (at, held) in self._peers.items() if not held and now >= at + interval]
        for peer in quiet:
            del self._peers[peer]


class AdmissionControl:
    """The admission decisions of one transport (every listener shares it): a per-peer limit
    on live sessions and a global token bucket for new connections.

    Args:
        max_sessions_per_peer: live sessions one peer address may have (default ``None``: no
            limit).  Peers are told apart by host only (every port of one address is one peer).
        rate: new connections per second the bucket refills (default ``None``: no rate limit).
        burst: the bucket's size, connections accepted at once after a quiet time (default:
            *rate* rounded up, at least 1).
        log_interval: see :class:`RefusalLog` (default 10 s).

    The bucket is global (all peers, all listeners): it bounds the server's work on a flood
    from many addresses; one address opening many is bounded by the per-peer limit.  A
    connection refused per peer takes no token.

    Raises:
        ConfigurationError: a bad value (the field named).
    """

    __slots__ = ("bucket", "log", "peers")

    def __init__(self, *, max_sessions_per_peer: int | None = None, rate: float | None = None,
                 burst: int | None = None, log_interval: float = DEFAULT_LOG_INTERVAL) -> None:
        self.peers = PeerCounts(max_sessions_per_peer)
        if rate is None and burst is not None:
            raise ConfigurationError("connection_rate.burst", "needs a rate")
        self.bucket: TokenBucket | None = None
        if rate is not None:
            if burst is None and isinstance(rate, (int, float)) and 0 < rate < math.inf:
                burst = max(1, math.ceil(rate))
            self.bucket = TokenBucket(rate, burst if burst is not None else 1)
        self.log = RefusalLog(log_interval)

    @property
    def limits_anything(self) -> bool:
        """Whether a connection can be refused here at all."""
        return self.peers.limit is not None or self.bucket is not None

    def admit(self, peer: str | None, now: float) -> RefusalReason | None:
        """Decide on a new connection from *peer* (its host; ``None`` when unknown, which no
        per-peer limit applies to) at *now*: ``None`` admits it and counts it for *peer*
        (call :meth:`release` when it is over), else why it is refused."""
        if peer is not None and self.peers.full(peer):
            return RefusalReason.PER_PEER
        bucket = self.bucket
        if bucket is not None and not bucket.take(now):
            return RefusalReason.RATE
        if peer is not None:
            self.peers.add(peer)
        return None

    def release(self, peer: str | None) -> None:
        """An admitted connection of *peer* is over."""
        if peer is not None:
            self.peers.remove(peer)

    def log_refusal(self, peer: str | None, now: float) -> int | None:
        """See :meth:`RefusalLog.refused` (an unknown peer is logged as ``"?"``)."""
        return self.log.refused(peer if peer is not None else "?", now)
