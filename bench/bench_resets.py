"""What connections the client resets cost a server: descriptors and RSS before and after.

    python bench/bench_resets.py                      # every backend, 2,000 cycles each
    python bench/bench_resets.py --backend trio -n 500

For each backend a ``python -m msgtrans serve`` process is started (TCP, TLS and WebSocket on
free loopback ports, its defaults otherwise); this process then runs ``-n`` connect/close
cycles against it with raw sockets, one at a time, in a mix: a reset (``SO_LINGER`` 0) right
after connecting, after one echoed packet, in the middle of a packet, after the WebSocket or
TLS handshake, and an orderly close.  The server's open descriptors (``/proc/PID/fd``) and RSS
(``VmRSS``) are read before the cycles (after a warm-up) and once they settled after.

Not a test (``tests/backends/conformance/test_resets.py`` is): the figures depend on the
machine.  Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

if importlib.util.find_spec("msgtrans") is None:  # run from a checkout without `pip install -e`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from msgtrans.core.packet import Packet, PacketType

BACKENDS = ("asyncio", "trio", "sync")
PACKET = Packet(PacketType.ONE_WAY, 0, 1, b"x" * 100).encode()
LINGER_0 = struct.pack("ii", 1, 0)
KINDS = list(range(8))  # the mix cycle() goes through (--kind picks some)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
    sock.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_exactly(sock: socket.socket | ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def ws_handshake(sock: socket.socket) -> None:
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                 b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: msgtrans.v1\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk


def ws_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes([0x82, 0x80 | n]) if n < 126 else bytes([0x82, 0x80 | 126]) + struct.pack(
        "!H", n)
    return head + mask + masked


def cycle(i: int, ports: dict[str, int], tls: ssl.SSLContext) -> None:
    """One connection, closed in one of the ways the mix goes through."""
    kind = KINDS[i % len(KINDS)]
    if kind in (0, 1, 2, 3):
        sock = connect(ports["tcp"])
        if kind == 1:  # after one echoed packet
            sock.sendall(PACKET)
            read_exactly(sock, len(PACKET))
        elif kind == 2:  # in the middle of a packet
            sock.sendall(PACKET[:40])
        if kind == 3:
            sock.close()  # orderly
        else:
            reset(sock)
    elif kind in (4, 5):
        sock = connect(ports["ws"])
        ws_handshake(sock)
        if kind == 5:
            sock.sendall(ws_frame(PACKET))
            time.sleep(0)
        reset(sock)
    else:
        sock = connect(ports["tls"])
        if kind == 6:  # before the TLS handshake completes
            sock.sendall(b"\x16\x03\x01\x00\x05")
            reset(sock)
            return
        wrapped = tls.wrap_socket(sock, server_hostname="localhost")
        wrapped.sendall(PACKET)
        read_exactly(wrapped, len(PACKET))
        raw = socket.socket(fileno=wrapped.detach())
        reset(raw)


def settle(pid: int, baseline_fds: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and fds(pid) > baseline_fds:
        time.sleep(0.1)
    time.sleep(0.5)


def run(backend: str, count: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgtrans", "serve", "--backend", backend, "--tcp",
         "127.0.0.1:0", "--ws", "127.0.0.1:0", "--tls", "127.0.0.1:0", "--log-level", "ERROR"],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        bound = json.loads(proc.stdout.readline())
        ports = {name: int(bound[name].rstrip("/").rsplit(":", 1)[1])
                 for name in ("tcp", "ws", "tls")}
        tls = ssl.create_default_context(cafile=bound["ca"])
        for i in range(64):  # warm-up: imports, caches, the allocator's first arenas
            cycle(i, ports, tls)
        settle(proc.pid, 1 << 30, 1.0)
        fd0, rss0 = fds(proc.pid), rss(proc.pid)
        started = time.perf_counter()
        for i in range(count):
            cycle(i, ports, tls)
        elapsed = time.perf_counter() - started
        settle(proc.pid, fd0)
        fd1, rss1 = fds(proc.pid), rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    return {"fds_before": fd0, "fds_after": fd1, "rss_mib": (rss1 - rss0) / 2**20,
            "per_conn_kb": (rss1 - rss0) / count / 1000, "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, action="append")
    parser.add_argument("-n", type=int, default=2000, help="cycles per backend (default 2000)")
    parser.add_argument("--kind", type=int, action="append", choices=range(8),
                        help="only these cycles of the mix (see cycle(); default all)")
    args = parser.parse_args()
    if args.kind:
        KINDS[:] = args.kind
    print(f"{'backend':8} {'cycles':>6} {'fds before':>10} {'fds after':>9} {'rss+ MiB':>9} "
          f"{'KB/conn':>8} {'s':>6}")
    for backend in args.backend or BACKENDS:
        r = run(backend, args.n)
        print(f"{backend:8} {args.n:6} {r['fds_before']:10.0f} {r['fds_after']:9.0f} "
              f"{r['rss_mib']:9.1f} {r['per_conn_kb']:8.1f} {r['seconds']:6.1f}", flush=True)


if __name__ == "__main__":
    main()
