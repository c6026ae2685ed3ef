"""TlsMachine: TLS in memory over TcpMachine (ssl.MemoryBIO), driven without sockets."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.certs import generate_self_signed, write_self_signed
from msgtrans.core.errormap import map_error
from msgtrans.core.errors import (
    ConfigurationError,
    Protocol,
    ProtocolError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from msgtrans.core.events import (
    CloseStarted,
    ConnectionClosed,
    ConnectionEstablished,
    ErrorOccurred,
    Event,
    PacketReceived,
)
from msgtrans.core.machine import MachineState
from msgtrans.core.memory import StreamPipe
from msgtrans.core.packet import Buffer, Packet, PacketType
from msgtrans.core.tcp import TcpMachine
from msgtrans.core.tls import TlsMachine, client_context, server_context

ALPN = "msgtrans.v1"

# --- fixtures and helpers ----------------------------------------------------------------------


@dataclass
class Certs:
    cert_file: Path
    key_file: Path
    cert_pem: bytes
    other_pem: bytes  # a certificate nobody uses: trusting it trusts nothing here


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    cert_file, key_file = write_self_signed(tmp_path_factory.mktemp("tls"))
    other_pem, _ = generate_self_signed()
    return Certs(cert_file, key_file, cert_file.read_bytes(), other_pem)


@pytest.fixture(scope="module")
def server_ctx(certs: Certs) -> ssl.SSLContext:
    return server_context(certs.cert_file, certs.key_file, alpn=[ALPN])


@pytest.fixture(scope="module")
def client_ctx(certs: Certs) -> ssl.SSLContext:
    return client_context(ca_data=certs.cert_pem, alpn=[ALPN])


def make_pair(
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    *,
    hostname: str | None = "localhost",
    chunker: Callable[[bytes], list[bytes]] | None = None,
    **kwargs: float,
) -> tuple[TlsMachine, TlsMachine, StreamPipe]:
    client = TlsMachine(TcpMachine(is_client=True), client_ctx, server_hostname=hostname, **kwargs)
    server = TlsMachine(TcpMachine(is_client=False), server_ctx, **kwargs)
    return client, server, StreamPipe(client, server, chunker)


def open_pair(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, **kwargs: float
) -> tuple[TlsMachine, TlsMachine, StreamPipe]:
    client, server, pipe = make_pair(client_ctx, server_ctx, **kwargs)  # type: ignore[arg-type]
    pipe.start()
    for machine in (client, server):
        (event,) = machine.events()
        assert isinstance(event, ConnectionEstablished) and event.tls
    return client, server, pipe


def packets_of(events: list[Event]) -> list[Packet]:
    return [e.packet for e in events if isinstance(e, PacketReceived)]


def kinds(events: list[Event]) -> list[type]:
    return [type(e) for e in events if not isinstance(e, PacketReceived)]


def error_of(events: list[Event]) -> TransportError:
    errors = [e.error for e in events if isinstance(e, ErrorOccurred)]
    assert len(errors) == 1
    return errors[0]


def ciphertext(machine: TlsMachine) -> bytes:
    return b"".join(bytes(part) for part in machine.data_to_send())


def records(data: bytes) -> list[bytes]:
    """Split a TLS byte stream into its records."""
    out = []
    while data:
        size = 5 + int.from_bytes(data[3:5], "big")
        out.append(data[:size])
        data = data[size:]
    return out


def some_packets(n: int) -> list[Packet]:
    types = (PacketType.ONE_WAY, PacketType.REQUEST, PacketType.RESPONSE)
    return [
        Packet(types[i % 3], message_id=i + 1, biz_type=i % 256, payload=os.urandom(i % 300))
        for i in range(n)
    ]


# --- the handshake -----------------------------------------------------------------------------


def test_verified_handshake_reports_tls_details(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, pipe = make_pair(client_ctx, server_ctx)
    assert client.is_client and not server.is_client
    assert client.protocol is Protocol.TCP
    assert client.tls_version is None and client.cipher is None and client.alpn_protocol is None
    client.start(0.0)
    assert client.state is MachineState.HANDSHAKING
    hello = ciphertext(client)
    assert hello[:1] == b"\x16"  # a handshake record: the ClientHello
    server.start(0.0)
    server.receive_data(hello, 0.0)
    pipe.pump()
    for machine in (client, server):
        (event,) = machine.events()
        assert isinstance(event, ConnectionEstablished)
        assert event.protocol is Protocol.TCP
        assert event.tls
        assert event.tls_version == "TLSv1.3" == machine.tls_version
        assert event.cipher is not None and event.cipher == machine.cipher
        assert event.alpn == ALPN == machine.alpn_protocol
        assert machine.state is MachineState.OPEN
        assert machine.next_deadline() is None
    peer = client.ssl_object.getpeercert()
    assert ("DNS", "localhost") in peer["subjectAltName"]
    client.start(1.0)  # a second start does nothing
    assert client.events() == []


@pytest.mark.parametrize("hostname", ["127.0.0.1", "::1"])
def test_ip_address_names_verify(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, hostname: str
) -> None:
    open_pair(client_ctx, server_ctx, hostname=hostname)  # type: ignore[arg-type]


def test_tls_1_2(certs: Certs, server_ctx: ssl.SSLContext) -> None:
    ctx = client_context(ca_data=certs.cert_pem.decode())
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client, server, pipe = make_pair(ctx, server_ctx)
    pipe.start()
    (event,) = client.events()
    assert isinstance(event, ConnectionEstablished)
    assert event.tls_version == "TLSv1.2"
    assert event.alpn is None  # the client offered none
    server.events()
    packets = some_packets(200)
    client.send_packets(packets)
    pipe.pump()
    assert packets_of(server.events()) == packets
    client.close()
    pipe.pump()
    assert client.events()[-1] == ConnectionClosed(None, "", clean=True)
    assert server.events()[-1] == ConnectionClosed(None, "", clean=True)


def test_no_common_alpn_gives_none(certs: Certs, server_ctx: ssl.SSLContext) -> None:
    ctx = client_context(ca_data=certs.cert_pem, alpn=["h2"])
    client, server, pipe = make_pair(ctx, server_ctx)
    pipe.start()
    for machine in (client, server):
        (event,) = machine.events()
        assert isinstance(event, ConnectionEstablished)
        assert event.alpn is None


def assert_handshake_failed(client: TlsMachine, server: TlsMachine, code: str) -> None:
    events = client.events()
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    error = error_of(events)
    assert isinstance(error, TransportConnectionError)
    assert error.error_code == code
    assert not error.retryable
    assert isinstance(error.__cause__, ssl.SSLError)
    closed = events[-1]
    assert isinstance(closed, ConnectionClosed)
    assert not closed.clean and closed.error is error
    assert client.write_closed and client.is_closed
    assert client.inner.state is MachineState.IDLE  # never started
    # The client's alert reached the server, which learns that its certificate was refused.
    server_events = server.events()
    assert kinds(server_events) == [ErrorOccurred, ConnectionClosed]
    assert error_of(server_events).error_code == "connection.tls_verification"
    assert server.is_closed
    with pytest.raises(TransportConnectionError) as info:
        client.send_packet(Packet())
    assert info.value.error_code == "connection.closed"
    with pytest.raises(TransportConnectionError):
        client.send_packets([Packet()])
    assert client.next_deadline() is None
    client.handle_timer(100.0)
    client.close()
    assert client.events() == []


def test_untrusted_certificate_fails_verification(certs: Certs, server_ctx: ssl.SSLContext) -> None:
    ctx = client_context(ca_data=certs.other_pem)
    client, server, pipe = make_pair(ctx, server_ctx)
    pipe.start()
    assert_handshake_failed(client, server, "connection.tls_verification")


def test_host_name_mismatch_fails_verification(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, pipe = make_pair(client_ctx, server_ctx, hostname="wrong.example")
    pipe.start()
    assert_handshake_failed(client, server, "connection.tls_verification")


def test_verification_can_be_turned_off(server_ctx: ssl.SSLContext) -> None:
    ctx = client_context(verify=False, alpn=[ALPN])
    assert ctx.verify_mode is ssl.CERT_NONE and not ctx.check_hostname
    client, server, pipe = open_pair(ctx, server_ctx, hostname=None)  # type: ignore[arg-type]
    client.send_packet(Packet(payload=b"unauthenticated but encrypted"))
    pipe.pump()
    assert packets_of(server.events()) == [Packet(payload=b"unauthenticated but encrypted")]


def test_handshake_garbage_fails_the_handshake(server_ctx: ssl.SSLContext) -> None:
    server = TlsMachine(TcpMachine(is_client=False), server_ctx)
    server.start(0.0)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", 0.0)
    events = server.events()
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    error = error_of(events)
    assert error.error_code == "connection.tls_handshake"
    assert not error.retryable
    assert server.write_closed
    server.data_to_send()  # an alert, if OpenSSL wrote one; never raises
    server.receive_data(b"more", 1.0)
    server.receive_data(b"", 1.0)
    assert server.events() == []


def test_eof_during_handshake(client_ctx: ssl.SSLContext) -> None:
    client = TlsMachine(TcpMachine(is_client=True), client_ctx, server_hostname="localhost")
    client.start(0.0)
    client.data_to_send()
    client.receive_data(b"", 1.0)
    events = client.events()
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    error = error_of(events)
    assert error.error_code == "connection.tls_handshake"
    assert error.retryable  # a peer that went away may come back
    assert client.write_closed


def test_handshake_timeout(client_ctx: ssl.SSLContext) -> None:
    client = TlsMachine(
        TcpMachine(is_client=True), client_ctx, server_hostname="localhost", handshake_timeout=3
    )
    assert client.next_deadline() is None
    client.handle_timer(50.0)  # not started: no timer
    client.start(10.0)
    assert client.next_deadline() == 13.0
    client.handle_timer(12.9)
    assert client.events() == []
    client.handle_timer(13.0)
    events = client.events()
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    error = error_of(events)
    assert isinstance(error, TransportTimeoutError)
    assert error.error_code == "timeout.handshake"
    assert error.duration == 3.0
    assert client.write_closed
    assert client.next_deadline() is None


def test_close_during_handshake_abandons_it(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, pipe = make_pair(client_ctx, server_ctx)
    client.start(0.0)
    client.close(reason="changed my mind")
    assert client.events() == [
        CloseStarted(None, "changed my mind", by_peer=False),
        ConnectionClosed(None, "changed my mind", clean=False),
    ]
    assert client.write_closed and client.is_closed
    with pytest.raises(TransportConnectionError):
        client.send_packet(Packet())
    client.close()
    assert client.events() == []
    server.start(0.0)
    pipe.pump()  # the server sees the ClientHello, then EOF
    assert error_of(server.events()).error_code == "connection.tls_handshake"


@pytest.mark.parametrize("handshake_done", [False, True])
def test_connection_lost(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, handshake_done: bool
) -> None:
    client, _server, pipe = make_pair(client_ctx, server_ctx)
    if handshake_done:
        pipe.start()
        client.events()
    else:
        client.start(0.0)
    client.connection_lost(1.0)
    events = client.events()
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    assert error_of(events).error_code == "connection.reset"
    assert client.is_closed
    client.connection_lost(2.0)
    assert client.events() == []


def test_bad_settings_are_refused(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> None:
    with pytest.raises(ConfigurationError) as info:
        TlsMachine(TcpMachine(is_client=True), client_ctx)  # checks host names: needs one
    assert info.value.field == "server_hostname"
    with pytest.raises(ConfigurationError):
        TlsMachine(TcpMachine(is_client=False), server_ctx, server_hostname="localhost")
    with pytest.raises(ConfigurationError) as info:
        TlsMachine(TcpMachine(is_client=False), server_ctx, handshake_timeout=0)
    assert info.value.field == "handshake_timeout"
    unverified = client_context(verify=False)
    for bad_name in ("", ".leading.dot", "nul\x00byte"):
        with pytest.raises(ConfigurationError) as info:
            TlsMachine(TcpMachine(is_client=True), unverified, server_hostname=bad_name)
        assert info.value.field == "server_hostname"
    with pytest.raises(ConfigurationError) as info:
        TlsMachine(TcpMachine(is_client=True), server_ctx)  # a server context for a client
    assert info.value.field == "context"


# --- data --------------------------------------------------------------------------------------


def test_packets_sent_before_the_handshake_wait_for_it(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, pipe = make_pair(client_ctx, server_ctx)
    early = some_packets(10)
    client.send_packets(early[:5])
    for packet in early[5:]:
        client.send_packet(packet)
    pipe.start()
    client.events()
    events = server.events()
    assert isinstance(events[0], ConnectionEstablished)
    assert packets_of(events) == early


def test_thousands_of_packets_both_ways(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, pipe = open_pair(client_ctx, server_ctx)
    requests = some_packets(3000)
    client.send_packets(requests)
    pipe.pump()
    got = packets_of(server.events())
    assert got == requests
    replies = [Packet(PacketType.RESPONSE, p.message_id, payload=b"ok:" + p.payload) for p in got]
    for i, reply in enumerate(replies):
        server.send_packet(reply)
        if i % 250 == 0:
            pipe.pump()
    pipe.pump()
    assert packets_of(client.events()) == replies


def test_large_payload_is_decrypted_into_its_own_buffer(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, pipe = open_pair(client_ctx, server_ctx)
    big = os.urandom(2 * 1024 * 1024)
    client.send_packets([Packet(message_id=1, payload=big), Packet(message_id=2, payload=b"x")])
    pipe.pump()
    first, second = packets_of(server.events())
    assert isinstance(first.payload, memoryview)
    assert first.payload == big
    assert second.payload == b"x"


def test_ciphertext_through_get_buffer(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, _pipe = open_pair(client_ctx, server_ctx)
    packets = some_packets(100)
    client.send_packets(packets)
    data = ciphertext(client)
    pos = 0
    while pos < len(data):
        buf = server.get_buffer(-1)
        n = min(len(buf), len(data) - pos, 7000)
        buf[:n] = data[pos : pos + n]
        pos += n
        server.buffer_updated(n, 0.0)
    server.buffer_updated(0, 0.0)
    assert packets_of(server.events()) == packets


class LateOpening(TcpMachine):
    """An inner machine with a handshake of its own (as WebSocket has): it opens on the first
    bytes it receives, and reports a protocol-specific event before that."""

    def start(self, now: float) -> None:
        self.state = MachineState.HANDSHAKING
        self._events.append(CloseStarted(None, "not really", by_peer=False))

    def _open(self) -> None:
        if self.state is MachineState.HANDSHAKING:
            self.state = MachineState.OPEN
            self._events.append(ConnectionEstablished(Protocol.WEBSOCKET, path="/"))

    def receive_data(self, data: Buffer, now: float) -> None:
        self._open()
        super().receive_data(data, now)

    def buffer_updated(self, nbytes: int, now: float) -> None:
        self._open()
        super().buffer_updated(nbytes, now)


def test_inner_handshake_after_tls(certs: Certs, server_ctx: ssl.SSLContext) -> None:
    ctx = client_context(ca_data=certs.cert_pem)
    client = TlsMachine(TcpMachine(is_client=True), ctx, server_hostname="localhost")
    server = TlsMachine(LateOpening(is_client=False), server_ctx)
    assert server.protocol is Protocol.TCP
    pipe = StreamPipe(client, server)
    pipe.start()
    client.events()
    (odd,) = server.events()
    assert isinstance(odd, CloseStarted)
    assert server.state is MachineState.HANDSHAKING  # TLS is done, the inner one is not
    client.send_packet(Packet(payload=b"hi"))
    pipe.pump()
    established, received = server.events()
    assert isinstance(established, ConnectionEstablished)
    assert established.tls and established.alpn is None and established.path == "/"
    assert established.protocol is Protocol.WEBSOCKET
    assert isinstance(received, PacketReceived)
    assert server.state is MachineState.OPEN


# --- closing -----------------------------------------------------------------------------------


def test_close_notify_clean_close(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> None:
    client, server, pipe = open_pair(client_ctx, server_ctx)
    client.send_packet(Packet(payload=b"bye"))
    client.close(reason="done")
    assert client.state is MachineState.CLOSING
    assert not client.write_closed  # not until close_notify is queued
    out = ciphertext(client)
    assert client.write_closed
    server.receive_data(out, 0.0)
    events = server.events()
    assert packets_of(events) == [Packet(payload=b"bye")]
    assert kinds(events) == [CloseStarted, ConnectionClosed]
    assert events[-1] == ConnectionClosed(None, "", clean=True)
    assert server.is_closed
    server.receive_data(b"ignored after close_notify", 0.0)
    back = ciphertext(server)  # the server's close_notify
    assert server.write_closed
    client.receive_data(back, 0.0)
    assert client.events() == [
        CloseStarted(None, "done", by_peer=False),
        ConnectionClosed(None, "done", clean=True),
    ]
    assert client.is_closed
    pipe.pump()
    client.close()
    assert client.events() == []


def test_half_close_server_packets_still_arrive(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, pipe = open_pair(client_ctx, server_ctx)
    client.close()
    replies = some_packets(500)
    server.send_packets(replies)
    pipe.pump()
    events = client.events()
    assert packets_of(events) == replies
    assert events[-1] == ConnectionClosed(None, "", clean=True)
    assert server.events()[-1] == ConnectionClosed(None, "", clean=True)


def test_server_closes_first(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> None:
    client, server, pipe = open_pair(client_ctx, server_ctx)
    server.close()
    pipe.pump()
    assert client.events() == [
        CloseStarted(None, "", by_peer=True),
        ConnectionClosed(None, "", clean=True),
    ]
    assert server.events()[-1] == ConnectionClosed(None, "", clean=True)


def test_close_timeout_runs_in_the_inner_machine(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, _server, _pipe = open_pair(client_ctx, server_ctx)
    client.close()
    client.data_to_send()
    assert client.next_deadline() == 0.0  # asks for handle_timer() to start the close timer
    client.handle_timer(1.0)
    assert client.next_deadline() == 11.0
    client.handle_timer(11.0)
    events = client.events()
    assert kinds(events) == [CloseStarted, ErrorOccurred, ConnectionClosed]
    assert error_of(events).error_code == "timeout.close"
    assert client.is_closed


def test_raw_eof_between_packets_is_accepted(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, _pipe = open_pair(client_ctx, server_ctx)
    client.send_packet(Packet(payload=b"whole"))
    server.receive_data(ciphertext(client), 0.0)
    server.receive_data(b"", 0.0)  # FIN without close_notify, between records
    events = server.events()
    assert packets_of(events) == [Packet(payload=b"whole")]
    assert events[-1] == ConnectionClosed(None, "", clean=True)
    assert ciphertext(server)  # close_notify still goes out, then FIN
    assert server.write_closed


def test_raw_eof_inside_a_packet_is_an_unexpected_eof(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, _pipe = open_pair(client_ctx, server_ctx)
    client.send_packet(Packet(payload=os.urandom(100_000)))  # several records
    recs = records(ciphertext(client))
    assert len(recs) > 2
    server.receive_data(b"".join(recs[:2]), 0.0)
    server.receive_data(b"", 0.0)
    events = server.events()
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    error = error_of(events)
    assert isinstance(error, ProtocolError)
    assert error.error_code == "protocol.unexpected_eof"


@pytest.mark.parametrize("cut", [3, 5, 40])
def test_truncated_record_is_a_retryable_unexpected_eof(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, cut: int
) -> None:
    client, server, _pipe = open_pair(client_ctx, server_ctx)
    client.send_packet(Packet(payload=b"a packet that will not make it"))
    data = ciphertext(client)
    server.receive_data(data[:cut], 0.0)
    server.receive_data(b"", 0.0)
    events = server.events()
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    error = error_of(events)
    assert isinstance(error, ProtocolError)
    assert error.protocol is Protocol.TLS
    # The peer or the network died mid-record: a lost connection, so a client may reconnect.
    assert error.error_code == "protocol.unexpected_eof"
    assert error.retry_delay() == 1.0
    assert server.write_closed


def test_garbage_record_after_handshake(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, _pipe = open_pair(client_ctx, server_ctx)
    client.send_packet(Packet(payload=b"good"))
    good = ciphertext(client)
    bad = b"\x17\x03\x03\x00\x20" + b"z" * 32
    server.receive_data(good + bad, 0.0)
    events = server.events()
    assert packets_of(events) == [Packet(payload=b"good")]
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    error = error_of(events)
    assert isinstance(error, ProtocolError)
    assert error.error_code == "protocol.tls"
    assert isinstance(error.__cause__, ssl.SSLError)
    assert server.write_closed and server.is_closed
    alert = ciphertext(server)
    assert alert  # the alert OpenSSL queued for the peer
    with pytest.raises(TransportConnectionError):
        server.send_packet(Packet())
    server.receive_data(good, 1.0)
    server.receive_data(b"", 1.0)
    assert server.events() == []
    assert server.next_deadline() is None
    client.receive_data(alert, 0.0)
    assert error_of(client.events()).error_code == "protocol.tls"


def test_garbage_plaintext_is_the_inner_machines_protocol_error(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, _pipe = open_pair(client_ctx, server_ctx)
    client.send_packet(Packet(payload=b"good"))
    good = ciphertext(client)
    client.ssl_object.write(b"\x09" + bytes(40))  # valid TLS, invalid msgtrans
    client.ssl_object.write(Packet(payload=b"never read").encode())
    server.receive_data(good + ciphertext(client), 0.0)
    events = server.events()
    assert packets_of(events) == [Packet(payload=b"good")]
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    assert error_of(events).error_code == "protocol.bad_version"
    # The TLS session itself is fine: the server ends it with close_notify.
    client.receive_data(ciphertext(server), 0.0)
    assert server.write_closed
    assert client.events() == [
        CloseStarted(None, "", by_peer=True),
        ConnectionClosed(None, "", clean=True),
    ]


class FailingWrites:
    """Wraps an SSLObject; its write() or unwrap() fails as a broken session's would."""

    def __init__(self, real: ssl.SSLObject, fail: str) -> None:
        self._real = real
        self._fail = fail

    def write(self, data: Buffer) -> int:
        if self._fail == "write":
            raise ssl.SSLError(1, "simulated write failure")
        return self._real.write(data)

    def unwrap(self) -> None:
        if self._fail == "unwrap":
            raise ssl.SSLError(1, "simulated shutdown failure")
        self._real.unwrap()


