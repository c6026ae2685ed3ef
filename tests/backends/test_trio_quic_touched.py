"""The trio QUIC listener looks only at the connections its endpoint reports touched
(``take_touched``), so every path by which a session ends or has news must still reach it:
client closes, server closes and server aborts among sessions that stay open and keep working.

Only 127.0.0.1, port 0, every step bounded by ``trio.fail_after``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import msgtrans.io_trio as mt
from msgtrans.certs import write_self_signed

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

WAIT = 5.0
SESSIONS = 6


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("certs"))


@pytest.mark.parametrize("how", ["client-close", "server-close", "server-abort"])
def test_ended_sessions_leave_the_table_and_the_others_keep_working(
        certs: tuple[Path, Path], how: str) -> None:
    cert, key = certs

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = mt.Transport.builder().build(nursery=nursery)
            client = mt.Transport.builder().build(nursery=nursery)
            stream = server.accept([mt.QuicServerConfig("127.0.0.1:0", cert_file=cert,
                                                        key_file=key)])
            with trio.fail_after(WAIT):
                await stream.start()
                port = stream.addresses[0][1]
                pairs = []
                for _ in range(SESSIONS):
                    cs = await client.connect(f"quic://127.0.0.1:{port}?ca={cert}")
                    pairs.append((cs, await stream.__anext__()))
            listener = server._quic_listeners[0]
            ending, staying = pairs[::2], pairs[1::2]
            with trio.fail_after(WAIT):
                for cs, ss in ending:
                    if how == "client-close":
                        await cs.close()
                    elif how == "server-close":
                        ss.start_close()
                    else:
                        ss.abort()
                for cs, ss in ending:
                    await cs.wait_closed()
                    await ss.wait_closed()
                    assert cs.is_closed and ss.is_closed
            # Only the ended sessions left the listener's table (it is keyed by machine).
            left = {session for session, _seat in listener._seats.values()}
            assert left == {ss for _, ss in staying}
            # Those still open were not disturbed: both directions still carry messages.
            with trio.fail_after(WAIT):
                for i, (cs, ss) in enumerate(staying):
                    await cs.send(b"up %d" % i)
                    assert bytes((await ss.receive()).payload) == b"up %d" % i
                    await ss.send(b"down %d" % i)
                    assert bytes((await cs.receive()).payload) == b"down %d" % i
                await server.shutdown(1.0)
                await client.shutdown(1.0)

    trio.run(main, strict_exception_groups=True)
