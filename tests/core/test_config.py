"""Connection configs, TLS settings and URL parsing."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.core.config import (
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
from msgtrans.core.errors import ConfigurationError, Protocol
from msgtrans.core.packet import Limits


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

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
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("certs")
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


# --- parsing ----------------------------------------------------------------------------------


def test_tcp_url_defaults() -> None:
    cfg = parse_url("tcp://127.0.0.1:9001")
    assert isinstance(cfg, TcpConfig)
    assert cfg.addr == ("127.0.0.1", 9001)
    assert (cfg.host, cfg.port) == ("127.0.0.1", 9001)
    assert cfg.nodelay and cfg.keepalive and cfg.tls is None
    assert cfg.connect_timeout == 10.0
    assert cfg.limits == Limits()
    assert cfg.protocol is Protocol.TCP
    assert cfg.url == "tcp://127.0.0.1:9001"


def test_tls_url_verifies_by_default() -> None:
    cfg = parse_url("tls://example.com:443")
    assert isinstance(cfg, TcpConfig) and cfg.tls is not None
    assert cfg.tls.verify
    ctx = cfg.tls.client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert cfg.url == "tls://example.com:443"


def test_tls_url_query_parameters(cert_pair: tuple[str, str]) -> None:
    cert, _ = cert_pair
    cfg = parse_url(f"tls://h:1?verify=false&ca={cert}&server_name=other&nodelay=0"
                    "&connect_timeout=2.5")
    assert isinstance(cfg, TcpConfig) and cfg.tls is not None
    assert not cfg.tls.verify and cfg.tls.ca_file == cert and cfg.tls.server_name == "other"
    assert not cfg.nodelay and cfg.connect_timeout == 2.5
    ctx = cfg.tls.client_context()
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_ws_urls() -> None:
    cfg = parse_url("ws://example.com/chat?room=1")
    assert isinstance(cfg, WebSocketConfig)
    assert cfg.addr == ("example.com", 80) and cfg.path == "/chat?room=1"
    assert not cfg.secure and cfg.tls is None
    assert cfg.subprotocols == ("msgtrans.v1",)
    assert cfg.protocol is Protocol.WEBSOCKET
    secure = parse_url("wss://[::1]/")
    assert isinstance(secure, WebSocketConfig)
    assert secure.addr == ("::1", 443) and secure.secure
    assert secure.tls == TlsConfig()
    assert parse_url("ws://h").path == "/"  # type: ignore[union-attr]


def test_quic_url() -> None:
    cfg = parse_url("quic://[::1]:4433?idle_timeout=5&verify=no&server_name=srv")
    assert isinstance(cfg, QuicConfig)
    assert cfg.addr == ("::1", 4433) and cfg.idle_timeout == 5.0
    assert not cfg.cert_verification and cfg.server_name == "srv"
    assert cfg.alpn == ("msgtrans.v1",)
    assert cfg.protocol is Protocol.QUIC
    assert cfg.url == "quic://[::1]:4433"


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("http://h:1", "url"),
        ("", "url"),
        ("tcp://:1", "host"),
        ("tcp://h:0", "port"),
        ("tcp://h:70000", "port"),
        ("tcp://h", "port"),
        ("tcp://h:1?bogus=1", "url"),
        ("tcp://h:1?verify=false", "url"),
        ("tcp://h:1?nodelay=maybe", "nodelay"),
        ("tcp://h:1?connect_timeout=soon", "connect_timeout"),
        ("tcp://h:1?connect_timeout=-1", "connect_timeout"),
        ("tcp://h:1?connect_timeout=nan", "connect_timeout"),
        ("tcp://h:1?connect_timeout=inf", "connect_timeout"),
        ("quic://h:1?idle_timeout=0", "idle_timeout"),
        ("quic://h", "port"),
        ("ws://:80/", "host"),
        ("ws://h:abc/", "port"),
    ],
)
def test_bad_urls_name_the_field(url: str, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url(url)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert info.value.error_code == "configuration.invalid"
    assert not info.value.is_retryable()


hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@given(host=hosts, port=st.integers(1, 65535))
def test_tcp_and_quic_round_trip_through_url(host: str, port: int) -> None:
    for cfg in (TcpConfig((host, port)), TcpConfig((host, port), tls=TlsConfig()),
                QuicConfig((host, port))):
        assert parse_url(cfg.url) == cfg


@given(
    host=hosts,
    port=st.integers(1, 65535),
    path=st.from_regex(r"(/[a-zA-Z0-9_.~-]{0,8}){0,3}", fullmatch=True),
    secure=st.booleans(),
)
def test_ws_round_trip(host: str, port: int, path: str, secure: bool) -> None:
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"{'wss' if secure else 'ws'}://{netloc}{path}"
    cfg = parse_url(url)
    assert isinstance(cfg, WebSocketConfig)
    assert cfg.addr == (host.lower() if ":" not in host else host, port) or cfg.port == port
    assert cfg.path == (path or "/")
    assert cfg.secure is secure
    assert parse_url(cfg.url) == cfg


# --- direct construction ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: TcpConfig("h"), "addr"),
        (lambda: TcpConfig("h:x"), "port"),
        (lambda: TcpConfig("::1:80"), "addr"),
        (lambda: TcpConfig("[::1]80"), "addr"),
        (lambda: TcpConfig(("h",)), "addr"),  # type: ignore[arg-type]
        (lambda: TcpConfig(42), "addr"),  # type: ignore[arg-type]
        (lambda: TcpConfig(("", 1)), "host"),
        (lambda: TcpConfig(("h", True)), "port"),
        (lambda: TcpConfig("h:1", connect_timeout=0), "connect_timeout"),
        (lambda: TcpConfig("h:1", tls="yes"), "tls"),  # type: ignore[arg-type]
        (lambda: TcpConfig("h:1", limits=5), "limits"),  # type: ignore[arg-type]
        (lambda: TcpConfig("h:1", zero_copy_threshold=0), "zero_copy_threshold"),
        (lambda: WebSocketConfig("tcp://h:1"), "url"),
        (lambda: WebSocketConfig("ws://h", headers={"X": "a\r\nb"}), "headers"),
        (lambda: WebSocketConfig("ws://h", headers={"": "a"}), "headers"),
        (lambda: WebSocketConfig("ws://h", headers={"X": 1}), "headers"),  # type: ignore[dict-item]
        (lambda: WebSocketConfig("ws://h", headers=5), "headers"),
        (lambda: WebSocketConfig("ws://h", subprotocols=("",)), "subprotocols"),
        (lambda: WebSocketConfig("ws://h", subprotocols=5), "subprotocols"),  # type: ignore[arg-type]
        (lambda: WebSocketConfig("ws://h", ping_interval=-1), "ping_interval"),
        (lambda: WebSocketConfig("ws://h", close_timeout=None), "close_timeout"),  # type: ignore[arg-type]
        (lambda: WebSocketConfig("ws://h", tls=1), "tls"),  # type: ignore[arg-type]
        (lambda: QuicConfig("h:1", alpn=()), "alpn"),
        (lambda: QuicConfig("h:1", server_name=""), "server_name"),
        (lambda: TcpServerConfig("h:-1"), "port"),
        (lambda: TcpServerConfig(backlog=0), "backlog"),
        (lambda: TcpServerConfig(max_sessions=0), "max_sessions"),
        (lambda: TcpServerConfig(tls=TlsConfig()), "tls"),  # type: ignore[arg-type]
        (lambda: WebSocketServerConfig(path="chat"), "path"),
        (lambda: WebSocketServerConfig(tls=TlsConfig()), "tls"),  # type: ignore[arg-type]
        (lambda: QuicServerConfig("", "k"), "cert_file"),
        (lambda: QuicServerConfig("c", ""), "key_file"),
        (lambda: QuicServerConfig("c", "k", alpn=()), "alpn"),
        (lambda: ServerTlsConfig("", "k"), "cert_file"),
        (lambda: ServerTlsConfig("c", ""), "key_file"),
        (lambda: TlsConfig(cert_file="c"), "cert_file"),
    ],
)
def test_invalid_fields_are_named(make: object, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make()  # type: ignore[operator]
    assert info.value.field == field, str(info.value)


def test_server_defaults_and_headers() -> None:
    tcp = TcpServerConfig()
    assert tcp.addr == ("127.0.0.1", 0) and tcp.backlog == 128 and tcp.max_sessions is None
    assert tcp.protocol is Protocol.TCP
    ws = WebSocketServerConfig("[::1]:0", path=None)
    assert ws.path is None and ws.protocol is Protocol.WEBSOCKET and ws.host == "::1"
    cfg = WebSocketConfig("ws://h/", headers={"X-Token": "abc"}, subprotocols="custom")
    assert cfg.headers == (("X-Token", "abc"),)
    assert cfg.subprotocols == ("custom",)
    assert WebSocketConfig("ws://h/", headers=[("A", "1"), ("B", "2")]).headers == (
        ("A", "1"), ("B", "2"))


def test_server_urls(cert_pair: tuple[str, str]) -> None:
    cert, key = cert_pair
    tcp = parse_server_url("tcp://0.0.0.0:0?max_sessions=10")
    assert isinstance(tcp, TcpServerConfig) and tcp.max_sessions == 10 and tcp.tls is None
    tls = parse_server_url("tls://127.0.0.1:0", cert_file=cert, key_file=key)
    assert isinstance(tls, TcpServerConfig) and tls.tls == ServerTlsConfig(cert, key)
    ws = parse_server_url(f"wss://127.0.0.1:0/chat?cert={cert}&key={key}")
    assert isinstance(ws, WebSocketServerConfig) and ws.path == "/chat" and ws.tls is not None
    quic = parse_server_url("quic://[::1]:0", cert_file=cert, key_file=key)
    assert isinstance(quic, QuicServerConfig) and quic.protocol is Protocol.QUIC
    assert quic.addr == ("::1", 0)
    assert parse_server_url("ws://127.0.0.1:0").path == "/"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("udp://h:1", "url"),
        ("quic://h:1", "cert_file"),
        ("tls://h:1", "cert_file"),
        ("tcp://h:1?max_sessions=many", "max_sessions"),
        ("tcp://h:1?what=1", "url"),
    ],
)
def test_bad_server_urls(url: str, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_server_url(url)
    assert info.value.field == field


def test_to_config_accepts_urls_and_configs() -> None:
    cfg = TcpConfig("h:1")
    assert to_config(cfg) is cfg
    assert to_config("tcp://h:1") == cfg
    with pytest.raises(ConfigurationError) as info:
        to_config(42)  # type: ignore[arg-type]
    assert info.value.field == "config"
    server = TcpServerConfig()
    assert to_server_config(server) is server
    assert to_server_config("tcp://127.0.0.1:0") == server
    with pytest.raises(ConfigurationError):
        to_server_config(cfg)  # type: ignore[arg-type]


# --- TLS contexts -----------------------------------------------------------------------------


def test_client_context_loads_ca_and_alpn(cert_pair: tuple[str, str]) -> None:
    cert, key = cert_pair
    ctx = TlsConfig(ca_file=cert, alpn=("msgtrans.v1",)).client_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.cert_store_stats()["x509"] == 1
    pem = Path(cert).read_text()
    assert TlsConfig(ca_data=pem).client_context().cert_store_stats()["x509"] == 1
    assert TlsConfig(cert_file=cert, key_file=key).client_context()
    with pytest.raises(ConfigurationError) as info:
        TlsConfig(ca_file="/nonexistent/ca.pem").client_context()
    assert info.value.field == "ca_file"


def test_server_context(cert_pair: tuple[str, str]) -> None:
    cert, key = cert_pair
    ctx = ServerTlsConfig(cert, key, alpn=("msgtrans.v1",)).server_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    mutual = ServerTlsConfig(cert, key, ca_file=cert).server_context()
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ConfigurationError) as info:
        ServerTlsConfig("/nonexistent.pem", key).server_context()
    assert info.value.field == "cert_file"
