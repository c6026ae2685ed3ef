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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Hashable
from typing import TYPE_CHECKING

from ..core.config import ConnectionConfig
from ..core.errors import ResourceError, TransportConnectionError
from ..core.metrics import TransportMetrics
from ..core.packet import Buffer
from ..core.pool import (
    AssignLease,
    CloseConnections,
    OpenConnections,
    PoolMachine,
    PoolStatus,
)
from ..core.session import SessionState
from ._message import Message
from ._session import Session

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["SessionPool"]

#: Seconds before a failed open is reported (and so retried); doubles per consecutive failure.
RETRY_BACKOFF = 0.05
#: The most a failed open waits before it is reported.
MAX_RETRY_BACKOFF = 2.0


class SessionPool:
    """Sessions to one endpoint, opened and closed as the load asks.

    Made by :meth:`Transport.pool <msgtrans.io_asyncio.Transport.pool>`, never directly.  Use
    :meth:`request` and :meth:`send` for pooled traffic, ``async with pool.lease() as
    session`` for a session of your own for a while, :meth:`status` to look inside and
    :meth:`close` (or the transport's shutdown) at the end.  All methods must be called from the
    event loop's thread.
    """

    def __init__(
        self,
        transport: Transport,
        config: ConnectionConfig,
        machine: PoolMachine,
        *,
        metrics: TransportMetrics,
        request_timeout: float,
        on_closed: Callable[[SessionPool], None],
    ) -> None:
        self._transport = transport
        self._config = config
        self._machine = machine
        self._metrics = metrics
        self._request_timeout = request_timeout
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._sessions: dict[Hashable, Session] = {}
        self._closing_sessions: set[Session] = set()
        self._waiters: dict[Hashable, asyncio.Future[Hashable]] = {}
        self._lease_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._driving = False
        self._closed = False
        self._failures = 0  # consecutive failed opens, for the backoff
        self._last_error: BaseException | None = None
        # The first opens: transport.pool() waits until one succeeded or all failed.
        self._first: asyncio.Future[None] = self._loop.create_future()
        self._first_left = 0

    # --- what the pool is ----------------------------------------------------------------------

    @property
    def config(self) -> ConnectionConfig:
        """Where the pool connects."""
        return self._config

    @property
    def machine(self) -> PoolMachine:
        """The core machine deciding for this pool (for inspection; feed it nothing)."""
        return self._machine

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the transport shut down)."""
        return self._closed

    def sessions(self) -> list[Session]:
        """The pooled sessions that are open, oldest first."""
        return [self._sessions[c] for c in self._machine.connections if c in self._sessions]

    def status(self) -> PoolStatus:
        """Return the machine's :class:`~msgtrans.core.pool.PoolStatus` now."""
        return self._machine.status()

    def __repr__(self) -> str:
        s = self._machine.status()
        return (
            f"<SessionPool {self._config.protocol.value}://{self._config.host}:"
            f"{self._config.port} size={s.size} leases={s.leases_in_use}"
            f"{' closed' if self._closed else ''}>"
        )

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

        The request holds a lease until its response came (see the module text); waiting for a
        free session counts against *timeout*.

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
        start = self._loop.time()
        lease_id, session = await self._acquire(limit)
        try:
            # Session.request wants a positive timeout; a response cannot come in under 1 ms
            # anyway, so the floor only matters when the wait used the whole budget.
            remaining = max(limit - (self._loop.time() - start), 0.001)
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
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(s.wait_closed() for s in sessions)), timeout
                )
            for session in sessions:
                session.abort("aborted: the pool closed")
            # Aborted sockets report connection_lost on the next iteration; see that through.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(s.wait_closed() for s in sessions)), 1.0
                )
        await self.wait_tasks()

    # --- for the transport ---------------------------------------------------------------------

    def start(self) -> None:
        """Ask the machine for its first decisions (the opens up to ``min_size``)."""
        self._drive()
        if self._first_left == 0 and not self._first.done():
            self._first.set_result(None)

    async def wait_started(self) -> None:
        """Wait until a first session opened, or every first open failed.

        Raises:
            TransportError: every first open failed (the last error).
        """
        await asyncio.shield(self._first)

    def _begin_close(self) -> list[Session]:
        """Stop everything that does not need awaiting; return the sessions to close."""
        if self._closed:
            return []
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        error = TransportConnectionError(
            "the pool is closed", code="connection.closed", retryable=False, operation="lease"
        )
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(error)
        self._waiters.clear()
        if not self._first.done():
            self._first.set_exception(error)
            self._first.exception()  # retrieved: pool() may be gone already
        for task in self._tasks:
            task.cancel()
        sessions = [*self._sessions.values(), *self._closing_sessions]
        self._sessions.clear()
        self._closing_sessions.clear()
        self._on_closed(self)
        return sessions

    async def wait_tasks(self) -> None:
        """Wait for the open tasks (cancelled by the close) to end."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- leases --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportConnectionError(
                "the pool is closed", code="connection.closed", retryable=False,
                operation="lease",
            )

    def _usable(self, conn_id: Hashable | None) -> Session | None:
        """The session behind *conn_id* if it may be handed out; a session found closing is
        reported broken at once (its finish callback may not have run yet)."""
        if conn_id is None:
            return None
        session = self._sessions.get(conn_id)
        if session is not None and session.state is SessionState.OPEN:
            return session
        self._sessions.pop(conn_id, None)
        if session is not None:
            self._closing_sessions.add(session)
        self._machine.connection_failed(conn_id, self._loop.time())
        return None

    def _pick(self) -> Session | None:
        self._check_open()
        while True:
            conn_id = self._machine.pick(self._loop.time())
            if conn_id is None:
                return None
            session = self._usable(conn_id)
            self._drive()
            if session is not None:
                return session

    async def _acquire(self, timeout: float) -> tuple[Hashable, Session]:
        loop = self._loop
        deadline = loop.time() + timeout
        while True:
            self._check_open()
            lease_id = next(self._lease_ids)
            start = loop.time()
            conn_id = self._machine.acquire(lease_id, start)
            if conn_id is None:
                future: asyncio.Future[Hashable] = loop.create_future()
                self._waiters[lease_id] = future
                self._drive()
                try:
                    conn_id = await asyncio.wait_for(future, max(deadline - start, 0.0))
                except asyncio.TimeoutError:
                    self._release(lease_id)
                    error = ResourceError(
                        "pool", self._machine.size, self._machine.max_size,
                        f"no pooled session became free within {timeout:g} s",
                        code="resource.pool_exhausted", operation="lease",
                    )
                    self._metrics.error(error)
                    raise error from None
                except BaseException:
                    self._release(lease_id)  # cancelled, or the pool closed
                    raise
                finally:
                    self._waiters.pop(lease_id, None)
                # The machine grows on its own when a lease waits past the threshold; the
                # report also covers a wait that ended just before the timer would have fired.
                self._machine.lease_waited(lease_id, loop.time() - start)
            session = self._usable(conn_id)
            if session is None:
                self._release(lease_id)  # broken before use: never hand it out, try again
                continue
            self._drive()
            return lease_id, session

    def _release(self, lease_id: Hashable) -> None:
        if self._closed:
            return
        self._machine.release(lease_id, self._loop.time())
        self._drive()

    # --- carrying out decisions ----------------------------------------------------------------

    def _drive(self) -> None:
        if self._driving or self._closed:
            return  # the outer call picks the new decisions up
        self._driving = True
        try:
            while True:
                decisions = self._machine.decisions()
                if not decisions:
                    break
                for decision in decisions:
                    if isinstance(decision, AssignLease):
                        self._assign(decision)
                    elif isinstance(decision, OpenConnections):
                        self._metrics.pool_decision(decision)
                        for _ in range(decision.count):
                            self._spawn_open()
                    elif isinstance(decision, CloseConnections):
                        self._metrics.pool_decision(decision)
                        for conn_id in decision.conn_ids:
                            session = self._sessions.pop(conn_id, None)
                            if session is not None:
                                self._closing_sessions.add(session)
                                session.start_close(None, "pool shrink")
        finally:
            self._driving = False
        self._rearm()

    def _assign(self, decision: AssignLease) -> None:
        future = self._waiters.get(decision.lease_id)
        if future is None or future.done():
            # The waiter gave up (timeout, cancel) as the connection came: give it back.
            self._machine.release(decision.lease_id, self._loop.time())
        else:
            future.set_result(decision.conn_id)

    def _spawn_open(self) -> None:
        if not self._first.done():
            self._first_left += 1
        task = self._loop.create_task(self._open_one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _first_settled(self, error: BaseException | None) -> None:
        if self._first.done():
            return
        if error is None:
            self._first.set_result(None)
            return
        self._first_left -= 1
        if self._first_left <= 0:
            self._first.set_exception(error)
            self._first.exception()  # retrieved: pool() may be gone already

    async def _open_one(self) -> None:
        try:
            session = await self._transport.connect(self._config)
        except Exception as exc:
            self._last_error = exc
            self._first_settled(exc)
            self._failures += 1
            # Reported only after the backoff: until then the open counts as pending, so the
            # machine plans no other open and a dead server is retried at a bounded rate.
            await asyncio.sleep(min(MAX_RETRY_BACKOFF, RETRY_BACKOFF * 2 ** (self._failures - 1)))
            if not self._closed:
                self._machine.connection_failed(None, self._loop.time())
                self._drive()
            return
        if self._closed:
            await session.close(timeout=1.0)
            return
        self._failures = 0
        self._sessions[session.id] = session
        session.when_finished(self._on_finished)
        self._machine.connection_opened(session.id, self._loop.time())
        self._first_settled(None)
        self._drive()

    def _on_finished(self, session: Session) -> None:
        self._closing_sessions.discard(session)
        if self._sessions.pop(session.id, None) is None or self._closed:
            return  # closed by the pool (shrink, close), or already reported broken
        if session.error is not None or session.forced:
            self._machine.connection_failed(session.id, self._loop.time())
        else:
            self._machine.connection_closed(session.id, self._loop.time())
        self._drive()

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
        self._machine.tick(now)
        self._drive()
