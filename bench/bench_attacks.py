"""Issue 17's table, rerun: what abusive clients cost ``python -m msgtrans serve``.

    python bench/bench_attacks.py                         # every case, every backend (~4 min)
    python bench/bench_attacks.py --quick                 # smaller counts (~1 min)
    python bench/bench_attacks.py --backends trio --cases resets,slow_reader

Each case starts a fresh echo server (a subprocess, its defaults, or ``MSGTRANS_*`` settings
given with ``--env``) and attacks it with raw sockets and hand-made msgtrans packets, reading
the server's resident memory, descriptors and threads from ``/proc``.  The cases:

* ``garbage``: bad TCP bytes (bad version, an oversized length, noise): closed at once?
* ``idle``: N TCP, WebSocket and TLS connections that complete their handshake and send
  nothing, and N WebSocket and TLS connections that do not even start it: server memory per
  connection, and how many the server closed within ``--idle-wait`` seconds (the handshake
  has ``handshake_timeout``; after it, ``first_packet_timeout``).
* ``flood``: N connections opened at once, each sending one request, beside a normal client
  doing requests: how many got their answer within 15 s, and the normal client's worst latency.
* ``slow_reader``: a client sends 64 KiB one-way messages (which the server echoes) and never
  reads: how much it could send before the server stopped reading, and the server's growth.
* ``text``: a WebSocket text message: the close code the server answers with.
* ``resets``: TCP, WebSocket and QUIC connect/close cycles, a third of them reset (``SO_LINGER``
  0) at different points: descriptors and memory before and after.
* ``sigterm``: 10,000 one-way messages, then SIGTERM as soon as the first echo is back: echoes
  received before the close, and the exit status.
* ``quic_garbage``: undecryptable QUIC Initials, each with a fresh connection id: memory after.

Every case also prints how many lines the server logged (at ``--log-level ERROR``): an attack
must not make the server write a line per message.

Linux only (``/proc``).  Figures vary ±20 % between runs on a busy machine; rerun a case before
reading much into a small difference.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import selectors
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

if importlib.util.find_spec("msgtrans") is None:  # run from a checkout without `pip install -e`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import wsproto
import wsproto.events as wse
from bench_quic_flood import flood as udp_flood
from bench_quic_flood import garbage_initial

from msgtrans.core.config import SUBPROTOCOL
from msgtrans.core.packet import Packet, PacketType

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("asyncio", "trio", "sync")
CASES = ("garbage", "idle", "flood", "slow_reader", "text", "resets", "sigterm", "quic_garbage")
HEADER = 16


# --- the server and /proc ----------------------------------------------------------------------

class Server:
    """``python -m msgtrans serve`` on free ports of every protocol, in a subprocess."""

    def __init__(self, backend: str, env: dict[str, str]) -> None:
        full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p), **env)
        args = [sys.executable, "-m", "msgtrans", "serve", "--backend", backend,
                "--log-level", "ERROR"]
        for name in ("tcp", "tls", "ws", "quic"):
            args += [f"--{name}", "127.0.0.1:0"]
        # The server's log goes to a file: how many lines an attack makes it write is a figure.
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=full_env, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {backend} server did not start")
        bound = json.loads(line)
        self.tcp = _address(bound["tcp"])
        self.tls = _address(bound["tls"])
        self.ws = _address(bound["ws"].split("//", 1)[1].rstrip("/"))
        self.quic = _address(bound["quic"])
        self.ca = bound.get("ca")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        return _status_field(self.proc.pid, "VmRSS")

    def threads(self) -> int:
        return _status_field(self.proc.pid, "Threads")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def log_lines(self) -> int:
        """Lines the server wrote to its log so far (tracebacks included)."""
        self.log.flush()
        self.log.seek(0)
        return sum(1 for _ in self.log)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 20 s; the exit status (``None`` if it had to be killed)."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
                    return None
            return self.proc.returncode
        finally:
            self.log.close()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/{pid}/status")  # pragma: no cover


@contextlib.contextmanager
def server(backend: str, env: dict[str, str]) -> Iterator[Server]:
    srv = Server(backend, env)
    try:
        time.sleep(0.3)  # let the process settle before its first reading
        yield srv
    finally:
        srv.stop()


def settle(srv: Server, seconds: float = 1.0) -> None:
    """Give the server a moment to finish what the attack started (it is another process)."""
    time.sleep(seconds)


# --- raw clients -------------------------------------------------------------------------------

def packet(kind: PacketType, message_id: int, payload: bytes) -> bytes:
    return Packet(kind, message_id, payload=payload).encode()


def ws_handshake(sock: socket.socket, address: tuple[str, int]) -> wsproto.WSConnection:
    """Upgrade *sock* to WebSocket (the msgtrans subprotocol); the client's wsproto state."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    sock.sendall(ws.send(wse.Request(host=f"{address[0]}:{address[1]}", target="/",
                                     subprotocols=[SUBPROTOCOL])))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed during the WebSocket handshake")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, wse.AcceptConnection):
                return ws
            if isinstance(event, wse.RejectConnection):
                raise ConnectionError(f"WebSocket handshake refused: {event.status_code}")
    raise TimeoutError("WebSocket handshake")


