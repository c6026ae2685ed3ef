"""Sessions through a faulty network: every request gets its exact response or a clear
``TransportError`` within a bound, nothing hangs, nothing received is lost or duplicated, and
a session the network broke ends closed and forgotten.

The faults come from the in-process proxies of :mod:`tests.faults`: the TCP proxy cuts (FIN),
resets (RST), stalls, delays and splits the byte stream of TCP, TLS and WebSocket sessions at
offsets measured on a clean connection first (inside the handshake, inside a frame, between two
frames); the UDP proxy drops, duplicates, reorders and delays QUIC's datagrams.  The grid is
kept small on purpose (each case takes a fraction of a second).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from tests.faults.tcp_proxy import Faults, TcpProxy
from tests.faults.udp_proxy import Datagrams, UdpProxy

from .adapters import (
    BACKENDS,
    Backend,
    Certs,
    CloseReason,
    Msg,
    ProtocolError,
    Session,
    SessionState,
    Transport,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
    client_url,
    open_pool,
)

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

STREAM_PROTOCOLS = ["tcp", "tls", "ws"]
BOUND = 3.0  # seconds any one call may take through a faulty network
REQUEST_TIMEOUT = 0.5
PAYLOAD = b"p" * 300  # several TCP pieces when the proxy splits the stream


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.name.startswith("Trio thread")}


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    before = _threads()
    yield
    end = time.monotonic() + BOUND
    while _threads() - before and time.monotonic() < end:
        time.sleep(0.01)
    assert not _threads() - before, [t.name for t in _threads() - before]


class Echo:
    """The server: a request is answered ``re:`` + payload, a one-way message is echoed back
    as ``echo:`` + payload (either may fail once the network broke: serve() contains it)."""

    async def on_request(self, session: Session, message: Msg) -> bytes:
        return b"re:" + message.payload

    async def on_message(self, session: Session, message: Msg) -> None:
        await session.send(b"echo:" + message.payload)


async def eventually(check: Any, what: str) -> None:
    with anyio.fail_after(BOUND):
        while not check():
            await anyio.sleep(0.005)


async def forgotten(transport: Transport) -> None:
    """The transport's session table empties within the bound."""
    await eventually(lambda: transport.session_count() == 0, "session table empty")


async def request_or_error(session: Session, i: int, **kw: float
                           ) -> bytes | TransportError:
    """The request's exact response, or the TransportError it raised, within the bound
    (*kw*: the request's own ``timeout``)."""
    payload = b"%d:" % i + PAYLOAD
    with anyio.fail_after(BOUND):  # a hang fails the test here
        try:
            reply = await session.request(payload, **kw)
        except TransportError as exc:
            return exc
    assert reply.payload == b"re:" + payload, "a response that is not this request's"
    return reply.payload


@contextlib.asynccontextmanager
async def through_tcp_proxy(backend: Backend, proto: str, certs: Certs
                            ) -> AsyncIterator[tuple[Transport, Transport, TcpProxy]]:
    async with backend.transport() as server, \
            backend.transport(request_timeout=REQUEST_TIMEOUT, connect_timeout=1.0) as client, \
            server.serve(proto, certs, Echo()) as port:
        with TcpProxy(("127.0.0.1", port)) as proxy:
            yield server, client, proxy
            # Whatever the fault did, the client's session ended and the table emptied.
            await forgotten(client)


async def connect(client: Transport, proto: str, port: int, certs: Certs) -> Session:
    with anyio.fail_after(BOUND):
        return await client.connect(client_url(proto, port, certs))


async def probe(client: Transport, proxy: TcpProxy, proto: str, certs: Certs,
                requests: int = 2) -> list[dict[str, int]]:
    """Bytes per direction on a clean connection through *proxy*: after the handshake, then
    after each request (the offsets the faults are set at)."""
    known = len(proxy.connections)
    session = await connect(client, proto, proxy.port, certs)
    await eventually(lambda: len(proxy.connections) > known, "the proxy accepted")
    stats = proxy.connections[-1]
    marks = []
    for i in range(requests + 1):
        if i:
            assert await request_or_error(session, i) == b"re:%d:" % i + PAYLOAD
        await anyio.sleep(0.02)  # the proxy counts a piece just after its send returned
        marks.append(dict(stats.forwarded))
    await session.close()
    return marks


