"""Connection configuration: client and server configs, TLS settings, and URLs that stand for them.

A client connects with one of three configs, together :data:`ConnectionConfig`:

* :class:`TcpConfig` for ``tcp://host:port`` (and ``tls://host:port`` with a :class:`TlsConfig`),
* :class:`WebSocketConfig` for ``ws://host[:port]/path`` and ``wss://...``,
* :class:`QuicConfig` for ``quic://host:port``.

A server listens with one of :class:`TcpServerConfig`, :class:`WebSocketServerConfig` and
:class:`QuicServerConfig`, together :data:`ServerConfig`; :class:`ServerTlsConfig` holds the
certificate of a ``tls://`` or ``wss://`` server.

Every API that takes a config also takes a URL string: :func:`to_config` and
:func:`to_server_config` turn either into a config (through :func:`parse_url` and
:func:`parse_server_url`), and every config's :meth:`~TcpConfig.to_url` gives a URL back that
parses to an equal config.

Configs are frozen, hashable values, checked when they are made: a bad value raises
:class:`~msgtrans.core.errors.ConfigurationError` (also a ``ValueError``, code
``configuration.invalid``) whose ``field`` names the setting and whose message says what would be
valid.  Nothing here touches the network; :meth:`TlsConfig.client_context` and
:meth:`ServerTlsConfig.server_context` read certificate files when they are called.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import numbers
import operator
import os
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeAlias
from urllib.parse import quote, unquote

from .errors import ConfigurationError, Protocol
from .framing import DEFAULT_ZERO_COPY_THRESHOLD, QUIC_MAX_FRAME
from .packet import DEFAULT_LIMITS, HEADER_SIZE, Limits

__all__ = [
    "ALPN",
    "DEFAULT_ALPN",
    "DEFAULT_BACKLOG",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_FIRST_PACKET_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_HALF_OPEN",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "DEFAULT_RETRY_THRESHOLD",
    "DEFAULT_SUBPROTOCOLS",
    "LOOPBACK_DATAGRAM_SIZE",
    "MAX_TIMEOUT",
    "RETRY_MODES",
    "SUBPROTOCOL",
    "ConnectionConfig",
    "ConnectionConfigLike",
    "HeadersLike",
    "QuicConfig",
    "QuicServerConfig",
    "ServerConfig",
    "ServerConfigLike",
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

#: The ALPN protocol id msgtrans speaks over QUIC (and may offer over TLS).
ALPN = "msgtrans.v1"
#: The WebSocket subprotocol msgtrans clients offer and servers echo.
SUBPROTOCOL = "msgtrans.v1"
#: The WebSocket subprotocols a client offers and a server accepts by default.
DEFAULT_SUBPROTOCOLS: tuple[str, ...] = (SUBPROTOCOL,)
#: The ALPN protocols QUIC negotiates by default.
DEFAULT_ALPN: tuple[str, ...] = (ALPN,)
#: Seconds a client waits for the connection and its handshakes (TCP, TLS, WebSocket, QUIC).
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds a server waits for a new connection's handshake before dropping it.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Seconds a server connection may stay, after its handshake, without one complete packet.
DEFAULT_FIRST_PACKET_TIMEOUT = 30.0
#: Seconds between WebSocket pings.
DEFAULT_PING_INTERVAL = 20.0
#: Seconds a WebSocket peer has to answer a ping.
DEFAULT_PING_TIMEOUT = 20.0
#: Seconds the WebSocket close handshake may take.
DEFAULT_CLOSE_TIMEOUT = 10.0
#: Seconds of silence after which a QUIC connection is dropped.
DEFAULT_IDLE_TIMEOUT = 30.0
#: How a QUIC server validates client addresses with a stateless Retry: ``"auto"`` once
#: ``retry_threshold`` connections are half-open, ``"always"``, or ``"never"``.
RETRY_MODES = ("auto", "always", "never")
#: Half-open QUIC connections (handshake not complete) from which ``retry="auto"`` validates
#: every new client's address first: a normal load pays no extra round trip, a flood of
#: spoofed Initials costs no state.
DEFAULT_RETRY_THRESHOLD = 64
#: Half-open QUIC connections beyond which new clients are refused (each costs a whole aioquic
#: connection until its handshake completes or times out).
DEFAULT_MAX_HALF_OPEN = 1024
#: Pending connections a listening socket queues: room for a burst of thousands of connects
#: while the accept loop catches up (a connection the queue has no room for waits for its SYN
#: to be sent again, 1 s, 3 s, 7 s later...).  The kernel caps it at ``net.core.somaxconn``
#: (``/proc/sys/net/core/somaxconn``: 4096 by default since Linux 5.4, 128 before).
DEFAULT_BACKLOG = 4096
#: The UDP payload size QUIC uses once the handshake is over when the peer is on a loopback
#: address (and allows it): the loopback interface carries 64 KiB, so there is no path MTU to
#: discover.  aioquic writes a STREAM frame's length in two bytes (at most 16383), so a datagram
#: must not leave room for more: this is also the largest size allowed.
LOOPBACK_DATAGRAM_SIZE = 16384
#: The smallest datagram size QUIC allows (RFC 9000 section 14): the size before widening.
_MIN_QUIC_DATAGRAM = 1200
#: The largest timeout accepted, in seconds (about 11.5 days).  Drivers hand timeouts to
#: ``socket.settimeout`` and lock waits, whose platform limits start near 49 days (Windows).
MAX_TIMEOUT = 1_000_000.0

_SCHEMES = ("tcp", "tls", "ws", "wss", "quic")
_SCHEME_LIST = "tcp://, tls://, ws://, wss:// or quic://"
_WS_DEFAULT_PORT = {"ws": 80, "wss": 443}
_ANY_PATH = "/*"  # a WebSocket server URL's way of saying path=None
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SCOPE_ID = re.compile(r"[A-Za-z0-9\-._~]+")
_MAX_HOST = 255
#: Headers the WebSocket handshake writes itself; a second copy would break it.
_HANDSHAKE_HEADERS = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "content-length",
        "transfer-encoding",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)

#: WebSocket handshake headers: a mapping or a sequence of ``(name, value)`` pairs.
HeadersLike: TypeAlias = Mapping[str, str] | Iterable[tuple[str, str]]

_set = object.__setattr__


# --- value checks ---------------------------------------------------------------------------------


def _check_bool(name: str, value: object) -> bool:
    # Strict on purpose: the string "false" from an environment variable is truthy.
    if not isinstance(value, bool):
        raise ConfigurationError(name, f"must be True or False, got {value!r}")
    return value


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise ConfigurationError(name, f"must be an integer {low}..{high}, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigurationError(
            name, f"must be an integer {low}..{high}, got {value!r}"
        ) from None
    if not low <= number <= high:
        raise ConfigurationError(name, f"must be {low}..{high}, got {number}")
    return number


def _check_optional_int(name: str, value: object, low: int, high: int) -> int | None:
    if value is None:
        return None
    try:
        return _check_int(name, value, low, high)
    except ConfigurationError as exc:
        raise ConfigurationError(name, f"{exc.reason} (or None for no limit)") from None


def _check_timeout(name: str, value: object, *, optional: bool = False) -> float | None:
    valid = f"a number of seconds > 0 and <= {MAX_TIMEOUT:.0f}" + (" or None" if optional else "")
    if value is None:
        if optional:
            return None
        raise ConfigurationError(name, f"must be {valid}, got None")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigurationError(name, f"must be {valid}, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ConfigurationError(name, f"must be {valid}, got {value!r}") from None
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT):
        raise ConfigurationError(name, f"must be {valid}, got {value!r}")
    return seconds


def _required_timeout(name: str, value: object) -> float:
    seconds = _check_timeout(name, value)
    assert seconds is not None  # _check_timeout refuses None unless optional
    return seconds


def _check_limits(value: object) -> Limits:
    if not isinstance(value, Limits):
        raise ConfigurationError(
            "limits", f"must be a msgtrans.Limits, e.g. Limits(max_payload=...), got {value!r}"
        )
    return value


def _check_zero_copy(value: object) -> int | None:
    return _check_optional_int("zero_copy_threshold", value, 1, 2**63 - 1)


def _check_max_frame(value: object) -> int:
    return _check_int("max_frame", value, HEADER_SIZE, 0xFFFFFFFF)


def _check_loopback_datagram_size(value: object) -> int | None:
    if value is None:
        return None
    try:
        return _check_int(
            "loopback_datagram_size", value, _MIN_QUIC_DATAGRAM, LOOPBACK_DATAGRAM_SIZE
        )
    except ConfigurationError as exc:
        raise ConfigurationError(
            "loopback_datagram_size", f"{exc.reason} bytes (or None: 1200-byte datagrams always)"
        ) from None


def _check_file(name: str, value: object, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigurationError(name, f"must be a file path (a non-empty string), got {value!r}")
    return value


def _check_names(name: str, value: object, *, token: bool, required: bool) -> tuple[str, ...]:
    """Check a sequence of ALPN protocol ids (``token=False``) or subprotocol names."""
    example = "('msgtrans.v1',)"
    if isinstance(value, str):
        value = (value,)  # one name, never its characters
    if isinstance(value, bytes) or not isinstance(value, Iterable):
        raise ConfigurationError(
            name, f"must be a sequence of names such as {example}, got {value!r}"
        )
    names = tuple(value)
    if required and not names:
        raise ConfigurationError(name, f"must name at least one protocol, e.g. {example}")
    for item in names:
        if token:
            if not isinstance(item, str) or not _TOKEN.fullmatch(item):
                raise ConfigurationError(
                    name,
                    f"each name must be an HTTP token (letters, digits, !#$%&'*+-.^_`|~), "
                    f"got {item!r}",
                )
        elif not (isinstance(item, str) and item.isascii() and 1 <= len(item) <= 255):
            raise ConfigurationError(
                name, f"each protocol id must be 1..255 ASCII characters, got {item!r}"
            )
    return names


def _check_host(value: object, name: str = "host", *, server: bool = False) -> str:
    """Return the host in canonical form: IPv6 compressed and without brackets."""
    hint = "0.0.0.0 or :: for every interface" if server else "a host name or an IP address"
    if not isinstance(value, str):
        raise ConfigurationError(name, f"must be a string ({hint}), got {value!r}")
    if not value:
        raise ConfigurationError(name, f"must not be empty; use {hint}")
    if ":" in value:
        _, percent, scope = value.partition("%")
        # The zone id is checked here because it is written into URLs unescaped but for '%'.
        if percent and not _SCOPE_ID.fullmatch(scope):
            raise ConfigurationError(
                name, f"IPv6 zone id must be letters, digits or -._~, got {value!r}"
            )
        try:
            return str(ipaddress.IPv6Address(value))
        except ValueError:
            raise ConfigurationError(
                name, f"must be a host name, an IPv4 address or an IPv6 address, got {value!r}"
            ) from None
    labels = value[:-1] if value.endswith(".") else value  # a trailing dot means fully qualified
    if (
        len(value) > _MAX_HOST
        or not all(labels.split("."))
        or not all(ch.isalnum() or ch in "-._" for ch in value)
    ):
        raise ConfigurationError(
            name,
            f"must be {hint} (dot-separated labels of letters, digits, '-' and '_'; at most "
            f"{_MAX_HOST} characters), got {value!r}",
        )
    return value


def _check_server_name(value: str | None) -> str | None:
    return None if value is None else _check_host(value, "server_name")


def _check_port(value: object, *, server: bool, name: str = "port") -> int:
    low = 0 if server else 1
    what = "0..65535 (0 picks a free port)" if server else "1..65535"
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise ConfigurationError(name, f"must be a number {what}, got {value!r}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(name, f"must be a number {what}, got {value!r}")
    if not low <= value <= 65535:
        raise ConfigurationError(name, f"must be {what}, got {value}")
    return value


def _split_hostport(text: str, name: str) -> tuple[str, str | None]:
    """Split ``host[:port]`` or ``[v6][:port]``; the port is ``None`` when absent."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigurationError(name, f"'[' without ']' in {text!r}; write '[::1]:8080'")
        host, rest = text[1:end], text[end + 1 :]
        if ":" not in host:
            raise ConfigurationError(
                "host", f"brackets are only for IPv6 addresses, got {text[: end + 1]!r}"
            )
        host = host.replace("%25", "%")  # RFC 6874 writes the zone id's '%' as '%25'
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ConfigurationError(
                name, f"expected ':port' after ']', got {rest!r} in {text!r}"
            )
        return host, rest[1:]
    if text.count(":") > 1:
        raise ConfigurationError(
            name, f"an IPv6 address needs brackets, e.g. '[::1]:8080', got {text!r}"
        )
    host, sep, port = text.partition(":")
    return host, (port if sep else None)


