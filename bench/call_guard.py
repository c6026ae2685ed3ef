"""A deterministic performance guard: Python function calls per message on msgtrans's hot paths.

    python bench/call_guard.py            # print the counts beside bench/call_counts.json
    python bench/call_guard.py --check    # exit 1 naming each path that grew past its margin
    python bench/call_guard.py --update   # record the counts of this tree in the file

Timed tests are noise on a shared machine; the number of calls a path makes per message is not:
the same code on the same Python gives the same count, run after run.  Each path counts, with
``sys.setprofile``, the ``call`` events (Python functions, generator and coroutine resumptions)
and the ``c_call`` events (C functions called from Python) of a loop over N messages after a
warm-up, and reports the *marginal* cost per message: (count of 2N - count of N) / N, so one-off
work (imports, caches, the first buffer, the loop's start and end) does not count.  The paths:

* ``encode``: ``Packet(ONE_WAY, id, 1, 64 B).encode()``;
* ``decode``: a stream of 64 B packets cut into 16 KiB chunks, through ``PacketDecoder``'s
  ``get_buffer()`` / ``buffer_updated()`` (the drivers' ``recv_into`` path), per packet;
* ``decode_framed``: the same packets in QUIC's stream framing (u32 length first) through
  ``LengthPrefixedDecoder.feed()``, per packet;
* ``session_send``: a plain-TCP client ``Connection``: ``queue_send(64 B)``, ``data_to_send()``,
  ``take_unflushed()``, one message per write (what a driver does for a lone send);
* ``session_receive``: the server ``Connection``: ``receive_data(one packet)``, ``events()`` (the
  ``PacketReceived`` of the message);
* ``session_round_trip``: ``queue_request`` on the client, the request into the server, its
  ``queue_response``, the response back into the client until its ``ResponseReceived``;
* ``asyncio_tcp_round_trip``: ``msgtrans.io_asyncio`` over 127.0.0.1, client and server in this
  process (one event loop, both counted): ``await session.request(64 B)`` answered by a
  ``Transport.serve`` handler's ``on_request``.  The only path with a kernel and a scheduler in
  it: the count can move by a call or two with how the loop's iterations fall, so it is the
  minimum of three batches.

What is pinned so the counts do not depend on the environment: ``PYTHONHASHSEED=0`` (the script
re-runs itself with it; set iteration order could change a branch), the garbage collector off
while counting (its callbacks), no compression, no WebSocket (so neither zstandard nor
websockets' C masking is on any path), payloads below the zero-copy threshold and no receive
pool on the core paths, and asyncio's own selector event loop (never uvloop, debug off).  The
counts do depend on the Python version (which builtins are C, how the interpreter calls): the
file records the version they were taken on, and ``--check`` on another minor version says so
and exits 0 without comparing (``--update`` on that version to guard there).

A path fails ``--check`` when its total (Python + C calls) per message exceeds the recorded
figure by more than its margin (in the file: ``max(calls, percent of the recorded count)``;
+5 % and at least one call on every path: encode's 11 calls may become 12, not 13;
the session receive path's 34 may become 35, not 36). The counts are exact, so the margin is
not for noise: it lets a change that is worth a call or two through without an update, and
stops a drift of several.  A count that fell by more than the margin is reported too (exit 0):
``--update`` to keep the gain.

What is not counted: ``c_call`` is raised for C functions and methods only, so calling a C
*type* (``list(x)``, ``bytes(view)``, ``memoryview(b)``) counts nothing, and the work inside a
call is not weighed (a call that copies 64 KiB counts as one).  The guard catches added calls,
layers and per-message Python work, not a slower C routine: the timed benchmark is for that.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COUNTS_FILE = Path(__file__).resolve().with_name("call_counts.json")
PAYLOAD = b"m" * 64
CORE_N = 2000
ROUND_TRIPS = 200
ASYNCIO_BATCHES = 3

#: path -> (percent, calls): the allowed growth is the larger of the two (+5 %, and at least
#: one call, so that a path of 11 calls may take one more but not two).
MARGINS: dict[str, tuple[float, float]] = dict.fromkeys(
    ("encode", "decode", "decode_framed", "session_send", "session_receive",
     "session_round_trip", "asyncio_tcp_round_trip"), (5.0, 1.0))

Run = Callable[[int], object]


class _Counter:
    def __init__(self) -> None:
        self.py = 0
        self.c = 0

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            self.py += 1
        elif event == "c_call":
            self.c += 1


def _count(run: Run, n: int) -> tuple[int, int]:
    gc.collect()
    gc.disable()
    counter = _Counter()
    try:
        sys.setprofile(counter)
        try:
            run(n)
        finally:
            sys.setprofile(None)
    finally:
        gc.enable()
    return counter.py, counter.c


def per_message(run: Run, n: int, warmup: int) -> tuple[float, float]:
    """(Python calls, C calls) per message: the marginal cost of *n* more messages."""
    run(warmup)
    py1, c1 = _count(run, n)
    py2, c2 = _count(run, 2 * n)
    return (py2 - py1) / n, (c2 - c1) / n


# --- the paths -----------------------------------------------------------------------------------


def path_encode() -> Run:
    from msgtrans.core.packet import Packet, PacketType

    def run(n: int) -> None:
        for i in range(n):
            Packet(PacketType.ONE_WAY, i + 1, 1, PAYLOAD).encode()

    return run


def _stream(n: int, framed: bool) -> bytes:
    from msgtrans.core.packet import Packet, PacketType

    out = bytearray()
    for i in range(n):
        data = Packet(PacketType.ONE_WAY, i + 1, 1, PAYLOAD).encode()
        if framed:
            out += len(data).to_bytes(4, "big")
        out += data
    return bytes(out)


def path_decode() -> Run:
    from msgtrans.core.framing import PacketDecoder

    chunk = 16 * 1024
    streams: dict[int, bytes] = {}

    def run(n: int) -> None:
        data = streams.get(n) or streams.setdefault(n, _stream(n, framed=False))
        decoder = PacketDecoder(zero_copy_threshold=None)
        got = 0
        for start in range(0, len(data), chunk):
            piece = data[start:start + chunk]
            area = decoder.get_buffer(len(piece))
            area[:len(piece)] = piece
            got += len(decoder.buffer_updated(len(piece)))
        assert got == n, (got, n)

    return run


def path_decode_framed() -> Run:
    from msgtrans.core.framing import LengthPrefixedDecoder

    chunk = 16 * 1024
    streams: dict[int, list[bytes]] = {}

    def run(n: int) -> None:
        if n not in streams:
            data = _stream(n, framed=True)
            streams[n] = [data[i:i + chunk] for i in range(0, len(data), chunk)]
        decoder = LengthPrefixedDecoder(zero_copy_threshold=None)
        got = 0
        for piece in streams[n]:
            got += len(decoder.feed(piece))
        assert got == n, (got, n)

    return run


def _connected_pair() -> tuple[Any, Any]:
    from msgtrans.core.connection import client_connection, server_connection

    client = client_connection("tcp://127.0.0.1:9", buffer_pool=None)
    server = server_connection("tcp://127.0.0.1:9", buffer_pool=None)
    client.start(0.0)
    server.start(0.0)
    for _ in range(4):  # plain TCP has no handshake; whatever a side has, the other reads
        for a, b in ((client, server), (server, client)):
            data = b"".join(bytes(part) for part in a.data_to_send())
            if data:
                b.receive_data(data, 0.0)
    client.events()
    server.events()
    return client, server


def path_session_send() -> Run:
    client, _server = _connected_pair()

    def run(n: int) -> None:
        for _ in range(n):
            client.queue_send(PAYLOAD, 1, b"", 1.0)
            client.data_to_send()
            client.take_unflushed()

    return run


def path_session_receive() -> Run:
    from msgtrans.core.session import MessageReceived

    client, server = _connected_pair()
    wires = []  # one packet per message, each with its own id, as the client numbers them
    for _ in range(3 * CORE_N + 1000):
        client.queue_send(PAYLOAD, 1, b"", 1.0)
        wires.append(b"".join(bytes(part) for part in client.data_to_send()))
    client.take_unflushed()
    feed = iter(wires)

    def run(n: int) -> None:
        got = 0
        for _ in range(n):
            server.receive_data(next(feed), 1.0)
            for event in server.events():
                got += type(event) is MessageReceived
        assert got == n, (got, n)

    return run


def path_session_round_trip() -> Run:
    from msgtrans.core.session import RequestReceived, ResponseReceived

    client, server = _connected_pair()

    def run(n: int) -> None:
        for _ in range(n):
            client.queue_request(PAYLOAD, 1, b"", None, 1.0)
            server.receive_data(b"".join(client.data_to_send()), 1.0)
            client.take_unflushed()
            for event in server.events():
                if type(event) is RequestReceived:
                    server.queue_response(event.packet, PAYLOAD, None, b"", 1.0)
            client.receive_data(b"".join(server.data_to_send()), 1.0)
            server.take_unflushed()
            answered = [e for e in client.events() if type(e) is ResponseReceived]
            assert len(answered) == 1, answered

    return run


class _AsyncioRoundTrip:
    """A server and a client transport on one selector event loop, kept between batches."""

    def __init__(self) -> None:
        import msgtrans.io_asyncio as mt

        self.mt = mt
        self.loop = asyncio.SelectorEventLoop()
        self.loop.set_debug(False)
        self.loop.run_until_complete(self._open())

    async def _open(self) -> None:
        mt = self.mt

        class Echo:
            async def on_request(self, session: Any, message: Any) -> bytes:
                return PAYLOAD

        self.server = mt.Transport.builder().shutdown_timeout(1.0).build()
        self.client = mt.Transport.builder().shutdown_timeout(1.0).request_timeout(30).build()
        await self.server.__aenter__()
        await self.client.__aenter__()
        stream = self.server.accept(["tcp://127.0.0.1:0"])
        await stream.start()
        host, port = stream.addresses[0]
        self.serving = asyncio.ensure_future(self.server.serve(stream, Echo()))
        self.session = await self.client.connect(f"tcp://{host}:{port}", timeout=10)

    async def _requests(self, n: int) -> None:
        request = self.session.request
        for _ in range(n):
            await request(PAYLOAD)

    def run(self, n: int) -> None:
        self.loop.run_until_complete(self._requests(n))

    def close(self) -> None:
        async def shut() -> None:
            await self.client.__aexit__(None, None, None)
            await self.server.__aexit__(None, None, None)
            self.serving.cancel()
            await asyncio.gather(self.serving, return_exceptions=True)

        try:
            self.loop.run_until_complete(asyncio.wait_for(shut(), 10))
        finally:
            self.loop.close()


PATHS: dict[str, tuple[Callable[[], Run], int, str]] = {
    "encode": (path_encode, CORE_N, "Packet(ONE_WAY, id, 1, 64 B).encode()"),
    "decode": (path_decode, CORE_N, "PacketDecoder get_buffer/buffer_updated, 16 KiB chunks, "
               "per 64 B packet"),
    "decode_framed": (path_decode_framed, CORE_N, "LengthPrefixedDecoder.feed, 16 KiB chunks, "
                      "per 64 B packet"),
    "session_send": (path_session_send, CORE_N, "Connection (plain TCP) queue_send + "
                     "data_to_send + take_unflushed, per 64 B message"),
    "session_receive": (path_session_receive, CORE_N, "Connection (plain TCP) receive_data of "
                        "one packet + events(), per 64 B message"),
    "session_round_trip": (path_session_round_trip, CORE_N, "queue_request -> server "
                           "receive_data/events -> queue_response -> client receive_data/events"
                           ", per 64 B request"),
}
ASYNCIO_WHAT = ("msgtrans.io_asyncio over 127.0.0.1, client and server in one process: await "
                "session.request(64 B) answered by a serve() handler; per round trip, minimum "
                f"of {ASYNCIO_BATCHES} batches")


def measure(only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every path's (Python, C, total) calls per message."""
    out: dict[str, dict[str, Any]] = {}
    for name, (make, n, what) in PATHS.items():
        if only and name not in only:
            continue
        py, c = per_message(make(), n, warmup=200)
        out[name] = {"python_calls": round(py, 2), "c_calls": round(c, 2),
                     "total": round(py + c, 2), "what": what}
    if not only or "asyncio_tcp_round_trip" in only:
        trip = _AsyncioRoundTrip()
        try:
            batches = [per_message(trip.run, ROUND_TRIPS, warmup=100)
                       for _ in range(ASYNCIO_BATCHES)]
        finally:
            trip.close()
        py, c = min(batches, key=lambda b: b[0] + b[1])
        out["asyncio_tcp_round_trip"] = {
            "python_calls": round(py, 2), "c_calls": round(c, 2), "total": round(py + c, 2),
            "what": ASYNCIO_WHAT,
            "batches": [round(b[0] + b[1], 2) for b in batches],
        }
    return out


