"""TcpMachine.queue_message with SessionMachine.stamp_send / stamp_request / stamp_response
(the drivers' hot send path) give the same bytes, ids, counters, deadlines and errors as
SessionMachine.send / request / respond + TcpMachine.send_packet."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.core.errors import ResourceError, TransportConnectionError
from msgtrans.core.packet import Limits, Packet, PacketType
from msgtrans.core.session import SessionMachine
from msgtrans.core.tcp import TcpMachine

messages = st.lists(
    st.tuples(
        st.integers(0, 255),
        st.one_of(st.binary(max_size=100), st.integers(0, 3).map(lambda k: b"w" * (k * 9000))),
        st.binary(max_size=12),
    ),
    max_size=12,
)


def _pair() -> tuple[SessionMachine, TcpMachine]:
    sm = SessionMachine(1)
    sm.established(0.0)
    tcp = TcpMachine(is_client=True, limits=Limits(max_payload=20_000))
    tcp.start(0.0)
    return sm, tcp


def _wire(tcp: TcpMachine) -> bytes:
    return b"".join(bytes(part) for part in tcp.data_to_send())


@settings(max_examples=200, deadline=None)
@given(messages)
def test_same_bytes_ids_and_counters(batch: list[tuple[int, bytes, bytes]]) -> None:
    sm_a, tcp_a = _pair()
    sm_b, tcp_b = _pair()
    for i, (biz, payload, ext) in enumerate(batch):
        now = float(i)
        error_a = error_b = None
        try:
            tcp_a.send_packet(sm_a.send(payload, biz_type=biz, ext_header=ext, now=now))
        except ResourceError as exc:
            error_a = exc.error_code
        try:
            tcp_b.queue_message(PacketType.ONE_WAY, sm_b.stamp_send(len(payload), now), biz,
                                payload, ext)
        except ResourceError as exc:
            error_b = exc.error_code
        assert error_a == error_b
    assert _wire(tcp_a) == _wire(tcp_b)
    assert sm_a.stats == sm_b.stats
    assert sm_a.last_message_id == sm_b.last_message_id
    assert sm_a.next_deadline() == sm_b.next_deadline()


def test_closed_session_and_machine_refuse() -> None:
    sm, tcp = _pair()
    sm.begin_close()
    with pytest.raises(TransportConnectionError):
        sm.stamp_send(1, 0.0)
    tcp.close()
    with pytest.raises(TransportConnectionError):
        tcp.queue_message(PacketType.ONE_WAY, 1, 0, b"x")


def test_packet_queued_says_when_it_paused() -> None:
    sm = SessionMachine(1, send_high_water_messages=2, send_low_water_messages=0)
    sm.established(0.0)
    sm.events()
    assert sm.packet_queued(10) is False
    assert sm.packet_queued(10) is False
    assert sm.packet_queued(10) is True
    assert sm.packet_queued(10) is False  # already paused


# (kind, arg): 0 request (payload length, timeout or None), 1 respond to an id, 2 the peer's
# response to an id, 3 timer, 4 begin a close.
steps = st.lists(
    st.one_of(
        st.tuples(st.just(0), st.tuples(st.integers(0, 30_000),
                                        st.one_of(st.none(), st.sampled_from([0.5, 3.0, -1.0])))),
        st.tuples(st.just(1), st.integers(1, 6)),
        st.tuples(st.just(2), st.integers(1, 6)),
        st.tuples(st.just(3), st.just(0)),
        st.tuples(st.just(4), st.just(0)),
    ),
    max_size=30,
)


def _outcome(call: Callable[..., object], *args: object) -> tuple[object, ...]:
    try:
        return ("ok", call(*args))
    except Exception as exc:  # the same error on both paths is the point
        return ("error", type(exc).__name__, getattr(exc, "error_code", None))


def _request_slow(sm: SessionMachine, tcp: TcpMachine, payload: bytes,
                  timeout: float | None, now: float) -> int:
    packet = sm.request(payload, biz_type=9, timeout=timeout, now=now)
    tcp.send_packet(packet)
    return packet.message_id


def _request_fast(sm: SessionMachine, tcp: TcpMachine, payload: bytes,
                  timeout: float | None, now: float) -> int:
    request_id = sm.stamp_request(len(payload), timeout=timeout, now=now)
    tcp.queue_message(PacketType.REQUEST, request_id, 9, payload)
    return request_id


def _answer_slow(sm: SessionMachine, tcp: TcpMachine, request_id: int, now: float) -> None:
    request = Packet(PacketType.REQUEST, message_id=request_id, biz_type=4)
    tcp.send_packet(sm.respond(request, b"answer", now=now))


def _answer_fast(sm: SessionMachine, tcp: TcpMachine, request_id: int, now: float) -> None:
    sm.stamp_response(6, now)
    tcp.queue_message(PacketType.RESPONSE, request_id, 4, b"answer")


@settings(max_examples=200, deadline=None)
@given(steps)
def test_request_and_response_stamps_match_the_packet_path(
    plan: list[tuple[int, object]]
) -> None:
    sm_a, tcp_a = _pair()
    sm_b, tcp_b = _pair()
    for i, (kind, arg) in enumerate(plan):
        now = float(i)
        if kind == 0:
            assert isinstance(arg, tuple)
            payload = b"q" * arg[0]
            assert _outcome(_request_slow, sm_a, tcp_a, payload, arg[1], now) == \
                _outcome(_request_fast, sm_b, tcp_b, payload, arg[1], now)
        elif kind == 1:
            assert _outcome(_answer_slow, sm_a, tcp_a, arg, now) == \
                _outcome(_answer_fast, sm_b, tcp_b, arg, now)
        elif kind == 2:
            assert isinstance(arg, int)
            response = Packet(PacketType.RESPONSE, message_id=arg, payload=b"r")
            sm_a.receive_packet(response, now)
            sm_b.receive_packet(response, now)
        elif kind == 3:
            sm_a.handle_timer(now)
            sm_b.handle_timer(now)
        else:
            sm_a.begin_close()
            sm_b.begin_close()
        assert [type(e) for e in sm_a.events()] == [type(e) for e in sm_b.events()]
        assert sm_a.stats == sm_b.stats
        assert sm_a.pending_count == sm_b.pending_count
        assert sm_a.next_deadline() == sm_b.next_deadline()
    assert _wire(tcp_a) == _wire(tcp_b)
