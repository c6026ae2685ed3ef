"""QUIC machines and the server endpoint, in memory: no sockets, time advanced by hand.

Every test wires client :class:`QuicMachine` objects to a :class:`QuicEndpoint` through a
``World`` (a :class:`~msgtrans.core.memory.DatagramPipe` for one client, a small router for
several) and moves virtual time to the next deadline whenever the network is quiet, so QUIC's
acknowledgement, loss-recovery, idle and close timers run as they would on a real clock.
"""

from __future__ import annotations

import datetime
import ipaddress
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aioquic import tls
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.quic.recovery import QuicPacketPacer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.certs import write_self_signed
from msgtrans.core.buffers import BufferPool, PoolBuffer, receive_pool, release_view
from msgtrans.core.config import QuicConfig, QuicServerConfig
from msgtrans.core.connection import client_connection, quic_endpoint
from msgtrans.core.errors import (
    ConfigurationError,
    ProtocolError,
    ResourceError,
    TransportConnectionError,
    TransportTimeoutError,
)
from msgtrans.core.events import (
    CloseStarted,
    ConnectionClosed,
    ConnectionEstablished,
    ErrorOccurred,
    Event,
    PacketReceived,
    WritePaused,
    WriteResumed,
)
from msgtrans.core.framing import LengthPrefixedDecoder, ZeroCopyCounters, length_prefix
from msgtrans.core.machine import MachineState
from msgtrans.core.memory import DatagramPipe
from msgtrans.core.packet import Limits, Packet, PacketType
from msgtrans.core.pair import SERVER_ADDR, ConnectionPair
from msgtrans.core.quic import (
    ALPN,
    LOOPBACK_DATAGRAM_SIZE,
    STREAM_ID,
    TIMER_GRANULARITY,
    BurstPacer,
    FlowControlledQuicConnection,
    QuicAppError,
    QuicMachine,
)
from msgtrans.core.quic_endpoint import MAX_PENDING_REPLIES, QuicEndpoint
from msgtrans.core.session import MessageReceived

SERVER = ("127.0.0.1", 4433)


# --- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cert:
    cert_pem: bytes
    key_pem: bytes


