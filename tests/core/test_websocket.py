"""The WebSocket machines: handshake, packets as binary messages, control frames, close, limits.

Everything runs in memory (StreamPipe, or a raw wsproto / websockets peer driven by hand) with
``now`` advanced by hand: no sockets, no clock.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import h11
import pytest
import wsproto.events as wse
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol
from websockets.uri import parse_uri
from wsproto import ConnectionType, WSConnection

from msgtrans.core import websocket as ws
from msgtrans.core.buffers import BufferPool, PoolBuffer, receive_pool, release_view
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
from msgtrans.core.framing import ZeroCopyCounters
from msgtrans.core.machine import MachineState
from msgtrans.core.memory import StreamPipe
from msgtrans.core.packet import Compression, Limits, Packet, PacketFlags, PacketType
from msgtrans.core.websocket import (
    DEFAULT_SUBPROTOCOL,
    WebSocketClientMachine,
    WebSocketMachine,
    WebSocketServerMachine,
)

NO_KEEPALIVE: dict[str, Any] = {"ping_interval": None}


# --- helpers -----------------------------------------------------------------------------------


def names(events: Sequence[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def out(machine: WebSocketMachine) -> bytes:
    return b"".join(bytes(b) for b in machine.data_to_send())


def opened(
    client_kw: dict[str, Any] | None = None,
    server_kw: dict[str, Any] | None = None,
    chunker: Callable[[bytes], list[bytes]] | None = None,
) -> tuple[WebSocketClientMachine, WebSocketServerMachine, StreamPipe]:
    """A client and a server machine with the handshake done and its events drained."""
    client = WebSocketClientMachine("example.com", **{**NO_KEEPALIVE, **(client_kw or {})})
    server = WebSocketServerMachine(**{**NO_KEEPALIVE, **(server_kw or {})})
    pipe = StreamPipe(client, server, chunker)
    pipe.start(0.0)
    assert names(client.events()) == ["ConnectionEstablished"]
    assert names(server.events()) == ["ConnectionEstablished"]
    return client, server, pipe


def http_response(data: bytes) -> tuple[h11.Response, bytes]:
    """Parse an HTTP/1.1 response the way an HTTP client would."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "example.com")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    response = conn.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        else:
            assert isinstance(event, h11.EndOfMessage)
            break
    return response, body


def header(response: h11.Response, name: bytes) -> bytes | None:
    return next((v for n, v in response.headers if n == name), None)


class RawClient:
    """A wsproto client talking to a server machine: sends what the tests want, frame by frame."""

    def __init__(
        self,
        server: WebSocketServerMachine,
        subprotocols: Sequence[str] = (DEFAULT_SUBPROTOCOL,),
        target: str = "/",
    ) -> None:
        self.server = server
        self.ws = WSConnection(ConnectionType.CLIENT)
        server.start(0.0)
        self.send(wse.Request(host="example.com", target=target, subprotocols=list(subprotocols)))
        self.events = self.receive()
        self.accepted = any(isinstance(e, wse.AcceptConnection) for e in self.events)

    def send(self, event: wse.Event, now: float = 0.0) -> None:
        self.raw(self.ws.send(event), now)

    def raw(self, data: bytes, now: float = 0.0) -> None:
        self.server.receive_data(data, now)

    def receive(self) -> list[wse.Event]:
        self.ws.receive_data(out(self.server))
        return list(self.ws.events())


class RawServer:
    """A wsproto server talking to a client machine."""

    def __init__(self, client: WebSocketClientMachine, subprotocol: str | None = "msgtrans.v1"):
        self.client = client
        self.ws = WSConnection(ConnectionType.SERVER)
        client.start(0.0)
        self.ws.receive_data(out(client))
        request = next(e for e in self.ws.events() if isinstance(e, wse.Request))
        self.request = request
        client.receive_data(self.ws.send(wse.AcceptConnection(subprotocol=subprotocol)), 0.0)

    def send(self, event: wse.Event, now: float = 0.0) -> None:
        self.client.receive_data(self.ws.send(event), now)

    def receive(self) -> list[wse.Event]:
        self.ws.receive_data(out(self.client))
        return list(self.ws.events())


def frame(
    b0: int, payload: bytes = b"", *, masked: bool = True, length: bytes | None = None
) -> bytes:
    """A raw frame: *b0* is FIN|RSV|opcode; a client frame is masked (with a zero key)."""
    mask_bit = 0x80 if masked else 0
    if length is None:
        n = len(payload)
        if n < 126:
            length = bytes([mask_bit | n])
        elif n < 65536:
            length = bytes([mask_bit | 126]) + struct.pack("!H", n)
        else:
            length = bytes([mask_bit | 127]) + struct.pack("!Q", n)
    return bytes([b0]) + length + (b"\0\0\0\0" if masked else b"") + payload


def packet_bytes(payload: bytes = b"hi", message_id: int = 1) -> bytes:
    return Packet(message_id=message_id, payload=payload).encode()


def closed(events: Sequence[Event]) -> ConnectionClosed:
    last = events[-1]
    assert isinstance(last, ConnectionClosed)
    return last


def error_of(events: Sequence[Event]) -> TransportError:
    errors = [e.error for e in events if isinstance(e, ErrorOccurred)]
    assert len(errors) == 1, events
    return errors[0]


# --- handshake ---------------------------------------------------------------------------------


def test_handshake_echoes_the_subprotocol() -> None:
    client = WebSocketClientMachine(
        "example.com:8080", "/chat?room=1", extra_headers=[("Authorization", "Bearer x")],
        **NO_KEEPALIVE,
    )
    server = WebSocketServerMachine(path="/chat", extra_headers=[(b"X-Server", b"msgtrans")],
                                    **NO_KEEPALIVE)
    pipe = StreamPipe(client, server)
    assert client.state is MachineState.IDLE
    pipe.start(1.0)
    (c_est,) = client.events()
    (s_est,) = server.events()
    assert isinstance(c_est, ConnectionEstablished) and isinstance(s_est, ConnectionEstablished)
    assert c_est.protocol is Protocol.WEBSOCKET and not c_est.tls
    assert c_est.subprotocol == s_est.subprotocol == "msgtrans.v1"
    assert client.subprotocol == server.subprotocol == "msgtrans.v1"
    assert c_est.path == s_est.path == "/chat?room=1"
    assert ("x-server", "msgtrans") in c_est.headers
    assert ("host", "example.com:8080") in s_est.headers
    assert ("authorization", "Bearer x") in s_est.headers
    assert client.state is server.state is MachineState.OPEN
    assert client.next_deadline() is None and server.next_deadline() is None


def test_client_offering_no_subprotocol_is_accepted() -> None:
    client, server, _ = opened({"subprotocols": ()})
    assert client.subprotocol is None and server.subprotocol is None


def test_client_offering_other_subprotocols_is_accepted_without_one() -> None:
    client, server, _ = opened({"subprotocols": ("chat",)})
    assert client.subprotocol is None and server.subprotocol is None


def test_server_prefers_its_own_order() -> None:
    client, server, _ = opened(
        {"subprotocols": ("b", "msgtrans.v1")}, {"subprotocols": ("msgtrans.v1", "b")}
    )
    assert client.subprotocol == server.subprotocol == "msgtrans.v1"


def test_wrong_path_is_refused_with_404() -> None:
    client = WebSocketClientMachine("example.com", "/other", **NO_KEEPALIVE)
    server = WebSocketServerMachine(path="/ws", **NO_KEEPALIVE)
    server.start(0.0)
    client.start(0.0)
    server.receive_data(out(client), 0.0)
    reply = out(server)
    response, body = http_response(reply)
    assert response.status_code == 404 and body == b"Not found\n"
    assert server.write_closed and server.is_closed
    s_events = server.events()
    assert names(s_events) == ["ErrorOccurred", "ConnectionClosed"]
    error = error_of(s_events)
    assert isinstance(error, TransportConnectionError)
    assert error.error_code == "connection.handshake" and not error.retryable
    client.receive_data(reply, 0.0)
    c_events = client.events()
    c_error = error_of(c_events)
    assert c_error.error_code == "connection.handshake" and not c_error.retryable
    assert "404" in c_error.reason
    assert not closed(c_events).clean and client.write_closed


def test_any_path_and_query_are_served() -> None:
    _client, server, _ = opened({"target": "/x/y?z=1"}, {"path": None})
    assert server.state is MachineState.OPEN
    _client, server, _ = opened({"target": "/?z=1"})
    assert server.state is MachineState.OPEN


