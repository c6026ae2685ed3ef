"""Connections the client resets leave nothing behind on the server, on every backend.

An echo server (``serve()``) over TCP, TLS and WebSocket; a raw-socket client (a worker thread,
blocking sockets with timeouts) opens connections and resets them (``SO_LINGER`` 0, an RST)
at different points: right after the TCP connect, in the middle of the WebSocket or TLS
handshake, after the handshake and one echoed message, and in the middle of a message.  Once
the resets settled, the server side is back where it was before them: the process's open
descriptors (``/proc/self/fd``), the transport's session table, each listener's live set, the
event loop's tasks, the threads, and every session handed to the application can be collected
(nothing holds it).

On main, trio kept the socket and the session of every reset connection (its writer task was
never woken to end the session), and the blocking backend's ``serve()`` kept every session
it had served until it returned.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import socket
import ssl
import struct
import threading
import weakref
from typing import Any

import anyio
import pytest
import trio

from msgtrans.core.packet import Packet, PacketType

from .adapters import WAIT, Backend, Certs, Session, Transport, TransportError

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd"),
    pytest.mark.filterwarnings("error::ResourceWarning"),
]

PACKET = Packet(PacketType.ONE_WAY, 0, 1, b"x" * 100).encode()
LINGER_0 = struct.pack("ii", 1, 0)
COUNT = 24  # connections per run: every mode several times
MODES = ("connect", "handshake", "echoed", "mid_message")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
    sock.close()


def _read(sock: socket.socket | ssl.SSLSocket, n: int) -> None:
    got = 0
    while got < n:
        chunk = sock.recv(n - got)
        assert chunk, "the server closed before echoing"
        got += len(chunk)


def _ws_request() -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
            b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: msgtrans.v1\r\n\r\n")


def _ws_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes([0x82, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def reset_once(proto: str, port: int, mode: str, ca: str) -> None:
    """One connection to the echo server on *port*, reset at the point *mode* names (blocking,
    every socket operation bounded by its timeout)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        if mode == "connect":
            return
        if proto == "tcp":
            if mode == "echoed":
                sock.sendall(PACKET)
                _read(sock, len(PACKET))
            else:  # tcp has no handshake: half a header, or half a packet
                sock.sendall(PACKET[: 8 if mode == "handshake" else 40])
            return
        if proto == "ws":
            request = _ws_request()
            if mode == "handshake":
                sock.sendall(request[:30])
                return
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, "the server closed during the handshake"
                head += chunk
            assert head.startswith(b"HTTP/1.1 101"), head
            frame = _ws_frame(PACKET)
            if mode == "echoed":
                sock.sendall(frame)
                _read(sock, 2 + len(PACKET) - (len(head) - head.index(b"\r\n\r\n") - 4))
            else:
                sock.sendall(frame[:50])
            return
        # tls
        if mode == "handshake":
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
            return
        context = ssl.create_default_context(cafile=ca)
        wrapped = context.wrap_socket(sock, server_hostname="localhost")
        if mode == "echoed":
            wrapped.sendall(PACKET)
            _read(wrapped, len(PACKET))
        else:
            wrapped.sendall(PACKET[:40])
        sock = socket.socket(fileno=wrapped.detach())
    finally:
        _reset(sock)


class _Echo:
    """The server application: records every session it is handed (weakly) and echoes."""

    def __init__(self) -> None:
        self.sessions: list[weakref.ref[Any]] = []

    async def on_connected(self, session: Session) -> None:
        self.sessions.append(weakref.ref(session.raw))

    async def on_message(self, session: Session, message: Any) -> None:
        # The peer may have reset meanwhile: then there is nothing to echo to.
        with contextlib.suppress(TransportError):
            await session.send(message.payload)

    async def on_error(self, session: Session, error: BaseException) -> None:
        pass


def _tasks(backend: Backend) -> int:
    if backend.name == "trio":
        living: int = trio.lowlevel.current_statistics().tasks_living
        return living
    return len(asyncio.all_tasks())


def _msgtrans_threads() -> int:
    # Not the blocking serve()'s handler pool: it starts its threads (at most its ``workers``,
    # 2 here) as work comes, and keeps them.
    return sum(1 for t in threading.enumerate()
               if t.name.startswith("msgtrans") and not t.name.startswith("msgtrans-serve"))


def _server_state(backend: Backend, transport: Transport) -> dict[str, int]:
    raw = transport.raw
    live = 0
    for stream in raw._streams:
        for listener in stream._stream_listeners:
            # asyncio's live set is a closure of its protocol factory: its session table and
            # the collected sessions below stand for it there.
            live += len(getattr(listener, "_live", ()))
    return {"fds": open_fds(), "sessions": raw.session_count(), "live": live,
            "tasks": _tasks(backend), "threads": _msgtrans_threads()}


@pytest.mark.parametrize("proto", ["tcp", "tls", "ws"])
def test_reset_connections_leave_nothing_behind(backend: Backend, proto: str,
                                                certs: Certs) -> None:
    ca = str(certs[0])

    async def body() -> None:
        echo = _Echo()
        async with backend.transport() as transport, \
                transport.serve(proto, certs, echo) as port:
            # One connection of each kind first: lazily made caches, pools and threads are
            # the baseline, not a leak.
            for mode in MODES:
                await anyio.to_thread.run_sync(reset_once, proto, port, mode, ca)
            baseline = await settled(backend, transport, None)
            for i in range(COUNT):
                await anyio.to_thread.run_sync(reset_once, proto, port, MODES[i % 4], ca)
            after = await settled(backend, transport, baseline)
            assert after == baseline, f"after {COUNT} resets: {after}, before: {baseline}"
            assert sum(t.name.startswith("msgtrans-serve") for t in threading.enumerate()) <= 2
            gc.collect()
            # The newest session may still be named by a local variable of an accept loop
            # until the next connection comes: one, not a leak.  Every older one must be gone.
            alive = [ref() for ref in echo.sessions[:-1] if ref() is not None]
            assert not alive, f"{len(alive)} of {len(echo.sessions)} reset sessions are kept"
            assert len(echo.sessions) >= COUNT // 2  # the echoed and mid-message ones

    backend.run(body)


async def settled(backend: Backend, transport: Transport,
                  baseline: dict[str, int] | None) -> dict[str, int]:
    """The server's state once it stopped changing (every session over), or once it matches
    *baseline*; bounded by WAIT."""
    state = _server_state(backend, transport)
    with anyio.move_on_after(WAIT):
        while True:
            await anyio.sleep(0.02)
            now = _server_state(backend, transport)
            if baseline is not None and now == baseline:
                return now
            if baseline is None and now == state and now["sessions"] == 0 and now["live"] == 0:
                return now
            state = now
    return _server_state(backend, transport)
