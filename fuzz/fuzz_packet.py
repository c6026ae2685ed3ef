#!/usr/bin/env python3
"""Fuzz the single-packet codec and the decompressors.

CI runs the hypothesis tests below (bounded by the profile in conftest.py).  Run as a script for
a real fuzzing session: ``python fuzz/fuzz_packet.py`` uses atheris when it is installed and a
long hypothesis pass otherwise (see fuzz/README.md).
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from targets import decompress_any, main, packet_decode, packet_round_trip

from msgtrans.core.packet import Compression, Packet, PacketType

SPEC_EXAMPLES = (
    bytes.fromhex("01000000000000010000000000050000 68656c6c6f"),
    bytes.fromhex("01000107010203040002000000040000 0102 70696e67"),
)


@given(st.binary(max_size=600))
@example(SPEC_EXAMPLES[0])
@example(SPEC_EXAMPLES[1])
@example(bytes.fromhex("01020000000000010000000000130000 789ccb48cdc9c95728cf2fca4901001a0b045d"))
def test_packet_decode(data: bytes) -> None:
    packet_decode(data)


@given(st.data())
def test_packet_decode_of_damaged_packets(data: st.DataObject) -> None:
    # Random bytes rarely pass the version byte: start from a real packet and damage it.
    packet = Packet(
        PacketType(data.draw(st.integers(0, 2))),
        data.draw(st.integers(0, 2**32 - 1)),
        payload=data.draw(st.binary(max_size=300)),
        ext_header=data.draw(st.binary(max_size=20)),
        compression=Compression(data.draw(st.integers(0, 2))),
    )
    wire = bytearray(packet.encode())
    for _ in range(data.draw(st.integers(0, 3))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    packet_decode(bytes(wire[: data.draw(st.integers(0, len(wire)))]))


@given(st.binary(max_size=2000))
def test_packet_round_trip(data: bytes) -> None:
    packet_round_trip(data)


@given(st.binary(max_size=3000))
def test_decompress(data: bytes) -> None:
    decompress_any(data)


TARGETS = (packet_decode, packet_round_trip, decompress_any)


def one_input(data: bytes) -> None:
    """The atheris entry: the first byte picks the target."""
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


if __name__ == "__main__":
    main(one_input, [test_packet_decode, test_packet_decode_of_damaged_packets,
                     test_packet_round_trip, test_decompress],
         ("msgtrans.core.packet", "msgtrans.core.compression"))
