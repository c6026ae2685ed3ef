"""A small RPC client that reconnects (asyncio): ``method:arg,arg`` requests to a server that is
restarted mid-run on the same port, and what becomes of the calls that were in flight.

The server answers ``add:2,3`` (``5``), ``upper:hello`` (``HELLO``), ``incr:`` (a counter: not
idempotent, calling it twice counts twice), and slow variants ``slow_add:...`` and
``slow_incr:`` (half a second of work), so that calls are in flight when it goes down.  Errors
come back as ``error:...`` and are raised as ``RpcError``.

The client is ``transport.connect(url, reconnect=ReconnectPolicy(...))``, a
``ReconnectingSession``: when the connection is lost it reconnects with backoff, and the same
object carries on.  A call marked ``idempotent=True`` that was in flight at the cut is sent again
on the new connection within its timeout; any other call fails at the cut with a retryable
``TransportError``, reported here, because the server may already have acted on it (the
restarted server's counter shows it started afresh).

The demo: a few calls, then two slow calls in flight (one idempotent, one not), the server shut
down at once (``shutdown()``, nothing answered) and a new one started on the same port, then the
outcomes, more calls, and the reconnect counters.  Run it: ``python examples/rpc_client.py``
(about 1.5 s).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgtrans.io_asyncio as mt

SLOW = 0.5  # seconds a slow_ method works


class RpcError(Exception):
    """The server answered ``error:...``."""


class Methods:
    """The server's handler: one method per name; the state is this server's only."""

    def __init__(self) -> None:
        self.counter = 0
        self.slow_calls = 0
        self.changed = asyncio.Event()  # set whenever a slow call starts

    async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        method, _, rest = bytes(message.payload).decode().partition(":")
        args = rest.split(",") if rest else []
        try:
            if method.startswith("slow_"):
                self.slow_calls += 1
                self.changed.set()
                await asyncio.sleep(SLOW)
                method = method[len("slow_"):]
            return self.call(method, args).encode()
        except (ValueError, LookupError) as exc:
            return f"error:{exc.args[0] if exc.args else exc}".encode()

    def call(self, method: str, args: list[str]) -> str:
        if method == "add":
            return str(sum(int(a) for a in args))
        if method == "upper":
            return ",".join(a.upper() for a in args)
        if method == "incr":
            self.counter += 1
            return str(self.counter)
        raise LookupError(f"no method {method!r}")

    async def wait_slow_calls(self, count: int) -> None:
        """Until *count* slow calls have started here."""
        while self.slow_calls < count:
            self.changed.clear()
            await self.changed.wait()


class Server:
    """A server on *port* (0: a free one) with its own Methods."""

    def __init__(self) -> None:
        self.transport = mt.Transport()
        self.methods = Methods()
        self.port = 0
        self.serving: asyncio.Task[mt.ShutdownReport | None] | None = None

    async def start(self, port: int = 0) -> Server:
        stream = self.transport.accept([f"tcp://127.0.0.1:{port}"])
        await stream.start()
        self.port = stream.addresses[0][1]
        self.serving = asyncio.create_task(self.transport.serve(stream, self.methods))
        return self

    async def stop(self, *, at_once: bool = False) -> None:
        """``shutdown()`` (requests in flight are not answered) or a graceful shutdown."""
        if at_once:
            await self.transport.shutdown(1)
        else:
            await self.transport.graceful_shutdown(2)
        if self.serving is not None:
            await asyncio.wait_for(self.serving, 2)


class RpcClient:
    """``await rpc.call("add", 2, 3)`` over a reconnecting session."""

    def __init__(self, session: mt.ReconnectingSession) -> None:
        self.session = session

    async def call(self, method: str, *args: object, idempotent: bool = False,
                   timeout: float = 5.0) -> str:
        request = f"{method}:{','.join(str(a) for a in args)}".encode()
        reply = bytes((await self.session.request(request, idempotent=idempotent,
                                                  timeout=timeout)).payload).decode()
        if reply.startswith("error:"):
            raise RpcError(reply[len("error:"):])
        return reply


async def show(rpc: RpcClient, method: str, *args: object, idempotent: bool = False) -> None:
    """Call and print the outcome, whatever it is."""
    call = f"{method}({', '.join(repr(a) for a in args)})"
    reconnects = rpc.session.reconnects
    try:
        result = await rpc.call(method, *args, idempotent=idempotent)
        again = " (sent again after the reconnect)" if rpc.session.reconnects > reconnects else ""
        print(f"{call} -> {result}{again}")
    except RpcError as exc:
        print(f"{call} -> RpcError: {exc}")
    except mt.TransportError as exc:
        print(f"{call} -> failed: {exc.error_code} (retryable={exc.retryable}), not retried: "
              f"not idempotent")


async def main() -> None:
    server = await Server().start()
    policy = mt.ReconnectPolicy(initial_delay=0.05, max_delay=0.2)
    async with mt.Transport() as client:
        session = await client.connect(f"tcp://127.0.0.1:{server.port}", timeout=5,
                                       reconnect=policy)

        def disconnected(s: mt.ReconnectingSession, info: Any) -> None:
            why = "closed by the server" if info.error is None else info.error.error_code
            print(f"[link] disconnected ({why})")

        session.on_disconnected(disconnected)
        session.on_reconnected(lambda s, attempts: print(
            f"[link] reconnected after {attempts} attempt(s)"))
        rpc = RpcClient(session)

        await show(rpc, "add", 2, 3)
        await show(rpc, "upper", "hello")
        await show(rpc, "incr")
        await show(rpc, "incr")
        await show(rpc, "divide", 1, 0)

        # Two slow calls in flight (the server works on the first, the second waits its turn:
        # one session's requests are served in order), then the server goes down without
        # answering either.
        in_flight = [asyncio.create_task(show(rpc, "slow_add", 40, 2, idempotent=True)),
                     asyncio.create_task(show(rpc, "slow_incr"))]
        await server.methods.wait_slow_calls(1)
        print("-- the server stops (in-flight calls unanswered) and starts again, same port")
        await server.stop(at_once=True)
        server = await Server().start(server.port)
        await asyncio.gather(*in_flight)

        await show(rpc, "incr")  # the new server's counter: its state started afresh
        await show(rpc, "add", 1, 1)
        print(f"reconnects: {session.reconnects}, metrics: {dict(client.stats().reconnects)}, "
              f"calls answered by the new server: {server.methods.slow_calls} slow, "
              f"counter {server.methods.counter}")
        await session.close()
    await server.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # the loss is logged at WARNING: quiet here
    asyncio.run(main())
