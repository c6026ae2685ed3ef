"""The buffer pool and zero-copy on the receive path, measured through the sans-IO core.

    python bench/bench_zero_copy.py            # about 15 s
    python bench/bench_zero_copy.py --quick    # about 3 s, for a smoke run

A TCP client connection sends one-way messages; their bytes reach the server connection the way
the drivers receive them, through ``get_buffer()`` / ``buffer_updated()`` in reads of at most
64 KiB (what ``recv_into`` or an ``asyncio.BufferedProtocol`` does; the copy into the offered
buffer stands in for the kernel's).  The client's bytes are made before any measurement, so
only the receive side is measured: the server's TCP machine, its decoder and its session
machine.  The application takes each message, reads its payload, and releases it
(``release_view(packet.payload)``, what ``Message.release()`` does: nothing for a payload that
holds no pooled memory), except in the ``kept`` setup, where it never releases.

Four setups, in the same run:

* ``pool``: zero-copy on, big packets received into buffers lent by a receive pool;
* ``pool, kept``: the same, but the application never releases (the buffers are collected);
* ``no pool``: zero-copy on, a new buffer per big packet (before this change);
* ``zero-copy off``: ``zero_copy_threshold=None``, every payload copied to ``bytes``.

Printed: bytes allocated per message (``tracemalloc``: the peak above the level before the
message, and the blocks still held after it), the pool hit rate under a steady load (one size,
then a mix of 64 KiB, 256 KiB and 1 MiB with up to 4 messages held at once) with the pool's
memory, bytes the decoder copied per large message and the zero-copy hit rate (from the core's
counters), and messages/s and MB/s of the receive path.

Then, per protocol (``tcp``, ``tls``, ``ws``, ``quic``), a steady stream of 64 KiB, 256 KiB and
1 MiB messages from a client to a server whose connection has a receive pool of its own: the
pool's hit rate and the zero-copy hit rate once warm (four messages of each size before the
counters are read), the bytes the receive side copied per large message (the core's counters),
and messages/s, with 100-byte messages for comparison.  TCP, TLS and WebSocket are fed to the
server as above (the client's bytes, TLS records and masked frames, are made first; decryption
and unmasking are measured); QUIC runs both machines and the datagrams between them on a
simulated clock, so its messages/s include the client's encryption and the acknowledgements.

Deterministic apart from the timings, which depend on the machine (the setups take turns and
each keeps its fastest round).
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import random
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if importlib.util.find_spec("msgtrans") is None:  # run from a checkout without `pip install -e`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from msgtrans.certs import write_self_signed
from msgtrans.core.buffers import BufferPool, receive_pool, release_view
from msgtrans.core.config import (
    QuicServerConfig,
    ServerTlsConfig,
    TcpConfig,
    TcpServerConfig,
    WebSocketServerConfig,
)
from msgtrans.core.connection import (
    Connection,
    client_connection,
    quic_endpoint,
    quic_server_connection,
    server_connection,
)
from msgtrans.core.framing import ZERO_COPY, PacketDecoder
from msgtrans.core.memory import StreamPipe
from msgtrans.core.session import MessageReceived

READ = 64 * 1024  # bytes per recv_into, as the drivers read
KiB = 1024
MiB = 1024 * 1024


@dataclass(frozen=True)
class Setup:
    """One way of receiving: a pool or not, zero-copy or not, releasing or not."""

    name: str
    pool: bool
    zero_copy: bool = True
    release: bool = True


SETUPS = (
    Setup("pool", pool=True),
    Setup("pool, kept", pool=True, release=False),
    Setup("no pool", pool=False),
    Setup("zero-copy off", pool=False, zero_copy=False),
)


class Receiver:
    """A server connection fed pre-made wire bytes through get_buffer/buffer_updated, and an
    application that reads each message and releases it (or keeps up to *hold* of them)."""

    def __init__(
        self,
        setup: Setup,
        pool: BufferPool | None,
        hold: int = 0,
        link: tuple[Connection, Connection] | None = None,
    ) -> None:
        zc = 64 * KiB if setup.zero_copy else None
        if link is None:
            link = (
                client_connection(
                    TcpConfig("127.0.0.1:9", zero_copy_threshold=zc), buffer_pool=None
                ),
                server_connection(
                    TcpServerConfig("127.0.0.1:0", zero_copy_threshold=zc), buffer_pool=pool
                ),
            )
        self.client, self.server = link
        pipe = StreamPipe(self.client, self.server)
        pipe.start()
        pipe.pump()  # the TLS and WebSocket handshakes
        self.client.events()
        self.server.events()
        self.release = setup.release
        self.held: deque[memoryview | bytes] = deque()
        self.hold = hold
        self.checksum = 0

    def wire(self, payloads: list[bytes]) -> bytes:
        """Return the bytes the client sends for *payloads* (made once, outside measurements)."""
        for payload in payloads:
            self.client.send(payload, now=0.0)
        return b"".join(self.client.data_to_send())

    def receive(self, wire: memoryview) -> int:
        """Feed *wire* as reads of at most READ bytes; hand each message to the application."""
        server = self.server
        pos, end, count = 0, len(wire), 0
        while pos < end:
            with server.get_buffer(-1) as buf:
                n = min(len(buf), end - pos, READ)
                buf[:n] = wire[pos : pos + n]
            server.buffer_updated(n, 0.0)
            pos += n
            for event in server.events():
                if type(event) is MessageReceived:
                    count += 1
                    payload = event.packet.payload
                    server.message_consumed(len(payload))
                    self.consume(payload)
        return count

    def consume(self, payload: memoryview | bytes) -> None:
        self.checksum += payload[-1]  # the application reads the message
        if not self.release:
            return
        held = self.held
        held.append(payload)
        while len(held) > self.hold:
            release_view(held.popleft())


def decoder_of(conn: Connection) -> PacketDecoder:
    decoder = getattr(conn.machine, "_decoder", None)
    assert isinstance(decoder, PacketDecoder)
    return decoder


def payloads(sizes: list[int]) -> list[bytes]:
    return [bytes([i % 251]) * size for i, size in enumerate(sizes)]


def allocations(setup: Setup, size: int, count: int) -> tuple[float, float]:
    """Return (peak bytes allocated above the start, bytes still held after) per message."""
    pool = receive_pool() if setup.pool else None
    rx = Receiver(setup, pool)
    wires = [memoryview(rx.wire(payloads([size]))) for _ in range(count + 1)]
    rx.receive(wires[0])  # warm up: the first buffer of the pool is a miss
    peak_total = held_total = 0
    tracemalloc.start()
    try:
        for wire in wires[1:]:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            rx.receive(wire)
            current, peak = tracemalloc.get_traced_memory()
            peak_total += peak - before
            held_total += max(0, current - before)
    finally:
        tracemalloc.stop()
    return peak_total / count, held_total / count


def steady(sizes: list[int], hold: int) -> tuple[float, int, int]:
    """Run a steady load through a pool; return (hit rate, bytes allocated, bytes in use)."""
    pool = receive_pool()
    rx = Receiver(SETUPS[0], pool, hold=hold)
    rx.receive(memoryview(rx.wire(payloads(sizes))))
    while rx.held:
        release_view(rx.held.popleft())
    stats = pool.stats()
    return stats.hit_rate, stats.bytes_allocated, stats.bytes_in_use


def copies(setup: Setup, size: int, count: int) -> tuple[float, float, float]:
    """Return (bytes copied by the decoder per message, of which moves of its receive area,
    zero-copy hit rate) for *count* messages of *size* bytes."""
    rx = Receiver(setup, receive_pool() if setup.pool else None)
    wire = memoryview(rx.wire(payloads([size] * count)))
    ZERO_COPY.reset()
    decoder = decoder_of(rx.server)
    moved0 = decoder.bytes_moved
    rx.receive(wire)
    stats = ZERO_COPY.snapshot()
    moved = decoder.bytes_moved - moved0
    return (stats.bytes_copied + moved) / count, moved / count, stats.hit_rate


def throughput(size: int, seconds: float) -> dict[str, tuple[float, float]]:
    """Return {setup: (messages/s, MB/s of payload)} of the receive path for *size*-byte
    messages.

    The setups take turns over the same wire bytes, round after round, and each keeps its
    fastest round: on a shared machine the slow rounds measure the neighbours, and taking
    turns spreads their noise evenly over the setups compared.
    """
    receivers = {s.name: Receiver(s, receive_pool() if s.pool else None) for s in SETUPS}
    n = max(4, (4 * MiB) // size)
    wires = {name: memoryview(rx.wire(payloads([size] * n))) for name, rx in receivers.items()}
    best = dict.fromkeys(receivers, float("inf"))
    deadline = time.perf_counter() + seconds * len(SETUPS)
    rounds = 0
    while rounds < 5 or (time.perf_counter() < deadline and rounds < 1000):
        rounds += 1
        for name, rx in receivers.items():
            start = time.perf_counter()
            count = rx.receive(wires[name])
            best[name] = min(best[name], (time.perf_counter() - start) / count)
    return {name: (1 / t, size / t / 1e6) for name, t in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--protocols-only", action="store_true",
                        help="print the per-protocol table alone")
    args = parser.parse_args()
    if args.protocols_only:
        protocol_table(args.quick)
        return
    seconds = 0.3 if args.quick else 1.5
    count = 50 if args.quick else 200
    print(f"# msgtrans zero-copy and buffer pool: Python {platform.python_version()}, "
          f"{platform.machine()}, reads of {READ // KiB} KiB\n")

    print("## Bytes allocated per message (tracemalloc, receive side only)\n")
    print("| payload | setup | peak allocated / msg | still held / msg |")
    print("|---|---|---:|---:|")
    for size in (64, 64 * KiB, 1 * MiB):
        for setup in SETUPS:
            peak, held = allocations(setup, size, count if size < MiB else count // 4)
            print(f"| {_size(size)} | {setup.name} | {peak:,.0f} B | {held:,.0f} B |")

    print("\n## Pool hit rate under a steady load (releasing every message)\n")
    rng = random.Random(6)
    n = 400 if args.quick else 2000
    mixed = [rng.choice((64 * KiB, 256 * KiB, 1 * MiB)) for _ in range(n // 4)]
    print("| load | messages | messages held at once | hit rate | pool bytes allocated "
          "| bytes in use after |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, sizes, hold in (
        ("64 KiB", [64 * KiB] * n, 0),
        ("64 KiB", [64 * KiB] * n, 4),
        ("mixed 64 KiB / 256 KiB / 1 MiB", mixed, 0),
        ("mixed 64 KiB / 256 KiB / 1 MiB", mixed, 4),
    ):
        rate, allocated, in_use = steady(sizes, hold)
        print(f"| {name} | {len(sizes)} | {hold + 1} | {rate:.1%} | {allocated:,} | {in_use:,} |")

    print("\n## Bytes copied by the decoder per large message\n")
    print("| payload | setup | bytes copied / msg | of which receive-area moves "
          "| copied / payload | zero-copy hit rate |")
    print("|---|---|---:|---:|---:|---:|")
    for size in (64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB):
        for setup in (SETUPS[0], SETUPS[2], SETUPS[3]):
            copied, moved, rate = copies(setup, size, max(8, (16 * MiB) // size))
            print(f"| {_size(size)} | {setup.name} | {copied:,.0f} | {moved:,.0f} "
                  f"| {copied / size:.1%} | {rate:.0%} |")

    print("\n## Receive path throughput (same run; setups take turns, fastest round each)\n")
    print("| payload | setup | msg/s | MB/s | vs no pool |")
    print("|---|---|---:|---:|---:|")
    for size in (64, 64 * KiB, 1 * MiB):
        rows = throughput(size, seconds)
        base = rows["no pool"][0]
        for name, (rate, mbs) in rows.items():
            print(f"| {_size(size)} | {name} | {rate:,.0f} | {mbs:,.0f} | {rate / base:.2f}x |")

    protocol_table(args.quick)


PROTOCOLS = ("tcp", "tls", "ws", "quic")
SERVER_ADDR = ("127.0.0.1", 4433)
CLIENT_ADDR = ("127.0.0.1", 50000)


class QuicReceiver:
    """A QUIC client and the server connection its endpoint accepted, on a simulated clock;
    the server's application reads and releases each message as :class:`Receiver`'s does."""

    def __init__(self, cert: str, key: str, pool: BufferPool) -> None:
        self.pool = pool
        self.client = client_connection(
            f"quic://localhost:4433?ca={cert}", resolved=SERVER_ADDR, buffer_pool=None
        )
        self.endpoint = quic_endpoint(
            QuicServerConfig(addr="127.0.0.1:4433", cert_file=cert, key_file=key)
        )
        self.server: Connection | None = None
        self.now = 0.0
        self.checksum = 0
        self.client.start(self.now)

        def established() -> bool:
            if self.server is None:
                return False
            self.server.events()
            return self.server.established is not None

        self._pump(established)

    def receive(self, payloads: list[bytes]) -> int:
        """Send *payloads* from the client; return how many the server's application took."""
        for payload in payloads:
            self.client.send(payload, now=self.now)
        got = [0]

        def done() -> bool:
            assert self.server is not None
            for event in self.server.events():
                if type(event) is MessageReceived:
                    got[0] += 1
                    payload = event.packet.payload
                    self.server.message_consumed(len(payload))
                    self.checksum += payload[-1]
                    release_view(payload)
            return got[0] == len(payloads)

        self._pump(done)
        return got[0]

    def _pump(self, until: Callable[[], bool], rounds: int = 200_000) -> None:
        client, endpoint = self.client, self.endpoint
        for _ in range(rounds):
            self.now += 0.001  # lets the pacer and the timers move
            now = self.now
            endpoint.handle_timer(now)
            for gram, _addr in client.datagrams_to_send(now):
                endpoint.receive_datagram(gram, CLIENT_ADDR, now)
                # The application takes what each datagram completed, as a driver hands it
                # over per datagram (not per round: that would hold many buffers at once).
                if self.server is not None and until():
                    return
            for machine in endpoint.accept():
                self.server = quic_server_connection(machine, buffer_pool=self.pool)
                self.server.start(now)
            for gram, _addr in endpoint.datagrams_to_send(now):
                client.receive_datagram(gram, SERVER_ADDR, now)
            for conn in (client, self.server):
                if conn is not None:
                    deadline = conn.next_deadline()
                    if deadline is not None and deadline <= now:
                        conn.handle_timer(now)
            client.events()
            if until():
                return
        raise RuntimeError("the QUIC stream did not finish")


