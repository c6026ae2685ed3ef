"""Connection configs, TLS settings and URL parsing (msgtrans.core.config)."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import math
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.certs import write_self_signed
from msgtrans.core import config as core_config
from msgtrans.core.config import (
    ALPN,
    DEFAULT_ALPN,
    DEFAULT_SUBPROTOCOLS,
    LOOPBACK_DATAGRAM_SIZE,
    MAX_TIMEOUT,
    SUBPROTOCOL,
    QuicConfig,
    QuicServerConfig,
    ServerTlsConfig,
    TcpConfig,
    TcpServerConfig,
    TlsConfig,
    WebSocketConfig,
    WebSocketServerConfig,
    parse_server_url,
    parse_url,
    to_config,
    to_server_config,
)
from msgtrans.core.connection import client_connection, quic_endpoint
from msgtrans.core.errors import ConfigurationError, Protocol
from msgtrans.core.framing import DEFAULT_ZERO_COPY_THRESHOLD, QUIC_MAX_FRAME
from msgtrans.core.machine import MachineState
from msgtrans.core.memory import DatagramPipe
from msgtrans.core.packet import Limits
from msgtrans.core.quic import LOOPBACK_DATAGRAM_SIZE as MACHINE_LOOPBACK_SIZE
from msgtrans.core.quic import QuicMachine

# --- certificates ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    """A throwaway CA and a server certificate it signed, as PEM files."""

    ca_file: str
    ca_pem: bytes
    ca_der: bytes
    cert_file: str
    key_file: str
    combined_file: str  # certificate and key in one file
    other_key_file: str  # a key that does not match cert_file
    garbage_file: str  # exists, holds no PEM


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "msgtrans test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("pki")
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (d / "ca.pem").write_bytes(ca_pem)
    (d / "cert.pem").write_bytes(cert_pem)
    (d / "key.pem").write_bytes(key_pem(key))
    (d / "both.pem").write_bytes(cert_pem + key_pem(key))
    (d / "other.pem").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    (d / "garbage.pem").write_text("not a certificate\n")
    return Pki(
        ca_file=str(d / "ca.pem"),
        ca_pem=ca_pem,
        ca_der=ca.public_bytes(serialization.Encoding.DER),
        cert_file=str(d / "cert.pem"),
        key_file=str(d / "key.pem"),
        combined_file=str(d / "both.pem"),
        other_key_file=str(d / "other.pem"),
        garbage_file=str(d / "garbage.pem"),
    )


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, server_name: str) -> ssl.SSLObject:
    """Run a TLS handshake between two contexts in memory; return the client's SSLObject."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=server_name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return c
    raise AssertionError("handshake did not finish")


# --- parsing: every scheme and its defaults -------------------------------------------------------


def test_tcp_url_defaults() -> None:
    cfg = parse_url("tcp://127.0.0.1:9001")
    assert isinstance(cfg, TcpConfig)
    assert cfg == TcpConfig("127.0.0.1:9001")
    assert cfg.addr == ("127.0.0.1", 9001)
    assert (cfg.host, cfg.port) == ("127.0.0.1", 9001)
    assert cfg.nodelay is True and cfg.keepalive is True and cfg.tls is None
    assert cfg.connect_timeout == 10.0
    assert cfg.limits == Limits()
    assert cfg.zero_copy_threshold == DEFAULT_ZERO_COPY_THRESHOLD
    assert cfg.protocol is Protocol.TCP
    assert cfg.scheme == "tcp" and not cfg.secure and cfg.tls_server_name is None
    assert cfg.url == cfg.to_url() == "tcp://127.0.0.1:9001"


def test_tls_url_defaults() -> None:
    cfg = parse_url("tls://example.com:443")
    assert isinstance(cfg, TcpConfig)
    assert cfg.tls == TlsConfig()
    assert cfg.tls.verify and cfg.tls.ca_file is None and cfg.tls.alpn == ()
    assert cfg.protocol is Protocol.TCP
    assert cfg.scheme == "tls" and cfg.secure and cfg.tls_server_name == "example.com"
    assert cfg.url == "tls://example.com:443"


def test_ws_url_defaults() -> None:
    cfg = parse_url("ws://example.com/chat?room=1")
    assert isinstance(cfg, WebSocketConfig)
    assert cfg == WebSocketConfig("ws://example.com/chat?room=1")
    assert cfg.addr == ("example.com", 80) and cfg.host == "example.com" and cfg.port == 80
    assert cfg.path == "/chat?room=1"
    assert not cfg.secure and cfg.tls is None and cfg.scheme == "ws"
    assert cfg.tls_server_name is None
    assert cfg.headers == () and cfg.subprotocols == ("msgtrans.v1",)
    assert cfg.connect_timeout == 10.0 and cfg.close_timeout == 10.0
    assert cfg.ping_interval == 20.0 and cfg.ping_timeout == 20.0
    assert cfg.protocol is Protocol.WEBSOCKET
    assert cfg.url == cfg.to_url() == "ws://example.com/chat?room=1"


def test_wss_url_defaults() -> None:
    cfg = parse_url("wss://[::1]")
    assert isinstance(cfg, WebSocketConfig)
    assert cfg.addr == ("::1", 443) and cfg.path == "/"
    assert cfg.secure and cfg.scheme == "wss" and cfg.tls == TlsConfig()
    assert cfg.tls_server_name == "::1"
    assert cfg.url == "wss://[::1]/"


def test_quic_url_defaults() -> None:
    cfg = parse_url("quic://h.example:4433")
    assert isinstance(cfg, QuicConfig)
    assert cfg == QuicConfig("h.example:4433")
    assert cfg.addr == ("h.example", 4433)
    assert cfg.server_name is None and cfg.tls_server_name == "h.example"
    assert cfg.cert_verification is True and cfg.ca_file is None
    assert cfg.alpn == ("msgtrans.v1",) == DEFAULT_ALPN
    assert cfg.idle_timeout == 30.0 and cfg.connect_timeout == 10.0
    assert cfg.max_frame == QUIC_MAX_FRAME
    assert cfg.protocol is Protocol.QUIC and cfg.scheme == "quic" and cfg.secure
    assert cfg.url == "quic://h.example:4433"


def test_protocol_constants() -> None:
    assert ALPN == SUBPROTOCOL == "msgtrans.v1"
    assert DEFAULT_SUBPROTOCOLS == (SUBPROTOCOL,)


def test_scheme_is_case_insensitive_and_whitespace_is_ignored() -> None:
    assert parse_url("  TCP://h:1\n") == TcpConfig("h:1")
    assert parse_url("WSS://h/") == WebSocketConfig("wss://h/")


# --- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("h:1", ("h", 1)),
        (("h", 1), ("h", 1)),
        ("[::1]:80", ("::1", 80)),
        (("::1", 80), ("::1", 80)),
        ("[0:0:0::1]:80", ("::1", 80)),
        ("[fe80::1%25eth0]:80", ("fe80::1%eth0", 80)),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
        (("h", "80"), ("h", 80)),
        ("Example.COM:65535", ("Example.COM", 65535)),
        ("bücher.example:1", ("bücher.example", 1)),
    ],
)
def test_addr_forms(addr: Any, expected: tuple[str, int]) -> None:
    cfg = TcpConfig(addr)
    assert cfg.addr == expected
    assert (cfg.host, cfg.port) == expected
    assert parse_url(cfg.url) == cfg


