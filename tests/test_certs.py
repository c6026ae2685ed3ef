"""msgtrans.certs: self-signed certificates that TLS (ssl) and QUIC (aioquic) both accept."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
import sys
from pathlib import Path

import pytest
from aioquic.buffer import Buffer as QuicBuffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent
from aioquic.quic.packet import pull_quic_header
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from msgtrans.certs import DEFAULT_HOSTNAMES, generate_self_signed, write_self_signed
from msgtrans.core.errors import ConfigurationError
from msgtrans.core.events import ConnectionEstablished, PacketReceived
from msgtrans.core.memory import StreamPipe
from msgtrans.core.packet import Packet
from msgtrans.core.tcp import TcpMachine
from msgtrans.core.tls import TlsMachine, client_context, server_context


@pytest.fixture(scope="module")
def default_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("certs") / "nested" / "dir")


def load(cert_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert_pem)


def tls_handshake(
    cert_file: Path, key_file: Path, hostname: str, ctx: ssl.SSLContext | None = None
) -> ConnectionEstablished:
    ctx = ctx or client_context(ca_file=cert_file)
    client = TlsMachine(TcpMachine(is_client=True), ctx, server_hostname=hostname)
    server = TlsMachine(TcpMachine(is_client=False), server_context(cert_file, key_file))
    pipe = StreamPipe(client, server)
    pipe.start()
    client.send_packet(Packet(payload=b"over TLS"))
    pipe.pump()
    (event,) = client.events()
    assert isinstance(event, ConnectionEstablished)
    _established, received = server.events()
    assert isinstance(received, PacketReceived)
    assert received.packet.payload == b"over TLS"
    return event


def test_default_certificate(default_pair: tuple[Path, Path]) -> None:
    cert_file, key_file = default_pair
    assert cert_file.name == "cert.pem" and key_file.name == "key.pem"
    cert = load(cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == DEFAULT_HOSTNAMES[0]
    assert cert.issuer == cert.subject
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.not_valid_before_utc < now
    assert datetime.timedelta(days=364) < cert.not_valid_after_utc - now
    assert cert.not_valid_after_utc - now <= datetime.timedelta(days=365)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_key_file_is_private(default_pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, key_file = default_pair
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # An existing key file with a wider mode is narrowed when it is replaced.
    old_key = tmp_path / "key.pem"
    old_key.write_bytes(b"old")
    os.chmod(old_key, 0o644)
    cert_file, key_file = write_self_signed(tmp_path, ["example.test"], days=2)
    assert key_file == old_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    cert = load(cert_file.read_bytes())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < datetime.timedelta(days=3)


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
def test_tls_accepts_it_for_every_default_name(
    default_pair: tuple[Path, Path], hostname: str
) -> None:
    event = tls_handshake(*default_pair, hostname)
    assert event.tls_version == "TLSv1.3"


def test_strict_x509_verification_accepts_it(default_pair: tuple[Path, Path]) -> None:
    # Python 3.13's create_default_context() turns VERIFY_X509_STRICT on.
    ctx = client_context(ca_file=default_pair[0])
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    tls_handshake(*default_pair, "localhost", ctx)


@pytest.mark.parametrize(
    ("key_type", "key_class"),
    [("rsa", rsa.RSAPublicKey), ("ed25519", ed25519.Ed25519PublicKey)],
)
def test_other_key_types(tmp_path: Path, key_type: str, key_class: type) -> None:
    cert_file, key_file = write_self_signed(tmp_path, ["svc.internal"], key_type=key_type)
    assert isinstance(load(cert_file.read_bytes()).public_key(), key_class)
    tls_handshake(cert_file, key_file, "svc.internal")


def test_international_names_are_encoded() -> None:
    cert_pem, _ = generate_self_signed(["bücher.example", "*.wild.example"])
    san = load(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["xn--bcher-kva.example", "*.wild.example"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hostnames": []}, "hostnames"),
        ({"hostnames": "localhost"}, "hostnames"),
        ({"hostnames": [""]}, "hostnames"),
        ({"hostnames": ["two words"]}, "hostnames"),
        ({"hostnames": ["a..b"]}, "hostnames"),
        ({"days": 0}, "days"),
        ({"key_type": "dsa"}, "key_type"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        generate_self_signed(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


# --- QUIC: aioquic verifies with pyOpenSSL and service_identity, not the ssl module ---------------


def quic_handshake(cert_file: Path, key_file: Path, server_name: str) -> list[QuicEvent]:
    """Run an aioquic client and server in memory; return the client's events."""
    client_config = QuicConfiguration(
        is_client=True, alpn_protocols=["msgtrans.v1"], server_name=server_name
    )
    client_config.load_verify_locations(cadata=cert_file.read_bytes())
    server_config = QuicConfiguration(is_client=False, alpn_protocols=["msgtrans.v1"])
    server_config.load_cert_chain(cert_file, key_file)
    client_addr, server_addr = ("127.0.0.1", 50000), ("127.0.0.1", 4433)
    client = QuicConnection(configuration=client_config)
    client.connect(server_addr, now=0.0)
    server: QuicConnection | None = None
    events: list[QuicEvent] = []
    for _ in range(20):
        moved = False
        for data, _addr in client.datagrams_to_send(now=0.0):
            moved = True
            if server is None:
                header = pull_quic_header(QuicBuffer(data=data), host_cid_length=8)
                server = QuicConnection(
                    configuration=server_config,
                    original_destination_connection_id=header.destination_cid,
                )
            server.receive_datagram(data, client_addr, now=0.0)
        if server is not None:
            for data, _addr in server.datagrams_to_send(now=0.0):
                moved = True
                client.receive_datagram(data, server_addr, now=0.0)
        while (event := client.next_event()) is not None:
            events.append(event)
        if not moved:
            break
    # A failed handshake is reported once the closing period runs out.
    timer = client.get_timer()
    if timer is not None and not any(isinstance(e, HandshakeCompleted) for e in events):
        client.handle_timer(timer)
        while (event := client.next_event()) is not None:
            events.append(event)
    return events


def test_aioquic_accepts_it(default_pair: tuple[Path, Path]) -> None:
    events = quic_handshake(*default_pair, "localhost")
    completed = [e for e in events if isinstance(e, HandshakeCompleted)]
    assert completed and completed[0].alpn_protocol == "msgtrans.v1"


def test_aioquic_still_checks_the_name(default_pair: tuple[Path, Path]) -> None:
    events = quic_handshake(*default_pair, "elsewhere.example")
    assert not any(isinstance(e, HandshakeCompleted) for e in events)
    assert any(isinstance(e, ConnectionTerminated) for e in events)
