#!/usr/bin/env python3
"""Fuzz the configuration surface: client and server URLs (``parse_url``,
``parse_server_url``, then the connection factories), the config classes' constructors with
odd values, and the CLI settings (``serve --config`` TOML text and ``MSGTRANS_*`` variables
through ``read_config_file`` / ``env_settings`` / ``apply_settings``).

Checks: whatever the text or the values, the result is a config (or a connection, a configured
builder) or a :class:`~msgtrans.core.errors.ConfigurationError` naming a field; never another
exception.  A parsed URL's config turns back into a URL (``to_url()``) that parses to an equal
config.

CI runs the hypothesis tests; ``python fuzz/fuzz_config.py [flags] [corpus...]`` runs atheris
(the first byte picks the target).  See fuzz/README.md.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from harness import certs
from hypothesis import example, given
from hypothesis import strategies as st
from targets import Reader, main

from msgtrans.cli.config import apply_settings, env_settings, read_config_file
from msgtrans.core import config as cfg
from msgtrans.core.connection import client_connection, server_connection
from msgtrans.core.errors import ConfigurationError
from msgtrans.io_sync import TransportBuilder

SCHEMES = ("tcp", "tls", "ws", "wss", "quic", "udp", "TCP", "", "http", "tcp+tls")
HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1", "[::ffff:1.2.3.4]", "0.0.0.0", "", "a" * 300,
         "ex ample", "[fe80::1%eth0]", "1.2.3.256", "host.", "-h", "[", "xn--d1acufc", "é")
PORTS = ("", ":0", ":1", ":9000", ":65535", ":65536", ":-1", ":x", ":", ":0x10", ":٣", ":+5")
#: Every query parameter any scheme knows (the config module's own lists, so new ones are in).
PARAM_NAMES = tuple(sorted({
    name for attr, value in vars(cfg).items()
    if attr.startswith("_") and attr.endswith(("_PARAMS", "_COMMON", "_STREAM", "_CERT"))
    and isinstance(value, tuple) for name in value
} | {"retry", "ca", "cert", "key", "max_sessions", "backlog", "handshake_timeout", "unknown"}))
VALUES = ("", "0", "1", "-1", "true", "false", "yes", "none", "nan", "inf", "-inf", "1e309",
          "0.5", "1e-9", "99999999999999999999", "auto", "always", "never", "x", "%00", "%ff",
          "/nonexistent", "localhost")
PATHS = ("", "/", "/ws", "/a b", "/%2F", "/*", "/ws?", "/ws#frag", "//x", "/\x00")


def _text(reader: Reader, choices: tuple[str, ...]) -> str:
    """A choice, or (one time in four) text from the input bytes."""
    if reader.uint(1) % 4 == 0:
        return reader.take(reader.below(24)).decode("utf-8", "replace")
    return choices[reader.below(len(choices))]


def url_from(reader: Reader) -> str:
    if reader.uint(1) % 8 == 0:
        return reader.rest().decode("utf-8", "replace")
    url = f"{_text(reader, SCHEMES)}://{_text(reader, HOSTS)}{_text(reader, PORTS)}"
    url += _text(reader, PATHS)
    params = [f"{_text(reader, PARAM_NAMES)}={_text(reader, VALUES)}"
              for _ in range(reader.uint(1) % 5)]
    if params:
        url += "?" + "&".join(params)
    return url if reader.uint(1) % 8 else f"  {url}\n"


def _refused(exc: ConfigurationError) -> None:
    assert exc.field, exc  # names what was wrong


def urls(data: bytes) -> None:
    """A client and a server URL: configs that round-trip through to_url(), connections built
    from them, or ConfigurationError."""
    reader = Reader(data)
    url = url_from(reader)
    try:
        client = cfg.parse_url(url)
    except ConfigurationError as exc:
        _refused(exc)
    else:
        assert cfg.parse_url(client.to_url()) == client, (url, client.to_url())
        try:
            client_connection(client, buffer_pool=None)
        except ConfigurationError as exc:
            _refused(exc)
    c = certs()
    files = ({}, {"cert_file": c.cert_file, "key_file": c.key_file},
             {"cert_file": c.cert_file}, {"cert_file": "/nonexistent"})[reader.uint(1) % 4]
    try:
        server = cfg.parse_server_url(url, **files)  # type: ignore[arg-type]
    except ConfigurationError as exc:
        _refused(exc)
        return
    again = cfg.parse_server_url(server.to_url())
    assert again == server, (url, server.to_url())
    if isinstance(server, (cfg.TcpServerConfig, cfg.WebSocketServerConfig)):
        try:
            server_connection(server, buffer_pool=None)
        except ConfigurationError as exc:
            _refused(exc)


ODD_VALUES: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 2**31, 2**64, 0.0, -0.5, 1e-12, 1e300, math.inf, -math.inf,
    math.nan, "", "1", "x", "127.0.0.1:0", ("127.0.0.1", 0), ("h", -1), ("h",), [], [1, 2],
    {}, b"x", ("a", "b"), (("k", "v"),), (("Host", "x"),), ((b"\x00", "v"),), object(),
)
CLASSES = (cfg.TcpConfig, cfg.WebSocketConfig, cfg.QuicConfig, cfg.TcpServerConfig,
           cfg.WebSocketServerConfig, cfg.QuicServerConfig, cfg.TlsConfig, cfg.ServerTlsConfig)


@functools.cache
def parameters(cls: type) -> tuple[str, ...]:
    return tuple(inspect.signature(cls).parameters)


def constructors(data: bytes) -> None:
    """A config class with odd values in some of its fields: a config or ConfigurationError."""
    reader = Reader(data)
    cls = CLASSES[reader.below(len(CLASSES))]
    names = parameters(cls)
    kwargs = {names[reader.below(len(names))]: ODD_VALUES[reader.below(len(ODD_VALUES))]
              for _ in range(1 + reader.uint(1) % 3)}
    c = certs()
    needs = {"cert_file": c.cert_file} if cls is cfg.ServerTlsConfig else {}
    if cls is cfg.QuicServerConfig:
        needs = {"cert_file": c.cert_file, "key_file": c.key_file}
    first = names[0] if names else None
    if first in ("addr", "url") and first not in kwargs:
        needs[first] = "ws://127.0.0.1:9/" if first == "url" else "127.0.0.1:9"
    try:
        cls(**{**needs, **kwargs})
    except ConfigurationError as exc:
        _refused(exc)


@functools.cache
def toml_file() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="msgtrans-fuzz-toml-"))
    import atexit
    import shutil

    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder / "config.toml"


SETTINGS = ("request_timeout", "connection_pool", "receive_queue", "send_queue",
            "session_settings", "compression", "buffer_pool", "max_payload", "memory_limit",
            "on_shutdown", "worker_threads", "pool_expansion_strategy", "heartbeat_interval",
            "zero_copy_threshold", "max_sessions", "shutdown_timeout", "nope", "build")
TOML_VALUES = ("5", "5.0", "-1", "0", "nan", "inf", "true", '"zstd"', '"x"', "[2, 64, 16]",
               "[]", "[1]", '[1, "a"]', "{ max_messages = 256 }", "{ bad = 1 }", "{}",
               "{ heartbeat_interval = 15.0 }", "{ request_timeout = 1 }", "1979-05-27",
               "[[1]]", '{ threshold = 10, method = "gzip" }', "9999999999999999999")


def toml_text(data: bytes) -> None:
    """A TOML file (made of settings lines, or raw text) applied to a builder."""
    reader = Reader(data)
    if reader.uint(1) % 4 == 0:
        text = reader.rest().decode("utf-8", "replace")
    else:
        lines = ["[transport]"]
        lines += [f"{_text(reader, SETTINGS)} = {_text(reader, TOML_VALUES)}"
                  for _ in range(reader.uint(1) % 4)]
        if reader.uint(1) & 1:
            lines += ["[serve]", f"tcp = {_text(reader, TOML_VALUES)}"]
        if reader.uint(1) % 8 == 0:
            lines.append(f"[{_text(reader, ('other', 'transport', 'serve.x'))}]")
        text = "\n".join(lines) + "\n"
    path = toml_file()
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        transport, _serve = read_config_file(path)
        builder = apply_settings(TransportBuilder(), transport, str(path))
    except ConfigurationError as exc:
        _refused(exc)
        return
    builder.settings()


def environment(data: bytes) -> None:
    """``MSGTRANS_*`` variables applied to a builder."""
    reader = Reader(data)
    environ = {"PATH": "/bin"}
    for _ in range(1 + reader.uint(1) % 4):
        name = _text(reader, SETTINGS).upper()
        value = _text(reader, ("5", "5.0", "none", "None", "null", "[2, 64, 16]", "2,64,16",
                               '{"max_messages": 256}', "zstd", ",", "1,,2", "nan", "true",
                               '"x"', "{", "1,[2]", ""))
        environ[f"MSGTRANS_{name}"] = value
    try:
        settings = env_settings(environ)
        builder = apply_settings(TransportBuilder(), settings, "environment")
    except ConfigurationError as exc:
        _refused(exc)
        return
    builder.settings()


@given(st.binary(max_size=200))
@example(b"\x01")
def test_urls(data: bytes) -> None:
    urls(data)


@given(st.binary(max_size=60))
def test_constructors(data: bytes) -> None:
    constructors(data)


@given(st.binary(max_size=200))
def test_toml_text(data: bytes) -> None:
    toml_text(data)


@given(st.binary(max_size=100))
def test_environment(data: bytes) -> None:
    environment(data)


TARGETS = (urls, constructors, toml_text, environment)


def one_input(data: bytes) -> None:
    """The atheris entry: the first byte picks the target."""
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


if __name__ == "__main__":
    os.environ.pop("MSGTRANS_CONFIG", None)
    main(one_input, [test_urls, test_constructors, test_toml_text, test_environment],
         ("msgtrans.core.config", "msgtrans.cli.config", "msgtrans._driver.builder"))
