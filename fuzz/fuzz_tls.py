#!/usr/bin/env python3
"""Fuzz TLS records through the TLS machine (``core/tls.py`` over the TCP machine, made by the
connection factories with a throwaway certificate).

Targets (the first input byte picks one):

* ``tls_before_handshake``: bytes at a fresh server, or at a client that sent its ClientHello:
  arbitrary records, or a real ClientHello / ServerHello flight with bytes changed, cut short or
  cut into pieces.
* ``tls_after_handshake``: a client and a server that completed a real handshake in memory;
  one side sends packets, and its records are damaged on the way to the other (bytes changed,
  cut short, garbage put in between), then delivered in cuts.  Intact, exactly the packets
  sent arrive; damaged, the receiver ends with a ``ProtocolError`` (or delivers what it could
  authenticate).

Checks: only events come out, every error has a known ``error_code``, a connection that ended
reported one ``ConnectionClosed``, and EOF or a lost socket always ends it.

CI runs the hypothesis tests; ``python fuzz/fuzz_tls.py [libFuzzer flags] [corpus...]`` runs
atheris.  See fuzz/README.md.
"""

from __future__ import annotations

import functools
import ssl

from harness import certs, check_events, cut, cuts_from, damage, push
from hypothesis import given
from hypothesis import strategies as st
from targets import LIMITS, Reader, main, packet_from

from msgtrans.core.config import ServerTlsConfig, TcpConfig, TcpServerConfig, TlsConfig
from msgtrans.core.connection import Connection, client_connection, server_connection
from msgtrans.core.events import ConnectionEstablished
from msgtrans.core.memory import StreamPipe
from msgtrans.core.session import MessageReceived, RequestReceived


@functools.cache
def configs() -> tuple[TcpServerConfig, TcpConfig, ssl.SSLContext]:
    c = certs()
    server = TcpServerConfig("127.0.0.1:0", tls=ServerTlsConfig(c.cert_file, c.key_file),
                             limits=LIMITS, handshake_timeout=5.0)
    client = TcpConfig("127.0.0.1:9", tls=TlsConfig(ca_file=c.cert_file), limits=LIMITS,
                       connect_timeout=5.0)
    assert server.tls is not None
    # One context for every server connection, as the listeners do (loading costs ~1 ms).
    return server, client, server.tls.server_context()


def new_server() -> Connection:
    server, _client, context = configs()
    return server_connection(server, tls_context=context, buffer_pool=None)


def new_client() -> Connection:
    return client_connection(configs()[1], buffer_pool=None)


@functools.cache
def flights() -> tuple[bytes, bytes]:
    """A real ClientHello, and a real server's first flight (ServerHello ... Finished)."""
    client, server = new_client(), new_server()
    server.start(0.0)
    client.start(0.0)
    hello = b"".join(bytes(b) for b in client.data_to_send())
    server.receive_data(hello, 0.0)
    answer = b"".join(bytes(b) for b in server.data_to_send())
    assert hello and answer
    return hello, answer


def finish(conn: Connection, events: list[object], eof: bool) -> None:
    """EOF or a lost socket, the timers, and the checks."""
    if eof:
        conn.receive_data(b"", 2.0)
    else:
        conn.connection_lost(2.0)
    deadline = conn.next_deadline()
    if deadline is not None:
        conn.handle_timer(deadline + 60.0)
    conn.data_to_send()
    events += conn.events()
    check_events(events, closed=conn.is_closed)
    assert conn.is_closed, "EOF or a lost socket must end the connection"


def tls_before_handshake(data: bytes) -> None:
    reader = Reader(data)
    flags = reader.uint(1)
    at_server, mutate, via_buffer, eof = (bool(flags & bit) for bit in (1, 2, 4, 8))
    sizes = cuts_from(reader, 300)
    hello, answer = flights()
    body = damage(reader, hello if at_server else answer) if mutate else reader.rest()
    conn = new_server() if at_server else new_client()
    conn.start(0.0)
    conn.data_to_send()
    events: list[object] = []
    for chunk in cut(body, sizes):
        push(conn, chunk, 0.5, via_buffer)
        out = sum(len(b) for b in conn.data_to_send())
        assert out < 64 * 1024, out  # an answer, not an amplifier
        events += conn.events()
        if conn.is_closed:
            break
    finish(conn, events, eof)


def handshaken() -> tuple[Connection, Connection, list[object], list[object]]:
    client, server = new_client(), new_server()
    pipe = StreamPipe(client, server)
    pipe.start(0.0)
    client_events, server_events = client.events(), server.events()
    assert any(isinstance(e, ConnectionEstablished) for e in client_events), client_events
    assert any(isinstance(e, ConnectionEstablished) for e in server_events), server_events
    return client, server, client_events, server_events


def tls_after_handshake(data: bytes) -> None:
    reader = Reader(data)
    flags = reader.uint(1)
    to_server, damaged, via_buffer, eof = (bool(flags & bit) for bit in (1, 2, 4, 8))
    client, server, client_events, server_events = handshaken()
    sender, receiver = (client, server) if to_server else (server, client)
    events = server_events if to_server else client_events
    pkts = [packet_from(reader, max_payload=600) for _ in range(1 + reader.below(4))]
    for packet in pkts:
        sender.send(packet.payload, biz_type=packet.biz_type, ext_header=packet.ext_header,
                    now=0.5)
    records = b"".join(bytes(b) for b in sender.data_to_send())
    if damaged:
        records = damage(reader, records)
    sizes = cuts_from(reader, 400)
    got: list[bytes] = []
    for chunk in cut(records, sizes):
        push(receiver, chunk, 1.0, via_buffer)
        receiver.data_to_send()
        new = receiver.events()
        events += new
        got += [bytes(e.packet.payload) for e in new
                if isinstance(e, (MessageReceived, RequestReceived))]
        if receiver.is_closed:
            break
    if not damaged:
        assert got == [bytes(p.payload) for p in pkts], (got, pkts)
        assert not receiver.is_closed
    finish(receiver, events, eof)


@given(st.binary(max_size=2000))
def test_tls_before_handshake(data: bytes) -> None:
    tls_before_handshake(data)


@given(st.binary(max_size=1500))
def test_tls_after_handshake(data: bytes) -> None:
    tls_after_handshake(data)


TARGETS = (tls_before_handshake, tls_after_handshake)


def one_input(data: bytes) -> None:
    """The atheris entry: the first byte picks the target."""
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


if __name__ == "__main__":
    main(one_input, [test_tls_before_handshake, test_tls_after_handshake],
         ("msgtrans.core.tls", "msgtrans.core.tcp", "msgtrans.core.errormap",
          "msgtrans.core.connection", "msgtrans.core.session"))
