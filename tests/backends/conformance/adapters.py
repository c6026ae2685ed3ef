"""One async face for the three backends, so each conformance test is written once.

The test bodies are async functions using anyio (task groups, ``fail_after``, ``Event``), which
runs them on asyncio or on trio.  Each backend is presented through the small wrappers below:

* ``asyncio`` and ``trio``: the body runs in ``asyncio.run`` / ``trio.run`` (through
  ``anyio.run``) and every call is the backend's own coroutine, awaited as is.
* ``sync``: the body runs under asyncio and every blocking call goes to a worker thread of a
  pool owned by this run (not the loop's default one, which has only a few threads: 100
  concurrent requests would block them all while the answers wait for a thread).  Blocking calls
  always get a timeout, so a failing test cannot leave a thread stuck in the pool's shutdown.

The wrappers only translate; every assertion stays in the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import trio

import msgtrans.io_asyncio as amt
import msgtrans.io_sync as smt
import msgtrans.io_trio as tmt

BACKENDS = ["asyncio", "trio", "sync"]
PROTOCOLS = ["tcp", "tls", "ws", "wss", "quic"]
TLS_PROTOCOLS = ["tls", "wss", "quic"]
WAIT = 5.0  # seconds any single wait may take
RUN_LIMIT = 20.0  # seconds a whole test body may take
Certs = tuple[Path, Path]

# The names every backend shares: tests take them from here, whichever backend they drive.
TransportConnectionError = amt.TransportConnectionError
TransportTimeoutError = amt.TransportTimeoutError
TransportError = amt.TransportError
ProtocolError = amt.ProtocolError
ConfigurationError = amt.ConfigurationError
CloseReason = amt.CloseReason
SessionState = amt.SessionState
PacketType = amt.PacketType


def server_config(lib: ModuleType, proto: str, certs: Certs, *, host: str = "127.0.0.1",
                  port: int = 0, **options: Any) -> Any:
    """A loopback server config for *proto* on *port* of *host* (default a free port;
    ``"[::1]"`` for IPv6); *options* go to the config."""
    cert, key = certs
    tls = lib.ServerTlsConfig(cert, key)
    address = f"{host}:{port}"
    if proto == "tcp":
        return lib.TcpServerConfig(address, **options)
    if proto == "tls":
        return lib.TcpServerConfig(address, tls=tls, **options)
    if proto == "ws":
        return lib.WebSocketServerConfig(address, **options)
    if proto == "wss":
        return lib.WebSocketServerConfig(address, tls=tls, **options)
    return lib.QuicServerConfig(address, cert_file=cert, key_file=key, **options)


def client_url(proto: str, port: int, certs: Certs, *, trusted: bool = True,
               host: str = "localhost") -> str:
    """The URL of a loopback server; *trusted* adds the self-signed CA for TLS protocols."""
    path = "/" if proto in ("ws", "wss") else ""
    query = f"?ca={certs[0]}" if trusted and proto in TLS_PROTOCOLS else ""
    return f"{proto}://{host}:{port}{path}{query}"


# --- the wrappers -----------------------------------------------------------------------------


class Msg:
    """A received message; ``respond`` is awaitable on every backend."""

    def __init__(self, backend: Backend, raw: Any) -> None:
        self._backend = backend
        self.raw = raw
        self.payload = bytes(raw.payload)
        self.biz_type: int = raw.biz_type
        self.ext_header = bytes(raw.ext_header)
        self.is_request: bool = raw.is_request
        self.packet_type: Any = raw.packet_type

    async def respond(self, data: bytes) -> None:
        await self._backend.call(self.raw.respond, data)


class Session:
    def __init__(self, backend: Backend, raw: Any) -> None:
        self._backend = backend
        self.raw = raw

    # Plain attributes read the same on every backend.
    def __getattr__(self, name: str) -> Any:
        if name in ("id", "state", "close_reason", "is_closed", "protocol", "peer_address",
                    "pending_work", "closed_event", "connection"):
            return getattr(self.raw, name)
        raise AttributeError(name)

    async def send(self, data: bytes, **kw: Any) -> None:
        await self._backend.call(self.raw.send, data, **kw)

    async def request(self, data: bytes, **kw: Any) -> Msg:
        return Msg(self._backend, await self._backend.call(self.raw.request, data, **kw))

    async def receive(self) -> Msg:
        return Msg(self._backend, await self._backend.receive(self.raw, WAIT))

    async def receive_many(self, max_messages: int | None = None) -> list[Msg]:
        """Every queued message (at most *max_messages*), waiting for the first."""
        kw: dict[str, Any] = {"timeout": WAIT} if self._backend.name == "sync" else {}
        raw = await self._backend.call(self.raw.receive_many, max_messages, **kw)
        return [Msg(self._backend, m) for m in raw]

    async def receive_within(self, seconds: float) -> Msg | None:
        """A message if one came within *seconds*, else None (a timeout/cancel took nothing)."""
        raw = await self._backend.receive_within(self.raw, seconds)
        return None if raw is None else Msg(self._backend, raw)

    async def close(self) -> None:
        await self._backend.close_session(self.raw)

    async def wait_closed(self) -> None:
        await self._backend.wait_closed(self.raw)


class Listener:
    def __init__(self, backend: Backend, stream: Any) -> None:
        self._backend = backend
        self.raw = stream
        self.port: int = stream.addresses[0][1]

    async def accept(self) -> Session:
        return Session(self._backend, await self._backend.accept(self.raw))


class Transport:
    def __init__(self, backend: Backend, raw: Any) -> None:
        self._backend = backend
        self.raw = raw

    def session_count(self) -> int:
        count: int = self.raw.session_count()
        return count

    async def connect(self, url: str) -> Session:
        return Session(self._backend, await self._backend.connect(self.raw, url))

    async def send(self, session: Session, data: bytes, **kw: Any) -> None:
        await self._backend.call(self.raw.send, session.raw, data, **kw)

    async def receive(self, session: Session) -> Msg:
        return Msg(self._backend, await self._backend.transport_receive(self.raw, session.raw))

    async def request(self, session: Session, data: bytes, **kw: Any) -> Msg:
        raw = await self._backend.call(self.raw.request, session.raw, data, **kw)
        return Msg(self._backend, raw)

    async def messages_until_closed(self, session: Session) -> list[Msg]:
        """Everything ``message_stream`` yields for *session* before it ends."""
        return [Msg(self._backend, m)
                for m in await self._backend.message_stream(self.raw, session.raw)]

    async def send_to_all(self, data: bytes, **kw: Any) -> list[BaseException | None]:
        results: list[BaseException | None] = await self._backend.call(
            self.raw.send_to_all, data, **kw)
        return results

    async def broadcast(self, sessions: list[Session], data: bytes) -> list[BaseException | None]:
        results: list[BaseException | None] = await self._backend.call(
            self.raw.broadcast, [s.raw for s in sessions], data)
        return results

    async def graceful_shutdown(self, timeout: float = 2.0) -> Any:
        return await self._backend.call(self.raw.graceful_shutdown, timeout)

    async def shutdown(self, timeout: float = 1.0) -> Any:
        return await self._backend.call(self.raw.shutdown, timeout)

    @contextlib.asynccontextmanager
    async def listen(self, proto: str, certs: Certs, **options: Any) -> AsyncIterator[Listener]:
        """Listen on *proto* (a free loopback port); *options* go to :func:`server_config`."""
        stream = self.raw.accept([server_config(self._backend.lib, proto, certs, **options)])
        await self._backend.call(stream.start)
        try:
            yield Listener(self._backend, stream)
        finally:
            await self._backend.close_stream(stream)

    @contextlib.asynccontextmanager
    async def serve(self, proto: str, certs: Certs, handler: Any,
                    port: int = 0) -> AsyncIterator[int]:
        """Run ``serve()`` with *handler* (async methods taking these wrappers) in the
        background on *port* (default a free one); yield the port.  Leaving shuts the
        transport down, which ends serve()."""
        stream = self.raw.accept([server_config(self._backend.lib, proto, certs, port=port)])
        await self._backend.call(stream.start)  # to learn the port before serving
        native = self._backend.native_handler(handler)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._backend.serve, self.raw, stream, native)
            try:
                yield stream.addresses[0][1]
            finally:
                await self.graceful_shutdown(2.0)


# --- the backends -----------------------------------------------------------------------------


class Backend:
    """How one backend runs a test body and makes its calls awaitable."""

    name: str
    lib: ModuleType
    anyio_backend = "asyncio"

    @property
    def logger(self) -> str:
        return f"msgtrans.io_{self.name}"

    def run(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run *body* in a fresh event loop, bounded, and check it left no task behind."""

        async def main() -> None:
            before = self._task_count()
            with anyio.fail_after(RUN_LIMIT):
                await body()
            await anyio.sleep(0)  # let done-callbacks run
            assert self._task_count() == before, "tasks left behind"

        anyio.run(main, backend=self.anyio_backend)

    def _task_count(self) -> int:
        return len(asyncio.all_tasks())

    @contextlib.asynccontextmanager
    async def transport(self, *, request_timeout: float | None = None,
                        connect_timeout: float | None = None,
                        **session_settings: int) -> AsyncIterator[Transport]:
        """A transport; *session_settings* go to the builder's ``session_settings``."""
        builder = self.lib.Transport.builder()
        if request_timeout is not None:
            builder.request_timeout(request_timeout)
        if connect_timeout is not None:
            builder.connect_timeout(connect_timeout)
        if session_settings:
            builder.session_settings(**session_settings)
        async with self._open(builder) as raw:
            try:
                yield Transport(self, raw)
            finally:
                await self.call(raw.graceful_shutdown, 2.0)
            # Nothing left behind: every session finished and was forgotten.
            assert raw.session_count() == 0

    # Overridden per backend.
    @contextlib.asynccontextmanager
    async def _open(self, builder: Any) -> AsyncIterator[Any]:
        yield builder.build()

    async def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await fn(*args, **kw)

    async def connect(self, transport: Any, url: str) -> Any:
        return await transport.connect(url)

    async def receive(self, session: Any, timeout: float) -> Any:
        return await session.receive()

    async def transport_receive(self, transport: Any, session: Any) -> Any:
        return await transport.receive(session)

    async def receive_within(self, session: Any, seconds: float) -> Any:
        with anyio.move_on_after(seconds):
            return await session.receive()
        return None

    async def message_stream(self, transport: Any, session: Any) -> list[Any]:
        return [m async for m in transport.message_stream(session)]

    async def close_session(self, session: Any) -> None:
        await session.close()

    async def wait_closed(self, session: Any) -> None:
        await session.wait_closed()

    async def accept(self, stream: Any) -> Any:
        return await stream.__anext__()

    async def close_stream(self, stream: Any) -> None:
        await stream.aclose()

    async def serve(self, transport: Any, stream: Any, handler: Any) -> None:
        await transport.serve(stream, handler)

    def native_handler(self, handler: Any) -> Any:
        return _AsyncHandler(self, handler)

    def quic_listener_sessions(self, transport: Any) -> set[Any]:
        """The sessions in the table of *transport*'s only QUIC listener (private state, read
        here only so each backend's layout is named once)."""
        (listener,) = transport._quic_listeners
        return set(listener._sessions.values())


