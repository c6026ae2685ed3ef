"""A WebSocket client that sends a text message is not speaking msgtrans (packets travel as
binary messages): every backend's server closes it with 1003, RFC 6455's "unsupported data",
and counts the error; ``text_messages="ignore"`` drops such messages and goes on.  The client
here is the ``websockets`` library, not ours."""

from __future__ import annotations

import anyio
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from msgtrans.core.packet import Packet

from .adapters import WAIT, Backend, Certs, CloseReason, ProtocolError

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
]


def _talk(port: int, first: str | bytes) -> tuple[int | None, bytes | None]:
    """Send *first*, then a msgtrans request; return the close code the server sent (None if
    it stayed open) and the response's payload (None if none came)."""
    with ws_connect(f"ws://127.0.0.1:{port}/", subprotocols=["msgtrans.v1"],  # type: ignore[list-item]
                    open_timeout=WAIT, close_timeout=WAIT) as ws:
        ws.send(first)
        try:
            ws.send(Packet(packet_type=1, message_id=1, payload=b"still there?").encode())
            reply = ws.recv(timeout=WAIT)
        except ConnectionClosed as closed:
            return (closed.rcvd.code if closed.rcvd is not None else None), None
        assert isinstance(reply, bytes)
        return None, Packet.decode(reply).payload


def test_a_text_message_closes_with_1003(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, server.listen("ws", certs) as listener:
            result: list[tuple[int | None, bytes | None]] = []

            async def client() -> None:
                result.append(await anyio.to_thread.run_sync(_talk, listener.port, "hello"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(client)
                session = await listener.accept()
                with pytest.raises(ProtocolError) as caught:
                    await session.receive()
                assert caught.value.error_code == "protocol.text_frame"
                await session.wait_closed()
            assert result == [(1003, None)]
            assert session.close_reason is CloseReason.ERROR
            assert server.raw.stats().errors.get("protocol.text_frame") == 1

    backend.run(body)


def test_text_messages_can_be_ignored(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with backend.transport() as server, \
                server.listen("ws", certs, text_messages="ignore") as listener:
            result: list[tuple[int | None, bytes | None]] = []

            async def client() -> None:
                result.append(await anyio.to_thread.run_sync(_talk, listener.port, "hello"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(client)
                session = await listener.accept()
                request = await session.receive()  # the text message never shows up
                assert request.payload == b"still there?"
                await request.respond(b"yes")
            assert result == [(None, b"yes")]

    backend.run(body)
