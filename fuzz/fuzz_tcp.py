#!/usr/bin/env python3
"""Fuzz the plain-TCP connection: bytes from a hostile peer at a server or a client connection
made by the factories (``server_connection`` / ``client_connection``: the TCP machine joined to
its session machine), in cuts, through each receive path a driver uses.

Checks, for any input:

* only events come out (no exception), every error has a known ``error_code``, and a closed
  connection reported exactly one ``ConnectionClosed``;
* the input cut anyhow, through ``receive_data``, ``get_buffer`` / ``buffer_updated`` or the
  drivers' fast path ``receive_packets``, gives the same messages and the same error as the
  input in one piece;
* an intact stream of packets gives back exactly its packets;
* the decoder never buffers more than one packet under the limits.

CI runs the hypothesis tests; ``python fuzz/fuzz_tcp.py [libFuzzer flags] [corpus...]`` runs
atheris (the first byte picks the target).  See fuzz/README.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness import check_events, cut, cuts_from
from hypothesis import example, given
from hypothesis import strategies as st
from targets import BOUND, LIMITS, Reader, frame, main, packet_from

from msgtrans.core.config import TcpConfig, TcpServerConfig
from msgtrans.core.connection import Connection, client_connection, server_connection
from msgtrans.core.events import ConnectionClosed, ErrorOccurred, PacketReceived
from msgtrans.core.framing import PacketDecoder
from msgtrans.core.packet import PacketType
from msgtrans.core.session import MessageReceived, RequestReceived, ResponseReceived

SERVER = TcpServerConfig("127.0.0.1:0", limits=LIMITS, zero_copy_threshold=256)
CLIENT = TcpConfig("127.0.0.1:9", limits=LIMITS, zero_copy_threshold=256)
PATHS = ("receive_data", "buffer", "fast")


def new_connection(server: bool) -> Connection:
    if server:
        conn = server_connection(SERVER, buffer_pool=None)
    else:
        conn = client_connection(CLIENT, buffer_pool=None)
    conn.start(0.0)
    conn.data_to_send()
    return conn


def _decoder(conn: Connection) -> PacketDecoder:
    decoder = conn.machine._decoder  # type: ignore[attr-defined]
    assert isinstance(decoder, PacketDecoder)
    return decoder


def _fast(conn: Connection, chunk: bytes, now: float, seen: list[object]) -> None:
    """The asyncio driver's plain-TCP hot path: receive into the decoder's buffer, hand the
    packets straight to the session machine (``accept_packet``), and on ``None`` fall back to
    the events round trip (``buffer_updated(0)`` pumps)."""
    machine = conn.plain_tcp
    assert machine is not None
    rest = memoryview(chunk)
    while rest:
        if machine.is_closed:
            return
        area = machine.get_buffer(-1)
        n = min(len(area), len(rest))
        area[:n] = rest[:n]
        area.release()
        rest = rest[n:]
        packets = machine.receive_packets(n, now)
        if packets is None:
            conn.buffer_updated(0, now)
            continue
        for packet in packets:
            if conn.session.accept_packet(packet, now) is not None:
                seen.append(PacketReceived(packet))


def summary(events: Sequence[object]) -> tuple[list[tuple[str, bytes]], str | None]:
    """The packets the connection delivered, whatever path they took, and its error code."""
    packets: list[tuple[str, bytes]] = []
    error: str | None = None
    for event in events:
        if isinstance(event, (PacketReceived, MessageReceived, RequestReceived,
                              ResponseReceived)):
            packet = event.packet
            packets.append((f"{packet.packet_type.name}:{packet.message_id}",
                            bytes(packet.payload)))
        elif isinstance(event, (ErrorOccurred, ConnectionClosed)) and event.error is not None:
            error = error or event.error.error_code
    return packets, error


def run(data: bytes, server: bool, sizes: Sequence[int], path: str, eof: bool
        ) -> tuple[list[tuple[str, bytes]], str | None]:
    """Feed *data* in cuts of *sizes* along *path*; check the invariants; return the summary
    of what came out before the EOF."""
    conn = new_connection(server)
    decoder = _decoder(conn)
    events: list[object] = []
    fast: list[object] = []
    for chunk in cut(data, sizes):
        if path == "fast":
            _fast(conn, chunk, 0.5, fast)
        elif path == "buffer":
            rest = memoryview(chunk)
            while rest and not conn.is_closed:
                area = conn.get_buffer(-1)
                area[:] = b"\xaa" * len(area)
                n = min(len(area), len(rest))
                area[:n] = rest[:n]
                area.release()
                conn.buffer_updated(n, 0.5)
                rest = rest[n:]
        else:
            conn.receive_data(chunk, 0.5)
        conn.data_to_send()
        events += conn.events()
        assert decoder.buffered <= BOUND, decoder.buffered
    # The fast path's packets never become events: what the session accepted stands for them.
    before = summary(fast + events)
    if eof:
        conn.receive_data(b"", 1.0)
    else:
        conn.connection_lost(1.0)
    deadline = conn.next_deadline()
    if deadline is not None:
        conn.handle_timer(deadline + 60.0)
    conn.data_to_send()
    events += conn.events()
    check_events(events, closed=conn.is_closed)
    assert conn.is_closed, "EOF or a lost socket must end the connection"
    return before


def _normalise(result: tuple[list[tuple[str, bytes]], str | None]
               ) -> tuple[list[tuple[str, bytes]], str | None]:
    return result


def tcp_any_bytes(data: bytes) -> None:
    """Any bytes at a server or a client: cut anyhow, the same outcome as in one piece."""
    reader = Reader(data[:8])
    server = bool(reader.uint(1) & 1)
    path = PATHS[reader.uint(1) % 3]
    eof = bool(reader.uint(1) & 1)
    sizes = cuts_from(reader)
    body = data[8:]
    reference = run(body, server, (), "receive_data", eof)
    got = run(body, server, sizes, path, eof)
    assert _normalise(got) == _normalise(reference), (got, reference)


def tcp_packets(data: bytes) -> None:
    """A stream of packets built from the input, maybe damaged: intact, exactly its packets
    come out; damaged, the same outcome as in one piece."""
    reader = Reader(data)
    server = bool(reader.uint(1) & 1)
    path = PATHS[reader.uint(1) % 3]
    pkts = [packet_from(reader) for _ in range(reader.below(6))]
    stream = bytearray(frame(pkts, length_prefixed=False))
    damaged = False
    for _ in range(reader.uint(1) % 4):
        if stream:
            stream[reader.below(len(stream))] ^= 1 + reader.uint(1) % 255
            damaged = True
    if reader.uint(1) & 1:
        del stream[reader.below(len(stream) + 1) :]
        damaged = True
    sizes = cuts_from(reader, 300)
    got = run(bytes(stream), server, sizes, path, eof=True)
    if damaged:
        reference = run(bytes(stream), server, (), "receive_data", eof=True)
        assert _normalise(got) == _normalise(reference), (got, reference)
    else:
        # Every message and request arrives, in order; responses to requests never made are
        # dropped (or, if the session refuses them, end the stream with its error).
        sent = [(f"{p.packet_type.name}:{p.message_id}", bytes(p.payload)) for p in pkts
                if p.packet_type is not PacketType.RESPONSE]
        if got[1] is None:
            assert got[0] == sent, (got, sent)
        else:
            assert got[0] == sent[: len(got[0])], (got, sent)


@given(st.binary(max_size=3000))
@example(b"\0" * 8 + bytes.fromhex("01000000000000010000000000050000 68656c6c6f"))
def test_tcp_any_bytes(data: bytes) -> None:
    tcp_any_bytes(data)


@given(st.binary(max_size=2500))
def test_tcp_packets(data: bytes) -> None:
    tcp_packets(data)


TARGETS = (tcp_any_bytes, tcp_packets)


def one_input(data: bytes) -> None:
    """The atheris entry: the first byte picks the target."""
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


if __name__ == "__main__":
    main(one_input, [test_tcp_any_bytes, test_tcp_packets],
         ("msgtrans.core.tcp", "msgtrans.core.framing", "msgtrans.core.packet",
          "msgtrans.core.session", "msgtrans.core.connection", "msgtrans.core.compression"))