class AsyncioBackend(Backend):
    name = "asyncio"
    lib = amt


class TrioBackend(Backend):
    name = "trio"
    lib = tmt
    anyio_backend = "trio"

    def _task_count(self) -> int:
        living: int = trio.lowlevel.current_statistics().tasks_living
        return living

    def quic_listener_sessions(self, transport: Any) -> set[Any]:
        (listener,) = transport._quic_listeners
        return {session for session, _seat in listener._seats.values()}

    @contextlib.asynccontextmanager
    async def _open(self, builder: Any) -> AsyncIterator[Any]:
        # A trio transport's tasks live in its nursery, opened by 'async with'.
        async with builder.build() as raw:
            yield raw


class SyncBackend(Backend):
    name = "sync"
    lib = smt

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def run(self, body: Callable[[], Awaitable[None]]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="conformance-sync")
        try:
            super().run(body)
        finally:
            self._pool.shutdown(wait=True)  # every blocking call had a timeout
            self._pool = None

    async def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kw))

    async def connect(self, transport: Any, url: str) -> Any:
        return await self.call(transport.connect, url, timeout=WAIT)

    async def receive(self, session: Any, timeout: float) -> Any:
        return await self.call(session.receive, timeout=timeout)

    async def transport_receive(self, transport: Any, session: Any) -> Any:
        return await self.call(transport.receive, session, timeout=WAIT)

    async def receive_within(self, session: Any, seconds: float) -> Any:
        try:
            return await self.call(session.receive, timeout=seconds)
        except smt.TransportTimeoutError as exc:
            timed_out = exc
        # Only this backend reports a timed-out receive as an error: check it names what timed
        # out (the async backends are cancelled instead, which carries nothing).
        assert (timed_out.operation, timed_out.session_id) == ("receive", session.id)
        return None

    async def message_stream(self, transport: Any, session: Any) -> list[Any]:
        return await self.call(lambda: list(transport.message_stream(session, timeout=WAIT)))  # type: ignore[no-any-return]

    async def close_session(self, session: Any) -> None:
        await self.call(session.close, timeout=WAIT)

    async def wait_closed(self, session: Any) -> None:
        await self.call(session.wait_closed, WAIT)

    async def accept(self, stream: Any) -> Any:
        return await self.call(stream.accept, timeout=WAIT)

    async def close_stream(self, stream: Any) -> None:
        await self.call(stream.close)

    async def serve(self, transport: Any, stream: Any, handler: Any) -> None:
        await self.call(transport.serve, stream, handler, threads=2)

    def native_handler(self, handler: Any) -> Any:
        return _SyncHandler(self, handler, asyncio.get_running_loop())

    def quic_listener_sessions(self, transport: Any) -> set[Any]:
        (listener,) = transport._quic_listeners
        with transport._loop.lock:  # the I/O thread changes the table under this lock
            return set(listener._sessions.values())


