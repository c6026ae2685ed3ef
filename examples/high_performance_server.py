"""A multi-protocol server on asyncio with worker processes, batches and a /metrics endpoint.

What it shows:

- one ``serve(configs, handler, workers=2)`` call serving TCP, WebSocket and QUIC (a
  self-signed certificate) from two forked worker processes sharing the ports (SO_REUSEPORT);
- a batch-friendly handler: one-way messages are echoed with ``session.send``, which only
  queues, so every echo of one read goes out in one write; requests answer with the worker's pid;
- clients sending batches with ``send_many`` (one write per batch) and taking the echoes with
  ``receive_many`` (one wake-up per batch);
- a tiny HTTP endpoint in the supervisor answering ``GET /metrics`` with
  ``transport.stats_prometheus()``: the supervisor's stats are the workers' merged (each worker
  reports once a second), so one scrape shows the whole server;
- a graceful stop by SIGTERM, and the summed shutdown report.

Run the demo (a server subprocess, load from this process, a scrape, SIGTERM; about 3 s)::

    python examples/high_performance_server.py [--rounds 10] [--sessions 4]

Run it as a real server (until SIGTERM or Ctrl-C; tcp on PORT, ws on PORT+1, quic on UDP PORT+2)::

    python examples/high_performance_server.py --serve --host 0.0.0.0 --port 9000 \\
        --workers 4 --metrics-port 9100 --cert cert.pem --key key.pem
    curl http://127.0.0.1:9100/metrics

(``msgtrans.certs.write_self_signed(folder)`` makes a test certificate; without ``--cert``
the server leaves QUIC out.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import tempfile
import time

import msgtrans.io_asyncio as mt
from msgtrans.certs import write_self_signed

BATCH = 100  # messages per send_many


class Echo:
    """The workers' handler (each worker has its own copy, inherited by fork)."""

    async def on_message(self, session: mt.Session, message: mt.Message) -> None:
        """Echo a one-way message.  ``send`` queues it; the flush happens once per loop pass,
        so the echoes of a whole received batch leave in one write."""
        await session.send(message.payload, biz_type=message.biz_type)

    async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        """Answer with the pid of the worker serving this session."""
        return str(os.getpid()).encode()


# --- the server ----------------------------------------------------------------------------


def server_urls(host: str, port: int, cert: str | None, key: str | None) -> list[str]:
    """The listen URLs: tcp on *port*, ws on *port* + 1, quic on UDP *port* + 2 (with a cert)."""
    urls = [f"tcp://{host}:{port}", f"ws://{host}:{port + 1}/"]
    if cert is not None:
        urls.append(f"quic://{host}:{port + 2}?cert={cert}&key={key or cert}")
    return urls


async def answer_metrics(transport: mt.Transport, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
    """A minimal HTTP/1.0 answer: GET /metrics is the Prometheus text, anything else 404."""
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
        if request.startswith(b"GET ") and target in (b"/metrics", b"/metrics/"):
            status, body = b"200 OK", transport.stats_prometheus().encode()
        else:
            status, body = b"404 Not Found", b"try GET /metrics\n"
        writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain; version=0.0.4"
                     b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
            ConnectionError):
        pass
    finally:
        writer.close()


async def run_server(args: argparse.Namespace) -> None:
    """Serve until SIGTERM / SIGINT (serve() installs the handlers), then print the report."""
    urls = server_urls(args.host, args.port, args.cert, args.key)
    server = mt.Transport.builder().shutdown_timeout(5).build()
    async with server:
        metrics = await asyncio.start_server(
            lambda r, w: answer_metrics(server, r, w), args.host, args.metrics_port)
        print(f"serving {' '.join(u.split('?')[0] for u in urls)} with {args.workers} workers, "
              f"metrics on http://{args.host}:{args.metrics_port}/metrics", flush=True)
        report = await server.serve(urls, Echo(), workers=args.workers)
        metrics.close()
        await metrics.wait_closed()
    assert report is not None  # with workers > 1 serve() returns the summed report
    messages = report.metrics.messages_in if report.metrics is not None else 0
    print(f"stopped: {report.closed_cleanly} closed cleanly, {report.forced} forced, "
          f"{messages} messages in", flush=True)


# --- the demo ------------------------------------------------------------------------------


