"""The asyncio driver over real sockets on loopback, written once and run for every protocol.

Every test runs its own event loop (``asyncio.run``) under a bound, checks that no task is left
behind, and shuts its transports down; the suite is meant to run under
``python -X dev -W error::ResourceWarning -m pytest tests/backends`` so a leaked socket fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import msgtrans.io_asyncio as mt
from msgtrans.certs import write_self_signed
from msgtrans.core.packet import Packet, PacketType

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

PROTOCOLS = ["tcp", "tls", "ws", "wss", "quic"]
T = TypeVar("T")
WAIT = 5.0  # seconds any single wait may take


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("certs"))


def server_config(proto: str, certs: tuple[Path, Path]) -> Any:
    cert, key = certs
    tls = mt.ServerTlsConfig(cert, key)
    if proto == "tcp":
        return mt.TcpServerConfig("127.0.0.1:0")
    if proto == "tls":
        return mt.TcpServerConfig("127.0.0.1:0", tls=tls)
    if proto == "ws":
        return mt.WebSocketServerConfig("127.0.0.1:0")
    if proto == "wss":
        return mt.WebSocketServerConfig("127.0.0.1:0", tls=tls)
    return mt.QuicServerConfig("127.0.0.1:0", cert_file=cert, key_file=key)


def client_url(proto: str, port: int, certs: tuple[Path, Path]) -> str:
    path = "/" if proto in ("ws", "wss") else ""
    query = f"?ca={certs[0]}" if proto in ("tls", "wss", "quic") else ""
    return f"{proto}://localhost:{port}{path}{query}"


def run(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 20.0) -> T:
    """Run *main* in a fresh loop, bounded, and check that it left no task behind."""

    async def wrapper() -> T:
        result = await asyncio.wait_for(main(), timeout)
        await asyncio.sleep(0)  # let done-callbacks run
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not left, f"tasks left behind: {left}"
        return result

    return asyncio.run(wrapper())


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, WAIT)


class Pair:
    """A server transport listening on one protocol and a client transport connected to it."""

    server: mt.Transport
    client: mt.Transport
    stream: mt.SessionStream
    port: int
    cs: mt.Session  # client side
    ss: mt.Session  # server side

    async def connect(self, proto: str, certs: tuple[Path, Path]) -> tuple[mt.Session, mt.Session]:
        cs = await within(self.client.connect(client_url(proto, self.port, certs)))
        ss = await within(self.stream.__anext__())
        return cs, ss


@contextlib.asynccontextmanager
async def pair(proto: str, certs: tuple[Path, Path], **builder: float) -> AsyncIterator[Pair]:
    p = Pair()
    b = mt.Transport.builder()
    if "request_timeout" in builder:
        b.request_timeout(builder["request_timeout"])
    p.server = b.build()
    p.client = b.build()
    try:
        async with p.server.accept([server_config(proto, certs)]) as stream:
            p.stream = stream
            p.port = stream.addresses[0][1]
            p.cs, p.ss = await p.connect(proto, certs)
            yield p
    finally:
        await p.client.graceful_shutdown(2.0)
        await p.server.graceful_shutdown(2.0)


async def answer(session: mt.Session, prefix: bytes = b"re:", count: int = 1) -> None:
    for _ in range(count):
        message = await session.receive()
        assert message.is_request
        await message.respond(prefix + bytes(message.payload))


async def _send_all(session: mt.Session, payloads: list[bytes]) -> None:
    for payload in payloads:
        await session.send(payload)
        await asyncio.sleep(0)


# --- the basics, every protocol ---------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_send_request_both_ways(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs) as p:
            assert p.cs.protocol is p.ss.protocol
            assert p.cs.state is mt.SessionState.OPEN
            assert p.cs.peer_address is not None and p.ss.peer_address is not None
            await p.client.send(p.cs, b"data", biz_type=3, ext_header=b"x")
            message = await within(p.server.receive(p.ss))
            assert (bytes(message.payload), message.biz_type, bytes(message.ext_header)) == (
                b"data", 3, b"x")
            assert message.packet_type is PacketType.ONE_WAY
            # client -> server request
            task = asyncio.ensure_future(answer(p.ss))
            reply = await within(p.client.request(p.cs, b"ping", timeout=WAIT))
            await within(task)
            assert reply.payload == b"re:ping" and reply.packet_type is PacketType.RESPONSE
            # server -> client request
            task = asyncio.ensure_future(answer(p.cs, b"back:"))
            reply = await within(p.ss.request(b"hi", biz_type=7))
            await within(task)
            assert reply.payload == b"back:hi" and reply.biz_type == 7
            assert p.client.session_count() == 1 and p.server.session_count() == 1

    run(main)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_message_stream_and_close(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs) as p:
            for i in range(5):
                await p.cs.send(b"m%d" % i)
            await p.cs.close()
            assert p.cs.is_closed and p.cs.close_reason is mt.CloseReason.LOCAL
            got = [bytes(m.payload) async for m in p.server.message_stream(p.ss)]
            assert got == [b"m%d" % i for i in range(5)]
            await within(p.ss.wait_closed())
            assert p.ss.close_reason is mt.CloseReason.PEER_CLOSED
            with pytest.raises(mt.TransportConnectionError) as info:
                await p.cs.send(b"late")
            assert info.value.error_code == "connection.closed"
            assert info.value.session_id == p.cs.id and info.value.operation == "send"

    run(main)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_many_concurrent_requests(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs) as p:
            server = asyncio.ensure_future(answer(p.ss, count=200))
            replies = await within(asyncio.gather(
                *(p.cs.request(b"%d" % i) for i in range(200))))
            await within(server)
            assert [bytes(r.payload) for r in replies] == [b"re:%d" % i for i in range(200)]
            assert p.cs.pending_work == 0

    run(main)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_large_messages(proto: str, certs: tuple[Path, Path]) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB

    async def main() -> None:
        async with pair(proto, certs) as p:
            await p.cs.send(big)
            await p.cs.send(big[::-1])
            first = await within(p.ss.receive())
            second = await within(p.ss.receive())
            assert first.payload == big and second.payload == big[::-1]
            server = asyncio.ensure_future(answer(p.ss, b""))
            reply = await within(p.cs.request(big))
            await within(server)
            assert reply.payload == big

    run(main)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_several_sessions_broadcast(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs) as p:
            more = [await p.connect(proto, certs) for _ in range(2)]
            clients = [p.cs] + [c for c, _ in more]
            servers = [p.ss] + [s for _, s in more]
            assert len({s.id for s in servers}) == 3
            assert p.server.session_count() == 3
            results = await p.server.send_to_all(b"news", biz_type=1)
            assert results == [None, None, None]
            for c in clients:
                assert (await within(c.receive())).payload == b"news"
            await clients[1].close()
            await within(servers[1].wait_closed())
            results = await p.server.broadcast(servers, b"again")
            assert results[0] is None and results[2] is None
            assert isinstance(results[1], mt.TransportConnectionError)
            assert results[1].session_id == servers[1].id
            for c in (clients[0], clients[2]):
                assert (await within(c.receive())).payload == b"again"

    run(main)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_cancel_receive_keeps_message(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs) as p:
            waiter = asyncio.ensure_future(p.ss.receive())
            await asyncio.sleep(0)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            # Cancel receives at every point of their life while messages arrive: each
            # message is taken exactly once, in order, by a receive that completed.
            sent = [b"m%d" % i for i in range(60)]
            sender = asyncio.ensure_future(_send_all(p.cs, sent))
            got: list[bytes] = []
            for i in range(60):
                waiter = asyncio.ensure_future(p.ss.receive())
                for _ in range(i % 4):
                    await asyncio.sleep(0)
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    got.append(bytes((await waiter).payload))
            await within(sender)
            while len(got) < len(sent):
                got.append(bytes((await within(p.ss.receive())).payload))
            assert got == sent
            assert p.ss.connection.session.receive_backlog == (0, 0)

    run(main)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_cancel_request_leaves_nothing_pending(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs) as p:
            task = asyncio.ensure_future(p.cs.request(b"slow"))
            request = await within(p.ss.receive())
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            core = p.cs.connection.session
            assert core.pending_count == 0 and p.cs.pending_work == 0
            assert core.stats.requests_cancelled == 1
            await request.respond(b"late")  # dropped by the client, counted
            server = asyncio.ensure_future(answer(p.ss))
            assert (await within(p.cs.request(b"next"))).payload == b"re:next"
            await within(server)
            assert core.stats.unmatched_responses == 1

    run(main)


@pytest.mark.parametrize("proto", ["tcp", "quic"])
def test_request_timeout_and_double_respond(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs, request_timeout=0.2) as p:
            with pytest.raises(mt.TransportTimeoutError) as info:
                await within(p.cs.request(b"nobody answers"))
            assert info.value.error_code == "timeout.request"
            assert info.value.session_id == p.cs.id
            request = await within(p.ss.receive())
            await request.respond(b"late")
            with pytest.raises(mt.TransportError):
                await request.respond(b"twice")
            await p.cs.send(b"one-way")
            message = await within(p.ss.receive())
            with pytest.raises(mt.TransportError):
                await message.respond(b"not a request")

    run(main)


# --- servers ----------------------------------------------------------------------------------


class Handler:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.disconnected = asyncio.Event()

    async def on_connected(self, session: mt.Session) -> None:
        self.events.append(("connected", session.id))

    async def on_message(self, session: mt.Session, message: mt.Message) -> None:
        self.events.append(("message", bytes(message.payload)))
        if message.payload == b"boom":
            raise RuntimeError("handler bug")
        await session.send(b"echo:" + bytes(message.payload))

    async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        if message.payload == b"fail":
            raise ValueError("bad request")
        return b"served:" + bytes(message.payload)

    async def on_error(self, session: mt.Session, error: BaseException) -> None:
        self.events.append(("error", type(error).__name__))

    async def on_disconnected(self, session: mt.Session, reason: Any) -> None:
        self.events.append(("disconnected", reason))
        self.disconnected.set()


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_serve_handler(proto: str, certs: tuple[Path, Path],
                       caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        server = mt.Transport()
        client = mt.Transport()
        handler = Handler()
        stream = server.accept([server_config(proto, certs)])
        await stream.start()  # to learn the port before serving
        port = stream.addresses[0][1]
        serving = asyncio.ensure_future(server.serve(stream, handler))
        try:
            session = await within(client.connect(client_url(proto, port, certs)))
            assert (await within(session.request(b"x"))).payload == b"served:x"
            await session.send(b"boom")  # the handler raises: contained
            await session.send(b"hello")
            assert (await within(session.receive())).payload == b"echo:hello"
            with pytest.raises(mt.TransportTimeoutError):
                await session.request(b"fail", timeout=0.3)  # on_request raised: no answer
            assert (await within(session.request(b"y"))).payload == b"served:y"
            await session.close()
            await within(handler.disconnected.wait())
        finally:
            await client.graceful_shutdown(2.0)
            report = await server.graceful_shutdown(2.0)
            await within(serving)  # serve() ends with the shutdown
        assert handler.events[0][0] == "connected"
        assert ("message", b"boom") in handler.events
        assert handler.events.count(("error", "RuntimeError")) == 1
        assert handler.events.count(("error", "ValueError")) == 1
        assert handler.events[-1] == ("disconnected", mt.CloseReason.PEER_CLOSED)
        assert report.forced == 0
        assert "handler bug" in caplog.text or "on_message" in caplog.text

    with caplog.at_level(logging.ERROR, logger="msgtrans.io_asyncio"):
        run(main)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_graceful_shutdown(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        server = mt.Transport()
        client = mt.Transport()
        async with server.accept([server_config(proto, certs)]) as stream:
            port = stream.addresses[0][1]
            sessions = [await within(client.connect(client_url(proto, port, certs)))
                        for _ in range(2)]
            accepted = [await within(stream.__anext__()) for _ in range(2)]
        # A request in flight when the shutdown starts is answered before the close.
        pending = asyncio.ensure_future(sessions[0].request(b"in flight"))
        request = await within(accepted[0].receive())

        async def answer_later() -> None:
            await asyncio.sleep(0.05)
            await request.respond(b"done")

        answering = asyncio.ensure_future(answer_later())
        report = await within(server.graceful_shutdown(timeout=3.0))
        await answering
        assert (await within(pending)).payload == b"done"
        assert report.closed_cleanly == 2 and report.forced == 0
        assert report.messages_flushed >= 1
        assert 0 <= report.elapsed < 3.0
        assert server.session_count() == 0
        for s in sessions:
            await within(s.wait_closed())
            assert s.close_reason is mt.CloseReason.PEER_CLOSED
        if proto in ("ws", "wss"):
            closed = sessions[0].connection.session  # the client saw the server's 1001
            assert closed.state is mt.SessionState.CLOSED
            assert sessions[0].closed_event is not None
            assert sessions[0].closed_event.code == 1001
        with pytest.raises(mt.TransportConnectionError):
            await server.connect(client_url(proto, port, certs))
        again = await server.graceful_shutdown()
        assert again is report
        client_report = await client.graceful_shutdown(1.0)
        assert client_report.forced == 0

    run(main)


def test_shutdown_forces_what_does_not_close(certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        server = mt.Transport()
        async with server.accept([server_config("tcp", certs)]) as stream:
            port = stream.addresses[0][1]
            # A raw peer that never answers the close (it never reads).
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await within(stream.__anext__())
        report = await within(server.graceful_shutdown(timeout=0.3))
        assert report.forced == 1 and report.closed_cleanly == 0
        assert report.elapsed < 2.0
        writer.close()
        await writer.wait_closed()

    run(main)


# --- errors -----------------------------------------------------------------------------------


def test_connect_errors(certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with mt.Transport() as transport:
            # A free port with nothing listening.
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
            with pytest.raises(mt.TransportConnectionError) as info:
                await within(transport.connect(f"tcp://127.0.0.1:{port}"))
            assert info.value.error_code == "connection.refused"
            assert info.value.operation == "connect" and info.value.session_id is not None
            with pytest.raises(mt.ConfigurationError):
                await transport.connect("bogus://x")
            # TLS without trusting the self-signed certificate.
            server = mt.Transport()
            async with server.accept([server_config("tls", certs)]) as stream:
                tls_port = stream.addresses[0][1]
                with pytest.raises(mt.TransportConnectionError) as info:
                    await within(transport.connect(f"tls://localhost:{tls_port}"))
                assert info.value.error_code == "connection.tls_verification"
                # The listener survived the failed handshake.
                ok = await within(transport.connect(client_url("tls", tls_port, certs)))
                assert ok.state is mt.SessionState.OPEN
            await server.graceful_shutdown(1.0)
            assert transport.session_count() in (0, 1)

    run(main)


@pytest.mark.parametrize("proto", ["tcp", "ws"])
def test_server_survives_garbage(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs) as p:
            reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
            garbage = (b"\xff" * 64 if proto == "tcp"
                       else b"GET / HTTP/1.1\r\n\x00\x01garbage\r\n\r\n")
            writer.write(garbage)
            await writer.drain()
            # The server drops that connection (EOF or reset) ...
            with contextlib.suppress(ConnectionError):
                while await within(reader.read(65536)):
                    pass
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            if proto == "tcp":
                # Plain TCP has no handshake: the session was accepted, then failed.
                bad = await within(p.stream.__anext__())
                with pytest.raises(mt.ProtocolError) as info:
                    await within(bad.receive())
                assert info.value.error_code == "protocol.bad_version"
                assert info.value.session_id == bad.id
                assert bad.close_reason is mt.CloseReason.ERROR
            # ... and carries on with the others, old and new.
            server = asyncio.ensure_future(answer(p.ss))
            assert (await within(p.cs.request(b"still"))).payload == b"re:still"
            await within(server)
            cs2, ss2 = await p.connect(proto, certs)
            await cs2.send(b"new")
            assert (await within(ss2.receive())).payload == b"new"

    run(main)


# --- interop ----------------------------------------------------------------------------------


def _read_packet(sock: socket.socket) -> Packet:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "EOF"
            data += chunk
        return data

    header = exactly(16)
    ext_len, payload_len = struct.unpack_from(">HI", header, 8)
    packet = Packet.decode(header + exactly(ext_len + payload_len))
    return packet


def test_raw_socket_interop(certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair("tcp", certs) as p:
            def raw_client() -> tuple[Packet, Packet]:
                with socket.create_connection(("127.0.0.1", p.port), timeout=WAIT) as sock:
                    sock.sendall(Packet(PacketType.REQUEST, 5, 2, b"raw ping").encode())
                    sock.sendall(Packet(PacketType.ONE_WAY, 6, 0, b"raw one-way").encode())
                    response = _read_packet(sock)
                    pushed = _read_packet(sock)
                    return response, pushed

            client = asyncio.ensure_future(asyncio.to_thread(raw_client))
            raw = await within(p.stream.__anext__())
            request = await within(raw.receive())
            assert request.payload == b"raw ping" and request.message_id == 5
            await request.respond(b"raw pong")
            await raw.send(b"pushed")
            assert (await within(raw.receive())).payload == b"raw one-way"
            response, pushed = await within(client)
            assert response.packet_type is PacketType.RESPONSE
            assert response.message_id == 5 and response.payload == b"raw pong"
            assert response.biz_type == 2
            assert pushed.payload == b"pushed"
            await within(raw.wait_closed())

    run(main)


def test_websockets_library_client(certs: tuple[Path, Path]) -> None:
    from websockets.asyncio.client import connect

    async def main() -> None:
        async with pair("ws", certs) as p:
            url = f"ws://127.0.0.1:{p.port}/"
            async with connect(url, subprotocols=["msgtrans.v1"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "msgtrans.v1"
                session = await within(p.stream.__anext__())
                await ws.send(Packet(PacketType.REQUEST, 9, 1, b"from websockets").encode())
                request = await within(session.receive())
                assert request.payload == b"from websockets"
                await request.respond(b"to websockets")
                frame = await within(ws.recv())
                assert isinstance(frame, bytes)
                packet = Packet.decode(frame)
                assert packet.message_id == 9 and packet.payload == b"to websockets"
                await session.send(b"push")
                frame = await within(ws.recv())
                assert isinstance(frame, bytes)
                packet = Packet.decode(frame)
                assert packet.payload == b"push"
            await within(session.wait_closed())
            assert session.close_reason is mt.CloseReason.PEER_CLOSED

    run(main)


# --- flow control -----------------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["tcp", "tls", "ws", "wss", "quic"])
def test_slow_reader_pauses_reading(proto: str, certs: tuple[Path, Path]) -> None:
    """A server application that does not read stops the socket reads (bounded memory); the
    client's sends then wait on backpressure; nothing is lost once the reader catches up."""

    async def main() -> None:
        server = mt.Transport.builder().session_settings(receive_max_messages=8).build()
        client = (mt.Transport.builder()
                  .session_settings(send_high_water_bytes=64 * 1024,
                                    send_low_water_bytes=16 * 1024).build())
        try:
            async with server.accept([server_config(proto, certs)]) as stream:
                port = stream.addresses[0][1]
                cs = await within(client.connect(client_url(proto, port, certs)))
                ss = await within(stream.__anext__())
            payload = b"x" * 16384
            count = 400  # 6.4 MiB: far more than the socket buffers hold
            sender = asyncio.ensure_future(_send_all(cs, [payload] * count))
            for _ in range(500):  # bounded: until the reads pause
                if ss.connection.session.read_paused:
                    break
                await asyncio.sleep(0.01)
            assert ss.connection.session.read_paused
            await asyncio.sleep(0.1)  # the sender is stuck on backpressure, not finished
            assert not sender.done()
            queued = len(ss._inbox)
            assert queued <= 8 + 64  # the bound, plus what one read can carry
            for _ in range(count):
                message = await within(ss.receive())
                assert len(message.payload) == len(payload)
            await within(sender)
            assert not ss.connection.session.read_paused
        finally:
            await client.graceful_shutdown(2.0)
            await server.graceful_shutdown(2.0)

    run(main)


