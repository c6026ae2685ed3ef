"""An echo server whose peer sends and never reads stops reading from it, on every backend.

A raw-socket client (a worker thread) sends 64 KiB msgtrans packets over TCP or WebSocket as
fast as the server takes them and never reads a byte.  The server (``serve()`` with an echo
handler, a 2 MiB receive bound) must stop reading: its echoes pile up to the send high
watermark (``send_high_water_bytes``, 1 MiB by default), the handler's ``send()`` waits, the
received messages pile up to the receive bound, and reading pauses (``ReadPaused``).  Then
the client stalls, and:

* the server read no more than its two bounds, the kernel's send buffer towards the client and
  the client's receive buffer, plus a little slack (``stats.bytes_received``);
* what the server holds for the session (send backlog + receive queue, as its session machine
  counts them) is within the two bounds.

On main, trio's reader took the echoes out of the core as they were queued, into a list of its
own that grew without bound (counted as flushed, so the send bound never paused the handler and
the receive bound never paused the reader): 1 GiB sent grew the server by 1.1 GiB.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
from typing import Any

import anyio
import pytest

from msgtrans.core.packet import Packet, PacketType

from .adapters import WAIT, Backend, Certs, Session, TransportError

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
]

MIB = 1024 * 1024
SIZE = 64 * 1024
RECEIVE_MAX = 2 * MIB
SEND_HIGH = 1 * MIB  # the default send_high_water_bytes
TOTAL = 48 * MIB  # what the client tries to send: far more than every bound and buffer
CLIENT_BUFFER = 256 * 1024  # the client's SO_RCVBUF / SO_SNDBUF (no autotuning there)
STALL = 1.0  # seconds a send may make no progress before the client calls it stalled
#: What the server may read beyond its bounds: a message in each queue, the writer's batch in
#: flight, the blocking backend's write buffer, WebSocket framing.
SLACK = 4 * MIB
#: What the session's queues may hold beyond the two bounds (see the test).
QUEUE_SLACK = 1 * MIB
PACKET = Packet(PacketType.ONE_WAY, 0, 1, b"s" * SIZE).encode()


def _kernel_send_buffer_max() -> int:
    """The most the kernel lets a TCP send buffer grow to (autotuning), Linux; else 4 MiB."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
            return int(wmem.read().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * MIB


def _ws_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")  # one XOR of big ints: fast
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
    return bytes([0x82, 0x80 | 127]) + struct.pack("!Q", n) + mask + masked


def flood(proto: str, port: int) -> int:
    """Send up to TOTAL bytes of 64 KiB packets, never reading, until a send makes no progress
    for STALL seconds; return the bytes sent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_BUFFER)
    sock.settimeout(WAIT)
    try:
        sock.connect(("127.0.0.1", port))
        unit = PACKET
        if proto == "ws":
            key = base64.b64encode(os.urandom(16))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                         b"\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Protocol: msgtrans.v1\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, "the server closed during the handshake"
                head += chunk
            assert head.startswith(b"HTTP/1.1 101"), head
            unit = _ws_frame(PACKET)
        sock.settimeout(STALL)
        sent = 0
        view = memoryview(unit)
        while sent < TOTAL:
            offset = 0
            while offset < len(view):
                try:
                    offset += sock.send(view[offset:])
                except TimeoutError:
                    return sent + offset
            sent += len(view)
        return sent
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class _Echo:
    def __init__(self) -> None:
        self.sessions: list[Any] = []
        self.connected = anyio.Event()

    async def on_connected(self, session: Session) -> None:
        self.sessions.append(session.raw)
        self.connected.set()

    async def on_message(self, session: Session, message: Any) -> None:
        # The client resets at the end: then there is nothing to echo to.
        with contextlib.suppress(TransportError):
            await session.send(message.payload)

    async def on_error(self, session: Session, error: BaseException) -> None:
        pass


@pytest.mark.parametrize("proto", ["tcp", "ws"])
def test_server_stops_reading_from_a_peer_that_never_reads(backend: Backend, proto: str,
                                                           certs: Certs) -> None:
    bound = RECEIVE_MAX + SEND_HIGH + _kernel_send_buffer_max() + CLIENT_BUFFER + SLACK

    async def body() -> None:
        echo = _Echo()
        async with backend.transport(receive_max_bytes=RECEIVE_MAX) as transport, \
                transport.serve(proto, certs, echo) as port:
            seen: dict[str, int] = {"queued": 0, "read": 0, "paused": 0}

            async def watch() -> None:
                await echo.connected.wait()
                sm = echo.sessions[0].connection.session
                while True:
                    queued = sm.send_backlog[0] + sm.receive_backlog[0]
                    if queued > seen["queued"]:
                        seen["send"], seen["recv"] = sm.send_backlog[0], sm.receive_backlog[0]
                    seen["queued"] = max(seen["queued"], queued)
                    seen["read"] = sm.stats.bytes_received
                    seen["paused"] = int(sm.read_paused)
                    await anyio.sleep(0.005)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                with anyio.fail_after(WAIT * 3):
                    sent = await anyio.to_thread.run_sync(flood, proto, port)
                await anyio.sleep(0.05)  # one more look of the watcher
                tg.cancel_scope.cancel()
            assert seen["read"] <= bound, (
                f"the server read {seen['read'] / MIB:.1f} MiB from a peer that never reads "
                f"(client sent {sent / MIB:.1f} MiB; bound {bound / MIB:.1f} MiB)")
            assert sent < TOTAL
            assert seen["paused"], "reading never paused"
            # Reading stops within one read of the receive bound (a read may bring several
            # messages), and a send goes over the send bound by one message at most.
            assert seen["queued"] <= RECEIVE_MAX + SEND_HIGH + QUEUE_SLACK, seen

    backend.run(body)
