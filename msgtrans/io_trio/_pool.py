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

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Hashable
from typing import TYPE_CHECKING

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

from .._pool_base import PoolDriverBase, closed_error, retry_delay
from ..core.config import ConnectionConfig
from ..core.metrics import TransportMetrics
from ..core.packet import Buffer
from ..core.pool import PoolMachine
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


class SessionPool(PoolDriverBase[Session]):
    """Sessions to one endpoint, opened and closed as the load asks.

    Made by :meth:`Transport.pool <msgtrans.io_trio.Transport.pool>`, never directly.  Use
    :meth:`request` and :meth:`send` for pooled traffic, ``async with pool.lease() as
    session`` for a session of your own for a while, :meth:`status` to look inside and
    :meth:`close` (or the transport's shutdown) at the end.  Its tasks run in the transport's
    nursery; all methods must be called from trio's thread.
    """

    def __init__(
        self,
        transport: Transport,
        config: ConnectionConfig,
        machine: PoolMachine,
        *,
        metrics: TransportMetrics,
        request_timeout: float,
        spawn: Callable[..., None],
        on_closed: Callable[[SessionPool], None],
    ) -> None:
        super().__init__(config, machine, metrics)
        self._transport = transport
        self._request_timeout = request_timeout
        self._spawn = spawn
        self._on_closed = on_closed
        self._waiters: dict[Hashable, _Waiter] = {}
        self._scopes: set[trio.CancelScope] = set()  # the open tasks', for close()
        self._tasks_done = trio.Event()
        self._tasks = 0
        self._timer_scope = trio.CancelScope()
        self._timer_at: float | None = None
        self._timer_changed = trio.Event()
        # The first opens: transport.pool() waits until one succeeded or all failed.
        self._first = trio.Event()
        self._first_error: BaseException | None = None
        self._first_left = 0

    # --- the application's operations ----------------------------------------------------------

    async def request(
        self,
        data: Buffer,
        *,
        biz_type: int = 0,
        ext_header: Buffer = b"",
        timeout: float | None = None,
    ) -> Message:
        """Send a request on the least-loaded session and return the response.

        The request holds a lease until its response came; waiting for a free session counts
        against *timeout*.

        Args:
            data: the payload.
            biz_type: the application's type tag (default 0).
            ext_header: the extension header (default empty).
            timeout: seconds for all of it (default: the transport's request timeout).

        Raises:
            ResourceError: no session became free in time (code ``resource.pool_exhausted``).
            TransportTimeoutError: no response in time (code ``timeout.request``).
            TransportConnectionError: the pool is closed, or the session broke.
        """
        limit = self._request_timeout if timeout is None else timeout
        start = trio.current_time()
        lease_id, session = await self._acquire(limit)
        try:
            # Session.request wants a positive timeout; a response cannot come in under 1 ms
            # anyway, so the floor only matters when the wait used the whole budget.
            remaining = max(limit - (trio.current_time() - start), 0.001)
            return await session.request(data, biz_type=biz_type, ext_header=ext_header,
                                         timeout=remaining)
        finally:
            self._release(lease_id)

    async def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"") -> None:
        """Send a one-way message on the least-loaded open session (the machine's ``pick``);
        waits for a session when none is open yet.

        Raises:
            ResourceError: no session opened within the request timeout (code
                ``resource.pool_exhausted``).
            TransportConnectionError: the pool is closed, or the session broke.
        """
        session = self._pick()
        if session is None:
            # Nothing open: wait like a lease (that is demand the machine sees), hold nothing.
            lease_id, session = await self._acquire(self._request_timeout)
            self._release(lease_id)
        await session.send(data, biz_type=biz_type, ext_header=ext_header)

    @contextlib.asynccontextmanager
    async def lease(self, timeout: float | None = None) -> AsyncIterator[Session]:
        """``async with pool.lease() as session:`` a session for this block alone (with the
        default ``max_leases_per_connection=1``).  Do not close it: leaving the block gives it
        back.

        Args:
            timeout: seconds to wait for a free session (default: the transport's request
                timeout).

        Raises:
            ResourceError: no session became free in time (code ``resource.pool_exhausted``).
            TransportConnectionError: the pool is closed.
        """
        lease_id, session = await self._acquire(
            self._request_timeout if timeout is None else timeout
        )
        try:
            yield session
        finally:
            self._release(lease_id)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiting leases fail, opens in progress stop, every pooled session
        closes gracefully (dropped after *timeout* seconds).  Closing twice is harmless."""
        sessions = self._begin_close()
        for session in sessions:
            session.start_close(None, "pool closed")
        if sessions:
            with trio.move_on_after(timeout):
                for session in sessions:
                    await session.wait_closed()
            for session in sessions:
                if not session.is_closed:
                    session.abort("aborted: the pool closed")
            with trio.move_on_after(1.0):
                for session in sessions:
                    await session.wait_closed()
        await self.wait_tasks()

    # --- for the transport ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the timer task and ask the machine for its first decisions (the opens up to
        ``min_size``)."""
        self._spawn(self._timer_loop)
        self._drive()
        if self._first_left == 0:
            self._first.set()

    async def wait_started(self) -> None:
        """Wait until a first session opened, or every first open failed.

        Raises:
            TransportError: every first open failed (the last error).
        """
        await self._first.wait()
        if self._first_error is not None:
            raise self._first_error

    def _begin_close(self) -> list[Session]:
        """Stop everything that does not need awaiting; return the sessions to close."""
        if self._closed:
            return []
        self._timer_scope.cancel()
        for waiter in self._waiters.values():
            waiter.event.set()  # conn_id None and the pool closed: the lease fails
        self._waiters.clear()
        if not self._first.is_set():
            self._first_error = closed_error()
            self._first.set()
        for scope in self._scopes:
            scope.cancel()
        sessions = self._take_sessions()
        self._on_closed(self)
        return sessions

    async def wait_tasks(self) -> None:
        """Wait for the open tasks (cancelled by the close) to end."""
        while self._tasks:
            await self._tasks_done.wait()

    # --- leases --------------------------------------------------------------------------------

    def _now(self) -> float:
        return float(trio.current_time())

    async def _acquire(self, timeout: float) -> tuple[Hashable, Session]:
        deadline = trio.current_time() + timeout
        while True:
            start = trio.current_time()
            lease_id, conn_id = self._try_acquire()
            if conn_id is None:
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
                conn_id = waiter.conn_id
                # The machine grows on its own when a lease waits past the threshold; the
                # report also covers a wait that ended just before the timer would have fired.
                self._machine.lease_waited(lease_id, trio.current_time() - start)
            session = self._usable(conn_id)
            if session is None:
                self._release(lease_id)  # broken before use: never hand it out, try again
                continue
            self._drive()
            return lease_id, session

    def _wake_lease(self, lease_id: Hashable, conn_id: Hashable) -> bool:
        waiter = self._waiters.get(lease_id)
        if waiter is None or waiter.event.is_set():
            return False
        waiter.conn_id = conn_id
        waiter.event.set()
        return True

    # --- opens ---------------------------------------------------------------------------------

    def _start_open(self) -> None:
        if not self._first.is_set():
            self._first_left += 1
        scope = trio.CancelScope()
        self._scopes.add(scope)
        self._tasks += 1
        self._spawn(self._open_one, scope)

    def _first_settled(self, error: BaseException | None) -> None:
        if self._first.is_set():
            return
        if error is None:
            self._first.set()
            return
        self._first_left -= 1
        if self._first_left <= 0:
            self._first_error = error
            self._first.set()

    async def _open_one(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await self._open(scope)
        finally:
            self._scopes.discard(scope)
            self._tasks -= 1
            if self._tasks == 0:
                self._tasks_done.set()
                self._tasks_done = trio.Event()

    async def _open(self, scope: trio.CancelScope) -> None:
        try:
            session = await self._transport.connect(self._config)
        except Exception as exc:
            self._last_error = exc
            self._first_settled(exc)
            self._failures += 1
            # Reported only after the backoff: until then the open counts as pending, so the
            # machine plans no other open and a dead server is retried at a bounded rate.
            await trio.sleep(retry_delay(self._failures))
            self._open_failed()
            return
        if self._closed:
            with trio.CancelScope(shield=True):
                await session.close(timeout=1.0)
            return
        session.when_finished(self._on_finished)
        self._opened(session)
        self._first_settled(None)

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
