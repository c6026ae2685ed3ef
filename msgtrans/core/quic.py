"""QUIC connections: the msgtrans stream mapping on aioquic's sans-IO ``QuicConnection``.

The wire format's QUIC mapping is one long-lived bidirectional stream, opened by the client
(stream id 0), that carries every packet preceded by its u32 big-endian frame length; a frame
over 16 MiB (the ``max_frame`` setting) is a protocol error that closes the connection.  ALPN is
``msgtrans.v1``.

:class:`QuicMachine` is one QUIC connection with the face every protocol machine shows its driver
(:class:`~msgtrans.core.machine.DatagramMachine`).  A client is made with
:meth:`QuicMachine.client`; server connections are made by
:class:`~msgtrans.core.quic_endpoint.QuicEndpoint`, which owns the UDP socket's datagrams and
routes them by connection id.

How the aioquic life maps onto the machine's events:

* ``HandshakeCompleted`` -> :class:`~msgtrans.core.events.ConnectionEstablished`
  (``tls=True``, ``tls_version="TLSv1.3"``, the negotiated ALPN and cipher).
* bytes on stream 0 -> :class:`~msgtrans.core.framing.LengthPrefixedDecoder` ->
  :class:`~msgtrans.core.events.PacketReceived`; bytes on any other stream are a protocol error
  (the spec allows one stream; Rust 1.0's stream-per-packet peers are refused loudly, not
  silently ignored).
* the peer's FIN on stream 0 -> :class:`~msgtrans.core.events.CloseStarted` (``by_peer=True``)
  and a graceful close from our side.
* ``ConnectionTerminated`` -> :class:`~msgtrans.core.events.ConnectionClosed`.  aioquic
  reports the end after QUIC's closing or draining period (three probe timeouts, RFC 9000
  section 10.2), so on a server connection ``ConnectionClosed`` comes from
  :meth:`QuicMachine.handle_timer` a little after the CONNECTION_CLOSE left or arrived.  A
  client has a UDP socket of its own, which its driver closes once the machine is closed, and
  RFC 9000 section 10.2 lets such an endpoint end those periods early: a client reports
  ``ConnectionClosed`` as soon as its CONNECTION_CLOSE is handed out (or the peer's arrived)
  rather than some 100 ms later (see ``closing_period``).  Its ``code`` and ``reason`` are
  those of the application close; ``clean`` is true only for code 0 (``NO_ERROR``).  A peer's
  close adds a :class:`~msgtrans.core.events.CloseStarted` (``by_peer=True``) first; a failure
  (idle timeout, certificate verification, a transport error of either side, a protocol error
  we found) is an :class:`~msgtrans.core.events.ErrorOccurred` instead, with
  ``ConnectionClosed.error`` set.
  Errors map through :func:`~msgtrans.core.errormap.map_quic_close`.

aioquic has no public measure of the bytes a stream holds until they are acknowledged, nor a way
to announce a stream without data; for those two things this module reads and sets attributes of
aioquic's stream objects, guarded so that a different aioquic degrades (no pause signals, a
server that waits for the client's first packet) rather than fails.
"""

from __future__ import annotations

import ipaddress
import ssl
import struct
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any, cast

from aioquic import tls
from aioquic._buffer import Buffer as QuicBuffer
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, pull_quic_transport_parameters
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketPacer, QuicPacketSpace
from aioquic.quic.stream import QuicStream

