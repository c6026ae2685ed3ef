"""Stream framing: any split of the stream gives the same packets; limits hold; errors stick."""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
from collections.abc import Callable
from itertools import accumulate
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.core.errors import ConfigurationError, ProtocolError
from msgtrans.core.framing import (
    DEFAULT_RECEIVE_SIZE,
    DEFAULT_ZERO_COPY_THRESHOLD,
    QUIC_MAX_FRAME,
    LengthPrefixedDecoder,
    PacketDecoder,
    length_prefix,
)
from msgtrans.core.packet import Compression, Limits, Packet, PacketType

from .test_packet import packets

THRESHOLD = 2048  # small zero-copy threshold so examples exercise the large-packet path
RECEIVE = 1024  # the smallest receive area, so that the receive-into path wraps often

MakeDecoder = Callable[..., PacketDecoder]
Frame = Callable[[list[Packet]], bytes]


def tcp_stream(pkts: list[Packet]) -> bytes:
    return b"".join(p.encode() for p in pkts)


def quic_stream(pkts: list[Packet]) -> bytes:
    return b"".join(length_prefix(len(w)) + w for w in (p.encode() for p in pkts))


def frame_sizes(frame: Frame, pkts: list[Packet]) -> list[int]:
    prefix = 4 if frame is quic_stream else 0
    return [prefix + len(p.encode()) for p in pkts]


MAPPINGS = [
    pytest.param(PacketDecoder, tcp_stream, id="tcp"),
    pytest.param(LengthPrefixedDecoder, quic_stream, id="quic"),
]

# How a chunk reaches the decoder: feed(bytes), feed(bytearray) that the caller overwrites at
# once, the recv_into path (get_buffer / buffer_updated), or a different one for each chunk.
MODES = ["bytes", "bytearray", "into", "mixed"]


def push(decoder: PacketDecoder, chunk: bytes, mode: str, out: list[Packet]) -> None:
    """Give *chunk* to *decoder* the way *mode* says; packets go to *out* even if it raises."""
    if mode == "bytes":
        out += decoder.feed(chunk)
    elif mode == "bytearray":
        buf = bytearray(chunk)
        out += decoder.feed(buf)
        buf[:] = b"\xee" * len(buf)  # the caller reuses its buffer: nothing may alias it
    else:
        view = memoryview(chunk)
        while view:
            area = decoder.get_buffer()
            n = min(len(area), len(view))  # a socket writes at most what it is offered
            area[:n] = view[:n]
            del area
            view = view[n:]
            out += decoder.buffer_updated(n)


def drive(
    decoder: PacketDecoder,
    data: bytes,
    sizes: list[int],
    mode: str,
    out: list[Packet],
    check: Callable[[PacketDecoder], None] | None = None,
) -> None:
    pos, i = 0, 0
    while pos < len(data):
        size = max(1, sizes[i % len(sizes)]) if sizes else len(data)
        chunk = data[pos : pos + size]
        how = ("bytes", "bytearray", "into")[i % 3] if mode == "mixed" else mode
        push(decoder, chunk, how, out)
        if check is not None:
            check(decoder)
        pos += len(chunk)
        i += 1


def decode(decoder: PacketDecoder, data: bytes, sizes: list[int], mode: str) -> list[Packet]:
    out: list[Packet] = []
    drive(decoder, data, sizes, mode, out)
    return out


def view_invariants(decoder: PacketDecoder, got: list[Packet]) -> None:
    threshold = decoder.zero_copy_threshold
    views = [p for p in got if isinstance(p.payload, memoryview)]
    assert decoder.zero_copy_packets == len(views)
    for p in views:
        assert isinstance(p.payload, memoryview)
        assert p.payload.readonly
        assert threshold is not None and p.payload.nbytes >= threshold
        assert p.compression is Compression.NONE
    for p in got:
        if threshold is None or len(p.payload) < threshold:
            assert type(p.payload) is bytes
        assert type(p.ext_header) is bytes


# --- any cut gives the same packets ---------------------------------------------------------------

small_packets = packets(max_payload=24, max_ext=6, large=None)


