"""Cluster fan-out: how long until the last of N sessions, spread over two ``serve --redis``
nodes, has a message published once to the whole cluster.

    python bench/bench_cluster.py                    # 1,000 sessions, 2 asyncio nodes, 20 rounds
    python bench/bench_cluster.py -n 200 --rounds 5 --backend trio

A redis-server (Debian's package) is started on a free port; two ``python -m msgtrans serve
--tcp 127.0.0.1:0 --redis URL`` processes are the nodes; this process holds the client sessions
(half on each node, plain asyncio msgtrans clients) and publishes with redis-py's blocking client
(what ``python -m msgtrans publish`` does).  Each round publishes one small message and waits
until every session received it; printed: the time to the first and the last session (median
and worst over the rounds), and, as the baseline measured the same way in the same run, the
time for one node alone to deliver a ``publish`` to its half (same machine, same clients).

On this 2-core machine the client side (N asyncio sessions receiving in one process) costs
about as much CPU as both nodes together: the figures are an upper bound for the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import msgtrans.io_asyncio as mt  # noqa: E402
from msgtrans.core.backplane import BackplaneNode, Envelope, TargetKind  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


def start_node(url: str, backend: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgtrans", "serve", "--tcp", "127.0.0.1:0", "--redis", url,
         "--backend", backend, "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, json.loads(line)["tcp"]


class Publisher:
    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.node = BackplaneNode()

    def publish(self, data: bytes) -> int:
        raw = Envelope(self.node.node_id, TargetKind.ALL, "", 0, data).encode()
        return int(self.client.publish(self.node.all_channel, raw))


async def round_trip(publisher: Publisher, sessions: list[mt.Session], tag: bytes
                     ) -> tuple[float, float]:
    start = time.perf_counter()
    times: list[float] = []

    async def one(session: mt.Session) -> None:
        while True:
            message = await session.receive()
            if bytes(message.payload) == tag:
                times.append(time.perf_counter() - start)
                return

    tasks = [asyncio.ensure_future(one(s)) for s in sessions]
    await asyncio.sleep(0)
    start = time.perf_counter()
    publisher.publish(tag)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return min(times), max(times)


async def main_async(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="msgtrans-bench-cluster-")
    redis_proc, url = start_redis(tmp)
    nodes = [start_node(url, args.backend) for _ in range(2)]
    try:
        async with mt.Transport.builder().build() as transport:
            sessions: list[list[mt.Session]] = [[], []]
            for i in range(args.sessions):
                k = i % 2
                sessions[k].append(await transport.connect(f"tcp://{nodes[k][1]}"))
            everyone = sessions[0] + sessions[1]
            publisher = Publisher(url)
            # Both nodes subscribed: a publish reaches both (PUBLISH counts the subscribers).
            deadline = time.monotonic() + 10
            while publisher.publish(b"warm") < 2:
                assert time.monotonic() < deadline, "the nodes did not subscribe"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            for s in everyone:
                while s.receive_nowait() is not None:
                    pass
            rows = []
            for r in range(args.rounds):
                rows.append(await round_trip(publisher, everyone, b"round %d" % r))
            firsts = [f for f, _ in rows]
            lasts = [last for _, last in rows]
            print(f"cluster fan-out: {args.sessions} sessions over 2 {args.backend} nodes, "
                  f"{args.rounds} rounds")
            print(f"  first session: median {statistics.median(firsts) * 1e3:7.2f} ms")
            print(f"  last session:  median {statistics.median(lasts) * 1e3:7.2f} ms, "
                  f"worst {max(lasts) * 1e3:7.2f} ms")
            # Baseline in the same run: only node 1's half listening for the tag.
            half = []
            for r in range(args.rounds):
                tag = b"half %d" % r
                half.append(await round_trip(publisher, sessions[0], tag))
                for s in sessions[1]:
                    while s.receive_nowait() is not None:
                        pass
            half_last = statistics.median(x for _, x in half)
            print(f"  baseline, one node's {len(sessions[0])} sessions: last median "
                  f"{half_last * 1e3:7.2f} ms (ratio cluster/one node "
                  f"{statistics.median(lasts) / half_last:4.2f})")
    finally:
        for proc, _ in nodes:
            proc.terminate()
        for proc, _ in nodes:
            proc.wait(10)
        redis_proc.kill()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--sessions", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--backend", choices=["asyncio", "trio", "sync"], default="asyncio")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
