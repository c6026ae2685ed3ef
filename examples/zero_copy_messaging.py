"""Zero-copy messaging: payloads of 1 to 4 MiB received as views of pooled buffers, not copies
(asyncio, over TCP and WebSocket).

A received payload of at least the server's ``zero_copy_threshold`` (256 KiB here, set on the
builder; 64 KiB by default) reaches the handler as a read-only ``memoryview`` of the buffer it
was received into, and that buffer is lent by the process-wide receive pool.  The handler
checksums the view in place (``zlib.crc32`` reads it without a copy) and gives the buffer back
with ``with message:`` (``message.release()``), so the next big message reuses it instead of
allocating (and zero-filling) megabytes.  A payload under the threshold is plain ``bytes``.

Printed per run, from the deltas of ``transport.stats()`` (``MetricsSnapshot``):
``zero_copy_hit_rate`` (large payloads handed out as views / large payloads), the bytes the
decoder copied per large payload, and the buffer pool's hit rate.  On TCP only the bytes
that came with the read that began a packet are copied (at most one read, 64 KiB); a
WebSocket server must unmask each client frame (RFC 6455), which is one copy, still made
straight into the pooled buffer that is handed out (see docs/buffers.md, "What each protocol
copies").  The last run keeps the
messages without releasing them: every buffer is then a fresh allocation (a pool miss), which is
what ``release()`` saves.

Run it: ``python examples/zero_copy_messaging.py`` (about 2 s; ``--messages 60`` for more).
"""

from __future__ import annotations

import argparse
import asyncio
import zlib

import msgtrans.io_asyncio as mt
from msgtrans.core.metrics import MetricsSnapshot

MIB = 1 << 20
THRESHOLD = 256 * 1024


class Checksum:
    """The server's handler: answers each request with the CRC-32 of its payload."""

    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}  # how the payloads arrived: "view (pooled)", "bytes"
        self.kept: list[mt.Message] | None = None  # not None: keep messages, never release

    async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        payload = message.payload
        kind = "view (pooled)" if message.pooled else type(payload).__name__
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if self.kept is not None:
            self.kept.append(message)  # holds the pooled buffer: the pool must allocate anew
            return b"%d" % zlib.crc32(payload)
        with message:  # releases the buffer at the end of the block
            return b"%d" % zlib.crc32(payload)  # reads the view in place: no copy


def figures(before: MetricsSnapshot, after: MetricsSnapshot) -> str:
    """The zero-copy and buffer pool figures of what happened between two snapshots."""
    zc0, zc1 = before.zero_copy, after.zero_copy
    bp0, bp1 = before.buffer_pool, after.buffer_pool
    assert zc0 is not None and zc1 is not None and bp0 is not None and bp1 is not None
    large = zc1.large_payloads - zc0.large_payloads
    viewed = zc1.zero_copy_payloads - zc0.zero_copy_payloads
    copied = (zc1.bytes_copied - zc0.bytes_copied) / large if large else 0.0
    hits, misses = bp1.hits - bp0.hits, bp1.misses - bp0.misses
    pool = hits / (hits + misses) if hits + misses else 0.0
    return (f"zero-copy hit rate {viewed / large if large else 0.0:.0%} ({viewed}/{large}), "
            f"{copied / 1024:.1f} KiB copied per large payload, "
            f"buffer pool hit rate {pool:.0%} ({hits} hits, {misses} misses)")


async def run(client: mt.Transport, server: mt.Transport, handler: Checksum, name: str,
              url: str, *, messages: int) -> None:
    """Send *messages* requests of 1, 2 and 4 MiB (and one of 100 KiB) to *url*, check every
    checksum, print the figures."""
    session = await client.connect(url)
    sizes = [(1, 2, 4)[i % 3] * MIB for i in range(messages)]
    payloads = {size: bytes(range(256)) * (size // 256) for size in set(sizes)}
    handler.kinds.clear()
    before = server.stats()
    for size in sizes:
        reply = await session.request(payloads[size])
        assert int(reply.payload) == zlib.crc32(payloads[size]), "checksum mismatch"
    after = server.stats()
    small = await session.request(b"s" * (100 * 1024))  # under the threshold: bytes
    assert int(small.payload) == zlib.crc32(b"s" * (100 * 1024))
    await session.close()
    arrived = ", ".join(f"{n} as {kind}" for kind, n in handler.kinds.items())
    print(f"{name}: {len(sizes)} payloads of 1-4 MiB and one of 100 KiB, checksums ok; "
          f"arrived: {arrived}")
    print(f"{name}: {figures(before, after)}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=12, help="large messages per run")
    args = parser.parse_args()

    handler = Checksum()
    server = (mt.Transport.builder()
              .zero_copy_threshold(THRESHOLD)
              .max_payload(8 * MIB)
              .build())
    client = mt.Transport.builder().max_payload(8 * MIB).request_timeout(10).build()
    async with server, client:
        stream = server.accept(["tcp://127.0.0.1:0", "ws://127.0.0.1:0/"])
        await stream.start()  # binds now, so the ports are known
        (host, tcp_port), (_, ws_port) = stream.addresses
        serving = asyncio.create_task(server.serve(stream, handler))
        tcp, ws = f"tcp://{host}:{tcp_port}", f"ws://{host}:{ws_port}/"

        await run(client, server, handler, "tcp", tcp, messages=args.messages)
        await run(client, server, handler, "ws", ws, messages=args.messages)
        handler.kept = []
        await run(client, server, handler, "tcp, never released", tcp, messages=args.messages)
        handler.kept = None  # dropped: the garbage collector frees them, the pool writes them off

        total = server.stats()
        assert total.zero_copy_hit_rate is not None and total.buffer_hit_rate is not None
        print(f"process totals: zero_copy_hit_rate {total.zero_copy_hit_rate:.0%}, "
              f"buffer_hit_rate {total.buffer_hit_rate:.0%}")
        await server.graceful_shutdown(5)
        await asyncio.wait_for(serving, 5)


if __name__ == "__main__":
    asyncio.run(main())
