"""An in-memory client/server pair of connections with a simulated clock.

The same bytes a socket would carry pass between the two sides (TLS records, WebSocket frames,
QUIC datagrams), so every protocol can be exercised end to end with no network: the demo and the
core's end-to-end tests use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .connection import Connection, ConnectionEvent, quic_server_connection
from .memory import Chunker, Network, StreamPipe
from .quic_endpoint import QuicEndpoint

__all__ = ["STEP", "ConnectionPair"]

#: Simulated seconds per pump round: lets QUIC's pacer and the timers move.
STEP = 0.002

CLIENT_ADDR = ("127.0.0.1", 50000)
SERVER_ADDR = ("127.0.0.1", 4433)


class ConnectionPair:
    """A client and a server :class:`~msgtrans.core.connection.Connection` joined in memory,
    with a simulated clock: the harness of the demo and of the core's end-to-end tests.

    Args:
        client: the client connection (not started).
        server: the server connection for stream protocols (not started); ``None`` for QUIC,
            whose server connection the *endpoint* creates.
        endpoint: the QUIC server endpoint.
        chunker: how each stream write is cut on its way (default: delivered whole).
        network: what the datagram path does to each round's datagrams (loss, duplicates,
            reordering; default: delivered as sent).
        server_settings: session settings of the server connection the *endpoint* accepts
            (default: none).

    Attributes:
        now: the simulated clock, in seconds.
        wire: bytes carried so far, both ways.
        inbox: events collected per side (``"client"``, ``"server"``); see :meth:`take`.
    """

    def __init__(
        self,
        client: Connection,
        server: Connection | None,
        endpoint: QuicEndpoint | None = None,
        *,
        chunker: Chunker | None = None,
        network: Network | None = None,
        server_settings: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.server = server
        self.endpoint = endpoint
        self.now = 0.0
        self.wire = 0
        self.inbox: dict[str, list[ConnectionEvent]] = {"client": [], "server": []}
        self._pipe = StreamPipe(client, server, chunker) if server is not None else None
        self._network = network or (lambda grams: grams)
        # The session settings of the connection the endpoint accepts (QUIC).
        self._server_settings = server_settings or {}

    def start(self) -> None:
        """Start both sides (the server first, as an accept would) and pump."""
        if self._pipe is not None:
            self._pipe.start(self.now)
        else:
            self.client.start(self.now)
        self.pump()

    def pump(self, rounds: int = 400, until: Callable[[], bool] | None = None) -> None:
        """Carry traffic until quiet, or until *until* holds.

        With *until*, the clock jumps to the next deadline whenever nothing moves (QUIC's close
        waits out its draining period), so long simulated waits cost few rounds.
        """
        for _ in range(rounds):
            self.now += STEP
            moved = self._pump_once()
            self._collect()
            if until is not None:
                if until():
                    return
                if not moved:
                    self.now = max(self.now, self._next_deadline() or self.now)
            elif not moved and self._quiet():
                return

    def advance(self, seconds: float, max_rounds: int = 100_000) -> None:
        """Let *seconds* of simulated time pass, firing every timer due on the way."""
        end = self.now + seconds
        for _ in range(max_rounds):
            self.pump(1)
            if self.now >= end:
                return
            deadline = self._next_deadline()
            self.now = min(end, max(self.now, deadline if deadline is not None else end))
        raise RuntimeError(f"still busy after {max_rounds} rounds")

    def _next_deadline(self) -> float | None:
        deadlines = [c.next_deadline() for c in (self.client, self.server) if c is not None]
        if self.endpoint is not None:
            deadlines.append(self.endpoint.next_deadline())
        return min((d for d in deadlines if d is not None), default=None)

    def _pump_once(self) -> int:
        now = self.now
        for conn in (self.client, self.server):
            if conn is not None:
                deadline = conn.next_deadline()
                if deadline is not None and deadline <= now:
                    conn.handle_timer(now)
        if self._pipe is not None:
            moved = self._pipe.pump(now)
            self.wire = self._pipe.bytes_moved
            return moved
        assert self.endpoint is not None
        endpoint = self.endpoint
        endpoint.handle_timer(now)
        moved = 0
        for gram in self._network([g for g, _a in self.client.datagrams_to_send(now)]):
            endpoint.receive_datagram(gram, CLIENT_ADDR, now)
            moved += len(gram)
        for machine in endpoint.accept():
            self.server = quic_server_connection(machine, session_id="server",
                                                     **self._server_settings)
            self.server.start(now)
        for gram in self._network([g for g, _a in endpoint.datagrams_to_send(now)]):
            self.client.receive_datagram(gram, SERVER_ADDR, now)
            moved += len(gram)
        self.wire += moved
        return moved

    def _quiet(self) -> bool:
        # QUIC keeps acknowledging for a while; stop once nothing is due before long.
        deadline = self.client.next_deadline()
        return deadline is None or deadline > self.now + 0.05

    def _collect(self) -> None:
        self.inbox["client"] += self.client.events()
        if self.server is not None:
            self.inbox["server"] += self.server.events()

    def take(self, side: str) -> list[ConnectionEvent]:
        """Return the events collected for *side* and forget them."""
        events, self.inbox[side] = self.inbox[side], []
        return events
