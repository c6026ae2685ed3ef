"""TcpMachine.queue_message and SessionMachine.stamp_send (the drivers' hot send path) give
the same bytes, ids, counters and errors as SessionMachine.send + TcpMachine.send_packet."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.core.errors import ResourceError, TransportConnectionError
from msgtrans.core.packet import Limits, PacketType
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
