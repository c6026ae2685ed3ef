"""A server bounded by its transport builder: payload and session limits, a receive queue, its
own buffer pool, and a shutdown callback with the final metrics.  Run it:
``python examples/builder_limits.py``."""

from __future__ import annotations

import asyncio
import json

import msgtrans.io_asyncio as mt
from msgtrans.core.packet import Limits


def report_shutdown(report: mt.ShutdownReport) -> None:
    """The builder's on_shutdown callback: runs once the shutdown ended."""
    assert report.metrics is not None and report.metrics.buffer_pool is not None
    lent = report.metrics.buffer_pool.classes[0]  # the 8 KiB class
    print(f"shutdown: {report.metrics.messages_in} messages in, "
          f"buffer pool {lent.hits} hit, {lent.misses} miss")


async def main() -> None:
    """Serve on a free port with limits, break each of them once, shut down."""
    builder = (
        mt.Transport.builder()
        .request_timeout(5)
        .max_payload(64 * 1024)          # bigger payloads end the session
        .max_sessions(1)                 # a second client is refused
        .zero_copy_threshold(4096)       # payloads from 4 KiB land in the pool ...
        .buffer_pool([8192], [4])        # ... this transport's own, 4 buffers of 8 KiB kept
        .memory_limit(16)                # MiB; the pool's 32 KiB fit
        .receive_queue(max_messages=64)  # stop reading when 64 messages wait
        .on_shutdown(report_shutdown)
    )
    print(json.dumps(builder.settings()))
    async with builder.build() as server, mt.Transport.builder().build() as client:
        try:  # a config that says otherwise than the builder is refused, never overridden
            server.accept(mt.TcpServerConfig("127.0.0.1:0", limits=Limits(max_payload=1024)))
        except mt.ConfigurationError as exc:
            print(f"refused: {exc.field}")

        async with server.accept("tcp://127.0.0.1:0") as stream:  # one URL, no list needed
            host, port = stream.addresses[0]
            url = f"tcp://{host}:{port}"
            session = await client.connect(url)
            accepted = await stream.__anext__()
            for _ in range(2):  # the first big payload makes a buffer, the second reuses it
                await session.send(b"x" * 5000)
                message = await accepted.receive()
                message.release()  # give the buffer back to the pool now

            second = await client.connect(url)  # TCP: refused right after it was accepted
            await asyncio.wait_for(second.wait_closed(), 5)
            refusals = server.stats().errors.get("connection.refused_by_server", 0)
            print(f"second client refused: {refusals}")

            await session.send(b"x" * (64 * 1024 + 1))
            try:
                await asyncio.wait_for(accepted.receive(), 5)
            except mt.TransportError:
                print("too big: the server closed the session")


if __name__ == "__main__":
    asyncio.run(main())
