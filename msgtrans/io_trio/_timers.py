"""One timer task per transport: :class:`Timers`.

Each session has at most one deadline (the earliest its connection asks for); a heap of them
and one trio task sleeping until the earliest replace a task (with its event and cancel scope)
per session.  Setting a deadline earlier than the one the task sleeps until moves the task's
cancel-scope deadline (no wake-up, no event); a later one needs nothing: the session re-reads
its connection's deadline when its turn comes (firing early is harmless).

The task runs only while some deadline is set: it is started (with the transport's spawner)
by the first :meth:`Timers.set` and returns once no deadline is left, so a transport whose
sessions are all over holds no task of its own in a nursery the application waits for.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from typing import Any, Protocol

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

__all__ = ["TimerClient", "Timers"]

logger = logging.getLogger("msgtrans.io_trio")

# Removed entries (a deadline moved earlier, or unset) left in the heap before it is rebuilt:
# past this many, and past the live ones, the next removal compacts it.
_COMPACT_SLACK = 64


class TimerClient(Protocol):
    """What a :class:`Timers` calls at a deadline (a session)."""

    def on_timer(self) -> None:
        """The deadline set with :meth:`Timers.set` passed (it is unset already)."""


class Timers:
    """The deadlines of one transport's sessions, kept by one task (see the module).

    Must be used from trio's thread.  *spawn* starts an async function in the transport's
    nursery (as ``nursery.start_soon`` does).
    """

    __slots__ = ("_entries", "_heap", "_removed", "_running", "_scope", "_seq", "_spawn")

    def __init__(self, spawn: Callable[..., object]) -> None:
        self._spawn = spawn
        # One entry per client with a deadline: [deadline, seq, client]; a removed entry stays
        # in the heap with its client cleared (None) until popped or compacted, so the heap
        # holds no reference to a client whose deadline is unset.
        self._entries: dict[TimerClient, list[Any]] = {}
        self._heap: list[list[Any]] = []
        self._removed = 0
        self._seq = 0
        self._running = False
        # The cancel scope the task sleeps in (its deadline: the earliest entry's), or None
        # while the task fires entries or is not running.
        self._scope: trio.CancelScope | None = None

    def __len__(self) -> int:
        """How many clients have a deadline."""
        return len(self._entries)

    @property
    def running(self) -> bool:
        """Whether the task is running (or started)."""
        return self._running

    def deadline(self, client: TimerClient) -> float | None:
        """The deadline set for *client*, or ``None``."""
        entry = self._entries.get(client)
        return entry[0] if entry is not None else None

    def set(self, client: TimerClient, deadline: float | None) -> None:
        """Call ``client.on_timer()`` once at *deadline* (trio's clock), replacing the deadline
        it had; ``None`` unsets it (nothing is called)."""
        old = self._entries.pop(client, None)
        if old is not None:
            old[2] = None
            self._removed += 1
        if deadline is None:
            self._compact()
            return
        self._seq += 1
        entry: list[Any] = [deadline, self._seq, client]
        self._entries[client] = entry
        heapq.heappush(self._heap, entry)
        self._compact()
        scope = self._scope
        if scope is not None:
            scope.deadline = min(scope.deadline, deadline)
        elif not self._running:
            self._start()

    def cancel(self, client: TimerClient) -> None:
        """Unset *client*'s deadline (if any)."""
        if client in self._entries:
            self.set(client, None)

    def _compact(self) -> None:
        if not self._entries:
            # Nothing left: drop the removed entries at once (the task returns when it wakes).
            self._heap.clear()
            self._removed = 0
            scope = self._scope
            if scope is not None:
                scope.cancel()
        elif self._removed > _COMPACT_SLACK and self._removed > len(self._entries):
            self._heap = [entry for entry in self._heap if entry[2] is not None]
            heapq.heapify(self._heap)
            self._removed = 0

    def _start(self) -> None:
        self._running = True
        try:
            self._spawn(self._run)
        except RuntimeError:
            # The nursery is closed (the transport is over): nothing can fire any more.
            self._running = False
            logger.debug("timers: cannot start the timer task", exc_info=True)

    async def _run(self) -> None:
        heap = self._heap
        try:
            while self._entries:
                heap = self._heap  # compaction replaces the list
                while heap and heap[0][2] is None:
                    heapq.heappop(heap)
                    self._removed -= 1
                if not heap:
                    break
                at: float = heap[0][0]
                if at > trio.current_time():
                    with trio.CancelScope(deadline=at) as scope:
                        self._scope = scope
                        await trio.sleep_forever()
                    self._scope = None
                    continue
                self._fire(trio.current_time())
                # Let the sessions' tasks run between rounds of due deadlines.
                await trio.lowlevel.checkpoint()
        finally:
            self._scope = None
            self._running = False

    def _fire(self, now: float) -> None:
        """Call every client whose deadline is *now* or past (unset first: it may set a new
        one from ``on_timer``)."""
        heap = self._heap
        due: list[TimerClient] = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            client = entry[2]
            if client is None:
                self._removed -= 1
                continue
            entry[2] = None
            del self._entries[client]
            due.append(client)
        for client in due:
            try:
                client.on_timer()
            except Exception:
                # A client's own failure must not stop the other clients' timers.
                logger.exception("timers: %r failed in on_timer", client)

