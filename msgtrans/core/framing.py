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

Given a :class:`~msgtrans.core.buffers.BufferPool` (``buffer_pool=``), a big packet's buffer is
*lent* by the pool instead of allocated: the payload view handed out keeps it, and
:func:`~msgtrans.core.buffers.release_view` (``Message.release()``) gives it back for the next big
packet.  A payload never released is freed by the garbage collector as before; the pool only
loses a buffer (see ``docs/buffers.md`` for the rule).

Every decoder adds its big packets to the process-wide :data:`ZERO_COPY` counters: payloads at or
above the zero-copy threshold, how many reached the application as views, and the bytes of them
the decoder copied (the part of a packet that had arrived before its own buffer existed).

Invalid input raises :class:`~msgtrans.core.errors.ProtocolError`; packets completed before the
bad bytes in the same call are returned first, the error is kept in :attr:`~PacketDecoder.error`
and raised by every later call: the decoder refuses further input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .buffers import BufferPool, PoolBuffer
from .errors import ConfigurationError, Protocol, ProtocolError, ResourceError
from .packet import _FLAGS as _PACKET_FLAGS
from .packet import (
    _NO_COMPRESSION,
    _PTYPES,
    _SWAP,
    DEFAULT_LIMITS,
    HEADER,
    HEADER_SIZE,
    VERSION,
    Buffer,
    HeaderFields,
    Limits,
    Packet,
    _Unfrozen,
    build_packet,
    header_error,
)

__all__ = [
    "DEFAULT_RECEIVE_SIZE",
    "DEFAULT_ZERO_COPY_THRESHOLD",
    "QUIC_MAX_FRAME",
    "ZERO_COPY",
    "LengthPrefixedDecoder",
    "PacketDecoder",
    "ZeroCopyCounters",
    "ZeroCopyStats",
    "length_prefix",
]

#: Payloads at least this large are handed out as views, not copies (a setting everywhere).
DEFAULT_ZERO_COPY_THRESHOLD = 64 * 1024
#: The size of the receive area :meth:`PacketDecoder.get_buffer` offers by default.
DEFAULT_RECEIVE_SIZE = 64 * 1024
#: Idle receive areas kept for the next read of any decoder of the same pool: one per thread
#: reading at the same moment is enough (a nested TLS read needs two).
SPARE_AREAS = 4
#: How much of a big packet's buffer is allocated before its bytes arrive: the rest is allocated
#: once the peer has sent this much, so that a header claiming 16 MiB costs at most 1 MiB.
LARGE_FIRST_STEP = 1024 * 1024
#: The spec's cap on a QUIC stream frame.
QUIC_MAX_FRAME = 16 * 1024 * 1024

_U32 = struct.Struct(">I")

#: What a decoder with nothing buffered holds as its receive area: nothing (never written to,
#: being empty).  The area is taken when bytes are to be received and given up once every one of
#: them was decoded, so that an idle connection holds no receive memory at all.
_NO_AREA = bytearray()


#: Idle receive areas of decoders without a pool, by size (see BufferPool.spare_areas).
_PLAIN_SPARES: dict[int, list[bytearray]] = {}


@dataclass(frozen=True, slots=True)
class ZeroCopyStats:
    """The zero-copy path's counters at one moment (plain data).

    Attributes:
        large_payloads: received payloads at or above their decoder's zero-copy threshold (the
            default threshold when zero-copy is off, so that "off" is measured the same way).
        zero_copy_payloads: those of them handed to the application as views of the memory
            they were received into, with at most half of their packet copied on the way
            (beyond the one copy receiving takes on QUIC and a WebSocket server: see
            :meth:`ZeroCopyCounters.add` and ``docs/buffers.md``).
        bytes_viewed: payload bytes handed out as views.
        bytes_copied: bytes of those packets the decoder copied (staging before a packet had its
            own buffer; the whole payload when it was handed out as ``bytes``).
    """

    large_payloads: int = 0
    zero_copy_payloads: int = 0
    bytes_viewed: int = 0
    bytes_copied: int = 0

    @property
    def hit_rate(self) -> float:
        """zero_copy_payloads / large_payloads, 0.0 before the first large payload."""
        n = self.large_payloads
        return self.zero_copy_payloads / n if n else 0.0


