"""The reconnect policy's arithmetic and the machine's decisions, proven over chosen histories."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.core.errors import (
    ConfigurationError,
    ProtocolError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from msgtrans.core.metrics import TransportMetrics, render_prometheus
from msgtrans.core.reconnect import (
    DEFAULT_RECONNECT_POLICY,
    GiveUp,
    LinkState,
    ReconnectMachine,
    ReconnectPolicy,
    Retry,
)

RESET = TransportConnectionError("reset", code="connection.reset")
REFUSED = TransportConnectionError("refused", code="connection.refused", retry_after=2.0)
FATAL = ProtocolError("wire", "bad version", code="protocol.bad_version")


def test_defaults_are_the_documented_ones() -> None:
    p = DEFAULT_RECONNECT_POLICY
    assert (p.initial_delay, p.max_delay, p.multiplier, p.jitter, p.max_attempts,
            p.stable_after) == (0.1, 30.0, 2.0, 0.2, None, 5.0)


@pytest.mark.parametrize(("field", "value"), [
    ("initial_delay", -1), ("initial_delay", math.inf), ("initial_delay", "1"),
    ("max_delay", math.nan), ("multiplier", 0.5), ("multiplier", math.inf),
    ("jitter", -0.1), ("jitter", 1.5), ("max_attempts", 0), ("max_attempts", True),
    ("max_attempts", 1.5), ("stable_after", -1),
])
def test_bad_fields_are_named(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        ReconnectPolicy(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field


def test_max_delay_below_initial_delay_is_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        ReconnectPolicy(initial_delay=2, max_delay=1)
    assert info.value.field == "max_delay"


def test_backoff_doubles_then_caps() -> None:
    p = ReconnectPolicy(initial_delay=0.1, max_delay=1.0, multiplier=2)
    assert [p.backoff(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert p.backoff(10**9) == 1.0  # no overflow after days of retrying
    with pytest.raises(ValueError, match="attempt"):
        p.backoff(0)


def test_the_error_s_retry_delay_raises_the_wait_but_max_delay_binds() -> None:
    p = ReconnectPolicy(initial_delay=0.1, max_delay=1.5, jitter=0)
    assert p.delay(1, REFUSED) == 1.5  # asked 2.0, capped
    assert ReconnectPolicy(jitter=0).delay(1, REFUSED) == 2.0
    assert ReconnectPolicy(jitter=0).delay(1, None) == pytest.approx(0.1)


@given(attempt=st.integers(1, 200), rand=st.floats(0, 1, exclude_max=True),
       initial=st.floats(0, 5), extra=st.floats(0, 60), multiplier=st.floats(1, 10),
       jitter=st.floats(0, 1), asked=st.none() | st.floats(0, 100))
def test_delay_stays_in_the_jitter_band_and_under_max_delay(
        attempt: int, rand: float, initial: float, extra: float, multiplier: float,
        jitter: float, asked: float | None) -> None:
    p = ReconnectPolicy(initial_delay=initial, max_delay=initial + extra,
                        multiplier=multiplier, jitter=jitter)
    error = TransportConnectionError("x", retry_after=asked) if asked is not None else None
    base = p.backoff(attempt)
    if asked is not None and asked > base:
        base = min(asked, p.max_delay)
    d = p.delay(attempt, error, rand)
    assert 0 <= d <= p.max_delay
    assert base * (1 - jitter) - 1e-9 <= d <= base * (1 + jitter) + 1e-9


def test_first_connect_then_loss_then_reconnect() -> None:
    m = ReconnectMachine(ReconnectPolicy(jitter=0), rng=random.Random(1))
    assert m.state is LinkState.CONNECTING
    assert m.connected(0.0) == 0.0
    decision = m.lost(RESET, 1.0)
    assert isinstance(decision, Retry)
    # A reset asks for 1 s itself (TransportConnectionError's retry_delay), longer than 0.1.
    assert (decision.attempt, decision.delay, decision.error) == (1, 1.0, RESET)
    assert m.state is LinkState.RECONNECTING
    assert m.down_for(1.5) == 0.5
    assert m.connected(3.0) == 2.0
    assert (m.reconnects, m.disconnected_seconds, m.state) == (1, 2.0, LinkState.CONNECTED)
    assert m.down_for(4.0) == 0.0


def test_non_retryable_error_gives_up_with_it() -> None:
    m = ReconnectMachine()
    m.connected(0)
    decision = m.lost(FATAL, 1)
    assert decision == GiveUp(FATAL, 1)
    assert m.state is LinkState.CLOSED
    with pytest.raises(RuntimeError):
        m.connected(2)


def test_max_attempts_gives_up_with_the_last_error() -> None:
    m = ReconnectMachine(ReconnectPolicy(max_attempts=2))
    m.connected(0)
    assert isinstance(m.lost(RESET, 0.1), Retry)
    assert isinstance(m.failed(REFUSED, 0.5), Retry)
    decision = m.failed(REFUSED, 3)
    assert isinstance(decision, GiveUp)
    assert decision.error is REFUSED and decision.attempts == 3


def test_clean_close_retries_and_a_give_up_after_it_names_connection_closed() -> None:
    m = ReconnectMachine(ReconnectPolicy(max_attempts=1))
    m.connected(0)
    assert isinstance(m.lost(None, 1), Retry)
    m.connected(1.2)
    decision = m.lost(None, 1.3)
    assert isinstance(decision, GiveUp)
    assert decision.error.error_code == "connection.closed"


def test_a_stable_connection_restarts_the_backoff_and_a_flapping_one_does_not() -> None:
    p = ReconnectPolicy(jitter=0, stable_after=5)
    m = ReconnectMachine(p)
    m.connected(0)
    m.lost(RESET, 1)
    m.failed(RESET, 2)
    m.connected(3)
    flap = m.lost(RESET, 3.5)  # up for 0.5 s: not stable
    assert isinstance(flap, Retry) and flap.attempt == 3
    m.connected(4)
    stable = m.lost(RESET, 20)
    assert isinstance(stable, Retry) and stable.attempt == 1


def test_misuse_is_refused() -> None:
    m = ReconnectMachine()
    with pytest.raises(RuntimeError):
        m.lost(RESET, 0)
    m.connected(0)
    with pytest.raises(RuntimeError):
        m.failed(RESET, 1)
    m.close(2)
    m.close(3)  # idempotent
    with pytest.raises(RuntimeError):
        m.failed(RESET, 4)


def test_close_while_down_counts_the_time() -> None:
    m = ReconnectMachine()
    m.connected(0)
    m.lost(RESET, 1)
    m.close(4)
    assert m.disconnected_seconds == 3
    assert m.state is LinkState.CLOSED


_ERRORS = st.sampled_from([
    RESET, REFUSED, FATAL, None,
    TransportTimeoutError("connect", 1.0, code="timeout.connect"),
    TransportConnectionError("verify", code="connection.tls_verification", retryable=False),
])


@settings(max_examples=300)
@given(policy=st.builds(ReconnectPolicy, initial_delay=st.floats(0, 1),
                        max_delay=st.just(10.0), multiplier=st.floats(1, 4),
                        jitter=st.floats(0, 1), max_attempts=st.none() | st.integers(1, 6),
                        stable_after=st.floats(0, 3)),
       steps=st.lists(st.tuples(st.sampled_from(["up", "down", "fail", "close"]), _ERRORS,
                                st.floats(0, 5)), max_size=40),
       seed=st.integers(0, 2**32))
def test_any_history_keeps_the_invariants(
        policy: ReconnectPolicy, steps: list[tuple[str, TransportError | None, float]],
        seed: int) -> None:
    m = ReconnectMachine(policy, rng=random.Random(seed))
    now = 0.0
    ups = 0
    for action, error, dt in steps:
        now += dt
        state = m.state
        if state is LinkState.CLOSED:
            with pytest.raises(RuntimeError):
                m.connected(now)
            break
        if action == "up":
            if state is LinkState.CONNECTED:
                continue
            m.connected(now)
            ups += 1
            assert m.state is LinkState.CONNECTED
            continue
        if action == "close":
            m.close(now)
            assert m.state is LinkState.CLOSED
            continue
        if state is LinkState.CONNECTED:
            decision = m.lost(error, now)
        else:
            if error is None:
                continue
            decision = m.failed(error, now)
        if isinstance(decision, Retry):
            assert m.state is LinkState.RECONNECTING
            assert 0 <= decision.delay <= policy.max_delay
            assert decision.error is error
            assert error is None or error.is_retryable()
            if policy.max_attempts is not None:
                assert decision.attempt <= policy.max_attempts
        else:
            assert m.state is LinkState.CLOSED
            assert isinstance(decision.error, TransportError)
            gave_up_on_kind = error is not None and not error.is_retryable()
            over = policy.max_attempts is not None and decision.attempts > policy.max_attempts
            assert gave_up_on_kind or over
    assert m.reconnects == max(0, ups - 1)
    assert m.disconnected_seconds >= 0


def test_metrics_count_reconnects_give_ups_and_down_time_by_protocol() -> None:
    metrics = TransportMetrics(buffer_pool=None, zero_copy=None)
    metrics.reconnected("tcp", 1.5)
    metrics.reconnected("tcp", 0.5)
    metrics.disconnected("quic", 2.0)
    metrics.disconnected("quic", -1.0)
    metrics.reconnect_give_up("quic")
    snap = metrics.snapshot()
    assert dict(snap.reconnects) == {"tcp": 2}
    assert dict(snap.disconnected_seconds) == {"tcp": 2.0, "quic": 2.0}
    assert dict(snap.reconnect_give_ups) == {"quic": 1}
    assert snap.as_dict()["reconnects"] == {"tcp": 2}
    text = render_prometheus(snap)
    assert 'msgtrans_reconnects_total{protocol="tcp"} 2' in text
    assert 'msgtrans_reconnect_give_ups_total{protocol="quic"} 1' in text
    assert 'msgtrans_disconnected_seconds_total{protocol="quic"} 2' in text
