"""The trio side of the benchmark: msgtrans's trio backend (client and server) and the peer
trio users write today, trio streams with a u32 length prefix (TCP, and TLS through
``trio.SSLStream``).

The clients run under ``trio.run`` (the runner starts one per measurement, as it starts one
``asyncio.run`` for the asyncio clients); the servers run in their own process like every
other (see :mod:`._servers`).  The scenarios and the wire conventions are those of
:mod:`._scenarios` and :mod:`._peers`.
"""

from __future__ import annotations

import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio  # type: ignore[import-untyped, unused-ignore]  # old trio has no py.typed

from . import _peers
from ._peers import COUNT, ECHO, FANOUT, LEN, ONEWAY

__all__ = ["MsgtransTrio", "TrioStreamsPeer", "serve_msgtrans_trio", "serve_trio_streams"]

BIZ_COUNT = 1
BIZ_FANOUT = 2
BIZ_SESSIONS = 3  # how many sessions the server has open (the fan-out waits for all)
PAYLOAD_64 = b"m" * 64
CONNECT_BATCH = 50
RECV_SIZE = 256 * 1024


async def _connect_many(n: int, connect: Callable[[], Awaitable[Any]]) -> list[Any]:
    out: list[Any] = []
    while len(out) < n:
        batch = min(CONNECT_BATCH, n - len(out))
        got: list[Any] = [None] * batch

        async def one(i: int, got: list[Any] = got) -> None:
            got[i] = await connect()

        async with trio.open_nursery() as nursery:
            for i in range(batch):
                nursery.start_soon(one, i)
        out += got
    return out


async def _until_stdin_closes() -> None:
    def read_all() -> None:
        while sys.stdin.buffer.read(1):
            pass

    await trio.to_thread.run_sync(read_all, abandon_on_cancel=True)


# --- msgtrans on trio --------------------------------------------------------------------------