class ZeroCopyCounters:
    """Mutable totals behind :class:`ZeroCopyStats`; decoders add to :data:`ZERO_COPY`.

    Only big packets touch them (never the small-message hot path).  Additions from several
    threads are not locked: a lost increment is possible under free threading and harmless for
    a metric.
    """

    __slots__ = ("bytes_copied", "bytes_viewed", "large_payloads", "zero_copy_payloads")

    def __init__(self) -> None:
        self.large_payloads = 0
        self.zero_copy_payloads = 0
        self.bytes_viewed = 0
        self.bytes_copied = 0

    def add(
        self, payload_len: int, viewed: bool, copied: int, total: int, received: int = 0
    ) -> None:
        """Count one large payload of a *total*-byte packet, of which *copied* bytes were copied.

        *received* (part of *copied*) is the one copy that receiving the packet takes where no
        read lands in our memory directly: aioquic's stream data into the packet's pooled
        buffer, a WebSocket server's unmasking of a client's payload into it.  It is counted in
        ``bytes_copied`` but does not make the payload a miss; any copy beyond it does.
        """
        self.large_payloads += 1
        self.bytes_copied += copied
        if viewed:
            self.bytes_viewed += payload_len
            if 2 * (copied - received) <= total:
                self.zero_copy_payloads += 1

    def snapshot(self) -> ZeroCopyStats:
        """Return the counters as plain data."""
        return ZeroCopyStats(
            self.large_payloads, self.zero_copy_payloads, self.bytes_viewed, self.bytes_copied
        )

    def reset(self) -> None:
        """Start again from zero (benchmarks and tests)."""
        self.__init__()  # type: ignore[misc]


#: The process-wide zero-copy counters every decoder adds to (``transport.stats()`` shows them).
ZERO_COPY = ZeroCopyCounters()


def length_prefix(packet_size: int) -> bytes:
    """Return the u32 big-endian prefix that frames a packet of *packet_size* bytes on QUIC."""
    return _U32.pack(packet_size)


def _copy(dst: bytearray, at: int, src: memoryview) -> None:
    """Copy *src* into *dst* at *at*, once.

    Through a memoryview: ``bytearray[a:b] = memoryview`` first copies the view into a temporary
    ``bytearray`` (CPython's slice assignment only reads ``bytearray`` values directly), which
    would double every copy and allocate as much again.
    """
    with memoryview(dst) as out:
        out[at : at + len(src)] = src


