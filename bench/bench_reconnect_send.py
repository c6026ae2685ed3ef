"""What a ReconnectingSession costs per one-way send while connected: plain ``Session.send``
against ``ReconnectingSession.send`` on the same transport, TCP over loopback, 64-byte payloads,
the server draining with ``receive_many`` in the same process.

    python bench/bench_reconnect_send.py                 # asyncio, trio, sync
    python bench/bench_reconnect_send.py asyncio -n 20000 -r 15

Rounds alternate plain and reconnecting (the baseline runs in the same process, interleaved);
printed per backend: ns per send, best and median of the rounds, and the difference.  On a
shared 2-core machine round-to-round noise (hundreds of ns) is larger than the wrapper's cost:
compare the best figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

PAYLOAD = b"x" * 64


def report(name: str, plain: list[float], recon: list[float]) -> None:
    bp, br = min(plain), min(recon)
    mp, mr = statistics.median(plain), statistics.median(recon)
    print(f"{name:8s} plain best {bp:6.0f} ns median {mp:6.0f} ns | reconnecting best "
          f"{br:6.0f} ns median {mr:6.0f} ns | overhead best {br - bp:+5.0f} ns "
          f"({(br / bp - 1) * 100:+.1f} %), median {mr - mp:+5.0f} ns")


async def timed_async(sessions: tuple[Any, Any], n: int, rounds: int,
                      pause: Callable[[float], Awaitable[None]]) -> tuple[list[float], ...]:
    out: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for session, times in zip(sessions, out, strict=True):
            send = session.send
            start = time.perf_counter_ns()
            for _ in range(n):
                await send(PAYLOAD)
            times.append((time.perf_counter_ns() - start) / n)
            await pause(0.05)
    return out


async def asyncio_bench(n: int, rounds: int) -> None:
    import msgtrans.io_asyncio as mt

    async with mt.Transport() as server, mt.Transport() as client:
        stream = server.accept(["tcp://127.0.0.1:0"])
        await stream.start()
        tasks: set[asyncio.Task[None]] = set()

        async def eat(session: Any) -> None:
            try:
                while True:
                    await session.receive_many()
            except mt.TransportError:
                pass

        async def accept() -> None:
            async for session in stream:
                tasks.add(asyncio.create_task(eat(session)))

        acceptor = asyncio.create_task(accept())
        url = f"tcp://127.0.0.1:{stream.addresses[0][1]}"
        plain = await client.connect(url)
        recon = await client.connect(url, reconnect=True)
        p, r = await timed_async((plain, recon), n, rounds, asyncio.sleep)
        report("asyncio", p, r)
        await recon.close()
        acceptor.cancel()
        for task in tasks:
            task.cancel()


async def trio_bench(n: int, rounds: int) -> None:
    import trio

    import msgtrans.io_trio as mt

    async with mt.Transport() as server, trio.open_nursery() as nursery:
        stream = server.accept(["tcp://127.0.0.1:0"])
        await stream.start()

        async def eat(session: Any) -> None:
            try:
                while True:
                    await session.receive_many()
            except mt.TransportError:
                pass

        async def accept() -> None:
            async for session in stream:
                nursery.start_soon(eat, session)

        nursery.start_soon(accept)
        async with mt.Transport() as client:
            url = f"tcp://127.0.0.1:{stream.addresses[0][1]}"
            plain = await client.connect(url)
            recon = await client.connect(url, reconnect=True)
            p, r = await timed_async((plain, recon), n, rounds, trio.sleep)
            report("trio", p, r)
            await recon.close()
        nursery.cancel_scope.cancel()


def sync_bench(n: int, rounds: int) -> None:
    import msgtrans.io_sync as mt

    with mt.Transport() as server, mt.Transport() as client:
        stream = server.accept(["tcp://127.0.0.1:0"])
        stream.start()

        def eat(session: Any) -> None:
            try:
                while True:
                    session.receive_many(timeout=None)
            except mt.TransportError:
                pass

        def accept() -> None:
            try:
                for session in stream:
                    threading.Thread(target=eat, args=(session,), daemon=True).start()
            except mt.TransportError:
                pass

        threading.Thread(target=accept, daemon=True).start()
        url = f"tcp://127.0.0.1:{stream.addresses[0][1]}"
        plain = client.connect(url)
        recon = client.connect(url, reconnect=True)
        p: list[float] = []
        r: list[float] = []
        for _ in range(rounds):
            for session, times in ((plain, p), (recon, r)):
                send = session.send
                start = time.perf_counter_ns()
                for _ in range(n):
                    send(PAYLOAD)
                times.append((time.perf_counter_ns() - start) / n)
                time.sleep(0.05)
        report("sync", p, r)
        recon.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backends", nargs="*", metavar="BACKEND",
                        help="asyncio, trio, sync (default: all three)")
    parser.add_argument("-n", type=int, default=20_000, help="sends per round")
    parser.add_argument("-r", "--rounds", type=int, default=15)
    args = parser.parse_args()
    args.backends = args.backends or ["asyncio", "trio", "sync"]
    unknown = set(args.backends) - {"asyncio", "trio", "sync"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    if "asyncio" in args.backends:
        asyncio.run(asyncio_bench(args.n, args.rounds))
    if "trio" in args.backends:
        import trio

        trio.run(trio_bench, args.n, args.rounds)
    if "sync" in args.backends:
        sync_bench(args.n, args.rounds)


if __name__ == "__main__":
    main()
