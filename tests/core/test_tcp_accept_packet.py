"""SessionMachine.accept_packet (the drivers' fast receive path) moves the session machine
exactly as receive_packet does, and says in its answer what receive_packet's event would say."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.core.packet import Packet, PacketType
from msgtrans.core.session import (
    CloseReason,
    MessageReceived,
    RequestReceived,
    ResponseReceived,
    SessionMachine,
)

# (action, argument): 0 send a request, 1 receive a packet of (type, id), 2 begin a close,
# 3 timer, 4 closed.
actions = st.lists(
    st.one_of(
        st.tuples(st.just(0), st.just(0)),
        st.tuples(st.just(1), st.tuples(st.integers(0, 2), st.integers(1, 8))),
        st.tuples(st.just(2), st.just(0)),
        st.tuples(st.just(3), st.just(0)),
        st.tuples(st.just(4), st.just(0)),
    ),
    max_size=40,
)


def _norm(events: Sequence[object]) -> list[tuple[object, ...]]:
    # Errors are distinct objects per event: compare what they say.
    out: list[tuple[object, ...]] = []
    for e in events:
        error = getattr(e, "error", None)
        out.append((type(e).__name__, getattr(e, "request_id", None),
                    getattr(error, "error_code", None)))
    return out


def _open() -> SessionMachine:
    sm = SessionMachine(1, request_timeout=5.0)
    sm.established(0.0)
    sm.events()
    return sm


@settings(max_examples=300, deadline=None)
@given(actions)
def test_same_state_and_meaning_as_receive_packet(steps: list[tuple[int, object]]) -> None:
    slow, fast = _open(), _open()
    now = 0.0
    for action, arg in steps:
        now += 1.0
        if action == 0:
            if slow.state.value == "open":
                a = slow.request(b"q", now=now)
                b = fast.request(b"q", now=now)
                assert a == b
        elif action == 1:
            assert isinstance(arg, tuple)
            kind: int = arg[0]
            mid: int = arg[1]
            packet = Packet(PacketType(kind), message_id=mid, payload=b"x" * mid)
            slow.receive_packet(packet, now)
            events = slow.events()
            got = fast.accept_packet(packet, now)
            assert fast.events() == []
            if got is None:
                assert events == []
            elif got is PacketType.RESPONSE:
                assert events == [ResponseReceived(mid, packet)]
            elif got is PacketType.REQUEST:
                assert events == [RequestReceived(packet)]
            else:
                assert events == [MessageReceived(packet)]
        elif action == 2:
            slow.begin_close()
            fast.begin_close()
        elif action == 4:
            slow.closed(CloseReason.PEER_CLOSED)
            fast.closed(CloseReason.PEER_CLOSED)
        else:
            slow.handle_timer(now)
            fast.handle_timer(now)
        assert _norm(slow.events()) == _norm(fast.events())
        assert slow.stats == fast.stats
        assert slow.pending_count == fast.pending_count
        assert slow.next_deadline() == fast.next_deadline()
        assert slow.state is fast.state
