"""Tests of the session machine: lifecycle table, ids, request/response, deadlines, flow control."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from msgtrans.core import session as session_module
from msgtrans.core.errors import (
    ConfigurationError,
    ResourceError,
    TransportConnectionError,
    TransportTimeoutError,
)
from msgtrans.core.packet import MAX_U32, Packet, PacketType
from msgtrans.core.session import (
    TRANSITIONS,
    CloseReason,
    HeartbeatDue,
    MessageReceived,
    ReadPaused,
    ReadResumed,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
    SendPaused,
    SendResumed,
    SessionClosed,
    SessionEvent,
    SessionMachine,
    SessionState,
    SessionStateError,
    check_transition,
)

S = SessionState


def response(request_id: int, payload: bytes = b"r") -> Packet:
    return Packet(PacketType.RESPONSE, request_id, 0, payload)


def open_machine(**kwargs: object) -> SessionMachine:
    machine = SessionMachine("s1", **kwargs)  # type: ignore[arg-type]
    machine.established(0.0)
    return machine


def machine_in(state: SessionState) -> SessionMachine:
    machine = SessionMachine(7)
    if state is S.CONNECTING:
        return machine
    machine.established(0.0)
    if state is S.CLOSING:
        machine.begin_close()
    elif state is S.CLOSED:
        machine.closed()
    machine.events()
    assert machine.state is state
    return machine


# --- the transition table ------------------------------------------------------------------------

ALL_PAIRS = [(a, b) for a in SessionState for b in SessionState]


def test_table_shape() -> None:
    assert TRANSITIONS[S.CONNECTING] == {S.OPEN, S.CLOSING, S.CLOSED}
    assert TRANSITIONS[S.OPEN] == {S.CLOSING, S.CLOSED}
    assert TRANSITIONS[S.CLOSING] == {S.CLOSED}
    assert TRANSITIONS[S.CLOSED] == frozenset()
    with pytest.raises(TypeError):
        TRANSITIONS[S.CLOSED] = frozenset({S.OPEN})  # type: ignore[index]


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS)
def test_check_transition(source: SessionState, target: SessionState) -> None:
    if target in TRANSITIONS[source]:
        check_transition(source, target)
    else:
        with pytest.raises(SessionStateError) as info:
            check_transition(source, target)
        assert info.value.source is source
        assert info.value.target is target
        assert f"{source.value} -> {target.value}" in str(info.value)


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS)
def test_transitions_through_the_machine(source: SessionState, target: SessionState) -> None:
    machine = machine_in(source)
    legal = target in TRANSITIONS[source]
    if target is S.CONNECTING:
        # No method leads back to CONNECTING: the table refuses it from everywhere.
        assert not legal
        return
    if target is S.OPEN:
        if legal:
            machine.established(1.0)
        else:
            with pytest.raises(SessionStateError):
                machine.established(1.0)
    elif target is S.CLOSING:
        # Asking a closing or closed session to close again is idempotent, not an error.
        assert machine.begin_close() is legal
    else:
        assert machine.closed() is legal
    assert machine.state is (target if legal else source)


def test_str_of_enums() -> None:
    assert str(S.OPEN) == "open"
    assert str(CloseReason.IDLE_TIMEOUT) == "idle_timeout"
    assert SessionStateError(S.CLOSED, S.OPEN).args[0].endswith("may move to: nothing)")


def test_close_reason_property() -> None:
    machine = SessionMachine(1)
    assert machine.close_reason is None
    machine.established(0)
    assert machine.close_reason is None
    machine.begin_close(CloseReason.SHUTDOWN, "bye")
    assert machine.close_reason is CloseReason.SHUTDOWN
    machine.closed()
    assert machine.events() == [SessionClosed(CloseReason.SHUTDOWN, "bye", None)]
    assert machine.close_reason is CloseReason.SHUTDOWN


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("request_timeout", 0),
        ("request_timeout", -1.0),
        ("request_timeout", float("nan")),
        ("request_timeout", float("inf")),
        ("request_timeout", True),
        ("request_timeout", "10"),
        ("heartbeat_interval", 0.0),
        ("idle_timeout", -5),
        ("send_high_water_bytes", 0),
        ("send_high_water_bytes", 1.5),
        ("send_high_water_messages", True),
        ("receive_max_messages", 0),
        ("receive_max_bytes", -1),
        ("max_pending_requests", 0),
        ("send_low_water_bytes", 2 * 1024 * 1024),
        ("send_low_water_bytes", -1),
        ("send_low_water_messages", 2000),
        ("send_low_water_messages", False),
    ],
)
def test_bad_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        SessionMachine(1, **{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert info.value.error_code == "configuration.invalid"


def test_good_settings() -> None:
    machine = SessionMachine(
        "x",
        request_timeout=1,
        heartbeat_interval=0.5,
        idle_timeout=2,
        send_high_water_bytes=10,
        send_low_water_bytes=0,
        send_high_water_messages=1,
        send_low_water_messages=1,
        receive_max_messages=1,
        receive_max_bytes=1,
        max_pending_requests=1,
    )
    assert machine.state is S.CONNECTING
    assert machine.next_deadline() is None


# --- sending --------------------------------------------------------------------------------------


def test_ids_start_at_one_and_are_shared() -> None:
    machine = SessionMachine(1)
    assert machine.last_message_id == 0
    first = machine.send(b"a", now=0)
    second = machine.request(b"b", biz_type=9, ext_header=b"e", now=0)
    third = machine.send(b"c", now=0)
    assert (first.message_id, second.message_id, third.message_id) == (1, 2, 3)
    assert first.packet_type is PacketType.ONE_WAY
    assert second.packet_type is PacketType.REQUEST
    assert (second.biz_type, second.ext_header, second.payload) == (9, b"e", b"b")
    assert machine.last_message_id == 3
    assert machine.stats.messages_sent == 3
    assert machine.stats.bytes_sent == 3
    assert machine.stats.requests_sent == 1


def test_ids_wrap_to_one() -> None:
    machine = open_machine()
    machine._ids._last = MAX_U32 - 1  # jump to the end of the id space
    assert machine.request(b"", now=0).message_id == MAX_U32
    assert machine.send(b"", now=0).message_id == 1
    assert machine.request(b"", now=0).message_id == 2


def test_request_skips_ids_still_pending_after_a_wrap() -> None:
    machine = open_machine(request_timeout=100)
    assert machine.request(b"", now=0).message_id == 1
    machine._ids._last = MAX_U32
    assert machine.request(b"", now=0).message_id == 2
    assert machine.pending_count == 2


def test_new_session_restarts_ids() -> None:
    old = open_machine()
    old.send(b"", now=0)
    old.closed()
    assert SessionMachine(2).send(b"", now=0).message_id == 1


def test_sending_while_connecting_is_allowed() -> None:
    machine = SessionMachine(1)
    machine.send(b"x", now=0)
    machine.request(b"y", now=0)
    assert machine.pending_count == 1


@pytest.mark.parametrize("state", [S.CLOSING, S.CLOSED])
def test_send_and_request_refused_when_closing(state: SessionState) -> None:
    machine = machine_in(state)
    for operation in ("send", "request"):
        with pytest.raises(TransportConnectionError) as info:
            getattr(machine, operation)(b"", now=1)
        assert info.value.operation == operation
        assert info.value.error_code == "connection.closed"
        assert not info.value.retryable
        assert info.value.session_id == 7
        assert state.value in str(info.value)
    assert machine.last_message_id == 0


def test_respond() -> None:
    machine = open_machine()
    machine.receive_packet(Packet(PacketType.REQUEST, 41, 5, b"q", b"h"), 0)
    [event] = machine.events()
    assert isinstance(event, RequestReceived)
    answer = machine.respond(event.packet, b"a", now=0)
    assert (answer.packet_type, answer.message_id, answer.biz_type) == (PacketType.RESPONSE, 41, 5)
    assert answer.ext_header == b""
    by_id = machine.respond(41, b"a", ext_header=b"x", now=0)
    assert (by_id.message_id, by_id.biz_type, by_id.ext_header) == (41, 0, b"x")
    assert machine.respond(event.packet, b"", biz_type=3, now=0).biz_type == 3
    assert machine.respond(41, b"", biz_type=4, now=0).biz_type == 4
    assert machine.last_message_id == 0  # responses allocate nothing
    assert machine.stats.requests_received == 1
    assert machine.stats.messages_sent == 4


def test_respond_while_closing_but_not_closed() -> None:
    machine = machine_in(S.CLOSING)
    assert machine.respond(3, b"", now=0).message_id == 3
    machine.closed()
    with pytest.raises(TransportConnectionError) as info:
        machine.respond(3, b"", now=0)
    assert info.value.operation == "respond"


@pytest.mark.parametrize(
    "request_",
    [0, MAX_U32 + 1, Packet(PacketType.ONE_WAY, 3), Packet(PacketType.RESPONSE, 3)],
)
def test_respond_refuses_what_is_not_a_request(request_: Packet | int) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_machine().respond(request_, b"", now=0)
    assert info.value.field == "request"


def test_bad_packet_fields_raise() -> None:
    machine = open_machine()
    with pytest.raises(ConfigurationError):
        machine.send(b"", biz_type=256, now=0)
    with pytest.raises(ConfigurationError) as info:
        machine.request(b"", timeout=0, now=0)
    assert info.value.field == "timeout"
    with pytest.raises(ConfigurationError):
        machine.request(b"", timeout=float("inf"), now=0)
    assert machine.pending_count == 0


def test_max_pending_requests() -> None:
    machine = open_machine(max_pending_requests=2)
    machine.request(b"", now=0)
    machine.request(b"", now=0)
    with pytest.raises(ResourceError) as info:
        machine.request(b"", now=0)
    assert info.value.error_code == "resource.exhausted"
    assert (info.value.current, info.value.limit) == (2, 2)
    assert info.value.retryable
    machine.receive_packet(response(1), 0)
    assert machine.request(b"", now=0).message_id == 3


# --- receiving and correlation -------------------------------------------------------------------


def test_receive_kinds() -> None:
    machine = open_machine()
    one_way = Packet(PacketType.ONE_WAY, 1, 0, b"hello")
    req = Packet(PacketType.REQUEST, 2, 0, b"q")
    machine.receive_packet(one_way, 0)
    machine.receive_packet(req, 0)
    assert machine.events() == [MessageReceived(one_way), RequestReceived(req)]
    assert machine.stats.messages_received == 2
    assert machine.stats.bytes_received == 6
    assert machine.events() == []


def test_request_response_matched_by_id() -> None:
    machine = open_machine()
    a = machine.request(b"a", now=0).message_id
    b = machine.request(b"b", now=0).message_id
    assert machine.is_pending(a)
    assert machine.is_pending(b)
    rb, ra = response(b, b"B"), response(a, b"A")
    machine.receive_packet(rb, 1)
    machine.receive_packet(ra, 1)
    assert machine.events() == [ResponseReceived(b, rb), ResponseReceived(a, ra)]
    assert machine.pending_count == 0
    assert machine.stats.requests_completed == 2
    assert machine.next_deadline() is None


def test_unknown_and_duplicate_responses_dropped_and_counted() -> None:
    machine = open_machine()
    rid = machine.request(b"", now=0).message_id
    machine.receive_packet(response(999), 0)
    machine.receive_packet(response(rid), 0)
    machine.receive_packet(response(rid), 0)
    assert [type(e) for e in machine.events()] == [ResponseReceived]
    assert machine.stats.unmatched_responses == 2
    assert machine.stats.messages_received == 3


def test_cancel() -> None:
    machine = open_machine()
    rid = machine.request(b"", now=0).message_id
    assert machine.cancel(rid)
    assert not machine.cancel(rid)
    assert machine.next_deadline() is None
    machine.receive_packet(response(rid), 1)
    assert machine.events() == []
    assert machine.stats.unmatched_responses == 1
    assert machine.stats.requests_cancelled == 1


def test_receive_after_closed_is_ignored() -> None:
    machine = machine_in(S.CLOSED)
    machine.receive_packet(Packet(), 5)
    assert machine.events() == []
    assert machine.stats.messages_received == 0


# --- request deadlines ----------------------------------------------------------------------------


def test_timeout_fires_at_the_deadline_not_before() -> None:
    machine = open_machine(request_timeout=2.0)
    rid = machine.request(b"", now=10.0).message_id
    assert machine.next_deadline() == 12.0
    machine.handle_timer(11.999)
    assert machine.events() == []
    machine.handle_timer(12.0)
    [failed] = machine.events()
    assert isinstance(failed, RequestFailed)
    assert failed.request_id == rid
    error = failed.error
    assert isinstance(error, TransportTimeoutError)
    assert error.error_code == "timeout.request"
    assert error.duration == 2.0
    assert error.operation == "request"
    assert error.session_id == "s1"
    assert error.retryable
    assert not machine.is_pending(rid)
    assert machine.stats.requests_timed_out == 1
    assert machine.next_deadline() is None
    # The late response is dropped and counted.
    machine.receive_packet(response(rid), 13)
    assert machine.events() == []
    assert machine.stats.unmatched_responses == 1


def test_out_of_order_deadlines() -> None:
    machine = open_machine()
    slow = machine.request(b"", timeout=5, now=0).message_id
    fast = machine.request(b"", timeout=1, now=0).message_id
    middle = machine.request(b"", timeout=3, now=0).message_id
    tie = machine.request(b"", timeout=3, now=0).message_id
    assert machine.next_deadline() == 1
    machine.handle_timer(3)
    assert [e.request_id for e in machine.events()] == [fast, middle, tie]  # type: ignore[attr-defined]
    assert machine.next_deadline() == 5
    machine.handle_timer(100)
    assert [e.request_id for e in machine.events()] == [slow]  # type: ignore[attr-defined]


def test_next_deadline_skips_answered_requests() -> None:
    machine = open_machine()
    first = machine.request(b"", timeout=1, now=0).message_id
    machine.request(b"", timeout=2, now=0)
    machine.receive_packet(response(first), 0.5)
    machine.events()
    assert machine.next_deadline() == 2
    machine.handle_timer(1.5)
    assert machine.events() == []


def test_handle_timer_skips_answered_requests() -> None:
    machine = open_machine()
    first = machine.request(b"", timeout=1, now=0).message_id
    second = machine.request(b"", timeout=2, now=0).message_id
    machine.receive_packet(response(first), 0.5)
    machine.events()
    machine.handle_timer(2)  # the answered request's heap item is skipped, not failed
    assert [e.request_id for e in machine.events()] == [second]  # type: ignore[attr-defined]


def test_thousands_pending() -> None:
    rng = random.Random(1234)
    machine = open_machine()
    deadlines = {}
    for _ in range(5000):
        timeout = rng.uniform(0.1, 10.0)
        deadlines[machine.request(b"", timeout=timeout, now=0).message_id] = timeout
    answered = rng.sample(sorted(deadlines), 4000)
    for rid in answered:
        machine.receive_packet(response(rid), 0)
        del deadlines[rid]
    assert len(machine.events()) == 4000
    # Stale heap entries were compacted away as responses came in.
    assert len(machine._heap) <= 2 * machine.pending_count + 64
    now, fired = 0.0, []
    while (deadline := machine.next_deadline()) is not None:
        assert deadline > now
        now = deadline
        machine.handle_timer(now)
        for event in machine.events():
            assert isinstance(event, RequestFailed)
            assert event.error.duration == deadlines[event.request_id]  # type: ignore[attr-defined]
            fired.append(event.request_id)
    assert sorted(fired, key=deadlines.__getitem__) == fired
    assert set(fired) == set(deadlines)
    assert machine.stats.requests_timed_out == 1000


# --- closing --------------------------------------------------------------------------------------


def test_close_fails_every_pending_request() -> None:
    machine = open_machine()
    ids = [machine.request(b"", now=0).message_id for _ in range(3)]
    assert machine.begin_close(CloseReason.PEER_CLOSED, "going away")
    # Pending requests may still complete while closing.
    machine.receive_packet(response(ids[0]), 1)
    machine.closed()
    events = machine.events()
    assert isinstance(events[0], ResponseReceived)
    failures = events[1:-1]
    assert [f.request_id for f in failures] == ids[1:]  # type: ignore[attr-defined]
    for failure in failures:
        assert isinstance(failure, RequestFailed)
        error = failure.error
        assert isinstance(error, TransportConnectionError)
        assert error.error_code == "connection.closed"
        assert error.retryable  # the peer closed: worth retrying on a new connection
        assert "peer_closed: going away" in str(error)
    assert failures[0].error is not failures[1].error  # type: ignore[attr-defined]
    assert events[-1] == SessionClosed(CloseReason.PEER_CLOSED, "going away", None)
    assert machine.pending_count == 0
    assert machine.stats.requests_failed == 2
    assert machine.next_deadline() is None


def test_local_close_errors_are_not_retryable() -> None:
    machine = open_machine()
    machine.request(b"", now=0)
    machine.closed(CloseReason.LOCAL)
    failure = machine.events()[0]
    assert isinstance(failure, RequestFailed)
    assert not failure.error.retryable
    assert "(local)" in str(failure.error)


def test_close_with_error_passes_copies_of_it() -> None:
    machine = open_machine()
    machine.request(b"", now=0)
    machine.request(b"", now=0)
    cause = TransportConnectionError("reset by peer", code="connection.reset")
    assert machine.closed(CloseReason.ERROR, cause, "boom")
    assert not machine.closed(CloseReason.ERROR, cause)
    first, second, closed = machine.events()
    assert isinstance(first, RequestFailed)
    assert isinstance(second, RequestFailed)
    assert first.error.error_code == "connection.reset"
    assert first.error.operation == "request"
    assert first.error is not cause
    assert first.error is not second.error
    assert closed == SessionClosed(CloseReason.ERROR, "boom", cause)
    assert machine.events() == []


def test_closing_stops_heartbeat_and_idle_but_not_request_deadlines() -> None:
    machine = open_machine(heartbeat_interval=1, idle_timeout=2, request_timeout=5)
    machine.request(b"", now=0)
    machine.begin_close()
    assert machine.next_deadline() == 5
    machine.handle_timer(4)
    assert machine.events() == []
    machine.handle_timer(5)
    assert [type(e) for e in machine.events()] == [RequestFailed]
    assert machine.state is S.CLOSING
    assert machine.next_deadline() is None


def test_closed_machine_ignores_timers() -> None:
    machine = machine_in(S.CLOSED)
    machine.handle_timer(1e9)
    assert machine.events() == []


# --- heartbeat and idle ---------------------------------------------------------------------------


def test_heartbeat() -> None:
    machine = SessionMachine(1, heartbeat_interval=5.0)
    machine.send(b"", now=0)
    assert machine.next_deadline() is None  # not while connecting
    machine.established(10.0)
    assert machine.next_deadline() == 15.0
    machine.send(b"", now=12.0)  # any send postpones it
    assert machine.next_deadline() == 17.0
    machine.handle_timer(16.9)
    assert machine.events() == []
    machine.handle_timer(17.0)
    assert machine.events() == [HeartbeatDue()]
    assert machine.next_deadline() == 22.0
    machine.respond(1, b"", now=21.0)
    assert machine.next_deadline() == 26.0
    machine.request(b"", timeout=100, now=23.0)
    assert machine.next_deadline() == 28.0
    assert machine.stats.heartbeats == 1


def test_idle_timeout() -> None:
    machine = SessionMachine("idle", idle_timeout=3.0, heartbeat_interval=1.0)
    machine.established(0.0)
    rid = machine.request(b"", now=0.0).message_id
    machine.handle_timer(1.0)
    assert machine.events() == [HeartbeatDue()]
    machine.receive_packet(Packet(), 2.0)  # any packet refreshes the idle deadline
    machine.events()
    machine.peer_activity(3.0)  # so does a pong
    machine.handle_timer(5.0)
    assert machine.events() == [HeartbeatDue()]
    assert machine.next_deadline() == 6.0
    machine.handle_timer(6.0)
    failed, closed = machine.events()
    assert machine.state is S.CLOSED
    assert isinstance(failed, RequestFailed)
    assert failed.request_id == rid
    assert failed.error.error_code == "timeout.idle"
    assert isinstance(closed, SessionClosed)
    assert closed.reason is CloseReason.IDLE_TIMEOUT
    assert isinstance(closed.error, TransportTimeoutError)
    assert closed.error.error_code == "timeout.idle"
    assert closed.error.duration == 3.0
    assert closed.detail
    assert machine.next_deadline() is None


def test_next_deadline_is_the_earliest() -> None:
    machine = open_machine(heartbeat_interval=4, idle_timeout=3, request_timeout=2)
    assert machine.next_deadline() == 3
    machine.request(b"", now=0)
    assert machine.next_deadline() == 2
    machine.receive_packet(Packet(), 2.5)
    machine.handle_timer(2.5)
    assert [type(e) for e in machine.events()] == [MessageReceived, RequestFailed]
    assert machine.next_deadline() == 4


# --- flow control ---------------------------------------------------------------------------------


def test_send_watermarks_in_bytes() -> None:
    machine = open_machine(send_high_water_bytes=100, send_low_water_bytes=20)
    machine.packet_queued(100)
    assert machine.events() == []
    machine.packet_queued(1)
    assert machine.events() == [SendPaused()]
    assert machine.send_paused
    machine.packet_queued(50)
    assert machine.events() == []
    machine.flushed(120, 1)
    assert machine.send_backlog == (31, 2)
    assert machine.events() == []
    machine.flushed(11, 1)
    assert machine.events() == [SendResumed()]
    assert not machine.send_paused
    machine.flushed(1000, 1000)  # over-reporting clamps at zero
    assert machine.send_backlog == (0, 0)
    assert machine.events() == []


def test_send_watermarks_in_messages_need_both_low() -> None:
    machine = open_machine(
        send_high_water_messages=3, send_low_water_messages=1,
        send_high_water_bytes=1000, send_low_water_bytes=100,
    )
    machine.packet_queued(10, 3)
    assert machine.events() == []
    machine.packet_queued(500)
    assert machine.events() == [SendPaused()]
    machine.flushed(30, 3)  # messages low, bytes still high
    assert machine.events() == []
    machine.flushed(400, 0)
    assert machine.events() == [SendResumed()]


def test_read_bound_with_hysteresis() -> None:
    machine = open_machine(receive_max_messages=4, receive_max_bytes=1000)
    for _ in range(4):
        machine.message_delivered(10)
    assert machine.events() == []
    machine.message_delivered(10)
    assert machine.events() == [ReadPaused()]
    assert machine.read_paused
    machine.message_delivered(10)
    assert machine.events() == []
    for _ in range(3):
        machine.message_consumed(10)
    assert machine.receive_backlog == (30, 3)
    assert machine.events() == []
    machine.message_consumed(10)
    assert machine.events() == [ReadResumed()]
    assert not machine.read_paused


def test_read_bound_in_bytes() -> None:
    machine = open_machine(receive_max_bytes=100)
    machine.message_delivered(101)
    assert machine.events() == [ReadPaused()]
    machine.message_delivered(10)
    machine.message_consumed(101)
    assert machine.events() == [ReadResumed()]  # 10 bytes, 1 message: both at or below half
    machine.message_consumed(500)
    assert machine.receive_backlog == (0, 0)


def test_read_resume_needs_bytes_at_half() -> None:
    machine = open_machine(receive_max_bytes=100, receive_max_messages=10)
    machine.message_delivered(200)
    machine.message_delivered(40)
    assert machine.events() == [ReadPaused()]
    machine.message_consumed(100)  # 140 bytes left: still above half
    assert machine.events() == []
    machine.message_consumed(100)
    assert machine.events() == [ReadResumed()]


@given(
    delivered=st.lists(st.integers(0, 300), max_size=30),
    taken=st.lists(st.integers(0, 300), max_size=30),
    max_messages=st.integers(1, 10),
    max_bytes=st.integers(1, 1000),
)
def test_messages_consumed_is_message_consumed_for_each(
    delivered: list[int], taken: list[int], max_messages: int, max_bytes: int
) -> None:
    one = open_machine(receive_max_messages=max_messages, receive_max_bytes=max_bytes)
    batch = open_machine(receive_max_messages=max_messages, receive_max_bytes=max_bytes)
    for nbytes in delivered:
        one.message_delivered(nbytes)
        batch.message_delivered(nbytes)
    assert one.events() == batch.events()
    for nbytes in taken:
        one.message_consumed(nbytes)
    batch.messages_consumed(len(taken), sum(taken))
    assert one.events() == batch.events()
    assert (one.receive_backlog, one.read_paused) == (batch.receive_backlog, batch.read_paused)


def test_no_flow_events_after_close() -> None:
    machine = open_machine(send_high_water_bytes=10, send_low_water_bytes=0,
                           receive_max_bytes=10)
    machine.packet_queued(11)
    machine.message_delivered(11)
    machine.closed()
    machine.events()
    machine.flushed(11, 1)
    machine.message_consumed(11)
    machine.packet_queued(100)
    machine.message_delivered(100)
    assert machine.events() == []


# --- the core rule --------------------------------------------------------------------------------


def test_no_io_imports() -> None:
    tree = ast.parse(Path(session_module.__file__).read_text())
    forbidden = {"socket", "select", "selectors", "threading", "asyncio", "trio", "anyio", "time"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & forbidden
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            assert (node.module or "").split(".")[0] not in forbidden


# --- stateful -------------------------------------------------------------------------------------


class SessionRules(RuleBasedStateMachine):
    """Random drivers: no illegal transition, nothing left pending, every request ends once."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.machine = SessionMachine("st")
        self.last_state = S.CONNECTING
        self.pending: set[int] = set()
        self.ended: dict[int, int] = {}
        self.requested: set[int] = set()
        self.send_paused = False
        self.read_paused = False
        self.closed_events = 0

    @initialize(
        heartbeat=st.none() | st.sampled_from([0.5, 2.0]),
        idle=st.none() | st.sampled_from([1.0, 4.0]),
        max_pending=st.none() | st.integers(1, 5),
    )
    def configure(self, heartbeat: float | None, idle: float | None,
                  max_pending: int | None) -> None:
        self.machine = SessionMachine(
            "st",
            request_timeout=2.0,
            heartbeat_interval=heartbeat,
            idle_timeout=idle,
            send_high_water_bytes=100,
            send_low_water_bytes=30,
            send_high_water_messages=4,
            send_low_water_messages=1,
            receive_max_messages=4,
            receive_max_bytes=100,
            max_pending_requests=max_pending,
        )

    # --- lifecycle

    @rule()
    def established(self) -> None:
        if self.machine.state is S.CONNECTING:
            self.machine.established(self.now)
        else:
            with pytest.raises(SessionStateError):
                self.machine.established(self.now)

    @rule(reason=st.sampled_from(CloseReason))
    def begin_close(self, reason: CloseReason) -> None:
        before = self.machine.state
        moved = self.machine.begin_close(reason)
        assert moved == (before in (S.CONNECTING, S.OPEN))

    @rule(reason=st.none() | st.sampled_from(CloseReason), with_error=st.booleans())
    def closed(self, reason: CloseReason | None, with_error: bool) -> None:
        error = TransportConnectionError("lost", code="connection.reset") if with_error else None
        before = self.machine.state
        assert self.machine.closed(reason, error) == (before is not S.CLOSED)

    # --- sending

    @rule(size=st.integers(0, 40))
    def send(self, size: int) -> None:
        if self.machine.state in (S.CONNECTING, S.OPEN):
            self.machine.send(bytes(size), now=self.now)
        else:
            with pytest.raises(TransportConnectionError):
                self.machine.send(bytes(size), now=self.now)

    @rule(timeout=st.none() | st.sampled_from([0.5, 1.0, 3.0]))
    def request(self, timeout: float | None) -> None:
        machine = self.machine
        if machine.state not in (S.CONNECTING, S.OPEN):
            with pytest.raises(TransportConnectionError):
                machine.request(b"", timeout=timeout, now=self.now)
            return
        limit = machine._max_pending
        if limit is not None and len(self.pending) >= limit:
            with pytest.raises(ResourceError):
                machine.request(b"", timeout=timeout, now=self.now)
            return
        rid = machine.request(b"", timeout=timeout, now=self.now).message_id
        assert rid not in self.requested  # no wrap within a test run
        self.requested.add(rid)
        self.pending.add(rid)

    @rule(rid=st.integers(1, 50))
    def respond(self, rid: int) -> None:
        if self.machine.state is S.CLOSED:
            with pytest.raises(TransportConnectionError):
                self.machine.respond(rid, b"", now=self.now)
        else:
            assert self.machine.respond(rid, b"", now=self.now).message_id == rid

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.pending)) if self.pending
                        else st.integers(1, 50))
        was_pending = rid in self.pending
        assert self.machine.cancel(rid) == was_pending
        if was_pending:
            self.pending.discard(rid)
            self.ended[rid] = self.ended.get(rid, 0) + 1

    # --- receiving

    @rule(data=st.data(), matching=st.booleans())
    def receive_response(self, data: st.DataObject, matching: bool) -> None:
        if matching and self.pending:
            rid = data.draw(st.sampled_from(sorted(self.pending)))
        else:
            rid = data.draw(st.integers(1, 60))
        unmatched = self.machine.stats.unmatched_responses
        self.machine.receive_packet(response(rid), self.now)
        if self.machine.state is not S.CLOSED and rid not in self.pending:
            assert self.machine.stats.unmatched_responses == unmatched + 1

    @rule(ptype=st.sampled_from([PacketType.ONE_WAY, PacketType.REQUEST]))
    def receive_other(self, ptype: PacketType) -> None:
        self.machine.receive_packet(Packet(ptype, 5, 0, b"x"), self.now)

    @rule()
    def peer_activity(self) -> None:
        self.machine.peer_activity(self.now)

    # --- time

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def jump_to_deadline(self) -> None:
        deadline = self.machine.next_deadline()
        if deadline is not None:
            self.now = max(self.now, deadline)

    @rule()
    def handle_timer(self) -> None:
        self.machine.handle_timer(self.now)
        deadline = self.machine.next_deadline()
        assert deadline is None or deadline > self.now

    # --- flow control

    @rule(nbytes=st.integers(0, 60), packets=st.integers(0, 3))
    def queue(self, nbytes: int, packets: int) -> None:
        self.machine.packet_queued(nbytes, packets)

    @rule(nbytes=st.integers(0, 80), packets=st.integers(0, 4))
    def flush(self, nbytes: int, packets: int) -> None:
        self.machine.flushed(nbytes, packets)

    @rule(nbytes=st.integers(0, 60))
    def deliver(self, nbytes: int) -> None:
        self.machine.message_delivered(nbytes)

    @rule(nbytes=st.integers(0, 60))
    def consume(self, nbytes: int) -> None:
        self.machine.message_consumed(nbytes)

    # --- checks

    def _end(self, rid: int) -> None:
        assert rid in self.pending, f"event for request {rid} that was not pending"
        self.pending.discard(rid)
        self.ended[rid] = self.ended.get(rid, 0) + 1

    def _process(self, events: list[SessionEvent]) -> None:
        for index, event in enumerate(events):
            assert self.closed_events == 0, "an event after SessionClosed"
            if isinstance(event, ResponseReceived):
                assert event.packet.message_id == event.request_id
                self._end(event.request_id)
            elif isinstance(event, RequestFailed):
                self._end(event.request_id)
                assert event.error.error_code in {
                    "timeout.request", "timeout.idle", "connection.closed", "connection.reset"
                }
            elif isinstance(event, SendPaused):
                assert not self.send_paused
                self.send_paused = True
            elif isinstance(event, SendResumed):
                assert self.send_paused
                self.send_paused = False
            elif isinstance(event, ReadPaused):
                assert not self.read_paused
                self.read_paused = True
            elif isinstance(event, ReadResumed):
                assert self.read_paused
                self.read_paused = False
            elif isinstance(event, SessionClosed):
                assert index == len(events) - 1
                assert self.machine.state is S.CLOSED
                self.closed_events += 1
            else:
                assert isinstance(event, (MessageReceived, RequestReceived, HeartbeatDue))

    @invariant()
    def consistent(self) -> None:
        machine = self.machine
        state = machine.state
        assert state is self.last_state or state in TRANSITIONS[self.last_state]
        self.last_state = state
        self._process(machine.events())
        assert machine.pending_count == len(self.pending)
        assert all(machine.is_pending(rid) for rid in self.pending)
        assert machine.send_paused == self.send_paused
        assert machine.read_paused == self.read_paused
        assert all(count == 1 for count in self.ended.values())
        if state is S.CLOSED:
            assert machine.pending_count == 0
            assert self.closed_events == 1
            assert set(self.ended) == self.requested
            assert machine.next_deadline() is None
        stats = machine.stats
        assert stats.requests_sent == len(self.requested)
        assert (
            stats.requests_completed + stats.requests_timed_out + stats.requests_failed
            + stats.requests_cancelled
        ) == len(self.ended)