def test_ipv6_urls() -> None:
    assert parse_url("tcp://[::1]:80").addr == ("::1", 80)
    assert parse_url("tcp://[::1]:80").url == "tcp://[::1]:80"
    assert parse_url("ws://[::1]:8080/x").url == "ws://[::1]:8080/x"
    assert parse_url("quic://[2001:db8::1]:443").addr == ("2001:db8::1", 443)
    zoned = parse_url("quic://[fe80::1%25eth0]:4433")
    assert zoned.host == "fe80::1%eth0"
    assert zoned.to_url() == "quic://[fe80::1%25eth0]:4433"


def test_server_addresses() -> None:
    assert TcpServerConfig().addr == ("127.0.0.1", 0)
    assert TcpServerConfig("0.0.0.0:0").port == 0
    assert TcpServerConfig("[::]:8080").host == "::"
    assert WebSocketServerConfig().addr == ("127.0.0.1", 0)


# --- query parameters ---------------------------------------------------------------------------


def test_tcp_query_parameters() -> None:
    cfg = parse_url("tcp://h:1?nodelay=0&keepalive=false&connect_timeout=2.5")
    assert cfg == TcpConfig("h:1", nodelay=False, keepalive=False, connect_timeout=2.5)


def test_tls_query_parameters() -> None:
    cfg = parse_url(
        "tls://h:1?verify=false&ca=/etc/ca.pem&server_name=other&cert=/c.pem&key=/k.pem&nodelay=1"
    )
    assert cfg == TcpConfig(
        "h:1",
        tls=TlsConfig(
            verify=False, ca_file="/etc/ca.pem", server_name="other", cert_file="/c.pem",
            key_file="/k.pem",
        ),
    )
    assert cfg.tls_server_name == "other"


@pytest.mark.parametrize(("text", "value"), [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True),
    ("0", False), ("false", False), ("False", False), ("no", False), ("off", False),
])
def test_boolean_parameters(text: str, value: bool) -> None:
    cfg = parse_url(f"tls://h:1?verify={text}")
    assert cfg.tls is not None and cfg.tls.verify is value  # type: ignore[union-attr]


def test_ws_query_belongs_to_the_target() -> None:
    cfg = parse_url("ws://h/a?x=1&&y=%20z&connect_timeout=3&verify_me=1")
    assert isinstance(cfg, WebSocketConfig)
    assert cfg.connect_timeout == 3.0
    assert cfg.path == "/a?x=1&y=%20z&verify_me=1"


def test_wss_query_parameters_are_taken_out_of_the_target() -> None:
    cfg = parse_url("wss://h:8443/s?key=API&verify=false&ca=/ca.pem&server_name=n&cert=c")
    assert isinstance(cfg, WebSocketConfig)
    assert cfg.tls == TlsConfig(verify=False, ca_file="/ca.pem", server_name="n")
    assert cfg.path == "/s?key=API&cert=c"  # cert and key are the application's here
    assert cfg.url == "wss://h:8443/s?key=API&cert=c"
    assert cfg.to_url() == "wss://h:8443/s?key=API&cert=c&verify=false&ca=/ca.pem&server_name=n"
    assert parse_url(cfg.to_url()) == cfg
    only = parse_url("wss://h/?verify=false")
    assert isinstance(only, WebSocketConfig)
    assert only.url == "wss://h/" and only.path == "/"


def test_ws_keeps_the_application_key_parameter() -> None:
    cfg = parse_url("ws://h/stream?key=abc")
    assert cfg.path == "/stream?key=abc"  # type: ignore[union-attr]


def test_quic_query_parameters() -> None:
    cfg = parse_url(
        "quic://[::1]:4433?idle_timeout=5&verify=no&server_name=srv&ca=/ca.pem&connect_timeout=1"
    )
    assert cfg == QuicConfig(
        "[::1]:4433", server_name="srv", cert_verification=False, ca_file="/ca.pem",
        idle_timeout=5, connect_timeout=1,
    )
    assert cfg.tls_server_name == "srv"


@pytest.mark.parametrize(
    ("cfg", "url"),
    [
        (TcpConfig("h:1", nodelay=False, keepalive=False, connect_timeout=0.5),
         "tcp://h:1?nodelay=0&keepalive=0&connect_timeout=0.5"),
        (TcpConfig("h:1", tls=TlsConfig(verify=False, ca_file="/ca.pem", cert_file="/c.pem",
                                        key_file="/k.pem", server_name="n")),
         "tls://h:1?verify=false&ca=/ca.pem&cert=/c.pem&key=/k.pem&server_name=n"),
        (QuicConfig("h:1", "n", False, ca_file="/ca.pem", connect_timeout=2, idle_timeout=60),
         "quic://h:1?verify=false&ca=/ca.pem&server_name=n&connect_timeout=2&idle_timeout=60"),
        (WebSocketConfig("wss://h/", tls=TlsConfig(verify=False), connect_timeout=1),
         "wss://h/?connect_timeout=1&verify=false"),
        (TcpServerConfig("0.0.0.0:9", tls=ServerTlsConfig("/c.pem", "/k.pem", ca_file="/ca.pem"),
                         nodelay=False, keepalive=False, backlog=5, handshake_timeout=3,
                         max_sessions=7),
         "tls://0.0.0.0:9?nodelay=0&keepalive=0&cert=/c.pem&key=/k.pem&ca=/ca.pem&backlog=5"
         "&handshake_timeout=3&max_sessions=7"),
        (WebSocketServerConfig("h:80", None), "ws://h/*"),
        (QuicServerConfig("h:0", "/c.pem", idle_timeout=1e-05, max_sessions=1),
         "quic://h:0?cert=/c.pem&idle_timeout=1e-05&max_sessions=1"),
    ],
)
def test_to_url_spells_out_non_default_settings(cfg: Any, url: str) -> None:
    assert cfg.to_url() == url
    parse = parse_server_url if "Server" in type(cfg).__name__ else parse_url
    assert parse(url) == cfg


def test_query_values_are_percent_decoded() -> None:
    cfg = parse_url("tls://h:1?ca=/my%20certs/ca.pem")
    assert cfg.tls is not None and cfg.tls.ca_file == "/my certs/ca.pem"  # type: ignore[union-attr]
    assert "ca=/my%20certs/ca.pem" in cfg.to_url()
    assert parse_url(cfg.to_url()) == cfg


# --- every validation error names its field ------------------------------------------------------

