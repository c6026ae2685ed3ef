#!/usr/bin/env python3
"""Fuzz targets for the WebSocket machines: the server's opening handshake and the frames after it.

Each target feeds bytes to a machine the way a hostile peer could and checks the invariants of
the core:

* nothing but events comes out of ``receive_data``: no exception escapes;
* every error is a :class:`~msgtrans.core.errors.TransportError`, and a machine that ended
  reports exactly one ``ConnectionClosed``, last;
* what a refused request gets back is a well-formed HTTP response (h11 can read it), and an
  accepted one a ``101``;
* memory stays bounded by the limits: an unfinished frame never holds more than one message
  and its header, a cut frame header never more than 14 bytes.

Under pytest the targets run as bounded hypothesis tests (the profile in conftest.py).  With
atheris installed, ``python fuzz/fuzz_websocket.py [corpus...]`` runs them under libFuzzer: the
first input byte picks the target.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import h11
from harness import cut as cut_sizes
from harness import cuts_from, damage
from hypothesis import given
from hypothesis import strategies as st
from targets import Reader

from msgtrans.core.errors import TransportError
from msgtrans.core.events import (
    CloseStarted,
    ConnectionClosed,
    ConnectionEstablished,
    ErrorOccurred,
    Event,
    PacketReceived,
)
from msgtrans.core.machine import MachineState
from msgtrans.core.packet import Limits, Packet
from msgtrans.core.websocket import (
    WebSocketClientMachine,
    WebSocketMachine,
    WebSocketServerMachine,
)

LIMITS = Limits(max_payload=2048, max_ext_header=64)
ALLOWED = (ConnectionEstablished, PacketReceived, CloseStarted, ConnectionClosed, ErrorOccurred)

VALID_REQUEST = (
    b"GET /ws HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: msgtrans.v1\r\n"
    b"\r\n"
)
REQUEST_LINES = VALID_REQUEST.split(b"\r\n")[:-2]


def new_server() -> WebSocketServerMachine:
    return WebSocketServerMachine(path="/ws", limits=LIMITS, ping_interval=None)


def feed(
    machine: WebSocketMachine, chunks: Sequence[bytes], now: float = 0.0, via_buffer: bool = False
) -> list[Event]:
    """Give *machine* the chunks, by ``receive_data`` or, as the drivers do, through
    ``get_buffer`` / ``buffer_updated`` (each buffer poisoned first, so that input parsed from
    stale memory would show)."""
    for chunk in chunks:
        if not chunk:
            continue
        if not via_buffer:
            machine.receive_data(chunk, now)
            continue
        rest = memoryview(chunk)
        while rest:
            buf = machine.get_buffer(-1)
            buf[:] = b"\xaa" * len(buf)
            n = min(len(buf), len(rest))
            buf[:n] = rest[:n]
            buf.release()
            machine.buffer_updated(n, now)
            rest = rest[n:]
    return machine.events()


def check_events(machine: WebSocketMachine, events: list[Event]) -> None:
    assert all(isinstance(e, ALLOWED) for e in events), events
    for event in events:
        if isinstance(event, ErrorOccurred):
            assert isinstance(event.error, TransportError)
        if isinstance(event, ConnectionClosed) and event.error is not None:
            assert isinstance(event.error, TransportError)
    closes = [e for e in events if isinstance(e, ConnectionClosed)]
    assert len(closes) <= 1
    if machine.is_closed:
        assert closes and events[-1] is closes[0]
        assert machine.write_closed


def check_memory(machine: WebSocketMachine) -> None:
    big = machine._big
    assert big is None or len(big) <= machine.max_message + 14
    rbuf = machine._rbuf
    assert rbuf is None or len(rbuf) < 14
    msg = machine._msg
    assert msg is None or len(msg) <= machine.max_message
    area = machine._area
    assert area is None or len(area) <= 256 * 1024
    # An unfinished handshake head: at most h11's 16 KiB and the chunk that went past it.
    assert len(machine._head) <= 16 * 1024 + 1024
    if machine.state is not MachineState.HANDSHAKING:
        assert not machine._head


def check_handshake_answer(server: WebSocketServerMachine, answer: bytes) -> None:
    """A refused request gets a readable HTTP error; an accepted one a 101."""
    if server.state is MachineState.OPEN or answer.startswith(b"HTTP/1.1 101 "):
        # Accepted (then perhaps failed on frames that came with the request).
        assert answer.startswith(b"HTTP/1.1 101 ")
        return
    if not answer:
        return
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(answer)
    response = conn.next_event()
    assert isinstance(response, h11.Response), response
    assert 400 <= response.status_code < 600
    while not isinstance(conn.next_event(), h11.EndOfMessage):
        pass


def cut(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """*data* in pieces of the given sizes, cycling; the rest in one piece."""
    pieces, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        pieces.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        pieces.append(data[pos:])
    return pieces


# --- target 1: the opening handshake -----------------------------------------------------------


def fuzz_server_handshake(data: bytes, sizes: Sequence[int] = ()) -> None:
    """A server given *data* as the client's opening bytes, cut at *sizes*."""
    server = new_server()
    server.start(0.0)
    events = feed(server, cut(data, sizes))
    answer = b"".join(bytes(b) for b in server.data_to_send())
    check_events(server, events)
    check_handshake_answer(server, answer)
    check_memory(server)
    server.receive_data(b"", 1.0)
    check_events(server, events + server.events())