def make_cert(common_name: str = "localhost") -> Cert:
    """An EC P-256 self-signed certificate for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
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
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Cert(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


CERT = make_cert()
OTHER_CERT = make_cert("someone-else")


def endpoint(**kwargs: Any) -> QuicEndpoint:
    return QuicEndpoint(certificate=CERT.cert_pem, private_key=CERT.key_pem, **kwargs)


def client(**kwargs: Any) -> QuicMachine:
    kwargs.setdefault("ca_data", CERT.cert_pem)
    return QuicMachine.client(SERVER, **kwargs)


# --- the in-memory world -----------------------------------------------------------------------

Network = Callable[[list[Any]], list[Any]]


class World:
    """Clients and one endpoint joined in memory, with virtual time.

    *up* and *down* say what the network does to each round's datagrams towards the server and
    towards the clients (default: deliver them all, in order).
    """

    def __init__(
        self,
        server: QuicEndpoint,
        clients: list[QuicMachine],
        up: Network | None = None,
        down: Network | None = None,
        now: float = 0.0,
    ) -> None:
        self.server = server
        self.clients = clients
        self.now = now
        self.up = up or (lambda grams: grams)
        self.down = down or (lambda grams: grams)
        self.addrs = {id(c): ("127.0.0.1", 50000 + i) for i, c in enumerate(clients)}
        self.by_addr = {self.addrs[id(c)]: c for c in clients}
        self.cev: dict[int, list[Event]] = {id(c): [] for c in clients}
        self.sev: dict[int, list[Event]] = {}
        self.accepted: list[QuicMachine] = []
        self.delivered = True  # whether to deliver datagrams to the server at all

    def start(self) -> World:
        for c in self.clients:
            c.start(self.now)
        return self

    def pump(self) -> None:
        for _ in range(10_000):
            to_server = [
                (d, self.addrs[id(c)]) for c in self.clients
                for d, _a in c.datagrams_to_send(self.now)
            ]
            to_clients = self.server.datagrams_to_send(self.now)
            if not to_server and not to_clients:
                break
            if self.delivered:
                for data, addr in self.up(to_server):
                    self.server.receive_datagram(data, addr, self.now)
            for data, addr in self.down(to_clients):
                if addr in self.by_addr:
                    self.by_addr[addr].receive_datagram(data, SERVER, self.now)
        self.collect()

    def collect(self) -> None:
        self.accepted.extend(self.server.accept())
        for c in self.clients:
            self.cev[id(c)].extend(c.events())
        for conn, event in self.server.events():
            self.sev.setdefault(id(conn), []).append(event)

    def fire(self) -> bool:
        deadlines = [d for d in self.deadlines() if d is not None]
        if not deadlines:
            return False
        self.now = max(self.now, min(deadlines))
        for c in self.clients:
            deadline = c.next_deadline()
            if deadline is not None and deadline <= self.now:
                c.handle_timer(self.now)
        self.server.handle_timer(self.now)
        self.collect()
        return True

    def deadlines(self) -> list[float | None]:
        return [c.next_deadline() for c in self.clients] + [self.server.next_deadline()]

    def run(self, until: Callable[[], bool], max_steps: int = 20_000) -> None:
        for _ in range(max_steps):
            self.pump()
            if until():
                return
            if not self.fire():
                self.pump()
                if until():
                    return
                raise AssertionError("the world stalled before the condition held")
        raise AssertionError("the condition did not hold in time")

    # --- views ---------------------------------------------------------------------------------

    def events_of(self, machine: QuicMachine) -> list[Event]:
        if id(machine) in self.cev:
            return self.cev[id(machine)]
        return self.sev.setdefault(id(machine), [])

    def received(self, machine: QuicMachine) -> list[Packet]:
        return [e.packet for e in self.events_of(machine) if isinstance(e, PacketReceived)]

    def established(self, machine: QuicMachine) -> bool:
        return any(isinstance(e, ConnectionEstablished) for e in self.events_of(machine))

    def closed(self, machine: QuicMachine) -> bool:
        return any(isinstance(e, ConnectionClosed) for e in self.events_of(machine))

    def closed_event(self, machine: QuicMachine) -> ConnectionClosed:
        (event,) = [e for e in self.events_of(machine) if isinstance(e, ConnectionClosed)]
        return event

    def errors(self, machine: QuicMachine) -> list[Any]:
        return [e.error for e in self.events_of(machine) if isinstance(e, ErrorOccurred)]

    def connect(self) -> World:
        self.start()
        self.run(
            lambda: all(self.established(c) for c in self.clients)
            and len(self.accepted) == len(self.clients)
            and all(self.established(s) for s in self.accepted)
        )
        return self

    @property
    def conn(self) -> QuicMachine:
        (conn,) = self.accepted
        return conn


def one(**kwargs: Any) -> World:
    server_kwargs = kwargs.pop("server", {})
    network: Callable[[], Network] | None = kwargs.pop("network", None)
    if network is None:
        return World(endpoint(**server_kwargs), [client(**kwargs)])
    # One instance per direction, so that what one holds back goes on its own way.
    return World(endpoint(**server_kwargs), [client(**kwargs)], network(), network())


def payloads(packets: list[Packet]) -> list[bytes]:
    return [bytes(p.payload) for p in packets]


def assert_event_order(events: list[Event]) -> None:
    """Nothing after ConnectionClosed; ConnectionEstablished first when present."""
    closed = [i for i, e in enumerate(events) if isinstance(e, ConnectionClosed)]
    assert len(closed) <= 1
    if closed:
        assert closed[0] == len(events) - 1
    established = [i for i, e in enumerate(events) if isinstance(e, ConnectionEstablished)]
    assert established in ([], [0])


# --- handshake and verification ----------------------------------------------------------------


def test_handshake_with_a_trusted_self_signed_certificate() -> None:
    world = one().connect()
    for machine in (world.clients[0], world.conn):
        (established,) = [
            e for e in world.events_of(machine) if isinstance(e, ConnectionEstablished)
        ]
        assert established.alpn == ALPN
        assert established.tls
        assert established.tls_version == "TLSv1.3"
        assert established.cipher is not None
        assert established.cipher.startswith("TLS_")
        assert machine.state is MachineState.OPEN
        assert machine.alpn == ALPN
    assert world.clients[0].is_client
    assert not world.conn.is_client
    assert world.conn.peer_address == ("127.0.0.1", 50000)
    assert world.clients[0].peer_address == SERVER
    assert world.server.connections == [world.conn]
    assert world.server.stats()["connections_live"] == 1
    assert "client open" in repr(world.clients[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"ca_data": None}, id="untrusted-certificate"),
        pytest.param({"ca_data": OTHER_CERT.cert_pem.decode()}, id="other-ca"),
        pytest.param({"server_name": "example.com"}, id="wrong-host-name"),
    ],
)
def test_certificate_verification_failure(kwargs: dict[str, Any]) -> None:
    world = World(endpoint(), [QuicMachine.client(SERVER, **kwargs)])
    cl = world.clients[0]
    world.start()
    world.run(lambda: world.closed(cl) and len(world.accepted) == 1 and world.closed(world.conn))
    (error,) = world.errors(cl)
    assert isinstance(error, TransportConnectionError)
    assert error.error_code == "connection.tls_verification"
    assert not error.retryable
    closed = world.closed_event(cl)
    assert not closed.clean
    assert closed.error is error
    assert not world.established(cl)
    # The server learns that its certificate was refused.
    (server_error,) = world.errors(world.conn)
    assert server_error.error_code == "connection.tls_verification"
    assert_event_order(world.events_of(cl))
    assert world.server.connections == []


def test_verification_can_be_turned_off() -> None:
    world = World(endpoint(), [QuicMachine.client(SERVER, cert_verification=False)]).connect()
    assert world.established(world.clients[0])


def test_no_common_alpn_is_refused() -> None:
    world = one(alpn=("h3",))
    world.start()
    cl = world.clients[0]
    world.run(lambda: world.closed(cl))
    (error,) = world.errors(cl)
    assert error.error_code == "connection.tls_handshake"  # TLS alert no_application_protocol
    assert not error.retryable


def test_handshake_timeout_when_nobody_answers() -> None:
    world = one(handshake_timeout=2.0, idle_timeout=60.0)
    world.delivered = False
    world.start()
    cl = world.clients[0]
    world.run(lambda: world.closed(cl))
    (error,) = world.errors(cl)
    assert isinstance(error, TransportTimeoutError)
    assert error.error_code == "timeout.handshake"
    assert 2.0 <= world.now < 10.0


def test_idle_timeout_during_the_handshake_is_a_handshake_timeout() -> None:
    world = one(handshake_timeout=60.0, idle_timeout=1.0)
    world.delivered = False
    world.start()
    cl = world.clients[0]
    world.run(lambda: world.closed(cl))
    (error,) = world.errors(cl)
    assert error.error_code == "timeout.handshake"


def test_a_server_connection_whose_client_vanished_times_out() -> None:
    world = one(server={"handshake_timeout": 1.0}, handshake_timeout=30.0, idle_timeout=60.0)
    cl = world.clients[0]
    world.start()
    # Deliver the client's first flight only, then cut the client off.
    for data, _addr in cl.datagrams_to_send(world.now):
        world.server.receive_datagram(data, ("127.0.0.1", 50000), world.now)
    world.collect()
    world.server.datagrams_to_send(world.now)
    (conn,) = world.accepted
    for _ in range(200):
        if world.closed(conn):
            break
        deadline = world.server.next_deadline()
        assert deadline is not None
        world.now = deadline
        world.server.handle_timer(world.now)
        world.server.datagrams_to_send(world.now)
        world.collect()
    (error,) = world.errors(conn)
    assert error.error_code == "timeout.handshake"
    assert world.server.connections == []
    assert world.server.next_deadline() is None


# --- packets -----------------------------------------------------------------------------------


def test_thousands_of_packets_both_ways_in_order() -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    n = 3000
    sent_c = [
        Packet(PacketType.REQUEST if i % 3 == 1 else PacketType.ONE_WAY, i + 1, i % 256,
               b"c%d" % i, b"ext" if i % 7 == 0 else b"")
        for i in range(n)
    ]
    cl.send_packets(sent_c)
    world.run(lambda: len(world.received(conn)) == n)
    assert world.received(conn) == sent_c
    # The server answers every request with a response carrying the request's id.
    responses = [
        Packet(PacketType.RESPONSE, p.message_id, p.biz_type, b"r" + bytes(p.payload))
        for p in world.received(conn)
        if p.packet_type is PacketType.REQUEST
    ]
    pushes = [Packet(payload=b"s%d" % i) for i in range(n - len(responses))]
    conn.send_packets(responses + pushes)
    world.run(lambda: len(world.received(cl)) == n)
    assert world.received(cl) == responses + pushes
    assert cl.packets_sent == conn.packets_received == n
    assert conn.packets_sent == cl.packets_received == n


def test_large_payloads_are_handed_out_zero_copy() -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    big = [random.Random(i).randbytes(3 * 1024 * 1024 + i) for i in range(2)]
    cl.send_packet(Packet(payload=big[0], ext_header=b"route:x"))
    conn.send_packet(Packet(payload=big[1]))
    world.run(lambda: len(world.received(conn)) == 1 and len(world.received(cl)) == 1)
    for machine, data in ((conn, big[0]), (cl, big[1])):
        (packet,) = world.received(machine)
        assert isinstance(packet.payload, memoryview)
        assert packet.payload.readonly
        assert packet.payload == data
    assert world.received(conn)[0].ext_header == b"route:x"


def test_packets_sent_before_the_handshake_are_delivered() -> None:
    world = one()
    cl = world.clients[0]
    cl.send_packet(Packet(payload=b"before start"))
    world.start()
    cl.send_packet(Packet(payload=b"while handshaking"))
    assert cl.state is MachineState.HANDSHAKING
    world.run(lambda: len(world.accepted) == 1 and len(world.received(world.conn)) == 2)
    assert payloads(world.received(world.conn)) == [b"before start", b"while handshaking"]


def test_the_server_can_speak_first() -> None:
    world = one()
    cl = world.clients[0]
    world.start()
    world.run(lambda: len(world.accepted) == 1)
    conn = world.conn
    # Queued while the server is still handshaking and the client has sent nothing.
    conn.send_packet(Packet(payload=b"welcome"))
    assert conn.buffered_amount > 0
    world.run(lambda: len(world.received(cl)) == 1)
    assert payloads(world.received(cl)) == [b"welcome"]
    assert world.received(conn) == []


def test_send_limits() -> None:
    world = one(max_frame=1024, limits=Limits(max_payload=2000)).connect()
    cl = world.clients[0]
    with pytest.raises(ResourceError) as info:
        cl.send_packet(Packet(payload=b"x" * 1500))
    assert info.value.error_code == "resource.payload_too_large"
    with pytest.raises(ResourceError):
        cl.send_packet(Packet(payload=b"x" * 3000))
    cl.send_packet(Packet(payload=b"x" * 1000))
    world.run(lambda: len(world.received(world.conn)) == 1)


# --- closing -----------------------------------------------------------------------------------


def test_close_with_code_and_reason_is_seen_by_the_peer() -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    cl.close(42, "going away")
    assert cl.state is MachineState.CLOSING
    cl.close(7, "again")  # closing twice does nothing
    with pytest.raises(TransportConnectionError) as info:
        cl.send_packet(Packet(payload=b"late"))
    assert info.value.error_code == "connection.closed"
    world.run(lambda: world.closed(cl) and world.closed(conn))
    assert CloseStarted(42, "going away", by_peer=False) in world.events_of(cl)
    assert CloseStarted(42, "going away", by_peer=True) in world.events_of(conn)
    for machine in (cl, conn):
        closed = world.closed_event(machine)
        assert (closed.code, closed.reason, closed.clean) == (42, "going away", False)
        assert closed.error is not None
        assert machine.state is MachineState.CLOSED
        assert machine.next_deadline() is None
        assert_event_order(world.events_of(machine))
    assert world.server.connections == []


@pytest.mark.parametrize("closer", ["client", "server"])
def test_a_client_skips_the_closing_period_and_a_server_waits_it_out(closer: str) -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    assert not cl.closing_period and conn.closing_period
    (cl if closer == "client" else conn).close(0, "bye")
    start = world.now
    world.run(lambda: world.closed(cl))
    # The client is done as soon as the CONNECTION_CLOSE left (or arrived): no time passed,
    # where aioquic alone waits three probe timeouts.
    assert world.now == start
    assert cl.next_deadline() is None
    closed = world.closed_event(cl)
    assert (closed.code, closed.reason, closed.clean, closed.error) == (0, "bye", True, None)
    assert_event_order(world.events_of(cl))
    # The server's connection shares its socket, so it answers late packets until the period
    # is over.
    world.run(lambda: world.closed(conn))
    assert world.now > start
    assert world.closed_event(conn).clean


def test_a_client_may_wait_out_the_closing_period() -> None:
    world = one(closing_period=True).connect()
    cl = world.clients[0]
    assert cl.closing_period
    cl.close()
    start = world.now
    world.run(lambda: world.closed(cl))
    assert world.now > start


def test_clean_close_by_the_server_after_queued_packets() -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    sent = [Packet(payload=bytes([i]) * 50_000) for i in range(40)]
    conn.send_packets(sent)
    conn.close()
    world.run(lambda: world.closed(cl) and world.closed(conn))
    # Everything queued before close() arrived before the close.
    assert payloads(world.received(cl)) == payloads(sent)
    for machine in (cl, conn):
        closed = world.closed_event(machine)
        assert (closed.code, closed.reason, closed.clean, closed.error) == (0, "", True, None)
        assert_event_order(world.events_of(machine))
    assert CloseStarted(0, "", by_peer=True) in world.events_of(cl)


def test_close_during_the_handshake_abandons_the_connection() -> None:
    world = one()
    cl = world.clients[0]
    world.start()
    cl.send_packet(Packet(payload=b"never"))
    cl.close(3, "changed my mind")
    world.run(lambda: world.closed(cl))
    assert not world.established(cl)
    closed = world.closed_event(cl)
    assert closed.code == 3
    assert not closed.clean


def test_close_before_start() -> None:
    cl = client()
    cl.close()
    assert [type(e) for e in cl.events()] == [CloseStarted, ConnectionClosed]
    assert cl.is_closed
    cl.start(0.0)
    assert cl.datagrams_to_send(0.0) == []
    assert cl.next_deadline() is None
    cl.handle_timer(1.0)
    cl.receive_datagram(b"x", SERVER, 1.0)
    assert cl.events() == []
    with pytest.raises(ConfigurationError):
        client().close(-1)


def test_close_times_out_when_the_peer_stops_acknowledging() -> None:
    world = one(close_timeout=1.0, idle_timeout=60.0).connect()
    cl = world.clients[0]
    cl.send_packet(Packet(payload=b"x" * 100_000))
    cl.close(0, "bye")
    world.delivered = False  # the server hears nothing more
    world.run(lambda: world.closed(cl))
    (error,) = world.errors(cl)
    assert error.error_code == "timeout.close"
    assert not world.closed_event(cl).clean


def test_fin_from_the_peer_closes_gracefully() -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    conn.send_packet(Packet(payload=b"last words"))
    cl.send_packet(Packet(payload=b"hello"))
    cl.quic.send_stream_data(STREAM_ID, b"", end_stream=True)
    world.run(lambda: world.closed(cl) and world.closed(conn))
    assert CloseStarted(0, "", by_peer=True) in world.events_of(conn)
    assert payloads(world.received(conn)) == [b"hello"]
    assert payloads(world.received(cl)) == [b"last words"]
    assert world.closed_event(conn).clean
    assert world.closed_event(cl).clean


def test_keepalive_pings_outlive_the_idle_timeout() -> None:
    world = one(idle_timeout=5.0, ping_interval=2.0, server={"idle_timeout": 5.0}).connect()
    cl, conn = world.clients[0], world.conn
    start = world.now
    world.run(lambda: world.now >= start + 600.0)
    assert not world.closed(cl)
    assert not world.closed(conn)
    cl.send_packet(Packet(payload=b"still here"))
    world.run(lambda: len(world.received(conn)) == 1)


def test_keepalive_pings_do_not_hide_a_vanished_peer() -> None:
    world = one(idle_timeout=5.0, ping_interval=1.0, server={"idle_timeout": 5.0}).connect()
    cl = world.clients[0]
    world.delivered = False
    start = world.now
    world.run(lambda: world.closed(cl))
    (error,) = world.errors(cl)
    assert error.error_code == "timeout.idle"
    assert 5.0 <= world.now - start < 10.0


def test_idle_timeout() -> None:
    world = one(
        idle_timeout=5.0, ping_interval=None,
        server={"idle_timeout": 5.0, "ping_interval": None},
    ).connect()
    cl, conn = world.clients[0], world.conn
    start = world.now
    world.run(lambda: world.closed(cl) and world.closed(conn))
    for machine in (cl, conn):
        (error,) = world.errors(machine)
        assert isinstance(error, TransportTimeoutError)
        assert error.error_code == "timeout.idle"
        closed = world.closed_event(machine)
        assert not closed.clean
        assert closed.error is error
    assert world.now - start >= 5.0


def test_endpoint_close_closes_everything_and_refuses_newcomers() -> None:
    world = one().connect()
    world.server.close(0, "maintenance")
    world.run(lambda: world.closed(world.clients[0]) and world.server.is_closed)
    assert world.closed_event(world.clients[0]).reason == "maintenance"
    late = client()
    world2 = World(world.server, [late], now=world.now)
    world2.start()
    world2.run(lambda: world2.closed(late))
    (error,) = world2.errors(late)
    assert error.error_code == "connection.refused_by_server"
    assert world.server.connections_refused == 1


# --- protocol errors ---------------------------------------------------------------------------


def test_frame_over_the_cap_closes_the_connection() -> None:
    world = one(server={"max_frame": 1024}).connect()
    cl, conn = world.clients[0], world.conn
    cl.send_packet(Packet(payload=b"ok"))
    cl.send_packet(Packet(payload=b"x" * 2000))
    world.run(lambda: world.closed(cl) and world.closed(conn))
    assert payloads(world.received(conn)) == [b"ok"]
    (error,) = world.errors(conn)
    assert isinstance(error, ProtocolError)
    assert error.error_code == "protocol.frame_too_large"
    closed = world.closed_event(conn)
    assert closed.code == QuicAppError.PROTOCOL_ERROR
    assert not closed.clean
    assert closed.error is error
    peer_closed = world.closed_event(cl)
    assert peer_closed.code == QuicAppError.PROTOCOL_ERROR
    assert not peer_closed.clean
    assert "exceeds the limit" in peer_closed.reason
    assert_event_order(world.events_of(conn))


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param(b"\x00\x00\x00\x10" + b"\x09" * 16, "protocol.bad_version", id="bad-version"),
        pytest.param(b"\x01\x00\x00\x01" + b"\x00" * 16, "protocol.frame_too_large",
                     id="huge-frame"),
        pytest.param(b"\x00\x00\x00\x04abcd", "protocol.bad_length", id="short-frame"),
        pytest.param(
            b"\x00\x00\x00\x30" + Packet(payload=b"hi").encode(), "protocol.bad_length",
            id="length-mismatch",
        ),
    ],
)
def test_malformed_frames_are_protocol_errors(raw: bytes, code: str) -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    cl.send_packet(Packet(payload=b"first"))
    cl.quic.send_stream_data(STREAM_ID, raw)
    cl.send_packet(Packet(payload=b"never read"))
    world.run(lambda: world.closed(conn) and world.closed(cl))
    assert payloads(world.received(conn)) == [b"first"]
    (error,) = world.errors(conn)
    assert error.error_code == code


def test_a_stream_ending_inside_a_packet_is_a_protocol_error() -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    cl.quic.send_stream_data(STREAM_ID, Packet(payload=b"cut").encode()[:-1], end_stream=False)
    cl.quic.send_stream_data(STREAM_ID, b"", end_stream=True)
    world.run(lambda: world.closed(conn))
    (error,) = world.errors(conn)
    assert error.error_code == "protocol.unexpected_eof"


def test_data_on_another_stream_is_a_protocol_error() -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    cl.quic.send_stream_data(4, b"\x00\x00\x00\x15" + Packet(payload=b"hello").encode())
    world.run(lambda: world.closed(conn) and world.closed(cl))
    (error,) = world.errors(conn)
    assert error.error_code == "protocol.quic"
    assert "stream 4" in error.reason


@pytest.mark.parametrize("stream_id", [STREAM_ID, 8])
def test_a_reset_stream_ends_the_connection(stream_id: int) -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    if stream_id != STREAM_ID:
        cl.quic.send_stream_data(stream_id, b"")
    cl.quic.reset_stream(stream_id, 9)
    world.run(lambda: world.closed(conn))
    (error,) = world.errors(conn)
    expected = "connection.reset" if stream_id == STREAM_ID else "protocol.quic"
    assert error.error_code == expected


def test_stop_sending_ends_the_connection() -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    conn.send_packet(Packet(payload=b"x"))
    world.run(lambda: len(world.received(cl)) == 1)
    cl.quic.stop_stream(STREAM_ID, 5)
    world.run(lambda: world.closed(conn))
    (error,) = world.errors(conn)
    assert error.error_code == "connection.reset"
    assert "stopped" in error.reason


# --- routing -----------------------------------------------------------------------------------


def test_several_clients_are_routed_to_their_own_connections() -> None:
    clients = [client() for _ in range(5)]
    world = World(endpoint(), clients).connect()
    assert world.server.connections_created == 5
    for i, c in enumerate(clients):
        c.send_packets([Packet(payload=b"%d:%d" % (i, j)) for j in range(20)])
    world.run(lambda: all(len(world.received(s)) == 20 for s in world.accepted))
    for conn in world.accepted:
        got = payloads(world.received(conn))
        prefix = got[0].split(b":")[0]
        assert got == [prefix + b":%d" % j for j in range(20)]
        # Echo to whoever it came from.
        conn.send_packets([Packet(payload=b"echo " + p) for p in got])
    world.run(lambda: all(len(world.received(c)) == 20 for c in clients))
    for i, c in enumerate(clients):
        assert payloads(world.received(c)) == [b"echo %d:%d" % (i, j) for j in range(20)]


def both_received(world: World, n: int) -> Callable[[], bool]:
    cl, conn = world.clients[0], world.conn
    return lambda: len(world.received(conn)) == n == len(world.received(cl))


def test_connection_id_changes_stay_routed() -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    routes = world.server._routes
    used: set[bytes] = set()
    for round_ in range(6):
        cl.change_connection_id()
        conn.change_connection_id()
        cl.send_packet(Packet(payload=b"c%d" % round_))
        conn.send_packet(Packet(payload=b"s%d" % round_))
        world.run(both_received(world, round_ + 1))
        used.add(conn.quic.host_cid)
        # Every id the routing table holds for this connection belongs to it.
        assert all(routes[cid] is conn for cid in world.server._cids[conn])
    assert len(used) > 1  # the client really moved between ids
    assert payloads(world.received(conn)) == [b"c%d" % i for i in range(6)]
    assert payloads(world.received(cl)) == [b"s%d" % i for i in range(6)]
    # Retired ids are forgotten: the table stays as small as the live ids.
    assert len(world.server._cids[conn]) <= 10


def test_max_connections_refuses_with_connection_refused() -> None:
    server = endpoint(max_connections=1)
    first = client()
    World(server, [first]).connect()
    second = client()
    world = World(server, [second])
    world.start()
    world.run(lambda: world.closed(second))
    (error,) = world.errors(second)
    assert error.error_code == "connection.refused_by_server"
    assert error.retryable
    assert server.connections_refused >= 1
    assert server.connections_created == 1
    assert len(server.connections) == 1


def test_retry_validates_the_address_first() -> None:
    world = one(server={"retry": True}).connect()
    assert world.server.retries_sent == 1
    world.clients[0].send_packet(Packet(payload=b"after retry"))
    world.run(lambda: len(world.received(world.conn)) == 1)


def test_a_forged_retry_token_is_refused() -> None:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=[ALPN], token=b"forged" * 4, server_name="localhost"
    )
    configuration.load_verify_locations(cadata=CERT.cert_pem)
    forged = QuicMachine(QuicConnection(configuration=configuration), peer_address=SERVER)
    world = World(endpoint(retry=True), [forged])
    world.start()
    world.run(lambda: world.closed(forged))
    assert world.server.connections_created == 0
    assert world.errors(forged)[0].error_code == "connection.failed"


def test_retry_refuses_addresses_it_cannot_encode() -> None:
    server = endpoint(retry=True)
    c = client()
    c.start(0.0)
    (initial,) = [d for d, _a in c.datagrams_to_send(0.0)]
    server.receive_datagram(initial, ("localhost", 1234), 0.0)
    assert server.datagrams_dropped == 1
    assert len(server.datagrams_to_send(0.0)) == 1


# --- the network misbehaving -------------------------------------------------------------------


def drop_every(n: int) -> Network:
    count = 0

    def network(grams: list[Any]) -> list[Any]:
        nonlocal count
        out = []
        for gram in grams:
            count += 1
            if count % n:
                out.append(gram)
        return out

    return network


def random_loss(rate: float, seed: int) -> Network:
    rng = random.Random(seed)
    return lambda grams: [g for g in grams if rng.random() >= rate]


def duplicate(grams: list[Any]) -> list[Any]:
    return [g for gram in grams for g in (gram, gram)]


def reverse(grams: list[Any]) -> list[Any]:
    return grams[::-1]


def chaos(seed: int) -> Network:
    rng = random.Random(seed)
    held: list[Any] = []

    def network(grams: list[Any]) -> list[Any]:
        out = held[:]
        held.clear()
        for gram in grams:
            roll = rng.random()
            if roll < 0.15:
                continue  # lost
            if roll < 0.3:
                held.append(gram)  # delayed past later ones
            elif roll < 0.4:
                out += [gram, gram]
            else:
                out.append(gram)
        rng.shuffle(out)
        return out

    return network


def exchange(world: World, n: int = 150) -> None:
    """Both ways, *n* packets each, with a graceful close; every packet once and in order."""
    world.connect()
    cl, conn = world.clients[0], world.conn
    up = [Packet(PacketType.REQUEST, i + 1, payload=b"u%d" % i + b"." * (i * 37)) for i in range(n)]
    down = [Packet(payload=b"d%d" % i + b"," * (i * 53)) for i in range(n)]
    cl.send_packets(up)
    conn.send_packets(down)
    world.run(lambda: len(world.received(conn)) >= n and len(world.received(cl)) >= n)
    assert world.received(conn) == up
    assert world.received(cl) == down
    cl.close(0, "done")
    world.run(lambda: world.closed(cl) and world.closed(conn))
    assert world.received(conn) == up
    assert world.received(cl) == down
    for machine in (cl, conn):
        assert_event_order(world.events_of(machine))


@pytest.mark.parametrize(
    "network",
    [
        pytest.param(lambda: drop_every(4), id="drop-every-4th"),
        pytest.param(lambda: drop_every(3), id="drop-every-3rd"),
        pytest.param(lambda: random_loss(0.25, 1), id="random-25%"),
        pytest.param(lambda: duplicate, id="duplicated"),
        pytest.param(lambda: reverse, id="reordered"),
        pytest.param(lambda: chaos(7), id="lost-delayed-duplicated-shuffled"),
    ],
)
def test_lossy_networks_deliver_every_packet_once_in_order(
    network: Callable[[], Network],
) -> None:
    exchange(one(network=network))


def test_through_the_shared_datagram_pipe() -> None:
    """The shared DatagramPipe, with its loss hook, carries a whole connection too."""
    server, cl = endpoint(), client()
    pipe = DatagramPipe(cl, server, network=drop_every(5))
    now = 0.0
    cl.start(now)
    got: list[Event] = []
    for _ in range(2000):
        pipe.pump(now)
        got += [e for _c, e in server.events()]
        if len([e for e in got if isinstance(e, PacketReceived)]) == 50:
            break
        if cl.state is MachineState.OPEN and cl.packets_sent == 0:
            cl.send_packets([Packet(payload=b"p%d" % i) for i in range(50)])
            continue
        now = min(d for d in (cl.next_deadline(), server.next_deadline()) if d is not None)
        cl.handle_timer(now)
        server.handle_timer(now)
    assert [bytes(e.packet.payload) for e in got if isinstance(e, PacketReceived)] == [
        b"p%d" % i for i in range(50)
    ]


# Each entry says what happens to one datagram, cycled over the datagrams of the first three
# seconds; then the network heals, so that every example ends (all-"drop" would otherwise be a
# dead link, which only proves the timeouts).
FATES = st.lists(st.sampled_from(["pass", "drop", "dup", "hold"]), min_size=1, max_size=12)


# About 15 ms an example: the profile's count (conftest.py) stays well within the time budget.
@settings(deadline=None)
@given(fates=FATES, seed=st.integers(0, 2**16))
def test_any_loss_duplication_and_reordering_pattern(fates: list[str], seed: int) -> None:
    world = one(handshake_timeout=30.0, idle_timeout=60.0, server={"idle_timeout": 60.0})

    def direction(seed: int) -> Network:
        rng = random.Random(seed)
        held: list[Any] = []
        count = 0

        def network(grams: list[Any]) -> list[Any]:
            nonlocal count
            out = held[:]
            held.clear()
            for gram in grams:
                fate = fates[count % len(fates)] if world.now < 3.0 else "pass"
                count += 1
                if fate == "pass":
                    out.append(gram)
                elif fate == "dup":
                    out += [gram, gram]
                elif fate == "hold":
                    held.append(gram)
            rng.shuffle(out)
            return out

        return network

    world.up, world.down = direction(seed), direction(seed + 1)
    exchange(world, n=30)


def test_garbage_datagrams_are_dropped_and_counted() -> None:
    world = one().connect()
    server, cl, conn = world.server, world.clients[0], world.conn
    before = server.stats()
    initial = client()
    initial.start(0.0)
    (hello,) = [d for d, _a in initial.datagrams_to_send(0.0)]
    garbage = [
        b"",
        b"\x00",
        b"\x40" + b"\x11" * 8 + b"junk",  # short header, unknown id
        b"\x00" * 30,  # fixed bit clear
        b"\xc0\x00\x00\x00\x01\x08" + b"\x01" * 8 + b"\x08" + b"\x02" * 8 + b"\x00\x44\xff",
        b"\xc0\x00\x00\x00\x01\x30",  # long connection id
        hello[:1199],  # an Initial in too small a datagram
        b"\xe0\x00\x00\x00\x01\x08" + b"\x01" * 8 + b"\x00" + b"\x00" * 1200,  # Handshake, unknown
        b"\x80\x00\x00\x00\x00\x08" + b"\x01" * 8 + b"\x00" + b"\x0a\x0b\x0c\x0d",  # VN
        b"\xc0\x1a\x2a\x3a\x4a\x08" + b"\x01" * 8 + b"\x00" + b"\x00" * 20,  # small, unknown ver.
    ]
    for data in garbage:
        server.receive_datagram(data, ("10.0.0.1", 9), world.now)
    after = server.stats()
    assert after["datagrams_received"] - before["datagrams_received"] == len(garbage)
    assert after["datagrams_dropped"] - before["datagrams_dropped"] == len(garbage)
    assert after["connections_created"] == before["connections_created"]
    assert server.datagrams_to_send(world.now) == []
    # Garbage with the live connection's id reaches it and is dropped there, harmlessly.
    server.receive_datagram(b"\x40" + conn.quic.host_cid + b"\x00" * 40, ("127.0.0.1", 50000),
                            world.now)
    cl.receive_datagram(b"\x40" + b"\x00" * 60, SERVER, world.now)
    cl.receive_datagram(b"\x40" + b"\x00" * 60, ("10.9.9.9", 1), world.now)
    cl.send_packet(Packet(payload=b"still fine"))
    world.run(lambda: len(world.received(conn)) == 1)
    assert not world.closed(conn)


def test_unsupported_versions_get_version_negotiation() -> None:
    server = endpoint()
    unknown = b"\xc0\x1a\x2a\x3a\x4a\x08" + b"\x01" * 8 + b"\x08" + b"\x02" * 8
    server.receive_datagram(unknown + b"\x00" * 1200, ("10.0.0.1", 9), 0.0)
    ((reply, addr),) = server.datagrams_to_send(0.0)
    assert addr == ("10.0.0.1", 9)
    assert reply[1:5] == b"\x00\x00\x00\x00"
    assert int.from_bytes(reply[-4:], "big") in (QuicProtocolVersion.VERSION_1,
                                                  QuicProtocolVersion.VERSION_2)
    assert server.version_negotiations == 1


def test_stateless_replies_are_bounded_under_a_flood() -> None:
    server = endpoint(max_connections=0)
    c = client()
    c.start(0.0)
    (initial,) = [d for d, _a in c.datagrams_to_send(0.0)]
    for i in range(MAX_PENDING_REPLIES + 5):
        server.receive_datagram(initial, ("10.0.0.1", i + 1), 0.0)
    assert server.connections_refused == MAX_PENDING_REPLIES + 5
    assert server.datagrams_dropped == 5
    assert len(server.datagrams_to_send(0.0)) == MAX_PENDING_REPLIES


# --- flow control ------------------------------------------------------------------------------


def test_write_paused_and_resumed_around_a_peer_that_does_not_read() -> None:
    world = one(high_watermark=512 * 1024, low_watermark=64 * 1024).connect()
    cl, conn = world.clients[0], world.conn
    chunk = b"z" * 60_000
    sent = 0
    while not cl.is_write_paused:
        cl.send_packet(Packet(payload=chunk))
        sent += 1
    assert cl.buffered_amount > 512 * 1024
    assert isinstance(cl.events()[-1], WritePaused)
    # Now let the peer read: the queue drains and writing may go on.
    world.run(lambda: len(world.received(conn)) == sent and not cl.is_write_paused)
    resumed = [e for e in world.events_of(cl) if isinstance(e, WriteResumed)]
    assert len(resumed) == 1
    assert not cl.is_write_paused
    assert cl.buffered_amount <= 64 * 1024


def test_the_server_backlog_counts_towards_the_watermark() -> None:
    world = one(server={"high_watermark": 1000, "low_watermark": 0})
    world.start()
    world.run(lambda: len(world.accepted) == 1)
    conn = world.conn
    conn.send_packet(Packet(payload=b"q" * 2000))
    assert conn.is_write_paused
    assert conn.buffered_amount >= 2000
    world.run(lambda: len(world.received(world.clients[0])) == 1 and not conn.is_write_paused)


# --- configuration -----------------------------------------------------------------------------


def test_configuration_errors(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="certificate"):
        QuicEndpoint()
    with pytest.raises(ConfigurationError, match="PEM"):
        QuicEndpoint(certificate=b"not pem", private_key=b"nor this")
    with pytest.raises(ConfigurationError, match="no certificate"):
        QuicEndpoint(certificate=CERT.key_pem)
    with pytest.raises(ConfigurationError, match="no private key"):
        QuicEndpoint(certificate=CERT.cert_pem)
    garbled = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ConfigurationError, match="cannot load"):
        QuicEndpoint(certificate=garbled, private_key=CERT.key_pem)
    with pytest.raises(ConfigurationError, match="private_key"):
        QuicEndpoint(certificate=CERT.cert_pem, private_key=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="server configuration"):
        QuicEndpoint(QuicConfiguration(is_client=True))
    with pytest.raises(ConfigurationError, match="certificate"):
        QuicEndpoint(QuicConfiguration(is_client=False))
    with pytest.raises(ConfigurationError, match="max_connections"):
        endpoint(max_connections=-1)
    with pytest.raises(ConfigurationError, match="idle_timeout"):
        endpoint(idle_timeout=0)
    with pytest.raises(ConfigurationError, match="alpn"):
        endpoint(alpn=())
    with pytest.raises(ConfigurationError, match="low_watermark"):
        endpoint(low_watermark=10, high_watermark=5)
    with pytest.raises(ConfigurationError, match="max_frame"):
        endpoint(max_frame=3)
    with pytest.raises(ConfigurationError, match="alpn"):
        client(alpn=[""])
    with pytest.raises(ConfigurationError, match="server_addr"):
        QuicMachine.client("127.0.0.1:4433")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="handshake_timeout"):
        client(handshake_timeout=0)
    with pytest.raises(ConfigurationError, match="ping_interval"):
        client(ping_interval=0)
    with pytest.raises(ConfigurationError, match="idle_timeout"):
        client(idle_timeout=-1)
    with pytest.raises(ConfigurationError, match="peer_address"):
        QuicMachine(QuicConnection(configuration=QuicConfiguration(is_client=True)))


def test_certificates_from_files_and_text(tmp_path: Any) -> None:
    combined = tmp_path / "server.pem"
    combined.write_bytes(CERT.cert_pem + CERT.key_pem)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(CERT.cert_pem)
    world = World(
        QuicEndpoint(certificate=str(combined)),
        [QuicMachine.client(SERVER, ca_file=str(ca))],
    ).connect()
    assert world.established(world.clients[0])
    text = QuicEndpoint(certificate=CERT.cert_pem.decode(), private_key=CERT.key_pem.decode(),
                        password="unused-for-plain-keys" if False else None)
    assert text.configuration.certificate is not None
    configured = QuicEndpoint(text.configuration)
    assert configured.configuration is text.configuration


def test_start_is_idempotent_and_timers_are_safe_before_start() -> None:
    c = client()
    assert c.next_deadline() is None
    c.handle_timer(5.0)
    assert c.datagrams_to_send(0.0) == []
    c.start(0.0)
    first = c.datagrams_to_send(0.0)
    c.start(0.0)
    assert len(first) == 1
    assert c.events() == []
    c.change_connection_id()  # no spare ids yet: nothing happens


def test_an_aioquic_failure_is_contained_in_its_connection(monkeypatch: Any) -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn

    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(conn.quic, "receive_datagram", explode)
    cl.send_packet(Packet(payload=b"x"))
    world.run(lambda: world.closed(conn))
    (error,) = world.errors(conn)
    assert error.error_code == "protocol.quic"
    assert "boom" in error.reason
    assert world.server.connections == []
    # The other timers and outputs of a dead machine are quiet.
    monkeypatch.setattr(cl.quic, "datagrams_to_send", explode)
    cl.send_packet(Packet(payload=b"y"))
    assert cl.datagrams_to_send(world.now) == []
    assert world.closed(cl) or cl.is_closed


def test_an_aioquic_timer_failure_is_contained(monkeypatch: Any) -> None:
    world = one().connect()
    cl = world.clients[0]

    def explode(now: float) -> None:
        raise RuntimeError("timer boom")

    monkeypatch.setattr(cl.quic, "handle_timer", explode)
    deadline = cl.next_deadline()
    assert deadline is not None
    cl.handle_timer(deadline + 100)
    errors = [e.error for e in cl.events() if isinstance(e, ErrorOccurred)]
    assert errors[0].error_code == "protocol.quic"
    assert cl.is_closed


def test_the_core_rule_holds() -> None:
    """Importing the QUIC core pulls in no event loop and no socket code of its own."""
    code = textwrap.dedent(
        """
        import sys
        import msgtrans.core.quic_endpoint
        bad = [m for m in ("asyncio", "trio", "anyio", "aioquic.asyncio")
               if m in sys.modules]
        print(bad)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_bad_frame_first_in_its_chunk_and_more_data_after_it() -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    cl.quic.send_stream_data(STREAM_ID, b"\x00\x00\x00\x03xyz" + b"\x00" * 5000)
    cl.quic.send_stream_data(4, b"and another stream")
    # Deliver the client's datagrams before the server says anything: data still arriving
    # after the error is ignored, and a second error adds nothing.
    for _ in range(20):
        world.now += 0.002  # past the client's pacing
        for data, _a in cl.datagrams_to_send(world.now):
            world.server.receive_datagram(data, ("127.0.0.1", 50000), world.now)
    world.run(lambda: world.closed(conn))
    (error,) = world.errors(conn)
    assert error.error_code == "protocol.bad_length"
    assert world.received(conn) == []


