"""Stream framing: any split of the stream gives the same packets; limits hold; errors stick."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.core.errors import ConfigurationError, ProtocolError
from msgtrans.core.framing import (
    LengthPrefixedDecoder,
    PacketDecoder,
    length_prefix,
)
from msgtrans.core.packet import Compression, Limits, Packet, PacketType

Decoder = PacketDecoder
THRESHOLD = 2048  # small zero-copy threshold so examples exercise the large-packet path


def tcp_stream(packets: list[Packet]) -> bytes:
    return b"".join(p.encode() for p in packets)


def quic_stream(packets: list[Packet]) -> bytes:
    return b"".join(length_prefix(len(w)) + w for w in (p.encode() for p in packets))


MAPPINGS: list[tuple[Callable[..., PacketDecoder], Callable[[list[Packet]], bytes]]] = [
    (PacketDecoder, tcp_stream),
    (LengthPrefixedDecoder, quic_stream),
]


def feed_chunks(decoder: PacketDecoder, data: bytes, sizes: list[int], mutable: bool = False
                ) -> list[Packet]:
    out: list[Packet] = []
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        chunk = data[pos : pos + max(1, size)]
        out += decoder.feed(bytearray(chunk) if mutable else chunk)
        pos += len(chunk)
        i += 1
    return out


def receive_into(decoder: PacketDecoder, data: bytes, sizes: list[int]) -> list[Packet]:
    """Drive the recv_into path: write at most what get_buffer offers, like a socket."""
    out: list[Packet] = []
    view = memoryview(data)
    i = 0
    while len(view):
        want = max(1, sizes[i % len(sizes)]) if sizes else len(view)
        buf = decoder.get_buffer()
        n = min(len(buf), len(view), want)
        buf[:n] = view[:n]
        del buf
        view = view[n:]
        out += decoder.buffer_updated(n)
        i += 1
    return out


payloads = st.one_of(
    st.binary(max_size=300),
    st.integers(THRESHOLD, 3 * THRESHOLD).map(lambda n: bytes(range(256)) * (n // 256)),
)
packets = st.builds(
    Packet,
    packet_type=st.sampled_from(PacketType),
    message_id=st.integers(0, 2**32 - 1),
    biz_type=st.integers(0, 255),
    payload=payloads,
    ext_header=st.binary(max_size=40),
    compression=st.sampled_from([Compression.NONE, Compression.NONE, Compression.ZLIB]),
)
packet_lists = st.lists(packets, min_size=1, max_size=8)
chunk_sizes = st.lists(st.integers(1, 5000), min_size=1, max_size=10)


@pytest.mark.parametrize(("make", "encode"), MAPPINGS)
@given(pkts=packet_lists, sizes=chunk_sizes, mutable=st.booleans())
def test_random_chunks_decode_to_same_packets(
    make: Callable[..., PacketDecoder], encode: Callable[[list[Packet]], bytes],
    pkts: list[Packet], sizes: list[int], mutable: bool,
) -> None:
    data = encode(pkts)
    decoder = make(zero_copy_threshold=THRESHOLD)
    assert feed_chunks(decoder, data, sizes, mutable) == pkts
    decoder.feed_eof()
    assert decoder.buffered == 0
    assert decoder.packets_decoded == len(pkts)


@pytest.mark.parametrize(("make", "encode"), MAPPINGS)
@given(pkts=packet_lists, sizes=chunk_sizes)
def test_receive_into_decodes_to_same_packets(
    make: Callable[..., PacketDecoder], encode: Callable[[list[Packet]], bytes],
    pkts: list[Packet], sizes: list[int],
) -> None:
    decoder = make(zero_copy_threshold=THRESHOLD, receive_size=1024)
    assert receive_into(decoder, encode(pkts), sizes) == pkts
    decoder.feed_eof()


@pytest.mark.parametrize(("make", "encode"), MAPPINGS)
def test_every_split_point(
    make: Callable[..., PacketDecoder], encode: Callable[[list[Packet]], bytes]
) -> None:
    pkts = [
        Packet(PacketType.REQUEST, 1, 2, b"abc", b"e"),
        Packet(PacketType.ONE_WAY, 2, 0, b""),
        Packet(PacketType.RESPONSE, 1, 2, bytes(range(200)) * 12),  # above THRESHOLD
        Packet(PacketType.ONE_WAY, 3, 9, b"z" * 50, compression=Compression.ZLIB),
    ]
    data = encode(pkts)
    for cut in range(len(data) + 1):
        for second in (cut, min(len(data), cut + 7)):
            decoder = make(zero_copy_threshold=THRESHOLD)
            got = (decoder.feed(data[:cut]) + decoder.feed(data[cut:second])
                   + decoder.feed(data[second:]))
            assert got == pkts, cut
            decoder.feed_eof()


def test_zero_copy_payloads_are_views_of_received_memory() -> None:
    big = Packet(PacketType.ONE_WAY, 1, 0, b"x" * 10_000)
    small = Packet(PacketType.ONE_WAY, 2, 0, b"y" * 10)
    data = tcp_stream([small, big, small])

    decoder = PacketDecoder(zero_copy_threshold=4096)
    got = receive_into(decoder, data, [1000])
    assert got == [small, big, small]
    assert isinstance(got[1].payload, memoryview) and got[1].payload.readonly
    assert isinstance(got[0].payload, bytes)
    assert decoder.zero_copy_packets == 1

    # A whole bytes chunk: the payload is a slice of the caller's own bytes object.
    decoder = PacketDecoder(zero_copy_threshold=4096)
    got = decoder.feed(data)
    assert isinstance(got[1].payload, memoryview)
    assert got[1].payload.obj is data
    # A mutable chunk is copied where it would be kept, so the caller may reuse it.
    chunk = bytearray(data)
    got = PacketDecoder(zero_copy_threshold=4096).feed(chunk)
    chunk[:] = bytes(len(chunk))
    assert got == [small, big, small]
    # With zero-copy off every payload is bytes.
    got = PacketDecoder(zero_copy_threshold=None).feed(data)
    assert all(isinstance(p.payload, bytes) for p in got)


def test_large_packet_is_received_in_place() -> None:
    big = Packet(PacketType.ONE_WAY, 1, 0, bytes(range(256)) * 1000)
    data = big.encode()
    decoder = PacketDecoder(zero_copy_threshold=1024)
    assert decoder.feed(data[:100]) == []
    buf = decoder.get_buffer()
    assert len(buf) == len(data) - 100  # the rest of this packet, exactly
    buf[:] = data[100:]
    got = decoder.buffer_updated(len(buf))
    assert got == [big]
    assert got[0].payload.obj is buf.obj  # type: ignore[union-attr]


def test_header_limits_refuse_before_buffering() -> None:
    decoder = PacketDecoder()
    header = Packet(PacketType.ONE_WAY, 1).header(2**30)  # claims a 1 GiB payload
    with pytest.raises(ProtocolError) as info:
        decoder.feed(header)
    assert info.value.error_code == "protocol.frame_too_large"
    assert decoder.buffered == 0

    q = LengthPrefixedDecoder()
    with pytest.raises(ProtocolError) as info:
        q.feed(length_prefix(17 * 1024 * 1024))
    assert info.value.error_code == "protocol.frame_too_large"


def test_length_prefix_must_match_packet() -> None:
    wire = Packet(PacketType.ONE_WAY, 1, 0, b"abc").encode()
    for prefix, code in ((len(wire) + 1, "protocol.bad_length"), (3, "protocol.bad_length")):
        decoder = LengthPrefixedDecoder()
        with pytest.raises(ProtocolError) as info:
            decoder.feed(length_prefix(prefix) + wire + b"\0")
        assert info.value.error_code == code


def test_error_sticks_and_earlier_packets_are_kept() -> None:
    good = Packet(PacketType.ONE_WAY, 1, 0, b"ok")
    bad = b"\x09" + bytes(15)
    decoder = PacketDecoder()
    assert decoder.feed(good.encode() + bad) == [good]
    assert decoder.error is not None and decoder.error.error_code == "protocol.bad_version"
    for call in (lambda: decoder.feed(b"x"), decoder.get_buffer,
                 lambda: decoder.buffer_updated(0), decoder.feed_eof):
        with pytest.raises(ProtocolError) as info:
            call()
        assert info.value is decoder.error
    # the same through the receive-into path
    decoder = PacketDecoder()
    assert receive_into(decoder, good.encode(), []) == [good]
    buf = decoder.get_buffer()
    buf[:16] = bad
    del buf
    with pytest.raises(ProtocolError):
        decoder.buffer_updated(16)


def test_eof_inside_a_packet() -> None:
    wire = Packet(PacketType.ONE_WAY, 1, 0, b"abcdef").encode()
    for cut in (1, 16, len(wire) - 1):
        decoder = PacketDecoder()
        decoder.feed(wire[:cut])
        with pytest.raises(ProtocolError) as info:
            decoder.feed_eof()
        assert info.value.error_code == "protocol.unexpected_eof"
    big = PacketDecoder(zero_copy_threshold=4)
    big.feed(wire[:20])
    with pytest.raises(ProtocolError):
        big.feed_eof()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"zero_copy_threshold": 0}, "zero_copy_threshold"), ({"receive_size": 10}, "receive_size")],
)
def test_settings_are_validated(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        PacketDecoder(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    with pytest.raises(ConfigurationError):
        LengthPrefixedDecoder(max_frame=3)


SMALL = Limits(max_payload=4096, max_ext_header=64)
BOUND = 4 + 16 + SMALL.max_ext_header + SMALL.max_payload


@pytest.mark.parametrize("make", [PacketDecoder, LengthPrefixedDecoder])
@given(chunks=st.lists(st.binary(max_size=3000), max_size=20), zc=st.sampled_from([None, 512]))
def test_arbitrary_bytes_only_protocol_errors_and_bounded_memory(
    make: Callable[..., PacketDecoder], chunks: list[bytes], zc: int | None
) -> None:
    decoder = make(limits=SMALL, zero_copy_threshold=zc, receive_size=1024)
    for chunk in chunks:
        try:
            decoder.feed(chunk)
        except ProtocolError:
            break
        assert decoder.buffered <= BOUND
        assert len(decoder._buf) <= max(1024, BOUND + 3000)


@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30))
def test_arbitrary_valid_looking_headers(chunks: list[bytes]) -> None:
    # Start every chunk with a plausible header byte so more inputs get past the version check.
    decoder = PacketDecoder(limits=SMALL)
    for chunk in chunks:
        try:
            decoder.feed(b"\x01" + chunk)
        except ProtocolError:
            return
        assert decoder.buffered <= BOUND
