"""The msgtrans wire format, version 1: the 16-byte header, :class:`Packet` and its codec.

A packet on the wire is ``header (16 bytes) | ext header | payload``, all integers big-endian::

    version u8 | compression u8 | packet_type u8 | biz_type u8 | message_id u32 |
    ext_header_len u16 | payload_len u32 | reserved (flags) u16

Only the payload is ever compressed, and ``payload_len`` is its length on the wire.  A
:class:`Packet` always holds the *uncompressed* payload; :attr:`Packet.compression` says how it is
(or was) carried.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import TypeAlias, cast

from .compression import compress, decompress
from .errors import ConfigurationError, Protocol, ProtocolError, ResourceError

__all__ = [
    "DEFAULT_MAX_EXT_HEADER",
    "DEFAULT_MAX_PAYLOAD",
    "HEADER_SIZE",
    "VERSION",
    "Buffer",
    "Compression",
    "Limits",
    "MessageIdCounter",
    "Packet",
    "PacketFlags",
    "PacketType",
    "outgoing_packet",
    "wire_size_of",
]

#: Anything msgtrans accepts or hands out as message bytes.
Buffer: TypeAlias = bytes | bytearray | memoryview

#: The wire format version every packet carries in its first byte; any other value is a
#: ``protocol.bad_version`` error.
VERSION = 1
#: The length of the fixed header in bytes: the ext header and the payload follow it.
HEADER_SIZE = 16
#: The fixed header's layout for :mod:`struct`, big-endian: version, compression, packet_type,
#: biz_type (u8 each), message_id (u32), ext_header_len (u16), payload_len (u32), flags (u16).
HEADER = struct.Struct(">BBBBIHIH")
#: The default limit on a payload accepted, on the wire and after decompression: 16 MiB (the
#: Rust 2.x default, the same on every transport).
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
#: The default limit on an ext header: 4 KiB (the protocol allows up to 65535 bytes).
DEFAULT_MAX_EXT_HEADER = 4 * 1024
MAX_U32 = 0xFFFFFFFF
MAX_U16 = 0xFFFF


class PacketType(IntEnum):
    """What a packet is: a one-way message, a request, or the response to a request."""

    ONE_WAY = 0
    REQUEST = 1
    RESPONSE = 2


class Compression(IntEnum):
    """How the payload is compressed on the wire (1 is zstd, 2 is zlib per the spec)."""

    NONE = 0
    ZSTD = 1
    ZLIB = 2


class PacketFlags(IntFlag):
    """The ``reserved`` header field.  Unknown bits are kept and ignored, never rejected."""

    NONE = 0
    FRAGMENTED = 0x0001
    HIGH_PRIORITY = 0x0002
    ROUTE_TAG = 0x0004


@dataclass(frozen=True, slots=True)
class Limits:
    """Receive limits, checked from the header before any body byte is buffered.

    Attributes:
        max_payload: largest payload accepted, on the wire and after decompression
            (default 16 MiB, the Rust 2.x default).
        max_ext_header: largest ext header accepted (default 4 KiB, the spec's recommendation;
            the protocol allows up to 65535).
    """

    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_ext_header: int = DEFAULT_MAX_EXT_HEADER

    def __post_init__(self) -> None:
        if not 0 <= self.max_payload <= MAX_U32:
            raise ConfigurationError(
                "max_payload", f"must be between 0 and {MAX_U32}, got {self.max_payload}"
            )
        if not 0 <= self.max_ext_header <= MAX_U16:
            raise ConfigurationError(
                "max_ext_header", f"must be between 0 and {MAX_U16}, got {self.max_ext_header}"
            )


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Packet:
    """One msgtrans packet: an immutable value.

    Attributes:
        packet_type: one-way (default), request or response.
        message_id: u32; 0 means unset.  A response carries its request's id.
        biz_type: u8, application-defined, passed through untouched.
        payload: the uncompressed payload.  Decoded payloads of at least the zero-copy
            threshold are read-only ``memoryview`` slices of the received memory; smaller
            ones are ``bytes``.
        ext_header: the extension header, never compressed.
        compression: how the payload travels on the wire (default: uncompressed).
        flags: the header's flag bits.
        compression_level: the level the payload is compressed at when it is sent (default
            ``None``: the method's default); not on the wire, not compared.

    Raises:
        ConfigurationError: a field is out of its wire range.
    """

    packet_type: PacketType = PacketType.ONE_WAY
    message_id: int = 0
    biz_type: int = 0
    payload: Buffer = b""
    ext_header: Buffer = b""
    compression: Compression = Compression.NONE
    flags: PacketFlags = field(default=PacketFlags.NONE)
    compression_level: int | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.message_id <= MAX_U32:
            raise ConfigurationError("message_id", f"must fit in u32, got {self.message_id}")
        if not 0 <= self.biz_type <= 0xFF:
            raise ConfigurationError("biz_type", f"must be 0..255, got {self.biz_type}")
        if len(self.ext_header) > MAX_U16:
            raise ConfigurationError(
                "ext_header", f"must be at most {MAX_U16} bytes, got {len(self.ext_header)}"
            )
        if not 0 <= int(self.flags) <= MAX_U16:
            raise ConfigurationError("flags", f"must fit in u16, got {int(self.flags)}")
        # Normalise plain ints so that equality and repr are stable.
        if type(self.packet_type) is not PacketType:
            if self.packet_type not in _PTYPES:
                raise ConfigurationError(
                    "packet_type",
                    f"must be 0 (one-way), 1 (request) or 2 (response), got {self.packet_type!r}",
                )
            object.__setattr__(self, "packet_type", PacketType(self.packet_type))
        if type(self.compression) is not Compression:
            if self.compression not in _COMPRESSIONS:
                raise ConfigurationError(
                    "compression",
                    f"must be 0 (none), 1 (zstd) or 2 (zlib), got {self.compression!r}",
                )
            object.__setattr__(self, "compression", Compression(self.compression))
        if type(self.flags) is not PacketFlags:
            object.__setattr__(self, "flags", PacketFlags(self.flags))

    # --- encoding --------------------------------------------------------------------------

    def wire_payload(self) -> Buffer:
        """Return the payload as it travels on the wire (compressed if :attr:`compression` says)."""
        if self.compression is Compression.NONE:
            return self.payload
        return compress(self.compression, self.payload, self.compression_level)

    def header(self, wire_payload_len: int) -> bytes:
        """Return the 16-byte fixed header for a wire payload of *wire_payload_len* bytes."""
        return HEADER.pack(
            VERSION,
            self.compression,
            self.packet_type,
            self.biz_type,
            self.message_id,
            len(self.ext_header),
            wire_payload_len,
            self.flags,
        )

    def encode_parts(self, max_payload: int = MAX_U32) -> list[Buffer]:
        """Encode without joining header and payload: ``[header + ext header, payload]``.

        Hand the list to a vectored write (``socket.sendmsg``, ``transport.writelines``) so that
        a large payload is never copied into a new buffer.  An empty payload gives one part.

        Raises:
            ResourceError: the wire payload is larger than *max_payload* (code
                ``resource.payload_too_large``; not retryable).
        """
        wire = self.wire_payload()
        size = len(wire)
        if size > max_payload:
            raise ResourceError(
                "payload", size, max_payload, "payload too large to send",
                code="resource.payload_too_large", retryable=False,
            )
        head = self.header(size)
        if self.ext_header:
            head += bytes(self.ext_header)
        return [head, wire] if size else [head]

    def encode(self, max_payload: int = MAX_U32) -> bytes:
        """Return the whole packet as bytes.  Raises like :meth:`encode_parts`."""
        return b"".join(self.encode_parts(max_payload))

    @property
    def wire_size(self) -> int:
        """The size of the encoded packet when it is not compressed."""
        return HEADER_SIZE + len(self.ext_header) + len(self.payload)

    # --- decoding --------------------------------------------------------------------------

    @classmethod
    def decode(
        cls,
        data: Buffer,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = None,
    ) -> Packet:
        """Decode exactly one whole packet.

        Args:
            data: the packet's bytes, nothing before and nothing after.
            limits: receive limits (default 16 MiB payload, 4 KiB ext header).
            zero_copy_threshold: payloads of at least this many bytes are returned as read-only
                views of *data* instead of copies (default: never).

        Raises:
            ProtocolError: the data is short, has trailing bytes, or breaks the format.
        """
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if len(view) < HEADER_SIZE:
            raise ProtocolError(
                Protocol.WIRE, f"packet of {len(view)} bytes is shorter than the 16-byte header",
                code="protocol.bad_length",
            )
        fields = parse_header(view, limits)
        total = HEADER_SIZE + fields[5] + fields[6]
        if len(view) != total:
            raise ProtocolError(
                Protocol.WIRE,
                f"packet is {len(view)} bytes but its header says {total}",
                code="protocol.bad_length",
            )
        return build_packet(view, 0, fields, limits, zero_copy_threshold)


HeaderFields = tuple[int, int, int, int, int, int, int, int]


def parse_header(view: memoryview, limits: Limits, offset: int = 0) -> HeaderFields:
    """Unpack and check the header at *offset*; return its eight fields.

    The fields are ``(version, compression, packet_type, biz_type, message_id, ext_header_len,
    payload_len, flags)``.

    Raises:
        ProtocolError: bad version, compression or packet type, or a length over *limits*.
    """
    fields: HeaderFields = HEADER.unpack_from(view, offset)
    version, compression, ptype, _biz, _mid, ext_len, payload_len, _flags = fields
    if (
        version != VERSION
        or compression > 2
        or ptype > 2
        or ext_len > limits.max_ext_header
        or payload_len > limits.max_payload
    ):
        raise header_error(fields, limits)
    return fields


def header_error(fields: HeaderFields, limits: Limits) -> ProtocolError:
    """Return the protocol error that explains why *fields* were refused."""
    version, compression, ptype, _biz, _mid, ext_len, payload_len, _flags = fields
    if version != VERSION:
        return ProtocolError(
            Protocol.WIRE, f"unsupported wire format version {version} (expected 1)",
            code="protocol.bad_version",
        )
    if compression > 2:
        return ProtocolError(
            Protocol.WIRE, f"unknown compression {compression} (0 none, 1 zstd, 2 zlib)",
            code="protocol.bad_compression",
        )
    if ptype > 2:
        return ProtocolError(
            Protocol.WIRE, f"unknown packet type {ptype} (0 one-way, 1 request, 2 response)",
            code="protocol.bad_packet_type",
        )
    if ext_len > limits.max_ext_header:
        return ProtocolError(
            Protocol.WIRE,
            f"ext header of {ext_len} bytes exceeds the limit of {limits.max_ext_header}",
            code="protocol.frame_too_large",
        )
    return ProtocolError(
        Protocol.WIRE,
        f"payload of {payload_len} bytes exceeds the limit of {limits.max_payload}",
        code="protocol.frame_too_large",
    )


_PTYPES = (PacketType.ONE_WAY, PacketType.REQUEST, PacketType.RESPONSE)
_COMPRESSIONS = (Compression.NONE, Compression.ZSTD, Compression.ZLIB)
# Iterating a flag enum skips NONE (0), the commonest value: add it by hand.
_FLAGS = {0: PacketFlags.NONE, **{int(f): f for f in PacketFlags}}


class _Unfrozen:
    """A mutable twin of :class:`Packet` with the same slots, for the hot paths: filling it
    with a plain ``__init__`` and then assigning ``__class__ = Packet`` makes a packet in about
    a third of the time of seven ``object.__setattr__`` calls through the frozen class (the
    checks of ``Packet.__post_init__`` are skipped there on purpose, as before)."""

    __slots__ = Packet.__slots__

    def __init__(  # noqa: PLR0917 (positional: the hot paths call it with all seven)
        self,
        packet_type: PacketType,
        message_id: int,
        biz_type: int,
        payload: Buffer,
        ext_header: Buffer,
        compression: Compression,
        flags: PacketFlags,
        compression_level: int | None = None,
    ) -> None:
        self.packet_type = packet_type
        self.message_id = message_id
        self.biz_type = biz_type
        self.payload = payload
        self.ext_header = ext_header
        self.compression = compression
        self.flags = flags
        self.compression_level = compression_level


def _make_by_setattr(  # noqa: PLR0917
    packet_type: PacketType,
    message_id: int,
    biz_type: int,
    payload: Buffer,
    ext_header: Buffer,
    compression: Compression,
    flags: PacketFlags,
) -> Packet:
    packet: Packet = object.__new__(Packet)
    _set = object.__setattr__
    _set(packet, "packet_type", packet_type)
    _set(packet, "message_id", message_id)
    _set(packet, "biz_type", biz_type)
    _set(packet, "payload", payload)
    _set(packet, "ext_header", ext_header)
    _set(packet, "compression", compression)
    _set(packet, "flags", flags)
    _set(packet, "compression_level", None)
    return packet


def _swap_works() -> bool:
    # The class swap needs the two layouts to match; an interpreter or a Packet change that
    # refuses it makes the hot paths fall back to _make_by_setattr, which always works.
    twin = _Unfrozen(PacketType.ONE_WAY, 1, 2, b"p", b"", Compression.NONE, PacketFlags.NONE)
    try:
        twin.__class__ = Packet  # type: ignore[assignment]
    except TypeError:
        return False
    return cast(Packet, twin) == Packet(PacketType.ONE_WAY, 1, 2, b"p")


_SWAP = _swap_works()


def build_packet(
    view: memoryview,
    offset: int,
    fields: HeaderFields,
    limits: Limits,
    zero_copy_threshold: int | None,
) -> Packet:
    """Build the packet whose header *fields* (checked by :func:`parse_header`) start at *offset*.

    Small payloads are copied to ``bytes``; payloads of at least *zero_copy_threshold* are
    handed out as read-only slices of *view*, so the caller must not reuse that memory.
    """
    _v, comp, ptype, biz, mid, ext_len, payload_len, flags = fields
    start = offset + HEADER_SIZE
    ext = view[start : start + ext_len].tobytes() if ext_len else b""
    start += ext_len
    end = start + payload_len
    payload: Buffer
    if comp:
        payload = decompress(_COMPRESSIONS[comp], view[start:end], limits.max_payload)
    elif zero_copy_threshold is not None and payload_len >= zero_copy_threshold:
        payload = view[start:end].toreadonly()
    else:
        payload = view[start:end].tobytes()
    # The header was checked by parse_header: skip __post_init__'s checks on the hot path.
    flag = _FLAGS.get(flags)
    if _SWAP:
        twin = _Unfrozen(
            _PTYPES[ptype], mid, biz, payload, ext, _COMPRESSIONS[comp],
            PacketFlags(flags) if flag is None else flag,
        )
        twin.__class__ = Packet  # type: ignore[assignment]
        return twin  # type: ignore[return-value]  # a Packet now (typing.cast costs a call)
    return _make_by_setattr(
        _PTYPES[ptype], mid, biz, payload, ext, _COMPRESSIONS[comp],
        PacketFlags(flags) if flag is None else flag,
    )


_NO_COMPRESSION = Compression.NONE
_NO_FLAGS = PacketFlags.NONE


def wire_size_of(packets: Sequence[Packet]) -> int:
    """The bytes *packets* take on the wire uncompressed (:attr:`Packet.wire_size` summed, in
    one call): what a driver counts in the send backlog for a batch."""
    size = HEADER_SIZE * len(packets)
    for packet in packets:
        size += len(packet.payload) + len(packet.ext_header)
    return size


def outgoing_packet(
    packet_type: PacketType, message_id: int, biz_type: int, payload: Buffer, ext_header: Buffer
) -> Packet:
    """Return an uncompressed packet without flags, as ``Packet(...)`` would, but checking only
    what an application can get wrong (*biz_type*, the ext header's length): the session
    machine's send path, where *packet_type* and *message_id* are its own and valid.

    Raises:
        ConfigurationError: *biz_type* is not 0..255 or *ext_header* is over 65535 bytes.
    """
    if not 0 <= biz_type <= 0xFF:
        raise ConfigurationError("biz_type", f"must be 0..255, got {biz_type}")
    if len(ext_header) > MAX_U16:
        raise ConfigurationError(
            "ext_header", f"must be at most {MAX_U16} bytes, got {len(ext_header)}"
        )
    if _SWAP:
        twin = _Unfrozen(
            packet_type, message_id, biz_type, payload, ext_header, _NO_COMPRESSION, _NO_FLAGS
        )
        twin.__class__ = Packet  # type: ignore[assignment]
        return twin  # type: ignore[return-value]  # a Packet now (typing.cast costs a call)
    return _make_by_setattr(
        packet_type, message_id, biz_type, payload, ext_header, _NO_COMPRESSION, _NO_FLAGS
    )


class MessageIdCounter:
    """Allocates message ids per the spec: 1, 2, ... 2**32-1, then 1 again (0 means unset).

    One counter serves both one-way and request packets; responses reuse their request's id.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        """Return the next id."""
        last = self._last + 1
        if last > MAX_U32:
            last = 1
        self._last = last
        return last

    def reset(self) -> None:
        """Start again from 1 (after a disconnect or reconnect)."""
        self._last = 0

    @property
    def last(self) -> int:
        """The id handed out last (0 before the first)."""
        return self._last