def test_plain_http_request_gets_426_and_the_connection_closes() -> None:
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    server.start(0.0)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n", 0.0)
    response, body = http_response(out(server))
    assert response.status_code == 426
    assert header(response, b"upgrade") == b"websocket"
    assert header(response, b"connection") == b"close"
    assert b"WebSocket" in body
    events = server.events()
    assert names(events) == ["ErrorOccurred", "ConnectionClosed"]
    error = error_of(events)
    assert isinstance(error, ProtocolError) and error.error_code == "protocol.websocket"
    assert not closed(events).clean
    assert server.write_closed and server.state is MachineState.CLOSED
    server.receive_data(b"more", 0.0)  # ignored after the end
    assert server.events() == [] and out(server) == b""


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Version: 13\r\n\r\n", 400),  # no key
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", 426),
        (b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
         b"Content-Length: 3\r\n\r\nabc", 400),  # a body
        (b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
         b"Sec-WebSocket-Protocol: \xff\r\n\r\n", 400),  # not ASCII
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000, 431),  # a head without end
    ],
)
def test_bad_upgrade_requests_get_an_http_error(request_bytes: bytes, status: int) -> None:
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    server.receive_data(request_bytes, 0.0)  # data before start() starts a server
    response, _ = http_response(out(server))
    assert response.status_code == status
    if status == 426:
        assert header(response, b"sec-websocket-version") == b"13"
    events = server.events()
    assert error_of(events).error_code == "protocol.websocket"
    assert server.write_closed and server.is_closed


def test_request_in_pieces_and_frames_sent_before_the_answer() -> None:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    server.start(0.0)
    client.start(0.0)
    request = out(client)
    for i in range(len(request)):
        server.receive_data(request[i : i + 1], 0.0)
        if i < len(request) - 1:
            assert server.state is MachineState.HANDSHAKING
    assert server.state is MachineState.OPEN
    # A client that does not wait for the 101: its first frames come with the request.
    server2 = WebSocketServerMachine(**NO_KEEPALIVE)
    server2.start(0.0)
    eager = frame(0x82, packet_bytes(b"eager")) + frame(0x82, packet_bytes(b"x" * 300))[:50]
    server2.receive_data(request + eager, 0.0)
    events = server2.events()
    assert names(events) == ["ConnectionEstablished", "PacketReceived"]
    assert events[1].packet.payload == b"eager"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "error_code", "retryable", "delay"),
    [
        (403, "connection.handshake", False, None),
        (500, "connection.handshake", True, 7.0),
        (503, "connection.refused_by_server", True, 7.0),
    ],
)
def test_client_refused_by_the_server(
    status: int, error_code: str, retryable: bool, delay: float | None
) -> None:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    client.send_packet(Packet(payload=b"queued"))
    client.start(0.0)
    out(client)
    client.receive_data(
        f"HTTP/1.1 {status} Nope\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nnope".encode(),
        0.0,
    )
    events = client.events()
    error = error_of(events)
    assert isinstance(error, TransportConnectionError)
    assert error.error_code == error_code and error.retryable is retryable
    assert error.retry_delay() == delay
    assert client.write_closed and client.is_closed and out(client) == b""


@pytest.mark.parametrize(
    "response",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: wrong\r\n\r\n",
    ],
)
def test_client_given_an_invalid_answer(response: bytes) -> None:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    client.start(0.0)
    out(client)
    client.receive_data(response, 0.0)
    error = error_of(client.events())
    assert isinstance(error, ProtocolError) and error.error_code == "protocol.websocket"


def test_client_rejects_a_subprotocol_it_did_not_offer() -> None:
    client = WebSocketClientMachine("example.com", subprotocols=("a",), **NO_KEEPALIVE)
    ws = WSConnection(ConnectionType.SERVER)
    client.start(0.0)
    ws.receive_data(out(client))
    list(ws.events())
    ws.handshake._initiating_request.subprotocols.append("b")  # type: ignore[union-attr]
    client.receive_data(ws.send(wse.AcceptConnection(subprotocol="b")), 0.0)
    assert error_of(client.events()).error_code == "protocol.websocket"


def test_handshake_timeout_on_both_sides() -> None:
    client = WebSocketClientMachine("example.com", handshake_timeout=5, **NO_KEEPALIVE)
    server = WebSocketServerMachine(handshake_timeout=3, **NO_KEEPALIVE)
    client.start(10.0)
    server.start(10.0)
    assert client.next_deadline() == 15.0 and server.next_deadline() == 13.0
    server.handle_timer(12.9)
    assert server.events() == []
    server.handle_timer(13.0)
    client.handle_timer(15.0)
    for machine in (client, server):
        events = machine.events()
        error = error_of(events)
        assert isinstance(error, TransportTimeoutError) and error.error_code == "timeout.handshake"
        assert machine.write_closed and machine.next_deadline() is None


def test_eof_during_the_handshake() -> None:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    client.start(0.0)
    client.receive_data(b"", 0.0)
    events = client.events()
    assert error_of(events).error_code == "connection.reset"
    assert closed(events).code is None
    client.receive_data(b"", 0.0)  # a second EOF changes nothing
    assert client.events() == []


def test_close_before_the_handshake_abandons_it() -> None:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    client.send_packet(Packet(payload=b"never sent"))
    client.start(0.0)
    client.close()
    events = client.events()
    assert names(events) == ["CloseStarted", "ConnectionClosed"]
    end = closed(events)
    assert not end.clean and end.error is not None
    assert end.error.error_code == "connection.aborted"
    assert client.write_closed
    with pytest.raises(TransportConnectionError) as info:
        client.send_packet(Packet())
    assert info.value.error_code == "connection.closed"
    client.receive_data(b"HTTP/1.1 101 ...\r\n\r\n", 1.0)  # ignored
    assert client.events() == []


def test_start_twice_and_client_data_before_start_do_nothing() -> None:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    client.receive_data(b"early", 0.0)
    assert client.state is MachineState.IDLE and out(client) == b""
    client.start(0.0)
    first = out(client)
    client.start(1.0)
    assert first.startswith(b"GET / HTTP/1.1\r\n") and out(client) == b""


# --- packets -----------------------------------------------------------------------------------


def test_thousands_of_packets_both_ways() -> None:
    client, server, pipe = opened()
    sent_c = [
        Packet(PacketType.REQUEST, i + 1, i % 256, f"request {i}".encode(),
               ext_header=b"r" * (i % 3))
        for i in range(3000)
    ]
    client.send_packets(sent_c)
    server.send_packets(
        Packet(PacketType.RESPONSE, i + 1, 7, f"response {i}".encode(), flags=PacketFlags(i % 8))
        for i in range(3000)
    )
    pipe.pump(1.0)
    got_s = [e.packet for e in server.events() if isinstance(e, PacketReceived)]
    got_c = [e.packet for e in client.events() if isinstance(e, PacketReceived)]
    assert got_s == sent_c
    assert [p.message_id for p in got_c] == list(range(1, 3001))
    assert all(p.packet_type is PacketType.RESPONSE for p in got_c)
    assert got_c[5].flags == PacketFlags(5) and got_c[5].payload == b"response 5"


@pytest.mark.parametrize("size", [0, 1, 109, 110, 65519, 65520, 70000, 1 << 20])
def test_payload_sizes_and_zero_copy(size: int) -> None:
    # 109/110 and 65519/65520: the 7-bit, 16-bit and 64-bit frame length boundaries.
    client, server, pipe = opened({"zero_copy_threshold": 1000}, {"zero_copy_threshold": 1000})
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    client.send_packet(Packet(payload=payload, message_id=size % 1000))
    server.send_packet(Packet(payload=payload))
    pipe.pump(0.0)
    for machine in (client, server):
        (event,) = machine.events()
        assert isinstance(event, PacketReceived)
        got = event.packet.payload
        assert bytes(got) == payload
        assert isinstance(got, memoryview if size >= 1000 else bytes)
        if isinstance(got, memoryview):
            assert got.readonly


def test_large_packets_cut_anywhere() -> None:
    chunk = 777
    client, server, pipe = opened(
        chunker=lambda data: [data[i : i + chunk] for i in range(0, len(data), chunk)]
    )
    payloads = [b"a" * 100_000, b"b" * 10, b"c" * 65536, b""]
    for p in payloads:
        client.send_packet(Packet(payload=p))
        server.send_packet(Packet(payload=p))
    pipe.pump(0.0)
    for machine in (client, server):
        got = [bytes(e.packet.payload) for e in machine.events() if isinstance(e, PacketReceived)]
        assert got == payloads


def test_compressed_packets_and_ext_headers() -> None:
    client, server, pipe = opened()
    packet = Packet(payload=b"squeeze me " * 100, compression=Compression.ZLIB, ext_header=b"rt")
    client.send_packet(packet)
    server.send_packet(packet)
    big = Packet(payload=b"q" * 40_000, compression=Compression.ZLIB)
    server.send_packet(big)
    pipe.pump(0.0)
    assert [e.packet for e in server.events()] == [packet]  # type: ignore[attr-defined]
    assert [e.packet for e in client.events()] == [packet, big]  # type: ignore[attr-defined]


def test_server_hands_large_payloads_by_reference() -> None:
    _client, server, _ = opened()
    payload = b"p" * 100_000
    server.send_packet(Packet(payload=payload))
    server.send_packet(Packet(payload=b"small"))
    parts = server.data_to_send()
    assert any(part is payload for part in parts)
    assert server.data_to_send() == []