def test_fin_while_our_close_waits_for_acknowledgements() -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    conn.send_packet(Packet(payload=b"w" * 200_000))
    conn.close(0, "mine first")  # waits until the client acknowledged everything
    cl.quic.send_stream_data(STREAM_ID, b"", end_stream=True)
    world.run(lambda: world.closed(conn) and world.closed(cl))
    # Our own close had started: the peer's FIN adds no second CloseStarted.
    assert [e for e in world.events_of(conn) if isinstance(e, CloseStarted)] == [
        CloseStarted(0, "mine first", by_peer=False)
    ]
    assert payloads(world.received(cl)) == [b"w" * 200_000]


def test_fin_alone_closes_gracefully() -> None:
    world = one().connect()
    cl, conn = world.clients[0], world.conn
    cl.send_packet(Packet(payload=b"all"))
    world.run(lambda: len(world.received(conn)) == 1)
    cl.quic.send_stream_data(STREAM_ID, b"", end_stream=True)
    world.run(lambda: world.closed(conn) and world.closed(cl))
    assert CloseStarted(0, "", by_peer=True) in world.events_of(conn)
    assert world.closed_event(conn).clean


def test_close_while_the_handshake_completes_emits_no_established() -> None:
    server, cl = endpoint(), client()
    peer = ("127.0.0.1", 50000)
    cl.start(0.0)
    now = 0.0
    for _ in range(5):
        for data, _a in cl.datagrams_to_send(now):
            server.receive_datagram(data, peer, now)
        replies = server.datagrams_to_send(now)
        if replies:
            break
        now += 0.01
    # The server's whole first flight is here; close before reading it.
    cl.close(1, "no thanks")
    for data, _a in replies:
        cl.receive_datagram(data, SERVER, now)
    events = cl.events()
    assert not any(isinstance(e, ConnectionEstablished) for e in events)
    assert events == [CloseStarted(1, "no thanks", by_peer=False)]