@pytest.mark.parametrize(("make", "frame"), MAPPINGS)
@given(
    pkts=st.lists(small_packets, min_size=1, max_size=4),
    zc=st.sampled_from([None, 1, 16]),
    mode=st.sampled_from(["bytes", "bytearray", "into"]),
)
def test_every_single_split_point(
    make: MakeDecoder, frame: Frame, pkts: list[Packet], zc: int | None, mode: str
) -> None:
    data = frame(pkts)
    for cut in range(len(data) + 1):
        decoder = make(zero_copy_threshold=zc, receive_size=RECEIVE)
        out: list[Packet] = []
        push(decoder, data[:cut], mode, out)
        push(decoder, data[cut:], mode, out)
        assert out == pkts, cut
        decoder.feed_eof()
        assert decoder.buffered == 0
        assert decoder.packets_decoded == len(pkts)


@pytest.mark.parametrize(("make", "frame"), MAPPINGS)
@given(pkts=st.lists(small_packets, min_size=1, max_size=4), zc=st.sampled_from([None, 1, 16]))
def test_eof_is_fine_only_at_packet_boundaries(
    make: MakeDecoder, frame: Frame, pkts: list[Packet], zc: int | None
) -> None:
    data = frame(pkts)
    boundaries = {0, *accumulate(frame_sizes(frame, pkts))}
    for cut in range(len(data) + 1):
        decoder = make(zero_copy_threshold=zc)
        got = decoder.feed(data[:cut])
        if cut in boundaries:
            decoder.feed_eof()
            assert len(got) == sorted(boundaries).index(cut)
            continue
        with pytest.raises(ProtocolError) as info:
            decoder.feed_eof()
        assert info.value.error_code == "protocol.unexpected_eof"
        assert info.value.retry_delay() == 1.0  # a cut connection: reconnecting may help
        assert decoder.error is info.value
        with pytest.raises(ProtocolError) as again:
            decoder.feed(b"")
        assert again.value is info.value


@pytest.mark.parametrize(("make", "frame"), MAPPINGS)
@pytest.mark.parametrize("mode", MODES)
def test_every_split_point_with_large_packets(make: MakeDecoder, frame: Frame, mode: str) -> None:
    pkts = [
        Packet(PacketType.REQUEST, 1, 2, b"abc", b"e"),
        Packet(PacketType.ONE_WAY, 2, 0, b""),
        Packet(PacketType.RESPONSE, 1, 2, bytes(range(200)) * 12),  # above THRESHOLD
        Packet(PacketType.ONE_WAY, 3, 9, b"z" * 50, compression=Compression.ZLIB),
        Packet(PacketType.ONE_WAY, 4, 9, b"q" * 3000, compression=Compression.ZSTD),  # large too
    ]
    data = frame(pkts)
    for cut in range(0, len(data) + 1, 3 if mode == "mixed" else 1):
        for second in (cut, min(len(data), cut + 7)):
            decoder = make(zero_copy_threshold=THRESHOLD, receive_size=RECEIVE)
            got = decode(decoder, data, [cut, second - cut, len(data)], mode)
            assert got == pkts, cut
            decoder.feed_eof()
            view_invariants(decoder, got)


@pytest.mark.parametrize(("make", "frame"), MAPPINGS)
@given(
    pkts=st.lists(packets(max_payload=300, max_ext=40, large=THRESHOLD), min_size=1, max_size=8),
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=10),
    mode=st.sampled_from(MODES),
    zc=st.sampled_from([None, 1, 100, THRESHOLD]),
)
def test_random_chunks_decode_to_same_packets(
    make: MakeDecoder, frame: Frame, pkts: list[Packet], sizes: list[int], mode: str,
    zc: int | None,
) -> None:
    data = frame(pkts)
    decoder = make(zero_copy_threshold=zc, receive_size=RECEIVE)
    got = decode(decoder, data, sizes, mode)
    assert got == pkts
    decoder.feed_eof()
    assert decoder.buffered == 0
    assert decoder.packets_decoded == len(pkts)
    view_invariants(decoder, got)


@pytest.mark.parametrize(("make", "frame"), MAPPINGS)
def test_one_byte_at_a_time(make: MakeDecoder, frame: Frame) -> None:
    pkts = [Packet(PacketType.ONE_WAY, i, i, bytes([i]) * i * 7, bytes(i % 3)) for i in range(12)]
    data = frame(pkts)
    for mode in ("bytes", "into"):
        decoder = make(zero_copy_threshold=40)
        assert decode(decoder, data, [1], mode) == pkts
        decoder.feed_eof()


@pytest.mark.parametrize(("make", "frame"), MAPPINGS)
def test_many_packets_in_one_chunk(make: MakeDecoder, frame: Frame) -> None:
    pkts = [Packet(PacketType.REQUEST, i, 1, b"m" * (i % 50)) for i in range(2000)]
    data = frame(pkts)
    for mode in ("bytes", "bytearray", "into"):
        decoder = make()
        assert decode(decoder, data, [64 * 1024], mode) == pkts
        assert decoder.packets_decoded == 2000


