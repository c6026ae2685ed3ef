"""The asyncio stream driver reads a plain TCP connection through the decoder's own
``get_buffer`` while the connection is open and switches back to the TCP machine's checked one
once it closed: good packets before bad bytes still arrive in order, the session then fails
with the decoder's error, and asyncio never sees ``get_buffer`` raise (which it would log as a
fatal error)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import msgtrans.io_asyncio as mt
from msgtrans.core.packet import Packet, PacketType
from msgtrans.io_asyncio._stream import StreamIO

pytestmark = [pytest.mark.network]
WAIT = 10.0


async def _bad_input_session(payloads: list[bytes], garbage: bytes) -> tuple[list[bytes], str,
                                                                              bool, bool]:
    server = mt.Transport.builder().shutdown_timeout(1.0).build()
    async with server:
        stream = server.accept([mt.TcpServerConfig("127.0.0.1:0")])
        await stream.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", stream.addresses[0][1])
        session = await asyncio.wait_for(stream.__anext__(), WAIT)
        io = session._io
        assert isinstance(io, StreamIO)
        open_fast = io.get_buffer == io._machine.open_get_buffer  # type: ignore[attr-defined]
        wire = b"".join(
            Packet(PacketType.ONE_WAY, message_id=i + 1, payload=p).encode()
            for i, p in enumerate(payloads)
        )
        writer.write(wire + garbage)
        await writer.drain()
        got: list[bytes] = []
        code = ""
        try:
            while True:
                got.append(bytes((await asyncio.wait_for(session.receive(), WAIT)).payload))
        except mt.ProtocolError as exc:
            code = exc.error_code
        switched = io.get_buffer == io._machine.get_buffer
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(reader.read(65536), WAIT):
                pass
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        await stream.aclose()
    return got, code, open_fast, switched


@settings(max_examples=15, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=4),
    garbage=st.binary(min_size=16, max_size=64).map(lambda b: b"\xff" + b[1:]),
)
def test_good_packets_then_garbage(payloads: list[bytes], garbage: bytes) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(handler)
    try:
        got, code, open_fast, switched = asyncio.run(_bad_input_session(payloads, garbage))
    finally:
        asyncio_log.removeHandler(handler)
    assert open_fast  # read through the decoder while open
    assert got == payloads  # what came before the bad bytes, in order
    assert code == "protocol.bad_version"
    assert switched  # the checked get_buffer once the machine closed
    assert not [r for r in records if "get_buffer" in r.getMessage()]
