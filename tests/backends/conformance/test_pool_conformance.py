"""The session pool and the metrics, written once and run on every backend (asyncio, trio,
blocking) over TCP, WebSocket and QUIC.

Real sockets on 127.0.0.1 with small values (a 10 ms server, ``shrink_after`` 0.2 s); each
body is bounded by the adapters' run limit, checks that no task and no thread outlived it, and
shuts its transports down.  What only asyncio has (its tasks) stays in
``tests/backends/test_asyncio_pool.py``.
"""

from __future__ import annotations

import inspect
import re
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

import msgtrans.io_asyncio as amt
import msgtrans.io_sync as smt
import msgtrans.io_trio as tmt
from msgtrans.core.expansion import SmartExpansion
from msgtrans.core.pool import OpenConnections, Trigger

from .adapters import (
    WAIT,
    Backend,
    Certs,
    Msg,
    Pool,
    Session,
    SessionState,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
    client_url,
    open_pool,
)

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

POOL_PROTOCOLS = ["tcp", "ws", "quic"]
ResourceError = amt.ResourceError
BURST = 120  # concurrent requests of the burst


@pytest.fixture(params=POOL_PROTOCOLS)
def proto(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _trio_worker(thread: threading.Thread) -> bool:
    # trio's cached resolver threads idle on by design; they belong to trio, not a backend.
    # They are named after their job while running one, so they are told by their target.
    owner = getattr(getattr(thread, "_target", None), "__self__", None)
    return thread.name.startswith("Trio thread") or type(owner).__module__.startswith("trio")


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not _trio_worker(t)}


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    before = _threads()
    yield
    for thread in _threads() - before:
        thread.join(WAIT)
        assert not thread.is_alive() or _trio_worker(thread), f"left behind: {thread.name}"