def free_base_port() -> int:
    """A port P with P and P+1 free for TCP and P+2 free for UDP on 127.0.0.1, now."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + 2 > 65535:
            continue
        try:
            for offset, kind in ((0, socket.SOCK_STREAM), (1, socket.SOCK_STREAM),
                                 (2, socket.SOCK_DGRAM)):
                with socket.socket(socket.AF_INET, kind) as sock:
                    sock.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def scrape(port: int) -> str:
    """GET /metrics from the supervisor; the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    response = await reader.read()
    writer.close()
    return response.partition(b"\r\n\r\n")[2].decode()


def metric(text: str, sample: str) -> float:
    """The value of *sample* (a name with its labels, as written) in a Prometheus text."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


async def drive(client: mt.Transport, url: str, sessions: int, rounds: int) -> set[bytes]:
    """*sessions* sessions to *url*, each sending *rounds* batches and taking the echoes;
    returns the worker pids that answered."""

    async def one() -> bytes:
        session = await client.connect(url, timeout=10)
        pid = bytes((await session.request(b"pid")).payload)
        payloads = [b"%06d" % i for i in range(BATCH)]
        for _ in range(rounds):
            await session.send_many(payloads)
            echoed: list[bytes] = []
            while len(echoed) < BATCH:
                echoed += [bytes(m.payload) for m in await session.receive_many()]
            assert echoed == payloads, "echoes out of order"
        await session.close()
        return pid

    return set(await asyncio.gather(*(one() for _ in range(sessions))))


async def wait_listening(client: mt.Transport, url: str) -> None:
    """Wait for the server subprocess: connect_forever retries until the first session."""
    policy = mt.ReconnectPolicy(initial_delay=0.05, max_delay=0.1, max_attempts=100)
    sessions = client.connect_forever(url, policy=policy)
    session = await sessions.__anext__()
    await sessions.aclose()
    await session.close()


async def demo(args: argparse.Namespace) -> None:
    base, metrics_port = free_base_port(), free_port()
    with tempfile.TemporaryDirectory() as folder:
        cert, key = write_self_signed(folder)
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", "--host", "127.0.0.1", "--port", str(base),
            "--workers", str(args.workers), "--metrics-port", str(metrics_port),
            "--cert", str(cert), "--key", str(key), stdout=asyncio.subprocess.PIPE)
        try:
            assert process.stdout is not None
            print(f"server: {(await process.stdout.readline()).decode().strip()}")
            urls = {"tcp": f"tcp://127.0.0.1:{base}", "ws": f"ws://127.0.0.1:{base + 1}/",
                    "quic": f"quic://127.0.0.1:{base + 2}?ca={cert}"}
            async with mt.Transport.builder().request_timeout(10).build() as client:
                await wait_listening(client, urls["tcp"])
                pids: set[bytes] = set()
                for name, url in urls.items():
                    started = time.perf_counter()
                    pids |= await drive(client, url, args.sessions, args.rounds)
                    count = args.sessions * args.rounds * BATCH
                    rate = count / (time.perf_counter() - started)
                    print(f"{name}: {count} messages echoed in batches of {BATCH} "
                          f"({rate:,.0f}/s)")
                print(f"sessions answered by {len(pids)} worker process(es)")

            # The workers report once a second: scrape until their figures include the load.
            expected = len(urls) * args.sessions * (args.rounds * BATCH + 1)
            deadline = time.monotonic() + 10
            text = await scrape(metrics_port)
            while metric(text, 'msgtrans_messages_total{direction="in"}') < expected:
                if time.monotonic() > deadline:
                    raise SystemExit(f"/metrics never showed {expected} messages in:\n{text}")
                await asyncio.sleep(0.2)
                text = await scrape(metrics_port)
            print(f"/metrics (merged over the workers), {len(text.splitlines())} lines, e.g.:")
            for name in ("msgtrans_messages_total", "msgtrans_sessions_opened_total"):
                for line in text.splitlines():
                    if line.startswith(name):
                        print(f"  {line}")

            process.send_signal(signal.SIGTERM)
            print(f"server: {(await process.stdout.readline()).decode().strip()}")
            print(f"server exit status: {await asyncio.wait_for(process.wait(), 15)}")
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="run the server only")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="tcp; ws is +1, quic +2")
    parser.add_argument("--metrics-port", type=int, default=9100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cert", help="certificate (PEM) for QUIC")
    parser.add_argument("--key", help="its key (default: in --cert)")
    parser.add_argument("--sessions", type=int, default=4, help="demo: sessions per protocol")
    parser.add_argument("--rounds", type=int, default=10, help="demo: batches per session")
    args = parser.parse_args()
    asyncio.run(run_server(args) if args.serve else demo(args))


if __name__ == "__main__":
    main()