def test_encrypt_failure_ends_the_connection(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, _server, _pipe = open_pair(client_ctx, server_ctx)
    client._ssl = FailingWrites(client._ssl, "write")  # type: ignore[assignment]
    client.send_packet(Packet(payload=b"doomed"))
    assert client.data_to_send() == []
    events = client.events()
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    assert error_of(events).error_code == "protocol.tls"
    assert client.write_closed


def test_encrypt_failure_after_a_clean_close(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, _pipe = open_pair(client_ctx, server_ctx)
    client.send_packet(Packet(payload=b"queued"))
    server.close()
    client.receive_data(ciphertext(server), 0.0)
    assert client.events()[-1] == ConnectionClosed(None, "", clean=True)
    client._ssl = FailingWrites(client._ssl, "write")  # type: ignore[assignment]
    assert client.data_to_send() == []
    assert client.write_closed
    assert client.events() == []  # nothing after ConnectionClosed


def test_shutdown_failure_still_closes(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, _server, _pipe = open_pair(client_ctx, server_ctx)
    client._ssl = FailingWrites(client._ssl, "unwrap")  # type: ignore[assignment]
    client.close()
    client.data_to_send()
    assert client.write_closed


# --- context helpers ---------------------------------------------------------------------------


def test_client_context_defaults() -> None:
    ctx = client_context()
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2


def test_client_context_sources(certs: Certs, server_ctx: ssl.SSLContext) -> None:
    der = ssl.PEM_cert_to_DER_cert(certs.cert_pem.decode())
    for ctx in (
        client_context(ca_file=certs.cert_file),
        client_context(ca_file=str(certs.cert_file), ca_data=certs.other_pem),
        client_context(ca_data=der),
    ):
        open_pair(ctx, server_ctx)


def test_context_errors(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        client_context(ca_file=tmp_path / "missing.pem")
    assert info.value.field == "ca_file"
    with pytest.raises(ConfigurationError) as info:
        client_context(ca_data="not a certificate")
    assert info.value.field == "ca_data"
    with pytest.raises(ConfigurationError) as info:
        client_context(alpn="msgtrans.v1")
    assert info.value.field == "alpn"
    with pytest.raises(ConfigurationError) as info:
        client_context(alpn=[""])
    assert info.value.field == "alpn"
    with pytest.raises(ConfigurationError) as info:
        server_context(tmp_path / "missing.pem", certs.key_file)
    assert info.value.field == "cert_file"
    _, other_key = generate_self_signed()
    (tmp_path / "other.key").write_bytes(other_key)
    with pytest.raises(ConfigurationError):
        server_context(certs.cert_file, tmp_path / "other.key")  # key does not match


# --- properties --------------------------------------------------------------------------------


def cutter(sizes: list[int]) -> Callable[[bytes], list[bytes]]:
    state = {"i": 0}

    def chunk(data: bytes) -> list[bytes]:
        out = []
        pos = 0
        while pos < len(data):
            size = sizes[state["i"] % len(sizes)]
            state["i"] += 1
            out.append(data[pos : pos + size])
            pos += size
        return out

    return chunk


def event_shape(events: list[Event]) -> list[object]:
    # Packets, and the event types; TLS details are the same whichever way bytes are cut.
    return [e.packet if isinstance(e, PacketReceived) else type(e) for e in events]


def conversation(
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    chunker: Callable[[bytes], list[bytes]] | None,
    packets: list[Packet],
) -> tuple[list[object], list[object]]:
    client, server, pipe = make_pair(client_ctx, server_ctx, chunker=chunker)
    client.send_packets(packets[:3])
    pipe.start()
    client.send_packets(packets[3:])
    pipe.pump()
    for packet in packets_of(server.events()):
        server.send_packet(packet)
    client.close()
    pipe.pump()
    return event_shape(client.events()), event_shape(server.events())


@settings(max_examples=50)
@given(
    packets=st.lists(
        st.builds(Packet, message_id=st.integers(0, 2**32 - 1), payload=st.binary(max_size=300)),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=10),
)
def test_cut_points_do_not_change_the_events(
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    packets: list[Packet],
    cuts: list[int],
) -> None:
    whole = conversation(client_ctx, server_ctx, None, packets)
    cut = conversation(client_ctx, server_ctx, cutter(cuts), packets)
    assert cut == whole
    client_events, server_events = whole
    assert [e for e in client_events if isinstance(e, Packet)] == packets  # echoed
    assert client_events[-1] is ConnectionClosed
    assert server_events[-1] is ConnectionClosed


@settings(max_examples=25)
@given(chunks=st.lists(st.binary(max_size=120), max_size=6), eof=st.booleans())
def test_arbitrary_bytes_never_raise(
    server_ctx: ssl.SSLContext, chunks: list[bytes], eof: bool
) -> None:
    server = TlsMachine(TcpMachine(is_client=False), server_ctx)
    server.start(0.0)
    for chunk in chunks:
        server.receive_data(chunk, 0.0)
        server.data_to_send()
    if eof:
        server.receive_data(b"", 0.0)
    events = server.events()
    assert all(isinstance(e, (ErrorOccurred, ConnectionClosed)) for e in events)
    closed = [i for i, e in enumerate(events) if isinstance(e, ConnectionClosed)]
    assert len(closed) <= 1
    if closed:
        assert closed[0] == len(events) - 1
    if eof:
        assert closed


def test_has_events_sees_the_inner_machines_events(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    client, server, pipe = open_pair(client_ctx, server_ctx)
    assert not client.has_events and not server.has_events
    client.send_packet(Packet(PacketType.ONE_WAY, 1, 0, b"hello"))
    assert not client.has_events  # queueing a packet emits nothing
    pipe.pump()
    assert server.has_events  # the packet, decoded by the inner TCP machine
    assert packets_of(server.events())[0].payload == b"hello"
    assert not server.has_events


# --- the operation a failed handshake reports -------------------------------------------------
# A failed TLS handshake says ``operation="handshake"``, as QUIC's does.
#
# Both sides of a refused handshake (the client that rejects the certificate, the server that
# hears the client's alert) and a peer that hangs up mid-handshake report the handshake as the
# operation, so an application that branches on ``error.operation`` treats ``tls://``, ``wss://``
# and ``quic://`` alike; the driver only fills in an operation an error lacks.


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("tls-op"))


def _pair(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext,
          hostname: str = "localhost") -> tuple[TlsMachine, TlsMachine, StreamPipe]:
    client = TlsMachine(TcpMachine(is_client=True), client_ctx, server_hostname=hostname)
    server = TlsMachine(TcpMachine(is_client=False), server_ctx)
    return client, server, StreamPipe(client, server, None)


def _error(events: list[Event]) -> TransportError:
    errors = [e.error for e in events if isinstance(e, ErrorOccurred)]
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize("case", ["untrusted", "wrong_name"])
def test_refused_certificate_is_a_handshake_failure_on_both_sides(
    cert_files: tuple[Path, Path], case: str
) -> None:
    cert, key = cert_files
    server_ctx = server_context(cert, key, alpn=[ALPN])
    if case == "untrusted":
        other_pem, _ = generate_self_signed()
        client_ctx = client_context(ca_data=other_pem, alpn=[ALPN])
        hostname = "localhost"
    else:
        client_ctx = client_context(ca_data=cert.read_bytes(), alpn=[ALPN])
        hostname = "wrong.example"
    client, server, pipe = _pair(client_ctx, server_ctx, hostname)
    pipe.start()
    for machine in (client, server):
        error = _error(machine.events())
        assert isinstance(error, TransportConnectionError)
        assert error.error_code == "connection.tls_verification"
        assert error.operation == "handshake"
        # The driver's enrichment fills in only what is missing: the operation stays.
        assert map_error(error, operation="receive", session_id=7).operation == "handshake"


def test_hang_up_during_the_handshake_is_a_handshake_failure(
    cert_files: tuple[Path, Path]
) -> None:
    cert, _ = cert_files
    client = TlsMachine(TcpMachine(is_client=True),
                        client_context(ca_data=cert.read_bytes(), alpn=[ALPN]),
                        server_hostname="localhost")
    client.start(0.0)
    client.receive_data(b"", 0.0)  # EOF before any server flight
    error = _error(client.events())
    assert error.error_code == "connection.tls_handshake"
    assert error.operation == "handshake"
