"""An in-process TCP proxy on 127.0.0.1 that injects faults at chosen byte offsets.

It runs in its own thread with a selector, so it works the same under the asyncio, trio and
blocking backends' tests (it never touches the test's event loop).  Each accepted connection
gets a fresh upstream connection to the target, and each direction (``c2s``: client to
server, ``s2c``: server to client) its own :class:`Faults`:

* ``cut_at=N``: forward bytes ``[0, N)``, then close both sockets cleanly (FIN both ways);
* ``reset_at=N``: forward ``[0, N)``, then close both with ``SO_LINGER`` 0 (RST both ways);
* ``stall_at=N``: forward ``[0, N)``, then stop reading and forwarding this direction until
  :meth:`TcpProxy.release` (or for ``stall_for`` seconds); the other direction flows on;
* ``delay=T``: each piece leaves T seconds after it was read;
* ``chunk=k``: forward in pieces ending on multiples of k bytes of the stream, ``gap`` seconds
  apart, so frames reach the receiver split.

Faults apply to the connections accepted after they are set (:meth:`TcpProxy.set_faults`);
:attr:`TcpProxy.connections` keeps each connection's counters.

Three commands act on the network itself rather than on one connection (for clients that
reconnect): :meth:`TcpProxy.blackhole` silently forwards nothing any more (a cut network: no
FIN, no RST), :meth:`TcpProxy.restore` ends that and resets what the blackhole broke, and
:meth:`TcpProxy.retarget` sends the connections accepted from then on to another server.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import selectors
import socket
import struct
import threading
import time

from ._thread import ProxyThread
from .plan import split

DIRECTIONS = ("c2s", "s2c")
_READ = 65536
_HIGH_WATER = 1 << 18  # bytes queued in one direction before its source stops being read


@dataclasses.dataclass(frozen=True)
class Faults:
    """What to do to one direction of a connection (offsets count that direction's bytes)."""

    cut_at: int | None = None
    reset_at: int | None = None
    stall_at: int | None = None
    stall_for: float | None = None  # None: until release()
    delay: float = 0.0
    chunk: int | None = None
    gap: float = 0.0  # seconds between two chunks

    def stop_at(self) -> tuple[str, int] | None:
        """The fault that stops forwarding and its offset (the first set of cut, reset, stall)."""
        for kind, offset in (("cut", self.cut_at), ("reset", self.reset_at),
                             ("stall", self.stall_at)):
            if offset is not None:
                return kind, offset
        return None


NO_FAULTS = Faults()


@dataclasses.dataclass
class ConnectionStats:
    """What the proxy did to one connection."""

    forwarded: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    faults: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)  # kind, dir, at
    closed: bool = False
    # Bytes read and thrown away by a blackhole (what was queued when it began included).
    blackholed: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    target: tuple[str, int] | None = None  # the upstream address; None: accepted in a blackhole


class _Pipe:
    """One direction of a connection: read from *src*, queue, write to *dst*."""

    def __init__(self, name: str, src: socket.socket, dst: socket.socket, faults: Faults,
                 stats: ConnectionStats) -> None:
        self.name, self.src, self.dst, self.faults, self.stats = name, src, dst, faults, stats
        self.read_at = 0  # stream offset of the next byte read
        self.queue: collections.deque[tuple[float, memoryview]] = collections.deque()
        self.queued = 0
        self.last_due = 0.0
        self.eof = False  # src ended: shut dst's write side once the queue is written
        self.shut = False
        self.stalled = False
        self.stall_until: float | None = None
        self.pending_fault: str | None = None  # a stop fault due once the queue is written
        self.done = False  # the stall happened: forward the rest as it comes
        self.holed = False  # in a blackhole: read and discard, never write
        self.blocked = False  # the destination's buffer is full: wait until it is writable
        self.rest = memoryview(b"")  # what was read beyond a stall's offset
        stop = faults.stop_at()
        self.stop_kind: str | None = None if stop is None else stop[0]
        self.stop_offset: int | None = None if stop is None else stop[1]

    def wants_read(self) -> bool:
        if self.holed:
            return not self.eof
        return (not self.eof and not self.stalled
                and self.pending_fault is None and self.queued < _HIGH_WATER)

    def take(self, data: bytes, now: float) -> None:
        """Queue what was read, cut into its pieces, each with the time it may leave."""
        pieces, reached = split(self.read_at, len(data), chunk=self.faults.chunk,
                                stop_at=None if self.done else self.stop_offset)
        view = memoryview(data)
        at = 0
        for size in pieces:
            due = now + self.faults.delay
            if self.faults.chunk is not None:
                due = max(due, self.last_due + self.faults.gap)
            self.last_due = due
            self.queue.append((due, view[at:at + size]))
            self.queued += size
            at += size
        self.read_at += at
        if reached:
            # What lies beyond the offset is never forwarded (a stall forwards it on release).
            self.pending_fault = self.stop_kind
            self.rest = view[at:]

    def next_due(self) -> float | None:
        return self.queue[0][0] if self.queue else None