def test_packets_sent_before_the_handshake_leave_on_establishment() -> None:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    client.send_packets([Packet(payload=b"c1"), Packet(payload=b"c2")])
    server.send_packets([Packet(payload=b"s1")])
    pipe = StreamPipe(client, server)
    pipe.start(0.0)
    assert [bytes(e.packet.payload) for e in server.events()[1:]] == [b"c1", b"c2"]  # type: ignore[attr-defined]
    assert [bytes(e.packet.payload) for e in client.events()[1:]] == [b"s1"]  # type: ignore[attr-defined]


def test_sending_too_large_a_payload_is_refused() -> None:
    limits = Limits(max_payload=100)
    client = WebSocketClientMachine("example.com", limits=limits, **NO_KEEPALIVE)
    with pytest.raises(ResourceError) as info:
        client.send_packet(Packet(payload=b"x" * 101))  # before the handshake
    assert info.value.error_code == "resource.payload_too_large"
    client, server, _ = opened({"limits": limits}, {"limits": limits})
    with pytest.raises(ResourceError):
        server.send_packet(Packet(payload=b"x" * 101))
    with pytest.raises(ResourceError):
        server.send_packets([Packet(payload=b"ok"), Packet(payload=b"x" * 101)])
    # The packet before the refused one stays queued.
    assert out(server).endswith(b"ok")


# --- fragments, limits, text ------------------------------------------------------------------


def test_fragmented_messages_are_assembled() -> None:
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    raw = RawClient(server)
    assert raw.accepted
    server.events()
    data = packet_bytes(b"0123456789" * 50, message_id=9)
    pieces = [data[:5], data[5:200], data[200:201], data[201:]]
    for i, piece in enumerate(pieces):
        raw.send(wse.Message(data=piece, message_finished=i == len(pieces) - 1))
        if i == 1:
            raw.send(wse.Ping(payload=b"mid"))  # control frames may come between fragments
    (event,) = server.events()
    assert isinstance(event, PacketReceived) and event.packet.message_id == 9
    assert event.packet.payload == b"0123456789" * 50
    assert [type(e) for e in raw.receive()] == [wse.Pong]
    # The next message starts afresh.
    raw.send(wse.Message(data=packet_bytes(b"next")))
    assert server.events()[0].packet.payload == b"next"  # type: ignore[attr-defined]


def test_message_over_the_limit_closes_with_1009() -> None:
    limits = Limits(max_payload=1000, max_ext_header=0)
    # In one frame: refused from the frame header, before the payload arrives.
    server = WebSocketServerMachine(limits=limits, **NO_KEEPALIVE)
    raw = RawClient(server)
    server.events()
    assert server.max_message == 1016
    raw.raw(frame(0x82, b"\0" * 1017)[:20])
    events = server.events()
    error = error_of(events)
    assert isinstance(error, ProtocolError) and error.error_code == "protocol.frame_too_large"
    assert closed(events).code == 1009
    assert [e.code for e in raw.receive() if isinstance(e, wse.CloseConnection)] == [1009]
    # In fragments: refused when the total passes the limit.
    server = WebSocketServerMachine(limits=limits, **NO_KEEPALIVE)
    raw = RawClient(server)
    server.events()
    raw.send(wse.Message(data=b"\0" * 1000, message_finished=False))
    assert server.events() == []
    raw.send(wse.Message(data=b"\0" * 17, message_finished=True))
    assert closed(server.events()).code == 1009
    # Exactly at the limit is fine.
    server = WebSocketServerMachine(limits=limits, **NO_KEEPALIVE)
    raw = RawClient(server)
    server.events()
    raw.send(wse.Message(data=packet_bytes(b"\0" * 1000)))
    assert names(server.events()) == ["PacketReceived"]


def test_text_messages_are_ignored_by_setting() -> None:
    server = WebSocketServerMachine(text_policy="ignore", **NO_KEEPALIVE)
    raw = RawClient(server)
    server.events()
    raw.send(wse.Message(data="hello"))
    raw.send(wse.Message(data="in ", message_finished=False))
    raw.send(wse.Message(data="pieces", message_finished=True))
    raw.send(wse.Message(data=packet_bytes(b"after")))
    events = server.events()
    assert names(events) == ["PacketReceived"]
    assert server.state is MachineState.OPEN


def test_invalid_utf8_text_still_fails() -> None:
    """Ignoring text messages does not mean accepting invalid ones."""
    server = WebSocketServerMachine(text_policy="ignore", **NO_KEEPALIVE)
    RawClient(server)
    server.events()
    server.receive_data(frame(0x81, b"\xff\xfe"), 0.0)
    events = server.events()
    assert closed(events).code == 1007
    assert error_of(events).error_code == "protocol.websocket"


def test_text_messages_close_with_1003_by_default() -> None:
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    raw = RawClient(server)
    server.events()
    raw.send(wse.Message(data="hello"))
    events = server.events()
    error = error_of(events)
    assert isinstance(error, ProtocolError) and error.error_code == "protocol.text_frame"
    assert closed(events).code == 1003
    assert [e.code for e in raw.receive() if isinstance(e, wse.CloseConnection)] == [1003]


@pytest.mark.parametrize(
    ("payload", "code", "error_code"),
    [
        (b"short", 1007, "protocol.bad_length"),
        (packet_bytes(b"abc")[:-1], 1007, "protocol.bad_length"),
        (b"\x02" + packet_bytes(b"abc")[1:], 1007, "protocol.bad_version"),
        (Packet(payload=b"x" * 2000).encode(), 1009, "protocol.frame_too_large"),
        (bytes.fromhex("01 02 00 00 00000001 0000 00000004 0000") + b"junk", 1007,
         "protocol.decompression"),
    ],
)
def test_a_message_that_is_not_a_packet(payload: bytes, code: int, error_code: str) -> None:
    limits = Limits(max_payload=1000)
    for fragmented in (False, True):
        server = WebSocketServerMachine(limits=limits, **NO_KEEPALIVE)
        raw = RawClient(server)
        server.events()
        if fragmented:
            raw.send(wse.Message(data=payload[:3], message_finished=False))
            raw.send(wse.Message(data=payload[3:]))
        else:
            raw.send(wse.Message(data=payload))
        events = server.events()
        assert error_of(events).error_code == error_code
        assert closed(events).code == code


# --- control frames and keepalive --------------------------------------------------------------


def test_pings_are_answered() -> None:
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    raw = RawClient(server)
    server.events()
    raw.send(wse.Ping(payload=b"are you there"))
    assert server.events() == []
    assert raw.receive() == [wse.Pong(payload=b"are you there")]
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    raw_server = RawServer(client)
    client.events()
    raw_server.send(wse.Ping(payload=b"x"))
    raw_server.send(wse.Pong(payload=b"unsolicited"))  # ignored
    assert client.events() == []
    assert raw_server.receive() == [wse.Pong(payload=b"x")]


def test_keepalive_ping_and_pong() -> None:
    client, server, pipe = opened(
        {"ping_interval": 5.0, "ping_timeout": 2.0}, {"ping_interval": 100.0}
    )
    assert client.next_deadline() == 5.0
    client.handle_timer(4.0)
    assert out(client) == b""
    client.handle_timer(5.0)
    assert client.next_deadline() == 7.0  # the pong deadline
    pipe.pump(5.5)  # the ping goes, the pong comes back
    assert client.next_deadline() == 10.5
    client.handle_timer(7.0)
    assert client.state is MachineState.OPEN
    # Any data counts: a packet received at 9 pushes the next ping to 14.
    server.send_packet(Packet(payload=b"alive"))
    pipe.pump(9.0)
    assert client.next_deadline() == 14.0
    assert names(client.events()) == ["PacketReceived"]
    assert server.events() == []  # pings never surface


def test_keepalive_pong_timeout_closes_with_1011() -> None:
    client, server, _pipe = opened({"ping_interval": 5.0, "ping_timeout": 2.0})
    client.handle_timer(5.0)
    ping = out(client)
    assert ping  # lost: the server never sees it
    client.handle_timer(6.9)
    assert client.state is MachineState.OPEN
    client.handle_timer(7.0)
    events = client.events()
    error = error_of(events)
    assert isinstance(error, TransportTimeoutError) and error.error_code == "timeout.keepalive"
    assert closed(events).code == 1011
    assert client.write_closed and client.next_deadline() is None
    server.receive_data(out(client), 7.0)
    s_events = server.events()
    assert names(s_events) == ["CloseStarted", "ErrorOccurred", "ConnectionClosed"]
    assert error_of(s_events).error_code == "connection.failed"


def test_keepalive_without_pong_timeout_keeps_pinging() -> None:
    client, _, _ = opened({"ping_interval": 5.0, "ping_timeout": None})
    client.handle_timer(5.0)
    assert out(client)
    assert client.next_deadline() == 10.0
    client.handle_timer(10.0)
    assert out(client) and client.state is MachineState.OPEN


