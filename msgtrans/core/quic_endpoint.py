"""The QUIC server endpoint: every connection behind one UDP socket, as one sans-IO machine.

A QUIC server receives the datagrams of all its connections on one socket, so something must
route each datagram to its connection by the destination connection id in its header (aioquic's
``asyncio/server.py`` does it for asyncio; this is the same logic without I/O, so the asyncio,
trio and blocking drivers share it).  :class:`QuicEndpoint`:

* parses each datagram's header with aioquic's ``pull_quic_header``;
* routes it by destination connection id to its :class:`~msgtrans.core.quic.QuicMachine`; the
  routing table follows the ids each connection issues and retires as it goes (aioquic's
  ``ConnectionIdIssued`` / ``ConnectionIdRetired``), so a peer that switches ids stays routed;
* creates a connection for an Initial packet of a supported version with an unknown id (the
  datagram must be at least 1200 bytes, RFC 9000 section 14.1), answers an unsupported version
  with Version Negotiation, can validate addresses first with a stateless Retry, and refuses
  new connections over ``max_connections`` with a stateless CONNECTION_CLOSE
  (``CONNECTION_REFUSED``) so the client fails fast instead of timing out;
* drops anything else -- garbage, short headers for unknown ids, truncated packets -- and counts
  it; it never raises on input.

A driver's loop over one UDP socket::

    endpoint = QuicEndpoint(certificate=cert_pem, private_key=key_pem)
    loop:
        for data, addr in endpoint.datagrams_to_send(now): sock.sendto(data, addr)
        wait for a datagram or endpoint.next_deadline()
        endpoint.receive_datagram(data, addr, now)      # or endpoint.handle_timer(now)
        for connection in endpoint.accept(): ...        # new QuicMachine connections
        for connection, event in endpoint.events(): ... # or connection.events() per connection

Sends and closes go to the connections themselves (``connection.send_packet(...)``); what they
produce leaves with the endpoint's next :meth:`QuicEndpoint.datagrams_to_send`.  The driver never
calls a connection's own ``datagrams_to_send`` or ``receive_datagram``.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

# aioquic.buffer re-exports it without saying so, which mypy --strict refuses.
from aioquic._buffer import Buffer as QuicBuffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import TRANSPORT_CLOSE_FRAME_CAPACITY, QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.retry import QuicRetryTokenHandler
from aioquic.tls import load_pem_private_key, load_pem_x509_certificates

from .config import DEFAULT_MAX_HALF_OPEN, DEFAULT_RETRY_THRESHOLD
from .errors import ConfigurationError
from .events import Event
from .framing import DEFAULT_ZERO_COPY_THRESHOLD, QUIC_MAX_FRAME
from .machine import Address, MachineState
from .packet import DEFAULT_LIMITS, Limits
from .quic import (
    ALPN,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HIGH_WATERMARK,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LOW_WATERMARK,
    DEFAULT_PING_INTERVAL,
    LOOPBACK_DATAGRAM_SIZE,
    FlowControlledQuicConnection,
    QuicMachine,
)

__all__ = [
    "DEFAULT_MAX_HALF_OPEN", "DEFAULT_RETRY_THRESHOLD", "MAX_PENDING_REPLIES", "QuicEndpoint",
]

#: Stateless replies (Version Negotiation, Retry, refusals) kept for the next
#: :meth:`QuicEndpoint.datagrams_to_send`; beyond this, under a flood, they are dropped.
MAX_PENDING_REPLIES = 1024

PemSource = bytes | str | os.PathLike[str]

_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)
_KEY_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----\s*", re.S
)


def _initial_decrypts(data: bytes, encrypted_offset: int, header: QuicHeader,
                      version: int) -> bool:
    """Whether the first packet of *data*, an Initial of *version* sent to its destination
    id, decrypts with the Initial keys that id derives (what aioquic would do with it once a
    connection exists, without making one)."""
    crypto = CryptoPair()
    crypto.setup_initial(cid=header.destination_cid, is_client=False, version=version)
    try:
        crypto.decrypt_packet(data[:header.packet_length], encrypted_offset, 0)
    except Exception:  # any failure means "not a real Initial"; input never raises
        return False
    return True


def _read_pem(value: PemSource, field: str) -> bytes:
    """PEM data as bytes: *value* is PEM (bytes or text) or the path of a PEM file."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and "-----BEGIN" in value:
        return value.encode("ascii")
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ConfigurationError(field, f"cannot read {value!s}: {exc}") from exc


