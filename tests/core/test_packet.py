"""Wire format v1: the spec's fixtures both ways, validation, limits, ids, round trips."""

from __future__ import annotations

import random
import struct
import zlib

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.core.errors import ConfigurationError, ProtocolError, ResourceError
from msgtrans.core.packet import (
    DEFAULT_MAX_EXT_HEADER,
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    Buffer,
    Compression,
    Limits,
    MessageIdCounter,
    Packet,
    PacketFlags,
    PacketType,
)

ONE_WAY, REQUEST, RESPONSE = PacketType.ONE_WAY, PacketType.REQUEST, PacketType.RESPONSE
MAX_U32 = 2**32 - 1


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- conformance fixtures ------------------------------------------------------------------------

# Hand-written from WIRE_FORMAT.md: version, compression, type, biz, id(4), ext len(2),
# payload len(4), flags(2), ext, payload.
FIXTURES = [
    pytest.param(
        Packet(ONE_WAY, 1, 0, b"hello"),
        "01 00 00 00 00 00 00 01 00 00 00 00 00 05 00 00 68 65 6c 6c 6f",  # verbatim from the spec
        id="spec-example-1",
    ),
    pytest.param(
        Packet(REQUEST, 0x01020304, 7, b"ping", b"\x01\x02"),
        "01 00 01 07 01 02 03 04 00 02 00 00 00 04 00 00 01 02 70 69 6e 67",  # verbatim
        id="spec-example-2",
    ),
    pytest.param(Packet(ONE_WAY, 1), "01 00 00 00 00000001 0000 00000000 0000", id="empty"),
    pytest.param(
        Packet(ONE_WAY, 42, 5, b"hello world"),
        "01 00 00 05 0000002a 0000 0000000b 0000 68656c6c6f20776f726c64",
        id="hello-world",
    ),
    pytest.param(
        Packet(REQUEST, 100, 10, b"ping"),
        "01 00 01 0a 00000064 0000 00000004 0000 70696e67",
        id="request",
    ),
    pytest.param(
        Packet(RESPONSE, 100, 10, b"pong"),
        "01 00 02 0a 00000064 0000 00000004 0000 706f6e67",
        id="response",
    ),
    pytest.param(
        Packet(ONE_WAY, 7, 0, b"data", b"route:abc"),
        "01 00 00 00 00000007 0009 00000004 0000 726f7574653a616263 64617461",
        id="ext-header",
    ),
    pytest.param(
        Packet(ONE_WAY, 0xDEADBEEF, 255), "01 00 00 ff deadbeef 0000 00000000 0000", id="max-ids"
    ),
    pytest.param(
        Packet(ONE_WAY, 3, 0, b"!", flags=PacketFlags.HIGH_PRIORITY),
        "01 00 00 00 00000003 0000 00000001 0002 21",
        id="high-priority",
    ),
    pytest.param(
        Packet(ONE_WAY, 4, 0, b"x", b"r", flags=PacketFlags.ROUTE_TAG),
        "01 00 00 00 00000004 0001 00000001 0004 72 78",
        id="route-tag",
    ),
    pytest.param(
        Packet(ONE_WAY, 5, 0, flags=PacketFlags.ROUTE_TAG | PacketFlags.HIGH_PRIORITY),
        "01 00 00 00 00000005 0000 00000000 0006",
        id="both-flags",
    ),
    pytest.param(
        Packet(REQUEST, MAX_U32, 128, b"\0", bytes(3)),
        "01 00 01 80 ffffffff 0003 00000001 0000 000000 00",
        id="max-u32-id",
    ),
    # Unknown flag bits are carried through both ways, never rejected.
    pytest.param(
        Packet(ONE_WAY, 1, flags=0x8001),  # type: ignore[arg-type]
        "01 00 00 00 00000001 0000 00000000 8001",
        id="unknown-flag-bits",
    ),
    pytest.param(
        Packet(RESPONSE, 2, 3, b"z", flags=0xFFFF),  # type: ignore[arg-type]
        "01 00 02 03 00000002 0000 00000001 ffff 7a",
        id="all-flag-bits",
    ),
]


@pytest.mark.parametrize(("packet", "wire"), FIXTURES)
def test_fixture_encodes_to_spec_bytes(packet: Packet, wire: str) -> None:
    assert packet.encode() == h(wire)
    assert b"".join(packet.encode_parts()) == h(wire)