# --- zero copy ------------------------------------------------------------------------------------


def test_zero_copy_payloads_are_views_of_received_memory() -> None:
    big = Packet(PacketType.ONE_WAY, 1, 0, b"x" * 10_000)
    small = Packet(PacketType.ONE_WAY, 2, 0, b"y" * 10)
    data = tcp_stream([small, big, small])

    decoder = PacketDecoder(zero_copy_threshold=4096)
    got = decode(decoder, data, [1000], "into")
    assert got == [small, big, small]
    assert isinstance(got[1].payload, memoryview) and got[1].payload.readonly
    assert isinstance(got[0].payload, bytes)
    assert decoder.zero_copy_packets == 1

    # A whole bytes chunk: the payload is a slice of the caller's own bytes object.
    decoder = PacketDecoder(zero_copy_threshold=4096)
    got = decoder.feed(data)
    assert isinstance(got[1].payload, memoryview)
    assert got[1].payload.obj is data
    assert decoder.zero_copy_packets == 1
    # A mutable chunk is copied where it would be kept, so the caller may reuse it.
    chunk = bytearray(data)
    got = PacketDecoder(zero_copy_threshold=4096).feed(chunk)
    chunk[:] = bytes(len(chunk))
    assert got == [small, big, small]
    # With zero-copy off every payload is bytes.
    decoder = PacketDecoder(zero_copy_threshold=None)
    assert all(type(p.payload) is bytes for p in decode(decoder, data, [1000], "into"))
    assert decoder.zero_copy_packets == 0


@pytest.mark.parametrize(("make", "frame"), MAPPINGS)
def test_large_packet_is_received_in_place(make: MakeDecoder, frame: Frame) -> None:
    big = Packet(PacketType.ONE_WAY, 1, 0, bytes(range(256)) * 1000)
    data = frame([big])
    decoder = make(zero_copy_threshold=1024)
    assert decoder.feed(data[:100]) == []
    buf = decoder.get_buffer()
    assert len(buf) == len(data) - 100  # the rest of this packet, exactly
    buf[:] = data[100:]
    got = decoder.buffer_updated(len(buf))
    assert got == [big]
    assert isinstance(got[0].payload, memoryview)
    assert got[0].payload.obj is buf.obj
    assert decoder.zero_copy_packets == 1
    # The next receive area is new memory: the payload handed out is never written over.
    area = decoder.get_buffer()
    area[:] = b"\xff" * len(area)
    assert got == [big]


@pytest.mark.parametrize("mode", ["bytes", "into"])
def test_default_threshold_large_payloads_are_views(mode: str) -> None:
    # The default settings, a stream of 64 KiB chunks: every payload >= 64 KiB is a view.
    sizes = [10, 70_000, 100, 64 * 1024, 200_000, 5, 64 * 1024 - 1, 1 << 20]
    pkts = [Packet(PacketType.ONE_WAY, i, 0, bytes([i]) * n) for i, n in enumerate(sizes)]
    decoder = PacketDecoder()
    got = decode(decoder, tcp_stream(pkts), [64 * 1024], mode)
    assert got == pkts
    kinds = [type(p.payload) for p in got]
    assert kinds == [memoryview if n >= DEFAULT_ZERO_COPY_THRESHOLD else bytes for n in sizes]
    assert decoder.zero_copy_packets == 4


def test_large_payload_is_a_view_of_the_chunk_after_a_buffered_partial() -> None:
    small = Packet(PacketType.ONE_WAY, 1, 0, b"s" * 10)
    big = Packet(PacketType.ONE_WAY, 2, 0, b"b" * 5000)
    data = tcp_stream([small, big])
    decoder = PacketDecoder(zero_copy_threshold=4096)
    assert decoder.feed(data[:5]) == []  # the header of the small packet is cut
    chunk = data[5:]
    got = decoder.feed(chunk)
    assert got == [small, big]
    assert isinstance(got[1].payload, memoryview)
    assert got[1].payload.obj is chunk  # a view of the caller's bytes, never copied
    assert decoder.zero_copy_packets == 1


