"""A burst of connections is accepted, and a normal client still served, on every backend.

A few hundred raw TCP connections are opened at once (non-blocking connects, all in flight
together) against an echo server (``serve()``, default config: ``DEFAULT_BACKLOG``) while a
normal client does request/response on its own session.  Every raw connection must be accepted
by the server (its ``sessions_opened`` metric) within a bounded time, and every request of the
normal client answered meanwhile.

On main the listen backlog was 128: connections the kernel could not queue waited for their SYN
to be sent again (1 s, 3 s, 7 s...), and the trio and blocking listeners accepted one connection
per wake-up, so some were never accepted within 15 s.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from typing import Any

import anyio
import pytest

from .adapters import WAIT, Backend, Certs, Session, client_url

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
]

FLOOD = 500  # raw connections opened at once (the old listen backlog was 128)
ACCEPT_WITHIN = 5.0  # seconds the server has to accept all of them (a SYN resent waits 1 s+)
REQUESTS = 20


def open_flood(port: int, count: int) -> list[socket.socket]:
    """*count* connections to *port*, connecting all at once; return them once every connect
    completed (the kernel completes them while they wait in the listen queue)."""
    socks: list[socket.socket] = []
    with selectors.DefaultSelector() as selector:
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                selector.register(sock, selectors.EVENT_WRITE)
            deadline = time.monotonic() + WAIT
            pending = count
            while pending:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{pending} of {count} connects never completed"
                for key, _mask in selector.select(remaining):
                    sock = key.fileobj  # type: ignore[assignment]
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    assert error == 0, f"a connect failed: errno {error}"
                    selector.unregister(sock)
                    pending -= 1
        except BaseException:
            for sock in socks:
                sock.close()
            raise
    return socks


class _Echo:
    async def on_request(self, session: Session, message: Any) -> bytes:
        return message.payload


def test_a_burst_of_connections_is_accepted_beside_a_normal_client(backend: Backend,
                                                                   certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as transport, \
                transport.serve("tcp", certs, _Echo()) as port:
            client_transport = backend.lib.Transport()
            async with contextlib.AsyncExitStack() as stack:
                if backend.name == "trio":
                    await stack.enter_async_context(client_transport)
                client = await backend.connect(client_transport, client_url("tcp", port, certs))
                socks: list[socket.socket] = []
                try:
                    answered = 0

                    async def normal_client() -> None:
                        nonlocal answered
                        for i in range(REQUESTS):
                            payload = b"req %d" % i
                            reply = await backend.call(client.request, payload, timeout=WAIT)
                            assert bytes(reply.payload) == payload
                            answered += 1

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(normal_client)
                        socks = await anyio.to_thread.run_sync(open_flood, port, FLOOD)
                        started = time.monotonic()
                        with anyio.fail_after(ACCEPT_WITHIN):
                            while opened(transport.raw) < FLOOD + 1:
                                await anyio.sleep(0.01)
                        took = time.monotonic() - started
                    assert opened(transport.raw) == FLOOD + 1, took
                    assert answered == REQUESTS
                finally:
                    for sock in socks:
                        sock.close()
                    await backend.call(client_transport.graceful_shutdown, 2.0)

    backend.run(body)


def opened(raw_transport: Any) -> int:
    """Server sessions ever opened over TCP (the accepted connections)."""
    count: int = raw_transport.stats().sessions_opened.get("tcp", 0)
    return count