def tls_client(address: tuple[str, int]) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(address, timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def reset(sock: socket.socket) -> None:
    """Close *sock* with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def closed_within(socks: list[socket.socket], seconds: float) -> tuple[int, float]:
    """How many of *socks* the peer closed within *seconds*, and when the last of those was."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    start = time.monotonic()
    closed, last = 0, 0.0
    try:
        while closed < len(socks) and time.monotonic() - start < seconds:
            for key, _ in sel.select(0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    closed += 1
                    last = time.monotonic() - start
    finally:
        sel.close()
    return closed, last


# --- the cases ---------------------------------------------------------------------------------

Row = dict[str, str]


def case_garbage(srv: Server, quick: bool) -> Row:
    inputs = {
        "version": b"\x09" + bytes(15) + b"abc",
        "length": packet(PacketType.ONE_WAY, 1, b"")[:8] + b"\xff\xff\xff\xff" + bytes(4),
        "noise": os.urandom(4096),
    }
    out = []
    for name, data in inputs.items():
        with socket.create_connection(srv.tcp, timeout=5) as sock:
            start = time.monotonic()
            sock.sendall(data)
            closed, _ = closed_within([sock], 5)
            out.append(f"{name} {'closed' if closed else 'OPEN'} {time.monotonic() - start:.2f}s")
    return {"result": ", ".join(out) + ("; server up" if srv.alive() else "; SERVER DIED")}


IDLE_KINDS = ("tcp", "ws", "tls", "ws-silent", "tls-silent")


def _idle_connection(srv: Server, kind: str) -> socket.socket:
    """A connection of *kind* that then sends nothing: ``tcp`` (plain TCP has no handshake),
    ``ws`` / ``tls`` (handshake completed), ``ws-silent`` / ``tls-silent`` (not even that)."""
    if kind == "tcp":
        return socket.create_connection(srv.tcp, timeout=10)
    if kind == "ws":
        sock = socket.create_connection(srv.ws, timeout=10)
        ws_handshake(sock, srv.ws)
        return sock
    if kind == "tls":
        return tls_client(srv.tls)
    return socket.create_connection(srv.ws if kind == "ws-silent" else srv.tls, timeout=10)


def case_idle(backend: str, args: argparse.Namespace) -> Row:
    """One fresh server per kind, so a kind's figure does not reuse memory another freed."""
    count = 100 if args.quick else 500
    row: Row = {}
    for kind in IDLE_KINDS:
        with server(backend, args.env) as srv:
            before = srv.rss_kib()
            socks: list[socket.socket] = []
            try:
                for _ in range(count):
                    socks.append(_idle_connection(srv, kind))
                settle(srv)
                per = (srv.rss_kib() - before) / count
                closed, last = closed_within(socks, args.idle_wait)
            finally:
                for s in socks:
                    s.close()
            row[kind] = (f"{per:.0f} KiB each, {closed}/{count} closed in {args.idle_wait:.0f}s"
                         + (f" (last at {last:.1f}s)" if closed else "")
                         + f"; {srv.log_lines()} log lines")
    return row


def _normal_client(address: tuple[str, int], stop: threading.Event, worst: list[float],
                   failures: list[str]) -> None:
    try:
        with socket.create_connection(address, timeout=15) as sock:
            i = 0
            while not stop.is_set():
                i += 1
                start = time.monotonic()
                sock.sendall(packet(PacketType.REQUEST, i, b"ping"))
                got = b""
                while len(got) < HEADER + 4:
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    got += chunk
                worst[0] = max(worst[0], time.monotonic() - start)
                time.sleep(0.01)
    except OSError as exc:
        failures.append(repr(exc))


def case_flood(srv: Server, quick: bool) -> Row:
    count = 500 if quick else 2000
    stop = threading.Event()
    worst, failures = [0.0], []  # type: tuple[list[float], list[str]]
    normal = threading.Thread(target=_normal_client, args=(srv.tcp, stop, worst, failures))
    normal.start()
    time.sleep(0.2)
    socks: list[socket.socket] = []
    start = time.monotonic()
    try:
        for i in range(count):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(srv.tcp)
            socks.append(s)
            if i % 100 == 99:
                time.sleep(0.05)  # 2,000 in about a second
        opened = time.monotonic() - start
        sel = selectors.DefaultSelector()
        pending = {}
        for i, s in enumerate(socks):
            sel.register(s, selectors.EVENT_WRITE)
            pending[s] = packet(PacketType.REQUEST, i + 1, b"x")
        answered = 0
        received: dict[socket.socket, int] = {}
        deadline = time.monotonic() + 15
        while answered < count and time.monotonic() < deadline:
            for key, events in sel.select(0.2):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if events & selectors.EVENT_WRITE:
                    try:
                        s.send(pending.pop(s))
                    except OSError:
                        sel.unregister(s)
                        continue
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                got = received[s] = received.get(s, 0) + len(data)
                if not data or got >= HEADER + 1:
                    sel.unregister(s)
                    answered += bool(data)
        sel.close()
    finally:
        stop.set()
        normal.join(20)
        for s in socks:
            s.close()
    return {"result": f"{answered}/{count} answered within 15 s (opened in {opened:.1f}s); "
                      f"normal client worst {worst[0] * 1000:.0f} ms"
                      + (f", FAILED {failures[0]}" if failures else "")}


def case_slow_reader(srv: Server, quick: bool) -> Row:
    limit = (64 if quick else 256) << 20
    message = packet(PacketType.ONE_WAY, 0, os.urandom(65536))
    before = srv.rss_kib()
    sent = 0
    with socket.create_connection(srv.tcp, timeout=10) as sock:
        sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_WRITE)
        view = memoryview(message)
        offset = 0
        while sent < limit:
            if not sel.select(3.0):
                break  # the server stopped reading
            try:
                n = sock.send(view[offset:])
            except BlockingIOError:
                continue
            except OSError:
                break
            sent += n
            offset = (offset + n) % len(message)
        sel.close()
        settle(srv)
        grown = (srv.rss_kib() - before) / 1024
    stopped = "stopped reading" if sent < limit else "NEVER stopped reading"
    return {"result": f"server {stopped} after {sent / 2**20:.1f} MiB; +{grown:.1f} MiB"}


def case_text(srv: Server, quick: bool) -> Row:
    with socket.create_connection(srv.ws, timeout=10) as sock:
        ws = ws_handshake(sock, srv.ws)
        sock.sendall(ws.send(wse.Message(data="hello")))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                return {"result": "closed without a close frame"}
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wse.CloseConnection):
                    return {"result": f"closed {event.code} {event.reason!r}"}
    return {"result": "IGNORED (no close in 5 s)"}