def test_a_connection_ended_by_the_driver_is_forgotten_by_the_endpoint() -> None:
    world = one(idle_timeout=1.0, server={"idle_timeout": 1.0}).connect()
    conn = world.conn
    # The driver runs this connection's timers itself and drains its events itself.
    for _ in range(100):
        deadline = conn.next_deadline()
        if deadline is None:
            break
        conn.handle_timer(deadline + 1.0)
    assert conn.is_closed
    assert any(isinstance(e, ConnectionClosed) for e in conn.events())
    conn.change_connection_id()  # a closed machine ignores it
    assert world.server.connections == [conn]
    world.server.datagrams_to_send(world.now)
    assert world.server.connections == []
    assert world.server.events() == []
    world.server._on_cid(conn, b"late", True)  # ids of a forgotten connection are ignored
    assert b"late" not in world.server._routes


def test_an_encrypted_private_key() -> None:
    key = serialization.load_pem_private_key(CERT.key_pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    server = QuicEndpoint(certificate=CERT.cert_pem, private_key=encrypted, password="secret")
    assert server.configuration.private_key is not None
    with pytest.raises(ConfigurationError, match="cannot load"):
        QuicEndpoint(certificate=CERT.cert_pem, private_key=encrypted, password="wrong")


# --- datagram size ---------------------------------------------------------------------------


def _largest_datagram(world: World, sent: list[Packet]) -> int:
    cl, conn = world.clients[0], world.conn
    largest = 0
    original = cl.datagrams_to_send

    def spy(now: float) -> list[tuple[bytes, Any]]:
        nonlocal largest
        grams = original(now)
        largest = max([largest, *(len(data) for data, _addr in grams)])
        return grams

    cl.datagrams_to_send = spy  # type: ignore[method-assign]
    cl.send_packets(sent)
    world.run(lambda: len(world.received(conn)) == len(sent))
    assert payloads(world.received(conn)) == payloads(sent)
    return largest


def test_loopback_peers_use_large_datagrams_after_the_handshake() -> None:
    world = one().connect()
    for machine in (world.clients[0], world.conn):
        assert machine.quic._max_datagram_size == LOOPBACK_DATAGRAM_SIZE
    sent = [Packet(payload=bytes([i]) * 40_000) for i in range(20)]
    largest = _largest_datagram(world, sent)
    assert 1200 < largest <= LOOPBACK_DATAGRAM_SIZE


def test_large_datagrams_can_be_turned_off() -> None:
    world = one(loopback_datagram_size=None, server={"loopback_datagram_size": None}).connect()
    sent = [Packet(payload=bytes([i]) * 40_000) for i in range(5)]
    assert _largest_datagram(world, sent) <= 1200


def test_widening_respects_the_peers_limit_and_resizes_the_initial_window() -> None:
    quic = FlowControlledQuicConnection(configuration=QuicConfiguration(is_client=True))
    quic.peer_max_udp_payload_size = 3000
    assert quic.widen_datagrams(LOOPBACK_DATAGRAM_SIZE)
    assert quic._max_datagram_size == 3000
    # RFC 9002 section 7.2: min(10 * 3000, max(14720, 2 * 3000)).
    assert quic._loss.congestion_window == 14720
    assert not quic.widen_datagrams(2000)  # never narrower
    assert quic._max_datagram_size == 3000


@pytest.mark.parametrize("size", [1199, LOOPBACK_DATAGRAM_SIZE + 1])
def test_loopback_datagram_size_is_checked(size: int) -> None:
    with pytest.raises(ConfigurationError):
        client(loopback_datagram_size=size)


def test_a_starting_client_sets_no_timer_before_its_first_datagrams() -> None:
    cl = client(handshake_timeout=5.0)
    cl.start(100.0)
    # Only the handshake timeout: aioquic's loss timer would count from time 0 here.
    assert cl.next_deadline() == 105.0
    assert cl.datagrams_to_send(100.0)
    deadline = cl.next_deadline()
    assert deadline is not None and 100.0 < deadline < 105.0  # the probe timeout now


@settings(max_examples=200, deadline=None)
@given(
    payload=st.binary(max_size=20_000),
    biz_type=st.integers(0, 255),
    message_id=st.integers(0, 2**32 - 1),
    packet_type=st.sampled_from(list(PacketType)),
    ext_header=st.one_of(st.just(b""), st.binary(min_size=1, max_size=40)),
)
def test_queued_packets_are_framed_as_the_wire_format_says(
    payload: bytes, biz_type: int, message_id: int, packet_type: PacketType, ext_header: bytes
) -> None:
    machine = QuicMachine.client(SERVER, cert_verification=False)
    machine.start(0.0)
    packet = Packet(
        packet_type=packet_type, message_id=message_id, biz_type=biz_type, payload=payload,
        ext_header=ext_header,
    )
    machine.send_packet(packet)
    encoded = packet.encode()
    framed = len(encoded).to_bytes(4, "big") + encoded
    assert machine.buffered_amount == len(framed)
    machine.datagrams_to_send(0.0)  # hands the gathered bytes to aioquic's stream
    stream = machine.quic._streams[STREAM_ID]
    assert bytes(stream.sender._buffer) == framed


# --- the handshake's datagram sizes and key shares --------------------------------------------
# How QUIC's loopback datagram size and the client's key shares show in the handshake.


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("quic-options"))



