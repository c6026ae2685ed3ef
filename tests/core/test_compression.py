"""Payload compression: both methods round trip, decompression is always bounded, and corrupt
input is a protocol error."""

from __future__ import annotations

import tracemalloc
import zlib

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.core import compression
from msgtrans.core.compression import compress, decompress, zstd_available
from msgtrans.core.errors import ConfigurationError, ProtocolError
from msgtrans.core.framing import PacketDecoder
from msgtrans.core.packet import Compression, Limits, Packet

METHODS = [Compression.ZLIB, Compression.ZSTD]
MiB = 1024 * 1024


def deflate(data: bytes, wbits: int) -> bytes:
    # zlib.compress() takes wbits only from Python 3.11
    c = zlib.compressobj(wbits=wbits)
    return c.compress(data) + c.flush()


def codes(method: Compression, data: bytes, limit: int) -> str:
    with pytest.raises(ProtocolError) as info:
        decompress(method, data, limit)
    assert not info.value.is_retryable()
    return info.value.error_code


def test_zstd_is_available_in_the_test_environment() -> None:
    assert zstd_available()


@pytest.mark.parametrize("method", METHODS)
@given(data=st.binary(max_size=5000))
def test_round_trip(method: Compression, data: bytes) -> None:
    packed = compress(method, data)
    assert type(packed) is bytes
    assert decompress(method, packed, len(data)) == data
    assert decompress(method, memoryview(packed), len(data)) == data
    assert decompress(method, bytearray(packed), len(data) + 10) == data


def test_the_method_numbers_follow_the_spec() -> None:
    # 1 is zstd and 2 is zlib: swapped by mistake, every foreign payload would fail.
    assert compress(Compression(2), b"abc")[:1] == b"\x78"  # zlib's CMF byte
    assert compress(Compression(1), b"abc")[:4] == bytes.fromhex("28b52ffd")  # zstd's magic


def test_none_is_a_copy() -> None:
    data = bytearray(b"abc")
    assert compress(Compression.NONE, data) == b"abc"
    assert type(compress(Compression.NONE, data)) is bytes
    assert decompress(Compression.NONE, data, 3) == b"abc"
    assert type(decompress(Compression.NONE, data, 3)) is bytes


@pytest.mark.parametrize("method", [*METHODS, Compression.NONE])
def test_an_empty_wire_payload_is_an_empty_payload(method: Compression) -> None:
    assert decompress(method, b"", 0) == b""


@pytest.mark.parametrize("method", METHODS)
def test_output_is_bounded_exactly_at_the_limit(method: Compression) -> None:
    for size in (0, 1, 1000, 100_000):
        packed = compress(method, b"q" * size)
        assert decompress(method, packed, size) == b"q" * size
        if size:
            assert codes(method, packed, size - 1) == "protocol.frame_too_large"
    assert codes(method, compress(method, b"q"), 0) == "protocol.frame_too_large"


@pytest.mark.parametrize("method", METHODS)
def test_bomb_is_refused_without_inflating(method: Compression) -> None:
    bomb = compress(method, bytes(64 * MiB))
    assert len(bomb) < 128 * 1024
    tracemalloc.start()
    try:
        assert codes(method, bomb, 1 * MiB) == "protocol.frame_too_large"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Refused after at most about limit bytes of output, never the 64 MiB it would inflate to.
    assert peak < 8 * MiB


@pytest.mark.parametrize("method", METHODS)
def test_bomb_in_a_stream_is_refused(method: Compression) -> None:
    limits = Limits(max_payload=MiB)
    bomb = Packet(payload=bytes(32 * MiB), compression=method).encode()
    decoder = PacketDecoder(limits=limits)
    good = Packet(message_id=1, payload=b"fine", compression=method)
    assert decoder.feed(good.encode() + bomb) == [good]
    assert decoder.error is not None
    assert decoder.error.error_code == "protocol.frame_too_large"


