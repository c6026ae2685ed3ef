"""Tests of the metrics: counters, gauges, the histogram, snapshots and Prometheus text."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.core.buffers import BufferPool
from msgtrans.core.errors import ConfigurationError, Protocol, TransportTimeoutError
from msgtrans.core.metrics import (
    DEFAULT_LATENCY_BUCKETS,
    Histogram,
    PoolEvent,
    PoolStatus,
    TransportMetrics,
    render_prometheus,
)
from msgtrans.core.pool import (
    AssignLease,
    CloseConnections,
    OpenConnections,
    PoolMachine,
    Trigger,
)
from msgtrans.core.session import SessionState

# --- a tiny exposition-format parser ------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\["\\n])*)"(,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse(text: str) -> dict[str, dict[str, object]]:
    """Parse Prometheus text 0.0.4 strictly enough to reject what a scraper would reject."""
    assert text.endswith("\n")
    families: dict[str, dict[str, object]] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):  # the format splits on \n only, not \r or U+2028
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(_NAME, name) and name not in families
            families[name] = {"help": line.split(" ", 3)[3], "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current and kind in {"counter", "gauge", "histogram"}
            families[name]["type"] = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"bad sample line {line!r}"
            name, raw_labels, value = match.groups()
            assert current is not None
            family_type = families[current]["type"]
            suffixes = ("_bucket", "_sum", "_count") if family_type == "histogram" else ("",)
            assert any(name == current + s for s in suffixes), f"{name} outside its family"
            labels: dict[str, str] = {}
            if raw_labels:
                pos = 0
                while pos < len(raw_labels):
                    m = _LABEL.match(raw_labels, pos)
                    assert m, f"bad labels {raw_labels!r}"
                    labels[m.group(1)] = _unescape(m.group(2))
                    pos = m.end()
            number = float(value)  # accepts +Inf, NaN and ints
            samples = families[current]["samples"]
            assert isinstance(samples, list)
            samples.append((name, labels, number))
    for name, family in families.items():
        if family["type"] == "histogram":
            samples = family["samples"]
            assert isinstance(samples, list)
            buckets = [(float(lb["le"]), v) for n, lb, v in samples if n.endswith("_bucket")]
            assert buckets[-1][0] == math.inf
            assert [b for b, _ in buckets] == sorted(b for b, _ in buckets)
            assert [v for _, v in buckets] == sorted(v for _, v in buckets), "not cumulative"
            count = [v for n, _, v in samples if n == name + "_count"]
            assert count == [buckets[-1][1]]
    return families


def value(families: dict[str, dict[str, object]], name: str, **labels: str) -> float:
    for family in families.values():
        samples = family["samples"]
        assert isinstance(samples, list)
        for n, lb, v in samples:
            if n == name and lb == labels:
                return float(v)
    raise KeyError((name, labels))


# --- histogram -------------------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_with_le_semantics() -> None:
    hist = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0):
        hist.observe(v)
    snap = hist.snapshot()
    assert snap.buckets == ((0.1, 2), (1.0, 3), (math.inf, 4))
    assert (snap.sum, snap.count, hist.count) == (2.65, 4, 4)
    with pytest.raises(ValueError, match=">= 0"):
        hist.observe(-1.0)
    with pytest.raises(ValueError, match=">= 0"):
        hist.observe(float("nan"))


@pytest.mark.parametrize("buckets", [(), (1.0, 1.0), (2.0, 1.0), (1.0, math.inf)])
def test_histogram_bad_buckets(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ConfigurationError):
        Histogram(buckets)


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_histogram_counts_every_observation(values: list[float]) -> None:
    hist = Histogram()
    for v in values:
        hist.observe(v)
    snap = hist.snapshot()
    assert snap.count == len(values)
    for bound, n in snap.buckets:
        assert n == sum(1 for v in values if v <= bound)


# --- TransportMetrics ------------------------------------------------------------------------


def fed() -> TransportMetrics:
    m = TransportMetrics()
    m.session_opened(Protocol.TCP)
    m.session_moved(Protocol.TCP, SessionState.CONNECTING, SessionState.OPEN)
    m.session_opened("websocket", SessionState.OPEN)
    m.session_opened(Protocol.QUIC)
    m.session_closed(Protocol.QUIC, SessionState.CONNECTING)
    m.message_in(100)
    m.message_in(50)
    m.message_out(7)
    m.error(TransportTimeoutError("request", 1.0, code="timeout.request"))
    m.error("connection.reset")
    m.error("connection.reset")
    m.request_latency(0.003)
    m.request_latency(0.2)
    pool = PoolMachine(min_size=1, max_size=4)
    for d in pool.decisions():
        m.pool_decision(d)
    m.pool_decision(OpenConnections(2, "utilisation 90 % > 80 %", Trigger.UTILISATION))
    m.pool_decision(CloseConnections(("a",), "utilisation 1 % < 20 % for 300 s",
                                     Trigger.LOW_UTILISATION))
    m.pool_decision(AssignLease(1, "a"))  # not an event
    m.pool_event("expand", 'odd "reason"\nwith a newline', trigger='we\\ird"')
    m.observe_pool(pool.status())
    buffers = BufferPool(sizes=(64,), counts=(1,))
    buffers.release(buffers.acquire(10))
    buffers.acquire(10)
    buffers.acquire(10)
    m.observe_buffer_pool(buffers.stats())
    return m


def test_snapshot_is_plain_data() -> None:
    snap = fed().snapshot()
    assert dict(snap.sessions) == {
        ("tcp", "connecting"): 0, ("tcp", "open"): 1, ("websocket", "open"): 1,
        ("quic", "connecting"): 0,
    }
    assert dict(snap.sessions_opened) == {"tcp": 1, "websocket": 1, "quic": 1}
    assert dict(snap.sessions_closed) == {"quic": 1}
    assert (snap.messages_in, snap.bytes_in, snap.messages_out, snap.bytes_out) == (2, 150, 1, 7)
    assert dict(snap.errors) == {"timeout.request": 1, "connection.reset": 2}
    assert snap.request_latency.count == 2
    assert dict(snap.pool_events) == {
        ("refill", "minimum"): 1, ("expand", "utilisation"): 1,
        ("shrink", "low_utilisation"): 1, ("expand", 'we\\ird"'): 1,
    }
    assert snap.recent_pool_events[1] == PoolEvent("expand", "utilisation",
                                                   "utilisation 90 % > 80 %")
    assert snap.buffer_hit_rate == pytest.approx(2 / 3)
    assert isinstance(snap.pool, PoolStatus)
    with pytest.raises(TypeError):
        snap.errors["x"] = 1  # type: ignore[index]
    plain = snap.as_dict()
    json.dumps(plain)  # JSON-ready
    assert plain["sessions"]["tcp"] == {"connecting": 0, "open": 1}
    assert plain["request_latency"]["buckets"][-1] == ["+Inf", 2]
    assert plain["pool"]["last_decisions"][0]["connections"] == 1
    assert plain["buffer_pool"]["hits"] == 2


def test_gauges_never_go_negative_and_empty_snapshot() -> None:
    m = TransportMetrics()
    m.session_closed("tcp")
    assert dict(m.snapshot().sessions) == {("tcp", "open"): 0}
    # With no live sources, nothing about buffers is reported.
    empty = TransportMetrics(buffer_pool=None, zero_copy=None).snapshot()
    assert empty.buffer_hit_rate is None and empty.zero_copy_hit_rate is None
    assert empty.as_dict()["pool"] is None and empty.as_dict()["buffer_pool"] is None
    assert empty.as_dict()["zero_copy"] is None
    with pytest.raises(ConfigurationError):
        TransportMetrics(recent_events=0)


def test_recent_events_are_bounded() -> None:
    m = TransportMetrics(recent_events=2)
    for i in range(5):
        m.pool_event("expand", f"r{i}")
    assert [e.reason for e in m.snapshot().recent_pool_events] == ["r3", "r4"]
    assert dict(m.snapshot().pool_events) == {("expand", "unspecified"): 5}


# --- Prometheus ------------------------------------------------------------------------------


def test_prometheus_text_parses_back() -> None:
    m = fed()
    text = m.render_prometheus()
    assert text == render_prometheus(m) == render_prometheus(m.snapshot())
    families = parse(text)
    assert families["msgtrans_request_latency_seconds"]["type"] == "histogram"
    assert families["msgtrans_errors_total"]["type"] == "counter"
    assert value(families, "msgtrans_sessions", protocol="tcp", state="open") == 1
    assert value(families, "msgtrans_messages_total", direction="in") == 2
    assert value(families, "msgtrans_bytes_total", direction="out") == 7
    assert value(families, "msgtrans_errors_total", code="connection.reset") == 2
    assert value(families, "msgtrans_request_latency_seconds_bucket", le="0.005") == 1
    assert value(families, "msgtrans_request_latency_seconds_bucket", le="+Inf") == 2
    assert value(families, "msgtrans_request_latency_seconds_sum") == pytest.approx(0.203)
    assert value(families, "msgtrans_pool_events_total", kind="expand",
                 trigger='we\\ird"') == 1  # escaped on the way out, unescaped by the parser
    assert value(families, "msgtrans_buffer_pool_hit_ratio") == pytest.approx(2 / 3)
    assert value(families, "msgtrans_buffer_pool_bytes_in_use") == 128
    assert value(families, "msgtrans_pool_connections", state="pending") == 1
    assert value(families, "msgtrans_pool_expansions_total") == 0
    assert "with a newline" not in text  # reasons are not labels
    buckets = [ln for ln in text.splitlines() if "_bucket" in ln]
    assert len(buckets) == len(DEFAULT_LATENCY_BUCKETS) + 1


def test_prometheus_empty_and_prefix() -> None:
    text = render_prometheus(TransportMetrics(buffer_pool=None, zero_copy=None), prefix="app:mt")
    families = parse(text)
    assert "app:mt_buffer_pool_hits_total" not in families
    assert "app:mt_zero_copy_hit_ratio" not in families
    assert "app:mt_pool_utilization" not in families
    assert value(families, "app:mt_messages_total", direction="in") == 0
    assert value(families, "app:mt_request_latency_seconds_count") == 0
    for bad in ("", "1abc", "a-b", "a b"):
        with pytest.raises(ConfigurationError):
            render_prometheus(TransportMetrics(), prefix=bad)


def test_prometheus_number_formats() -> None:
    m = TransportMetrics(latency_buckets=(1e-05, 0.5))
    m.observe_buffer_pool(BufferPool(sizes=(8,), counts=(0,)).stats())
    m.request_latency(1e-06)
    text = m.render_prometheus()
    assert 'le="1e-05"' in text
    assert "msgtrans_buffer_pool_hit_ratio 0.0" in text
    parse(text)
    from msgtrans.core import metrics

    assert metrics._number(math.nan) == "NaN"
    assert metrics._number(-math.inf) == "-Inf"


@given(
    protocol=st.text(max_size=12),
    code=st.text(max_size=12),
    latencies=st.lists(st.floats(0, 20), max_size=10),
)
def test_any_label_text_renders_valid(protocol: str, code: str, latencies: list[float]) -> None:
    m = TransportMetrics()
    m.session_opened(protocol)
    m.error(code)
    for v in latencies:
        m.request_latency(v)
    families = parse(m.render_prometheus())
    assert value(families, "msgtrans_errors_total", code=code) == 1
    assert value(families, "msgtrans_sessions_opened_total", protocol=protocol) == 1
