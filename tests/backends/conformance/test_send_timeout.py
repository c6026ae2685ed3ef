"""Peers that never read cannot take the server away from the others, on every backend.

``python -m msgtrans serve``'s echo handler (the real one, per backend) serves raw TCP clients
that send 64 KiB messages and never read, more of them than the blocking backend's serve pool
has workers (the conformance adapter serves with 2).  Each echo soon waits for room in its send
queue.  Meanwhile a normal client must still get its answers, well within the builder's
``send_timeout``; then every waiting send fails with ``TransportTimeoutError`` after about the
``send_timeout``, the non-reading sessions are aborted, and nothing is left (sessions, serve
threads).  Real sockets on 127.0.0.1, every wait bounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from msgtrans.cli.serve import EchoHandler, SyncEchoHandler
from msgtrans.core.packet import Packet, PacketType

from .adapters import (
    BACKENDS,
    WAIT,
    Backend,
    Certs,
    Transport,
    client_url,
    make_backend,
    server_config,
)

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
]

SEND_TIMEOUT = 2.5
NON_READERS = 4  # more than the 2 workers the adapter's sync serve() has
SIZE = 64 * 1024
#: Per non-reader: far more than its socket buffers and its session's send queue (1 MiB) hold.
MESSAGES = 100


@pytest.fixture(params=BACKENDS)
def paused_backend(request: pytest.FixtureRequest) -> Backend:
    return make_backend(request.param)


class _AsyncEcho(EchoHandler):
    def __init__(self) -> None:
        self.errors: list[tuple[BaseException, float]] = []

    async def on_error(self, session: Any, error: BaseException) -> None:
        self.errors.append((error, time.monotonic()))


class _SyncEcho(SyncEchoHandler):
    def __init__(self) -> None:
        self.errors: list[tuple[BaseException, float]] = []

    def on_error(self, session: Any, error: BaseException) -> None:
        self.errors.append((error, time.monotonic()))


@contextlib.asynccontextmanager
async def timed_transport(backend: Backend, send_timeout: float) -> AsyncIterator[Any]:
    """A raw transport of *backend* with the builder's ``send_timeout``, shut down after."""
    raw = backend.lib.Transport.builder().send_timeout(send_timeout).build()
    async with contextlib.AsyncExitStack() as stack:
        if backend.name == "trio":
            await stack.enter_async_context(raw)  # its tasks live in its nursery
        try:
            yield raw
        finally:
            await backend.call(raw.graceful_shutdown, 2.0)
        assert raw.session_count() == 0


async def wait_until(condition: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    """Wait (bounded) for a state no event announces; polls every 5 ms."""
    with anyio.fail_after(limit):
        while not condition():
            await anyio.sleep(0.005)
    assert condition(), what


def non_reader(port: int) -> socket.socket:
    """A raw msgtrans TCP client that sends MESSAGES one-way messages and will never read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
        sock.settimeout(WAIT)
        sock.connect(("127.0.0.1", port))
        for i in range(MESSAGES):
            sock.sendall(Packet(PacketType.ONE_WAY, i + 1, 0, bytes(SIZE)).encode())
    except BaseException:
        sock.close()
        raise
    return sock


def serve_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("msgtrans-serve")]


def test_non_reading_clients_cannot_starve_the_server(paused_backend: Backend,
                                                      certs: Certs) -> None:
    backend = paused_backend
    handler: Any = _SyncEcho() if backend.name == "sync" else _AsyncEcho()

    async def body() -> None:
        async with timed_transport(backend, SEND_TIMEOUT) as raw:
            stream = raw.accept([server_config(backend.lib, "tcp", certs)])
            await backend.call(stream.start)
            port = stream.addresses[0][1]
            socks: list[socket.socket] = []
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(backend.serve, raw, stream, handler)
                    async def open_non_reader() -> None:
                        socks.append(await anyio.to_thread.run_sync(non_reader, port))

                    # At once: each one's send_timeout runs from when its send queue filled.
                    async with anyio.create_task_group() as openers:
                        for _ in range(NON_READERS):
                            openers.start_soon(open_non_reader)
                    # Every non-reader's echo now waits for room in its send queue.
                    await wait_until(
                        lambda: sum(not s._can_write() for s in raw.sessions()) >= NON_READERS,
                        "the non-readers' sessions are paused")
                    paused_at = time.monotonic()
                    async with backend.transport() as client_side:
                        client = await client_side.connect(client_url("tcp", port, certs))
                        for i in range(5):
                            reply = await client.request(b"still served %d" % i)
                            assert reply.payload == b"still served %d" % i
                        served_within = time.monotonic() - paused_at
                        # Served while every non-reader still held its send: not after their
                        # timeouts freed the workers.
                        assert served_within < SEND_TIMEOUT, served_within
                        assert not handler.errors
                        # Then each waiting send fails after about the send_timeout and its
                        # session is aborted; the normal client's stays.
                        await wait_until(lambda: len(raw.sessions()) == 1,
                                         "the non-readers' sessions are aborted",
                                         SEND_TIMEOUT + WAIT)
                        await wait_until(lambda: len(handler.errors) >= NON_READERS,
                                         "every waiting send reported its timeout")
                        reply = await client.request(b"after")
                        assert reply.payload == b"after"
                        await client.close()
                    await backend.call(raw.graceful_shutdown, 2.0)
            finally:
                for sock in socks:
                    sock.close()
            timeouts = [(e, at) for e, at in handler.errors
                        if isinstance(e, backend.lib.TransportTimeoutError)]
            assert len(timeouts) == NON_READERS, handler.errors
            for error, at in timeouts:
                assert error.operation == "send" and error.duration == SEND_TIMEOUT
                assert at - paused_at >= SEND_TIMEOUT * 0.5  # waited, did not fail at once
            assert raw.stats().errors.get("timeout.send", 0) >= NON_READERS
        assert not serve_threads(), "serve threads left behind"

    backend.run(body)


def test_send_timeout_on_a_client_raises_and_keeps_the_session(
        backend: Backend, certs: Certs) -> None:
    """A client's send to a server that reads nothing fails after the send_timeout with the
    timeout error; the session stays (its application decides)."""

    async def body() -> None:
        # A server whose application reads nothing and which stops reading after 4 messages.
        async with backend.transport(receive_max_messages=4) as server, \
                server.listen("tcp", certs) as listener, timed_transport(backend, 0.3) as raw:
            client = Transport(backend, raw)
            session = await client.connect(client_url("tcp", listener.port, certs))
            accepted = await listener.accept()  # never reads

            async def flood() -> None:
                for _ in range(2000):
                    await session.send(bytes(SIZE))

            started = time.monotonic()
            with pytest.raises(backend.lib.TransportTimeoutError) as caught:
                await flood()
            waited = time.monotonic() - started
            assert caught.value.operation == "send" and caught.value.duration == 0.3
            assert caught.value.error_code == "timeout.send"
            assert waited >= 0.3
            assert not session.is_closed and session.state.value == "open"
            assert raw.stats().errors.get("timeout.send", 0) == 1
            # Neither side can finish a close handshake through a paused reader: drop both.
            session.raw.abort()
            accepted.raw.abort()
            await session.wait_closed()
            await accepted.wait_closed()

    backend.run(body)
