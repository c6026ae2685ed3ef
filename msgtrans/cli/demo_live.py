"""``python -m msgtrans demo``: the echo server and a client per protocol over real sockets.

In one process, on 127.0.0.1 with free ports and a freshly generated self-signed certificate:
an echo server (the one ``python -m msgtrans serve`` runs) listens on tcp, tls, ws, wss and
quic, and one client connects over each.  For every protocol the demo checks that the server's
request reaches the client and its answer comes back, that a one-way message is echoed, that a
request is answered, and that a broadcast from the server reaches every client; then the server
shuts down gracefully and every client must see a clean close.  It prints one block per
protocol with ``ok``/``FAIL`` lines and timings, and the shutdown report.

Everything it opens (sockets, tasks, the temporary certificate directory) is closed before it
returns.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

from .serve import PROTOCOLS, EchoHandler, format_address, listeners

__all__ = ["DemoHandler", "ProtocolReport", "run_live_demo"]

T = TypeVar("T")

#: Seconds any one step of the demo may take before it counts as failed.
STEP_TIMEOUT = 5.0
#: Payloads and tags the checks use.
HELLO = b"hello from the server"
NEWS = b"news for everyone"
NEWS_BIZ_TYPE = 9


@dataclass
class ProtocolReport:
    """What the demo saw over one protocol.

    Attributes:
        name: the protocol, as its URL scheme.
        url: the URL the client connected to.
        ok: whether every check passed.
        lines: the ``ok``/``FAIL`` lines of the summary.
    """

    name: str
    url: str = ""
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def check(self, condition: bool, what: str, started: float | None = None) -> bool:
        """Record *what* as passed or failed (with the time since *started*, from
        :func:`time.perf_counter`); return *condition*."""
        self.ok = self.ok and condition
        timing = f" ({(time.perf_counter() - started) * 1000:.1f} ms)" if started else ""
        self.lines.append(f"{'ok  ' if condition else 'FAIL'} {what}{timing}")
        return condition


class DemoHandler(EchoHandler):
    """The echo server's handler plus one thing: as each session opens, the server sends the
    client a request; the client answers with its protocol's name, and the answer is kept in
    :attr:`answers` (name -> round-trip seconds, or the error)."""

    def __init__(self) -> None:
        self.answers: dict[str, float | BaseException] = {}
        self.changed = asyncio.Event()

    async def on_connected(self, session: Any) -> None:
        """Ask the new client who it is; record the answer."""
        await super().on_connected(session)
        started = time.perf_counter()
        try:
            reply = await session.request(HELLO, biz_type=1, timeout=STEP_TIMEOUT)
        except Exception as exc:  # recorded as this session's failure, shown in the summary
            self.answers[f"session {session.id}"] = exc
        else:
            self.answers[bytes(reply.payload).decode("utf-8", "replace")] = (
                time.perf_counter() - started
            )
        self.changed.set()

    async def wait_answer(self, name: str) -> float | BaseException:
        """Wait until the client *name* answered the server's request."""
        while name not in self.answers:
            self.changed.clear()
            await self.changed.wait()
        return self.answers[name]


async def _within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, STEP_TIMEOUT)


def _client_url(name: str, address: tuple[str, int], ca: Path) -> str:
    where = format_address(name, address)
    url = where if name in ("ws", "wss") else f"{name}://{where}"
    if name in ("tls", "wss", "quic"):
        # The certificate names localhost, 127.0.0.1 and ::1; trust it explicitly.
        url += f"?ca={ca}"
    return url


