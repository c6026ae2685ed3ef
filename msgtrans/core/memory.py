"""In-memory pipes between protocol machines: no sockets, for tests, fuzzers and demos.

:class:`StreamPipe` joins two stream machines (a client and a server) as a socket pair would;
:class:`DatagramPipe` joins two datagram parties (a QUIC client machine and a server machine or
endpoint).  Both can cut, drop, duplicate or reorder what passes, to prove that the machines do
not care how the network delivers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol as TypingProtocol
from typing import cast

from .machine import Address
from .packet import Buffer

__all__ = ["DatagramParty", "DatagramPipe", "RecvIntoParty", "StreamParty", "StreamPipe"]

#: Cuts one write into the chunks the reader receives.  Default: one chunk.
Chunker = Callable[[bytes], list[bytes]]


class StreamParty(TypingProtocol):
    """What :class:`StreamPipe` needs of each side: a stream machine or a connection."""

    @property
    def write_closed(self) -> bool: ...

    @property
    def is_closed(self) -> bool: ...

    def start(self, now: float) -> None: ...

    def receive_data(self, data: Buffer, now: float) -> None: ...

    def data_to_send(self) -> list[Buffer]: ...


class RecvIntoParty(StreamParty, TypingProtocol):
    """A stream party that also receives in place (``StreamPipe(recv_into=...)``)."""

    def get_buffer(self, sizehint: int = -1) -> memoryview: ...

    def buffer_updated(self, nbytes: int, now: float) -> None: ...


class StreamPipe:
    """A socket pair in memory between *client* and *server*.

    Args:
        client: the machine on the connecting side.
        server: the machine on the accepting side.
        chunker: how each write is cut on its way (default: delivered whole).
        recv_into: deliver through the receiver's ``get_buffer()`` / ``buffer_updated()`` (the
            ``recv_into`` and ``BufferedProtocol`` path of the drivers), at most this many bytes
            per call, as a socket would; default ``None``: ``receive_data(chunk)``.

    Attributes:
        bytes_moved: every byte carried so far, both ways.
    """

    def __init__(
        self,
        client: StreamParty,
        server: StreamParty,
        chunker: Chunker | None = None,
        *,
        recv_into: int | None = None,
    ) -> None:
        if recv_into is not None and recv_into < 1:
            raise ValueError(f"recv_into must be a positive byte count, got {recv_into}")
        self.recv_into = recv_into
        self.client = client
        self.server = server
        self.chunker = chunker or (lambda data: [data])
        self.bytes_moved = 0
        self._eof_sent: set[int] = set()

    def start(self, now: float = 0.0) -> None:
        """Start both machines (server first, as an accept would) and pump."""
        self.server.start(now)
        self.client.start(now)
        self.pump(now)

    def _move(self, src: StreamParty, dst: StreamParty, now: float) -> int:
        data = b"".join(src.data_to_send())
        moved = len(data)
        if data and not dst.is_closed:
            for chunk in self.chunker(data):
                if chunk:
                    self._deliver(dst, chunk, now)
        if src.write_closed and id(src) not in self._eof_sent:
            self._eof_sent.add(id(src))
            if not dst.is_closed:
                dst.receive_data(b"", now)
            moved += 1  # an EOF is progress too
        return moved

    def _deliver(self, dst: StreamParty, chunk: bytes, now: float) -> None:
        step = self.recv_into
        if step is None:
            dst.receive_data(chunk, now)
            return
        party = cast(RecvIntoParty, dst)
        with memoryview(chunk) as data:
            pos, end = 0, len(data)
            while pos < end and not party.is_closed:
                with party.get_buffer(-1) as buf:
                    n = min(len(buf), end - pos, step)
                    buf[:n] = data[pos : pos + n]
                party.buffer_updated(n, now)
                pos += n

    def pump(self, now: float = 0.0, max_rounds: int = 10_000) -> int:
        """Carry bytes both ways until neither side has anything to say; return bytes carried.

        Raises:
            RuntimeError: the machines were still talking after *max_rounds* rounds.
        """
        total = 0
        for _ in range(max_rounds):
            moved = self._move(self.client, self.server, now) + self._move(
                self.server, self.client, now
            )
            total += moved
            if not moved:
                self.bytes_moved += total
                return total
        raise RuntimeError(f"machines still talking after {max_rounds} rounds")


class DatagramParty(TypingProtocol):
    """What :class:`DatagramPipe` needs of each side: a QUIC machine or a server endpoint."""

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]: ...


#: Decides what becomes of the datagrams of one round: returns those to deliver, in order
#: (drop some, repeat some, shuffle them).  Default: all, as sent.
Network = Callable[[list[bytes]], list[bytes]]


class DatagramPipe:
    """A UDP path in memory between a client at *client_addr* and a server at *server_addr*.

    Args:
        client: the client side.
        server: the server side (a connection machine or an endpoint).
        network: what the path does to each round's datagrams (loss, duplicates, reordering).
    """

    def __init__(
        self,
        client: DatagramParty,
        server: DatagramParty,
        client_addr: Address = ("127.0.0.1", 50000),
        server_addr: Address = ("127.0.0.1", 4433),
        network: Network | None = None,
    ) -> None:
        self.client = client
        self.server = server
        self.client_addr = client_addr
        self.server_addr = server_addr
        self.network = network or (lambda grams: grams)
        self.datagrams_moved = 0

    def pump(self, now: float = 0.0, max_rounds: int = 10_000) -> int:
        """Carry datagrams both ways until both sides are quiet; return datagrams delivered.

        Raises:
            RuntimeError: the sides were still talking after *max_rounds* rounds.
        """
        total = 0
        for _ in range(max_rounds):
            to_server = [d for d, _a in self.client.datagrams_to_send(now)]
            to_client = [d for d, _a in self.server.datagrams_to_send(now)]
            if not to_server and not to_client:
                self.datagrams_moved += total
                return total
            for gram in self.network(to_server):
                self.server.receive_datagram(gram, self.client_addr, now)
                total += 1
            for gram in self.network(to_client):
                self.client.receive_datagram(gram, self.server_addr, now)
                total += 1
        raise RuntimeError(f"sides still talking after {max_rounds} rounds")
