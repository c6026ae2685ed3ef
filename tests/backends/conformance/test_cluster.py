"""Groups and the Redis backplane on every backend: ``session.join``/``leave``,
``send_to_group``, ``send_to_session`` locally; then two server nodes linked through a real
redis-server, where ``send_to_all``, ``send_to_group`` and ``send_to_session`` reach the
clients of both, and a Redis outage (the server killed and started again) leaves local
delivery going and the link coming back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest

from ...cluster.redis_server import RedisServer
from .adapters import WAIT, Backend, Certs, Session, Transport

pytestmark = [pytest.mark.network]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextlib.asynccontextmanager
async def node(backend: Backend, url: str | None = None, node_id: str | None = None,
               ) -> AsyncIterator[Transport]:
    """A transport, linked to the backplane at *url* as *node_id* when given."""
    builder = backend.lib.Transport.builder()
    if url is not None:
        builder.backplane(url, node_id=node_id)
    async with backend._open(builder) as raw:
        try:
            yield Transport(backend, raw)
        finally:
            await backend.call(raw.graceful_shutdown, 2.0)


async def pairs(backend: Backend, server: Transport, client: Transport, certs: Certs,
                count: int, stack: contextlib.AsyncExitStack) -> list[tuple[Session, Session]]:
    """*count* (client session, server session) pairs over TCP to a listener of *server*."""
    listener = await stack.enter_async_context(server.listen("tcp", certs))
    out = []
    for _ in range(count):
        c = await client.connect(f"tcp://127.0.0.1:{listener.port}")
        s = await listener.accept()
        out.append((c, s))
    return out


async def until(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.02)


async def got(session: Session) -> bytes:
    return (await session.receive()).payload


async def nothing(session: Session) -> None:
    extra = await session.receive_within(0.2)
    assert extra is None, extra.payload


def test_groups_and_send_to_session_on_one_node(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with node(backend) as server, node(backend) as client, \
                contextlib.AsyncExitStack() as stack:
            (c1, s1), (c2, s2), (c3, s3) = await pairs(backend, server, client, certs, 3, stack)
            s1.raw.join("a")
            s2.raw.join("a")
            s2.raw.join("a")  # twice: no change
            s3.raw.join("b")
            assert s2.raw.groups == ["a"]
            assert sorted(server.raw.groups()) == ["a", "b"]
            assert await backend.call(server.raw.send_to_group, "a", b"to a") == [None, None]
            assert (await got(c1), await got(c2)) == (b"to a", b"to a")
            await nothing(c3)
            assert s1.raw.leave("a") is True and s1.raw.leave("a") is False
            assert await backend.call(server.raw.send_to_group, "a", b"again") == [None]
            assert await got(c2) == b"again"
            await nothing(c1)
            assert await backend.call(server.raw.send_to_group, "nobody", b"x") == []
            with pytest.raises(backend.lib.ConfigurationError):
                await backend.call(server.raw.send_to_group, "", b"x")
            with pytest.raises(backend.lib.ConfigurationError):
                s1.raw.join("x" * 256)
            # By reference: a local id, or this node's cluster id.
            node_id = server.raw.node_id
            assert s3.raw.cluster_id == f"{node_id}/{s3.raw.id}"
            await backend.call(server.raw.send_to_session, s3.raw.id, b"by id")
            await backend.call(server.raw.send_to_session, s3.raw.cluster_id, b"by cluster id")
            assert (await got(c3), await got(c3)) == (b"by id", b"by cluster id")
            with pytest.raises(backend.lib.TransportConnectionError) as info:
                await backend.call(server.raw.send_to_session, 10**9, b"x")
            assert info.value.error_code == "connection.closed"
            with pytest.raises(backend.lib.TransportConnectionError) as info:
                await backend.call(server.raw.send_to_session, "elsewhere/1", b"x")
            assert "no backplane" in str(info.value)
            with pytest.raises(backend.lib.ConfigurationError):
                await backend.call(server.raw.send_to_session, "not a ref", b"x")
            # A closed session leaves its groups by itself.
            await c2.close()
            await s2.wait_closed()
            await until(lambda: _async(server.raw.groups() == ["b"]))
            with pytest.raises(backend.lib.TransportConnectionError):
                s2.raw.join("c")
            assert server.raw.stats().backplane is None

    backend.run(body)


async def _async(value: bool) -> bool:
    return value


def _bp(transport: Transport) -> Any:
    return transport.raw.stats().backplane


def test_two_nodes_deliver_across_redis_and_survive_its_restart(
        backend: Backend, certs: Certs, redis_server: RedisServer) -> None:
    async def body() -> None:
        url = redis_server.url
        async with node(backend, url, "node-a") as a, node(backend, url, "node-b") as b, \
                node(backend) as client, contextlib.AsyncExitStack() as stack:
            [(ca, sa)] = await pairs(backend, a, client, certs, 1, stack)
            (cb1, sb1), (cb2, sb2) = await pairs(backend, b, client, certs, 2, stack)
            await until(lambda: _async(_bp(a).connected and _bp(b).connected))
            sb1.raw.join("g")
            sa.raw.join("g")
            # Until b's subscription to the group is in place, a's copies go nowhere: probe.
            async def probed() -> bool:
                await backend.call(a.raw.send_to_group, "g", b"probe")
                return await cb1.receive_within(0.1) is not None

            await until(probed)
            while await cb1.receive_within(0.1) is not None:
                pass
            while await ca.receive_within(0.1) is not None:
                pass
            assert await backend.call(a.raw.send_to_group, "g", b"group") == [None]
            assert (await got(ca), await got(cb1)) == (b"group", b"group")
            await nothing(cb2)
            await backend.call(a.raw.send_to_all, b"everyone")
            for c in (ca, cb1, cb2):
                assert await got(c) == b"everyone"
            await backend.call(a.raw.send_to_session, sb2.raw.cluster_id, b"just b2")
            assert await got(cb2) == b"just b2"
            for c in (ca, cb1, cb2):
                await nothing(c)  # nothing twice
            assert _bp(a).published >= 3 and _bp(b).received >= 3

            # Redis goes away: local delivery goes on, the link comes back on its own.
            redis_server.stop()
            await until(lambda: _async(not _bp(a).connected))
            await backend.call(a.raw.send_to_all, b"while down")
            assert await got(ca) == b"while down"
            assert _bp(a).outages >= 1
            redis_server.start()
            await until(lambda: _async(_bp(a).connected and _bp(b).connected), timeout=15)

            async def across() -> bool:
                await backend.call(a.raw.send_to_all, b"after")
                return await cb1.receive_within(0.1) is not None

            await until(across)
            prom = a.raw.stats_prometheus()
            assert "msgtrans_backplane_connected 1" in prom
            assert "msgtrans_backplane_outages_total" in prom

    backend.run(body)
