"""The blocking QUIC listener looks only at the connections its endpoint reports touched
(``take_touched``), so every path by which a session ends or has news must still reach it:
client closes, server closes and server aborts among sessions that stay open and keep working.

Only 127.0.0.1, port 0, every wait bounded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import msgtrans.io_sync as mt
from msgtrans.certs import write_self_signed

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
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
    server, client = mt.Transport(), mt.Transport()
    try:
        config = mt.QuicServerConfig("127.0.0.1:0", cert_file=cert, key_file=key)
        with server.accept([config]) as stream:
            port = stream.addresses[0][1]
            pairs = []
            for _ in range(SESSIONS):
                cs = client.connect(f"quic://127.0.0.1:{port}?ca={cert}", timeout=WAIT)
                pairs.append((cs, stream.accept(timeout=WAIT)))
            listener = server._quic_listeners[0]
            ending, staying = pairs[::2], pairs[1::2]
            for cs, ss in ending:
                if how == "client-close":
                    cs.close(timeout=WAIT)
                elif how == "server-close":
                    ss.close(timeout=WAIT)
                else:
                    ss.abort()
            for cs, ss in ending:
                cs.wait_closed(WAIT)
                ss.wait_closed(WAIT)
                assert cs.is_closed and ss.is_closed
            # Only the ended sessions left the listener's table (it is keyed by machine).
            loop = server._loop
            assert loop is not None
            with loop.lock:
                left = set(listener._sessions.values())
            assert left == {ss for _, ss in staying}
            # Those still open were not disturbed: both directions still carry messages.
            for i, (cs, ss) in enumerate(staying):
                cs.send(b"up %d" % i)
                assert bytes(ss.receive(timeout=WAIT).payload) == b"up %d" % i
                ss.send(b"down %d" % i)
                assert bytes(cs.receive(timeout=WAIT).payload) == b"down %d" % i
    finally:
        client.graceful_shutdown(2.0)
        server.graceful_shutdown(2.0)
