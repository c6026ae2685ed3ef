"""What the three session pools share: the bookkeeping around the core's
:class:`~msgtrans.core.pool.PoolMachine`, the transport-side summing of pool statuses, and
the making of a machine from ``transport.pool()``'s arguments.

A driver (asyncio, trio, blocking) subclasses :class:`PoolDriverBase` and supplies only what
depends on its concurrency model: the clock (:meth:`~PoolDriverBase._now`), how an open runs
(:meth:`~PoolDriverBase._start_open`), how a waiting lease is woken
(:meth:`~PoolDriverBase._wake_lease`) and how the timer at the machine's next deadline is kept
(:meth:`~PoolDriverBase._rearm`).  Everything else (which session a lease gets, broken
sessions never handed out, decisions carried out in order, pool events counted into the
transport's metrics) is written once here, so the backends cannot drift apart.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from ..core.config import ConnectionConfig
from ..core.errors import (
    ConfigurationError,
    ResourceError,
    TransportConnectionError,
    TransportError,
)
from ..core.expansion import ExpansionStrategy
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
from . import docs
from .docs import doc

__all__ = [
    "DEFAULT_POOL_MAX",
    "DEFAULT_POOL_MIN",
    "DEFAULT_POOL_TARGET",
    "MAX_RETRY_BACKOFF",
    "RETRY_BACKOFF",
    "AsyncPoolBase",
    "PoolDriverBase",
    "PoolTracker",
    "SessionMetrics",
    "make_machine",
    "sum_pool_status",
]

#: Seconds before a failed open is reported (and so retried); doubles per consecutive failure.
RETRY_BACKOFF = 0.05
#: The most a failed open waits before it is reported.
MAX_RETRY_BACKOFF = 2.0
#: ``transport.pool()`` defaults: sessions kept open, never exceeded, and the expected need.
DEFAULT_POOL_MIN = 2
DEFAULT_POOL_MAX = 64
DEFAULT_POOL_TARGET = 16


class PooledSession(Protocol):
    """What the pool needs of a backend's session."""

    id: int
    error: Any
    forced: bool

    @property
    def state(self) -> SessionState: ...

    def start_close(self, code: int | None = None, reason: str = "") -> None: ...

    def when_finished(self, callback: Callable[[Any], None]) -> None: ...


class AsyncPooledSession(PooledSession, Protocol):
    """What the asyncio and trio pools need of their session besides :class:`PooledSession`."""

    async def request(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"",
                      timeout: float | None = None) -> Any: ...

    async def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"") -> None: ...

    @property
    def is_closed(self) -> bool: ...

    def abort(self, reason: str = "aborted") -> None: ...


S = TypeVar("S", bound=PooledSession)
A = TypeVar("A", bound=AsyncPooledSession)
M = TypeVar("M")
T_err = TypeVar("T_err", bound=TransportError)


def make_machine(
    min_size: int,
    max_size: int,
    target: int | None,
    *,
    strategy: ExpansionStrategy | None,
    now: float,
    settings: dict[str, Any],
) -> PoolMachine:
    """Build the :class:`PoolMachine` for ``transport.pool(min=, max=, target=, strategy=,
    **settings)``: *target* defaults to 16 kept between *min_size* and *max_size*.

    Raises:
        ConfigurationError: a size, the target or a setting is invalid (an unknown setting
            included).
    """
    if target is None:
        target = builtins.max(min_size, builtins.min(DEFAULT_POOL_TARGET, max_size))
    try:
        return PoolMachine(min_size, max_size, target, strategy, now=now, **settings)
    except TypeError as exc:
        raise ConfigurationError("pool", str(exc)) from exc


def retry_delay(failures: int) -> float:
    """Seconds a failed open waits before it is reported, after *failures* in a row."""
    return float(builtins.min(MAX_RETRY_BACKOFF,
                             RETRY_BACKOFF * 2.0 ** builtins.max(failures - 1, 0)))


def closed_error() -> TransportConnectionError:
    """The error of any operation on a closed pool."""
    return TransportConnectionError(
        "the pool is closed", code="connection.closed", retryable=False, operation="lease"
    )


