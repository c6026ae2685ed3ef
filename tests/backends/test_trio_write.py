"""The trio stream writer's vectored write (``StreamIO._write``): the core's parts (joined small
packets, headers, large payloads by reference) go to ``sendmsg`` as they are, and a partial
write goes on from the byte where it stopped.  Checked with hypothesis against a fake
``sendmsg`` that takes at most a few bytes per call, and end to end over TCP with payloads on
both sides of the core's coalescing limit; without ``sendmsg`` (Windows) the parts are joined
into batches for ``send_all``.
"""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import msgtrans.io_trio as mt
from msgtrans.core.packet import Buffer
from msgtrans.io_trio import _stream
from msgtrans.io_trio._stream import StreamIO


class FakeSocket:
    """``sendmsg`` that takes at most *limit* bytes per call and records them."""

    def __init__(self, limit: int, total: int) -> None:
        self.limit = limit
        self.total = total  # what the writer has to write: more means a byte went twice
        self.written = bytearray()
        self.calls: list[int] = []

    async def sendmsg(self, buffers: list[Buffer]) -> int:
        assert buffers, "sendmsg with no buffers"
        self.calls.append(len(buffers))
        room = self.limit
        for buf in buffers:
            take = bytes(memoryview(buf)[:room])
            self.written += take
            room -= len(take)
            if not room:
                break
        assert len(self.written) <= self.total, "bytes written more than once"
        await trio.lowlevel.checkpoint()
        return self.limit - room


class FakeStream:
    """``send_all`` for sockets without ``sendmsg``: records what it is given, whole."""

    def __init__(self, sock: FakeSocket) -> None:
        self.sock = sock

    async def send_all(self, data: Buffer) -> None:
        self.sock.calls.append(1)
        self.sock.written += data
        await trio.lowlevel.checkpoint()


def writer_for(sock: FakeSocket, *, vectored: bool = True) -> StreamIO:
    io = StreamIO.__new__(StreamIO)  # only _write is exercised: no session, no socket
    io._sendmsg = sock.sendmsg if vectored else None
    io._stream = FakeStream(sock)
    return io


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=300), max_size=12),
    limit=st.integers(min_value=1, max_value=700),
    max_parts=st.integers(min_value=1, max_value=5),
    as_views=st.booleans(),
    vectored=st.booleans(),
)
def test_partial_writes_send_every_byte_once_in_order(
    parts: list[bytes], limit: int, max_parts: int, as_views: bool, vectored: bool,
) -> None:
    sock = FakeSocket(limit, sum(map(len, parts)))
    # Set and restored here, not by monkeypatch: hypothesis runs many examples per fixture.
    original = _stream._MAX_PARTS
    _stream._MAX_PARTS = max_parts
    try:
        given_parts: list[Buffer] = [memoryview(p) if as_views else bytearray(p) for p in parts]
        trio.run(writer_for(sock, vectored=vectored)._write, given_parts)
    finally:
        _stream._MAX_PARTS = original
    assert bytes(sock.written) == b"".join(parts)
    assert all(0 < n <= max_parts for n in sock.calls)
    if not vectored:
        # Without sendmsg: small parts joined, at most one send_all per part.
        assert len(sock.calls) <= max(1, len(parts))


@pytest.mark.network
@pytest.mark.filterwarnings("error::ResourceWarning")
def test_mixed_payload_sizes_arrive_whole_over_tcp() -> None:
    """Small packets (joined by the core) and large payloads (parts of their own, many at a
    time, so the kernel takes them in pieces) arrive intact and in order."""
    sizes = [10, 20_000, 5, 1 << 20, 64, 70_000, 0, 3 << 20, 16_383, 16_384, 100]
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]

    async def main() -> None:
        with trio.fail_after(30):
            async with mt.Transport() as server, mt.Transport() as client, \
                    server.accept(["tcp://127.0.0.1:0"]) as stream:
                port = stream.addresses[0][1]
                cs = await client.connect(f"tcp://127.0.0.1:{port}")
                ss = await stream.__anext__()
                for payload in payloads:
                    await cs.send(payload)
                got: list[bytes] = []
                while len(got) < len(payloads):
                    for message in await ss.receive_many():
                        got.append(bytes(message.payload))
                        message.release()
                assert [len(g) for g in got] == sizes
                assert got == payloads

    trio.run(main)
