"""The in-memory pipes the core's tests and the demo run on (msgtrans.core.memory), checked
with scripted parties instead of protocol machines: what a pipe carries, in what pieces, the
end of stream once, ``recv_into`` delivery and the bound on rounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.core.machine import Address
from msgtrans.core.memory import DatagramPipe, StreamPipe
from msgtrans.core.packet import Buffer


class Stream:
    """A stream party that says what it is told to and records what it hears."""

    def __init__(self, script: list[bytes] | None = None, *, echo: bool = False) -> None:
        self.script = list(script or [])
        self.echo = echo
        self.heard: list[bytes] = []
        self.eofs = 0
        self.started_at: float | None = None
        self.write_closed = False
        self.is_closed = False
        self._out: list[Buffer] = []
        self._area = bytearray(8)

    def start(self, now: float) -> None:
        self.started_at = now

    def receive_data(self, data: Buffer, now: float) -> None:
        data = bytes(data)
        if not data:
            self.eofs += 1
            return
        self.heard.append(data)
        if self.echo:
            self._out.append(data)

    def data_to_send(self) -> list[Buffer]:
        out, self._out = self._out, []
        if self.script:
            out.append(self.script.pop(0))
        return out

    # recv_into delivery: an 8-byte area, as a small socket buffer would be
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        return memoryview(self._area)

    def buffer_updated(self, nbytes: int, now: float) -> None:
        self.receive_data(bytes(self._area[:nbytes]), now)


def test_start_starts_the_server_first_and_carries_both_ways() -> None:
    order: list[str] = []
    client, server = Stream([b"hello", b"again"]), Stream(echo=True)
    client.start = lambda now: order.append("client")  # type: ignore[method-assign]
    server.start = lambda now: order.append("server")  # type: ignore[method-assign]
    pipe = StreamPipe(client, server)
    pipe.start(1.0)
    assert order == ["server", "client"]
    assert server.heard == [b"hello", b"again"]
    assert client.heard == [b"hello", b"again"]  # echoed back
    assert pipe.bytes_moved == 2 * len(b"helloagain")
    assert pipe.pump() == 0  # quiet


@given(data=st.binary(min_size=1, max_size=200), cut=st.integers(1, 50))
def test_the_chunker_cuts_writes_and_nothing_is_lost(data: bytes, cut: int) -> None:
    server = Stream()
    pipe = StreamPipe(Stream([data]), server,
                      lambda d: [d[i : i + cut] for i in range(0, len(d), cut)])
    pipe.pump()
    assert b"".join(server.heard) == data
    assert all(len(piece) <= cut for piece in server.heard)


@given(data=st.binary(min_size=1, max_size=200), step=st.integers(1, 20))
def test_recv_into_delivers_through_get_buffer_in_bounded_steps(data: bytes, step: int) -> None:
    server = Stream()
    StreamPipe(Stream([data]), server, recv_into=step).pump()
    assert b"".join(server.heard) == data
    assert all(len(piece) <= min(step, 8) for piece in server.heard)


def test_recv_into_must_be_positive() -> None:
    with pytest.raises(ValueError, match="recv_into"):
        StreamPipe(Stream(), Stream(), recv_into=0)


def test_the_end_of_stream_is_delivered_once_and_not_to_a_closed_party() -> None:
    client, server = Stream(), Stream()
    pipe = StreamPipe(client, server)
    client.write_closed = True
    assert pipe.pump() == 1  # an EOF counts as progress
    pipe.pump()
    assert server.eofs == 1
    server.write_closed = True
    client.is_closed = True
    pipe.pump()
    assert client.eofs == 0  # closed: told nothing more
    client.script.append(b"late")
    server.is_closed = True
    pipe.pump()
    assert server.heard == []


def test_parties_that_never_stop_talking_are_caught() -> None:
    class Chatty(Stream):
        def data_to_send(self) -> list[Buffer]:
            return [b"x"]

    with pytest.raises(RuntimeError, match="still talking"):
        StreamPipe(Chatty(), Stream()).pump(max_rounds=5)


class Datagrams:
    """A datagram party sending its script, one round at a time, to *to*."""

    def __init__(self, to: Address, script: list[list[bytes]] | None = None) -> None:
        self.to = to
        self.script = list(script or [])
        self.heard: list[tuple[bytes, Address]] = []

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self.heard.append((data, addr))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        return [(d, self.to) for d in self.script.pop(0)] if self.script else []


def test_datagrams_carry_their_addresses_and_are_counted() -> None:
    client_addr, server_addr = ("10.0.0.1", 1), ("10.0.0.2", 2)
    client = Datagrams(server_addr, [[b"a", b"b"], [b"c"]])
    server = Datagrams(client_addr, [[b"z"]])
    pipe = DatagramPipe(client, server, client_addr, server_addr)
    assert pipe.pump() == 4
    assert server.heard == [(b"a", client_addr), (b"b", client_addr), (b"c", client_addr)]
    assert client.heard == [(b"z", server_addr)]
    assert pipe.datagrams_moved == 4


def test_the_network_decides_what_arrives() -> None:
    server = Datagrams(("127.0.0.1", 50000))
    client = Datagrams(("127.0.0.1", 4433), [[b"1", b"2", b"3"]])
    # Drop the first datagram of each round, repeat the last.
    pipe = DatagramPipe(client, server, network=lambda grams: grams[1:] + grams[-1:])
    assert pipe.pump() == 3
    assert [d for d, _a in server.heard] == [b"2", b"3", b"3"]


def test_datagram_parties_that_never_stop_are_caught() -> None:
    class Chatty(Datagrams):
        def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
            return [(b"x", self.to)]

    with pytest.raises(RuntimeError, match="still talking"):
        DatagramPipe(Chatty(("h", 1)), Datagrams(("h", 2))).pump(max_rounds=5)