class TcpProxy(ProxyThread):
    """A loopback TCP proxy to *target* with *c2s* / *s2c* faults; a context manager.

    ``address``/``port`` is where to connect.  :meth:`stop` (or leaving the ``with``) closes
    every socket and joins the thread.  ``faulted`` is set each time a fault is applied.
    """

    def __init__(self, target: tuple[str, int], *, c2s: Faults = NO_FAULTS,
                 s2c: Faults = NO_FAULTS) -> None:
        super().__init__("test-tcp-proxy")
        self.target = target
        self._faults = {"c2s": c2s, "s2c": s2c}
        self.connections: list[ConnectionStats] = []
        self.faulted = threading.Event()
        self._lock = threading.Lock()
        self._released = False
        self._break: str | None = None  # break_all() asked for this, not done yet
        self._holed = False  # in a blackhole (the proxy's thread's own)
        # Accepted during a blackhole, never connected upstream: read and discarded until
        # restore() resets them.
        self._hanging: dict[socket.socket, ConnectionStats] = {}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.address: tuple[str, int] = self._listener.getsockname()
        self.port = self.address[1]
        self._pipes: list[tuple[_Pipe, _Pipe]] = []
        # Cut sockets: FIN sent, read and discarded until the peer's FIN (closing one with
        # unread bytes would send an RST instead of a clean close), at most until the deadline.
        self._draining: dict[socket.socket, float] = {}
        self._start()

    # --- the test's side ----------------------------------------------------------------------

    def set_faults(self, *, c2s: Faults = NO_FAULTS, s2c: Faults = NO_FAULTS) -> None:
        """The faults of the connections accepted from now on."""
        with self._lock:
            self._faults = {"c2s": c2s, "s2c": s2c}

    def release(self) -> None:
        """End every stall (and let later stalls pass at once)."""
        with self._lock:
            self._released = True
        self._wake()

    def break_all(self, *, reset: bool) -> None:
        """Cut (or, with *reset*, reset) every open connection now, whatever its offsets."""
        with self._lock:
            self._break = "reset" if reset else "cut"
        self._wake()

    def blackhole(self) -> None:
        """From now on forward nothing in either direction, silently, as a cut network would.

        Open connections stay open but whatever either side sends is read and discarded (so
        nothing backs up), as is what the proxy had queued and not written yet; their ends
        see no FIN and no RST, even if the other side closes.  Connections accepted from now on
        (those already waiting in the listener's backlog are connected first, as before the
        call) are never connected upstream and get no byte: after ``connect()`` the client
        hangs.  Stalls, delays and offsets no longer act on a blackholed connection.  Each
        connection records ``("blackhole", "both", offset)``; :meth:`blackholed` counts the
        bytes.  Returns once in effect.
        """
        self._command(self._do_blackhole)

    def restore(self) -> None:
        """End the blackhole: the connections accepted from now on are forwarded normally.

        Every connection that was open during the blackhole (those accepted during it
        included, and those still waiting in the listener's backlog) is closed with an RST on
        both sides, recorded as ``("reset", "both", offset)``: its bytes were lost, so its
        ends see a reset (``ConnectionResetError`` on the next ``recv``, or a failing
        ``send``) rather than a stream that silently resumes with a hole in it.  Returns once
        done.
        """
        self._command(self._do_restore)

    def retarget(self, target: tuple[str, int]) -> None:
        """Connect the connections accepted from now on to *target* (a server restarted on
        another port while clients keep the proxy's address); open connections stay on the
        server they have.  Those already waiting in the listener's backlog were made before
        the call and go to the old target."""
        self._command(lambda: self._do_retarget(target))

    def blackholed(self, direction: str) -> int:
        """Bytes a blackhole discarded in *direction* over every connection."""
        with self._lock:
            return sum(c.blackholed[direction] for c in self.connections)

    def forwarded(self, direction: str) -> int:
        """Bytes forwarded in *direction* over every connection."""
        with self._lock:
            return sum(c.forwarded[direction] for c in self.connections)

    def faults_applied(self) -> list[tuple[str, str, int]]:
        """``(kind, direction, offset)`` of every fault applied, in order."""
        with self._lock:
            return [f for c in self.connections for f in c.faults]

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        sel = self._selector
        try:
            sel.register(self._listener, selectors.EVENT_READ, None)
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            while not self._stopping:
                self._update_registrations()
                for key, events in sel.select(self._timeout()):
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                    elif sock in self._draining:
                        self._drain(sock)
                    elif sock in self._hanging:
                        self._discard_hanging(sock)
                    else:
                        assert isinstance(sock, socket.socket)
                        self._ready(sock, events)
                self._run_commands()
                self._pump()
                now = time.monotonic()
                for sock in [s for s, end in self._draining.items() if end <= now]:
                    self._forget(sock)
        except BaseException as exc:  # reported by stop()
            self._error = exc
        finally:
            for a, b in list(self._pipes):
                self._close(a, b, rst=False)
            for sock in list(self._draining):
                self._forget(sock)
            for sock in self._hanging:
                sock.close()
            sel.close()
            self._listener.close()
            self._wake_r.close()

    def _timeout(self) -> float:
        dues = [d for a, b in self._pipes for p in (a, b)
                for d in (p.next_due(), p.stall_until) if d is not None]
        return 0.1 if not dues else max(0.0, min(min(dues) - time.monotonic(), 0.1))

    def _accept(self) -> bool:
        """Take one connection from the listener's backlog; False if there was none."""
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return False
        with self._lock:  # the faults of the moment it was accepted, before the target knows
            faults = dict(self._faults)
            target = self.target
        if self._holed:
            client.setblocking(False)
            with self._lock:
                stats = ConnectionStats(faults=[("blackhole", "both", 0)])
                self.connections.append(stats)
            self._hanging[client] = stats
            self._selector.register(client, selectors.EVENT_READ, None)
            self.faulted.set()
            return True
        try:
            upstream = socket.create_connection(target, timeout=2.0)
        except OSError:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return True
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            stats = ConnectionStats(target=target)
            self.connections.append(stats)
        c2s = _Pipe("c2s", client, upstream, faults["c2s"], stats)
        s2c = _Pipe("s2c", upstream, client, faults["s2c"], stats)
        self._pipes.append((c2s, s2c))
        for pipe in (c2s, s2c):  # a fault at offset 0 acts before any byte
            if pipe.stop_offset == 0:
                pipe.pending_fault = pipe.stop_kind
        return True

    def _accept_backlog(self) -> None:
        while self._accept():
            pass

    # --- the commands (on the proxy's thread) ---------------------------------------------------

    def _do_blackhole(self) -> None:
        self._accept_backlog()  # connected before the call: open connections like the others
        self._holed = True
        for a, b in self._pipes:
            if a.holed:
                continue  # a second blackhole() changes nothing
            with self._lock:
                a.stats.faults.append(("blackhole", "both", a.read_at))
            self.faulted.set()
            for pipe in (a, b):
                lost = pipe.queued + len(pipe.rest)
                pipe.queue.clear()
                pipe.queued = 0
                pipe.rest = memoryview(b"")
                pipe.pending_fault = None
                pipe.stalled = False
                pipe.stall_until = None
                pipe.blocked = False
                pipe.holed = True
                with self._lock:
                    pipe.stats.blackholed[pipe.name] += lost

    def _do_restore(self) -> None:
        self._accept_backlog()  # connected during the blackhole: hanging, reset with the rest
        for a, b in [(a, b) for a, b in self._pipes if a.holed]:
            with self._lock:
                a.stats.faults.append(("reset", "both", a.read_at))
            self.faulted.set()
            self._close(a, b, rst=True)
        for sock, stats in self._hanging.items():
            with self._lock:
                stats.faults.append(("reset", "both", 0))
                stats.closed = True
            self.faulted.set()
            if sock.fileno() in self._selector.get_map():
                self._selector.unregister(sock)
            _reset(sock)
        self._hanging.clear()
        self._holed = False

    def _do_retarget(self, target: tuple[str, int]) -> None:
        self._accept_backlog()  # connected before the call: to the old target
        with self._lock:
            self.target = target

    def _discard_hanging(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            with self._lock:
                self._hanging[sock].blackholed["c2s"] += len(data)
        else:  # the client is gone; the socket stays until restore() or stop()
            self._selector.unregister(sock)

    def _update_registrations(self) -> None:
        sel = self._selector
        for a, b in self._pipes:
            for sock, reader, writer in ((a.src, a, b), (b.src, b, a)):
                # sock is the source of *reader* and the destination of *writer*.
                events = 0
                if reader.wants_read():
                    events |= selectors.EVENT_READ
                if writer.blocked:
                    events |= selectors.EVENT_WRITE
                registered = sock.fileno() in sel.get_map()
                if events and not registered:
                    sel.register(sock, events, None)
                elif events and registered:
                    sel.modify(sock, events, None)
                elif registered:
                    sel.unregister(sock)

    def _ready(self, sock: socket.socket, events: int) -> None:
        for a, b in list(self._pipes):
            for pipe in (a, b):
                if pipe.src is sock and events & selectors.EVENT_READ and pipe.wants_read():
                    try:
                        data = sock.recv(_READ)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        if pipe.holed:  # the cut keeps the error from the other side
                            pipe.eof = True
                            continue
                        self._close(a, b, rst=True)
                        return
                    if pipe.holed:
                        if data:
                            with self._lock:
                                pipe.stats.blackholed[pipe.name] += len(data)
                        else:  # nor does a FIN cross it
                            pipe.eof = True
                    elif not data:
                        pipe.eof = True
                    else:
                        pipe.take(data, time.monotonic())
                if pipe.dst is sock and events & selectors.EVENT_WRITE:
                    pipe.blocked = False

    def _pump(self) -> None:
        now = time.monotonic()
        with self._lock:
            released = self._released
            broken, self._break = self._break, None
        if broken is not None:
            for a, b in list(self._pipes):
                with self._lock:
                    a.stats.faults.append((broken, "both", a.read_at))
                self.faulted.set()
                self._close(a, b, rst=broken == "reset")
        for a, b in list(self._pipes):
            if a.stats.closed or a.holed:
                continue
            for pipe in (a, b):
                if pipe.stalled and (released or (pipe.stall_until is not None
                                                  and now >= pipe.stall_until)):
                    self._unstall(pipe, now)
                if not self._write(pipe, now):
                    self._close(a, b, rst=True)
                    break
                if pipe.queue:
                    continue
                if pipe.pending_fault is not None:
                    if self._apply(pipe, a, b, now, released):
                        break
                elif pipe.eof and not pipe.shut:
                    pipe.shut = True
                    with contextlib.suppress(OSError):
                        pipe.dst.shutdown(socket.SHUT_WR)
            if a.shut and b.shut and not a.stats.closed:
                self._close(a, b, rst=False)

    def _write(self, pipe: _Pipe, now: float) -> bool:
        """Write what is due; False if the destination failed."""
        if pipe.blocked:
            return True
        while pipe.queue and pipe.queue[0][0] <= now:
            due, view = pipe.queue[0]
            try:
                sent = pipe.dst.send(view)
            except (BlockingIOError, InterruptedError):
                pipe.blocked = True
                return True
            except OSError:
                return False
            with self._lock:
                pipe.stats.forwarded[pipe.name] += sent
            pipe.queued -= sent
            if sent < len(view):
                pipe.queue[0] = (due, view[sent:])
                pipe.blocked = True
                return True
            pipe.queue.popleft()
        return True

    def _apply(self, pipe: _Pipe, a: _Pipe, b: _Pipe, now: float, released: bool) -> bool:
        """Apply the due fault; True if the connection is gone."""
        kind = pipe.pending_fault
        assert kind is not None
        with self._lock:
            pipe.stats.faults.append((kind, pipe.name, pipe.read_at))
        self.faulted.set()
        if kind == "stall":
            pipe.pending_fault = None
            pipe.stalled = True
            if pipe.faults.stall_for is not None:
                pipe.stall_until = now + pipe.faults.stall_for
            if released:
                self._unstall(pipe, now)
            return False
        self._close(a, b, rst=kind == "reset")
        return True

    def _unstall(self, pipe: _Pipe, now: float) -> None:
        pipe.stalled = False
        pipe.stall_until = None
        pipe.done = True  # the stall happened once; forward the rest as it comes
        rest = bytes(pipe.rest)
        pipe.rest = memoryview(b"")
        if rest:
            pipe.take(rest, now)

    def _close(self, a: _Pipe, b: _Pipe, *, rst: bool) -> None:
        if (a, b) in self._pipes:
            self._pipes.remove((a, b))
        with self._lock:
            a.stats.closed = True
        for sock in (a.src, b.src):
            if sock.fileno() in self._selector.get_map():
                self._selector.unregister(sock)
            if rst:
                _reset(sock)
            elif self._stopping:
                sock.close()
            else:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    sock.close()
                    continue
                self._draining[sock] = time.monotonic() + 2.0
                self._selector.register(sock, selectors.EVENT_READ, None)

    def _drain(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._forget(sock)

    def _forget(self, sock: socket.socket) -> None:
        del self._draining[sock]
        self._selector.unregister(sock)
        sock.close()


def _reset(sock: socket.socket) -> None:
    """Close *sock* with an RST (``SO_LINGER`` 0) rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
