"""``serve``, ``demo`` and ``send`` with ``--backend asyncio|trio|sync``: the same echo server and
the same demo on every backend, checked from outside with clients that are not msgtrans's own
(a raw socket, the ``websockets`` library) and with the blocking msgtrans client over QUIC."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

import msgtrans.io_sync as mt
from msgtrans.__main__ import main
from msgtrans.core.framing import PacketDecoder
from msgtrans.core.packet import Packet, PacketType

from .interop.serverproc import STOP_TIMEOUT, port_of, serve

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

WAIT = 5.0  # seconds any single wait may take
BACKENDS = ["asyncio", "trio", "sync"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn (trio only where it is installed)."""
    name = str(request.param)
    if name == "trio":
        pytest.importorskip("trio")
    return name


def _request(message_id: int, payload: bytes) -> Packet:
    return Packet(PacketType.REQUEST, message_id=message_id, biz_type=7, payload=payload)


def _tcp_exchange(address: str) -> Packet:
    """One request over a raw socket; the first packet that comes back."""
    with socket.create_connection(("127.0.0.1", port_of(address)), timeout=WAIT) as sock:
        sock.sendall(_request(5, b"over tcp").encode())
        decoder = PacketDecoder()
        packets: list[Packet] = []
        while not packets:
            data = sock.recv(65536)  # bounded by the socket's timeout
            assert data, "the server closed the connection"
            packets += decoder.feed(data)
    return packets[0]


def _ws_exchange(url: str) -> Packet:
    """One request over the ``websockets`` client; the answer (one packet per message)."""
    with ws_connect(url, subprotocols=[Subprotocol("msgtrans.v1")], open_timeout=WAIT,
                    close_timeout=WAIT) as ws:
        ws.send(_request(6, b"over ws").encode())
        reply = ws.recv(timeout=WAIT)
    assert isinstance(reply, bytes)
    return Packet.decode(reply)


@pytest.fixture
def served(backend: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """``serve --backend B`` on tcp, ws and quic; stopped (SIGTERM, then SIGKILL) at the end
    if the test did not stop it."""
    with serve("--backend", backend, "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0",
               "--quic", "127.0.0.1:0") as running:
        yield running


def test_serve_on_every_backend(served: tuple[subprocess.Popen[str], dict[str, str]]) -> None:
    proc, addresses = served
    assert set(addresses) == {"tcp", "ws", "quic", "ca"}

    response = _tcp_exchange(addresses["tcp"])
    assert (response.packet_type, response.message_id, response.biz_type,
            bytes(response.payload)) == (PacketType.RESPONSE, 5, 7, b"over tcp")

    response = _ws_exchange(addresses["ws"])
    assert (response.packet_type, response.message_id, bytes(response.payload)) == (
        PacketType.RESPONSE, 6, b"over ws")

    with mt.Transport.builder().shutdown_timeout(WAIT).build() as client:
        session = client.connect(f"quic://{addresses['quic']}?ca={addresses['ca']}",
                                 timeout=WAIT)
        reply = session.request(b"over quic", biz_type=9, timeout=WAIT)
        assert (reply.biz_type, bytes(reply.payload)) == (9, b"over quic")
        session.send(b"one-way", biz_type=2, timeout=WAIT)
        echo = session.receive(WAIT)
        assert (echo.is_request, echo.biz_type, bytes(echo.payload)) == (False, 2, b"one-way")

    # The graceful stop: SIGTERM, exit status 0 in bounded time.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=STOP_TIMEOUT + 5.0) == 0


def test_sigint_stops_gracefully(backend: str) -> None:
    with serve("--backend", backend, "--tcp", "127.0.0.1:0") as (proc, addresses):
        assert set(addresses) == {"tcp"}  # no TLS protocol: no certificate, no "ca"
        assert _tcp_exchange(addresses["tcp"]).message_id == 5
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=STOP_TIMEOUT + 5.0) == 0


def test_live_demo_on_every_backend(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--backend", backend]) == 0
    out = capsys.readouterr().out
    assert f"(backend: {backend})" in out
    assert "all checks passed" in out and "FAIL" not in out
    assert "server shutdown: 5 closed cleanly, 0 forced" in out


def test_send_on_every_backend(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    with serve("--tcp", "127.0.0.1:0", "--quic", "127.0.0.1:0") as (_, addresses):
        assert main(["send", f"tcp://{addresses['tcp']}", "one way", "--backend", backend,
                     "--timeout", str(WAIT)]) == 0
        assert main(["send", f"quic://{addresses['quic']}", "ask", "--request", "--ca",
                     addresses["ca"], "--backend", backend, "--timeout", str(WAIT)]) == 0
    assert capsys.readouterr().out == "ask\n"


def test_send_failure_on_every_backend(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # bound, never listening: the connect is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert main(["send", f"tcp://127.0.0.1:{port}", "x", "--backend", backend,
                     "--timeout", "2"]) == 1
    assert "[connection.refused]" in capsys.readouterr().err


def test_demo_rejects_an_unknown_backend(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--backend", "twisted"])
    assert exc.value.code == 2
    assert "invalid choice: 'twisted'" in capsys.readouterr().err