def mutated_requests() -> st.SearchStrategy[bytes]:
    """Requests near the valid one: lines dropped, repeated, replaced, bytes flipped."""
    line = st.one_of(
        st.sampled_from(REQUEST_LINES),
        st.binary(max_size=40),
        st.builds(
            lambda name, value: name + b": " + value,
            st.sampled_from([b"Upgrade", b"Connection", b"Sec-WebSocket-Key", b"Host",
                             b"Sec-WebSocket-Version", b"Sec-WebSocket-Protocol",
                             b"Content-Length", b"Transfer-Encoding", b"Sec-WebSocket-Extensions"]),
            st.one_of(st.binary(max_size=30), st.sampled_from([b"websocket", b"13", b"0", b"5",
                                                              b"chunked", b"Upgrade", b"\xff"])),
        ),
    )
    request = st.builds(
        lambda first, lines, tail: b"\r\n".join([first, *lines]) + b"\r\n\r\n" + tail,
        st.sampled_from([REQUEST_LINES[0], b"GET / HTTP/1.1", b"POST /ws HTTP/1.1",
                         b"GET /ws HTTP/1.0", b"GET /ws?x=1 HTTP/1.1", b"GET  HTTP/1.1"]),
        st.lists(line, max_size=10),
        st.binary(max_size=30),
    )

    def flip(data: bytes, index: int, value: int) -> bytes:
        if not data:
            return data
        index %= len(data)
        return data[:index] + bytes([value]) + data[index + 1 :]

    flipped = st.builds(flip, st.just(VALID_REQUEST), st.integers(0, 10_000), st.integers(0, 255))
    return st.one_of(request, flipped, st.binary(max_size=400))


@given(mutated_requests(), st.lists(st.integers(1, 64), max_size=6))
def test_fuzz_server_handshake(data: bytes, sizes: list[int]) -> None:
    fuzz_server_handshake(data, sizes)


def test_fuzz_server_handshake_valid_request_is_accepted() -> None:
    server = new_server()
    server.start(0.0)
    feed(server, [VALID_REQUEST])
    assert server.state is MachineState.OPEN and server.subprotocol == "msgtrans.v1"


# --- target 2: frames after a valid handshake -------------------------------------------------


def fuzz_server_frames(data: bytes, sizes: Sequence[int] = (), via_buffer: bool = False) -> None:
    """A server that accepted a valid request, then given *data* as frames, cut at *sizes*
    (through get_buffer / buffer_updated if *via_buffer*)."""
    server = new_server()
    server.start(0.0)
    events = feed(server, [VALID_REQUEST])
    assert server.state is MachineState.OPEN
    server.data_to_send()
    events += feed(server, cut(data, sizes), 1.0, via_buffer)
    check_memory(server)
    server.handle_timer(2.0)
    server.receive_data(b"", 3.0)
    events += server.events()
    check_events(server, events)
    assert server.is_closed