# --- closing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["client", "server"])
def test_close_handshake(closer: str) -> None:
    client, server, pipe = opened()
    a, b = (client, server) if closer == "client" else (server, client)
    b.send_packet(Packet(payload=b"in flight"))
    a.close(1001, "going away")
    assert a.state is MachineState.CLOSING
    assert a.events() == [CloseStarted(1001, "going away", by_peer=False)]
    with pytest.raises(TransportConnectionError):
        a.send_packet(Packet())
    a.close()  # closing twice does nothing
    pipe.pump(1.0)
    a_events = a.events()
    assert names(a_events) == ["PacketReceived", "ConnectionClosed"]  # delivered while closing
    assert a_events[-1] == ConnectionClosed(1001, "going away", clean=True)
    assert b.events() == [
        CloseStarted(1001, "going away", by_peer=True),
        ConnectionClosed(1001, "going away", clean=True),
    ]
    assert a.write_closed and b.write_closed and a.is_closed and b.is_closed
    assert a.next_deadline() is None and b.next_deadline() is None


def test_simultaneous_close() -> None:
    client, server, pipe = opened()
    client.close()
    server.close(1000, "bye")
    pipe.pump(0.0)
    assert closed(client.events()) == ConnectionClosed(1000, "bye", clean=True)
    assert closed(server.events()) == ConnectionClosed(1000, "", clean=True)


def test_close_without_code_is_answered_and_clean() -> None:
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    raw = RawClient(server)
    server.events()
    raw.raw(frame(0x88))
    events = server.events()
    assert events[-1] == ConnectionClosed(1005, "", clean=True)
    assert raw.receive() == [wse.CloseConnection(code=1005, reason="")]
    # A client whose Close is answered without a code reports the code it sent.
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    RawServer(client)
    client.events()
    client.close(4001)
    client.receive_data(frame(0x88, masked=False), 0.0)
    assert closed(client.events()) == ConnectionClosed(4001, "", clean=True)


def test_peer_closing_with_an_error_code() -> None:
    client, server, pipe = opened()
    server.close(1011, "internal")
    pipe.pump(0.0)
    events = client.events()
    assert names(events) == ["CloseStarted", "ErrorOccurred", "ConnectionClosed"]
    end = closed(events)
    assert end.code == 1011 and not end.clean
    assert isinstance(end.error, TransportConnectionError) and end.error.retryable
    assert closed(server.events()).clean  # our own close was answered


def test_close_timeout() -> None:
    client, _server, _ = opened({"close_timeout": 4.0})
    client.close()
    assert client.next_deadline() == 0.0  # asks for a timer call to arm the deadline
    client.handle_timer(10.0)
    assert client.next_deadline() == 14.0
    client.handle_timer(13.9)
    assert client.state is MachineState.CLOSING
    client.handle_timer(14.0)
    events = client.events()
    error = error_of(events)
    assert isinstance(error, TransportTimeoutError) and error.error_code == "timeout.close"
    assert closed(events).code == 1000 and client.write_closed


def test_eof_without_close_is_1006() -> None:
    _client, server, _ = opened()
    server.receive_data(frame(0x82, packet_bytes())[:5], 0.0)  # half a frame, then EOF
    server.receive_data(b"", 1.0)
    events = server.events()
    error = error_of(events)
    assert isinstance(error, TransportConnectionError) and error.error_code == "connection.reset"
    assert closed(events).code == 1006 and not closed(events).clean
    assert server.write_closed


def test_connection_lost() -> None:
    client, _, _ = opened()
    client.connection_lost(1.0)
    assert error_of(client.events()).error_code == "connection.reset"
    client.connection_lost(2.0)
    assert client.events() == []


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_close_codes_that_may_not_be_sent(code: int) -> None:
    client, _, _ = opened()
    with pytest.raises(ConfigurationError):
        client.close(code)


def test_close_reason_is_cut_to_fit_a_control_frame() -> None:
    client, server, pipe = opened()
    client.close(1000, "é" * 100)  # 200 bytes of UTF-8
    pipe.pump(0.0)
    reason = closed(server.events()).reason
    assert reason == "é" * 61  # 122 bytes: the 123rd would split a character


@pytest.mark.parametrize(
    ("code", "error_code", "retryable"),
    [
        (1002, "protocol.websocket", False),
        (1009, "protocol.frame_too_large", False),
        (1013, "connection.refused_by_server", True),
        (4000, "connection.closed", False),
    ],
)
def test_peer_close_codes_map_to_errors(code: int, error_code: str, retryable: bool) -> None:
    # The table itself is errormap.map_websocket_close's; here: the machine applies it.
    client, server, pipe = opened()
    server.close(code, "why")
    pipe.pump(0.0)
    error = error_of(client.events())
    assert error.error_code == error_code and error.retryable is retryable
    assert "why" in str(error)


# --- invalid frames ----------------------------------------------------------------------------