@pytest.mark.parametrize(("packet", "wire"), FIXTURES)
def test_fixture_decodes_to_packet(packet: Packet, wire: str) -> None:
    for data in (h(wire), bytearray(h(wire)), memoryview(h(wire))):
        decoded = Packet.decode(data)
        assert decoded == packet
        assert type(decoded.packet_type) is PacketType
        assert type(decoded.compression) is Compression
        assert type(decoded.flags) is PacketFlags
        assert isinstance(decoded.payload, bytes) and isinstance(decoded.ext_header, bytes)


def test_request_and_response_share_the_id() -> None:
    request = Packet.decode(h("01 00 01 0a 00000064 0000 00000004 0000 70696e67"))
    response = Packet.decode(h("01 00 02 0a 00000064 0000 00000004 0000 706f6e67"))
    assert (request.packet_type, response.packet_type) == (REQUEST, RESPONSE)
    assert request.message_id == response.message_id == 100
    assert (request.payload, response.payload) == (b"ping", b"pong")


def test_unknown_flag_bits_are_kept_and_ignored() -> None:
    wire = h("01 00 00 00 00000001 0000 00000000 8001")
    packet = Packet.decode(wire)
    assert int(packet.flags) == 0x8001
    assert PacketFlags.FRAGMENTED in packet.flags
    assert PacketFlags.HIGH_PRIORITY not in packet.flags
    assert packet.encode() == wire


# Compressed payloads as produced by the reference libraries (not by msgtrans), so these stay
# valid whatever our own compressor emits.  Compared after decompression, as the spec says.
COMPRESSED_FIXTURES = [
    pytest.param(
        Compression.ZLIB,
        "01 02 00 05 0000002a 0000 00000013 0000 789ccb48cdc9c95728cf2fca4901001a0b045d",
        id="zlib",
    ),
    pytest.param(
        Compression.ZSTD,
        "01 01 00 05 0000002a 0000 00000014 0000 28b52ffd200b59000068656c6c6f20776f726c64",
        id="zstd",
    ),
    pytest.param(  # a streaming encoder leaves the content size out of the frame header
        Compression.ZSTD,
        "01 01 00 05 0000002a 0000 00000014 0000 28b52ffd000059000068656c6c6f20776f726c64",
        id="zstd-no-content-size",
    ),
    pytest.param(  # two frames back to back (a flushed stream) are one payload
        Compression.ZSTD,
        "01 01 00 05 0000002a 0000 0000001d 0000"
        "28b52ffd200631000068656c6c6f20 28b52ffd2005290000776f726c64",
        id="zstd-two-frames",
    ),
]


@pytest.mark.parametrize(("method", "wire"), COMPRESSED_FIXTURES)
def test_compressed_fixture_decodes(method: Compression, wire: str) -> None:
    expected = Packet(ONE_WAY, 42, 5, b"hello world", compression=method)
    assert Packet.decode(h(wire)) == expected