@pytest.mark.parametrize("how", ["grown-receive-area", "bytearray-chunk"])
def test_large_payload_is_always_a_view(how: str) -> None:
    k = 1024
    small = Packet(PacketType.ONE_WAY, 1, 0, b"s" * (63 * k))  # under the 64 KiB threshold
    big = Packet(PacketType.ONE_WAY, 2, 0, b"b" * (64 * k))  # at it
    data = tcp_stream([small, big])
    decoder = PacketDecoder()
    if how == "bytearray-chunk":
        got = decoder.feed(bytearray(data))
    else:
        # 40 KiB of the small packet grows the receive area to hold it; its last bytes then
        # end exactly at the end of a read, and the big packet arrives whole in the next one.
        got = decode(decoder, data, [40 * k, len(small.encode()) - 40 * k, len(data)], "into")
    assert got == [small, big]
    assert isinstance(got[1].payload, memoryview) and got[1].payload.readonly


# --- limits and memory ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bytes", "into"])
def test_header_limits_refuse_before_buffering(mode: str) -> None:
    header = Packet(PacketType.ONE_WAY, 1).header(2**30)  # claims a 1 GiB payload
    quic = length_prefix(16) + header
    for make, data in ((PacketDecoder, header), (LengthPrefixedDecoder, quic)):
        decoder = make()
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError) as info:
                decode(decoder, data, [], mode)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert info.value.error_code == "protocol.frame_too_large"
        assert decoder.buffered == 0
        assert peak < 1024 * 1024  # refused from the header: nothing near 1 GiB was taken

    q = LengthPrefixedDecoder()
    with pytest.raises(ProtocolError) as info:
        q.feed(length_prefix(QUIC_MAX_FRAME + 1))  # from the prefix alone
    assert info.value.error_code == "protocol.frame_too_large"


def test_ext_header_limit_from_the_header() -> None:
    for ext_len, ok in ((4096, True), (4097, False)):
        header = Packet(PacketType.ONE_WAY, 1, ext_header=bytes(ext_len)).header(0)
        decoder = PacketDecoder()
        if ok:
            assert decoder.feed(header) == []
            assert decoder.buffered == 16
        else:
            with pytest.raises(ProtocolError) as info:
                decoder.feed(header)
            assert info.value.error_code == "protocol.frame_too_large"


def test_quic_frame_limits() -> None:
    wire = Packet(PacketType.ONE_WAY, 1, 0, bytes(100)).encode()
    decoder = LengthPrefixedDecoder(max_frame=len(wire))
    assert decoder.feed(length_prefix(len(wire)) + wire) == [Packet(payload=bytes(100),
                                                                    message_id=1)]
    decoder = LengthPrefixedDecoder(max_frame=len(wire) - 1)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(length_prefix(len(wire)))
    assert info.value.error_code == "protocol.frame_too_large"
    # a frame too short for a packet header is refused from its prefix too
    with pytest.raises(ProtocolError) as info:
        LengthPrefixedDecoder().feed(length_prefix(15))
    assert info.value.error_code == "protocol.bad_length"


def test_length_prefix_must_match_packet() -> None:
    wire = Packet(PacketType.ONE_WAY, 1, 0, b"abc").encode()
    for prefix in (len(wire) + 1, len(wire) - 1, 3, 0):
        decoder = LengthPrefixedDecoder()
        with pytest.raises(ProtocolError) as info:
            decoder.feed(length_prefix(prefix) + wire + b"\0")
        assert info.value.error_code == "protocol.bad_length"


SMALL = Limits(max_payload=4096, max_ext_header=64)
BOUND = 4 + 16 + SMALL.max_ext_header + SMALL.max_payload


def bounded(max_chunk: int) -> Callable[[PacketDecoder], None]:
    def check(decoder: PacketDecoder) -> None:
        assert decoder.buffered <= BOUND
        if decoder._large is not None:
            assert len(decoder._large) <= BOUND
        assert len(decoder._buf) <= max(RECEIVE, BOUND + max(max_chunk, RECEIVE))

    return check


def outcome(
    make: MakeDecoder, data: bytes, sizes: list[int], mode: str, zc: int | None
) -> tuple[list[Packet], str | None]:
    """Decode *data* cut by *sizes*; return the packets and the error code it ended with."""
    decoder = make(limits=SMALL, zero_copy_threshold=zc, receive_size=RECEIVE)
    out: list[Packet] = []
    try:
        drive(decoder, data, sizes, mode, out, bounded(max(sizes, default=len(data))))
        decoder.feed_eof()
    except ProtocolError as exc:
        error: ProtocolError | None = exc
    else:
        error = None
    if error is None:
        assert decoder.buffered == 0
        return out, None
    assert decoder.error is error
    assert decoder.buffered == 0  # a failed decoder lets its buffers go
    for call in (lambda: decoder.feed(b"\x01" * 20), decoder.get_buffer, decoder.feed_eof):
        with pytest.raises(ProtocolError) as again:
            call()
        assert again.value is error
    return out, error.error_code


