"""The asyncio stream driver reads on after a big read (several reads per readiness event):
a bulk stream of big messages followed by the sender's close arrives whole, in order, and the
close is seen after the last message; a paused reader stops the reading on."""

from __future__ import annotations

import asyncio

import pytest

import msgtrans.io_asyncio as mt
from msgtrans.io_asyncio._stream import StreamIO

pytestmark = [pytest.mark.network]
WAIT = 20.0


@pytest.mark.parametrize("size", [20_000, 70_000, 300_000])
def test_bulk_then_close_arrives_whole_and_in_order(size: int) -> None:
    count = max(8, 4_000_000 // size)

    async def main() -> None:
        server = mt.Transport.builder().shutdown_timeout(1.0).build()
        client = mt.Transport.builder().shutdown_timeout(1.0).build()
        async with server, client:
            stream = server.accept([mt.TcpServerConfig("127.0.0.1:0")])
            await stream.start()
            port = stream.addresses[0][1]
            session = await client.connect(f"tcp://127.0.0.1:{port}")
            peer = await stream.__anext__()
            io = peer._io
            assert isinstance(io, StreamIO)
            assert io._recv_into is not None  # asyncio's selector transport: reading on is on
            payloads = [bytes([i % 256]) * size for i in range(count)]

            async def send_then_close() -> None:
                for p in payloads:
                    await session.send(p)
                await session.close()

            sender = asyncio.ensure_future(send_then_close())
            for expected in payloads:
                message = await peer.receive()
                assert len(message.payload) == size
                assert message.payload[0] == expected[0] and message.payload[-1] == expected[-1]
                message.release()
            await sender
            with pytest.raises(mt.TransportError):
                await peer.receive()  # the close came after the last message
            assert peer.closed_event is not None and peer.closed_event.clean

    asyncio.run(asyncio.wait_for(main(), WAIT))


def test_paused_reader_stops_reading_on() -> None:
    """With a receive bound of 2 messages, the reads stop while the application does not
    read (at most one read's worth past the bound), and all arrive once it does."""

    async def main() -> None:
        server = (mt.Transport.builder().shutdown_timeout(1.0)
                  .session_settings(receive_max_messages=2).build())
        client = mt.Transport.builder().shutdown_timeout(1.0).build()
        async with server, client:
            stream = server.accept([mt.TcpServerConfig("127.0.0.1:0")])
            await stream.start()
            port = stream.addresses[0][1]
            session = await client.connect(f"tcp://127.0.0.1:{port}")
            peer = await stream.__anext__()
            size, count = 100_000, 60
            sender = asyncio.ensure_future(session.send_many([b"r" * size] * count))
            for _ in range(500):  # bounded: until the reads pause
                if peer.connection.session.read_paused:
                    break
                await asyncio.sleep(0.01)
            assert peer.connection.session.read_paused
            await asyncio.sleep(0.05)
            # The bound, plus what one read (and the packet it completed) carried past it.
            assert len(peer._inbox or ()) <= 2 + 2
            for _ in range(count):
                message = await peer.receive()
                assert len(message.payload) == size
                message.release()
            await sender

    asyncio.run(asyncio.wait_for(main(), WAIT))
