"""The TCP protocol machine: msgtrans packets back to back on a byte stream.

:class:`TcpMachine` is the sans-IO side of a ``tcp://`` connection (and, under
:class:`~msgtrans.core.tls.TlsMachine`, of ``tls://``).  TCP has no handshake of its own: the
socket is connected when :meth:`TcpMachine.start` is called, so the connection is open at once.

Closing follows TCP's half-close: :meth:`TcpMachine.close` queues a FIN after the bytes already
queued (:attr:`~msgtrans.core.machine.StreamMachine.write_closed`) and keeps reading until the
peer's EOF, so packets the peer sends meanwhile are still delivered.  A side that sees the peer's
EOF first answers with its own FIN after its queued bytes.  The connection is closed cleanly
when EOF arrives at a packet boundary; EOF inside a packet is a protocol error
(``protocol.unexpected_eof``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .errors import (
    ConfigurationError,
    Protocol,
    ProtocolError,
    ResourceError,
    TransportError,
    TransportTimeoutError,
)
from .events import CloseStarted, ConnectionClosed, ConnectionEstablished, PacketReceived
from .framing import DEFAULT_ZERO_COPY_THRESHOLD, PacketDecoder
from .machine import MachineState, StreamMachine
from .packet import (
    DEFAULT_LIMITS,
    HEADER,
    VERSION,
    Buffer,
    Compression,
    Limits,
    Packet,
    PacketType,
)

__all__ = ["COALESCE_LIMIT", "TcpMachine"]

#: Payloads smaller than this are copied into the machine's send buffer, so that many small
#: packets leave as one write; larger ones are handed to the driver as buffers of their own
#: (a vectored write sends them without a copy).
COALESCE_LIMIT = 16 * 1024

_IDLE = MachineState.IDLE
_OPEN = MachineState.OPEN
_CLOSING = MachineState.CLOSING
_CLOSED = MachineState.CLOSED
_NO_COMPRESSION = Compression.NONE
_pack = HEADER.pack


class TcpMachine(StreamMachine):
    """Sans-IO machine for one msgtrans connection over TCP, client or server side.

    Args:
        is_client: ``True`` on the side that connected, ``False`` on the side that accepted.
        limits: receive limits, and the payload limit for sending (default: 16 MiB payload,
            4 KiB ext header).
        zero_copy_threshold: received payloads of at least this many bytes are handed out as
            read-only ``memoryview`` slices of the receive buffer; ``None`` copies every payload
            to ``bytes``.  Default 64 KiB.
        close_timeout: seconds :meth:`close` waits for the peer's EOF before giving up
            (default 10).

    Packets sent before :meth:`start` are queued and leave once it is called.  A payload of
    :data:`COALESCE_LIMIT` bytes or more is handed to :meth:`data_to_send` by reference, not
    copied: do not modify it until it has been written.

    Raises:
        ConfigurationError: *close_timeout* is not positive or *zero_copy_threshold* is out of
            range.
    """

    protocol = Protocol.TCP

    def __init__(
        self,
        *,
        is_client: bool,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        close_timeout: float = 10.0,
    ) -> None:
        super().__init__(is_client=is_client)
        if not close_timeout > 0:
            raise ConfigurationError(
                "close_timeout", f"must be a positive number of seconds, got {close_timeout}"
            )
        self.limits = limits
        self.close_timeout = float(close_timeout)
        self._decoder = PacketDecoder(limits, zero_copy_threshold)
        self._max_payload = limits.max_payload
        # Small packets are encoded into _buf; _parts holds what is ready to go before it
        # (earlier send buffers and large payloads kept by reference), in order.
        self._buf = bytearray()
        self._parts: list[Buffer] = []
        self._close_reason = ""
        self._close_deadline: float | None = None
        # close() is not given the time, so the close timer counts from the latest `now` seen.
        self._now = 0.0

    # --- the machine interface -----------------------------------------------------------------

    def start(self, now: float) -> None:
        """Open the connection: emits ``ConnectionEstablished(protocol=TCP)``.

        The socket is already connected, so there is nothing to exchange; queued packets leave
        with the next :meth:`data_to_send`.  Calling it again, or after :meth:`close`, does
        nothing.
        """
        self._now = now
        if self.state is not _IDLE:
            return
        self.state = _OPEN
        self._events.append(ConnectionEstablished(Protocol.TCP))

    def send_packet(self, packet: Packet) -> None:
        """Encode *packet* onto the send queue (see :meth:`data_to_send`).

        Raises:
            TransportConnectionError: the connection is closing or closed
                (code ``connection.closed``).
            ResourceError: the payload on the wire is larger than ``limits.max_payload``
                (code ``resource.payload_too_large``, not retryable).
        """
        if packet.compression is not _NO_COMPRESSION:
            state = self.state
            if state is _CLOSING or state is _CLOSED:
                raise self._closed_error()
            self._append_parts(packet.encode_parts(self._max_payload))
            return
        self.queue_message(packet.packet_type, packet.message_id, packet.biz_type,
                           packet.payload, packet.ext_header, flags=packet.flags)

    def queue_message(
        self,
        packet_type: PacketType,
        message_id: int,
        biz_type: int,
        payload: Buffer,
        ext_header: Buffer = b"",
        *,
        flags: int = 0,
    ) -> None:
        """:meth:`send_packet` for an uncompressed packet, from its fields: the same bytes, and
        no :class:`Packet` made (the drivers' hot send path; ``send_packet`` ends here too).

        The caller has checked the fields as ``Packet`` would (*message_id* a u32, *biz_type*
        0..255, *ext_header* at most 65535 bytes, *flags* the header's flag bits, default 0).

        Raises:
            TransportConnectionError: the connection is closing or closed
                (code ``connection.closed``).
            ResourceError: the payload is larger than ``limits.max_payload``
                (code ``resource.payload_too_large``, not retryable).
        """
        state = self.state
        if state is _CLOSING or state is _CLOSED:
            raise self._closed_error()
        size = len(payload)
        if size > self._max_payload:
            raise ResourceError(
                "payload", size, self._max_payload, "payload too large to send",
                code="resource.payload_too_large", retryable=False,
            )
        buf = self._buf
        buf += _pack(VERSION, 0, packet_type, biz_type, message_id, len(ext_header), size, flags)
        if ext_header:
            buf += ext_header
        if size < COALESCE_LIMIT:
            buf += payload
        else:
            self._parts.append(buf)
            self._parts.append(payload)
            self._buf = bytearray()

    def send_packets(self, packets: Iterable[Packet]) -> None:
        """Queue several packets, in order, with less overhead than one call each.

        Raises:
            TransportConnectionError: as for :meth:`send_packet`; nothing is queued.
            ResourceError: as for :meth:`send_packet`; the packets before the one refused
                stay queued.
        """
        state = self.state
        if state is _CLOSING or state is _CLOSED:
            raise self._closed_error()
        max_payload = self._max_payload
        buf = self._buf
        parts = self._parts
        try:
            for packet in packets:
                payload = packet.payload
                size = len(payload)
                if packet.compression is not _NO_COMPRESSION or size > max_payload:
                    self._buf = buf
                    self._append_parts(packet.encode_parts(max_payload))
                    buf = self._buf
                    continue
                ext = packet.ext_header
                buf += _pack(
                    VERSION, 0, packet.packet_type, packet.biz_type, packet.message_id,
                    len(ext), size, packet.flags,
                )
                if ext:
                    buf += ext
                if size < COALESCE_LIMIT:
                    buf += payload
                else:
                    parts.append(buf)
                    parts.append(payload)
                    buf = bytearray()
        finally:
            self._buf = buf

    def data_to_send(self) -> list[Buffer]:
        """Return the bytes to write, in order, and forget them.

        Small packets come joined in one buffer; large payloads come as buffers of their own
        (hand the list to a vectored write).  Nothing is returned before :meth:`start`.
        """
        if self.state is _IDLE:
            return []
        buf = self._buf
        parts = self._parts
        if buf:
            parts.append(buf)
            # A fresh buffer, not a cleared one: the driver may hold on to the one it got.
            self._buf = bytearray()
        elif not parts:
            return []
        self._parts = []
        return parts

    def receive_data(self, data: Buffer, now: float) -> None:
        """Feed bytes read from the socket; ``b""`` means the peer sent EOF.

        Whole packets become :class:`~msgtrans.core.events.PacketReceived` events.  Invalid
        bytes end the connection with ``ErrorOccurred`` and ``ConnectionClosed(clean=False)``
        (a :class:`~msgtrans.core.errors.ProtocolError`), after the packets that preceded them;
        input after the connection closed is ignored.  Never raises on bad input.
        """
        self._now = now
        if not data:
            self._receive_eof()
            return
        if self.state is _CLOSED:
            return
        decoder = self._decoder
        try:
            packets = decoder.feed(data)
        except ProtocolError as exc:
            self._broken(exc)
            return
        if packets:
            self._events += map(PacketReceived, packets)
        if decoder.error is not None:
            self._broken(decoder.error)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Return memory to receive into, then call :meth:`buffer_updated` (zero-copy path).

        This is the decoder's own buffer: bytes received into it are never copied again, and a
        large packet's payload is received straight into the buffer it is handed out from.
        After the connection closed, a scratch area whose contents are ignored.
        """
        if self.state is _CLOSED:
            return super().get_buffer(sizehint)
        return self._decoder.get_buffer(sizehint)

    @property
    def open_get_buffer(self) -> Callable[[int], memoryview]:
        """The decoder's own ``get_buffer``: what :meth:`get_buffer` answers until the
        connection is closed, without its state check (one Python call less per read).

        For a driver that calls it only while :attr:`state` is not ``CLOSED`` and switches
        to :meth:`get_buffer` as soon as it is (the decoder raises after bad input).
        """
        return self._decoder.get_buffer

    def unused_buffer(self) -> None:
        """The last :meth:`get_buffer` received nothing: the decoder gives up its receive
        area when it buffers nothing (see :meth:`PacketDecoder.unused_buffer`)."""
        self._decoder.unused_buffer()

    def buffer_updated(self, nbytes: int, now: float) -> None:
        """Account for *nbytes* received into the last :meth:`get_buffer`; as :meth:`receive_data`
        otherwise (0 is not EOF here): :meth:`receive_packets`, its packets queued as events."""
        packets = self.receive_packets(nbytes, now)
        if packets:
            self._events += map(PacketReceived, packets)

    def receive_packets(self, nbytes: int, now: float) -> list[Packet] | None:
        """:meth:`buffer_updated`, returning the packets completed instead of emitting
        ``PacketReceived`` events: a driver's hot path hands them to the session machine
        itself.

        Returns:
            The packets, in order (possibly none), when nothing else happened; ``None`` when
            the bytes also did something else (broke the format, arrived after the close):
            then every packet and the rest are queued as events, in order, as
            :meth:`buffer_updated` would have left them, for the driver's usual round trip.
        """
        self._now = now
        if self.state is _CLOSED or not nbytes:
            return []
        decoder = self._decoder
        try:
            packets = decoder.buffer_updated(nbytes)
        except ProtocolError as exc:
            self._broken(exc)
            return None
        if decoder.error is not None:
            # Good packets before bad bytes still go first (see receive_data).
            self._events += map(PacketReceived, packets)
            self._broken(decoder.error)
            return None
        return packets

    def close(self, code: int | None = None, reason: str = "") -> None:
        """Start a graceful close: a FIN after the queued bytes, then wait for the peer's EOF.

        Emits ``CloseStarted(by_peer=False)`` and sets ``write_closed``.  Packets the peer
        sends before its EOF are still delivered.  The EOF ends the connection cleanly; if it
        has not come :attr:`close_timeout` seconds later (counted from the latest ``now`` the
        machine was given, at the next :meth:`handle_timer`) the connection ends uncleanly with
        a :class:`~msgtrans.core.errors.TransportTimeoutError` (``timeout.close``).  TCP has no
        close code: *code* is ignored, *reason* is reported in the events.  Closing a closing or
        closed connection does nothing.
        """
        state = self.state
        if state is _CLOSING or state is _CLOSED:
            return
        self.state = _CLOSING
        self.write_closed = True
        self._close_reason = reason
        # close() has no `now`: ask for handle_timer() at once (see next_deadline) and arm the
        # real deadline there, so a stale clock cannot make the timeout fire early.
        self._close_deadline = None
        self._events.append(CloseStarted(None, reason, by_peer=False))

    def next_deadline(self) -> float | None:
        """Return when :meth:`handle_timer` must be called: the close deadline while closing
        (right away, just after :meth:`close`, to start that timer), else ``None``."""
        if self.state is not _CLOSING:
            return None
        if self._close_deadline is None:
            return self._now
        return self._close_deadline

    def handle_timer(self, now: float) -> None:
        """Start the close timer after :meth:`close`; end the connection if it has run out."""
        self._now = now
        if self.state is not _CLOSING:
            return
        if self._close_deadline is None:
            self._close_deadline = now + self.close_timeout
        elif now >= self._close_deadline:
            self._fail(
                TransportTimeoutError(
                    "close",
                    self.close_timeout,
                    f"the peer did not close within {self.close_timeout:g} s",
                    code="timeout.close",
                )
            )

    # --- internals -------------------------------------------------------------------------

    def _append_parts(self, parts: list[Buffer]) -> None:
        buf = self._buf
        for part in parts:
            if len(part) < COALESCE_LIMIT:
                buf += part
            else:
                self._parts.append(buf)
                self._parts.append(part)
                buf = self._buf = bytearray()

    def _receive_eof(self) -> None:
        state = self.state
        if state is _CLOSED:
            return
        try:
            self._decoder.feed_eof()
        except ProtocolError as exc:
            self._broken(exc)
            return
        if state is _CLOSING:
            reason = self._close_reason
        else:
            # The peer closed first: answer its FIN with ours, after what is queued.
            reason = ""
            self._events.append(CloseStarted(None, reason, by_peer=True))
            self.write_closed = True
        self.state = _CLOSED
        self._close_deadline = None
        self._events.append(ConnectionClosed(None, reason, clean=True))

    def _broken(self, error: TransportError) -> None:
        """End the connection after bad input: report, and shut our side so the driver closes."""
        self._fail(error)
        self.write_closed = True
        self._close_deadline = None