def _quic_cycles(srv: Server, count: int) -> None:
    import msgtrans.io_sync as smt

    for i in range(count):
        with smt.Transport() as transport:
            session = transport.connect(f"quic://127.0.0.1:{srv.quic[1]}?verify=false")
            session.request(b"hi", timeout=10)
            if i % 3 == 0:
                session.abort()
            else:
                session.close()


def case_resets(srv: Server, quick: bool) -> Row:
    tcp, ws, quic = (400, 60, 20) if quick else (2000, 300, 100)
    before = (srv.fds(), srv.rss_kib())
    for i in range(tcp):
        sock = socket.create_connection(srv.tcp, timeout=10)
        if i % 3 != 1:
            sock.sendall(packet(PacketType.REQUEST, 1, b"x" * 100))
            if i % 3 == 2:
                sock.sendall(packet(PacketType.ONE_WAY, 2, b"y" * 100)[:20])  # mid-packet
            else:
                sock.recv(4096)
        (reset if i % 3 else socket.socket.close)(sock)
    for i in range(ws):
        sock = socket.create_connection(srv.ws, timeout=10)
        ws_handshake(sock, srv.ws)
        (reset if i % 3 else socket.socket.close)(sock)
    _quic_cycles(srv, quic)
    settle(srv, 2.0)
    after = (srv.fds(), srv.rss_kib())
    return {"result": f"fds {before[0]} -> {after[0]}, "
                      f"+{(after[1] - before[1]) / 1024:.1f} MiB over {tcp + ws + quic} cycles"
                      f" ({(after[1] - before[1]) / (tcp + ws + quic):.1f} KiB each)"}


