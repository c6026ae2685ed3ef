"""Stream framing: cut a byte stream into packets, for both stream mappings of the spec.

* :class:`PacketDecoder` reads the TCP mapping: packets back to back, each cut at
  ``16 + ext_header_len + payload_len``.
* :class:`LengthPrefixedDecoder` reads the QUIC stream mapping: each packet preceded by a u32
  big-endian frame length (the length of the whole packet), frames over 16 MiB refused.

Both take chunks of any size, either copied in with :meth:`~PacketDecoder.feed` or received in
place through :meth:`~PacketDecoder.get_buffer` / :meth:`~PacketDecoder.buffer_updated` (the
``asyncio.BufferedProtocol`` and ``socket.recv_into`` shape).  Limits are checked from the header,
before any body byte is buffered.  A packet of at least ``zero_copy_threshold`` bytes gets a
buffer of its own as soon as its header is seen; the rest of it is received straight into that
buffer, and its payload is handed out as a read-only view of it, never copied again.

Invalid input raises :class:`~msgtrans.core.errors.ProtocolError`; packets completed before the
bad bytes in the same call are returned first, the error is kept in :attr:`~PacketDecoder.error`
and raised by every later call: the decoder refuses further input.
"""

from __future__ import annotations

import struct

from .errors import ConfigurationError, Protocol, ProtocolError
from .packet import (
    DEFAULT_LIMITS,
    HEADER,
    HEADER_SIZE,
    VERSION,
    Buffer,
    HeaderFields,
    Limits,
    Packet,
    build_packet,
    header_error,
)

__all__ = [
    "DEFAULT_RECEIVE_SIZE",
    "DEFAULT_ZERO_COPY_THRESHOLD",
    "QUIC_MAX_FRAME",
    "LengthPrefixedDecoder",
    "PacketDecoder",
    "length_prefix",
]

#: Payloads at least this large are handed out as views, not copies (a setting everywhere).
DEFAULT_ZERO_COPY_THRESHOLD = 64 * 1024
#: The size of the receive area :meth:`PacketDecoder.get_buffer` offers by default.
DEFAULT_RECEIVE_SIZE = 64 * 1024
#: How much of a big packet's buffer is allocated before its bytes arrive: the rest is allocated
#: once the peer has sent this much, so that a header claiming 16 MiB costs at most 1 MiB.
LARGE_FIRST_STEP = 1024 * 1024
#: The spec's cap on a QUIC stream frame.
QUIC_MAX_FRAME = 16 * 1024 * 1024

_U32 = struct.Struct(">I")


def length_prefix(packet_size: int) -> bytes:
    """Return the u32 big-endian prefix that frames a packet of *packet_size* bytes on QUIC."""
    return _U32.pack(packet_size)