async def eventually(check: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    with anyio.fail_after(limit):
        while not check():
            await anyio.sleep(0.01)
    assert check(), what


class Echo:
    """Answers every request with ``re:`` + payload after *delay* seconds; keeps the sessions."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sessions: list[Session] = []
        self.received = 0

    async def on_connected(self, session: Session) -> None:
        self.sessions.append(session)

    async def on_message(self, session: Session, message: Msg) -> None:
        self.received += 1

    async def on_request(self, session: Session, message: Msg) -> bytes:
        self.received += 1
        if self.delay:
            await anyio.sleep(self.delay)
        return b"re:" + message.payload


def test_pool_grows_under_a_burst_following_the_schedule(
    backend: Backend, proto: str, certs: Certs
) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.serve(proto, certs, Echo(delay=0.01)) as port:
            pool = await open_pool(backend, client, client_url(proto, port, certs),
                                   min=2, max=12, target=8)
            assert len(pool.sessions()) >= 1
            replies: dict[int, bytes] = {}

            async def one(i: int) -> None:
                replies[i] = (await pool.request(b"%d" % i)).payload

            with anyio.fail_after(15.0):
                async with anyio.create_task_group() as tg:
                    for i in range(BURST):
                        tg.start_soon(one, i)
            assert replies == {i: b"re:%d" % i for i in range(BURST)}
            status = pool.status()
            assert status.expansion_count > 0
            assert status.size <= 12
            assert status.leases_in_use == 0
            assert status.waiting_leases == 0
            # Every growth step is the strategy's step from the size at that moment (no
            # failures here, so the size is the sum of the opens so far).
            opens = [d for d in status.last_decisions if isinstance(d, OpenConnections)]
            assert opens[0].trigger is Trigger.MINIMUM
            size = 0
            for decision in opens:
                if decision.trigger is not Trigger.MINIMUM:
                    assert size + decision.count == min(
                        12, SmartExpansion().calculate_next_size(size, 8, 12)
                    ), (size, decision)
                size += decision.count
            assert size == status.size
            assert all(s.state is SessionState.OPEN for s in pool.sessions())
            # The metrics saw the burst and the pool.
            stats = client.raw.stats()
            assert stats.request_latency.count == BURST
            assert stats.messages_in == BURST
            assert stats.messages_out == BURST
            assert stats.pool is not None
            assert stats.pool.expansion_count == status.expansion_count
            assert sum(n for (kind, _), n in stats.pool_events.items()
                       if kind == "expand") == status.expansion_count
            await pool.close()
            assert pool.closed
            assert client.raw.pools() == []
            assert client.raw.pool_status().expansion_count == status.expansion_count
            with pytest.raises(TransportConnectionError):
                await pool.request(b"late")

    backend.run(body)


def test_pool_shrinks_after_low_utilisation(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.serve("tcp", certs, Echo(delay=0.01)) as port:
            pool = await open_pool(backend, client, client_url("tcp", port, certs),
                                   min=2, max=8, target=6, shrink_after=0.2)

            async def one() -> None:
                await pool.request(b"x")

            with anyio.fail_after(10.0):
                async with anyio.create_task_group() as tg:
                    for _ in range(60):
                        tg.start_soon(one)
            assert pool.status().size > 2
            # Nothing feeds the machine now: only the pool's own timer can shrink it.
            await eventually(lambda: pool.status().size == 2, "the shrink to the minimum")
            status = pool.status()
            assert status.shrink_count > 0
            assert len(pool.sessions()) == 2
            await eventually(lambda: client.session_count() == 2, "closed sessions to go")
            stats = client.raw.stats()
            assert stats.pool_events[("shrink", "low_utilisation")] == status.shrink_count
            assert stats.pool is not None
            assert stats.pool.shrink_count == status.shrink_count

    backend.run(body)


def test_broken_session_is_replaced_and_never_handed_out(
    backend: Backend, proto: str, certs: Certs
) -> None:
    async def body() -> None:
        handler = Echo()
        async with backend.transport() as server, backend.transport() as client, \
                server.serve(proto, certs, handler) as port:
            pool = await open_pool(backend, client, client_url(proto, port, certs),
                                   min=2, max=4)
            await eventually(lambda: len(pool.sessions()) == 2, "two sessions")
            await eventually(lambda: len(handler.sessions) == 2, "the server to see both")
            before = {s.id for s in pool.sessions()}
            handler.sessions[0].raw.abort("killed by the test")
            await eventually(
                lambda: len(pool.sessions()) == 2 and {s.id for s in pool.sessions()} != before,
                "the replacement",
            )
            live = {s.id for s in pool.sessions()}
            for i in range(6):
                async with pool.lease() as session:
                    assert session.id in live
                    assert session.state is SessionState.OPEN
                assert (await pool.request(b"%d" % i)).payload == b"re:%d" % i
            await pool.send(b"one-way")
            await eventually(lambda: handler.received >= 7, "the one-way message")

    backend.run(body)


def test_lease_is_exclusive_and_a_full_pool_times_out(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.serve("tcp", certs, Echo()) as port:
            url = client_url("tcp", port, certs)
            pool = await open_pool(backend, client, url, min=1, max=1, target=1)
            order: list[str] = []
            entered = anyio.Event()

            async def first() -> None:
                async with pool.lease() as session:
                    order.append(f"first in {session.id}")
                    entered.set()
                    await anyio.sleep(0.05)
                    order.append("first out")

            async def second() -> None:
                await entered.wait()
                async with pool.lease() as session:
                    order.append(f"second in {session.id}")

            with anyio.fail_after(WAIT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(first)
                    tg.start_soon(second)
            sid = pool.sessions()[0].id
            assert order == [f"first in {sid}", "first out", f"second in {sid}"]
            async with pool.lease():
                with pytest.raises(ResourceError) as info:
                    async with pool.lease(timeout=0.05):
                        pass
                assert info.value.error_code == "resource.pool_exhausted"
            assert pool.status().leases_in_use == 0
            assert client.raw.stats().errors["resource.pool_exhausted"] == 1
            pool2 = await open_pool(backend, client, url, min=2, max=2, target=2)
            async with pool2.lease() as a, pool2.lease() as b:
                assert a.id != b.id
            assert len(client.raw.pools()) == 2
            status = client.raw.pool_status()
            assert (status.leases_in_use, status.idle_connections) == (0, 3)
        # The transport's shutdown closed both pools.
        assert pool.closed
        assert pool2.closed

    backend.run(body)


def test_dead_server_fails_fast_and_retries_slowly(backend: Backend) -> None:
    async def body() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nothing listens there once closed
        url = f"tcp://127.0.0.1:{port}"
        async with backend.transport(connect_timeout=2.0) as client:
            with pytest.raises(TransportConnectionError):
                await open_pool(backend, client, url, min=2, max=4)
            assert client.raw.pools() == []
            # min=0 opens nothing up front; a request waits, the opens fail with a backoff.
            pool = await open_pool(backend, client, url, min=0, max=4)
            with pytest.raises(ResourceError):
                await pool.request(b"x", timeout=0.3)
            refused = client.raw.stats().errors.get("connection.refused", 0)
            assert 1 <= refused <= 10  # a few tries in 0.3 s, not a spin

    backend.run(body)


def test_stats_count_what_was_sent(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        handler = Echo()
        async with backend.transport() as server, backend.transport() as client, \
                server.serve(proto, certs, handler) as port:
            session = await client.connect(client_url(proto, port, certs))
            label = session.protocol.value
            payloads = [b"a" * n for n in (1, 10, 100, 1000)]
            for p in payloads:
                await session.send(p)
            for p in payloads:
                assert (await session.request(p)).payload == b"re:" + p
            await eventually(lambda: handler.received == 8, "the server to receive all")
            stats = client.raw.stats()
            assert stats.messages_out == 8
            assert stats.bytes_out == 2 * sum(map(len, payloads))
            assert stats.messages_in == 4
            assert stats.bytes_in == sum(len(p) + 3 for p in payloads)
            assert stats.request_latency.count == 4
            assert stats.sessions[(label, "open")] == 1
            assert stats.sessions_opened[label] == 1
            assert stats.errors == {}
            assert stats.pool is None
            served = server.raw.stats()
            assert served.messages_in == 8
            assert served.bytes_in == 2 * sum(map(len, payloads))
            await eventually(lambda: server.raw.stats().messages_out == 4, "the answers out")
            await session.close()
            await eventually(lambda: client.raw.stats().sessions_closed.get(label) == 1,
                             "the close counted")
            assert client.raw.stats().sessions.get((label, "open"), 0) == 0
            # A request that times out is an error by its code.
            slow = await client.connect(client_url(proto, port, certs))
            handler.delay = 0.5
            with pytest.raises(TransportTimeoutError):
                await slow.request(b"slow", timeout=0.05)
            assert client.raw.stats().errors["timeout.request"] == 1
            assert client.raw.stats().as_dict()["messages"]["out"] == 9

    backend.run(body)


async def _connect_and_receive(client: Any, url: str) -> Msg:
    # TCP connects before the server refuses: the refusal shows on first use.
    session = await client.connect(url)
    message: Msg = await session.receive()
    return message


def test_refusals_at_max_sessions_are_counted(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs, max_sessions=1) as listener:
            url = client_url(proto, listener.port, certs)
            first = await client.connect(url)
            served = await listener.accept()
            # The second is refused in its protocol's way: TCP and QUIC close (TCP may connect
            # first and learn it on first use), WebSocket answers 503.
            with pytest.raises(TransportError):
                await _connect_and_receive(client, url)
            await eventually(
                lambda: server.raw.stats().errors.get("connection.refused_by_server") == 1,
                "the refusal counted")
            assert server.session_count() == 1
            # The slot frees when the first session goes.
            await first.close()
            await served.wait_closed()
            await eventually(lambda: server.session_count() == 0, "the first session gone")
            again = await client.connect(url)
            await again.send(b"ok")
            assert (await (await listener.accept()).receive()).payload == b"ok"
            assert server.raw.stats().errors["connection.refused_by_server"] == 1

    backend.run(body)


_SAMPLE = re.compile(
    r'(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)\})? (?P<value>\S+)'
)


def _parse_prometheus(text: str) -> tuple[set[str], set[str]]:
    """The sample names and the TYPEd names of *text*; fails on a line that is neither."""
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
    return names, typed


def test_prometheus_text_parses(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.serve("tcp", certs, Echo(delay=0.005)) as port:
            pool: Pool = await open_pool(backend, client, client_url("tcp", port, certs),
                                         min=2, max=8, target=4)

            async def one() -> None:
                await pool.request(b"p")

            with anyio.fail_after(10.0):
                async with anyio.create_task_group() as tg:
                    for _ in range(40):
                        tg.start_soon(one)
            text: str = client.raw.stats_prometheus()
        names, typed = _parse_prometheus(text)
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
        assert "msgtrans_request_latency_seconds_count 40" in text
        assert 'msgtrans_pool_events_total{kind="expand",trigger=' in text

    backend.run(body)


def test_every_backend_has_the_same_pool_api() -> None:
    # Same names and defaults on every backend's transport.pool() and pool.
    def shape(fn: Any) -> list[tuple[str, Any]]:
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]

    libs = (amt, tmt, smt)
    assert len({str(shape(lib.Transport.pool)) for lib in libs}) == 1
    for name in ("request", "send", "lease", "close", "status", "sessions"):
        assert len({str(shape(getattr(lib.SessionPool, name))) for lib in libs}) == 1, name
    for name in ("stats", "stats_prometheus", "pool_status", "pools"):
        assert all(callable(getattr(lib.Transport, name)) for lib in libs), name
    assert all(lib.Transport.pool.__doc__ for lib in libs)
    assert TransportError is amt.TransportError