def frames() -> st.SearchStrategy[bytes]:
    """Frames as a client would send them, valid or nearly: random opcodes, flags, lengths."""

    def build(b0: int, payload: bytes, masked: bool, key: bytes, length_form: int) -> bytes:
        n = len(payload)
        mask_bit = 0x80 if masked else 0
        if length_form == 0 and n < 126:
            head = bytes([b0, mask_bit | n])
        elif length_form <= 1 and n < 65536:
            head = bytes([b0, mask_bit | 126]) + struct.pack("!H", n)
        else:
            head = bytes([b0, mask_bit | 127]) + struct.pack("!Q", n)
        if not masked:
            return head + payload
        body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return head + key + body

    packet = st.builds(
        lambda payload, mid: Packet(message_id=mid, payload=payload).encode(),
        st.binary(max_size=300), st.integers(0, 2**32 - 1),
    )
    payload = st.one_of(packet, st.binary(max_size=200), st.just(b"\x03\xe8bye"))
    b0 = st.one_of(
        st.sampled_from([0x82, 0x02, 0x80, 0x00, 0x81, 0x01, 0x88, 0x89, 0x8A]),
        st.integers(0, 255),
    )
    one = st.builds(build, b0, payload, st.booleans(), st.binary(min_size=4,
                    max_size=4), st.integers(0, 2))
    return st.builds(b"".join, st.lists(one, max_size=8))


@given(
    st.one_of(frames(), st.binary(max_size=500)),
    st.lists(st.integers(1, 300), max_size=6),
    st.booleans(),
)
def test_fuzz_server_frames(data: bytes, sizes: list[int], via_buffer: bool) -> None:
    fuzz_server_frames(data, sizes, via_buffer)


# --- target 3: the client side of the handshake and its frames --------------------------------


def fuzz_client(data: bytes, sizes: Sequence[int] = (), via_buffer: bool = False) -> None:
    """A client that sent its request, given *data* as the server's answer (through
    get_buffer / buffer_updated if *via_buffer*)."""
    client = WebSocketClientMachine("example.com", limits=LIMITS, ping_interval=None)
    client.start(0.0)
    client.data_to_send()
    events = feed(client, cut(data, sizes), via_buffer=via_buffer)
    check_memory(client)
    client.receive_data(b"", 1.0)
    events += client.events()
    check_events(client, events)
    assert client.is_closed


@given(
    st.one_of(
        st.builds(lambda a, b: a + b, st.sampled_from([
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: x\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ]), st.binary(max_size=100)),
        st.binary(max_size=400),
    ),
    st.lists(st.integers(1, 64), max_size=6),
    st.booleans(),
)
def test_fuzz_client(data: bytes, sizes: list[int], via_buffer: bool) -> None:
    fuzz_client(data, sizes, via_buffer)


# --- target 4: real handshakes, mutated --------------------------------------------------------

HEADER_LINES = (
    b"Upgrade: websocket", b"Connection: Upgrade", b"Connection: keep-alive, Upgrade",
    b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8", b"Sec-WebSocket-Key: AAAA",
    b"Sec-WebSocket-Protocol: msgtrans.v1", b"Sec-WebSocket-Protocol: chat, msgtrans.v1",
    b"Sec-WebSocket-Extensions: permessage-deflate", b"Sec-WebSocket-Accept: x",
    b"Content-Length: 5", b"Transfer-Encoding: chunked", b"Host: a", b"Host:", b": x",
    b"X-Long: " + b"a" * 300, b"Expect: 100-continue",
)