TestSessionRules = SessionRules.TestCase


def test_has_events_tracks_what_events_would_return() -> None:
    machine = SessionMachine("s1", send_high_water_messages=2, send_low_water_messages=1)
    assert machine.request_timeout == 10.0
    assert machine.has_events is False
    machine.established(0.0)
    machine.events()
    assert machine.has_events is False
    machine.packet_queued(10)  # under the watermark: nothing emitted
    assert machine.has_events is False
    machine.packet_queued(10, 2)  # over it: SendPaused
    assert machine.has_events is True
    assert machine.events() == [SendPaused()]
    assert machine.has_events is False
    assert SessionMachine("s2", request_timeout=2.5).request_timeout == 2.5


# --- one body per operation: the packet paths are the stamps plus the packet ---------------------


def _open_machine(**kwargs: object) -> SessionMachine:
    sm = SessionMachine(1, request_timeout=5.0, **kwargs)  # type: ignore[arg-type]
    sm.established(0.0)
    sm.events()
    return sm


@pytest.mark.parametrize("operation", ["send", "request"])
@pytest.mark.parametrize("fields", [{"biz_type": 256}, {"biz_type": -1},
                                    {"ext_header": b"e" * 65536}])
def test_fields_out_of_range_consume_no_id_and_count_nothing(
    operation: str, fields: dict[str, object]
) -> None:
    sm = _open_machine()
    with pytest.raises(ConfigurationError):
        getattr(sm, operation)(b"x", now=1.0, **fields)
    assert sm.last_message_id == 0
    assert sm.stats.messages_sent == 0
    assert sm.pending_count == 0
    assert getattr(sm, operation)(b"x", now=1.0).message_id == 1


