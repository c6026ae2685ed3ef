"""The backend-independent half of the session pools (msgtrans/_driver/pool.py): the machine made
from transport.pool()'s arguments, the retry backoff, the summing of statuses, and the session
metrics helper.  No sockets: the drivers themselves are covered by
tests/backends/conformance/test_pool_conformance.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from msgtrans._driver.pool import (
    MAX_RETRY_BACKOFF,
    RETRY_BACKOFF,
    SessionMetrics,
    make_machine,
    retry_delay,
    sum_pool_status,
)
from msgtrans.core.errors import ConfigurationError, TransportTimeoutError
from msgtrans.core.metrics import TransportMetrics
from msgtrans.core.pool import PoolStatus
from msgtrans.core.session import SessionState


def test_make_machine_defaults_and_errors() -> None:
    machine = make_machine(2, 64, None, strategy=None, now=0.0, settings={})
    assert (machine.min_size, machine.max_size, machine.target) == (2, 64, 16)
    # The default target stays between min and max.
    assert make_machine(1, 4, None, strategy=None, now=0.0, settings={}).target == 4
    assert make_machine(20, 64, None, strategy=None, now=0.0, settings={}).target == 20
    machine = make_machine(0, 8, 4, strategy=None, now=0.0, settings={"shrink_after": 0.5})
    assert machine.decisions() == []  # min 0: nothing opened up front
    for bad in ({"no_such_setting": 1}, {"shrink_after": -1.0}):
        try:
            make_machine(2, 8, 4, strategy=None, now=0.0, settings=bad)
        except ConfigurationError:
            continue
        raise AssertionError(f"accepted {bad}")


@given(st.integers(min_value=0, max_value=100))
def test_retry_delay_doubles_and_is_bounded(failures: int) -> None:
    delay = retry_delay(failures)
    assert RETRY_BACKOFF <= delay <= MAX_RETRY_BACKOFF
    if failures >= 1 and delay < MAX_RETRY_BACKOFF:
        assert retry_delay(failures + 1) == min(MAX_RETRY_BACKOFF, 2 * delay)


statuses = st.builds(
    PoolStatus,
    active_connections=st.integers(0, 50),
    idle_connections=st.integers(0, 50),
    pending_connections=st.integers(0, 5),
    pool_utilization=st.floats(0.0, 1.0),
    expansion_count=st.integers(0, 20),
    shrink_count=st.integers(0, 20),
    waiting_leases=st.integers(0, 10),
    leases_in_use=st.integers(0, 50),
)


@given(st.lists(statuses, max_size=5), st.integers(0, 200), st.tuples(st.integers(0, 9),
                                                                        st.integers(0, 9)))
def test_sum_pool_status_adds_up(parts: list[PoolStatus], capacity: int,
                                 closed: tuple[int, int]) -> None:
    total = sum_pool_status(parts, capacity, closed)
    assert total.size == sum(p.size for p in parts)
    assert total.leases_in_use == sum(p.leases_in_use for p in parts)
    assert total.waiting_leases == sum(p.waiting_leases for p in parts)
    assert total.expansion_count == closed[0] + sum(p.expansion_count for p in parts)
    assert total.shrink_count == closed[1] + sum(p.shrink_count for p in parts)
    if capacity:
        assert total.pool_utilization == total.leases_in_use / capacity
    else:
        assert total.pool_utilization == (1.0 if total.waiting_leases else 0.0)
    assert len(total.last_decisions) <= 16


def test_session_metrics_keeps_the_gauge_right() -> None:
    metrics = TransportMetrics()
    counted = SessionMetrics(metrics, "tcp", SessionState.CONNECTING)
    assert metrics.snapshot().sessions[("tcp", "connecting")] == 1
    counted.state(SessionState.OPEN)
    counted.state(SessionState.OPEN)  # no change, no move
    snap = metrics.snapshot()
    assert snap.sessions.get(("tcp", "connecting"), 0) == 0
    assert snap.sessions[("tcp", "open")] == 1
    error = TransportTimeoutError("request", 1.0)
    assert counted.error(error) is error
    counted.closed()
    counted.closed()  # once only
    counted.state(SessionState.CLOSED)  # after the close: out of the gauge for good
    snap = metrics.snapshot()
    assert sum(snap.sessions.values()) == 0
    assert snap.sessions_closed["tcp"] == 1
    assert snap.errors[error.error_code] == 1
