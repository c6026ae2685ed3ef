"""``python -m msgtrans demo``: the echo server and a client per protocol over real sockets, on
any backend (``--backend asyncio``, the default, ``trio`` or ``sync``).

In one process, on 127.0.0.1 with free ports and a freshly generated self-signed certificate:
an echo server (the one ``python -m msgtrans serve`` runs) listens on tcp, tls, ws, wss and
quic, and one client connects over each.  For every protocol the demo checks that the server's
request reaches the client and its answer comes back, that a one-way message is echoed, that a
request is answered, and that a broadcast from the server reaches every client; then the server
shuts down gracefully and every client must see a clean close.  It prints one block per
protocol with ``ok``/``FAIL`` lines and timings, and the shutdown report.

Everything it opens (sockets, tasks, threads, the temporary certificate directory) is closed
before it returns.  asyncio and trio run the same async code (their APIs are the same; only the
timeout, the event and the background task are the loop's own); the blocking backend has its
own, line for line the same checks without ``await``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

from .serve import PROTOCOLS, EchoHandler, SyncEchoHandler, format_address, listeners

__all__ = ["DemoHandler", "ProtocolReport", "SyncDemoHandler", "run_live_demo"]

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
    :attr:`answers` (name -> round-trip seconds, or the error).

    Args:
        new_event: the event class of the running loop (``asyncio.Event``, ``trio.Event``).
    """

    def __init__(self, new_event: Callable[[], Any] = asyncio.Event) -> None:
        self.answers: dict[str, float | BaseException] = {}
        self._new_event = new_event
        self.changed = new_event()

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
        # Set, then replaced by a fresh one (trio's events cannot be cleared): whoever waits
        # on the old one wakes and looks again.
        self.changed.set()
        self.changed = self._new_event()

    async def wait_answer(self, name: str) -> float | BaseException:
        """Wait until the client *name* answered the server's request."""
        while name not in self.answers:
            await self.changed.wait()
        return self.answers[name]


