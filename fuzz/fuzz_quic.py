#!/usr/bin/env python3
"""Fuzz the QUIC endpoint's datagram input (and a client's, and the stream behind a handshake).

Invariant: whatever arrives, nothing raises, every answer is a ``(bytes, address)`` pair, the
counters add up, and the number of connections stays within ``max_connections``.

Under pytest these are bounded hypothesis tests.  Run the file itself for a long atheris session
(``python fuzz/fuzz_quic.py [-atheris_runs=N] [corpus_dir]``) when atheris is installed.
"""

from __future__ import annotations

import datetime
import importlib
import ipaddress
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgtrans.core.events import ConnectionClosed, ErrorOccurred, PacketReceived
from msgtrans.core.machine import MachineState
from msgtrans.core.packet import Packet
from msgtrans.core.quic import STREAM_ID, QuicMachine
from msgtrans.core.quic_endpoint import QuicEndpoint

SERVER = ("127.0.0.1", 4433)
PEERS = [("127.0.0.1", 50000 + i) for i in range(4)]
MAX_CONNECTIONS = 4


def _certificate() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


CERT_PEM, KEY_PEM = _certificate()
# One configuration for every endpoint: loading the key once keeps each example cheap.
CONFIGURATION = QuicEndpoint(certificate=CERT_PEM, private_key=KEY_PEM).configuration


def new_endpoint(**kwargs: Any) -> QuicEndpoint:
    kwargs.setdefault("max_connections", MAX_CONNECTIONS)
    return QuicEndpoint(CONFIGURATION, **kwargs)


def real_initials(count: int = 3) -> list[bytes]:
    """Initial datagrams of real clients (each a different connection)."""
    out = []
    for _ in range(count):
        client = QuicMachine.client(SERVER, ca_data=CERT_PEM)
        client.start(0.0)
        out += [data for data, _addr in client.datagrams_to_send(0.0)]
    return out


INITIALS = real_initials()


def check(endpoint: QuicEndpoint, fed: int, now: float) -> None:
    """The invariants, after *fed* datagrams."""
    assert endpoint.datagrams_received == fed
    assert len(endpoint.connections) <= MAX_CONNECTIONS
    assert endpoint.connections_created - len(endpoint.connections) >= 0
    for data, addr in endpoint.datagrams_to_send(now):
        assert isinstance(data, bytes)
        assert addr in PEERS
    deadline = endpoint.next_deadline()
    if deadline is not None:
        endpoint.handle_timer(max(now, deadline))
    endpoint.accept()
    endpoint.events()


