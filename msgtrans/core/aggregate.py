"""Merging :class:`~msgtrans.core.metrics.MetricsSnapshot` values: the metrics of several
transports (the worker processes of ``serve(workers=N)``) as one.

:func:`merge_snapshots` is pure and associative, and :func:`empty_snapshot` is its identity, so
a supervisor can fold its workers' snapshots in any grouping.  What is summed and what is not:

* counters and gauges keyed by label (sessions by protocol and state, opened, closed, errors,
  refusals, pool events, reconnects...) and the message and byte totals: summed key by key;
* the request latency histogram: bucket by bucket (the snapshots must share their bucket bounds;
  an empty histogram takes the other's);
* the recent pool events: concatenated, the newest :data:`RECENT_EVENTS` kept;
* the buffer pools, zero-copy counters and memory budgets: field by field (every process has
  its own; ``peak`` is then the sum of the peaks, an upper bound of the whole's), hit rates
  recomputed from the sums;
* the connection pools' statuses: counts summed, utilisation weighted by open connections.

A part that is ``None`` in one snapshot (no buffer pool observed, no memory limit) takes the
other's.  Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields, replace
from types import MappingProxyType
from typing import Any, TypeVar

from .buffers import BufferClassStats, BufferPoolStats
from .framing import ZeroCopyStats
from .metrics import DEFAULT_LATENCY_BUCKETS, HistogramSnapshot, MemoryStats, MetricsSnapshot
from .pool import PoolStatus

__all__ = ["RECENT_EVENTS", "empty_snapshot", "merge_snapshots", "retired"]

#: Recent pool events (and pool decisions) a merged snapshot keeps, the newest.
RECENT_EVENTS = 32

_K = TypeVar("_K")
_T = TypeVar("_T")


def empty_snapshot() -> MetricsSnapshot:
    """The snapshot of a transport that did nothing: merging with it changes nothing."""
    return MetricsSnapshot(
        sessions=MappingProxyType({}), sessions_opened=MappingProxyType({}),
        sessions_closed=MappingProxyType({}), messages_in=0, messages_out=0, bytes_in=0,
        bytes_out=0, errors=MappingProxyType({}),
        request_latency=HistogramSnapshot(
            tuple((b, 0) for b in (*DEFAULT_LATENCY_BUCKETS, math.inf)), 0.0, 0),
        pool_events=MappingProxyType({}), recent_pool_events=(), buffer_pool=None, pool=None)


def retired(snapshot: MetricsSnapshot) -> MetricsSnapshot:
    """*snapshot* of a transport that is gone (a worker that exited): its counters stay, its
    gauges (live sessions, pools, memory in use) are dropped."""
    return replace(snapshot, sessions=MappingProxyType({}), buffer_pool=None, pool=None,
                   memory=None)


def merge_snapshots(*snapshots: MetricsSnapshot) -> MetricsSnapshot:
    """All of *snapshots* as one (see the module text); :func:`empty_snapshot` for none.

    Raises:
        ValueError: two non-empty latency histograms have different bucket bounds.
    """
    out = empty_snapshot()
    for snapshot in snapshots:
        out = _merge2(out, snapshot)
    return out


def _merge2(a: MetricsSnapshot, b: MetricsSnapshot) -> MetricsSnapshot:
    return MetricsSnapshot(
        sessions=_sum_maps(a.sessions, b.sessions),
        sessions_opened=_sum_maps(a.sessions_opened, b.sessions_opened),
        sessions_closed=_sum_maps(a.sessions_closed, b.sessions_closed),
        messages_in=a.messages_in + b.messages_in,
        messages_out=a.messages_out + b.messages_out,
        bytes_in=a.bytes_in + b.bytes_in,
        bytes_out=a.bytes_out + b.bytes_out,
        errors=_sum_maps(a.errors, b.errors),
        request_latency=_merge_histograms(a.request_latency, b.request_latency),
        pool_events=_sum_maps(a.pool_events, b.pool_events),
        recent_pool_events=(a.recent_pool_events + b.recent_pool_events)[-RECENT_EVENTS:],
        buffer_pool=_optional(a.buffer_pool, b.buffer_pool, _merge_buffer_pools),
        pool=_optional(a.pool, b.pool, _merge_pools),
        zero_copy=_optional(a.zero_copy, b.zero_copy, _merge_zero_copy),
        memory=_optional(a.memory, b.memory, _merge_memory),
        refusals=_sum_maps(a.refusals, b.refusals),
        reconnects=_sum_maps(a.reconnects, b.reconnects),
        reconnect_give_ups=_sum_maps(a.reconnect_give_ups, b.reconnect_give_ups),
        disconnected_seconds=_sum_maps(a.disconnected_seconds, b.disconnected_seconds),
    )


def _sum_maps(a: Mapping[_K, Any], b: Mapping[_K, Any]) -> Mapping[_K, Any]:
    if not b:
        return a
    if not a:
        return b
    out = dict(a)
    for key, value in b.items():
        out[key] = out.get(key, 0) + value
    return MappingProxyType(out)


def _optional(a: _T | None, b: _T | None, merge: Any) -> _T | None:
    if a is None:
        return b
    if b is None:
        return a
    result: _T = merge(a, b)
    return result


def _merge_histograms(a: HistogramSnapshot, b: HistogramSnapshot) -> HistogramSnapshot:
    if b.count == 0 and b.sum == 0:
        return a
    if a.count == 0 and a.sum == 0:
        return b
    bounds_a = [bound for bound, _ in a.buckets]
    bounds_b = [bound for bound, _ in b.buckets]
    if bounds_a != bounds_b:
        raise ValueError(f"latency histograms with different buckets: {bounds_a} and {bounds_b}")
    buckets = tuple((bound, n + m) for (bound, n), (_, m) in zip(a.buckets, b.buckets,
                                                                 strict=True))
    return HistogramSnapshot(buckets, a.sum + b.sum, a.count + b.count)


def _merge_buffer_pools(a: BufferPoolStats, b: BufferPoolStats) -> BufferPoolStats:
    hits, misses = a.hits + b.hits, a.misses + b.misses
    classes: dict[int, BufferClassStats] = {c.size: c for c in a.classes}
    for c in b.classes:
        mine = classes.get(c.size)
        classes[c.size] = c if mine is None else BufferClassStats(
            c.size, mine.hits + c.hits, mine.misses + c.misses, mine.in_use + c.in_use,
            mine.free + c.free)
    return BufferPoolStats(
        hits=hits, misses=misses, hit_rate=hits / (hits + misses) if hits + misses else 0.0,
        bytes_in_use=a.bytes_in_use + b.bytes_in_use,
        bytes_allocated=a.bytes_allocated + b.bytes_allocated,
        memory_limit=(None if a.memory_limit is None or b.memory_limit is None
                      else a.memory_limit + b.memory_limit),
        refused=a.refused + b.refused,
        classes=tuple(classes[size] for size in sorted(classes)),
        lent=a.lent + b.lent, collected=a.collected + b.collected)


def _merge_pools(a: PoolStatus, b: PoolStatus) -> PoolStatus:
    open_a = a.active_connections + a.idle_connections
    open_b = b.active_connections + b.idle_connections
    total = open_a + open_b
    utilization = ((a.pool_utilization * open_a + b.pool_utilization * open_b) / total
                   if total else max(a.pool_utilization, b.pool_utilization))
    return PoolStatus(
        active_connections=a.active_connections + b.active_connections,
        idle_connections=a.idle_connections + b.idle_connections,
        pending_connections=a.pending_connections + b.pending_connections,
        pool_utilization=utilization,
        expansion_count=a.expansion_count + b.expansion_count,
        shrink_count=a.shrink_count + b.shrink_count,
        waiting_leases=a.waiting_leases + b.waiting_leases,
        leases_in_use=a.leases_in_use + b.leases_in_use,
        last_decisions=(a.last_decisions + b.last_decisions)[-RECENT_EVENTS:])


def _merge_zero_copy(a: ZeroCopyStats, b: ZeroCopyStats) -> ZeroCopyStats:
    return ZeroCopyStats(**{f.name: getattr(a, f.name) + getattr(b, f.name)
                            for f in fields(ZeroCopyStats)})


def _merge_memory(a: MemoryStats, b: MemoryStats) -> MemoryStats:
    return MemoryStats(a.limit + b.limit, a.in_use + b.in_use, a.peak + b.peak,
                       a.paused_connections + b.paused_connections, a.refused + b.refused)