class SyncDemoHandler(SyncEchoHandler):
    """:class:`DemoHandler` for the blocking backend (its methods run in serving threads)."""

    def __init__(self) -> None:
        self.answers: dict[str, float | BaseException] = {}
        self._changed = threading.Condition()

    def on_connected(self, session: Any) -> None:
        """Ask the new client who it is; record the answer."""
        super().on_connected(session)
        started = time.perf_counter()
        value: float | BaseException
        try:
            reply = session.request(HELLO, biz_type=1, timeout=STEP_TIMEOUT)
        except Exception as exc:  # recorded as this session's failure, shown in the summary
            key, value = f"session {session.id}", exc
        else:
            key = bytes(reply.payload).decode("utf-8", "replace")
            value = time.perf_counter() - started
        with self._changed:
            self.answers[key] = value
            self._changed.notify_all()

    def wait_answer(self, name: str) -> float | BaseException:
        """Wait (at most :data:`STEP_TIMEOUT`) until the client *name* answered.

        Raises:
            TimeoutError: it did not.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: name in self.answers, STEP_TIMEOUT):
                raise TimeoutError(f"no answer from {name}")
            return self.answers[name]


@dataclass(frozen=True)
class _Loop:
    """What the async demo needs of its event loop."""

    #: Await the argument, at most :data:`STEP_TIMEOUT`.
    within: Callable[[Awaitable[Any]], Awaitable[Any]]
    #: The loop's event class.
    new_event: Callable[[], Any]
    #: ``async with background(fn, *args):`` runs ``fn(*args)`` meanwhile, cancelled at the end.
    background: Callable[..., contextlib.AbstractAsyncContextManager[None]]


async def _asyncio_within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, STEP_TIMEOUT)


@contextlib.asynccontextmanager
async def _asyncio_background(fn: Callable[..., Awaitable[Any]],
                              *args: Any) -> AsyncIterator[None]:
    task = asyncio.ensure_future(fn(*args))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _trio_loop() -> _Loop:
    import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

    async def within(awaitable: Awaitable[T]) -> T:
        with trio.fail_after(STEP_TIMEOUT):
            return await awaitable

    @contextlib.asynccontextmanager
    async def background(fn: Callable[..., Awaitable[Any]], *args: Any) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fn, *args)
            yield
            nursery.cancel_scope.cancel()

    return _Loop(within, trio.Event, background)


ASYNCIO_LOOP = _Loop(_asyncio_within, asyncio.Event, _asyncio_background)


def _client_url(name: str, address: tuple[str, int], ca: Path) -> str:
    where = format_address(name, address)
    url = where if name in ("ws", "wss") else f"{name}://{where}"
    if name in ("tls", "wss", "quic"):
        # The certificate names localhost, 127.0.0.1 and ::1; trust it explicitly.
        url += f"?ca={ca}"
    return url


async def _exercise(report: ProtocolReport, client: Any, handler: DemoHandler,
                    _within: Callable[[Awaitable[Any]], Awaitable[Any]]) -> Any:
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


async def _demo(folder: Path, out: TextIO, backend: str, loop: _Loop) -> bool:
    mt: Any = importlib.import_module(f"msgtrans.io_{backend}")
    from ..certs import write_self_signed

    cert, key = write_self_signed(folder)
    configs = listeners(dict.fromkeys(PROTOCOLS, "127.0.0.1:0"), cert, key)
    handler = DemoHandler(loop.new_event)
    within = loop.within
    reports = [ProtocolReport(c.name) for c in configs]
    # Leaving the blocks shuts both down (trio: and ends their nurseries) whatever happened.
    async with mt.Transport.builder().build() as server, \
            mt.Transport.builder().build() as client:
        stream = server.accept([c.config for c in configs])
        await stream.start()
        async with loop.background(server.serve, stream, handler):
            for report, address in zip(reports, stream.addresses, strict=True):
                report.url = _client_url(report.name, address, cert)
            print(f"echo server on 127.0.0.1 (tcp, tls, ws, wss, quic); certificate {cert}\n",
                  file=out)

            sessions = [await _exercise(r, client, handler, within) for r in reports]

            # A broadcast: one call on the server side reaches the session of every protocol.
            started = time.perf_counter()
            results = await server.send_to_all(NEWS, biz_type=NEWS_BIZ_TYPE)
            live = sum(1 for s in sessions if s is not None)
            for report, session in zip(reports, sessions, strict=True):
                if session is None:
                    continue
                try:
                    news = await within(session.receive())
                    report.check(_broadcast_ok(results, live, news),
                                 f"broadcast to all {live} clients reached this one", started)
                except Exception as exc:
                    report.check(False, f"broadcast: {exc!r}")

            # The server shuts down gracefully: each protocol's close, seen by every client.
            shutdown = await server.graceful_shutdown(STEP_TIMEOUT)
            for report, session in zip(reports, sessions, strict=True):
                if session is None:
                    continue
                try:
                    await within(session.wait_closed())
                    report.check(_closed_ok(session),
                                 "closed cleanly by the server's graceful shutdown")
                except Exception as exc:
                    report.check(False, f"close: {exc!r}")
    return _summary(reports, shutdown, out)


def _demo_sync(folder: Path, out: TextIO) -> bool:
    """The demo on :mod:`msgtrans.io_sync`: the checks of the async one, blocking."""
    import msgtrans.io_sync as mt

    from ..certs import write_self_signed

    cert, key = write_self_signed(folder)
    configs = listeners(dict.fromkeys(PROTOCOLS, "127.0.0.1:0"), cert, key)
    handler = SyncDemoHandler()
    reports = [ProtocolReport(c.name) for c in configs]
    server = mt.Transport.builder().build()
    client = mt.Transport.builder().build()
    with server, client:
        stream = server.accept([c.config for c in configs])
        stream.start()
        # serve() blocks until the server shuts down, so it gets a thread; this one is the
        # client.
        serving = threading.Thread(target=server.serve, args=(stream, handler),
                                   name="msgtrans-demo-serve")
        serving.start()
        try:
            for report, address in zip(reports, stream.addresses, strict=True):
                report.url = _client_url(report.name, address, cert)
            print(f"echo server on 127.0.0.1 (tcp, tls, ws, wss, quic); certificate {cert}\n",
                  file=out)
            sessions = [_exercise_sync(r, client, handler) for r in reports]

            started = time.perf_counter()
            results = server.send_to_all(NEWS, biz_type=NEWS_BIZ_TYPE, timeout=STEP_TIMEOUT)
            live = sum(1 for s in sessions if s is not None)
            for report, session in zip(reports, sessions, strict=True):
                if session is None:
                    continue
                try:
                    news = session.receive(STEP_TIMEOUT)
                    report.check(_broadcast_ok(results, live, news),
                                 f"broadcast to all {live} clients reached this one", started)
                except Exception as exc:
                    report.check(False, f"broadcast: {exc!r}")

            shutdown = server.graceful_shutdown(STEP_TIMEOUT)
            for report, session in zip(reports, sessions, strict=True):
                if session is None:
                    continue
                try:
                    session.wait_closed(STEP_TIMEOUT)
                    report.check(_closed_ok(session),
                                 "closed cleanly by the server's graceful shutdown")
                except Exception as exc:
                    report.check(False, f"close: {exc!r}")
        finally:
            server.graceful_shutdown(STEP_TIMEOUT)  # ends serve() if a check raised
            serving.join(STEP_TIMEOUT + 2.0)
    return _summary(reports, shutdown, out)


def _exercise_sync(report: ProtocolReport, client: Any, handler: SyncDemoHandler) -> Any:
    """:func:`_exercise`, blocking."""
    started = time.perf_counter()
    try:
        session = client.connect(report.url, timeout=STEP_TIMEOUT)
    except Exception as exc:
        report.check(False, f"connect: {exc}")
        return None
    report.check(True, "connected", started)

    started = time.perf_counter()
    try:
        asked = session.receive(STEP_TIMEOUT)
        asked.respond(report.name.encode())
        answer = handler.wait_answer(report.name)
        report.check(asked.is_request and bytes(asked.payload) == HELLO
                     and isinstance(answer, float),
                     "server -> client request answered", started)
    except Exception as exc:
        report.check(False, f"server -> client request: {exc!r}")

    started = time.perf_counter()
    try:
        session.send(b"one-way " + report.name.encode(), biz_type=3, timeout=STEP_TIMEOUT)
        echo = session.receive(STEP_TIMEOUT)
        report.check(not echo.is_request and echo.biz_type == 3
                     and bytes(echo.payload) == b"one-way " + report.name.encode(),
                     "one-way message echoed back", started)
    except Exception as exc:
        report.check(False, f"one-way message: {exc!r}")

    started = time.perf_counter()
    try:
        reply = session.request(b"ping " + report.name.encode(), biz_type=7,
                                timeout=STEP_TIMEOUT)
        report.check(reply.biz_type == 7 and bytes(reply.payload) == b"ping "
                     + report.name.encode(), "client -> server request answered", started)
    except Exception as exc:
        report.check(False, f"client -> server request: {exc!r}")
    return session


def _broadcast_ok(results: list[Any], live: int, news: Any) -> bool:
    return (len(results) == live and all(r is None for r in results)
            and bytes(news.payload) == NEWS and news.biz_type == NEWS_BIZ_TYPE)


def _closed_ok(session: Any) -> bool:
    closed = session.closed_event
    return closed is not None and bool(closed.clean) and not session.forced


def _summary(reports: list[ProtocolReport], shutdown: Any, out: TextIO) -> bool:
    """Print every protocol's lines and the shutdown report; return whether all passed."""
    for report in reports:
        print(report.url.split("?")[0], file=out)  # the ca is the one printed above
        for line in report.lines:
            print(f"    {line}", file=out)
    print(f"\nserver shutdown: {shutdown.closed_cleanly} closed cleanly, {shutdown.forced} "
          f"forced, {shutdown.messages_flushed} messages flushed, "
          f"{shutdown.elapsed * 1000:.1f} ms", file=out)
    return all(r.ok for r in reports) and shutdown.forced == 0


def run_live_demo(out: TextIO, backend: str = "asyncio") -> int:
    """Run the live demo on *backend* (``asyncio``, ``trio`` or ``sync``), printing its summary
    on *out*; return 0 when every check passed, else 1."""
    started = time.perf_counter()
    print(f"msgtrans demo: an echo server and a client per protocol, over real sockets on "
          f"127.0.0.1 (backend: {backend})", file=out)
    with tempfile.TemporaryDirectory(prefix="msgtrans-demo-") as folder:
        if backend == "sync":
            ok = _demo_sync(Path(folder), out)
        elif backend == "trio":
            import trio  # type: ignore[import-untyped, unused-ignore]

            ok = bool(trio.run(_demo, Path(folder), out, backend, _trio_loop()))
        else:
            ok = asyncio.run(_demo(Path(folder), out, backend, ASYNCIO_LOOP))
    elapsed = time.perf_counter() - started
    print(f"\n{'all checks passed' if ok else 'SOME CHECKS FAILED'} in {elapsed:.2f} s",
          file=out)
    return 0 if ok else 1
