"""A client-side pool of sessions to one endpoint: :class:`SessionPool`, the trio driver of the
core's :class:`~msgtrans.core.pool.PoolMachine`.

The same pool as :mod:`msgtrans.io_asyncio`'s (same API, defaults and errors; the machine
bookkeeping is :class:`msgtrans._pool_base.PoolDriverBase`): opens run as tasks in the
transport's nursery (a failed one reported after a backoff), waiting leases wait on a
``trio.Event``, and one timer task sleeps until the machine's next deadline.  Requests hold a
lease for their round trip so the machine sees the load; :meth:`SessionPool.send` uses the
machine's ``pick`` (a one-way send holds nothing once queued).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

from .._driver.pool import AsyncPoolBase
from ..core.config import ConnectionConfig
from ..core.metrics import TransportMetrics
from ..core.pool import PoolMachine
from ..core.reconnect import ReconnectPolicy
from ._message import Message
from ._session import Session

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["SessionPool"]


class _Waiter:
    """A lease waiting for a connection."""

    __slots__ = ("conn_id", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.conn_id: Hashable | None = None


class SessionPool(AsyncPoolBase[Session, Message]):
    """Sessions to one endpoint, opened and closed as the load asks.

    Made by :meth:`Transport.pool <msgtrans.io_trio.Transport.pool>`, never directly.  Use
    :meth:`request` and :meth:`send` for pooled traffic, ``async with pool.lease() as
    session`` for a session of your own for a while, :meth:`status` to look inside and
    :meth:`close` (or the transport's shutdown) at the end.  Its tasks run in the transport's
    nursery; all methods must be called from trio's thread.
    """

    _transport: Transport

    def __init__(self, transport: Transport, config: ConnectionConfig, machine: PoolMachine, *,
                 metrics: TransportMetrics, request_timeout: float, spawn: Callable[..., None],
                 on_closed: Callable[[SessionPool], None],
                 reconnect: ReconnectPolicy | None = None) -> None:
        super().__init__(transport, config, machine, metrics=metrics,
                         request_timeout=request_timeout, on_closed=on_closed,
                         reconnect=reconnect)
        self._clock = trio.current_time
        self._spawn = spawn
        self._waiters: dict[Hashable, _Waiter] = {}
        self._scopes: set[trio.CancelScope] = set()  # the open tasks', for close()
        self._tasks_done = trio.Event()
        self._tasks = 0
        self._timer_scope = trio.CancelScope()
        self._timer_at: float | None = None
        self._timer_changed = trio.Event()
        self._first = trio.Event()  # see wait_started

    # --- the application's operations (request, send, lease: AsyncPoolBase) ------------------

    # --- for the transport ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the timer task and ask the machine for its first decisions (the opens up to
        ``min_size``)."""
        self._spawn(self._timer_loop)
        self._first_started()

    async def wait_started(self) -> None:
        """Wait until a first session opened, or every first open failed.

        Raises:
            TransportError: every first open failed (the last error).
        """
        await self._first.wait()
        if self._first_error is not None:
            raise self._first_error

    def _first_reached(self) -> None:
        self._first.set()

    def _stop(self) -> None:
        self._timer_scope.cancel()
        for waiter in self._waiters.values():
            waiter.event.set()  # conn_id None and the pool closed: the lease fails
        self._waiters.clear()
        for scope in self._scopes:
            scope.cancel()

    async def wait_tasks(self) -> None:
        """Wait for the open tasks (cancelled by the close) to end."""
        while self._tasks:
            await self._tasks_done.wait()

    async def _wait_closed(self, sessions: list[Session], timeout: float) -> None:
        with trio.move_on_after(timeout):
            for session in sessions:
                await session.wait_closed()

    async def _sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    async def _close_late(self, session: Session) -> None:
        with trio.CancelScope(shield=True):
            await session.close(timeout=1.0)

    # --- leases --------------------------------------------------------------------------------

    def _now(self) -> float:
        return float(trio.current_time())

    async def _wait_lease(self, lease_id: Hashable, deadline: float, timeout: float) -> Hashable:
        waiter = _Waiter()
        self._waiters[lease_id] = waiter
        self._drive()
        try:
            with trio.move_on_at(deadline):
                await waiter.event.wait()
        except BaseException:
            self._release(lease_id)  # cancelled: a connection assigned goes back
            raise
        finally:
            self._waiters.pop(lease_id, None)
        if waiter.conn_id is None:
            self._release(lease_id)
            self._check_open()
            raise self._exhausted(timeout)
        return waiter.conn_id

    def _wake_lease(self, lease_id: Hashable, conn_id: Hashable) -> bool:
        waiter = self._waiters.get(lease_id)
        if waiter is None or waiter.event.is_set():
            return False
        waiter.conn_id = conn_id
        waiter.event.set()
        return True

    # --- opens ---------------------------------------------------------------------------------

    def _start_open(self) -> None:
        self._open_started()
        scope = trio.CancelScope()
        self._scopes.add(scope)
        self._tasks += 1
        self._spawn(self._open_one, scope)

    async def _open_one(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await self._open()
        finally:
            self._scopes.discard(scope)
            self._tasks -= 1
            if self._tasks == 0:
                self._tasks_done.set()
                self._tasks_done = trio.Event()

    # --- the timer -----------------------------------------------------------------------------

    def _rearm(self) -> None:
        if self._closed:
            return
        if self._machine.next_deadline() != self._timer_at:
            self._timer_changed.set()

    async def _timer_loop(self) -> None:
        with self._timer_scope:
            while not self._closed:
                deadline = self._machine.next_deadline()
                self._timer_at = deadline
                self._timer_changed = trio.Event()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    await self._timer_changed.wait()
                    continue
                self._timer_at = None
                # The machine must see its deadline reached even if the clock reads a hair early.
                self._tick(max(trio.current_time(), deadline if deadline is not None else 0.0))
