"""What is particular to the trio driver: cancel scopes and deadlines around receives,
nurseries (the transport's, the caller's, serve()'s), single errors rather than exception
groups.  The behaviour every backend shares (cancelled requests, the listener's resilience,
limits, IPv6 among it), and each backend's client against each backend's server, is tested
once in ``tests/backends/conformance``.

Every test runs its own ``trio.run`` under a deadline; transports are used as ``async with``
(their nursery holds every task, so nothing outlives a test); the suite is meant to run under
``python -X dev -W error::ResourceWarning -m pytest tests/backends`` so a leaked socket fails.
"""

from __future__ import annotations

import contextlib
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

import msgtrans.io_trio as mt
from msgtrans.certs import write_self_signed

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

PROTOCOLS = ["tcp", "tls", "ws", "wss", "quic"]
T = TypeVar("T")
WAIT = 5.0  # seconds any single wait may take


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("certs"))


def server_config(proto: str, certs: tuple[Path, Path]) -> Any:
    cert, key = certs
    tls = mt.ServerTlsConfig(cert, key)
    if proto == "tcp":
        return mt.TcpServerConfig("127.0.0.1:0")
    if proto == "tls":
        return mt.TcpServerConfig("127.0.0.1:0", tls=tls)
    if proto == "ws":
        return mt.WebSocketServerConfig("127.0.0.1:0")
    if proto == "wss":
        return mt.WebSocketServerConfig("127.0.0.1:0", tls=tls)
    return mt.QuicServerConfig("127.0.0.1:0", cert_file=cert, key_file=key)


def client_url(proto: str, port: int, certs: tuple[Path, Path]) -> str:
    path = "/" if proto in ("ws", "wss") else ""
    query = f"?ca={certs[0]}" if proto in ("tls", "wss", "quic") else ""
    return f"{proto}://localhost:{port}{path}{query}"


def run(main: Callable[[], Awaitable[T]], timeout: float = 20.0, *,
        strict: bool = False) -> T:
    """Run *main* in a fresh trio run, bounded."""

    async def wrapper() -> T:
        with trio.fail_after(timeout):
            return await main()

    if strict:
        return trio.run(wrapper, strict_exception_groups=True)
    # Loose exception groups are deprecated since trio 0.25 but still what users of trio 0.22-0.24
    # run by default, so the backend must keep behaving under them; the warning is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", trio.TrioDeprecationWarning)
        return trio.run(wrapper, strict_exception_groups=False)


async def within(awaitable: Awaitable[T]) -> T:
    with trio.fail_after(WAIT):
        return await awaitable


class Pair:
    """A server transport listening on one protocol and a client transport connected to it."""

    server: mt.Transport
    client: mt.Transport
    stream: mt.SessionStream
    port: int
    cs: mt.Session  # client side
    ss: mt.Session  # server side
    nursery: trio.Nursery  # for the test's own tasks

    async def connect(self, proto: str, certs: tuple[Path, Path]) -> tuple[mt.Session, mt.Session]:
        cs = await within(self.client.connect(client_url(proto, self.port, certs)))
        ss = await within(self.stream.__anext__())
        return cs, ss


@contextlib.asynccontextmanager
async def pair(proto: str, certs: tuple[Path, Path], **builder: float) -> AsyncIterator[Pair]:
    p = Pair()
    b = mt.Transport.builder()
    if "request_timeout" in builder:
        b.request_timeout(builder["request_timeout"])
    async with b.build() as p.server, b.build() as p.client, trio.open_nursery() as nursery:
        p.nursery = nursery
        try:
            async with p.server.accept([server_config(proto, certs)]) as stream:
                p.stream = stream
                p.port = stream.addresses[0][1]
                p.cs, p.ss = await p.connect(proto, certs)
                yield p
        finally:
            await p.client.graceful_shutdown(2.0)
            await p.server.graceful_shutdown(2.0)
    # Nothing left behind: every session's task ended and released its socket.
    assert not p.server._sessions and not p.client._sessions


async def answer(session: mt.Session, prefix: bytes = b"re:", count: int = 1) -> None:
    for _ in range(count):
        message = await session.receive()
        assert message.is_request
        await message.respond(prefix + bytes(message.payload))


async def _send_all(session: mt.Session, payloads: list[bytes]) -> None:
    for payload in payloads:
        await session.send(payload)
        await trio.lowlevel.checkpoint()


# --- cancellation -----------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_cancel_receive_keeps_message(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs) as p:
            with trio.move_on_after(0.01) as scope:
                await p.ss.receive()
            assert scope.cancelled_caught
            # Cancel receives at every point of their life while messages arrive: each
            # message is taken exactly once, in order, by a receive that completed.
            sent = [b"m%d" % i for i in range(60)]
            got: list[bytes] = []
            p.nursery.start_soon(_send_all, p.cs, sent)
            for i in range(60):
                scope = trio.CancelScope()

                async def receive_once(scope: trio.CancelScope = scope) -> None:
                    with scope:
                        got.append(bytes((await p.ss.receive()).payload))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive_once)
                    for _ in range(i % 4):
                        await trio.lowlevel.checkpoint()
                    scope.cancel()
            # Deadlines too: an expired deadline never takes a message.
            for _ in range(20):
                with trio.move_on_after(0):
                    got.append(bytes((await p.ss.receive()).payload))
            while len(got) < len(sent):
                got.append(bytes((await within(p.ss.receive())).payload))
            assert got == sent
            assert p.ss.connection.session.receive_backlog == (0, 0)

    run(main)


