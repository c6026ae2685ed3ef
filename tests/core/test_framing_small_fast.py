"""PacketDecoder.buffer_updated's fast path (one whole small packet per read) against the
general path: the same packets, the same errors, the same state, for any stream and any split."""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.core import framing
from msgtrans.core.errors import ProtocolError
from msgtrans.core.framing import PacketDecoder
from msgtrans.core.packet import Compression, Limits, Packet, PacketFlags, PacketType

packets = st.builds(
    Packet,
    packet_type=st.sampled_from(list(PacketType)),
    message_id=st.integers(0, 2**32 - 1),
    biz_type=st.integers(0, 255),
    payload=st.binary(max_size=80),
    ext_header=st.binary(max_size=12),
    compression=st.sampled_from([Compression.NONE, Compression.NONE, Compression.ZLIB]),
    flags=st.sampled_from([0, 1, 2, 4, 7, 0x8000, 0xFFFF]).map(PacketFlags),
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Encoded packets back to back, perhaps with bytes overwritten, and read sizes."""
    data = bytearray(b"".join(p.encode() for p in draw(st.lists(packets, max_size=5))))
    for _ in range(draw(st.integers(0, 2))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    data += draw(st.binary(max_size=20))  # trailing garbage or a partial packet, sometimes
    sizes = draw(st.lists(st.integers(1, 300), max_size=12))
    return bytes(data), sizes


def _outcome(decoder: PacketDecoder, chunk: bytes) -> tuple[object, ...]:
    """Receive *chunk* through get_buffer/buffer_updated, in as many reads as the areas offered
    take (a big packet's area ends with it); return what came of each read."""
    seen: list[object] = []
    while chunk:
        try:
            area = decoder.get_buffer(len(chunk))
            n = min(len(area), len(chunk))
            area[:n] = chunk[:n]
            chunk = chunk[n:]
            got = decoder.buffer_updated(n)
        except ProtocolError as exc:
            seen.append(("error", exc.error_code, str(exc)))
            break
        seen.append(("packets", n, [(p, type(p.payload)) for p in got]))
    return tuple(seen)


def _state(decoder: PacketDecoder) -> tuple[object, ...]:
    error = decoder.error
    return (
        decoder.buffered,
        decoder.packets_decoded,
        decoder.zero_copy_packets,
        None if error is None else (error.error_code, str(error)),
    )


@settings(max_examples=400, deadline=None)
@given(
    stream=streams(),
    threshold=st.sampled_from([None, 1, 8, 40, 64 * 1024]),
    limits=st.sampled_from([Limits(), Limits(max_payload=50, max_ext_header=6)]),
)
def test_fast_path_matches_general_path(
    stream: tuple[bytes, list[int]], threshold: int | None, limits: Limits
) -> None:
    data, sizes = stream
    fast = PacketDecoder(limits, threshold)
    general = PacketDecoder(limits, threshold)
    pos = 0
    for size in [*sizes, len(data)]:
        chunk = data[pos : pos + size]
        pos += len(chunk)
        if not chunk:
            break
        # Without the twin-class swap the fast path is off: that decoder takes the general path.
        with mock.patch.object(framing, "_SWAP", False):
            want = _outcome(general, chunk)
        assert _outcome(fast, chunk) == want
        assert _state(fast) == _state(general)


@given(
    packet=packets.filter(
        lambda p: p.compression is Compression.NONE
        and len(p.payload) < 64
        and int(p.flags) in (0, 1, 2, 4)  # single known flags; the rest take the general path
    )
)
def test_one_small_packet_per_read_skips_build_packet(packet: Packet) -> None:
    # The point of the fast path: a read holding exactly one small packet never reaches the
    # general builder.
    decoder = PacketDecoder()
    wire = packet.encode()
    area = decoder.get_buffer(len(wire))
    area[: len(wire)] = wire
    with mock.patch.object(framing, "build_packet", side_effect=AssertionError("general path")):
        got = decoder.buffer_updated(len(wire))
    assert got == [packet]
    assert type(got[0]) is Packet
    assert decoder.buffered == 0
