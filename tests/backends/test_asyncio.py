"""What is particular to the asyncio driver: task cancellation, flow control (paused reads),
raw-socket and ``websockets`` interop, hostile input, connect timeouts, IPv6.  The behaviour
every backend shares is tested once for all in ``tests/backends/conformance``.

Every test runs its own event loop (``asyncio.run``) under a bound, checks that no task is left
behind, and shuts its transports down; the suite is meant to run under
``python -X dev -W error::ResourceWarning -m pytest tests/backends`` so a leaked socket fails.
"""

from __future__ import annotations

import asyncio
import contextlib
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


# --- cancellation -----------------------------------------------------------------------------


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


# --- servers ----------------------------------------------------------------------------------


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


# --- the hot path: batch sends, immediate answers, timers ------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_send_many_delivers_each_payload_in_order(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs) as p:
            payloads = [b"a" * n for n in (0, 1, 100, 20_000, 70_000)] + [b"end"]
            await within(p.cs.send_many(iter(payloads), biz_type=7))
            await within(p.cs.send_many([]))  # nothing, and no error
            got = [await within(p.ss.receive()) for _ in payloads]
            assert [bytes(m.payload) for m in got] == payloads
            assert {m.biz_type for m in got} == {7}
            ids = [m.message_id for m in got]
            assert ids == list(range(ids[0], ids[0] + len(payloads)))
            assert p.ss.receive_nowait() is None

    run(main)


def test_send_many_refuses_a_closed_session(certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair("tcp", certs) as p:
            await within(p.cs.close())
            with pytest.raises(mt.TransportConnectionError):
                await p.cs.send_many([b"x"])

    run(main)


def test_send_many_past_the_high_watermark_pauses_later_sends(
    certs: tuple[Path, Path],
) -> None:
    async def main() -> None:
        async with pair("tcp", certs) as p:
            # 3000 messages: over the 1024-message high watermark, taken as one batch.
            await within(p.cs.send_many([b"m"] * 3000))
            await within(p.cs.send(b"last"))  # waits for the drain, then goes
            for _ in range(3000):
                assert (await within(p.ss.receive())).payload == b"m"
            assert (await within(p.ss.receive())).payload == b"last"

    run(main)


@pytest.mark.parametrize("proto", ["tcp", "quic"])
def test_try_respond_answers_once(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs) as p:
            task = asyncio.ensure_future(p.cs.request(b"q"))
            request = await within(p.ss.receive())
            assert p.ss.try_respond(request, b"now")
            assert request.responded
            assert (await within(task)).payload == b"now"
            with pytest.raises(mt.TransportConnectionError):
                p.ss.try_respond(request, b"again")
            await within(p.cs.send(b"one-way"))
            message = await within(p.ss.receive())
            with pytest.raises(mt.TransportConnectionError):
                p.ss.try_respond(message, b"no")

    run(main)


def test_burst_of_sends_and_requests_in_one_iteration(certs: tuple[Path, Path]) -> None:
    # The first send of a burst is written through, the rest coalesce into one flush: every
    # message still arrives once and in order, and every request gets its own response.
    async def main() -> None:
        async with pair("tcp", certs) as p:
            server = asyncio.ensure_future(answer(p.ss, count=50))
            replies = await within(
                asyncio.gather(*(p.cs.request(str(i).encode()) for i in range(50)))
            )
            assert [bytes(r.payload) for r in replies] == [f"re:{i}".encode() for i in range(50)]
            await within(server)
            for i in range(10):
                await p.cs.send(str(i).encode())
            got = [bytes((await within(p.ss.receive())).payload) for _ in range(10)]
            assert got == [str(i).encode() for i in range(10)]

    run(main)


def test_short_request_timeout_fires_though_a_longer_one_is_armed(
    certs: tuple[Path, Path],
) -> None:
    # The session timer only moves earlier: a request with a shorter timeout than the one the
    # timer is armed for must still time out on time.
    async def main() -> None:
        async with pair("tcp", certs) as p:
            slow = asyncio.ensure_future(p.cs.request(b"slow", timeout=30.0))
            await asyncio.sleep(0)
            with pytest.raises(mt.TransportTimeoutError):
                await within(p.cs.request(b"fast", timeout=0.05))
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow

    run(main)


def test_serve_answers_queued_requests_in_order(certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        server = mt.Transport.builder().build()
        seen: list[bytes] = []

        class Handler:
            async def on_message(self, session: mt.Session, message: mt.Message) -> None:
                seen.append(bytes(message.payload))

            async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
                if message.payload == b"yield":
                    await asyncio.sleep(0)  # an answer that suspends takes the slow path
                return b"re:" + bytes(message.payload) + b":" + str(len(seen)).encode()

        async with server:
            stream = server.accept([server_config("tcp", certs)])
            await stream.start()
            task = asyncio.ensure_future(server.serve(stream, Handler()))
            async with mt.Transport.builder().build() as client:
                s = await within(client.connect(client_url("tcp", stream.addresses[0][1], certs)))
                await s.send_many([b"a", b"b"])
                replies = await within(asyncio.gather(
                    s.request(b"x"), s.request(b"yield"), s.request(b"y"),
                ))
                assert [bytes(r.payload) for r in replies] == [
                    b"re:x:2", b"re:yield:2", b"re:y:2",
                ]
                assert seen == [b"a", b"b"]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(main)


def test_serve_runs_handlers_as_the_session_task(certs: tuple[Path, Path]) -> None:
    # serve starts handlers from the protocol callback when the session's loop is idle: they
    # must still see a current task (asyncio.timeout works), keep the order of messages when
    # one suspends, and report their errors to on_error without ending the session.
    async def main() -> None:
        server = mt.Transport.builder().build()
        log: list[str] = []
        errors: list[BaseException] = []

        class Handler:
            async def on_message(self, session: mt.Session, message: mt.Message) -> None:
                text = bytes(message.payload).decode()
                if text.startswith("slow"):
                    await asyncio.sleep(0.01)
                log.append(text)

            async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
                assert asyncio.current_task() is not None
                if message.payload == b"boom":
                    raise ValueError("boom")
                async with asyncio.timeout(WAIT):
                    if message.payload == b"wait":
                        await asyncio.sleep(0.01)
                return b"log=" + ",".join(log).encode()

            async def on_error(self, session: mt.Session, error: BaseException) -> None:
                errors.append(error)

        async with server:
            stream = server.accept([server_config("tcp", certs)])
            await stream.start()
            task = asyncio.ensure_future(server.serve(stream, Handler()))
            async with mt.Transport.builder().request_timeout(0.5).build() as client:
                s = await within(client.connect(client_url("tcp", stream.addresses[0][1], certs)))
                await s.send(b"slow1")
                await s.send(b"fast2")
                assert (await within(s.request(b"wait"))).payload == b"log=slow1,fast2"
                with pytest.raises(mt.TransportTimeoutError):
                    await within(s.request(b"boom"))  # never answered
                assert [type(e) for e in errors] == [ValueError]
                await s.send(b"fast3")
                assert (await within(s.request(b"x"))).payload == b"log=slow1,fast2,fast3"
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(main)