BAD_FRAMES = {
    "reserved bits": frame(0xC2, packet_bytes()),
    "reserved opcode": frame(0x83, b""),
    "reserved control opcode": frame(0x8B, b""),
    "unmasked": frame(0x82, packet_bytes(), masked=False),
    "fragmented control": frame(0x09, b""),
    "long control": frame(0x89, b"x" * 126),
    "continuation first": frame(0x80, b"x"),
    "new message inside one": frame(0x02, b"x") + frame(0x82, b"y"),
    "text inside binary": frame(0x02, b"x") + frame(0x81, b"y"),
    "16-bit length under 126": frame(0x82, b"x" * 5, length=b"\xfe\x00\x05"),
    "64-bit length under 65536": frame(0x82, b"x" * 5, length=b"\xff" + struct.pack("!Q", 5)),
    "64-bit length with the top bit": frame(0x82, b"", length=b"\xff" + b"\x80" + b"\0" * 7),
    "close with 1 byte": frame(0x88, b"\x03"),
    "close with code 999": frame(0x88, struct.pack("!H", 999)),
    "close with code 1006": frame(0x88, struct.pack("!H", 1006)),
    "close with code 2000": frame(0x88, struct.pack("!H", 2000)),
    "close reason not UTF-8": frame(0x88, struct.pack("!H", 1000) + b"\xff"),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_invalid_frames_fail_the_connection(name: str) -> None:
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    raw = RawClient(server)
    server.events()
    server.receive_data(BAD_FRAMES[name] + frame(0x82, packet_bytes(b"never")), 0.0)
    events = server.events()
    error = error_of(events)
    assert isinstance(error, ProtocolError) and error.error_code == "protocol.websocket"
    assert closed(events).code in (1002, 1007)
    assert server.write_closed
    assert "PacketReceived" not in names(events)
    sent = raw.receive()
    assert [e.code for e in sent if isinstance(e, wse.CloseConnection)] == [closed(events).code]


def test_masked_frame_from_the_server_fails_the_client() -> None:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    RawServer(client)
    client.events()
    client.receive_data(frame(0x82, packet_bytes(), masked=True), 0.0)
    events = client.events()
    assert closed(events).code == 1002


def test_garbage_after_the_handshake_is_a_protocol_error() -> None:
    client, server, pipe = opened()
    server.receive_data(b"\x00\x01garbage garbage garbage", 0.0)
    events = server.events()
    assert error_of(events).error_code == "protocol.websocket"
    assert closed(events).code == 1002
    pipe.pump(0.0)
    c_events = client.events()
    assert closed(c_events).code == 1002
    assert isinstance(closed(c_events).error, ProtocolError)


def test_pings_are_not_answered_after_our_close() -> None:
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    raw = RawClient(server)
    server.close()
    raw.receive()
    raw.raw(frame(0x89, b"late") + frame(0x82, packet_bytes(b"late packet")))
    assert out(server) == b""
    assert names(server.events()) == ["ConnectionEstablished", "CloseStarted", "PacketReceived"]


def test_errors_while_closing_send_no_second_close() -> None:
    _client, server, _ = opened()
    server.close()
    out(server)
    server.receive_data(frame(0x83), 0.0)
    assert closed(server.events()).code == 1002
    assert out(server) == b""


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ping_interval": 0}, "ping_interval"),
        ({"ping_timeout": -1}, "ping_timeout"),
        ({"close_timeout": float("nan")}, "close_timeout"),
        ({"handshake_timeout": float("inf")}, "handshake_timeout"),
        ({"zero_copy_threshold": 0}, "zero_copy_threshold"),
        ({"text_policy": "shout"}, "text_policy"),
        ({"subprotocols": ("a b",)}, "subprotocols"),
        ({"subprotocols": ("",)}, "subprotocols"),
    ],
)
def test_invalid_settings(kwargs: dict[str, Any], field: str) -> None:
    for make in (lambda: WebSocketServerMachine(**kwargs),
                 lambda: WebSocketClientMachine("h", **kwargs)):
        with pytest.raises(ConfigurationError) as info:
            make()
        assert info.value.field == field


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: WebSocketClientMachine(""), "host"),
        (lambda: WebSocketClientMachine("h", "no-slash"), "target"),
        (lambda: WebSocketClientMachine("h", "/é"), "target"),
        (lambda: WebSocketClientMachine("h", extra_headers=[("bad name", "v")]), "extra_headers"),
        (lambda: WebSocketClientMachine("h", extra_headers=[("x", "a\r\nb")]), "extra_headers"),
        (lambda: WebSocketServerMachine(path="no-slash"), "path"),
        (lambda: WebSocketServerMachine(path="/a?b"), "path"),
    ],
)
def test_invalid_client_and_server_settings(make: Callable[[], Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make()
    assert info.value.field == field


# --- interop with the websockets library's sans-IO layer ---------------------------------------


def carry_from_websockets(proto: ClientProtocol | ServerProtocol, machine: WebSocketMachine,
                          now: float = 0.0) -> None:
    for data in proto.data_to_send():
        machine.receive_data(data, now)  # b"" is websockets' EOF: the same convention


def carry_to_websockets(machine: WebSocketMachine, proto: ClientProtocol | ServerProtocol) -> None:
    data = out(machine)
    if data:
        proto.receive_data(data)
    if machine.write_closed:
        proto.receive_eof()


def test_our_server_with_the_websockets_client() -> None:
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    server.start(0.0)
    proto = ClientProtocol(parse_uri("ws://example.com/"), subprotocols=["msgtrans.v1"],
                           max_size=None)
    proto.send_request(proto.connect())
    carry_from_websockets(proto, server)
    carry_to_websockets(server, proto)
    assert proto.handshake_exc is None
    (response,) = proto.events_received()
    assert response.headers["Sec-WebSocket-Protocol"] == "msgtrans.v1"
    assert names(server.events()) == ["ConnectionEstablished"]
    packets = [Packet(PacketType.REQUEST, i, 3, b"q" * (i * 997)) for i in range(1, 60)]
    for p in packets:
        proto.send_binary(p.encode())
    proto.send_ping(b"hello")
    carry_from_websockets(proto, server)
    assert [e.packet for e in server.events()] == packets  # type: ignore[attr-defined]
    server.send_packets(Packet(PacketType.RESPONSE, p.message_id, 3, b"r") for p in packets)
    carry_to_websockets(server, proto)
    frames = proto.events_received()
    assert [f.opcode for f in frames] == [Opcode.PONG] + [Opcode.BINARY] * len(packets)
    assert Packet.decode(frames[1].data) == Packet(PacketType.RESPONSE, 1, 3, b"r")
    # The websockets client closes; our server answers and ends cleanly.
    proto.send_close(1000, "done")
    carry_from_websockets(proto, server)
    assert closed(server.events()) == ConnectionClosed(1000, "done", clean=True)
    carry_to_websockets(server, proto)
    assert proto.close_code == 1000


def test_our_client_with_the_websockets_server() -> None:
    client = WebSocketClientMachine("example.com", "/ws", **NO_KEEPALIVE)
    proto = ServerProtocol(subprotocols=["msgtrans.v1"], max_size=None)
    client.start(0.0)
    carry_to_websockets(client, proto)
    (request,) = proto.events_received()
    assert request.path == "/ws"
    proto.send_response(proto.accept(request))
    proto.send_binary(Packet(message_id=1, payload=b"greeting").encode())  # right behind the 101
    carry_from_websockets(proto, client)
    events = client.events()
    assert names(events) == ["ConnectionEstablished", "PacketReceived"]
    assert client.subprotocol == "msgtrans.v1"
    packets = [
        Packet(PacketType.REQUEST, i, 1, bytes([i % 256]) * (i * 1501)) for i in range(1, 50)
    ]
    client.send_packets(packets)
    carry_to_websockets(client, proto)
    got = proto.events_received()
    assert [Packet.decode(f.data) for f in got] == packets
    # Fragments and a ping from the websockets server.
    data = Packet(message_id=77, payload=b"f" * 5000).encode()
    proto.send_binary(data[:100], fin=False)
    proto.send_ping(b"p")
    proto.send_continuation(data[100:], fin=True)
    carry_from_websockets(proto, client)
    (event,) = client.events()
    assert isinstance(event, PacketReceived) and event.packet.message_id == 77
    carry_to_websockets(client, proto)
    assert [f.opcode for f in proto.events_received()] == [Opcode.PONG]
    # Our client closes; the websockets server answers and closes TCP.
    client.close(1000, "bye")
    carry_to_websockets(client, proto)
    carry_from_websockets(proto, client)
    assert closed(client.events()) == ConnectionClosed(1000, "bye", clean=True)
    carry_to_websockets(client, proto)  # our EOF
    assert proto.close_code == 1000


def test_websockets_server_rejecting_our_client() -> None:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    proto = ServerProtocol()
    client.start(0.0)
    carry_to_websockets(client, proto)
    (_request,) = proto.events_received()
    proto.send_response(proto.reject(503, "busy"))
    carry_from_websockets(proto, client)
    error = error_of(client.events())
    assert error.error_code == "connection.refused_by_server" and error.retryable


def test_websockets_frames_checked_by_our_parser() -> None:
    # Frames the websockets library builds, fed one byte at a time.
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    proto = ServerProtocol(subprotocols=["msgtrans.v1"])
    client.start(0.0)
    carry_to_websockets(client, proto)
    (request,) = proto.events_received()
    proto.send_response(proto.accept(request))
    carry_from_websockets(proto, client)
    client.events()
    proto.send_frame(Frame(Opcode.BINARY, Packet(payload=b"z" * 70000).encode()))
    proto.send_frame(Frame(Opcode.PONG, b""))
    data = b"".join(proto.data_to_send())
    for i in range(0, len(data), 5000):
        client.receive_data(data[i : i + 5000], 0.0)
    (event,) = client.events()
    assert isinstance(event, PacketReceived) and len(event.packet.payload) == 70000


# --- properties --------------------------------------------------------------------------------


def normalised(events: list[Event]) -> list[Any]:
    """Events comparable across runs: the handshake headers carry a random key."""
    return [
        (type(e).__name__, e.subprotocol, e.path) if isinstance(e, ConnectionEstablished)
        else (type(e).__name__, e.packet.message_id, bytes(e.packet.payload))
        if isinstance(e, PacketReceived) else e
        for e in events
    ]


def run_conversation(cuts: Callable[[bytes], list[bytes]]) -> tuple[list[Any], list[Any]]:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    server = WebSocketServerMachine(**NO_KEEPALIVE, zero_copy_threshold=100)
    client.send_packet(Packet(payload=b"before"))
    pipe = StreamPipe(client, server, cuts)
    pipe.start(0.0)
    for i, size in enumerate((0, 50, 125, 126, 300, 70000)):
        client.send_packet(Packet(PacketType.REQUEST, i + 1, 1, b"c" * size))
        server.send_packet(Packet(PacketType.RESPONSE, i + 1, 1, b"s" * size))
    pipe.pump(1.0)
    client.close(1000, "end")
    pipe.pump(2.0)
    return normalised(client.events()), normalised(server.events())


REFERENCE = run_conversation(lambda data: [data])


@given(st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=30))
def test_any_cut_points_give_the_same_events(sizes: list[int]) -> None:
    def cuts(data: bytes) -> list[bytes]:
        pieces, pos, i = [], 0, 0
        while pos < len(data):
            n = sizes[i % len(sizes)] * (37 if i % 5 == 4 else 1)
            pieces.append(data[pos : pos + n])
            pos += n
            i += 1
        return pieces

    assert run_conversation(cuts) == REFERENCE


def check_only_transport_errors(machine: WebSocketMachine, events: list[Event]) -> None:
    for event in events:
        if isinstance(event, ErrorOccurred | ConnectionClosed) and event.error is not None:
            assert isinstance(event.error, TransportError)
    if machine.is_closed:
        assert isinstance(events[-1], ConnectionClosed)
        assert names(events).count("ConnectionClosed") == 1


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8))
def test_arbitrary_bytes_before_the_handshake_never_raise(chunks: list[bytes]) -> None:
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    server.start(0.0)
    for chunk in chunks:
        server.receive_data(chunk, 0.0)
    check_only_transport_errors(server, server.events())


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.booleans())
def test_arbitrary_bytes_after_the_handshake_never_raise(chunks: list[bytes], masked: bool) -> None:
    client, server, _ = opened()
    machine: WebSocketMachine = server if masked else client
    for chunk in chunks:
        machine.receive_data(chunk, 1.0)
    machine.receive_data(b"", 2.0)
    events = machine.events()
    check_only_transport_errors(machine, events)
    assert machine.is_closed


def test_buffer_protocol_path() -> None:
    client, server, _ = opened()
    client.send_packet(Packet(payload=b"via get_buffer"))
    data = out(client)
    buf = server.get_buffer(len(data))
    buf[: len(data)] = data
    server.buffer_updated(len(data), 0.0)
    (event,) = server.events()
    assert isinstance(event, PacketReceived) and event.packet.payload == b"via get_buffer"
    # A reused receive buffer does not corrupt payloads handed out before.
    big = Packet(payload=b"L" * 70000)
    client.send_packet(big)
    data = bytearray(out(client))
    server.receive_data(data, 0.0)
    data[:] = b"\0" * len(data)
    (event,) = server.events()
    assert bytes(event.packet.payload) == b"L" * 70000  # type: ignore[attr-defined]



# --- masking and the read area -----------------------------------------------------------------