BAD_URLS = [
    ("http://h:1", "url"),
    ("", "url"),
    ("   ", "url"),
    ("h:1", "url"),
    ("tcp://h:1 x", "url"),
    ("tcp://h:1\x00", "url"),
    ("tcp://h:1#frag", "url"),
    ("tcp://user@h:1", "url"),
    ("tcp://h:1/path", "url"),
    ("tcp://:1", "host"),
    ("tcp://", "host"),
    ("tcp://h h:1", "url"),
    ("tcp://h/x:1", "url"),
    ("tcp://h!:1", "host"),
    ("tcp://[example.com]:1", "host"),
    ("tcp://[::1:1", "url"),
    ("tcp://[::1]x", "url"),
    ("tcp://[::g]:1", "host"),
    ("tcp://[fe80::1%25a/b]:1", "url"),
    ("tcp://[fe80::1%25a$b]:1", "host"),
    ("tcp://::1:80", "url"),
    ("tcp://h:0", "port"),
    ("tcp://h:70000", "port"),
    ("tcp://h:-1", "port"),
    ("tcp://h:+1", "port"),
    ("tcp://h:", "port"),
    ("tcp://h", "port"),
    ("tcp://h:1?bogus=1", "url"),
    ("tcp://h:1?verify=false", "url"),
    ("tcp://h:1?nodelay=maybe", "nodelay"),
    ("tcp://h:1?nodelay=1&nodelay=0", "nodelay"),
    ("tcp://h:1?connect_timeout=soon", "connect_timeout"),
    ("tcp://h:1?connect_timeout=-1", "connect_timeout"),
    ("tcp://h:1?connect_timeout=0", "connect_timeout"),
    ("tcp://h:1?connect_timeout=nan", "connect_timeout"),
    ("tcp://h:1?connect_timeout=inf", "connect_timeout"),
    ("tcp://h:1?connect_timeout=1e9", "connect_timeout"),
    ("tls://h:1?ca=", "ca"),
    ("tls://h:1?key=/k.pem", "key_file"),
    ("tls://h:1?server_name=a%20b", "server_name"),
    ("tls://h:1?idle_timeout=1", "url"),
    ("quic://h:1?idle_timeout=0", "idle_timeout"),
    ("quic://h:1?nodelay=0", "url"),
    ("quic://h:1?verify=perhaps", "verify"),
    ("quic://h", "port"),
    ("quic://h:1/x", "url"),
    ("ws://:80/", "host"),
    ("ws://h:abc/", "port"),
    ("ws://h:0/", "port"),
    ("ws://h/caf\u00e9", "path"),
    ("ws://h/?caf\u00e9=1", "path"),
    ("ws://h/?verify=false", "url"),
    ("ws://h/?connect_timeout=-2", "connect_timeout"),
    ("wss://h/?verify=sometimes", "verify"),
]


