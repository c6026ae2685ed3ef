"""The blocking side of the benchmark: msgtrans's blocking backend (``msgtrans.io_sync``,
client and server) and the peers blocking code uses today: plain sockets with a u32 length
prefix (``sendall`` / ``recv_into``, a thread per connection on the server), the
``websockets`` library's sync API, and pyzmq PUSH/PULL (one-way) and REQ/REP (latency) when
pyzmq is installed.

The clients are plain functions: the runner calls them in a worker thread it can give up on
(a hard timeout), the servers run in their own process like every other (see
:mod:`._servers`).  The scenarios and the wire conventions are those of :mod:`._scenarios` and
:mod:`._peers`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _peers
from ._peers import COUNT, ECHO, FANOUT, LEN, ONEWAY

__all__ = [
    "BlockingSocketPeer",
    "MsgtransBlocking",
    "WebsocketsSyncPeer",
    "ZmqPeer",
    "serve_blocking_sockets",
    "serve_msgtrans_blocking",
    "serve_websockets_sync",
    "serve_zmq",
]

BIZ_COUNT = 1
BIZ_FANOUT = 2
BIZ_SESSIONS = 3  # how many sessions the server has open (the fan-out waits for all)
PAYLOAD_64 = b"m" * 64
RECV_SIZE = 256 * 1024
TIMEOUT = 60.0


# --- msgtrans, blocking backend ----------------------------------------------------------------


class MsgtransBlocking:
    """msgtrans, blocking backend (``msgtrans.io_sync``), as an application uses it."""

    runner = "sync"

    def __init__(self, protocol: str, port: int, certdir: Path) -> None:
        ca = f"?ca={certdir / 'cert.pem'}"
        self.url = {
            "tcp": f"tcp://127.0.0.1:{port}",
            "tls": f"tls://127.0.0.1:{port}{ca}",
            "ws": f"ws://127.0.0.1:{port}/",
            "quic": f"quic://127.0.0.1:{port}{ca}",
        }[protocol]

    def _transport(self) -> Any:
        import msgtrans.io_sync as mt

        return mt.Transport.builder().shutdown_timeout(1.0).build()

    def oneway(self, size: int, count: int, budget: float) -> tuple[int, float]:
        payload = b"m" * size
        with self._transport() as transport:
            session = transport.connect(self.url)
            _msgtrans_oneway(session, payload, min(count // 10, 1000) or 1, budget)
            return _msgtrans_oneway(session, payload, count, budget)

    def latency(self, count: int, budget: float) -> list[float]:
        with self._transport() as transport:
            session = transport.connect(self.url)
            for _ in range(min(count // 10, 200) or 1):
                session.request(PAYLOAD_64)
            samples: list[float] = []
            clock = time.perf_counter
            deadline = clock() + budget
            for _ in range(count):
                t0 = clock()
                session.request(PAYLOAD_64)
                t1 = clock()
                samples.append(t1 - t0)
                if t1 > deadline:
                    break
            return samples

    def pipelined(self, depth: int, count: int, budget: float) -> tuple[int, float]:
        # A blocking request waits for its answer, so *depth* outstanding requests are *depth*
        # threads: what a threaded application does.
        with self._transport() as transport:
            session = transport.connect(self.url)
            done = 0
            lock = threading.Lock()
            clock = time.perf_counter
            start = clock()
            deadline = start + budget
            errors: list[BaseException] = []

            def worker() -> None:
                nonlocal done
                try:
                    while True:
                        with lock:
                            if done >= count or clock() > deadline:
                                return
                            done += 1
                        session.request(PAYLOAD_64)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=worker, daemon=True) for _ in range(depth)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            return done, clock() - start

    def connections(self, count: int, budget: float) -> tuple[int, float]:
        with self._transport() as transport:
            clock = time.perf_counter
            start = clock()
            deadline = start + budget
            done = 0
            while done < count and clock() < deadline:
                session = transport.connect(self.url)
                session.close()
                done += 1
            return done, clock() - start

    def fanout(self, n: int, rounds: int) -> list[float]:
        with self._transport() as transport:
            sessions = [transport.connect(self.url) for _ in range(n)]
            # Until the server has every session open: a late one would never get the message.
            while COUNT.unpack(bytes(sessions[0].request(
                    b"", biz_type=BIZ_SESSIONS).payload))[0] < n:
                time.sleep(0.05)
            times: list[float] = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                sessions[0].request(PAYLOAD_64, biz_type=BIZ_FANOUT)
                # The messages arrive in the background; taking them in order ends when the
                # last one is in.
                for s in sessions:
                    s.receive(timeout=TIMEOUT)
                times.append(time.perf_counter() - t0)
            return times


def _msgtrans_oneway(session: Any, payload: bytes, count: int,
                     budget: float) -> tuple[int, float]:
    clock = time.perf_counter
    send = session.send
    start = clock()
    deadline = start + budget
    for i in range(count):
        send(payload)
        if not i & 255 and clock() > deadline:
            break
    reply = session.request(b"", biz_type=BIZ_COUNT, timeout=TIMEOUT)
    elapsed = clock() - start
    (counted,) = COUNT.unpack(bytes(reply.payload))
    return counted, elapsed


def serve_msgtrans_blocking(protocol: str, certdir: Path, ready: Callable[[int], None],
                            on_stop: Callable[[Callable[[], None]], None]) -> None:
    """The msgtrans server on the blocking backend (``Transport.serve`` with a handler) until
    *on_stop*'s callback runs (stdin closed)."""
    import msgtrans.io_sync as mt

    config = _peers.msgtrans_server_config(mt, protocol, certdir)
    transport = mt.Transport.builder().shutdown_timeout(0.5).build()
    counts: dict[int, int] = {}

    class Handler:
        def on_message(self, session: mt.Session, message: mt.Message) -> None:
            counts[session.id] = counts.get(session.id, 0) + 1

        def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
            if message.biz_type == BIZ_COUNT:
                return COUNT.pack(counts.pop(session.id, 0))
            if message.biz_type == BIZ_FANOUT:
                transport.send_to_all(bytes(message.payload))
                return b""
            if message.biz_type == BIZ_SESSIONS:
                return COUNT.pack(transport.session_count())
            return bytes(message.payload)

        def on_disconnected(self, session: mt.Session, reason: object) -> None:
            counts.pop(session.id, None)

    with transport:
        stream = transport.accept([config])
        stream.start()
        ready(stream.addresses[0][1])

        def stop() -> None:
            transport.shutdown(0.5)

        on_stop(stop)
        transport.serve(stream, Handler())


