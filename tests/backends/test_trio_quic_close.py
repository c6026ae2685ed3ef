"""How a trio QUIC server ends its connections, under a frozen trio clock (``MockClock`` at rate
0): trio time only moves when a test jumps it, so which deadline fired, and when, is exact and
nothing depends on the machine's speed.  The sockets are real (127.0.0.1); a step that would
wait for a deadline nobody jumps to is caught by :func:`settled`, which gives up after a bounded
number of idle rounds instead of hanging.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

import msgtrans.io_trio as mt
from msgtrans.certs import write_self_signed

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

T = TypeVar("T")
#: Real seconds with no task runnable after which a step counts as idle.
CUSHION = 0.02
#: Idle rounds a step may take before the test gives up on it (a few seconds of real time).
ROUNDS = 100


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("certs"))


async def settled(awaitable: Awaitable[T]) -> T:
    """Await *awaitable* without moving the clock; fail when it is still waiting after
    :data:`ROUNDS` rounds in which every task was blocked (it waits for trio time to pass)."""
    result: list[T] = []

    async def run() -> None:
        result.append(await awaitable)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        for _ in range(ROUNDS):
            await trio.testing.wait_all_tasks_blocked(CUSHION)
            if result:
                return result[0]
        nursery.cancel_scope.cancel()
    pytest.fail("the step waits for trio time to pass (a timer), but none should be needed")


def frozen(main: Callable[[trio.testing.MockClock], Awaitable[None]]) -> None:
    """Run *main* under a trio clock that stands still until the test jumps it."""
    clock = trio.testing.MockClock()
    trio.run(main, clock, clock=clock, strict_exception_groups=True)


async def quic_pair(nursery: trio.Nursery, certs: tuple[Path, Path],
                    clients: int) -> tuple[mt.Transport, mt.Transport, list[Any]]:
    """A QUIC server and a client transport in *nursery*; *clients* connected pairs of
    (client session, server session)."""
    server = mt.Transport.builder().build(nursery=nursery)
    client = mt.Transport.builder().build(nursery=nursery)
    stream = server.accept([mt.QuicServerConfig("127.0.0.1:0", cert_file=certs[0],
                                                key_file=certs[1])])
    await stream.start()
    port = stream.addresses[0][1]
    pairs = []
    for _ in range(clients):
        cs = await settled(client.connect(f"quic://localhost:{port}?ca={certs[0]}"))
        ss = await settled(stream.__anext__())
        pairs.append((cs, ss))
    return server, client, pairs


def test_shutdown_does_not_wait_out_the_closing_period(certs: tuple[Path, Path]) -> None:
    """The client is gone (its socket closed without a word): the server's graceful shutdown
    sends its CONNECTION_CLOSE and ends the connection at once, clean, without letting trio
    time pass for QUIC's closing period (the listener's socket closes right after)."""

    async def main(clock: trio.testing.MockClock) -> None:
        async with trio.open_nursery() as nursery:
            server, client, [(cs, ss)] = await quic_pair(nursery, certs, 1)
            cs.abort()
            await settled(cs.wait_closed())
            started = trio.current_time()
            report = await settled(server.graceful_shutdown(5.0))
            assert (report.closed_cleanly, report.forced) == (1, 0)
            assert ss.closed_event is not None and ss.closed_event.clean
            assert trio.current_time() == started  # no timer had to fire
            await settled(client.shutdown(1.0))

    frozen(main)


def test_closing_period_ends_at_its_deadline(certs: tuple[Path, Path]) -> None:
    """A server session closed while its listener goes on waits out the closing period and
    then ends, whichever of the listener's tasks trio runs first after the close (the timer
    task must learn of the closing period's deadline; several sessions cover both orders)."""

    async def main(clock: trio.testing.MockClock) -> None:
        async with trio.open_nursery() as nursery:
            server, client, pairs = await quic_pair(nursery, certs, 4)
            # Let the handshakes' acknowledgement and loss timers run out: what is left is
            # each connection's ping deadline, 10 s away, which would otherwise mask a timer
            # task sleeping past a closing period.
            for _ in range(2):
                clock.jump(0.5)
                await trio.testing.wait_all_tasks_blocked(CUSHION)
            for cs, ss in pairs:
                ss.start_close()
                await settled(cs.wait_closed())  # the client has the CONNECTION_CLOSE
                assert not ss.is_closed  # the server is in its closing period
                # Its only timer now: three probe timeouts (their length depends on the round
                # trips measured, which the jumps above lengthened).
                deadline = ss.connection.next_deadline()
                assert deadline is not None
                clock.jump(deadline - trio.current_time() + 1e-6)
                await settled(ss.wait_closed())
                assert ss.closed_event is not None and ss.closed_event.clean
            await settled(server.shutdown(1.0))
            await settled(client.shutdown(1.0))

    frozen(main)