@pytest.mark.parametrize(("url", "field"), BAD_URLS)
def test_bad_urls_name_the_field(url: str, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url(url)
    error = info.value
    assert isinstance(error, ConfigurationError) and isinstance(error, ValueError)
    assert error.field == field, str(error)
    assert error.error_code == "configuration.invalid"
    assert not error.is_retryable()
    assert str(error).startswith(f"[configuration.invalid] {field}: ")


def test_bad_url_messages_say_what_is_valid() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url("http://h:1")
    assert info.value.reason == "unknown scheme 'http'; use tcp://, tls://, ws://, wss:// or quic://"
    with pytest.raises(ConfigurationError) as info:
        parse_url("tcp://h:70000")
    assert info.value.reason == "must be 1..65535, got 70000"
    with pytest.raises(ConfigurationError) as info:
        parse_url("tcp://h:1?bogus=1")
    assert "'bogus'" in info.value.reason and "nodelay" in info.value.reason
    with pytest.raises(ConfigurationError) as info:
        parse_url("tcp://h:1?verify=false")
    assert "tls://" in info.value.reason
    with pytest.raises(ConfigurationError) as info:
        parse_url("tcp://h")
    assert "tcp://h:PORT" in info.value.reason


def test_parse_url_refuses_non_strings() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url(b"tcp://h:1")  # type: ignore[arg-type]
    assert info.value.field == "url"


BAD_CONFIGS: list[tuple[Callable[[], object], str]] = [
    # addresses
    (lambda: TcpConfig("h"), "addr"),
    (lambda: TcpConfig("h:x"), "port"),
    (lambda: TcpConfig("::1:80"), "addr"),
    (lambda: TcpConfig("[::1]80"), "addr"),
    (lambda: TcpConfig("[::1]"), "addr"),
    (lambda: TcpConfig(("h",)), "addr"),  # type: ignore[arg-type]
    (lambda: TcpConfig(("h", 1, 2)), "addr"),  # type: ignore[arg-type]
    (lambda: TcpConfig(["h", 1]), "addr"),  # type: ignore[arg-type]
    (lambda: TcpConfig(42), "addr"),  # type: ignore[arg-type]
    (lambda: TcpConfig(("", 1)), "host"),
    (lambda: TcpConfig((None, 1)), "host"),  # type: ignore[arg-type]
    (lambda: TcpConfig(("a b", 1)), "host"),
    (lambda: TcpConfig(("x" * 256, 1)), "host"),
    (lambda: TcpConfig(("::zz", 1)), "host"),
    (lambda: TcpConfig(("fe80::1%", 1)), "host"),
    (lambda: TcpConfig(("a..b", 1)), "host"),
    (lambda: TcpConfig((".", 1)), "host"),
    (lambda: TcpConfig(("[::1]", 1)), "host"),
    (lambda: TcpConfig(("h", True)), "port"),
    (lambda: TcpConfig(("h", 1.5)), "port"),  # type: ignore[arg-type]
    (lambda: TcpConfig(("h", 0)), "port"),
    (lambda: TcpConfig(("h", 65536)), "port"),
    (lambda: TcpConfig(("h", "٣")), "port"),  # type: ignore[arg-type]
    (lambda: TcpServerConfig("h:-1"), "port"),
    (lambda: TcpServerConfig(("", 0)), "host"),
    # booleans, timeouts, numbers
    (lambda: TcpConfig("h:1", nodelay="false"), "nodelay"),  # type: ignore[arg-type]
    (lambda: TcpConfig("h:1", keepalive=1), "keepalive"),  # type: ignore[arg-type]
    (lambda: TcpConfig("h:1", connect_timeout=0), "connect_timeout"),
    (lambda: TcpConfig("h:1", connect_timeout=-1.0), "connect_timeout"),
    (lambda: TcpConfig("h:1", connect_timeout=math.nan), "connect_timeout"),
    (lambda: TcpConfig("h:1", connect_timeout=math.inf), "connect_timeout"),
    (lambda: TcpConfig("h:1", connect_timeout=MAX_TIMEOUT * 2), "connect_timeout"),
    (lambda: TcpConfig("h:1", connect_timeout=10**400), "connect_timeout"),
    (lambda: TcpConfig("h:1", connect_timeout=True), "connect_timeout"),
    (lambda: TcpConfig("h:1", connect_timeout="5"), "connect_timeout"),  # type: ignore[arg-type]
    (lambda: TcpConfig("h:1", connect_timeout=None), "connect_timeout"),  # type: ignore[arg-type]
    (lambda: TcpConfig("h:1", tls="yes"), "tls"),  # type: ignore[arg-type]
    (lambda: TcpConfig("h:1", tls=ServerTlsConfig("c")), "tls"),  # type: ignore[arg-type]
    (lambda: TcpConfig("h:1", limits=5), "limits"),  # type: ignore[arg-type]
    (lambda: TcpConfig("h:1", zero_copy_threshold=0), "zero_copy_threshold"),
    (lambda: TcpConfig("h:1", zero_copy_threshold=True), "zero_copy_threshold"),
    (lambda: TcpConfig("h:1", zero_copy_threshold="1"), "zero_copy_threshold"),  # type: ignore[arg-type]
    # WebSocket client
    (lambda: WebSocketConfig("tcp://h:1"), "url"),
    (lambda: WebSocketConfig(42), "url"),  # type: ignore[arg-type]
    (lambda: WebSocketConfig("ws://h/ x"), "url"),
    (lambda: WebSocketConfig("ws://h", headers={"X": "a\r\nb"}), "headers"),
    (lambda: WebSocketConfig("ws://h", headers={"X": "a\nb"}), "headers"),
    (lambda: WebSocketConfig("ws://h", headers={"X": "caf\u00e9"}), "headers"),
    (lambda: WebSocketConfig("ws://h", headers={"": "a"}), "headers"),
    (lambda: WebSocketConfig("ws://h", headers={"X\r\nY": "a"}), "headers"),
    (lambda: WebSocketConfig("ws://h", headers={"X:Y": "a"}), "headers"),
    (lambda: WebSocketConfig("ws://h", headers={"X": 1}), "headers"),  # type: ignore[arg-type]
    (lambda: WebSocketConfig("ws://h", headers=[("X",)]), "headers"),  # type: ignore[list-item]
    (lambda: WebSocketConfig("ws://h", headers=5), "headers"),  # type: ignore[arg-type]
    (lambda: WebSocketConfig("ws://h", headers="X: 1"), "headers"),  # type: ignore[arg-type]
    (lambda: WebSocketConfig("ws://h", headers={"Host": "other"}), "headers"),
    (lambda: WebSocketConfig("ws://h", headers={"sec-websocket-protocol": "x"}), "headers"),
    (lambda: WebSocketConfig("ws://h", subprotocols=("",)), "subprotocols"),
    (lambda: WebSocketConfig("ws://h", subprotocols=("a b",)), "subprotocols"),
    (lambda: WebSocketConfig("ws://h", subprotocols=(1,)), "subprotocols"),  # type: ignore[arg-type]
    (lambda: WebSocketConfig("ws://h", subprotocols=5), "subprotocols"),  # type: ignore[arg-type]
    (lambda: WebSocketConfig("ws://h", subprotocols=b"x"), "subprotocols"),  # type: ignore[arg-type]
    (lambda: WebSocketConfig("ws://h", ping_interval=-1), "ping_interval"),
    (lambda: WebSocketConfig("ws://h", ping_timeout=math.nan), "ping_timeout"),
    (lambda: WebSocketConfig("ws://h", close_timeout=None), "close_timeout"),  # type: ignore[arg-type]
    (lambda: WebSocketConfig("ws://h", connect_timeout=0), "connect_timeout"),
    (lambda: WebSocketConfig("ws://h", tls=1), "tls"),  # type: ignore[arg-type]
    (lambda: WebSocketConfig("ws://h", tls=TlsConfig()), "tls"),
    (lambda: WebSocketConfig("ws://h", limits=None), "limits"),  # type: ignore[arg-type]
    (lambda: WebSocketConfig("ws://h", zero_copy_threshold=-5), "zero_copy_threshold"),
    # QUIC client
    (lambda: QuicConfig("h:1", alpn=()), "alpn"),
    (lambda: QuicConfig("h:1", alpn=("",)), "alpn"),
    (lambda: QuicConfig("h:1", alpn=("x" * 256,)), "alpn"),
    (lambda: QuicConfig("h:1", alpn=("caf\u00e9",)), "alpn"),
    (lambda: QuicConfig("h:1", server_name=""), "server_name"),
    (lambda: QuicConfig("h:1", server_name="a/b"), "server_name"),
    (lambda: QuicConfig("h:1", cert_verification="no"), "cert_verification"),  # type: ignore[arg-type]
    (lambda: QuicConfig("h:1", ca_file=""), "ca_file"),
    (lambda: QuicConfig("h:1", idle_timeout=0), "idle_timeout"),
    (lambda: QuicConfig("h:1", max_frame=15), "max_frame"),
    (lambda: QuicConfig("h:1", max_frame=2**32), "max_frame"),
    (lambda: QuicConfig("h:0"), "port"),
    # servers
    (lambda: TcpServerConfig(backlog=0), "backlog"),
    (lambda: TcpServerConfig(backlog=70000), "backlog"),
    (lambda: TcpServerConfig(backlog="1"), "backlog"),  # type: ignore[arg-type]
    (lambda: TcpServerConfig(max_sessions=0), "max_sessions"),
    (lambda: TcpServerConfig(max_sessions=1.5), "max_sessions"),  # type: ignore[arg-type]
    (lambda: TcpServerConfig(handshake_timeout=0), "handshake_timeout"),
    (lambda: TcpServerConfig(nodelay=None), "nodelay"),  # type: ignore[arg-type]
    (lambda: TcpServerConfig(tls=TlsConfig()), "tls"),  # type: ignore[arg-type]
    (lambda: WebSocketServerConfig(path="chat"), "path"),
    (lambda: WebSocketServerConfig(path="/chat?x=1"), "path"),
    (lambda: WebSocketServerConfig(path="/*"), "path"),
    (lambda: WebSocketServerConfig(path="/a b"), "path"),
    (lambda: WebSocketServerConfig(path=5), "path"),  # type: ignore[arg-type]
    (lambda: WebSocketServerConfig(tls=TlsConfig()), "tls"),  # type: ignore[arg-type]
    (lambda: WebSocketServerConfig(subprotocols=("a,b",)), "subprotocols"),
    (lambda: WebSocketServerConfig(ping_interval=0), "ping_interval"),
    (lambda: WebSocketServerConfig(close_timeout=-1), "close_timeout"),
    (lambda: WebSocketServerConfig(max_sessions=-1), "max_sessions"),
    (lambda: QuicServerConfig("h:0"), "cert_file"),
    (lambda: QuicServerConfig("h:0", ""), "cert_file"),
    (lambda: QuicServerConfig("h:0", "c", ""), "key_file"),
    (lambda: QuicServerConfig("h:0", "c", alpn=()), "alpn"),
    (lambda: QuicServerConfig("h:0", "c", idle_timeout=math.inf), "idle_timeout"),
    (lambda: QuicServerConfig("h:0", "c", max_frame=0), "max_frame"),
    (lambda: QuicServerConfig("/tmp/cert.pem", "/tmp/key.pem"), "addr"),
    # TLS settings
    (lambda: ServerTlsConfig(""), "cert_file"),
    (lambda: ServerTlsConfig(None), "cert_file"),  # type: ignore[arg-type]
    (lambda: ServerTlsConfig("c", ""), "key_file"),
    (lambda: ServerTlsConfig("c", "k", ca_file="a\x00b"), "ca_file"),
    (lambda: ServerTlsConfig("c", alpn=5), "alpn"),  # type: ignore[arg-type]
    (lambda: TlsConfig(key_file="k"), "key_file"),
    (lambda: TlsConfig(verify="yes"), "verify"),  # type: ignore[arg-type]
    (lambda: TlsConfig(ca_data=""), "ca_data"),
    (lambda: TlsConfig(ca_data=5), "ca_data"),  # type: ignore[arg-type]
    (lambda: TlsConfig(cert_file=5), "cert_file"),  # type: ignore[arg-type]
    (lambda: TlsConfig(server_name="a b"), "server_name"),
    (lambda: TlsConfig(alpn=[""]), "alpn"),
]


@pytest.mark.parametrize(("make", "field"), BAD_CONFIGS)
def test_invalid_fields_are_named(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make()
    assert isinstance(info.value, ValueError)
    assert info.value.field == field, str(info.value)
    assert info.value.error_code == "configuration.invalid"


# --- construction -------------------------------------------------------------------------------


def test_headers_and_names() -> None:
    cfg = WebSocketConfig("ws://h/", headers={"X-Token": "abc"}, subprotocols="custom")
    assert cfg.headers == (("X-Token", "abc"),)
    assert cfg.subprotocols == ("custom",)
    pairs = WebSocketConfig("ws://h/", headers=[("A", "1"), ["B", "2\t3"]])  # type: ignore[list-item]
    assert pairs.headers == (("A", "1"), ("B", "2\t3"))
    assert WebSocketConfig("ws://h/", subprotocols=[]).subprotocols == ()
    assert WebSocketConfig("ws://h/", subprotocols=["a", "b"]).subprotocols == ("a", "b")
    assert QuicConfig("h:1", alpn="h3").alpn == ("h3",)
    assert TlsConfig(alpn=["a", "b"]).alpn == ("a", "b")


def test_websocket_url_is_normalised() -> None:
    assert WebSocketConfig("WS://h:80").url == "ws://h/"
    assert WebSocketConfig("wss://h:443/x?").url == "wss://h/x"
    assert WebSocketConfig("wss://h:80/x").url == "wss://h:80/x"
    assert WebSocketConfig("ws://h?a=1").path == "/?a=1"
    assert WebSocketConfig("ws://h:80/") == WebSocketConfig("ws://h/")
    assert WebSocketConfig("ws://[0::1]/").url == "ws://[::1]/"


def test_websocket_to_url_refuses_reserved_names_in_the_target() -> None:
    cfg = WebSocketConfig("wss://h/?verify=yes")  # the constructor takes the URL verbatim
    assert cfg.path == "/?verify=yes" and cfg.url == "wss://h/?verify=yes"
    with pytest.raises(ConfigurationError) as info:
        cfg.to_url()
    assert info.value.field == "url"


def test_websocket_to_url_adds_settings_to_an_existing_query() -> None:
    cfg = WebSocketConfig("ws://h/x?a=1", connect_timeout=2.5)
    assert cfg.to_url() == "ws://h/x?a=1&connect_timeout=2.5"
    assert parse_url(cfg.to_url()) == cfg


def test_configs_are_frozen_hashable_values() -> None:
    cfg = parse_url("wss://h/?verify=false")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.url = "ws://x/"  # type: ignore[misc]
    assert hash(cfg) == hash(parse_url("wss://h/?verify=false"))
    assert len({TcpConfig("h:1"), TcpConfig(("h", 1)), TcpConfig("h:2")}) == 2


def test_configs_survive_pickle_and_copy() -> None:
    import copy
    import pickle

    configs: list[object] = [
        parse_url("wss://h:8443/x?a=1&verify=false"),
        parse_url("tls://h:1?ca=/ca.pem"),
        QuicConfig("[::1]:1"),
        WebSocketServerConfig(path=None),
        QuicServerConfig("h:0", "c.pem"),
    ]
    for cfg in configs:
        assert pickle.loads(pickle.dumps(cfg)) == cfg
        assert copy.deepcopy(cfg) == cfg
    ws = pickle.loads(pickle.dumps(configs[0]))
    assert ws.path == "/x?a=1" and ws.addr == ("h", 8443)


def test_fully_qualified_host_names() -> None:
    assert TcpConfig("example.com.:1").host == "example.com."


def test_dataclasses_replace_revalidates() -> None:
    ws = WebSocketConfig("ws://h/x")
    changed = dataclasses.replace(ws, ping_interval=None)
    assert changed.ping_interval is None and changed.path == "/x" and changed.addr == ("h", 80)
    assert dataclasses.replace(TcpConfig("h:1"), nodelay=False).nodelay is False
    with pytest.raises(ConfigurationError):
        dataclasses.replace(TcpConfig("h:1"), connect_timeout=-1)
    quic = dataclasses.replace(QuicServerConfig("h:0", "c"), max_sessions=3)
    assert quic.max_sessions == 3 and quic.cert_file == "c"


def test_paths_accept_pathlike(tmp_path: Path) -> None:
    cfg = TlsConfig(ca_file=tmp_path / "ca.pem")
    assert cfg.ca_file == str(tmp_path / "ca.pem")
    assert ServerTlsConfig(tmp_path / "c.pem").cert_file == str(tmp_path / "c.pem")


def test_repr_hides_inline_ca_data() -> None:
    assert "BEGIN" not in repr(TlsConfig(ca_data="-----BEGIN CERTIFICATE-----"))


def test_timeouts_are_floats_and_none_means_never() -> None:
    cfg = WebSocketConfig("ws://h/", connect_timeout=3, ping_interval=None, ping_timeout=None)
    assert isinstance(cfg.connect_timeout, float)
    assert cfg.ping_interval is None and cfg.ping_timeout is None
    assert TcpConfig("h:1", connect_timeout=MAX_TIMEOUT).connect_timeout == MAX_TIMEOUT
    assert TcpConfig("h:1", zero_copy_threshold=None).zero_copy_threshold is None


def test_server_defaults() -> None:
    tcp = TcpServerConfig()
    assert tcp.addr == ("127.0.0.1", 0) and tcp.host == "127.0.0.1" and tcp.port == 0
    assert tcp.tls is None and tcp.backlog == 4096 and tcp.max_sessions is None
    assert tcp.nodelay and tcp.keepalive and tcp.handshake_timeout == 10.0
    assert tcp.protocol is Protocol.TCP and tcp.scheme == "tcp" and not tcp.secure
    assert tcp.url == "tcp://127.0.0.1:0"
    ws = WebSocketServerConfig("[::1]:0")
    assert ws.path == "/" and ws.host == "::1" and ws.port == 0
    assert ws.subprotocols == ("msgtrans.v1",) and ws.tls is None
    assert ws.ping_interval == 20.0 and ws.ping_timeout == 20.0 and ws.close_timeout == 10.0
    assert ws.protocol is Protocol.WEBSOCKET and ws.scheme == "ws" and not ws.secure
    assert ws.url == "ws://[::1]:0/"
    assert WebSocketServerConfig(path=None).path is None
    quic = QuicServerConfig("0.0.0.0:4433", "c.pem", "k.pem")
    assert quic.host == "0.0.0.0" and quic.port == 4433
    assert QuicConfig("h:5").port == 5
    assert quic.alpn == ("msgtrans.v1",) and quic.idle_timeout == 30.0
    assert quic.max_frame == QUIC_MAX_FRAME and quic.max_sessions is None
    assert quic.protocol is Protocol.QUIC and quic.scheme == "quic" and quic.secure
    assert quic.url == "quic://0.0.0.0:4433?cert=c.pem&key=k.pem"
    assert QuicServerConfig(cert_file="c").addr == ("127.0.0.1", 0)


def test_server_tls_properties() -> None:
    tls = ServerTlsConfig("c.pem", "k.pem")
    tcp = TcpServerConfig(tls=tls)
    assert tcp.scheme == "tls" and tcp.secure
    ws = WebSocketServerConfig("0.0.0.0:443", "/chat", tls=tls)
    assert ws.scheme == "wss" and ws.secure
    assert ws.url == "wss://0.0.0.0/chat?cert=c.pem&key=k.pem"


# --- server URLs --------------------------------------------------------------------------------


def test_server_urls() -> None:
    tcp = parse_server_url("tcp://0.0.0.0:0?max_sessions=10&backlog=5&nodelay=0")
    assert tcp == TcpServerConfig("0.0.0.0:0", max_sessions=10, backlog=5, nodelay=False)
    tls = parse_server_url("tls://127.0.0.1:0?ca=/ca.pem", cert_file="/c.pem", key_file="/k.pem")
    assert tls == TcpServerConfig(
        "127.0.0.1:0", tls=ServerTlsConfig("/c.pem", "/k.pem", ca_file="/ca.pem")
    )
    ws = parse_server_url("wss://127.0.0.1:0/chat?cert=/c.pem&key=/k.pem&handshake_timeout=2")
    assert ws == WebSocketServerConfig(
        "127.0.0.1:0", "/chat", tls=ServerTlsConfig("/c.pem", "/k.pem"), handshake_timeout=2
    )
    quic = parse_server_url("quic://[::1]:0?idle_timeout=5", cert_file="/both.pem")
    assert quic == QuicServerConfig("[::1]:0", "/both.pem", idle_timeout=5)
    plain = parse_server_url("ws://127.0.0.1")
    assert isinstance(plain, WebSocketServerConfig)
    assert plain.path == "/" and plain.port == 80
    assert parse_server_url("wss://h/?cert=c").port == 443
    assert parse_server_url("ws://h:0/*").path is None  # type: ignore[union-attr]


BAD_SERVER_URLS = [
    ("udp://h:1", "url"),
    ("tcp://h", "port"),
    ("tcp://h:65536", "port"),
    ("tcp://:0", "host"),
    ("tcp://h:0/x", "url"),
    ("quic://h:1", "cert_file"),
    ("quic://h:1/x?cert=c", "url"),
    ("tls://h:1", "cert_file"),
    ("wss://h:1/", "cert_file"),
    ("tls://h:1?key=k", "cert_file"),
    ("tls://h:1?cert=", "cert"),
    ("tcp://h:1?cert=c", "url"),
    ("ws://h:1/?ca=c", "url"),
    ("quic://h:1?cert=c&ca=x", "url"),
    ("quic://h:1?cert=c&backlog=1", "url"),
    ("tcp://h:1?max_sessions=many", "max_sessions"),
    ("tcp://h:1?max_sessions=0", "max_sessions"),
    ("tcp://h:1?backlog=-1", "backlog"),
    ("tcp://h:1?handshake_timeout=nan", "handshake_timeout"),
    ("tcp://h:1?handshake_timeout=x", "handshake_timeout"),
    ("tcp://h:1?nodelay=2", "nodelay"),
    ("tcp://h:1?what=1", "url"),
    ("ws://h:1/?x=1", "url"),
    ("ws://h:1/a?b", "url"),
    ("ws://h:1/caf\u00e9", "path"),
    ("quic://h:1?cert=c&idle_timeout=-1", "idle_timeout"),
]


@pytest.mark.parametrize(("url", "field"), BAD_SERVER_URLS)
def test_bad_server_urls(url: str, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_server_url(url)
    assert info.value.field == field, str(info.value)
    assert isinstance(info.value, ValueError)


def test_server_certificate_arguments() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_server_url("tcp://h:0", cert_file="c.pem")
    assert info.value.field == "cert_file"
    with pytest.raises(ConfigurationError) as info:
        parse_server_url("ws://h:0", key_file="k.pem")
    assert info.value.field == "key_file"
    with pytest.raises(ConfigurationError) as info:
        parse_server_url("tls://h:0?cert=a.pem", cert_file="b.pem")
    assert info.value.field == "cert_file"
    with pytest.raises(ConfigurationError) as info:
        parse_server_url("tls://h:0?key=a.pem", cert_file="c.pem", key_file="b.pem")
    assert info.value.field == "key_file"
    mixed = parse_server_url("tls://h:0?key=k.pem", cert_file="c.pem")
    assert mixed.tls == ServerTlsConfig("c.pem", "k.pem")  # type: ignore[union-attr]


# --- round trips ----------------------------------------------------------------------------------

dns_names = st.from_regex(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?){0,3}",
    fullmatch=True,
)
hosts = st.one_of(
    dns_names,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
ports = st.integers(1, 65535)
server_ports = st.integers(0, 65535)
seconds = st.floats(min_value=1e-6, max_value=MAX_TIMEOUT, allow_nan=False, allow_infinity=False)
paths = st.from_regex(r"(/[A-Za-z0-9_.~!$'()*+,;=:@%-]{0,8}){1,3}", fullmatch=True)
file_paths = st.from_regex(r"/[A-Za-z0-9_. +%&=?#-]{1,12}(/[A-Za-z0-9_.-]{1,8}){0,2}",
                           fullmatch=True)
app_params = st.lists(
    st.tuples(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.from_regex(r"[A-Za-z0-9%.-]{0,6}",
                                                                          fullmatch=True)),
    max_size=3,
).filter(lambda ps: not {n for n, _ in ps} & {"verify", "ca", "server_name", "connect_timeout"})


@st.composite
def tls_configs(draw: st.DrawFn, *, client_cert: bool = True) -> TlsConfig:
    cert = draw(st.none() | file_paths) if client_cert else None
    return TlsConfig(
        verify=draw(st.booleans()),
        ca_file=draw(st.none() | file_paths),
        cert_file=cert,
        key_file=draw(st.none() | file_paths) if cert else None,
        server_name=draw(st.none() | dns_names),
    )


@st.composite
def connection_configs(draw: st.DrawFn) -> TcpConfig | WebSocketConfig | QuicConfig:
    kind = draw(st.sampled_from(["tcp", "tls", "ws", "wss", "quic"]))
    host, timeout = draw(hosts), draw(seconds)
    if kind in ("tcp", "tls"):
        return TcpConfig(
            (host, draw(ports)),
            nodelay=draw(st.booleans()),
            keepalive=draw(st.booleans()),
            connect_timeout=timeout,
            tls=draw(tls_configs()) if kind == "tls" else None,
        )
    if kind == "quic":
        return QuicConfig(
            (host, draw(ports)),
            server_name=draw(st.none() | dns_names),
            cert_verification=draw(st.booleans()),
            ca_file=draw(st.none() | file_paths),
            idle_timeout=draw(seconds),
            connect_timeout=timeout,
        )
    netloc = f"[{host}]" if ":" in host else host
    port = draw(st.none() | ports)
    query = "&".join(f"{n}={v}" for n, v in draw(app_params))
    url = f"{kind}://{netloc}{'' if port is None else f':{port}'}{draw(paths)}"
    url += f"?{query}" if query else ""
    return WebSocketConfig(
        url,
        connect_timeout=timeout,
        tls=draw(tls_configs(client_cert=False)) if kind == "wss" else None,
    )


@given(connection_configs())
def test_client_configs_round_trip_through_their_url(cfg: Any) -> None:
    assert parse_url(cfg.to_url()) == cfg
    assert to_config(cfg.to_url()) == cfg
    assert parse_url(cfg.to_url()).to_url() == cfg.to_url()


@given(host=hosts, port=ports, path=paths)
def test_default_configs_round_trip_through_url(host: str, port: int, path: str) -> None:
    for cfg in (
        TcpConfig((host, port)),
        TcpConfig((host, port), tls=TlsConfig()),
        QuicConfig((host, port)),
    ):
        assert parse_url(cfg.url) == cfg
        assert cfg.host == host  # hypothesis writes IPv6 addresses in canonical form already
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for scheme in ("ws", "wss"):
        ws = WebSocketConfig(f"{scheme}://{netloc}{path}")
        assert parse_url(ws.url) == ws
        assert ws.port == port and ws.path == path and ws.secure is (scheme == "wss")


@st.composite
def server_configs(draw: st.DrawFn) -> TcpServerConfig | WebSocketServerConfig | QuicServerConfig:
    kind = draw(st.sampled_from(["tcp", "tls", "ws", "wss", "quic"]))
    addr = (draw(hosts), draw(server_ports))
    max_sessions = draw(st.none() | st.integers(1, 10**6))
    if kind == "quic":
        return QuicServerConfig(
            addr, draw(file_paths), draw(st.none() | file_paths),
            idle_timeout=draw(seconds), max_sessions=max_sessions,
        )
    tls = None
    if kind in ("tls", "wss"):
        tls = ServerTlsConfig(
            draw(file_paths), draw(st.none() | file_paths), ca_file=draw(st.none() | file_paths)
        )
    common: dict[str, Any] = {
        "tls": tls,
        "backlog": draw(st.integers(1, 65535)),
        "handshake_timeout": draw(seconds),
        "max_sessions": max_sessions,
    }
    if kind in ("tcp", "tls"):
        return TcpServerConfig(
            addr, nodelay=draw(st.booleans()), keepalive=draw(st.booleans()), **common
        )
    # "/*" is the URL spelling of path=None, so it cannot be a literal server path.
    path = draw(st.none() | paths.filter(lambda p: p != "/*"))
    return WebSocketServerConfig(addr, path, **common)


@given(server_configs())
def test_server_configs_round_trip_through_their_url(cfg: Any) -> None:
    assert parse_server_url(cfg.to_url()) == cfg
    assert to_server_config(cfg.url) == cfg


# --- entry points -------------------------------------------------------------------------------


def test_to_config_accepts_urls_and_configs() -> None:
    cfg = TcpConfig("h:1")
    assert to_config(cfg) is cfg
    assert to_config("tcp://h:1") == cfg
    ws = WebSocketConfig("ws://h/")
    assert to_config(ws) is ws
    with pytest.raises(ConfigurationError) as info:
        to_config(42)  # type: ignore[arg-type]
    assert info.value.field == "config"
    with pytest.raises(ConfigurationError) as info:
        to_config(TcpServerConfig())  # type: ignore[arg-type]
    assert info.value.field == "config" and "server config" in info.value.reason


def test_to_server_config_accepts_urls_and_configs() -> None:
    server = TcpServerConfig()
    assert to_server_config(server) is server
    assert to_server_config("tcp://127.0.0.1:0") == server
    quic = to_server_config("quic://h:0", cert_file="c.pem", key_file="k.pem")
    assert quic == QuicServerConfig("h:0", "c.pem", "k.pem")
    with pytest.raises(ConfigurationError) as info:
        to_server_config(TcpConfig("h:1"))  # type: ignore[arg-type]
    assert info.value.field == "config" and "client config" in info.value.reason
    with pytest.raises(ConfigurationError) as info:
        to_server_config(None)  # type: ignore[arg-type]
    assert info.value.field == "config"
    with pytest.raises(ConfigurationError) as info:
        to_server_config(quic, cert_file="other.pem")
    assert info.value.field == "cert_file"
    with pytest.raises(ConfigurationError) as info:
        to_server_config(quic, key_file="other.pem")
    assert info.value.field == "key_file"


# --- TLS contexts -------------------------------------------------------------------------------


def test_client_context_verifies_by_default() -> None:
    ctx = TlsConfig().client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    tls = parse_url("tls://example.com:443").tls  # type: ignore[union-attr]
    assert tls is not None and tls.client_context().verify_mode == ssl.CERT_REQUIRED
    wss = parse_url("wss://example.com/").tls  # type: ignore[union-attr]
    assert wss is not None and wss.client_context().check_hostname


def test_client_context_without_verification() -> None:
    ctx = TlsConfig(verify=False).client_context()
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_client_context_trusts_only_the_given_cas(pki: Pki) -> None:
    ctx = TlsConfig(ca_file=pki.ca_file, alpn=("msgtrans.v1",)).client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] == 1
    for data in (pki.ca_pem.decode(), pki.ca_pem, pki.ca_der):
        assert TlsConfig(ca_data=data).client_context().cert_store_stats()["x509_ca"] == 1


def test_client_context_loads_a_client_certificate(pki: Pki) -> None:
    assert TlsConfig(cert_file=pki.cert_file, key_file=pki.key_file).client_context()
    assert TlsConfig(cert_file=pki.combined_file).client_context()


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda p: TlsConfig(ca_file="/nonexistent/ca.pem"), "ca_file"),
        (lambda p: TlsConfig(ca_file=p.garbage_file), "ca_file"),
        (lambda p: TlsConfig(ca_data="not pem"), "ca_data"),
        (lambda p: TlsConfig(ca_data=b"\x30\x03\x02\x01\x00"), "ca_data"),
        (lambda p: TlsConfig(cert_file="/nonexistent.pem"), "cert_file"),
        (lambda p: TlsConfig(cert_file=p.cert_file, key_file="/nonexistent.pem"), "key_file"),
        (lambda p: TlsConfig(cert_file=p.cert_file), "cert_file"),  # no key anywhere
        (lambda p: TlsConfig(cert_file=p.cert_file, key_file=p.other_key_file), "cert_file"),
    ],
)
def test_client_context_errors_name_the_file(make: Callable[[Pki], TlsConfig], field: str,
                                             pki: Pki) -> None:
    with pytest.raises(ConfigurationError) as info:
        make(pki).client_context()
    assert info.value.field == field, str(info.value)