class MsgtransTrio:
    """msgtrans, trio backend, as an application uses it."""

    runner = "trio"

    def __init__(self, protocol: str, port: int, certdir: Path) -> None:
        ca = f"?ca={certdir / 'cert.pem'}"
        self.url = {
            "tcp": f"tcp://127.0.0.1:{port}",
            "tls": f"tls://127.0.0.1:{port}{ca}",
            "ws": f"ws://127.0.0.1:{port}/",
            "quic": f"quic://127.0.0.1:{port}{ca}",
        }[protocol]

    def _transport(self) -> Any:
        import msgtrans.io_trio as mt

        return mt.Transport.builder().shutdown_timeout(1.0).build()

    async def oneway(self, size: int, count: int, budget: float) -> tuple[int, float]:
        payload = b"m" * size
        async with self._transport() as transport:
            session = await transport.connect(self.url)
            await _msgtrans_oneway(session, payload, min(count // 10, 1000) or 1, budget)
            return await _msgtrans_oneway(session, payload, count, budget)

    async def latency(self, count: int, budget: float) -> list[float]:
        async with self._transport() as transport:
            session = await transport.connect(self.url)
            for _ in range(min(count // 10, 200) or 1):
                await session.request(PAYLOAD_64)
            samples: list[float] = []
            clock = time.perf_counter
            deadline = clock() + budget
            for _ in range(count):
                t0 = clock()
                await session.request(PAYLOAD_64)
                t1 = clock()
                samples.append(t1 - t0)
                if t1 > deadline:
                    break
            return samples

    async def pipelined(self, depth: int, count: int, budget: float) -> tuple[int, float]:
        async with self._transport() as transport:
            session = await transport.connect(self.url)
            done = 0
            clock = time.perf_counter
            start = clock()
            deadline = start + budget

            async def worker() -> None:
                nonlocal done
                while done < count and clock() < deadline:
                    done += 1
                    await session.request(PAYLOAD_64)

            async with trio.open_nursery() as nursery:
                for _ in range(depth):
                    nursery.start_soon(worker)
            return done, clock() - start

    async def connections(self, count: int, budget: float) -> tuple[int, float]:
        async with self._transport() as transport:
            clock = time.perf_counter
            start = clock()
            deadline = start + budget
            done = 0
            while done < count and clock() < deadline:
                session = await transport.connect(self.url)
                await session.close()
                done += 1
            return done, clock() - start

    async def fanout(self, n: int, rounds: int) -> list[float]:
        async with self._transport() as transport:
            sessions = await _connect_many(n, lambda: transport.connect(self.url))
            # Until the server has every session open: a late one would never get the message.
            while COUNT.unpack(bytes((await sessions[0].request(
                    b"", biz_type=BIZ_SESSIONS)).payload))[0] < n:
                await trio.sleep(0.05)
            got = 0
            all_in = trio.Event()

            async def receiver(session: Any) -> None:
                nonlocal got
                while True:
                    await session.receive()
                    got += 1
                    if got == n:
                        all_in.set()

            times: list[float] = []
            async with trio.open_nursery() as nursery:
                for s in sessions:
                    nursery.start_soon(receiver, s)
                for _ in range(rounds):
                    got = 0
                    all_in = trio.Event()
                    t0 = time.perf_counter()
                    await sessions[0].request(PAYLOAD_64, biz_type=BIZ_FANOUT)
                    await all_in.wait()
                    times.append(time.perf_counter() - t0)
                nursery.cancel_scope.cancel()
            return times


async def _msgtrans_oneway(session: Any, payload: bytes, count: int,
                           budget: float) -> tuple[int, float]:
    clock = time.perf_counter
    send = session.send
    start = clock()
    deadline = start + budget
    for i in range(count):
        await send(payload)
        if not i & 255 and clock() > deadline:
            break
    reply = await session.request(b"", biz_type=BIZ_COUNT, timeout=60)
    elapsed = clock() - start
    (counted,) = COUNT.unpack(bytes(reply.payload))
    return counted, elapsed


async def serve_msgtrans_trio(protocol: str, certdir: Path, ready: Callable[[int], None]) -> None:
    """The msgtrans server on trio (``Transport.serve`` with a handler) until stdin closes."""
    import msgtrans.io_trio as mt

    config = _peers.msgtrans_server_config(mt, protocol, certdir)
    transport = mt.Transport.builder().shutdown_timeout(0.5).build()
    counts: dict[int, int] = {}

    class Handler:
        async def on_message(self, session: mt.Session, message: mt.Message) -> None:
            counts[session.id] = counts.get(session.id, 0) + 1

        async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
            if message.biz_type == BIZ_COUNT:
                return COUNT.pack(counts.pop(session.id, 0))
            if message.biz_type == BIZ_FANOUT:
                await transport.send_to_all(bytes(message.payload))
                return b""
            if message.biz_type == BIZ_SESSIONS:
                return COUNT.pack(transport.session_count())
            return bytes(message.payload)

        async def on_disconnected(self, session: mt.Session, reason: object) -> None:
            counts.pop(session.id, None)

    async with transport:
        stream = transport.accept([config])
        await stream.start()
        ready(stream.addresses[0][1])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.serve, stream, Handler())
            await _until_stdin_closes()
            nursery.cancel_scope.cancel()


# --- trio streams + length prefix --------------------------------------------------------------


class _Framed:
    """A trio stream with u32 length-prefixed frames: ``send_all`` per frame, frames parsed
    from a ``bytearray`` filled by ``receive_some``."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._buf = bytearray()

    async def send(self, payload: bytes) -> None:
        await self.stream.send_all(LEN.pack(len(payload)) + payload)

    async def recv(self) -> bytes:
        buf = self._buf
        while True:
            if len(buf) >= 4:
                (n,) = LEN.unpack_from(buf, 0)
                if len(buf) >= 4 + n:
                    frame = bytes(buf[4:4 + n])
                    del buf[:4 + n]
                    return frame
            data = await self.stream.receive_some(RECV_SIZE)
            if not data:
                raise ConnectionError("the server closed the connection")
            buf += data

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


class TrioStreamsPeer:
    """trio streams (``trio.open_tcp_stream``, ``trio.SSLStream`` for TLS) + u32 length
    prefix; one ``send_all`` per message, as trio applications are written."""

    runner = "trio"

    def __init__(self, protocol: str, port: int, certdir: Path) -> None:
        self.port = port
        self.tls = _peers.client_ssl(certdir) if protocol == "tls" else None

    async def _open(self, mode: bytes) -> _Framed:
        stream: Any = await trio.open_tcp_stream("127.0.0.1", self.port)
        if self.tls is not None:
            stream = trio.SSLStream(stream, self.tls, server_hostname="127.0.0.1")
            await stream.do_handshake()
        pipe = _Framed(stream)
        await pipe.send(mode)
        return pipe

    async def oneway(self, size: int, count: int, budget: float) -> tuple[int, float]:
        pipe = await self._open(ONEWAY)
        try:
            await self._oneway(pipe, size, min(count // 10, 1000) or 1, budget)
            return await self._oneway(pipe, size, count, budget)
        finally:
            await pipe.aclose()

    async def _oneway(self, pipe: _Framed, size: int, count: int,
                      budget: float) -> tuple[int, float]:
        payload = b"m" * size
        clock = time.perf_counter
        start = clock()
        deadline = start + budget
        send = pipe.send
        for i in range(count):
            await send(payload)
            if not i & 255 and clock() > deadline:
                break
        await send(b"")
        (counted,) = COUNT.unpack(await pipe.recv())
        return counted, clock() - start

    async def latency(self, count: int, budget: float) -> list[float]:
        pipe = await self._open(ECHO)
        try:
            for _ in range(min(count // 10, 200) or 1):
                await pipe.send(PAYLOAD_64)
                await pipe.recv()
            samples: list[float] = []
            clock = time.perf_counter
            deadline = clock() + budget
            for _ in range(count):
                t0 = clock()
                await pipe.send(PAYLOAD_64)
                await pipe.recv()
                t1 = clock()
                samples.append(t1 - t0)
                if t1 > deadline:
                    break
            return samples
        finally:
            await pipe.aclose()

    async def pipelined(self, depth: int, count: int, budget: float) -> tuple[int, float]:
        pipe = await self._open(ECHO)
        try:
            clock = time.perf_counter
            start = clock()
            deadline = start + budget
            sent = received = 0
            for _ in range(min(depth, count)):
                await pipe.send(PAYLOAD_64)
                sent += 1
            while received < sent:
                await pipe.recv()
                received += 1
                if sent < count and (sent & 63 or clock() < deadline):
                    await pipe.send(PAYLOAD_64)
                    sent += 1
            return received, clock() - start
        finally:
            await pipe.aclose()

    async def connections(self, count: int, budget: float) -> tuple[int, float]:
        clock = time.perf_counter
        start = clock()
        deadline = start + budget
        done = 0
        while done < count and clock() < deadline:
            pipe = await self._open(ECHO)
            await pipe.aclose()
            done += 1
        return done, clock() - start

    async def fanout(self, n: int, rounds: int) -> list[float]:
        pipes: list[_Framed] = await _connect_many(n, lambda: self._open(FANOUT))
        try:
            await trio.sleep(0.2)
            times: list[float] = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                await pipes[0].send(PAYLOAD_64)
                async with trio.open_nursery() as nursery:
                    for p in pipes:
                        nursery.start_soon(p.recv)
                times.append(time.perf_counter() - t0)
            return times
        finally:
            for p in pipes:
                await p.aclose()


async def serve_trio_streams(protocol: str, certdir: Path, ready: Callable[[int], None]) -> None:
    """The trio streams server: frames parsed in a buffer per ``receive_some``, the answers of
    one batch in one ``send_all``."""
    group: set[Any] = set()

    async def handle(stream: Any) -> None:
        buf = bytearray()
        mode: bytes | None = None
        count = 0
        try:
            while True:
                data = await stream.receive_some(RECV_SIZE)
                if not data:
                    return
                buf += data
                pos = 0
                end = len(buf)
                out: list[bytes] = []
                while end - pos >= 4:
                    (n,) = LEN.unpack_from(buf, pos)
                    if end - pos - 4 < n:
                        break
                    start = pos + 4
                    pos = start + n
                    if mode == ONEWAY:
                        if n:
                            count += 1
                        else:
                            out.append(LEN.pack(8) + COUNT.pack(count))
                            count = 0
                    elif mode == ECHO:
                        out.append(bytes(buf[start - 4:pos]))
                    elif mode == FANOUT:
                        frame = bytes(buf[start - 4:pos])
                        for member in list(group):
                            await member.send_all(frame)
                    else:
                        mode = bytes(buf[start:pos])
                        if mode == FANOUT:
                            group.add(stream)
                if pos:
                    del buf[:pos]
                if out:
                    await stream.send_all(b"".join(out) if len(out) > 1 else out[0])
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
        finally:
            group.discard(stream)
            await trio.aclose_forcefully(stream)

    listeners: list[Any] = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=1024)
    port = int(listeners[0].socket.getsockname()[1])
    if protocol == "tls":
        ctx = _peers.server_ssl(certdir)
        listeners = [trio.SSLListener(lst, ctx, https_compatible=False) for lst in listeners]
    ready(port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        await _until_stdin_closes()
        nursery.cancel_scope.cancel()