def reference_mask(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


@given(st.binary(max_size=3000), st.binary(min_size=4, max_size=4), st.integers(0, 7))
def test_masking_matches_the_rfc_definition(data: bytes, key: bytes, offset: int) -> None:
    expected = reference_mask(data, key)
    # The parser hands masking a slice of a larger buffer: mask a view at an offset too.
    view = memoryview(b"\xee" * offset + data)[offset:]
    for mask in {ws._mask, ws._mask_py}:
        assert bytes(mask(data, key)) == expected
        assert bytes(mask(view, key)) == expected
        assert bytes(mask(mask(data, key), key)) == data


@given(st.integers(0, 40_000), st.integers(0, 7), st.sampled_from(["c", "py"]))
def test_client_masking_of_any_packet_shape(size: int, ext: int, which: str) -> None:
    # Payloads from _SPLIT_MASK_LIMIT on are masked apart from the header, with the key turned
    # by the header's length modulo 4: an ext header of 0-7 bytes tries every turn.
    mask = ws._mask if which == "c" else ws._mask_py
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ws, "_mask", mask)
        client, server, pipe = opened()
        payload = bytes(range(256)) * (size // 256) + b"t" * (size % 256)
        client.send_packet(Packet(payload=payload, ext_header=b"e" * ext))
        pipe.pump(1.0)
    (event,) = server.events()
    assert isinstance(event, PacketReceived)
    assert bytes(event.packet.payload) == payload and event.packet.ext_header == b"e" * ext


class ViaBuffer:
    """Feeds a machine through get_buffer()/buffer_updated(), as the drivers do, poisoning each
    buffer first so that a machine reusing memory a packet still holds would be caught."""

    def __init__(self, machine: WebSocketMachine) -> None:
        self.machine = machine

    def start(self, now: float) -> None:
        self.machine.start(now)

    def data_to_send(self) -> list[Any]:
        return self.machine.data_to_send()

    @property
    def write_closed(self) -> bool:
        return self.machine.write_closed

    @property
    def is_closed(self) -> bool:
        return self.machine.is_closed

    def receive_data(self, data: bytes, now: float) -> None:
        if not data:
            self.machine.receive_data(b"", now)
            return
        rest = memoryview(data)
        while rest:
            buf = self.machine.get_buffer(-1)
            buf[:] = b"\xaa" * len(buf)
            n = min(len(buf), len(rest))
            buf[:n] = rest[:n]
            buf.release()
            self.machine.buffer_updated(n, now)
            rest = rest[n:]


def run_conversation_via_buffers(
    cuts: Callable[[bytes], list[bytes]],
) -> tuple[list[Any], list[Any]]:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    server = WebSocketServerMachine(**NO_KEEPALIVE, zero_copy_threshold=100)
    client.send_packet(Packet(payload=b"before"))
    pipe = StreamPipe(ViaBuffer(client), ViaBuffer(server), cuts)  # type: ignore[arg-type]
    pipe.start(0.0)
    for i, size in enumerate((0, 50, 125, 126, 300, 70000)):
        client.send_packet(Packet(PacketType.REQUEST, i + 1, 1, b"c" * size))
        server.send_packet(Packet(PacketType.RESPONSE, i + 1, 1, b"s" * size))
    pipe.pump(1.0)
    client.close(1000, "end")
    pipe.pump(2.0)
    return normalised(client.events()), normalised(server.events())


@given(st.lists(st.integers(min_value=1, max_value=20_000), min_size=1, max_size=10))
def test_the_buffer_path_gives_the_same_events(sizes: list[int]) -> None:
    def cuts(data: bytes) -> list[bytes]:
        pieces, pos, i = [], 0, 0
        while pos < len(data):
            pieces.append(data[pos : pos + sizes[i % len(sizes)]])
            pos += sizes[i % len(sizes)]
            i += 1
        return pieces

    assert run_conversation_via_buffers(cuts) == REFERENCE


def test_the_buffer_path_in_one_piece_and_without_the_c_extension() -> None:
    assert run_conversation_via_buffers(lambda data: [data]) == REFERENCE
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ws, "_mask", ws._mask_py)
        assert run_conversation_via_buffers(lambda data: [data]) == REFERENCE
        assert run_conversation(lambda data: [data]) == REFERENCE


def test_client_payload_views_outlive_the_read_area() -> None:
    client, server, _ = opened()
    payloads = [bytes([i]) * 70_000 for i in range(3)]
    for payload in payloads:
        server.send_packet(Packet(payload=payload))
    feeder = ViaBuffer(client)
    feeder.receive_data(out(server), 1.0)
    # More reads after the zero-copy packets were handed out must not touch their memory.
    server.send_packet(Packet(payload=b"later"))
    feeder.receive_data(out(server), 1.0)
    events = client.events()
    assert [bytes(e.packet.payload) for e in events if isinstance(e, PacketReceived)] == [
        *payloads, b"later",
    ]
    assert isinstance(events[0], PacketReceived)
    assert isinstance(events[0].packet.payload, memoryview)


def test_the_buffer_path_after_the_end_ignores_input() -> None:
    client, server, _ = opened()
    client.send_packet(Packet(payload=b"x" * 70_000))
    data = out(client)
    feeder = ViaBuffer(server)
    feeder.receive_data(data[:100], 1.0)
    buf = server.get_buffer(-1)  # the rest of the frame, straight into its buffer
    assert len(buf) == len(data) - 100
    server.connection_lost(1.0)
    buf[:10] = data[100:110]
    server.buffer_updated(10, 1.0)
    assert names(server.events()) == ["ErrorOccurred", "ConnectionClosed"]
    feeder.receive_data(b"more", 2.0)
    assert server.events() == []


def test_the_c_masking_loader() -> None:
    # websockets is installed for these tests, so its extension is found and checked...
    loaded = ws._load_c_mask()
    assert loaded is not None and loaded(b"\0\0\0\0\0", b"abcd") == b"abcda"
    # ...and anything amiss falls back to pure Python rather than failing the import.
    with pytest.MonkeyPatch.context() as mp:
        mp.delitem(sys.modules, "websockets.speedups", raising=False)
        mp.setattr(importlib.util, "find_spec", lambda name: None)
        assert ws._load_c_mask() is None


# --- the handshake written here against the h11 / wsproto path --------------------------------

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3's example


def outcome(machine: WebSocketMachine, events: list[Event]) -> list[Any]:
    """What a handshake did, comparable between the two paths."""
    summary: list[Any] = [machine.state]
    for e in events:
        if isinstance(e, ConnectionEstablished):
            summary.append(("open", e.subprotocol, e.path, e.headers))
        elif isinstance(e, ConnectionClosed | ErrorOccurred) and e.error is not None:
            summary.append((type(e).__name__, e.error.error_code, str(e.error)))
        elif isinstance(e, PacketReceived):
            summary.append(("packet", bytes(e.packet.payload)))
        else:
            summary.append(type(e).__name__)
    return summary


def serve_request(request: bytes, *, h11_only: bool, **kw: Any) -> tuple[bytes, list[Any]]:
    server = WebSocketServerMachine(**{**NO_KEEPALIVE, **kw})
    with pytest.MonkeyPatch.context() as mp:
        if h11_only:
            mp.setattr(WebSocketServerMachine, "_accept_plain", lambda *a: False)
        server.start(0.0)
        server.receive_data(request, 0.0)
    return out(server), outcome(server, server.events())


header_case = st.sampled_from([bytes.lower, bytes.upper, bytes.title, lambda b: b])
ows = st.sampled_from([b"", b" ", b"\t", b"  "])
trailing_frames = st.sampled_from([b"", frame(0x82, packet_bytes(b"early"), masked=True)])


@st.composite
def upgrade_requests(draw: st.DrawFn) -> bytes:
    """Upgrade requests, mostly valid, sometimes not: field order, case, spacing, duplicates,
    odd values, line ends; every one must get the same answer from both paths."""
    fields = [
        (b"Host", draw(st.sampled_from([b"example.com", b"xn--bcher-kva.example", b"a:1", b""]))),
        (b"Upgrade", draw(st.sampled_from([b"websocket", b"WebSocket", b"h2c", b"websocket, x"]))),
        (b"Connection", draw(st.sampled_from([b"Upgrade", b"keep-alive, upgrade", b"close"]))),
        (b"Sec-WebSocket-Key", KEY),
        (b"Sec-WebSocket-Version", draw(st.sampled_from([b"13", b"8", b" 13"]))),
    ]
    protocols = draw(st.lists(st.sampled_from(["msgtrans.v1", "x", "", "msgtrans.v2"]),
                              max_size=3))
    if protocols:
        fields.append((b"Sec-WebSocket-Protocol", ", ".join(protocols).encode()))
    fields += draw(st.lists(st.tuples(
        st.sampled_from([b"X-A", b"Origin", b"Sec-WebSocket-Extensions", b"Host",
                         b"Content-Length", b"Upgrade"]),
        st.sampled_from([b"1", b"permessage-deflate", b"v a l", b"\xe9", b"0", b"websocket"]),
    ), max_size=3))
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    drop = draw(st.integers(-1, len(fields) - 1))
    if drop >= 0 and draw(st.booleans()):
        del fields[drop]
    case = draw(header_case)
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n"]))
    line = draw(st.sampled_from([b"GET / HTTP/1.1", b"GET /?q=1 HTTP/1.1", b"GET /x HTTP/1.1",
                                 b"POST / HTTP/1.1", b"GET / HTTP/1.0", b"GET  / HTTP/1.1"]))
    head = [line] + [case(n) + b":" + draw(ows) + v + draw(ows) for n, v in fields]
    return eol.join(head) + eol + eol + draw(trailing_frames)


