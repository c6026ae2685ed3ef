"""What only the asyncio session pool and metrics do, over real TCP on 127.0.0.1.

What every backend does (growth, shrink, broken sessions, leases, a dead server, the counters
and the Prometheus text) is in ``tests/backends/conformance/test_pool_conformance.py``; here
stay a bigger burst watched from a task of the same loop (the size never passes ``max`` at
any moment).

Real time with small values (a 10 ms server, shrink_after 0.2 s); every test runs its own loop,
bounded, checks that no task is left behind and shuts its transports down.  Meant to run under
``python -X dev -W error::ResourceWarning -m pytest tests/backends`` so a leaked socket fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest

import msgtrans.io_asyncio as mt
from msgtrans.core.expansion import SmartExpansion
from msgtrans.core.pool import OpenConnections, Trigger

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

T = TypeVar("T")
WAIT = 5.0


def run(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 20.0) -> T:
    """Run *main* in a fresh loop, bounded, and check that it left no task behind."""

    async def wrapper() -> T:
        result = await asyncio.wait_for(main(), timeout)
        await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not left, f"tasks left behind: {left}"
        return result

    return asyncio.run(wrapper())


async def eventually(check: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not check():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Echo:
    """Answers every request with ``re:`` + payload after *delay* seconds; keeps the sessions."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sessions: list[mt.Session] = []
        self.received = 0

    async def on_connected(self, session: mt.Session) -> None:
        self.sessions.append(session)

    async def on_message(self, session: mt.Session, message: mt.Message) -> None:
        self.received += 1

    async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        self.received += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return b"re:" + bytes(message.payload)


@contextlib.asynccontextmanager
async def echo_server(
    handler: Echo, **config: Any
) -> AsyncIterator[tuple[mt.Transport, mt.Transport, str]]:
    """A server transport serving *handler* on TCP, and a client transport; yields both and the
    client URL."""
    server = mt.Transport()
    client = mt.Transport()
    stream = server.accept([mt.TcpServerConfig("127.0.0.1:0", **config)])
    await stream.start()
    task = asyncio.get_running_loop().create_task(server.serve(stream, handler))
    try:
        yield server, client, f"tcp://127.0.0.1:{stream.addresses[0][1]}"
    finally:
        await client.graceful_shutdown(2.0)
        await server.graceful_shutdown(2.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def watch_sizes(pool: mt.SessionPool, seen: list[int]) -> None:
    while True:
        seen.append(pool.status().size)
        await asyncio.sleep(0.001)


def test_pool_grows_under_a_burst_following_the_schedule() -> None:
    async def main() -> None:
        async with echo_server(Echo(delay=0.01)) as (_server, client, url):
            pool = await client.pool(url, min=2, max=24, target=16)
            assert len(pool.sessions()) >= 1
            seen: list[int] = []
            watcher = asyncio.get_running_loop().create_task(watch_sizes(pool, seen))
            try:
                replies = await asyncio.wait_for(asyncio.gather(
                    *(pool.request(str(i).encode()) for i in range(300))
                ), 10.0)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            assert [bytes(r.payload) for r in replies] == [b"re:%d" % i for i in range(300)]
            status = pool.status()
            assert status.expansion_count > 0
            assert max(seen) <= 24
            assert status.size <= 24
            assert status.leases_in_use == 0
            # Every growth step is the strategy's step from the size at that moment (no
            # failures here, so the size is the sum of the opens so far).
            opens = [d for d in status.last_decisions if isinstance(d, OpenConnections)]
            assert opens[0].trigger is Trigger.MINIMUM
            size = 0
            strategy = SmartExpansion()
            for decision in opens:
                if decision.trigger is not Trigger.MINIMUM:
                    assert size + decision.count == min(
                        24, strategy.calculate_next_size(size, 16, 24)
                    ), (size, decision)
                size += decision.count
            assert size == status.size
            await pool.close()
            assert pool.closed
            assert client.pools() == []
            with pytest.raises(mt.TransportConnectionError):
                await pool.request(b"late")

    run(main)
