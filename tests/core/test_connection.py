"""End to end in memory: every protocol through Connection, written once, run for each.

Each case builds a client and a server Connection from configs (as a driver will), joins them
with ConnectionPair, and checks the behaviour the issue asks of every protocol: handshake,
one-way and request/response both ways, keepalive over long silence, clean close, and bad input
ending in a protocol error with the session closed and nothing pending.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.certs import write_self_signed
from msgtrans.core.config import (
    QuicServerConfig,
    ServerTlsConfig,
    TcpConfig,
    TcpServerConfig,
    WebSocketServerConfig,
)
from msgtrans.core.connection import (
    ConnectionEvent,
    client_connection,
    quic_endpoint,
    server_connection,
)
from msgtrans.core.errors import ConfigurationError, TransportError
from msgtrans.core.events import (
    ConnectionClosed,
    ConnectionEstablished,
    ErrorOccurred,
)
from msgtrans.core.memory import Chunker
from msgtrans.core.pair import SERVER_ADDR, ConnectionPair
from msgtrans.core.session import (
    MessageReceived,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
    SessionClosed,
)

PROTOCOLS = ["tcp", "tls", "ws", "wss", "quic"]
STREAMS = ["tcp", "tls", "ws", "wss"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    cert, key = write_self_signed(Path(tmp_path_factory.mktemp("certs")))
    return str(cert), str(key)


def make_pair(kind: str, certs: tuple[str, str], chunker: Chunker | None = None,
              **session: float) -> ConnectionPair:
    cert, key = certs
    tls = ServerTlsConfig(cert, key)
    if kind == "quic":
        client = client_connection(f"quic://localhost:{SERVER_ADDR[1]}?ca={cert}",
                                   resolved=SERVER_ADDR, **session)
        endpoint = quic_endpoint(QuicServerConfig(addr="127.0.0.1:0", cert_file=cert,
                                                  key_file=key))
        return ConnectionPair(client, None, endpoint)
    urls = {"tcp": "tcp://127.0.0.1:1", "tls": f"tls://localhost:1?ca={cert}",
            "ws": "ws://127.0.0.1:1/", "wss": f"wss://localhost:1/?ca={cert}"}
    servers = {"tcp": TcpServerConfig(), "tls": TcpServerConfig(tls=tls),
               "ws": WebSocketServerConfig(), "wss": WebSocketServerConfig(tls=tls)}
    return ConnectionPair(client_connection(urls[kind], **session),
                          server_connection(servers[kind], **session), chunker=chunker)


def started(kind: str, certs: tuple[str, str], **kw: object) -> ConnectionPair:
    pair = make_pair(kind, certs, **kw)  # type: ignore[arg-type]
    pair.start()
    assert any(isinstance(e, ConnectionEstablished) for e in pair.take("client"))
    assert pair.server is not None
    assert any(isinstance(e, ConnectionEstablished) for e in pair.take("server"))
    return pair


def of(events: list[ConnectionEvent], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


def exchange(pair: ConnectionPair, count: int) -> None:
    """Messages and requests both ways; every one arrives once, in order, and is answered."""
    client, server = pair.client, pair.server
    assert server is not None
    directions = ((client, server, "client", "server"), (server, client, "server", "client"))
    for a, b, sa, sb in directions:
        ids = []
        for i in range(count):
            a.send(f"m{i}".encode(), biz_type=i % 256, now=pair.now)
            ids.append(a.request(f"r{i}".encode(), now=pair.now))
        pair.pump(2000)
        got = pair.take(sb)
        assert [bytes(e.packet.payload) for e in of(got, MessageReceived)] == [
            f"m{i}".encode() for i in range(count)]
        requests = of(got, RequestReceived)
        assert [bytes(e.packet.payload) for e in requests] == [f"r{i}".encode()
                                                               for i in range(count)]
        for e in requests:
            b.respond(e.packet, b"re:" + bytes(e.packet.payload), now=pair.now)
        pair.pump(2000)
        answers = of(pair.take(sa), ResponseReceived)
        assert [e.request_id for e in answers] == ids
        assert [bytes(e.packet.payload) for e in answers] == [f"re:r{i}".encode()
                                                              for i in range(count)]
        assert a.session.pending_count == 0


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_both_ways_then_clean_close(kind: str, certs: tuple[str, str]) -> None:
    pair = started(kind, certs)
    exchange(pair, 300)
    big = bytes(range(256)) * 2048  # 512 KiB
    pair.client.send(big, now=pair.now)
    pair.pump(5000)
    [message] = of(pair.take("server"), MessageReceived)
    assert message.packet.payload == big
    assert isinstance(message.packet.payload, memoryview)  # zero-copy above the threshold

    pair.client.close()
    pair.pump(5000, until=lambda: pair.client.is_closed and pair.server.is_closed)  # type: ignore[union-attr]
    for side in ("client", "server"):
        events = pair.take(side)
        [closed] = of(events, ConnectionClosed)
        assert closed.clean, (side, closed)
        assert of(events, SessionClosed)
        assert not of(events, ErrorOccurred)


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_keepalive_over_long_silence(kind: str, certs: tuple[str, str]) -> None:
    pair = started(kind, certs)
    # A session that said nothing is closed at the server's first_packet_timeout: speak once.
    exchange(pair, 1)
    # Ten simulated minutes of silence: pings (WebSocket, QUIC) keep it open.
    start = pair.now
    pair.advance(600.0)
    assert pair.now >= start + 600.0
    assert not pair.client.is_closed, pair.take("client")
    assert pair.server is not None and not pair.server.is_closed
    exchange(pair, 3)


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_bad_input_closes_and_fails_pending(kind: str, certs: tuple[str, str]) -> None:
    pair = started(kind, certs)
    rid = pair.client.request(b"never answered", now=pair.now)
    # The server side's bytes are replaced by garbage on their way to the client.
    garbage = b"\x07" * 64
    if kind == "quic":
        # Inside QUIC the stream is authenticated: break the msgtrans framing instead.
        assert pair.server is not None
        pair.server.machine._write([garbage])  # type: ignore[attr-defined]
        pair.pump(2000, until=lambda: pair.client.is_closed)
    else:
        pair.pump()
        pair.client.receive_data(garbage, pair.now)
        pair.pump(2000)
    events = pair.take("client")
    errors = of(events, ErrorOccurred)
    assert errors and isinstance(errors[0].error, TransportError)
    [closed] = of(events, ConnectionClosed)
    assert not closed.clean
    [failed] = of(events, RequestFailed)
    assert failed.request_id == rid
    assert of(events, SessionClosed)
    assert pair.client.session.pending_count == 0
    assert pair.client.is_closed


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_request_timeout(kind: str, certs: tuple[str, str]) -> None:
    pair = started(kind, certs, request_timeout=2.0)
    rid = pair.client.request(b"slow", now=pair.now)
    pair.pump()
    assert of(pair.take("server"), RequestReceived)
    pair.advance(3.0)
    [failed] = of(pair.take("client"), RequestFailed)
    assert failed.request_id == rid
    assert failed.error.error_code == "timeout.request"


@pytest.mark.parametrize("kind", STREAMS)
@settings(max_examples=15)
@given(cuts=st.lists(st.integers(1, 700), min_size=1, max_size=8))
def test_any_cut_of_the_stream_gives_the_same_messages(
    kind: str, certs: tuple[str, str], cuts: list[int]
) -> None:
    def chunker(data: bytes) -> list[bytes]:
        out, pos, i = [], 0, 0
        while pos < len(data):
            out.append(data[pos : pos + cuts[i % len(cuts)]])
            pos += cuts[i % len(cuts)]
            i += 1
        return out

    pair = started(kind, certs, chunker=chunker)
    exchange(pair, 20)


def test_factories_refuse_the_wrong_kind(certs: tuple[str, str]) -> None:
    cert, key = certs
    with pytest.raises(ConfigurationError):
        server_connection(QuicServerConfig(addr="127.0.0.1:0", cert_file=cert,
                                           key_file=key))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        quic_endpoint(TcpServerConfig())  # type: ignore[arg-type]
    tcp = client_connection(TcpConfig("127.0.0.1:1"))
    assert tcp.transport_kind == "stream"
    with pytest.raises(ConfigurationError):
        tcp.receive_datagram(b"", SERVER_ADDR, 0.0)
    quic = client_connection("quic://127.0.0.1:1")
    assert quic.transport_kind == "datagram"
    with pytest.raises(ConfigurationError):
        quic.data_to_send()



@pytest.mark.parametrize("kind", ["tcp", "quic"])
def test_idle_session_closes_its_connection(kind: str, certs: tuple[str, str]) -> None:
    pair = started(kind, certs, idle_timeout=5.0)
    assert pair.client.protocol.value == ("tcp" if kind == "tcp" else "quic")
    rid = pair.client.request(b"x", now=pair.now, timeout=60.0)
    pair.pump()
    pair.take("server")
    pair.advance(6.0)
    events = pair.take("client")
    [failed] = of(events, RequestFailed)
    assert failed.request_id == rid and failed.error.error_code == "timeout.idle"
    [closed] = of(events, SessionClosed)
    assert closed.error is not None and closed.error.error_code == "timeout.idle"
    pair.pump(5000, until=lambda: pair.client.is_closed)
    assert pair.client.is_closed


def test_watermarks_and_read_bound_surface_as_events(certs: tuple[str, str]) -> None:
    from msgtrans.core.session import ReadPaused, ReadResumed, SendPaused, SendResumed

    pair = started("tcp", certs, send_high_water_messages=2, send_low_water_messages=1,
                   receive_max_messages=2)
    client = pair.client
    for _ in range(3):
        client.send(b"x", now=pair.now)
    assert of(client.events(), SendPaused)
    client.flushed(3 * 17, 3)
    assert of(client.events(), SendResumed)
    for _ in range(3):
        client.message_delivered(10)
    assert of(client.events(), ReadPaused)
    for _ in range(3):
        client.message_consumed(10)
    assert of(client.events(), ReadResumed)


def test_failed_send_leaves_nothing_pending(certs: tuple[str, str]) -> None:
    from msgtrans.core.errors import ResourceError
    from msgtrans.core.packet import Limits

    client = client_connection(TcpConfig("127.0.0.1:1", limits=Limits(max_payload=10)))
    client.start(0.0)
    with pytest.raises(ResourceError):
        client.request(bytes(11), now=0.0)
    assert client.session.pending_count == 0
    client.send(b"ok", now=0.0)
    assert b"".join(client.data_to_send()).endswith(b"ok")
    assert not client.write_closed


@pytest.mark.parametrize("kind", ["tcp", "quic"])
def test_connection_lost_fails_pending(kind: str, certs: tuple[str, str]) -> None:
    pair = started(kind, certs)
    rid = pair.client.request(b"x", now=pair.now)
    pair.client.connection_lost(pair.now)
    events = pair.client.events()
    [failed] = of(events, RequestFailed)
    assert failed.request_id == rid
    assert of(events, SessionClosed)


def test_receive_into_path(certs: tuple[str, str]) -> None:
    client = client_connection("tcp://127.0.0.1:1")
    server = server_connection(TcpServerConfig())
    server.start(0.0)
    client.start(0.0)
    client.send(bytes(100_000), now=0.0)  # above the zero-copy threshold
    data = memoryview(b"".join(client.data_to_send()))
    while data:
        buf = server.get_buffer()
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        del buf
        data = data[n:]
        server.buffer_updated(n, 0.0)
    [message] = of(server.events(), MessageReceived)
    assert message.packet.payload == bytes(100_000)


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_the_core_makes_the_protocol_decisions(kind: str, certs: tuple[str, str]) -> None:
    """What a driver asks instead of naming a protocol: the socket kind from the config, the
    close code when this end goes away, the plain-TCP fast path; and the going-away close
    reaches the peer with that code."""
    from msgtrans.core.config import to_config, to_server_config

    cert, key = certs
    urls = {"tcp": "tcp://127.0.0.1:1", "tls": f"tls://localhost:1?ca={cert}",
            "ws": "ws://127.0.0.1:1/", "wss": f"wss://localhost:1/?ca={cert}",
            "quic": f"quic://localhost:1?ca={cert}"}
    client_config = to_config(urls[kind])
    server_url = urls[kind].split("?")[0].replace("localhost", "127.0.0.1")
    server_config = to_server_config(server_url + (f"?cert={cert}&key={key}"
                                                   if kind in ("tls", "wss", "quic") else ""))
    expected_kind = "datagram" if kind == "quic" else "stream"
    assert client_config.transport_kind == expected_kind
    assert server_config.transport_kind == expected_kind
    pair = started(kind, certs)
    assert pair.server is not None
    for conn in (pair.client, pair.server):
        assert conn.transport_kind == expected_kind
        assert conn.going_away_code == (1001 if kind in ("ws", "wss") else None)
        assert (conn.plain_tcp is conn.machine) == (kind == "tcp")
        assert (conn.plain_tcp is None) == (kind != "tcp")
    pair.server.close(pair.server.going_away_code, "shutdown")
    pair.pump(2000)
    closed = of(pair.take("client"), ConnectionClosed)
    assert len(closed) == 1
    if kind in ("ws", "wss"):
        assert closed[0].code == 1001
        assert closed[0].clean


# --- the drivers' send paths: queue_send / queue_request / queue_response ------------------------

fields = st.tuples(
    st.integers(-1, 256),  # biz_type, out of range at both ends
    st.binary(max_size=64),
    st.one_of(st.binary(max_size=8), st.just(b"e" * 65536)),  # ext header, or one too long
)


def _outcome(call: object, *args: object) -> object:
    try:
        return call(*args)  # type: ignore[operator]
    except ConfigurationError as exc:
        return ("error", exc.field)


@pytest.mark.parametrize("kind", PROTOCOLS)
@settings(max_examples=25, deadline=None)
@given(plan=st.lists(fields, min_size=1, max_size=6))
def test_queue_paths_deliver_what_they_count(
    kind: str, certs: tuple[str, str], plan: list[tuple[int, bytes, bytes]]
) -> None:
    """Whatever the protocol under it, each queue path counts the message's wire size (header
    plus ext header plus payload) in the send backlog and the unflushed counters, refuses
    fields out of range with the field's ConfigurationError and no id spent, and the peer
    receives exactly what was queued, answered in order."""
    pair = started(kind, certs)
    client, server = pair.client, pair.server
    assert server is not None
    queued = payload_bytes = 0
    sent: list[tuple[int, bytes, bytes]] = []
    request_ids = []
    for i, (biz, payload, ext) in enumerate(plan):
        valid = 0 <= biz <= 255 and len(ext) <= 65535
        last = client.session.last_message_id
        if i % 2:
            got = _outcome(client.queue_request, payload, biz, ext, None, pair.now)
        else:
            got = _outcome(client.queue_send, payload, biz, ext, pair.now)
        if not valid:
            assert got == ("error", "biz_type" if not 0 <= biz <= 255 else "ext_header")
            assert client.session.last_message_id == last
            continue
        if i % 2:
            assert isinstance(got, int) and client.session.is_pending(got)
            request_ids.append(got)
        else:
            # Whether to look at the events: always on QUIC, on a pause elsewhere.
            assert got is (kind == "quic" or client.session.has_events)
        queued += len(payload) + 16 + len(ext)
        payload_bytes += len(payload)
        sent.append((biz, payload, ext))
    assert client.session.send_backlog[0] == queued
    assert (client.unflushed_bytes, client.unflushed_payload) == (queued, payload_bytes)
    assert client.take_unflushed()[:2] == (len(sent), payload_bytes)
    assert client.take_unflushed() == (0, 0, False)
    assert client.session.send_backlog[0] == 0
    pair.pump(2000)
    got_server = pair.take("server")
    received = [e.packet for e in got_server if isinstance(e, MessageReceived | RequestReceived)]
    assert [(p.biz_type, bytes(p.payload), bytes(p.ext_header)) for p in received] == sent
    for e in of(got_server, RequestReceived):
        server.queue_response(e.packet, b"re", None, b"", pair.now)
    assert server.unflushed_bytes == len(request_ids) * (2 + 16)
    pair.pump(2000)
    answers = of(pair.take("client"), ResponseReceived)
    assert [a.request_id for a in answers] == request_ids
    assert client.session.pending_count == 0


@pytest.mark.parametrize("kind", ["tcp", "ws"])
def test_queue_packets_counts_a_batch_even_when_refused(kind: str,
                                                        certs: tuple[str, str]) -> None:
    from msgtrans.core.errors import TransportConnectionError

    pair = started(kind, certs)
    client = pair.client
    packets = [client.session.send(b"p" * n, now=pair.now) for n in (1, 2, 3)]
    client.queue_packets(packets)
    assert (client.unflushed_packets, client.unflushed_payload) == (3, 6)
    assert client.unflushed_bytes == client.session.send_backlog[0] == 6 + 3 * 16
    client.take_unflushed()
    client.machine.close()
    with pytest.raises(TransportConnectionError):
        client.queue_packets([client.session.send(b"x", now=pair.now)]
                             if client.session.state.value == "open" else packets[:1])
    assert client.unflushed_packets == 1


def test_queue_request_is_withdrawn_when_the_machine_refuses(certs: tuple[str, str]) -> None:
    from msgtrans.core.errors import ResourceError
    from msgtrans.core.packet import Limits

    for url in ("tcp://127.0.0.1:1", "ws://127.0.0.1:1/"):
        client = client_connection(to_limited(url, Limits(max_payload=10)))
        client.start(0.0)
        with pytest.raises(ResourceError):
            client.queue_request(bytes(11), 0, b"", None, 0.0)
        assert client.session.pending_count == 0


def to_limited(url: str, limits: object) -> object:
    from dataclasses import replace

    from msgtrans.core.config import to_config

    return replace(to_config(url), limits=limits)


@pytest.mark.parametrize("kind", ["tcp", "ws"])
def test_queue_response_checks_what_it_answers(kind: str, certs: tuple[str, str]) -> None:
    from msgtrans.core.packet import Packet, PacketType

    pair = started(kind, certs)
    server = pair.server
    assert server is not None
    one_way = Packet(PacketType.ONE_WAY, message_id=3)
    with pytest.raises(ConfigurationError):
        server.queue_response(one_way, b"x", None, b"", pair.now)
    request = Packet(PacketType.REQUEST, message_id=3, biz_type=7)
    with pytest.raises(ConfigurationError):
        server.queue_response(request, b"x", 999, b"", pair.now)
    server.queue_response(request, b"x", 9, b"ab", pair.now)
    assert server.unflushed_bytes == 1 + 16 + 2
    pair.pump(2000)
    # The client has no request 3 pending: the response is dropped and counted.
    pair.take("client")
    assert pair.client.session.stats.unmatched_responses == 1


@pytest.mark.parametrize("kind", STREAMS)
def test_an_idle_timeout_drops_the_stream_without_waiting_for_the_silent_peer(
        kind: str, certs: tuple[str, str]) -> None:
    # The peer is gone (a network cut): nothing it sends arrives.  The client must be closed at
    # its idle_timeout, not close_timeout later after a close handshake nobody answers.
    pair = started(kind, certs, idle_timeout=5.0)
    exchange(pair, 1)
    client = pair.client
    now = pair.now + 6.0
    client.handle_timer(now)
    assert client.is_closed
    events = client.events()
    [closed] = of(events, SessionClosed)
    assert closed.error is not None and closed.error.error_code == "timeout.idle"
    assert of(events, ConnectionClosed)