@given(upgrade_requests(), st.sampled_from([(), ((b"X-Server", b"1"),)]))
def test_server_handshake_matches_the_h11_path(request: bytes, extra: Any) -> None:
    kw = {"extra_headers": extra}
    assert serve_request(request, h11_only=False, **kw) == serve_request(
        request, h11_only=True, **kw
    )


def test_server_handshake_plain_request_takes_the_fast_path() -> None:
    request = (b"GET /?a=b HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
               b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: x, msgtrans.v1\r\n\r\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ws.h11, "Connection", None)  # h11 is not used at all
        answer, result = serve_request(request, h11_only=False, path="/")
    assert answer == (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + ACCEPT + b"\r\n"
                      b"Sec-WebSocket-Protocol: msgtrans.v1\r\n\r\n")
    assert result[1][:3] == ("open", "msgtrans.v1", "/?a=b")
    # Byte for byte what wsproto writes.
    assert serve_request(request, h11_only=True, path="/")[0] == answer


def test_server_extra_headers_h11_would_refuse_take_the_h11_path() -> None:
    request = (b"GET / HTTP/1.1\r\nHost: e\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    kw = {"extra_headers": [("X-Bad", "a\r\nInjected: 1")]}
    answer, result = serve_request(request, h11_only=False, **kw)
    assert (answer, result) == serve_request(request, h11_only=True, **kw)
    assert b"Injected" not in answer.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]


def client_given(response: bytes, *, h11_only: bool) -> tuple[list[Any], Any]:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ws.os, "urandom", lambda n: b"the sample nonce"[:n])  # the RFC's key
        client.start(0.0)
        if h11_only:
            mp.setattr(ws, "_parse_head", lambda *a: None)
        out(client)
        client.receive_data(response, 0.0)
    return outcome(client, client.events()), client.subprotocol


@st.composite
def upgrade_responses(draw: st.DrawFn) -> bytes:
    fields = [
        (b"Upgrade", draw(st.sampled_from([b"websocket", b"WEBSOCKET", b"h2c"]))),
        (b"Connection", draw(st.sampled_from([b"Upgrade", b"x, upgrade", b"close", b"\xff"]))),
        (b"Sec-WebSocket-Accept", draw(st.sampled_from([ACCEPT, b"wrong", ACCEPT + b"x"]))),
    ]
    fields += draw(st.lists(st.tuples(
        st.sampled_from([b"Sec-WebSocket-Protocol", b"Sec-WebSocket-Extensions", b"Server",
                         b"Content-Length", b"Retry-After", b"Upgrade"]),
        st.sampled_from([b"msgtrans.v1", b"other", b"permessage-deflate; x=1", b"3", b"",
                         b"\xe9"]),
    ), max_size=3))
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    drop = draw(st.integers(-1, len(fields) - 1))
    if drop >= 0:
        del fields[drop]
    case = draw(header_case)
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n"]))
    line = draw(st.sampled_from([b"HTTP/1.1 101 Switching Protocols", b"HTTP/1.1 101 ",
                                 b"HTTP/1.1 101", b"HTTP/1.0 101 OK", b"HTTP/1.1 503 Busy",
                                 b"HTTP/1.1 100 Continue", b"HTTP/1.1 404 Not Found",
                                 b"HTTP/1.1  101 x", b"garbage"]))
    head = [line] + [case(n) + b":" + draw(ows) + v + draw(ows) for n, v in fields]
    return eol.join(head) + eol + eol + draw(st.sampled_from([b"", frame(0x82, packet_bytes())]))


@given(upgrade_responses())
def test_client_handshake_matches_the_h11_path(response: bytes) -> None:
    assert client_given(response, h11_only=False) == client_given(response, h11_only=True)


def test_client_request_is_what_wsproto_sends() -> None:
    client = WebSocketClientMachine(
        "example.com", "/p?q", extra_headers=[("Origin", "http://o"), (b"X-B", b"2")],
        **NO_KEEPALIVE,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ws.os, "urandom", lambda n: b"the sample nonce"[:n])
        client.start(0.0)
    ours = out(client)
    theirs = WSConnection(ConnectionType.CLIENT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("wsproto.handshake.generate_nonce", lambda: KEY)
        expected = theirs.send(wse.Request(
            host="example.com", target="/p?q", subprotocols=["msgtrans.v1"],
            extra_headers=[(b"Origin", b"http://o"), (b"X-B", b"2")],
        ))
    assert ours == expected
    assert b"Sec-WebSocket-Key: " + KEY + b"\r\n" in ours


def test_handshake_heads_cut_anywhere_and_too_long() -> None:
    request = (b"GET / HTTP/1.1\r\nHost: e\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    for cut_at in range(1, len(request)):
        server = WebSocketServerMachine(**NO_KEEPALIVE)
        server.start(0.0)
        server.receive_data(request[:cut_at], 0.0)
        assert server.state is MachineState.HANDSHAKING and out(server) == b""
        server.receive_data(request[cut_at:], 0.0)
        assert server.state is MachineState.OPEN
    # A head that never ends: h11's 431 once it passes 16 KiB, as before.
    server = WebSocketServerMachine(**NO_KEEPALIVE)
    server.start(0.0)
    server.receive_data(b"GET / HTTP/1.1\r\nX: " + b"a" * 17_000, 0.0)
    response, _ = http_response(out(server))
    assert response.status_code == 431 and server.is_closed
    client = WebSocketClientMachine("e", **NO_KEEPALIVE)
    client.start(0.0)
    client.receive_data(b"HTTP/1.1 101 OK\r\nX: " + b"a" * 17_000, 0.0)
    error = error_of(client.events())
    assert error.error_code == "protocol.websocket" and "16 KiB" in str(error)


def test_importing_the_machines_imports_neither_websockets_nor_wsproto() -> None:
    # Both cost tens of milliseconds at import: the C masking is loaded from its file, and
    # wsproto only for the requests the server leaves to it.
    code = (
        "import sys, msgtrans.core.websocket as ws\n"
        "assert ws._c_mask is not None\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('websockets', 'wsproto')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]"


# --- client mask keys across their batches ----------------------------------------------------
# WebSocket client mask keys across their batches.
#
# A client fetches a small first batch of mask keys together with its handshake key, then large
# batches.  Whatever the number and size of frames, every frame is masked with a fresh 4-byte key
# (never reused within a connection) and the server unmasks it to what was sent.


NO_PINGS = {"ping_interval": None, "ping_timeout": None}


def _frame_keys(data: bytes) -> list[bytes]:
    """The mask keys of the client frames in *data* (payloads under 64 KiB)."""
    keys = []
    pos = 0
    while pos < len(data):
        length = data[pos + 1] & 0x7F
        assert data[pos + 1] & 0x80, "a client frame must be masked"
        head = 2
        if length == 126:
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            head = 4
        keys.append(data[pos + head : pos + head + 4])
        pos += head + 4 + length
    assert pos == len(data)
    return keys


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=80))
def test_every_frame_gets_a_fresh_key_and_arrives_intact(sizes: list[int]) -> None:
    client = WebSocketClientMachine("example.com", **NO_PINGS)  # type: ignore[arg-type]
    server = WebSocketServerMachine(**NO_PINGS)  # type: ignore[arg-type]
    pipe = StreamPipe(client, server, None)
    pipe.start(0.0)
    client.events()
    server.events()
    wire = bytearray()
    payloads = [os.urandom(size) for size in sizes]
    for payload in payloads:
        client.send_packet(Packet(payload=payload))
        chunk = b"".join(bytes(b) for b in client.data_to_send())
        wire += chunk
        server.receive_data(chunk, 0.0)
    keys = _frame_keys(bytes(wire))
    assert len(keys) == len(sizes)
    # 2**-32 per pair: a repeat means a key was handed out twice, not bad luck.
    assert len(set(keys)) == len(keys)
    got = [bytes(e.packet.payload) for e in server.events() if isinstance(e, PacketReceived)]
    assert got == payloads


def test_first_batch_comes_with_the_handshake_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counting)  # the module calls os.urandom
    client = WebSocketClientMachine("example.com", **NO_PINGS)  # type: ignore[arg-type]
    server = WebSocketServerMachine(**NO_PINGS)  # type: ignore[arg-type]
    StreamPipe(client, server, None).start(0.0)
    assert calls == [16 + ws._FIRST_MASK_KEY_BATCH]  # the handshake: one call for both
    batch = ws._FIRST_MASK_KEY_BATCH // 4
    for _ in range(batch):  # the first batch's keys: no more calls
        client.send_packet(Packet(payload=b"x"))
    client.close(1000, "")
    assert len(calls) == 2 and calls[1] == ws._MASK_KEY_BATCH  # the close frame: a new batch


