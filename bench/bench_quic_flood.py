"""What a flood of QUIC Initials costs a real server: ``python -m msgtrans serve --quic``.

    python bench/bench_quic_flood.py              # 10,000 garbage + 2,000 valid, ~15 s
    python bench/bench_quic_flood.py --quick      # 1,000 + 300, a few seconds

Starts the echo server on a free UDP port (its defaults: ``retry="auto"``, 64 half-open
connections before Retry, 1024 at most), reads its resident memory from ``/proc``, then sends:

* garbage: Initial-shaped datagrams (a well-formed long header, version 1, a fresh random
  destination id each, 1200 bytes) whose protected part is random, as a flood of noise or of
  forged packets would;
* valid, spoofed: real client Initials (each from a fresh aioquic client, so each with its own
  id and keys) sent from 50 source ports, whose senders never answer, as a flood from spoofed
  addresses would.

Printed: the server's RSS before and after each, and per datagram.  Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

if importlib.util.find_spec("msgtrans") is None:  # run from a checkout without `pip install -e`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from msgtrans.core.quic import QuicMachine

ROOT = Path(__file__).resolve().parent.parent


def garbage_initial(dcid: bytes, scid: bytes) -> bytes:
    """1200 bytes with a well-formed Initial long header whose protected part is random."""
    head = bytes([0xC0]) + (1).to_bytes(4, "big") + bytes([len(dcid)]) + dcid
    head += bytes([len(scid)]) + scid + b"\x00"  # no token
    body = os.urandom(1200 - len(head) - 2)
    return head + bytes([0x40 | (len(body) >> 8), len(body) & 0xFF]) + body


def valid_initial(server: tuple[str, int]) -> bytes:
    """The first datagram of a fresh client (a real Initial, encrypted with its own keys)."""
    machine = QuicMachine.client(server, cert_verification=False, ping_interval=None)
    machine.start(0.0)
    return machine.datagrams_to_send(0.0)[0][0]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")  # pragma: no cover - every Linux has it


def flood(datagrams: list[bytes], target: tuple[str, int], ports: int) -> None:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(ports)]
    try:
        for i, data in enumerate(datagrams):
            socks[i % ports].sendto(data, target)
            if i % 200 == 199:
                time.sleep(0.01)  # a pace the loopback's receive buffer keeps up with
    finally:
        for s in socks:
            s.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 garbage and 300 valid")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio", "sync"])
    args = parser.parse_args(argv)
    garbage_count, valid_count = (1000, 300) if args.quick else (10_000, 2000)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    server = subprocess.Popen(
        [sys.executable, "-m", "msgtrans", "serve", "--quic", "127.0.0.1:0",
         "--backend", args.backend, "--log-level", "ERROR"],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    try:
        assert server.stdout is not None
        host, port = json.loads(server.stdout.readline())["quic"].rsplit(":", 1)
        target = (host, int(port))
        valid = [valid_initial(target) for _ in range(valid_count)]  # made before measuring
        garbage = [garbage_initial(os.urandom(8), os.urandom(8)) for _ in range(garbage_count)]
        time.sleep(0.5)
        start = rss_mib(server.pid)
        flood(garbage, target, 1)
        time.sleep(1.0)
        after_garbage = rss_mib(server.pid)
        flood(valid, target, 50)
        time.sleep(1.0)
        after_valid = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(10)
    print(f"QUIC Initial flood against `msgtrans serve --quic` ({args.backend}), server RSS:")
    print(f"  start                          {start:8.1f} MiB")
    print(f"  +{garbage_count:>6,} garbage Initials       {after_garbage:8.1f} MiB "
          f"(+{after_garbage - start:.1f}, {1024 * (after_garbage - start) / garbage_count:.2f}"
          " KiB each)")
    print(f"  +{valid_count:>6,} valid spoofed Initials {after_valid:8.1f} MiB "
          f"(+{after_valid - after_garbage:.1f}, "
          f"{1024 * (after_valid - after_garbage) / valid_count:.2f} KiB each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
