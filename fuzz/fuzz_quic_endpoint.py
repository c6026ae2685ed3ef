#!/usr/bin/env python3
"""Fuzz the server QUIC endpoint (``core/quic_endpoint.py``) with hostile datagrams: garbage,
real Initials (made by plain aioquic client connections) and their mutants, short-header and
long-header packets aimed at the connection ids it routes, from several addresses, with time
moving, optionally while a real client completes its handshake through the noise.

Checks, whatever arrives:

* ``receive_datagram`` never raises, every answer is a ``(bytes, address)`` pair to a peer that
  sent something, and ``datagrams_received`` counts every datagram;
* the state stays bounded: ``connections_live`` within ``max_connections``,
  ``connections_half_open`` within ``max_half_open``, the pending replies within
  ``MAX_PENDING_REPLIES``; once every timer has fired far in the future no half-open
  connection is left, and without a real client no connection at all;
* a real client among the noise still completes its handshake (no Retry variant drops it).

CI runs the hypothesis tests; ``python fuzz/fuzz_quic_endpoint.py [flags] [corpus...]`` runs
atheris (the whole input is one recipe).  See fuzz/README.md.
"""

from __future__ import annotations

import functools
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from harness import certs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from targets import Reader, main

from msgtrans.core.machine import MachineState
from msgtrans.core.quic import QuicMachine
from msgtrans.core.quic_endpoint import MAX_PENDING_REPLIES, QuicEndpoint

SERVER = ("192.0.2.1", 4433)
# Not loopback (whose datagrams may be bigger): the endpoint's ordinary path.
PEERS = [("192.0.2.10", 40000 + i) for i in range(4)]
CLIENT = PEERS[0]
VARIANTS: tuple[dict[str, Any], ...] = (
    {},
    {"retry": True},
    {"retry_threshold": 1},
    {"max_half_open": 2},
    {"max_connections": 1},
    {"max_connections": 0},
    {"max_half_open": 0, "retry_threshold": 0},
)


@functools.cache
def configuration() -> QuicConfiguration:
    # One configuration for every endpoint: loading the key once keeps each input cheap.
    c = certs()
    return QuicEndpoint(certificate=c.cert_pem, private_key=c.key_pem).configuration


@functools.cache
def initials(count: int = 6) -> tuple[bytes, ...]:
    """First datagrams of real aioquic clients (each its own connection ids and keys)."""
    out = []
    for _ in range(count):
        client = QuicConnection(configuration=QuicConfiguration(
            is_client=True, alpn_protocols=["msgtrans.v1"], server_name="localhost"))
        client.connect(SERVER, now=0.0)
        out += [data for data, _addr in client.datagrams_to_send(now=0.0)]
    return tuple(out)


def new_endpoint(variant: dict[str, Any]) -> QuicEndpoint:
    return QuicEndpoint(configuration(), handshake_timeout=2.0, idle_timeout=5.0, **variant)


def datagram(reader: Reader, endpoint: QuicEndpoint, recent: list[bytes]) -> bytes:
    """One datagram as the recipe says."""
    kind = reader.uint(1) % 8
    real = initials()
    if kind == 0:
        return reader.take(reader.below(1400))
    if kind in (1, 2):
        data = bytearray(real[reader.below(len(real))])
        if kind == 2:  # header bytes mostly: that is what the endpoint reads itself
            for _ in range(1 + reader.uint(1) % 3):
                at = reader.below(64 if reader.uint(1) & 1 else len(data))
                data[at % len(data)] = reader.uint(1)
            if reader.uint(1) & 1:
                del data[reader.below(len(data) + 1):]
        return bytes(data)
    routes = list(endpoint._routes)
    if kind in (3, 4) and routes:
        cid = routes[reader.below(len(routes))]
        body = reader.take(reader.below(200))
        if kind == 3:
            return bytes([0x40 | reader.uint(1) & 0x3F]) + cid + body
        # A long header with a routed id: Handshake, 0-RTT or Retry type, any version.
        first = 0xC0 | (reader.uint(1) & 0x3F)
        return (bytes([first]) + (1).to_bytes(4, "big") + bytes([len(cid)]) + cid + b"\x08"
                + b"\x11" * 8 + body)
    if kind == 5 and recent:
        data = bytearray(recent[reader.below(len(recent))])
        if data:
            data[reader.below(len(data))] ^= 1 + reader.uint(1) % 255
        return bytes(data)
    if kind == 6:  # an unknown version, padded to open a connection: Version Negotiation
        return (b"\xc0" + reader.take(4).ljust(4, b"\x0a") + b"\x08" + b"\x22" * 8 + b"\x00"
                + b"\x00" * 1200)
    return real[reader.below(len(real))]