def feed(endpoint: QuicEndpoint, datagrams: list[tuple[bytes, int]], now: float = 0.0) -> None:
    for i, (data, peer) in enumerate(datagrams):
        endpoint.receive_datagram(data, PEERS[peer % len(PEERS)], now + i * 0.001)
    check(endpoint, len(datagrams), now + len(datagrams) * 0.001)


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """Overwrite bytes at the given positions, then maybe truncate."""
    buf = bytearray(data)
    for position, value in edits:
        if buf:
            buf[position % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


# --- hypothesis targets (collected by pytest, bounded) -------------------------------------

DATAGRAMS = st.lists(
    st.tuples(st.binary(max_size=1500), st.integers(0, 3)), min_size=1, max_size=8
)
EDITS = st.lists(st.tuples(st.integers(0, 1499), st.integers(0, 255)), max_size=6)

# The number of examples comes from the hypothesis profile (conftest.py): each is cheap.
FUZZ = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


# Plain, validating addresses with Retry, and refusing everything: three different paths.
VARIANTS = st.sampled_from([{}, {"retry": True}, {"max_connections": 0}])


@FUZZ
@given(datagrams=DATAGRAMS, variant=VARIANTS)
def test_arbitrary_datagrams_into_the_endpoint(datagrams: list[tuple[bytes, int]],
                                               variant: dict[str, Any]) -> None:
    feed(new_endpoint(**variant), datagrams)


@FUZZ
@given(
    which=st.integers(0, len(INITIALS) - 1),
    edits=EDITS,
    cut=st.none() | st.integers(0, 1500),
    then=DATAGRAMS,
    variant=VARIANTS,
)
def test_mutated_initial_packets(which: int, edits: list[tuple[int, int]], cut: int | None,
                                 then: list[tuple[bytes, int]], variant: dict[str, Any]) -> None:
    endpoint = new_endpoint(**variant)
    # A real Initial first (so a connection exists), then its mutant, then whatever follows,
    # including short-header packets aimed at the ids the endpoint routes.
    original = INITIALS[which]
    routed = [b"\x40" + cid + data for cid in list(endpoint._routes)[:2] for data, _p in then]
    datagrams = [(original, 0), (mutate(original, edits, cut), 1), *then]
    feed(endpoint, datagrams)
    feed_more = [(data, 0) for data in routed]
    for data, peer in feed_more:
        endpoint.receive_datagram(data, PEERS[peer], 1.0)
    check(endpoint, len(datagrams) + len(feed_more), 1.0)


@FUZZ
@given(datagrams=st.lists(st.binary(max_size=1500), min_size=1, max_size=8))
def test_arbitrary_datagrams_into_a_client(datagrams: list[bytes]) -> None:
    client = QuicMachine.client(SERVER, ca_data=CERT_PEM)
    client.start(0.0)
    client.datagrams_to_send(0.0)
    for data in datagrams:
        client.receive_datagram(data, SERVER, 0.01)
    client.datagrams_to_send(0.02)
    deadline = client.next_deadline()
    assert deadline is not None
    client.handle_timer(deadline)
    assert client.state in (MachineState.HANDSHAKING, MachineState.CLOSING, MachineState.CLOSED)


def _connected() -> tuple[QuicMachine, QuicEndpoint, float]:
    endpoint = new_endpoint()
    client = QuicMachine.client(SERVER, ca_data=CERT_PEM)
    now = 0.0
    client.start(now)
    for _ in range(50):
        for data, _addr in client.datagrams_to_send(now):
            endpoint.receive_datagram(data, PEERS[0], now)
        for data, _addr in endpoint.datagrams_to_send(now):
            client.receive_datagram(data, SERVER, now)
        if client.state is MachineState.OPEN and endpoint.connections:
            break
        now += 0.01
        client.handle_timer(now)
        endpoint.handle_timer(now)
    assert client.state is MachineState.OPEN
    return client, endpoint, now


@FUZZ
@given(chunks=st.lists(st.binary(max_size=300), min_size=1, max_size=6), fin=st.booleans())
def test_arbitrary_bytes_on_the_stream(chunks: list[bytes], fin: bool) -> None:
    """Behind a real handshake, any stream content ends in packets or a protocol error."""
    client, endpoint, now = _connected()
    (server,) = endpoint.accept()
    for i, chunk in enumerate(chunks):
        client.quic.send_stream_data(STREAM_ID, chunk, end_stream=fin and i == len(chunks) - 1)
    for _ in range(200):
        for data, _addr in client.datagrams_to_send(now):
            endpoint.receive_datagram(data, PEERS[0], now)
        for data, _addr in endpoint.datagrams_to_send(now):
            client.receive_datagram(data, SERVER, now)
        now += 0.01
        client.handle_timer(now)
        endpoint.handle_timer(now)
        if server.is_closed:
            break
    events = server.events()
    for event in events:
        if isinstance(event, PacketReceived):
            assert isinstance(event.packet, Packet)
    if any(isinstance(e, ErrorOccurred) for e in events):
        assert isinstance(events[-1], ConnectionClosed)
        assert not events[-1].clean


# --- atheris -------------------------------------------------------------------------------


def one_input(data: bytes) -> None:
    """atheris entry point: the input is cut into datagrams for one endpoint."""
    atheris = importlib.import_module("atheris")  # only when run by hand
    provider = atheris.FuzzedDataProvider(data)
    endpoint = new_endpoint()
    fed = 0
    while provider.remaining_bytes():
        if provider.ConsumeBool():
            datagram = mutate(
                INITIALS[provider.ConsumeIntInRange(0, len(INITIALS) - 1)],
                [(provider.ConsumeIntInRange(0, 1499), provider.ConsumeIntInRange(0, 255))],
                None,
            )
        else:
            datagram = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 1500))
        endpoint.receive_datagram(datagram, PEERS[provider.ConsumeIntInRange(0, 3)], fed * 0.001)
        fed += 1
    check(endpoint, fed, fed * 0.001)


if __name__ == "__main__":
    from targets import main

    main(one_input, [test_arbitrary_datagrams_into_the_endpoint, test_mutated_initial_packets,
                     test_arbitrary_datagrams_into_a_client, test_arbitrary_bytes_on_the_stream],
         ("msgtrans.core.quic", "msgtrans.core.quic_endpoint", "msgtrans.core.framing", "aioquic"))