class PoolDriverBase(Generic[S]):
    """The backend-independent half of a session pool (see the module text).

    Subclasses implement :meth:`_now`, :meth:`_start_open`, :meth:`_wake_lease` and
    :meth:`_rearm`, and call :meth:`_opened`, :meth:`_open_failed` and :meth:`_on_finished` as
    opens and sessions end.  Every method here must run where the backend allows touching the
    machine (the event loop; the blocking backend's transport lock).
    """

    def __init__(self, transport: Any, config: ConnectionConfig, machine: PoolMachine, *,
                 metrics: TransportMetrics, request_timeout: float,
                 on_closed: Callable[[Any], None]) -> None:
        self._transport = transport  # the backend's: its connect() opens the sessions
        self._config = config
        self._machine = machine
        self._metrics = metrics
        self._request_timeout = request_timeout
        self._on_closed = on_closed  # called with the pool once it closed
        self._sessions: dict[Hashable, S] = {}
        self._closing_sessions: set[S] = set()
        self._lease_ids = itertools.count(1)
        self._driving = False
        self._closed = False
        self._failures = 0  # consecutive failed opens, for the backoff
        self._last_error: BaseException | None = None
        # The first opens: transport.pool() waits until one succeeded or all failed.
        self._first_done = False
        self._first_error: BaseException | None = None
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

    def sessions(self) -> list[S]:
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

    # --- for the backend -----------------------------------------------------------------------

    def _now(self) -> float:
        raise NotImplementedError

    def _start_open(self) -> None:
        """Open one session; call :meth:`_opened` or :meth:`_open_failed` when done."""
        raise NotImplementedError

    def _wake_lease(self, lease_id: Hashable, conn_id: Hashable) -> bool:
        """Hand *conn_id* to the waiting lease; ``False`` when nobody waits for it any more."""
        raise NotImplementedError

    def _rearm(self) -> None:
        """Keep one timer at ``machine.next_deadline()`` (calling :meth:`_tick` then)."""
        raise NotImplementedError

    def _first_reached(self) -> None:
        """The first opens are settled (``_first_error`` says how): wake ``wait_started``."""
        raise NotImplementedError

    def _stop(self) -> None:
        """The pool is closing (``_closed`` is set): fail the waiting leases, stop the timer
        and the opens in progress."""
        raise NotImplementedError

    # --- leases --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise closed_error()

    def _exhausted(self, timeout: float) -> ResourceError:
        error = ResourceError(
            "pool", self._machine.size, self._machine.max_size,
            f"no pooled session became free within {timeout:g} s",
            code="resource.pool_exhausted", operation="lease",
        )
        self._metrics.error(error)
        return error

    def _usable(self, conn_id: Hashable | None) -> S | None:
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
        self._machine.connection_failed(conn_id, self._now())
        return None

    def _pick(self) -> S | None:
        self._check_open()
        while True:
            conn_id = self._machine.pick(self._now())
            if conn_id is None:
                return None
            session = self._usable(conn_id)
            self._drive()
            if session is not None:
                return session

    def _try_acquire(self) -> tuple[Hashable, Hashable | None]:
        """Ask the machine for a lease: (lease id, its connection or ``None`` to wait)."""
        self._check_open()
        lease_id = next(self._lease_ids)
        return lease_id, self._machine.acquire(lease_id, self._now())

    def _release(self, lease_id: Hashable) -> None:
        if self._closed:
            return
        self._machine.release(lease_id, self._now())
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
                        if not self._wake_lease(decision.lease_id, decision.conn_id):
                            # The waiter gave up (timeout, cancel) as the connection came.
                            self._machine.release(decision.lease_id, self._now())
                    elif isinstance(decision, OpenConnections):
                        self._metrics.pool_decision(decision)
                        for _ in range(decision.count):
                            self._start_open()
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

    def _tick(self, now: float) -> None:
        """The machine's deadline came (*now* at least that deadline)."""
        if self._closed:
            return
        self._machine.tick(now)
        self._drive()

    def _opened(self, session: S) -> None:
        """An open succeeded: the session joins the pool (or is given back when closed)."""
        self._failures = 0
        self._sessions[session.id] = session
        self._machine.connection_opened(session.id, self._now())
        self._drive()

    def _open_failed(self) -> None:
        """A failed open's backoff is over: the machine may plan another."""
        if not self._closed:
            self._machine.connection_failed(None, self._now())
            self._drive()

    def _on_finished(self, session: S) -> None:
        self._closing_sessions.discard(session)
        if self._sessions.pop(session.id, None) is None or self._closed:
            return  # closed by the pool (shrink, close), or already reported broken
        if session.error is not None or session.forced:
            self._machine.connection_failed(session.id, self._now())
        else:
            self._machine.connection_closed(session.id, self._now())
        self._drive()

    # --- the first opens, the opens' outcomes, the close --------------------------------------

    def _first_started(self) -> None:
        """Ask for the first decisions (the opens up to ``min_size``); none planned settles."""
        self._drive()
        if self._first_left == 0 and not self._first_done:
            self._settle_first(None)

    def _open_started(self) -> None:
        """An open begins: until the first opens are settled, it is one of them."""
        if not self._first_done:
            self._first_left += 1

    def _first_settled(self, error: BaseException | None) -> None:
        # One first open succeeded (they are settled), or failed (the last failure settles).
        if self._first_done:
            return
        if error is not None:
            self._first_left -= 1
            if self._first_left > 0:
                return
        self._settle_first(error)

    def _settle_first(self, error: BaseException | None) -> None:
        self._first_done = True
        self._first_error = error
        self._first_reached()

    def _open_error(self, exc: Exception) -> float:
        """An open raised *exc*: return the seconds to wait before :meth:`_open_failed`
        (until then the open counts as pending, so the machine plans no other open and a
        dead server is retried at a bounded rate)."""
        self._last_error = exc
        self._first_settled(exc)
        self._failures += 1
        return retry_delay(self._failures)

    def _open_done(self, session: S) -> None:
        """An open gave *session* (the pool not closed): it joins the pool."""
        session.when_finished(self._on_finished)
        self._opened(session)
        self._first_settled(None)

    def _begin_close(self) -> list[S]:
        """Stop everything that does not need waiting; return the sessions to close."""
        if self._closed:
            return []
        if not self._first_done:
            self._settle_first(closed_error())
        sessions = self._take_sessions()
        self._stop()
        self._on_closed(self)
        return sessions

    def _take_sessions(self) -> list[S]:
        """Mark the pool closed; return every session it still holds (to close)."""
        self._closed = True
        sessions = [*self._sessions.values(), *self._closing_sessions]
        self._sessions.clear()
        self._closing_sessions.clear()
        return sessions