def _check_addr(value: object, *, server: bool) -> tuple[str, int]:
    forms = "'host:port', '[ipv6]:port' or a (host, port) tuple"
    if isinstance(value, str):
        host_text, port_text = _split_hostport(value, "addr")
        if port_text is None:
            raise ConfigurationError("addr", f"needs a port: {forms}, got {value!r}")
        host = _check_host(host_text, server=server)
        return host, _check_port(port_text, server=server)
    if isinstance(value, tuple) and len(value) == 2:
        return _check_host(value[0], server=server), _check_port(value[1], server=server)
    raise ConfigurationError("addr", f"must be {forms}, got {value!r}")


def _format_host(host: str) -> str:
    return f"[{host.replace('%', '%25')}]" if ":" in host else host


def _format_hostport(host: str, port: int) -> str:
    return f"{_format_host(host)}:{port}"


def _check_target(value: str, name: str = "path") -> str:
    """Check an HTTP request target (path plus optional query) as it will go on the wire."""
    if not value.startswith("/"):
        raise ConfigurationError(name, f"must start with '/', got {value!r}")
    if not value.isascii() or any(ch <= " " or ch in "#\x7f" for ch in value):
        raise ConfigurationError(
            name,
            f"must be printable ASCII without spaces or '#'; percent-encode other characters "
            f"(e.g. %20), got {value!r}",
        )
    return value


def _check_headers(value: object) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        items: Iterable[object] = value.items()
    elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            "headers", f"must be a mapping or a sequence of (name, value) pairs, got {value!r}"
        )
    else:
        items = value
    headers: list[tuple[str, str]] = []
    for item in items:
        if not (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str)
        ):
            raise ConfigurationError(
                "headers", f"each header must be a (name, value) pair of strings, got {item!r}"
            )
        hname, hvalue = item
        if not _TOKEN.fullmatch(hname):
            raise ConfigurationError(
                "headers",
                f"header name must be an HTTP token (letters, digits, !#$%&'*+-.^_`|~), "
                f"got {hname!r}",
            )
        if hname.lower() in _HANDSHAKE_HEADERS:
            hint = "; use subprotocols=" if hname.lower() == "sec-websocket-protocol" else ""
            raise ConfigurationError(
                "headers", f"header {hname!r} is written by the WebSocket handshake itself{hint}"
            )
        if not hvalue.isascii() or any(
            (ch < " " and ch != "\t") or ch == "\x7f" for ch in hvalue
        ):
            raise ConfigurationError(
                "headers",
                f"value of header {hname!r} must be ASCII without CR, LF or other control "
                f"characters, got {hvalue!r}",
            )
        headers.append((hname, hvalue))
    return tuple(headers)


def _check_optional(name: str, value: object, cls: type) -> None:
    if value is not None and not isinstance(value, cls):
        raise ConfigurationError(name, f"must be a {cls.__name__} or None, got {value!r}")


# --- field groups ---------------------------------------------------------------------------------
# Each sets, in the order the configs have always checked them, fields that several configs share,
# so that a config with two bad fields still reports the same one first.


def _set_tls(config: object, tls: object, cls: type) -> None:
    _check_optional("tls", tls, cls)
    _set(config, "tls", tls)


def _set_socket_options(config: object, nodelay: object, keepalive: object) -> None:
    _set(config, "nodelay", _check_bool("nodelay", nodelay))
    _set(config, "keepalive", _check_bool("keepalive", keepalive))


def _set_listen(config: object, backlog: object, handshake_timeout: object) -> None:
    _set(config, "backlog", _check_int("backlog", backlog, 1, 65535))
    _set(config, "handshake_timeout", _required_timeout("handshake_timeout", handshake_timeout))


def _set_ws_timeouts(
    config: object, ping_interval: object, ping_timeout: object, close_timeout: object
) -> None:
    _set(config, "ping_interval", _check_timeout("ping_interval", ping_interval, optional=True))
    _set(config, "ping_timeout", _check_timeout("ping_timeout", ping_timeout, optional=True))
    _set(config, "close_timeout", _required_timeout("close_timeout", close_timeout))


def _set_quic(config: object, alpn: object, idle_timeout: object) -> None:
    _set(config, "alpn", _check_names("alpn", alpn, token=False, required=True))
    _set(config, "idle_timeout", _required_timeout("idle_timeout", idle_timeout))


def _set_quic_datagrams(config: object, loopback_datagram_size: object,
                        closing_period: object) -> None:
    _set(config, "loopback_datagram_size", _check_loopback_datagram_size(loopback_datagram_size))
    _set(config, "closing_period", _check_bool("closing_period", closing_period))


def _quic_datagram_params(loopback_datagram_size: int | None, closing_period: bool,
                          default_closing_period: bool) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    if loopback_datagram_size != LOOPBACK_DATAGRAM_SIZE:
        params.append(("loopback_datagram_size", _NONE if loopback_datagram_size is None
                       else str(loopback_datagram_size)))
    if closing_period != default_closing_period:
        params.append(("closing_period", "true" if closing_period else "false"))
    return params


def _quic_datagram_kwargs(params: dict[str, str]) -> dict[str, Any]:
    """``loopback_datagram_size`` (a whole number or ``none``) and ``closing_period`` from a
    URL query."""
    kwargs: dict[str, Any] = {}
    if "loopback_datagram_size" in params:
        text = params["loopback_datagram_size"]
        kwargs["loopback_datagram_size"] = (
            None if text.lower() == _NONE
            else _param_int("loopback_datagram_size", text, or_none=True)
        )
    if "closing_period" in params:
        kwargs["closing_period"] = _param_bool("closing_period", params["closing_period"])
    return kwargs


def _set_receive(config: object, limits: object, zero_copy_threshold: object) -> None:
    _set(config, "limits", _check_limits(limits))
    _set(config, "zero_copy_threshold", _check_zero_copy(zero_copy_threshold))


def _set_server_receive(
    config: object, max_sessions: object, limits: object, zero_copy_threshold: object
) -> None:
    _set(config, "max_sessions", _check_optional_int("max_sessions", max_sessions, 1, 2**31))
    _set_receive(config, limits, zero_copy_threshold)


# --- TLS ------------------------------------------------------------------------------------------


def _require_file(name: str, path: str | None) -> None:
    # The ssl module reports a missing file without its name; say which setting points nowhere.
    if path is not None and not os.path.isfile(path):
        raise ConfigurationError(name, f"must name an existing file, got {path!r}")


