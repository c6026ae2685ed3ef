"""The send side's compression policy: payloads from the threshold on leave compressed with
the chosen method and level, smaller ones as they are, on every protocol; the receiver gets
the payload back intact whatever the packet says."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.certs import write_self_signed
from msgtrans.core.compression import LEVELS, CompressionPolicy, compress, decompress
from msgtrans.core.config import QuicServerConfig
from msgtrans.core.connection import client_connection, quic_endpoint
from msgtrans.core.errors import ConfigurationError
from msgtrans.core.packet import Compression, Packet, PacketType
from msgtrans.core.pair import SERVER_ADDR, ConnectionPair
from msgtrans.core.session import (
    MessageReceived,
    RequestReceived,
    ResponseReceived,
    SessionMachine,
)
from tests.core.test_connection import PROTOCOLS, of, started


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    cert, key = write_self_signed(Path(tmp_path_factory.mktemp("certs")))
    return str(cert), str(key)


TEXT = b"msgtrans compresses what it is told to. " * 2000  # 80 KB, very compressible


@given(st.binary(max_size=4096), st.sampled_from(sorted(LEVELS)), st.data())
def test_every_level_round_trips(data: bytes, method: str, draw: st.DataObject) -> None:
    level = draw.draw(st.one_of(st.none(), st.sampled_from(list(LEVELS[method]))))
    wire = Compression.ZLIB if method == "zlib" else Compression.ZSTD
    assert decompress(wire, compress(wire, data, level), len(data)) == data


def test_the_level_is_used() -> None:
    fast, small = compress(Compression.ZLIB, TEXT, 1), compress(Compression.ZLIB, TEXT, 9)
    assert fast == zlib.compress(TEXT, 1) and small == zlib.compress(TEXT, 9)
    assert fast != small


@given(st.one_of(st.integers(-5, 10**6), st.booleans(), st.floats(), st.none()),
       st.sampled_from(["zlib", "zstd", "lz4", ""]),
       st.one_of(st.none(), st.integers(-5, 30), st.booleans()))
def test_a_policy_builds_or_names_its_field(threshold: object, method: str,
                                            level: object) -> None:
    try:
        policy = CompressionPolicy(threshold, method, level)  # type: ignore[arg-type]
    except ConfigurationError as exc:
        field = exc.field
    else:
        field = None
        assert policy.threshold == threshold and policy.method == method
        assert level is None or level in LEVELS[method]
    assert field in {None, "compress_threshold", "compression", "compression_level"}


def test_the_session_takes_the_policy() -> None:
    assert SessionMachine(1).compression is None
    sm = SessionMachine(1, compress_threshold=100, compression="zstd", compression_level=19)
    assert repr(sm.compression) == "CompressionPolicy(threshold=100, method='zstd', level=19)"
    small = sm.send(b"x" * 99, now=0.0)
    big = sm.send(b"x" * 100, now=0.0)
    assert small.compression is Compression.NONE
    assert (big.compression, big.compression_level) == (Compression.ZSTD, 19)
    # The level never reaches the wire or equality: the receiver cannot see it.
    assert big == Packet(PacketType.ONE_WAY, big.message_id, 0, b"x" * 100,
                         compression=Compression.ZSTD)
    with pytest.raises(ConfigurationError) as exc:
        SessionMachine(1, compress_threshold=0)
    assert exc.value.field == "compress_threshold"


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_every_protocol_sends_compressed_from_the_threshold(kind: str,
                                                             certs: tuple[str, str]) -> None:
    if kind == "quic":  # the endpoint's connection takes the session settings too
        cert, key = certs
        pair = ConnectionPair(
            client_connection(f"quic://localhost:{SERVER_ADDR[1]}?ca={cert}",
                              resolved=SERVER_ADDR, compress_threshold=1024),
            None, quic_endpoint(QuicServerConfig("127.0.0.1:0", cert, key)),
            server_settings={"compress_threshold": 1024},
        )
        pair.start()
        pair.take("client"), pair.take("server")
    else:
        pair = started(kind, certs, compress_threshold=1024)  # type: ignore[arg-type]
    client, server = pair.client, pair.server
    assert server is not None
    client.queue_send(TEXT, 3, b"", pair.now)
    client.queue_send(b"short", 4, b"", pair.now)
    request_id = client.queue_request(TEXT, 5, b"", None, pair.now)
    pair.pump(2000)
    got = pair.take("server")
    messages = of(got, MessageReceived)
    assert [(bytes(m.packet.payload), m.packet.compression) for m in messages] == [
        (TEXT, Compression.ZLIB), (b"short", Compression.NONE)]
    (request,) = of(got, RequestReceived)
    assert bytes(request.packet.payload) == TEXT
    assert request.packet.compression is Compression.ZLIB
    server.queue_response(request.packet, TEXT[::-1], None, b"", pair.now)
    pair.pump(2000)
    (response,) = of(pair.take("client"), ResponseReceived)
    assert response.packet.message_id == request_id
    assert bytes(response.packet.payload) == TEXT[::-1]
    assert response.packet.compression is Compression.ZLIB
    # What left the client was the compressed size, not the payload's.
    assert client.session.stats.bytes_sent >= 2 * len(TEXT)  # counted as the payload


def test_plain_tcp_without_a_policy_keeps_its_fields_path(certs: tuple[str, str]) -> None:
    plain = started("tcp", certs)
    compressing = started("tcp", certs, compress_threshold=1024)  # type: ignore[arg-type]
    assert plain.client.queue_send.__name__ == "_queue_send_fields"
    assert compressing.client.queue_send.__name__ == "_queue_send_packet"
