"""A blocking listener at ``max_sessions`` counts each refused connection in the transport's
metrics (``connection.refused_by_server``), as the asyncio backend does: stream listeners when
they close the socket, QUIC through its endpoint's ``connections_refused``.

Only 127.0.0.1, port 0, every wait bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

import msgtrans.io_sync as mt
from msgtrans.certs import write_self_signed
from msgtrans.core.config import ServerConfig

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
]

WAIT = 5.0
CODE = "connection.refused_by_server"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("certs"))


def _config(proto: str, certs: tuple[Path, Path]) -> ServerConfig:
    if proto == "tcp":
        return mt.TcpServerConfig("127.0.0.1:0", max_sessions=1)
    if proto == "ws":
        return mt.WebSocketServerConfig("127.0.0.1:0", max_sessions=1)
    return mt.QuicServerConfig("127.0.0.1:0", cert_file=certs[0], key_file=certs[1],
                               max_sessions=1)


def _url(proto: str, port: int, certs: tuple[Path, Path]) -> str:
    if proto == "ws":
        return f"ws://127.0.0.1:{port}/"
    if proto == "quic":
        return f"quic://127.0.0.1:{port}?ca={certs[0]}"
    return f"tcp://127.0.0.1:{port}"


def _refused(transport: mt.Transport) -> int:
    return transport.stats().errors.get(CODE, 0)


def _connect_and_use(client: mt.Transport, url: str) -> None:
    late = client.connect(url, timeout=WAIT)
    late.request(b"?", timeout=2.0)


def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.mark.parametrize("proto", ["tcp", "ws", "quic"])
@pytest.mark.parametrize("extra", [1, 3])
def test_refusals_at_max_sessions_are_counted(proto: str, extra: int,
                                              certs: tuple[Path, Path]) -> None:
    server = mt.Transport()
    client = mt.Transport.builder().connect_timeout(2.0).request_timeout(2.0).build()
    try:
        with server.accept([_config(proto, certs)]) as stream:
            url = _url(proto, stream.addresses[0][1], certs)
            first = client.connect(url, timeout=WAIT)
            stream.accept(timeout=WAIT)
            assert _refused(server) == 0
            for n in range(1, extra + 1):
                # Refused in the protocol's way: TCP closes (the client may connect first and
                # learn it on first use), WebSocket and QUIC fail the connect.
                with pytest.raises(mt.TransportError):
                    _connect_and_use(client, url)
                _until(lambda want=n: _refused(server) >= want,  # type: ignore[misc]
                       f"refusal {n} counted")
                assert _refused(server) == n
            assert server.session_count() == 1
            # Counted once each: nothing more shows up afterwards.
            first.send(b"still here")
            assert _refused(server) == extra
            assert server.stats().as_dict()["errors"][CODE] == extra
    finally:
        client.shutdown(1.0)
        server.graceful_shutdown(2.0)
    # The shutdown forgets the QUIC listeners: their refusals stay counted.
    assert _refused(server) == extra
