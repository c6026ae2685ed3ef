"""A server that decides who gets a session: an admission hook refusing WebSocket upgrades by
path and header (HTTP 403) and TCP peers by address, a per-peer session limit, a connection
rate limit and a short first-packet timeout; the refusals counted by reason.

Run it: ``python examples/admission.py`` (asyncio; the hook is the same on trio and sync).
"""

from __future__ import annotations

import asyncio

import msgtrans.io_asyncio as mt
from msgtrans.core.admission import Candidate, Refuse

BLOCKED = {"192.0.2.7"}  # addresses never served (a documentation range here)


def admit(candidate: Candidate) -> Refuse | None:
    """Runs on the event loop for every session before accept() hands it out."""
    if candidate.peer_address is not None and candidate.peer_address[0] in BLOCKED:
        return Refuse(reason="blocked address")
    admin = candidate.path is not None and candidate.path.startswith("/admin")
    if admin and candidate.header("authorization") != "Bearer let-me-in":
        return Refuse(403, "the admin path needs a token")
    return None


async def main() -> None:
    server = (mt.Transport.builder()
              .admission(admit)
              .max_sessions_per_peer(100)
              .connection_rate(200, burst=400)
              .first_packet_timeout(5)
              .build())
    stream = server.accept([mt.WebSocketServerConfig("127.0.0.1:0", path=None)])
    await stream.start()
    port = stream.addresses[0][1]

    async def echo() -> None:
        async for session in stream:
            message = await session.receive()
            await session.send(b"echo: " + message.payload)

    serving = asyncio.create_task(echo())
    client = mt.Transport.builder().build()
    try:
        session = await client.connect(f"ws://127.0.0.1:{port}/chat")
        await session.send(b"hello")
        print((await session.receive()).payload.decode())
        try:
            await client.connect(f"ws://127.0.0.1:{port}/admin")
        except mt.TransportError as exc:
            print(f"/admin without a token: {exc.error_code}")
        admin = mt.WebSocketConfig(f"ws://127.0.0.1:{port}/admin",
                                   headers={"Authorization": "Bearer let-me-in"})
        session = await client.connect(admin)
        await session.send(b"admin")
        print((await session.receive()).payload.decode())
        print(f"refused: {dict(server.stats().refusals)}")
    finally:
        await client.graceful_shutdown(2)
        await server.graceful_shutdown(2)
        serving.cancel()


if __name__ == "__main__":
    asyncio.run(main())
