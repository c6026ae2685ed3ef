"""The server configs' reuse_port option: default off, checked, carried by URLs both ways."""

from __future__ import annotations

import pytest

from msgtrans.core.config import (
    QuicServerConfig,
    TcpServerConfig,
    WebSocketServerConfig,
    parse_server_url,
)
from msgtrans.core.errors import ConfigurationError


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:9000", "ws://127.0.0.1:9000/",
                                 "quic://127.0.0.1:9000?cert=/etc/hostname"])
def test_reuse_port_is_off_by_default_and_round_trips(url: str) -> None:
    config = parse_server_url(url)
    assert config.reuse_port is False
    sep = "&" if "?" in url else "?"
    on = parse_server_url(f"{url}{sep}reuse_port=true")
    assert on.reuse_port is True
    assert "reuse_port=true" in on.to_url()
    assert parse_server_url(on.to_url()) == on


def test_reuse_port_must_be_a_bool() -> None:
    for make in (lambda: TcpServerConfig(reuse_port=1),  # type: ignore[arg-type]
                 lambda: WebSocketServerConfig(reuse_port="yes"),  # type: ignore[arg-type]
                 lambda: QuicServerConfig(cert_file="/etc/hostname",
                                          reuse_port=None)):  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError) as info:
            make()
        assert info.value.field == "reuse_port"
