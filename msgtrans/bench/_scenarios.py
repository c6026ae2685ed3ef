"""The scenarios, as client code for msgtrans and for each peer (the asyncio ones here; trio's
in :mod:`._trio`, the blocking ones in :mod:`._blocking`).

A client implements any of these coroutines (a missing one means "not measured"):

* ``oneway(size, count, budget) -> (messages, seconds)``: send up to *count* messages of *size*
  bytes (fewer once *budget* seconds passed), then ask the server how many it counted; seconds
  run from the first send until the count arrives;
* ``latency(count, budget) -> [seconds per request]``: one request outstanding;
* ``pipelined(depth, count, budget) -> (requests, seconds)``: *depth* requests outstanding;
* ``connections(count, budget) -> (connections, seconds)``: connect and close, one at a time;
* ``fanout(n, rounds) -> [seconds per round]``: *n* connections; one trigger makes the server
  send one message to all of them; seconds until the last one has it (one request's round trip
  included).

A client's ``runner`` attribute says how the runner calls it: ``"asyncio"`` (the default:
coroutines under ``asyncio.run``), ``"uvloop"``, ``"trio"`` (coroutines under ``trio.run``) or
``"sync"`` (plain functions, in a worker thread).

:data:`CLIENTS` maps a client name to ``(server KIND, protocols, factory(protocol, port,
certdir))``; :data:`MSGTRANS` names the msgtrans client of each backend (``msgtrans``,
``msgtrans-trio``, ``msgtrans-blocking``), :data:`COMPARED_WITH` the backends each peer is
compared with, :data:`CLIENT_SCENARIOS` what each client measures and :data:`REQUIRES` the
optional library it needs.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _peers
from ._peers import COUNT, LEN

__all__ = [
    "BACKENDS",
    "CLIENTS",
    "CLIENT_SCENARIOS",
    "COMPARED_WITH",
    "MSGTRANS",
    "REQUIRES",
    "SCENARIOS",
    "Scenario",
]

BIZ_COUNT = 1
BIZ_FANOUT = 2
BIZ_SESSIONS = 3
PAYLOAD_64 = b"m" * 64
CONNECT_BATCH = 50


class Scenario:
    """One scenario: its key, what it reports, and which protocols run it."""

    def __init__(self, key: str, title: str) -> None:
        self.key = key
        self.title = title


SCENARIOS = {
    s.key: s for s in (
        Scenario("oneway_64", "one-way 64 B"),
        Scenario("oneway_64k", "one-way 64 KiB"),
        Scenario("latency", "req/resp, 1 outstanding"),
        Scenario("pipelined", "req/resp, 64 outstanding"),
        Scenario("connections", "connect + close"),
        Scenario("fanout", "fan-out send_to_all"),
    )
}


async def _connect_many(n: int, connect: Callable[[], Any]) -> list[Any]:
    out: list[Any] = []
    while len(out) < n:
        batch = min(CONNECT_BATCH, n - len(out))
        out += await asyncio.gather(*(connect() for _ in range(batch)))
    return out


# --- msgtrans on asyncio -----------------------------------------------------------------------


class MsgtransAsyncio:
    """msgtrans, asyncio backend, as an application uses it."""

    def __init__(self, protocol: str, port: int, certdir: Path) -> None:
        ca = f"?ca={certdir / 'cert.pem'}"
        self.url = {
            "tcp": f"tcp://127.0.0.1:{port}",
            "tls": f"tls://127.0.0.1:{port}{ca}",
            "ws": f"ws://127.0.0.1:{port}/",
            "quic": f"quic://127.0.0.1:{port}{ca}",
        }[protocol]

    def _transport(self) -> Any:
        import msgtrans.io_asyncio as mt

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

            await asyncio.gather(*(worker() for _ in range(depth)))
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
                await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            got = 0
            all_in: asyncio.Future[None] = loop.create_future()

            async def receiver(session: Any) -> None:
                nonlocal got
                while True:
                    await session.receive()
                    got += 1
                    if got == n and not all_in.done():
                        all_in.set_result(None)

            tasks = [loop.create_task(receiver(s)) for s in sessions]
            try:
                times: list[float] = []
                for _ in range(rounds):
                    got = 0
                    all_in = loop.create_future()
                    t0 = time.perf_counter()
                    await sessions[0].request(PAYLOAD_64, biz_type=BIZ_FANOUT)
                    await all_in
                    times.append(time.perf_counter() - t0)
                return times
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


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


# --- asyncio Protocol (and uvloop) peer --------------------------------------------------------


class ProtocolPeer:
    """asyncio ``Protocol`` + u32 length prefix (TCP, TLS)."""

    def __init__(self, protocol: str, port: int, certdir: Path) -> None:
        self.port = port
        self.tls = _peers.client_ssl(certdir) if protocol == "tls" else None

    async def _open(self, mode: bytes) -> _peers.FrameClient:
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {"ssl": self.tls, "server_hostname": "127.0.0.1"} \
            if self.tls else {}
        _, proto = await loop.create_connection(_peers.FrameClient, "127.0.0.1", self.port,
                                                **kwargs)
        proto.send(mode)
        return proto

    async def oneway(self, size: int, count: int, budget: float) -> tuple[int, float]:
        client = await self._open(_peers.ONEWAY)
        try:
            await self._oneway(client, size, min(count // 10, 1000) or 1, budget)
            return await self._oneway(client, size, count, budget)
        finally:
            await client.aclose()

    async def _oneway(self, client: _peers.FrameClient, size: int, count: int,
                      budget: float) -> tuple[int, float]:
        payload = b"m" * size
        clock = time.perf_counter
        start = clock()
        deadline = start + budget
        transport = client.transport
        assert transport is not None
        pack = LEN.pack
        for i in range(count):
            transport.write(pack(size) + payload)
            if client.paused:
                await client.wait_writable()
            if not i & 255 and clock() > deadline:
                break
        transport.write(pack(0))
        (counted,) = COUNT.unpack(await client.next_frame())
        return counted, clock() - start

    async def latency(self, count: int, budget: float) -> list[float]:
        client = await self._open(_peers.ECHO)
        try:
            for _ in range(min(count // 10, 200) or 1):
                client.send(PAYLOAD_64)
                await client.next_frame()
            samples: list[float] = []
            clock = time.perf_counter
            deadline = clock() + budget
            for _ in range(count):
                t0 = clock()
                client.send(PAYLOAD_64)
                await client.next_frame()
                t1 = clock()
                samples.append(t1 - t0)
                if t1 > deadline:
                    break
            return samples
        finally:
            await client.aclose()

    async def pipelined(self, depth: int, count: int, budget: float) -> tuple[int, float]:
        client = await self._open(_peers.ECHO)
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        clock = time.perf_counter
        sent = received = 0
        start = clock()
        deadline = start + budget

        def on_frame(frame: bytes) -> None:
            nonlocal sent, received
            received += 1
            if sent < count and (sent & 63 or clock() < deadline):
                client.send(PAYLOAD_64)
                sent += 1
            elif received == sent and not finished.done():
                finished.set_result(None)

        client.on_frame = on_frame
        try:
            for _ in range(min(depth, count)):
                client.send(PAYLOAD_64)
                sent += 1
            await finished
            return received, clock() - start
        finally:
            await client.aclose()

    async def connections(self, count: int, budget: float) -> tuple[int, float]:
        clock = time.perf_counter
        start = clock()
        deadline = start + budget
        done = 0
        while done < count and clock() < deadline:
            client = await self._open(_peers.ECHO)
            await client.aclose()
            done += 1
        return done, clock() - start

    async def fanout(self, n: int, rounds: int) -> list[float]:
        clients: list[_peers.FrameClient] = await _connect_many(
            n, lambda: self._open(_peers.FANOUT))
        try:
            await asyncio.sleep(0.2)
            loop = asyncio.get_running_loop()
            got = 0
            all_in: asyncio.Future[None] = loop.create_future()

            def on_frame(frame: bytes) -> None:
                nonlocal got
                got += 1
                if got == n and not all_in.done():
                    all_in.set_result(None)

            for c in clients:
                c.on_frame = on_frame
            times: list[float] = []
            for _ in range(rounds):
                got = 0
                all_in = loop.create_future()
                t0 = time.perf_counter()
                clients[0].send(PAYLOAD_64)
                await all_in
                times.append(time.perf_counter() - t0)
            return times
        finally:
            await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


# --- stream-style peers: asyncio streams, aioquic streams, websockets --------------------------


class _Duplex:
    """A message pipe over some library: ``send(payload)`` and ``recv() -> payload``."""

    async def send(self, payload: bytes) -> None:
        raise NotImplementedError

    async def recv(self) -> bytes:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class _StreamDuplex(_Duplex):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_close: Callable[[], Any] | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self._on_close = on_close

    async def send(self, payload: bytes) -> None:
        self.writer.write(LEN.pack(len(payload)) + payload)
        await self.writer.drain()

    async def recv(self) -> bytes:
        (n,) = LEN.unpack(await self.reader.readexactly(4))
        return await self.reader.readexactly(n) if n else b""

    async def aclose(self) -> None:
        if self._on_close is not None:
            await self._on_close()
            return
        self.writer.close()
        await self.writer.wait_closed()


class _DuplexPeer:
    """The scenarios written once over :class:`_Duplex` (one coroutine, awaiting each call,
    as applications of these libraries are written)."""

    async def _open(self, mode: bytes) -> _Duplex:
        raise NotImplementedError

    async def oneway(self, size: int, count: int, budget: float) -> tuple[int, float]:
        pipe = await self._open(_peers.ONEWAY)
        try:
            await self._oneway(pipe, size, min(count // 10, 1000) or 1, budget)
            return await self._oneway(pipe, size, count, budget)
        finally:
            await pipe.aclose()

    async def _oneway(self, pipe: _Duplex, size: int, count: int,
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
        pipe = await self._open(_peers.ECHO)
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
        pipe = await self._open(_peers.ECHO)
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
            pipe = await self._open(_peers.ECHO)
            await pipe.aclose()
            done += 1
        return done, clock() - start


class StreamsPeer(_DuplexPeer):
    """asyncio streams + u32 length prefix (TCP, TLS); ``drain()`` after every write."""

    def __init__(self, protocol: str, port: int, certdir: Path) -> None:
        self.port = port
        self.tls = _peers.client_ssl(certdir) if protocol == "tls" else None

    async def _open(self, mode: bytes) -> _Duplex:
        kwargs: dict[str, Any] = {"ssl": self.tls, "server_hostname": "127.0.0.1"} \
            if self.tls else {}
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, **kwargs)
        pipe = _StreamDuplex(reader, writer)
        await pipe.send(mode)
        return pipe


class AioquicPeer(_DuplexPeer):
    """aioquic's asyncio API: ``connect()`` and one ``create_stream()``, u32 length prefix."""

    def __init__(self, protocol: str, port: int, certdir: Path) -> None:
        self.port = port
        self.certdir = certdir

    async def _open(self, mode: bytes) -> _Duplex:
        from aioquic.asyncio.client import connect

        manager = connect("127.0.0.1", self.port,
                          configuration=_peers.aioquic_configuration(self.certdir, server=False))
        client = await manager.__aenter__()
        reader, writer = await client.create_stream()

        async def close() -> None:
            await manager.__aexit__(None, None, None)

        pipe = _StreamDuplex(reader, writer, on_close=close)
        await pipe.send(mode)
        return pipe