@pytest.mark.parametrize("size", [LOOPBACK_DATAGRAM_SIZE, 4000])
def test_the_last_handshake_flight_is_not_padded_to_the_loopback_size(
    cert_files: tuple[Path, Path], size: int
) -> None:
    # aioquic pads a client datagram holding an Initial packet to the full datagram size: the
    # flight that completes the handshake still holds one (its Initial ACK), so widening waits
    # for the Initial space to be discarded.
    cert, key = cert_files
    endpoint = quic_endpoint(QuicServerConfig("127.0.0.1:4433", cert, key))
    client = client_connection(
        QuicConfig("127.0.0.1:4433", ca_file=str(cert), loopback_datagram_size=size),
        resolved=("127.0.0.1", 4433),
    ).machine
    assert isinstance(client, QuicMachine)
    client.start(0.0)
    sizes: list[int] = []
    for _ in range(6):
        grams = client.datagrams_to_send(0.0)
        sizes += [len(data) for data, _addr in grams]
        for data, _addr in grams:
            endpoint.receive_datagram(data, ("127.0.0.1", 50000), 0.0)
        for data, _addr in endpoint.datagrams_to_send(0.0):
            client.receive_datagram(data, ("127.0.0.1", 4433), 0.0)
    opened = client.state
    assert opened is MachineState.OPEN
    assert sizes and max(sizes) <= 1200
    assert client.quic._max_datagram_size == size  # widened once the Initial space went


