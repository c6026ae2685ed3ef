"""The connection pool as a pure machine: leases and connection reports in, decisions out.

:class:`PoolMachine` decides; a driver carries the decisions out.  Like httpcore's pool, which
assigns requests to connections in one pure function and returns the connections to close, the
machine never opens a socket, never waits and never reads a clock: each input carries ``now``
and every decision comes out of :meth:`PoolMachine.decisions` as a frozen value.

A driver's loop around it::

    pool = PoolMachine(min_size=2, max_size=64, target=32)
    # application                         -> pool calls
    lease a connection for exclusive use   -> conn = pool.acquire(lease_id, now)   (None: wait)
    done with it                           -> pool.release(lease_id, now)
    a lease got its connection late        -> pool.lease_waited(lease_id, seconds)
    send on the least-loaded connection    -> conn = pool.pick(now)
    # connections                         -> pool calls
    an open asked for succeeded / failed   -> pool.connection_opened(conn_id, now) /
                                              pool.connection_failed(None, now)
    an open connection broke / closed      -> pool.connection_failed(conn_id, now) /
                                              pool.connection_closed(conn_id, now)
    # timers
    sleep until pool.next_deadline(); pool.tick(now)
    # then
    for decision in pool.decisions():
        OpenConnections(count)     -> open count connections, report each
        CloseConnections(ids)      -> close them (they are already out of the pool)
        AssignLease(lease, conn)   -> wake the waiting lease with its connection

When the pool grows and shrinks (every threshold is a setting):

* it **grows** when no open is in flight, it is below ``max_size`` and either utilisation is above
  ``grow_utilisation`` (0.8) or a lease waited longer than ``wait_threshold`` (5 ms); the
  :class:`~msgtrans.core.expansion.ExpansionStrategy` says by how much (default
  :class:`~msgtrans.core.expansion.SmartExpansion`).  One step at a time: while opens are in
  flight the pool does not plan more, or a burst of triggers would jump straight to the maximum;
* it **shrinks** when utilisation stayed below ``shrink_utilisation`` (0.2) for ``shrink_after``
  seconds (300), by closing the longest-idle connections down to the size that puts utilisation
  midway between the two thresholds, never below ``min_size`` and never closing a connection that
  holds a lease; the hold period then starts again;
* it **refills** to ``min_size`` whenever a connection fails or closes.

Utilisation is ``leases in use / (open connections x max_leases_per_connection)``; with no open
connection it is 1.0 when a lease waits (demand with no capacity) and 0.0 otherwise.  Size is
open connections plus planned opens not yet reported, so the machine never plans past
``max_size`` and never closes below ``min_size``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum

from .errors import ConfigurationError
from .expansion import ExpansionStrategy, SmartExpansion

__all__ = [
    "DEFAULT_GROW_UTILISATION",
    "DEFAULT_SHRINK_AFTER",
    "DEFAULT_SHRINK_UTILISATION",
    "DEFAULT_WAIT_THRESHOLD",
    "AssignLease",
    "CloseConnections",
    "OpenConnections",
    "PoolDecision",
    "PoolMachine",
    "PoolStateError",
    "PoolStatus",
    "Trigger",
]

#: Seconds a lease may wait for a connection before the pool grows (the plan's 5 ms).
DEFAULT_WAIT_THRESHOLD = 0.005
#: Utilisation above which the pool grows (the plan's 80 %).
DEFAULT_GROW_UTILISATION = 0.8
#: Utilisation below which, held for :data:`DEFAULT_SHRINK_AFTER`, the pool shrinks (20 %).
DEFAULT_SHRINK_UTILISATION = 0.2
#: Seconds utilisation must stay low before the pool shrinks (the plan's 5 minutes).
DEFAULT_SHRINK_AFTER = 300.0


class Trigger(str, Enum):
    """What caused an open or close decision: a short, stable value fit for a metrics label
    (the decision's ``reason`` carries the numbers)."""

    MINIMUM = "minimum"  # the pool was below min_size (start, or after a failure)
    LEASE_WAIT = "lease_wait"  # a lease waited longer than wait_threshold
    UTILISATION = "utilisation"  # utilisation went above grow_utilisation
    LOW_UTILISATION = "low_utilisation"  # utilisation stayed below shrink_utilisation

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class PoolDecision:
    """Base class of every decision a :class:`PoolMachine` hands its driver."""


@dataclass(frozen=True, slots=True)
class OpenConnections(PoolDecision):
    """Open *count* new connections and report each with
    :meth:`PoolMachine.connection_opened` (or :meth:`PoolMachine.connection_failed` with
    ``None``).

    Attributes:
        count: how many, at least 1.
        reason: why, for people (``"utilisation 85 % > 80 %"``).
        trigger: why, for machines (a metrics label).
    """

    count: int
    reason: str
    trigger: Trigger


@dataclass(frozen=True, slots=True)
class CloseConnections(PoolDecision):
    """Close these idle connections.  The pool has already forgotten them: no lease will be
    given one, and reporting their close later is harmless.

    Attributes:
        conn_ids: the connections to close, longest idle first.
        reason: why, for people (``"utilisation 5 % < 20 % for 300 s"``).
        trigger: why, for machines.
    """

    conn_ids: tuple[Hashable, ...]
    reason: str
    trigger: Trigger


@dataclass(frozen=True, slots=True)
class AssignLease(PoolDecision):
    """The waiting lease *lease_id* now holds connection *conn_id*: wake it.

    Only leases that had to wait get one; :meth:`PoolMachine.acquire` returns the connection
    directly when one is free at once.
    """

    lease_id: Hashable
    conn_id: Hashable


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A snapshot of a pool (plain data; the plan's ``PoolStatus`` plus what explains it).

    Attributes:
        active_connections: open connections holding at least one lease.
        idle_connections: open connections holding none.
        pending_connections: opens planned and not yet reported.
        pool_utilization: leases in use / lease capacity of the open connections, 0.0 to 1.0.
        expansion_count: growth steps planned so far (refills to the minimum not included).
        shrink_count: shrink steps planned so far.
        waiting_leases: leases waiting for a connection.
        leases_in_use: leases holding a connection.
        last_decisions: the most recent open and close decisions, oldest first, each with its
            reason.
    """

    active_connections: int
    idle_connections: int
    pending_connections: int
    pool_utilization: float
    expansion_count: int
    shrink_count: int
    waiting_leases: int
    leases_in_use: int
    last_decisions: tuple[OpenConnections | CloseConnections, ...] = ()

    @property
    def size(self) -> int:
        """Open plus pending connections: what ``min_size`` and ``max_size`` bound."""
        return self.active_connections + self.idle_connections + self.pending_connections


class PoolStateError(RuntimeError):
    """The driver reported something the pool cannot have caused: a connection opened that was
    never planned, a lease acquired twice, a connection id reused.

    A bug in the driver, never a network condition, so a ``RuntimeError`` and not a
    :class:`~msgtrans.core.errors.TransportError`.
    """


@dataclass(slots=True)
class _Connection:
    conn_id: Hashable
    order: int  # open order: ties in load go to the oldest, so the newest stay idle to shrink
    last_used: float
    leases: set[Hashable] = field(default_factory=set)


class PoolMachine:
    """A connection pool that decides when to open, close and assign, and does nothing else.

    Args:
        min_size: connections kept open at all times (default 0).  The first decision opens
            them.
        max_size: connections never exceeded, pending opens included (default 10).
        target: the size the pool expects to need; progress-aware strategies slow down as the
            pool nears it (default: *max_size*).
        strategy: how much to grow per step (default :class:`SmartExpansion`).
        wait_threshold: seconds a lease may wait before the pool grows (default 0.005).
        grow_utilisation: utilisation above which the pool grows (default 0.8).
        shrink_utilisation: utilisation below which the pool may shrink (default 0.2).
        shrink_after: seconds utilisation must stay below *shrink_utilisation* before a shrink
            (default 300.0).
        max_leases_per_connection: leases one connection carries at once (default 1: exclusive
            leases; more for multiplexed protocols such as QUIC).
        history: how many open/close decisions :meth:`status` remembers (default 16).
        now: the time the pool starts (default 0.0).

    Raises:
        ConfigurationError: a size out of order (``0 <= min_size <= target <= max_size``,
            ``max_size >= 1``), a threshold outside its range, a negative duration.
    """

    def __init__(
        self,
        min_size: int = 0,
        max_size: int = 10,
        target: int | None = None,
        strategy: ExpansionStrategy | None = None,
        *,
        wait_threshold: float = DEFAULT_WAIT_THRESHOLD,
        grow_utilisation: float = DEFAULT_GROW_UTILISATION,
        shrink_utilisation: float = DEFAULT_SHRINK_UTILISATION,
        shrink_after: float = DEFAULT_SHRINK_AFTER,
        max_leases_per_connection: int = 1,
        history: int = 16,
        now: float = 0.0,
    ) -> None:
        if max_size < 1:
            raise ConfigurationError("max_size", f"must be at least 1, got {max_size}")
        if not 0 <= min_size <= max_size:
            raise ConfigurationError(
                "min_size", f"must be between 0 and max_size ({max_size}), got {min_size}"
            )
        target = max_size if target is None else target
        if not min_size <= target <= max_size:
            raise ConfigurationError(
                "target", f"must be between min_size ({min_size}) and max_size ({max_size}), "
                f"got {target}"
            )
        if not (math.isfinite(wait_threshold) and wait_threshold >= 0):
            raise ConfigurationError("wait_threshold", f"must be >= 0 s, got {wait_threshold}")
        if not 0.0 <= shrink_utilisation < grow_utilisation <= 1.0:
            # Overlapping thresholds would let one utilisation both grow and shrink the pool.
            raise ConfigurationError(
                "grow_utilisation",
                "need 0 <= shrink_utilisation < grow_utilisation <= 1, got "
                f"{shrink_utilisation} and {grow_utilisation}",
            )
        if not (math.isfinite(shrink_after) and shrink_after >= 0):
            raise ConfigurationError("shrink_after", f"must be >= 0 s, got {shrink_after}")
        if max_leases_per_connection < 1:
            raise ConfigurationError(
                "max_leases_per_connection", f"must be at least 1, got {max_leases_per_connection}"
            )
        if history < 1:
            raise ConfigurationError("history", f"must be at least 1, got {history}")
        self.min_size = min_size
        self.max_size = max_size
        self.target = target
        self.strategy: ExpansionStrategy = strategy if strategy is not None else SmartExpansion()
        self.wait_threshold = wait_threshold
        self.grow_utilisation = grow_utilisation
        self.shrink_utilisation = shrink_utilisation
        self.shrink_after = shrink_after
        self.max_leases_per_connection = max_leases_per_connection
        self.expansion_count = 0
        self.shrink_count = 0
        self._now = now
        self._conns: dict[Hashable, _Connection] = {}
        self._order = 0
        self._pending = 0
        self._leases: dict[Hashable, Hashable] = {}  # lease -> connection
        self._waiting: dict[Hashable, float] = {}  # lease -> since; dicts keep FIFO order
        self._reported_wait = 0.0
        self._low_since: float | None = None
        self._decisions: list[PoolDecision] = []
        self._history: deque[OpenConnections | CloseConnections] = deque(maxlen=history)
        self._update(now)

    # --- inputs: connections -------------------------------------------------------------------

    def connection_opened(self, conn_id: Hashable, now: float) -> None:
        """A planned open succeeded: *conn_id* is ready and waiting leases may get it.

        Raises:
            PoolStateError: no open was pending, or *conn_id* is already in the pool.
        """
        if self._pending == 0:
            raise PoolStateError(f"connection {conn_id!r} opened but no open was planned")
        if conn_id in self._conns:
            raise PoolStateError(f"connection {conn_id!r} is already in the pool")
        self._pending -= 1
        self._order += 1
        self._conns[conn_id] = _Connection(conn_id, self._order, now)
        self._update(now)

    def connection_failed(self, conn_id: Hashable | None, now: float) -> None:
        """A connection broke, or (*conn_id* ``None``) a planned open failed.

        A broken connection leaves the pool at once with its leases (their holders learn of the
        failure from the driver; releasing them later is harmless), so it is never handed out
        again.  Below ``min_size`` the pool plans a refill; the driver should space retries.

        Raises:
            PoolStateError: *conn_id* is ``None`` but no open was pending.
        """
        if conn_id is None:
            if self._pending == 0:
                raise PoolStateError("an open failed but no open was planned")
            self._pending -= 1
        else:
            self._remove(conn_id)
        self._update(now)

    def connection_closed(self, conn_id: Hashable, now: float) -> None:
        """The connection *conn_id* closed (either side).  Unknown ids are ignored, so reporting
        a connection the pool asked to close, or reporting twice, is harmless."""
        self._remove(conn_id)
        self._update(now)

    # --- inputs: leases ------------------------------------------------------------------------

    def acquire(self, lease_id: Hashable, now: float) -> Hashable | None:
        """Lease a connection: return its id, or ``None`` when the lease must wait.

        A waiting lease gets an :class:`AssignLease` decision later (or is cancelled with
        :meth:`release`).  The least-loaded connection with room is chosen, the oldest on ties.

        Raises:
            PoolStateError: *lease_id* is already holding or waiting.
        """
        if lease_id in self._leases or lease_id in self._waiting:
            raise PoolStateError(f"lease {lease_id!r} is already in the pool")
        conn = self._least_loaded(with_room=True)
        result: Hashable | None = None
        if conn is None:
            self._waiting[lease_id] = now
        else:
            self._assign(lease_id, conn, now)
            result = conn.conn_id
        self._update(now)
        return result

    def release(self, lease_id: Hashable, now: float) -> bool:
        """End a lease (or cancel a waiting one).  Return ``False`` when the pool did not know
        it (already released, or its connection broke)."""
        known = True
        if lease_id in self._waiting:
            del self._waiting[lease_id]
        elif lease_id in self._leases:
            conn = self._conns[self._leases.pop(lease_id)]
            conn.leases.discard(lease_id)
            conn.last_used = now
        else:
            known = False
        self._update(now)
        return known

    def lease_waited(self, lease_id: Hashable, waited_seconds: float) -> None:
        """Report that *lease_id* waited *waited_seconds* for its connection (measured by the
        driver, for example for a shared connection that was congested).  Above
        ``wait_threshold`` the pool grows, if it can."""
        if waited_seconds > self.wait_threshold:
            self._reported_wait = max(self._reported_wait, waited_seconds)
        self._update(self._now)

    def pick(self, now: float) -> Hashable | None:
        """Return the least-loaded open connection for shared use (a send or a request on a
        multiplexed connection), or ``None`` when none is open.  Nothing is reserved."""
        conn = self._least_loaded(with_room=False)
        if conn is None:
            return None
        conn.last_used = max(conn.last_used, now)
        return conn.conn_id

    def tick(self, now: float) -> None:
        """Let time pass: check the wait and shrink triggers."""
        self._update(now)

    # --- outputs -------------------------------------------------------------------------------

    def decisions(self) -> list[PoolDecision]:
        """Return the decisions made since the last call, oldest first, and forget them."""
        out, self._decisions = self._decisions, []
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` may next have something to do, or ``None`` for "not until another
        input".  Never a time already past."""
        candidates: list[float] = []
        if self._waiting and self._pending == 0 and self._size < self.max_size:
            candidates.append(next(iter(self._waiting.values())) + self.wait_threshold)
        if self._low_since is not None and self._can_shrink():
            candidates.append(self._low_since + self.shrink_after)
        future = [c for c in candidates if c > self._now]
        return min(future) if future else None

    def status(self) -> PoolStatus:
        """Return a snapshot of the pool."""
        active = sum(1 for c in self._conns.values() if c.leases)
        return PoolStatus(
            active_connections=active,
            idle_connections=len(self._conns) - active,
            pending_connections=self._pending,
            pool_utilization=self.utilisation,
            expansion_count=self.expansion_count,
            shrink_count=self.shrink_count,
            waiting_leases=len(self._waiting),
            leases_in_use=len(self._leases),
            last_decisions=tuple(self._history),
        )

    @property
    def size(self) -> int:
        """Open connections plus planned opens not yet reported."""
        return self._size

    @property
    def connections(self) -> tuple[Hashable, ...]:
        """The open connections, oldest first."""
        return tuple(self._conns)

    def lease_connection(self, lease_id: Hashable) -> Hashable | None:
        """Return the connection *lease_id* holds, or ``None`` (waiting or unknown)."""
        return self._leases.get(lease_id)

    @property
    def utilisation(self) -> float:
        """Leases in use / lease capacity of the open connections (see the module text)."""
        capacity = len(self._conns) * self.max_leases_per_connection
        if capacity == 0:
            return 1.0 if self._waiting else 0.0
        return len(self._leases) / capacity

    # --- the decisions -------------------------------------------------------------------------

    @property
    def _size(self) -> int:
        return len(self._conns) + self._pending

    def _least_loaded(self, *, with_room: bool) -> _Connection | None:
        best: _Connection | None = None
        for conn in self._conns.values():
            load = len(conn.leases)
            if with_room and load >= self.max_leases_per_connection:
                continue
            if best is None or load < len(best.leases):
                best = conn  # dicts iterate oldest first, so ties keep the oldest
        return best

    def _assign(self, lease_id: Hashable, conn: _Connection, now: float) -> None:
        conn.leases.add(lease_id)
        conn.last_used = max(conn.last_used, now)
        self._leases[lease_id] = conn.conn_id

    def _remove(self, conn_id: Hashable) -> None:
        conn = self._conns.pop(conn_id, None)
        if conn is not None:
            for lease_id in conn.leases:
                del self._leases[lease_id]

    def _can_shrink(self) -> bool:
        return self._pending == 0 and not self._waiting and len(self._conns) > self.min_size

    def _decide(self, decision: OpenConnections | CloseConnections) -> None:
        if isinstance(decision, OpenConnections):
            self._pending += decision.count  # planned opens count towards the size at once
        self._decisions.append(decision)
        self._history.append(decision)

    def _update(self, now: float) -> None:
        # Drivers read a monotonic clock, but a report measured before another input may arrive
        # after it; time never runs backwards inside the machine.
        now = max(now, self._now)
        self._now = now
        # 1. Waiting leases take any room that appeared (a release, an open), first come first.
        while self._waiting:
            conn = self._least_loaded(with_room=True)
            if conn is None:
                break
            lease_id = next(iter(self._waiting))
            del self._waiting[lease_id]
            self._assign(lease_id, conn, now)
            self._decisions.append(AssignLease(lease_id, conn.conn_id))
        # 2. Refill to the minimum: not an expansion, the pool only keeps its promise.
        size = self._size
        if size < self.min_size:
            self._decide(OpenConnections(
                self.min_size - size, f"size {size} < minimum {self.min_size}", Trigger.MINIMUM
            ))
        # 3. Grow.  A report is used once: if an open is already in flight it answers it.
        reported, self._reported_wait = self._reported_wait, 0.0
        utilisation = self.utilisation
        if self._pending == 0 and self._size < self.max_size:
            trigger: Trigger | None = None
            oldest = now - next(iter(self._waiting.values())) if self._waiting else 0.0
            waited = max(oldest, reported)
            if waited > self.wait_threshold:
                trigger = Trigger.LEASE_WAIT
                reason = (
                    f"lease waited {waited * 1000:.1f} ms > {self.wait_threshold * 1000:g} ms"
                )
            elif utilisation > self.grow_utilisation:
                trigger = Trigger.UTILISATION
                reason = (
                    f"utilisation {_percent(utilisation, up=True)} % > "
                    f"{_percent(self.grow_utilisation)} %"
                )
            if trigger is not None:
                size = self._size
                wanted = self.strategy.calculate_next_size(size, self.target, self.max_size)
                count = min(wanted, self.max_size) - size  # a strategy may not break the max
                if count > 0:
                    self.expansion_count += 1
                    self._decide(OpenConnections(count, reason, trigger))
        # 4. Shrink, after utilisation stayed low for the whole hold period.  Utilisation only
        #    changes at inputs, so sampling it here sees every change.
        if utilisation >= self.shrink_utilisation:
            self._low_since = None
            return
        if self._low_since is None:
            self._low_since = now
        if now - self._low_since >= self.shrink_after and self._can_shrink():
            self._shrink(now, utilisation, now - self._low_since)

    def _shrink(self, now: float, utilisation: float, held: float) -> None:
        per_conn = self.max_leases_per_connection
        # Aim for utilisation midway between the thresholds, so the next lease neither finds the
        # pool over grow_utilisation at once (thrashing) nor leaves it idle again.
        middle = (self.grow_utilisation + self.shrink_utilisation) / 2
        busy = [c for c in self._conns.values() if c.leases]
        keep = max(self.min_size, len(busy), math.ceil(len(self._leases) / (per_conn * middle)))
        idle = sorted((c for c in self._conns.values() if not c.leases),
                      key=lambda c: (c.last_used, c.order))
        victims = idle[: max(0, len(self._conns) - keep)]
        if victims:
            for conn in victims:
                del self._conns[conn.conn_id]
            self.shrink_count += 1
            self._decide(CloseConnections(
                tuple(c.conn_id for c in victims),
                f"utilisation {_percent(utilisation)} % < {_percent(self.shrink_utilisation)} % "
                f"for {held:.0f} s",
                Trigger.LOW_UTILISATION,
            ))
        # Whether or not anything closed, a new hold period starts: the pool shrinks one step
        # per period, and a pool that cannot shrink does not ask to be ticked at once again.
        self._low_since = now


def _percent(fraction: float, *, up: bool = False) -> str:
    # One decimal, trailing zeros dropped ("85", "80.3"), rounded away from the threshold it is
    # compared with, so a reason never reads "80 % > 80 %".  The 1e-6 keeps 85 % (0.85 * 1000 =
    # 850.0000000000001) from rounding up to 85.1.
    tenths = fraction * 1000
    tenths = math.ceil(tenths - 1e-6) if up else math.floor(tenths + 1e-6)
    return f"{tenths / 10:g}"
