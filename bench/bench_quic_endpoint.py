"""Per-datagram cost of the QUIC server endpoint with many connected but idle sessions.

    python bench/bench_quic_endpoint.py                      # 10, 100, 1000 idle sessions
    python bench/bench_quic_endpoint.py --sessions 10 100    # fewer
    python bench/bench_quic_endpoint.py --before 2e8b9c9     # compare with another revision

In memory, with the core only (no sockets, virtual time): *N* clients complete their
handshake with one :class:`~msgtrans.core.quic_endpoint.QuicEndpoint` and then stay silent;
one more client sends small packets, and every datagram it sends goes through what a server
driver does per datagram: ``receive_datagram``, ``datagrams_to_send``, ``next_deadline``, and
the driver's look for connections with news (the asyncio listener: a scan of its sessions for
``has_events`` before, ``take_touched()`` after).  The endpoint's time for those calls is
divided by the datagrams it received.

"before" is the endpoint module of the revision given with ``--before`` (default: the one
before the touched-set/heap change), loaded from git next to the current one; "after" is the
working tree.  The revisions run alternately, ``--rounds`` times each, and the spread is shown.

Not a test: the timings depend on the machine; compare runs on one machine only.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from msgtrans.certs import generate_self_signed
from msgtrans.core.packet import Packet
from msgtrans.core.quic import QuicMachine
from msgtrans.core.quic_endpoint import QuicEndpoint

SERVER = ("127.0.0.1", 4433)
#: The last revision with the full-scan endpoint.
DEFAULT_BEFORE = "2e8b9c9"
ROOT = Path(__file__).resolve().parent.parent


def load_before(rev: str) -> Any:
    """The ``QuicEndpoint`` class of *rev*'s ``msgtrans/core/quic_endpoint.py``."""
    source = subprocess.run(
        ["git", "show", f"{rev}:msgtrans/core/quic_endpoint.py"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    name = "msgtrans.core._quic_endpoint_before"
    module = types.ModuleType(name)
    module.__package__ = "msgtrans.core"  # its relative imports resolve to the current core
    sys.modules[name] = module
    exec(compile(source, f"{rev}:quic_endpoint.py", "exec"), module.__dict__)
    return module.QuicEndpoint


def handshake(ep: Any, cert: bytes, addr: tuple[str, int], now: float) -> QuicMachine:
    """A client at *addr* connected to *ep* (both sides established)."""
    client = QuicMachine.client(SERVER, ca_data=cert)
    client.start(now)
    for _ in range(100):
        up = client.datagrams_to_send(now)
        down = ep.datagrams_to_send(now)
        if not up and not down:
            break
        for data, _a in up:
            ep.receive_datagram(data, addr, now)
        for data, _a in down:
            client.receive_datagram(data, SERVER, now)
    client.events()
    return client


def measure(cls: Any, n_idle: int, cert: bytes, key: bytes, datagrams: int) -> float:
    """Microseconds of endpoint (and driver-scan) time per datagram received."""
    ep = cls(certificate=cert, private_key=key)
    now = 1.0
    take_touched = getattr(ep, "take_touched", None)
    if take_touched is not None:
        take_touched()
    sessions: dict[Any, None] = {}  # the driver's table, as the asyncio listener keeps it
    for i in range(n_idle):
        handshake(ep, cert, ("127.0.0.1", 10000 + i), now)
    addr = ("127.0.0.2", 9999)
    client = handshake(ep, cert, addr, now)
    for conn in ep.accept():
        sessions[conn] = None
    ep.events()
    if take_touched is not None:
        take_touched()
    received = 0
    spent = 0.0
    payload = b"x" * 64
    perf = time.perf_counter
    for _ in range(50 * datagrams):
        if received >= datagrams:
            break
        # aioquic paces its sends: time must move (a millisecond per round; far below the
        # idle sessions' ping and idle timers, which therefore never fire).
        now += 0.001
        client.send_packet(Packet(payload=payload))
        up = client.datagrams_to_send(now)
        t0 = perf()
        for data, _a in up:
            ep.receive_datagram(data, addr, now)
        # The driver's look for news, then the flush and its second look, then the timer.
        if take_touched is not None:
            for conn in take_touched():
                if conn.has_events:
                    conn.events()
        else:
            for conn in sessions:
                if conn.has_events:
                    conn.events()
        down = ep.datagrams_to_send(now)
        if take_touched is not None:
            for conn in take_touched():
                if conn.has_events:
                    conn.events()
        else:
            for conn in sessions:
                if conn.has_events:
                    conn.events()
        ep.next_deadline()
        spent += perf() - t0
        received += len(up)
        for data, _a in down:
            client.receive_datagram(data, SERVER, now)
        client.events()
    if not received:
        raise RuntimeError("the client sent nothing")
    return spent / received * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--datagrams", type=int, default=2000)
    args = parser.parse_args()
    cert, key = generate_self_signed(["localhost", "127.0.0.1"])
    variants = {"before": load_before(args.before), "after": QuicEndpoint}
    print(f"{'idle sessions':>13}  {'before us/dgram':>22}  {'after us/dgram':>22}  speed-up")
    for n in args.sessions:
        results: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):  # alternate A/B on a noisy machine
            for name, cls in variants.items():
                results[name].append(measure(cls, n, cert, key, args.datagrams))
        cells = []
        for name in variants:
            values = results[name]
            cells.append(f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})")
        ratio = statistics.median(results["before"]) / statistics.median(results["after"])
        print(f"{n:>13}  {cells[0]:>22}  {cells[1]:>22}  {ratio:7.1f}x", flush=True)


if __name__ == "__main__":
    main()