def test_a_client_makes_key_shares_for_p256_and_x25519_only(cert_files: tuple[Path, Path]) -> None:
    cert, key = cert_files
    endpoint = quic_endpoint(QuicServerConfig("127.0.0.1:4433", cert, key))
    client = client_connection(QuicConfig("127.0.0.1:4433", ca_file=str(cert)),
                               resolved=("127.0.0.1", 4433)).machine
    assert isinstance(client, QuicMachine)
    client.start(0.0)
    context = client.quic.tls
    assert set(context._supported_groups) == {tls.Group.SECP256R1, tls.Group.X25519}
    assert context._x448_private_key is None and len(context._ec_private_keys) == 1
    DatagramPipe(client, endpoint).pump(0.0)
    opened = client.state
    assert opened is MachineState.OPEN
    (server,) = endpoint.connections
    # The server keeps every group it knows, to answer any client.
    assert tls.Group.X448 in server.quic.tls._supported_groups


# --- a paused receiver grants no credit -------------------------------------------------------
# A QUIC receiver that pauses reading stops granting credit, so a fast sender is held back.


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    cert, key = write_self_signed(Path(tmp_path_factory.mktemp("certs")))
    return str(cert), str(key)


def test_paused_reader_bounds_what_arrives(certs: tuple[str, str]) -> None:
    cert, key = certs
    pair = ConnectionPair(
        client_connection(f"quic://localhost:{SERVER_ADDR[1]}?ca={cert}", resolved=SERVER_ADDR),
        None,
        quic_endpoint(QuicServerConfig(addr="127.0.0.1:0", cert_file=cert, key_file=key)),
    )
    pair.start()
    assert pair.server is not None
    server_machine = pair.server.machine
    assert isinstance(server_machine, QuicMachine)
    assert isinstance(server_machine.quic, FlowControlledQuicConnection)
    server_machine.pause_reading()

    chunk = bytes(64 * 1024)
    sent = 0
    paused = False
    for _ in range(128):  # 8 MiB, far more than the window the server granted
        pair.client.send(chunk, now=pair.now)
        sent += len(chunk)
        pair.pump(20)
        paused = paused or any(isinstance(e, WritePaused) for e in pair.take("client"))
    pair.advance(2.0)
    stream = server_machine.quic._streams[0]
    arrived = stream.receiver.highest_offset
    assert arrived <= stream.max_stream_data_local
    assert arrived < sent / 4, (arrived, sent)
    assert paused  # the sender saw its backlog grow past the high watermark

    server_machine.resume_reading()
    pair.pump(50_000, until=lambda: stream.receiver.highest_offset >= sent + 16 * 128)
    messages = [e for e in pair.take("server") if isinstance(e, MessageReceived)]
    assert sum(len(m.packet.payload) for m in messages) == sent


