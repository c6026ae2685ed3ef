"""Connection pool tuning: the same burst against a FixedExpansion pool and a SmartExpansion
pool (asyncio), with a timeline of each pool and what it wasted.

The server (WebSocket) answers each request after 20 ms, a stand-in for real work; a small
relay in front of it holds each handshake's answer for 30 ms, so that opening a connection
takes as long as over a real network.  Every request holds a lease for its round trip; a lease
that waits more than 5 ms, or utilisation above 80 %, makes the pool grow by its strategy's
step, one step at a time (no new step while opens are in flight).

The burst: 40 callers, each sending requests one after the other for 0.8 s, against a pool of
``min=2, max=64, target=64``; then one request at a time for 0.3 s.  Printed per pool: a
timeline from ``pool.status()`` (``PoolStatus``: connections open, busy, idle, opening; leases
waiting), and a summary: requests served, the slowest, leases waiting on average, the peak and
the expansions, and the waste: the idle share of connection-time during the burst and the
connections left idle after it (they close only after ``shrink_after``, 300 s by default).

``FixedExpansion(2)`` adds 2 connections per step: it ends near the demand (little waste) but
leases queue for most of the burst.  ``SmartExpansion()`` doubles while far from its target and
slows down near it: the demand is met in a few steps, at the price of overshooting it.

Run it: ``python examples/connection_pool_tuning.py`` (about 3 s); try ``--callers 20``,
``--open-delay 0.1`` or a smaller target in the code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import msgtrans.io_asyncio as mt

WORK = 0.02  # seconds the server spends on a request


class SlowEcho:
    """The server's handler: answers after WORK seconds."""

    async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        await asyncio.sleep(WORK)
        return bytes(message.payload)


@dataclass
class Run:
    """What one pool did."""

    name: str
    samples: list[tuple[float, mt.PoolStatus]] = field(default_factory=list)
    burst_seconds: float = 0.0
    requests: int = 0
    slowest: float = 0.0
    trickle_idle: list[int] = field(default_factory=list)
    final: mt.PoolStatus | None = None


async def sample(pool: mt.SessionPool, run: Run, every: float, stop: asyncio.Event) -> None:
    """Record pool.status() every *every* seconds until *stop* is set."""
    start = time.perf_counter()
    while not stop.is_set():
        run.samples.append((time.perf_counter() - start, pool.status()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    run.samples.append((time.perf_counter() - start, pool.status()))


async def exercise(client: mt.Transport, url: str, name: str, strategy: mt.ExpansionStrategy,
                   args: argparse.Namespace) -> Run:
    """A pool with *strategy*; the burst, then the trickle; returns what was seen."""
    run = Run(name)
    pool = await client.pool(url, min=2, max=64, target=64, strategy=strategy)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(pool, run, args.step, stop))

    async def caller(until: float) -> float:
        """Requests one after the other until *until*; the slowest one's time."""
        slowest = 0.0
        while (started := time.perf_counter()) < until:
            await pool.request(b"work")
            slowest = max(slowest, time.perf_counter() - started)
            run.requests += 1
        return slowest

    started = time.perf_counter()
    ends = started + args.seconds
    run.slowest = max(await asyncio.gather(*(caller(ends) for _ in range(args.callers))))
    run.burst_seconds = time.perf_counter() - started
    stop.set()
    await sampler

    # The trickle: one request at a time; what the burst opened waits idle meanwhile.
    ends = time.perf_counter() + args.trickle
    while time.perf_counter() < ends:
        await pool.request(b"trickle")
        run.trickle_idle.append(pool.status().idle_connections)
    run.final = pool.status()
    await pool.close()
    return run


def print_run(run: Run) -> None:
    """The timeline, then one summary line."""
    print(f"== {run.name}")
    print("      t  open  busy  idle  opening  waiting")
    for t, s in run.samples:
        opened = s.active_connections + s.idle_connections
        print(f"  {t:5.2f}s {opened:5d} {s.active_connections:5d} {s.idle_connections:5d} "
              f"{s.pending_connections:8d} {s.waiting_leases:8d}")
    # Waste: the idle share of connection-time while the burst ran, and what stays open idle.
    opened_time = sum(s.active_connections + s.idle_connections for _, s in run.samples)
    idle_time = sum(s.idle_connections for _, s in run.samples)
    waste = idle_time / opened_time if opened_time else 0.0
    assert run.final is not None
    peak = max(s.active_connections + s.idle_connections for _, s in run.samples)
    waited = sum(s.waiting_leases for _, s in run.samples) / len(run.samples)
    idle = sum(run.trickle_idle) / len(run.trickle_idle) if run.trickle_idle else 0.0
    size = run.final.active_connections + run.final.idle_connections
    print(f"{run.name}: {run.requests} requests in {run.burst_seconds:.2f}s, slowest "
          f"{run.slowest * 1000:.0f} ms, {waited:.1f} leases waiting on average, peak {peak} "
          f"connections after {run.final.expansion_count} expansions; waste: {waste:.0%} idle "
          f"during the burst, {idle:.0f} of {size} idle after it")


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               delay: float) -> None:
    """Copy *reader* to *writer*; the first chunk *delay* seconds late."""
    try:
        first = True
        while chunk := await reader.read(65536):
            if first:
                await asyncio.sleep(delay)
                first = False
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def latency_proxy(target: tuple[str, int], delay: float) -> asyncio.Server:
    """A TCP relay to *target* that holds the server's first bytes (the WebSocket handshake's
    answer) for *delay* seconds: every new connection then takes about that long to open, as
    over a real network, and costs no CPU meanwhile."""

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(client_r, server_w, 0.0), pipe(server_r, client_w, delay))

    return await asyncio.start_server(relay, "127.0.0.1", 0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=40,
                        help="concurrent callers during the burst")
    parser.add_argument("--seconds", type=float, default=0.8, help="seconds of burst")
    parser.add_argument("--trickle", type=float, default=0.3, help="seconds of trickle")
    parser.add_argument("--step", type=float, default=0.05, help="seconds between rows")
    parser.add_argument("--open-delay", type=float, default=0.03,
                        help="seconds a new connection takes to open")
    args = parser.parse_args()

    async with mt.Transport() as server, \
            mt.Transport.builder().request_timeout(20).build() as client:
        stream = server.accept(["ws://127.0.0.1:0/"])
        await stream.start()  # binds now, so the port is known
        serving = asyncio.create_task(server.serve(stream, SlowEcho()))
        proxy = await latency_proxy(stream.addresses[0], args.open_delay)
        url = f"ws://127.0.0.1:{proxy.sockets[0].getsockname()[1]}/"

        runs = [await exercise(client, url, "fixed +2", mt.FixedExpansion(2), args),
                await exercise(client, url, "smart", mt.SmartExpansion(), args)]
        for run in runs:
            print_run(run)
        fixed, smart = runs
        print(f"smart vs fixed +2: {smart.requests / fixed.requests:.2f}x the requests, "
              f"{smart.final.expansion_count if smart.final else 0} expansions instead of "
              f"{fixed.final.expansion_count if fixed.final else 0}")
        events = client.stats().pool_events
        print(f"client pool events by trigger: {dict(events)}")

        await server.graceful_shutdown(5)
        await asyncio.wait_for(serving, 5)
        proxy.close()


if __name__ == "__main__":
    asyncio.run(main())
