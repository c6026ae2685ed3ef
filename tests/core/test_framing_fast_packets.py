"""The packets the decoder and the session machine make on their hot paths (without
``Packet.__init__``) are ordinary packets: frozen, equal and hashed like constructed ones, on
the class-swap path and on its fallback alike."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.core import packet as packet_module
from msgtrans.core.framing import LengthPrefixedDecoder, PacketDecoder
from msgtrans.core.packet import (
    Compression,
    Packet,
    PacketFlags,
    PacketType,
    outgoing_packet,
)

fields = st.tuples(
    st.sampled_from(list(PacketType)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.binary(max_size=64),
    st.binary(max_size=16),
    st.sampled_from([PacketFlags.NONE, PacketFlags(1), PacketFlags(0x8001)]),
)


def _check(made: Packet, expected: Packet) -> None:
    assert type(made) is Packet
    assert made == expected
    assert hash(made) == hash(expected)
    assert repr(made) == repr(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.message_id = 3  # type: ignore[misc]


@pytest.mark.parametrize("swap", [True, False])
@given(f=fields)
def test_decoded_and_outgoing_packets_are_real_packets(
    swap: bool, f: tuple[PacketType, int, int, bytes, bytes, PacketFlags]
) -> None:
    ptype, mid, biz, payload, ext, flags = f
    expected = Packet(ptype, mid, biz, payload, ext, Compression.NONE, flags)
    saved = packet_module._SWAP
    packet_module._SWAP = swap
    try:
        for decoder in (PacketDecoder(), LengthPrefixedDecoder()):
            wire = expected.encode()
            if isinstance(decoder, LengthPrefixedDecoder):
                wire = len(wire).to_bytes(4, "big") + wire
            (decoded,) = decoder.feed(wire)
            _check(decoded, expected)
        if flags is PacketFlags.NONE:
            _check(outgoing_packet(ptype, mid, biz, payload, ext), expected)
    finally:
        packet_module._SWAP = saved


def test_the_class_swap_is_used_where_it_works() -> None:
    # CPython accepts it for the twin's identical slots; the fallback exists for the rest.
    assert packet_module._swap_works() is packet_module._SWAP