class AsyncPoolBase(PoolDriverBase[A], Generic[A, M]):
    """The asyncio and trio pools' awaitable operations: the same bodies over each backend's
    :meth:`_acquire` (a lease, waited for) and clock (``_clock``)."""

    _clock: Callable[[], float]

    async def _sleep(self, seconds: float) -> None:
        raise NotImplementedError

    async def _wait_closed(self, sessions: list[A], timeout: float) -> None:
        """Wait at most *timeout* seconds for every one of *sessions* to be closed."""
        raise NotImplementedError

    async def _close_late(self, session: A) -> None:
        """Close *session*, which an open gave after the pool closed."""
        raise NotImplementedError

    async def wait_tasks(self) -> None:
        """Wait for the open tasks (cancelled by the close) to end."""
        raise NotImplementedError

    @doc(docs.POOL_CLOSE, opens="stop")
    async def close(self, timeout: float = 5.0) -> None:
        sessions = self._begin_close()
        for session in sessions:
            session.start_close(None, "pool closed")
        if sessions:
            await self._wait_closed(sessions, timeout)
            for session in sessions:
                if not session.is_closed:
                    session.abort("aborted: the pool closed")
            # An aborted socket may report its end a little later; see that through.
            await self._wait_closed(sessions, 1.0)
        await self.wait_tasks()

    async def _open(self) -> None:
        """Open one session (a task of its own): it joins the pool, or the failure is reported
        after the backoff."""
        try:
            session = await self._transport.connect(self._config)
        except Exception as exc:
            await self._sleep(self._open_error(exc))
            self._open_failed()
            return
        if self._closed:
            await self._close_late(session)
            return
        self._open_done(session)

    async def _wait_lease(self, lease_id: Hashable, deadline: float, timeout: float) -> Hashable:
        """Wait until *deadline* for the machine to give the waiting *lease_id* a connection
        (register the waiter, then :meth:`_drive`); return it.  On a timeout, release the lease
        and raise :meth:`_exhausted`; on any other exception, release it and re-raise."""
        raise NotImplementedError

    async def _acquire(self, timeout: float) -> tuple[Hashable, A]:
        clock = self._clock
        deadline = clock() + timeout
        while True:
            start = clock()
            lease_id, conn_id = self._try_acquire()
            if conn_id is None:
                conn_id = await self._wait_lease(lease_id, deadline, timeout)
                # The machine grows on its own when a lease waits past the threshold; the
                # report also covers a wait that ended just before the timer would have fired.
                self._machine.lease_waited(lease_id, clock() - start)
            session = self._usable(conn_id)
            if session is None:
                self._release(lease_id)  # broken before use: never hand it out, try again
                continue
            self._drive()
            return lease_id, session

    @doc(docs.POOL_REQUEST)
    async def request(
        self,
        data: Buffer,
        *,
        biz_type: int = 0,
        ext_header: Buffer = b"",
        timeout: float | None = None,
    ) -> M:
        limit = self._request_timeout if timeout is None else timeout
        clock = self._clock
        start = clock()
        lease_id, session = await self._acquire(limit)
        try:
            # Session.request wants a positive timeout; a response cannot come in under 1 ms
            # anyway, so the floor only matters when the wait used the whole budget.
            remaining = max(limit - (clock() - start), 0.001)
            message: M = await session.request(data, biz_type=biz_type, ext_header=ext_header,
                                               timeout=remaining)
            return message
        finally:
            self._release(lease_id)

    @doc(docs.POOL_SEND)
    async def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"") -> None:
        session = self._pick()
        if session is None:
            # Nothing open: wait like a lease (that is demand the machine sees), hold nothing.
            lease_id, session = await self._acquire(self._request_timeout)
            self._release(lease_id)
        await session.send(data, biz_type=biz_type, ext_header=ext_header)

    @contextlib.asynccontextmanager
    @doc(docs.POOL_LEASE, with_="async with")
    async def lease(self, timeout: float | None = None) -> AsyncIterator[A]:
        lease_id, session = await self._acquire(
            self._request_timeout if timeout is None else timeout
        )
        try:
            yield session
        finally:
            self._release(lease_id)