@dataclass(frozen=True, init=False)
class TlsConfig:
    """Client-side TLS for ``tls://`` (TCP) and ``wss://`` (WebSocket) connections.

    Certificate and host name verification are on by default; turning them off is explicit
    (``TlsConfig(verify=False)`` or ``?verify=false`` in the URL).

    Args:
        verify: check the server's certificate chain and that it names the host (default
            ``True``).  ``False`` accepts any certificate: for tests only.
        ca_file: PEM file of CA certificates to trust instead of the system store (default
            ``None``: the system store).
        ca_data: CA certificates to trust given inline: a PEM ``str`` or ``bytes``, or DER
            ``bytes`` (default ``None``).  Used together with *ca_file* when both are set.
        cert_file: PEM file with the client certificate chain, for servers that ask for one
            (default ``None``).
        key_file: PEM file with the client certificate's private key (default ``None``: the key
            is in *cert_file*).
        server_name: the name sent in SNI and checked against the certificate (default ``None``:
            the host being connected to).
        alpn: ALPN protocols to offer (default ``()``: none).

    Raises:
        ConfigurationError: a field has the wrong type or value (``key_file`` without
            ``cert_file``, an empty path, a bad ``server_name`` or ALPN id).
    """

    verify: bool
    ca_file: str | None
    ca_data: str | bytes | None = field(repr=False)
    cert_file: str | None
    key_file: str | None
    server_name: str | None
    alpn: tuple[str, ...]

    def __init__(
        self,
        verify: bool = True,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        ca_data: str | bytes | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        server_name: str | None = None,
        alpn: Iterable[str] = (),
    ) -> None:
        _set(self, "verify", _check_bool("verify", verify))
        _set(self, "ca_file", _check_file("ca_file", ca_file))
        if ca_data is not None and not (isinstance(ca_data, (str, bytes)) and ca_data):
            raise ConfigurationError(
                "ca_data", f"must be PEM text or PEM/DER bytes (non-empty), got {ca_data!r}"
            )
        _set(self, "ca_data", ca_data)
        _set(self, "cert_file", _check_file("cert_file", cert_file))
        _set(self, "key_file", _check_file("key_file", key_file))
        if self.key_file is not None and self.cert_file is None:
            raise ConfigurationError(
                "key_file", "needs cert_file: a client key goes with a client certificate"
            )
        _set(self, "server_name", _check_server_name(server_name))
        _set(self, "alpn", _check_names("alpn", alpn, token=False, required=False))

    def client_context(self) -> ssl.SSLContext:
        """Build an :class:`ssl.SSLContext` for the client side of a connection.

        TLS 1.2 is the minimum.  With :attr:`verify` the context requires a valid certificate
        (``CERT_REQUIRED``) and checks the host name; the trusted CAs are :attr:`ca_file` and
        :attr:`ca_data` if set, else the system store.  Without it, nothing is checked.  Pass
        :attr:`server_name` (or the host) as ``server_hostname`` when wrapping.

        Raises:
            ConfigurationError: a file is missing or holds no usable certificate or key
                (``field`` is ``ca_file``, ``ca_data`` or ``cert_file``/``key_file``).
        """
        # PROTOCOL_TLS_CLIENT starts with CERT_REQUIRED and check_hostname on.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.ca_file is not None or self.ca_data is not None:
            # A private CA replaces the system store rather than joining it: trusting both
            # would let any public CA vouch for a private service's name.
            _load_cas(context, self.ca_file, self.ca_data)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            _load_chain(context, self.cert_file, self.key_file)
        if self.alpn:
            context.set_alpn_protocols(list(self.alpn))
        return context


def _load_cas(context: ssl.SSLContext, ca_file: str | None, ca_data: str | bytes | None) -> None:
    if ca_file is not None:
        _require_file("ca_file", ca_file)
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                "ca_file", f"must be a PEM file of CA certificates; {ca_file!r}: {exc}"
            ) from exc
    if ca_data is not None:
        data: str | bytes = ca_data
        if isinstance(data, bytes) and b"-----BEGIN" in data:
            data = data.decode("ascii", "replace")
        try:
            context.load_verify_locations(cadata=data)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                "ca_data", f"must be PEM text or DER bytes of CA certificates: {exc}"
            ) from exc


def _load_chain(context: ssl.SSLContext, cert_file: str, key_file: str | None) -> None:
    _require_file("cert_file", cert_file)
    _require_file("key_file", key_file)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ValueError) as exc:
        where = f"{cert_file!r}" + (f" and {key_file!r}" if key_file else "")
        raise ConfigurationError(
            "cert_file",
            f"must be a PEM certificate chain with its private key (in key_file or in the same "
            f"file); loading {where} failed: {exc}",
        ) from exc


