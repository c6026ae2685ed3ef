"""Getting started without an event loop: a server on TCP and WebSocket, a client requesting
over each, all blocking calls.  Run it: ``python examples/getting_started_sync.py``."""

from __future__ import annotations

import threading

import msgtrans.io_sync as mt


class Upper:
    """The server's handler: plain methods, run in serve()'s pool of threads."""

    def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
        """Answer with the payload in capitals."""
        return bytes(message.payload).upper()


def main() -> None:
    """Serve on two free ports, request over each, shut down."""
    with mt.Transport() as server, mt.Transport() as client:
        stream = server.accept(["tcp://127.0.0.1:0", "ws://127.0.0.1:0"])
        stream.start()  # binds now, so the ports are known
        (host, tcp_port), (_, ws_port) = stream.addresses
        # serve() blocks until the transport shuts down: give it a thread.
        serving = threading.Thread(target=server.serve, args=(stream, Upper()))
        serving.start()

        for url in (f"tcp://{host}:{tcp_port}", f"ws://{host}:{ws_port}"):
            session = client.connect(url, timeout=5)
            reply = session.request(b"hello", timeout=5)
            print(f"{url.split(':')[0]}: {bytes(reply.payload).decode()}")
            session.close()

        server.graceful_shutdown(5)  # serve() then returns
        serving.join(5)


if __name__ == "__main__":
    main()
