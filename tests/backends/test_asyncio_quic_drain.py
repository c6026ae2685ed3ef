"""The asyncio QUIC driver reads a burst of datagrams in one go (a duplicate of the socket)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from msgtrans.io_asyncio._quic import DRAIN_MAX, _drain_socket, _more_datagrams


class _Transport:
    """What the driver asks of an asyncio datagram transport: its socket."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender.connect(receiver.getsockname())
    yield receiver, sender
    receiver.close()
    sender.close()


def test_a_burst_is_read_in_order_in_bounded_batches(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    receiver, sender = pair
    dup = _drain_socket(_Transport(receiver))  # type: ignore[arg-type]
    assert dup is not None
    try:
        sent = [i.to_bytes(4, "big") * 10 for i in range(DRAIN_MAX + 6)]
        for data in sent:
            sender.send(data)
        got: list[bytes] = []
        for _ in range(10):  # bounded: the kernel has every datagram queued already
            batch = _more_datagrams(dup)
            assert len(batch) <= DRAIN_MAX
            got += [data for data, _addr in batch]
            assert all(addr == sender.getsockname() for _data, addr in batch)
            if len(got) == len(sent):
                break
        assert got == sent
        # The duplicate shares the kernel socket: nothing is left for the original either.
        with pytest.raises(BlockingIOError):
            receiver.recvfrom(65536)
        assert _more_datagrams(dup) == []
    finally:
        dup.close()
    # Closing the duplicate leaves the original open.
    sender.send(b"still there")
    receiver.setblocking(True)
    receiver.settimeout(5)
    assert receiver.recvfrom(65536)[0] == b"still there"


def test_without_a_socket_nothing_more_is_read() -> None:
    assert _drain_socket(_Transport(None)) is None  # type: ignore[arg-type]
    assert _more_datagrams(None) == []