def test_quic_listener_survives_garbage(certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair("quic", certs) as p:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=("127.0.0.1", p.port))
            try:
                for size in (1, 40, 1200, 1500):
                    transport.sendto(b"\xc3" + b"\x00" * (size - 1))
            finally:
                transport.close()
            server = asyncio.ensure_future(answer(p.ss))
            assert (await within(p.cs.request(b"still"))).payload == b"re:still"
            await within(server)

    run(main)


@pytest.mark.parametrize("proto", ["tcp", "tls", "ws"])
def test_connect_timeout_and_immediate_shutdown(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        # A peer that accepts and never speaks: the handshake (or, for plain TCP, nothing at
        # all) cannot finish, so the connect timeout covers it.
        held: list[asyncio.StreamWriter] = []

        async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            held.append(w)

        listener = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        transport = mt.Transport.builder().connect_timeout(0.3).build()
        try:
            if proto != "tcp":
                with pytest.raises(mt.TransportTimeoutError) as info:
                    await within(transport.connect(client_url(proto, port, certs)))
                assert info.value.error_code == "timeout.connect"
                assert info.value.session_id is not None
            else:
                # TCP has no handshake: connected at once; shutdown() then forces it.
                session = await within(transport.connect(client_url(proto, port, certs)))
                assert session.state is mt.SessionState.OPEN
            report = await within(transport.shutdown(timeout=0.2))
            assert report.closed_cleanly + report.forced == (1 if proto == "tcp" else 0)
            assert transport.session_count() == 0
        finally:
            for w in held:
                w.close()
            listener.close()
            await listener.wait_closed()

    run(main)


async def _connect_and_receive(client: mt.Transport, url: str) -> mt.Message:
    session = await client.connect(url)
    # TCP connects before the server refuses: the refusal shows on first use.
    return await session.receive()


@pytest.mark.parametrize("proto", ["tcp", "ws"])
def test_max_sessions_refuses_extra_connections(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        server = mt.Transport()
        client = mt.Transport()
        config = (mt.TcpServerConfig("127.0.0.1:0", max_sessions=1) if proto == "tcp"
                  else mt.WebSocketServerConfig("127.0.0.1:0", max_sessions=1))
        try:
            async with server.accept([config]) as stream:
                port = stream.addresses[0][1]
                first = await within(client.connect(client_url(proto, port, certs)))
                await within(stream.__anext__())
                with pytest.raises(mt.TransportError):
                    await within(_connect_and_receive(client, client_url(proto, port, certs)))
                await first.close()
                # A slot is free again.
                again = await within(client.connect(client_url(proto, port, certs)))
                await again.send(b"ok")
                assert (await within((await within(stream.__anext__())).receive())).payload == b"ok"
        finally:
            await client.graceful_shutdown(2.0)
            await server.graceful_shutdown(2.0)

    run(main)


def test_ipv6_loopback(certs: tuple[Path, Path]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main() -> None:
        server = mt.Transport()
        client = mt.Transport()
        try:
            try:
                stream = server.accept([mt.TcpServerConfig("[::1]:0"),
                                        mt.QuicServerConfig("[::1]:0", cert_file=certs[0],
                                                            key_file=certs[1])])
                await stream.start()
            except mt.TransportError:
                pytest.skip("::1 is not available")
            async with stream:
                tcp_port, quic_port = (a[1] for a in stream.addresses)
                for url in (f"tcp://[::1]:{tcp_port}",
                            f"quic://[::1]:{quic_port}?ca={certs[0]}"):
                    session = await within(client.connect(url))
                    await session.send(b"v6")
                    accepted = await within(stream.__anext__())
                    assert (await within(accepted.receive())).payload == b"v6"
        finally:
            await client.graceful_shutdown(2.0)
            await server.graceful_shutdown(2.0)

    run(main)