def test_server_context_loads_the_certificate(pki: Pki) -> None:
    ctx = ServerTlsConfig(pki.cert_file, pki.key_file, alpn=("msgtrans.v1",)).server_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ServerTlsConfig(pki.combined_file).server_context()
    mutual = ServerTlsConfig(pki.cert_file, pki.key_file, ca_file=pki.ca_file).server_context()
    assert mutual.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda p: ServerTlsConfig("/nonexistent.pem", p.key_file), "cert_file"),
        (lambda p: ServerTlsConfig(p.cert_file, "/nonexistent.pem"), "key_file"),
        (lambda p: ServerTlsConfig(p.garbage_file, p.key_file), "cert_file"),
        (lambda p: ServerTlsConfig(p.cert_file, p.other_key_file), "cert_file"),
        (lambda p: ServerTlsConfig(p.cert_file, p.key_file, ca_file="/none.pem"), "ca_file"),
    ],
)
def test_server_context_errors_name_the_file(make: Callable[[Pki], ServerTlsConfig], field: str,
                                             pki: Pki) -> None:
    with pytest.raises(ConfigurationError) as info:
        make(pki).server_context()
    assert info.value.field == field, str(info.value)


def test_contexts_complete_a_handshake_and_negotiate_alpn(pki: Pki) -> None:
    server = ServerTlsConfig(pki.cert_file, pki.key_file, alpn=(ALPN,)).server_context()
    client = TlsConfig(ca_file=pki.ca_file, alpn=(ALPN,)).client_context()
    tls = handshake(client, server, "localhost")
    assert tls.selected_alpn_protocol() == ALPN
    assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_verification_refuses_the_wrong_name(pki: Pki) -> None:
    server = ServerTlsConfig(pki.cert_file, pki.key_file).server_context()
    client = TlsConfig(ca_file=pki.ca_file).client_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(client, server, "not-localhost.example")
    # ...and turning verification off is what lets it through.
    handshake(TlsConfig(verify=False).client_context(), server, "not-localhost.example")