def case_sigterm(srv: Server, quick: bool) -> Row:
    count = 10_000
    echoes = [0]
    sock = socket.create_connection(srv.tcp, timeout=30)
    one = packet(PacketType.ONE_WAY, 0, b"z" * 100)

    def read() -> None:
        got = 0
        with contextlib.suppress(OSError):
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                got += len(data)
                echoes[0] = got // len(one)

    reader = threading.Thread(target=read)
    reader.start()
    sock.sendall(one * count)
    # SIGTERM once the server is echoing (not before it read a byte: that would measure how
    # fast the signal beats the first read, not what a shutdown finishes).
    deadline = time.monotonic() + 10
    while echoes[0] == 0 and time.monotonic() < deadline and reader.is_alive():
        time.sleep(0.001)
    srv.proc.send_signal(signal.SIGTERM)
    try:
        status: int | None = srv.proc.wait(30)
    except subprocess.TimeoutExpired:
        status = None
    reader.join(30)
    sock.close()
    return {"result": f"{echoes[0]:,}/{count:,} echoes before the close; exit {status}"}


def case_quic_garbage(srv: Server, quick: bool) -> Row:
    count = 1000 if quick else 10_000
    datagrams = [garbage_initial(os.urandom(8), os.urandom(8)) for _ in range(count)]
    before = srv.rss_kib()
    udp_flood(datagrams, srv.quic, 1)
    settle(srv)
    grown = (srv.rss_kib() - before) / 1024
    return {"result": f"+{grown:.1f} MiB for {count:,} ({1024 * grown / count:.2f} KiB each); "
                      + ("server up" if srv.alive() else "SERVER DIED")}


def run_case(name: str, backend: str, args: argparse.Namespace) -> Row:
    if name == "idle":
        return case_idle(backend, args)
    cases: dict[str, Callable[..., Row]] = {
        "garbage": case_garbage, "flood": case_flood, "slow_reader": case_slow_reader,
        "text": case_text, "resets": case_resets, "sigterm": case_sigterm,
        "quic_garbage": case_quic_garbage,
    }
    with server(backend, args.env) as srv:
        try:
            row = cases[name](srv, args.quick)
        except Exception as exc:  # a failed case is a row, not the end of the run
            row = {"result": f"ERROR {exc!r}"}
        row["log"] = f"{srv.log_lines()} lines in the server's log"
        return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--idle-wait", type=float, default=35.0,
                        help="seconds the idle case waits for the server to close (default 35)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a MSGTRANS_* setting for the server (repeatable)")
    args = parser.parse_args(argv)
    args.env = dict(item.split("=", 1) for item in args.env)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20_000)), hard))
    results: dict[str, dict[str, Row]] = {}
    for name in args.cases.split(","):
        if name not in CASES:
            parser.error(f"unknown case {name!r} (known: {', '.join(CASES)})")
        for backend in args.backends.split(","):
            row = run_case(name, backend, args)
            results.setdefault(name, {})[backend] = row
            for key, value in row.items():
                label = name if key == "result" else f"{name}.{key}"
                print(f"{label:<16} {backend:<8} {value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
