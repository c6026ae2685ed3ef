#!/usr/bin/env python3
"""Fuzz the stream decoders (TCP back to back, QUIC length-prefixed).

CI runs the hypothesis tests below (bounded by the profile in conftest.py).  Run as a script for
a real fuzzing session: ``python fuzz/fuzz_framing.py`` uses atheris when it is installed and a
long hypothesis pass otherwise (see fuzz/README.md).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from targets import main, stream_decode, stream_of_packets


@given(st.binary(max_size=4000))
def test_tcp_stream_of_any_bytes(data: bytes) -> None:
    stream_decode(data, length_prefixed=False)


@given(st.binary(max_size=4000))
def test_quic_stream_of_any_bytes(data: bytes) -> None:
    stream_decode(data, length_prefixed=True)


@given(st.binary(max_size=3000))
def test_tcp_stream_of_packets(data: bytes) -> None:
    stream_of_packets(data, length_prefixed=False)


@given(st.binary(max_size=3000))
def test_quic_stream_of_packets(data: bytes) -> None:
    stream_of_packets(data, length_prefixed=True)


def one_input(data: bytes) -> None:
    """The atheris entry: the first byte picks the target and the mapping."""
    if data:
        target = stream_of_packets if data[0] & 1 else stream_decode
        target(data[1:], length_prefixed=bool(data[0] & 2))


if __name__ == "__main__":
    main(one_input, [test_tcp_stream_of_any_bytes, test_quic_stream_of_any_bytes,
                     test_tcp_stream_of_packets, test_quic_stream_of_packets],
         ("msgtrans.core.framing", "msgtrans.core.packet", "msgtrans.core.compression"))