@dataclass(frozen=True, init=False)
class ServerTlsConfig:
    """Server-side TLS for ``tls://`` and ``wss://`` listeners.

    The certificate and key are read from files when :meth:`server_context` is called (the
    :mod:`ssl` module loads keys only from files; write PEM data to a file with restricted
    permissions first, or use :mod:`msgtrans.certs` for a throwaway self-signed pair).

    Args:
        cert_file: PEM file with the server certificate chain (required).
        key_file: PEM file with its private key (default ``None``: the key is in *cert_file*).
        ca_file: PEM file of CAs for client certificates (default ``None``: clients present no
            certificate).  When set, every client must present a certificate signed by one.
        alpn: ALPN protocols to accept (default ``()``: none negotiated).

    Raises:
        ConfigurationError: a path is empty or not a string, or an ALPN id is invalid.
    """

    cert_file: str
    key_file: str | None
    ca_file: str | None
    alpn: tuple[str, ...]

    def __init__(
        self,
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str] | None = None,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        alpn: Iterable[str] = (),
    ) -> None:
        _set(self, "cert_file", _check_file("cert_file", cert_file, optional=False))
        _set(self, "key_file", _check_file("key_file", key_file))
        _set(self, "ca_file", _check_file("ca_file", ca_file))
        _set(self, "alpn", _check_names("alpn", alpn, token=False, required=False))

    def server_context(self) -> ssl.SSLContext:
        """Build an :class:`ssl.SSLContext` for the server side of a connection.

        TLS 1.2 is the minimum.  Loads :attr:`cert_file` and :attr:`key_file`; with
        :attr:`ca_file`, requires and verifies client certificates (``CERT_REQUIRED``).

        Raises:
            ConfigurationError: a file is missing, or the certificate or key cannot be loaded or
                do not match (``field`` is ``cert_file``, ``key_file`` or ``ca_file``).
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(context, self.cert_file, self.key_file)
        if self.ca_file is not None:
            _load_cas(context, self.ca_file, None)
            context.verify_mode = ssl.CERT_REQUIRED
        if self.alpn:
            context.set_alpn_protocols(list(self.alpn))
        return context


# --- URL plumbing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Url:
    scheme: str
    netloc: str
    path: str
    query: str | None  # None: no '?' at all


def _split_url(url: object) -> _Url:
    if not isinstance(url, str):
        raise ConfigurationError("url", f"must be a string such as 'tcp://host:port', got {url!r}")
    text = url.strip()
    if not text:
        raise ConfigurationError("url", "must not be empty; e.g. 'tcp://127.0.0.1:8080'")
    for index, ch in enumerate(text):
        if ch.isspace() or ch < " " or ch == "\x7f":
            raise ConfigurationError(
                "url",
                f"must not contain spaces or control characters ({ch!r} at {index}); "
                f"percent-encode them",
            )
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ConfigurationError(
            "url", f"needs a scheme: {_SCHEME_LIST}, e.g. 'tcp://{text}', got {text!r}"
        )
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigurationError("url", f"unknown scheme {scheme!r}; use {_SCHEME_LIST}")
    if "#" in rest:
        raise ConfigurationError("url", f"must not contain a fragment ('#...'), got {text!r}")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    if "@" in netloc:
        raise ConfigurationError(
            "url", "must not contain user info ('user@host'); pass credentials in headers"
        )
    path, qmark, query = tail.partition("?")
    return _Url(scheme, netloc, path, query if qmark else None)


def _url_hostport(
    parts: _Url, *, server: bool, default_port: int | None
) -> tuple[str, int]:
    host_text, port_text = _split_hostport(parts.netloc, "url")
    host = _check_host(host_text, server=server)
    if port_text is None:
        if default_port is None:
            raise ConfigurationError(
                "port",
                f"{parts.scheme}:// URLs need a port: "
                f"'{parts.scheme}://{_format_host(host)}:PORT'",
            )
        return host, default_port
    return host, _check_port(port_text, server=server)


def _no_path(parts: _Url) -> None:
    if parts.path not in ("", "/"):
        raise ConfigurationError(
            "url", f"{parts.scheme}:// URLs have no path, got {parts.path!r}"
        )


def _query_pairs(query: str | None) -> list[tuple[str, str, str]]:
    """Return ``(name, value, raw piece)`` for each ``name=value`` of *query*."""
    pairs = []
    for piece in (query or "").split("&"):
        if piece:
            name, _, value = piece.partition("=")
            pairs.append((unquote(name), unquote(value), piece))
    return pairs


def _take_params(
    parts: _Url,
    allowed: tuple[str, ...],
    *,
    tls_only: tuple[str, ...] = (),
    keep_unknown: bool = False,
) -> tuple[dict[str, str], str | None]:
    """Split the query into the parameters in *allowed* and the rest.

    Names in *tls_only* get an error that points to the TLS scheme.  Other names are an error
    unless *keep_unknown* (ws:// and wss:// clients, whose query belongs to the request target);
    then the rest comes back as raw query text, untouched.
    """
    params: dict[str, str] = {}
    kept: list[str] = []
    for name, value, piece in _query_pairs(parts.query):
        if name in allowed:
            if name in params:
                raise ConfigurationError(name, "is given more than once in the URL")
            params[name] = value
        elif name in tls_only:
            raise ConfigurationError(
                "url",
                f"query parameter {name!r} only applies with TLS; "
                f"use {_TLS_SCHEME[parts.scheme]}:// instead of {parts.scheme}://",
            )
        elif keep_unknown:
            kept.append(piece)
        else:
            raise ConfigurationError(
                "url",
                f"unknown query parameter {name!r} for {parts.scheme}:// URLs; "
                f"known: {', '.join(allowed) or 'none'}",
            )
    return params, ("&".join(kept) if kept else None)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _param_bool(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(name, f"must be true or false (or 1/0), got {text!r}")


def _param_float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigurationError(name, f"must be a number of seconds, got {text!r}") from None


def _param_int(name: str, text: str, *, or_none: bool = False) -> int:
    if not (text.isascii() and text.isdigit()):
        hint = " or none" if or_none else ""
        raise ConfigurationError(name, f"must be a whole number{hint}, got {text!r}")
    return int(text)


def _param_str(name: str, text: str) -> str:
    if not text:
        raise ConfigurationError(name, "must not be empty in the URL")
    return text


def _fmt_seconds(seconds: float) -> str:
    text = repr(seconds)
    return text[:-2] if text.endswith(".0") else text


def _encode_query(params: list[tuple[str, str]]) -> str:
    return "&".join(f"{name}={quote(value, safe='/:,')}" for name, value in params)


def _with_query(base: str, params: list[tuple[str, str]]) -> str:
    return f"{base}?{_encode_query(params)}" if params else base


def _socket_params(nodelay: bool, keepalive: bool) -> list[tuple[str, str]]:
    return [(name, "0") for name, on in (("nodelay", nodelay), ("keepalive", keepalive)) if not on]


def _seconds_param(name: str, seconds: float, default: float) -> list[tuple[str, str]]:
    return [] if seconds == default else [(name, _fmt_seconds(seconds))]


def _make_url(
    scheme: str,
    addr: tuple[str, int],
    target: str = "",
    params: list[tuple[str, str]] | None = None,
    *,
    default_port: int | None = None,
) -> str:
    """Write ``scheme://host:port`` + *target* + *params*, leaving out a port that is
    *default_port*."""
    host, port = addr
    netloc = _format_host(host) if port == default_port else _format_hostport(host, port)
    return _with_query(f"{scheme}://{netloc}{target}", params or [])


_TLS_CLIENT_PARAMS = ("verify", "ca", "cert", "key", "server_name")
#: What parse_url reads from a wss:// query; the rest of it is the request target's.
_WSS_TLS_PARAMS = ("verify", "ca", "server_name")
_TLS_SCHEME = {"tcp": "tls", "ws": "wss"}


def _tls_kwargs(params: dict[str, str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if "verify" in params:
        kwargs["verify"] = _param_bool("verify", params["verify"])
    for url_name, kwarg in (("ca", "ca_file"), ("cert", "cert_file"), ("key", "key_file")):
        if url_name in params:
            kwargs[kwarg] = _param_str(url_name, params[url_name])
    if "server_name" in params:
        kwargs["server_name"] = _param_str("server_name", params["server_name"])
    return kwargs


def _tls_params(tls: TlsConfig, *, with_client_cert: bool = True) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    if not tls.verify:
        params.append(("verify", "false"))
    if tls.ca_file is not None:
        params.append(("ca", tls.ca_file))
    if with_client_cert and tls.cert_file is not None:
        params.append(("cert", tls.cert_file))
    if with_client_cert and tls.key_file is not None:
        params.append(("key", tls.key_file))
    if tls.server_name is not None:
        params.append(("server_name", tls.server_name))
    return params


# --- properties the configs share -----------------------------------------------------------------
# Plain classes, not dataclasses: they add no fields, so each config's fields, repr, equality and
# pickling stay its own.  None of them may define a name that is a field of a config (such as
# WebSocketConfig.url): dataclass would take the inherited property for the field's default.


class _Address:
    """``host`` and ``port``, read from ``addr``."""

    if TYPE_CHECKING:

        @property
        def addr(self) -> tuple[str, int]: ...

    @property
    def host(self) -> str:
        """The host to connect to, or the address a server listens on (an IPv6 address without
        brackets)."""
        return self.addr[0]

    @property
    def port(self) -> int:
        """The port to connect to, or the port a server listens on (0: a free port picked when
        listening).  A UDP port for QUIC; 80 for ``ws://`` and 443 for ``wss://`` when the URL
        leaves it out."""
        return self.addr[1]


class _Endpoint(_Address):
    """``url`` for a config whose URL is made by :meth:`to_url`, not kept as a field."""

    if TYPE_CHECKING:

        def to_url(self) -> str: ...

    @property
    def url(self) -> str:
        """This config as a URL; the same as :meth:`to_url`."""
        return self.to_url()


class _OptionalTls:
    """``scheme`` and ``secure`` of a transport that runs with or without TLS."""

    _SCHEMES: ClassVar[tuple[str, str]]  # (without TLS, with TLS)

    if TYPE_CHECKING:

        @property
        def tls(self) -> TlsConfig | ServerTlsConfig | None: ...

    @property
    def scheme(self) -> str:
        """``"tls"`` (TCP) or ``"wss"`` (WebSocket) with TLS, else ``"tcp"`` or ``"ws"``."""
        plain, with_tls = self._SCHEMES
        return plain if self.tls is None else with_tls

    @property
    def secure(self) -> bool:
        """Whether connections use TLS (``tls://``, ``wss://``)."""
        return self.tls is not None


class _ClientTls(_OptionalTls, _Address):
    if TYPE_CHECKING:

        @property
        def tls(self) -> TlsConfig | None: ...

    @property
    def tls_server_name(self) -> str | None:
        """The name used for SNI and the certificate check: ``tls.server_name`` or the host;
        ``None`` without TLS (``tcp://``, ``ws://``)."""
        if self.tls is None:
            return None
        return self.tls.server_name or self.host


class _Tcp(_OptionalTls):
    _SCHEMES = ("tcp", "tls")

    @property
    def transport_kind(self) -> Literal["stream", "datagram"]:
        """Always ``"stream"``: the driver opens (or listens on) a stream socket."""
        return "stream"

    @property
    def protocol(self) -> Protocol:
        """Always :attr:`Protocol.TCP <msgtrans.core.errors.Protocol.TCP>` (TLS or not)."""
        return Protocol.TCP


class _WebSocket(_OptionalTls):
    _SCHEMES = ("ws", "wss")

    @property
    def transport_kind(self) -> Literal["stream", "datagram"]:
        """Always ``"stream"``: the driver opens (or listens on) a stream socket."""
        return "stream"

    @property
    def protocol(self) -> Protocol:
        """Always :attr:`Protocol.WEBSOCKET <msgtrans.core.errors.Protocol.WEBSOCKET>`."""
        return Protocol.WEBSOCKET


class _Quic:
    @property
    def transport_kind(self) -> Literal["stream", "datagram"]:
        """Always ``"datagram"``: the driver opens (or listens on) a UDP socket."""
        return "datagram"

    @property
    def protocol(self) -> Protocol:
        """Always :attr:`Protocol.QUIC <msgtrans.core.errors.Protocol.QUIC>`."""
        return Protocol.QUIC

    @property
    def scheme(self) -> str:
        """Always ``"quic"``."""
        return "quic"

    @property
    def secure(self) -> bool:
        """Always ``True``: QUIC is always encrypted."""
        return True


# --- client configs -------------------------------------------------------------------------------


@dataclass(frozen=True, init=False)
class TcpConfig(_Tcp, _ClientTls, _Endpoint):
    """Connect over TCP (``tcp://host:port``), or TLS over TCP (``tls://host:port``).

    Args:
        addr: where to connect: ``"host:port"``, ``"[ipv6]:port"`` or a ``(host, port)`` tuple
            (required).  Kept as a ``(host, port)`` tuple, the IPv6 address without brackets.
        nodelay: set ``TCP_NODELAY`` so small messages leave at once (default ``True``).
        keepalive: set ``SO_KEEPALIVE`` so the OS notices dead peers (default ``True``).
        tls: TLS settings; ``None`` (default) for plain TCP, a :class:`TlsConfig` for
            ``tls://``.
        connect_timeout: seconds for connecting and the TLS handshake (default 10.0).
        limits: receive limits (default 16 MiB payload, 4 KiB ext header).
        zero_copy_threshold: payloads of at least this many bytes are received into their own
            buffer and handed out as views (default 64 KiB; ``None``: never).

    Raises:
        ConfigurationError: a field is invalid (``field`` is ``addr``, ``host``, ``port``,
            ``nodelay``, ``keepalive``, ``tls``, ``connect_timeout``, ``limits`` or
            ``zero_copy_threshold``).
    """

    addr: tuple[str, int]
    nodelay: bool
    keepalive: bool
    tls: TlsConfig | None
    connect_timeout: float
    limits: Limits
    zero_copy_threshold: int | None

    def __init__(
        self,
        addr: str | tuple[str, int],
        nodelay: bool = True,
        keepalive: bool = True,
        *,
        tls: TlsConfig | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
    ) -> None:
        _set(self, "addr", _check_addr(addr, server=False))
        _set_socket_options(self, nodelay, keepalive)
        _set_tls(self, tls, TlsConfig)
        _set(self, "connect_timeout", _required_timeout("connect_timeout", connect_timeout))
        _set_receive(self, limits, zero_copy_threshold)

    def to_url(self) -> str:
        """Return a ``tcp://`` or ``tls://`` URL that :func:`parse_url` turns back into an equal
        config.

        Settings without a query parameter (``limits``, ``zero_copy_threshold``, the TLS
        ``ca_data`` and ``alpn``) are left out; the URL then stands for the defaults.
        """
        params = _socket_params(self.nodelay, self.keepalive)
        params += _seconds_param("connect_timeout", self.connect_timeout, DEFAULT_CONNECT_TIMEOUT)
        if self.tls is not None:
            params += _tls_params(self.tls)
        return _make_url(self.scheme, self.addr, params=params)


@dataclass(frozen=True, init=False)
class WebSocketConfig(_WebSocket, _ClientTls):
    """Connect over WebSocket (``ws://host[:port]/path?query``), or over TLS (``wss://``).

    The URL is kept normalised: lower-case scheme, the default port (80 for ``ws``, 443 for
    ``wss``) left out, an empty path written ``/``.  Its path and query are the request target,
    sent as they are; no query parameter is read as a setting here (:func:`parse_url` does that).

    Args:
        url: the ``ws://`` or ``wss://`` URL (required).
        headers: extra handshake headers, a mapping or a sequence of ``(name, value)`` pairs
            (default none).  Kept as a tuple of pairs.  Headers the handshake writes itself
            (``Host``, ``Upgrade``, ``Sec-WebSocket-*``...) are refused.
        subprotocols: subprotocols to offer (default ``("msgtrans.v1",)``; ``()`` offers none).
        tls: TLS settings for ``wss://`` (default ``None``, meaning ``TlsConfig()`` for
            ``wss://``: verification on).  Must be ``None`` for ``ws://``.
        connect_timeout: seconds for connecting and the TLS and WebSocket handshakes
            (default 10.0).
        ping_interval: seconds between pings (default 20.0; ``None``: never ping).
        ping_timeout: seconds a ping may go unanswered before the connection is dropped
            (default 20.0; ``None``: wait forever).
        close_timeout: seconds the close handshake may take (default 10.0).
        limits: receive limits (default 16 MiB payload, 4 KiB ext header).
        zero_copy_threshold: as for :class:`TcpConfig` (default 64 KiB; ``None``: never).

    Raises:
        ConfigurationError: a field is invalid (``field`` is ``url``, ``host``, ``port``,
            ``path``, ``headers``, ``subprotocols``, ``tls``, a timeout's name, ``limits`` or
            ``zero_copy_threshold``).
    """

    url: str
    headers: tuple[tuple[str, str], ...]
    subprotocols: tuple[str, ...]
    tls: TlsConfig | None
    connect_timeout: float
    ping_interval: float | None
    ping_timeout: float | None
    close_timeout: float
    limits: Limits
    zero_copy_threshold: int | None
    _addr: tuple[str, int] = field(init=False, repr=False, compare=False)
    _target: str = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        url: str,
        headers: HeadersLike = (),
        subprotocols: Iterable[str] = DEFAULT_SUBPROTOCOLS,
        *,
        tls: TlsConfig | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
    ) -> None:
        parts = _split_url(url)
        if parts.scheme not in _WS_DEFAULT_PORT:
            raise ConfigurationError(
                "url",
                f"WebSocketConfig needs a ws:// or wss:// URL, got {parts.scheme}://; "
                f"parse_url() handles every scheme",
            )
        default_port = _WS_DEFAULT_PORT[parts.scheme]
        host, port = _url_hostport(parts, server=False, default_port=default_port)
        target = _check_target(parts.path or "/")
        if parts.query:
            target += "?" + _check_target("/" + parts.query)[1:]
        _set(self, "url", _make_url(parts.scheme, (host, port), target, default_port=default_port))
        _set(self, "_addr", (host, port))
        _set(self, "_target", target)
        _set(self, "headers", _check_headers(headers))
        _set(self, "subprotocols", _check_names("subprotocols", subprotocols,
                                                token=True, required=False))
        _check_optional("tls", tls, TlsConfig)
        if parts.scheme == "wss":
            tls = TlsConfig() if tls is None else tls
        elif tls is not None:
            raise ConfigurationError("tls", "only applies to wss:// URLs; use wss:// or tls=None")
        _set(self, "tls", tls)
        _set(self, "connect_timeout", _required_timeout("connect_timeout", connect_timeout))
        _set_ws_timeouts(self, ping_interval, ping_timeout, close_timeout)
        _set_receive(self, limits, zero_copy_threshold)

    @property
    def addr(self) -> tuple[str, int]:
        """``(host, port)`` to connect to, the port filled in from the scheme when omitted."""
        return self._addr

    @property
    def path(self) -> str:
        """The request target: path and query, e.g. ``"/chat?room=1"`` (``"/"`` at least)."""
        return self._target

    def to_url(self) -> str:
        """Return :attr:`url` plus the query parameters that :func:`parse_url` reads as
        settings (``connect_timeout``; for ``wss://`` also ``verify``, ``ca``, ``server_name``),
        so that ``parse_url(config.to_url()) == config``.

        Settings without a query parameter (headers, subprotocols, ping and close timeouts,
        limits, the TLS client certificate, ``ca_data`` and ``alpn``) are left out.

        Raises:
            ConfigurationError: the URL's own query already uses one of those names (``field``
                ``url``), so no URL can stand for this config.
        """
        for name, _value, _piece in _query_pairs(self._target.partition("?")[2]):
            if name in _WS_CLIENT_PARAMS or name in _WSS_TLS_PARAMS:
                raise ConfigurationError(
                    "url",
                    f"the request target uses {name!r}, which parse_url() reads as a setting; "
                    f"this config has no URL form",
                )
        params = _seconds_param("connect_timeout", self.connect_timeout, DEFAULT_CONNECT_TIMEOUT)
        if self.tls is not None:
            params += _tls_params(self.tls, with_client_cert=False)
        if not params:
            return self.url
        return f"{self.url}{'&' if '?' in self._target else '?'}{_encode_query(params)}"


@dataclass(frozen=True, init=False)
class QuicConfig(_Quic, _Endpoint):
    """Connect over QUIC (``quic://host:port``).  QUIC always runs TLS 1.3.

    Args:
        addr: where to connect: ``"host:port"``, ``"[ipv6]:port"`` or a ``(host, port)`` tuple
            (required).
        server_name: the name sent in SNI and checked against the certificate (default
            ``None``: the host).
        cert_verification: check the server's certificate and name (default ``True``).
            ``False`` accepts any certificate: for tests only.
        ca_file: PEM file of CAs to trust instead of the system store (default ``None``).
        alpn: ALPN protocols to offer; QUIC needs at least one (default ``("msgtrans.v1",)``).
        idle_timeout: seconds of silence after which the connection is dropped (default 30.0).
        connect_timeout: seconds for the QUIC handshake (default 10.0).
        max_frame: the largest stream frame accepted, in bytes (default 16 MiB, the spec's cap).
        limits: receive limits (default 16 MiB payload, 4 KiB ext header).
        zero_copy_threshold: as for :class:`TcpConfig` (default 64 KiB; ``None``: never).
        loopback_datagram_size: once the handshake is over, send UDP datagrams of up to this
            many bytes when the server is on a loopback address (default 16384, also the
            most; at least 1200; ``None``: 1200-byte datagrams always).  QUIC's cost is per
            datagram and loopback has no path MTU to discover; never more than the peer
            allows.
        closing_period: wait out QUIC's closing period (three probe timeouts, answering late
            packets) before the session counts as closed (default ``False``: the client closes
            its own UDP socket at once, which RFC 9000 section 10.2 allows).

    Raises:
        ConfigurationError: a field is invalid (``field`` names it).
    """

    addr: tuple[str, int]
    server_name: str | None
    cert_verification: bool
    ca_file: str | None
    alpn: tuple[str, ...]
    idle_timeout: float
    connect_timeout: float
    max_frame: int
    limits: Limits
    zero_copy_threshold: int | None
    loopback_datagram_size: int | None
    closing_period: bool

    def __init__(
        self,
        addr: str | tuple[str, int],
        server_name: str | None = None,
        cert_verification: bool = True,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        alpn: Iterable[str] = DEFAULT_ALPN,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_frame: int = QUIC_MAX_FRAME,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        loopback_datagram_size: int | None = LOOPBACK_DATAGRAM_SIZE,
        closing_period: bool = False,
    ) -> None:
        _set(self, "addr", _check_addr(addr, server=False))
        _set(self, "server_name", _check_server_name(server_name))
        _set(self, "cert_verification", _check_bool("cert_verification", cert_verification))
        _set(self, "ca_file", _check_file("ca_file", ca_file))
        _set_quic(self, alpn, idle_timeout)
        _set(self, "connect_timeout", _required_timeout("connect_timeout", connect_timeout))
        _set(self, "max_frame", _check_max_frame(max_frame))
        _set_receive(self, limits, zero_copy_threshold)
        _set_quic_datagrams(self, loopback_datagram_size, closing_period)

    @property
    def tls_server_name(self) -> str:
        """The name used for SNI and the certificate check: :attr:`server_name` or the host."""
        return self.server_name or self.host

    def to_url(self) -> str:
        """Return a ``quic://`` URL that :func:`parse_url` turns back into an equal config.

        Settings without a query parameter (``alpn``, ``max_frame``, ``limits``,
        ``zero_copy_threshold``) are left out.
        """
        params: list[tuple[str, str]] = []
        if not self.cert_verification:
            params.append(("verify", "false"))
        if self.ca_file is not None:
            params.append(("ca", self.ca_file))
        if self.server_name is not None:
            params.append(("server_name", self.server_name))
        params += _seconds_param("connect_timeout", self.connect_timeout, DEFAULT_CONNECT_TIMEOUT)
        params += _seconds_param("idle_timeout", self.idle_timeout, DEFAULT_IDLE_TIMEOUT)
        params += _quic_datagram_params(self.loopback_datagram_size, self.closing_period,
                                        default_closing_period=False)
        return _make_url("quic", self.addr, params=params)


# --- server configs -------------------------------------------------------------------------------


@dataclass(frozen=True, init=False)
class TcpServerConfig(_Tcp, _Endpoint):
    """Listen on TCP (``tcp://host:port``), or TLS over TCP (``tls://host:port``).

    Args:
        addr: where to listen: ``"host:port"``, ``"[ipv6]:port"`` or ``(host, port)`` (default
            ``"127.0.0.1:0"``: loopback only, a free port).  Port 0 picks a free port; host
            ``0.0.0.0`` or ``::`` listens on every interface.
        tls: the server certificate for ``tls://`` (default ``None``: plain TCP).
        nodelay: set ``TCP_NODELAY`` on accepted connections (default ``True``).
        keepalive: set ``SO_KEEPALIVE`` on accepted connections (default ``True``).
        backlog: pending connections the listening socket queues (default 4096, capped by
            the kernel's ``net.core.somaxconn``).
        handshake_timeout: seconds a new connection has for its TLS handshake (default 10.0).
        first_packet_timeout: seconds an accepted connection (after its TLS handshake, if
            any) may go without one complete msgtrans packet before it is closed (default
            30.0; ``None``: no limit).
        max_sessions: the most sessions served at once; more are refused (default ``None``:
            no limit).
        limits: receive limits (default 16 MiB payload, 4 KiB ext header).
        zero_copy_threshold: as for :class:`TcpConfig` (default 64 KiB; ``None``: never).
        reuse_port: set ``SO_REUSEPORT`` on the listening socket, so that several processes
            (``serve(workers=N)``, which forces it on) can listen on the same address and the
            kernel spreads connections between them (default ``False``; Linux and the BSDs).

    Raises:
        ConfigurationError: a field is invalid (``field`` names it).
    """

    addr: tuple[str, int]
    tls: ServerTlsConfig | None
    nodelay: bool
    keepalive: bool
    backlog: int
    handshake_timeout: float
    first_packet_timeout: float | None
    max_sessions: int | None
    limits: Limits
    zero_copy_threshold: int | None
    reuse_port: bool

    def __init__(
        self,
        addr: str | tuple[str, int] = "127.0.0.1:0",
        *,
        tls: ServerTlsConfig | None = None,
        nodelay: bool = True,
        keepalive: bool = True,
        backlog: int = DEFAULT_BACKLOG,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        first_packet_timeout: float | None = DEFAULT_FIRST_PACKET_TIMEOUT,
        max_sessions: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        reuse_port: bool = False,
    ) -> None:
        _set(self, "addr", _check_addr(addr, server=True))
        _set_tls(self, tls, ServerTlsConfig)
        _set_socket_options(self, nodelay, keepalive)
        _set_listen(self, backlog, handshake_timeout)
        _set_first_packet(self, first_packet_timeout)
        _set_server_receive(self, max_sessions, limits, zero_copy_threshold)
        _set(self, "reuse_port", _check_bool("reuse_port", reuse_port))

    def to_url(self) -> str:
        """Return a ``tcp://`` or ``tls://`` URL that :func:`parse_server_url` turns back into
        an equal config (``limits``, ``zero_copy_threshold`` and the TLS ``alpn`` are left out).
        """
        params = _socket_params(self.nodelay, self.keepalive)
        params += _server_params(self.tls, self.backlog, self.handshake_timeout,
                                 self.max_sessions, self.first_packet_timeout)
        params += _reuse_port_param(self.reuse_port)
        return _make_url(self.scheme, self.addr, params=params)


def _server_params(
    tls: ServerTlsConfig | None, backlog: int, handshake_timeout: float, max_sessions: int | None,
    first_packet_timeout: float | None = DEFAULT_FIRST_PACKET_TIMEOUT,
) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    if tls is not None:
        params.append(("cert", tls.cert_file))
        if tls.key_file is not None:
            params.append(("key", tls.key_file))
        if tls.ca_file is not None:
            params.append(("ca", tls.ca_file))
    if backlog != DEFAULT_BACKLOG:
        params.append(("backlog", str(backlog)))
    params += _seconds_param("handshake_timeout", handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT)
    if max_sessions is not None:
        params.append(("max_sessions", str(max_sessions)))
    if first_packet_timeout is None:
        params.append(("first_packet_timeout", "none"))
    else:
        params += _seconds_param("first_packet_timeout", first_packet_timeout,
                                 DEFAULT_FIRST_PACKET_TIMEOUT)
    return params


def _reuse_port_param(reuse_port: bool) -> list[tuple[str, str]]:
    return [("reuse_port", "true")] if reuse_port else []


def _set_first_packet(config: object, seconds: object) -> None:
    _set(config, "first_packet_timeout",
         _check_timeout("first_packet_timeout", seconds, optional=True))


@dataclass(frozen=True, init=False)
class WebSocketServerConfig(_WebSocket, _Endpoint):
    """Listen for WebSocket connections (``ws://host:port/path``), or over TLS (``wss://``).

    Args:
        addr: where to listen, as for :class:`TcpServerConfig` (default ``"127.0.0.1:0"``).
        path: the request path served, without a query; requests for other paths are refused
            (default ``"/"``; ``None`` serves every path, written ``/*`` in a URL).
        subprotocols: subprotocols accepted; the first one the client offers is chosen, and a
            client offering none is still accepted (default ``("msgtrans.v1",)``).
        tls: the server certificate for ``wss://`` (default ``None``: plain ``ws://``).
        backlog: pending connections the listening socket queues (default 4096, capped by
            the kernel's ``net.core.somaxconn``).
        handshake_timeout: seconds a new connection has for its TLS and WebSocket handshakes
            (default 10.0).
        first_packet_timeout: seconds a connection may go, once its handshakes completed,
            without one complete msgtrans packet before it is closed (default 30.0; ``None``:
            no limit).
        ping_interval: seconds between pings (default 20.0; ``None``: never ping).
        ping_timeout: seconds a ping may go unanswered (default 20.0; ``None``: wait forever).
        close_timeout: seconds the close handshake may take (default 10.0).
        max_sessions: the most sessions served at once (default ``None``: no limit).
        limits: receive limits (default 16 MiB payload, 4 KiB ext header).
        zero_copy_threshold: as for :class:`TcpConfig` (default 64 KiB; ``None``: never).
        text_messages: what a text message from a client does: ``"close"`` (the default) closes
            the connection with 1003, RFC 6455's "unsupported data" (msgtrans packets travel as
            binary messages, so a text one is a client speaking something else); ``"ignore"``
            drops it and goes on.
        reuse_port: set ``SO_REUSEPORT`` on the listening socket, so that several processes
            (``serve(workers=N)``, which forces it on) can listen on the same address and the
            kernel spreads connections between them (default ``False``; Linux and the BSDs).

    Raises:
        ConfigurationError: a field is invalid (``field`` names it).
    """

    addr: tuple[str, int]
    path: str | None
    subprotocols: tuple[str, ...]
    tls: ServerTlsConfig | None
    backlog: int
    handshake_timeout: float
    first_packet_timeout: float | None
    ping_interval: float | None
    ping_timeout: float | None
    close_timeout: float
    max_sessions: int | None
    limits: Limits
    zero_copy_threshold: int | None
    text_messages: str
    reuse_port: bool

    def __init__(
        self,
        addr: str | tuple[str, int] = "127.0.0.1:0",
        path: str | None = "/",
        subprotocols: Iterable[str] = DEFAULT_SUBPROTOCOLS,
        *,
        tls: ServerTlsConfig | None = None,
        backlog: int = DEFAULT_BACKLOG,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        first_packet_timeout: float | None = DEFAULT_FIRST_PACKET_TIMEOUT,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        max_sessions: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        text_messages: str = "close",
        reuse_port: bool = False,
    ) -> None:
        _set(self, "addr", _check_addr(addr, server=True))
        if path is not None:
            if not isinstance(path, str) or "?" in path or path == _ANY_PATH:
                raise ConfigurationError(
                    "path",
                    f"must be a path such as '/' or '/chat' without a query, or None for every "
                    f"path, got {path!r}",
                )
            path = _check_target(path)
        _set(self, "path", path)
        _set(self, "subprotocols", _check_names("subprotocols", subprotocols,
                                                token=True, required=False))
        _set_tls(self, tls, ServerTlsConfig)
        _set_listen(self, backlog, handshake_timeout)
        _set_first_packet(self, first_packet_timeout)
        _set_ws_timeouts(self, ping_interval, ping_timeout, close_timeout)
        _set_server_receive(self, max_sessions, limits, zero_copy_threshold)
        if text_messages not in ("close", "ignore"):
            raise ConfigurationError(
                "text_messages", f"must be 'close' or 'ignore', got {text_messages!r}"
            )
        _set(self, "text_messages", text_messages)
        _set(self, "reuse_port", _check_bool("reuse_port", reuse_port))

    def to_url(self) -> str:
        """Return a ``ws://`` or ``wss://`` URL that :func:`parse_server_url` turns back into
        an equal config (subprotocols, ping and close timeouts, ``limits``,
        ``zero_copy_threshold`` and the TLS ``alpn`` are left out).
        """
        params = _server_params(self.tls, self.backlog, self.handshake_timeout,
                                self.max_sessions, self.first_packet_timeout)
        params += _reuse_port_param(self.reuse_port)
        path = _ANY_PATH if self.path is None else self.path
        return _make_url(
            self.scheme, self.addr, path, params, default_port=_WS_DEFAULT_PORT[self.scheme]
        )


@dataclass(frozen=True, init=False)
class QuicServerConfig(_Quic, _Endpoint):
    """Listen for QUIC connections (``quic://host:port``).  A QUIC server always needs a
    certificate.

    Args:
        addr: where to listen (UDP), as for :class:`TcpServerConfig` (default
            ``"127.0.0.1:0"``).
        cert_file: PEM file with the server certificate chain (required, although the signature
            says ``None`` so that *addr* can keep its default).
        key_file: PEM file with its private key (default ``None``: the key is in *cert_file*).
        alpn: ALPN protocols accepted; at least one (default ``("msgtrans.v1",)``).
        idle_timeout: seconds of silence after which a connection is dropped (default 30.0).
        max_frame: the largest stream frame accepted, in bytes (default 16 MiB, the spec's cap).
        max_sessions: the most sessions served at once (default ``None``: no limit).
        limits: receive limits (default 16 MiB payload, 4 KiB ext header).
        zero_copy_threshold: as for :class:`TcpConfig` (default 64 KiB; ``None``: never).
        loopback_datagram_size: as for :class:`QuicConfig`, towards clients on a loopback
            address (default 16384; ``None``: 1200-byte datagrams always).
        closing_period: wait out each connection's closing or draining period (three probe
            timeouts, answering late packets with CONNECTION_CLOSE) before its session counts
            as closed (default ``True``: the UDP socket is shared and stays, so late packets
            would otherwise go unanswered; ``False`` ends sessions a few milliseconds sooner).
        handshake_timeout: seconds a new connection has for its handshake (default 10.0).
        retry: validate client addresses with a stateless Retry (one round trip more):
            ``"auto"`` (the default) once *retry_threshold* connections are half-open,
            ``"always"`` or ``"never"``.
        retry_threshold: the half-open connections from which ``"auto"`` validates
            (default 64).
        max_half_open: the most half-open connections at once; more are refused with
            CONNECTION_REFUSED (default 1024; ``None``: no limit).
        reuse_port: set ``SO_REUSEPORT`` on the UDP socket, as for :class:`TcpServerConfig`:
            the kernel then keeps each client's address and port (its 4-tuple) on one socket,
            so a client that changes address lands on another process (default ``False``).

    Raises:
        ConfigurationError: a field is invalid (``field`` names it).
    """

    addr: tuple[str, int]
    cert_file: str
    key_file: str | None
    alpn: tuple[str, ...]
    idle_timeout: float
    max_frame: int
    max_sessions: int | None
    limits: Limits
    zero_copy_threshold: int | None
    loopback_datagram_size: int | None
    closing_period: bool
    handshake_timeout: float
    retry: str
    retry_threshold: int
    max_half_open: int | None
    reuse_port: bool

    def __init__(
        self,
        addr: str | tuple[str, int] = "127.0.0.1:0",
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        *,
        alpn: Iterable[str] = DEFAULT_ALPN,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_frame: int = QUIC_MAX_FRAME,
        max_sessions: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        loopback_datagram_size: int | None = LOOPBACK_DATAGRAM_SIZE,
        closing_period: bool = True,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        retry: str = "auto",
        retry_threshold: int = DEFAULT_RETRY_THRESHOLD,
        max_half_open: int | None = DEFAULT_MAX_HALF_OPEN,
        reuse_port: bool = False,
    ) -> None:
        _set(self, "addr", _check_addr(addr, server=True))
        if cert_file is None:
            raise ConfigurationError(
                "cert_file", "a QUIC server needs a certificate: pass cert_file= (and key_file=)"
            )
        _set(self, "cert_file", _check_file("cert_file", cert_file, optional=False))
        _set(self, "key_file", _check_file("key_file", key_file))
        _set_quic(self, alpn, idle_timeout)
        _set(self, "max_frame", _check_max_frame(max_frame))
        _set_server_receive(self, max_sessions, limits, zero_copy_threshold)
        _set_quic_datagrams(self, loopback_datagram_size, closing_period)
        _set(self, "handshake_timeout", _required_timeout("handshake_timeout", handshake_timeout))
        if retry not in RETRY_MODES:
            raise ConfigurationError(
                "retry", f"must be one of {', '.join(map(repr, RETRY_MODES))}, got {retry!r}"
            )
        _set(self, "retry", retry)
        _set(self, "retry_threshold", _check_int("retry_threshold", retry_threshold, 0, 2**31))
        _set(self, "max_half_open", _check_optional_int("max_half_open", max_half_open, 1, 2**31))
        _set(self, "reuse_port", _check_bool("reuse_port", reuse_port))

    def to_url(self) -> str:
        """Return a ``quic://`` URL that :func:`parse_server_url` turns back into an equal
        config (``alpn``, ``max_frame``, ``limits`` and ``zero_copy_threshold`` are left out).
        """
        params = [("cert", self.cert_file)]
        if self.key_file is not None:
            params.append(("key", self.key_file))
        params += _seconds_param("idle_timeout", self.idle_timeout, DEFAULT_IDLE_TIMEOUT)
        if self.max_sessions is not None:
            params.append(("max_sessions", str(self.max_sessions)))
        params += _quic_datagram_params(self.loopback_datagram_size, self.closing_period,
                                        default_closing_period=True)
        params += _seconds_param("handshake_timeout", self.handshake_timeout,
                                 DEFAULT_HANDSHAKE_TIMEOUT)
        if self.retry != "auto":
            params.append(("retry", self.retry))
        params += _reuse_port_param(self.reuse_port)
        return _make_url("quic", self.addr, params=params)


# --- unions and entry points ----------------------------------------------------------------------

#: Any client configuration.
ConnectionConfig: TypeAlias = TcpConfig | WebSocketConfig | QuicConfig
#: Any server configuration.
ServerConfig: TypeAlias = TcpServerConfig | WebSocketServerConfig | QuicServerConfig
#: What every client API accepts: a URL string or a client config.
ConnectionConfigLike: TypeAlias = str | TcpConfig | WebSocketConfig | QuicConfig
#: What every server API accepts: a URL string or a server config.
ServerConfigLike: TypeAlias = str | TcpServerConfig | WebSocketServerConfig | QuicServerConfig

_CONNECTION_TYPES = (TcpConfig, WebSocketConfig, QuicConfig)
_SERVER_TYPES = (TcpServerConfig, WebSocketServerConfig, QuicServerConfig)

_NONE = "none"  # a URL's way of saying None (loopback_datagram_size)
_TCP_CLIENT_PARAMS = ("nodelay", "keepalive", "connect_timeout")
_WS_CLIENT_PARAMS = ("connect_timeout",)
_QUIC_DATAGRAM_PARAMS = ("loopback_datagram_size", "closing_period")
_QUIC_CLIENT_PARAMS = ("verify", "ca", "server_name", "connect_timeout", "idle_timeout",
                       *_QUIC_DATAGRAM_PARAMS)


#: How many distinct client URLs :func:`parse_url` remembers.  An application connects to a
#: handful of URLs over and over (a pool, a reconnect loop): parsing one costs 8-15 us, a
#: lookup well under 1 us.  Bounded, so a program that builds URLs on the fly cannot grow it.
_URL_CACHE_SIZE = 256


def parse_url(url: str) -> ConnectionConfig:
    """Turn a client URL into its config.

    The result for a URL is remembered (the last 256 distinct URLs): configs are frozen and
    parsing reads no files and no environment, so the same URL always gives an equal config.
    A bad URL is parsed, and refused, on every call.

    ==================================  =================================================
    URL                                 config
    ==================================  =================================================
    ``tcp://host:port``                 :class:`TcpConfig`
    ``tls://host:port``                 :class:`TcpConfig` with ``tls=TlsConfig()``
    ``ws://host[:port]/path?query``     :class:`WebSocketConfig` (port 80 by default)
    ``wss://host[:port]/path?query``    :class:`WebSocketConfig` with TLS (port 443)
    ``quic://host:port``                :class:`QuicConfig`
    ==================================  =================================================

    Hosts are names, IPv4 addresses or bracketed IPv6 addresses (``[::1]``).  Query parameters
    set fields: ``nodelay``, ``keepalive`` (tcp, tls; ``0``/``1``/``true``/``false``),
    ``connect_timeout`` (seconds, every scheme), ``verify``, ``ca``, ``server_name`` (tls, wss,
    quic), ``cert``, ``key`` (tls client certificate), ``idle_timeout``, ``closing_period`` and
    ``loopback_datagram_size`` (quic; a whole number of bytes, or ``none``).  Other
    parameters are an error, except on ``ws://`` and ``wss://``, where they stay in the request
    target.  Surrounding whitespace is ignored.

    Raises:
        ConfigurationError: unknown scheme or parameter (``field`` ``url``), a missing or bad
            port (``port``), an empty host (``host``), or a bad parameter value (``field`` is
            the parameter's name, or the config field it sets).
    """
    if type(url) is str:  # a str subclass could compare equal yet parse differently
        return _parse_url_cached(url)
    return _parse_url(url)


@functools.lru_cache(maxsize=_URL_CACHE_SIZE)
def _parse_url_cached(url: str) -> ConnectionConfig:
    return _parse_url(url)


def _parse_url(url: str) -> ConnectionConfig:
    parts = _split_url(url)
    scheme = parts.scheme
    if scheme in ("ws", "wss"):
        if scheme == "wss":
            params, rest = _take_params(
                parts, _WS_CLIENT_PARAMS + _WSS_TLS_PARAMS, keep_unknown=True
            )
        else:
            params, rest = _take_params(
                parts, _WS_CLIENT_PARAMS, tls_only=_WSS_TLS_PARAMS, keep_unknown=True
            )
        host, port = _url_hostport(parts, server=False, default_port=_WS_DEFAULT_PORT[scheme])
        target = parts.path or "/"
        ws_url = _make_url(scheme, (host, port), target)
        if rest is not None:
            ws_url += "?" + rest
        kwargs: dict[str, Any] = {}
        if "connect_timeout" in params:
            kwargs["connect_timeout"] = _param_float("connect_timeout",
                                                     params.pop("connect_timeout"))
        tls = TlsConfig(**_tls_kwargs(params)) if scheme == "wss" else None
        return WebSocketConfig(ws_url, tls=tls, **kwargs)
    _no_path(parts)
    if scheme == "quic":
        params, _ = _take_params(parts, _QUIC_CLIENT_PARAMS)
        kwargs = {}
        if "verify" in params:
            kwargs["cert_verification"] = _param_bool("verify", params["verify"])
        if "ca" in params:
            kwargs["ca_file"] = _param_str("ca", params["ca"])
        if "server_name" in params:
            kwargs["server_name"] = _param_str("server_name", params["server_name"])
        for name in ("connect_timeout", "idle_timeout"):
            if name in params:
                kwargs[name] = _param_float(name, params[name])
        kwargs.update(_quic_datagram_kwargs(params))
        addr = _url_hostport(parts, server=False, default_port=None)
        return QuicConfig(addr, **kwargs)
    if scheme == "tls":
        params, _ = _take_params(parts, _TCP_CLIENT_PARAMS + _TLS_CLIENT_PARAMS)
    else:
        params, _ = _take_params(parts, _TCP_CLIENT_PARAMS, tls_only=_TLS_CLIENT_PARAMS)
    kwargs = {}
    for name in ("nodelay", "keepalive"):
        if name in params:
            kwargs[name] = _param_bool(name, params[name])
    if "connect_timeout" in params:
        kwargs["connect_timeout"] = _param_float("connect_timeout", params["connect_timeout"])
    if scheme == "tls":
        kwargs["tls"] = TlsConfig(**_tls_kwargs(params))
    addr = _url_hostport(parts, server=False, default_port=None)
    return TcpConfig(addr, **kwargs)


_SERVER_COMMON = ("max_sessions", "reuse_port")
_SERVER_STREAM = ("backlog", "handshake_timeout", "first_packet_timeout", *_SERVER_COMMON)
_SERVER_CERT = ("cert", "key")


def parse_server_url(
    url: str,
    *,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> ServerConfig:
    """Turn a server URL into its config.

    ``tcp://host:port`` and ``tls://host:port`` give a :class:`TcpServerConfig`,
    ``ws://host[:port]/path`` and ``wss://...`` a :class:`WebSocketServerConfig` (the path is
    the one served; port 80 or 443 when omitted), ``quic://host:port`` a
    :class:`QuicServerConfig`.  Port 0 picks a free port.

    ``tls://``, ``wss://`` and ``quic://`` need a certificate: pass *cert_file* (and *key_file*
    unless the key is in the same file), or put them in the URL as ``?cert=PATH&key=PATH``.
    Other query parameters: ``max_sessions``, ``handshake_timeout`` and ``reuse_port``
    (every scheme),
    ``backlog`` and ``first_packet_timeout`` (seconds, or ``none``; tcp, tls, ws, wss),
    ``nodelay`` and ``keepalive`` (tcp, tls), ``ca`` (tls, wss:
    require client certificates signed by these CAs), ``idle_timeout``, ``closing_period``,
    ``loopback_datagram_size`` and ``retry`` (``auto``, ``always`` or ``never``; quic).

    Args:
        url: the URL to listen on.
        cert_file: the certificate chain file (default ``None``: from ``?cert=``).
        key_file: the private key file (default ``None``: from ``?key=``, else in *cert_file*).

    Raises:
        ConfigurationError: as for :func:`parse_url`; also a missing certificate
            (``cert_file``), a certificate for ``tcp://`` or ``ws://`` (``cert_file``), or the
            same setting given twice (the setting's name).
    """
    parts = _split_url(url)
    scheme = parts.scheme
    secure = scheme in ("tls", "wss", "quic")
    if scheme == "quic":
        allowed: tuple[str, ...] = (*_SERVER_CERT, "idle_timeout", *_QUIC_DATAGRAM_PARAMS,
                                    "handshake_timeout", "retry", *_SERVER_COMMON)
    elif scheme in ("tcp", "tls"):
        allowed = ("nodelay", "keepalive", *_SERVER_STREAM)
    else:
        allowed = _SERVER_STREAM
    server_tls = (*_SERVER_CERT, "ca")
    if scheme in ("tls", "wss"):
        params, _ = _take_params(parts, allowed + server_tls)
    elif scheme == "quic":
        params, _ = _take_params(parts, allowed)
    else:
        params, _ = _take_params(parts, allowed, tls_only=server_tls)
    files: dict[str, str | os.PathLike[str] | None] = {}
    for kwarg, url_name, given in (("cert_file", "cert", cert_file), ("key_file", "key", key_file)):
        if given is not None and not secure:
            raise ConfigurationError(
                kwarg, f"only applies to tls://, wss:// and quic:// servers, not {scheme}://"
            )
        if given is not None and url_name in params:
            raise ConfigurationError(
                kwarg, f"is given both as {kwarg}= and as ?{url_name}= in the URL; give it once"
            )
        files[kwarg] = (
            _param_str(url_name, params[url_name])
            if given is None and url_name in params
            else given
        )
    cert, key = files["cert_file"], files["key_file"]
    if secure and cert is None:
        raise ConfigurationError(
            "cert_file",
            f"{scheme}:// servers need a certificate: pass cert_file= (and key_file=) or add "
            f"?cert=PATH&key=PATH to the URL",
        )
    kwargs: dict[str, Any] = {}
    for name in ("nodelay", "keepalive", "reuse_port"):
        if name in params:
            kwargs[name] = _param_bool(name, params[name])
    for name in ("backlog", "max_sessions"):
        if name in params:
            kwargs[name] = _param_int(name, params[name])
    for name in ("handshake_timeout", "idle_timeout"):
        if name in params:
            kwargs[name] = _param_float(name, params[name])
    if "first_packet_timeout" in params:
        value = params["first_packet_timeout"]
        kwargs["first_packet_timeout"] = (
            None if _param_str("first_packet_timeout", value).lower() == "none"
            else _param_float("first_packet_timeout", value))
    if scheme == "quic":
        _no_path(parts)
        kwargs.update(_quic_datagram_kwargs(params))
        if "retry" in params:
            kwargs["retry"] = _param_str("retry", params["retry"])
        addr = _url_hostport(parts, server=True, default_port=None)
        assert cert is not None
        return QuicServerConfig(addr, cert, key, **kwargs)
    tls = None
    if secure:
        assert cert is not None
        ca = _param_str("ca", params["ca"]) if "ca" in params else None
        tls = ServerTlsConfig(cert, key, ca_file=ca)
    if scheme in ("ws", "wss"):
        addr = _url_hostport(parts, server=True, default_port=_WS_DEFAULT_PORT[scheme])
        path = None if parts.path == _ANY_PATH else (parts.path or "/")
        return WebSocketServerConfig(addr, path, tls=tls, **kwargs)
    _no_path(parts)
    addr = _url_hostport(parts, server=True, default_port=None)
    return TcpServerConfig(addr, tls=tls, **kwargs)


def to_config(target: ConnectionConfigLike) -> ConnectionConfig:
    """Return *target* as a client config: a URL is parsed with :func:`parse_url`, a config is
    returned as it is.  Every client API calls this on what it is given.

    Raises:
        ConfigurationError: the URL is invalid (see :func:`parse_url`), or *target* is neither
            a URL nor a client config (``field`` ``config``; a server config is refused too).
    """
    if isinstance(target, str):
        return parse_url(target)
    if isinstance(target, _CONNECTION_TYPES):
        return target
    hint = "; this is a server config" if isinstance(target, _SERVER_TYPES) else ""
    raise ConfigurationError(
        "config",
        f"must be a URL string or a TcpConfig, WebSocketConfig or QuicConfig, "
        f"got {type(target).__name__}{hint}",
    )


def to_server_config(
    target: ServerConfigLike,
    *,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> ServerConfig:
    """Return *target* as a server config: a URL is parsed with :func:`parse_server_url`
    (*cert_file* and *key_file* go with it), a config is returned as it is.  Every server API
    calls this on what it is given.

    Raises:
        ConfigurationError: the URL is invalid (see :func:`parse_server_url`), *target* is
            neither a URL nor a server config (``field`` ``config``), or *cert_file* /
            *key_file* were given with a config object (set them on the config instead).
    """
    if isinstance(target, str):
        return parse_server_url(target, cert_file=cert_file, key_file=key_file)
    if isinstance(target, _SERVER_TYPES):
        if cert_file is not None or key_file is not None:
            raise ConfigurationError(
                "cert_file" if cert_file is not None else "key_file",
                "only applies with a URL; set the certificate on the config object instead",
            )
        return target
    hint = "; this is a client config" if isinstance(target, _CONNECTION_TYPES) else ""
    raise ConfigurationError(
        "config",
        f"must be a URL string or a TcpServerConfig, WebSocketServerConfig or "
        f"QuicServerConfig, got {type(target).__name__}{hint}",
    )
