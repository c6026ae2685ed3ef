"""The asyncio stream driver's write of several parts: large payloads leave by ``sendmsg``
straight from their own memory, never joined to their header, and whatever the socket does
not take goes through asyncio's buffer in order."""

from __future__ import annotations

import asyncio
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import msgtrans.io_asyncio as mt
from msgtrans.core.packet import Buffer
from msgtrans.io_asyncio._stream import StreamIO

WAIT = 10.0


class FakeTransport:
    """Records what reaches asyncio's buffer; holds bytes until told to drain."""

    def __init__(self, closing: bool = False) -> None:
        self.buffered = bytearray()
        self.closing = closing

    def get_write_buffer_size(self) -> int:
        return len(self.buffered)

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: Buffer) -> None:
        self.buffered += data


class FakeSocket:
    """A socket whose sendmsg takes at most the next of *accepts* bytes per call."""

    def __init__(self, accepts: list[int], transport: FakeTransport) -> None:
        self.accepts = accepts
        self.sent = bytearray()
        self.calls = 0
        self.transport = transport

    def sendmsg(self, parts: list[Buffer]) -> int:
        # asyncio's buffer must be empty whenever we bypass it, or order would break.
        assert not self.transport.buffered
        assert len(parts) <= 512
        self.calls += 1
        limit = self.accepts.pop(0) if self.accepts else 0
        if limit < 0:
            raise BlockingIOError
        data = b"".join(bytes(p) for p in parts)[:limit]
        self.sent += data
        return len(data)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.binary(max_size=40), st.integers(1, 70_000).map(lambda n: b"L" * n)),
             min_size=2, max_size=700),
    st.lists(st.integers(-1, 200_000), max_size=6),
)
def test_every_byte_once_in_order(parts: list[bytes], accepts: list[int]) -> None:
    transport = FakeTransport()
    sock = FakeSocket(list(accepts), transport)
    StreamIO._write_parts(transport, sock.sendmsg, list(parts))  # type: ignore[arg-type]
    assert bytes(sock.sent) + bytes(transport.buffered) == b"".join(parts)


def test_broken_socket_leaves_the_parts_to_asyncio() -> None:
    transport = FakeTransport()

    def broken(parts: list[Buffer]) -> int:
        raise ConnectionResetError

    StreamIO._write_parts(transport, broken, [b"ab", b"c" * 70_000])  # type: ignore[arg-type]
    assert bytes(transport.buffered) == b"ab" + b"c" * 70_000


def test_closing_transport_is_not_bypassed() -> None:
    transport = FakeTransport(closing=True)
    sock = FakeSocket([1 << 20], transport)
    StreamIO._write_parts(transport, sock.sendmsg, [b"ab", b"cd"])  # type: ignore[arg-type]
    assert sock.calls == 0
    assert bytes(transport.buffered) == b"abcd"


@pytest.mark.network
def test_large_payloads_round_trip_over_tcp() -> None:
    """Large and small payloads interleaved, sent in bursts (so flushes carry several parts and
    the socket fills): each arrives whole and in order; on 3.11 the sendmsg path is in use."""

    sizes = [70_000, 3, 200_000, 0, 65_536, 17, 1 << 20, 5] * 3

    async def main() -> None:
        server = mt.Transport.builder().shutdown_timeout(1.0).build()
        client = mt.Transport.builder().shutdown_timeout(1.0).build()
        async with server, client:
            stream = server.accept([mt.TcpServerConfig("127.0.0.1:0")])
            await stream.start()
            port = stream.addresses[0][1]
            session = await client.connect(f"tcp://127.0.0.1:{port}")
            peer = await stream.__anext__()
            io = session._io
            assert isinstance(io, StreamIO)
            if sys.version_info < (3, 12):
                assert io._sendmsg is not None
            payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
            await session.send_many(payloads[:8])
            for p in payloads[8:]:
                await session.send(p)
            for expected in payloads:
                message = await peer.receive()
                assert bytes(message.payload) == expected
                message.release()
            await session.close()

    asyncio.run(asyncio.wait_for(main(), WAIT))
