"""The one face every protocol machine shows its driver.

A protocol machine is a sans-IO state machine for one connection of one wire protocol, in the
style of h11, wsproto and aioquic.  The driver's loop is always the same::

    machine.start(now)
    loop:
        write machine.data_to_send()                # or datagrams_to_send(now)
        if machine.write_closed: shut the write side once (TCP FIN)
        wait for input or machine.next_deadline()
        machine.receive_data(chunk, now)            # b"" is EOF; or receive_datagram(...)
        machine.handle_timer(now)                   # when the deadline passed
        for event in machine.events(): ...

Packets to send go in with :meth:`ProtocolMachine.send_packet`; packets sent before the handshake
completes are queued and leave when it does.  Time only ever comes in as ``now`` (seconds on any
monotonic clock the driver likes); the machine never reads a clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from enum import Enum
from typing import Any, Literal

from .errors import Protocol, TransportConnectionError, TransportError
from .events import ConnectionClosed, ErrorOccurred, Event
from .packet import Buffer, Packet

__all__ = [
    "Address",
    "DatagramMachine",
    "MachineState",
    "ProtocolMachine",
    "StreamMachine",
]

#: A socket address as the socket module gives it: ``(host, port)`` or the IPv6 4-tuple.
Address = tuple[Any, ...]


class MachineState(str, Enum):
    """Where a protocol machine is in its life."""

    IDLE = "idle"  # created, start() not called yet
    HANDSHAKING = "handshaking"  # start() called, handshake not complete
    OPEN = "open"  # ConnectionEstablished emitted; packets flow
    CLOSING = "closing"  # a close handshake is under way
    CLOSED = "closed"  # ConnectionClosed emitted; nothing more happens


class ProtocolMachine(ABC):
    """Base class of every protocol machine.

    Attributes:
        protocol: the wire protocol this machine speaks.
        is_client: ``True`` for the side that opened the connection.
        state: the :class:`MachineState`.
        going_away_code: the close code to pass to :meth:`close` when this end goes away
            (a server shutting down, a listener that no longer accepts): WebSocket's 1001;
            ``None`` (the protocol's normal close) for the others.
    """

    protocol: Protocol
    transport_kind: Literal["stream", "datagram"]
    going_away_code: int | None = None

    def __init__(self, *, is_client: bool) -> None:
        self.is_client = is_client
        self.state = MachineState.IDLE
        self._events: list[Event] = []

    # --- the common face -----------------------------------------------------------------------

    def unused_buffer(self) -> None:  # noqa: B027  (optional, not abstract: a no-op default)
        """Say the last :meth:`get_buffer` received nothing (the read found no bytes; no
        :meth:`buffer_updated` follows), so that a machine with nothing buffered gives up its
        receive memory until the next read: an idle connection holds none.  A no-op here
        (and for datagram machines, which have no such memory)."""

    def events(self) -> list[Event]:
        """Return the events that happened since the last call, oldest first, and forget them."""
        events = self._events
        self._events = []
        return events

    @property
    def has_events(self) -> bool:
        """Whether :meth:`events` would return anything (a cheap check for drivers' hot
        paths; a wrapping machine also looks at the machine it wraps)."""
        return bool(self._events)

    @abstractmethod
    def start(self, now: float) -> None:
        """Begin the connection: a client queues its first handshake bytes.

        Call once, right after the socket is connected (client) or accepted (server).
        """

    @abstractmethod
    def send_packet(self, packet: Packet) -> None:
        """Queue *packet* for sending.

        Raises:
            TransportConnectionError: the connection is closing or closed
                (code ``connection.closed``).
            ResourceError: the packet is larger than the protocol or the configured limit allows.
        """

    def send_packets(self, packets: Iterable[Packet]) -> None:
        """Queue several packets at once (a batch costs less than one call per packet)."""
        for packet in packets:
            self.send_packet(packet)

    @abstractmethod
    def close(self, code: int | None = None, reason: str = "") -> None:
        """Start a graceful close: what is queued still leaves, then the protocol's close.

        *code* is the WebSocket close code (default 1000) or the QUIC application error code
        (default 0); TCP has none and sends FIN.  Closing twice does nothing.

        ``close`` takes no ``now``: a machine that needs a close timer reports the last ``now``
        it saw as its :meth:`next_deadline`, so the driver's next ``handle_timer(now)`` (due at
        once) arms the real timer from the true time.  Counting from a stale ``now`` instead
        would fire the timeout early on a connection that had been idle.
        """

    @abstractmethod
    def next_deadline(self) -> float | None:
        """Return when :meth:`handle_timer` must next be called, or ``None`` for never."""

    @abstractmethod
    def handle_timer(self, now: float) -> None:
        """Fire whatever timers are due at *now* (keepalive, idle, close, QUIC recovery)."""

    # --- helpers for subclasses ----------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """Whether :class:`~msgtrans.core.events.ConnectionClosed` has been emitted."""
        return self.state is MachineState.CLOSED

    def _closed_error(self, operation: str = "send") -> TransportConnectionError:
        return TransportConnectionError(
            f"cannot {operation}: the {self.protocol.value} connection is {self.state.value}",
            code="connection.closed",
            retryable=False,
        )

    def _fail(self, error: TransportError, code: int | None = None) -> None:
        """Report *error* and end the connection uncleanly (idempotent)."""
        if self.state is MachineState.CLOSED:
            return
        self.state = MachineState.CLOSED
        self._events.append(ErrorOccurred(error))
        self._events.append(ConnectionClosed(code, error.reason, clean=False, error=error))


class StreamMachine(ProtocolMachine):
    """A protocol machine over a byte stream (TCP, TLS over TCP, WebSocket).

    Attributes:
        write_closed: becomes ``True`` when the machine wants the write side shut down after
            its pending bytes (a TCP half-close).  The driver shuts it once.
    """

    transport_kind: Literal["stream", "datagram"] = "stream"

    def __init__(self, *, is_client: bool) -> None:
        super().__init__(is_client=is_client)
        self.write_closed = False
        self._scratch: bytearray | None = None

    @abstractmethod
    def receive_data(self, data: Buffer, now: float) -> None:
        """Feed bytes read from the stream; ``b""`` means the peer sent EOF."""

    @abstractmethod
    def data_to_send(self) -> list[Buffer]:
        """Return the bytes to write, in order, as a list for a vectored write, and forget them."""

    def connection_lost(self, now: float, error: TransportError | None = None) -> None:
        """Tell the machine the socket broke (reset, aborted) rather than ending with EOF."""
        if self.state is MachineState.CLOSED:
            return
        self._fail(
            error
            or TransportConnectionError(
                f"the {self.protocol.value} connection was lost", code="connection.reset"
            )
        )

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Return writable memory to receive into; then call :meth:`buffer_updated`.

        The default copies through a scratch buffer; machines with a zero-copy path override it.
        """
        size = max(sizehint, 65536)
        if self._scratch is None or len(self._scratch) < size:
            self._scratch = bytearray(size)
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int, now: float) -> None:
        """Account for *nbytes* received into the last :meth:`get_buffer` (0 is not EOF here;
        EOF is ``receive_data(b"", now)``)."""
        if nbytes and self._scratch is not None:
            self.receive_data(bytes(self._scratch[:nbytes]), now)


class DatagramMachine(ProtocolMachine):
    """A protocol machine over datagrams (QUIC)."""

    transport_kind: Literal["stream", "datagram"] = "datagram"

    @abstractmethod
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Feed one datagram received from *addr*."""

    @abstractmethod
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Return the datagrams to send with their destinations, and forget them."""
