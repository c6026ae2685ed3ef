"""What every backend must do, written once and run on each backend over each protocol, plus
each backend's client against each backend's server (they drive the same core machines, so
they must speak the same wire).

Each test body is async and drives its backend through :mod:`.adapters`; the suite is meant to
run under ``python -X dev -W error::ResourceWarning -m pytest tests/backends`` so a leaked
socket fails, and every test checks that no task and no thread outlived it.
"""

from __future__ import annotations

import functools
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.abc
import pytest

from msgtrans.core.packet import HEADER_SIZE, Packet

from .adapters import (
    BACKENDS,
    PROTOCOLS,
    TLS_PROTOCOLS,
    WAIT,
    Backend,
    Certs,
    CloseReason,
    ConfigurationError,
    Listener,
    Msg,
    PacketType,
    ProtocolError,
    Session,
    SessionState,
    Transport,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
    client_url,
    server_thread,
)

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(params=PROTOCOLS)
def proto(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _threads() -> set[threading.Thread]:
    # trio resolves names ("localhost") in its own cached worker threads, which idle on for a
    # while after a run by design: they belong to trio, not to a backend, so they don't count.
    return {t for t in threading.enumerate() if not t.name.startswith("Trio thread")}


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    # The sync backend's I/O thread and serve() workers, the adapter's pool and the matrix's
    # server threads must all be joined by the end of a test.
    before = _threads()
    yield
    end = time.monotonic() + WAIT
    while _threads() - before and time.monotonic() < end:
        time.sleep(0.01)
    assert not _threads() - before, [t.name for t in _threads() - before]


async def answer(session: Session, prefix: bytes = b"re:", count: int = 1) -> None:
    for _ in range(count):
        message = await session.receive()
        assert message.is_request
        await message.respond(prefix + message.payload)


async def send_all(session: Session, payloads: list[bytes]) -> None:
    for payload in payloads:
        await session.send(payload)
        await anyio.sleep(0)  # let the receiver run between sends


async def connect(client: Any, listener: Listener, proto: str, certs: Certs
                  ) -> tuple[Session, Session]:
    cs = await client.connect(client_url(proto, listener.port, certs))
    ss = await listener.accept()
    return cs, ss


# --- messages ---------------------------------------------------------------------------------


def test_receive_many_takes_batches_in_order(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            cs, ss = await connect(client, listener, proto, certs)
            with pytest.raises(ValueError, match="max_messages"):
                await ss.receive_many(0)
            sent = [b"m%d" % i for i in range(40)]
            for payload in sent:
                await cs.send(payload)
            got: list[bytes] = []
            for _ in range(len(sent)):  # at least one message per call
                batch = await ss.receive_many(3)
                assert 1 <= len(batch) <= 3
                got.extend(m.payload for m in batch)
                if len(got) == len(sent):
                    break
            assert got == sent
            # Requests come in the same batches, in order, and are answered from them.
            answers: list[bytes] = []

            async def ask() -> None:
                answers.append((await cs.request(b"q")).payload)

            async with anyio.create_task_group() as tg:
                await cs.send(b"before")
                tg.start_soon(ask)
                batch = await ss.receive_many()
                if len(batch) == 1:  # the request may not have arrived with the message
                    batch += await ss.receive_many()
                assert [m.payload for m in batch] == [b"before", b"q"]
                await batch[1].respond(b"a")
            assert answers == [b"a"]
            await cs.close()
            with pytest.raises(TransportConnectionError):
                await ss.receive_many()

    backend.run(body)


async def until_queued(session: Session, count: int) -> None:
    """Wait until *count* messages are queued on *session* (without taking them)."""
    with anyio.fail_after(WAIT):
        while len(session.raw._inbox or ()) < count:
            await anyio.sleep(0.001)


def test_receive_many_takes_what_is_queued(backend: Backend, proto: str, certs: Certs) -> None:
    """With messages already queued, one call takes all of them (or *max_messages*), in order,
    requests among them; an empty queue waits for the next; a closed session is drained first."""

    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            cs, ss = await connect(client, listener, proto, certs)
            payloads = [b"m%d" % i for i in range(300)]
            for payload in payloads:
                await cs.send(payload, biz_type=4)
            await until_queued(ss, len(payloads))
            batch = await ss.receive_many()
            assert [m.payload for m in batch] == payloads
            assert all(m.biz_type == 4 and not m.is_request for m in batch)
            # The queue is empty: the next call waits for the next message.
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_all, cs, [b"later"])
                assert [m.payload for m in await ss.receive_many()] == [b"later"]
            # Bounded by max_messages.
            for i in range(10):
                await cs.send(b"%d" % i)
            await until_queued(ss, 10)
            sizes: list[int] = []
            got: list[bytes] = []
            while len(got) < 10:
                batch = await ss.receive_many(3)
                sizes.append(len(batch))
                got += [m.payload for m in batch]
            assert sizes == [3, 3, 3, 1]
            assert got == [b"%d" % i for i in range(10)]
            # A request queued behind a message comes in the same batch and is answered.
            replies: list[bytes] = []

            async def ask() -> None:
                replies.append((await cs.request(b"q")).payload)

            async with anyio.create_task_group() as tg:
                await cs.send(b"one-way")
                tg.start_soon(ask)
                await until_queued(ss, 2)
                first, second = await ss.receive_many()
                assert not first.is_request and second.is_request
                await second.respond(b"answer")
            assert replies == [b"answer"]
            # After the peer's close: what came before it first, then the error.
            await cs.send(b"last")
            await cs.close()
            await ss.wait_closed()
            assert [m.payload for m in await ss.receive_many()] == [b"last"]
            with pytest.raises(TransportConnectionError) as info:
                await ss.receive_many()
            assert info.value.error_code == "connection.closed"

    backend.run(body)


def test_one_way_and_requests_both_ways(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            cs, ss = await connect(client, listener, proto, certs)
            assert cs.protocol is ss.protocol
            assert cs.state is SessionState.OPEN
            assert cs.peer_address is not None and ss.peer_address is not None
            # one-way, both ways, through the transport's and the session's methods
            await client.send(cs, b"data", biz_type=3, ext_header=b"x")
            message = await server.receive(ss)
            assert (message.payload, message.biz_type, message.ext_header) == (b"data", 3, b"x")
            assert message.packet_type is PacketType.ONE_WAY
            await ss.send(b"down")
            assert (await cs.receive()).payload == b"down"
            async with anyio.create_task_group() as tg:
                # client -> server request
                tg.start_soon(answer, ss)
                reply = await client.request(cs, b"ping", timeout=WAIT)
                assert reply.payload == b"re:ping" and reply.packet_type is PacketType.RESPONSE
                # server -> client request
                tg.start_soon(answer, cs, b"back:")
                reply = await ss.request(b"hi", biz_type=7)
                assert reply.payload == b"back:hi" and reply.biz_type == 7
            assert client.session_count() == 1 and server.session_count() == 1

    backend.run(body)


def test_message_stream_order_and_close(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            cs, ss = await connect(client, listener, proto, certs)
            for i in range(20):
                await cs.send(b"m%d" % i)
            await cs.close()
            assert cs.is_closed and cs.close_reason is CloseReason.LOCAL
            # The stream yields everything sent before the close, in order, then ends.
            got = [m.payload for m in await server.messages_until_closed(ss)]
            assert got == [b"m%d" % i for i in range(20)]
            await ss.wait_closed()
            assert ss.close_reason is CloseReason.PEER_CLOSED
            with pytest.raises(TransportConnectionError) as info:
                await cs.send(b"late")
            assert info.value.error_code == "connection.closed"
            assert info.value.session_id == cs.id and info.value.operation == "send"

    backend.run(body)


def test_concurrent_requests_on_one_session(backend: Backend, proto: str, certs: Certs) -> None:
    count = 100

    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            cs, ss = await connect(client, listener, proto, certs)
            replies: dict[int, bytes] = {}

            async def one(i: int) -> None:
                replies[i] = (await cs.request(b"%d" % i)).payload

            async with anyio.create_task_group() as tg:
                tg.start_soon(answer, ss, b"re:", count)
                for i in range(count):
                    tg.start_soon(one, i)
            assert [replies[i] for i in range(count)] == [b"re:%d" % i for i in range(count)]
            assert cs.pending_work == 0

    backend.run(body)


def test_large_messages(backend: Backend, proto: str, certs: Certs) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB

    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            cs, ss = await connect(client, listener, proto, certs)
            await cs.send(big)
            await cs.send(big[::-1])
            assert (await ss.receive()).payload == big
            assert (await ss.receive()).payload == big[::-1]
            async with anyio.create_task_group() as tg:
                tg.start_soon(answer, ss, b"")
                assert (await cs.request(big)).payload == big

    backend.run(body)


def test_broadcast_and_send_to_all(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            pairs = [await connect(client, listener, proto, certs) for _ in range(3)]
            clients = [c for c, _ in pairs]
            servers = [s for _, s in pairs]
            assert len({s.id for s in servers}) == 3
            assert server.session_count() == 3
            assert await server.send_to_all(b"news", biz_type=1) == [None, None, None]
            for c in clients:
                message = await c.receive()
                assert message.payload == b"news" and message.biz_type == 1
            await clients[1].close()
            await servers[1].wait_closed()
            # A closed session's failure is reported in its slot; the others still get it.
            results = await server.broadcast(servers, b"again")
            assert results[0] is None and results[2] is None
            assert isinstance(results[1], TransportConnectionError)
            assert results[1].session_id == servers[1].id
            for c in (clients[0], clients[2]):
                assert (await c.receive()).payload == b"again"

    backend.run(body)


def test_timed_out_receive_loses_no_message(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            cs, ss = await connect(client, listener, proto, certs)
            assert await ss.receive_within(0.05) is None
            await cs.send(b"later")
            assert (await ss.receive()).payload == b"later"
            # Timeouts (cancellations, on the async backends) racing arrivals, expiring at
            # different points of a receive's life: each message is taken exactly once, in
            # order, by a receive that completed.
            sent = [b"m%d" % i for i in range(40)]
            got: list[bytes] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_all, cs, sent)
                for i in range(len(sent)):
                    message = await ss.receive_within((0, 0.0002, 0.001, 0.003)[i % 4])
                    if message is not None:
                        got.append(message.payload)
            while len(got) < len(sent):
                got.append((await ss.receive()).payload)
            assert got == sent
            assert ss.connection.session.receive_backlog == (0, 0)

    backend.run(body)


def test_request_timeout_and_double_respond(backend: Backend, proto: str,
                                            certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport(request_timeout=0.15) as server, \
                backend.transport(request_timeout=0.15) as client, \
                server.listen(proto, certs) as listener:
            cs, ss = await connect(client, listener, proto, certs)
            with pytest.raises(TransportTimeoutError) as info:
                await cs.request(b"nobody answers")
            assert info.value.error_code == "timeout.request"
            assert info.value.session_id == cs.id
            assert cs.pending_work == 0
            request = await ss.receive()
            await request.respond(b"late")  # dropped by the client
            with pytest.raises(TransportError):
                await request.respond(b"twice")
            await cs.send(b"one-way")
            message = await ss.receive()
            with pytest.raises(TransportError):
                await message.respond(b"not a request")

    backend.run(body)


# A blocking call cannot be cancelled from outside its thread (io_sync withdraws a request only
# when its waiting thread raises, e.g. KeyboardInterrupt): cancellation is the async backends'.
ASYNC_BACKENDS = ["asyncio", "trio"]


@pytest.mark.parametrize("backend", ASYNC_BACKENDS, indirect=True)
def test_cancelled_request_leaves_nothing_pending(backend: Backend, proto: str,
                                                  certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            cs, ss = await connect(client, listener, proto, certs)
            scope = anyio.CancelScope()

            async def slow() -> None:
                with scope:
                    await cs.request(b"slow")
                    raise AssertionError("not cancelled")

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                request = await ss.receive()
                scope.cancel()
            assert scope.cancelled_caught
            core = cs.connection.session
            assert core.pending_count == 0 and cs.pending_work == 0
            assert core.stats.requests_cancelled == 1
            await request.respond(b"late")  # dropped by the client, counted
            async with anyio.create_task_group() as tg:
                tg.start_soon(answer, ss)
                assert (await cs.request(b"next")).payload == b"re:next"
            assert core.stats.unmatched_responses == 1
            # A deadline around a request withdraws it the same way.
            with anyio.move_on_after(0.05):
                await cs.request(b"deadline")
            assert core.pending_count == 0 and cs.pending_work == 0
            assert core.stats.requests_cancelled == 2
            assert (await ss.receive()).payload == b"deadline"  # it was sent all the same

    backend.run(body)


# --- serve() ----------------------------------------------------------------------------------


class Handler:
    """Records what serve() calls; raises on b"boom" (a message) and b"fail" (a request)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.disconnected = anyio.Event()

    async def on_connected(self, session: Session) -> None:
        self.events.append(("connected", session.id))

    async def on_message(self, session: Session, message: Msg) -> None:
        self.events.append(("message", message.payload))
        if message.payload == b"boom":
            raise RuntimeError("handler bug")
        await session.send(b"echo:" + message.payload)

    async def on_request(self, session: Session, message: Msg) -> bytes:
        if message.payload == b"fail":
            raise ValueError("bad request")
        return b"served:" + message.payload

    async def on_error(self, session: Session, error: BaseException) -> None:
        self.events.append(("error", type(error).__name__))

    async def on_disconnected(self, session: Session, reason: Any) -> None:
        self.events.append(("disconnected", reason))
        self.disconnected.set()


def test_serve_contains_handler_errors(backend: Backend, proto: str, certs: Certs,
                                       caplog: pytest.LogCaptureFixture) -> None:
    handler_box: list[Handler] = []
    reports: list[Any] = []

    async def body() -> None:
        handler = Handler()
        handler_box.append(handler)
        async with backend.transport() as server, backend.transport() as client, \
                server.serve(proto, certs, handler) as port:
            session = await client.connect(client_url(proto, port, certs))
            assert (await session.request(b"x")).payload == b"served:x"
            await session.send(b"boom")  # the handler raises: contained
            await session.send(b"hello")
            assert (await session.receive()).payload == b"echo:hello"
            with pytest.raises(TransportTimeoutError):
                await session.request(b"fail", timeout=0.15)  # on_request raised: no answer
            assert (await session.request(b"y")).payload == b"served:y"
            await session.close()
            with anyio.fail_after(WAIT):
                await handler.disconnected.wait()
            await client.graceful_shutdown(2.0)
            reports.append(await server.graceful_shutdown(2.0))
            # Leaving serve() waited for serve() to end with the shutdown.

    with caplog.at_level(logging.ERROR, logger=backend.logger):
        backend.run(body)
    events = handler_box[0].events
    assert events[0][0] == "connected"
    assert ("message", b"boom") in events
    assert events.count(("error", "RuntimeError")) == 1
    assert events.count(("error", "ValueError")) == 1
    assert events[-1] == ("disconnected", CloseReason.PEER_CLOSED)
    assert reports[0].forced == 0
    assert "handler bug" in caplog.text or "on_message" in caplog.text


# --- connection errors ------------------------------------------------------------------------


def _free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_refused_connection(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport(connect_timeout=0.3) as client:
            if proto == "quic":
                # UDP has no refusal (an ICMP "port unreachable" is not reported): nothing
                # answers, so the handshake times out instead.
                with pytest.raises(TransportTimeoutError) as timed_out:
                    await client.connect(client_url(proto, _free_port(socket.SOCK_DGRAM), certs))
                assert timed_out.value.error_code == "timeout.connect"
            else:
                with pytest.raises(TransportConnectionError) as info:
                    await client.connect(client_url(proto, _free_port(), certs))
                assert info.value.error_code == "connection.refused"
                assert info.value.operation == "connect" and info.value.session_id is not None
            with pytest.raises(ConfigurationError):
                await client.connect("bogus://x")
            assert client.session_count() == 0

    backend.run(body)


@pytest.mark.parametrize("proto", TLS_PROTOCOLS)
def test_untrusted_certificate(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            with pytest.raises(TransportConnectionError) as info:
                await client.connect(client_url(proto, listener.port, certs, trusted=False))
            assert info.value.error_code == "connection.tls_verification"
            # The listener survived the failed handshake.
            ok = await client.connect(client_url(proto, listener.port, certs))
            assert ok.state is SessionState.OPEN

    backend.run(body)


# --- shutdown ---------------------------------------------------------------------------------


def test_graceful_shutdown_report(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client:
            async with server.listen(proto, certs) as listener:
                port = listener.port
                pairs = [await connect(client, listener, proto, certs) for _ in range(2)]
            sessions = [c for c, _ in pairs]
            # A request in flight when the shutdown starts is answered before the close.
            replies: list[bytes] = []

            async def pending() -> None:
                replies.append((await sessions[0].request(b"in flight")).payload)

            async def answer_later(request: Msg) -> None:
                await anyio.sleep(0.05)
                await request.respond(b"done")

            async with anyio.create_task_group() as tg:
                tg.start_soon(pending)
                request = await pairs[0][1].receive()
                tg.start_soon(answer_later, request)
                report = await server.graceful_shutdown(timeout=3.0)
            assert replies == [b"done"]
            assert report.closed_cleanly == 2 and report.forced == 0
            assert report.messages_flushed >= 1
            assert 0 <= report.elapsed < 3.0
            assert server.session_count() == 0
            for s in sessions:
                await s.wait_closed()
                assert s.close_reason is CloseReason.PEER_CLOSED
            if proto in ("ws", "wss"):  # the client saw the server's "going away"
                assert sessions[0].closed_event is not None
                assert sessions[0].closed_event.code == 1001
            with pytest.raises(TransportConnectionError):
                await server.connect(client_url(proto, port, certs))
            assert await server.graceful_shutdown() is report  # once only
            assert (await client.graceful_shutdown(1.0)).forced == 0

    backend.run(body)


def test_shutdown_forces_what_does_not_close(backend: Backend, certs: Certs) -> None:
    """A peer that never answers the close (a raw TCP socket that never reads) is forced
    once the shutdown's timeout is over."""

    async def body() -> None:
        async with backend.transport() as server:
            async with server.listen("tcp", certs) as listener:
                raw = await anyio.connect_tcp("127.0.0.1", listener.port)
                await listener.accept()
            async with raw:
                report = await server.graceful_shutdown(timeout=0.3)
                assert report.forced == 1 and report.closed_cleanly == 0
                assert report.elapsed < 2.0
                assert server.session_count() == 0

    backend.run(body)


# --- peers that are not msgtrans: raw sockets, silent listeners, garbage ----------------------


async def drain_until_dropped(stream: anyio.abc.SocketStream) -> None:
    """Read what the server sends until it drops the connection (EOF or reset)."""
    with anyio.fail_after(WAIT):
        try:
            while True:
                await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            pass


def test_raw_socket_interop(backend: Backend, certs: Certs) -> None:
    """Plain TCP is the bare packet format: a client written with a socket and Packet only
    talks to every backend's server, both ways."""

    def read_packet(sock: socket.socket) -> Packet:
        def exactly(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = sock.recv(n - len(data))
                assert chunk, "EOF"
                data += chunk
            return data

        header = exactly(HEADER_SIZE)
        ext_len, payload_len = struct.unpack_from(">HI", header, 8)
        return Packet.decode(header + exactly(ext_len + payload_len))

    async def body() -> None:
        async with backend.transport() as server, server.listen("tcp", certs) as listener:
            def raw_client() -> tuple[Packet, Packet]:
                with socket.create_connection(("127.0.0.1", listener.port), timeout=WAIT) as sock:
                    sock.sendall(Packet(PacketType.REQUEST, 5, 2, b"raw ping").encode())
                    sock.sendall(Packet(PacketType.ONE_WAY, 6, 0, b"raw one-way").encode())
                    return read_packet(sock), read_packet(sock)

            packets: list[tuple[Packet, Packet]] = []

            async def run_client() -> None:
                packets.append(await anyio.to_thread.run_sync(raw_client))

            async with anyio.create_task_group() as tg:
                tg.start_soon(run_client)
                raw = await listener.accept()
                request = await raw.receive()
                assert request.is_request and request.payload == b"raw ping"
                assert request.raw.message_id == 5 and request.biz_type == 2
                await request.respond(b"raw pong")
                await raw.send(b"pushed")
                message = await raw.receive()
                assert message.payload == b"raw one-way" and not message.is_request
            response, pushed = packets[0]
            assert response.packet_type is PacketType.RESPONSE
            assert response.message_id == 5 and response.payload == b"raw pong"
            assert response.biz_type == 2
            assert pushed.packet_type is PacketType.ONE_WAY and pushed.payload == b"pushed"
            await raw.wait_closed()  # the raw client closed its socket
            assert raw.close_reason is CloseReason.PEER_CLOSED

    backend.run(body)


@pytest.mark.parametrize("proto", ["tcp", "tls", "ws", "wss"])
def test_server_survives_garbage(backend: Backend, proto: str, certs: Certs) -> None:
    """Bytes that are no handshake and no packet: the server drops that connection and goes
    on serving the others, old and new."""
    garbage = (b"GET / HTTP/1.1\r\n\x00\x01garbage\r\n\r\n" if proto == "ws"
               else b"\xff" * 64)  # a bad packet header, or a bad TLS record

    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            cs, ss = await connect(client, listener, proto, certs)
            raw = await anyio.connect_tcp("127.0.0.1", listener.port)
            async with raw:
                await raw.send(garbage)
                await drain_until_dropped(raw)
            if proto == "tcp":
                # Plain TCP has no handshake: the session was accepted, then failed.
                bad = await listener.accept()
                with pytest.raises(ProtocolError) as info:
                    await bad.receive()
                assert info.value.error_code == "protocol.bad_version"
                assert info.value.session_id == bad.id
                assert bad.close_reason is CloseReason.ERROR
            async with anyio.create_task_group() as tg:
                tg.start_soon(answer, ss)
                assert (await cs.request(b"still")).payload == b"re:still"
            cs2, ss2 = await connect(client, listener, proto, certs)
            await cs2.send(b"new")
            assert (await ss2.receive()).payload == b"new"
            assert server.session_count() == 2

    backend.run(body)


def test_quic_listener_survives_garbage(backend: Backend, certs: Certs) -> None:
    """Datagrams that are no QUIC packet (a long header with nothing valid behind it, of
    several sizes) are dropped; the listener's sessions and new connections carry on."""

    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen("quic", certs) as listener:
            cs, ss = await connect(client, listener, "quic", certs)
            async with await anyio.create_connected_udp_socket(
                    "127.0.0.1", listener.port) as udp:
                for size in (1, 40, 1200, 1500):
                    await udp.send(b"\xc3" + b"\x00" * (size - 1))
            async with anyio.create_task_group() as tg:
                tg.start_soon(answer, ss)
                assert (await cs.request(b"still")).payload == b"re:still"
            cs2, ss2 = await connect(client, listener, "quic", certs)
            await cs2.send(b"new")
            assert (await ss2.receive()).payload == b"new"
            assert server.session_count() == 2

    backend.run(body)


def test_connect_timeout(backend: Backend, proto: str, certs: Certs) -> None:
    """A peer that accepts and never speaks: the handshake cannot finish, so the connect
    timeout covers it (plain TCP has none: connected at once, and the shutdown forces it)."""
    kind = socket.SOCK_DGRAM if proto == "quic" else socket.SOCK_STREAM
    silent = socket.socket(socket.AF_INET, kind)
    silent.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        silent.listen(4)  # the kernel accepts; nobody reads or answers
    port = silent.getsockname()[1]
    url = client_url(proto, port, certs)

    async def body() -> None:
        async with backend.transport(connect_timeout=0.3) as transport:

            async def forgotten() -> None:
                # At once on every backend: a shutdown right after counts nothing forced.
                assert not transport.raw._sessions and transport.session_count() == 0

            # The builder's connect timeout, not the adapter's longer one.
            dial = functools.partial(backend.call, transport.raw.connect, url)
            if proto == "tcp":
                session = await dial()
                assert session.state is SessionState.OPEN
            else:
                with pytest.raises(TransportTimeoutError) as info:
                    await dial()
                assert info.value.error_code == "timeout.connect"
                assert info.value.session_id is not None
                assert info.value.operation == "connect"
                await forgotten()
                if backend.name != "sync":  # a blocking connect cannot be cancelled
                    # An enclosing deadline abandons the half-open session just the same.
                    with anyio.move_on_after(0.1) as scope:
                        await transport.raw.connect(url, timeout=WAIT)
                    assert scope.cancelled_caught
                    await forgotten()
            report = await transport.shutdown(timeout=0.2)
            assert report.closed_cleanly + report.forced == (1 if proto == "tcp" else 0)
            assert transport.session_count() == 0

    try:
        backend.run(body)
    finally:
        silent.close()


# --- limits: flow control, max sessions -------------------------------------------------------


def test_slow_reader_pauses_reading(backend: Backend, proto: str, certs: Certs) -> None:
    """A server application that does not read stops the socket reads (bounded memory); the
    client's sends then wait on backpressure; nothing is lost once the reader catches up."""
    payload = b"x" * 16384
    count = 400  # 6.4 MiB: far more than the socket buffers hold

    async def body() -> None:
        async with backend.transport(receive_max_messages=8) as server, \
                backend.transport(send_high_water_bytes=64 * 1024,
                                  send_low_water_bytes=16 * 1024) as client, \
                server.listen(proto, certs) as listener:
            cs, ss = await connect(client, listener, proto, certs)
            core = ss.connection.session
            done = anyio.Event()

            async def sender() -> None:
                await send_all(cs, [payload] * count)
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                with anyio.fail_after(WAIT):
                    while not core.read_paused:  # until the reads pause
                        await anyio.sleep(0.01)
                await anyio.sleep(0.1)
                assert not done.is_set()  # the sender waits on backpressure, not finished
                assert core.read_paused
                queued = len(ss.raw._inbox or ())
                assert queued <= 8 + 64  # the bound, plus what one read can carry
                for _ in range(count):
                    message = await ss.receive()
                    assert message.payload == payload
            assert done.is_set()
            assert not core.read_paused
            assert core.receive_backlog == (0, 0)

    backend.run(body)


async def _connect_and_receive(client: Transport, url: str) -> Msg:
    session = await client.connect(url)
    # TCP and WebSocket may connect before the server refuses: the refusal shows on first use.
    return await session.receive()


def _refused(transport: Transport) -> int:
    count: int = transport.raw.stats().errors.get("connection.refused_by_server", 0)
    return count


def test_max_sessions_refuses_and_counts_extra_connections(backend: Backend, proto: str,
                                                           certs: Certs) -> None:
    """A listener at ``max_sessions`` refuses the next connections in its protocol's way
    (TCP closes the socket, WebSocket rejects the handshake, QUIC answers CONNECTION_REFUSED),
    counts each once as ``connection.refused_by_server``, and serves again once a slot frees."""
    extra = 3

    async def body() -> None:
        async with backend.transport() as server, \
                backend.transport(connect_timeout=2.0) as client:
            async with server.listen(proto, certs, max_sessions=1) as listener:
                url = client_url(proto, listener.port, certs)
                first, first_server = await connect(client, listener, proto, certs)
                assert _refused(server) == 0
                for n in range(1, extra + 1):
                    with pytest.raises(TransportError):
                        await _connect_and_receive(client, url)
                    # The listener counts as it refuses, which may come after the client
                    # gave up.
                    with anyio.fail_after(WAIT):
                        while _refused(server) < n:
                            await anyio.sleep(0.005)
                    assert _refused(server) == n
                assert server.session_count() == 1
                # The session in the slot was not disturbed, and nothing more is counted.
                await first.send(b"still here")
                assert (await first_server.receive()).payload == b"still here"
                assert _refused(server) == extra
                assert server.raw.stats().as_dict()["errors"]["connection.refused_by_server"] \
                    == extra
                # By reason too, QUIC's (counted by its endpoint) as the stream listeners'.
                assert server.raw.stats().refusals.get("max_sessions") == extra
                # A slot frees when the first session goes; that connection is served.
                await first.close()
                await first_server.wait_closed()
                again = await client.connect(url)
                await again.send(b"ok")
                assert (await (await listener.accept()).receive()).payload == b"ok"
                assert server.session_count() == 1 and _refused(server) == extra
            await server.graceful_shutdown()
            # Still counted once the transport has shut down (its QUIC listeners forgotten).
            assert _refused(server) == extra

    backend.run(body)


# --- IPv6 -------------------------------------------------------------------------------------


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="::1 is not available")
def test_ipv6_loopback(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs, host="[::1]") as listener:
            url = client_url(proto, listener.port, certs, host="[::1]")
            session = await client.connect(url)
            await session.send(b"v6")
            accepted = await listener.accept()
            assert (await accepted.receive()).payload == b"v6"
            assert accepted.peer_address[0] == "::1"
            async with anyio.create_task_group() as tg:
                tg.start_soon(answer, accepted)
                assert (await session.request(b"q")).payload == b"re:q"

    backend.run(body)


# --- the QUIC listener's session table --------------------------------------------------------


@pytest.mark.parametrize("how", ["client-close", "server-close", "server-abort"])
def test_quic_listener_forgets_ended_sessions(backend: Backend, how: str, certs: Certs) -> None:
    """Every way a session ends reaches its QUIC listener, which forgets exactly the sessions
    that ended (its table is keyed by machine); the others keep working both ways."""

    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen("quic", certs) as listener:
            pairs = [await connect(client, listener, "quic", certs) for _ in range(6)]
            assert backend.quic_listener_sessions(server.raw) == {ss.raw for _, ss in pairs}
            ending, staying = pairs[::2], pairs[1::2]
            for cs, ss in ending:
                if how == "client-close":
                    await cs.close()
                elif how == "server-close":
                    await ss.close()
                else:
                    ss.raw.abort()
            for cs, ss in ending:
                await cs.wait_closed()
                await ss.wait_closed()
                assert cs.is_closed and ss.is_closed
            assert backend.quic_listener_sessions(server.raw) == {ss.raw for _, ss in staying}
            assert server.session_count() == len(staying)
            for i, (cs, ss) in enumerate(staying):
                await cs.send(b"up %d" % i)
                assert (await ss.receive()).payload == b"up %d" % i
                await ss.send(b"down %d" % i)
                assert (await cs.receive()).payload == b"down %d" % i

    backend.run(body)


# --- every client backend against every server backend ----------------------------------------


class CrossHandler:
    """Answers requests, echoes one-way messages, and asks the client a question on b"ask"."""

    async def on_request(self, session: Session, message: Msg) -> bytes:
        return b"served:" + message.payload

    async def on_message(self, session: Session, message: Msg) -> None:
        if message.payload == b"ask":
            reply = await session.request(b"question")
            await session.send(b"answer was " + reply.payload)
        else:
            await session.send(b"echo:" + message.payload)


@pytest.mark.parametrize("server_backend", BACKENDS)
def test_cross_backend(backend: Backend, server_backend: str, proto: str, certs: Certs) -> None:
    big = bytes(range(256)) * 1024  # 256 KiB

    async def body(port: int) -> None:
        async with backend.transport() as client:
            session = await client.connect(client_url(proto, port, certs))
            assert (await session.request(b"hi")).payload == b"served:hi"
            await session.send(b"one-way")
            assert (await session.receive()).payload == b"echo:one-way"
            assert (await session.request(big)).payload == b"served:" + big
            # The server asks; the client answers.
            await session.send(b"ask")
            question = await session.receive()
            assert question.is_request and question.payload == b"question"
            await question.respond(b"42")
            assert (await session.receive()).payload == b"answer was 42"
            await session.close()
            assert session.closed_event is not None and session.closed_event.clean

    with server_thread(server_backend, proto, certs, CrossHandler) as server:
        backend.run(lambda: body(server.port))
