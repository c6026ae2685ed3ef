"""A trio listener at ``max_sessions`` refuses the next connection and counts it in the
transport's metrics as ``connection.refused_by_server`` (as the asyncio backend does): TCP and
WebSocket listeners close the refused socket, a QUIC endpoint answers CONNECTION_REFUSED."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import msgtrans.io_trio as mt
from msgtrans.certs import write_self_signed

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

WAIT = 5.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("certs"))


def refused(transport: mt.Transport) -> int:
    return transport.stats().errors.get("connection.refused_by_server", 0)


async def connect_and_use(client: mt.Transport, url: str) -> None:
    session = await client.connect(url)
    # TCP and WebSocket may connect before the server refuses: the refusal shows on use.
    await session.receive()


@pytest.mark.parametrize("proto", ["tcp", "ws", "quic"])
def test_refusals_at_max_sessions_are_counted(proto: str, certs: tuple[Path, Path]) -> None:
    cert, key = certs
    config: Any = {
        "tcp": mt.TcpServerConfig("127.0.0.1:0", max_sessions=1),
        "ws": mt.WebSocketServerConfig("127.0.0.1:0", max_sessions=1),
        "quic": mt.QuicServerConfig("127.0.0.1:0", cert_file=cert, key_file=key,
                                    max_sessions=1),
    }[proto]

    async def main() -> None:
        async with mt.Transport() as server, mt.Transport() as client, \
                server.accept([config]) as stream:
            port = stream.addresses[0][1]
            url = {"tcp": f"tcp://127.0.0.1:{port}", "ws": f"ws://127.0.0.1:{port}/",
                   "quic": f"quic://localhost:{port}?ca={cert}"}[proto]
            with trio.fail_after(WAIT):
                first = await client.connect(url)
                await stream.__anext__()
            assert refused(server) == 0
            for count in (1, 2):
                with trio.fail_after(WAIT), pytest.raises(mt.TransportError):
                    await connect_and_use(client, url)
                # The listener counts as it refuses, which may come after the client gave up.
                with trio.fail_after(WAIT):
                    while refused(server) < count:
                        await trio.sleep(0.005)
                assert refused(server) == count
            # A slot frees when the first session goes; that connection is served.
            with trio.fail_after(WAIT):
                await first.close()
                while server.session_count():
                    await trio.sleep(0.005)
                again = await client.connect(url)
                await again.send(b"ok")
                accepted = await stream.__anext__()
                assert (await accepted.receive()).payload == b"ok"
            assert refused(server) == 2
        # Still counted once the transport has shut down (its QUIC listeners forgotten).
        assert refused(server) == 2

    trio.run(main)