@pytest.mark.parametrize("operation", ["send", "request"])
def test_a_closed_session_refuses_before_looking_at_the_fields(operation: str) -> None:
    sm = _open_machine()
    sm.begin_close()
    with pytest.raises(TransportConnectionError):
        getattr(sm, operation)(b"x", biz_type=300, now=1.0)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 200)), max_size=20))
def test_stamps_move_ids_counters_and_deadlines_as_the_packets_do(
    plan: list[tuple[bool, int]]
) -> None:
    sm = _open_machine()
    sent = 0
    for i, (is_request, size) in enumerate(plan):
        if is_request:
            request_id = sm.stamp_request(size, now=float(i))
            assert sm.is_pending(request_id)
        else:
            request_id = sm.stamp_send(size, float(i))
        assert request_id == sm.last_message_id == i + 1
        sent += size
    assert sm.stats.messages_sent == len(plan)
    assert sm.stats.bytes_sent == sent
    assert sm.stats.requests_sent == sum(1 for r, _ in plan if r)
    first = next((i for i, (r, _) in enumerate(plan) if r), None)
    # The earliest pending request sets the deadline (no idle or heartbeat timer here).
    assert sm.next_deadline() == (None if first is None else first + 5.0)


def test_accept_packet_answers_what_receive_packet_would_emit() -> None:
    sm = _open_machine()
    request_id = sm.stamp_request(1, now=0.0)
    assert sm.accept_packet(Packet(PacketType.ONE_WAY, message_id=9), 1.0) is PacketType.ONE_WAY
    assert sm.accept_packet(Packet(PacketType.REQUEST, message_id=9), 1.0) is PacketType.REQUEST
    response = Packet(PacketType.RESPONSE, message_id=request_id)
    assert sm.accept_packet(response, 1.0) is PacketType.RESPONSE
    assert not sm.is_pending(request_id)
    assert sm.accept_packet(response, 1.0) is None  # no longer pending: dropped and counted
    assert sm.stats.unmatched_responses == 1
    assert sm.events() == []
    sm.receive_packet(Packet(PacketType.REQUEST, message_id=10), 2.0)
    assert [type(e) for e in sm.events()] == [RequestReceived]


def test_stamps_refuse_once_closed() -> None:
    sm = _open_machine()
    sm.begin_close()
    with pytest.raises(TransportConnectionError):
        sm.stamp_send(1, 0.0)
    with pytest.raises(TransportConnectionError):
        sm.stamp_request(1, now=0.0)
    sm.closed(CloseReason.LOCAL)
    with pytest.raises(TransportConnectionError):
        sm.stamp_response(1, 0.0)
    assert sm.accept_packet(Packet(PacketType.ONE_WAY, message_id=1), 1.0) is None


def test_packet_queued_says_when_it_paused() -> None:
    sm = _open_machine(send_high_water_messages=2, send_low_water_messages=0)
    assert sm.packet_queued(10) is False
    assert sm.packet_queued(10) is False
    assert sm.packet_queued(10) is True
    assert sm.packet_queued(10) is False  # already paused
