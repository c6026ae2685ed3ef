"""The QUIC listener's table of connections, written once for the three backends.

A QUIC listener serves every connection of one UDP socket through the core's
:class:`~msgtrans.core.quic_endpoint.QuicEndpoint`.  What it does with the endpoint's answers is
the same whatever runs the socket: wrap each accepted machine in a session (through the core's
:func:`~msgtrans.core.connection.quic_server_connection`), visit only the connections an input
touched, forget the ones that are over, stop handing out sessions once closed.  A backend
subclasses :class:`_QuicTable` and supplies two hooks: :meth:`~_QuicTable._attach` (give a new
session its seat on the shared socket and have it delivered once established) and
:meth:`~_QuicTable._session_over` (the seat's end: no socket of its own closes).

Nothing here does I/O, starts a task or waits.  The few helpers that reach the QUIC machine
of a connection (:func:`_quic_machine`) belong in the core (a ``Connection`` property); they
live here so that no backend names the machine class.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

from ..core.connection import Connection, quic_server_connection
from ..core.machine import Address, MachineState
from ..core.metrics import TransportMetrics
from ..core.quic import QuicMachine
from ..core.quic_endpoint import QuicEndpoint

__all__ = ["_RECEIVE_BUFFER", "_QuicSeat", "_QuicTable", "_grow_receive_buffer", "_quic_machine",
           "_refuse"]

#: Receive buffer asked of the kernel for a QUIC socket (it grants at most
#: ``net.core.rmem_max``): a burst of a congestion window of 16 KiB loopback datagrams must not
#: overflow the socket while the driver is busy elsewhere (a drop costs a loss recovery).
_RECEIVE_BUFFER = 4 * 1024 * 1024


class _RefusingEndpoint(Protocol):
    @property
    def connections_refused(self) -> int: ...


class _QuicListener(Protocol):
    @property
    def endpoint(self) -> _RefusingEndpoint: ...


def count_quic_refusals(metrics: TransportMetrics, listeners: Iterable[_QuicListener],
                        counted: dict[Any, int]) -> None:
    """Add to *metrics* the connections each QUIC listener's endpoint refused at
    ``max_sessions`` since *counted* last recorded it (the endpoint counts its own refusals;
    stream listeners report each one as it happens), and record the new totals in *counted*."""
    for quic in listeners:
        refused = quic.endpoint.connections_refused
        for _ in range(refused - counted.get(quic, 0)):
            # As the stream listeners count theirs: a refusal by reason (stats().refusals) and
            # a connection.refused_by_server error.
            metrics.refusal("max_sessions")
        counted[quic] = refused


class _Session(Protocol):
    """What the table calls on a backend's session (every backend's ``Session`` has it)."""

    @property
    def connection(self) -> Connection: ...

    @property
    def machine_closed(self) -> bool: ...

    def account_flushed(self) -> None: ...

    def process(self) -> None: ...

    def start_close(self, code: int | None, reason: str) -> Any: ...


_S = TypeVar("_S", bound=_Session)
_IO = TypeVar("_IO")


def _grow_receive_buffer(sock: Any) -> None:
    """Ask for :data:`_RECEIVE_BUFFER` bytes of receive buffer on a UDP socket; a refusal (a
    platform without the option, a sandbox) leaves the default."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)


def _quic_machine(connection: Connection) -> QuicMachine:
    """The QUIC machine of *connection* (a QUIC session's): its flow-control credit and its
    gathering are QUIC's own.  Belongs in the core."""
    return cast(QuicMachine, connection.machine)


def _refuse(session: Any) -> None:
    """The listener is closed: close a session it accepted after, instead of handing it out."""
    session.start_close(None, "the listener is closed")


class _QuicSeat:
    """The part every backend's seat on a listener's shared socket has: the accepted machine,
    its peer, and *wake* (the listener's "send soon").  The pause is QUIC's own: the socket is
    shared by every connection, so the machine stops granting this peer credit and the peer
    stops at the window it has."""

    __slots__ = ("_listener", "_machine", "_session", "_wake")

    def __init__(self, listener: Any, session: Any, machine: QuicMachine,
                 wake: Callable[[], None]) -> None:
        self._listener = listener
        self._session = session
        self._machine = machine
        self._wake = wake

    @property
    def peer_address(self) -> Address | None:
        """The peer's socket address (the endpoint follows a migration)."""
        return self._machine.peer_address

    def pause_reading(self) -> None:
        """Stop granting the peer flow-control credit: the application fell behind."""
        self._machine.pause_reading()

    def resume_reading(self) -> None:
        """Grant credit again; the update leaves with the next datagrams."""
        self._machine.resume_reading()
        self._wake()

    def abort(self) -> None:
        """Drop the session now: the peer is told (CONNECTION_CLOSE), the shared socket stays."""
        self._close_machine()
        self._wake()
        self._session.socket_gone()

    def _close_machine(self) -> None:
        if not self._machine.is_closed:
            self._machine.close(0, "aborted")
        self._listener.forget(self._machine)


