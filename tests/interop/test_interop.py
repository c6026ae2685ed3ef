"""The wire format against code that is not msgtrans, both ways.

``python -m msgtrans serve`` runs as a subprocess; raw sockets, ``ssl``, the ``websockets``
library and aioquic's own asyncio API talk to it with hand-built packets and check the bytes
that come back.  The other way round, the msgtrans asyncio client talks to a ``websockets``
server and an aioquic server that answer requests by hand.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio.client import connect as quic_connect
from aioquic.asyncio.server import serve as quic_serve
from aioquic.quic.configuration import QuicConfiguration
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

import msgtrans.io_asyncio as mt
from msgtrans.certs import write_self_signed
from msgtrans.core.framing import LengthPrefixedDecoder, PacketDecoder, length_prefix
from msgtrans.core.packet import Packet, PacketType

from .serverproc import STOP_TIMEOUT, port_of, serve

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

WAIT = 5.0  # seconds any single wait may take
SUBPROTOCOL = Subprotocol("msgtrans.v1")

REQUEST = Packet(PacketType.REQUEST, message_id=41, biz_type=7, payload=b"ping \x00\xff")
ONE_WAY = Packet(PacketType.ONE_WAY, biz_type=3, payload=b"hello")
#: What the echo server must answer to REQUEST, byte for byte.
RESPONSE_WIRE = Packet(PacketType.RESPONSE, message_id=41, biz_type=7,
                       payload=b"ping \x00\xff").encode()


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, str]]:
    """One echo server on every protocol for the whole module."""
    with serve("--tcp", "127.0.0.1:0", "--tls", "127.0.0.1:0", "--ws", "127.0.0.1:0",
               "--wss", "127.0.0.1:0", "--quic", "127.0.0.1:0") as (_, addresses):
        yield addresses


def check_echoes(packets: list[Packet]) -> None:
    """The answer to REQUEST then ONE_WAY: the response, then the one-way message echoed."""
    assert len(packets) == 2
    response, echo = packets
    assert response.encode() == RESPONSE_WIRE
    assert echo.packet_type is PacketType.ONE_WAY
    assert (echo.biz_type, bytes(echo.payload)) == (3, b"hello")


def stream_exchange(sock: socket.socket) -> list[Packet]:
    """Write REQUEST and ONE_WAY as raw bytes, read until two packets came back."""
    sock.sendall(REQUEST.encode() + ONE_WAY.encode())
    decoder = PacketDecoder()
    packets: list[Packet] = []
    while len(packets) < 2:
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        packets += decoder.feed(data)
    return packets


def test_address_line(server: dict[str, str]) -> None:
    assert set(server) == {"tcp", "tls", "ws", "wss", "quic", "ca"}
    assert server["ws"].startswith("ws://127.0.0.1:") and server["ws"].endswith("/")
    assert server["wss"].startswith("wss://127.0.0.1:")
    assert all(port_of(server[k]) > 0 for k in ("tcp", "tls", "ws", "wss", "quic"))
    assert Path(server["ca"]).is_file()


def test_tcp_raw_socket(server: dict[str, str]) -> None:
    with socket.create_connection(("127.0.0.1", port_of(server["tcp"])), timeout=WAIT) as sock:
        check_echoes(stream_exchange(sock))


def test_tls_ssl_socket(server: dict[str, str]) -> None:
    context = ssl.create_default_context(cafile=server["ca"])
    with socket.create_connection(("127.0.0.1", port_of(server["tls"])), timeout=WAIT) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as sock:
        check_echoes(stream_exchange(sock))


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_websocket_library_client(server: dict[str, str], scheme: str) -> None:
    context = ssl.create_default_context(cafile=server["ca"]) if scheme == "wss" else None
    with ws_connect(server[scheme], subprotocols=[SUBPROTOCOL], ssl=context,
                    open_timeout=WAIT, close_timeout=WAIT) as ws:
        assert ws.subprotocol == SUBPROTOCOL
        ws.send(REQUEST.encode())
        ws.send(ONE_WAY.encode())
        replies = [ws.recv(timeout=WAIT), ws.recv(timeout=WAIT)]
    # One packet per binary message.
    check_echoes([Packet.decode(r) for r in replies if isinstance(r, bytes)])


def test_aioquic_client(server: dict[str, str]) -> None:
    async def exchange() -> list[Packet]:
        config = QuicConfiguration(is_client=True, alpn_protocols=[SUBPROTOCOL],
                                   server_name="localhost")
        config.load_verify_locations(server["ca"])
        async with quic_connect("127.0.0.1", port_of(server["quic"]),
                                configuration=config) as protocol:
            reader, writer = await protocol.create_stream()  # stream 0, bidirectional
            for packet in (REQUEST, ONE_WAY):
                wire = packet.encode()
                writer.write(length_prefix(len(wire)) + wire)
            decoder = LengthPrefixedDecoder()
            packets: list[Packet] = []
            while len(packets) < 2:
                data = await reader.read(65536)
                assert data, "the server ended the stream"
                packets += decoder.feed(data)
            writer.close()  # ends the stream: asyncio warns about a StreamWriter left open
            protocol.close()
            await protocol.wait_closed()
        return packets

    check_echoes(asyncio.run(asyncio.wait_for(exchange(), WAIT)))


def test_sigterm_shuts_down_gracefully() -> None:
    """With no protocol named: tcp, ws and quic; SIGTERM closes the open connection with a FIN,
    exits 0 and removes the generated certificate."""
    with serve() as (proc, addresses):
        assert set(addresses) == {"tcp", "ws", "quic", "ca"}
        with socket.create_connection(("127.0.0.1", port_of(addresses["tcp"])),
                                      timeout=WAIT) as sock:
            check_echoes(stream_exchange(sock))
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(1) == b""  # the graceful close: end of stream, not a reset
        _, err = proc.communicate(timeout=STOP_TIMEOUT)
        assert proc.returncode == 0, err
        assert not Path(addresses["ca"]).exists()


def test_sigint_shuts_down_gracefully() -> None:
    with serve("--ws", "127.0.0.1:0") as (proc, addresses):
        assert set(addresses) == {"ws"}  # no TLS protocol: no certificate
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=STOP_TIMEOUT)
        assert proc.returncode == 0, err


# --- msgtrans clients, servers that are not msgtrans -------------------------------------------


def answer(packet: Packet) -> Packet:
    """What the hand-written servers send back: a response to a request, else the packet."""
    if packet.packet_type is PacketType.REQUEST:
        return Packet(PacketType.RESPONSE, message_id=packet.message_id,
                      biz_type=packet.biz_type, payload=b"re:" + bytes(packet.payload))
    return packet


async def client_checks(url: str) -> None:
    async with mt.Transport() as transport:
        session = await transport.connect(url, timeout=WAIT)
        replies = await asyncio.wait_for(asyncio.gather(
            *(session.request(b"q%d" % i, biz_type=i, timeout=WAIT) for i in range(5))), WAIT)
        assert [(r.biz_type, bytes(r.payload)) for r in replies] == [
            (i, b"re:q%d" % i) for i in range(5)]
        await session.send(b"one-way", biz_type=2)
        echo = await asyncio.wait_for(session.receive(), WAIT)
        assert (echo.is_request, echo.biz_type, bytes(echo.payload)) == (False, 2, b"one-way")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("certs"))


def test_asyncio_client_with_websockets_server() -> None:
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            assert isinstance(message, bytes)
            await ws.send(answer(Packet.decode(message)).encode())

    async def main() -> None:
        async with ws_serve(handler, "127.0.0.1", 0,
                            subprotocols=[SUBPROTOCOL]) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            await client_checks(f"ws://127.0.0.1:{port}/")

    asyncio.run(asyncio.wait_for(main(), 3 * WAIT))


def test_asyncio_client_with_aioquic_server(certs: tuple[Path, Path]) -> None:
    cert, key = certs

    async def main() -> None:
        tasks: set[asyncio.Task[None]] = set()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            decoder = LengthPrefixedDecoder()
            try:
                while data := await reader.read(65536):
                    for packet in decoder.feed(data):
                        wire = answer(packet).encode()
                        writer.write(length_prefix(len(wire)) + wire)
            finally:
                writer.close()

        def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.ensure_future(echo(reader, writer))
            tasks.add(task)

        config = QuicConfiguration(is_client=False, alpn_protocols=[SUBPROTOCOL])
        config.load_cert_chain(cert, key)
        server = await quic_serve("127.0.0.1", 0, configuration=config, stream_handler=on_stream)
        transport: Any = server._transport  # aioquic has no public accessor for the address
        port = transport.get_extra_info("sockname")[1]
        try:
            await client_checks(f"quic://localhost:{port}?ca={cert}")
        finally:
            server.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.01)  # the UDP socket closes on the next loop iteration

    asyncio.run(asyncio.wait_for(main(), 3 * WAIT))