class PacketDecoder:
    """Incremental decoder for packets sent back to back on a byte stream (the TCP mapping).

    Args:
        limits: receive limits (default: 16 MiB payload, 4 KiB ext header).
        zero_copy_threshold: packets whose payload is at least this many bytes are received
            into a buffer of their own and their payload handed out as a read-only
            ``memoryview`` of it; ``None`` copies every payload to ``bytes``.  Default 64 KiB.
        receive_size: the size of the area :meth:`get_buffer` offers (default 64 KiB).
        buffer_pool: lends the buffers big packets are received into (default ``None``:
            allocated per packet).  A packet larger than the pool's largest class is still
            received in steps (1 MiB first) and its full buffer lent at the second step, so the
            pool's memory limit bounds it; a refusal fails the decoder (``resource.memory``).
            Also settable later as the :attr:`buffer_pool` attribute, before the first packet.
        counters: where big packets are counted (default :data:`ZERO_COPY`).

    Attributes:
        received_by_feed: whether the chunks given to :meth:`feed` are the memory the bytes
            were received into by a library that hands out its own ``bytes`` (aioquic's stream
            data; set by the QUIC machine).  Copying them once into a big packet's buffer is
            then the receive itself: counted in ``bytes_copied`` but not against zero-copy
            (:meth:`ZeroCopyCounters.add`).  Default ``False``.

    Raises:
        ConfigurationError: a setting is out of range.
    """

    _prefix = 0  # bytes of framing before each packet
    # Whether setting a pool also lends the receive area from it (not for a decoder that only
    # holds the pool for a machine with its own framing: WebSocket's).
    _pooled_area = True

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        receive_size: int = DEFAULT_RECEIVE_SIZE,
        *,
        buffer_pool: BufferPool | None = None,
        counters: ZeroCopyCounters = ZERO_COPY,
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
        self._buf = _NO_AREA  # taken on the first read (see _take_area)
        self._pos = 0  # first unread byte of _buf
        self._end = 0  # end of the received bytes in _buf
        self._large: bytearray | None = None  # a big packet being received in place
        self._large_fields: HeaderFields | None = None
        self._large_total = 0  # the big packet's full size (its buffer may still be smaller)
        self._large_off = 0  # where the big packet starts in its buffer
        self._filled = 0
        self.error: ProtocolError | None = None
        #: Number of packets handed out as views of received memory (the zero-copy path).
        self.zero_copy_packets = 0
        #: Number of packets decoded in all.
        self.packets_decoded = 0
        self._pool: BufferPool | None = None
        self._spares: list[bytearray] | None = None  # where idle areas go (see _take_area)
        self.buffer_pool = buffer_pool
        self.counters = counters
        #: Bytes the decoder copied from one place of its own to another (compacting or growing
        #: the receive area, copying a chunk in): the cost zero-copy avoids for big packets.
        self.bytes_moved = 0
        self._large_copied = 0  # bytes of the big packet in progress copied into its buffer
        self._large_received = 0  # of which copied from fed chunks (see received_by_feed)
        self.received_by_feed = False

    # --- public face -------------------------------------------------------------------------

    @property
    def buffer_pool(self) -> BufferPool | None:
        """The pool big packets' buffers and the receive area are lent by, or ``None``.

        With a pool, the receive area is lent by it too (when a read needs one: an idle
        decoder holds none): a big packet that starts in it and fits is then received in that
        very area, which becomes the packet's buffer (no copy at all).
        """
        return self._pool

    @buffer_pool.setter
    def buffer_pool(self, pool: BufferPool | None) -> None:
        self._pool = pool
        self._spares = None

    def _take_area(self) -> bytearray:
        """Make a receive area this decoder's, for a read: an idle one of its pool's spare
        areas (or, without a pool, of the plain ones of its size), else one lent by the pool
        (its class for receive_size), else (no pool, or it refuses: memory limit) a new one.

        The spare areas are a list taken from with ``pop`` and given back to with ``append``,
        each one step under the GIL (and a locked one under free threading), so that an area
        is never in two decoders' hands, on any thread, without a lock in the core; and a
        request/response connection costs no pool call per message."""
        size = self._receive_size
        pool = self._pool if self._pooled_area else None
        spares = self._spares
        if spares is None:
            spares = self._spares = (
                pool.spare_areas if pool is not None else _PLAIN_SPARES.setdefault(size, [])
            )
        try:
            area = spares.pop()
        except IndexError:
            area = None
        if area is None or len(area) < size:
            if pool is not None:
                try:
                    area = pool.lend(size)
                except ResourceError:
                    area = bytearray(size)
            else:
                area = bytearray(size)
        self._buf = area
        return area

    def _idle(self) -> None:
        """Give up the receive area: nothing is buffered.  It joins the spare areas it was
        taken from (a few at most), else goes back to its pool (once no view of it is left)."""
        area = self._buf
        self._buf = _NO_AREA
        spares = self._spares
        if spares is not None and len(spares) < SPARE_AREAS and len(area) <= 2 * self._receive_size:
            spares.append(area)
        else:
            self._give_back(area)

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
        if not self._end and self._buf is not _NO_AREA:
            self._idle()
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
            off = self._large_off
            if off + self._filled == len(self._large):
                self._grow_large()
                off = 0
            end = off + self._large_total
            if type(self._large) is PoolBuffer:
                # A pooled buffer is longer than its packet: let the read run on into the next
                # packet's first bytes (a quarter of the receive area at most), which
                # buffer_updated moves to the receive area.  A small copy instead of a read of
                # a few bytes per big packet.
                end = min(len(self._large), end + self._receive_size // 4)
            return memoryview(self._large)[off + self._filled : end]
        if self._buf is _NO_AREA:
            self._take_area()
        want = max(sizehint, self._receive_size // 2) if sizehint > 0 else self._receive_size // 2
        if len(self._buf) - self._end < want:
            self._make_room(want)
        return memoryview(self._buf)[self._end :]

    def unused_buffer(self) -> None:
        """Say the last :meth:`get_buffer` received nothing (a read found no bytes): with
        nothing buffered, the receive area is given up until the next read, as after a read
        that completed every packet."""
        if self._end == 0 and self._large is None and self._buf is not _NO_AREA:
            self._idle()

    def buffer_updated(self, nbytes: int) -> list[Packet]:
        """Account for *nbytes* written into the last :meth:`get_buffer` and return the packets
        they complete.

        Raises:
            ProtocolError: as for :meth:`feed`.
        """
        if self.error is not None:
            raise self.error
        # Fast path: the read completed exactly one small, uncompressed packet and nothing else
        # (a request or its response).  The header is checked as _cut checks it and the packet
        # built as build_packet builds it, inline: three Python calls fewer per read.  Anything
        # else (bad header, a partial or second packet, compression, a big payload, a length
        # prefix) falls through to the general path, which decides and raises as before.
        if _SWAP and self._large is None and not self._prefix:
            pos = self._pos
            end = self._end + nbytes
            if end - pos >= HEADER_SIZE:
                buf = self._buf
                fields: HeaderFields = HEADER.unpack_from(buf, pos)
                ext_len = fields[5]
                payload_len = fields[6]
                limits = self.limits
                small = self.zero_copy_threshold
                if small is None:
                    small = DEFAULT_ZERO_COPY_THRESHOLD  # counted from there (see _cut)
                flags = _PACKET_FLAGS.get(fields[7])
                if (
                    end - pos == HEADER_SIZE + ext_len + payload_len
                    and fields[0] == VERSION
                    and fields[1] == 0
                    and fields[2] <= 2
                    and ext_len <= limits.max_ext_header
                    and payload_len <= limits.max_payload
                    and payload_len < small
                    and flags is not None
                ):
                    start = pos + HEADER_SIZE
                    with memoryview(buf) as view:
                        ext = view[start : start + ext_len].tobytes() if ext_len else b""
                        start += ext_len
                        payload = view[start:end].tobytes()
                    twin = _Unfrozen(
                        _PTYPES[fields[2]], fields[4], fields[3], payload, ext,
                        _NO_COMPRESSION, flags,
                    )
                    twin.__class__ = Packet  # type: ignore[assignment]
                    self._pos = self._end = 0
                    self.packets_decoded += 1
                    self._idle()
                    return [twin]  # type: ignore[list-item]  # a Packet now
        out: list[Packet] = []
        try:
            if self._large is not None:
                filled = self._filled + nbytes
                total = self._large_total
                if filled < total:
                    self._filled = filled
                    return out
                large, after = self._large, self._large_off + total
                self._filled = total
                self._finish_large(out)
                if filled > total:
                    # The read ran past the packet (see get_buffer): the rest is the stream's.
                    with memoryview(large) as rest:
                        self._keep(rest[after : after + filled - total], out)
                if not self._end and self._buf is not _NO_AREA and self._large is None:
                    self._idle()
                return out
            self._end += nbytes
            self._drain(out)
        except ProtocolError as exc:
            self._fail(exc, out)
        if not self._end and self._buf is not _NO_AREA:
            self._idle()
        return out

    def release_buffers(self) -> None:
        """Give the pooled memory the decoder holds (its receive area, a big packet in
        progress) back to its pool: the connection is over.  Bytes not yet decoded are dropped;
        the decoder still works afterwards, with a plain receive area made on demand.  Memory
        a view is still using (a buffer a driver has not let go of) is left to the collector."""
        if self._pool is None:
            return
        self._give_back(self._buf)
        self._give_back(self._large)
        self._pool = None
        self._buf = _NO_AREA
        self._pos = self._end = self._filled = 0
        self._large = None
        self._large_fields = None

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
                # A peer (or the network) that died in the middle of a packet is a lost
                # connection, not a peer that speaks another protocol: reconnecting may help.
                retryable=True,
                retry_after=1.0,
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
        self._give_back(self._buf)
        self._buf = _NO_AREA
        self._pos = self._end = self._filled = 0
        self._give_back(self._large)
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
        # Payloads this big are counted in the zero-copy counters (with zero-copy off too, at
        # the default threshold, so that "off" is measured on the same messages).
        count_from = large if large is not None else DEFAULT_ZERO_COPY_THRESHOLD
        # The framing hooks do nothing without a length prefix (TCP): skip two calls a packet.
        framed = self._prefix != 0
        while end - pos >= need:
            start = self._frame_start(view, pos) if framed else pos
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
            if framed:
                self._check_frame(view, pos, total)
            if end - start < total:
                if large is not None and payload_len >= large:
                    # A big packet: give it its own buffer now, receive the rest into it.
                    # Only the first LARGE_FIRST_STEP bytes are taken until the peer has sent
                    # them: a 16-byte header alone must not make us hold 16 MiB.
                    have = end - start
                    self._large_total = total
                    self._large_fields = fields
                    self._filled = have
                    area = self._buf
                    if (
                        type(area) is PoolBuffer
                        and start + total <= len(area)
                        and view.obj is area
                        and self._pool is not None
                    ):
                        # It fits in the pooled receive area it started in: the area becomes
                        # its buffer, nothing is copied, and the next read takes a new area.
                        self._large = area
                        self._large_off = start
                        self._large_copied = 0
                        self._large_received = 0
                        self._buf = _NO_AREA
                        return end
                    self._large = self._new_large(total, have)
                    self._large_off = 0
                    _copy(self._large, 0, view[start:end])
                    self._large_copied = have
                    # Straight from a fed chunk (not from our receive area): the receive copy.
                    fed = self.received_by_feed and view.obj is not self._buf
                    self._large_received = have if fed else 0
                    return end
                return pos
            if zc is None and large is not None and payload_len >= large:
                # Whole already, but in memory that is reused (the receive area, a mutable
                # chunk): copy it once into memory of its own, as the large path would, so
                # that a big payload is always a read-only view.
                own_buf = self._new_large(total, total)
                _copy(own_buf, 0, view[start : start + total])
                packet = build_packet(memoryview(own_buf), 0, fields, limits, large)
                if payload_len >= count_from:
                    self._count(packet, own_buf, payload_len, total, total)
            else:
                packet = build_packet(view, start, fields, limits, zc)
                if payload_len >= count_from:
                    self._count(packet, None, payload_len, total, 0)
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
        _copy(self._buf, self._end, view)
        self._end += n
        self.bytes_moved += n
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
        if self._buf is _NO_AREA and n <= self._receive_size:
            self._take_area()  # nothing is buffered: a receive area of the usual kind
            self._pos = self._end = 0
            return
        held = self._end - self._pos
        self.bytes_moved += held
        size = max(self._receive_size, held + n)
        if held >= self._prefix + HEADER_SIZE and size > len(self._buf):
            # Growing for a packet bigger than the area (zero-copy off): double towards its
            # size, so that receiving it moves its bytes O(1) times rather than once per read,
            # and a bare header claiming 16 MiB still gets no more than twice what was sent.
            whole = held + self._missing()
            if whole > size:
                size = min(whole, max(size, 2 * held))
        if size <= len(self._buf) and self._pos:
            # Compact in place: only the unfinished packet moves, and it is bounded by the
            # zero-copy threshold (bigger ones have a buffer of their own).
            with memoryview(self._buf) as area:
                area[:held] = area[self._pos : self._end]  # memmove: the ranges may overlap
        else:
            # A new buffer rather than a resize: a caller may still hold a view of the old one.
            new = bytearray(size)
            with memoryview(self._buf) as area:
                _copy(new, 0, area[self._pos : self._end])
            old, self._buf = self._buf, new
            self._give_back(old)
        self._pos = 0
        self._end = held

    def _fill_large(self, view: memoryview, pos: int, out: list[Packet]) -> int:
        """Copy what *view* holds of the big packet in progress; return the bytes taken."""
        assert self._large is not None
        take = min(self._large_total - self._filled, len(view) - pos)
        if self._large_off + self._filled + take > len(self._large):
            self._grow_large()
        at = self._large_off + self._filled
        _copy(self._large, at, view[pos : pos + take])
        self._filled += take
        self._large_copied += take
        if self.received_by_feed:
            self._large_received += take
        if self._filled == self._large_total:
            self._finish_large(out)
        return take

    def _grow_large(self) -> None:
        """Give the big packet its full-size buffer: the peer sent the first step of it.

        One copy of at most LARGE_FIRST_STEP bytes; a new buffer rather than a resize, as a
        caller may still hold a view of the old one.
        """
        assert self._large is not None
        total = self._large_total
        full = self._lend(total) if self.buffer_pool is not None else bytearray(total)
        off = self._large_off
        with memoryview(self._large) as old_view:
            _copy(full, 0, old_view[off : off + self._filled])
        self._large_copied += self._filled
        old, self._large, self._large_off = self._large, full, 0
        self._give_back(old)

    def _finish_large(self, out: list[Packet]) -> None:
        assert self._large is not None and self._large_fields is not None
        buf = self._large
        fields = self._large_fields
        self._large = None
        self._large_fields = None
        self._filled = 0
        packet = build_packet(
            memoryview(buf), self._large_off, fields, self.limits, self.zero_copy_threshold
        )
        self._count(
            packet, buf, fields[6], self._large_total, self._large_copied,
            received=self._large_received,
        )
        self.packets_decoded += 1
        out.append(packet)

    def _new_large(self, total: int, have: int) -> bytearray:
        """Return the buffer a big packet is received into: lent by the pool when one of its
        classes holds the packet, else its first step (all of it when *have* is that much)."""
        pool = self.buffer_pool
        if pool is not None and total <= pool.sizes[-1]:
            return self._lend(total)
        return bytearray(min(total, max(have, LARGE_FIRST_STEP)))

    def _lend(self, nbytes: int) -> bytearray:
        assert self.buffer_pool is not None
        try:
            return self.buffer_pool.lend(nbytes)
        except ResourceError as exc:
            raise ProtocolError(
                Protocol.WIRE,
                f"no memory for a {nbytes}-byte packet: {exc}",
                code="resource.memory",
            ) from exc

    def _count(
        self,
        packet: Packet,
        buf: bytearray | None,
        payload_len: int,
        total: int,
        copied: int,
        *,
        received: int = 0,
    ) -> None:
        """Count a big packet (*received*: see :meth:`ZeroCopyCounters.add`); give its pooled
        *buf* back at once when its payload did not stay in it (decompressed, or copied to
        ``bytes``)."""
        viewed = type(packet.payload) is memoryview
        if viewed:
            self.zero_copy_packets += 1
        else:
            copied += payload_len
            self._give_back(buf)
        self.counters.add(payload_len, viewed, copied, total, received)

    @staticmethod
    def _give_back(buf: bytearray | None) -> None:
        if type(buf) is PoolBuffer and buf.lender is not None:
            # Still viewed (by the driver's last read, say): the pool takes it back once not.
            buf.lender.release_later(buf)


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
        *,
        buffer_pool: BufferPool | None = None,
        counters: ZeroCopyCounters = ZERO_COPY,
    ) -> None:
        super().__init__(
            limits, zero_copy_threshold, receive_size, buffer_pool=buffer_pool, counters=counters
        )
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
