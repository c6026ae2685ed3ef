"""An echo server and a client in one trio program: connect, request, receive, serve with a
handler, graceful shutdown.  Run it: ``python examples/trio_echo.py`` (needs
``pip install 'msgtrans[trio]'``)."""

from __future__ import annotations

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

import msgtrans.io_trio as mt


class Echo:
    """The server's handler: every method is optional and async."""

    async def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        """The return value is the response."""
        return b"echo: " + bytes(message.payload)

    async def on_message(self, session: mt.Session, message: mt.Message) -> None:
        """One-way messages go back to their sender."""
        await session.send(message.payload, biz_type=message.biz_type)


async def main() -> None:
    """Serve on a free port, talk to it, shut both ends down."""
    # `async with transport:` opens the nursery its sessions and listeners live in.
    async with mt.Transport.builder().build() as server, \
            mt.Transport.builder().request_timeout(5).build() as client:
        stream = server.accept(["tcp://127.0.0.1:0"])
        await stream.start()  # binds now, so the port is known
        host, port = stream.addresses[0]
        async with trio.open_nursery() as nursery:  # serve() runs here, beside the client
            nursery.start_soon(server.serve, stream, Echo())

            session = await client.connect(f"tcp://{host}:{port}", timeout=5)
            reply = await session.request(b"hello")  # the builder's request_timeout bounds it
            print(bytes(reply.payload).decode())
            await session.send(b"one-way", biz_type=3)
            with trio.fail_after(5):  # cancellation = timeout; receive() never loses a message
                echoed = await session.receive()
            print(bytes(echoed.payload).decode())

            report = await server.graceful_shutdown(5)  # serve() returns once it is done
        print(f"shutdown: {report.closed_cleanly} closed cleanly, {report.forced} forced")


if __name__ == "__main__":
    trio.run(main)
