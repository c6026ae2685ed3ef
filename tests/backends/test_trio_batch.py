"""The trio driver's batching: a cancelled :meth:`Session.receive_many` takes nothing, and
``send`` / ``receive`` are cancel points on every call but schedule points only once per batch
(:data:`msgtrans.io_trio._session.BATCH_CALLS`) while they need not wait.  What
``receive_many`` takes is every backend's: tests/backends/conformance.

Each test runs its own ``trio.run`` under a deadline, over TCP on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
import trio

import msgtrans.io_trio as mt
from msgtrans.io_trio._session import BATCH_CALLS

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

T = TypeVar("T")
WAIT = 5.0


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        with trio.fail_after(20):
            return await main()

    return trio.run(bounded, strict_exception_groups=True)


@contextlib.asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[mt.Session, mt.Session]]:
    """(client session, server session) over TCP; both transports shut down at the end."""
    async with mt.Transport() as server, mt.Transport() as client, \
            server.accept(["tcp://127.0.0.1:0"]) as stream:
        port = stream.addresses[0][1]
        with trio.fail_after(WAIT):
            cs = await client.connect(f"tcp://127.0.0.1:{port}")
            ss = await stream.__anext__()
        yield cs, ss


async def until_queued(session: mt.Session, count: int) -> None:
    """Wait until *count* messages are queued on *session* (without taking them)."""
    with trio.fail_after(WAIT):
        while len(session._inbox or ()) < count:
            await trio.sleep(0.001)


def test_cancelled_receive_many_loses_nothing() -> None:
    async def main() -> None:
        async with tcp_pair() as (cs, ss):
            # Waiting, then cancelled: nothing was there to take.
            with trio.move_on_after(0.01) as scope:
                await ss.receive_many()
            assert scope.cancelled_caught
            for i in range(5):
                await cs.send(b"%d" % i)
            await until_queued(ss, 5)
            # Cancelled before it could take the queued messages: they stay.
            with trio.CancelScope() as scope:
                scope.cancel()
                await ss.receive_many()
            assert scope.cancelled_caught
            batch = await ss.receive_many()
            assert [bytes(m.payload) for m in batch] == [b"%d" % i for i in range(5)]

    run(main)


def test_send_is_a_cancel_point_on_every_call() -> None:
    async def main() -> None:
        async with tcp_pair() as (cs, ss):
            with trio.CancelScope() as scope:
                scope.cancel()
                await cs.send(b"never")
            assert scope.cancelled_caught
            # A deadline is noticed at the latest at the batch's schedule point.
            sent = 0
            with trio.move_on_after(0) as scope:
                for _ in range(10 * BATCH_CALLS):
                    await cs.send(b"x")
                    sent += 1
            assert scope.cancelled_caught
            assert sent <= BATCH_CALLS
            await cs.send(b"end")
            got: list[bytes] = []
            with trio.fail_after(WAIT):
                while not got or got[-1] != b"end":
                    got += [bytes(m.payload) for m in await ss.receive_many()]
            assert got == [b"x"] * sent + [b"end"]

    run(main)


def test_send_and_receive_yield_once_per_batch() -> None:
    """A loop of sends (or of receives of queued messages) lets other tasks run at least once
    every BATCH_CALLS calls, so it never starves them."""

    async def main() -> None:
        async with tcp_pair() as (cs, ss), trio.open_nursery() as nursery:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(ticker)
            await trio.lowlevel.checkpoint()  # the ticker starts
            calls = 8 * BATCH_CALLS
            # At least one schedule point per BATCH_CALLS + 1 calls; the ticker may have had
            # its turn of the first scheduler round before `before` was read.
            least = calls // (BATCH_CALLS + 1) - 1
            before = ticks
            for _ in range(calls):
                await cs.send(b"y")
            assert ticks - before >= least
            await until_queued(ss, calls)
            before = ticks
            for _ in range(calls):
                await ss.receive()
            assert ticks - before >= least
            nursery.cancel_scope.cancel()

    run(main)
