"""``transport.connect_forever()`` written once and run on every backend (asyncio, trio,
blocking) over TCP, WebSocket and QUIC.

Real loopback sockets; a server is stopped and started again on the same port.  Short policies
(0.05 s doubling to 0.3 s, no jitter) keep each body well under a second or two; every wait is
bounded (the adapters' run limit, ``fail_after``), and the run checks that no task and no thread
outlived it.
"""

from __future__ import annotations

import gc
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from msgtrans.core.reconnect import LinkState, ReconnectPolicy

from .adapters import (
    WAIT,
    Backend,
    Certs,
    Msg,
    Session,
    SyncBackend,
    TransportConnectionError,
    TransportError,
    client_url,
)

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

PROTOCOLS = ["tcp", "ws", "quic"]
LABEL = {"tcp": "tcp", "ws": "websocket", "quic": "quic"}
FAST = ReconnectPolicy(initial_delay=0.05, max_delay=0.3, jitter=0.0)
ATTEMPT = 0.5  # seconds per connect attempt (a QUIC attempt to a dead port times out)


@pytest.fixture(params=PROTOCOLS)
def proto(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _trio_worker(thread: threading.Thread) -> bool:
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


def free_port(proto: str) -> int:
    """A loopback port nothing listens on (for *proto*'s socket kind)."""
    kind = socket.SOCK_DGRAM if proto == "quic" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Echo:
    async def on_request(self, session: Session, message: Msg) -> bytes:
        return b"re:" + message.payload


class Forever:
    """A ``connect_forever`` iterator of any backend: ``next()`` is ``None`` at the end."""

    def __init__(self, backend: Backend, raw: Any) -> None:
        self._backend = backend
        self.raw = raw

    async def next(self) -> Session | None:
        if isinstance(self._backend, SyncBackend):
            raw = await self._backend.call(next, self.raw, None)
        else:
            try:
                raw = await self.raw.__anext__()
            except StopAsyncIteration:
                raw = None
        return None if raw is None else Session(self._backend, raw)

    async def aclose(self) -> None:
        if isinstance(self._backend, SyncBackend):
            await self._backend.call(self.raw.close)
        else:
            await self.raw.aclose()


def forever(backend: Backend, client: Any, url: str, policy: ReconnectPolicy = FAST) -> Forever:
    return Forever(backend, client.raw.connect_forever(url, policy=policy, timeout=ATTEMPT))


async def works(session: Session) -> None:
    assert (await session.request(b"ping", timeout=WAIT)).payload == b"re:ping"


def test_restarted_server_gives_a_second_session(
    backend: Backend, proto: str, certs: Certs
) -> None:
    async def body() -> None:
        async with backend.transport() as client:
            async with backend.transport() as server, \
                    server.serve(proto, certs, Echo()) as port:
                sessions = forever(backend, client, client_url(proto, port, certs))
                first = await sessions.next()
                assert first is not None
                await works(first)
                assert sessions.raw.state is LinkState.CONNECTED
            # The server is gone (its shutdown closed the session): the next step backs off
            # and tries until the server is back on the same port.
            with anyio.fail_after(WAIT):
                await first.wait_closed()
            async with backend.transport() as server, \
                    server.serve(proto, certs, Echo(), port=port):
                with anyio.fail_after(WAIT):
                    second = await sessions.next()
                assert second is not None and second.id != first.id
                await works(second)
                stats = client.raw.stats()
                assert stats.reconnects[LABEL[proto]] == 1
                assert stats.disconnected_seconds[LABEL[proto]] > 0
                assert sessions.raw.sessions_yielded == 2
                await sessions.aclose()
                assert await sessions.next() is None
                assert second.state.value == "open"  # closing the iterator closes no session

    backend.run(body)


def test_absent_server_is_waited_for(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        port = free_port(proto)
        async with backend.transport() as client:
            sessions = forever(backend, client, client_url(proto, port, certs))
            got: list[Session | None] = []

            async def first() -> None:
                got.append(await sessions.next())

            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                # Failed first attempts are retried, with the backoff.
                await eventually(lambda: sessions.raw.attempt >= 2, "two failed attempts")
                assert sessions.raw.state is LinkState.RECONNECTING
                async with backend.transport() as server, \
                        server.serve(proto, certs, Echo(), port=port):
                    with anyio.fail_after(WAIT):
                        while not got:
                            await anyio.sleep(0.01)
                    session = got[0]
                    assert session is not None
                    await works(session)
                    stats = client.raw.stats()
                    assert LABEL[proto] not in stats.reconnects  # the first session
                    assert stats.disconnected_seconds[LABEL[proto]] > 0
                    await sessions.aclose()

    backend.run(body)


def test_gives_up_after_max_attempts_with_the_last_error(
    backend: Backend, proto: str, certs: Certs
) -> None:
    async def body() -> None:
        url = client_url(proto, free_port(proto), certs)
        policy = ReconnectPolicy(initial_delay=0.05, max_delay=0.1, jitter=0.0, max_attempts=2)
        async with backend.transport() as client:
            sessions = forever(backend, client, url, policy)
            with anyio.fail_after(WAIT), pytest.raises(TransportError) as info:
                await sessions.next()
            assert info.value is sessions.raw.last_error
            assert info.value.is_retryable()  # given up on the count, not on the kind
            assert sessions.raw.state is LinkState.CLOSED
            assert client.raw.stats().reconnect_give_ups[LABEL[proto]] == 1
            assert await sessions.next() is None  # finished

    backend.run(body)


def test_a_step_waits_for_the_session_it_yielded(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as client, backend.transport() as server, \
                server.serve("tcp", certs, Echo()) as port:
            sessions = forever(backend, client, client_url("tcp", port, certs))
            first = await sessions.next()
            assert first is not None
            got: list[Session | None] = []

            async def step() -> None:
                got.append(await sessions.next())

            async with anyio.create_task_group() as tg:
                tg.start_soon(step)
                await anyio.sleep(0.2)  # proving a negative: the step must still wait
                assert not got and sessions.raw.session is first.raw
                await works(first)
                await first.close()  # the application is done with it: the step goes on
                with anyio.fail_after(WAIT):
                    while not got:
                        await anyio.sleep(0.01)
            second = got[0]
            assert second is not None and second.id != first.id
            await works(second)
            await sessions.aclose()

    backend.run(body)


@pytest.mark.parametrize("how", ["shutdown", "aclose"])
def test_stopping_during_the_backoff_ends_the_iteration_at_once(
    backend: Backend, certs: Certs, how: str
) -> None:
    async def body() -> None:
        url = client_url("tcp", free_port("tcp"), certs)
        slow = ReconnectPolicy(initial_delay=10.0, max_delay=10.0, jitter=0.0)
        async with backend.transport() as client:
            sessions = forever(backend, client, url, slow)
            got: list[Session | None] = []

            async def step() -> None:
                got.append(await sessions.next())

            async with anyio.create_task_group() as tg:
                tg.start_soon(step)
                await eventually(lambda: sessions.raw.attempt >= 1, "a failed attempt")
                with anyio.fail_after(2.0):  # not the 10 s backoff
                    if how == "shutdown":
                        await client.shutdown(1.0)
                    else:
                        await sessions.aclose()
                    while not got:
                        await anyio.sleep(0.01)
            assert got == [None]
            assert sessions.raw.state is LinkState.CLOSED
            assert client.raw.stats().disconnected_seconds["tcp"] > 0
            if how == "shutdown":
                with pytest.raises(TransportConnectionError):
                    client.raw.connect_forever(url)

    backend.run(body)


def test_breaking_out_of_the_loop_leaves_nothing_behind(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as client, backend.transport() as server, \
                server.serve("tcp", certs, Echo()) as port:
            held = [client.raw.connect_forever(client_url("tcp", port, certs), policy=FAST)]
            native: Any = None
            if isinstance(backend, SyncBackend):
                def first() -> Any:
                    for got in held[0]:
                        return got
                    return None

                native = await backend.call(first)
            else:
                async for got in held[0]:
                    native = got
                    break
            session = Session(backend, native)
            await works(session)  # the session stays the application's
            assert len(client.raw._forevers) == 1
            held.clear()
            gc.collect()
            assert len(client.raw._forevers) == 0  # an abandoned iterator is not kept alive
            # No task or thread of the iterator's: the run and the fixture check that.

    backend.run(body)
