"""The fault-injecting proxies themselves: each fault happens at the offset (or the datagram)
asked, the counters say what was done, and stopping leaves no thread or socket behind."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .plan import split
from .tcp_proxy import Faults, TcpProxy
from .udp_proxy import Datagrams, UdpProxy, decide

pytestmark = [pytest.mark.network, pytest.mark.filterwarnings("error::ResourceWarning")]
WAIT = 5.0


# --- the arithmetic ---------------------------------------------------------------------------


@given(start=st.integers(0, 10_000), length=st.integers(0, 5_000),
       chunk=st.none() | st.integers(1, 600), stop=st.none() | st.integers(0, 20_000))
def test_split_forwards_up_to_the_offset_on_chunk_boundaries(
        start: int, length: int, chunk: int | None, stop: int | None) -> None:
    if stop is not None and stop < start:
        stop = start  # the proxy never asks past an offset it has reached
    pieces, reached = split(start, length, chunk=chunk, stop_at=stop)
    end = start + length if stop is None else min(start + length, stop)
    assert sum(pieces) == end - start
    assert all(p > 0 for p in pieces)
    assert reached == (stop is not None and start + length >= stop)
    at = start
    for size in pieces:
        at += size
        if chunk is not None:
            assert size <= chunk
            assert at % chunk == 0 or at == end  # boundaries on multiples of the chunk
    assert at == end


def test_split_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="start and length"):
        split(-1, 3)
    with pytest.raises(ValueError, match="chunk"):
        split(0, 3, chunk=0)


# --- the TCP proxy ----------------------------------------------------------------------------


@contextlib.contextmanager
def tcp_pair(**faults: Faults) -> Iterator[tuple[TcpProxy, socket.socket, socket.socket]]:
    """A proxy with *faults*, a client connected through it and the server's end."""
    with socket.create_server(("127.0.0.1", 0)) as target:
        target.settimeout(WAIT)
        with TcpProxy(target.getsockname(), **faults) as proxy:
            client = socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT)
            server, _ = target.accept()
            server.settimeout(WAIT)
            with client, server:
                yield proxy, client, server


def read_until_end(sock: socket.socket) -> tuple[bytes, BaseException | None]:
    """Everything *sock* reads until EOF or an error (returned, not raised)."""
    got = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except OSError as exc:
            return bytes(got), exc
        if not data:
            return bytes(got), None
        got += data


DATA = bytes(range(256)) * 40  # 10 KiB


@pytest.mark.parametrize("offset", [0, 1, 16, 5000, len(DATA) - 1])
@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_cut_closes_cleanly_after_the_offset(direction: str, offset: int) -> None:
    with tcp_pair(**{direction: Faults(cut_at=offset)}) as (proxy, client, server):
        sender, receiver = (client, server) if direction == "c2s" else (server, client)
        with contextlib.suppress(OSError):  # the proxy may have closed before all was sent
            sender.sendall(DATA)
        got, error = read_until_end(receiver)
        assert (got, error) == (DATA[:offset], None)  # a clean EOF right after byte N
        assert read_until_end(sender) == (b"", None)  # both ends closed
        assert proxy.faults_applied() == [("cut", direction, offset)]
        assert proxy.forwarded(direction) == offset
        assert proxy.faulted.is_set()


@pytest.mark.parametrize("offset", [1, 100, 7000])  # at 0 the RST may beat connect()
@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_reset_sends_rst_after_the_offset(direction: str, offset: int) -> None:
    with tcp_pair(**{direction: Faults(reset_at=offset)}) as (proxy, client, server):
        sender, receiver = (client, server) if direction == "c2s" else (server, client)
        send_error: OSError | None = None
        try:
            sender.sendall(DATA)
        except OSError as exc:  # the RST came back before all was sent
            send_error = exc
        assert proxy.faulted.wait(WAIT)
        got, error = read_until_end(receiver)
        # An RST discards what the receiver had not read yet, so only a prefix is certain.
        assert DATA[:offset].startswith(got)
        assert isinstance(error, ConnectionResetError)
        # The sender learns it from its send or from its next read (each reports it once).
        assert isinstance(send_error or read_until_end(sender)[1],
                          (ConnectionResetError, BrokenPipeError))
        assert proxy.faults_applied() == [("reset", direction, offset)]
        assert proxy.forwarded(direction) == offset