@st.composite
def damaged_streams(draw: st.DrawFn, frame: Frame) -> bytes:
    """A valid stream with a few bytes changed, cut short or extended: it gets past the header
    checks more often than random bytes do."""
    pkts = draw(st.lists(packets(max_payload=200, max_ext=20, large=None), max_size=5))
    data = bytearray(frame(pkts))
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))]) + draw(st.binary(max_size=40))


@pytest.mark.parametrize(("make", "frame"), MAPPINGS)
@given(
    data=st.data(),
    sizes=st.lists(st.integers(1, 600), min_size=1, max_size=8),
    mode=st.sampled_from(MODES),
    zc=st.sampled_from([None, 1, 64, 512]),
)
def test_any_input_only_protocol_errors_bounded_memory_same_result_however_cut(
    make: MakeDecoder, frame: Frame, data: st.DataObject, sizes: list[int], mode: str,
    zc: int | None,
) -> None:
    stream = data.draw(st.one_of(st.binary(max_size=3000), damaged_streams(frame)))
    reference = outcome(make, stream, [], "bytes", zc)  # the whole input in one call
    assert outcome(make, stream, sizes, mode, zc) == reference


@pytest.mark.parametrize("make", [PacketDecoder, LengthPrefixedDecoder])
@given(chunks=st.lists(st.binary(max_size=3000), max_size=20), zc=st.sampled_from([None, 512]))
def test_arbitrary_chunks_only_protocol_errors_and_bounded_memory(
    make: MakeDecoder, chunks: list[bytes], zc: int | None
) -> None:
    decoder = make(limits=SMALL, zero_copy_threshold=zc, receive_size=RECEIVE)
    check = bounded(3000)
    for chunk in chunks:
        try:
            decoder.feed(chunk)
        except ProtocolError:
            break
        check(decoder)


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


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "frame"), MAPPINGS)
@pytest.mark.parametrize("mode", ["bytes", "bytearray", "into"])
def test_error_sticks_and_earlier_packets_are_kept(make: MakeDecoder, frame: Frame, mode: str
                                                   ) -> None:
    good = [Packet(PacketType.ONE_WAY, 1, 0, b"ok"), Packet(PacketType.REQUEST, 2, 0, b"k" * 300)]
    bad = frame([Packet(PacketType.ONE_WAY, 3)])
    bad = bad[:-16] + b"\x09" + bad[-15:]  # version 9
    decoder = make(zero_copy_threshold=100, receive_size=RECEIVE)
    out: list[Packet] = []
    push(decoder, frame(good) + bad, mode, out)  # the good packets come back, no exception
    assert out == good
    assert decoder.error is not None and decoder.error.error_code == "protocol.bad_version"
    for call in (lambda: decoder.feed(b"x"), decoder.get_buffer,
                 lambda: decoder.buffer_updated(0), decoder.feed_eof):
        with pytest.raises(ProtocolError) as info:
            call()
        assert info.value is decoder.error
    assert decoder.packets_decoded == 2


def test_error_in_a_later_call_raises_at_once() -> None:
    good = Packet(PacketType.ONE_WAY, 1, 0, b"ok")
    decoder = PacketDecoder()
    assert decode(decoder, good.encode(), [], "into") == [good]
    buf = decoder.get_buffer()
    buf[:16] = b"\x09" + bytes(15)
    del buf
    with pytest.raises(ProtocolError) as info:
        decoder.buffer_updated(16)
    assert info.value.error_code == "protocol.bad_version"
    with pytest.raises(ProtocolError) as again:
        decoder.feed(good.encode())
    assert again.value is info.value


@pytest.mark.parametrize("mode", ["bytes", "bytearray", "into"])
def test_corrupt_large_compressed_packet(mode: str) -> None:
    # A compressed packet over the threshold takes the large path; it fails when complete.
    good = Packet(PacketType.ONE_WAY, 1, 0, b"fine")
    wire = bytearray(Packet(PacketType.ONE_WAY, 2, 0, bytes(range(256)) * 40,
                            compression=Compression.ZLIB).encode())
    wire[16:18] = b"\0\0"  # break the zlib header
    decoder = PacketDecoder(zero_copy_threshold=64, receive_size=RECEIVE)
    out: list[Packet] = []
    with pytest.raises(ProtocolError) as info:
        drive(decoder, good.encode() + bytes(wire), [10, 100], mode, out)
    assert out == [good]
    assert info.value.error_code == "protocol.decompression"


