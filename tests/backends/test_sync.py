"""What is particular to the blocking driver (``msgtrans.io_sync``): one session used from many
threads, and no thread before one is needed.  The behaviour every backend shares (forced
shutdowns and connect timeouts among it) is tested once for all in ``tests/backends/conformance``.

Every test checks that no thread is left behind (the I/O thread and every handler pool are
joined by the shutdown) and the suite is meant to run under
``python -X dev -W error::ResourceWarning -m pytest tests/backends/test_sync.py`` so a leaked
socket fails.  Only 127.0.0.1 / localhost, port 0, every wait bounded.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import msgtrans.io_sync as mt
from msgtrans.certs import write_self_signed

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


def _threads() -> set[threading.Thread]:
    # trio's cached worker threads (left idling by trio tests run earlier in the session) come
    # and go on their own timer: they are not this backend's, so they don't count.
    return {t for t in threading.enumerate() if not t.name.startswith("Trio thread")}


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    before = _threads()
    yield
    end = time.monotonic() + WAIT
    while _threads() - before and time.monotonic() < end:
        time.sleep(0.01)
    assert not _threads() - before, [t.name for t in _threads() - before]


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


# --- threads --------------------------------------------------------------------------------


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


# --- threads before use ---------------------------------------------------------------------


def test_unused_transport_starts_no_thread() -> None:
    before = _threads()
    transport = mt.Transport()
    assert _threads() == before
    assert transport.graceful_shutdown().forced == 0


