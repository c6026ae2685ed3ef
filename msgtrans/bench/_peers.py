"""The hand-written peers msgtrans is compared with: servers (run by :mod:`._servers` in their
own process) and clients (run by :mod:`._scenarios` in the benchmark's process).

Every stream peer uses a u32 big-endian length prefix per message.  The first frame of a
connection says what the connection is for:

* ``b"O"`` one-way: the server counts frames; an empty frame asks for the count, answered with
  one 8-byte frame (the count since the last answer);
* ``b"E"`` echo: every frame comes back as it is (request/response);
* ``b"F"`` fan-out: the connection joins the group; any frame received on it is written to every
  connection of the group.

The ``websockets`` peer does the same with the request path (``/O``, ``/E``, ``/F``) and one
WebSocket message per message.  The aioquic peer runs the stream code over aioquic's
``create_stream()`` / ``stream_handler`` reader and writer (one bidirectional stream).  The raw
ceiling is blocking ``sendall`` / ``recv_into`` with no framing at all: the server counts bytes
until EOF and answers with the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "COUNT",
    "LEN",
    "FrameClient",
    "FrameServer",
    "aioquic_configuration",
    "msgtrans_server_config",
    "raw_oneway",
    "serve_raw",
    "stream_handler",
]

LEN = struct.Struct(">I")
COUNT = struct.Struct(">Q")
QUIC_ALPN = "msgtrans-bench"
ONEWAY, ECHO, FANOUT = b"O", b"E", b"F"


def server_ssl(certdir: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certdir / "cert.pem", certdir / "key.pem")
    return ctx


def client_ssl(certdir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certdir / "cert.pem"))


def aioquic_configuration(certdir: Path, *, server: bool) -> Any:
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(is_client=not server, alpn_protocols=[QUIC_ALPN])
    if server:
        config.load_cert_chain(certdir / "cert.pem", certdir / "key.pem")
    else:
        config.load_verify_locations(str(certdir / "cert.pem"))
    return config


def msgtrans_server_config(mt: Any, protocol: str, certdir: Path) -> Any:
    """The server config of *protocol* for a msgtrans backend module *mt* (all three take the
    same core configs)."""
    tls = mt.ServerTlsConfig(certdir / "cert.pem", certdir / "key.pem")
    if protocol == "tcp":
        return mt.TcpServerConfig("127.0.0.1:0", backlog=1024)
    if protocol == "tls":
        return mt.TcpServerConfig("127.0.0.1:0", tls=tls, backlog=1024)
    if protocol == "ws":
        return mt.WebSocketServerConfig("127.0.0.1:0", path=None, backlog=1024,
                                        ping_interval=None)
    if protocol == "quic":
        return mt.QuicServerConfig("127.0.0.1:0", certdir / "cert.pem", certdir / "key.pem")
    raise SystemExit(f"unknown protocol {protocol!r}")



# --- asyncio Protocol, server side -------------------------------------------------------------


class _Group:
    def __init__(self) -> None:
        self.members: set[asyncio.Transport] = set()


class FrameServer(asyncio.Protocol):
    """The asyncio ``Protocol`` server: u32 length prefix, parsed from a ``bytearray``."""

    def __init__(self, group: _Group) -> None:
        self._group = group
        self._buf = bytearray()
        self._mode: bytes | None = None
        self._count = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._group.members.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        transport = self._transport
        assert transport is not None
        while end - pos >= 4:
            (n,) = LEN.unpack_from(buf, pos)
            if end - pos - 4 < n:
                break
            start = pos + 4
            pos = start + n
            mode = self._mode
            if mode == ONEWAY:
                if n:
                    self._count += 1
                else:
                    transport.write(LEN.pack(8) + COUNT.pack(self._count))
                    self._count = 0
            elif mode == ECHO:
                transport.write(bytes(buf[start - 4:pos]))
            elif mode == FANOUT:
                frame = bytes(buf[start - 4:pos])
                for member in self._group.members:
                    member.write(frame)
            else:
                self._mode = bytes(buf[start:pos])
                if self._mode == FANOUT:
                    self._group.members.add(transport)
        if pos:
            del buf[:pos]


async def stream_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         group: set[asyncio.StreamWriter] | None = None) -> None:
    """The asyncio streams server (also the aioquic one, over its stream reader and writer)."""
    try:
        mode = await _read_frame(reader)
        count = 0
        if mode == FANOUT and group is not None:
            group.add(writer)
        while True:
            header = await reader.readexactly(4)
            (n,) = LEN.unpack(header)
            payload = await reader.readexactly(n) if n else b""
            if mode == ONEWAY:
                if n:
                    count += 1
                else:
                    writer.write(LEN.pack(8) + COUNT.pack(count))
                    count = 0
                    await writer.drain()
            elif mode == ECHO:
                writer.write(header + payload)
                await writer.drain()
            elif mode == FANOUT and group is not None:
                for member in group:
                    member.write(header + payload)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        if group is not None:
            group.discard(writer)
        with contextlib.suppress(Exception):
            writer.close()


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (n,) = LEN.unpack(await reader.readexactly(4))
    return await reader.readexactly(n) if n else b""


async def serve_frames(kind: str, tls: ssl.SSLContext | None) -> asyncio.AbstractServer:
    """Start the asyncio Protocol (``kind="protocol"``) or streams server on a free port."""
    loop = asyncio.get_running_loop()
    if kind == "streams":
        group: set[asyncio.StreamWriter] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await stream_handler(reader, writer, group)

        return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls, backlog=1024)
    members = _Group()
    return await loop.create_server(lambda: FrameServer(members), "127.0.0.1", 0, ssl=tls,
                                    backlog=1024)


# --- websockets, server side -------------------------------------------------------------------


async def serve_websockets() -> Any:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    group: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/E"
        count = 0
        if path == "/F":
            group.add(ws)
        try:
            async for message in ws:
                if path == "/O":
                    if message:
                        count += 1
                    else:
                        await ws.send(COUNT.pack(count))
                        count = 0
                elif path == "/E":
                    await ws.send(message)
                else:
                    broadcast(group, message)
        except Exception:
            pass
        finally:
            group.discard(ws)

    return await serve(handler, "127.0.0.1", 0, compression=None, backlog=1024,
                       max_size=None, ping_interval=None)


# --- aioquic, server side ----------------------------------------------------------------------


async def serve_aioquic(certdir: Path) -> tuple[Any, int]:
    from aioquic.asyncio.server import serve

    tasks: set[asyncio.Task[None]] = set()

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(stream_handler(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await serve("127.0.0.1", 0, configuration=aioquic_configuration(
        certdir, server=True), stream_handler=on_stream)
    assert server._transport is not None
    port = int(server._transport.get_extra_info("sockname")[1])
    return server, port


# --- raw blocking ceiling ----------------------------------------------------------------------


def serve_raw(listener: socket.socket, stop: Callable[[], bool]) -> None:
    """Accept connections one at a time; count bytes until EOF; answer with the count."""
    listener.settimeout(0.5)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while not stop():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            # Blocking without a timeout: a timeout makes CPython poll() before every recv,
            # a syscall per call that a ceiling must not pay.
            conn.settimeout(None)
            total = 0
            while True:
                n = conn.recv_into(view)
                if not n:
                    break
                total += n
            conn.sendall(COUNT.pack(total))


#: Messages per ``sendmsg`` call of the batched ceiling.
RAW_BATCH = 16


def _send_batch(sock: socket.socket, parts: list[bytes]) -> None:
    # One sendmsg for the whole batch; a partial write finishes with sendall on the rest.
    sent = sock.sendmsg(parts)
    total = sum(map(len, parts))
    if sent < total:
        sock.sendall(memoryview(b"".join(parts))[sent:])


def raw_oneway(port: int, size: int, count: int, budget: float,
               batch: int = 1) -> tuple[int, float]:
    """Send *count* messages of *size* bytes with ``sendall`` (no framing; stop early after
    *budget* seconds), or *batch* messages per ``sendmsg`` call; return (messages the server
    counted, seconds until it said so)."""
    payload = b"x" * size
    parts = [payload] * batch
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.settimeout(None)  # plain blocking calls from here: no poll() per sendall
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        deadline = start + budget
        if batch == 1:
            for i in range(count):
                sock.sendall(payload)
                if not i & 63 and time.perf_counter() > deadline:
                    break
        else:
            for i in range(0, count, batch):
                _send_batch(sock, parts[:count - i])
                if not i & 63 and time.perf_counter() > deadline:
                    break
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while len(answer) < 8:
            chunk = sock.recv(8 - len(answer))
            if not chunk:
                raise ConnectionError("raw server closed without an answer")
            answer += chunk
        elapsed = time.perf_counter() - start
    (total,) = COUNT.unpack(answer)
    return total // size, elapsed


# --- asyncio Protocol, client side -------------------------------------------------------------


class FrameClient(asyncio.Protocol):
    """The asyncio ``Protocol`` client: frames in ``data_received`` go to :attr:`on_frame`
    (default: a queue read by :meth:`next_frame`); writes wait while asyncio says paused."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._frames: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._resume: asyncio.Future[None] | None = None
        self.paused = False
        self.on_frame: Callable[[bytes], None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        for fut in (self._waiter, self._resume):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("connection lost"))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._resume is not None and not self._resume.done():
            self._resume.set_result(None)

    async def wait_writable(self) -> None:
        if self.paused:
            self._resume = asyncio.get_running_loop().create_future()
            await self._resume

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(LEN.pack(len(payload)) + payload)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        on_frame = self.on_frame
        while end - pos >= 4:
            (n,) = LEN.unpack_from(buf, pos)
            if end - pos - 4 < n:
                break
            frame = bytes(buf[pos + 4:pos + 4 + n])
            pos += 4 + n
            if on_frame is not None:
                on_frame(frame)
            else:
                self._frames.append(frame)
        if pos:
            del buf[:pos]
        if self._frames and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_frame(self) -> bytes:
        while not self._frames:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._frames.pop(0)

    async def aclose(self) -> None:
        if self.transport is not None:
            self.transport.close()
        await self.closed
