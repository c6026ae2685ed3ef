"""The blocking driver's QUIC sockets ask for a large receive buffer (a burst of 16 KiB loopback
datagrams must not overflow the kernel's default one): client sockets and listeners both.

Only 127.0.0.1, port 0, every wait bounded.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import msgtrans.io_sync as mt
from msgtrans.certs import write_self_signed
from msgtrans.io_sync._channels import QUIC_RECEIVE_BUFFER, QuicClientChannel

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
]

WAIT = 5.0


def _granted_at_least() -> int:
    # The kernel grants at most net.core.rmem_max (Linux reports double what it granted);
    # where that is unknown, anything above a fresh socket's default shows the request.
    try:
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        rmem_max = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fresh:
        default = fresh.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return max(default + 1, min(QUIC_RECEIVE_BUFFER, rmem_max))


def test_quic_sockets_ask_for_a_large_receive_buffer(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    floor = _granted_at_least()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, QUIC_RECEIVE_BUFFER)
        if probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < floor:
            pytest.skip("this kernel does not grow UDP receive buffers")
    server, client = mt.Transport(), mt.Transport()
    try:
        config = mt.QuicServerConfig("127.0.0.1:0", cert_file=cert, key_file=key)
        with server.accept([config]) as stream:
            port = stream.addresses[0][1]
            session = client.connect(f"quic://127.0.0.1:{port}?ca={cert}", timeout=WAIT)
            stream.accept(timeout=WAIT)
            io = session._io
            assert isinstance(io, QuicClientChannel) and io.sock is not None
            assert io.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= floor
            listener = server._quic_listeners[0]
            assert listener.sock is not None
            assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= floor
            session.send(b"through")
    finally:
        client.graceful_shutdown(2.0)
        server.graceful_shutdown(2.0)