def sum_pool_status(statuses: Iterable[PoolStatus], capacity: int,
                    closed_counts: tuple[int, int] = (0, 0)) -> PoolStatus:
    """Sum pool statuses: connection, lease and step counts add up (plus *closed_counts*, the
    expansions and shrinks of pools already closed), utilisation is leases in use over
    *capacity* (1.0 with no capacity and a waiting lease, else 0.0), ``last_decisions`` are the
    newest 16 of all pools."""
    statuses = list(statuses)
    in_use = sum(s.leases_in_use for s in statuses)
    waiting = sum(s.waiting_leases for s in statuses)
    utilisation = in_use / capacity if capacity else (1.0 if waiting else 0.0)
    grown, shrunk = closed_counts
    decisions = tuple(d for s in statuses for d in s.last_decisions)[-16:]
    return PoolStatus(
        active_connections=sum(s.active_connections for s in statuses),
        idle_connections=sum(s.idle_connections for s in statuses),
        pending_connections=sum(s.pending_connections for s in statuses),
        pool_utilization=utilisation,
        expansion_count=grown + sum(s.expansion_count for s in statuses),
        shrink_count=shrunk + sum(s.shrink_count for s in statuses),
        waiting_leases=waiting,
        leases_in_use=in_use,
        last_decisions=decisions,
    )


P = TypeVar("P", bound=PoolDriverBase[Any])


class PoolTracker(Generic[P]):
    """A transport's open pools and the steps of the closed ones (for ``pool_status()``)."""

    def __init__(self) -> None:
        self._pools: list[P] = []
        self._closed_counts = (0, 0)
        self.used = False  # whether a pool was ever made (stats() then reports pools)

    def __iter__(self) -> Iterator[P]:
        return iter(list(self._pools))

    def add(self, pool: P) -> None:
        """Track a new pool."""
        self._pools.append(pool)
        self.used = True

    def closed(self, pool: P) -> None:
        """*pool* closed: keep its step counts, forget it."""
        if pool in self._pools:
            self._pools.remove(pool)
            status = pool.status()
            grown, shrunk = self._closed_counts
            self._closed_counts = (grown + status.expansion_count,
                                   shrunk + status.shrink_count)

    def status(self) -> PoolStatus:
        """Every open pool's status summed (see :func:`sum_pool_status`)."""
        capacity = sum(
            len(p.machine.connections) * p.machine.max_leases_per_connection for p in self._pools
        )
        return sum_pool_status((p.status() for p in self._pools), capacity, self._closed_counts)


class SessionMetrics:
    """A trio or blocking session's share of the transport's :class:`TransportMetrics`: it
    keeps the session in the live gauge under its current state and counts its errors once.

    Traffic is added by the session straight to the metrics' counters (plain ints, no call on
    the hot path)."""

    __slots__ = ("_state", "metrics", "protocol")

    def __init__(self, metrics: TransportMetrics, protocol: Any, state: SessionState) -> None:
        self.metrics = metrics
        self.protocol = protocol
        self._state: str | None = state.value
        metrics.session_opened(protocol, state.value)

    def state(self, state: SessionState) -> None:
        """The session is now in *state* (moves the gauge when it changed)."""
        old = self._state
        if old is not None and state.value != old:
            self.metrics.session_moved(self.protocol, old, state.value)
            self._state = state.value

    def closed(self) -> None:
        """The session is over: it leaves the gauge (once)."""
        if self._state is not None:
            self.metrics.session_closed(self.protocol, self._state)
            self._state = None

    def error(self, error: T_err) -> T_err:
        """Count *error* by its code and return it."""
        self.metrics.error(error)
        return error
