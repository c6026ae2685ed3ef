"""The proxies' network commands, for clients that reconnect: ``blackhole()`` silences every
direction (no FIN, no RST, new TCP connections hang after ``connect()``), ``restore()`` forwards
again (resetting the TCP connections the blackhole broke) and ``retarget()`` sends what comes
next to another server, against small echo servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from ._thread import ProxyThread
from .tcp_proxy import Faults, TcpProxy
from .test_proxies import WAIT, eventually, read_exactly, tcp_pair, udp_pair
from .udp_proxy import Datagrams, UdpProxy

pytestmark = [pytest.mark.network, pytest.mark.filterwarnings("error::ResourceWarning")]
QUIET = 0.3  # how long a blackholed socket is watched for a byte that must not come


class Echo(ProxyThread):
    """An echo server on 127.0.0.1 (``kind`` ``"tcp"`` or ``"udp"``) in its own thread: each
    read is answered with *prefix* + what was read.  ``peers`` lists each TCP connection's (or
    datagram's) source address, ``resets`` the TCP connections that ended with an RST;
    :meth:`wait_for` waits for them."""

    def __init__(self, kind: str, prefix: bytes) -> None:
        super().__init__(f"test-{kind}-echo")
        self.prefix = prefix
        self.peers: list[tuple[str, int]] = []
        self.resets = 0
        self._changed = threading.Condition()
        if kind == "tcp":
            self._sock = socket.create_server(("127.0.0.1", 0))
        else:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.bind(("127.0.0.1", 0))
        self._sock.setblocking(False)
        self.kind = kind
        self.address: tuple[str, int] = self._sock.getsockname()
        self._conns: set[socket.socket] = set()
        self._start()

    def wait_for(self, check: Callable[[], bool]) -> bool:
        with self._changed:
            return self._changed.wait_for(check, WAIT)

    def _run(self) -> None:
        sel = self._selector
        try:
            sel.register(self._sock, selectors.EVENT_READ, None)
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            while not self._stopping:
                for key, _ in sel.select(0.1):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            sock.recv(4096)
                    elif sock is self._sock and self.kind == "udp":
                        data, peer = sock.recvfrom(65536)
                        self._note(peer=peer)
                        sock.sendto(self.prefix + data, peer)
                    elif sock is self._sock:
                        conn, peer = sock.accept()
                        conn.settimeout(WAIT)  # answers are small: sendall does not block
                        self._conns.add(conn)
                        sel.register(conn, selectors.EVENT_READ, None)
                        self._note(peer=peer)
                    else:
                        self._serve(sock)
        except BaseException as exc:  # reported by stop()
            self._error = exc
        finally:
            sel.close()
            for sock in [self._sock, self._wake_r, *self._conns]:
                sock.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
            if data:
                conn.sendall(self.prefix + data)
                return
        except ConnectionResetError:
            self._note(reset=True)
        self._selector.unregister(conn)
        self._conns.discard(conn)
        conn.close()

    def _note(self, *, peer: tuple[str, int] | None = None, reset: bool = False) -> None:
        with self._changed:
            if peer is not None:
                self.peers.append(peer)
            self.resets += reset
            self._changed.notify_all()


@contextlib.contextmanager
def echo(kind: str, prefix: bytes) -> Iterator[Echo]:
    with Echo(kind, prefix) as server:
        yield server


def connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=WAIT)


def udp_client(proxy: UdpProxy) -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(WAIT)
    client.connect(proxy.address)
    return client


def silent(sock: socket.socket) -> bool:
    """Whether *sock* receives nothing (no byte, no EOF, no error) for QUIET seconds."""
    sock.settimeout(QUIET)
    try:
        sock.recv(65536)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(WAIT)
    return False


def roundtrip(sock: socket.socket, data: bytes, prefix: bytes) -> bytes:
    sock.sendall(data)
    return read_exactly(sock, len(prefix) + len(data))


# --- TCP ------------------------------------------------------------------------------------


def test_tcp_blackhole_silences_both_directions_without_fin_or_rst() -> None:
    with tcp_pair() as (proxy, client, server):
        client.sendall(b"before")
        assert read_exactly(server, 6) == b"before"
        proxy.blackhole()
        server.sendall(b"down")
        client.sendall(b"up")
        assert silent(client)
        assert silent(server)
        client.shutdown(socket.SHUT_WR)  # a FIN does not cross a cut network either
        assert silent(server)
        assert eventually(lambda: (proxy.blackholed("c2s"), proxy.blackholed("s2c")) == (2, 4))
        assert proxy.forwarded("c2s") == 6
        assert proxy.faults_applied() == [("blackhole", "both", 6)]
        proxy.restore()
        # restore() resets what the blackhole broke, on both sides, before it returns.
        with pytest.raises(ConnectionResetError):
            server.recv(1)
        with pytest.raises(ConnectionResetError):
            client.recv(1)
        assert proxy.faults_applied() == [("blackhole", "both", 6), ("reset", "both", 6)]


def test_tcp_new_connections_hang_in_a_blackhole_and_restore_resets_them() -> None:
    with echo("tcp", b"A:") as server, TcpProxy(server.address) as proxy:
        with connect(proxy) as old:
            assert roundtrip(old, b"one", b"A:") == b"A:one"
            proxy.blackhole()
            old.sendall(b"lost")
            assert silent(old)
            with connect(proxy) as hanging:  # connect() succeeds: the proxy accepts it
                hanging.sendall(b"hello?")
                assert silent(hanging)
                assert eventually(lambda: len(proxy.connections) == 2)
                assert proxy.connections[1].target is None  # never connected upstream
                assert len(server.peers) == 1
                assert eventually(lambda: proxy.blackholed("c2s") == 4 + 6)
                proxy.restore()
                with pytest.raises(ConnectionResetError):
                    old.recv(1)
                with pytest.raises(ConnectionResetError):
                    hanging.recv(1)
                assert server.wait_for(lambda: server.resets == 1)  # the old upstream too
                with connect(proxy) as new:  # and the network works again
                    assert roundtrip(new, b"two", b"A:") == b"A:two"
        assert proxy.faults_applied() == [
            ("blackhole", "both", 3), ("reset", "both", 3),
            ("blackhole", "both", 0), ("reset", "both", 0),
        ]
        assert [c.target for c in proxy.connections] == [server.address, None, server.address]
        assert len(server.peers) == 2


def test_tcp_blackhole_discards_what_was_queued() -> None:
    with tcp_pair(s2c=Faults(delay=0.5)) as (proxy, client, server):
        server.sendall(b"late")
        proxy.blackhole()  # before the delay is over: the bytes are lost, read or not yet
        assert silent(client)
        assert eventually(lambda: proxy.blackholed("s2c") == 4)
        assert proxy.forwarded("s2c") == 0


def test_tcp_a_second_blackhole_and_a_restore_without_one_change_nothing() -> None:
    with echo("tcp", b"A:") as server, TcpProxy(server.address) as proxy:
        proxy.restore()
        with connect(proxy) as client:
            assert roundtrip(client, b"x", b"A:") == b"A:x"
            proxy.blackhole()
            proxy.blackhole()
            proxy.restore()
            with pytest.raises(ConnectionResetError):
                client.recv(1)
        assert proxy.faults_applied() == [("blackhole", "both", 1), ("reset", "both", 1)]


def test_tcp_retarget_sends_new_connections_to_the_other_server() -> None:
    with echo("tcp", b"A:") as first, echo("tcp", b"B:") as second, \
            TcpProxy(first.address) as proxy:
        with connect(proxy) as old:
            assert roundtrip(old, b"one", b"A:") == b"A:one"
            proxy.retarget(second.address)
            assert proxy.target == second.address
            with connect(proxy) as new:
                assert roundtrip(new, b"two", b"B:") == b"B:two"
                assert roundtrip(old, b"three", b"A:") == b"A:three"  # left alone
        assert [c.target for c in proxy.connections] == [first.address, second.address]
        assert (len(first.peers), len(second.peers)) == (1, 1)


def test_tcp_server_restart_behind_a_blackhole() -> None:
    """What the reconnect tests do: the network goes, the server comes back on another port,
    the network comes back, and a client that reconnects to the same address gets the new
    server while its old connection is reset."""
    with echo("tcp", b"A:") as first, TcpProxy(first.address) as proxy:
        with connect(proxy) as old:
            assert roundtrip(old, b"one", b"A:") == b"A:one"
            proxy.blackhole()
            with echo("tcp", b"B:") as second:
                proxy.retarget(second.address)
                proxy.restore()
                with pytest.raises(ConnectionResetError):
                    old.recv(1)
                with connect(proxy) as new:
                    assert roundtrip(new, b"two", b"B:") == b"B:two"
        assert len(first.peers) == 1


def test_tcp_commands_after_stop_raise() -> None:
    with socket.create_server(("127.0.0.1", 0)) as target:
        proxy = TcpProxy(target.getsockname())
        proxy.stop()
        for command in (proxy.blackhole, proxy.restore, lambda: proxy.retarget(("127.0.0.1", 9))):
            with pytest.raises(RuntimeError, match="not running"):
                command()


# --- UDP ------------------------------------------------------------------------------------


def test_udp_blackhole_drops_both_directions_until_restore() -> None:
    with udp_pair() as (proxy, client, target):
        client.send(b"hi")
        data, peer = target.recvfrom(100)
        assert data == b"hi"
        proxy.blackhole()
        target.sendto(b"down", peer)
        client.send(b"up")
        assert silent(client)
        assert silent(target)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as newcomer:
            newcomer.sendto(b"new", proxy.address)  # a new client address: dropped too
            assert silent(target)
            assert eventually(lambda: proxy.stats["c2s"].blackholed == 2)
            assert proxy.stats["s2c"].blackholed == 1
            proxy.restore()
            client.send(b"after")
            assert target.recv(100) == b"after"
            target.sendto(b"back", peer)
            assert client.recv(100) == b"back"
            newcomer.sendto(b"new", proxy.address)
            assert target.recv(100) == b"new"
        stats = proxy.stats["c2s"]
        # Blackholed datagrams never reach the faults: the indexes skip them.
        assert (stats.received, stats.forwarded, stats.blackholed, stats.dropped) == (3, 3, 2, 0)


def test_udp_blackhole_drops_what_was_delayed() -> None:
    with udp_pair(c2s=Datagrams(delay=0.5)) as (proxy, client, target):
        client.send(b"late")
        proxy.blackhole()  # queued or not read yet: lost either way
        target.settimeout(0.5 + QUIET)
        with pytest.raises(TimeoutError):
            target.recv(100)
        stats = proxy.stats["c2s"]
        assert (stats.blackholed, stats.forwarded, stats.bytes_forwarded) == (1, 0, 0)


def test_udp_retarget_sends_to_the_other_server_from_the_same_port() -> None:
    with echo("udp", b"A:") as first, echo("udp", b"B:") as second, \
            UdpProxy(first.address) as proxy, udp_client(proxy) as client:
        client.send(b"one")
        assert client.recv(100) == b"A:one"
        proxy.retarget(second.address)
        assert proxy.target == second.address
        client.send(b"two")
        assert client.recv(100) == b"B:two"  # the new server's answer comes back
        with udp_client(proxy) as other:  # a new client goes there too
            other.send(b"three")
            assert other.recv(100) == b"B:three"
        assert first.peers[0] == second.peers[0]  # the same upstream socket, reconnected
        assert len(first.peers) == 1


def test_udp_server_restart_behind_a_blackhole() -> None:
    with echo("udp", b"A:") as first, UdpProxy(first.address) as proxy, \
            udp_client(proxy) as client:
        client.send(b"one")
        assert client.recv(100) == b"A:one"
        proxy.blackhole()
        client.send(b"lost")
        assert silent(client)
        with echo("udp", b"B:") as second:
            proxy.retarget(second.address)
            proxy.restore()
            client.send(b"two")
            assert client.recv(100) == b"B:two"
            assert len(second.peers) == 1  # "lost" never reached anyone
        assert len(first.peers) == 1
