"""QUIC's ``loopback_datagram_size`` and ``closing_period`` as configuration, and the URL cache.

Both settings are fields of :class:`QuicConfig` and :class:`QuicServerConfig` (checked when the
config is made), query parameters of their URLs (written back by ``to_url`` when not at their
defaults), and reach the machines through :func:`client_connection` and :func:`quic_endpoint`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic import tls
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.certs import write_self_signed
from msgtrans.core import config as cfg
from msgtrans.core.config import (
    LOOPBACK_DATAGRAM_SIZE,
    QuicConfig,
    QuicServerConfig,
    WebSocketConfig,
    parse_server_url,
    parse_url,
)
from msgtrans.core.connection import client_connection, quic_endpoint
from msgtrans.core.errors import ConfigurationError
from msgtrans.core.machine import MachineState
from msgtrans.core.memory import DatagramPipe
from msgtrans.core.quic import LOOPBACK_DATAGRAM_SIZE as MACHINE_LOOPBACK_SIZE
from msgtrans.core.quic import QuicMachine

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
    assert cfg._parse_url(url) == first  # and equal to a fresh parse
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
        assert parse_url(url) == cfg._parse_url(url)
    assert cfg._parse_url_cached.cache_info().currsize <= cfg._URL_CACHE_SIZE


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
