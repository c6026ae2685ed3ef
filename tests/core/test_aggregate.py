"""merge_snapshots: associative, empty_snapshot its identity, sums what it should; snapshots
pickle (a worker process sends them to its supervisor)."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.core.aggregate import empty_snapshot, merge_snapshots, retired
from msgtrans.core.buffers import BufferClassStats, BufferPoolStats
from msgtrans.core.framing import ZeroCopyStats
from msgtrans.core.metrics import (
    DEFAULT_LATENCY_BUCKETS,
    MemoryStats,
    MetricsSnapshot,
    TransportMetrics,
    render_prometheus,
)
from msgtrans.core.pool import PoolStatus

_small = st.integers(0, 1000)
_protocols = st.sampled_from(["tcp", "websocket", "quic"])
_states = st.sampled_from(["connecting", "open", "closing"])
_codes = st.sampled_from(["timeout.idle", "connection.reset", "protocol.bad_magic"])


def _counts(keys: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[Any, int]]:
    return st.dictionaries(keys, _small, max_size=3)


@st.composite
def snapshots(draw: st.DrawFn) -> MetricsSnapshot:
    """A snapshot as a TransportMetrics makes them, its histogram filled by observations."""
    metrics = TransportMetrics(buffer_pool=None, zero_copy=None)
    for protocol, state in draw(st.lists(st.tuples(_protocols, _states), max_size=4)):
        metrics.session_opened(protocol, state)
    for protocol in draw(st.lists(_protocols, max_size=3)):
        metrics.session_closed(protocol, "open")
    for _ in range(draw(st.integers(0, 3))):
        metrics.message_in(draw(_small))
        metrics.message_out(draw(_small))
    for code in draw(st.lists(_codes, max_size=3)):
        metrics.error(code)
    for reason in draw(st.lists(st.sampled_from(["rate", "per_peer"]), max_size=2)):
        metrics.refusal(reason)
    # Dyadic latencies: their sums are exact, whatever the grouping.
    for value in draw(st.lists(st.integers(0, 64).map(lambda n: n / 64), max_size=4)):
        metrics.request_latency(value)
    for kind in draw(st.lists(st.sampled_from(["expand", "shrink"]), max_size=2)):
        metrics.pool_event(kind, f"{kind} because", "load")
    snap = metrics.snapshot()
    if draw(st.booleans()):
        snap = _with(snap, buffer_pool=BufferPoolStats(
            hits=(h := draw(_small)), misses=(m := draw(_small)),
            hit_rate=h / (h + m) if h + m else 0.0, bytes_in_use=draw(_small),
            bytes_allocated=draw(_small), memory_limit=draw(st.none() | _small),
            refused=draw(_small),
            classes=tuple(BufferClassStats(size, draw(_small), draw(_small), draw(_small),
                                           draw(_small))
                          for size in draw(st.sets(st.sampled_from([1024, 4096]))))))
    if draw(st.booleans()):
        snap = _with(snap, zero_copy=ZeroCopyStats(draw(_small), draw(_small), draw(_small),
                                                   draw(_small)))
    if draw(st.booleans()):
        snap = _with(snap, memory=MemoryStats(draw(_small), draw(_small), draw(_small),
                                              draw(_small), draw(_small)))
    if draw(st.booleans()):
        snap = _with(snap, pool=PoolStatus(draw(_small), draw(_small), draw(_small),
                                           draw(st.integers(0, 8).map(lambda n: n / 8)),
                                           draw(_small), draw(_small), draw(_small),
                                           draw(_small)))
    return snap


def _with(snap: MetricsSnapshot, **changes: Any) -> MetricsSnapshot:
    from dataclasses import replace

    return replace(snap, **changes)


def _close(a: Any, b: Any) -> bool:
    """Equal, floats within rounding (the pool's weighted utilisation, hit rates)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=200, deadline=None)
@given(snapshots(), snapshots(), snapshots())
def test_merging_is_associative(a: MetricsSnapshot, b: MetricsSnapshot,
                                c: MetricsSnapshot) -> None:
    left = merge_snapshots(merge_snapshots(a, b), c)
    right = merge_snapshots(a, merge_snapshots(b, c))
    assert _close(left.as_dict(), right.as_dict())
    assert _close(merge_snapshots(a, b, c).as_dict(), left.as_dict())


@settings(max_examples=200, deadline=None)
@given(snapshots())
def test_the_empty_snapshot_is_the_identity(a: MetricsSnapshot) -> None:
    assert merge_snapshots(a, empty_snapshot()).as_dict() == a.as_dict()
    assert merge_snapshots(empty_snapshot(), a).as_dict() == a.as_dict()
    assert merge_snapshots(a).as_dict() == a.as_dict()
    assert merge_snapshots() == empty_snapshot()


@settings(max_examples=100, deadline=None)
@given(snapshots(), snapshots())
def test_counters_and_gauges_are_summed(a: MetricsSnapshot, b: MetricsSnapshot) -> None:
    m = merge_snapshots(a, b)
    assert m.messages_in == a.messages_in + b.messages_in
    assert m.bytes_out == a.bytes_out + b.bytes_out
    assert sum(m.sessions.values()) == sum(a.sessions.values()) + sum(b.sessions.values())
    assert sum(m.errors.values()) == sum(a.errors.values()) + sum(b.errors.values())
    assert m.request_latency.count == a.request_latency.count + b.request_latency.count
    for (bound, n), (_, x), (_, y) in zip(m.request_latency.buckets, a.request_latency.buckets,
                                          b.request_latency.buckets, strict=True):
        assert n == x + y, bound
    # Merging is commutative too, but for the order of the recent events.
    assert _close({**merge_snapshots(b, a).as_dict(), "recent_pool_events": None,
                   "pool": None, "buffer_pool": None},
                  {**m.as_dict(), "recent_pool_events": None, "pool": None,
                   "buffer_pool": None})


@settings(max_examples=100, deadline=None)
@given(snapshots())
def test_snapshots_pickle(a: MetricsSnapshot) -> None:
    again = pickle.loads(pickle.dumps(a))
    assert again == a
    assert type(again.sessions) is type(a.sessions)


def test_retired_keeps_the_counters_and_drops_the_gauges() -> None:
    metrics = TransportMetrics()
    metrics.session_opened("tcp", "open")
    metrics.message_in(10)
    gone = retired(metrics.snapshot())
    assert dict(gone.sessions) == {} and gone.messages_in == 1 and gone.buffer_pool is None


def test_different_histogram_buckets_are_refused() -> None:
    a = TransportMetrics(latency_buckets=(0.1, 1.0))
    a.request_latency(0.5)
    b = TransportMetrics()
    b.request_latency(0.5)
    with pytest.raises(ValueError, match="different buckets"):
        merge_snapshots(a.snapshot(), b.snapshot())
    assert len(DEFAULT_LATENCY_BUCKETS) + 1 == len(b.snapshot().request_latency.buckets)


def test_prometheus_renders_the_merged_snapshot() -> None:
    parts = []
    for n in (1, 2):
        metrics = TransportMetrics()
        for _ in range(n):
            metrics.message_in(5)
        parts.append(metrics.snapshot())
    text = render_prometheus(merge_snapshots(*parts))
    assert 'msgtrans_messages_total{direction="in"} 3' in text
