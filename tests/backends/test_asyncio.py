"""What is particular to the asyncio driver: ``websockets`` interop, batch sends, immediate
answers, the session timer and serve()'s handler tasks.  The behaviour every backend shares
(cancellation, flow control, raw-socket interop, hostile input, connect timeouts, limits,
IPv6) is tested once for all in ``tests/backends/conformance``.

Every test runs its own event loop (``asyncio.run``) under a bound, checks that no task is left
behind, and shuts its transports down; the suite is meant to run under
``python -X dev -W error::ResourceWarning -m pytest tests/backends`` so a leaked socket fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import msgtrans.io_asyncio as mt
from msgtrans.certs import write_self_signed
from msgtrans.core.packet import Packet, PacketType

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


def run(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 20.0) -> T:
    """Run *main* in a fresh loop, bounded, and check that it left no task behind."""

    async def wrapper() -> T:
        result = await asyncio.wait_for(main(), timeout)
        await asyncio.sleep(0)  # let done-callbacks run
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not left, f"tasks left behind: {left}"
        return result

    return asyncio.run(wrapper())


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, WAIT)


class Pair:
    """A server transport listening on one protocol and a client transport connected to it."""

    server: mt.Transport
    client: mt.Transport
    stream: mt.SessionStream
    port: int
    cs: mt.Session  # client side
    ss: mt.Session  # server side

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
    p.server = b.build()
    p.client = b.build()
    try:
        async with p.server.accept([server_config(proto, certs)]) as stream:
            p.stream = stream
            p.port = stream.addresses[0][1]
            p.cs, p.ss = await p.connect(proto, certs)
            yield p
    finally:
        await p.client.graceful_shutdown(2.0)
        await p.server.graceful_shutdown(2.0)


async def answer(session: mt.Session, prefix: bytes = b"re:", count: int = 1) -> None:
    for _ in range(count):
        message = await session.receive()
        assert message.is_request
        await message.respond(prefix + bytes(message.payload))


async def _send_all(session: mt.Session, payloads: list[bytes]) -> None:
    for payload in payloads:
        await session.send(payload)
        await asyncio.sleep(0)


# --- interop ----------------------------------------------------------------------------------


def test_websockets_library_client(certs: tuple[Path, Path]) -> None:
    from websockets.asyncio.client import connect

    async def main() -> None:
        async with pair("ws", certs) as p:
            url = f"ws://127.0.0.1:{p.port}/"
            async with connect(url, subprotocols=["msgtrans.v1"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "msgtrans.v1"
                session = await within(p.stream.__anext__())
                await ws.send(Packet(PacketType.REQUEST, 9, 1, b"from websockets").encode())
                request = await within(session.receive())
                assert request.payload == b"from websockets"
                await request.respond(b"to websockets")
                frame = await within(ws.recv())
                assert isinstance(frame, bytes)
                packet = Packet.decode(frame)
                assert packet.message_id == 9 and packet.payload == b"to websockets"
                await session.send(b"push")
                frame = await within(ws.recv())
                assert isinstance(frame, bytes)
                packet = Packet.decode(frame)
                assert packet.payload == b"push"
            await within(session.wait_closed())
            assert session.close_reason is mt.CloseReason.PEER_CLOSED

    run(main)


# --- the hot path: batch sends, immediate answers, timers ------------------------------------


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_send_many_delivers_each_payload_in_order(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs) as p:
            payloads = [b"a" * n for n in (0, 1, 100, 20_000, 70_000)] + [b"end"]
            await within(p.cs.send_many(iter(payloads), biz_type=7))
            await within(p.cs.send_many([]))  # nothing, and no error
            got = [await within(p.ss.receive()) for _ in payloads]
            assert [bytes(m.payload) for m in got] == payloads
            assert {m.biz_type for m in got} == {7}
            ids = [m.message_id for m in got]
            assert ids == list(range(ids[0], ids[0] + len(payloads)))
            assert p.ss.receive_nowait() is None

    run(main)


def test_send_many_refuses_a_closed_session(certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair("tcp", certs) as p:
            await within(p.cs.close())
            with pytest.raises(mt.TransportConnectionError):
                await p.cs.send_many([b"x"])

    run(main)


def test_send_many_past_the_high_watermark_pauses_later_sends(
    certs: tuple[Path, Path],
) -> None:
    async def main() -> None:
        async with pair("tcp", certs) as p:
            # 3000 messages: over the 1024-message high watermark, taken as one batch.
            await within(p.cs.send_many([b"m"] * 3000))
            await within(p.cs.send(b"last"))  # waits for the drain, then goes
            for _ in range(3000):
                assert (await within(p.ss.receive())).payload == b"m"
            assert (await within(p.ss.receive())).payload == b"last"

    run(main)


@pytest.mark.parametrize("proto", ["tcp", "quic"])
def test_try_respond_answers_once(proto: str, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        async with pair(proto, certs) as p:
            task = asyncio.ensure_future(p.cs.request(b"q"))
            request = await within(p.ss.receive())
            assert p.ss.try_respond(request, b"now")
            assert request.responded
            assert (await within(task)).payload == b"now"
            with pytest.raises(mt.TransportConnectionError):
                p.ss.try_respond(request, b"again")
            await within(p.cs.send(b"one-way"))
            message = await within(p.ss.receive())
            with pytest.raises(mt.TransportConnectionError):
                p.ss.try_respond(message, b"no")

    run(main)


def test_burst_of_sends_and_requests_in_one_iteration(certs: tuple[Path, Path]) -> None:
    # The first send of a burst is written through, the rest coalesce into one flush: every
    # message still arrives once and in order, and every request gets its own response.
    async def main() -> None:
        async with pair("tcp", certs) as p:
            server = asyncio.ensure_future(answer(p.ss, count=50))
            replies = await within(
                asyncio.gather(*(p.cs.request(str(i).encode()) for i in range(50)))
            )
            assert [bytes(r.payload) for r in replies] == [f"re:{i}".encode() for i in range(50)]
            await within(server)
            for i in range(10):
                await p.cs.send(str(i).encode())
            got = [bytes((await within(p.ss.receive())).payload) for _ in range(10)]
            assert got == [str(i).encode() for i in range(10)]

    run(main)


def test_short_request_timeout_fires_though_a_longer_one_is_armed(
    certs: tuple[Path, Path],
) -> None:
    # The session timer only moves earlier: a request with a shorter timeout than the one the
    # timer is armed for must still time out on time.
    async def main() -> None:
        async with pair("tcp", certs) as p:
            slow = asyncio.ensure_future(p.cs.request(b"slow", timeout=30.0))
            await asyncio.sleep(0)
            with pytest.raises(mt.TransportTimeoutError):
                await within(p.cs.request(b"fast", timeout=0.05))
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow

    run(main)


def test_serve_answers_queued_requests_in_order(certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        server = mt.Transport.builder().build()
        seen: list[bytes] = []

        class Handler:
            async def on_message(self, session: mt.Session, message: mt.Message) -> None:
                seen.append(bytes(message.payload))

            async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
                if message.payload == b"yield":
                    await asyncio.sleep(0)  # an answer that suspends takes the slow path
                return b"re:" + bytes(message.payload) + b":" + str(len(seen)).encode()

        async with server:
            stream = server.accept([server_config("tcp", certs)])
            await stream.start()
            task = asyncio.ensure_future(server.serve(stream, Handler()))
            async with mt.Transport.builder().build() as client:
                s = await within(client.connect(client_url("tcp", stream.addresses[0][1], certs)))
                await s.send_many([b"a", b"b"])
                replies = await within(asyncio.gather(
                    s.request(b"x"), s.request(b"yield"), s.request(b"y"),
                ))
                assert [bytes(r.payload) for r in replies] == [
                    b"re:x:2", b"re:yield:2", b"re:y:2",
                ]
                assert seen == [b"a", b"b"]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(main)


def test_serve_runs_handlers_as_the_session_task(certs: tuple[Path, Path]) -> None:
    # serve starts handlers from the protocol callback when the session's loop is idle: they
    # must still see a current task (asyncio.timeout works), keep the order of messages when
    # one suspends, and report their errors to on_error without ending the session.
    async def main() -> None:
        server = mt.Transport.builder().build()
        log: list[str] = []
        errors: list[BaseException] = []

        class Handler:
            async def on_message(self, session: mt.Session, message: mt.Message) -> None:
                text = bytes(message.payload).decode()
                if text.startswith("slow"):
                    await asyncio.sleep(0.01)
                log.append(text)

            async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
                assert asyncio.current_task() is not None
                if message.payload == b"boom":
                    raise ValueError("boom")
                async with asyncio.timeout(WAIT):
                    if message.payload == b"wait":
                        await asyncio.sleep(0.01)
                return b"log=" + ",".join(log).encode()

            async def on_error(self, session: mt.Session, error: BaseException) -> None:
                errors.append(error)

        async with server:
            stream = server.accept([server_config("tcp", certs)])
            await stream.start()
            task = asyncio.ensure_future(server.serve(stream, Handler()))
            async with mt.Transport.builder().request_timeout(0.5).build() as client:
                s = await within(client.connect(client_url("tcp", stream.addresses[0][1], certs)))
                await s.send(b"slow1")
                await s.send(b"fast2")
                assert (await within(s.request(b"wait"))).payload == b"log=slow1,fast2"
                with pytest.raises(mt.TransportTimeoutError):
                    await within(s.request(b"boom"))  # never answered
                assert [type(e) for e in errors] == [ValueError]
                await s.send(b"fast3")
                assert (await within(s.request(b"x"))).payload == b"log=slow1,fast2,fast3"
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(main)
