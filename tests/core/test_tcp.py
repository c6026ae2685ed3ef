"""TcpMachine: msgtrans framing over a byte stream, driven in memory (no sockets)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.core.errors import (
    ConfigurationError,
    Protocol,
    ProtocolError,
    ResourceError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from msgtrans.core.events import (
    CloseStarted,
    ConnectionClosed,
    ConnectionEstablished,
    ErrorOccurred,
    Event,
    PacketReceived,
)
from msgtrans.core.machine import MachineState
from msgtrans.core.memory import StreamPipe
from msgtrans.core.packet import Compression, Limits, Packet, PacketFlags, PacketType
from msgtrans.core.tcp import COALESCE_LIMIT, TcpMachine

# --- helpers -----------------------------------------------------------------------------------


def make_pair(
    chunker: Callable[[bytes], list[bytes]] | None = None, **kwargs: object
) -> tuple[TcpMachine, TcpMachine, StreamPipe]:
    client = TcpMachine(is_client=True, **kwargs)  # type: ignore[arg-type]
    server = TcpMachine(is_client=False, **kwargs)  # type: ignore[arg-type]
    pipe = StreamPipe(client, server, chunker)
    return client, server, pipe


def started_pair(**kwargs: object) -> tuple[TcpMachine, TcpMachine, StreamPipe]:
    client, server, pipe = make_pair(**kwargs)  # type: ignore[arg-type]
    pipe.start()
    assert client.events() == [ConnectionEstablished(Protocol.TCP)]
    assert server.events() == [ConnectionEstablished(Protocol.TCP)]
    return client, server, pipe


def packets_of(events: list[Event]) -> list[Packet]:
    return [e.packet for e in events if isinstance(e, PacketReceived)]


def kinds(events: list[Event]) -> list[type]:
    return [type(e) for e in events if not isinstance(e, PacketReceived)]


def error_of(events: list[Event]) -> TransportError:
    errors = [e.error for e in events if isinstance(e, ErrorOccurred)]
    assert len(errors) == 1
    return errors[0]


def wire(machine: TcpMachine) -> bytes:
    return b"".join(bytes(part) for part in machine.data_to_send())


def mixed_packets(n: int) -> list[Packet]:
    types = (PacketType.ONE_WAY, PacketType.REQUEST, PacketType.RESPONSE)
    return [
        Packet(
            types[i % 3],
            message_id=i + 1,
            biz_type=i % 256,
            payload=os.urandom(i % 200),
            ext_header=b"route:%d" % i if i % 7 == 0 else b"",
            flags=PacketFlags.HIGH_PRIORITY if i % 5 == 0 else PacketFlags.NONE,
        )
        for i in range(n)
    ]


# --- opening ---------------------------------------------------------------------------------


def test_start_opens_at_once() -> None:
    machine = TcpMachine(is_client=True)
    assert machine.state is MachineState.IDLE
    assert machine.protocol is Protocol.TCP
    assert machine.transport_kind == "stream"
    machine.start(1.0)
    assert machine.state is MachineState.OPEN
    assert machine.events() == [ConnectionEstablished(Protocol.TCP)]
    assert machine.next_deadline() is None
    machine.start(2.0)  # a second start does nothing
    assert machine.events() == []
    machine.handle_timer(100.0)  # no timer while open
    assert machine.events() == []


def test_bad_close_timeout_is_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        TcpMachine(is_client=True, close_timeout=0)
    assert info.value.field == "close_timeout"


def test_packets_sent_before_start_wait_for_it() -> None:
    client, server, pipe = make_pair()
    early = mixed_packets(5)
    client.send_packets(early[:2])
    for packet in early[2:]:
        client.send_packet(packet)
    assert client.data_to_send() == []  # nothing leaves before start
    pipe.start()
    assert packets_of(server.events()) == early


# --- sending and receiving -----------------------------------------------------------------


def test_wire_bytes_match_the_spec_examples() -> None:
    machine = TcpMachine(is_client=True)
    machine.start(0.0)
    machine.send_packet(Packet(message_id=1, payload=b"hello"))
    assert wire(machine) == bytes.fromhex("01000000000000010000000000050000") + b"hello"
    machine.send_packets(
        [Packet(PacketType.REQUEST, 0x01020304, 7, b"ping", ext_header=b"\x01\x02")]
    )
    assert wire(machine) == bytes.fromhex(
        "01 00 01 07 01 02 03 04 00 02 00 00 00 04 00 00 01 02 70 69 6e 67"
    )
    assert machine.data_to_send() == []


def test_small_packets_are_coalesced_into_one_write() -> None:
    machine = TcpMachine(is_client=True)
    machine.start(0.0)
    packets = mixed_packets(500)
    for packet in packets:
        machine.send_packet(packet)
    parts = machine.data_to_send()
    assert len(parts) == 1
    assert bytes(parts[0]) == b"".join(p.encode() for p in packets)


def test_thousands_of_packets_both_ways() -> None:
    client, server, pipe = started_pair()
    requests = mixed_packets(3000)
    client.send_packets(requests)
    pipe.pump()
    got = packets_of(server.events())
    assert got == requests
    replies = [
        Packet(PacketType.RESPONSE, p.message_id, p.biz_type, bytes(p.payload)[::-1])
        for p in got
    ]
    for reply in replies:
        server.send_packet(reply)
        if reply.message_id % 100 == 0:
            pipe.pump()
    pipe.pump()
    assert packets_of(client.events()) == replies


def test_large_payloads_go_by_reference_and_arrive_as_views() -> None:
    client, server, _pipe = started_pair()
    big = os.urandom(1024 * 1024)
    medium = bytearray(os.urandom(COALESCE_LIMIT))
    client.send_packet(Packet(message_id=1, payload=b"small"))
    client.send_packet(Packet(message_id=2, payload=big))
    client.send_packets([Packet(message_id=3, payload=medium), Packet(message_id=4)])
    parts = client.data_to_send()
    # Each large payload is its own part, the very object given (a vectored write, no copy).
    assert any(part is big for part in parts)
    assert any(part is medium for part in parts)
    assert len(parts) == 5
    for part in parts:
        server.receive_data(bytes(part), 0.0)
    got = packets_of(server.events())
    assert [p.message_id for p in got] == [1, 2, 3, 4]
    assert isinstance(got[1].payload, memoryview)
    assert got[1].payload == big
    assert got[2].payload == medium


def test_zero_copy_receive_path_through_get_buffer() -> None:
    client, server, _pipe = started_pair()
    payload = os.urandom(300 * 1024)
    packets = [Packet(message_id=1, payload=b"a"), Packet(message_id=2, payload=payload)]
    packets += mixed_packets(50)
    client.send_packets(packets)
    data = wire(client)
    pos = 0
    views = []
    while pos < len(data):
        buf = server.get_buffer(-1)
        n = min(len(buf), len(data) - pos, 50_000)
        buf[:n] = data[pos : pos + n]
        views.append(buf)
        pos += n
        server.buffer_updated(n, 0.0)
    server.buffer_updated(0, 0.0)  # nothing received: nothing happens
    got = packets_of(server.events())
    assert got == packets
    assert isinstance(got[1].payload, memoryview)
    # The payload was received straight into the memory it is handed out from.
    assert any(got[1].payload.obj is v.obj for v in views)


def test_zero_copy_can_be_turned_off() -> None:
    client, server, pipe = started_pair(zero_copy_threshold=None)
    client.send_packet(Packet(payload=b"z" * 200_000))
    pipe.pump()
    (packet,) = packets_of(server.events())
    assert type(packet.payload) is bytes


def test_compressed_packets_round_trip() -> None:
    client, server, pipe = started_pair()
    text = b"msgtrans " * 10_000
    packets = [
        Packet(message_id=1, payload=text, compression=Compression.ZLIB),
        Packet(message_id=2, payload=os.urandom(40_000), compression=Compression.ZLIB),
        Packet(message_id=3, payload=b"plain"),
    ]
    client.send_packet(packets[0])
    client.send_packets(packets[1:])
    client.send_packet(packets[1])
    pipe.pump()
    assert packets_of(server.events()) == [*packets, packets[1]]


def test_oversize_send_raises_resource_error() -> None:
    client, server, pipe = started_pair(limits=Limits(max_payload=1000))
    with pytest.raises(ResourceError) as info:
        client.send_packet(Packet(payload=b"x" * 1001))
    assert info.value.error_code == "resource.payload_too_large"
    assert not info.value.retryable
    ok = Packet(message_id=1, payload=b"x" * 1000)
    with pytest.raises(ResourceError):
        client.send_packets([ok, Packet(payload=b"x" * 1001), ok])
    pipe.pump()
    # The packet before the refused one was queued; the connection goes on.
    assert packets_of(server.events()) == [ok]
    assert client.state is MachineState.OPEN


def test_oversize_receive_is_a_protocol_error() -> None:
    client = TcpMachine(is_client=True)
    server = TcpMachine(is_client=False, limits=Limits(max_payload=10))
    client.start(0.0)
    server.start(0.0)
    server.events()
    client.send_packet(Packet(payload=b"x" * 11))
    server.receive_data(wire(client), 0.0)
    events = server.events()
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    assert error_of(events).error_code == "protocol.frame_too_large"


# --- closing -----------------------------------------------------------------------------------


def test_client_closes_first_cleanly() -> None:
    client, server, pipe = started_pair()
    client.close(reason="done")
    assert client.write_closed
    assert client.state is MachineState.CLOSING
    assert client.events() == [CloseStarted(None, "done", by_peer=False)]
    pipe.pump()
    assert server.events() == [
        CloseStarted(None, "", by_peer=True),
        ConnectionClosed(None, "", clean=True),
    ]
    assert server.write_closed
    assert client.events() == [ConnectionClosed(None, "done", clean=True)]
    assert client.is_closed and server.is_closed
    assert client.next_deadline() is None


def test_server_closes_first_cleanly() -> None:
    client, server, pipe = started_pair()
    server.close(code=1000)  # TCP has no close code: ignored
    pipe.pump()
    assert server.events() == [
        CloseStarted(None, "", by_peer=False),
        ConnectionClosed(None, "", clean=True),
    ]
    assert client.events() == [
        CloseStarted(None, "", by_peer=True),
        ConnectionClosed(None, "", clean=True),
    ]


def test_both_close_at_once() -> None:
    client, server, pipe = started_pair()
    client.close()
    server.close()
    pipe.pump()
    for machine in (client, server):
        assert machine.events() == [
            CloseStarted(None, "", by_peer=False),
            ConnectionClosed(None, "", clean=True),
        ]


def test_half_close_peer_packets_still_arrive() -> None:
    client, server, _pipe = started_pair()
    client.send_packet(Packet(message_id=1, payload=b"last request"))
    client.close()
    client.close()  # closing twice does nothing
    assert client.events() == [CloseStarted(None, "", by_peer=False)]
    to_server = wire(client)
    # The server answers before it has seen the client's FIN ...
    server.receive_data(to_server, 0.0)
    assert packets_of(server.events()) == [Packet(message_id=1, payload=b"last request")]
    replies = mixed_packets(100)
    server.send_packets(replies)
    client.receive_data(wire(server), 0.0)
    # ... and the client, closing, still receives everything.
    assert packets_of(client.events()) == replies
    assert client.state is MachineState.CLOSING
    # Then the server sees the FIN; what it had queued still leaves, followed by its own FIN.
    more = Packet(message_id=999, payload=b"queued before the FIN was seen")
    server.send_packet(more)
    server.receive_data(b"", 0.0)
    assert server.write_closed and server.is_closed
    client.receive_data(wire(server), 0.0)
    client.receive_data(b"", 0.0)
    events = client.events()
    assert packets_of(events) == [more]
    assert events[-1] == ConnectionClosed(None, "", clean=True)


def test_send_after_close_raises_connection_closed() -> None:
    client, server, pipe = started_pair()
    client.close()
    for send in (
        lambda: client.send_packet(Packet()),
        lambda: client.send_packets([Packet()]),
    ):
        with pytest.raises(TransportConnectionError) as info:
            send()
        assert info.value.error_code == "connection.closed"
        assert not info.value.retryable
    pipe.pump()
    with pytest.raises(TransportConnectionError):
        server.send_packet(Packet())  # the peer's EOF closed the server too


def test_close_timeout() -> None:
    client, _server, _pipe = started_pair(close_timeout=2.5)
    client.receive_data(Packet(payload=b"x").encode(), 5.0)
    client.events()
    client.close()
    # close() has no clock: the machine asks for handle_timer() at once to start its timer.
    assert client.next_deadline() == 5.0
    client.handle_timer(7.0)
    assert client.next_deadline() == 9.5
    client.handle_timer(9.4)
    assert client.events() == [CloseStarted(None, "", by_peer=False)]
    client.handle_timer(9.5)
    events = client.events()
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    error = error_of(events)
    assert isinstance(error, TransportTimeoutError)
    assert error.error_code == "timeout.close"
    assert error.duration == 2.5
    closed = events[-1]
    assert isinstance(closed, ConnectionClosed)
    assert not closed.clean and closed.error is error
    assert client.next_deadline() is None
    client.receive_data(b"", 10.0)  # a late EOF changes nothing
    assert client.events() == []


def test_close_before_start() -> None:
    machine = TcpMachine(is_client=True)
    machine.send_packet(Packet(payload=b"queued"))
    machine.close()
    assert machine.state is MachineState.CLOSING
    machine.start(0.0)  # too late to open
    assert machine.events() == [CloseStarted(None, "", by_peer=False)]
    assert wire(machine) == Packet(payload=b"queued").encode()


def test_connection_lost_is_an_unclean_close() -> None:
    client, _server, _pipe = started_pair()
    client.connection_lost(1.0)
    events = client.events()
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    assert error_of(events).error_code == "connection.reset"
    client.connection_lost(2.0)
    assert client.events() == []


# --- broken input ------------------------------------------------------------------------------


def test_eof_inside_a_packet_is_a_protocol_error() -> None:
    client, server, _pipe = started_pair()
    client.send_packet(Packet(message_id=1, payload=b"whole"))
    client.send_packet(Packet(message_id=2, payload=b"cut short"))
    data = wire(client)
    server.receive_data(data[:-3], 0.0)
    server.receive_data(b"", 0.0)
    events = server.events()
    assert packets_of(events) == [Packet(message_id=1, payload=b"whole")]
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    error = error_of(events)
    assert isinstance(error, ProtocolError)
    assert error.error_code == "protocol.unexpected_eof"
    assert server.write_closed


@pytest.mark.parametrize("path", ["receive_data", "buffer_updated"])
@pytest.mark.parametrize("good_first", [False, True])
def test_garbage_is_a_protocol_error(path: str, good_first: bool) -> None:
    client, server, _pipe = started_pair()
    good = Packet(message_id=7, payload=b"fine")
    data = (good.encode() if good_first else b"") + b"\x02" + bytes(30)
    if path == "receive_data":
        server.receive_data(data, 0.0)
    else:
        buf = server.get_buffer(len(data))
        buf[: len(data)] = data
        server.buffer_updated(len(data), 0.0)
    events = server.events()
    assert packets_of(events) == ([good] if good_first else [])
    assert kinds(events) == [ErrorOccurred, ConnectionClosed]
    error = error_of(events)
    assert isinstance(error, ProtocolError)
    assert error.error_code == "protocol.bad_version"
    closed = events[-1]
    assert isinstance(closed, ConnectionClosed)
    assert not closed.clean
    assert server.write_closed and server.is_closed
    assert server.next_deadline() is None
    # Everything after is ignored, whichever way it comes; nothing raises.
    server.receive_data(good.encode(), 1.0)
    server.receive_data(b"", 1.0)
    buf = server.get_buffer(-1)
    buf[:4] = b"junk"
    server.buffer_updated(4, 1.0)
    assert server.events() == []
    with pytest.raises(TransportConnectionError):
        server.send_packet(good)
    client.close()


def test_garbage_while_closing_ends_uncleanly() -> None:
    client, _server, _pipe = started_pair()
    client.close()
    client.receive_data(b"\xff" * 20, 0.0)
    events = client.events()
    assert kinds(events) == [CloseStarted, ErrorOccurred, ConnectionClosed]
    assert client.next_deadline() is None


# --- properties --------------------------------------------------------------------------------

payloads = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda n, seed: random.Random(seed).randbytes(n),
        st.integers(min_value=1000, max_value=20_000),
        st.integers(),
    ),
)
packets_strategy = st.lists(
    st.builds(
        Packet,
        packet_type=st.sampled_from(PacketType),
        message_id=st.integers(0, 2**32 - 1),
        biz_type=st.integers(0, 255),
        payload=payloads,
        ext_header=st.binary(max_size=20),
    ),
    max_size=25,
)
cuts_strategy = st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=20)


def cutter(sizes: list[int]) -> Callable[[bytes], list[bytes]]:
    """A StreamPipe chunker cutting each write at the given sizes, over and over."""
    state = {"i": 0}

    def chunk(data: bytes) -> list[bytes]:
        out = []
        pos = 0
        while pos < len(data):
            size = sizes[state["i"] % len(sizes)]
            state["i"] += 1
            out.append(data[pos : pos + size])
            pos += size
        return out

    return chunk


def run_conversation(
    chunker: Callable[[bytes], list[bytes]] | None, packets: list[Packet]
) -> tuple[list[Event], list[Event]]:
    # A low zero-copy threshold so that cuts also fall inside "large" packets.
    client, server, pipe = make_pair(chunker, zero_copy_threshold=1024)
    pipe.start()
    client.send_packets(packets)
    pipe.pump()
    for packet in packets_of(server.events()):
        server.send_packet(packet)
    client.close()
    pipe.pump()
    return client.events(), server.events()


@given(packets=packets_strategy, cuts=cuts_strategy)
def test_cut_points_do_not_change_the_events(packets: list[Packet], cuts: list[int]) -> None:
    whole = run_conversation(None, packets)
    cut = run_conversation(cutter(cuts), packets)
    assert cut == whole
    client_events, _ = whole
    assert packets_of(client_events) == packets
    assert client_events[-1] == ConnectionClosed(None, "", clean=True)


@given(packets=packets_strategy, cuts=cuts_strategy)
def test_cut_points_through_get_buffer(packets: list[Packet], cuts: list[int]) -> None:
    sender = TcpMachine(is_client=True)
    sender.start(0.0)
    sender.send_packets(packets)
    data = wire(sender)
    receiver = TcpMachine(is_client=False, zero_copy_threshold=1024)
    receiver.start(0.0)
    receiver.events()
    pos = i = 0
    while pos < len(data):
        buf = receiver.get_buffer(-1)
        n = min(len(buf), len(data) - pos, cuts[i % len(cuts)])
        i += 1
        buf[:n] = data[pos : pos + n]
        pos += n
        receiver.buffer_updated(n, 0.0)
    receiver.receive_data(b"", 0.0)
    events = receiver.events()
    assert packets_of(events) == packets
    assert events[-1] == ConnectionClosed(None, "", clean=True)


@given(chunks=st.lists(st.binary(max_size=200), max_size=10), eof=st.booleans())
def test_arbitrary_bytes_only_give_protocol_errors(chunks: list[bytes], eof: bool) -> None:
    server = TcpMachine(is_client=False, limits=Limits(max_payload=4096, max_ext_header=64))
    server.start(0.0)
    server.events()
    for chunk in chunks:
        server.receive_data(chunk, 0.0)  # never raises
    if eof:
        server.receive_data(b"", 0.0)
    events = server.events()
    for event in events:
        if isinstance(event, ErrorOccurred):
            assert isinstance(event.error, ProtocolError)
    closed = [i for i, e in enumerate(events) if isinstance(e, ConnectionClosed)]
    assert len(closed) <= 1
    if closed:
        assert closed[0] == len(events) - 1
    if eof:
        assert closed


# --- the fast receive path: receive_packets -----------------------------------------------------


def _started(is_client: bool = True) -> TcpMachine:
    machine = TcpMachine(is_client=is_client)
    machine.start(0.0)
    machine.events()
    return machine


def test_receive_packets_returns_packets_without_events() -> None:
    machine = _started()
    wire = Packet(PacketType.REQUEST, message_id=7, payload=b"hi").encode()
    area = machine.get_buffer(-1)
    area[: len(wire)] = wire
    got = machine.receive_packets(len(wire), 2.0)
    assert got is not None
    assert [(p.message_id, p.payload) for p in got] == [(7, b"hi")]
    assert machine.events() == []
    assert machine.receive_packets(0, 3.0) == []


def test_receive_packets_leaves_bad_bytes_as_events_after_the_good_packets() -> None:
    machine = _started()
    wire = Packet(PacketType.ONE_WAY, message_id=1, payload=b"ok").encode() + b"\xee" * 16
    area = machine.get_buffer(-1)
    area[: len(wire)] = wire
    assert machine.receive_packets(len(wire), 1.0) is None
    kinds = [type(e).__name__ for e in machine.events()]
    assert kinds[0] == "PacketReceived"
    assert "ErrorOccurred" in kinds
    assert machine.write_closed


def test_buffer_updated_queues_the_packets_as_events() -> None:
    machine = _started(is_client=False)
    wire = b"".join(Packet(PacketType.ONE_WAY, message_id=i, payload=b"p").encode()
                    for i in (1, 2))
    area = machine.get_buffer(-1)
    area[: len(wire)] = wire
    machine.buffer_updated(len(wire), 1.0)
    assert [e.packet.message_id for e in machine.events()
            if isinstance(e, PacketReceived)] == [1, 2]


def test_queue_message_refuses_after_close() -> None:
    machine = _started()
    machine.close()
    with pytest.raises(TransportConnectionError):
        machine.queue_message(PacketType.ONE_WAY, 1, 0, b"x")
