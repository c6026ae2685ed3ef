"""Stress: a load burst against PoolMachine in simulated time.

A tiny driver simulation (opens take 2 ms, each lease holds its connection 20 ms and a pooled
buffer for its message) runs a quiet phase, a one-second burst and a long quiet tail.  The pool
must grow along the SmartExpansion schedule, serve the burst, shrink back to its minimum once
utilisation stayed low for the hold period, and keep memory bounded throughout.  Run with ``-s``
to see the size timeline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from msgtrans.core.buffers import BufferPool
from msgtrans.core.expansion import SmartExpansion
from msgtrans.core.pool import (
    AssignLease,
    CloseConnections,
    OpenConnections,
    PoolMachine,
    Trigger,
)

MS = 0.001
CONNECT = 2 * MS
HOLD = 20 * MS
MEMORY_LIMIT = 4 * 1024 * 1024


@dataclass
class Sim:
    pool: PoolMachine
    buffers: BufferPool = field(
        default_factory=lambda: BufferPool(counts=(64, 16, 4), memory_limit=MEMORY_LIMIT)
    )
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    now: float = 0.0
    next_conn: int = 0
    next_lease: int = 0
    opening: list[float] = field(default_factory=list)  # completion times
    releases: dict[int, float] = field(default_factory=dict)  # lease -> release time
    held: dict[int, bytearray] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    asked: dict[int, float] = field(default_factory=dict)
    growth: list[tuple[float, int, int]] = field(default_factory=list)  # (t, before, after)
    shrinks: list[tuple[float, int, int]] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)
    peak_allocated: int = 0

    def handle(self) -> None:
        for d in self.pool.decisions():
            if isinstance(d, OpenConnections):
                self.opening.extend([self.now + CONNECT] * d.count)
                if d.trigger is not Trigger.MINIMUM:
                    self.growth.append((self.now, self.pool.size - d.count, self.pool.size))
            elif isinstance(d, CloseConnections):
                after = self.pool.size
                self.shrinks.append((self.now, after + len(d.conn_ids), after))
            else:
                assert isinstance(d, AssignLease)
                self.start(d.lease_id)  # type: ignore[arg-type]
        if not self.timeline or self.timeline[-1][1] != self.pool.size:
            self.timeline.append((self.now, self.pool.size))

    def start(self, lease: int) -> None:
        waited = self.now - self.asked.pop(lease)
        self.waits.append(waited)
        if waited > 0:
            self.pool.lease_waited(lease, waited)
        self.releases[lease] = self.now + HOLD
        self.held[lease] = self.buffers.acquire(self.rng.choice((200, 3000, 40_000)))
        self.peak_allocated = max(self.peak_allocated, self.buffers.bytes_allocated)

    def step(self, now: float, arrivals: int) -> None:
        self.now = now
        due = [t for t in self.opening if t <= now]
        self.opening = [t for t in self.opening if t > now]
        for _ in due:
            self.next_conn += 1
            self.pool.connection_opened(self.next_conn, now)
            self.handle()
        for lease in [k for k, t in self.releases.items() if t <= now]:
            del self.releases[lease]
            self.buffers.release(self.held.pop(lease))
            self.pool.release(lease, now)
            self.handle()
        for _ in range(arrivals):
            self.next_lease += 1
            self.asked[self.next_lease] = now
            if self.pool.acquire(self.next_lease, now) is not None:
                self.start(self.next_lease)
            self.handle()
        self.pool.tick(now)
        self.handle()


def run_burst(sim: Sim) -> float:
    """Quiet 0.5 s, burst 1 s (3 leases per ms), quiet 0.5 s at 1 ms steps, then 400 s of
    one-second ticks; return when the burst ended."""
    t = 0.0
    for i in range(2000):
        t = i * MS
        burst = 500 <= i < 1500
        sim.step(t, 3 if burst else (1 if i % 10 == 0 else 0))
    burst_end = 1.5
    for s in range(1, 401):
        sim.step(t + s, 0)
    return burst_end


def test_burst_grows_by_schedule_then_shrinks() -> None:
    strategy = SmartExpansion()
    pool = PoolMachine(min_size=2, max_size=100, target=64, strategy=strategy)
    sim = Sim(pool)
    burst_end = run_burst(sim)

    print("\nsize timeline (s, connections incl. pending):")
    print("  " + ", ".join(f"{t:.3f}:{n}" for t, n in sim.timeline))
    print("growth steps (s, before -> after, factor):")
    for t, before, after in sim.growth:
        print(f"  {t:.3f}: {before} -> {after} (x{strategy.factor_for(before, 64)})")
    print(f"shrinks: {sim.shrinks}; peak buffer memory {sim.peak_allocated} B")

    # Growth: every step is exactly the strategy's answer, and the factors used never increase
    # (2.0 -> 1.5 -> 1.2 -> 1.1 as progress rises).
    assert len(sim.growth) >= 5
    factors = [strategy.factor_for(before, pool.target) for _, before, _ in sim.growth]
    assert factors == sorted(factors, reverse=True)
    assert factors[0] == 2.0
    assert {2.0, 1.5, 1.2} <= set(factors)
    for _, before, after in sim.growth:
        assert after == strategy.calculate_next_size(before, pool.target, pool.max_size)
    peak = max(n for _, n in sim.timeline)
    assert 60 <= peak <= pool.max_size  # 60 leases in flight at the burst's height
    assert pool.expansion_count == len(sim.growth)
    # The burst was served: waits stayed short compared with the 1 s burst.
    waits = sorted(sim.waits)
    assert waits[int(len(waits) * 0.99)] < 0.05

    # Shrink: only once utilisation stayed low for 300 s after the burst, down to the minimum.
    assert sim.shrinks, "never shrank"
    first_shrink = sim.shrinks[0][0]
    assert first_shrink >= burst_end + pool.shrink_after - 1.0
    assert pool.size == pool.min_size
    assert pool.shrink_count == len(sim.shrinks)
    status = pool.status()
    assert status.leases_in_use == status.waiting_leases == 0
    assert [type(d) for d in status.last_decisions][-1] is CloseConnections

    # Memory: bounded by the limit, and nothing leaked.
    assert sim.peak_allocated <= MEMORY_LIMIT
    assert sim.buffers.bytes_in_use == 0
    assert sim.buffers.refused == 0
    assert sim.buffers.hit_rate > 0.9