def test_mutual_tls(pki: Pki) -> None:
    server = ServerTlsConfig(pki.cert_file, pki.key_file, ca_file=pki.ca_file).server_context()
    client = TlsConfig(
        ca_file=pki.ca_file, cert_file=pki.cert_file, key_file=pki.key_file
    ).client_context()
    handshake(client, server, "localhost")


# --- QUIC's datagram size and closing period, the URL cache -----------------------------------
# QUIC's ``loopback_datagram_size`` and ``closing_period`` as configuration, and the URL cache.
#
# Both settings are fields of :class:`QuicConfig` and :class:`QuicServerConfig` (checked when the
# config is made), query parameters of their URLs (written back by ``to_url`` when not at their
# defaults), and reach the machines through :func:`client_connection` and :func:`quic_endpoint`.


SIZES = st.none() | st.integers(1200, LOOPBACK_DATAGRAM_SIZE)
BAD_SIZES = (st.integers(max_value=1199) | st.integers(min_value=LOOPBACK_DATAGRAM_SIZE + 1)
             | st.booleans() | st.floats() | st.text(max_size=5))
TRUE_WORDS = ("true", "1", "yes", "on", "TRUE", "On")
FALSE_WORDS = ("false", "0", "no", "off", "False", "NO")


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("quic-options"))


