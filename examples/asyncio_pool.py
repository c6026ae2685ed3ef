"""A session pool under a burst, a server's session limit, a big message released back to the
receive pool, and the metrics as data and as Prometheus text, in one asyncio program.
Run it: ``python examples/asyncio_pool.py``."""

from __future__ import annotations

import asyncio

import msgtrans.io_asyncio as mt


class SlowEcho:
    """Answers each request after 10 ms, so concurrent requests need more sessions."""

    async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        """The return value is the response."""
        await asyncio.sleep(0.01)
        with message:  # gives a big payload's pooled buffer back once answered
            return bytes(message.payload[:8])


async def main() -> None:
    """Serve on a free port with a session limit, drive a pool through a burst, print figures."""
    async with mt.Transport() as server, mt.Transport() as client:
        stream = server.accept([mt.TcpServerConfig("127.0.0.1:0", max_sessions=20)])
        await stream.start()  # binds now, so the port is known
        host, port = stream.addresses[0]
        serving = asyncio.create_task(server.serve(stream, SlowEcho()))
        url = f"tcp://{host}:{port}"

        pool = await client.pool(url, min=2, max=16, target=8)
        # 200 requests at once: leases wait more than 5 ms, so the pool grows (x2.0 while far
        # from its target, then x1.5, x1.2, x1.1) up to max.
        replies = await asyncio.gather(*(pool.request(b"%08d" % i) for i in range(200)))
        assert [bytes(r.payload) for r in replies] == [b"%08d" % i for i in range(200)]
        status = pool.status()
        print(f"pool: grew from 2 to {status.active_connections + status.idle_connections} "
              f"sessions ({status.expansion_count} growth steps)")

        # A payload of 64 KiB or more arrives as a view of a pooled buffer: release it when done.
        async with pool.lease() as session:
            big = await session.request(b"x" * (1 << 20))
            print(f"big request answered: {bytes(big.payload)!r}")

        # The server refuses sessions beyond max_sessions (16 are the pool's): 4 more fit.
        extra = [await client.connect(url) for _ in range(4)]
        try:
            refused = await client.connect(url)
            await asyncio.wait_for(refused.receive(), 5)
        except mt.TransportError as exc:
            print(f"the 21st session: {exc.error_code}")
        for session in extra:
            await session.close()

        stats = server.stats()
        print(f"server: {stats.messages_in} messages in, "
              f"{stats.errors.get('connection.refused_by_server', 0)} refused at max_sessions")
        latency = client.stats().request_latency
        print(f"client: {latency.count} requests timed")
        prometheus = client.stats_prometheus()
        print(next(line for line in prometheus.splitlines()
                   if line.startswith("msgtrans_pool_expansions_total")))

        await pool.close()
        await server.graceful_shutdown(5)
        await asyncio.wait_for(serving, 5)


if __name__ == "__main__":
    asyncio.run(main())
