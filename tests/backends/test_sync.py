"""The blocking driver (``msgtrans.io_sync``) over real sockets on loopback, every protocol.

Every test checks that no thread is left behind (the I/O thread and every handler pool are
joined by the shutdown) and the suite is meant to run under
``python -X dev -W error::ResourceWarning -m pytest tests/backends/test_sync.py`` so a leaked
socket fails.  Only 127.0.0.1 / localhost, port 0, every wait bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import msgtrans.io_asyncio as amt
import msgtrans.io_sync as mt
from msgtrans.certs import write_self_signed
from msgtrans.core.packet import PacketType

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

PROTOCOLS = ["tcp", "tls", "ws", "wss", "quic"]
WAIT = 5.0  # seconds any single wait may take
T = TypeVar("T")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("certs"))


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    before = threading.active_count()
    yield
    end = time.monotonic() + WAIT
    while threading.active_count() > before and time.monotonic() < end:
        time.sleep(0.01)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


def server_config(proto: str, certs: tuple[Path, Path], lib: Any = mt) -> Any:
    cert, key = certs
    tls = lib.ServerTlsConfig(cert, key)
    if proto == "tcp":
        return lib.TcpServerConfig("127.0.0.1:0")
    if proto == "tls":
        return lib.TcpServerConfig("127.0.0.1:0", tls=tls)
    if proto == "ws":
        return lib.WebSocketServerConfig("127.0.0.1:0")
    if proto == "wss":
        return lib.WebSocketServerConfig("127.0.0.1:0", tls=tls)
    return lib.QuicServerConfig("127.0.0.1:0", cert_file=cert, key_file=key)


def client_url(proto: str, port: int, certs: tuple[Path, Path]) -> str:
    path = "/" if proto in ("ws", "wss") else ""
    query = f"?ca={certs[0]}" if proto in ("tls", "wss", "quic") else ""
    return f"{proto}://localhost:{port}{path}{query}"


class Background:
    """Run a function in a thread; join it (bounded) and re-raise what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, name="test-background")
        self.thread.start()

    def join(self, timeout: float = WAIT) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def answer(session: mt.Session, prefix: bytes = b"re:", count: int = 1) -> Background:
    def run() -> None:
        for _ in range(count):
            message = session.receive(timeout=WAIT)
            assert message.is_request
            message.respond(prefix + bytes(message.payload))

    return Background(run)


class Pair:
    server: mt.Transport
    client: mt.Transport
    stream: mt.SessionStream
    port: int
    cs: mt.Session
    ss: mt.Session

    def connect(self, proto: str, certs: tuple[Path, Path]) -> tuple[mt.Session, mt.Session]:
        cs = self.client.connect(client_url(proto, self.port, certs), timeout=WAIT)
        ss = self.stream.accept(timeout=WAIT)
        return cs, ss


@contextlib.contextmanager
def pair(proto: str, certs: tuple[Path, Path], **builder: float) -> Iterator[Pair]:
    p = Pair()
    b = mt.Transport.builder()
    if "request_timeout" in builder:
        b.request_timeout(builder["request_timeout"])
    p.server = b.build()
    p.client = b.build()
    try:
        with p.server.accept([server_config(proto, certs)]) as stream:
            p.stream = stream
            p.port = stream.addresses[0][1]
            p.cs, p.ss = p.connect(proto, certs)
            yield p
    finally:
        p.client.graceful_shutdown(2.0)
        p.server.graceful_shutdown(2.0)