def test_the_credit_granted_never_passes_the_largest_window(certs: tuple[str, str]) -> None:
    """However much a connection has received, it never lets the peer send more than
    ``max_receive_window`` beyond it (aioquic alone doubles its windows without end, so a
    reader that pauses late would have granted credit in proportion to the whole transfer)."""
    cert, key = certs
    pair = ConnectionPair(
        client_connection(f"quic://localhost:{SERVER_ADDR[1]}?ca={cert}", resolved=SERVER_ADDR),
        None,
        quic_endpoint(QuicServerConfig(addr="127.0.0.1:0", cert_file=cert, key_file=key)),
    )
    pair.start()
    assert pair.server is not None
    quic = pair.server.machine.quic  # type: ignore[attr-defined]
    assert isinstance(quic, FlowControlledQuicConnection)
    quic.max_receive_window = window = 512 * 1024  # smaller than aioquic's 1 MiB start
    chunk = bytes(256 * 1024)
    worst = 0
    for _ in range(96):  # 24 MiB: aioquic alone would have granted 32 MiB of window
        pair.client.send(chunk, now=pair.now)
        pair.pump(40)
        pair.take("server")
        limit = quic._local_max_data
        stream = quic._streams[0]
        worst = max(worst, limit.sent - limit.used,
                    stream.max_stream_data_local_sent - stream.receiver.highest_offset)
    pair.pump(50_000, until=lambda: quic._streams[0].receiver.highest_offset >= 96 * len(chunk))
    assert quic._streams[0].receiver.highest_offset >= 96 * len(chunk)  # all of it went through
    # The credit left may be the initial 1 MiB of the handshake, never more than that or the
    # window beyond what arrived.
    assert worst <= max(window, 1024 * 1024), worst