class _WsDuplex(_Duplex):
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, payload: bytes) -> None:
        await self.ws.send(payload)

    async def recv(self) -> bytes:
        data = await self.ws.recv()
        return data if isinstance(data, bytes) else data.encode()

    async def aclose(self) -> None:
        await self.ws.close()


class WebsocketsPeer(_DuplexPeer):
    """The ``websockets`` library, asyncio API (``websockets.asyncio``), no compression, one
    binary message per message (the payload only: WebSocket frames are the framing)."""

    def __init__(self, protocol: str, port: int, certdir: Path) -> None:
        self.port = port

    async def _open(self, mode: bytes) -> _Duplex:
        from websockets.asyncio.client import connect

        ws = await connect(f"ws://127.0.0.1:{self.port}/{mode.decode()}", compression=None,
                           max_size=None, ping_interval=None)
        return _WsDuplex(ws)

    async def fanout(self, n: int, rounds: int) -> list[float]:
        pipes = await _connect_many(n, lambda: self._open(_peers.FANOUT))
        try:
            await asyncio.sleep(0.2)
            times: list[float] = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                await pipes[0].send(PAYLOAD_64)
                await asyncio.gather(*(p.recv() for p in pipes))
                times.append(time.perf_counter() - t0)
            return times
        finally:
            await asyncio.gather(*(p.aclose() for p in pipes), return_exceptions=True)


