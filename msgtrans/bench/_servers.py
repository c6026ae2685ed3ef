"""The benchmark's servers, each run in its own process:

    python -m msgtrans.bench._servers KIND PROTOCOL CERTDIR

KIND is a msgtrans server (``msgtrans`` on asyncio, ``msgtrans-trio``, ``msgtrans-blocking``)
or a peer's (``protocol``, ``streams``, ``uvloop``, ``websockets``, ``aioquic``, ``raw``,
``trio-streams``, ``blocking-socket``, ``websockets-sync``, ``zmq``); PROTOCOL is ``tcp``,
``tls``, ``ws`` or ``quic``.  The server prints ``PORT <n> [<n2>...]`` on stdout once it
listens (pyzmq needs two), then serves until its stdin closes (the benchmark holds the other
end, so a dead benchmark never leaves a server behind) or it is terminated.

The msgtrans servers are what users deploy: ``Transport.serve`` with a handler.  They count
one-way messages per session; a request with ``biz_type`` 1 is answered with the count (8 bytes,
reset after), ``biz_type`` 2 triggers ``send_to_all`` of its payload, ``biz_type`` 3 is answered
with the number of open sessions (a fan-out waits until it has them all), any other request is
echoed.  Every backend's server lives in a :data:`SERVERS` entry; the runner starts them all
the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from . import _peers
from ._peers import COUNT

__all__ = ["SERVERS", "main"]

BIZ_COUNT = 1
BIZ_FANOUT = 2
BIZ_SESSIONS = 3  # how many sessions the server has open (the fan-out waits for all)


def _ready(*ports: int) -> None:
    sys.stdout.write("PORT " + " ".join(str(p) for p in ports) + "\n")
    sys.stdout.flush()


def _watch_stdin(on_eof: Callable[[], None]) -> None:
    def watch() -> None:
        try:
            while sys.stdin.buffer.read(1):
                pass
        finally:
            on_eof()

    threading.Thread(target=watch, daemon=True).start()


async def _until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def eof() -> None:
        loop.call_soon_threadsafe(finish)

    _watch_stdin(eof)
    await done


async def serve_msgtrans(protocol: str, certdir: Path) -> None:
    import msgtrans.io_asyncio as mt

    config = _peers.msgtrans_server_config(mt, protocol, certdir)

    transport = mt.Transport.builder().shutdown_timeout(0.5).build()
    counts: dict[int, int] = {}

    class Handler:
        async def on_message(self, session: mt.Session, message: mt.Message) -> None:
            counts[session.id] = counts.get(session.id, 0) + 1

        async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
            if message.biz_type == BIZ_COUNT:
                return COUNT.pack(counts.pop(session.id, 0))
            if message.biz_type == BIZ_FANOUT:
                await transport.send_to_all(bytes(message.payload))
                return b""
            if message.biz_type == BIZ_SESSIONS:
                return COUNT.pack(transport.session_count())
            return bytes(message.payload)

        async def on_disconnected(self, session: mt.Session, reason: object) -> None:
            counts.pop(session.id, None)

    async with transport:
        stream = transport.accept([config])
        await stream.start()
        _ready(stream.addresses[0][1])
        server = asyncio.ensure_future(transport.serve(stream, Handler()))
        try:
            await _until_stdin_closes()
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)


async def serve_frames(kind: str, protocol: str, certdir: Path) -> None:
    tls = _peers.server_ssl(certdir) if protocol == "tls" else None
    server = await _peers.serve_frames("streams" if kind == "streams" else "protocol", tls)
    sockets: list[Any] = list(getattr(server, "sockets", None) or ())
    _ready(int(sockets[0].getsockname()[1]))
    async with server:
        await _until_stdin_closes()


async def serve_websockets(protocol: str, certdir: Path) -> None:
    server = await _peers.serve_websockets()
    _ready(int(next(iter(server.sockets)).getsockname()[1]))
    try:
        await _until_stdin_closes()
    finally:
        server.close()


async def serve_aioquic(protocol: str, certdir: Path) -> None:
    server, port = await _peers.serve_aioquic(certdir)
    _ready(port)
    try:
        await _until_stdin_closes()
    finally:
        server.close()


def serve_raw() -> None:
    stop = threading.Event()
    _watch_stdin(stop.set)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        _ready(int(listener.getsockname()[1]))
        _peers.serve_raw(listener, stop.is_set)


def _stop_event() -> threading.Event:
    stop = threading.Event()
    _watch_stdin(stop.set)
    return stop


def _on_stdin_eof(callback: Callable[[], None]) -> None:
    _watch_stdin(callback)


def _trio_run(name: str, protocol: str, certdir: Path) -> None:
    import trio  # type: ignore[import-untyped, unused-ignore]

    from . import _trio

    serve = _trio.serve_msgtrans_trio if name == "msgtrans" else _trio.serve_trio_streams
    trio.run(serve, protocol, certdir, _ready)


def _blocking(name: str, protocol: str, certdir: Path) -> None:
    from . import _blocking as b

    if name == "msgtrans":
        b.serve_msgtrans_blocking(protocol, certdir, _ready, _on_stdin_eof)
    elif name == "websockets":
        b.serve_websockets_sync(protocol, certdir, _ready, _on_stdin_eof)
    elif name == "sockets":
        b.serve_blocking_sockets(protocol, certdir, _ready, _stop_event().is_set)
    else:
        b.serve_zmq(protocol, certdir, _ready, _stop_event().is_set)


def _asyncio(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(make())


def _uvloop(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    import uvloop  # type: ignore[import-not-found, unused-ignore]

    uvloop.install()
    asyncio.run(make())


#: KIND -> function(protocol, certdir) that serves until stdin closes.
SERVERS: dict[str, Callable[[str, Path], None]] = {
    "msgtrans": lambda p, d: _asyncio(lambda: serve_msgtrans(p, d)),
    "protocol": lambda p, d: _asyncio(lambda: serve_frames("protocol", p, d)),
    "uvloop": lambda p, d: _uvloop(lambda: serve_frames("protocol", p, d)),
    "streams": lambda p, d: _asyncio(lambda: serve_frames("streams", p, d)),
    "websockets": lambda p, d: _asyncio(lambda: serve_websockets(p, d)),
    "aioquic": lambda p, d: _asyncio(lambda: serve_aioquic(p, d)),
    "raw": lambda p, d: serve_raw(),
    "msgtrans-trio": lambda p, d: _trio_run("msgtrans", p, d),
    "trio-streams": lambda p, d: _trio_run("streams", p, d),
    "msgtrans-blocking": lambda p, d: _blocking("msgtrans", p, d),
    "blocking-socket": lambda p, d: _blocking("sockets", p, d),
    "websockets-sync": lambda p, d: _blocking("websockets", p, d),
    "zmq": lambda p, d: _blocking("zmq", p, d),
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in SERVERS:
        sys.stderr.write(f"usage: KIND PROTOCOL CERTDIR; KIND in {sorted(SERVERS)}\n")
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        SERVERS[args[0]](args[1], Path(args[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
