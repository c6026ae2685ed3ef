"""Getting started on trio: a server on TCP and WebSocket, a client requesting over each.
Run it: ``python examples/getting_started_trio.py`` (needs ``pip install 'msgtrans[trio]'``)."""

from __future__ import annotations

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

import msgtrans.io_trio as mt


class Upper:
    """The server's handler: the return value of on_request is the response."""

    async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        """Answer with the payload in capitals."""
        return bytes(message.payload).upper()


async def main() -> None:
    """Serve on two free ports, request over each, shut down."""
    async with mt.Transport() as server, mt.Transport() as client:
        stream = server.accept(["tcp://127.0.0.1:0", "ws://127.0.0.1:0"])
        await stream.start()  # binds now, so the ports are known
        (host, tcp_port), (_, ws_port) = stream.addresses
        async with trio.open_nursery() as nursery:  # serve() runs beside the client
            nursery.start_soon(server.serve, stream, Upper())

            for url in (f"tcp://{host}:{tcp_port}", f"ws://{host}:{ws_port}"):
                session = await client.connect(url)
                reply = await session.request(b"hello")
                print(f"{url.split(':')[0]}: {bytes(reply.payload).decode()}")
                await session.close()

            await server.graceful_shutdown(5)  # serve() returns once it is done


if __name__ == "__main__":
    trio.run(main)
