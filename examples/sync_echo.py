"""An echo server and a client in one blocking program: connect, request, receive, serve with a
handler, graceful shutdown.  Run it: ``python examples/sync_echo.py``."""

from __future__ import annotations

import threading

import msgtrans.io_sync as mt


class Echo:
    """The server's handler: every method is optional and plain; they run in serve()'s pool
    of threads, one session's messages in order."""

    def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        """The return value is the response."""
        return b"echo: " + bytes(message.payload)

    def on_message(self, session: mt.Session, message: mt.Message) -> None:
        """One-way messages go back to their sender."""
        session.send(message.payload, biz_type=message.biz_type)


def main() -> None:
    """Serve on a free port, talk to it, shut both ends down."""
    with mt.Transport.builder().build() as server, \
            mt.Transport.builder().request_timeout(5).build() as client:
        stream = server.accept(["tcp://127.0.0.1:0"])
        stream.start()  # binds now, so the port is known
        host, port = stream.addresses[0]
        # serve() blocks until the transport shuts down: give it a thread.
        serving = threading.Thread(target=server.serve, args=(stream, Echo()))
        serving.start()

        session = client.connect(f"tcp://{host}:{port}", timeout=5)
        reply = session.request(b"hello")  # the builder's request_timeout bounds it
        print(bytes(reply.payload).decode())
        session.send(b"one-way", biz_type=3)
        echoed = session.receive(timeout=5)  # every blocking call takes a timeout
        print(bytes(echoed.payload).decode())

        report = server.graceful_shutdown(5)  # from this thread: serve() then returns
        serving.join(5)
        print(f"shutdown: {report.closed_cleanly} closed cleanly, {report.forced} forced")


if __name__ == "__main__":
    main()
