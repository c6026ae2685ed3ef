"""Pools replacing broken sessions through their ReconnectPolicy, written once and run on every
backend (asyncio, trio, blocking); the restart over TCP, WebSocket and QUIC.

A server is stopped and started again on the same port.  Short policies (0.05 s doubling to
0.3 s, no jitter); every wait is bounded, and the run checks that no task and no thread outlived
it.  The one outage that is measured (how many attempts a pool makes while its server is down)
sleeps for the outage itself: that is the quantity under test.
"""

from __future__ import annotations

import anyio
import pytest

from msgtrans.core.reconnect import LinkState, ReconnectPolicy

from .adapters import (
    WAIT,
    Backend,
    Certs,
    Session,
    SessionState,
    TransportConnectionError,
    client_url,
    open_pool,
)
from .test_connect_forever import LABEL, Echo, eventually, no_thread_left  # noqa: F401

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

FAST = ReconnectPolicy(initial_delay=0.05, max_delay=0.3, jitter=0.0)


@pytest.fixture(params=["tcp", "ws", "quic"])
def proto(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def works(session: Session) -> None:
    assert (await session.request(b"ping", timeout=WAIT)).payload == b"re:ping"


def test_pool_recovers_after_a_server_restart_and_never_counts_a_dead_session(
    backend: Backend, proto: str, certs: Certs
) -> None:
    async def body() -> None:
        async with backend.transport() as client:
            async with backend.transport() as server, \
                    server.serve(proto, certs, Echo()) as port:
                url = client_url(proto, port, certs)
                pool = await open_pool(backend, client, url, min=2, max=4, reconnect=FAST)
                await eventually(lambda: len(pool.sessions()) == 2, "two sessions")
                old = [s.raw for s in pool.sessions()]
                assert pool.raw.link_state is LinkState.CONNECTED
            # The server's shutdown closed every session at once.  As soon as they noticed,
            # the pool counts none of them (only opens, pending while the server is down).
            await eventually(lambda: all(s.state is not SessionState.OPEN for s in old),
                             "the sessions to notice")
            status = pool.status()
            assert (status.active_connections, status.idle_connections) == (0, 0)
            assert status.leases_in_use == 0
            summed = client.raw.pool_status()
            assert (summed.active_connections, summed.idle_connections) == (0, 0)
            assert pool.sessions() == []
            async with backend.transport() as server, \
                    server.serve(proto, certs, Echo(), port=port):
                await eventually(lambda: pool.status().idle_connections == 2, "the minimum again")
                async with pool.lease(timeout=WAIT) as session:
                    assert session.raw not in old
                    await works(session)
                assert (await pool.request(b"x", timeout=WAIT)).payload == b"re:x"
                assert pool.raw.link_state is LinkState.CONNECTED
                stats = client.raw.stats()
                assert stats.reconnects[LABEL[proto]] >= 1
                assert stats.disconnected_seconds[LABEL[proto]] > 0

    backend.run(body)


def test_an_outage_is_retried_at_the_policy_pace(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as client:
            async with backend.transport() as server, \
                    server.serve("tcp", certs, Echo()) as port:
                url = client_url("tcp", port, certs)
                pool = await open_pool(backend, client, url, min=2, max=4, reconnect=FAST)
                await eventually(lambda: len(pool.sessions()) == 2, "two sessions")
            before = client.raw.stats().errors.get("connection.refused", 0)
            await anyio.sleep(1.0)  # the outage under test
            refused = client.raw.stats().errors.get("connection.refused", 0) - before
            # Rounds of two opens, 0.05 s after the loss then 0.3 s apart (a refusal asks for
            # 2 s, capped at max_delay): about 4 rounds; hundreds would be a spin.
            assert 2 <= refused <= 14, refused
            assert pool.status().pending_connections == 2
            async with backend.transport() as server, \
                    server.serve("tcp", certs, Echo(), port=port):
                await eventually(lambda: pool.status().idle_connections == 2, "the minimum again")
                assert (await pool.request(b"y", timeout=WAIT)).payload == b"re:y"

    backend.run(body)


class DropAtOnce:
    """Accepts and closes every session at once (a server that is up but unusable)."""

    def __init__(self) -> None:
        self.accepted = 0

    async def on_connected(self, session: Session) -> None:
        self.accepted += 1
        await session.close()


def test_sessions_dropped_at_once_are_replaced_with_a_backoff(
    backend: Backend, certs: Certs
) -> None:
    async def body() -> None:
        handler = DropAtOnce()
        async with backend.transport() as client, backend.transport() as server, \
                server.serve("tcp", certs, handler) as port:
            url = client_url("tcp", port, certs)
            await open_pool(backend, client, url, min=2, max=4, reconnect=FAST)
            await anyio.sleep(1.0)  # the churn under test
            # Connections up for less than stable_after do not reset the backoff: rounds of
            # two, 0.05, 0.1, 0.2, 0.3, 0.3 s apart; without it, a reconnect per loop pass.
            assert 2 <= handler.accepted <= 20, handler.accepted

    backend.run(body)


def test_giving_up_fails_the_waiting_leases_with_the_last_error(
    backend: Backend, certs: Certs
) -> None:
    async def body() -> None:
        policy = ReconnectPolicy(initial_delay=0.05, max_delay=0.1, jitter=0.0, max_attempts=2)
        async with backend.transport() as client:
            async with backend.transport() as server, \
                    server.serve("tcp", certs, Echo()) as port:
                url = client_url("tcp", port, certs)
                pool = await open_pool(backend, client, url, min=1, max=1, target=1,
                                       reconnect=policy)
                await eventually(lambda: len(pool.sessions()) == 1, "one session")
            # The server is gone: the lease waits through the attempts, then fails with the
            # refusal the pool gave up on (not with pool exhaustion).
            with anyio.fail_after(WAIT), pytest.raises(TransportConnectionError) as info:
                async with pool.lease(timeout=WAIT):
                    pass
            assert info.value.error_code == "connection.refused"
            assert pool.raw.error is info.value
            assert pool.closed
            assert pool.raw.link_state is LinkState.CLOSED
            assert client.raw.stats().reconnect_give_ups["tcp"] == 1
            assert client.raw.pools() == []
            with pytest.raises(TransportConnectionError) as again:
                await pool.request(b"x", timeout=0.1)
            assert again.value is info.value

    backend.run(body)