@pytest.mark.parametrize("bad", ["header", "zlib"])
def test_a_failed_decoder_does_not_pin_the_callers_buffer(bad: str) -> None:
    big = Packet(PacketType.ONE_WAY, 1, 0, b"x" * 2000).encode()
    decoder = PacketDecoder(zero_copy_threshold=1000)
    if bad == "header":
        decoder.feed(big[:100])  # a big packet in progress
        chunk = bytearray(big[100:] + b"\x02" * 40)
    else:
        zipped = Packet(PacketType.ONE_WAY, 1, 0, b"abc", compression=Compression.ZLIB).encode()
        chunk = bytearray(zipped[:16] + bytes(len(zipped) - 16))
    with contextlib.suppress(ProtocolError):
        decoder.feed(chunk)
    assert decoder.error is not None
    gc.collect()
    chunk.clear()  # BufferError while something still exports the chunk's memory


# --- settings and odd inputs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"zero_copy_threshold": 0}, "zero_copy_threshold"), ({"receive_size": 1023}, "receive_size")],
)
def test_settings_are_validated(kwargs: dict[str, Any], field: str) -> None:
    for make in (PacketDecoder, LengthPrefixedDecoder):
        with pytest.raises(ConfigurationError) as info:
            make(**kwargs)
        assert info.value.field == field
    with pytest.raises(ConfigurationError) as info:
        LengthPrefixedDecoder(max_frame=15)
    assert info.value.field == "max_frame"
    assert LengthPrefixedDecoder(max_frame=16).max_frame == 16


def test_receive_area_sizes() -> None:
    decoder = PacketDecoder(receive_size=4096)
    assert len(decoder.get_buffer()) == 4096
    assert len(decoder.get_buffer(100_000)) >= 100_000  # a bigger hint gets a bigger area
    assert len(PacketDecoder().get_buffer()) == DEFAULT_RECEIVE_SIZE
    # Writing nothing is allowed and changes nothing.
    assert decoder.buffer_updated(0) == []
    assert decoder.buffered == 0


def test_receive_area_compacts_an_unfinished_packet() -> None:
    pkts = [Packet(PacketType.ONE_WAY, i, 0, bytes(700)) for i in range(6)]
    data = tcp_stream(pkts)
    decoder = PacketDecoder(zero_copy_threshold=None, receive_size=1024)
    # 1000-byte reads leave a partial packet at the end of the area again and again.
    assert decode(decoder, data, [1000], "into") == pkts
    assert len(decoder._buf) <= 2 * 1024


def test_feed_accepts_any_byte_buffer() -> None:
    pkts = [Packet(PacketType.ONE_WAY, 1, 0, b"abcd")]  # 20 bytes: five 32-bit words
    words = memoryview(tcp_stream(pkts)).cast("I")
    assert PacketDecoder().feed(words) == pkts
    assert PacketDecoder().feed(memoryview(tcp_stream(pkts))) == pkts


def test_feed_eof_twice_and_empty_feeds() -> None:
    decoder = PacketDecoder()
    assert decoder.feed(b"") == []
    decoder.feed_eof()
    decoder.feed_eof()
    assert decoder.error is None


def test_a_header_alone_does_not_reserve_the_whole_payload() -> None:
    from msgtrans.core.framing import LARGE_FIRST_STEP

    payload = bytes(range(256)) * (12 * 1024 * 1024 // 256)  # 12 MiB, under the 16 MiB limit
    wire = Packet(PacketType.ONE_WAY, 1, 0, payload).encode()
    decoder = PacketDecoder()
    assert decoder.feed(wire[:16]) == []
    assert decoder._large is not None and len(decoder._large) == LARGE_FIRST_STEP
    # The rest through the receive-into path: the buffer grows once, to the full size.
    view = memoryview(wire)[16:]
    out: list[Packet] = []
    while view:
        buf = decoder.get_buffer()
        n = min(len(buf), len(view), 300_000)
        buf[:n] = view[:n]
        del buf
        view = view[n:]
        out += decoder.buffer_updated(n)
    assert out == [Packet(PacketType.ONE_WAY, 1, 0, payload)]
    assert isinstance(out[0].payload, memoryview)
