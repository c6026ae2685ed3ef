"""Tests of the pool machine: growth and shrink triggers, assignment, failures, invariants."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from msgtrans.core.errors import ConfigurationError
from msgtrans.core.expansion import (
    ExpansionStrategy,
    FixedExpansion,
    NoExpansion,
    SmartExpansion,
)
from msgtrans.core.pool import (
    AssignLease,
    CloseConnections,
    OpenConnections,
    PoolDecision,
    PoolMachine,
    PoolStateError,
    PoolStatus,
    Trigger,
)


def opened(pool: PoolMachine, now: float = 0.0, prefix: str = "c") -> list[PoolDecision]:
    """Carry out every OpenConnections decision at once; return the other decisions."""
    rest: list[PoolDecision] = []
    pending = pool.decisions()
    n = len(pool.connections)
    while pending:
        decision = pending.pop(0)
        if isinstance(decision, OpenConnections):
            for _ in range(decision.count):
                n += 1
                pool.connection_opened(f"{prefix}{n}", now)
            pending.extend(pool.decisions())
        else:
            rest.append(decision)
    return rest


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_size": 0}, "max_size"),
        ({"min_size": -1}, "min_size"),
        ({"min_size": 5, "max_size": 4}, "min_size"),
        ({"min_size": 2, "max_size": 4, "target": 1}, "target"),
        ({"max_size": 4, "target": 5}, "target"),
        ({"wait_threshold": -0.1}, "wait_threshold"),
        ({"wait_threshold": float("inf")}, "wait_threshold"),
        ({"grow_utilisation": 0.2, "shrink_utilisation": 0.2}, "grow_utilisation"),
        ({"grow_utilisation": 1.5}, "grow_utilisation"),
        ({"shrink_utilisation": -0.1}, "grow_utilisation"),
        ({"shrink_after": -1.0}, "shrink_after"),
        ({"max_leases_per_connection": 0}, "max_leases_per_connection"),
        ({"history": 0}, "history"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        PoolMachine(**kwargs)
    assert info.value.field == field


def test_defaults() -> None:
    pool = PoolMachine()
    assert (pool.min_size, pool.max_size, pool.target) == (0, 10, 10)
    assert isinstance(pool.strategy, SmartExpansion)
    assert (pool.wait_threshold, pool.grow_utilisation, pool.shrink_utilisation) == (
        0.005, 0.8, 0.2
    )
    assert pool.shrink_after == 300.0
    assert pool.decisions() == []
    assert pool.status() == PoolStatus(0, 0, 0, 0.0, 0, 0, 0, 0, ())
    assert pool.next_deadline() is None


# --- minimum, growth -------------------------------------------------------------------------


def test_opens_the_minimum_at_start_and_refills_it() -> None:
    pool = PoolMachine(min_size=2, max_size=5)
    [first] = pool.decisions()
    assert first == OpenConnections(2, "size 0 < minimum 2", Trigger.MINIMUM)
    assert pool.size == 2 == pool.status().size
    assert pool.status().pending_connections == 2
    pool.connection_opened("a", 0.0)
    pool.connection_failed(None, 0.0)  # the second open failed: refill
    assert pool.decisions() == [OpenConnections(1, "size 1 < minimum 2", Trigger.MINIMUM)]
    pool.connection_opened("b", 0.0)
    pool.connection_closed("a", 1.0)
    assert pool.decisions() == [OpenConnections(1, "size 1 < minimum 2", Trigger.MINIMUM)]
    assert pool.expansion_count == 0  # refills are not expansions


def test_utilisation_trigger_grows_by_the_strategy() -> None:
    pool = PoolMachine(min_size=4, max_size=100, target=64)
    opened(pool)
    for lease in range(3):
        pool.acquire(lease, 0.0)
    assert pool.decisions() == []  # 75 %: not above 80 %
    assert pool.acquire(3, 0.0) == "c4"
    [grow] = pool.decisions()
    assert grow == OpenConnections(4, "utilisation 100 % > 80 %", Trigger.UTILISATION)
    assert pool.expansion_count == 1
    pool.acquire(4, 0.0)  # waits; an open is in flight, so no second step is planned
    assert pool.decisions() == []
    pool.connection_opened("x", 0.001)
    assert pool.decisions() == [AssignLease(4, "x")]


def test_wait_trigger_from_a_waiting_lease() -> None:
    # grow_utilisation 1.0 can never be exceeded: only the wait can trigger growth.
    pool = PoolMachine(max_size=4, grow_utilisation=1.0)
    assert pool.acquire("l", 0.0) is None
    assert pool.utilisation == 1.0  # demand with no capacity
    assert pool.decisions() == []
    assert pool.next_deadline() == 0.005
    pool.tick(0.004)
    assert pool.decisions() == []
    pool.tick(0.0072)
    assert pool.decisions() == [
        OpenConnections(1, "lease waited 7.2 ms > 5 ms", Trigger.LEASE_WAIT)
    ]
    assert pool.next_deadline() is None  # an open is in flight
    pool.connection_opened("a", 0.008)
    assert pool.decisions() == [AssignLease("l", "a")]


def test_reported_wait_triggers_once() -> None:
    pool = PoolMachine(min_size=1, max_size=4, max_leases_per_connection=8)
    opened(pool)
    pool.lease_waited("x", 0.004)
    assert pool.decisions() == []
    pool.lease_waited("x", 0.010)
    [grow] = pool.decisions()
    assert isinstance(grow, OpenConnections)
    assert grow.trigger is Trigger.LEASE_WAIT and "10.0 ms > 5 ms" in grow.reason
    opened(pool)
    pool.tick(1.0)
    assert pool.decisions() == []  # the report was used up


def test_never_past_max_even_with_a_rogue_strategy() -> None:
    class Rogue:
        def calculate_next_size(self, current: int, target: int, maximum: int) -> int:
            return maximum * 10

    pool = PoolMachine(max_size=3, strategy=Rogue())
    pool.acquire(0, 0.0)
    assert pool.decisions() == [OpenConnections(3, "utilisation 100 % > 80 %",
                                                Trigger.UTILISATION)]
    opened(pool)
    for lease in range(1, 5):
        pool.acquire(lease, 0.0)
    pool.tick(1.0)
    assert pool.size == 3 and pool.decisions() == []
    assert pool.next_deadline() is None  # at max: no wait deadline to busy-loop on


def test_no_expansion_waits_without_busy_looping() -> None:
    pool = PoolMachine(min_size=1, max_size=4, strategy=NoExpansion())
    opened(pool)
    pool.acquire(1, 0.0)
    assert pool.acquire(2, 0.0) is None
    assert pool.next_deadline() == 0.005
    pool.tick(0.01)
    assert pool.decisions() == []
    assert pool.next_deadline() is None  # past deadlines are never reported
    pool.release(1, 0.02)
    assert pool.decisions() == [AssignLease(2, "c1")]


# --- assignment -------------------------------------------------------------------------------


def test_least_loaded_assignment_and_pick() -> None:
    pool = PoolMachine(min_size=3, max_size=3, max_leases_per_connection=2,
                       strategy=NoExpansion())
    opened(pool)
    assert [pool.acquire(i, 0.0) for i in range(6)] == ["c1", "c2", "c3", "c1", "c2", "c3"]
    assert pool.acquire(6, 0.0) is None
    pool.release(4, 1.0)  # c2 now carries one lease
    assert pool.decisions() == [AssignLease(6, "c2")]
    pool.release(2, 1.0)
    assert pool.pick(1.0) == "c3" or pool.pick(1.0) == "c2"
    pool.release(6, 1.0)
    assert pool.pick(1.0) == "c2"  # carries none now
    assert pool.lease_connection(0) == "c1" and pool.lease_connection(99) is None
    assert pool.connections == ("c1", "c2", "c3")
    assert PoolMachine().pick(0.0) is None


def test_lease_errors_and_release_results() -> None:
    pool = PoolMachine(min_size=1, max_size=1)
    opened(pool)
    pool.acquire("a", 0.0)
    with pytest.raises(PoolStateError):
        pool.acquire("a", 0.0)
    pool.acquire("b", 0.0)  # waits
    with pytest.raises(PoolStateError):
        pool.acquire("b", 0.0)
    assert pool.release("b", 0.0) is True  # cancelled while waiting
    assert pool.status().waiting_leases == 0
    assert pool.release("a", 0.0) is True
    assert pool.release("a", 0.0) is False
    with pytest.raises(PoolStateError, match="no open was planned"):
        pool.connection_opened("z", 0.0)
    with pytest.raises(PoolStateError, match="no open was planned"):
        pool.connection_failed(None, 0.0)


def test_duplicate_connection_id_refused() -> None:
    pool = PoolMachine(min_size=2, max_size=2)
    pool.connection_opened("a", 0.0)
    with pytest.raises(PoolStateError, match="already in the pool"):
        pool.connection_opened("a", 0.0)


def test_broken_connection_is_never_handed_out() -> None:
    pool = PoolMachine(min_size=2, max_size=2, strategy=NoExpansion())
    opened(pool)
    assert pool.acquire("x", 0.0) == "c1"
    pool.connection_failed("c1", 0.5)
    assert pool.lease_connection("x") is None
    assert pool.release("x", 0.6) is False  # its connection broke: the lease went with it
    assert pool.decisions() == [OpenConnections(1, "size 1 < minimum 2", Trigger.MINIMUM)]
    assert pool.acquire("y", 0.7) == "c2"
    assert pool.acquire("z", 0.7) is None
    pool.connection_closed("c2", 0.8)
    pool.connection_closed("c2", 0.8)  # twice: harmless
    assert "c2" not in pool.connections
    pool.connection_opened("c9", 0.9)
    assert pool.decisions()[-1] == AssignLease("z", "c9")


# --- shrinking -------------------------------------------------------------------------------


def test_shrinks_after_the_hold_period_to_the_middle() -> None:
    pool = PoolMachine(min_size=2, max_size=20, target=10)
    opened(pool)
    for lease in range(10):
        pool.acquire(lease, 0.0)
        opened(pool, 0.0, prefix=f"n{lease}-")
    assert len(pool.connections) > 10
    for lease in range(1, 10):
        pool.release(lease, 10.0)  # one lease stays: utilisation 1/n < 20 %
    assert pool.next_deadline() == 310.0
    pool.tick(309.9)
    assert pool.decisions() == []
    pool.tick(310.0)
    [shrink] = pool.decisions()
    assert isinstance(shrink, CloseConnections)
    assert shrink.trigger is Trigger.LOW_UTILISATION
    assert shrink.reason.endswith("< 20 % for 300 s")
    # One lease, aiming at 50 % utilisation: 2 connections, the busy one kept.
    assert len(pool.connections) == 2
    assert pool.lease_connection(0) in pool.connections
    assert pool.shrink_count == 1
    assert pool.status().last_decisions[-1] == shrink
    for conn in shrink.conn_ids:
        pool.connection_closed(conn, 311.0)  # already forgotten: harmless
    assert pool.decisions() == []


def test_shrink_never_below_min_and_restarts_hold() -> None:
    pool = PoolMachine(min_size=3, max_size=6, shrink_after=10.0)
    opened(pool)
    pool.tick(100.0)
    assert pool.decisions() == []  # at min: nothing to close
    assert pool.next_deadline() is None


def test_shrink_with_all_connections_busy_restarts_the_hold() -> None:
    # 8 leases per connection: 1 lease on each of 2 connections is 12.5 % (< 20 %), but both
    # are busy, so nothing can close; the hold restarts instead of asking for a tick at once.
    pool = PoolMachine(min_size=0, max_size=4, max_leases_per_connection=8, shrink_after=10.0,
                       strategy=FixedExpansion(2))
    pool.acquire(0, 0.0)
    opened(pool)
    assert pool.decisions() == []
    pool.acquire(1, 0.0)
    assert {pool.lease_connection(0), pool.lease_connection(1)} == set(pool.connections)
    pool.tick(10.0)
    assert pool.decisions() == []
    assert pool.next_deadline() == 20.0


def test_zero_hold_shrinks_at_once() -> None:
    pool = PoolMachine(max_size=4, shrink_after=0.0)
    pool.acquire(1, 0.0)
    opened(pool)
    pool.release(1, 1.0)
    [shrink] = pool.decisions()
    assert isinstance(shrink, CloseConnections)
    assert pool.connections == ()


def test_history_is_bounded_and_time_never_runs_backwards() -> None:
    pool = PoolMachine(min_size=1, max_size=50, history=2, shrink_after=5.0)
    opened(pool)
    for lease in range(20):
        pool.acquire(lease, 1.0)
        opened(pool, 1.0, prefix=f"x{lease}-")
    assert len(pool.status().last_decisions) == 2
    for lease in range(20):
        pool.release(lease, 2.0)
    pool.tick(1.5)  # an older time: treated as 2.0
    pool.tick(7.0)
    assert isinstance(pool.decisions()[-1], CloseConnections)


# --- stateful --------------------------------------------------------------------------------

TIME_STEPS = st.sampled_from([0.0, 0.001, 0.004, 0.006, 0.5, 3.0, 20.0, 100.0])


class PoolRules(RuleBasedStateMachine):
    """Drive a pool as a driver would, in random order, and check it never breaks its word."""

    @initialize(
        min_size=st.integers(0, 3),
        extra=st.integers(0, 8),
        strategy=st.sampled_from(["smart", "fixed", "none"]),
        per_conn=st.integers(1, 3),
        shrink_after=st.sampled_from([1.0, 10.0, 50.0]),
        data=st.data(),
    )
    def setup(self, min_size: int, extra: int, strategy: str, per_conn: int,
              shrink_after: float, data: st.DataObject) -> None:
        max_size = max(1, min_size + extra)
        target = data.draw(st.integers(min_size, max_size))
        strategies: dict[str, ExpansionStrategy] = {
            "smart": SmartExpansion(), "fixed": FixedExpansion(2), "none": NoExpansion()
        }
        strat = strategies[strategy]
        self.pool = PoolMachine(min_size, max_size, target, strat,
                                max_leases_per_connection=per_conn, shrink_after=shrink_after)
        self.now = 0.0
        self.pending = 0
        self.open: dict[Hashable, set[Hashable]] = {}  # conn -> leases
        self.leases: dict[Hashable, Hashable | None] = {}  # lease -> conn (None: waiting)
        self.ever_assigned: set[Hashable] = set()
        self.next_id = 0
        self.expansions = 0
        self.shrinks = 0
        self.last_shrink = -1e9
        self.history: list[tuple[float, float]] = [(0.0, self.pool.utilisation)]
        self.take_decisions()

    # The model's bookkeeping of decisions, with the checks that need the moment they appear.
    def take_decisions(self) -> None:
        pool = self.pool
        for d in pool.decisions():
            if isinstance(d, OpenConnections):
                assert d.count >= 1
                self.pending += d.count
                if d.trigger is not Trigger.MINIMUM:
                    self.expansions += 1
            elif isinstance(d, CloseConnections):
                self.check_hold(self.now)
                for conn in d.conn_ids:
                    assert conn in self.open and not self.open[conn], "closed a busy conn"
                    del self.open[conn]
                self.shrinks += 1
                self.last_shrink = self.now
            else:
                assert isinstance(d, AssignLease)
                assert self.leases.get(d.lease_id, "gone") is None, "assigned a non-waiter"
                self.assign(d.lease_id, d.conn_id)
        self.history.append((self.now, pool.utilisation))

    def check_hold(self, t: float) -> None:
        start = t - self.pool.shrink_after
        assert self.last_shrink <= start, "shrank twice within one hold period"
        before = [u for when, u in self.history if when <= start]
        after = [u for when, u in self.history if when > start]
        assert before, "shrank before the hold period could have passed"
        low = self.pool.shrink_utilisation
        assert before[-1] < low and all(u < low for u in after), "shrank while not idle"

    def assign(self, lease: Hashable, conn: Hashable) -> None:
        assert conn in self.open, "lease given a connection that is not open"
        assert lease not in self.ever_assigned, "lease assigned twice"
        assert len(self.open[conn]) < self.pool.max_leases_per_connection
        self.ever_assigned.add(lease)
        self.leases[lease] = conn
        self.open[conn].add(lease)

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    @precondition(lambda self: self.pending > 0)
    @rule()
    def open_one(self) -> None:
        conn = f"c{self.new_id()}"
        self.pending -= 1
        self.open[conn] = set()
        self.pool.connection_opened(conn, self.now)
        self.take_decisions()

    @precondition(lambda self: self.pending > 0)
    @rule()
    def open_fails(self) -> None:
        self.pending -= 1
        self.pool.connection_failed(None, self.now)
        self.take_decisions()

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data(), broke=st.booleans())
    def connection_lost(self, data: st.DataObject, broke: bool) -> None:
        conn = data.draw(st.sampled_from(sorted(self.open, key=str)))
        for lease in self.open.pop(conn):
            del self.leases[lease]
        if broke:
            self.pool.connection_failed(conn, self.now)
        else:
            self.pool.connection_closed(conn, self.now)
        self.take_decisions()

    @rule()
    def acquire(self) -> None:
        lease = self.new_id()
        self.leases[lease] = None
        conn = self.pool.acquire(lease, self.now)
        if conn is not None:
            self.assign(lease, conn)
        self.take_decisions()

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(sorted(self.leases, key=str)))
        conn = self.leases.pop(lease)
        if conn is not None:
            self.open[conn].discard(lease)
        assert self.pool.release(lease, self.now) is True
        self.take_decisions()

    @rule(lease=st.integers(), waited=st.sampled_from([0.001, 0.007, 0.05]))
    def report_wait(self, lease: int, waited: float) -> None:
        self.pool.lease_waited(lease, waited)
        self.take_decisions()

    @rule(dt=TIME_STEPS)
    def tick(self, dt: float) -> None:
        self.now += dt
        self.pool.tick(self.now)
        self.take_decisions()

    @rule()
    def pick(self) -> None:
        conn = self.pool.pick(self.now)
        assert (conn is None) == (not self.open)
        if conn is not None:
            loads = [len(v) for v in self.open.values()]
            assert len(self.open[conn]) == min(loads)

    @invariant()
    def size_within_bounds(self) -> None:
        pool = self.pool
        size = len(self.open) + self.pending
        assert pool.size == size
        assert pool.min_size <= size <= pool.max_size

    @invariant()
    def model_agrees(self) -> None:
        pool = self.pool
        status = pool.status()
        assert set(pool.connections) == set(self.open)
        for lease, conn in self.leases.items():
            assert pool.lease_connection(lease) == conn
        assert status.waiting_leases == sum(1 for c in self.leases.values() if c is None)
        assert status.leases_in_use == sum(len(v) for v in self.open.values())
        assert status.active_connections == sum(1 for v in self.open.values() if v)
        assert status.pending_connections == self.pending
        assert status.expansion_count == self.expansions
        assert status.shrink_count == self.shrinks
        assert 0.0 <= status.pool_utilization <= 1.0
        # A waiting lease while a connection has room would be a lost wake-up.
        if status.waiting_leases:
            assert all(len(v) >= pool.max_leases_per_connection for v in self.open.values())

    @invariant()
    def deadline_in_future(self) -> None:
        deadline = self.pool.next_deadline()
        assert deadline is None or deadline > self.now


TestPoolRules = PoolRules.TestCase
