"""TcpMachine.receive_packets: the drivers' fast receive path gives the same packets, in the
same order, with the same errors, as buffer_updated's events, whatever the split of the stream
and wherever it goes bad."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.core.events import Event, PacketReceived
from msgtrans.core.packet import Packet, PacketType
from msgtrans.core.tcp import TcpMachine

_PTYPES = (PacketType.ONE_WAY, PacketType.REQUEST, PacketType.RESPONSE)

packets = st.lists(
    st.builds(
        lambda kind, mid, biz, payload, ext: Packet(
            _PTYPES[kind], message_id=mid, biz_type=biz, payload=payload, ext_header=ext
        ),
        st.integers(0, 2),
        st.integers(1, 2**32 - 1),
        st.integers(0, 255),
        st.one_of(st.binary(max_size=300), st.integers(0, 3).map(lambda k: b"z" * (k * 40000))),
        st.binary(max_size=20),
    ),
    max_size=8,
)


def _feed(machine: TcpMachine, data: bytes, cuts: list[int], fast: bool) -> list[object]:
    """Feed *data* through get_buffer in reads cut at *cuts*; return what came out: packets
    (fast path) and events (both paths), as comparable tuples, in order."""
    out: list[object] = []
    pos = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        while pos < cut:
            area = machine.get_buffer(-1)
            n = min(len(area), cut - pos)
            area[:n] = data[pos : pos + n]
            del area
            if fast:
                got = machine.receive_packets(n, 1.0)
                if got is not None:
                    out.extend(_packet(p) for p in got)
            else:
                machine.buffer_updated(n, 1.0)
            out.extend(_event(e) for e in machine.events())
            pos += n
    return out


def _packet(p: Packet) -> tuple[object, ...]:
    return (p.packet_type, p.message_id, p.biz_type, bytes(p.payload), bytes(p.ext_header))


def _event(e: Event) -> object:
    if type(e) is PacketReceived:
        return _packet(e.packet)
    error = getattr(e, "error", None)
    return (type(e).__name__, getattr(error, "error_code", None))


@settings(max_examples=150, deadline=None)
@given(
    packets,
    st.lists(st.integers(0, 400_000), max_size=12),
    st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=16))),
)
def test_same_output_as_buffer_updated(
    batch: list[Packet], cuts: list[int], corrupt: tuple[int, bytes] | None
) -> None:
    data = b"".join(p.encode() for p in batch)
    if corrupt is not None:
        at, junk = corrupt
        at = min(at, len(data))
        # Bad bytes somewhere: a version byte of 0xEE never parses.
        data = data[:at] + b"\xee" + junk + data[at:]
    cuts = [c for c in cuts if c < len(data)]
    slow, fast = TcpMachine(is_client=False), TcpMachine(is_client=False)
    for m in (slow, fast):
        m.start(0.0)
        m.events()
    assert _feed(fast, data, cuts, True) == _feed(slow, data, cuts, False)
    assert fast.state is slow.state
    assert fast.write_closed == slow.write_closed


def test_returns_packets_without_events() -> None:
    machine = TcpMachine(is_client=True)
    machine.start(0.0)
    machine.events()
    wire = Packet(PacketType.REQUEST, message_id=7, payload=b"hi").encode()
    area = machine.get_buffer(-1)
    area[: len(wire)] = wire
    got = machine.receive_packets(len(wire), 2.0)
    assert got is not None
    assert [(p.message_id, p.payload) for p in got] == [(7, b"hi")]
    assert machine.events() == []
    assert machine.receive_packets(0, 3.0) == []


def test_bad_bytes_are_left_as_events() -> None:
    machine = TcpMachine(is_client=True)
    machine.start(0.0)
    machine.events()
    wire = Packet(PacketType.ONE_WAY, message_id=1, payload=b"ok").encode() + b"\xee" * 16
    area = machine.get_buffer(-1)
    area[: len(wire)] = wire
    assert machine.receive_packets(len(wire), 1.0) is None
    kinds = [type(e).__name__ for e in machine.events()]
    assert kinds[0] == "PacketReceived"
    assert "ErrorOccurred" in kinds
    assert machine.write_closed