# --- the basics, every protocol ---------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_send_request_both_ways(proto: str, certs: tuple[Path, Path]) -> None:
    with pair(proto, certs) as p:
        assert p.cs.protocol is p.ss.protocol
        assert p.cs.state is mt.SessionState.OPEN
        assert p.cs.peer_address is not None and p.ss.peer_address is not None
        p.client.send(p.cs, b"data", biz_type=3, ext_header=b"x")
        message = p.server.receive(p.ss, timeout=WAIT)
        assert (bytes(message.payload), message.biz_type, bytes(message.ext_header)) == (
            b"data", 3, b"x")
        assert message.packet_type is PacketType.ONE_WAY
        server = answer(p.ss)
        reply = p.client.request(p.cs, b"ping", timeout=WAIT)
        server.join()
        assert reply.payload == b"re:ping" and reply.packet_type is PacketType.RESPONSE
        client = answer(p.cs, b"back:")
        reply = p.ss.request(b"hi", biz_type=7, timeout=WAIT)
        client.join()
        assert reply.payload == b"back:hi" and reply.biz_type == 7
        assert p.client.session_count() == 1 and p.server.session_count() == 1


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_receive_timeout_keeps_message(proto: str, certs: tuple[Path, Path]) -> None:
    with pair(proto, certs) as p:
        start = time.monotonic()
        with pytest.raises(mt.TransportTimeoutError) as info:
            p.ss.receive(timeout=0.1)
        assert 0.05 < time.monotonic() - start < 2.0
        assert info.value.session_id == p.ss.id and info.value.operation == "receive"
        p.cs.send(b"later")
        assert p.ss.receive(timeout=WAIT).payload == b"later"
        # Timeouts racing arrivals: every message is taken exactly once, in order.
        sent = [b"m%d" % i for i in range(40)]
        def send_all() -> None:
            for m in sent:
                p.cs.send(m)

        sender = Background(send_all)
        got: list[bytes] = []
        while len(got) < len(sent):
            with contextlib.suppress(mt.TransportTimeoutError):
                got.append(bytes(p.ss.receive(timeout=0.001).payload))
        sender.join()
        assert got == sent
        assert p.ss.connection.session.receive_backlog == (0, 0)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_messages_iterator_and_close(proto: str, certs: tuple[Path, Path]) -> None:
    with pair(proto, certs) as p:
        for i in range(5):
            p.cs.send(b"m%d" % i)
        p.cs.close(timeout=WAIT)
        assert p.cs.is_closed and p.cs.close_reason is mt.CloseReason.LOCAL
        got = [bytes(m.payload) for m in p.server.message_stream(p.ss, timeout=WAIT)]
        assert got == [b"m%d" % i for i in range(5)]
        p.ss.wait_closed(WAIT)
        assert p.ss.close_reason is mt.CloseReason.PEER_CLOSED
        with pytest.raises(mt.TransportConnectionError) as info:
            p.cs.send(b"late")
        assert info.value.error_code == "connection.closed"
        assert info.value.session_id == p.cs.id and info.value.operation == "send"


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_many_threads_one_session(proto: str, certs: tuple[Path, Path]) -> None:
    threads, each = 8, 50
    with pair(proto, certs) as p:
        def serve_requests() -> int:
            one_way = answered = 0
            while answered < threads * each:
                message = p.ss.receive(timeout=WAIT)
                if message.is_request:
                    message.respond(b"re:" + bytes(message.payload))
                    answered += 1
                else:
                    one_way += 1
            return one_way

        server = Background(serve_requests)

        def worker(n: int) -> list[bytes]:
            out = []
            for i in range(each):
                p.cs.send(b"one-way")
                out.append(bytes(p.cs.request(b"%d-%d" % (n, i), timeout=WAIT).payload))
            return out

        workers = [Background(lambda n=n: worker(n)) for n in range(threads)]  # type: ignore[misc]
        results = [w.join(20.0) for w in workers]
        for n, replies in enumerate(results):
            assert replies == [b"re:%d-%d" % (n, i) for i in range(each)]
        assert p.cs.pending_work == 0
        assert p.cs.connection.session.pending_count == 0
        one_way = server.join()
        while one_way < threads * each:  # the last one-way messages may trail the requests
            assert not p.ss.receive(timeout=WAIT).is_request
            one_way += 1


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_large_messages(proto: str, certs: tuple[Path, Path]) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    with pair(proto, certs) as p:
        p.cs.send(big)
        p.cs.send(big[::-1])
        assert p.ss.receive(timeout=WAIT).payload == big
        assert p.ss.receive(timeout=WAIT).payload == big[::-1]
        server = answer(p.ss, b"")
        assert p.cs.request(big, timeout=WAIT).payload == big
        server.join()


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_several_sessions_broadcast(proto: str, certs: tuple[Path, Path]) -> None:
    with pair(proto, certs) as p:
        more = [p.connect(proto, certs) for _ in range(2)]
        clients = [p.cs] + [c for c, _ in more]
        servers = [p.ss] + [s for _, s in more]
        assert len({s.id for s in servers}) == 3
        assert p.server.session_count() == 3
        assert p.server.send_to_all(b"news", biz_type=1) == [None, None, None]
        for c in clients:
            assert c.receive(timeout=WAIT).payload == b"news"
        clients[1].close(timeout=WAIT)
        servers[1].wait_closed(WAIT)
        results = p.server.broadcast(servers, b"again")
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], mt.TransportConnectionError)
        assert results[1].session_id == servers[1].id
        for c in (clients[0], clients[2]):
            assert c.receive(timeout=WAIT).payload == b"again"