def eventually(check: Callable[[], bool]) -> bool:
    """Whether *check* holds within WAIT (the proxy counts a piece just after its send
    returned, so a reader may see the bytes a moment before the count)."""
    end = time.monotonic() + WAIT
    while not check() and time.monotonic() < end:
        time.sleep(0.001)
    return check()


def read_exactly(sock: socket.socket, count: int) -> bytes:
    got = bytearray()
    while len(got) < count:
        data = sock.recv(count - len(got))
        assert data, "EOF"
        got += data
    return bytes(got)


@pytest.mark.parametrize("direction", ["c2s", "s2c"])
def test_stall_holds_after_the_offset_until_released(direction: str) -> None:
    with tcp_pair(**{direction: Faults(stall_at=3000)}) as (proxy, client, server):
        sender, receiver = (client, server) if direction == "c2s" else (server, client)
        sender.sendall(DATA)
        assert read_exactly(receiver, 3000) == DATA[:3000]
        assert proxy.faulted.wait(WAIT)
        receiver.settimeout(0.2)
        with pytest.raises(TimeoutError):
            receiver.recv(1)  # nothing passes the stall
        # The other direction still flows.
        receiver.sendall(b"other way")
        sender.settimeout(WAIT)
        assert read_exactly(sender, 9) == b"other way"
        proxy.release()
        receiver.settimeout(WAIT)
        assert read_exactly(receiver, len(DATA) - 3000) == DATA[3000:]
        sender.sendall(b"after")  # and what comes after the release flows on
        assert read_exactly(receiver, 5) == b"after"
        assert proxy.faults_applied() == [("stall", direction, 3000)]
        assert eventually(lambda: proxy.forwarded(direction) == len(DATA) + 5)


def test_stall_for_a_time_then_forwards() -> None:
    with tcp_pair(c2s=Faults(stall_at=10, stall_for=0.3)) as (_proxy, client, server):
        client.sendall(DATA[:100])
        assert read_exactly(server, 10) == DATA[:10]
        start = time.monotonic()
        assert read_exactly(server, 90) == DATA[10:100]
        assert time.monotonic() - start >= 0.25


def test_delay_holds_each_piece() -> None:
    with tcp_pair(s2c=Faults(delay=0.3)) as (_proxy, client, server):
        start = time.monotonic()
        server.sendall(b"late")
        assert read_exactly(client, 4) == b"late"
        assert time.monotonic() - start >= 0.25
        client.sendall(b"fast")  # the other direction is not delayed
        assert read_exactly(server, 4) == b"fast"


def test_chunks_split_the_stream_on_multiples_of_k() -> None:
    with tcp_pair(c2s=Faults(chunk=7, gap=0.03)) as (proxy, client, server):
        client.sendall(DATA[:40])
        client.shutdown(socket.SHUT_WR)
        ends: list[int] = []
        got = bytearray()
        while data := server.recv(65536):
            got += data
            ends.append(len(got))
        assert bytes(got) == DATA[:40]
        # A receiver may read several pieces at once, never a piece's part.
        assert all(end % 7 == 0 or end == 40 for end in ends)
        assert len(ends) > 1
        assert eventually(lambda: proxy.forwarded("c2s") == 40)


def test_faults_apply_to_later_connections_and_stop_cleans_up() -> None:
    before = set(threading.enumerate())
    with socket.create_server(("127.0.0.1", 0)) as target:
        target.settimeout(WAIT)
        proxy = TcpProxy(target.getsockname())
        first = socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT)
        first_server, _ = target.accept()
        proxy.set_faults(c2s=Faults(cut_at=2))
        second = socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT)
        second_server, _ = target.accept()
        with first, first_server, second, second_server:
            first.sendall(b"hello")
            assert read_exactly(first_server, 5) == b"hello"
            second.sendall(b"hello")
            assert read_until_end(second_server) == (b"he", None)
            assert [c.faults for c in proxy.connections] == [[], [("cut", "c2s", 2)]]
            proxy.stop()
            assert read_until_end(first_server) == (b"", None)  # closed by the stop
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT).close()
    assert set(threading.enumerate()) == before