class _QuicTable(Generic[_S, _IO]):
    """The accepted sessions of one QUIC listener, each with its seat, keyed by machine (the
    endpoint names connections by machine, so a visit or a close costs no scan)."""

    endpoint: QuicEndpoint
    _on_established: Callable[[_S], None]

    def _init_table(self, endpoint: QuicEndpoint,
                    new_session: Callable[[Callable[[int], Connection]], _S],
                    on_established: Callable[[_S], None], settings: dict[str, Any]) -> None:
        self.endpoint = endpoint
        # From now on the endpoint records which connections have news (see _visit).
        endpoint.take_touched()
        self._new_session = new_session
        self._on_established = on_established
        self._settings = settings
        self._seats: dict[QuicMachine, tuple[_S, _IO]] = {}
        self._stopping = False  # stop() was called: the socket closes once the endpoint is

    # --- the hooks -----------------------------------------------------------------------------

    def _attach(self, session: _S, machine: QuicMachine, now: float) -> _IO:
        """Give the new *session* its seat on the shared socket and arrange its delivery to
        the application once established; return the seat."""
        raise NotImplementedError

    def _session_over(self, session: _S, seat: _IO) -> None:
        """*session*'s machine is over: its seat ends (there is no socket of its own)."""
        raise NotImplementedError

    # --- the table -----------------------------------------------------------------------------

    @property
    def _sessions(self) -> dict[QuicMachine, _S]:
        """The sessions by machine, without their seats (a copy, for inspection)."""
        return {machine: session for machine, (session, _seat) in self._seats.items()}

    def _accept(self, now: float) -> None:
        """Wrap each connection the endpoint accepted since the last call in a session."""
        seats = self._seats
        for machine in self.endpoint.accept():
            session = self._new_session(self._connection_for(machine))
            seats[machine] = (session, self._attach(session, machine, now))

    def _connection_for(self, machine: QuicMachine) -> Callable[[int], Connection]:
        settings = self._settings

        def make(session_id: int) -> Connection:
            return quic_server_connection(machine, session_id=session_id, **settings)

        return make

    def _visit(self, machines: list[QuicMachine], *, account: bool) -> None:
        """Handle the events of the connections an input touched (*machines*, from the
        endpoint's ``take_touched``: O(touched), not O(sessions)); *account*: their packets
        just left, so each session counts what it flushed."""
        seats = self._seats
        for machine in machines:
            entry = seats.get(machine)
            if entry is None:
                continue  # forgotten (aborted, or over and already visited)
            session, seat = entry
            if account:
                session.account_flushed()
            if machine.has_events:
                session.process()
            if session.machine_closed:
                del seats[machine]
                self._session_over(session, seat)

    def forget(self, machine: QuicMachine) -> None:
        """Drop the session of *machine* from the table."""
        self._seats.pop(machine, None)

    def _take_all(self) -> list[tuple[_S, _IO]]:
        """Empty the table (the socket is gone); return what it held."""
        entries = list(self._seats.values())
        self._seats.clear()
        return entries

    def _begin_stop(self) -> None:
        """Close the endpoint (every connection on it); the backend closes the socket once
        ``_stopping`` and the endpoint is closed."""
        self._stopping = True
        self.endpoint.close(0, "shutdown")

    def _skip_closing_periods(self) -> None:
        # The socket closes right after the shutdown, which RFC 9000 section 10.2 accepts
        # instead of the closing and draining periods (late packets then find no socket and
        # induce no answer), so a shutdown never waits three probe timeouts for a peer gone.
        for machine in self.endpoint.connections:
            machine.closing_period = False

    def _end_closing_periods(self, now: float) -> list[tuple[bytes, Address]]:
        """The datagrams that end the closing periods begun before the shutdown.

        A connection whose CONNECTION_CLOSE left before :meth:`_skip_closing_periods` sits in
        its closing period with nothing to send, so the endpoint does not flush it again; its
        own flush ends the period now that ``closing_period`` is off (what it returns still
        goes out)."""
        out: list[tuple[bytes, Address]] = []
        for machine in self.endpoint.connections:
            if machine.state is MachineState.CLOSING and not machine.closing_period:
                out += machine.datagrams_to_send(now)
        return out

    def close(self) -> None:
        """Stop handing out new sessions (sessions already accepted go on)."""
        # The endpoint refuses new Initials once it is closing, but its close() also closes
        # every connection; so close what arrives instead, one by one.
        self._on_established = _refuse
