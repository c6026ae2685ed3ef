"""The backend-neutral half of a reconnecting session (msgtrans/_driver/reconnect.py): the pure
decisions (which error ends a connection how, what a pending request's caller is told, when a
request may be sent again) and :class:`ReconnectingBase` driven with stand-in sessions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgtrans._driver.reconnect import (
    Disconnect,
    ReconnectingBase,
    cut_error,
    end_error,
    may_resend,
    resolve_policy,
)
from msgtrans.core.errors import (
    ERROR_CODES,
    ConfigurationError,
    ProtocolError,
    ResourceError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from msgtrans.core.errors import Protocol as WireProtocol
from msgtrans.core.metrics import TransportMetrics
from msgtrans.core.reconnect import (
    DEFAULT_RECONNECT_POLICY,
    GiveUp,
    LinkState,
    ReconnectPolicy,
    Retry,
)
from msgtrans.core.session import SessionState

CONNECTION_CODES = sorted(c for c in ERROR_CODES if c.startswith("connection."))


@st.composite
def errors(draw: st.DrawFn) -> TransportError:
    kind = draw(st.sampled_from(["connection", "timeout", "resource", "config", "protocol"]))
    retryable = draw(st.none() | st.booleans())
    if kind == "connection":
        return TransportConnectionError("x", code=draw(st.sampled_from(CONNECTION_CODES)),
                                        retryable=retryable)
    if kind == "timeout":
        code = draw(st.sampled_from(sorted(c for c in ERROR_CODES if c.startswith("timeout."))))
        return TransportTimeoutError("request", 1.0, code=code, retryable=retryable)
    if kind == "resource":
        return ResourceError("memory", 10, 5, retryable=retryable)
    if kind == "config":
        return ConfigurationError("field", "x")
    return ProtocolError("tcp", "x")


def test_resolve_policy() -> None:
    assert resolve_policy(None) is None and resolve_policy(False) is None
    assert resolve_policy(True) is DEFAULT_RECONNECT_POLICY
    policy = ReconnectPolicy(initial_delay=1.0)
    assert resolve_policy(policy) is policy
    for bad in (1, "yes", 0.5, {}):
        with pytest.raises(ConfigurationError) as caught:
            resolve_policy(bad)
        assert caught.value.field == "reconnect"  # type: ignore[attr-defined]


@given(errors())
def test_end_error_keeps_the_error_s_word_but_limits_and_settings_never_retry(
        error: TransportError) -> None:
    decided = end_error(error)
    assert decided is not None and type(decided) is type(error)
    assert decided.error_code == error.error_code
    if isinstance(error, (ResourceError, ConfigurationError)):
        assert not decided.is_retryable()
    else:
        assert decided.is_retryable() == error.is_retryable()


def test_a_clean_close_is_retried() -> None:
    assert end_error(None) is None


@given(errors(), st.sampled_from(["request", "send"]))
def test_a_cut_request_always_fails_retryable(error: TransportError, operation: str) -> None:
    cut = cut_error(error, operation)
    assert cut.is_retryable() and cut.operation == operation
    if error.is_retryable():
        assert cut.error_code == error.error_code
    else:
        assert isinstance(cut, TransportConnectionError)
        assert cut.error_code == "connection.closed"


@given(errors(), st.booleans())
def test_only_idempotent_requests_are_resent_and_never_after_their_timeout(
        error: TransportError, idempotent: bool) -> None:
    assert may_resend(error, idempotent) == (idempotent
                                             and error.error_code != "timeout.request")


# --- ReconnectingBase with stand-ins ----------------------------------------------------------


@dataclass
class _Conn:
    unflushed_packets: int = 0

    @dataclass
    class _Sm:
        request_timeout: float = 10.0

    session: _Sm = field(default_factory=_Sm)


@dataclass
class FakeSession:
    id: int
    error: TransportError | None = None
    send_timeout: float | None = 30.0
    closed_event: object | None = None
    is_closed: bool = False
    inbox: int = 0
    state: SessionState = SessionState.OPEN
    protocol: WireProtocol = WireProtocol.TCP
    connection: Any = field(default_factory=_Conn)

    @property
    def has_inbox(self) -> bool:
        return self.inbox > 0

    def end(self, error: TransportError | None = None, unsent: int = 0) -> None:
        self.error = error
        self.connection.unflushed_packets = unsent
        self.closed_event = object()
        self.is_closed = True
        self.state = SessionState.CLOSED


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(policy: ReconnectPolicy | None = None) -> tuple[ReconnectingBase[FakeSession],
                                                         FakeSession, TransportMetrics, Clock,
                                                         list[Any]]:
    metrics = TransportMetrics()
    clock = Clock()
    closed: list[Any] = []
    first = FakeSession(1)
    base: ReconnectingBase[FakeSession] = ReconnectingBase(
        first, policy or ReconnectPolicy(initial_delay=0.05, max_delay=0.5, jitter=0),
        metrics=metrics, clock=clock, logger=logging.getLogger("test"),
        on_closed=closed.append)
    return base, first, metrics, clock, closed


def test_a_loss_counts_what_was_never_sent_and_the_next_connection_is_a_reconnect() -> None:
    base, first, metrics, clock, _ = make()
    seen: list[Disconnect] = []
    base.on_disconnected(lambda rs, info: seen.append(info))
    assert base.connected and base.link_state is LinkState.CONNECTED
    assert base.current is first and base.state is SessionState.OPEN
    first.end(TransportConnectionError("reset", code="connection.reset"), unsent=3)
    assert not base.connected and base._usable() is None
    info = base._lost(first)
    assert info is not None
    base._fire_disconnected(info)
    assert seen == [info] and info.lost_unsent == 3 and base.lost_unsent == 3
    assert isinstance(info.decision, Retry)
    assert info.decision.delay == pytest.approx(base.policy.delay(1, info.error))
    assert base.current is None and base.state is SessionState.CLOSED
    assert base.link_state is LinkState.RECONNECTING
    base._attempting()
    assert isinstance(base._failed(TransportConnectionError("no", code="connection.refused")),
                      Retry)
    base._attempting()
    clock.now += 1.5
    second = FakeSession(2)
    assert base._adopt(second) == 2
    assert base.reconnects == 1 and base.current is second
    snap = metrics.snapshot()
    assert snap.reconnects == {"tcp": 1}
    assert snap.disconnected_seconds["tcp"] == pytest.approx(1.5)


def test_giving_up_closes_with_the_error_and_counts_it() -> None:
    base, first, metrics, _, _ = make(ReconnectPolicy(initial_delay=0, max_attempts=1))
    first.end(None)
    info = base._lost(first)
    assert info is not None and isinstance(info.decision, Retry)
    refused = TransportConnectionError("refused", code="connection.refused")
    decision = base._failed(refused)
    assert isinstance(decision, GiveUp)
    assert base.is_closed and base.link_state is LinkState.CLOSED
    assert base.error is not None and base.error.error_code == "connection.refused"
    assert base._closed_error("send").error_code == "connection.refused"
    assert base._closed_error("send").operation == "send"
    assert metrics.snapshot().reconnect_give_ups == {"tcp": 1}


def test_a_non_retryable_end_gives_up_at_once() -> None:
    base, first, _, _, _ = make()
    first.end(ProtocolError("tcp", "garbage"))
    info = base._lost(first)
    assert info is not None and isinstance(info.decision, GiveUp)
    assert base.error is not None and base.error.error_code == info.decision.error.error_code


def test_closing_makes_the_loss_nothing_to_do() -> None:
    base, first, metrics, _, _ = make()
    assert base._mark_closed() and not base._mark_closed()
    first.end(None)
    assert base._lost(first) is None
    error = base._closed_error("receive")
    assert error.error_code == "connection.closed" and not error.retryable
    assert base._down_error("send").retryable
    assert metrics.snapshot().reconnect_give_ups == {}


def test_the_reader_keeps_a_lost_connection_s_messages_first() -> None:
    base, first, _, _, _ = make()
    first.inbox = 2
    first.end(None)
    base._lost(first)
    second = FakeSession(2)
    base._adopt(second)
    assert base._reader() is first  # its messages first
    first.inbox = 0
    assert base._reader() is second
    second.end(None)
    assert base._reader() is None  # nothing to read until the next connection


def test_a_hook_that_raises_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    base, _, _, _, _ = make()

    def bad(rs: Any, arg: Any) -> None:
        raise RuntimeError("boom")

    calls: list[int] = []
    base.on_reconnected(bad)
    base.on_reconnected(lambda rs, attempts: calls.append(attempts))
    with caplog.at_level(logging.ERROR, logger="test"):
        base._fire_reconnected(3)
    assert calls == [3]
    assert "on_reconnected callback raised" in caplog.text


def test_timeouts_name_what_waited() -> None:
    base, _, _, _, _ = make()
    assert base._wait_timed_out("send", 1.0).error_code == "timeout.send"
    assert base._wait_timed_out("request", 1.0).error_code == "timeout.request"
    assert base._wait_timed_out("connect", 1.0).error_code == "timeout.connect"