async def _exercise(report: ProtocolReport, client: Any, handler: DemoHandler) -> Any:
    """Connect over one protocol and run the per-session checks; return the session or
    ``None`` when it could not connect."""
    started = time.perf_counter()
    try:
        session = await client.connect(report.url, timeout=STEP_TIMEOUT)
    except Exception as exc:
        report.check(False, f"connect: {exc}")
        return None
    report.check(True, "connected", started)

    started = time.perf_counter()
    try:
        asked = await _within(session.receive())
        await asked.respond(report.name.encode())
        answer = await _within(handler.wait_answer(report.name))
        report.check(asked.is_request and bytes(asked.payload) == HELLO
                     and isinstance(answer, float),
                     "server -> client request answered", started)
    except Exception as exc:
        report.check(False, f"server -> client request: {exc!r}")

    started = time.perf_counter()
    try:
        await session.send(b"one-way " + report.name.encode(), biz_type=3)
        echo = await _within(session.receive())
        report.check(not echo.is_request and echo.biz_type == 3
                     and bytes(echo.payload) == b"one-way " + report.name.encode(),
                     "one-way message echoed back", started)
    except Exception as exc:
        report.check(False, f"one-way message: {exc!r}")

    started = time.perf_counter()
    try:
        reply = await session.request(b"ping " + report.name.encode(), biz_type=7,
                                      timeout=STEP_TIMEOUT)
        report.check(reply.biz_type == 7 and bytes(reply.payload) == b"ping "
                     + report.name.encode(), "client -> server request answered", started)
    except Exception as exc:
        report.check(False, f"client -> server request: {exc!r}")
    return session


async def _demo(folder: Path, out: TextIO) -> bool:
    import msgtrans.io_asyncio as mt

    from ..certs import write_self_signed

    cert, key = write_self_signed(folder)
    configs = listeners(dict.fromkeys(PROTOCOLS, "127.0.0.1:0"), cert, key)
    handler = DemoHandler()
    server = mt.Transport.builder().build()
    client = mt.Transport.builder().build()
    reports = [ProtocolReport(c.name) for c in configs]
    serving: asyncio.Task[None] | None = None
    try:
        stream = server.accept([c.config for c in configs])
        await stream.start()
        serving = asyncio.get_running_loop().create_task(server.serve(stream, handler))
        for report, address in zip(reports, stream.addresses, strict=True):
            report.url = _client_url(report.name, address, cert)
        print(f"echo server on 127.0.0.1 (tcp, tls, ws, wss, quic); certificate {cert}\n",
              file=out)

        sessions = [await _exercise(r, client, handler) for r in reports]

        # A broadcast: one call on the server side reaches the session of every protocol.
        started = time.perf_counter()
        results = await server.send_to_all(NEWS, biz_type=NEWS_BIZ_TYPE)
        live = sum(1 for s in sessions if s is not None)
        for report, session in zip(reports, sessions, strict=True):
            if session is None:
                continue
            try:
                news = await _within(session.receive())
                report.check(len(results) == live and all(r is None for r in results)
                             and bytes(news.payload) == NEWS and news.biz_type == NEWS_BIZ_TYPE,
                             f"broadcast to all {live} clients reached this one", started)
            except Exception as exc:
                report.check(False, f"broadcast: {exc!r}")

        # The server shuts down gracefully: each protocol's close, seen by every client.
        shutdown = await server.graceful_shutdown(STEP_TIMEOUT)
        for report, session in zip(reports, sessions, strict=True):
            if session is None:
                continue
            try:
                await _within(session.wait_closed())
                closed = session.closed_event
                report.check(closed is not None and closed.clean and not session.forced,
                             "closed cleanly by the server's graceful shutdown")
            except Exception as exc:
                report.check(False, f"close: {exc!r}")
    finally:
        await server.graceful_shutdown(STEP_TIMEOUT)
        await client.graceful_shutdown(STEP_TIMEOUT)
        if serving is not None:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    for report in reports:
        print(report.url.split("?")[0], file=out)  # the ca is the one printed above
        for line in report.lines:
            print(f"    {line}", file=out)
    print(f"\nserver shutdown: {shutdown.closed_cleanly} closed cleanly, {shutdown.forced} "
          f"forced, {shutdown.messages_flushed} messages flushed, "
          f"{shutdown.elapsed * 1000:.1f} ms", file=out)
    return all(r.ok for r in reports) and shutdown.forced == 0


def run_live_demo(out: TextIO) -> int:
    """Run the live demo, printing its summary on *out*; return 0 when every check passed,
    else 1."""
    started = time.perf_counter()
    print("msgtrans demo: an echo server and a client per protocol, over real sockets on "
          "127.0.0.1", file=out)
    with tempfile.TemporaryDirectory(prefix="msgtrans-demo-") as folder:
        ok = asyncio.run(_demo(Path(folder), out))
    elapsed = time.perf_counter() - started
    print(f"\n{'all checks passed' if ok else 'SOME CHECKS FAILED'} in {elapsed:.2f} s",
          file=out)
    return 0 if ok else 1