def _python() -> str:
    return ".".join(platform.python_version_tuple()[:2])


def check(stored: dict[str, Any], now: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(paths that grew past their margin, paths that fell past it), as messages."""
    grew, fell = [], []
    for name, got in now.items():
        before = stored["paths"].get(name)
        if before is None:
            grew.append(f"{name}: not in {COUNTS_FILE.name} (--update to record it)")
            continue
        margin = stored.get("margins", {}).get(name)
        percent, calls = (margin["percent"], margin["calls"]) if margin else MARGINS[name]
        allowed = max(calls, before["total"] * percent / 100)
        delta = got["total"] - before["total"]
        text = (f"{name}: {before['total']:g} -> {got['total']:g} calls per message "
                f"({delta:+g}; margin {allowed:g}: max({calls:g} calls, {percent:g} %))")
        if delta > allowed:
            grew.append(text)
        elif -delta > allowed:
            fell.append(text)
    return grew, fell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="exit 1 when a path grew past its margin")
    mode.add_argument("--update", action="store_true", help="record this tree's counts")
    parser.add_argument("--paths", help="comma-separated subset of: "
                        + ",".join([*PATHS, "asyncio_tcp_round_trip"]))
    parser.add_argument("--file", type=Path, default=COUNTS_FILE)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    if os.environ.get("PYTHONHASHSEED") != "0":
        # The counts are taken with a fixed hash seed: run again with it.
        env = dict(os.environ, PYTHONHASHSEED="0")
        return subprocess.run([sys.executable, str(Path(__file__).resolve()),
                               *(sys.argv[1:] if argv is None else argv)], env=env,
                              check=False).returncode

    only = [p.strip() for p in args.paths.split(",")] if args.paths else None
    stored = json.loads(args.file.read_text()) if args.file.exists() else None
    if args.check and stored is not None and stored.get("python") != _python():
        print(f"{args.file.name} was recorded on Python {stored.get('python')}; this is "
              f"{_python()}: the counts differ between versions, nothing compared "
              "(--update on this version to guard it)")
        return 0
    now = measure(only)
    for name, got in now.items():
        before = stored["paths"].get(name, {}).get("total") if stored else None
        print(f"{name:24} {got['python_calls']:8.2f} py + {got['c_calls']:8.2f} C = "
              f"{got['total']:8.2f} calls/message"
              + (f"   (recorded {before:g})" if before is not None else ""))
    if args.update:
        doc = {
            "python": _python(), "python_full": platform.python_version(),
            "note": "Python function calls per message (sys.setprofile 'call' + 'c_call'); "
                    "bench/call_guard.py --check fails when a total grows past its margin "
                    "(max(calls, percent of the recorded total))",
            "margins": {k: {"percent": p, "calls": c} for k, (p, c) in MARGINS.items()},
            "paths": {**(stored["paths"] if stored and only else {}), **now},
        }
        args.file.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.file}")
        return 0
    if args.check:
        if stored is None:
            print(f"no {args.file}: run --update first")
            return 1
        grew, fell = check(stored, now)
        for text in fell:
            print("fell (--update to keep the gain): " + text)
        for text in grew:
            print("GREW: " + text)
        if grew:
            return 1
        print(f"call counts within their margins ({len(now)} paths)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
