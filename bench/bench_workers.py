"""Messages per second of ``serve --workers 1`` against ``--workers 2`` (issue 14).

    python bench/bench_workers.py                 # 3 rounds of 5 s per server, 4 clients
    python bench/bench_workers.py --seconds 2 --rounds 1 --quick

For each worker count it starts ``python -m msgtrans serve --workers N --tcp 127.0.0.1:PORT``
(asyncio, logging at WARNING), then runs client *processes* against it: each opens a few raw TCP
connections and keeps a window of 64-byte one-way msgtrans packets in flight on each, which the
echo server decodes, hands to its handler and sends back.  The clients are plain sockets writing
pre-encoded packets and counting the echoed bytes, so that they cost far less CPU than the
server (their CPU time is printed: on a 2-core machine it is CPU the servers do not get).

Printed per worker count: messages/s echoed (the best round), the server's CPU seconds per
second (supervisor and workers), the clients' CPU seconds per second; then the ratio of the
two rates.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from msgtrans.core.packet import Packet  # noqa: E402

PAYLOAD = 64
WINDOW = 256  # packets in flight per connection


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) of *pids*, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def client(port: int, connections: int, seconds: float, start_at: float,
           result: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """One client process: *connections* sockets, each with WINDOW packets in flight, for
    *seconds* from *start_at*; puts (messages echoed, CPU seconds) on *result*."""
    packet = Packet(payload=b"x" * PAYLOAD).encode()
    size = len(packet)
    burst = packet * WINDOW
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(sock)
    while time.time() < start_at:
        time.sleep(0.005)
    selector = selectors.DefaultSelector()
    owed = {}
    for sock in socks:
        sock.sendall(burst)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        owed[sock] = 0  # bytes received not yet a whole packet
    echoed = 0
    cpu0 = time.process_time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(0.1):
            sock = key.fileobj
            try:
                data = sock.recv(1 << 20)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            if not data:
                raise SystemExit("the server closed a connection")
            got = owed[sock] + len(data)
            whole, owed[sock] = divmod(got, size)
            echoed += whole
            if whole:
                # Refill the window by what came back (blocking briefly is fine).
                sock.setblocking(True)  # type: ignore[union-attr]
                sock.sendall(packet * whole)  # type: ignore[union-attr]
                sock.setblocking(False)  # type: ignore[union-attr]
    cpu = time.process_time() - cpu0
    for sock in socks:
        sock.close()
    result.put((echoed, cpu))


def measure(workers: int, clients: int, connections: int, seconds: float,
            rounds: int) -> dict[str, float]:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [sys.executable, "-m", "msgtrans", "serve", "--workers", str(workers), "--tcp",
         f"127.0.0.1:{port}", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        assert server.stdout is not None
        line = json.loads(server.stdout.readline())
        pids = [server.pid, *line.get("workers", [])]
        ctx = multiprocessing.get_context("spawn")
        best: dict[str, float] = {}
        for _ in range(rounds):
            result: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
            start_at = time.time() + 1.0
            procs = [ctx.Process(target=client,
                                 args=(port, connections, seconds, start_at, result))
                     for _ in range(clients)]
            for proc in procs:
                proc.start()
            while time.time() < start_at:
                time.sleep(0.005)
            cpu0 = _cpu_of(pids)
            got = [result.get(timeout=seconds + 30) for _ in procs]
            server_cpu = (_cpu_of(pids) - cpu0) / seconds
            for proc in procs:
                proc.join(10)
            rate = sum(n for n, _ in got) / seconds
            if rate > best.get("rate", 0):
                best = {"rate": rate, "server_cpu": server_cpu,
                        "client_cpu": sum(c for _, c in got) / seconds}
        return best
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--connections", type=int, default=16, help="per client process")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
    print(f"{os.cpu_count()} cores; {args.clients} client processes x {args.connections} "
          f"connections, {WINDOW} x {PAYLOAD}-byte one-way messages in flight on each; "
          f"best of {args.rounds} x {args.seconds:g} s")
    rates = {}
    for workers in (1, 2):
        row = measure(workers, args.clients, args.connections, args.seconds, args.rounds)
        rates[workers] = row["rate"]
        print(f"--workers {workers}: {row['rate']:>10,.0f} msgs/s echoed; server CPU "
              f"{row['server_cpu']:.2f} s/s, clients' CPU {row['client_cpu']:.2f} s/s",
              flush=True)
    print(f"ratio 2 workers / 1: {rates[2] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