def make_backend(name: str) -> Backend:
    """A fresh backend object (the sync one holds its run's thread pool)."""
    return {"asyncio": AsyncioBackend, "trio": TrioBackend, "sync": SyncBackend}[name]()


# --- serve() handlers -------------------------------------------------------------------------
# Tests write one handler with async methods taking the wrappers; these give each backend the
# handler it expects.  A missing method stays missing, so the backend's defaults apply.

_HANDLER_METHODS = ("on_connected", "on_message", "on_request", "on_error", "on_disconnected")


def _wrap_args(backend: Backend, args: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = [Session(backend, args[0])]
    for arg in args[1:]:
        out.append(Msg(backend, arg) if hasattr(arg, "payload") else arg)
    return out


class _AsyncHandler:
    def __init__(self, backend: Backend, handler: Any) -> None:
        for name in _HANDLER_METHODS:
            method = getattr(handler, name, None)
            if method is not None:
                setattr(self, name, self._wrap(backend, method))

    @staticmethod
    def _wrap(backend: Backend, method: Callable[..., Awaitable[Any]]
              ) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any) -> Any:
            return await method(*_wrap_args(backend, args))

        return call


class _SyncHandler:
    """io_sync calls its handler from worker threads: run the async handler on the test's
    loop and wait for it there, so its exceptions reach the backend as they would natively."""

    def __init__(self, backend: Backend, handler: Any, loop: asyncio.AbstractEventLoop) -> None:
        for name in _HANDLER_METHODS:
            method = getattr(handler, name, None)
            if method is not None:
                setattr(self, name, self._wrap(backend, method, loop))

    @staticmethod
    def _wrap(backend: Backend, method: Callable[..., Awaitable[Any]],
              loop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            async def run() -> Any:
                return await method(*_wrap_args(backend, args))

            return asyncio.run_coroutine_threadsafe(run(), loop).result(WAIT)

        return call


# --- a server in a thread, for the cross-backend matrix ----------------------------------------


class ServerThread:
    """A server of one backend serving *handler* in its own thread and event loop.

    The bound port comes back through a queue; ``stop()`` asks the loop to leave (it polls a
    threading.Event: no cross-loop wakeup to get wrong), joins the thread and re-raises what
    the server raised.
    """

    def __init__(self, backend: str, proto: str, certs: Certs,
                 handler: Callable[[], Any]) -> None:
        self._backend = make_backend(backend)
        self._proto, self._certs, self._handler = proto, certs, handler
        self._ports: queue.Queue[int | BaseException] = queue.Queue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"test-{backend}-server")
        self._thread.start()
        got = self._ports.get(timeout=WAIT)
        if isinstance(got, BaseException):
            self._thread.join(WAIT)
            raise got
        self.port = got

    def _run(self) -> None:
        try:
            self._backend.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ports.put(exc)

    async def _main(self) -> None:
        async with self._backend.transport() as server, \
                server.serve(self._proto, self._certs, self._handler()) as port:
            self._ports.put(port)
            while not self._stop.is_set():
                await anyio.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT + RUN_LIMIT)
        assert not self._thread.is_alive(), "the server thread did not stop"
        if self._error is not None:
            raise self._error


