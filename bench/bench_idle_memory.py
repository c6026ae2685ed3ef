"""What an idle connection costs a server: memory per connection that sends nothing.

    python bench/bench_idle_memory.py                       # every backend, tcp ws tls; ~1 min
    python bench/bench_idle_memory.py --backend trio --protocols tcp -n 200
    python bench/bench_idle_memory.py --backend asyncio --protocols ws --breakdown

For each backend and each case a fresh server process (``python -m msgtrans serve``'s echo
server, run by this script so that it can also answer questions on its stdin) is started; this
process opens ``-n`` connections to it with plain sockets and leaves them idle:

* ``tcp``: connected, nothing sent; ``ws``: the HTTP upgrade done, then nothing;
  ``tls``: the TLS handshake done, then nothing;
* ``tcp+msg``, ``ws+msg``, ``tls+msg``: the same, then one request exchanged (a msgtrans session
  that worked once and now idles: the case that matters most).

Printed per backend and case, per connection: ``rss KiB``, the server's RSS growth (``/proc``,
in a server run without tracemalloc: the honest figure, including what C code and the kernel
side of Python objects cost), and ``heap KiB``, tracemalloc's Python-heap growth (a second
server run with tracemalloc on: deterministic, what the regression test bounds).  Both are
taken after a warm-up of 20 connections of the same kind, so one-off costs (imports, caches)
are not counted.

``--breakdown`` prints, for the first backend and case given, the 15 file:line sites whose
allocations grew most (tracemalloc), divided by the connection count.

Not a test: RSS depends on the allocator and the machine; see
tests/backends/conformance/test_idle_memory.py for the bound that is checked.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if importlib.util.find_spec("msgtrans") is None:  # run from a checkout without `pip install -e`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BACKENDS = ("asyncio", "trio", "sync")
PROTOCOLS = ("tcp", "ws", "tls")
WARMUP = 20
KIB = 1024


# --- the server process --------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KIB
    return 0


def _control(trace: bool) -> None:
    """Answer the parent's commands on stdin, one JSON line each on stdout (a thread)."""
    import gc
    import tracemalloc

    mark: Any = None
    mark_rss = 0
    for line in sys.stdin:
        cmd = line.strip()
        gc.collect()
        if cmd == "mark":
            mark_rss = _rss()
            mark = tracemalloc.take_snapshot() if trace else None
            print(json.dumps({"ok": True}), flush=True)
        elif cmd.startswith("report"):
            out: dict[str, Any] = {"rss": _rss() - mark_rss, "heap": None, "top": []}
            if trace:
                snap = tracemalloc.take_snapshot()
                filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
                snap = snap.filter_traces(filters)
                diff = snap.compare_to(mark.filter_traces(filters), "lineno")
                out["heap"] = sum(d.size_diff for d in diff)
                out["top"] = [
                    [str(d.traceback[0]), d.size_diff, d.count_diff] for d in diff[:15]
                ]
            print(json.dumps(out), flush=True)


def serve(backend: str, protocol: str, trace: bool) -> None:
    """Run the echo server for *protocol* (tcp, ws, tls) on *backend* until stdin closes."""
    import logging
    import tempfile
    import threading
    import tracemalloc

    from msgtrans.certs import write_self_signed
    from msgtrans.cli import serve as cli

    if trace:
        tracemalloc.start(1)
    logging.basicConfig(level=logging.ERROR)
    folder = tempfile.mkdtemp(prefix="idle-memory-")
    cert, key = write_self_signed(folder)
    configs = cli.listeners({protocol: "127.0.0.1:0"}, cert, key)
    stop_async: Any = None
    ready = threading.Event()

    class Out:
        """The JSON line of addresses goes to stdout, then the control thread starts."""

        def write(self, text: str) -> int:
            sys.stdout.write(text)
            return len(text)

        def flush(self) -> None:
            sys.stdout.flush()
            ready.set()

    def control() -> None:
        ready.wait()
        _control(trace)
        # stdin closed: the parent is done.
        os._exit(0)

    threading.Thread(target=control, daemon=True).start()
    if backend == "asyncio":
        import asyncio

        async def main() -> None:
            nonlocal stop_async
            stop_async = asyncio.Event()
            await cli.run_server(configs, Path(cert), Out(), stop_async)  # type: ignore[arg-type]

        asyncio.run(main())
    elif backend == "trio":
        import trio

        trio.run(cli.run_server_trio, configs, Path(cert), Out())
    else:
        cli.run_server_sync(configs, Path(cert), Out())  # type: ignore[arg-type]


