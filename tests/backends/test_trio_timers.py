"""The trio driver's timers (:class:`msgtrans.io_trio._timers.Timers`): one task per transport
keeps every session's deadline.  Deadlines fire in order, an earlier deadline wakes the sleeping
task, an unset one never fires and leaves no reference behind, the task ends once no deadline
is left, and a transport's sessions share one task.

Each test runs its own ``trio.run`` under a deadline (``trio.fail_after``).
"""

from __future__ import annotations

import gc
import socket
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import trio

import msgtrans.io_trio as mt
from msgtrans.io_trio._timers import Timers

pytestmark = [
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

T = TypeVar("T")
WAIT = 5.0
TIMER_TASK = "msgtrans.io_trio timers"


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        with trio.fail_after(20):
            return await main()

    return trio.run(bounded, strict_exception_groups=True)


class Client:
    """Records when its timer fired (trio's clock) in a shared list."""

    def __init__(self, name: str, fired: list[tuple[str, float]]) -> None:
        self.name = name
        self.fired = fired
        self.then: Callable[[Client], None] | None = None

    def on_timer(self) -> None:
        self.fired.append((self.name, trio.current_time()))
        if self.then is not None:
            self.then(self)


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not condition():
            await trio.sleep(0.001)


def tasks_named(name: str) -> list[trio.lowlevel.Task]:
    """Every task of this run named *name* (walking the task tree from the root)."""
    found: list[trio.lowlevel.Task] = []
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task.name == name:
            found.append(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


def test_deadlines_fire_in_order_at_their_time() -> None:
    async def main() -> None:
        fired: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            timers = Timers(nursery.start_soon)
            now = trio.current_time()
            deadlines = {"a": now + 0.06, "b": now + 0.02, "c": now + 0.04}
            for name, at in deadlines.items():
                timers.set(Client(name, fired), at)
            assert len(timers) == 3
            await until(lambda: len(fired) == 3)
            assert [name for name, _ in fired] == ["b", "c", "a"]
            for name, at in fired:
                assert at >= deadlines[name]  # never early
            assert len(timers) == 0
            await until(lambda: not timers.running)  # nothing left: the task ended
            assert not nursery.child_tasks

    run(main)


def test_an_earlier_deadline_wakes_the_sleeping_task() -> None:
    async def main() -> None:
        fired: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            timers = Timers(nursery.start_soon)
            late, soon = Client("late", fired), Client("soon", fired)
            timers.set(late, trio.current_time() + 60)
            await trio.sleep(0.01)  # the task sleeps until the late deadline
            assert timers.running
            timers.set(soon, trio.current_time() + 0.01)
            await until(lambda: bool(fired))
            assert [name for name, _ in fired] == ["soon"]
            # Moving a client's own deadline earlier replaces it (it fires once).
            timers.set(late, trio.current_time() + 0.01)
            await until(lambda: len(fired) == 2)
            await trio.sleep(0.05)
            assert [name for name, _ in fired] == ["soon", "late"]
            assert timers.deadline(late) is None
            await until(lambda: not timers.running)

    run(main)


def test_a_later_deadline_replaces_the_earlier_one() -> None:
    async def main() -> None:
        fired: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            timers = Timers(nursery.start_soon)
            client = Client("c", fired)
            timers.set(client, trio.current_time() + 0.01)
            later = trio.current_time() + 0.05
            timers.set(client, later)
            assert timers.deadline(client) == later
            await until(lambda: bool(fired))
            assert fired[0][1] >= later and len(fired) == 1

    run(main)


def test_an_unset_deadline_never_fires_and_is_not_held() -> None:
    async def main() -> None:
        fired: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            timers = Timers(nursery.start_soon)
            keep, gone = Client("keep", fired), Client("gone", fired)
            timers.set(keep, trio.current_time() + 0.05)
            timers.set(gone, trio.current_time() + 0.01)
            timers.cancel(gone)
            timers.cancel(gone)  # twice: harmless
            ref = weakref.ref(gone)
            del gone
            gc.collect()
            assert ref() is None  # the timers hold no reference to it
            await until(lambda: bool(fired))
            await trio.sleep(0.03)
            assert [name for name, _ in fired] == ["keep"]
            # The last one unset: the task ends at once, nothing is left in the heap.
            timers.set(keep, trio.current_time() + 60)
            await trio.sleep(0.01)
            assert timers.running
            timers.set(keep, None)
            await until(lambda: not timers.running)
            assert not timers._heap and len(timers) == 0

    run(main)


def test_removed_entries_are_compacted() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            timers = Timers(nursery.start_soon)
            clients = [Client(str(i), []) for i in range(10)]
            now = trio.current_time()
            for step in range(200):  # each deadline moved earlier, again and again
                for client in clients:
                    timers.set(client, now + 1000 - step)
            assert len(timers) == 10
            assert len(timers._heap) <= 10 + 2 * 64 + 10
            for client in clients:
                timers.cancel(client)
            assert not timers._heap

    run(main)


def test_a_client_sets_its_next_deadline_from_on_timer_and_a_failure_stops_no_other() -> None:
    async def main() -> None:
        fired: list[tuple[str, float]] = []
        async with trio.open_nursery() as nursery:
            timers = Timers(nursery.start_soon)
            ticker, broken = Client("tick", fired), Client("broken", fired)

            def again(client: Client) -> None:
                if len([f for f in fired if f[0] == "tick"]) < 3:
                    timers.set(client, trio.current_time() + 0.01)

            def fail(client: Client) -> None:
                raise RuntimeError("boom")

            ticker.then, broken.then = again, fail
            timers.set(broken, trio.current_time())
            timers.set(ticker, trio.current_time() + 0.01)
            await until(lambda: len(fired) == 4)
            assert [name for name, _ in fired] == ["broken", "tick", "tick", "tick"]
            await until(lambda: not timers.running)

    run(main)


@pytest.mark.network
def test_many_sessions_share_one_timer_task() -> None:
    """100 idle server sessions (each with its first-packet deadline): one timer task for the
    transport, none once they are over."""

    async def main() -> None:
        count = 100
        async with mt.Transport() as server, \
                server.accept(["tcp://127.0.0.1:0"]) as stream:
            port = stream.addresses[0][1]
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
            try:
                sessions = []
                with trio.fail_after(WAIT):
                    for _ in range(count):
                        sessions.append(await stream.__anext__())
                assert len(server._timers) == count  # every session has a deadline
                assert len(tasks_named(TIMER_TASK)) == 1
                # A session's tasks: its own (the writer) and its reader, in one nursery.
                session_tasks = tasks_named("msgtrans.io_trio._session.Session.run")
                assert len(session_tasks) == count
                for task in session_tasks:
                    assert len(task.child_nurseries) == 1
                    assert len(task.child_nurseries[0].child_tasks) == 1  # the reader
            finally:
                for s in socks:
                    s.close()
            with trio.fail_after(WAIT):
                for session in sessions:
                    await session.wait_closed()
            await until(lambda: len(server._timers) == 0)
            await until(lambda: not tasks_named(TIMER_TASK))

    run(main)


@pytest.mark.network
@pytest.mark.parametrize("timeout", [0.05])
def test_the_first_packet_timeout_still_fires(timeout: float) -> None:
    """A silent connection is dropped at its first-packet deadline (kept by the timers)."""

    async def main() -> None:
        async with mt.Transport() as server, \
                server.accept([f"tcp://127.0.0.1:0?first_packet_timeout={timeout}"]) as stream:
            port = stream.addresses[0][1]
            with socket.create_connection(("127.0.0.1", port)) as sock:
                with trio.fail_after(WAIT):
                    session = await stream.__anext__()
                    started = trio.current_time()
                    await session.wait_closed()
                assert trio.current_time() - started >= timeout * 0.9
                assert session.error is not None
                assert session.error.error_code == "timeout.first_packet"
                sock.settimeout(WAIT)
                assert sock.recv(1) == b""  # the server closed it
            await until(lambda: len(server._timers) == 0)

    run(main)