def _refusal(version: int, client_cid: bytes, our_cid: bytes, error_code: int,
             reason: str) -> bytes:
    """An Initial packet carrying CONNECTION_CLOSE, sent without creating a connection.

    The Initial keys derive from the destination id the client chose (*our_cid*), so the
    client can read it (the same construction as aioquic's INVALID_TOKEN close).
    """
    crypto = CryptoPair()
    crypto.setup_initial(cid=our_cid, is_client=False, version=version)
    builder = QuicPacketBuilder(
        host_cid=our_cid,
        is_client=False,
        max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
        peer_cid=client_cid,
        version=version,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    phrase = reason.encode("utf-8")
    buf = builder.start_frame(
        QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY + len(phrase)
    )
    buf.push_uint_var(error_code)
    buf.push_uint_var(QuicFrameType.PADDING)
    buf.push_uint_var(len(phrase))
    buf.push_bytes(phrase)
    datagrams, _packets = builder.flush()
    return datagrams[0]


class _EndpointConnection(QuicMachine):
    """A server connection that tells its endpoint when it may need attention.

    The endpoint must not ask every connection on every datagram whether it has something to
    send (that is O(connections) per datagram).  Every path by which a connection comes to
    have datagrams to send sets ``_dirty``, and every path by which it ends sets ``state``; so
    those two attributes report their writes to the endpoint, which keeps the set of
    connections to look at.  (Kept here, not in :class:`QuicMachine`, because only the
    endpoint needs it; client machines pay nothing.)
    """

    # Class-level defaults: QuicMachine.__init__ writes _dirty and state before the endpoint
    # attaches itself.
    _endpoint: QuicEndpoint | None = None
    _dirty_flag = False
    _seq = 0  # creation order, to keep the full scan's oldest-first order

    @property
    def _dirty(self) -> bool:
        return self._dirty_flag

    @_dirty.setter
    def _dirty(self, value: bool) -> None:
        self._dirty_flag = value
        if value:
            endpoint = self._endpoint
            if endpoint is not None:
                endpoint._touch(self)

    @property
    def state(self) -> MachineState:
        return self._state_value

    @state.setter
    def state(self, value: MachineState) -> None:
        # Rare (a handful of transitions per connection): report each one, so an end reached
        # through the driver's own calls is settled and its events are seen (a close() with
        # data still unacknowledged sets nothing dirty, only the state).
        self._state_value = value
        endpoint = self._endpoint
        if endpoint is not None:
            endpoint._touch(self)


_by_seq = attrgetter("_seq")


class QuicEndpoint:
    """The server side of QUIC for every connection on one UDP socket.

    Give either an aioquic ``configuration`` (server side, with certificate and key) or the
    certificate and key; the other settings apply to each connection.

    Args:
        configuration: a ready aioquic ``QuicConfiguration`` with ``is_client=False``; when
            given, *certificate*, *private_key*, *password*, *alpn* and *idle_timeout* are not
            used.
        certificate: the server certificate (then any chain), PEM as bytes or text, or the path
            of a PEM file (which may hold the key too).
        private_key: the private key, PEM or a path; default: taken from *certificate*.
        password: the key's password, if it is encrypted.
        alpn: the ALPN protocols accepted, in order of preference (default ``("msgtrans.v1",)``;
            a client offering none of them is refused during the handshake).
        idle_timeout: seconds without a datagram before a connection is dropped (default 30).
        handshake_timeout, close_timeout, ping_interval, limits, zero_copy_threshold,
        max_frame, high_watermark, low_watermark, loopback_datagram_size: per connection, as
            for :class:`~msgtrans.core.quic.QuicMachine`.
        closing_period: each connection waits out its closing or draining period before
            ``ConnectionClosed`` (default ``True``: the socket is shared and stays open, so late
            packets are answered meanwhile; a driver may still end the periods at shutdown).
        max_connections: the most connections at once (default ``None``: no limit).  Initial
            packets beyond it are answered with CONNECTION_CLOSE ``CONNECTION_REFUSED`` and
            counted in :attr:`connections_refused`.
        retry: validate each client's address with a stateless Retry before creating its
            connection (default ``False``; costs one round trip, defeats spoofed floods).
        retry_threshold: validate with a Retry only once this many connections are half-open
            (handshake not complete), so a normal load pays no extra round trip and a flood
            of spoofed Initials costs no state (default ``None``: only as *retry* says; 0 is
            *retry*).  A client that already holds a Retry token is always validated.
        max_half_open: the most half-open connections at once (default ``None``: no limit);
            Initials beyond it are refused with CONNECTION_CLOSE ``CONNECTION_REFUSED``.

    An Initial is decrypted with the keys its destination id derives (RFC 9001 section 5.2)
    before anything is kept for it: garbage shaped like an Initial is dropped and counted in
    :attr:`initials_dropped`, at no memory cost and with no reply.

    Raises:
        ConfigurationError: no certificate or key, unreadable PEM, or a setting out of range.

    Attributes:
        datagrams_received: every datagram given to :meth:`receive_datagram`.
        datagrams_dropped: datagrams that reached no connection (garbage, unknown ids, short
            Initials, invalid Retry tokens, replies dropped under a flood).
        connections_created: connections made for new Initial packets.
        connections_refused: Initial packets refused (``max_connections``, or after
            :meth:`close`).
        version_negotiations: Version Negotiation packets sent.
        retries_sent: Retry packets sent.
        initials_dropped: Initial-shaped datagrams that did not decrypt (also in
            :attr:`datagrams_dropped`).
    """

    def __init__(
        self,
        configuration: QuicConfiguration | None = None,
        *,
        certificate: PemSource | None = None,
        private_key: PemSource | None = None,
        password: bytes | str | None = None,
        alpn: Sequence[str] = (ALPN,),
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        max_frame: int = QUIC_MAX_FRAME,
        high_watermark: int = DEFAULT_HIGH_WATERMARK,
        low_watermark: int = DEFAULT_LOW_WATERMARK,
        loopback_datagram_size: int | None = LOOPBACK_DATAGRAM_SIZE,
        closing_period: bool = True,
        max_connections: int | None = None,
        retry: bool = False,
        retry_threshold: int | None = None,
        max_half_open: int | None = None,
    ) -> None:
        if configuration is None:
            configuration = self._configuration(
                certificate, private_key, password, alpn, idle_timeout
            )
        elif configuration.is_client:
            raise ConfigurationError("configuration", "must be a server configuration")
        if configuration.certificate is None or configuration.private_key is None:
            raise ConfigurationError(
                "certificate", "a QUIC server needs a certificate and its private key"
            )
        if max_connections is not None and max_connections < 0:
            raise ConfigurationError(
                "max_connections", f"must be 0 or more, or None, got {max_connections}"
            )
        for name, value in (("retry_threshold", retry_threshold),
                            ("max_half_open", max_half_open)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ConfigurationError(name, f"must be 0 or more, or None, got {value!r}")
        self.configuration = configuration
        self.max_connections = max_connections
        self.max_half_open = max_half_open
        # Retry always (threshold 0), from a number of half-open connections on, or never.
        self._retry_from: int | None = 0 if retry else retry_threshold
        self._settings: dict[str, Any] = {
            "limits": limits,
            "zero_copy_threshold": zero_copy_threshold,
            "max_frame": max_frame,
            "handshake_timeout": handshake_timeout,
            "close_timeout": close_timeout,
            "ping_interval": ping_interval,
            "high_watermark": high_watermark,
            "low_watermark": low_watermark,
            "loopback_datagram_size": loopback_datagram_size,
            "closing_period": closing_period,
        }
        # Fail on bad settings now, not at the first client.
        QuicMachine(
            QuicConnection(
                configuration=configuration, original_destination_connection_id=b"\0" * 8
            ),
            **self._settings,
        )
        self._retry = QuicRetryTokenHandler() if self._retry_from is not None else None
        # Connections whose handshake has not completed: what a flood of Initials grows.
        self._half_open: set[QuicMachine] = set()
        self._routes: dict[bytes, QuicMachine] = {}
        self._cids: dict[QuicMachine, set[bytes]] = {}
        # The live connections (oldest first) with their next deadline.  A deadline only moves
        # when the endpoint feeds, times or flushes a connection, so it is refreshed then and
        # next_deadline() need not ask every connection (a stale one is merely early).
        self._live: dict[QuicMachine, float | None] = {}
        # The same deadlines as a heap of (deadline, push count, connection); an entry is
        # stale once _live holds another deadline for its connection (or none), and stale
        # entries are dropped when they reach the top.  next_deadline() and handle_timer() then
        # cost O(log n) per change instead of a scan.
        self._heap: list[tuple[float, int, QuicMachine]] = []
        # Connections that may have datagrams to send or may have ended since the last
        # datagrams_to_send(): every other connection has nothing to send (see
        # _EndpointConnection), so the flush looks at these only.
        self._to_flush: set[QuicMachine] = set()
        # Connections that may have news for the driver since its last take_touched();
        # None until a driver asks, so that drivers that never ask keep nothing here.
        self._news: set[QuicMachine] | None = None
        self._seq = 0
        self._pushes = 0  # unique tie-breaker: connections themselves do not compare
        self._retired: list[QuicMachine] = []  # closed, events not drained yet
        self._accepted: list[QuicMachine] = []
        self._replies: list[tuple[bytes, Address]] = []
        self._closing = False
        self.datagrams_received = 0
        self.datagrams_dropped = 0
        self.connections_created = 0
        self.connections_refused = 0
        self.version_negotiations = 0
        self.retries_sent = 0
        self.initials_dropped = 0

    @staticmethod
    def _configuration(
        certificate: PemSource | None,
        private_key: PemSource | None,
        password: bytes | str | None,
        alpn: Sequence[str],
        idle_timeout: float,
    ) -> QuicConfiguration:
        if certificate is None:
            raise ConfigurationError(
                "certificate", "a QUIC server needs a certificate (PEM data or a file path)"
            )
        if not idle_timeout > 0:
            raise ConfigurationError(
                "idle_timeout", f"must be a positive number of seconds, got {idle_timeout!r}"
            )
        alpn_list = list(alpn)
        if not alpn_list or not all(isinstance(p, str) and p for p in alpn_list):
            raise ConfigurationError("alpn", f"must be non-empty protocol names, got {alpn!r}")
        cert_pem = _read_pem(certificate, "certificate")
        key_pem = _read_pem(private_key, "private_key") if private_key is not None else cert_pem
        if isinstance(password, str):
            password = password.encode("utf-8")
        # One file may hold the certificate, its chain and the key: take each kind of block
        # from it, since cryptography's loaders refuse blocks of the other kind.
        cert_blocks = b"".join(m.group(0) for m in _CERT_BLOCK.finditer(cert_pem))
        key_block = _KEY_BLOCK.search(key_pem)
        if not cert_blocks:
            raise ConfigurationError("certificate", "no certificate in the PEM data")
        if key_block is None:
            raise ConfigurationError("private_key", "no private key in the PEM data")
        try:
            chain = load_pem_x509_certificates(cert_blocks)
            key = load_pem_private_key(key_block.group(0), password=password)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError("certificate", f"cannot load the PEM data: {exc}") from exc
        return QuicConfiguration(
            is_client=False,
            alpn_protocols=alpn_list,
            idle_timeout=float(idle_timeout),
            certificate=chain[0],
            certificate_chain=chain[1:],
            private_key=key,
        )

    # --- the driver's face -----------------------------------------------------------------------

    @property
    def connections(self) -> list[QuicMachine]:
        """The connections that have not ended yet, oldest first."""
        return list(self._live)

    @property
    def is_closed(self) -> bool:
        """``True`` once :meth:`close` was called and every connection has ended: the driver
        may close the socket."""
        return self._closing and not self._live

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Route one datagram from *addr* to its connection, or start a new connection.

        Never raises on its input: what cannot be routed is dropped and counted.
        """
        self.datagrams_received += 1
        data = bytes(data)
        buf = QuicBuffer(data=data)
        try:
            header = pull_quic_header(buf, host_cid_length=self.configuration.connection_id_length)
        except ValueError:
            self.datagrams_dropped += 1
            return
        connection = self._routes.get(header.destination_cid)
        if connection is not None:
            connection.receive_datagram(data, addr, now)
            self._settle(connection)
            self._note(connection)
            return
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
            # Never answered: two servers could otherwise bounce them forever.
            self.datagrams_dropped += 1
            return
        big_enough = len(data) >= SMALLEST_MAX_DATAGRAM_SIZE
        version = header.version
        if version is not None and version not in self.configuration.supported_versions:
            # RFC 9000 section 5.2.2: answer only datagrams that could open a connection, so
            # the answer is never an amplification.
            if big_enough:
                self.version_negotiations += 1
                self._reply(
                    encode_quic_version_negotiation(
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                        supported_versions=self.configuration.supported_versions,
                    ),
                    addr,
                )
            else:
                self.datagrams_dropped += 1
            return
        if version is None or header.packet_type != QuicPacketType.INITIAL or not big_enough:
            self.datagrams_dropped += 1
            return
        if not _initial_decrypts(data, buf.tell(), header, version):
            # Anyone can make a valid Initial (its keys come from its own id), so this only
            # stops noise; a spoofed flood of valid ones is what Retry and the caps are for.
            self.initials_dropped += 1
            self.datagrams_dropped += 1
            return
        if self._closing or (
            self.max_connections is not None and len(self._live) >= self.max_connections
        ):
            self._refuse(header, version, addr,
                         "server closing" if self._closing else "server at capacity")
            return
        original_cid: bytes = header.destination_cid
        retry_cid: bytes | None = None
        if self._retry is not None:
            validated = self._validate(header, version, addr, now)
            if validated is None:
                return
            if validated:
                original_cid, retry_cid = validated, header.destination_cid
        if self.max_half_open is not None and len(self._half_open) >= self.max_half_open:
            self._refuse(header, version, addr, "too many handshakes in progress")
            return
        self._create(data, addr, now, header.destination_cid, (original_cid, retry_cid))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Return every datagram to send now, each with its destination, and forget them.

        Costs O(connections touched since the last call), not O(connections).
        """
        out, self._replies = self._replies, []
        # Ended connections wait in _retired only until their events are drained, whichever way.
        if self._retired:
            self._retired = [c for c in self._retired if c.has_events]
        touched = self._to_flush
        if not touched:
            return out
        self._to_flush = set()
        live = self._live
        news = self._news
        # Oldest first, as a scan of every connection would go.
        for connection in sorted(touched, key=_by_seq) if len(touched) > 1 else touched:
            if connection not in live:
                continue
            if connection._dirty:
                out.extend(connection.datagrams_to_send(now))
                self._settle(connection)
            elif connection.state is MachineState.CLOSED:
                self._settle(connection)  # ended through the driver's own calls
            else:
                continue
            if news is not None:
                news.add(connection)
        return out

    def next_deadline(self) -> float | None:
        """Return when :meth:`handle_timer` must next run, or ``None``."""
        heap, live = self._heap, self._live
        while heap:
            deadline, _seq, connection = heap[0]
            if live.get(connection) == deadline:
                return deadline
            heapq.heappop(heap)  # stale: the connection ended or its deadline moved
        return None

    def handle_timer(self, now: float) -> None:
        """Fire the timers of every connection that are due at *now*."""
        heap, live = self._heap, self._live
        due: dict[QuicMachine, None] = {}
        while heap and heap[0][0] <= now:
            deadline, _seq, connection = heapq.heappop(heap)
            if live.get(connection) == deadline:
                due[connection] = None
        # Oldest first, as a scan of every connection would go.
        for connection in sorted(due, key=_by_seq) if len(due) > 1 else due:
            # Its heap entry is gone: forget the deadline so _settle pushes the next one even
            # when it did not move (a stale, early deadline fires without effect).
            live[connection] = None
            connection.handle_timer(now)
            self._settle(connection)
            self._note(connection)

    def take_touched(self) -> list[QuicMachine]:
        """Return the connections that may have news since the last call, oldest first, and
        forget them.

        These are the connections fed a datagram, timed, flushed, written to, closed or
        created; any other connection has no new events and nothing newly sent, so a driver
        may look at these only instead of at every connection.  Ended connections are
        included (once) so that their ``ConnectionClosed`` is seen.  Nothing is recorded until
        the first call, so drivers that never call it pay nothing.
        """
        news = self._news
        self._news = set()
        if not news:
            return []
        return sorted(news, key=_by_seq)

    def accept(self) -> list[QuicMachine]:
        """Return the connections created since the last call (each once), oldest first.

        They are handshaking; their ``ConnectionEstablished`` comes with their events.
        """
        accepted, self._accepted = self._accepted, []
        return accepted

    def events(self) -> list[tuple[QuicMachine, Event]]:
        """Drain the events of every connection, including those that ended since the last
        call, as ``(connection, event)`` pairs.

        Draining a connection's own :meth:`~QuicMachine.events` instead works as well; each
        event is handed out once either way.
        """
        out: list[tuple[QuicMachine, Event]] = []
        for connection in [*self._live, *self._retired]:
            out.extend((connection, event) for event in connection.events())
        self._retired = []
        return out

    def close(self, code: int = 0, reason: str = "") -> None:
        """Close every connection gracefully with *code* and *reason*, and refuse new ones.

        Keep driving the endpoint until :attr:`is_closed`.
        """
        self._closing = True
        for connection in list(self._live):
            connection.close(code, reason)
            self._settle(connection)
            self._note(connection)

    def stats(self) -> dict[str, int]:
        """The counters, and the number of live connections, as a dict."""
        return {
            "datagrams_received": self.datagrams_received,
            "datagrams_dropped": self.datagrams_dropped,
            "connections_created": self.connections_created,
            "connections_refused": self.connections_refused,
            "connections_live": len(self._live),
            "version_negotiations": self.version_negotiations,
            "retries_sent": self.retries_sent,
            "initials_dropped": self.initials_dropped,
            "connections_half_open": len(self._half_open),
        }

    # --- internals -------------------------------------------------------------------------------

    def _reply(self, datagram: bytes, addr: Address) -> None:
        if len(self._replies) >= MAX_PENDING_REPLIES:
            self.datagrams_dropped += 1
            return
        self._replies.append((datagram, addr))

    def _refuse(self, header: QuicHeader, version: int, addr: Address, reason: str) -> None:
        self.connections_refused += 1
        self._reply(
            _refusal(version, header.source_cid, header.destination_cid,
                     QuicErrorCode.CONNECTION_REFUSED, reason),
            addr,
        )

    def _validate(self, header: QuicHeader, version: int, addr: Address,
                  now: float) -> bytes | None:
        """Stateless Retry: return the original destination id of a validated client, ``b""``
        when no validation is asked for now (below the threshold, no Retry token), or
        ``None`` when a Retry or a refusal went out instead."""
        assert self._retry is not None and self._retry_from is not None
        token, dcid, scid = header.token, header.destination_cid, header.source_cid
        wanted = len(self._half_open) >= self._retry_from
        try:
            if not token and not wanted:
                return b""
            if not token:
                source_cid = os.urandom(self.configuration.connection_id_length)
                token = self._retry.create_token(
                    address=addr,
                    original_destination_connection_id=dcid,
                    retry_source_connection_id=source_cid,
                    now=now,
                )
                self.retries_sent += 1
                self._reply(
                    encode_quic_retry(
                        version=version,
                        source_cid=source_cid,
                        destination_cid=scid,
                        original_destination_cid=dcid,
                        retry_token=token,
                    ),
                    addr,
                )
                return None
            return self._retry.validate_token(
                address=addr, destination_cid=dcid, token=token, now=now
            )
        except ValueError:
            if not wanted and token:
                # Not a token of ours to insist on (a NEW_TOKEN of an earlier server, say)
                # while no validation is asked for: served as if it had none.
                return b""
            # A forged, expired or foreign token (or an address the token cannot encode):
            # close with INVALID_TOKEN, RFC 9000 section 8.1.3.
            self.datagrams_dropped += 1
            self._reply(
                _refusal(version, scid, dcid, QuicErrorCode.INVALID_TOKEN, "invalid token"),
                addr,
            )
            return None

    def _create(self, data: bytes, addr: Address, now: float, dcid: bytes,
                cids: tuple[bytes, bytes | None]) -> None:
        """Make the connection for an Initial sent to *dcid*; *cids* are the original
        destination id and the Retry's source id (``None`` without Retry)."""
        original_cid, retry_cid = cids
        quic = FlowControlledQuicConnection(
            configuration=self.configuration,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
        )
        connection = _EndpointConnection(quic, peer_address=addr, **self._settings)
        self._seq += 1
        connection._seq = self._seq
        connection._endpoint = self
        connection._cid_listener = self._on_cid
        self._live[connection] = None
        self._half_open.add(connection)
        self._cids[connection] = set()
        # The client keeps sending to the id it chose until it learns ours.
        self._on_cid(connection, dcid, True)
        self._on_cid(connection, quic.host_cid, True)
        self.connections_created += 1
        self._accepted.append(connection)
        connection.start(now)
        connection.receive_datagram(data, addr, now)
        self._settle(connection)
        self._note(connection)

    def _on_cid(self, connection: QuicMachine, cid: bytes, issued: bool) -> None:
        cids = self._cids.get(connection)
        if cids is None:
            return  # already retired
        if issued:
            self._routes[cid] = connection
            cids.add(cid)
        else:
            cids.discard(cid)
            if self._routes.get(cid) is connection:
                del self._routes[cid]

    def _touch(self, connection: QuicMachine) -> None:
        """*connection* may have datagrams to send or may have ended (see
        :class:`_EndpointConnection`)."""
        self._to_flush.add(connection)
        news = self._news
        if news is not None:
            news.add(connection)

    def _note(self, connection: QuicMachine) -> None:
        """*connection* may have new events for the driver."""
        news = self._news
        if news is not None:
            news.add(connection)

    def _settle(self, connection: QuicMachine) -> None:
        """Refresh a connection's deadline, or forget it if it ended (aioquic sends nothing
        after it terminated)."""
        live = self._live
        if connection not in live:
            return
        if connection.state is not MachineState.HANDSHAKING:
            self._half_open.discard(connection)
        if connection.state is not MachineState.CLOSED:
            deadline = connection.next_deadline()
            if deadline != live[connection]:
                live[connection] = deadline
                if deadline is not None:
                    heap = self._heap
                    self._pushes += 1
                    heapq.heappush(heap, (deadline, self._pushes, connection))
                    if len(heap) > 2 * len(live) + 64:
                        self._compact()
            return
        for cid in self._cids.pop(connection, ()):
            if self._routes.get(cid) is connection:
                del self._routes[cid]
        del self._live[connection]
        self._to_flush.discard(connection)
        if connection.has_events:
            self._retired.append(connection)

    def _compact(self) -> None:
        """Rebuild the deadline heap from the live deadlines: stale entries that never reached
        the top (deadlines that moved earlier) would otherwise pile up."""
        self._heap = [(d, i, c) for i, (c, d) in enumerate(self._live.items()) if d is not None]
        self._pushes = len(self._live)
        heapq.heapify(self._heap)
