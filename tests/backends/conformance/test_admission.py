"""Admission on every backend: the first-packet timeout, the per-peer session limit, the
connection rate limit and the application's admission hook, each refusal counted by reason in
``stats()`` and ``stats_prometheus()``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from msgtrans.core.admission import Candidate, Refuse
from msgtrans.core.packet import Packet, PacketType

from .adapters import WAIT, Backend, Certs, Transport, TransportError, client_url

#: Seconds the first-packet tests give a connection: small, so the test takes well under 1 s.
FIRST_PACKET = 0.3


@contextlib.asynccontextmanager
async def transport_with(backend: Backend, configure: Callable[[Any], Any]) -> AsyncIterator[
        Transport]:
    """A transport whose builder *configure* set up (the adapters' transport() takes only the
    session settings)."""
    builder = configure(backend.lib.Transport.builder())
    async with backend._open(builder) as raw:
        try:
            yield Transport(backend, raw)
        finally:
            await backend.call(raw.graceful_shutdown, 2.0)


async def refusals_reach(server: Transport, reason: str, count: int) -> dict[str, int]:
    """Wait (bounded) until the server counted *count* refusals for *reason*; its refusals."""
    with anyio.fail_after(WAIT):
        while True:
            refusals = dict(server.raw.stats().refusals)
            if refusals.get(reason, 0) >= count:
                return refusals
            await anyio.sleep(0.01)


async def dropped(stream: anyio.abc.ByteStream) -> bytes:
    """What the server sends before it drops *stream* (EOF or reset), bounded; *stream* is
    closed afterwards."""
    data = b""
    try:
        with anyio.fail_after(WAIT):
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                pass
    finally:
        await stream.aclose()
    return data


async def connect_from(host: str, port: int) -> anyio.abc.SocketStream:
    return await anyio.connect_tcp("127.0.0.1", port, local_host=host)


async def dropped_from(host: str, port: int) -> bytes:
    """:func:`dropped` on a new connection from *host*; ``b""`` when the server's reset came
    before the connect returned (a refused TCP session is reset at once)."""
    try:
        stream = await connect_from(host, port)
    except OSError:
        return b""
    return await dropped(stream)


def _has_127_0_0_2() -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.2", 0))
        except OSError:
            return False
    return True


needs_second_loopback = pytest.mark.skipif(not _has_127_0_0_2(),
                                           reason="127.0.0.2 is not a loopback address here")


# --- first_packet_timeout ----------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["tcp", "ws"])
def test_a_silent_connection_is_closed_after_first_packet_timeout(
        backend: Backend, certs: Certs, proto: str) -> None:
    """A plain TCP connection that sends nothing (and a WebSocket one that sends nothing after
    its upgrade) is closed after first_packet_timeout, counted; one that sent a packet is not."""

    async def body() -> None:
        async with transport_with(backend, lambda b: b.first_packet_timeout(FIRST_PACKET)) \
                as server, server.listen(proto, certs) as listener:
            if proto == "tcp":
                speaking = await connect_from("127.0.0.1", listener.port)
                await speaking.send(Packet(PacketType.ONE_WAY, 1, 0, b"hello").encode())
                silent = await connect_from("127.0.0.1", listener.port)
                started = time.monotonic()
                assert await dropped(silent) == b""
                elapsed = time.monotonic() - started
                assert FIRST_PACKET * 0.8 <= elapsed < FIRST_PACKET + 3.0
                # The one that spoke is still served.
                session = await listener.accept()
                assert (await session.receive()).payload == b"hello"
                await speaking.aclose()
            else:
                async with transport_with(backend, lambda b: b) as client:
                    silent = await client.connect(client_url(proto, listener.port, certs))
                    started = time.monotonic()
                    await silent.wait_closed()
                    assert time.monotonic() - started >= FIRST_PACKET * 0.8
            refusals = await refusals_reach(server, "first_packet_timeout", 1)
            assert refusals == {"first_packet_timeout": 1}
            # A dropped session is not a refused connection.
            assert "connection.refused_by_server" not in server.raw.stats().errors

    backend.run(body)


def test_first_packet_timeout_is_a_server_config_field_and_url_parameter(
        backend: Backend) -> None:
    lib = backend.lib
    assert lib.TcpServerConfig().first_packet_timeout == 30.0
    config = lib.TcpServerConfig(first_packet_timeout=2.5)
    assert config.to_url().endswith("?first_packet_timeout=2.5")
    assert lib.TcpServerConfig(first_packet_timeout=None).first_packet_timeout is None
    with pytest.raises(lib.ConfigurationError) as info:
        lib.WebSocketServerConfig(first_packet_timeout=0)
    assert info.value.field == "first_packet_timeout"
    with pytest.raises(lib.ConfigurationError) as info:
        lib.Transport.builder().first_packet_timeout(-1)
    assert info.value.field == "first_packet_timeout"


# --- max_sessions_per_peer -----------------------------------------------------------------------


@needs_second_loopback
def test_max_sessions_per_peer_refuses_the_next_connection_of_that_peer_only(
        backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with transport_with(backend, lambda b: b.max_sessions_per_peer(2)) as server, \
                server.listen("tcp", certs) as listener:
            first = await connect_from("127.0.0.1", listener.port)
            second = await connect_from("127.0.0.1", listener.port)
            accepted = [await listener.accept(), await listener.accept()]
            third = await connect_from("127.0.0.1", listener.port)
            assert await dropped(third) == b""
            refusals = await refusals_reach(server, "per_peer", 1)
            assert refusals == {"per_peer": 1}
            # Another address is another peer.
            other = await connect_from("127.0.0.2", listener.port)
            session = await listener.accept()
            assert session.peer_address[0] == "127.0.0.2"
            # A peer's session that ends makes room for the next one.
            await first.aclose()
            await accepted[0].wait_closed()
            fourth = await connect_from("127.0.0.1", listener.port)
            again = await listener.accept()
            assert again.peer_address[0] == "127.0.0.1"
            assert dict(server.raw.stats().refusals) == {"per_peer": 1}
            for stream in (second, other, fourth):
                await stream.aclose()

    backend.run(body)


# --- connection_rate -----------------------------------------------------------------------------


def test_connection_rate_accepts_a_burst_then_refuses(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        # A refill of one token per 100 s: the burst is all this test can get.
        async with transport_with(backend, lambda b: b.connection_rate(0.01, burst=3)) \
                as server, server.listen("tcp", certs) as listener:
            streams = [await connect_from("127.0.0.1", listener.port) for _ in range(5)]
            for _ in range(3):
                await listener.accept()
            refusals = await refusals_reach(server, "rate", 2)
            assert refusals == {"rate": 2}
            stats = server.raw.stats()
            assert stats.errors["connection.refused_by_server"] == 2
            assert stats.as_dict()["refusals"] == {"rate": 2}
            text = server.raw.stats_prometheus()
            assert 'msgtrans_connections_refused_total{reason="rate"} 2' in text
            for stream in streams:
                await stream.aclose()

    backend.run(body)


# --- the admission hook -------------------------------------------------------------------------


_UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Authorization: {auth}\r\n\r\n"
)


def test_the_admission_hook_refuses_a_websocket_upgrade_with_403(
        backend: Backend, certs: Certs) -> None:
    seen: list[Candidate] = []

    def hook(candidate: Candidate) -> Refuse | None:
        seen.append(candidate)
        if candidate.header("authorization") != "Bearer good":
            return Refuse(401 if candidate.path == "/login" else 403, "not for you")
        return None

    async def body() -> None:
        async with transport_with(backend, lambda b: b.admission(hook)) as server, \
                server.listen("ws", certs, path=None) as listener:
            for path, status in (("/private", b"403"), ("/login", b"401")):
                raw = await connect_from("127.0.0.1", listener.port)
                await raw.send(_UPGRADE.format(path=path, auth="Bearer bad").encode())
                answer = await dropped(raw)
                assert answer.startswith(b"HTTP/1.1 " + status), answer
                assert b"not for you" in answer
            refusals = await refusals_reach(server, "admission", 2)
            assert refusals == {"admission": 2}
            # Counted once each, though the refused handshake is an error of the session too.
            assert server.raw.stats().errors["connection.refused_by_server"] == 2
            raw = await connect_from("127.0.0.1", listener.port)
            await raw.send(_UPGRADE.format(path="/chat?x=1", auth="Bearer good").encode())
            with anyio.fail_after(WAIT):
                head = await raw.receive()
            assert head.startswith(b"HTTP/1.1 101"), head
            session = await listener.accept()
            assert session.protocol.value == "websocket"
            await raw.aclose()
        assert [c.path for c in seen] == ["/private", "/login", "/chat?x=1"]
        last = seen[-1]
        assert last.protocol == "ws" and last.peer_address is not None
        assert last.peer_address[0] == "127.0.0.1"
        assert last.local_address is not None and last.local_address[1] == listener.port

    backend.run(body)


@needs_second_loopback
def test_the_admission_hook_refuses_a_tcp_peer_by_address(
        backend: Backend, certs: Certs) -> None:
    def hook(candidate: Candidate) -> bool:
        assert candidate.protocol == "tcp" and candidate.path is None
        return candidate.peer_address is not None and candidate.peer_address[0] != "127.0.0.2"

    async def body() -> None:
        async with transport_with(backend, lambda b: b.admission(hook)) as server, \
                server.listen("tcp", certs) as listener:
            assert await dropped_from("127.0.0.2", listener.port) == b""
            assert await refusals_reach(server, "admission", 1) == {"admission": 1}
            welcome = await connect_from("127.0.0.1", listener.port)
            await welcome.send(Packet(PacketType.ONE_WAY, 1, 0, b"in").encode())
            session = await listener.accept()
            assert session.peer_address[0] == "127.0.0.1"
            assert (await session.receive()).payload == b"in"
            await welcome.aclose()
            assert server.raw.stats().errors["connection.refused_by_server"] == 1

    backend.run(body)


def test_admission_settings_are_checked(backend: Backend) -> None:
    builder = backend.lib.Transport.builder
    for call, field in ((lambda: builder().max_sessions_per_peer(0), "max_sessions_per_peer"),
                        (lambda: builder().connection_rate(0), "connection_rate"),
                        (lambda: builder().connection_rate(5, burst=0), "connection_rate.burst"),
                        (lambda: builder().admission("no"), "admission")):
        with pytest.raises(backend.lib.ConfigurationError) as info:
            call()
        assert info.value.field == field
    settings = builder().max_sessions_per_peer(3).connection_rate(2.5).settings()
    assert settings["max_sessions_per_peer"] == 3
    assert settings["connection_rate"] == {"per_second": 2.5, "burst": 3}


# --- the admission hook on the first packet -----------------------------------------------------

#: The protocols whose hook can decide on the first packet (WebSocket decides at its upgrade).
FIRST_PACKET_PROTOCOLS = ["tcp", "tls", "quic"]
#: Seconds within which a refused session's server side must be gone (the close timeout is 10).
RELEASED = 1.0


def token_hook(seen: list[Candidate]) -> Callable[[Candidate], Refuse | None]:
    """A hook that lets in a session whose first packet is ``token:good...``, refuses the
    rest with the reason ``bad token``; it records every candidate in *seen*."""

    def hook(candidate: Candidate) -> Refuse | None:
        seen.append(candidate)
        first = candidate.first_packet
        if first is None or not first.payload.startswith(b"token:good"):
            return Refuse(reason="bad token")
        return None

    return hook


def live_sessions(server: Transport) -> int:
    """The server's live sessions, in any state (closing ones too: their sockets are held)."""
    return sum(server.raw.stats().sessions.values())


