"""What a QUIC server endpoint keeps for a client before it knows the client is real.

Garbage shaped like an Initial is dropped without state (it does not decrypt with the keys its
own id derives); valid Initials from spoofed addresses are bounded by the half-open cap and,
past ``retry_threshold`` half-open connections, cost no state at all (a stateless Retry); a
real client still connects through all of it.
"""

from __future__ import annotations

import os
import tracemalloc

import pytest
from aioquic.buffer import Buffer as QuicBuffer
from aioquic.quic.packet import pull_quic_header
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.core.config import QuicServerConfig, parse_server_url
from msgtrans.core.connection import quic_endpoint
from msgtrans.core.errors import ConfigurationError
from msgtrans.core.quic import QuicMachine
from msgtrans.core.quic_endpoint import QuicEndpoint
from tests.core.test_quic import CERT, World, client, endpoint


def _varint2(n: int) -> bytes:
    return bytes([0x40 | (n >> 8), n & 0xFF])


def garbage_initial(dcid: bytes, scid: bytes, body: bytes) -> bytes:
    """A datagram with a well-formed Initial long header (version 1, no token) whose
    protected part is *body*, padded to 1200 bytes: parses, but does not decrypt."""
    head = bytes([0xC0]) + (1).to_bytes(4, "big") + bytes([len(dcid)]) + dcid
    head += bytes([len(scid)]) + scid + b"\x00"  # token length 0
    body = (body + os.urandom(1200))[: 1200 - len(head) - 2]
    return head + _varint2(len(body)) + body


def first_initial(machine: QuicMachine) -> bytes:
    machine.start(0.0)
    (datagram,) = [d for d, _a in machine.datagrams_to_send(0.0)][:1]
    return datagram


def spoofed(i: int) -> tuple[str, int]:
    return (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 40000 + i % 20000)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=8, max_size=20), st.binary(min_size=0, max_size=20),
       st.binary(max_size=1200))
def test_garbage_initials_keep_nothing_and_get_no_answer(dcid: bytes, scid: bytes,
                                                         body: bytes) -> None:
    server = endpoint()
    data = garbage_initial(dcid, scid, body)
    header = pull_quic_header(QuicBuffer(data=data), host_cid_length=8)
    assert header.packet_type.name == "INITIAL" and len(data) >= 1200  # reaches the check
    server.receive_datagram(data, ("127.0.0.1", 5555), 0.0)
    assert server.connections_created == 0
    assert server.initials_dropped == 1 and server.datagrams_dropped == 1
    assert server.datagrams_to_send(0.0) == []  # no reply: nothing to reflect
    assert server.stats()["connections_half_open"] == 0


def test_a_garbage_flood_costs_constant_memory() -> None:
    server = endpoint()
    grams = [garbage_initial(os.urandom(8), os.urandom(8), b"") for _ in range(2000)]
    server.receive_datagram(grams[0], ("127.0.0.1", 1), 0.0)  # warm the code paths
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i, data in enumerate(grams[1:]):
            server.receive_datagram(data, spoofed(i), 0.0)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert server.initials_dropped == 2000 and server.connections_created == 0
    # Before this check, each one kept a half-open aioquic connection (~160 KB).
    assert grown < 64 * 1024, f"{grown} bytes kept for 1999 garbage Initials"


def test_a_real_initial_still_makes_a_connection() -> None:
    server = endpoint()
    server.receive_datagram(first_initial(client()), ("127.0.0.1", 5555), 0.0)
    assert server.connections_created == 1 and server.initials_dropped == 0
    assert server.stats()["connections_half_open"] == 1


def test_max_half_open_refuses_the_rest() -> None:
    server = endpoint(max_half_open=5)
    for i in range(12):
        server.receive_datagram(first_initial(client()), spoofed(i), 0.0)
    assert server.connections_created == 5
    assert server.connections_refused == 7
    assert server.stats()["connections_half_open"] == 5
    refusals = [d for d, a in server.datagrams_to_send(0.0) if a in {spoofed(i) for i in
                                                                      range(5, 12)}]
    assert len(refusals) == 7  # each refused client is told (CONNECTION_REFUSED), not ignored