@contextlib.contextmanager
def server_thread(backend: str, proto: str, certs: Certs,
                  handler: Callable[[], Any]) -> Iterator[ServerThread]:
    server = ServerThread(backend, proto, certs, handler)
    try:
        yield server
    finally:
        server.stop()


# --- session pools (transport.pool) ------------------------------------------------------------


class Pool:
    """A ``transport.pool()`` of any backend; ``lease`` is an async context manager on all."""

    def __init__(self, backend: Backend, raw: Any) -> None:
        self._backend = backend
        self.raw = raw

    def status(self) -> Any:
        return self.raw.status()

    @property
    def closed(self) -> bool:
        closed: bool = self.raw.closed
        return closed

    def sessions(self) -> list[Session]:
        return [Session(self._backend, s) for s in self.raw.sessions()]

    async def request(self, data: bytes, **kw: Any) -> Msg:
        return Msg(self._backend, await self._backend.call(self.raw.request, data, **kw))

    async def send(self, data: bytes, **kw: Any) -> None:
        await self._backend.call(self.raw.send, data, **kw)

    @contextlib.asynccontextmanager
    async def lease(self, timeout: float | None = None) -> AsyncIterator[Session]:
        if isinstance(self._backend, SyncBackend):
            cm = self.raw.lease(timeout)
            session = await self._backend.call(cm.__enter__)
            try:
                yield Session(self._backend, session)
            finally:
                await self._backend.call(cm.__exit__, None, None, None)
        else:
            async with self.raw.lease(timeout) as session:
                yield Session(self._backend, session)

    async def close(self) -> None:
        await self._backend.call(self.raw.close, 2.0)


async def open_pool(backend: Backend, transport: Transport, url: str, **kw: Any) -> Pool:
    """``transport.pool(url, **kw)`` on any backend."""
    return Pool(backend, await backend.call(transport.raw.pool, url, **kw))