async def ends_closed(session: Session, client: Transport, within: float = BOUND) -> None:
    """The broken session ends closed, with a reason, and is forgotten."""
    with anyio.fail_after(within):
        await session.wait_closed()
    assert session.state is SessionState.CLOSED
    assert session.close_reason in (CloseReason.ERROR, CloseReason.PEER_CLOSED)
    await forgotten(client)


# --- cut and reset ----------------------------------------------------------------------------

# (fault, direction, where): where is "handshake" (half-way through the handshake's bytes; plain
# TCP has none, so at byte 0), "mid-frame" (half-way through the second request or response)
# or "between" (right after the first exchange: the first request gets its answer).
CUTS = [
    ("cut", "c2s", "handshake"),
    ("reset", "s2c", "handshake"),
    ("cut", "s2c", "mid-frame"),
    ("reset", "c2s", "mid-frame"),
    ("cut", "c2s", "between"),
    ("reset", "s2c", "between"),
]


def _offset(marks: list[dict[str, int]], direction: str, where: str) -> int:
    if where == "handshake":
        return marks[0][direction] // 2
    if where == "between":
        return marks[1][direction]
    return (marks[1][direction] + marks[2][direction]) // 2


@pytest.mark.parametrize(("fault", "direction", "where"), CUTS)
@pytest.mark.parametrize("proto", STREAM_PROTOCOLS)
def test_cut_or_reset_fails_cleanly(backend: Backend, proto: str, certs: Certs, fault: str,
                                    direction: str, where: str) -> None:
    async def body() -> None:
        async with through_tcp_proxy(backend, proto, certs) as (server, client, proxy):
            marks = await probe(client, proxy, proto, certs)
            offset = _offset(marks, direction, where)
            kind = {"cut": "cut_at", "reset": "reset_at"}[fault]
            proxy.set_faults(**{direction: Faults(**{kind: offset})})
            refused: TransportError | None = None
            try:
                session = await connect(client, proto, proxy.port, certs)
            except TransportError as exc:
                refused = exc
            if refused is not None:
                # Only a fault inside the handshake may fail the connect, and then as a
                # connection error (not a timeout: the close is seen at once).
                assert where == "handshake", refused  # (on plain TCP an RST may beat connect)
                assert isinstance(refused, TransportConnectionError), repr(refused)
                await forgotten(client)
                return
            outcomes = [await request_or_error(session, i) for i in range(3)]
            errors = [o for o in outcomes if isinstance(o, TransportError)]
            assert errors, "the fault was applied, yet every request was answered"
            first = outcomes.index(errors[0])
            # What was answered before the fault came in order; nothing after it.
            assert all(isinstance(o, TransportError) for o in outcomes[first:]), outcomes
            if where == "mid-frame" or (fault, where, direction) == ("cut", "between", "s2c"):
                # (a cut right after the first request closes the way back before its answer,
                # and an RST right after the first answer makes the kernel drop it unread)
                assert first >= 1, "the first exchange was before the fault"
            for error in errors:
                # A FIN inside a packet (or a TLS record) is a truncated stream: a protocol
                # error naming it; anything else is the connection's end.
                allowed = ((TransportConnectionError, ProtocolError)
                           if (fault, where) == ("cut", "mid-frame") else
                           TransportConnectionError)
                assert isinstance(error, allowed), repr(error)
            await ends_closed(session, client)
            assert proxy.faults_applied() == [(fault, direction, offset)]
            await forgotten(server)

    backend.run(body)


def _idle_cases() -> list[Any]:
    cases = []
    for name in BACKENDS:
        for proto in STREAM_PROTOCOLS:
            for how in ("cut", "reset"):
                for before in ("request", "one-way"):
                    cases.append(pytest.param(name, proto, how, before,
                                              id=f"{name}-{proto}-{how}-{before}"))
    return cases