async def released(server: Transport) -> float:
    """Wait (bounded by RELEASED) until the server holds no session; the seconds it took."""
    started = time.monotonic()
    with anyio.fail_after(RELEASED):
        while live_sessions(server):
            await anyio.sleep(0.005)
    return time.monotonic() - started


@pytest.mark.parametrize("proto", FIRST_PACKET_PROTOCOLS)
def test_the_hook_sees_the_first_packet_and_an_accepted_session_gets_it_first(
        backend: Backend, certs: Certs, proto: str) -> None:
    """With first_packet=True the hook gets the client's first request (payload, biz_type,
    ext_header, id) before accept() hands the session out; the accepted session then gets
    that request as its first message (answerable, once) and the later ones in order."""
    seen: list[Candidate] = []

    async def body() -> None:
        async with transport_with(
                backend, lambda b: b.admission(token_hook(seen), first_packet=True)) as server, \
                server.listen(proto, certs) as listener, \
                transport_with(backend, lambda b: b) as client:
            session = await client.connect(client_url(proto, listener.port, certs))
            answers: list[Any] = []

            async def ask() -> None:
                answers.append(await session.request(b"token:good 1", biz_type=7,
                                                     ext_header=b"ext"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask)
                accepted = await listener.accept()
                first = await accepted.receive()
                assert (first.payload, first.biz_type, first.is_request) == (
                    b"token:good 1", 7, True)
                await first.respond(b"welcome")
            assert answers[0].payload == b"welcome"
            for n in (2, 3):
                await session.send(b"m%d" % n)
            assert [(await accepted.receive()).payload for _ in range(2)] == [b"m2", b"m3"]
            await session.close()
        assert len(seen) == 1
        candidate = seen[0]
        assert candidate.protocol == proto and candidate.path is None
        assert candidate.peer_address is not None and candidate.peer_address[0] == "127.0.0.1"
        packet = candidate.first_packet
        assert packet is not None
        assert (packet.packet_type, packet.biz_type, packet.payload, packet.ext_header) == (
            PacketType.REQUEST, 7, b"token:good 1", b"ext")
        assert packet.message_id == first.raw.message_id
        assert isinstance(packet.payload, bytes)
        assert "admission" not in server.raw.stats().refusals

    backend.run(body)


@pytest.mark.parametrize("proto", FIRST_PACKET_PROTOCOLS)
def test_a_first_packet_the_hook_refuses_closes_the_session_at_once(
        backend: Backend, certs: Certs, proto: str) -> None:
    """A first request the hook refuses by its payload (a bad token) fails on the client
    with a TransportError at once, is counted in refusals["admission"], never reaches
    accept(), and the server holds nothing of it within a second."""
    seen: list[Candidate] = []

    async def body() -> None:
        async with transport_with(
                backend, lambda b: b.admission(token_hook(seen), first_packet=True)) as server, \
                server.listen(proto, certs) as listener, \
                transport_with(backend, lambda b: b) as client:
            session = await client.connect(client_url(proto, listener.port, certs))
            started = time.monotonic()
            with pytest.raises(TransportError):
                await session.request(b"token:bad", timeout=WAIT)
            assert time.monotonic() - started < RELEASED
            await released(server)
            assert await refusals_reach(server, "admission", 1) == {"admission": 1}
            assert server.raw.stats().errors["connection.refused_by_server"] == 1
            await session.wait_closed()
            # The listener goes on: a good token is let in, and accept() hands out only it.
            good = await client.connect(client_url(proto, listener.port, certs))
            await good.send(b"token:good")
            accepted = await listener.accept()
            assert (await accepted.receive()).payload == b"token:good"
            await good.close()
        assert [c.first_packet.payload for c in seen if c.first_packet] == [
            b"token:bad", b"token:good"]

    backend.run(body)


@pytest.mark.parametrize("proto", FIRST_PACKET_PROTOCOLS)
@pytest.mark.parametrize("per_peer", [None, 100])
def test_a_silent_session_held_for_its_first_packet_is_dropped_at_first_packet_timeout(
        backend: Backend, certs: Certs, proto: str, per_peer: int | None) -> None:
    """With first_packet=True a client that sends nothing never reaches the hook: it is
    dropped after first_packet_timeout (QUIC too: the builder's), counted once as such
    (with a per-peer limit too, which follows the session's end on its own)."""
    seen: list[Candidate] = []

    def configure(builder: Any) -> Any:
        builder = builder.admission(token_hook(seen), first_packet=True)
        if per_peer is not None:
            builder = builder.max_sessions_per_peer(per_peer)
        return builder.first_packet_timeout(FIRST_PACKET)

    async def body() -> None:
        async with transport_with(backend, configure) as server, \
                server.listen(proto, certs) as listener, \
                transport_with(backend, lambda b: b) as client:
            silent = await client.connect(client_url(proto, listener.port, certs))
            started = time.monotonic()
            await silent.wait_closed()
            elapsed = time.monotonic() - started
            # Loose below: the blocking backend's connect returns through a thread, some time
            # after the server's handshake (where the deadline starts) under load.
            assert FIRST_PACKET * 0.5 <= elapsed < FIRST_PACKET + 3.0
            refusals = await refusals_reach(server, "first_packet_timeout", 1)
            assert refusals == {"first_packet_timeout": 1}
            del listener
        assert seen == []

    backend.run(body)


@pytest.mark.parametrize("proto", ["tcp", "tls"])
@pytest.mark.parametrize("first_packet", [False, True])
def test_a_refused_tcp_or_tls_peer_that_keeps_its_socket_holds_nothing_on_the_server(
        backend: Backend, certs: Certs, proto: str, first_packet: bool) -> None:
    """A TCP or TLS session the hook refuses (at its handshake, or at its first packet) is
    reset at once: the server's session is gone within a second though the peer never closes
    its side (a graceful close would wait for it up to the close timeout, 10 s), and the peer
    reads a reset or EOF."""
    import ssl

    seen: list[Candidate] = []

    async def body() -> None:
        async with transport_with(
                backend, lambda b: b.admission(token_hook(seen), first_packet=first_packet)
                ) as server, server.listen(proto, certs) as listener:
            raw: anyio.abc.ByteStream | None = None
            try:
                if proto == "tls":
                    context = ssl.create_default_context(cafile=str(certs[0]))
                    raw = await anyio.connect_tcp("localhost", listener.port,
                                                  ssl_context=context,
                                                  tls_standard_compatible=False)
                else:
                    raw = await connect_from("127.0.0.1", listener.port)
                if first_packet:
                    await raw.send(Packet(PacketType.REQUEST, 1, 0, b"token:bad").encode())
            except (OSError, anyio.BrokenResourceError):
                # The reset can come before the client's connect (or send) returns.
                raw = None
            await refusals_reach(server, "admission", 1)
            assert await released(server) < RELEASED
            if raw is not None:
                started = time.monotonic()
                assert await dropped(raw) == b""
                assert time.monotonic() - started < RELEASED
        assert len(seen) == 1

    backend.run(body)


class _Echo:
    """serve()'s handler: answers each request with its payload, records one-way messages."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def on_request(self, session: Any, message: Any) -> bytes:
        return b"echo " + message.payload

    async def on_message(self, session: Any, message: Any) -> None:
        self.messages.append(message.payload)


@pytest.mark.parametrize("proto", FIRST_PACKET_PROTOCOLS)
def test_serve_answers_the_first_request_the_hook_accepted(
        backend: Backend, certs: Certs, proto: str) -> None:
    """Under serve(), the request the hook decided on reaches on_request once and its
    response arrives; a refused session never reaches the handler."""
    seen: list[Candidate] = []
    handler = _Echo()

    async def body() -> None:
        async with transport_with(
                backend, lambda b: b.admission(token_hook(seen), first_packet=True)) as server, \
                server.serve(proto, certs, handler) as port, \
                transport_with(backend, lambda b: b) as client:
            refused = await client.connect(client_url(proto, port, certs))
            with pytest.raises(TransportError):
                await refused.request(b"token:bad", timeout=WAIT)
            session = await client.connect(client_url(proto, port, certs))
            assert (await session.request(b"token:good")).payload == b"echo token:good"
            await session.send(b"one")
            assert (await session.request(b"two")).payload == b"echo two"
            with anyio.fail_after(WAIT):  # the blocking backend's handlers run in workers
                while not handler.messages:
                    await anyio.sleep(0.005)
            assert handler.messages == [b"one"]
            await session.close()
            assert dict(server.raw.stats().refusals) == {"admission": 1}
        assert len(seen) == 2

    backend.run(body)


def test_with_first_packet_websocket_is_still_decided_at_its_upgrade(
        backend: Backend, certs: Certs) -> None:
    """WebSocket's hook runs on the upgrade request (path, headers) with or without
    first_packet: its candidate has no first_packet, and accept() gets the session at once."""
    seen: list[Candidate] = []

    def hook(candidate: Candidate) -> None:
        seen.append(candidate)

    async def body() -> None:
        async with transport_with(backend, lambda b: b.admission(hook, first_packet=True)) \
                as server, server.listen("ws", certs) as listener, \
                transport_with(backend, lambda b: b) as client:
            session = await client.connect(client_url("ws", listener.port, certs))
            accepted = await listener.accept()
            await session.send(b"hi")
            assert (await accepted.receive()).payload == b"hi"
            await session.close()
        assert len(seen) == 1 and seen[0].path == "/" and seen[0].first_packet is None

    backend.run(body)


def test_admission_first_packet_is_checked(backend: Backend) -> None:
    builder = backend.lib.Transport.builder
    with pytest.raises(backend.lib.ConfigurationError) as info:
        builder().admission(lambda c: None, first_packet="yes")  # type: ignore[arg-type]
    assert info.value.field == "admission.first_packet"
    hook = lambda c: None  # noqa: E731
    assert builder().admission(hook, first_packet=True).settings()["admission"] is not None