def protocol_receiver(protocol: str, cert: str, key: str, pool: BufferPool) -> Receiver:
    """A :class:`Receiver` over *protocol* (``tcp``, ``tls`` or ``ws``), server pool *pool*."""
    tls = ServerTlsConfig(cert, key)
    if protocol == "tcp":
        link = (client_connection("tcp://127.0.0.1:9", buffer_pool=None),
                server_connection(TcpServerConfig(), buffer_pool=pool))
    elif protocol == "tls":
        link = (client_connection(f"tls://localhost:9?ca={cert}", buffer_pool=None),
                server_connection(TcpServerConfig(tls=tls), buffer_pool=pool))
    else:
        link = (client_connection("ws://127.0.0.1:9/", buffer_pool=None),
                server_connection(WebSocketServerConfig(), buffer_pool=pool))
    return Receiver(SETUPS[0], pool, link=link)


@dataclass(frozen=True)
class ProtocolRow:
    """One protocol and message size of the steady stream."""

    protocol: str
    size: int
    messages: int
    pool_hit_rate: float | None  # None: no large message, so no pooled buffer
    zero_copy_rate: float | None
    copied_per_message: float | None
    messages_per_second: float


def protocol_row(protocol: str, cert: str, key: str, size: int, n: int, rounds: int
                 ) -> ProtocolRow:
    """Run *rounds* rounds of *n* messages of *size* bytes over *protocol* on one new
    connection with a new pool, after four messages to warm up; the rates cover every round,
    messages/s is the fastest round's."""
    pool = receive_pool()
    # Enough to reach the steady state: the pool holds as many buffers as are in use at once.
    warm, run = payloads([size] * 4), payloads([size] * n)
    best = float("inf")
    if protocol == "quic":
        quic = QuicReceiver(cert, key, pool)
        quic.receive(warm)
        before = pool.stats()
        ZERO_COPY.reset()
        for _ in range(rounds):
            start = time.perf_counter()
            got = quic.receive(run)
            best = min(best, time.perf_counter() - start)
            assert got == n, (protocol, size, got, n)
    else:
        rx = protocol_receiver(protocol, cert, key, pool)
        rx.receive(memoryview(rx.wire(warm)))
        # Made in order before any is received: TLS records cannot be replayed.
        wires = [memoryview(rx.wire(run)) for _ in range(rounds)]
        before = pool.stats()
        ZERO_COPY.reset()
        for wire in wires:
            start = time.perf_counter()
            got = rx.receive(wire)
            best = min(best, time.perf_counter() - start)
            assert got == n, (protocol, size, got, n)
    after, zc = pool.stats(), ZERO_COPY.snapshot()
    hits, misses = after.hits - before.hits, after.misses - before.misses
    large = zc.large_payloads
    return ProtocolRow(
        protocol, size, n * rounds,
        hits / (hits + misses) if hits + misses else None,
        zc.hit_rate if large else None,
        zc.bytes_copied / large if large else None,
        n / best,
    )


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def protocol_table(quick: bool) -> None:
    """Print the per-protocol table (see the module docs)."""
    print("\n## Per protocol: a steady stream of large messages (server side, pool of its own)\n")
    print("| protocol | payload | messages | buffer pool hit rate | zero-copy hit rate "
          "| bytes copied / msg | copied / payload | msg/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    rounds = 3 if quick else 5
    # Messages per round: 2 MiB of large ones (8 MiB in the full run), 2000 small ones.
    budget = (2 if quick else 8) * MiB
    sizes = {64 * KiB: budget // (64 * KiB), 256 * KiB: budget // (256 * KiB),
             1 * MiB: budget // MiB, 100: 2000 if quick else 10_000}
    with tempfile.TemporaryDirectory(prefix="msgtrans-bench-") as tmp:
        cert, key = (str(p) for p in write_self_signed(Path(tmp)))
        for protocol in PROTOCOLS:
            for size, n in sizes.items():
                row = protocol_row(protocol, cert, key, size, n, rounds)
                copied = "-" if row.copied_per_message is None else (
                    f"{row.copied_per_message:,.0f}")
                share = "-" if row.copied_per_message is None else (
                    f"{row.copied_per_message / row.size:.0%}")
                print(f"| {protocol} | {_size(row.size)} | {row.messages} "
                      f"| {_rate(row.pool_hit_rate)} | {_rate(row.zero_copy_rate)} "
                      f"| {copied} | {share} | {row.messages_per_second:,.0f} |")


def _size(n: int) -> str:
    if n >= MiB:
        return f"{n // MiB} MiB"
    return f"{n // KiB} KiB" if n >= KiB else f"{n} B"


if __name__ == "__main__":
    main()