@pytest.mark.parametrize(("backend", "proto", "how", "before"), _idle_cases(),
                         indirect=["backend"])
def test_idle_session_broken_by_the_network_ends(backend: Backend, proto: str, certs: Certs,
                                                 how: str, before: str) -> None:
    """A session with nothing in flight when the network cuts or resets it (after a request,
    or after one-way traffic only): it ends (closed, with a reason, forgotten) by itself, and
    the next call fails at once."""

    async def body() -> None:
        async with through_tcp_proxy(backend, proto, certs) as (server, client, proxy):
            session = await connect(client, proto, proxy.port, certs)
            if before == "request":
                assert await request_or_error(session, 1) == b"re:1:" + PAYLOAD
            else:
                await session.send(b"x")
                with anyio.fail_after(BOUND):
                    assert (await session.receive()).payload == b"echo:x"
            await eventually(lambda: server.session_count() == 1, "the server has it")
            proxy.break_all(reset=how == "reset")
            await ends_closed(session, client, within=1.0)  # nothing to wait for: at once
            after = await request_or_error(session, 2)
            assert isinstance(after, TransportConnectionError), repr(after)
            await forgotten(server)

    backend.run(body)


# --- one-way messages and their echoes --------------------------------------------------------


ECHO_CASES = [pytest.param(name, proto, fault, direction, id=f"{name}-{proto}-{fault}-{direction}")
              for name in BACKENDS for proto in STREAM_PROTOCOLS
              for fault, direction in (("cut", "s2c"), ("reset", "c2s"))]


@pytest.mark.parametrize(("backend", "proto", "fault", "direction"), ECHO_CASES,
                         indirect=["backend"])
def test_echoes_are_an_ordered_prefix(backend: Backend, proto: str, certs: Certs, fault: str,
                                      direction: str) -> None:
    """One-way messages echoed back, the stream broken half-way: every echo received is one of
    a message sent, in order, none twice and none skipped; then a clear connection error."""
    count = 20

    async def run(session: Session) -> tuple[list[bytes], list[BaseException]]:
        got: list[bytes] = []
        errors: list[BaseException] = []

        async def receive_all() -> None:
            with anyio.fail_after(BOUND):
                try:
                    while len(got) < count:
                        got.append((await session.receive()).payload)
                except TransportError as exc:
                    errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive_all)
            for i in range(count):
                with anyio.fail_after(BOUND):
                    try:
                        await session.send(b"%d:" % i + PAYLOAD)
                    except TransportError as exc:
                        errors.append(exc)
                        break
        return got, errors

    async def body() -> None:
        async with through_tcp_proxy(backend, proto, certs) as (_server, client, proxy):
            clean = await connect(client, proto, proxy.port, certs)
            await eventually(lambda: proxy.connections, "the proxy accepted")
            await anyio.sleep(0.02)
            start = dict(proxy.connections[-1].forwarded)
            got, errors = await run(clean)
            assert got == [b"echo:%d:" % i + PAYLOAD for i in range(count)] and not errors
            await anyio.sleep(0.02)
            end = dict(proxy.connections[-1].forwarded)
            await clean.close()
            offset = (start[direction] + end[direction]) // 2
            kind = {"cut": "cut_at", "reset": "reset_at"}[fault]
            proxy.set_faults(**{direction: Faults(**{kind: offset})})
            session = await connect(client, proto, proxy.port, certs)
            got, errors = await run(session)
            # Maybe none: an RST drops what the kernel had not handed over yet, and a TLS
            # record cut short is lost whole (a sender may pack many messages in one record).
            assert len(got) < count
            assert got == [b"echo:%d:" % i + PAYLOAD for i in range(len(got))]
            # A FIN inside a packet or record is a truncated stream (a protocol error naming
            # it); an RST is the connection's end.
            allowed = (TransportConnectionError, ProtocolError) if fault == "cut" else \
                TransportConnectionError
            assert errors and all(isinstance(e, allowed) for e in errors), errors
            await ends_closed(session, client)

    backend.run(body)