def check(endpoint: QuicEndpoint, variant: dict[str, Any], fed: int, senders: set[Any]) -> None:
    stats = endpoint.stats()
    assert stats["datagrams_received"] == fed, stats
    limit = variant.get("max_connections")
    if limit is not None:
        assert stats["connections_live"] <= limit, stats
    limit = variant.get("max_half_open")
    if limit is not None:
        assert stats["connections_half_open"] <= limit, stats
    assert stats["connections_half_open"] <= stats["connections_live"], stats
    assert len(endpoint._replies) <= MAX_PENDING_REPLIES


def quic_endpoint_datagrams(data: bytes) -> None:
    reader = Reader(data)
    flags = reader.uint(1)
    variant = VARIANTS[reader.uint(1) % len(VARIANTS)]
    with_client = bool(flags & 1)
    endpoint = new_endpoint(variant)
    client = None
    if with_client:
        client = QuicMachine.client(SERVER, ca_data=certs().cert_pem, server_name="localhost",
                                    handshake_timeout=2.0)
        client.start(0.0)
    now, fed = 0.0, 0
    senders: set[Any] = set()
    recent: list[bytes] = []
    for _ in range(1 + reader.uint(1) % 24):
        if client is not None:
            for gram, _addr in client.datagrams_to_send(now):
                recent.append(gram)
                endpoint.receive_datagram(gram, CLIENT, now)
                senders.add(CLIENT)
                fed += 1
        peer = PEERS[reader.uint(1) % len(PEERS)]
        gram = datagram(reader, endpoint, recent)
        endpoint.receive_datagram(gram, peer, now)
        senders.add(peer)
        fed += 1
        for out, addr in endpoint.datagrams_to_send(now):
            assert isinstance(out, bytes) and addr in senders, (out[:8], addr)
            if client is not None and addr == CLIENT:
                client.receive_datagram(out, SERVER, now)
        endpoint.accept()
        endpoint.events()
        check(endpoint, variant, fed, senders)
        now += (reader.uint(1) % 16) * 0.01
        deadline = endpoint.next_deadline()
        if deadline is not None and deadline <= now:
            endpoint.handle_timer(now)
        if client is not None:
            client.handle_timer(now)
    # Far in the future, every handshake has timed out or completed and been dropped idle.
    for _ in range(200):
        deadline = endpoint.next_deadline()
        if deadline is None:
            break
        now = max(now, deadline) + 0.001
        endpoint.handle_timer(now)
        endpoint.datagrams_to_send(now)
        endpoint.accept()
        endpoint.events()
    stats = endpoint.stats()
    assert stats["connections_half_open"] == 0, stats
    assert stats["connections_live"] == 0, stats
    check(endpoint, variant, fed, senders)


def client_survives_noise(data: bytes) -> None:
    """A real client handshakes while noise arrives from other peers: it gets through."""
    reader = Reader(data)
    endpoint = new_endpoint({})
    client = QuicMachine.client(SERVER, ca_data=certs().cert_pem, server_name="localhost")
    client.start(0.0)
    now = 0.0
    for _ in range(60):
        for gram, _addr in client.datagrams_to_send(now):
            endpoint.receive_datagram(gram, CLIENT, now)
        for _ in range(reader.uint(1) % 4):
            endpoint.receive_datagram(datagram(reader, endpoint, []),
                                      PEERS[1 + reader.uint(1) % 3], now)
        for out, addr in endpoint.datagrams_to_send(now):
            if addr == CLIENT:
                client.receive_datagram(out, SERVER, now)
        endpoint.accept()
        if client.state is MachineState.OPEN:
            return
        now += 0.01
        client.handle_timer(now)
        endpoint.handle_timer(now)
    raise AssertionError(f"the client did not get through the noise: {endpoint.stats()}")


FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2000))
def test_quic_endpoint_datagrams(data: bytes) -> None:
    quic_endpoint_datagrams(data)


@FUZZ
@given(st.binary(max_size=300))
def test_client_survives_noise(data: bytes) -> None:
    client_survives_noise(data)


TARGETS = (quic_endpoint_datagrams, client_survives_noise)


def one_input(data: bytes) -> None:
    """The atheris entry: the first byte picks the target (mostly the datagrams one)."""
    if data:
        TARGETS[int(data[0] % 8 == 7)](data[1:])


if __name__ == "__main__":
    main(one_input, [test_quic_endpoint_datagrams, test_client_survives_noise],
         ("msgtrans.core.quic_endpoint", "msgtrans.core.quic", "aioquic"))
