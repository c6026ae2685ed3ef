"""Connection configuration: client and server configs, TLS settings and URL parsing.

Every API that takes a configuration also takes a URL string::

    tcp://host:port          TcpConfig
    tls://host:port          TcpConfig with TlsConfig() (certificates verified)
    ws://host[:port]/path    WebSocketConfig (port 80 by default)
    wss://host[:port]/path   WebSocketConfig with TLS (port 443 by default)
    quic://host:port         QuicConfig

Query parameters set fields (``tls://example.com:9000?verify=false&ca=/etc/ca.pem``); see
docs/configuration.md.  Invalid values raise :class:`~msgtrans.core.errors.ConfigurationError`
naming the field and what would be valid.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlsplit

from .errors import ConfigurationError, Protocol
from .framing import DEFAULT_ZERO_COPY_THRESHOLD
from .packet import DEFAULT_LIMITS, Limits

__all__ = [
    "ALPN",
    "SUBPROTOCOL",
    "ConnectionConfig",
    "QuicConfig",
    "QuicServerConfig",
    "ServerConfig",
    "ServerTlsConfig",
    "TcpConfig",
    "TcpServerConfig",
    "TlsConfig",
    "WebSocketConfig",
    "WebSocketServerConfig",
    "parse_server_url",
    "parse_url",
    "to_config",
    "to_server_config",
]

#: The ALPN protocol msgtrans speaks over QUIC (and offers over TLS).
ALPN = "msgtrans.v1"
#: The WebSocket subprotocol msgtrans clients offer and servers echo.
SUBPROTOCOL = "msgtrans.v1"

# --- validation helpers -----------------------------------------------------------------------


def _parse_addr(value: Any, *, server: bool, name: str = "addr") -> tuple[str, int]:
    """Turn ``"host:port"``, ``"[v6]:port"`` or ``(host, port)`` into a checked tuple."""
    if isinstance(value, tuple):
        if len(value) < 2:
            raise ConfigurationError(name, f"must be (host, port), got {value!r}")
        host, port = value[0], value[1]
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            end = text.find("]")
            if end < 0 or not text[end + 1 :].startswith(":"):
                raise ConfigurationError(name, f"must be '[ipv6]:port', got {value!r}")
            host, port_text = text[1:end], text[end + 2 :]
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ConfigurationError(name, f"must be 'host:port', got {value!r}")
            if ":" in host:
                raise ConfigurationError(
                    name, f"an IPv6 address needs brackets: '[{host}]:{port_text}'"
                )
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigurationError(
                "port", f"must be a number, got {port_text!r} in {value!r}"
            ) from None
    else:
        raise ConfigurationError(name, f"must be 'host:port' or (host, port), got {value!r}")
    if not isinstance(host, str) or not host:
        raise ConfigurationError("host", f"must not be empty (in {value!r})")
    _check_port(port, server=server)
    return host, int(port)


def _check_port(port: Any, *, server: bool) -> None:
    low = 0 if server else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        what = "0..65535 (0 picks a free port)" if server else "1..65535"
        raise ConfigurationError("port", f"must be {what}, got {port!r}")


def _check_timeout(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
    if not ok:
        extra = " or None (never)" if optional else ""
        raise ConfigurationError(name, f"must be a finite number of seconds > 0{extra}, got "
                                 f"{value!r}")


def _check_positive_int(name: str, value: Any, *, optional: bool = False, low: int = 1) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        extra = " or None" if optional else ""
        raise ConfigurationError(name, f"must be an integer >= {low}{extra}, got {value!r}")


def _check_common(cfg: Any) -> None:
    if not isinstance(cfg.limits, Limits):
        raise ConfigurationError("limits", f"must be a Limits, got {cfg.limits!r}")
    _check_positive_int("zero_copy_threshold", cfg.zero_copy_threshold, optional=True)


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    out = []
    try:
        for name, val in items:
            if not isinstance(name, str) or not isinstance(val, str):
                raise ConfigurationError("headers", f"names and values must be str: {name!r}")
            if not name or any(c in name for c in "\r\n:") or any(c in val for c in "\r\n"):
                raise ConfigurationError(
                    "headers", f"header {name!r} has an empty name or a CR, LF or colon"
                )
            out.append((name, val))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError(
            "headers", f"must be a mapping or (name, value) pairs, got {value!r}"
        ) from None
    return tuple(out)


def _names(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        names = tuple(value)
    except TypeError:
        raise ConfigurationError(name, f"must be a sequence of str, got {value!r}") from None
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError(name, f"must be non-empty strings, got {value!r}")
    return names


def _host_port_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsConfig:
    """Client-side TLS for ``tls://`` and ``wss://``.

    Attributes:
        verify: verify the server's certificate and host name (default ``True``; turning it off
            is explicit and only for tests and first runs).
        ca_file: a PEM file of trusted certificates; when given (or *ca_data*), only these are
            trusted (default: the system's).
        ca_data: PEM text of trusted certificates, instead of or besides *ca_file*.
        cert_file: a client certificate (PEM), for servers that ask for one.
        key_file: the key of *cert_file*.
        server_name: the name to verify and send as SNI (default: the host connected to).
        alpn: ALPN protocols to offer (default none).

    Raises:
        ConfigurationError: a key without a certificate or the other way round.
    """

    verify: bool = True
    ca_file: str | None = None
    ca_data: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    alpn: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigurationError("cert_file", "cert_file and key_file go together")
        object.__setattr__(self, "alpn", _names("alpn", self.alpn))

    def client_context(self) -> ssl.SSLContext:
        """Build the ``ssl.SSLContext`` for a client (TLS 1.2 or newer).

        Raises:
            ConfigurationError: a certificate file could not be loaded.
        """
        # PROTOCOL_TLS_CLIENT verifies certificates and host names unless told otherwise.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if self.ca_file or self.ca_data:
                # A private CA replaces the system's rather than joining it.
                ctx.load_verify_locations(cafile=self.ca_file, cadata=self.ca_data)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError("ca_file", f"could not load certificates: {exc}") from exc
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.alpn:
            ctx.set_alpn_protocols(list(self.alpn))
        return ctx


@dataclass(frozen=True)
class ServerTlsConfig:
    """Server-side TLS: the certificate and key to present.

    Attributes:
        cert_file: the certificate chain (PEM).
        key_file: its private key (PEM).
        ca_file: when given, clients must present a certificate signed by these.
        alpn: ALPN protocols to accept (default none).

    Raises:
        ConfigurationError: *cert_file* or *key_file* is empty.
    """

    cert_file: str
    key_file: str
    ca_file: str | None = None
    alpn: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.cert_file:
            raise ConfigurationError("cert_file", "a server needs a certificate file")
        if not self.key_file:
            raise ConfigurationError("key_file", "a server needs a private key file")
        object.__setattr__(self, "alpn", _names("alpn", self.alpn))

    def server_context(self) -> ssl.SSLContext:
        """Build the ``ssl.SSLContext`` for a server (TLS 1.2 or newer).

        Raises:
            ConfigurationError: the certificate or key could not be loaded.
        """
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
            if self.ca_file:
                ctx.load_verify_locations(cafile=self.ca_file)
                ctx.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                "cert_file", f"could not load {self.cert_file} / {self.key_file}: {exc}"
            ) from exc
        if self.alpn:
            ctx.set_alpn_protocols(list(self.alpn))
        return ctx


# --- client configs ---------------------------------------------------------------------------


class _Endpoint:
    """Shared properties of configs that hold an ``addr``."""

    addr: tuple[str, int]

    @property
    def host(self) -> str:
        """The host part of :attr:`addr`."""
        return self.addr[0]

    @property
    def port(self) -> int:
        """The port part of :attr:`addr`."""
        return self.addr[1]


@dataclass(frozen=True)
class TcpConfig(_Endpoint):
    """Connect over TCP (``tcp://``), or TLS over TCP (``tls://``) when *tls* is set.

    Attributes:
        addr: ``"host:port"``, ``"[::1]:port"`` or ``(host, port)``.
        nodelay: disable Nagle's algorithm (default ``True``: messages leave at once).
        keepalive: enable TCP keepalive probes (default ``True``).
        tls: TLS settings, or ``None`` for plain TCP.
        connect_timeout: seconds allowed to connect, TLS included (default 10).
        limits: receive limits (default 16 MiB payload, 4 KiB ext header).
        zero_copy_threshold: payloads at least this large reach the application as views of
            the received memory (default 64 KiB; ``None`` always copies).

    Raises:
        ConfigurationError: a field is invalid; the error names it.
    """

    addr: Any
    nodelay: bool = True
    keepalive: bool = True
    tls: TlsConfig | None = None
    connect_timeout: float = 10.0
    limits: Limits = DEFAULT_LIMITS
    zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD

    def __post_init__(self) -> None:
        object.__setattr__(self, "addr", _parse_addr(self.addr, server=False))
        _check_timeout("connect_timeout", self.connect_timeout)
        if self.tls is not None and not isinstance(self.tls, TlsConfig):
            raise ConfigurationError("tls", f"must be a TlsConfig or None, got {self.tls!r}")
        _check_common(self)

    @property
    def protocol(self) -> Protocol:
        """Always :attr:`Protocol.TCP`."""
        return Protocol.TCP

    @property
    def url(self) -> str:
        """The ``tcp://`` or ``tls://`` URL of this config (without non-default query settings)."""
        scheme = "tls" if self.tls else "tcp"
        return f"{scheme}://{_host_port_text(*self.addr)}"


@dataclass(frozen=True)
class WebSocketConfig:
    """Connect over WebSocket (``ws://``), or over TLS (``wss://``).

    Attributes:
        url: the ``ws://`` or ``wss://`` URL to connect to.
        headers: extra HTTP headers for the handshake (a mapping or ``(name, value)`` pairs).
        subprotocols: subprotocols to offer (default ``("msgtrans.v1",)``).
        tls: TLS settings; for ``wss://`` URLs the default is ``TlsConfig()`` (verified).
        connect_timeout: seconds allowed to connect and complete the handshake (default 10).
        ping_interval: seconds of silence before a keepalive ping (default 20; ``None``: never).
        ping_timeout: seconds to wait for the pong (default 20; ``None``: forever).
        close_timeout: seconds to wait for the close handshake (default 10).
        limits: receive limits.
        zero_copy_threshold: as for :class:`TcpConfig`.

    Raises:
        ConfigurationError: a field is invalid; the error names it.
    """

    url: str
    headers: Any = ()
    subprotocols: tuple[str, ...] = (SUBPROTOCOL,)
    tls: TlsConfig | None = None
    connect_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 10.0
    limits: Limits = DEFAULT_LIMITS
    zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD

    def __post_init__(self) -> None:
        parts = _split_url(self.url)
        if parts.scheme not in ("ws", "wss"):
            raise ConfigurationError("url", f"must start with ws:// or wss://, got {self.url!r}")
        _url_host_port(parts, 443 if parts.scheme == "wss" else 80, server=False)
        object.__setattr__(self, "headers", _headers(self.headers))
        object.__setattr__(self, "subprotocols", _names("subprotocols", self.subprotocols))
        if parts.scheme == "wss" and self.tls is None:
            object.__setattr__(self, "tls", TlsConfig())
        if self.tls is not None and not isinstance(self.tls, TlsConfig):
            raise ConfigurationError("tls", f"must be a TlsConfig or None, got {self.tls!r}")
        _check_timeout("connect_timeout", self.connect_timeout)
        _check_timeout("ping_interval", self.ping_interval, optional=True)
        _check_timeout("ping_timeout", self.ping_timeout, optional=True)
        _check_timeout("close_timeout", self.close_timeout)
        _check_common(self)

    @property
    def secure(self) -> bool:
        """Whether the connection uses TLS (``wss://``)."""
        return urlsplit(self.url).scheme == "wss"

    @property
    def addr(self) -> tuple[str, int]:
        """``(host, port)`` to connect to."""
        parts = urlsplit(self.url)
        return _url_host_port(parts, 443 if parts.scheme == "wss" else 80, server=False)

    @property
    def host(self) -> str:
        """The host of :attr:`url`."""
        return self.addr[0]

    @property
    def port(self) -> int:
        """The port of :attr:`url` (80 or 443 when absent)."""
        return self.addr[1]

    @property
    def path(self) -> str:
        """The request target: path and query (default ``"/"``)."""
        parts = urlsplit(self.url)
        target = parts.path or "/"
        return f"{target}?{parts.query}" if parts.query else target

    @property
    def protocol(self) -> Protocol:
        """Always :attr:`Protocol.WEBSOCKET`."""
        return Protocol.WEBSOCKET


@dataclass(frozen=True)
class QuicConfig(_Endpoint):
    """Connect over QUIC (``quic://``): TLS 1.3 always, ALPN ``msgtrans.v1``.

    Attributes:
        addr: ``"host:port"``, ``"[::1]:port"`` or ``(host, port)``.
        server_name: the name to verify and send as SNI (default: the host).
        cert_verification: verify the server's certificate (default ``True``).
        ca_file: a PEM file of trusted certificates (default: the system's).
        alpn: ALPN protocols to offer (default ``("msgtrans.v1",)``).
        idle_timeout: seconds without traffic before the connection closes (default 30).
        connect_timeout: seconds allowed for the handshake (default 10).
        limits: receive limits.
        zero_copy_threshold: as for :class:`TcpConfig`.

    Raises:
        ConfigurationError: a field is invalid; the error names it.
    """

    addr: Any
    server_name: str | None = None
    cert_verification: bool = True
    ca_file: str | None = None
    alpn: tuple[str, ...] = (ALPN,)
    idle_timeout: float = 30.0
    connect_timeout: float = 10.0
    limits: Limits = DEFAULT_LIMITS
    zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD

    def __post_init__(self) -> None:
        object.__setattr__(self, "addr", _parse_addr(self.addr, server=False))
        object.__setattr__(self, "alpn", _names("alpn", self.alpn))
        if not self.alpn:
            raise ConfigurationError("alpn", "QUIC needs at least one ALPN protocol")
        if self.server_name is not None and not self.server_name:
            raise ConfigurationError("server_name", "must not be empty (None: use the host)")
        _check_timeout("idle_timeout", self.idle_timeout)
        _check_timeout("connect_timeout", self.connect_timeout)
        _check_common(self)

    @property
    def protocol(self) -> Protocol:
        """Always :attr:`Protocol.QUIC`."""
        return Protocol.QUIC

    @property
    def url(self) -> str:
        """The ``quic://`` URL of this config (without non-default query settings)."""
        return f"quic://{_host_port_text(*self.addr)}"


ConnectionConfig: TypeAlias = TcpConfig | WebSocketConfig | QuicConfig


# --- server configs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TcpServerConfig(_Endpoint):
    """Listen for TCP (or TLS over TCP when *tls* is set).

    Attributes:
        addr: where to listen (default ``"127.0.0.1:0"``: loopback, a free port).
        tls: the certificate to present, or ``None`` for plain TCP.
        backlog: the listen backlog (default 128).
        max_sessions: refuse connections beyond this many sessions (default: no limit).
        limits: receive limits.
        zero_copy_threshold: as for :class:`TcpConfig`.

    Raises:
        ConfigurationError: a field is invalid; the error names it.
    """

    addr: Any = "127.0.0.1:0"
    tls: ServerTlsConfig | None = None
    backlog: int = 128
    max_sessions: int | None = None
    limits: Limits = DEFAULT_LIMITS
    zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD

    def __post_init__(self) -> None:
        object.__setattr__(self, "addr", _parse_addr(self.addr, server=True))
        if self.tls is not None and not isinstance(self.tls, ServerTlsConfig):
            raise ConfigurationError("tls", f"must be a ServerTlsConfig or None, got {self.tls!r}")
        _check_positive_int("backlog", self.backlog)
        _check_positive_int("max_sessions", self.max_sessions, optional=True)
        _check_common(self)

    @property
    def protocol(self) -> Protocol:
        """Always :attr:`Protocol.TCP`."""
        return Protocol.TCP


@dataclass(frozen=True)
class WebSocketServerConfig(_Endpoint):
    """Listen for WebSocket (``wss`` when *tls* is set).

    Attributes:
        addr: where to listen (default ``"127.0.0.1:0"``).
        path: the request path to accept (default ``"/"``; ``None`` accepts any path); other
            paths get HTTP 404.
        subprotocols: subprotocols to accept (default ``("msgtrans.v1",)``); clients that offer
            none are accepted too.
        tls: the certificate to present, or ``None``.
        ping_interval: as for :class:`WebSocketConfig`.
        ping_timeout: as for :class:`WebSocketConfig`.
        close_timeout: as for :class:`WebSocketConfig`.
        max_sessions: refuse connections beyond this many sessions (HTTP 503).
        limits: receive limits.
        zero_copy_threshold: as for :class:`TcpConfig`.

    Raises:
        ConfigurationError: a field is invalid; the error names it.
    """

    addr: Any = "127.0.0.1:0"
    path: str | None = "/"
    subprotocols: tuple[str, ...] = (SUBPROTOCOL,)
    tls: ServerTlsConfig | None = None
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 10.0
    max_sessions: int | None = None
    limits: Limits = DEFAULT_LIMITS
    zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD

    def __post_init__(self) -> None:
        object.__setattr__(self, "addr", _parse_addr(self.addr, server=True))
        if self.path is not None and not self.path.startswith("/"):
            raise ConfigurationError("path", f"must start with '/' (or be None), got "
                                     f"{self.path!r}")
        object.__setattr__(self, "subprotocols", _names("subprotocols", self.subprotocols))
        if self.tls is not None and not isinstance(self.tls, ServerTlsConfig):
            raise ConfigurationError("tls", f"must be a ServerTlsConfig or None, got {self.tls!r}")
        _check_timeout("ping_interval", self.ping_interval, optional=True)
        _check_timeout("ping_timeout", self.ping_timeout, optional=True)
        _check_timeout("close_timeout", self.close_timeout)
        _check_positive_int("max_sessions", self.max_sessions, optional=True)
        _check_common(self)

    @property
    def protocol(self) -> Protocol:
        """Always :attr:`Protocol.WEBSOCKET`."""
        return Protocol.WEBSOCKET


@dataclass(frozen=True)
class QuicServerConfig(_Endpoint):
    """Listen for QUIC on a UDP port.

    Attributes:
        cert_file: the certificate chain to present (PEM); QUIC always needs one.
        key_file: its private key (PEM).
        addr: where to listen (default ``"127.0.0.1:0"``).
        alpn: ALPN protocols to accept (default ``("msgtrans.v1",)``).
        idle_timeout: seconds without traffic before a connection closes (default 30).
        max_sessions: refuse connections beyond this many sessions.
        limits: receive limits.
        zero_copy_threshold: as for :class:`TcpConfig`.

    Raises:
        ConfigurationError: a field is invalid; the error names it.
    """

    cert_file: str
    key_file: str
    addr: Any = "127.0.0.1:0"
    alpn: tuple[str, ...] = (ALPN,)
    idle_timeout: float = 30.0
    max_sessions: int | None = None
    limits: Limits = DEFAULT_LIMITS
    zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD

    def __post_init__(self) -> None:
        if not self.cert_file:
            raise ConfigurationError("cert_file", "a QUIC server needs a certificate file")
        if not self.key_file:
            raise ConfigurationError("key_file", "a QUIC server needs a private key file")
        object.__setattr__(self, "addr", _parse_addr(self.addr, server=True))
        object.__setattr__(self, "alpn", _names("alpn", self.alpn))
        if not self.alpn:
            raise ConfigurationError("alpn", "QUIC needs at least one ALPN protocol")
        _check_timeout("idle_timeout", self.idle_timeout)
        _check_positive_int("max_sessions", self.max_sessions, optional=True)
        _check_common(self)

    @property
    def protocol(self) -> Protocol:
        """Always :attr:`Protocol.QUIC`."""
        return Protocol.QUIC


ServerConfig: TypeAlias = TcpServerConfig | WebSocketServerConfig | QuicServerConfig

_CLIENT_TYPES = (TcpConfig, WebSocketConfig, QuicConfig)
_SERVER_TYPES = (TcpServerConfig, WebSocketServerConfig, QuicServerConfig)


# --- URLs -------------------------------------------------------------------------------------

_SCHEMES = "use tcp://, tls://, ws://, wss:// or quic://"


def _split_url(url: Any) -> Any:
    if not isinstance(url, str) or not url:
        raise ConfigurationError("url", f"must be a non-empty string, got {url!r}")
    try:
        return urlsplit(url.strip())
    except ValueError as exc:
        raise ConfigurationError("url", f"cannot parse {url!r}: {exc}") from None


def _url_host_port(parts: Any, default_port: int | None, *, server: bool) -> tuple[str, int]:
    host = parts.hostname
    if not host:
        raise ConfigurationError("host", f"must not be empty in {parts.geturl()!r}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            "port", f"must be {'0' if server else '1'}..65535 in {parts.geturl()!r}"
        ) from None
    if port is None:
        if default_port is None:
            raise ConfigurationError("port", f"is required in {parts.geturl()!r}")
        port = default_port
    _check_port(port, server=server)
    return host, port


def _bool(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(name, f"must be true or false, got {text!r}")


def _seconds(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigurationError(name, f"must be a number of seconds, got {text!r}") from None


def _query(parts: Any, allowed: Iterable[str]) -> dict[str, str]:
    allowed = set(allowed)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise ConfigurationError(
            "url", f"unknown query parameter(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(allowed)) or 'none'}",
        )
    return query


def parse_url(url: str) -> ConnectionConfig:
    """Parse a client URL into its config.

    ``tcp://host:port``, ``tls://host:port``, ``ws://host[:port]/path``, ``wss://...`` and
    ``quic://host:port``.  Query parameters: ``verify``, ``ca``, ``server_name`` (tls, wss,
    quic), ``nodelay`` (tcp, tls), ``connect_timeout`` (all but ws/wss, where the query is part of
    the request target), ``idle_timeout`` (quic).

    Raises:
        ConfigurationError: unknown scheme, bad host or port, unknown or invalid parameter.
    """
    parts = _split_url(url)
    scheme = parts.scheme.lower()
    if scheme in ("ws", "wss"):
        return WebSocketConfig(url.strip())
    if scheme in ("tcp", "tls"):
        addr = _url_host_port(parts, None, server=False)
        known = {"nodelay", "connect_timeout"}
        if scheme == "tls":
            known |= {"verify", "ca", "server_name"}
        q = _query(parts, known)
        tls = None
        if scheme == "tls":
            tls = TlsConfig(
                verify=_bool("verify", q.get("verify", "true")),
                ca_file=q.get("ca"),
                server_name=q.get("server_name"),
            )
        return TcpConfig(
            addr,
            nodelay=_bool("nodelay", q.get("nodelay", "true")),
            tls=tls,
            connect_timeout=_seconds("connect_timeout", q.get("connect_timeout", "10")),
        )
    if scheme == "quic":
        addr = _url_host_port(parts, None, server=False)
        q = _query(parts, {"verify", "ca", "server_name", "connect_timeout", "idle_timeout"})
        return QuicConfig(
            addr,
            server_name=q.get("server_name"),
            cert_verification=_bool("verify", q.get("verify", "true")),
            ca_file=q.get("ca"),
            idle_timeout=_seconds("idle_timeout", q.get("idle_timeout", "30")),
            connect_timeout=_seconds("connect_timeout", q.get("connect_timeout", "10")),
        )
    raise ConfigurationError("url", f"unknown scheme {parts.scheme!r} in {url!r}; {_SCHEMES}")


def parse_server_url(
    url: str, *, cert_file: str | None = None, key_file: str | None = None
) -> ServerConfig:
    """Parse a server URL (``tcp://``, ``tls://``, ``ws://``, ``wss://``, ``quic://``).

    The certificate and key for ``tls``, ``wss`` and ``quic`` come from the keyword arguments or
    the ``cert`` and ``key`` query parameters.  A ``ws``/``wss`` path is the accepted path.

    Raises:
        ConfigurationError: unknown scheme, bad address, or a missing certificate.
    """
    parts = _split_url(url)
    scheme = parts.scheme.lower()
    if scheme not in ("tcp", "tls", "ws", "wss", "quic"):
        raise ConfigurationError("url", f"unknown scheme {parts.scheme!r} in {url!r}; {_SCHEMES}")
    addr = _url_host_port(parts, None, server=True)
    q = _query(parts, {"cert", "key", "max_sessions"})
    cert = cert_file or q.get("cert")
    key = key_file or q.get("key")
    max_sessions = int(q["max_sessions"]) if q.get("max_sessions", "").isdigit() else None
    if "max_sessions" in q and max_sessions is None:
        raise ConfigurationError("max_sessions", f"must be an integer, got {q['max_sessions']!r}")
    tls = None
    if scheme in ("tls", "wss", "quic"):
        if not cert or not key:
            raise ConfigurationError(
                "cert_file", f"{scheme}:// needs a certificate and key (cert_file=, key_file=)"
            )
        tls = ServerTlsConfig(cert, key)
    if scheme in ("tcp", "tls"):
        return TcpServerConfig(addr, tls=tls, max_sessions=max_sessions)
    if scheme in ("ws", "wss"):
        return WebSocketServerConfig(
            addr, path=parts.path or "/", tls=tls, max_sessions=max_sessions
        )
    assert cert is not None and key is not None
    return QuicServerConfig(cert, key, addr=addr, max_sessions=max_sessions)


def to_config(target: str | ConnectionConfig) -> ConnectionConfig:
    """Return *target* if it is a client config, or parse it as a URL.

    Raises:
        ConfigurationError: *target* is neither a config nor a valid URL.
    """
    if isinstance(target, _CLIENT_TYPES):
        return target
    if isinstance(target, str):
        return parse_url(target)
    raise ConfigurationError(
        "config", f"must be a URL or a TcpConfig, WebSocketConfig or QuicConfig, got {target!r}"
    )


def to_server_config(target: str | ServerConfig) -> ServerConfig:
    """Return *target* if it is a server config, or parse it with :func:`parse_server_url`.

    Raises:
        ConfigurationError: *target* is neither a server config nor a valid URL.
    """
    if isinstance(target, _SERVER_TYPES):
        return target
    if isinstance(target, str):
        return parse_server_url(target)
    raise ConfigurationError(
        "config",
        f"must be a URL or a TcpServerConfig, WebSocketServerConfig or QuicServerConfig, got "
        f"{target!r}",
    )