# --- blocking sockets + length prefix ----------------------------------------------------------


class _SockFramed:
    """A blocking socket with u32 length-prefixed frames: ``sendall`` per frame, frames parsed
    from a buffer filled by ``recv_into``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._chunk = bytearray(RECV_SIZE)
        self._view = memoryview(self._chunk)

    def send(self, payload: bytes) -> None:
        self.sock.sendall(LEN.pack(len(payload)) + payload)

    def recv(self) -> bytes:
        buf = self._buf
        while True:
            if len(buf) >= 4:
                (n,) = LEN.unpack_from(buf, 0)
                if len(buf) >= 4 + n:
                    frame = bytes(buf[4:4 + n])
                    del buf[:4 + n]
                    return frame
            got = self.sock.recv_into(self._view)
            if not got:
                raise ConnectionError("the server closed the connection")
            buf += self._view[:got]

    def close(self) -> None:
        self.sock.close()


class _SyncDuplexPeer:
    """The scenarios written once over a blocking message pipe (``send``, ``recv``,
    ``close``), one thread, each call waited for."""

    runner = "sync"

    def _open(self, mode: bytes) -> Any:
        raise NotImplementedError

    def oneway(self, size: int, count: int, budget: float) -> tuple[int, float]:
        pipe = self._open(ONEWAY)
        try:
            self._oneway(pipe, size, min(count // 10, 1000) or 1, budget)
            return self._oneway(pipe, size, count, budget)
        finally:
            pipe.close()

    def _oneway(self, pipe: Any, size: int, count: int, budget: float) -> tuple[int, float]:
        payload = b"m" * size
        clock = time.perf_counter
        start = clock()
        deadline = start + budget
        send = pipe.send
        for i in range(count):
            send(payload)
            if not i & 255 and clock() > deadline:
                break
        send(b"")
        (counted,) = COUNT.unpack(pipe.recv())
        return counted, clock() - start

    def latency(self, count: int, budget: float) -> list[float]:
        pipe = self._open(ECHO)
        try:
            for _ in range(min(count // 10, 200) or 1):
                pipe.send(PAYLOAD_64)
                pipe.recv()
            samples: list[float] = []
            clock = time.perf_counter
            deadline = clock() + budget
            for _ in range(count):
                t0 = clock()
                pipe.send(PAYLOAD_64)
                pipe.recv()
                t1 = clock()
                samples.append(t1 - t0)
                if t1 > deadline:
                    break
            return samples
        finally:
            pipe.close()

    def pipelined(self, depth: int, count: int, budget: float) -> tuple[int, float]:
        pipe = self._open(ECHO)
        try:
            clock = time.perf_counter
            start = clock()
            deadline = start + budget
            sent = received = 0
            for _ in range(min(depth, count)):
                pipe.send(PAYLOAD_64)
                sent += 1
            while received < sent:
                pipe.recv()
                received += 1
                if sent < count and (sent & 63 or clock() < deadline):
                    pipe.send(PAYLOAD_64)
                    sent += 1
            return received, clock() - start
        finally:
            pipe.close()

    def connections(self, count: int, budget: float) -> tuple[int, float]:
        clock = time.perf_counter
        start = clock()
        deadline = start + budget
        done = 0
        while done < count and clock() < deadline:
            self._open(ECHO).close()
            done += 1
        return done, clock() - start

    def fanout(self, n: int, rounds: int) -> list[float]:
        pipes = [self._open(FANOUT) for _ in range(n)]
        try:
            time.sleep(0.2)
            times: list[float] = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                pipes[0].send(PAYLOAD_64)
                for p in pipes:
                    p.recv()
                times.append(time.perf_counter() - t0)
            return times
        finally:
            for p in pipes:
                p.close()


class BlockingSocketPeer(_SyncDuplexPeer):
    """Blocking sockets + u32 length prefix: ``sendall`` per message, ``recv_into`` (TCP, TLS
    through ``ssl.SSLContext.wrap_socket``)."""

    def __init__(self, protocol: str, port: int, certdir: Path) -> None:
        self.port = port
        self.tls = _peers.client_ssl(certdir) if protocol == "tls" else None

    def _open(self, mode: bytes) -> _SockFramed:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname="127.0.0.1")
        pipe = _SockFramed(sock)
        pipe.send(mode)
        if mode == FANOUT:
            # The server says when this connection joined the group: a thread per connection
            # may start late on a busy machine, and a member that joins after the trigger
            # would wait for ever.
            pipe.recv()
        return pipe


def serve_blocking_sockets(protocol: str, certdir: Path, ready: Callable[[int], None],
                           stopped: Callable[[], bool]) -> None:
    """A thread per connection: ``recv_into`` a buffer, frames parsed from it, the answers of
    one read in one ``sendall``."""
    tls = _peers.server_ssl(certdir) if protocol == "tls" else None
    group: set[socket.socket] = set()
    group_lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        chunk = bytearray(RECV_SIZE)
        view = memoryview(chunk)
        buf = bytearray()
        mode: bytes | None = None
        count = 0
        try:
            if tls is not None:
                conn = tls.wrap_socket(conn, server_side=True)
            conn.settimeout(None)
            while True:
                got = conn.recv_into(view)
                if not got:
                    return
                buf += view[:got]
                pos = 0
                end = len(buf)
                out: list[bytes] = []
                while end - pos >= 4:
                    (n,) = LEN.unpack_from(buf, pos)
                    if end - pos - 4 < n:
                        break
                    start = pos + 4
                    pos = start + n
                    if mode == ONEWAY:
                        if n:
                            count += 1
                        else:
                            out.append(LEN.pack(8) + COUNT.pack(count))
                            count = 0
                    elif mode == ECHO:
                        out.append(bytes(buf[start - 4:pos]))
                    elif mode == FANOUT:
                        frame = bytes(buf[start - 4:pos])
                        with group_lock:
                            members = list(group)
                        for member in members:
                            with contextlib.suppress(OSError):
                                member.sendall(frame)
                    else:
                        mode = bytes(buf[start:pos])
                        if mode == FANOUT:
                            with group_lock:
                                group.add(conn)
                            out.append(LEN.pack(0))  # joined (see BlockingSocketPeer._open)
                if pos:
                    del buf[:pos]
                if out:
                    conn.sendall(b"".join(out) if len(out) > 1 else out[0])
        except (OSError, ssl.SSLError):
            pass
        finally:
            with group_lock:
                group.discard(conn)
            conn.close()

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        listener.settimeout(0.5)
        ready(int(listener.getsockname()[1]))
        while not stopped():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()


# --- websockets, sync API ----------------------------------------------------------------------


class _WsSync:
    def __init__(self, opened: Any) -> None:
        # Entered as a context manager: websockets 17.1+ warns (DeprecationWarning) when
        # connect()'s connection is used without one, and its way out, legacy=True, is an
        # argument 13-16 do not take; entering works the same on every version.
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(opened)

    def send(self, payload: bytes) -> None:
        self.ws.send(payload)

    def recv(self) -> bytes:
        data = self.ws.recv(TIMEOUT)
        return data if isinstance(data, bytes) else data.encode()

    def close(self) -> None:
        self._stack.close()  # the connection's __exit__: close()


class WebsocketsSyncPeer(_SyncDuplexPeer):
    """The ``websockets`` library's sync API (``websockets.sync``), no compression, the
    payload alone in each binary message."""

    def __init__(self, protocol: str, port: int, certdir: Path) -> None:
        self.port = port

    def _open(self, mode: bytes) -> _WsSync:
        from websockets.sync.client import connect

        pipe = _WsSync(connect(f"ws://127.0.0.1:{self.port}/{mode.decode()}",
                               compression=None, max_size=None, open_timeout=TIMEOUT))
        if mode == FANOUT:
            pipe.recv()  # joined the group (the handler runs in a thread of its own)
        return pipe


def serve_websockets_sync(protocol: str, certdir: Path, ready: Callable[[int], None],
                          on_stop: Callable[[Callable[[], None]], None]) -> None:
    """The ``websockets`` sync server (a thread per connection)."""
    from websockets.sync.server import ServerConnection, serve

    group: set[ServerConnection] = set()
    group_lock = threading.Lock()

    def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/E"
        count = 0
        if path == "/F":
            with group_lock:
                group.add(ws)
            ws.send(b"")  # joined (see WebsocketsSyncPeer._open)
        try:
            for message in ws:
                if path == "/O":
                    if message:
                        count += 1
                    else:
                        ws.send(COUNT.pack(count))
                        count = 0
                elif path == "/E":
                    ws.send(message)
                else:
                    with group_lock:
                        members = list(group)
                    for member in members:
                        with contextlib.suppress(Exception):
                            member.send(message)
        except Exception:
            pass
        finally:
            with group_lock:
                group.discard(ws)

    with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        ready(int(server.socket.getsockname()[1]))
        on_stop(server.shutdown)
        server.serve_forever()


# --- pyzmq -------------------------------------------------------------------------------------


class ZmqPeer:
    """pyzmq: PUSH/PULL for one-way messages (an empty message ends a run; a REQ asks for the
    count), REQ/REP for request/response with one outstanding.  TCP only."""

    runner = "sync"

    def __init__(self, protocol: str, port: int, certdir: Path) -> None:
        self.port = port
        #: The REP socket's port (the server's second port), set by the runner.
        self.extra_ports: tuple[int, ...] = ()

    def _sockets(self) -> tuple[Any, Any, Any]:
        import zmq

        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(f"tcp://127.0.0.1:{self.port}")
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
        req.connect(f"tcp://127.0.0.1:{self.extra_ports[0]}")
        return ctx, push, req

    def oneway(self, size: int, count: int, budget: float) -> tuple[int, float]:
        ctx, push, req = self._sockets()
        try:
            self._oneway(push, req, size, min(count // 10, 1000) or 1, budget)
            return self._oneway(push, req, size, count, budget)
        finally:
            push.close()
            req.close()
            ctx.term()

    @staticmethod
    def _oneway(push: Any, req: Any, size: int, count: int,
                budget: float) -> tuple[int, float]:
        payload = b"m" * size
        clock = time.perf_counter
        start = clock()
        deadline = start + budget
        send = push.send
        for i in range(count):
            send(payload)
            if not i & 255 and clock() > deadline:
                break
        send(b"")
        req.send(b"C")
        (counted,) = COUNT.unpack(req.recv())
        return counted, clock() - start

    def latency(self, count: int, budget: float) -> list[float]:
        ctx, push, req = self._sockets()
        try:
            for _ in range(min(count // 10, 200) or 1):
                req.send(PAYLOAD_64)
                req.recv()
            samples: list[float] = []
            clock = time.perf_counter
            deadline = clock() + budget
            for _ in range(count):
                t0 = clock()
                req.send(PAYLOAD_64)
                req.recv()
                t1 = clock()
                samples.append(t1 - t0)
                if t1 > deadline:
                    break
            return samples
        finally:
            push.close()
            req.close()
            ctx.term()


def serve_zmq(protocol: str, certdir: Path, ready: Callable[..., None],
              stopped: Callable[[], bool]) -> None:
    """PULL counts messages until an empty one; REP answers ``C`` with the count of the last
    finished run (once it finished) and echoes anything else."""
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    rep = ctx.socket(zmq.REP)
    for s in (pull, rep):
        s.setsockopt(zmq.LINGER, 0)
    pull_port = pull.bind_to_random_port("tcp://127.0.0.1")
    rep_port = rep.bind_to_random_port("tcp://127.0.0.1")
    ready(pull_port, rep_port)
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(rep, zmq.POLLIN)
    count = 0
    finished: list[int] = []
    asked = False
    try:
        while not stopped():
            events = dict(poller.poll(200))
            if pull in events:
                while True:
                    try:
                        message = pull.recv(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if len(message):
                        count += 1
                    else:
                        finished.append(count)
                        count = 0
            if rep in events:
                request = rep.recv()
                if request == b"C":
                    asked = True
                else:
                    rep.send(request)
            if asked and finished:
                rep.send(COUNT.pack(finished.pop(0)))
                asked = False
    finally:
        pull.close()
        rep.close()
        ctx.term()
