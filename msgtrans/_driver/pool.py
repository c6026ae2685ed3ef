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
import math
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
from ..core.reconnect import GiveUp, LinkState, ReconnectMachine, ReconnectPolicy, Retry
from ..core.session import SessionState
from . import docs
from .docs import doc

__all__ = [
    "DEFAULT_POOL_MAX",
    "DEFAULT_POOL_MIN",
    "DEFAULT_POOL_RECONNECT",
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
#: How a pool spaces the opens that replace broken sessions and retry failed opens, unless
#: ``transport.pool(reconnect=...)`` says otherwise: 0.05 s doubling to 2 s, 20 % jitter, never
#: giving up on a retryable error (an error's own ``retry_delay()``, 2 s for a refused connect,
#: is honoured up to the 2 s).
DEFAULT_POOL_RECONNECT = ReconnectPolicy(initial_delay=RETRY_BACKOFF, max_delay=MAX_RETRY_BACKOFF)
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
    """Seconds a failed open waited before it was reported, after *failures* in a row, before
    the pools followed a :class:`ReconnectPolicy` (:data:`DEFAULT_POOL_RECONNECT` starts and
    ends at the same values)."""
    return float(builtins.min(MAX_RETRY_BACKOFF,
                             RETRY_BACKOFF * 2.0 ** builtins.max(failures - 1, 0)))


def check_pool_policy(policy: ReconnectPolicy | None) -> ReconnectPolicy:
    """*policy*, or :data:`DEFAULT_POOL_RECONNECT` for ``None``.

    Raises:
        ConfigurationError: *policy* is not a :class:`ReconnectPolicy` (field ``reconnect``).
    """
    if policy is None:
        return DEFAULT_POOL_RECONNECT
    if not isinstance(policy, ReconnectPolicy):
        raise ConfigurationError("reconnect", f"must be a ReconnectPolicy or None, got {policy!r}")
    return policy


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
                 on_closed: Callable[[Any], None],
                 reconnect: ReconnectPolicy | None = None) -> None:
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
        # The backoff of the opens: one reconnect machine per pool, fed once per round of
        # opens (several failing together count as one attempt), with every loss of a session
        # and every open that succeeded.  No open starts before _hold_until.
        self._reconnect = ReconnectMachine(reconnect if reconnect is not None
                                           else DEFAULT_POOL_RECONNECT)
        self._round = 0
        self._hold_until = -math.inf
        self._gave_up: TransportError | None = None
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
        self._sweep()
        return [self._sessions[c] for c in self._machine.connections if c in self._sessions]

    @property
    def reconnect(self) -> ReconnectPolicy:
        """The :class:`~msgtrans.core.reconnect.ReconnectPolicy` spacing the pool's opens."""
        return self._reconnect.policy

    @property
    def link_state(self) -> LinkState:
        """``CONNECTED`` while the last open succeeded, ``RECONNECTING`` after a loss or a
        failed open (the opens back off), ``CLOSED`` once closed or given up."""
        return self._reconnect.state

    @property
    def error(self) -> TransportError | None:
        """The error the pool gave up on (its policy's ``max_attempts``, or a non-retryable
        error); ``None`` while it has not."""
        return self._gave_up

    def status(self) -> PoolStatus:
        """Return the machine's :class:`~msgtrans.core.pool.PoolStatus` now (a session found
        closing or closed leaves the pool first, so it is never counted)."""
        self._sweep()
        return self._machine.status()

    def _sweep(self) -> None:
        """Report every pooled session no longer open as broken (before its finish callback,
        which may come a loop pass or a QUIC drain later)."""
        if self._closed:
            return
        dead = [c for c, s in self._sessions.items() if s.state is not SessionState.OPEN]
        for conn_id in dead:
            self._usable(conn_id)
        if dead:
            self._drive()

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
            raise self._close_error()

    def _close_error(self) -> TransportError:
        """What a lease of the closed pool fails with: the error it gave up on, else
        ``connection.closed``."""
        return self._gave_up if self._gave_up is not None else closed_error()

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
            self._session_lost(session)
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
        self._reconnected()
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
        self._session_lost(session)
        if self._closed:
            return  # the loss made the pool give up
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

    # --- the backoff (one ReconnectMachine per pool) -------------------------------------------

    def _open_delay(self) -> float:
        """Seconds an open about to connect waits first (the backoff after a loss or a failed
        round); 0 when it may go at once."""
        return builtins.max(0.0, self._hold_until - self._now())

    def _open_round(self) -> int:
        """The round an open connecting now belongs to (pass it to :meth:`_open_error`)."""
        return self._round

    def _decided(self, decision: Retry | GiveUp, now: float) -> None:
        self._round += 1
        if isinstance(decision, GiveUp):
            self._give_up(decision.error)
        else:
            self._hold_until = now + decision.delay

    def _session_lost(self, session: S) -> None:
        """A pooled session broke or closed (not by the pool): the first loss after a
        success starts the backoff, so its replacement waits the policy's first delay."""
        if self._closed or self._reconnect.state is not LinkState.CONNECTED:
            return
        # Fed without the session's error: it tells about that connection (a reset asks for
        # 1 s, a protocol error is not retryable), not whether a new one will open, and a pool
        # that promised min sessions must not wait a second, or close, for one broken session.
        # A replacement that fails brings its own error.
        now = self._now()
        self._decided(self._reconnect.lost(None, now), now)

    def _reconnected(self) -> None:
        """An open succeeded: the backoff is over (a recovery is counted)."""
        if self._reconnect.state in (LinkState.CONNECTED, LinkState.CLOSED):
            return
        before = self._reconnect.reconnects
        down = self._reconnect.connected(self._now())
        self._round += 1
        self._hold_until = -math.inf
        protocol = self._config.protocol
        if self._reconnect.reconnects > before:
            self._metrics.reconnected(protocol, down)
        elif down > 0:
            self._metrics.disconnected(protocol, down)

    def _open_error(self, exc: Exception, round_: int | None = None) -> float | None:
        """An open of round *round_* raised *exc*: return the seconds to wait before
        :meth:`_open_failed` (until then the open counts as pending, so the machine plans no
        other open and a dead server is retried at the policy's pace), or ``None`` when the
        pool gave up (it is closed: report nothing).  The first failure of a round feeds the
        reconnect machine; the others of the round wait for the same time."""
        self._last_error = exc
        self._first_settled(exc)
        if self._closed:
            return None
        if (round_ is None or round_ == self._round) and isinstance(exc, TransportError):
            now = self._now()
            machine = self._reconnect
            decision = (machine.lost(exc, now) if machine.state is LinkState.CONNECTED
                        else machine.failed(exc, now))
            self._decided(decision, now)
            if self._closed:
                return None
        elif not isinstance(exc, TransportError):
            # Not a transport error (a bug below): no policy applies; space it all the same.
            self._hold_until = builtins.max(self._hold_until,
                                            self._now() + self._reconnect.policy.max_delay)
        return self._open_delay()

    def _give_up(self, error: TransportError) -> None:
        """The policy gave up: count it, close the pool; waiting and later leases fail with
        *error*, the pooled sessions start closing."""
        self._gave_up = error
        self._metrics.reconnect_give_up(self._config.protocol)
        for session in self._begin_close():
            session.start_close(None, "pool gave up reconnecting")

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
            self._settle_first(self._close_error())
        now = self._now()
        down = self._reconnect.down_for(now)
        if self._reconnect.state is not LinkState.CLOSED and down > 0:
            self._metrics.disconnected(self._config.protocol, down)
        self._reconnect.close(now)
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
        """Open one session (a task of its own), after the backoff if one runs: it joins the
        pool, or the failure is reported after the backoff."""
        delay = self._open_delay()
        if delay > 0:
            await self._sleep(delay)
        round_ = self._open_round()
        try:
            session = await self._transport.connect(self._config)
        except Exception as exc:
            wait = self._open_error(exc, round_)
            if wait is None:
                return  # gave up: the pool is closed
            await self._sleep(wait)
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
        for p in self._pools:
            p._sweep()  # a closing session is not counted, nor its capacity
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