def test_multi_frame_zstd_bomb_is_refused() -> None:
    # Each frame is under the limit; together they are over it.
    frame = zstandard.ZstdCompressor().compress(bytes(600 * 1024))
    assert decompress(Compression.ZSTD, frame, MiB) == bytes(600 * 1024)
    assert codes(Compression.ZSTD, frame * 2, MiB) == "protocol.frame_too_large"
    assert decompress(Compression.ZSTD, frame * 2, 2 * MiB) == bytes(1200 * 1024)


def test_zlib_stream_from_a_streaming_compressor() -> None:
    c = zlib.compressobj(level=1)
    packed = c.compress(b"abc" * 100) + c.flush(zlib.Z_SYNC_FLUSH) + c.compress(b"x") + c.flush()
    assert decompress(Compression.ZLIB, packed, 301) == b"abc" * 100 + b"x"


@pytest.mark.parametrize(
    ("method", "data"),
    [
        (Compression.ZLIB, b"\x00\x01\x02"),  # not a zlib header
        (Compression.ZLIB, zlib.compress(b"hello" * 100)[:-1]),  # checksum cut short
        (Compression.ZLIB, zlib.compress(b"hello" * 100)[:10]),  # stream cut short
        (Compression.ZLIB, zlib.compress(b"hello")[:-4] + b"\0\0\0\0"),  # bad checksum
        (Compression.ZLIB, deflate(b"hello", wbits=-15)),  # raw deflate, no zlib header
        (Compression.ZLIB, deflate(b"hello", wbits=31)),  # gzip, not zlib
        (Compression.ZSTD, b"\x28\xb5\x2f\xfd"),  # magic only
        (Compression.ZSTD, zstandard.ZstdCompressor().compress(b"hello" * 100)[:-2]),
        (Compression.ZSTD, zstandard.ZstdCompressor().compress(b"hello") + b"junk"),
        (Compression.ZSTD, b"not zstd at all"),
        (Compression.ZSTD, zlib.compress(b"hello")),  # the other method's bytes
    ],
)
def test_corrupt_payloads_are_protocol_errors(method: Compression, data: bytes) -> None:
    assert codes(method, data, MiB) == "protocol.decompression"


@pytest.mark.parametrize("method", METHODS)
@given(data=st.binary(max_size=300), limit=st.integers(0, 4096))
def test_arbitrary_input_only_protocol_errors(method: Compression, data: bytes, limit: int) -> None:
    code: str | None = None
    try:
        out = decompress(method, data, limit)
    except ProtocolError as exc:
        code = exc.error_code
        out = b""
    assert code in {None, "protocol.decompression", "protocol.frame_too_large"}
    assert len(out) <= limit


@pytest.mark.parametrize("method", METHODS)
@given(data=st.data())
def test_mutated_streams_only_protocol_errors(method: Compression, data: st.DataObject) -> None:
    # Start from a valid stream so that the mutations land inside the decoder, past the magic.
    packed = bytearray(compress(method, data.draw(st.binary(max_size=2000))))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(packed) - 1))
        packed[i] = data.draw(st.integers(0, 255))
    limit = data.draw(st.integers(0, 4096))
    try:
        out = decompress(method, bytes(packed), limit)
    except ProtocolError:
        return
    assert len(out) <= limit


def test_without_the_zstd_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "_zstd", None)  # as if zstandard were not installed
    assert not zstd_available()
    with pytest.raises(ConfigurationError) as config_info:
        compress(Compression.ZSTD, b"abc")
    assert config_info.value.error_code == "configuration.missing_dependency"
    assert "msgtrans[zstd]" in str(config_info.value)
    # Receiving zstd then is the peer's problem to know about: a protocol error, not a crash.
    packed = zstandard.ZstdCompressor().compress(b"abc")
    assert codes(Compression.ZSTD, packed, 10) == "protocol.decompression"
    # zlib is in the standard library and unaffected
    assert decompress(Compression.ZLIB, compress(Compression.ZLIB, b"abc"), 3) == b"abc"
