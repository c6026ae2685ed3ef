"""Wire format v1: the spec's fixtures both ways, validation, limits, ids, compression."""

from __future__ import annotations

import zlib

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.core.errors import ConfigurationError, ProtocolError, ResourceError
from msgtrans.core.packet import (
    Compression,
    Limits,
    MessageIdCounter,
    Packet,
    PacketFlags,
    PacketType,
)

ONE_WAY, REQUEST, RESPONSE = PacketType.ONE_WAY, PacketType.REQUEST, PacketType.RESPONSE


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# Hand-written from WIRE_FORMAT.md: version, compression, type, biz, id(4), ext len(2),
# payload len(4), flags(2), ext, payload.
FIXTURES = [
    pytest.param(
        Packet(ONE_WAY, 1, 0, b"hello"),
        "01 00 00 00 00000001 0000 00000005 0000" + b"hello".hex(),
        id="spec-example-1",
    ),
    pytest.param(
        Packet(REQUEST, 0x01020304, 7, b"ping", b"\x01\x02"),
        "01 00 01 07 01020304 0002 00000004 0000 0102" + b"ping".hex(),
        id="spec-example-2",
    ),
    pytest.param(Packet(ONE_WAY, 1), "01 00 00 00 00000001 0000 00000000 0000", id="empty"),
    pytest.param(
        Packet(ONE_WAY, 42, 5, b"hello world"),
        "01 00 00 05 0000002a 0000 0000000b 0000" + b"hello world".hex(),
        id="hello-world",
    ),
    pytest.param(
        Packet(REQUEST, 100, 10, b"ping"),
        "01 00 01 0a 00000064 0000 00000004 0000" + b"ping".hex(),
        id="request",
    ),
    pytest.param(
        Packet(RESPONSE, 100, 10, b"pong"),
        "01 00 02 0a 00000064 0000 00000004 0000" + b"pong".hex(),
        id="response",
    ),
    pytest.param(
        Packet(ONE_WAY, 7, 0, b"data", b"route:abc"),
        "01 00 00 00 00000007 0009 00000004 0000" + b"route:abc".hex() + b"data".hex(),
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
]


@pytest.mark.parametrize(("packet", "wire"), FIXTURES)
def test_fixture_encodes_to_spec_bytes(packet: Packet, wire: str) -> None:
    assert packet.encode() == h(wire)
    assert b"".join(packet.encode_parts()) == h(wire)


@pytest.mark.parametrize(("packet", "wire"), FIXTURES)
def test_fixture_decodes_to_packet(packet: Packet, wire: str) -> None:
    assert Packet.decode(h(wire)) == packet
    assert Packet.decode(bytearray(h(wire))) == packet
    assert Packet.decode(memoryview(h(wire))) == packet


def test_unknown_flag_bits_are_kept_and_ignored() -> None:
    wire = h("01 00 00 00 00000001 0000 00000000 8001")
    packet = Packet.decode(wire)
    assert int(packet.flags) == 0x8001
    assert PacketFlags.FRAGMENTED in packet.flags
    assert packet.encode() == wire


@pytest.mark.parametrize("method", [Compression.ZLIB, Compression.ZSTD])
def test_compressed_fixture_compared_after_decompression(method: Compression) -> None:
    payload = b"compress me " * 100
    packet = Packet(ONE_WAY, 9, 1, payload, b"ext", compression=method)
    wire = packet.encode()
    assert wire[1] == method
    assert len(wire) < 16 + 3 + len(payload)
    # payload_len in the header is the compressed length
    assert int.from_bytes(wire[10:14], "big") == len(wire) - 16 - 3
    assert wire[16:19] == b"ext"  # the ext header is never compressed
    assert Packet.decode(wire) == packet


def test_foreign_compressed_payloads_decode() -> None:
    # Bytes compressed by the reference libraries, not by msgtrans.
    for method, data in (
        (2, zlib.compress(b"abc" * 50, 9)),
        (1, zstandard.ZstdCompressor(level=19).compress(b"abc" * 50)),
    ):
        header = bytes([1, method, 0, 0]) + (1).to_bytes(4, "big") + b"\0\0"
        wire = header + len(data).to_bytes(4, "big") + b"\0\0" + data
        assert Packet.decode(wire).payload == b"abc" * 50


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        ("02 00 00 00 00000001 0000 00000000 0000", "protocol.bad_version"),
        ("00 00 00 00 00000001 0000 00000000 0000", "protocol.bad_version"),
        ("01 03 00 00 00000001 0000 00000000 0000", "protocol.bad_compression"),
        ("01 00 03 00 00000001 0000 00000000 0000", "protocol.bad_packet_type"),
        ("01 00 00 00 00000001 0000 00000001 0000", "protocol.bad_length"),  # short body
        ("01 00 00 00 00000001 0000 00000000 0000 00", "protocol.bad_length"),  # trailing
        ("01 00 00 00 00000001", "protocol.bad_length"),  # short header
        ("01 00 00 00 00000001 1001 00000000 0000", "protocol.frame_too_large"),  # ext > 4 KiB
        ("01 00 00 00 00000001 0000 01000001 0000", "protocol.frame_too_large"),  # > 16 MiB
        ("01 02 00 00 00000001 0000 00000003 0000 010203", "protocol.decompression"),
        ("01 01 00 00 00000001 0000 00000003 0000 010203", "protocol.decompression"),
    ],
)
def test_invalid_packets_raise_protocol_error(wire: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Packet.decode(h(wire))
    assert info.value.error_code == code
    assert not info.value.is_retryable()


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
    # exactly at the limit is fine
    ok = Packet(ONE_WAY, 1, 0, bytes(64 * 1024), compression=method).encode()
    assert len(Packet.decode(ok, limits).payload) == 64 * 1024


def test_empty_compressed_payload_is_empty() -> None:
    for method in (1, 2):
        wire = bytes([1, method, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
        assert Packet.decode(wire).payload == b""


def test_encode_parts_does_not_copy_the_payload() -> None:
    payload = bytes(100_000)
    parts = Packet(ONE_WAY, 1, 0, payload, b"ext").encode_parts()
    assert len(parts) == 2
    assert parts[1] is payload
    assert parts[0] == Packet(ONE_WAY, 1, 0, payload, b"ext").header(len(payload)) + b"ext"
    assert Packet(ONE_WAY, 1).encode_parts() == [Packet(ONE_WAY, 1).header(0)]


def test_oversize_payload_is_a_resource_error() -> None:
    with pytest.raises(ResourceError) as info:
        Packet(ONE_WAY, 1, 0, bytes(11)).encode(max_payload=10)
    err = info.value
    assert (err.resource, err.current, err.limit) == ("payload", 11, 10)
    assert err.error_code == "resource.payload_too_large"
    assert not err.is_retryable() and err.retry_delay() is None


def test_zero_copy_decode_returns_views() -> None:
    wire = Packet(ONE_WAY, 1, 0, bytes(range(256)) * 4).encode()
    packet = Packet.decode(wire, zero_copy_threshold=1024)
    assert isinstance(packet.payload, memoryview) and packet.payload.readonly
    assert packet.payload == bytes(range(256)) * 4
    assert isinstance(Packet.decode(wire, zero_copy_threshold=1025).payload, bytes)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"message_id": -1}, "message_id"),
        ({"message_id": 2**32}, "message_id"),
        ({"biz_type": 256}, "biz_type"),
        ({"biz_type": -1}, "biz_type"),
        ({"ext_header": bytes(65536)}, "ext_header"),
        ({"flags": 0x10000}, "flags"),
    ],
)
def test_packet_fields_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Packet(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_plain_ints_are_normalised() -> None:
    packet = Packet(1, 5, 0, b"x", compression=2, flags=2)  # type: ignore[arg-type]
    assert packet.packet_type is PacketType.REQUEST
    assert packet.compression is Compression.ZLIB
    assert packet.flags is PacketFlags.HIGH_PRIORITY
    assert packet.wire_size == 17


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_payload": -1}, "max_payload"), ({"max_payload": 2**32}, "max_payload"),
     ({"max_ext_header": 65536}, "max_ext_header")],
)
def test_limits_are_validated(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Limits(**kwargs)
    assert info.value.field == field


def test_message_ids_start_at_one_and_wrap_to_one() -> None:
    ids = MessageIdCounter()
    assert ids.last == 0
    assert [ids.next() for _ in range(3)] == [1, 2, 3]
    ids._last = 2**32 - 2
    assert [ids.next(), ids.next(), ids.next()] == [2**32 - 1, 1, 2]
    ids.reset()
    assert ids.next() == 1


packets = st.builds(
    Packet,
    packet_type=st.sampled_from(PacketType),
    message_id=st.integers(0, 2**32 - 1),
    biz_type=st.integers(0, 255),
    payload=st.binary(max_size=2000),
    ext_header=st.binary(max_size=300),
    compression=st.sampled_from(Compression),
    flags=st.integers(0, 0xFFFF).map(PacketFlags),
)


@given(packets)
def test_round_trip(packet: Packet) -> None:
    assert Packet.decode(packet.encode()) == packet
    assert Packet.decode(b"".join(packet.encode_parts())) == packet


@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_protocol_errors(data: bytes) -> None:
    try:
        Packet.decode(data)
    except ProtocolError:
        pass