from .config import LOOPBACK_DATAGRAM_SIZE  # defined with the configs that default to it
from .errormap import map_quic_close
from .errors import (
    ConfigurationError,
    Protocol,
    ProtocolError,
    ResourceError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from .events import (
    CloseStarted,
    ConnectionClosed,
    ConnectionEstablished,
    ErrorOccurred,
    PacketReceived,
    WritePaused,
    WriteResumed,
)
from .framing import (
    DEFAULT_ZERO_COPY_THRESHOLD,
    QUIC_MAX_FRAME,
    LengthPrefixedDecoder,
    length_prefix,
)
from .machine import Address, DatagramMachine, MachineState
from .packet import (
    DEFAULT_LIMITS,
    HEADER,
    HEADER_SIZE,
    VERSION,
    Buffer,
    Compression,
    Limits,
    Packet,
)

__all__ = [
    "ALPN",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_HIGH_WATERMARK",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LOW_WATERMARK",
    "DEFAULT_PING_INTERVAL",
    "LOOPBACK_DATAGRAM_SIZE",
    "MAX_RECEIVE_WINDOW",
    "STREAM_ID",
    "TIMER_GRANULARITY",
    "BurstPacer",
    "FlowControlledQuicConnection",
    "QuicAppError",
    "QuicMachine",
]

#: The ALPN protocol of msgtrans over QUIC.
ALPN = "msgtrans.v1"
#: The one stream that carries every packet: the client's first bidirectional stream.
STREAM_ID = 0
#: Seconds without any datagram from the peer before the connection is dropped.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Seconds the TLS handshake may take.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Seconds a graceful close waits for queued packets to be acknowledged.
DEFAULT_CLOSE_TIMEOUT = 10.0
#: Seconds without receiving anything after which an open connection sends a QUIC PING.
DEFAULT_PING_INTERVAL = 10.0
#: Bytes waiting to leave (or to be acknowledged) above which :class:`WritePaused` is emitted.
DEFAULT_HIGH_WATERMARK = 1024 * 1024
#: ... and at or below which :class:`WriteResumed` follows.
DEFAULT_LOW_WATERMARK = 256 * 1024
# The key exchange groups a client offers key shares for (see FlowControlledQuicConnection).
_CLIENT_KEY_SHARE_GROUPS = frozenset({tls.Group.SECP256R1, tls.Group.X25519})
# RFC 9002 section 7.2: the initial window is min(10 * size, max(14720, 2 * size)).
_INITIAL_WINDOW_PACKETS = 10
_INITIAL_WINDOW_BYTES = 14720

# The longest reason phrase we put in a CONNECTION_CLOSE, so that the frame fits a packet.
_MAX_REASON = 256
# The frame length prefix (framing.length_prefix, without the call), and the prefix with the
# packet's fixed header after it, packed at once (Packet.header's fields, in its order).
_U32 = struct.Struct(">I")
_FRAMED_HEADER = struct.Struct(">I" + HEADER.format.lstrip("><!=@"))
# Framed packets smaller than this are joined into one piece and gathered until the next
# datagrams_to_send, which hands them to aioquic in one write: aioquic's write costs far more
# than a small copy.  Larger ones go to aioquic at once, with no extra copy.
_GATHER_BELOW = 16 * 1024
#: Called by a machine when aioquic issues (``True``) or retires (``False``) one of its
#: connection ids; the endpoint routes datagrams with it.
CidListener = Callable[["QuicMachine", bytes, bool], None]


#: The coarsest a driver's timer may fire late: epoll and most event loops sleep in whole
#: milliseconds, so a pacing wait of a few microseconds lasts a millisecond.
TIMER_GRANULARITY = 0.001
# A paced burst covers this many timer granularities (quinn uses 2 ms likewise), and holds at
# most this many datagrams.
_BURST_GRANULARITIES = 2
_MAX_BURST_DATAGRAMS = 256


class BurstPacer(QuicPacketPacer):
    """aioquic's pacer with bursts sized to the timer granularity of an event loop.

    aioquic lets a burst hold at most 16 datagrams; its pacing timer then asks to be woken a
    few microseconds later, which an event loop rounds up to a millisecond.  So a paced sender
    never moves more than 16 datagrams a millisecond (about 19 MB/s of 1200-byte datagrams),
    whatever the congestion window says.  Here a burst may cover two timer granularities at
    the pacing rate (at most 256 datagrams, and never more than the congestion window), so the
    pacing rate itself is what limits the sender, as RFC 9002 section 7.7 intends.
    """

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        super().update_rate(congestion_window, smoothed_rtt)
        pacing_rate = congestion_window / max(smoothed_rtt, 1e-6)
        burst = min(
            pacing_rate * TIMER_GRANULARITY * _BURST_GRANULARITIES,
            float(congestion_window),
            float(_MAX_BURST_DATAGRAMS * self._max_datagram_size),
        )
        self.bucket_max = max(self.bucket_max, burst / pacing_rate)


#: See :attr:`FlowControlledQuicConnection.max_receive_window`.
MAX_RECEIVE_WINDOW = 4 * 1024 * 1024


class FlowControlledQuicConnection(QuicConnection):
    """aioquic's ``QuicConnection``, with receive windows that stop growing while reading is
    paused, and a pacer made for an event loop's timers (:class:`BurstPacer`).

    aioquic doubles a receive window whenever the peer has used half of it, counting what
    *arrived*, not what the application consumed, so a peer can always send more.  While
    :attr:`read_paused` is set no MAX_DATA / MAX_STREAM_DATA update leaves, so the peer stops at
    the window it has; and the credit granted is never more than :attr:`max_receive_window`
    beyond what arrived, so that window is bounded: together they bound a slow reader's memory
    on QUIC by a constant.
    """

    read_paused = False
    #: The most credit (bytes the peer may send beyond what arrived) the connection and each
    #: stream grant: aioquic doubles a window whenever half of it is used, so the credit grew
    #: with everything a connection ever received and a paused reader's memory had no
    #: constant bound.  4 MiB keeps 40 MB/s per connection at 100 ms of round trip.
    max_receive_window = MAX_RECEIVE_WINDOW
    #: The peer's max_udp_payload_size transport parameter once known (RFC 9000 section 18.2).
    peer_max_udp_payload_size = 65527

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # aioquic keeps its pacer in a private attribute; a different aioquic keeps its own.
        loss = getattr(self, "_loss", None)
        pacer = getattr(loss, "_pacer", None)
        if isinstance(pacer, QuicPacketPacer) and pacer.packet_time is None:
            loss._pacer = BurstPacer(  # type: ignore[union-attr]
                max_datagram_size=pacer._max_datagram_size
            )

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        context = getattr(self, "tls", None)
        groups = getattr(context, "_supported_groups", None)
        if self._is_client and isinstance(groups, list):
            # aioquic's client makes a key share for every group it supports, P-384 and X448
            # included (some 0.45 ms of key generation per connect), and servers take P-256 or
            # X25519 (RFC 8446 section 9.1 makes P-256 mandatory); aioquic has no
            # HelloRetryRequest, so the groups offered stay the ones every server has.
            kept = [group for group in groups if group in _CLIENT_KEY_SHARE_GROUPS]
            if kept:
                context._supported_groups = kept  # type: ignore[union-attr]

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        super()._parse_transport_parameters(data, from_session_ticket)
        # aioquic checks the peer's max_udp_payload_size but keeps it nowhere; it only matters
        # once we send datagrams over 1200 bytes (see QuicMachine's loopback_datagram_size).
        params = pull_quic_transport_parameters(QuicBuffer(data=data))
        if params.max_udp_payload_size is not None:
            self.peer_max_udp_payload_size = params.max_udp_payload_size

    def widen_datagrams(self, size: int) -> bool:
        """Send datagrams of up to *size* bytes from now on (never more than the peer accepts),
        and recompute the initial congestion window for that size if it is still larger (RFC
        9002 section 7.2).  Returns whether the size changed."""
        size = min(size, self.peer_max_udp_payload_size, LOOPBACK_DATAGRAM_SIZE)
        loss = getattr(self, "_loss", None)
        cc = getattr(loss, "_cc", None)
        pacer = getattr(loss, "_pacer", None)
        old = getattr(self, "_max_datagram_size", None)
        if not isinstance(old, int) or size <= old or cc is None or pacer is None:
            return False  # pragma: no cover - a different aioquic, or already wide
        self._max_datagram_size = size
        for holder in (cc, pacer):
            if hasattr(holder, "_max_datagram_size"):
                holder._max_datagram_size = size
        initial = min(_INITIAL_WINDOW_PACKETS * size, max(_INITIAL_WINDOW_BYTES, 2 * size))
        cc.congestion_window = max(cc.congestion_window, initial)
        return True

    def _write_connection_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace
    ) -> None:
        if self.read_paused:
            return
        limit = self._local_max_data
        used = limit.used
        window = self.max_receive_window
        # aioquic's trigger (half the window used), once half the largest credit is left.
        if used * 2 > limit.value and limit.value - used < window // 2:
            limit.value = min(limit.value * 2, used + window)
        # aioquic doubles the window itself whenever more than half is used; shown at most
        # half used, it only writes the MAX_DATA (and MAX_STREAMS) frames the value asks for.
        limit.used = min(used, limit.value // 2)
        try:
            super()._write_connection_limits(builder, space)
        finally:
            limit.used = used

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        if self.read_paused:
            return
        receiver = stream.receiver
        seen = receiver.highest_offset
        local = stream.max_stream_data_local
        window = self.max_receive_window
        if local and seen * 2 > local and local - seen < window // 2:
            stream.max_stream_data_local = local = min(local * 2, seen + window)
        receiver.highest_offset = min(seen, local // 2)  # as above: no doubling of its own
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = seen


class QuicAppError(IntEnum):
    """The QUIC application error codes msgtrans puts in CONNECTION_CLOSE frames.

    Any other code passed to :meth:`QuicMachine.close` travels unchanged; these are the ones the
    machine itself uses.
    """

    NO_ERROR = 0x0  # a graceful close
    PROTOCOL_ERROR = 0x1  # the peer broke the msgtrans stream mapping (bad frame, wrong stream)
    TIMEOUT = 0x2  # the handshake did not complete in time
    REFUSED = 0x3  # the server's admission hook refused the session


def _check_positive(field: str, value: float) -> None:
    if not value > 0:
        raise ConfigurationError(field, f"must be a positive number of seconds, got {value!r}")


def _truncate_reason(reason: str) -> str:
    data = reason.encode("utf-8")[:_MAX_REASON]
    return data.decode("utf-8", "ignore")


class QuicMachine(DatagramMachine):
    """One QUIC connection carrying msgtrans packets on one bidirectional stream.

    Make clients with :meth:`client`; server connections come from
    :class:`~msgtrans.core.quic_endpoint.QuicEndpoint`.  The constructor wraps an aioquic
    ``QuicConnection`` you configured yourself (an escape hatch; the ALPN and verification
    settings are then yours).

    Args:
        quic: the aioquic connection to drive; its configuration says client or server.
        peer_address: where a client connects to (required for clients, ignored for servers,
            whose peer is whoever sent the first datagram).
        limits: receive limits for each packet (default 16 MiB payload, 4 KiB ext header).
        zero_copy_threshold: payloads of at least this many bytes are handed out as read-only
            views of the received memory (default 64 KiB; ``None``: always copy).
        max_frame: the largest frame accepted *and* sent (default 16 MiB, the spec's cap).
        handshake_timeout: seconds the handshake may take (default 10).
        close_timeout: seconds a graceful close waits for queued packets to be acknowledged
            before closing anyway (default 10).
        ping_interval: seconds without receiving anything after which an open connection sends
            a QUIC PING, whose acknowledgement keeps a quiet but healthy connection from its idle
            timeout (default 10; keep it well under both sides' idle timeouts).  ``None`` sends
            none: a silent connection then ends with ``timeout.idle``.  A peer that stopped
            answering is still found out by the idle timeout.
        high_watermark: bytes waiting to leave or to be acknowledged above which
            :class:`~msgtrans.core.events.WritePaused` is emitted (default 1 MiB).
        low_watermark: bytes at or below which :class:`~msgtrans.core.events.WriteResumed`
            follows (default 256 KiB).
        closing_period: wait out QUIC's closing or draining period (three probe timeouts)
            before :class:`~msgtrans.core.events.ConnectionClosed`, answering late packets with
            CONNECTION_CLOSE meanwhile.  Default ``None``: servers do (their socket is shared
            and stays), clients do not (their driver closes their own socket, which RFC 9000
            section 10.2 allows to end the period early).
        loopback_datagram_size: once the handshake is over, send datagrams of up to this many
            bytes when the peer is on a loopback address (default and most 16384; ``None``: 1200
            bytes always).  The loopback interface carries 64 KiB datagrams, so the path needs no
            MTU discovery, and one datagram then does the work of 13: QUIC's cost is per
            datagram.  Never more than the peer's ``max_udp_payload_size``, and only for an
            aioquic connection made by msgtrans (:class:`FlowControlledQuicConnection`).

    Raises:
        ConfigurationError: a setting is out of range, or a client has no peer address.

    Attributes:
        alpn: the negotiated ALPN protocol once established.
        packets_sent: packets queued with :meth:`send_packet`.
        packets_received: packets delivered as :class:`~msgtrans.core.events.PacketReceived`.
    """

    protocol = Protocol.QUIC

    def __init__(
        self,
        quic: QuicConnection,
        *,
        peer_address: Address | None = None,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        max_frame: int = QUIC_MAX_FRAME,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        high_watermark: int = DEFAULT_HIGH_WATERMARK,
        low_watermark: int = DEFAULT_LOW_WATERMARK,
        closing_period: bool | None = None,
        loopback_datagram_size: int | None = LOOPBACK_DATAGRAM_SIZE,
    ) -> None:
        is_client = bool(quic.configuration.is_client)
        if is_client and peer_address is None:
            raise ConfigurationError("peer_address", "a QUIC client needs the server's address")
        _check_positive("handshake_timeout", handshake_timeout)
        _check_positive("close_timeout", close_timeout)
        if ping_interval is not None:
            _check_positive("ping_interval", ping_interval)
        if loopback_datagram_size is not None and not (
            1200 <= loopback_datagram_size <= LOOPBACK_DATAGRAM_SIZE
        ):
            raise ConfigurationError(
                "loopback_datagram_size",
                f"must be between 1200 and {LOOPBACK_DATAGRAM_SIZE} bytes, "
                f"got {loopback_datagram_size!r}",
            )
        if not 0 <= low_watermark <= high_watermark:
            raise ConfigurationError(
                "low_watermark",
                f"must be between 0 and high_watermark ({high_watermark}), got {low_watermark}",
            )
        super().__init__(is_client=is_client)
        # LengthPrefixedDecoder validates max_frame and zero_copy_threshold.
        self._decoder = LengthPrefixedDecoder(limits, zero_copy_threshold, max_frame=max_frame)
        # aioquic hands out stream data as bytes of its own: a big packet is assembled by
        # copying them once into its pooled buffer (the header first, so its size is known),
        # which is this protocol's receive, never a second copy (see docs/buffers.md).
        self._decoder.received_by_feed = True
        self._quic = quic
        self._peer_address = peer_address
        self.limits = limits
        self.max_frame = max_frame
        self.handshake_timeout = float(handshake_timeout)
        self.close_timeout = float(close_timeout)
        self.ping_interval = None if ping_interval is None else float(ping_interval)
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.closing_period = not is_client if closing_period is None else bool(closing_period)
        self.loopback_datagram_size = loopback_datagram_size
        # The size to widen datagrams to once the Initial packet space is gone (see
        # _maybe_widen_datagrams); None: nothing pending.
        self._widen_to: int | None = None
        self.alpn: str | None = None
        self._established = False
        self.packets_sent = 0
        self.packets_received = 0

        # aioquic is fed (a client connected, a server given its first datagram).
        self._active = False
        # Whether stream 0 can take writes.  A client creates it itself; a server can only write
        # once the client's first frame for it arrived (RFC 9000 section 3.2), so until then the
        # server keeps what it sends in _backlog.  Small packets wait there too until the next
        # datagrams_to_send (see _GATHER_BELOW).
        self._stream_ready = is_client
        self._backlog: list[Buffer] = []
        self._backlog_bytes = 0
        # aioquic's unacknowledged bytes as of the last call into aioquic (only such a call
        # changes them), so that a send need not look them up.
        self._unacked = 0
        # aioquic's get_timer() costs a walk over its packet spaces; it can only change when
        # aioquic is called, so it is cached until then (None: look it up again).
        self._quic_timer: tuple[float | None] | None = None
        self._sent_any = False  # datagrams_to_send ran
        self._paused = False
        self._close_started = False  # CloseStarted (or the ErrorOccurred of an abort) emitted
        self._close_request: tuple[int, str] | None = None  # waiting for queued data to leave
        self._close_deadline: float | None = None
        self._handshake_deadline: float | None = None
        self._last_heard = 0.0  # when the peer was last heard from, or we last pinged
        self._pings = 0
        self._error: TransportError | None = None  # reported; ConnectionClosed still to come
        self._close_code: int | None = None
        self._close_reason = ""
        # Set whenever aioquic may have datagrams to send; the endpoint polls only those.
        self._dirty = False
        self._cid_listener: CidListener | None = None

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def client(
        cls,
        server_addr: Address,
        *,
        server_name: str | None = None,
        cert_verification: bool = True,
        ca_file: str | None = None,
        ca_data: bytes | str | None = None,
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
        closing_period: bool = False,
        loopback_datagram_size: int | None = LOOPBACK_DATAGRAM_SIZE,
    ) -> QuicMachine:
        """Make a client connection to *server_addr*; call :meth:`start` to begin the handshake.

        Args:
            server_addr: the server's socket address, ``(host, port)``; datagrams from any
                other address are ignored (RFC 9000 section 9).
            server_name: the name to verify the certificate against and to send as SNI
                (default: the host of *server_addr*, so an IP address is checked against the
                certificate's IP SANs).
            cert_verification: verify the server's certificate (default ``True``).  Turn it off
                only for tests and trusted networks.
            ca_file: a PEM file of CA certificates to trust instead of the system's (certifi's).
            ca_data: PEM CA certificates to trust, as bytes or text.
            alpn: the ALPN protocols to offer (default ``("msgtrans.v1",)``).
            idle_timeout: seconds without a datagram from the server before the connection is
                dropped (default 30; the smaller of both sides' values applies).
            handshake_timeout, close_timeout, ping_interval, limits, zero_copy_threshold,
            max_frame, high_watermark, low_watermark: as for :class:`QuicMachine`.
            closing_period: wait out QUIC's closing period before ``ConnectionClosed``
                (default ``False``: the driver closes the client's own socket instead).
            loopback_datagram_size: as for :class:`QuicMachine`.

        Raises:
            ConfigurationError: a setting is invalid.
        """
        _check_positive("idle_timeout", idle_timeout)
        alpn_list = list(alpn)
        if not alpn_list or not all(isinstance(p, str) and p for p in alpn_list):
            raise ConfigurationError("alpn", f"must be non-empty protocol names, got {alpn!r}")
        if not isinstance(server_addr, tuple) or len(server_addr) < 2:
            raise ConfigurationError(
                "server_addr", f"must be a (host, port) tuple, got {server_addr!r}"
            )
        if server_name is None:
            server_name = str(server_addr[0])
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=alpn_list,
            idle_timeout=float(idle_timeout),
            server_name=server_name,
        )
        if not cert_verification:
            configuration.verify_mode = ssl.CERT_NONE
        if isinstance(ca_data, str):
            ca_data = ca_data.encode("ascii")
        if ca_file is not None or ca_data is not None:
            configuration.load_verify_locations(cafile=ca_file, cadata=ca_data)
        return cls(
            FlowControlledQuicConnection(configuration=configuration),
            peer_address=server_addr,
            limits=limits,
            zero_copy_threshold=zero_copy_threshold,
            max_frame=max_frame,
            handshake_timeout=handshake_timeout,
            close_timeout=close_timeout,
            ping_interval=ping_interval,
            high_watermark=high_watermark,
            low_watermark=low_watermark,
            closing_period=closing_period,
            loopback_datagram_size=loopback_datagram_size,
        )

    # --- read-only facts -------------------------------------------------------------------------

    @property
    def quic(self) -> QuicConnection:
        """The aioquic connection underneath (for inspection; sending through it bypasses the
        msgtrans mapping).  Packets gathered for the next datagrams are handed to it first, so
        that whatever is written to it directly comes after them on the stream."""
        if self._backlog and self._stream_ready and self.state is not MachineState.CLOSED:
            self._quic_timer = None
            self._flush_backlog()
        return self._quic

    @property
    def peer_address(self) -> Address | None:
        """Where datagrams currently go (it changes when the client migrates), or ``None``."""
        addr = None
        if self._active:
            # aioquic 1.3 (the newest for Python 3.10) has no get_peer_address(): fall back to
            # the path it sends on, which is what the newer method returns.
            getter = getattr(self._quic, "get_peer_address", None)
            if getter is not None:
                addr = getter()
            elif self._quic._network_paths:
                addr = self._quic._network_paths[0].addr
        return cast("Address | None", addr) if addr is not None else self._peer_address

    @property
    def buffered_amount(self) -> int:
        """Bytes queued on the stream and not yet acknowledged by the peer."""
        return self._backlog_bytes + self._stream_unacked()

    @property
    def gathered_bytes(self) -> int:
        """Bytes of packets queued since the last :meth:`datagrams_to_send` (small packets
        wait to be handed to aioquic in one write there).  A driver can watch it grow to
        tell a sender that is still producing from one that stopped."""
        return self._backlog_bytes

    @property
    def is_write_paused(self) -> bool:
        """Whether :class:`~msgtrans.core.events.WritePaused` is in force."""
        return self._paused

    @property
    def has_events(self) -> bool:
        """Whether :meth:`events` would return something."""
        return bool(self._events)

    # --- the machine face ------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin the connection: a client queues its Initial packet.  Calling again does nothing.

        The server endpoint starts its connections itself.
        """
        if self.state is not MachineState.IDLE:
            return
        self.state = MachineState.HANDSHAKING
        self._handshake_deadline = now + self.handshake_timeout
        self._last_heard = now
        if self.is_client:
            self._quic_timer = None
            self._quic.connect(self._peer_address, now)
            self._active = True
            self._dirty = True
            self._open_stream()

    def send_packet(self, packet: Packet) -> None:
        """Queue *packet* on the stream.  Before the handshake completes it waits, then leaves.

        Raises:
            TransportConnectionError: the connection is closing or closed (code
                ``connection.closed``).
            ResourceError: the payload is over ``limits.max_payload`` or the framed packet
                over ``max_frame`` (code ``resource.payload_too_large``).
        """
        state = self.state
        if state is MachineState.CLOSING or state is MachineState.CLOSED:
            raise self._closed_error()
        payload = packet.payload
        if (
            len(payload) < _GATHER_BELOW
            and packet.compression is Compression.NONE
            and not packet.ext_header
            and len(payload) <= self.limits.max_payload
            and HEADER_SIZE + len(payload) <= self.max_frame
        ):
            # The common small packet: prefix and header in one pack, the payload after them.
            n = len(payload)
            self._backlog.append(
                _FRAMED_HEADER.pack(
                    HEADER_SIZE + n, VERSION, Compression.NONE, packet.packet_type,
                    packet.biz_type, packet.message_id, 0, n, packet.flags,
                ) + payload
            )
            self._backlog_bytes += HEADER_SIZE + n + 4
            self._dirty = True
            self.packets_sent += 1
            if not self._paused and self._backlog_bytes + self._unacked > self.high_watermark:
                self._paused = True
                self._events.append(WritePaused())
            return
        parts = packet.encode_parts(self.limits.max_payload)
        size = len(parts[0]) + len(parts[1]) if len(parts) > 1 else len(parts[0])
        if size > self.max_frame:
            raise ResourceError(
                "frame", size, self.max_frame, "packet too large for one QUIC frame",
                code="resource.payload_too_large", retryable=False,
            )
        if size < _GATHER_BELOW:
            self._backlog.append(b"".join((_U32.pack(size), *parts)))
            self._backlog_bytes += size + 4
            self._dirty = True
        else:
            # Prefix and header are small: join them; the payload goes in as it is, so a large
            # one is copied once (into aioquic's send buffer) and never joined.
            self._write([length_prefix(size) + bytes(parts[0]), *parts[1:]])
        self.packets_sent += 1
        if not self._paused and self._backlog_bytes + self._unacked > self.high_watermark:
            self._paused = True
            self._events.append(WritePaused())

    def close(self, code: int | None = None, reason: str = "") -> None:
        """Close gracefully: the packets queued so far are delivered and acknowledged, then a
        CONNECTION_CLOSE with application error *code* (default 0, no error) and *reason* goes.

        During the handshake nothing can be delivered, so the connection is abandoned at once.
        If the queued packets are not acknowledged within ``close_timeout`` the connection is
        closed anyway and reports a ``timeout.close`` error.  Closing twice does nothing.

        Raises:
            ConfigurationError: *code* is not a QUIC variable-length integer.
        """
        if code is None:
            code = QuicAppError.NO_ERROR
        if not 0 <= code < 2**62:
            raise ConfigurationError("code", f"must be between 0 and 2**62-1, got {code}")
        code = int(code)
        if self.state in (MachineState.CLOSING, MachineState.CLOSED):
            return
        self._close_started = True
        self._events.append(CloseStarted(code, reason, by_peer=False))
        if self.state is MachineState.IDLE:
            # Never started: nothing was said on the wire, so there is nothing to close.
            self._finish(code, reason, clean=True)
            return
        handshaking = self.state is MachineState.HANDSHAKING
        self.state = MachineState.CLOSING
        self._close_request = (code, reason)
        if handshaking:
            self._close_now()
        else:
            self._maybe_close(None)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Feed one datagram received from *addr*.  Input that is not QUIC is dropped."""
        if self.state is MachineState.CLOSED or self.state is MachineState.IDLE:
            return
        self._active = True
        self._dirty = True
        self._quic_timer = None
        self._last_heard = max(self._last_heard, now)
        try:
            self._quic.receive_datagram(bytes(data), addr, now)
        except Exception as exc:
            # aioquic parses untrusted bytes; should it ever fail on them, this connection is
            # beyond saving but the endpoint and every other connection must carry on.
            self._abandon(exc)
            return
        self._process(now)
        if not self.closing_period:
            # The peer's CONNECTION_CLOSE puts aioquic in its draining period, in which it
            # sends nothing more: end it now.
            self._skip_closing_period(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Return the datagrams to send now, each with its destination, and forget them."""
        self._dirty = False
        if not self._active or self.state is MachineState.CLOSED:
            return []
        if self._close_request is not None and self._close_deadline is None:
            self._close_deadline = now + self.close_timeout
        self._quic_timer = None
        self._sent_any = True
        try:
            self._flush_backlog()
            datagrams = self._quic.datagrams_to_send(now)
        except Exception as exc:  # see receive_datagram
            self._abandon(exc)
            return []
        if self._widen_to is not None:
            self._widen_when_initial_gone()
        # aioquic announces the connection ids it issues (ConnectionIdIssued) while it writes
        # them into packets, so the endpoint must hear of them now, before the peer uses them.
        self._process(now)
        if not self.closing_period:
            self._skip_closing_period(now)
        return cast("list[tuple[bytes, Address]]", datagrams)

    def next_deadline(self) -> float | None:
        """Return when :meth:`handle_timer` must next run (QUIC recovery, acknowledgements,
        pacing, keepalive pings, idle, handshake and close timeouts), or ``None``."""
        if not self._active or self.state is MachineState.CLOSED:
            return None
        cached = self._quic_timer
        if cached is None:
            # Before its first datagrams leave, a client's aioquic reports a loss timer counted
            # from time 0, which would fire at once and back off the first probe timeout.
            timer = self._quic.get_timer() if self._sent_any else None
            cached = self._quic_timer = (timer,)
        # Called after every send by the drivers: no list, no call per candidate.
        best = cached[0]
        for d in (self._handshake_deadline, self._close_deadline):
            if d is not None and (best is None or d < best):
                best = d
        if self.ping_interval is not None and self.state is MachineState.OPEN:
            d = self._last_heard + self.ping_interval
            if best is None or d < best:
                best = d
        return best

    def _ping_deadline(self) -> float | None:
        if self.ping_interval is None or self.state is not MachineState.OPEN:
            return None
        return self._last_heard + self.ping_interval

    def handle_timer(self, now: float) -> None:
        """Fire the timers due at *now*."""
        if not self._active or self.state is MachineState.CLOSED:
            return
        self._quic_timer = None
        if (
            self._handshake_deadline is not None
            and now >= self._handshake_deadline
            and self.state is MachineState.HANDSHAKING
        ):
            self._handshake_deadline = None
            self._abort(
                TransportTimeoutError(
                    "handshake", self.handshake_timeout, code="timeout.handshake"
                ),
                QuicAppError.TIMEOUT,
            )
        ping_at = self._ping_deadline()
        if ping_at is not None and now >= ping_at:
            # An ack-eliciting PING: its acknowledgement restarts both sides' idle timers.
            self._pings += 1
            self._quic.send_ping(self._pings)
            self._last_heard = now
            self._dirty = True
        timer = self._quic.get_timer()
        if timer is not None and now >= timer:
            self._dirty = True
            # aioquic declares a packet lost when "sent <= now - delay" and arms the timer at
            # "sent + delay": in floating point, at exactly that deadline the test can come out a
            # hair short and re-arm the same deadline, forever under a clock that does not move
            # (virtual time in tests, coarse clocks).  A few ulps past the deadline settle it.
            slack = abs(timer) * 1e-12 + 1e-9
            try:
                self._quic.handle_timer(max(now, timer + slack))
            except Exception as exc:  # see receive_datagram
                self._abandon(exc)
                return
        self._process(now)

    def pause_reading(self) -> None:
        """Stop granting the peer more flow-control credit (the application fell behind).

        What the peer may still send is bounded by the windows it already has.  Does nothing
        for a plain aioquic ``QuicConnection`` (only :class:`FlowControlledQuicConnection`
        can hold its windows).
        """
        if isinstance(self._quic, FlowControlledQuicConnection):
            self._quic.read_paused = True

    def resume_reading(self) -> None:
        """Grant credit again after :meth:`pause_reading`; the update leaves with the next
        datagrams."""
        if isinstance(self._quic, FlowControlledQuicConnection) and self._quic.read_paused:
            self._quic.read_paused = False
            self._dirty = True

    def change_connection_id(self) -> None:
        """Switch to the next connection id the peer issued and retire the current one
        (RFC 9000 section 5.1.2), for privacy across network changes.  Does nothing when the
        peer has issued no spare id."""
        if self._active and self.state is not MachineState.CLOSED:
            self._quic_timer = None
            self._quic.change_connection_id()
            self._dirty = True

    # --- sending -----------------------------------------------------------------------------

    def _open_stream(self) -> None:
        """Create stream 0 on the client and make it known to the server at once.

        A stream exists for the server only once some frame for it arrives (RFC 9000 section
        3.2), and until then the server cannot send on it.  So that a server can speak first,
        the client announces the stream with a MAX_STREAM_DATA frame in its first 1-RTT packet
        (legal, and ignored as a limit since it raises nothing).  aioquic has no public call for
        that; zeroing the "limit last sent" is exactly what aioquic itself does when that frame
        is lost, and it makes the frame go out again.
        """
        self._quic.send_stream_data(STREAM_ID, b"")
        streams = getattr(self._quic, "_streams", None)
        stream = streams.get(STREAM_ID) if isinstance(streams, dict) else None
        if stream is not None and hasattr(stream, "max_stream_data_local_sent"):
            stream.max_stream_data_local_sent = 0

    def _write(self, chunks: list[Buffer]) -> None:
        """Hand *chunks* to aioquic now, after what waits in the backlog."""
        self._dirty = True
        if not self._stream_ready:
            self._backlog.extend(chunks)
            self._backlog_bytes += sum(len(chunk) for chunk in chunks)
            return
        self._flush_backlog()
        for chunk in chunks:
            # aioquic appends the data to a bytearray, which takes any buffer: no copy here.
            self._quic.send_stream_data(STREAM_ID, cast(bytes, chunk))
        self._unacked = self._stream_unacked()

    def _flush_backlog(self) -> None:
        """Hand the gathered packets to aioquic in one write (once the stream is ready)."""
        backlog = self._backlog
        if not backlog or not self._stream_ready:
            return
        self._backlog, self._backlog_bytes = [], 0
        data = backlog[0] if len(backlog) == 1 else b"".join(backlog)
        self._quic.send_stream_data(STREAM_ID, cast(bytes, data))
        self._unacked = self._stream_unacked()

    def _try_open_server_stream(self) -> None:
        """Whether the client's stream exists yet: aioquic refuses a write otherwise."""
        try:
            self._quic.send_stream_data(STREAM_ID, b"")
        except ValueError:
            return
        self._stream_ready = True
        if self._backlog:
            self._dirty = True  # the next datagrams_to_send hands it over

    def _stream_unacked(self) -> int:
        # aioquic's QuicStreamSender keeps every byte until the peer acknowledged it, in
        # _buffer; there is no public measure of it.
        streams = getattr(self._quic, "_streams", None)
        stream = streams.get(STREAM_ID) if isinstance(streams, dict) else None
        if stream is None:
            return 0
        buffer = getattr(stream.sender, "_buffer", None)
        if buffer is not None:
            return len(buffer)
        return 0 if stream.sender.buffer_is_empty else 1  # pragma: no cover - other aioquic

    # --- closing -----------------------------------------------------------------------------

    def _maybe_close(self, now: float | None) -> None:
        """Send the requested CONNECTION_CLOSE once the queued data is acknowledged."""
        if self._close_request is None:
            return
        if self.buffered_amount == 0:
            self._close_now()
        elif now is not None and self._close_deadline is not None and now >= self._close_deadline:
            code = self._close_request[0]
            self._close_request = None
            self._abort(
                TransportTimeoutError(
                    "close", self.close_timeout, code="timeout.close",
                    reason=f"queued packets were not acknowledged within {self.close_timeout:g} s",
                ),
                code,
            )

    def _close_now(self) -> None:
        assert self._close_request is not None
        code, reason = self._close_request
        self._close_request = None
        self._close_deadline = None
        self._close_code = code
        self._close_reason = reason
        # Only an abort closes with packets still gathered: they are dropped, as aioquic drops
        # what it holds.
        self._backlog, self._backlog_bytes = [], 0
        self._quic_timer = None
        self._quic.close(error_code=code, reason_phrase=_truncate_reason(reason))
        self._dirty = True

    def _abort(self, error: TransportError, code: int) -> None:
        """Report *error* now and close the connection with application error *code*."""
        if self._error is not None or self.state is MachineState.CLOSED:
            return
        self._error = error
        self._events.append(ErrorOccurred(error))
        self._close_started = True
        self.state = MachineState.CLOSING
        self._close_request = (int(code), error.reason)
        self._close_now()

    def _skip_closing_period(self, now: float) -> None:
        """End aioquic's closing or draining period now (``closing_period=False``).

        aioquic has no call for it; its own end of the period is :meth:`handle_timer` at the
        deadline, which in those states is the only timer it reports.
        """
        state = getattr(self._quic, "_state", None)
        if state not in (QuicConnectionState.CLOSING, QuicConnectionState.DRAINING):
            return
        if self.state is MachineState.CLOSED:
            return
        deadline = self._quic.get_timer()
        if deadline is None:  # pragma: no cover - aioquic always times the period
            return
        try:
            self._quic.handle_timer(max(now, deadline))
        except Exception as exc:  # see receive_datagram
            self._abandon(exc)
            return
        self._process(now)

    def _abandon(self, exc: Exception) -> None:
        """aioquic failed: report it and stop driving this connection."""
        self._release()
        self._fail(
            ProtocolError(
                Protocol.QUIC, f"the QUIC stack failed on its input: {exc!r}", code="protocol.quic"
            )
        )

    def _finish(
        self, code: int | None, reason: str, *, clean: bool, error: TransportError | None = None
    ) -> None:
        self.state = MachineState.CLOSED
        self._release()
        self._events.append(ConnectionClosed(code, reason, clean=clean, error=error))

    def _release(self) -> None:
        self._backlog = []
        self._backlog_bytes = 0
        self._close_request = None
        self._close_deadline = self._handshake_deadline = None

    # --- aioquic events --------------------------------------------------------------------------

    def _process(self, now: float) -> None:
        quic = self._quic
        self._quic_timer = None  # aioquic was just called
        event = quic.next_event()
        while event is not None:
            if self.state is not MachineState.CLOSED:  # nothing comes after ConnectionClosed
                self._handle(event)
            event = quic.next_event()
        if self.state is MachineState.CLOSED:
            return
        self._unacked = self._stream_unacked()
        if not self._stream_ready and self.state is not MachineState.HANDSHAKING:
            self._try_open_server_stream()
        self._maybe_close(now)
        if self._paused and self.buffered_amount <= self.low_watermark:
            self._paused = False
            self._events.append(WriteResumed())

    def _handle(self, event: qe.QuicEvent) -> None:
        if isinstance(event, qe.StreamDataReceived):
            self._on_stream_data(event)
        elif isinstance(event, qe.HandshakeCompleted):
            self._on_handshake(event)
        elif isinstance(event, qe.ConnectionIdIssued | qe.ConnectionIdRetired):
            if self._cid_listener is not None:
                issued = isinstance(event, qe.ConnectionIdIssued)
                self._cid_listener(self, event.connection_id, issued)
        elif isinstance(event, qe.ConnectionTerminated):
            self._on_terminated(event)
        elif isinstance(event, qe.StreamReset | qe.StopSendingReceived):
            if event.stream_id != STREAM_ID:
                self._wrong_stream(event.stream_id)
            else:
                what = "reset" if isinstance(event, qe.StreamReset) else "stopped"
                self._abort(
                    TransportConnectionError(
                        f"the peer {what} the msgtrans stream (error code {event.error_code})",
                        code="connection.reset",
                    ),
                    QuicAppError.PROTOCOL_ERROR,
                )
        # ProtocolNegotiated, PingAcknowledged, DatagramFrameReceived (never enabled): nothing.

    def _on_handshake(self, event: qe.HandshakeCompleted) -> None:
        if self.state is not MachineState.HANDSHAKING:  # pragma: no cover - aioquic 1.x
            # Closed while handshaking: ConnectionEstablished must not follow CloseStarted.
            # (aioquic itself stops reading a datagram once a close is pending.)
            return
        self.state = MachineState.OPEN
        self._established = True
        self._handshake_deadline = None
        self.alpn = event.alpn_protocol
        self._maybe_widen_datagrams()
        self._events.append(
            ConnectionEstablished(
                protocol=Protocol.QUIC,
                tls=True,
                alpn=event.alpn_protocol,
                tls_version="TLSv1.3",
                cipher=self._cipher(),
            )
        )

    def _maybe_widen_datagrams(self) -> None:
        """Use large datagrams to a loopback peer (see ``loopback_datagram_size``).  Only after
        the handshake: aioquic pads Initial datagrams to the full datagram size."""
        size = self.loopback_datagram_size
        quic = self._quic
        if size is None or not isinstance(quic, FlowControlledQuicConnection):
            return
        addr = self.peer_address
        try:
            loopback = addr is not None and ipaddress.ip_address(str(addr[0])).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            self._widen_to = size
            self._widen_when_initial_gone()

    def _widen_when_initial_gone(self) -> None:
        """Widen once the Initial packet space is discarded.  A client completes its handshake
        while its last flight (Initial ACK and Handshake Finished, coalesced) is still to
        leave, and aioquic pads a client datagram holding an Initial packet to the full
        datagram size: widened first, that flight became 16 KiB of padding, which cost the
        server some 0.3 ms to skip (a Python loop per byte) on every connect."""
        quic = self._quic
        spaces = getattr(quic, "_spaces", None)
        initial = spaces.get(tls.Epoch.INITIAL) if isinstance(spaces, dict) else None
        if initial is not None and not getattr(initial, "discarded", True):
            return
        size, self._widen_to = self._widen_to, None
        if size is not None and isinstance(quic, FlowControlledQuicConnection):
            quic.widen_datagrams(size)

    def _cipher(self) -> str | None:
        schedule = getattr(getattr(self._quic, "tls", None), "key_schedule", None)
        suite: Any = getattr(schedule, "cipher_suite", None)
        name = getattr(suite, "name", None)
        return f"TLS_{name}" if isinstance(name, str) else None

    def _on_stream_data(self, event: qe.StreamDataReceived) -> None:
        if event.stream_id != STREAM_ID:
            self._wrong_stream(event.stream_id)
            return
        if self._error is not None:
            return  # already failing: the decoder refused this stream
        decoder = self._decoder
        if event.data:
            try:
                packets = decoder.feed(event.data)
            except ProtocolError as exc:
                self._abort(exc, QuicAppError.PROTOCOL_ERROR)
                return
            self.packets_received += len(packets)
            self._events.extend(map(PacketReceived, packets))
            if decoder.error is not None:
                self._abort(decoder.error, QuicAppError.PROTOCOL_ERROR)
                return
        if event.end_stream:
            try:
                decoder.feed_eof()
            except ProtocolError as exc:
                self._abort(exc, QuicAppError.PROTOCOL_ERROR)
                return
            self._peer_finished()

    def _peer_finished(self) -> None:
        """The peer ended the stream: it will send no more, so we close gracefully too."""
        if self._close_started:
            return
        self._close_started = True
        self._events.append(CloseStarted(0, "", by_peer=True))
        self.state = MachineState.CLOSING
        self._close_request = (0, "")

    def _wrong_stream(self, stream_id: int) -> None:
        self._abort(
            ProtocolError(
                Protocol.QUIC,
                f"the peer used stream {stream_id}; msgtrans v1 carries every packet on "
                f"stream {STREAM_ID}",
                code="protocol.quic",
            ),
            QuicAppError.PROTOCOL_ERROR,
        )

    def _on_terminated(self, event: qe.ConnectionTerminated) -> None:
        if self._error is not None:
            self._finish(self._close_code, self._close_reason, clean=False, error=self._error)
            return
        code, frame_type, reason = event.error_code, event.frame_type, event.reason_phrase
        # aioquic makes up a termination itself (idle timeout, no common version, no viable
        # path) with frame type PADDING; anything else we did not send came from the peer.
        made_up = frame_type == QuicFrameType.PADDING and code in (
            QuicErrorCode.INTERNAL_ERROR,
            QuicErrorCode.NO_VIABLE_PATH,
        )
        error = map_quic_close(
            code,
            reason,
            frame_type,
            by_peer=self._close_code is None and not made_up,
            operation=None if self._established else "handshake",
            idle_timeout=float(self._quic.configuration.idle_timeout),
        )
        if frame_type is None or error is None:
            # A close (ours, after the closing period, or the peer's) rather than a failure;
            # an application code other than 0 still makes it unclean.
            if not self._close_started:
                self._close_started = True
                self._events.append(CloseStarted(code, reason, by_peer=True))
            self._finish(code, reason, clean=error is None, error=error)
            return
        self._release()
        self._fail(error)

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        return f"<QuicMachine {side} {self.state.value} peer={self.peer_address!r}>"