@pytest.mark.parametrize("method", [Compression.ZLIB, Compression.ZSTD])
def test_compressed_fixture_encodes(method: Compression) -> None:
    payload = b"compress me " * 100
    packet = Packet(ONE_WAY, 9, 1, payload, b"ext", compression=method)
    wire = packet.encode()
    # Everything but payload_len is fixed by the spec; the payload is compared decompressed.
    assert wire[:10] == h("01") + bytes([method]) + h("00 01 00000009 0003")
    assert wire[14:16] == b"\0\0"
    assert int.from_bytes(wire[10:14], "big") == len(wire) - 16 - 3 < len(payload)
    assert wire[16:19] == b"ext"  # the ext header is never compressed
    body = wire[19:]
    if method is Compression.ZLIB:
        assert zlib.decompress(body) == payload
    else:
        assert zstandard.ZstdDecompressor().decompress(body) == payload
    assert Packet.decode(wire) == packet


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        ("02 00 00 00 00000001 0000 00000000 0000", "protocol.bad_version"),
        ("00 00 00 00 00000001 0000 00000000 0000", "protocol.bad_version"),
        ("ff 00 00 00 00000001 0000 00000000 0000", "protocol.bad_version"),
        ("01 03 00 00 00000001 0000 00000000 0000", "protocol.bad_compression"),
        ("01 ff 00 00 00000001 0000 00000000 0000", "protocol.bad_compression"),
        ("01 00 03 00 00000001 0000 00000000 0000", "protocol.bad_packet_type"),
        ("01 00 ff 00 00000001 0000 00000000 0000", "protocol.bad_packet_type"),
        # the version is checked first, then compression, then the type
        ("02 03 03 00 00000001 0000 00000000 0000", "protocol.bad_version"),
        ("01 03 03 00 00000001 0000 00000000 0000", "protocol.bad_compression"),
        ("01 00 00 00 00000001 0000 00000001 0000", "protocol.bad_length"),  # short body
        ("01 00 00 00 00000001 0000 00000000 0000 00", "protocol.bad_length"),  # trailing
        ("01 00 00 00 00000001", "protocol.bad_length"),  # short header
        ("", "protocol.bad_length"),
        # limits come from the header alone: no body needed to refuse
        ("01 00 00 00 00000001 1001 00000000 0000", "protocol.frame_too_large"),  # ext 4097
        ("01 00 00 00 00000001 ffff 00000000 0000", "protocol.frame_too_large"),  # ext 65535
        ("01 00 00 00 00000001 0000 01000001 0000", "protocol.frame_too_large"),  # 16 MiB + 1
        ("01 00 00 00 00000001 0000 40000000 0000", "protocol.frame_too_large"),  # 1 GiB
        ("01 00 00 00 00000001 0000 ffffffff 0000", "protocol.frame_too_large"),
        ("01 02 00 00 00000001 0000 00000003 0000 010203", "protocol.decompression"),
        ("01 01 00 00 00000001 0000 00000003 0000 010203", "protocol.decompression"),
    ],
)
def test_invalid_packets_raise_protocol_error(wire: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Packet.decode(h(wire))
    assert info.value.error_code == code
    assert info.value.protocol.value == "wire"
    assert not info.value.is_retryable()


def test_limits_at_the_edge() -> None:
    ext = bytes(DEFAULT_MAX_EXT_HEADER)
    assert Packet.decode(Packet(ext_header=ext).encode()).ext_header == ext  # 4 KiB is fine
    tight = Limits(max_payload=10, max_ext_header=2)
    assert Packet.decode(Packet(payload=bytes(10), ext_header=b"ab").encode(), tight).payload == (
        bytes(10)
    )
    for packet in (Packet(payload=bytes(11)), Packet(ext_header=b"abc")):
        with pytest.raises(ProtocolError) as info:
            Packet.decode(packet.encode(), tight)
        assert info.value.error_code == "protocol.frame_too_large"
    # The protocol maximum is accepted once the limit is raised to it.
    big_ext = bytes(65535)
    loose = Limits(max_ext_header=65535)
    assert Packet.decode(Packet(ext_header=big_ext).encode(), loose).ext_header == big_ext
    assert Limits() == Limits(DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_EXT_HEADER)


def test_truncated_compressed_payloads_are_refused() -> None:
    for method, data in ((2, zlib.compress(b"x" * 1000)[:-4]),
                         (1, zstandard.ZstdCompressor().compress(b"x" * 1000)[:-3])):
        header = bytes([1, method, 0, 0, 0, 0, 0, 1, 0, 0]) + len(data).to_bytes(4, "big")
        with pytest.raises(ProtocolError) as info:
            Packet.decode(header + b"\0\0" + data)
        assert info.value.error_code == "protocol.decompression"


@pytest.mark.parametrize("method", [Compression.ZLIB, Compression.ZSTD])
def test_decompression_bomb_is_refused(method: Compression) -> None:
    limits = Limits(max_payload=64 * 1024)
    bomb = Packet(ONE_WAY, 1, 0, bytes(10 * 1024 * 1024), compression=method).encode()
    assert len(bomb) < limits.max_payload  # small on the wire...
    with pytest.raises(ProtocolError) as info:
        Packet.decode(bomb, limits)  # ...refused before it inflates past the limit
    assert info.value.error_code == "protocol.frame_too_large"
    # exactly at the limit is fine, one byte more is not
    ok = Packet(ONE_WAY, 1, 0, bytes(64 * 1024), compression=method).encode()
    assert len(Packet.decode(ok, limits).payload) == 64 * 1024
    over = Packet(ONE_WAY, 1, 0, bytes(64 * 1024 + 1), compression=method).encode()
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        Packet.decode(over, limits)


def test_empty_compressed_payload_is_empty() -> None:
    for method in (1, 2):
        wire = bytes([1, method, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
        assert Packet.decode(wire).payload == b""
    for method in (Compression.ZLIB, Compression.ZSTD):
        packet = Packet(payload=b"", compression=method)
        assert len(packet.encode()) > HEADER_SIZE  # an empty stream still has a few bytes
        assert Packet.decode(packet.encode()) == packet


# --- encoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_encode_parts_does_not_copy_the_payload(kind: type[Buffer]) -> None:
    payload = kind(bytes(100_000))
    packet = Packet(ONE_WAY, 1, 0, payload, b"ext")
    parts = packet.encode_parts()
    assert len(parts) == 2
    assert parts[1] is payload
    assert parts[0] == packet.header(len(payload)) + b"ext"
    assert Packet.decode(packet.encode()) == packet


def test_encode_parts_shapes() -> None:
    assert Packet(ONE_WAY, 1).encode_parts() == [Packet(ONE_WAY, 1).header(0)]
    with_ext = Packet(ONE_WAY, 1, ext_header=bytearray(b"ext")).encode_parts()
    assert with_ext == [Packet(ONE_WAY, 1).header(0)[:8] + h("0003 00000000 0000") + b"ext"]
    assert all(type(part) is bytes for part in with_ext)
    compressed = Packet(ONE_WAY, 1, 0, b"a" * 500, compression=Compression.ZLIB).encode_parts()
    assert len(compressed) == 2 and zlib.decompress(compressed[1]) == b"a" * 500
    assert struct.unpack(">I", compressed[0][10:14])[0] == len(compressed[1])


def test_header_fields() -> None:
    packet = Packet(RESPONSE, 0x0A0B0C0D, 0xEE, b"", b"xy", Compression.ZSTD, PacketFlags(0x1234))
    assert packet.header(0x11223344) == h("01 01 02 ee 0a0b0c0d 0002 11223344 1234")
    assert packet.wire_size == 18


def test_oversize_payload_is_a_resource_error() -> None:
    for encode in (Packet(ONE_WAY, 1, 0, bytes(11)).encode,
                   Packet(ONE_WAY, 1, 0, bytes(11)).encode_parts):
        with pytest.raises(ResourceError) as info:
            encode(10)
        err = info.value
        assert (err.resource, err.current, err.limit) == ("payload", 11, 10)
        assert err.error_code == "resource.payload_too_large"
        assert not err.is_retryable() and err.retry_delay() is None
    assert len(Packet(ONE_WAY, 1, 0, bytes(10)).encode(max_payload=10)) == 26
    # The limit is on the wire size: a payload that compresses below it may be sent.
    squeezed = Packet(ONE_WAY, 1, 0, bytes(10_000), compression=Compression.ZLIB)
    assert Packet.decode(squeezed.encode(max_payload=100)) == squeezed


# --- decoding ----------------------------------------------------------------------------------


def test_zero_copy_decode_returns_views() -> None:
    wire = Packet(ONE_WAY, 1, 0, bytes(range(256)) * 4).encode()
    packet = Packet.decode(wire, zero_copy_threshold=1024)
    assert isinstance(packet.payload, memoryview) and packet.payload.readonly
    assert packet.payload.obj is wire
    assert packet.payload == bytes(range(256)) * 4
    assert isinstance(Packet.decode(wire, zero_copy_threshold=1025).payload, bytes)
    assert isinstance(Packet.decode(wire).payload, bytes)  # default: never
    # a compressed payload is new memory anyway: never a view
    zipped = Packet(ONE_WAY, 1, 0, bytes(5000), compression=Compression.ZLIB).encode()
    assert isinstance(Packet.decode(zipped, zero_copy_threshold=1).payload, bytes)


def test_decode_accepts_any_byte_buffer() -> None:
    wire = Packet(ONE_WAY, 1, 0, b"abcd").encode()  # 20 bytes: five 32-bit words
    words = memoryview(wire).cast("I")
    assert Packet.decode(words) == Packet(ONE_WAY, 1, 0, b"abcd")


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"message_id": -1}, "message_id"),
        ({"message_id": 2**32}, "message_id"),
        ({"biz_type": 256}, "biz_type"),
        ({"biz_type": -1}, "biz_type"),
        ({"ext_header": bytes(65536)}, "ext_header"),
        ({"flags": 0x10000}, "flags"),
        ({"flags": -1}, "flags"),
    ],
)
def test_packet_fields_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Packet(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert info.value.error_code == "configuration.invalid"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"packet_type": 3}, "packet_type"), ({"compression": 3}, "compression")],
)
def test_packet_enum_fields_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Packet(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_plain_ints_are_normalised() -> None:
    packet = Packet(1, 5, 0, b"x", compression=2, flags=2)  # type: ignore[arg-type]
    assert packet.packet_type is PacketType.REQUEST
    assert packet.compression is Compression.ZLIB
    assert packet.flags is PacketFlags.HIGH_PRIORITY
    assert packet.wire_size == 17
    assert packet == Packet(REQUEST, 5, 0, b"x", compression=Compression.ZLIB,
                            flags=PacketFlags.HIGH_PRIORITY)


def test_packets_are_immutable() -> None:
    packet = Packet(ONE_WAY, 1)
    with pytest.raises(AttributeError):
        packet.message_id = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_payload": -1}, "max_payload"), ({"max_payload": 2**32}, "max_payload"),
     ({"max_ext_header": 65536}, "max_ext_header"), ({"max_ext_header": -1}, "max_ext_header")],
)
def test_limits_are_validated(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Limits(**kwargs)
    assert info.value.field == field


# --- message ids --------------------------------------------------------------------------------


def test_message_ids_start_at_one_and_wrap_to_one() -> None:
    ids = MessageIdCounter()
    assert ids.last == 0
    assert [ids.next() for _ in range(3)] == [1, 2, 3]
    assert ids.last == 3
    ids._last = MAX_U32 - 1  # no public way to skip four billion ids
    assert [ids.next(), ids.next(), ids.next()] == [MAX_U32, 1, 2]  # 0 ("unset") is skipped
    assert ids.last == 2
    ids.reset()
    assert ids.last == 0
    assert ids.next() == 1


def test_message_id_counters_are_independent() -> None:
    a, b = MessageIdCounter(), MessageIdCounter()
    a.next()
    a.next()
    assert b.next() == 1 and a.next() == 3


# --- properties ---------------------------------------------------------------------------------

ZERO_COPY = 1024  # a small zero-copy threshold keeps the large-payload examples fast


def _blob(seed: int, size: int) -> bytes:
    # Large payloads from a drawn seed: drawing every byte would exhaust hypothesis' buffer.
    return random.Random(seed).randbytes(size)


@st.composite
def payloads(draw: st.DrawFn, max_size: int = 2000, large: int | None = ZERO_COPY) -> Buffer:
    """Mostly small payloads; one in ten at least *large* bytes (``None``: never)."""
    if large is not None and draw(st.integers(0, 9)) == 0:
        data = _blob(draw(st.integers(0, 2**16)), draw(st.integers(large, 3 * large)))
    else:
        data = draw(st.binary(max_size=max_size))
    kind = draw(st.sampled_from(["bytes", "bytes", "bytearray", "memoryview"]))
    if kind == "bytearray":
        return bytearray(data)
    return memoryview(data) if kind == "memoryview" else data


@st.composite
def packets(
    draw: st.DrawFn,
    max_payload: int = 2000,
    max_ext: int = 300,
    compressions: tuple[Compression, ...] = tuple(Compression),
    large: int | None = ZERO_COPY,
) -> Packet:
    """Any packet: every type, id, biz type, flag word and compression."""
    return Packet(
        packet_type=draw(st.sampled_from(PacketType)),
        message_id=draw(st.integers(0, MAX_U32)),
        biz_type=draw(st.integers(0, 255)),
        payload=draw(payloads(max_payload, large)),
        ext_header=draw(st.binary(max_size=max_ext)),
        compression=draw(st.sampled_from(compressions)),
        flags=PacketFlags(draw(st.integers(0, 0xFFFF))),
    )


@given(packets())
def test_round_trip(packet: Packet) -> None:
    wire = packet.encode()
    assert Packet.decode(wire) == packet
    assert Packet.decode(b"".join(packet.encode_parts())) == packet
    decoded = Packet.decode(wire, zero_copy_threshold=ZERO_COPY)
    assert decoded == packet
    if packet.compression is Compression.NONE:
        # Uncompressed encoding is canonical: bytes -> packet -> the same bytes.
        assert wire == b"".join(
            [packet.header(len(packet.payload)), bytes(packet.ext_header), bytes(packet.payload)]
        )
        assert decoded.encode() == wire
        is_view = len(packet.payload) >= ZERO_COPY
        assert isinstance(decoded.payload, memoryview) is is_view


@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_protocol_errors(data: bytes) -> None:
    try:
        packet = Packet.decode(data)
    except ProtocolError:
        return
    assert Packet.decode(packet.encode()) == packet


@given(packets(max_payload=200, max_ext=20), st.data())
def test_mutated_packets_only_raise_protocol_errors(packet: Packet, data: st.DataObject) -> None:
    # Random bytes rarely get past the version byte: corrupt valid packets to reach the body.
    wire = bytearray(packet.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    limits = Limits(max_payload=4096, max_ext_header=64)
    try:
        decoded = Packet.decode(bytes(wire[:cut]), limits)
    except ProtocolError:
        return
    assert len(decoded.payload) <= limits.max_payload
    assert Packet.decode(decoded.encode(), limits) == decoded
