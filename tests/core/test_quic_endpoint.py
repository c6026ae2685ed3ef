"""The endpoint's touched-set and deadline-heap bookkeeping does what a scan of every
connection would do.

Random sequences of operations on several connections (sends both ways, delivery and loss,
timers, closes from either side, pauses, connection-id changes); around every endpoint call an
oracle computes what the old full scan would have done from the same state:

* ``datagrams_to_send`` flushes exactly the connections that are dirty, oldest first, and
  forgets every ended one (so the datagrams are the same);
* ``next_deadline`` is the minimum of the stored deadlines;
* ``handle_timer`` fires exactly the connections whose stored deadline is due, oldest first;
* ``take_touched`` includes every connection that has events or was flushed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgtrans.core.errors import TransportError
from msgtrans.core.machine import Address, MachineState
from msgtrans.core.packet import Packet
from msgtrans.core.quic import QuicMachine
from msgtrans.core.quic_endpoint import QuicEndpoint
from tests.core.test_quic import CERT, SERVER

N_CLIENTS = 3


class Checked:
    """An endpoint and its clients in memory, each endpoint call checked against the scan."""

    def __init__(self) -> None:
        self.ep = QuicEndpoint(
            certificate=CERT.cert_pem, private_key=CERT.key_pem, ping_interval=0.7,
            idle_timeout=5.0, close_timeout=2.0,
        )
        self.now = 0.0
        self.clients = [
            QuicMachine.client(SERVER, ca_data=CERT.cert_pem, ping_interval=None)
            for _ in range(N_CLIENTS)
        ]
        self.addrs: list[Address] = [("127.0.0.1", 50000 + i) for i in range(N_CLIENTS)]
        self.servers: dict[Address, QuicMachine] = {}
        self.every: list[QuicMachine] = []  # every server connection ever made
        self.calls: list[tuple[str, QuicMachine]] = []
        self.ep.take_touched()  # record news from now on, as the asyncio listener does
        for c in self.clients:
            c.start(self.now)

    # --- recording which connections the endpoint calls ---------------------------------

    def _watch(self, conn: QuicMachine) -> None:
        for name in ("datagrams_to_send", "handle_timer"):
            method: Callable[..., Any] = getattr(conn, name)

            def wrapped(*args: Any, _m: Callable[..., Any] = method, _n: str = name,
                        _c: QuicMachine = conn) -> Any:
                self.calls.append((_n, _c))
                return _m(*args)

            setattr(conn, name, wrapped)

    # --- the endpoint, checked --------------------------------------------------------------

    def receive(self, data: bytes, addr: Address) -> None:
        self.ep.receive_datagram(data, addr, self.now)
        for conn in self.ep.accept():
            self.servers[conn.peer_address or addr] = conn
            self.every.append(conn)
            self._watch(conn)

    def flush(self) -> list[tuple[bytes, Address]]:
        live = list(self.ep._live)
        expected = [c for c in live if c._dirty]
        self.calls.clear()
        out = self.ep.datagrams_to_send(self.now)
        assert [c for name, c in self.calls if name == "datagrams_to_send"] == expected
        # The scan forgot every connection that ended; the others keep fresh deadlines.
        assert all(c.state is not MachineState.CLOSED for c in self.ep._live)
        assert list(self.ep._live) == [c for c in live if c in self.ep._live]
        for c in expected:
            if c in self.ep._live:
                assert self.ep._live[c] == c.next_deadline()
        self.check_deadline()
        return out

    def check_deadline(self) -> None:
        stored = [d for d in self.ep._live.values() if d is not None]
        assert self.ep.next_deadline() == (min(stored) if stored else None)

    def timers(self) -> None:
        expected = [c for c, d in self.ep._live.items() if d is not None and d <= self.now]
        self.calls.clear()
        self.ep.handle_timer(self.now)
        assert [c for name, c in self.calls if name == "handle_timer"] == expected
        self.check_deadline()

    def check_news(self) -> None:
        touched = set(self.ep.take_touched())
        for conn in self.every:
            if conn.has_events:
                assert conn in touched, conn
            conn.events()
        self.ep.events()

    # --- the world ------------------------------------------------------------------------------

    def up(self, deliver: bool = True) -> None:
        for c, addr in zip(self.clients, self.addrs, strict=True):
            for data, _a in c.datagrams_to_send(self.now):
                if deliver:
                    self.receive(data, addr)
            c.events()

    def down(self, deliver: bool = True) -> None:
        for data, addr in self.flush():
            if deliver and addr in self.addrs:
                self.clients[self.addrs.index(addr)].receive_datagram(data, SERVER, self.now)

    def tick(self, dt: float) -> None:
        self.now += dt
        for c in self.clients:
            deadline = c.next_deadline()
            if deadline is not None and deadline <= self.now:
                c.handle_timer(self.now)
        self.timers()

    def server_conn(self, i: int) -> QuicMachine | None:
        return self.servers.get(self.addrs[i])


def apply(world: Checked, op: tuple[str, int, float]) -> None:
    kind, i, dt = op
    i %= N_CLIENTS
    conn = world.server_conn(i)
    try:
        if kind == "csend":
            world.clients[i].send_packet(Packet(payload=b"c" * int(dt * 3000)))
        elif kind == "ssend" and conn is not None:
            conn.send_packet(Packet(payload=b"s" * int(dt * 3000)))
        elif kind == "sclose" and conn is not None:
            conn.close(7, "bye")
        elif kind == "cclose":
            world.clients[i].close(8, "done")
        elif kind == "pause" and conn is not None:
            conn.pause_reading()
        elif kind == "resume" and conn is not None:
            conn.resume_reading()
        elif kind == "cid":
            world.clients[i].change_connection_id()
    except TransportError:
        pass  # sending on a closing connection: the oracle does not care
    if kind == "up":
        world.up()
    elif kind == "lose_up":
        world.up(deliver=False)
    elif kind == "down":
        world.down()
    elif kind == "lose_down":
        world.down(deliver=False)
    elif kind == "tick":
        world.tick(dt)
    elif kind == "wait":
        # Jump to the endpoint's next deadline (timers that really fire: pings, losses, ends).
        deadline = world.ep.next_deadline()
        if deadline is not None:
            world.tick(max(0.0, deadline - world.now))
    world.check_news()
    world.check_deadline()


OPS = st.tuples(
    st.sampled_from([
        "csend", "ssend", "sclose", "cclose", "pause", "resume", "cid",
        "up", "up", "down", "down", "lose_up", "lose_down", "tick", "wait", "wait",
    ]),
    st.integers(0, N_CLIENTS - 1),
    st.floats(0.0, 1.0),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=40))
def test_touched_set_and_heap_match_a_full_scan(ops: list[tuple[str, int, float]]) -> None:
    world = Checked()
    # Connect everyone first, so the operations work on live connections.
    for _ in range(8):
        world.up()
        world.down()
        world.check_news()
    assert len(world.every) == N_CLIENTS
    for op in ops:
        apply(world, op)
    # Run out the clock: every connection ends by idle timeout or close, checked all the way.
    for _ in range(200):
        if not world.ep._live:
            break
        apply(world, ("wait", 0, 0.0))
        apply(world, ("down", 0, 0.0))
    assert not world.ep._live
    assert world.ep.next_deadline() is None


def test_take_touched_records_nothing_until_asked() -> None:
    ep = QuicEndpoint(certificate=CERT.cert_pem, private_key=CERT.key_pem)
    assert ep._news is None
    assert ep.take_touched() == []
    assert ep._news == set()


def test_a_stale_heap_is_compacted() -> None:
    world = Checked()
    for _ in range(8):
        world.up()
        world.down()
    # Many deadline moves: the heap stays bounded by the live connections, not the moves.
    for _ in range(300):
        apply(world, ("ssend", 0, 0.01))
        apply(world, ("down", 0, 0.0))
        apply(world, ("up", 0, 0.0))
        apply(world, ("tick", 0, 0.001))
    assert len(world.ep._heap) <= 2 * len(world.ep._live) + 64 + 1
