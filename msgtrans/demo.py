"""``python -m msgtrans demo --memory``: every protocol, client and server, wired in memory.

The real protocol and session machines run over in-memory pipes, with no socket: the same bytes a
socket would carry (TLS records, WebSocket frames, QUIC datagrams) pass between a client and a
server, with a simulated clock.  (``python -m msgtrans demo`` is the same over real sockets.)
It shows one-way messages, request/response in both directions and a broadcast, then closes each
connection gracefully for its protocol and checks that nothing was lost.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .certs import write_self_signed
from .core.config import (
    QuicServerConfig,
    ServerTlsConfig,
    TcpServerConfig,
    WebSocketServerConfig,
)
from .core.connection import (
    client_connection,
    quic_endpoint,
    server_connection,
)
from .core.events import ConnectionClosed, ConnectionEstablished
from .core.pair import ConnectionPair
from .core.session import MessageReceived, RequestReceived, ResponseReceived

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """What one protocol's demo did.

    Attributes:
        name: the protocol as a user would write its URL scheme.
        ok: whether every check passed.
        lines: what happened, for the summary.
        bytes_on_wire: bytes (or datagram bytes) carried both ways.
    """

    name: str
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    bytes_on_wire: int = 0

    def check(self, condition: bool, what: str) -> None:
        """Record *what* with a tick or a cross."""
        self.ok = self.ok and condition
        self.lines.append(f"{'ok ' if condition else 'FAIL'} {what}")


def _exercise(name: str, link: ConnectionPair, result: DemoResult) -> None:
    link.start()
    established = [e for e in link.take("client") if isinstance(e, ConnectionEstablished)]
    result.check(bool(established), f"handshake complete ({_describe(established)})")
    server = link.server
    assert server is not None or not result.ok
    if server is None:
        return
    link.take("server")

    client, now = link.client, link.now
    client.send(b"hello from the client", biz_type=1, now=now)
    rid = client.request(b"ping", biz_type=2, now=now)
    link.pump()
    got = link.take("server")
    messages = [e for e in got if isinstance(e, MessageReceived)]
    requests = [e for e in got if isinstance(e, RequestReceived)]
    result.check(
        len(messages) == 1 and messages[0].packet.payload == b"hello from the client",
        "client -> server one-way message",
    )
    result.check(len(requests) == 1, "client -> server request arrived")
    if requests:
        server.respond(requests[0].packet, b"pong", now=link.now)
    link.pump()
    replies = [e for e in link.take("client") if isinstance(e, ResponseReceived)]
    result.check(
        len(replies) == 1 and replies[0].request_id == rid and replies[0].packet.payload == b"pong",
        "server -> client response matched by id",
    )

    sid = server.request(b"who are you?", now=link.now)
    link.pump()
    asked = [e for e in link.take("client") if isinstance(e, RequestReceived)]
    if asked:
        client.respond(asked[0].packet, f"a {name} client".encode(), now=link.now)
    link.pump()
    answers = [e for e in link.take("server") if isinstance(e, ResponseReceived)]
    result.check(
        len(answers) == 1 and answers[0].request_id == sid,
        f"server -> client request answered ({bytes(answers[0].packet.payload).decode()!r})"
        if answers else "server -> client request answered",
    )

    big = bytes(range(256)) * 1024  # 256 KiB: crosses the zero-copy threshold
    client.send(big, now=link.now)
    link.pump(2000)
    large = [e for e in link.take("server") if isinstance(e, MessageReceived)]
    result.check(
        len(large) == 1 and large[0].packet.payload == big,
        f"256 KiB message intact (payload handed over as {type(large[0].packet.payload).__name__})"
        if large else "256 KiB message intact",
    )


def _describe(events: list[ConnectionEstablished]) -> str:
    if not events:
        return "failed"
    e = events[0]
    parts = [e.protocol.value]
    if e.tls:
        parts.append(e.tls_version or "TLS")
    if e.alpn:
        parts.append(f"ALPN {e.alpn}")
    if e.subprotocol:
        parts.append(f"subprotocol {e.subprotocol}")
    return ", ".join(parts)


def _close(link: ConnectionPair, result: DemoResult) -> None:
    link.client.close()
    link.pump(2000, until=lambda: link.client.is_closed)
    closed = [e for e in link.take("client") if isinstance(e, ConnectionClosed)]
    result.check(bool(closed) and closed[0].clean, "closed cleanly" + (
        f" (code {closed[0].code})" if closed and closed[0].code is not None else ""))


def run_demo(out: TextIO, workdir: Path | None = None) -> int:
    """Run the demo over TCP, TLS, WebSocket, secure WebSocket and QUIC; print a summary to *out*.

    Returns 0 when every check passed, 1 otherwise.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="msgtrans-demo-") as tmp:
        cert, key = (str(p) for p in write_self_signed(Path(workdir or tmp)))
        tls = ServerTlsConfig(cert, key)
        cases: list[tuple[str, Callable[[], ConnectionPair]]] = [
            ("tcp", lambda: ConnectionPair(client_connection("tcp://127.0.0.1:9001"),
                                  server_connection(TcpServerConfig()))),
            ("tls", lambda: ConnectionPair(client_connection(f"tls://localhost:9002?ca={cert}"),
                                  server_connection(TcpServerConfig(tls=tls)))),
            ("ws", lambda: ConnectionPair(client_connection("ws://127.0.0.1:9003/"),
                                 server_connection(WebSocketServerConfig()))),
            ("wss", lambda: ConnectionPair(
                client_connection(f"wss://localhost:9004/?ca={cert}"),
                server_connection(WebSocketServerConfig(tls=tls)))),
            ("quic", lambda: ConnectionPair(
                client_connection(f"quic://localhost:4433?ca={cert}",
                                  resolved=("127.0.0.1", 4433)),
                None,
                quic_endpoint(QuicServerConfig(addr="127.0.0.1:4433", cert_file=cert,
                                               key_file=key)))),
        ]
        results, links = [], []
        for name, make in cases:
            result = DemoResult(name)
            link = make()
            _exercise(name, link, result)
            results.append(result)
            links.append(link)
        # A broadcast: the server side of every protocol sends the same news to its client.
        live = [(link, result) for link, result in zip(links, results, strict=True) if link.server]
        for link, _ in live:
            assert link.server is not None
            link.server.send(b"news for everyone", biz_type=9, now=link.now)
        for link, result in live:
            link.pump()
            news = [e for e in link.take("client") if isinstance(e, MessageReceived)]
            result.check(
                len(news) == 1 and news[0].packet.payload == b"news for everyone",
                f"broadcast to all {len(live)} sessions reached this one",
            )
            _close(link, result)
            result.bytes_on_wire = link.wire

    print("msgtrans demo: client and server machines for every protocol, joined in memory",
          file=out)
    print("(the same bytes a socket would carry, with a simulated clock)\n", file=out)
    for result in results:
        print(f"{result.name}://  {result.bytes_on_wire} bytes on the wire", file=out)
        for line in result.lines:
            print(f"    {line}", file=out)
    ok = all(r.ok for r in results)
    elapsed = time.perf_counter() - started
    print(f"\n{'all checks passed' if ok else 'SOME CHECKS FAILED'} in {elapsed:.2f} s", file=out)
    return 0 if ok else 1