class PacketDecoder:
    """Incremental decoder for packets sent back to back on a byte stream (the TCP mapping).

    Args:
        limits: receive limits (default: 16 MiB payload, 4 KiB ext header).
        zero_copy_threshold: packets whose payload is at least this many bytes are received
            into a buffer of their own and their payload handed out as a read-only
            ``memoryview`` of it; ``None`` copies every payload to ``bytes``.  Default 64 KiB.
        receive_size: the size of the area :meth:`get_buffer` offers (default 64 KiB).

    Raises:
        ConfigurationError: a setting is out of range.
    """

    _prefix = 0  # bytes of framing before each packet

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        receive_size: int = DEFAULT_RECEIVE_SIZE,
    ) -> None:
        if zero_copy_threshold is not None and zero_copy_threshold < 1:
            raise ConfigurationError(
                "zero_copy_threshold", f"must be a positive byte count or None, got "
                f"{zero_copy_threshold}",
            )
        if receive_size < 1024:
            raise ConfigurationError(
                "receive_size", f"must be at least 1024 bytes, got {receive_size}"
            )
        self.limits = limits
        self.zero_copy_threshold = zero_copy_threshold
        self._receive_size = receive_size
        self._buf = bytearray(receive_size)
        self._pos = 0  # first unread byte of _buf
        self._end = 0  # end of the received bytes in _buf
        self._large: bytearray | None = None  # a big packet being received in place
        self._large_fields: HeaderFields | None = None
        self._large_total = 0  # the big packet's full size (its buffer may still be smaller)
        self._filled = 0
        self.error: ProtocolError | None = None
        #: Number of packets handed out as views of received memory (the zero-copy path).
        self.zero_copy_packets = 0
        #: Number of packets decoded in all.
        self.packets_decoded = 0

    # --- public face -------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as packets."""
        return self._end - self._pos + self._filled

    def feed(self, data: Buffer) -> list[Packet]:
        """Take the next chunk of the stream and return the packets it completes, in order.

        Large payloads in a ``bytes`` chunk are handed out as views of that chunk.  A mutable
        chunk (``bytearray``, ``memoryview``) is copied where it would otherwise be kept, so the
        caller may reuse it at once.

        Raises:
            ProtocolError: the stream broke the format (see the module docs).
        """
        if self.error is not None:
            raise self.error
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        out: list[Packet] = []
        zc = self.zero_copy_threshold if isinstance(data, bytes) else None
        try:
            with view:
                n = len(view)
                pos = 0
                if self._large is not None:
                    pos = self._fill_large(view, 0, out)
                while pos < n and self._pos < self._end:
                    # Copy in only what the buffered packet still lacks, so that the packets
                    # after it are cut from the chunk itself (views of it for a bytes chunk).
                    take = min(self._missing(), n - pos)
                    self._keep(view[pos : pos + take], out)
                    pos += take
                if pos < n and self._large is not None:
                    pos += self._fill_large(view, pos, out)
                if pos < n:
                    cut = self._cut(view, pos, n, out, zc)
                    if cut < n:
                        self._keep(view[cut:], out)
        except ProtocolError as exc:
            self._fail(exc, out)
        return out

    def _missing(self) -> int:
        """Bytes the buffered, unfinished packet lacks (its header is checked once whole)."""
        held = self._end - self._pos
        need = self._prefix + HEADER_SIZE
        if held < need:
            return need - held
        fields: HeaderFields = HEADER.unpack_from(self._buf, self._pos + self._prefix)
        return need + fields[5] + fields[6] - held

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Return writable memory to receive the next bytes into (``recv_into`` / BufferedProtocol).

        After writing *n* bytes into it, call :meth:`buffer_updated` with *n*.  While a large
        packet is being received this is the packet's own buffer, so its bytes are never copied.

        Raises:
            ProtocolError: the decoder failed earlier.
        """
        if self.error is not None:
            raise self.error
        if self._large is not None:
            if self._filled == len(self._large):
                self._grow_large()
            return memoryview(self._large)[self._filled :]
        want = max(sizehint, self._receive_size // 2) if sizehint > 0 else self._receive_size // 2
        if len(self._buf) - self._end < want:
            self._make_room(want)
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> list[Packet]:
        """Account for *nbytes* written into the last :meth:`get_buffer` and return the packets
        they complete.

        Raises:
            ProtocolError: as for :meth:`feed`.
        """
        if self.error is not None:
            raise self.error
        out: list[Packet] = []
        try:
            if self._large is not None:
                self._filled += nbytes
                if self._filled == self._large_total:
                    self._finish_large(out)
                return out
            self._end += nbytes
            self._drain(out)
        except ProtocolError as exc:
            self._fail(exc, out)
        return out

    def feed_eof(self) -> None:
        """Say the stream has ended.

        Raises:
            ProtocolError: the stream ended inside a packet (code ``protocol.unexpected_eof``),
                or the decoder failed earlier.
        """
        if self.error is not None:
            raise self.error
        if self.buffered:
            exc = ProtocolError(
                Protocol.WIRE,
                f"stream ended with {self.buffered} bytes of an unfinished packet",
                code="protocol.unexpected_eof",
            )
            self._fail(exc, [])
            raise exc

    # --- internals ---------------------------------------------------------------------------

    def _fail(self, exc: ProtocolError, out: list[Packet]) -> None:
        # The kept error outlives this call: drop its tracebacks, whose frames hold views of
        # the caller's chunk and would pin it (a bytearray could no longer be resized).
        seen: set[int] = set()
        link: BaseException | None = exc
        while link is not None and id(link) not in seen:
            seen.add(id(link))
            link.__traceback__ = None
            link = link.__cause__ or link.__context__
        self.error = exc
        self._buf = bytearray()
        self._pos = self._end = self._filled = 0
        self._large = None
        if not out:
            raise exc

    def _frame_start(self, view: memoryview, pos: int) -> int:
        """Return where the packet starts for the frame at *pos* (after any prefix)."""
        return pos

    def _check_frame(self, view: memoryview, pos: int, total: int) -> None:
        """Check the framing around a packet of *total* bytes (the QUIC prefix)."""

    def _cut(
        self, view: memoryview, pos: int, end: int, out: list[Packet], zc: int | None
    ) -> int:
        """Decode whole packets from view[pos:end]; return where the first incomplete one starts."""
        limits = self.limits
        max_ext = limits.max_ext_header
        max_payload = limits.max_payload
        unpack_from = HEADER.unpack_from
        need = self._prefix + HEADER_SIZE
        large = zc if zc is not None else self.zero_copy_threshold
        while end - pos >= need:
            start = self._frame_start(view, pos)
            fields: HeaderFields = unpack_from(view, start)
            ext_len = fields[5]
            payload_len = fields[6]
            if (
                fields[0] != VERSION
                or fields[1] > 2
                or fields[2] > 2
                or ext_len > max_ext
                or payload_len > max_payload
            ):
                raise header_error(fields, limits)
            total = HEADER_SIZE + ext_len + payload_len
            self._check_frame(view, pos, total)
            if end - start < total:
                if large is not None and payload_len >= large:
                    # A big packet: give it its own buffer now, receive the rest into it.
                    # Only the first LARGE_FIRST_STEP bytes are taken until the peer has sent
                    # them: a 16-byte header alone must not make us hold 16 MiB.
                    self._large = bytearray(min(total, max(end - start, LARGE_FIRST_STEP)))
                    self._large_total = total
                    self._large_fields = fields
                    have = end - start
                    self._large[:have] = view[start:end]
                    self._filled = have
                    return end
                return pos
            if zc is None and large is not None and payload_len >= large:
                # Whole already, but in memory that is reused (the receive area, a mutable
                # chunk): copy it once into memory of its own, as the large path would, so
                # that a big payload is always a read-only view.
                own = memoryview(bytearray(view[start : start + total]))
                packet = build_packet(own, 0, fields, limits, large)
            else:
                packet = build_packet(view, start, fields, limits, zc)
            if type(packet.payload) is memoryview:
                self.zero_copy_packets += 1
            out.append(packet)
            self.packets_decoded += 1
            pos = start + total
        if self._prefix and end - pos >= self._prefix:
            # Refuse an oversize frame from its prefix alone, before its header arrives.
            self._frame_start(view, pos)
        return pos

    def _keep(self, view: memoryview, out: list[Packet]) -> None:
        """Append *view* to the buffer and decode what it completes."""
        n = len(view)
        if len(self._buf) - self._end < n:
            self._make_room(n)
        self._buf[self._end : self._end + n] = view
        self._end += n
        self._drain(out)

    def _drain(self, out: list[Packet]) -> None:
        with memoryview(self._buf) as view:
            pos = self._cut(view, self._pos, self._end, out, None)
        if self._large is not None or pos == self._end:
            self._pos = self._end = 0
        else:
            self._pos = pos

    def _make_room(self, n: int) -> None:
        """Make *n* free bytes after the buffered ones, moving them to the front of a buffer."""
        held = self._end - self._pos
        size = max(self._receive_size, held + n)
        if size <= len(self._buf) and self._pos:
            # Compact in place: only the unfinished packet moves, and it is bounded by the
            # zero-copy threshold (bigger ones have a buffer of their own).
            self._buf[:held] = self._buf[self._pos : self._end]
        else:
            # A new buffer rather than a resize: a caller may still hold a view of the old one.
            new = bytearray(size)
            new[:held] = self._buf[self._pos : self._end]
            self._buf = new
        self._pos = 0
        self._end = held

    def _fill_large(self, view: memoryview, pos: int, out: list[Packet]) -> int:
        """Copy what *view* holds of the big packet in progress; return the bytes taken."""
        assert self._large is not None
        take = min(self._large_total - self._filled, len(view) - pos)
        if self._filled + take > len(self._large):
            self._grow_large()
        self._large[self._filled : self._filled + take] = view[pos : pos + take]
        self._filled += take
        if self._filled == self._large_total:
            self._finish_large(out)
        return take

    def _grow_large(self) -> None:
        """Give the big packet its full-size buffer: the peer sent the first step of it.

        One copy of at most LARGE_FIRST_STEP bytes; a new buffer rather than a resize, as a
        caller may still hold a view of the old one.
        """
        assert self._large is not None
        full = bytearray(self._large_total)
        full[: self._filled] = memoryview(self._large)[: self._filled]
        self._large = full

    def _finish_large(self, out: list[Packet]) -> None:
        assert self._large is not None and self._large_fields is not None
        packet = build_packet(
            memoryview(self._large), 0, self._large_fields, self.limits, self.zero_copy_threshold
        )
        if isinstance(packet.payload, memoryview):
            self.zero_copy_packets += 1
        self.packets_decoded += 1
        out.append(packet)
        self._large = None
        self._large_fields = None
        self._filled = 0


class LengthPrefixedDecoder(PacketDecoder):
    """Incremental decoder for the QUIC stream mapping: ``u32 frame length | packet``, repeated.

    Takes the arguments of :class:`PacketDecoder`, and:

    Args:
        max_frame: the largest frame accepted (default 16 MiB, the spec's cap).
    """

    _prefix = 4

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        receive_size: int = DEFAULT_RECEIVE_SIZE,
        max_frame: int = QUIC_MAX_FRAME,
    ) -> None:
        super().__init__(limits, zero_copy_threshold, receive_size)
        if max_frame < HEADER_SIZE:
            raise ConfigurationError(
                "max_frame", f"must be at least {HEADER_SIZE} bytes, got {max_frame}"
            )
        self.max_frame = max_frame

    def _frame_start(self, view: memoryview, pos: int) -> int:
        frame_len: int = _U32.unpack_from(view, pos)[0]
        if frame_len > self.max_frame:
            raise ProtocolError(
                Protocol.WIRE,
                f"frame of {frame_len} bytes exceeds the limit of {self.max_frame}",
                code="protocol.frame_too_large",
            )
        if frame_len < HEADER_SIZE:
            raise ProtocolError(
                Protocol.WIRE,
                f"frame of {frame_len} bytes is shorter than the 16-byte packet header",
                code="protocol.bad_length",
            )
        return pos + 4

    def _check_frame(self, view: memoryview, pos: int, total: int) -> None:
        frame_len: int = _U32.unpack_from(view, pos)[0]
        if frame_len != total:
            raise ProtocolError(
                Protocol.WIRE,
                f"frame length {frame_len} does not match the packet's {total} bytes",
                code="protocol.bad_length",
            )