def test_plain_aioquic_connection_ignores_pause() -> None:
    machine = QuicMachine.client(("127.0.0.1", 4433), cert_verification=False)
    machine._quic.__class__ = FlowControlledQuicConnection.__mro__[1]  # a plain QuicConnection
    machine.pause_reading()
    machine.resume_reading()
    assert not getattr(machine.quic, "read_paused", False)


# --- pacing ----------------------------------------------------------------------------------


def test_connections_pace_with_the_burst_pacer() -> None:
    machine = QuicMachine.client(("127.0.0.1", 4433), cert_verification=False)
    assert isinstance(machine.quic._loss._pacer, BurstPacer)


@given(
    cwnd=st.integers(min_value=2 * 1200, max_value=64 * 1024 * 1024),
    srtt=st.floats(min_value=1e-6, max_value=2.0),
)
def test_burst_pacer_bursts_cover_the_timer_granularity(cwnd: int, srtt: float) -> None:
    ours = BurstPacer(max_datagram_size=1200)
    theirs = QuicPacketPacer(max_datagram_size=1200)
    ours.update_rate(congestion_window=cwnd, smoothed_rtt=srtt)
    theirs.update_rate(congestion_window=cwnd, smoothed_rtt=srtt)
    rate = cwnd / max(srtt, 1e-6)
    assert ours.packet_time == theirs.packet_time
    # Never a smaller burst than aioquic allows...
    assert ours.bucket_max >= theirs.bucket_max
    # ...never more than a congestion window (or aioquic's own minimum burst) at once...
    assert ours.bucket_max * rate <= max(cwnd, 2 * 1200) * (1 + 1e-9)
    # ...and, unless the window or the cap is smaller, two timer granularities' worth, so a
    # timer that fires a millisecond late still finds a full millisecond of credit.
    if rate * 2 * TIMER_GRANULARITY <= min(cwnd, 256 * 1200):
        assert ours.bucket_max >= 2 * TIMER_GRANULARITY * (1 - 1e-9)


# --- big packets into the receive pool -----------------------------------------------------------

KiB = 1024


def pooled_world(pool: BufferPool, **kwargs: Any) -> tuple[World, ZeroCopyCounters]:
    """A connected world whose two machines receive into *pool* (as a Connection gives it),
    counting into counters of their own."""
    world = one(**kwargs).connect()
    counters = ZeroCopyCounters()
    for machine in (world.clients[0], world.conn):
        machine._decoder.buffer_pool = pool
        machine._decoder.counters = counters
    return world, counters


def test_a_big_packet_is_assembled_in_one_pooled_buffer_and_given_back() -> None:
    pool = receive_pool()
    world, counters = pooled_world(pool)
    cl, conn = world.clients[0], world.conn
    lends = pool.stats().misses + pool.stats().hits
    sent = [random.Random(i).randbytes(256 * KiB + i) for i in range(3)]
    for i, data in enumerate(sent):
        cl.send_packet(Packet(payload=data))
        world.run(lambda i=i: len(world.received(conn)) == i + 1)  # type: ignore[misc]
        packet = world.received(conn)[i]
        view = packet.payload
        assert isinstance(view, memoryview) and view.readonly and view == data
        assert type(view.obj) is PoolBuffer and view.obj.lender is pool
        assert release_view(view)
        assert pool.stats().lent == len(pool.spare_areas)  # idle receive areas only
    stats = pool.stats()
    assert stats.hits + stats.misses - lends == 3 and stats.misses - lends <= 1
    # aioquic's data copied once into each buffer: the receive, so a zero-copy hit.
    snap = counters.snapshot()
    assert snap.large_payloads == snap.zero_copy_payloads == 3
    assert snap.bytes_copied == sum(len(d) + 16 for d in sent)


def test_a_kept_quic_payload_view_is_never_overwritten() -> None:
    pool = receive_pool()
    world, _ = pooled_world(pool)
    cl, conn = world.clients[0], world.conn
    cl.send_packet(Packet(payload=b"a" * (200 * KiB)))
    world.run(lambda: len(world.received(conn)) == 1)
    first = world.received(conn)[0].payload
    kept = first[:10]
    release_view(first)
    cl.send_packet(Packet(payload=b"b" * (200 * KiB)))
    world.run(lambda: len(world.received(conn)) == 2)
    second = world.received(conn)[1].payload
    assert second.obj is not kept.obj  # type: ignore[union-attr]
    assert bytes(kept) == b"a" * 10 and second == b"b" * (200 * KiB)


def test_a_quic_header_over_max_payload_is_refused_before_any_buffer_is_taken() -> None:
    pool = BufferPool((1 * KiB, 80 * KiB, 2048 * KiB), (1, 1, 1), preallocate=(0, 0, 0))
    decoder = LengthPrefixedDecoder(Limits(max_payload=100 * KiB), buffer_pool=pool)
    decoder.received_by_feed = True
    header = Packet(payload=b"x" * (1024 * KiB)).encode()[:16]
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(length_prefix(16 + 1024 * KiB) + header)
    assert caught.value.error_code == "protocol.frame_too_large"
    big = pool.stats().classes[2]
    assert big.hits == big.misses == 0  # no buffer for the 1 MiB packet


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([3, 65_535, 65_536, 100_000, 300_000]), min_size=1,
                   max_size=5),
    cuts=st.lists(st.integers(1, 70_000), min_size=1, max_size=8),
)
def test_quic_stream_cut_anywhere_assembles_big_packets_in_pooled_buffers(
    sizes: list[int], cuts: list[int]
) -> None:
    pool = receive_pool()
    counters = ZeroCopyCounters()
    decoder = LengthPrefixedDecoder(buffer_pool=pool, counters=counters)
    decoder.received_by_feed = True  # as the QUIC machine sets it
    sent = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    wire = b"".join(
        length_prefix(len(e)) + e for e in (Packet(payload=p).encode() for p in sent))
    got: list[Packet] = []
    pos = i = 0
    while pos < len(wire):  # bytes chunks, as aioquic hands them out
        n = cuts[i % len(cuts)]
        got += decoder.feed(wire[pos : pos + n])
        pos, i = pos + n, i + 1
    assert [p.payload for p in got] == sent
    big = [p for p in got if len(p.payload) >= 64 * KiB]
    snap = counters.snapshot()
    assert snap.large_payloads == snap.zero_copy_payloads == len(big)
    for packet in big:
        assert isinstance(packet.payload, memoryview)
        release_view(packet.payload)
    assert pool.stats().lent == len(pool.spare_areas)  # idle receive areas alone