# --- servers ----------------------------------------------------------------------------------


class Handler:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.disconnected = trio.Event()

    async def on_connected(self, session: mt.Session) -> None:
        self.events.append(("connected", session.id))

    async def on_message(self, session: mt.Session, message: mt.Message) -> None:
        self.events.append(("message", bytes(message.payload)))
        if message.payload == b"boom":
            raise RuntimeError("handler bug")
        await session.send(b"echo:" + bytes(message.payload))

    async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        if message.payload == b"fail":
            raise ValueError("bad request")
        return b"served:" + bytes(message.payload)

    async def on_error(self, session: mt.Session, error: BaseException) -> None:
        self.events.append(("error", type(error).__name__))

    async def on_disconnected(self, session: mt.Session, reason: Any) -> None:
        self.events.append(("disconnected", reason))
        self.disconnected.set()


@pytest.mark.parametrize("strict", [False, True])
def test_serve_is_cancellable(certs: tuple[Path, Path], strict: bool) -> None:
    async def main() -> None:
        handler = Handler()
        async with mt.Transport() as server, mt.Transport() as client:
            stream = server.accept([server_config("tcp", certs)])
            await stream.start()
            port = stream.addresses[0][1]
            with trio.move_on_after(0.5) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(server.serve, stream, handler)
                    session = await within(client.connect(client_url("tcp", port, certs)))
                    assert (await within(session.request(b"x"))).payload == b"served:x"
                    await trio.sleep_forever()
            assert scope.cancelled_caught
            # The handler task was cancelled with serve(); it still saw its session out.
            assert handler.events[-1][0] == "disconnected"

    run(main, strict=strict)


@pytest.mark.parametrize("strict", [False, True])
def test_leaving_the_transport_on_cancel_cleans_up(certs: tuple[Path, Path],
                                                   strict: bool) -> None:
    """A cancelled body still shuts the transport down (shielded, bounded) and the cancel
    goes on as a plain Cancelled, caught by its scope."""

    async def main() -> None:
        with trio.move_on_after(0.3) as scope:
            async with mt.Transport() as server, mt.Transport() as client, \
                    server.accept([server_config("tcp", certs)]) as stream:
                port = stream.addresses[0][1]
                session = await within(client.connect(client_url("tcp", port, certs)))
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert session.is_closed and server.session_count() == 0

    run(main, strict=strict)


# --- errors -----------------------------------------------------------------------------------


def _free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


@pytest.mark.parametrize("strict", [False, True])
def test_connect_errors_are_single(certs: tuple[Path, Path], strict: bool) -> None:
    """Refused connections and untrusted certificates raise one TransportError, never an
    exception group, with trio's strict exception groups on or off."""

    async def main() -> None:
        async with mt.Transport() as transport:
            port = _free_port()
            with pytest.raises(mt.TransportConnectionError) as info:
                await within(transport.connect(f"tcp://127.0.0.1:{port}"))
            assert info.value.error_code == "connection.refused"
            assert info.value.operation == "connect" and info.value.session_id is not None
            with pytest.raises(mt.ConfigurationError):
                await transport.connect("bogus://x")
            async with mt.Transport() as server, \
                    server.accept([server_config("tls", certs)]) as stream:
                tls_port = stream.addresses[0][1]
                # TLS without trusting the self-signed certificate.
                with pytest.raises(mt.TransportConnectionError) as info:
                    await within(transport.connect(f"tls://localhost:{tls_port}"))
                assert info.value.error_code == "connection.tls_verification"
                # The listener survived the failed handshake.
                ok = await within(transport.connect(client_url("tls", tls_port, certs)))
                assert ok.state is mt.SessionState.OPEN
        # An error raised in the body leaves 'async with' as itself, not as a group.
        with pytest.raises(mt.TransportConnectionError) as info:
            async with mt.Transport() as transport:
                await transport.connect(f"tcp://127.0.0.1:{_free_port()}")
        assert info.value.error_code == "connection.refused"
        # Binding an address in use: one error too.
        async with mt.Transport() as a, a.accept([server_config("tcp", certs)]) as s1:
            taken = s1.addresses[0][1]
            with pytest.raises(mt.TransportError):
                await a.accept([mt.TcpServerConfig(f"127.0.0.1:{taken}")]).start()

    run(main, strict=strict)


def test_needs_a_nursery() -> None:
    async def main() -> None:
        transport = mt.Transport()
        with pytest.raises(mt.ConfigurationError) as info:
            await transport.connect("tcp://127.0.0.1:1")
        assert info.value.field == "nursery"
        # The caller's nursery works as well as the transport's own.
        async with trio.open_nursery() as nursery:
            server = mt.Transport.builder().build(nursery=nursery)
            client = mt.Transport(nursery=nursery)
            async with server.accept(["tcp://127.0.0.1:0"]) as stream:
                port = stream.addresses[0][1]
                session = await within(client.connect(f"tcp://127.0.0.1:{port}"))
                accepted = await within(stream.__anext__())
                await session.send(b"mine")
                assert (await within(accepted.receive())).payload == b"mine"
            await client.graceful_shutdown(1.0)
            await server.graceful_shutdown(1.0)

    run(main)