def test_defaults_and_the_machines_limit_agree() -> None:
    assert LOOPBACK_DATAGRAM_SIZE == MACHINE_LOOPBACK_SIZE == 16384
    client = QuicConfig("127.0.0.1:4433")
    assert client.loopback_datagram_size == LOOPBACK_DATAGRAM_SIZE
    assert client.closing_period is False
    server = QuicServerConfig(cert_file="c.pem")
    assert server.loopback_datagram_size == LOOPBACK_DATAGRAM_SIZE
    assert server.closing_period is True
    # Defaults stay out of the URL.
    assert client.to_url() == "quic://127.0.0.1:4433"
    assert "closing_period" not in server.to_url()
    assert "loopback_datagram_size" not in server.to_url()


@given(size=SIZES, closing=st.booleans())
def test_client_fields_round_trip_through_the_url(size: int | None, closing: bool) -> None:
    config = QuicConfig("127.0.0.1:4433", loopback_datagram_size=size, closing_period=closing)
    assert config.loopback_datagram_size == size and config.closing_period is closing
    assert parse_url(config.to_url()) == config


@given(size=SIZES, closing=st.booleans())
def test_server_fields_round_trip_through_the_url(size: int | None, closing: bool) -> None:
    config = QuicServerConfig("127.0.0.1:0", "c.pem", loopback_datagram_size=size,
                              closing_period=closing)
    assert config.loopback_datagram_size == size and config.closing_period is closing
    assert parse_server_url(config.to_url()) == config