# --- stall, delay, split ----------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["c2s", "s2c"])
@pytest.mark.parametrize("proto", STREAM_PROTOCOLS)
def test_stall_times_out_then_late_answer_is_not_misdelivered(
        backend: Backend, proto: str, certs: Certs, direction: str) -> None:
    """A stall inside the second exchange: that request times out (TransportTimeoutError);
    once the stall ends, its late answer is dropped and the next request gets its own."""

    async def body() -> None:
        async with through_tcp_proxy(backend, proto, certs) as (_server, client, proxy):
            marks = await probe(client, proxy, proto, certs)
            proxy.set_faults(**{direction: Faults(stall_at=_offset(marks, direction,
                                                                    "mid-frame"))})
            session = await connect(client, proto, proxy.port, certs)
            assert await request_or_error(session, 1) == b"re:1:" + PAYLOAD
            started = time.monotonic()
            timed_out = await request_or_error(session, 2, timeout=0.2)
            assert isinstance(timed_out, TransportTimeoutError), repr(timed_out)
            assert timed_out.error_code == "timeout.request"
            assert time.monotonic() - started < 0.2 + 1.0
            assert session.state is SessionState.OPEN
            proxy.release()
            for i in (3, 4):  # each gets its own answer, never request 2's
                assert await request_or_error(session, i) == b"re:%d:" % i + PAYLOAD
            assert session.pending_work == 0
            await session.close()

    backend.run(body)


@pytest.mark.parametrize("proto", STREAM_PROTOCOLS)
def test_split_and_delayed_stream_delivers_everything(backend: Backend, proto: str,
                                                      certs: Certs) -> None:
    """Every frame split in 7-byte pieces and each piece delayed, both ways: every request
    answered exactly, every echo in order."""

    async def body() -> None:
        async with through_tcp_proxy(backend, proto, certs) as (_server, client, proxy):
            split = Faults(chunk=7, delay=0.002)
            proxy.set_faults(c2s=split, s2c=split)
            session = await connect(client, proto, proxy.port, certs)
            for i in range(5):
                assert await request_or_error(session, i) == b"re:%d:" % i + PAYLOAD
            for i in range(5):
                await session.send(b"%d" % i)
            with anyio.fail_after(BOUND):
                got = [(await session.receive()).payload for _ in range(5)]
            assert got == [b"echo:%d" % i for i in range(5)]
            await session.close()

    backend.run(body)


# --- QUIC through the UDP proxy ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def through_udp_proxy(backend: Backend, certs: Certs, *, request_timeout: float,
                            connect_timeout: float
                            ) -> AsyncIterator[tuple[Transport, Transport, UdpProxy]]:
    async with backend.transport() as server, \
            backend.transport(request_timeout=request_timeout,
                              connect_timeout=connect_timeout) as client, \
            server.serve("quic", certs, Echo()) as port:
        with UdpProxy(("127.0.0.1", port)) as proxy:
            yield server, client, proxy
            await forgotten(client)


def test_quic_recovers_from_loss_duplicates_and_reordering(backend: Backend,
                                                          certs: Certs) -> None:
    async def body() -> None:
        async with through_udp_proxy(backend, certs, request_timeout=5.0,
                                     connect_timeout=5.0) as (_server, client, proxy):
            # Both handshake flights lose a datagram, then a moderate rate of everything.
            c2s = Datagrams(drop=frozenset({1}), drop_rate=0.05, dup_rate=0.05,
                            reorder_rate=0.05, seed=1)
            s2c = Datagrams(drop=frozenset({1}), drop_rate=0.05, dup_rate=0.05,
                            reorder_rate=0.05, seed=2, delay=0.001)
            proxy.set_faults(c2s=c2s, s2c=s2c)
            with anyio.fail_after(8.0):
                session = await client.connect(client_url("quic", proxy.port, certs))
                for i in range(15):
                    reply = await session.request(b"%d:" % i + PAYLOAD)
                    assert reply.payload == b"re:%d:" % i + PAYLOAD
                for i in range(15):
                    await session.send(b"%d" % i)
                got = [(await session.receive()).payload for _ in range(15)]
            assert got == [b"echo:%d" % i for i in range(15)]  # QUIC streams keep order
            stats = proxy.stats
            assert sum(s.dropped for s in stats.values()) >= 2
            assert sum(s.duplicated + s.reordered for s in stats.values()) >= 1
            await session.close()

    backend.run(body)