def test_retry_threshold_turns_a_spoofed_flood_into_stateless_retries() -> None:
    server = endpoint(retry_threshold=8)
    for i in range(100):
        server.receive_datagram(first_initial(client()), spoofed(i), 0.0)
    # Below the threshold clients pay no extra round trip; from it on they get a Retry and
    # nothing is kept until they come back with its token (a spoofed address never does).
    assert server.connections_created == 8
    assert server.retries_sent == 92
    assert server.stats()["connections_half_open"] == 8


def test_clients_connect_through_the_retry_threshold() -> None:
    """Three real clients at once against a threshold of 1: the first connects directly, the
    others through a Retry; all three carry messages."""
    world = World(endpoint(retry_threshold=1), [client() for _ in range(3)]).connect()
    assert world.server.retries_sent >= 1
    assert world.server.connections_created == 3
    assert world.server.stats()["connections_half_open"] == 0  # established: not half-open


def test_a_half_open_connection_that_times_out_leaves_the_count() -> None:
    server = endpoint(handshake_timeout=1.0)
    server.receive_datagram(first_initial(client()), ("127.0.0.1", 5555), 0.0)
    assert server.stats()["connections_half_open"] == 1
    now = 0.0
    for _ in range(100):
        deadline = server.next_deadline()
        if deadline is None:
            break
        now = max(now, deadline)
        server.handle_timer(now)
        server.datagrams_to_send(now)
    assert server.stats()["connections_half_open"] == 0
    assert server.connections == []
    assert now <= 30.0


def test_endpoint_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError) as exc:
        endpoint(max_half_open=-1)
    assert exc.value.field == "max_half_open"
    with pytest.raises(ConfigurationError) as exc:
        endpoint(retry_threshold=True)  # type: ignore[arg-type]
    assert exc.value.field == "retry_threshold"


def _config(**kwargs: object) -> QuicServerConfig:
    return QuicServerConfig("127.0.0.1:0", _cert_file(), **kwargs)  # type: ignore[arg-type]


_CERT_PATH: list[str] = []


def _cert_file() -> str:
    if not _CERT_PATH:
        import tempfile

        folder = tempfile.mkdtemp(prefix="msgtrans-admission-")
        path = os.path.join(folder, "cert.pem")
        with open(path, "wb") as f:
            f.write(CERT.cert_pem + CERT.key_pem)
        _CERT_PATH.append(path)
    return _CERT_PATH[0]


def test_server_config_fields_and_url() -> None:
    config = _config()
    assert (config.retry, config.retry_threshold, config.max_half_open) == ("auto", 64, 1024)
    assert config.handshake_timeout == 10.0
    for bad in ({"retry": "sometimes"}, {"retry_threshold": -1}, {"max_half_open": 0},
                {"handshake_timeout": 0}):
        with pytest.raises(ConfigurationError) as exc:
            _config(**bad)
        assert exc.value.field == next(iter(bad))
    strict = _config(retry="always", handshake_timeout=3.0)
    url = strict.to_url()
    assert "retry=always" in url and "handshake_timeout=3" in url
    assert parse_server_url(url) == strict
    assert parse_server_url(f"quic://127.0.0.1:0?cert={_cert_file()}&retry=never").retry == "never"


@pytest.mark.parametrize(("mode", "created", "retries"),
                         [("always", 0, 20), ("never", 20, 0), ("auto", 4, 16)])
def test_the_config_reaches_the_endpoint(mode: str, created: int, retries: int) -> None:
    server: QuicEndpoint = quic_endpoint(_config(retry=mode, retry_threshold=4))
    for i in range(20):
        server.receive_datagram(first_initial(client()), spoofed(i), 0.0)
    assert (server.connections_created, server.retries_sent) == (created, retries)