# --- the clients (this process) ------------------------------------------------------------------


def _request_packet() -> bytes:
    from msgtrans.core.packet import Packet, PacketType

    return Packet(PacketType.REQUEST, message_id=1, payload=b"hello").encode()


def _ws_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x82, 0x80 | len(payload)]) + mask + masked


def _read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while end not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data


def _read_n(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data


def open_connection(case: str, port: int, ca: str | None) -> socket.socket:
    """One idle connection of *case* (``tcp``, ``ws``, ``tls``, optionally ``+msg``)."""
    protocol, _, msg = case.partition("+")
    sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
    if protocol == "tls":
        ctx = ssl.create_default_context(cafile=ca)
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
        # TLS 1.3 tickets arrive after the handshake: read them away with a short wait, so
        # that the server's side of the handshake is over too.
    if protocol == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET / HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = _read_until(sock, b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:40]!r}")
    if msg:
        packet = _request_packet()
        if protocol == "ws":
            sock.sendall(_ws_frame(packet))
            _read_n(sock, 2 + len(packet))
        else:
            sock.sendall(packet)
            _read_n(sock, len(packet))
    return sock


def measure(backend: str, case: str, n: int, trace: bool) -> dict[str, Any]:
    """Start a server for *case* on *backend*, open *n* idle connections; return its report."""
    protocol = case.partition("+")[0]
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", backend, protocol] + (["--trace"] if trace else []),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    socks: list[socket.socket] = []

    def ask(cmd: str) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(cmd + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())  # type: ignore[no-any-return]

    try:
        bound = json.loads(proc.stdout.readline())
        port = int(bound[protocol].rstrip("/").rsplit(":", 1)[1])
        ca = bound.get("ca")
        warm = [open_connection(case, port, ca) for _ in range(WARMUP)]
        for s in warm:
            s.close()
        time.sleep(0.5)
        ask("mark")
        for _ in range(n):
            socks.append(open_connection(case, port, ca))
        time.sleep(1.0)  # the server's side of the last handshakes (TLS 1.3, sync threads)
        return ask("report")
    finally:
        for s in socks:
            s.close()
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="all", choices=(*BACKENDS, "all"))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS),
                        help="comma-separated: tcp, ws, tls (default all three)")
    parser.add_argument("--cases", default="idle,msg",
                        help="idle (nothing sent after the handshake), msg (one request "
                        "exchanged), or both (default)")
    parser.add_argument("-n", type=int, default=500, help="idle connections (default 500)")
    parser.add_argument("--breakdown", action="store_true",
                        help="top 15 allocation sites for the first backend and case")
    parser.add_argument("--serve", nargs=2, metavar=("BACKEND", "PROTOCOL"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], args.trace)
        return 0
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    kinds = [k.strip() for k in args.cases.split(",")]
    cases = [p if k == "idle" else f"{p}+msg" for k in kinds for p in protocols]
    if args.breakdown:
        report = measure(backends[0], cases[0], args.n, trace=True)
        print(f"{backends[0]} {cases[0]}: {report['heap'] / args.n / KIB:.1f} KiB of Python "
              f"heap per connection; the sites that grew most (bytes per connection, count):")
        for where, size, count in report["top"]:
            print(f"  {size / args.n:9.0f} B  {count / args.n:6.2f}  {where}")
        return 0
    print(f"{'backend':8} {'case':8} {'rss KiB':>8} {'heap KiB':>9}   per idle connection, "
          f"n={args.n}")
    for backend in backends:
        for case in cases:
            rss = measure(backend, case, args.n, trace=False)["rss"]
            heap = measure(backend, case, args.n, trace=True)["heap"]
            print(f"{backend:8} {case:8} {rss / args.n / KIB:8.1f} {heap / args.n / KIB:9.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
