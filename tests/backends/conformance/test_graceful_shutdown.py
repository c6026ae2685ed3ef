"""What a graceful shutdown finishes, the same on every backend (docs/design.md, "Graceful
shutdown"): new reads stop, every message already read is handed to the handler and its answer
flushed within the shutdown timeout, then each session closes with its protocol's going-away
close.

A client sends N one-way messages as fast as it can to a server running ``python -m msgtrans
serve``'s echo handler (per backend), held back until the shutdown began so that what was read
still waits for it; the server shuts down gracefully as soon as its stats say it read them all;
the client must receive every echo before the close.  Real
sockets on 127.0.0.1 (TCP and WebSocket), every wait bounded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from msgtrans.cli.serve import EchoHandler, SyncEchoHandler

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

N = 800  # under the receive bound (1024): the held-back handler lets every one be read
PROTOCOLS = ["tcp", "ws"]

@pytest.fixture(params=BACKENDS)
def draining_backend(request: pytest.FixtureRequest) -> Backend:
    return make_backend(request.param)


@pytest.fixture(params=PROTOCOLS)
def proto(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@contextlib.asynccontextmanager
async def server_transport(backend: Backend) -> AsyncIterator[Any]:
    raw = backend.lib.Transport.builder().build()
    async with contextlib.AsyncExitStack() as stack:
        if backend.name == "trio":
            await stack.enter_async_context(raw)  # its tasks live in its nursery
        yield raw
        await backend.call(raw.graceful_shutdown, 2.0)  # already done: the first report
        assert raw.session_count() == 0


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a state no event announces; polls every 5 ms."""
    with anyio.fail_after(WAIT):
        while not condition():
            await anyio.sleep(0.005)
    assert condition(), what


async def send_all(backend: Backend, session: Any, count: int) -> None:
    """*count* one-way messages, numbered, as fast as the backend sends them."""
    payloads = [i.to_bytes(4, "big") * 16 for i in range(count)]
    if backend.name == "sync":
        def burst() -> None:
            for payload in payloads:
                session.send(payload, timeout=WAIT)

        await backend.call(burst)
    else:
        for payload in payloads:
            await session.send(payload)


class _BehindEcho(EchoHandler):
    """The echo handler, held back on its first message until the shutdown began: messages
    the server read are still waiting for it when the shutdown comes."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    async def on_message(self, session: Any, message: Any) -> None:
        with anyio.fail_after(WAIT):
            while not self._transport._closing:
                await anyio.sleep(0.002)
        await super().on_message(session, message)


class _SyncBehindEcho(SyncEchoHandler):
    """:class:`_BehindEcho` for io_sync's handler threads."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def on_message(self, session: Any, message: Any) -> None:
        deadline = time.monotonic() + WAIT
        while not self._transport._closing and time.monotonic() < deadline:
            time.sleep(0.002)
        super().on_message(session, message)


def test_graceful_shutdown_answers_every_message_it_read(draining_backend: Backend,
                                                          certs: Certs, proto: str) -> None:
    backend = draining_backend

    async def body() -> None:
        async with server_transport(backend) as server:
            handler = (_SyncBehindEcho(server) if backend.name == "sync"
                       else _BehindEcho(server))
            stream = server.accept([server_config(backend.lib, proto, certs)])
            await backend.call(stream.start)
            port = stream.addresses[0][1]
            echoes: list[Any] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(backend.serve, server, stream, handler)
                async with backend.transport() as client_side:
                    client: Transport = client_side
                    session = await client.connect(client_url(proto, port, certs))

                    async def collect() -> None:
                        echoes.extend(await client.messages_until_closed(session))

                    async with anyio.create_task_group() as clients:
                        clients.start_soon(collect)
                        await send_all(backend, session.raw, N)
                        # The server read every message: shut down now, echoes in flight.
                        await wait_until(lambda: server.stats().messages_in >= N,
                                         "the server read every message")
                        report = await backend.call(server.graceful_shutdown, 5.0)
                    received = server.stats().messages_in
                    assert received == N
                    assert len(echoes) == received, (len(echoes), received)
                    assert [bytes(m.payload) for m in echoes] == [
                        i.to_bytes(4, "big") * 16 for i in range(N)]
                    assert report.forced == 0 and report.closed_cleanly == 1
                    # Closed by the server, with its protocol's going-away close.
                    assert session.close_reason is not None
                    assert session.close_reason.value != "local", session.close_reason

    backend.run(body)
