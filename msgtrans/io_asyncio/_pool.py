"""A client-side pool of sessions to one endpoint: :class:`SessionPool`, the asyncio driver of the
core's :class:`~msgtrans.core.pool.PoolMachine`.

The machine decides when to open, close and hand out sessions; this module carries the decisions
out: it opens sessions concurrently (one task per open, failures reported after a backoff so a
dead server is not hammered), closes the ones the machine lets go, wakes waiting leases, and
keeps one timer at the machine's next deadline.

Requests hold a lease for their round trip, so the machine sees the load: with the default one
lease per session, a burst of concurrent requests fills the sessions, makes leases wait and grows
the pool.  (Shared use through :meth:`PoolMachine.pick` is invisible to the machine's
utilisation, so it could neither balance requests nor grow the pool; only :meth:`SessionPool.send`
uses it, because a one-way send holds nothing once queued.)

The machine bookkeeping is :class:`msgtrans._pool_base.PoolDriverBase`, shared with the trio
and blocking pools; this module adds the asyncio tasks, futures and timer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from .._driver.pool import MAX_RETRY_BACKOFF, RETRY_BACKOFF, AsyncPoolBase
from ..core.config import ConnectionConfig
from ..core.metrics import TransportMetrics
from ..core.pool import PoolMachine
from ..core.reconnect import ReconnectPolicy
from ._message import Message
from ._session import Session

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["MAX_RETRY_BACKOFF", "RETRY_BACKOFF", "SessionPool"]


class SessionPool(AsyncPoolBase[Session, Message]):
    """Sessions to one endpoint, opened and closed as the load asks.

    Made by :meth:`Transport.pool <msgtrans.io_asyncio.Transport.pool>`, never directly.  Use
    :meth:`request` and :meth:`send` for pooled traffic, ``async with pool.lease() as
    session`` for a session of your own for a while, :meth:`status` to look inside and
    :meth:`close` (or the transport's shutdown) at the end.  All methods must be called from the
    event loop's thread.
    """

    _transport: Transport

    def __init__(self, transport: Transport, config: ConnectionConfig, machine: PoolMachine, *,
                 metrics: TransportMetrics, request_timeout: float,
                 on_closed: Callable[[SessionPool], None],
                 reconnect: ReconnectPolicy | None = None) -> None:
        super().__init__(transport, config, machine, metrics=metrics,
                         request_timeout=request_timeout, on_closed=on_closed,
                         reconnect=reconnect)
        self._loop = asyncio.get_running_loop()
        self._clock = self._loop.time
        self._waiters: dict[Hashable, asyncio.Future[Hashable]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._first: asyncio.Future[None] = self._loop.create_future()  # see wait_started

    # --- the application's operations (request, send, lease: AsyncPoolBase) ------------------

    # --- for the transport ---------------------------------------------------------------------

    def start(self) -> None:
        """Ask the machine for its first decisions (the opens up to ``min_size``)."""
        self._first_started()

    async def wait_started(self) -> None:
        """Wait until a first session opened, or every first open failed.

        Raises:
            TransportError: every first open failed (the last error).
        """
        await asyncio.shield(self._first)

    def _first_reached(self) -> None:
        if self._first_error is None:
            self._first.set_result(None)
        else:
            self._first.set_exception(self._first_error)
            self._first.exception()  # retrieved: pool() may be gone already

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        error = self._close_error()
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(error)
        self._waiters.clear()
        for task in self._tasks:
            task.cancel()

    async def wait_tasks(self) -> None:
        """Wait for the open tasks (cancelled by the close) to end."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _wait_closed(self, sessions: list[Session], timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in sessions)), timeout)

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _close_late(self, session: Session) -> None:
        await session.close(timeout=1.0)

    # --- leases --------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._loop.time()

    async def _wait_lease(self, lease_id: Hashable, deadline: float, timeout: float) -> Hashable:
        future: asyncio.Future[Hashable] = self._loop.create_future()
        self._waiters[lease_id] = future
        self._drive()
        try:
            return await asyncio.wait_for(future, max(deadline - self._loop.time(), 0.0))
        except asyncio.TimeoutError:
            self._release(lease_id)
            raise self._exhausted(timeout) from None
        except BaseException:
            self._release(lease_id)  # cancelled, or the pool closed
            raise
        finally:
            self._waiters.pop(lease_id, None)

    def _wake_lease(self, lease_id: Hashable, conn_id: Hashable) -> bool:
        future = self._waiters.get(lease_id)
        if future is None or future.done():
            return False
        future.set_result(conn_id)
        return True

    # --- opens ---------------------------------------------------------------------------------

    def _start_open(self) -> None:
        self._open_started()
        task = self._loop.create_task(self._open())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the timer -----------------------------------------------------------------------------

    def _rearm(self) -> None:
        if self._closed:
            return
        deadline = self._machine.next_deadline()
        if deadline == self._timer_at and (deadline is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        # asyncio may run a timer a clock tick early; the machine must see its deadline reached.
        now = max(self._loop.time(), self._timer_at or 0.0)
        self._timer = None
        self._timer_at = None
        self._tick(now)
