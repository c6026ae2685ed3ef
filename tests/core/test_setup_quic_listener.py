"""The asyncio QUIC listener forgets each session once it is over, whoever closed it.

``forget`` finds a session's entry by its machine (the table's key), so closing sessions
leaves the table holding exactly the sessions still open.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import msgtrans.io_asyncio as mt
from msgtrans.certs import write_self_signed


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("quic-listener"))


def test_closed_sessions_leave_the_listener_table(certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        cert, key = certs
        server = mt.Transport()
        client = mt.Transport()
        try:
            # No closing period on either side: sessions end as soon as the close is done.
            stream = server.accept([mt.QuicServerConfig("127.0.0.1:0", cert, key,
                                                        closing_period=False)])
            async with stream:
                port = stream.addresses[0][1]
                (listener,) = stream._quic_listeners
                sessions = [await asyncio.wait_for(
                    client.connect(f"quic://127.0.0.1:{port}?ca={cert}"), 5) for _ in range(4)]
                accepted = [await asyncio.wait_for(stream.__anext__(), 5) for _ in sessions]
                assert len(listener._sessions) == 4
                # Two closed by the client, one by the server, one left open.
                await sessions[0].close()
                await sessions[1].close()
                await accepted[2].close()
                for done in accepted[:3]:
                    await asyncio.wait_for(done.wait_closed(), 5)
                assert list(listener._sessions.values()) == [accepted[3]]
        finally:
            await client.graceful_shutdown(2.0)
            await server.graceful_shutdown(2.0)

    asyncio.run(main())
