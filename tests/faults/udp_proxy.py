"""An in-process UDP proxy on 127.0.0.1 that drops, duplicates, reorders and delays datagrams.

Like :mod:`.tcp_proxy` it runs in its own thread with a selector, independent of the test's
event loop.  Each client address gets its own upstream socket to the target (so answers find
their way back).  Each direction (``c2s``, ``s2c``) has its own :class:`Datagrams` faults and a
count of the datagrams it has seen: index ``i`` is that direction's ``i``-th datagram (from 0),
over every client.  The decision for each datagram is made by :func:`decide` from its index,
the faults and a seeded RNG, so a run is repeatable.

:meth:`UdpProxy.blackhole` drops every datagram in both directions until
:meth:`UdpProxy.restore` (QUIC recovers by retransmission); :meth:`UdpProxy.retarget` sends the
datagrams from then on to another server, and forwards its answers back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import random
import selectors
import socket
import threading
import time

from ._thread import ProxyThread

DIRECTIONS = ("c2s", "s2c")


@dataclasses.dataclass(frozen=True)
class Datagrams:
    """What to do to one direction's datagrams: drop, duplicate or hold back (reorder) a
    datagram by rate (RNG seeded with *seed*) or by index, and delay every datagram."""

    drop_rate: float = 0.0
    drop: frozenset[int] = frozenset()
    dup_rate: float = 0.0
    dup: frozenset[int] = frozenset()
    reorder_rate: float = 0.0  # held back and sent after the next datagram (a swap)
    reorder: frozenset[int] = frozenset()
    hold_for: float = 0.05  # a held datagram leaves after this long if no other comes
    delay: float = 0.0
    seed: int = 0


NO_FAULTS = Datagrams()


def decide(index: int, faults: Datagrams, rng: random.Random) -> str:
    """``"drop"``, ``"dup"``, ``"hold"`` or ``"pass"`` for the datagram at *index*.

    The RNG is drawn exactly three times per datagram whatever the outcome, so one fault's
    rate does not change which datagrams another fault picks.
    """
    drop, dup, hold = rng.random(), rng.random(), rng.random()
    if index in faults.drop or drop < faults.drop_rate:
        return "drop"
    if index in faults.dup or dup < faults.dup_rate:
        return "dup"
    if index in faults.reorder or hold < faults.reorder_rate:
        return "hold"
    return "pass"


@dataclasses.dataclass
class DirectionStats:
    """What the proxy did to one direction."""

    received: int = 0
    forwarded: int = 0  # datagrams sent on (a duplicate counts twice)
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    bytes_forwarded: int = 0
    # Lost to a blackhole (never counted in ``received``: the fault indexes skip them).
    blackholed: int = 0


class _Direction:
    def __init__(self, faults: Datagrams) -> None:
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self.held: tuple[float, socket.socket, bytes, tuple[str, int] | None] | None = None


class UdpProxy(ProxyThread):
    """A loopback UDP proxy to *target*; a context manager (``port`` is where to send)."""

    def __init__(self, target: tuple[str, int], *, c2s: Datagrams = NO_FAULTS,
                 s2c: Datagrams = NO_FAULTS) -> None:
        super().__init__("test-udp-proxy")
        self.target = target
        self.stats = {name: DirectionStats() for name in DIRECTIONS}
        self._lock = threading.Lock()
        self._dirs = {"c2s": _Direction(c2s), "s2c": _Direction(s2c)}
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind(("127.0.0.1", 0))
        self._front.setblocking(False)
        self.address: tuple[str, int] = self._front.getsockname()
        self.port = self.address[1]
        self._upstream: dict[tuple[str, int], socket.socket] = {}
        self._client_of: dict[socket.socket, tuple[str, int]] = {}
        self._due: list[tuple[float, int, socket.socket, bytes, tuple[str, int] | None]] = []
        self._seq = 0
        self._holed = False  # in a blackhole (the proxy's thread's own)
        self._start()

    def set_faults(self, *, c2s: Datagrams = NO_FAULTS, s2c: Datagrams = NO_FAULTS) -> None:
        """New faults from the next datagram on (the indexes go on counting)."""
        with self._lock:
            self._dirs = {"c2s": _Direction(c2s), "s2c": _Direction(s2c)}
        self._wake()

    def blackhole(self) -> None:
        """From now on drop every datagram in both directions, silently (what was delayed or
        held back and not sent yet included); each counts in its direction's ``blackholed``,
        not in ``received``, so the fault indexes go on after :meth:`restore` where they
        stopped.  A new client address gets no upstream socket until then.  Returns once in
        effect."""
        self._command(self._do_blackhole)

    def restore(self) -> None:
        """End the blackhole: datagrams are forwarded again (those that arrived during it and
        were not read yet are dropped first).  Returns once in effect."""
        self._command(self._do_restore)

    def retarget(self, target: tuple[str, int]) -> None:
        """Send every datagram from now on (the delayed ones not sent yet included) to
        *target*, each client keeping its upstream socket (its port) and getting the new
        target's answers; what the old target sends from then on no longer reaches it.
        Returns once in effect."""
        self._command(lambda: self._do_retarget(target))

    # --- the commands (on the proxy's thread) ---------------------------------------------------

    def _do_blackhole(self) -> None:
        self._holed = True
        with self._lock:
            for _, _, _, data, to in self._due:
                stats = self.stats["c2s" if to is None else "s2c"]
                stats.blackholed += 1  # counted as forwarded when queued: it is not
                stats.forwarded -= 1
                stats.bytes_forwarded -= len(data)
            for name, direction in self._dirs.items():
                if direction.held is not None:
                    self.stats[name].blackholed += 1
                    direction.held = None
        self._due.clear()

    def _do_restore(self) -> None:
        if self._holed:
            self._drain(self._front, "c2s", budget=None)
            for out in list(self._upstream.values()):
                self._drain(out, "s2c", budget=None)
        self._holed = False

    def _do_retarget(self, target: tuple[str, int]) -> None:
        with self._lock:
            self.target = target
        for out in self._upstream.values():
            out.connect(target)  # a connected UDP socket sends to, and hears from, its peer

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        sel = self._selector
        try:
            sel.register(self._front, selectors.EVENT_READ, None)
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            while not self._stopping:
                for key, _ in sel.select(self._timeout()):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            sock.recv(4096)
                    elif sock is self._front:
                        self._drain(sock, "c2s")
                    else:
                        self._drain(sock, "s2c")
                self._run_commands()
                self._send_due(time.monotonic())
        except BaseException as exc:  # reported by stop()
            self._error = exc
        finally:
            sel.close()
            for sock in [self._front, self._wake_r, *self._upstream.values()]:
                sock.close()

    def _timeout(self) -> float:
        dues = [d[0] for d in self._due[:1]]
        dues += [held[0] for d in self._dirs.values() if (held := d.held) is not None]
        return 0.1 if not dues else max(0.0, min(min(dues) - time.monotonic(), 0.1))

    def _drain(self, sock: socket.socket, name: str, *, budget: int | None = 64) -> None:
        """Read what *sock* has (at most *budget* datagrams) and forward it."""
        count = 0
        while budget is None or count < budget:
            count += 1
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP port unreachable reported on a connected socket
            if self._holed:
                with self._lock:
                    self.stats[name].blackholed += 1
                continue
            if name == "c2s":
                out = self._upstream.get(addr)
                if out is None:
                    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    out.bind(("127.0.0.1", 0))
                    out.connect(self.target)
                    out.setblocking(False)
                    self._upstream[addr] = out
                    self._client_of[out] = addr
                    self._selector.register(out, selectors.EVENT_READ, None)
                self._handle("c2s", out, data, None)
            else:
                self._handle("s2c", self._front, data, self._client_of[sock])

    def _handle(self, name: str, out: socket.socket, data: bytes,
                to: tuple[str, int] | None) -> None:
        now = time.monotonic()
        with self._lock:
            direction = self._dirs[name]
            stats = self.stats[name]
            action = decide(stats.received, direction.faults, direction.rng)
            stats.received += 1
            if action == "drop":
                stats.dropped += 1
                return
            held, direction.held = direction.held, None
            if action == "hold" and held is None:
                stats.reordered += 1
                direction.held = (now + direction.faults.hold_for, out, data, to)
                return
            delay = direction.faults.delay
        self._queue(now + delay, out, data, to, name)
        if action == "dup":
            with self._lock:
                stats.duplicated += 1
            self._queue(now + delay, out, data, to, name)
        if held is not None:  # the held one goes after this one: the two swapped
            self._queue(now + delay, held[1], held[2], held[3], name)

    def _queue(self, due: float, out: socket.socket, data: bytes, to: tuple[str, int] | None,
               name: str) -> None:
        self._seq += 1
        heapq.heappush(self._due, (due, self._seq, out, data, to))
        with self._lock:
            self.stats[name].forwarded += 1
            self.stats[name].bytes_forwarded += len(data)

    def _send_due(self, now: float) -> None:
        for name, direction in self._dirs.items():
            held = direction.held
            if held is not None and held[0] <= now:
                direction.held = None
                self._queue(now, held[1], held[2], held[3], name)
        while self._due and self._due[0][0] <= now:
            _, _, out, data, to = heapq.heappop(self._due)
            try:
                if to is None:
                    out.send(data)
                else:
                    out.sendto(data, to)
            except OSError:
                pass  # a full buffer or an unreachable port: lost, as UDP may lose it
