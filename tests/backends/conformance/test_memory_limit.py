"""The memory limit binds, written once and run on every backend (asyncio, trio, blocking) over
TCP, TLS, WebSocket and QUIC.

A server built with ``Transport(memory_limit=2 MiB)`` whose application stops reading; a client
(no limit) sends 64 KiB messages as fast as it can.  The server's budget pauses its reading near
the limit, the peer's flow control (TCP's window, QUIC's credit) stops the client, whose
senders wait (backpressure, not an error); the budget never counts more than the limit plus the
constant ``docs/buffers.md`` states; once the application reads again every message arrives,
in order, and the budget is back to zero.  Real sockets on 127.0.0.1, every wait bounded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from msgtrans.core.budget import MemoryBudget

from .adapters import (
    WAIT,
    Backend,
    Certs,
    Transport,
    client_url,
)

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

LIMIT = 2 * 1024 * 1024
SIZE = 64 * 1024
COUNT = 320  # 20 MiB: far more than the limit, the kernel's buffers and the client's queue
#: What may arrive after reading paused, over the limit (docs/buffers.md, "The memory limit"):
#: on TCP, TLS and WebSocket reading stops within one read of the pause mark, well under the
#: limit itself; on QUIC the peer may still use the receive credit granted before the pause
#: (aioquic's 1 MiB windows, doubled as data arrived: up to 4 MiB for this transfer).
SLACK = {"tcp": 0, "tls": 0, "ws": 0, "quic": 4 * 1024 * 1024}
MEMORY_PROTOCOLS = ["tcp", "tls", "ws", "quic"]


@pytest.fixture(params=MEMORY_PROTOCOLS)
def proto(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@contextlib.asynccontextmanager
async def limited_transport(backend: Backend, limit: int) -> AsyncIterator[Transport]:
    """A transport of *backend* made with ``Transport(memory_limit=limit)``, shut down after."""
    raw = backend.lib.Transport(memory_limit=limit)
    async with contextlib.AsyncExitStack() as stack:
        if backend.name == "trio":
            await stack.enter_async_context(raw)  # its tasks live in its nursery
        try:
            yield Transport(backend, raw)
        finally:
            await backend.call(raw.graceful_shutdown, 2.0)
        assert raw.session_count() == 0


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a state no event announces; polls every 5 ms."""
    with anyio.fail_after(WAIT):
        while not condition():
            await anyio.sleep(0.005)
    assert condition(), what


def numbered(i: int) -> bytes:
    return i.to_bytes(4, "big") * (SIZE // 4)


def test_memory_limit_binds_and_nothing_is_lost(backend: Backend, proto: str,
                                                 certs: Certs) -> None:
    async def body() -> None:
        async with limited_transport(backend, LIMIT) as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            budget = server.raw._memory_budget
            bound = LIMIT + SLACK[proto]
            assert isinstance(budget, MemoryBudget) and budget.limit == LIMIT
            sender = await client.connect(client_url(proto, listener.port, certs))
            reader = await listener.accept()
            sent = 0
            kw: dict[str, Any] = {"timeout": 3 * WAIT} if backend.name == "sync" else {}

            async def send_all() -> None:
                nonlocal sent
                for i in range(COUNT):
                    await sender.send(numbered(i), **kw)
                    sent += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_all)
                # The application reads nothing: the budget pauses the server's reading and
                # the client's sender ends up waiting for its send side (backpressure).
                await wait_until(lambda: budget.paused_connections == 1, "server paused")
                await wait_until(lambda: not sender.raw._can_write(), "client paused")
                assert sent < COUNT
                assert budget.peak <= bound, budget
                assert server.raw.stats().memory.paused_connections == 1
                # The application reads again: everything arrives, in order.
                for i in range(COUNT):
                    message = await reader.receive()
                    assert message.payload == numbered(i), i
            assert sent == COUNT
            assert budget.peak <= bound, budget
            assert budget.peak > budget.pause_bytes  # it was the budget that paused reading
            stats = server.raw.stats().memory
            assert (stats.in_use, stats.paused_connections, stats.limit) == (0, 0, LIMIT)
            assert stats.refused == 0  # backpressure, never an error
            await sender.close()

    backend.run(body)


def test_a_send_over_the_limit_is_refused(backend: Backend, certs: Certs) -> None:
    """A single message bigger than what the budget has left: ``ResourceError``
    (``resource.memory``) naming the limit, and nothing is queued."""
    async def body() -> None:
        async with limited_transport(backend, 256 * 1024) as server, \
                backend.transport() as client, client.listen("tcp", certs) as listener:
            session = await server.connect(client_url("tcp", listener.port, certs))
            peer = await listener.accept()
            with pytest.raises(backend.lib.ResourceError) as caught:
                await session.send(b"x" * (300 * 1024))
            assert caught.value.error_code == "resource.memory"
            assert caught.value.limit == 256 * 1024
            assert "256" in str(caught.value) or "262144" in str(caught.value)
            await session.send(b"small")  # the session is still fine
            assert (await peer.receive()).payload == b"small"
            assert server.raw.stats().memory.refused == 1
            await session.close()

    backend.run(body)


def test_a_session_freeing_memory_resumes_another(backend: Backend, certs: Certs) -> None:
    """Session B is paused by the budget that session A filled, and B's own queue is drained:
    only A's messages being taken can bring the budget down, and that must resume B too."""
    async def body() -> None:
        limit = 1024 * 1024
        count = 48  # 3 MiB per client
        async with limited_transport(backend, limit) as server, backend.transport() as client, \
                server.listen("tcp", certs) as listener:
            budget = server.raw._memory_budget
            url = client_url("tcp", listener.port, certs)
            kw: dict[str, Any] = {"timeout": 3 * WAIT} if backend.name == "sync" else {}
            a_out = await client.connect(url)
            a_in = await listener.accept()

            async def send_all(session: Any) -> None:
                for i in range(count):
                    await session.send(numbered(i), **kw)

            async def read_all(session: Any, got: list[int]) -> None:
                for i in range(count):
                    assert (await session.receive()).payload == numbered(i), i
                    got.append(i)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_all, a_out)
                await wait_until(lambda: budget.paused_connections == 1, "A paused")
                b_out = await client.connect(url)
                b_in = await listener.accept()
                tg.start_soon(send_all, b_out)
                b_machine = b_in.connection.session
                await wait_until(lambda: budget.is_held(b_machine), "B paused")
                first = await b_in.receive_many()  # B's queue drained: B cannot resume itself
                assert budget.in_use > budget.resume_bytes and budget.is_held(b_machine)
                got_a: list[int] = []
                got_b = [i for i, m in enumerate(first) if m.payload == numbered(i)]
                assert len(got_b) == len(first)

                async def read_rest_of_b() -> None:
                    for i in range(len(first), count):
                        assert (await b_in.receive()).payload == numbered(i), i
                        got_b.append(i)

                tg.start_soon(read_rest_of_b)
                await read_all(a_in, got_a)
            assert got_a == list(range(count)) and got_b == list(range(count))
            assert budget.peak <= limit, budget
            assert budget.in_use == 0 and budget.paused_connections == 0
            await a_out.close()
            await b_out.close()

    backend.run(body)