class RawPeer:
    """The ceiling: blocking ``sendall`` / ``recv_into`` on 127.0.0.1, no framing at all."""

    def __init__(self, protocol: str, port: int, certdir: Path) -> None:
        self.port = port

    batch = 1

    async def oneway(self, size: int, count: int, budget: float) -> tuple[int, float]:
        _peers.raw_oneway(self.port, size, min(count // 10, 1000) or 1, budget, self.batch)
        return _peers.raw_oneway(self.port, size, count, budget, self.batch)


class RawBatchedPeer(RawPeer):
    """The ceiling for a sender that batches: 16 messages per ``sendmsg`` call, as msgtrans's
    drivers write a burst (one call per message is what a plain ``sendall`` loop pays)."""

    batch = _peers.RAW_BATCH


def _lazy(module: str, name: str) -> Callable[[str, int, Path], Any]:
    # trio, pyzmq and websockets are optional: import their clients only when measured.
    def make(protocol: str, port: int, certdir: Path) -> Any:
        cls = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        return cls(protocol, port, certdir)

    return make


_ALL = ("tcp", "tls", "ws", "quic")

#: client name -> (server KIND, protocols it speaks, factory(protocol, port, certdir)).
CLIENTS: dict[str, tuple[str, tuple[str, ...], Callable[[str, int, Path], Any]]] = {
    "msgtrans": ("msgtrans", _ALL, MsgtransAsyncio),
    "msgtrans-trio": ("msgtrans-trio", _ALL, _lazy("_trio", "MsgtransTrio")),
    "msgtrans-blocking": ("msgtrans-blocking", _ALL, _lazy("_blocking", "MsgtransBlocking")),
    "asyncio-protocol": ("protocol", ("tcp", "tls"), ProtocolPeer),
    "uvloop-protocol": ("uvloop", ("tcp",), ProtocolPeer),
    "asyncio-streams": ("streams", ("tcp", "tls"), StreamsPeer),
    "trio-streams": ("trio-streams", ("tcp", "tls"), _lazy("_trio", "TrioStreamsPeer")),
    "blocking-socket": ("blocking-socket", ("tcp", "tls"),
                        _lazy("_blocking", "BlockingSocketPeer")),
    "websockets": ("websockets", ("ws",), WebsocketsPeer),
    "websockets-sync": ("websockets-sync", ("ws",), _lazy("_blocking", "WebsocketsSyncPeer")),
    "aioquic": ("aioquic", ("quic",), AioquicPeer),
    "zmq": ("zmq", ("tcp",), _lazy("_blocking", "ZmqPeer")),
    "raw-socket": ("raw", ("tcp",), RawPeer),
    "raw-socket-batched": ("raw", ("tcp",), RawBatchedPeer),
}

#: The backends, in the order of the table.
BACKENDS = ("asyncio", "trio", "sync")

#: backend -> the msgtrans client that measures it.
MSGTRANS: dict[str, str] = {
    "asyncio": "msgtrans",
    "trio": "msgtrans-trio",
    "sync": "msgtrans-blocking",
}

#: peer -> the backends whose msgtrans figures are divided by the peer's.  A backend with no
#: peer of its own for a protocol (trio has no WebSocket or QUIC library here) is compared with
#: the asyncio one; the raw ceiling is everybody's.
COMPARED_WITH: dict[str, tuple[str, ...]] = {
    "asyncio-protocol": ("asyncio",),
    "uvloop-protocol": ("asyncio",),
    "asyncio-streams": ("asyncio",),
    "trio-streams": ("trio",),
    "blocking-socket": ("sync",),
    "websockets": ("asyncio", "trio"),
    "websockets-sync": ("sync",),
    "aioquic": BACKENDS,
    "zmq": ("sync",),
    "raw-socket": BACKENDS,
    "raw-socket-batched": BACKENDS,
}

_EVERY = ("oneway_64", "oneway_64k", "latency", "pipelined", "connections", "fanout")
_NO_FANOUT = _EVERY[:-1]

#: client -> the scenarios it measures.  QUIC fan-out runs in the full plan only (see
#: _runner.QUICK_SKIP): the row (1000 sessions, 5 rounds) takes about 4 s with asyncio, 6 s
#: with trio and 10-18 s blocking on a 2-core machine, now that the server drivers look only
#: at the connections the endpoint reports touched; aioquic's fan-out is not written.
CLIENT_SCENARIOS: dict[str, tuple[str, ...]] = {
    "msgtrans": _EVERY,
    "msgtrans-trio": _EVERY,
    "msgtrans-blocking": _EVERY,
    "asyncio-protocol": _EVERY,
    "uvloop-protocol": _NO_FANOUT,
    "asyncio-streams": _NO_FANOUT,
    "trio-streams": _EVERY,
    "blocking-socket": _EVERY,
    "websockets": _EVERY,
    "websockets-sync": _EVERY,
    "aioquic": _NO_FANOUT,
    "zmq": ("oneway_64", "oneway_64k", "latency"),
    "raw-socket": ("oneway_64k",),
    "raw-socket-batched": ("oneway_64k",),
}

#: client -> the module it needs beyond msgtrans's own dependencies (checked with find_spec).
REQUIRES: dict[str, str] = {
    "msgtrans-trio": "trio",
    "trio-streams": "trio",
    "uvloop-protocol": "uvloop",
    "websockets": "websockets",
    "websockets-sync": "websockets",
    "aioquic": "aioquic",
    "zmq": "zmq",
}

#: Clients whose event loop is uvloop (client and server alike).
UVLOOP_CLIENTS = frozenset({"uvloop-protocol"})