# --- big messages into the receive pool ----------------------------------------------------------

KiB = 1024


def pooled(
    pool: BufferPool, client_kw: dict[str, Any] | None = None,
    server_kw: dict[str, Any] | None = None,
) -> tuple[WebSocketClientMachine, WebSocketServerMachine, ZeroCopyCounters]:
    """Opened machines whose receive side has *pool* (as a Connection gives it) and counters
    of their own."""
    client, server, _ = opened(client_kw, server_kw)
    counters = ZeroCopyCounters()
    for machine in (client, server):
        machine._decoder.buffer_pool = pool
        machine._decoder.counters = counters
    return client, server, counters


def via_reads(machine: WebSocketMachine, data: bytes, cuts: list[int] | None = None) -> None:
    """Feed *data* through get_buffer()/buffer_updated() in reads of the sizes in *cuts* (in
    turn; default: as much as each buffer takes), poisoning each buffer first."""
    rest, i = memoryview(data), 0
    while rest:
        buf = machine.get_buffer(-1)
        buf[:] = b"\xaa" * len(buf)
        n = min(len(buf), len(rest), cuts[i % len(cuts)] if cuts else len(rest))
        buf[:n] = rest[:n]
        buf.release()
        machine.buffer_updated(n, 1.0)
        rest, i = rest[n:], i + 1


def received(machine: WebSocketMachine) -> list[Packet]:
    return [e.packet for e in machine.events() if isinstance(e, PacketReceived)]


@pytest.mark.parametrize("size", [64 * KiB, 256 * KiB, 1024 * KiB])
@pytest.mark.parametrize("direction", ["client to server", "server to client"])
def test_a_big_message_is_received_into_a_pooled_buffer_and_given_back(
    size: int, direction: str
) -> None:
    pool = receive_pool()
    client, server, counters = pooled(pool)
    sender, receiver = (client, server) if direction == "client to server" else (server, client)
    payloads = [bytes([i]) * (size + i) for i in range(4)]
    for payload in payloads:
        sender.send_packet(Packet(payload=payload))
        via_reads(receiver, out(sender), [64 * KiB])
        (packet,) = received(receiver)
        view = packet.payload
        assert isinstance(view, memoryview) and view.readonly
        assert type(view.obj) is PoolBuffer and view.obj.lender is pool
        assert view == payload
        assert pool.stats().lent == 1
        assert release_view(view)
        assert pool.stats().lent == 0
    stats = pool.stats()
    assert stats.misses == 1 and stats.hits == 3  # one buffer, reused
    assert stats.bytes_in_use == 0
    snap = counters.snapshot()
    assert snap.large_payloads == snap.zero_copy_payloads == 4
    assert snap.bytes_viewed == sum(map(len, payloads))
    masked = direction == "client to server"
    # The server unmasks each payload byte once, into the buffer; a client copies only what
    # came with the read that began the frame (a 64 KiB read at most).
    per_message = snap.bytes_copied / 4
    if masked:
        assert size <= per_message <= size + 64 * KiB
    else:
        assert per_message <= 64 * KiB


def test_a_whole_big_message_in_one_read_is_unmasked_into_a_pooled_buffer() -> None:
    pool = receive_pool()
    client, server, counters = pooled(pool)
    client.send_packet(Packet(payload=b"w" * (100 * KiB)))
    data = out(client)
    buf = server.get_buffer(len(data))  # a read area big enough for the whole frame
    buf[: len(data)] = data
    buf.release()
    server.buffer_updated(len(data), 1.0)
    (packet,) = received(server)
    assert type(packet.payload.obj) is PoolBuffer  # type: ignore[union-attr]
    assert packet.payload == b"w" * (100 * KiB)
    assert counters.snapshot().zero_copy_payloads == 1
    release_view(packet.payload)
    assert pool.stats().lent == 0


def test_a_kept_payload_view_is_never_overwritten() -> None:
    pool = receive_pool()
    client, server, _ = pooled(pool)
    client.send_packet(Packet(payload=b"a" * (200 * KiB)))
    via_reads(server, out(client), [30 * KiB])
    (first,) = received(server)
    kept = first.payload[1000:1010]  # a slice the application keeps
    release_view(first.payload)  # the buffer waits for the slice to go
    for filler in (b"b", b"c"):
        client.send_packet(Packet(payload=filler * (200 * KiB)))
        via_reads(server, out(client), [30 * KiB])
        (later,) = received(server)
        assert later.payload.obj is not kept.obj  # type: ignore[union-attr]
        assert bytes(kept) == b"a" * 10
        release_view(later.payload)
    hits = pool.stats().hits
    del kept
    client.send_packet(Packet(payload=b"d" * (200 * KiB)))
    via_reads(server, out(client), [30 * KiB])
    (last,) = received(server)
    assert pool.stats().hits == hits + 1 and last.payload == b"d" * (200 * KiB)


@pytest.mark.parametrize("masked", [True, False])
def test_an_oversize_header_is_refused_before_any_buffer_is_taken(masked: bool) -> None:
    pool = receive_pool()
    limits = Limits(max_payload=100 * KiB)
    client, server, _ = pooled(pool, {"limits": limits}, {"limits": limits})
    receiver = server if masked else client
    # A frame announcing 1 MiB, of which only the header and a few bytes arrive.
    data = bytes([0x82, (0x80 if masked else 0) | 127]) + struct.pack("!Q", 1024 * KiB)
    data += b"\0\0\0\0" if masked else b""
    via_reads(receiver, data + b"x" * 100)
    assert closed(receiver.events()).code == ws.MESSAGE_TOO_BIG
    stats = pool.stats()
    assert stats.hits == stats.misses == 0 and stats.bytes_allocated == 0


def test_a_pool_that_refuses_ends_the_connection_with_1009() -> None:
    pool = BufferPool((64 * KiB + 4112,), (1,), memory_limit=80 * KiB, preallocate=(0,))
    client, server, _ = pooled(pool)
    client.send_packet(Packet(payload=b"k" * (64 * KiB)))
    via_reads(server, out(client), [16 * KiB])
    (kept,) = received(server)
    client.send_packet(Packet(payload=b"l" * (64 * KiB)))  # no memory left for a second one
    via_reads(server, out(client), [16 * KiB])
    events = server.events()
    error = error_of(events)
    assert error.error_code == "resource.memory"
    assert closed(events).code == ws.MESSAGE_TOO_BIG
    assert kept.payload == b"k" * (64 * KiB) and pool.bytes_allocated <= 80 * KiB


def test_the_connection_gives_back_a_message_in_progress() -> None:
    pool = receive_pool()
    client, server, _ = pooled(pool)
    client.send_packet(Packet(payload=b"p" * (256 * KiB)))
    via_reads(server, out(client)[: 100 * KiB])
    assert pool.stats().lent == 1
    server._decoder.release_buffers()  # what Connection does on ConnectionClosed
    assert pool.stats().lent == 0 and server._decoder.buffer_pool is None


def test_small_compressed_and_fragmented_messages_take_no_pooled_buffer() -> None:
    pool = receive_pool()
    client, server, counters = pooled(pool)
    client.send_packet(Packet(payload=b"s" * 100))
    client.send_packet(Packet(payload=b"z" * (300 * KiB), compression=Compression.ZLIB))
    payload = packet_bytes(b"f" * (100 * KiB))
    data = out(client) + frame(0x02, payload[:50_000]) + frame(0x80, payload[50_000:])
    via_reads(server, data, [20 * KiB])
    packets = received(server)
    assert [bytes(p.payload) for p in packets] == [
        b"s" * 100, b"z" * (300 * KiB), b"f" * (100 * KiB)]
    assert all(type(getattr(p.payload, "obj", None)) is not PoolBuffer for p in packets)
    stats = pool.stats()
    assert stats.lent == 0 and stats.bytes_in_use == 0
    # The compressed one is small on the wire, so not counted; the joined one is a miss.
    snap = counters.snapshot()
    assert snap.large_payloads == 1 and snap.zero_copy_payloads == 0
    assert snap.bytes_copied >= 100 * KiB


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([10, 65_535, 65_536, 70_000, 300_000]), min_size=1,
                   max_size=5),
    cuts=st.lists(st.integers(1, 90_000), min_size=1, max_size=8),
    masked=st.booleans(),
)
def test_big_messages_survive_any_cut_of_the_stream(
    sizes: list[int], cuts: list[int], masked: bool
) -> None:
    pool = receive_pool()
    client, server, counters = pooled(pool)
    sender, receiver = (client, server) if masked else (server, client)
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    for payload in payloads:
        sender.send_packet(Packet(payload=payload))
    via_reads(receiver, out(sender), cuts)
    packets = received(receiver)
    assert [p.payload for p in packets] == payloads
    big = [p for p in packets if len(p.payload) >= 64 * KiB]
    assert counters.snapshot().large_payloads == len(big)
    for packet in packets:
        release_view(packet.payload)
    assert pool.stats().lent == 0