@pytest.mark.parametrize("proto", ["tcp", "quic"])
def test_request_timeout_and_double_respond(proto: str, certs: tuple[Path, Path]) -> None:
    with pair(proto, certs, request_timeout=0.2) as p:
        with pytest.raises(mt.TransportTimeoutError) as info:
            p.cs.request(b"nobody answers")
        assert info.value.error_code == "timeout.request"
        assert info.value.session_id == p.cs.id
        request = p.ss.receive(timeout=WAIT)
        request.respond(b"late")
        with pytest.raises(mt.TransportError):
            request.respond(b"twice")
        p.cs.send(b"one-way")
        message = p.ss.receive(timeout=WAIT)
        with pytest.raises(mt.TransportError):
            message.respond(b"not a request")


# --- servers ----------------------------------------------------------------------------------


class Handler:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.disconnected = threading.Event()
        self._lock = threading.Lock()

    def _add(self, event: tuple[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def on_connected(self, session: mt.Session) -> None:
        self._add(("connected", session.id))

    def on_message(self, session: mt.Session, message: mt.Message) -> None:
        self._add(("message", bytes(message.payload)))
        if message.payload == b"boom":
            raise RuntimeError("handler bug")
        session.send(b"echo:" + bytes(message.payload))

    def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        if message.payload == b"fail":
            raise ValueError("bad request")
        return b"served:" + bytes(message.payload)

    def on_error(self, session: mt.Session, error: BaseException) -> None:
        self._add(("error", type(error).__name__))

    def on_disconnected(self, session: mt.Session, reason: Any) -> None:
        self._add(("disconnected", reason))
        self.disconnected.set()


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_serve_handler(proto: str, certs: tuple[Path, Path],
                       caplog: pytest.LogCaptureFixture) -> None:
    server = mt.Transport()
    client = mt.Transport()
    handler = Handler()
    stream = server.accept([server_config(proto, certs)])
    with caplog.at_level(logging.ERROR, logger="msgtrans.io_sync"):
        stream.start()
        port = stream.addresses[0][1]
        serving = Background(lambda: server.serve(stream, handler, workers=2))
        try:
            session = client.connect(client_url(proto, port, certs), timeout=WAIT)
            assert session.request(b"x", timeout=WAIT).payload == b"served:x"
            session.send(b"boom")  # the handler raises: contained
            session.send(b"hello")
            assert session.receive(timeout=WAIT).payload == b"echo:hello"
            with pytest.raises(mt.TransportTimeoutError):
                session.request(b"fail", timeout=0.3)  # on_request raised: no answer
            assert session.request(b"y", timeout=WAIT).payload == b"served:y"
            session.close(timeout=WAIT)
            assert handler.disconnected.wait(WAIT)
        finally:
            client.graceful_shutdown(2.0)
            report = server.graceful_shutdown(2.0)
            serving.join()  # serve() ends with the shutdown
    assert handler.events[0][0] == "connected"
    assert ("message", b"boom") in handler.events
    assert handler.events.count(("error", "RuntimeError")) == 1
    assert handler.events.count(("error", "ValueError")) == 1
    assert handler.events[-1] == ("disconnected", mt.CloseReason.PEER_CLOSED)
    assert report.forced == 0
    assert "handler bug" in caplog.text or "on_message" in caplog.text


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_graceful_shutdown(proto: str, certs: tuple[Path, Path]) -> None:
    server = mt.Transport()
    client = mt.Transport()
    with server.accept([server_config(proto, certs)]) as stream:
        port = stream.addresses[0][1]
        sessions = [client.connect(client_url(proto, port, certs), timeout=WAIT)
                    for _ in range(2)]
        accepted = [stream.accept(timeout=WAIT) for _ in range(2)]
    # A request in flight when the shutdown starts is answered before the close.
    pending = Background(lambda: sessions[0].request(b"in flight", timeout=WAIT))
    request = accepted[0].receive(timeout=WAIT)

    def answer_later() -> None:
        time.sleep(0.05)
        request.respond(b"done")

    answering = Background(answer_later)
    report = server.graceful_shutdown(timeout=3.0)
    answering.join()
    assert pending.join().payload == b"done"
    assert report.closed_cleanly == 2 and report.forced == 0
    assert report.messages_flushed >= 1
    assert 0 <= report.elapsed < 3.0
    assert server.session_count() == 0
    for s in sessions:
        s.wait_closed(WAIT)
        assert s.close_reason is mt.CloseReason.PEER_CLOSED
    if proto in ("ws", "wss"):
        assert sessions[0].closed_event is not None
        assert sessions[0].closed_event.code == 1001
    with pytest.raises(mt.TransportConnectionError):
        server.connect(client_url(proto, port, certs))
    assert server.graceful_shutdown() is report
    with client:  # the context manager shuts down gracefully
        pass
    assert client.graceful_shutdown().forced == 0


def test_shutdown_forces_what_does_not_close(certs: tuple[Path, Path]) -> None:
    import socket

    server = mt.Transport()
    with server.accept([server_config("tcp", certs)]) as stream:
        port = stream.addresses[0][1]
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)  # never reads
        stream.accept(timeout=WAIT)
    try:
        report = server.graceful_shutdown(timeout=0.3)
        assert report.forced == 1 and report.closed_cleanly == 0
        assert report.elapsed < 2.0
    finally:
        raw.close()


def test_connect_errors(certs: tuple[Path, Path]) -> None:
    import socket

    with mt.Transport() as transport:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        with pytest.raises(mt.TransportConnectionError) as info:
            transport.connect(f"tcp://127.0.0.1:{port}", timeout=WAIT)
        assert info.value.error_code == "connection.refused"
        assert info.value.operation == "connect" and info.value.session_id is not None
        with pytest.raises(mt.ConfigurationError):
            transport.connect("bogus://x")
        with mt.Transport() as server, server.accept([server_config("tls", certs)]) as stream:
            tls_port = stream.addresses[0][1]
            with pytest.raises(mt.TransportConnectionError) as info:
                transport.connect(f"tls://localhost:{tls_port}", timeout=WAIT)
            assert info.value.error_code == "connection.tls_verification"
            ok = transport.connect(client_url("tls", tls_port, certs), timeout=WAIT)
            assert ok.state is mt.SessionState.OPEN


def test_connect_timeout(certs: tuple[Path, Path]) -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts in the kernel, never speaks: the TLS handshake cannot finish
    try:
        transport = mt.Transport.builder().connect_timeout(0.3).build()
        with pytest.raises(mt.TransportTimeoutError) as info:
            transport.connect(client_url("tls", silent.getsockname()[1], certs))
        assert info.value.error_code == "timeout.connect"
        assert info.value.session_id is not None
        report = transport.shutdown(timeout=0.2)
        assert report.closed_cleanly + report.forced == 0
    finally:
        silent.close()


def test_unused_transport_starts_no_thread() -> None:
    before = threading.active_count()
    transport = mt.Transport()
    assert threading.active_count() == before
    assert transport.graceful_shutdown().forced == 0


# --- cross-backend: a blocking client against an asyncio server -------------------------------


class AsyncServer:
    """An io_asyncio server in its own thread and event loop, answering every request."""

    def __init__(self, proto: str, certs: tuple[Path, Path]) -> None:
        self._ready: queue.Queue[Any] = queue.Queue()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main(proto, certs)),
                                       name="test-asyncio-server")
        self.thread.start()
        got = self._ready.get(timeout=WAIT)
        if isinstance(got, BaseException):
            raise got
        self.port: int = got

    async def _main(self, proto: str, certs: tuple[Path, Path]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        class Echo:
            async def on_request(self, session: amt.Session, message: amt.Message) -> bytes:
                return b"async:" + bytes(message.payload)

            async def on_message(self, session: amt.Session, message: amt.Message) -> None:
                await session.send(b"pushed:" + bytes(message.payload))

        server = amt.Transport()
        try:
            stream = server.accept([server_config(proto, certs, amt)])
            await stream.start()
            serving = asyncio.ensure_future(server.serve(stream, Echo()))
            self._ready.put(stream.addresses[0][1])
            await asyncio.wait_for(self._stop.wait(), 30.0)
        except BaseException as exc:
            self._ready.put(exc)
            raise
        finally:
            await server.graceful_shutdown(2.0)
        await asyncio.wait_for(serving, WAIT)

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_blocking_client_asyncio_server(proto: str, certs: tuple[Path, Path]) -> None:
    server = AsyncServer(proto, certs)
    try:
        with mt.Transport() as client:
            session = client.connect(client_url(proto, server.port, certs), timeout=WAIT)
            replies = [Background(lambda i=i: session.request(b"%d" % i, timeout=WAIT))  # type: ignore[misc]
                       for i in range(4)]
            assert [r.join().payload for r in replies] == [b"async:%d" % i for i in range(4)]
            session.send(b"hello")
            assert session.receive(timeout=WAIT).payload == b"pushed:hello"
            big = bytes(range(256)) * 4096
            assert session.request(big, timeout=WAIT).payload == b"async:" + big
    finally:
        server.stop()