# --- the UDP proxy ----------------------------------------------------------------------------


def test_decide_by_index_and_by_seeded_rate() -> None:
    faults = Datagrams(drop=frozenset({1}), dup=frozenset({2}), reorder=frozenset({3}))
    rng = random.Random(0)
    assert [decide(i, faults, rng) for i in range(5)] == ["pass", "drop", "dup", "hold", "pass"]
    rated = Datagrams(drop_rate=0.3, seed=7)
    one = [decide(i, rated, random.Random(7)) for i in range(1)]
    a_rng, b_rng = random.Random(7), random.Random(7)
    a = [decide(i, rated, a_rng) for i in range(2000)]
    b = [decide(i, rated, b_rng) for i in range(2000)]
    assert a == b and one == a[:1]  # repeatable
    assert 0.25 < a.count("drop") / 2000 < 0.35
    everything = Datagrams(drop_rate=1.0)
    assert {decide(i, everything, rng) for i in range(100)} == {"drop"}


@contextlib.contextmanager
def udp_pair(**faults: Datagrams) -> Iterator[tuple[UdpProxy, socket.socket, socket.socket]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        target.bind(("127.0.0.1", 0))
        target.settimeout(WAIT)
        client.settimeout(WAIT)
        with UdpProxy(target.getsockname(), **faults) as proxy:
            client.connect(("127.0.0.1", proxy.port))
            yield proxy, client, target


def received(sock: socket.socket, until: bytes) -> list[bytes]:
    got: list[bytes] = []
    while (data := sock.recv(65536)) != until:
        got.append(data)
    return got


def test_udp_drop_dup_reorder_by_index() -> None:
    faults = Datagrams(drop=frozenset({2, 5}), dup=frozenset({1}), reorder=frozenset({6}))
    with udp_pair(c2s=faults) as (proxy, client, target):
        for i in range(10):
            client.send(b"%d" % i)
        client.send(b"end")
        got = received(target, b"end")
        assert got == [b"0", b"1", b"1", b"3", b"4", b"7", b"6", b"8", b"9"]
        stats = proxy.stats["c2s"]
        assert (stats.received, stats.dropped, stats.duplicated, stats.reordered) == (11, 2, 1, 1)
        assert stats.forwarded == 10


def test_udp_answers_come_back_with_their_own_faults() -> None:
    with udp_pair(s2c=Datagrams(drop=frozenset({0}), delay=0.2)) as (proxy, client, target):
        client.send(b"hi")
        data, peer = target.recvfrom(100)
        assert data == b"hi"
        target.sendto(b"lost", peer)
        start = time.monotonic()
        target.sendto(b"late", peer)
        assert client.recv(100) == b"late"
        assert time.monotonic() - start >= 0.15
        assert proxy.stats["s2c"].dropped == 1


def test_udp_held_datagram_leaves_alone_and_full_drop() -> None:
    with udp_pair(c2s=Datagrams(reorder=frozenset({0}), hold_for=0.1)) as (proxy, client,
                                                                          target):
        client.send(b"only")
        assert target.recv(100) == b"only"  # nothing came to swap it with: it left alone
        proxy.set_faults(c2s=Datagrams(drop_rate=1.0))
        for _ in range(5):
            client.send(b"x")
        target.settimeout(0.2)
        with pytest.raises(TimeoutError):
            target.recv(100)
        assert proxy.stats["c2s"].dropped == 5


@pytest.mark.parametrize("reset", [False, True])
def test_break_all_ends_open_connections_now(reset: bool) -> None:
    with tcp_pair() as (proxy, client, server):
        client.sendall(b"before")
        assert read_exactly(server, 6) == b"before"
        proxy.break_all(reset=reset)
        got, error = read_until_end(client)
        assert got == b""
        assert isinstance(error, ConnectionResetError) if reset else error is None
        assert proxy.faults_applied() == [("reset" if reset else "cut", "both", 6)]