@given(bad=BAD_SIZES)
def test_bad_sizes_are_refused_by_name(bad: object) -> None:
    for make in (
        lambda: QuicConfig("h:1", loopback_datagram_size=bad),  # type: ignore[arg-type]
        lambda: QuicServerConfig(cert_file="c.pem",
                                 loopback_datagram_size=bad),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigurationError) as info:
            make()
        assert info.value.field == "loopback_datagram_size"
        assert "1200" in str(info.value) and "None" in str(info.value)


@given(bad=st.none() | st.integers() | st.text(max_size=5) | st.floats())
def test_closing_period_must_be_a_bool(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        QuicConfig("h:1", closing_period=bad)  # type: ignore[arg-type]
    assert info.value.field == "closing_period"
    with pytest.raises(ConfigurationError) as info:
        QuicServerConfig(cert_file="c.pem", closing_period=bad)  # type: ignore[arg-type]
    assert info.value.field == "closing_period"


@given(text=st.text(alphabet="0123456789noeNOE+-.x", min_size=0, max_size=7),
       word=st.sampled_from(TRUE_WORDS + FALSE_WORDS))
def test_query_parameters_parse_or_name_the_parameter(text: str, word: str) -> None:
    if text.lower() == "none":
        expected: int | str | None = None
    elif text.isascii() and text.isdigit() and 1200 <= int(text) <= LOOPBACK_DATAGRAM_SIZE:
        expected = int(text)
    else:
        expected = "error"
    closing = word in TRUE_WORDS
    client_url = f"quic://127.0.0.1:4433?loopback_datagram_size={text}&closing_period={word}"
    server_url = f"quic://127.0.0.1:0?cert=c.pem&loopback_datagram_size={text}"
    if expected == "error":
        for parse in (lambda: parse_url(client_url), lambda: parse_server_url(server_url)):
            with pytest.raises(ConfigurationError) as info:
                parse()
            assert info.value.field == "loopback_datagram_size"
        return
    client = parse_url(client_url)
    assert isinstance(client, QuicConfig)
    assert client.loopback_datagram_size == expected and client.closing_period is closing
    server = parse_server_url(server_url)
    assert isinstance(server, QuicServerConfig)
    assert server.loopback_datagram_size == expected and server.closing_period is True


@pytest.mark.parametrize("url", [
    "quic://127.0.0.1:4433?closing_period=maybe",
    "quic://127.0.0.1:0?cert=c.pem&closing_period=2",
])
def test_bad_closing_period_in_a_url(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        (parse_server_url if "cert=" in url else parse_url)(url)
    assert info.value.field == "closing_period"


@pytest.mark.parametrize("url", [
    "tcp://127.0.0.1:1?closing_period=true",
    "ws://127.0.0.1:1/?loopback_datagram_size=1200",  # kept in the request target instead
])
def test_the_parameters_belong_to_quic_only(url: str) -> None:
    if url.startswith("ws"):
        ws = parse_url(url)
        assert isinstance(ws, WebSocketConfig)
        assert "loopback_datagram_size=1200" in ws.path
    else:
        with pytest.raises(ConfigurationError):
            parse_url(url)


@settings(max_examples=10, deadline=None)
@given(size=SIZES, client_closing=st.booleans(), server_closing=st.booleans())
def test_settings_reach_the_machines(
    cert_files: tuple[Path, Path], size: int | None, client_closing: bool, server_closing: bool
) -> None:
    cert, key = cert_files
    server_config = QuicServerConfig("127.0.0.1:4433", cert, key,
                                     loopback_datagram_size=size, closing_period=server_closing)
    endpoint = quic_endpoint(server_config)
    conn = client_connection(
        QuicConfig("127.0.0.1:4433", ca_file=str(cert), loopback_datagram_size=size,
                   closing_period=client_closing),
        resolved=("127.0.0.1", 4433),
    )
    client = conn.machine
    assert isinstance(client, QuicMachine)
    assert client.loopback_datagram_size == size and client.closing_period is client_closing
    pipe = DatagramPipe(client, endpoint)
    client.start(0.0)
    pipe.pump(0.0)
    (server,) = endpoint.connections
    assert server.loopback_datagram_size == size and server.closing_period is server_closing
    opened = client.state  # a local: mypy would narrow client.state past the close
    assert opened is MachineState.OPEN
    client.close(0, "bye")
    pipe.pump(0.0)
    # Without a closing period the client is closed at once; with one it waits it out.
    assert (client.state is MachineState.CLOSED) is not client_closing


def test_parse_url_remembers_urls_but_not_failures() -> None:
    url = "quic://127.0.0.1:4433?idle_timeout=5&closing_period=on"
    first = parse_url(url)
    assert parse_url(url) is first  # remembered: configs are frozen, sharing is safe
    assert core_config._parse_url(url) == first  # and equal to a fresh parse
    for _ in range(2):
        with pytest.raises(ConfigurationError):
            parse_url("quic://127.0.0.1:4433?loopback_datagram_size=1")

    class Url(str):
        pass

    assert parse_url(Url(url)) == first  # a str subclass is parsed, not looked up


@given(ports=st.lists(st.integers(1, 65535), min_size=1, max_size=40))
def test_the_cache_answers_like_parsing(ports: list[int]) -> None:
    for port in ports:
        url = f"tcp://127.0.0.1:{port}?nodelay=0"
        assert parse_url(url) == core_config._parse_url(url)
    assert core_config._parse_url_cached.cache_info().currsize <= core_config._URL_CACHE_SIZE
