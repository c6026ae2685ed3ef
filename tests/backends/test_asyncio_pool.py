"""The asyncio session pool and metrics over real TCP on 127.0.0.1.

Real time with small values (a 10 ms server, shrink_after 0.2 s); every test runs its own loop,
bounded, checks that no task is left behind and shuts its transports down.  Meant to run under
``python -X dev -W error::ResourceWarning -m pytest tests/backends`` so a leaked socket fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
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


def test_pool_shrinks_after_low_utilisation() -> None:
    async def main() -> None:
        async with echo_server(Echo(delay=0.01)) as (_server, client, url):
            pool = await client.pool(url, min=2, max=16, target=8, shrink_after=0.2)
            await asyncio.wait_for(asyncio.gather(
                *(pool.request(b"x") for _ in range(100))
            ), 10.0)
            grown = pool.status().size
            assert grown > 2
            await eventually(lambda: pool.status().size == 2, "the shrink to the minimum")
            status = pool.status()
            assert status.shrink_count > 0
            assert len(pool.sessions()) == 2
            # The closed sessions really closed.
            await eventually(lambda: client.session_count() == 2, "closed sessions to go")
            stats = client.stats()
            assert stats.pool_events[("shrink", "low_utilisation")] == status.shrink_count
            assert stats.pool is not None
            assert stats.pool.shrink_count == status.shrink_count

    run(main)


def test_broken_session_is_replaced_and_never_handed_out() -> None:
    async def main() -> None:
        handler = Echo()
        async with echo_server(handler) as (_server, client, url):
            pool = await client.pool(url, min=2, max=4)
            await eventually(lambda: len(pool.sessions()) == 2, "two sessions")
            await eventually(lambda: len(handler.sessions) == 2, "the server to see both")
            before = {s.id for s in pool.sessions()}
            handler.sessions[0].abort("killed by the test")
            await eventually(
                lambda: len(pool.sessions()) == 2 and {s.id for s in pool.sessions()} != before,
                "the replacement",
            )
            live = pool.sessions()
            assert all(s.state is mt.SessionState.OPEN for s in live)
            # Every lease and request gets a working session.
            for i in range(10):
                async with pool.lease() as session:
                    assert session in live
                assert bytes((await pool.request(b"%d" % i)).payload) == b"re:%d" % i
            await pool.send(b"one-way")
            await eventually(lambda: handler.received >= 11, "the one-way message")

    run(main)


def test_lease_is_exclusive() -> None:
    async def main() -> None:
        async with echo_server(Echo()) as (_server, client, url):
            pool = await client.pool(url, min=1, max=1, target=1)
            order: list[str] = []
            entered = asyncio.Event()

            async def first() -> None:
                async with pool.lease() as session:
                    order.append(f"first in {session.id}")
                    entered.set()
                    await asyncio.sleep(0.05)
                    order.append("first out")

            async def second() -> None:
                await entered.wait()
                async with pool.lease() as session:
                    order.append(f"second in {session.id}")

            await asyncio.wait_for(asyncio.gather(first(), second()), WAIT)
            sid = pool.sessions()[0].id
            assert order == [f"first in {sid}", "first out", f"second in {sid}"]
            # A full pool of one times out a second lease.
            async with pool.lease():
                with pytest.raises(mt.ResourceError) as info:
                    async with pool.lease(timeout=0.05):
                        pass
                assert info.value.error_code == "resource.pool_exhausted"
            assert pool.status().leases_in_use == 0
            # Two leases at once on a pool of two: two different sessions.
            pool2 = await client.pool(url, min=2, max=2, target=2)
            async with pool2.lease() as a, pool2.lease() as b:
                assert a is not b
            assert len(client.pools()) == 2
            assert client.pool_status().leases_in_use == 0
            assert client.pool_status().idle_connections == 3
        # The transport's shutdown closed both pools.
        assert pool.closed
        assert pool2.closed

    run(main)


def test_dead_server_fails_fast_and_retries_slowly() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nothing listens there once closed
        client = mt.Transport()
        try:
            with pytest.raises(mt.TransportConnectionError):
                await client.pool(f"tcp://127.0.0.1:{port}", min=2, max=4)
            assert client.pools() == []
            # min=0 opens nothing up front; a request waits, the opens fail with a backoff.
            pool = await client.pool(f"tcp://127.0.0.1:{port}", min=0, max=4)
            with pytest.raises(mt.ResourceError):
                await pool.request(b"x", timeout=0.3)
            refused = client.stats().errors.get("connection.refused", 0)
            assert 1 <= refused <= 10  # a few tries in 0.3 s, not a spin
        finally:
            await client.graceful_shutdown(1.0)

    run(main)


def test_stats_count_what_was_sent() -> None:
    async def main() -> None:
        handler = Echo()
        async with echo_server(handler) as (server, client, url):
            session = await client.connect(url)
            payloads = [b"a" * n for n in (1, 10, 100, 1000)]
            for p in payloads:
                await session.send(p)
            for p in payloads:
                assert bytes((await session.request(p)).payload) == b"re:" + p
            await eventually(lambda: handler.received == 8, "the server to receive all")
            stats = client.stats()
            assert stats.messages_out == 8
            assert stats.bytes_out == 2 * sum(map(len, payloads))
            assert stats.messages_in == 4
            assert stats.bytes_in == sum(len(p) + 3 for p in payloads)
            assert stats.request_latency.count == 4
            assert stats.sessions[("tcp", "open")] == 1
            assert stats.sessions_opened["tcp"] == 1
            assert stats.errors == {}
            served = server.stats()
            assert served.messages_in == 8
            assert served.bytes_in == 2 * sum(map(len, payloads))
            assert served.messages_out == 4
            assert served.pool is None
            await session.close()
            await eventually(lambda: client.stats().sessions_closed.get("tcp") == 1, "closed")
            assert client.stats().sessions.get(("tcp", "open"), 0) == 0
            # A request that times out is an error by its code.
            silent = await client.connect(url)
            handler.delay = 1.0
            with pytest.raises(mt.TransportTimeoutError):
                await silent.request(b"slow", timeout=0.05)
            assert client.stats().errors["timeout.request"] == 1
            assert client.stats().as_dict()["messages"]["out"] == 9

    run(main)


def test_refusals_at_max_sessions_are_counted() -> None:
    async def main() -> None:
        async with echo_server(Echo(), max_sessions=1) as (server, client, url):
            first = await client.connect(url)
            await eventually(lambda: server.session_count() == 1, "the first session")
            second = await client.connect(url)
            with pytest.raises(mt.TransportError):
                await asyncio.wait_for(second.receive(), WAIT)
            assert server.stats().errors["connection.refused_by_server"] == 1
            await first.close()

    run(main)


_SAMPLE = re.compile(
    r'(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)\})? (?P<value>\S+)'
)


def test_prometheus_text_parses() -> None:
    async def main() -> None:
        async with echo_server(Echo(delay=0.005)) as (_server, client, url):
            pool = await client.pool(url, min=2, max=8, target=4)
            await asyncio.gather(*(pool.request(b"p") for _ in range(40)))
            text = client.stats_prometheus()
        assert text.endswith("\n")
        names: set[str] = set()
        typed: set[str] = set()
        for line in text.splitlines():
            if line.startswith("# HELP "):
                continue
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                assert kind in ("counter", "gauge", "histogram")
                typed.add(name)
                continue
            match = _SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            float(match["value"])  # +Inf and NaN parse too
            names.add(match["name"])
        for expected in (
            "msgtrans_sessions", "msgtrans_sessions_opened_total", "msgtrans_messages_total",
            "msgtrans_bytes_total", "msgtrans_request_latency_seconds_bucket",
            "msgtrans_request_latency_seconds_count", "msgtrans_pool_events_total",
            "msgtrans_pool_connections", "msgtrans_pool_utilization",
            "msgtrans_pool_expansions_total",
        ):
            assert expected in names, expected
        assert "msgtrans_request_latency_seconds" in typed
        assert 'msgtrans_messages_total{direction="out"} 40' in text
        assert 'msgtrans_request_latency_seconds_count 40' in text
        assert 'msgtrans_pool_events_total{kind="expand",trigger=' in text

    run(main)