def edit_head(reader: Reader, message: bytes) -> bytes:
    """An HTTP head with lines dropped, repeated or swapped for a known header line (and the
    bytes after it kept), then bytes damaged: what a confused or hostile peer sends."""
    head, sep, tail = message.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    for _ in range(reader.uint(1) % 4):
        at = reader.below(len(lines) + 1)
        op = reader.uint(1) % 4
        if op == 0 and len(lines) > 1:
            del lines[min(at, len(lines) - 1)]
        elif op == 1 and lines:
            lines.insert(at, lines[reader.below(len(lines))])
        else:
            lines.insert(at, HEADER_LINES[reader.below(len(HEADER_LINES))])
    return damage(reader, b"\r\n".join(lines) + sep + tail)


def real_handshake(packets: int) -> tuple[WebSocketClientMachine, bytes, bytes]:
    """A fresh client, its real request, and a real server's answer to it (101, then
    *packets* binary frames)."""
    client = WebSocketClientMachine("example.com", "/ws", subprotocols=("msgtrans.v1",),
                                    limits=LIMITS, ping_interval=None)
    client.start(0.0)
    request = b"".join(bytes(b) for b in client.data_to_send())
    server = new_server()
    server.start(0.0)
    server.receive_data(request, 0.0)
    assert server.state is MachineState.OPEN, server.events()
    for i in range(packets):
        server.send_packet(Packet(message_id=i, payload=b"p" * (i * 37)))
    answer = b"".join(bytes(b) for b in server.data_to_send())
    return client, request, answer


def fuzz_real_handshakes(data: bytes) -> None:
    """A real request mutated at a server, or a real answer mutated at the client that sent
    the request; unmutated, the handshake completes and the packets arrive."""
    reader = Reader(data)
    flags = reader.uint(1)
    at_server, mutated, via_buffer = bool(flags & 1), bool(flags & 2), bool(flags & 4)
    count = reader.uint(1) % 4
    client, request, answer = real_handshake(count)
    body = (edit_head(reader, request if at_server else answer) if mutated
            else request if at_server else answer)
    sizes = cuts_from(reader, 200)
    if at_server:
        server = new_server()
        server.start(0.0)
        events = feed(server, cut_sizes(body, sizes), via_buffer=via_buffer)
        reply = b"".join(bytes(b) for b in server.data_to_send())
        check_events(server, events)
        check_handshake_answer(server, reply)
        check_memory(server)
        if not mutated:
            assert server.state is MachineState.OPEN
        server.receive_data(b"", 1.0)
        check_events(server, events + server.events())
        return
    events = feed(client, cut_sizes(body, sizes), via_buffer=via_buffer)
    check_memory(client)
    if not mutated:
        assert client.state is MachineState.OPEN
        assert sum(isinstance(e, PacketReceived) for e in events) == count, events
    client.receive_data(b"", 1.0)
    client.handle_timer(100.0)
    events += client.events()
    check_events(client, events)
    assert client.is_closed


@given(st.binary(max_size=300))
def test_fuzz_real_handshakes(data: bytes) -> None:
    fuzz_real_handshakes(data)


@given(st.integers(0, 255), st.integers(0, 3))
def test_real_handshakes_unmutated_complete(flags: int, count: int) -> None:
    fuzz_real_handshakes(bytes([flags & ~2, count]))


# --- atheris -----------------------------------------------------------------------------------

TARGETS = (fuzz_server_handshake, fuzz_server_frames, fuzz_client, fuzz_real_handshakes)


def one_input(data: bytes) -> None:
    """libFuzzer entry: the first byte picks the target (and, for the frame targets, whether
    input goes through get_buffer), the rest is its input."""
    if not data:
        return
    pick, via_buffer = data[0] % len(TARGETS), bool(data[0] & 0x80)
    if pick == 0:
        fuzz_server_handshake(data[1:])
    elif pick == 1:
        fuzz_server_frames(data[1:], (), via_buffer)
    elif pick == 2:
        fuzz_client(data[1:], (), via_buffer)
    else:
        fuzz_real_handshakes(data[1:])


if __name__ == "__main__":
    from targets import main

    main(one_input, [test_fuzz_server_handshake, test_fuzz_server_frames, test_fuzz_client,
                     test_fuzz_real_handshakes],
         ("msgtrans.core.websocket", "msgtrans.core.framing", "msgtrans.core.packet", "h11"))