def test_quic_total_loss_times_out_clearly(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with through_udp_proxy(backend, certs, request_timeout=0.3,
                                     connect_timeout=0.5) as (server, client, proxy):
            url = client_url("quic", proxy.port, certs)
            proxy.set_faults(c2s=Datagrams(drop_rate=1.0), s2c=Datagrams(drop_rate=1.0))
            # The builder's connect timeout (the sync adapter's connect passes a longer one).
            with anyio.fail_after(BOUND), pytest.raises(TransportTimeoutError) as info:
                await backend.call(client.raw.connect, url)
            assert info.value.error_code == "timeout.connect"
            await forgotten(client)
            # Connected, then the network goes dark: the request times out, not hangs.
            proxy.set_faults()
            session = await connect(client, "quic", proxy.port, certs)
            assert await request_or_error(session, 1) == b"re:1:" + PAYLOAD
            proxy.set_faults(c2s=Datagrams(drop_rate=1.0), s2c=Datagrams(drop_rate=1.0))
            lost = await request_or_error(session, 2)
            assert isinstance(lost, TransportTimeoutError), repr(lost)
            assert lost.error_code == "timeout.request"
            # A graceful close waits for what is unacknowledged (QUIC's close timeout, 10 s):
            # with the timeout given, it gives up and aborts, and the session ends all the same.
            with anyio.fail_after(BOUND):
                await backend.call(session.raw.close, timeout=0.3)
                await session.wait_closed()
            assert session.is_closed
            # The server's half of it, which hears nothing either, closes within its bound too.
            (stranded,) = backend.quic_listener_sessions(server.raw)
            with anyio.fail_after(BOUND):
                await backend.call(stranded.close, timeout=0.3)
            await forgotten(server)

    backend.run(body)


# --- a pool through a network that breaks its sessions ----------------------------------------


@pytest.mark.parametrize("how", ["cut", "reset"])
@pytest.mark.parametrize("proto", ["tcp", "tls"])
def test_pool_recovers_when_the_network_breaks_its_sessions(backend: Backend, proto: str,
                                                            certs: Certs, how: str) -> None:
    """Requests streaming through a pool when the network breaks every session at once: each
    gets its exact answer or a clear error, and the pool's next requests succeed on new
    sessions."""

    async def body() -> None:
        async with through_tcp_proxy(backend, proto, certs) as (_server, client, proxy):
            pool = await open_pool(backend, client, client_url(proto, proxy.port, certs),
                                   min=2, max=2, target=2)
            outcomes: list[bytes | BaseException] = []
            stop = anyio.Event()

            async def stream(worker: int) -> None:
                i = 0
                while not stop.is_set():
                    payload = b"%d.%d:" % (worker, i) + PAYLOAD
                    i += 1
                    with anyio.fail_after(BOUND):
                        try:
                            reply = await pool.request(payload)
                        except TransportError as exc:
                            outcomes.append(exc)
                            await anyio.sleep(0.01)
                            continue
                    assert reply.payload == b"re:" + payload
                    outcomes.append(reply.payload)

            async with anyio.create_task_group() as tg:
                for worker in range(4):
                    tg.start_soon(stream, worker)
                await eventually(lambda: len(outcomes) >= 20, "requests flowing")
                proxy.break_all(reset=how == "reset")
                await anyio.sleep(0.2)
                stop.set()
            assert proxy.faults_applied(), "the break happened"
            for error in [o for o in outcomes if isinstance(o, BaseException)]:
                assert isinstance(error, TransportConnectionError | ProtocolError), repr(error)
            # The pool replaced what broke: requests succeed again.
            with anyio.fail_after(BOUND):
                for i in range(5):
                    payload = b"after%d" % i
                    assert (await pool.request(payload)).payload == b"re:" + payload
            await pool.close()

    backend.run(body)
