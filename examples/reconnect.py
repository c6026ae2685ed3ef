"""A client that survives its server's restart (asyncio): ``connect(..., reconnect=policy)``
returns a ReconnectingSession; the server is shut down and started again on the same port, and
the client carries on with the same object.  Run it: ``python examples/reconnect.py`` (it
exits by itself in about a second; see docs/reconnecting.md)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgtrans.io_asyncio as mt


class Echo:
    """The server's handler."""

    async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        return b"echo: " + bytes(message.payload)


async def start_server(port: int = 0) -> tuple[mt.Transport, asyncio.Task[None], int]:
    """A server on *port* (0: a free one); returns it, its serve task and the port."""
    server = mt.Transport()
    stream = server.accept([f"tcp://127.0.0.1:{port}"])
    await stream.start()
    serving = asyncio.create_task(server.serve(stream, Echo()))
    return server, serving, stream.addresses[0][1]


async def stop_server(server: mt.Transport, serving: asyncio.Task[None]) -> None:
    await server.graceful_shutdown(2)
    await asyncio.wait_for(serving, 2)


async def main() -> None:
    server, serving, port = await start_server()
    policy = mt.ReconnectPolicy(initial_delay=0.05, max_delay=1.0)
    async with mt.Transport() as client:
        session = await client.connect(f"tcp://127.0.0.1:{port}", timeout=5,
                                       reconnect=policy)
        lost = asyncio.Event()

        def disconnected(s: mt.ReconnectingSession, info: Any) -> None:
            """Hooks are plain callables, called by the supervisor."""
            why = "closed by the server" if info.error is None else info.error
            print(f"disconnected ({why}), {info.lost_unsent} messages lost unsent")
            lost.set()

        session.on_disconnected(disconnected)
        session.on_reconnected(lambda s, attempts: print(
            f"reconnected after {attempts} attempt(s)"))

        reply = await session.request(b"before the restart")
        print(bytes(reply.payload).decode())

        await stop_server(server, serving)
        await asyncio.wait_for(lost.wait(), 5)
        try:
            await session.send(b"while down", wait_reconnect=False)
        except mt.TransportConnectionError as exc:
            print(f"while down: {exc.error_code}, retryable={exc.retryable}")
        server, serving, _ = await start_server(port)  # the same port

        # request() waits for the connection to come back (within its timeout).
        reply = await session.request(b"after the restart", timeout=5)
        print(bytes(reply.payload).decode())
        print(f"reconnects: {session.reconnects}, "
              f"metrics: {dict(client.stats().reconnects)}")
        await session.close()
    await stop_server(server, serving)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # the loss is logged at WARNING: quiet here
    asyncio.run(main())
