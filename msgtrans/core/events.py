"""Events that protocol machines hand to their driver.

Every protocol machine (TCP, TLS, WebSocket, QUIC) reports what happened as a list of these frozen
values, drained with ``machine.events()``.  A connection's life reads, in order::

    ConnectionEstablished, (PacketReceived | WritePaused | WriteResumed)*, [CloseStarted],
    ConnectionClosed

An error reported by the peer or found in its bytes appears as :class:`ErrorOccurred` followed by
:class:`ConnectionClosed` (``clean=False``): nothing comes after ``ConnectionClosed``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import Protocol, TransportError
from .packet import Packet

__all__ = [
    "CloseStarted",
    "ConnectionClosed",
    "ConnectionEstablished",
    "ErrorOccurred",
    "Event",
    "PacketReceived",
    "WritePaused",
    "WriteResumed",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every protocol machine event."""


@dataclass(frozen=True, slots=True)
class ConnectionEstablished(Event):
    """The handshake is complete: packets can flow both ways.

    Attributes:
        protocol: the transport (``TCP``, ``WEBSOCKET`` or ``QUIC``).
        tls: whether the connection is encrypted (TLS under TCP or WebSocket; always for QUIC).
        alpn: the negotiated ALPN protocol, if any (``"msgtrans.v1"`` on QUIC).
        tls_version: for example ``"TLSv1.3"``, or ``None`` without TLS.
        cipher: the negotiated cipher suite, or ``None`` without TLS.
        subprotocol: the WebSocket subprotocol the server chose (``"msgtrans.v1"``) or ``None``.
        path: the WebSocket request target (``"/"``, ``"/chat?room=1"``) or ``None``.
        headers: the WebSocket handshake headers of the peer, names lower-cased.
    """

    protocol: Protocol
    tls: bool = False
    alpn: str | None = None
    tls_version: str | None = None
    cipher: str | None = None
    subprotocol: str | None = None
    path: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PacketReceived(Event):
    """A whole packet arrived."""

    packet: Packet


@dataclass(frozen=True, slots=True)
class CloseStarted(Event):
    """A close handshake began.

    Attributes:
        code: the protocol's close code (WebSocket close code, QUIC application error code),
            or ``None`` where the protocol has none (TCP).
        reason: the reason text, possibly empty.
        by_peer: ``True`` when the peer started it, ``False`` when we did.
    """

    code: int | None
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The connection is over; the machine accepts no more input and sends nothing more
    after its remaining :meth:`data_to_send`.

    Attributes:
        code: as for :class:`CloseStarted`.
        reason: as for :class:`CloseStarted`.
        clean: ``True`` when both sides completed the close handshake (or, on TCP, both sent
            FIN with no packet cut short); ``False`` after an error, a reset or a timeout.
        error: the error that ended the connection, when ``clean`` is false and there was one.
    """

    code: int | None
    reason: str
    clean: bool
    error: TransportError | None = None


@dataclass(frozen=True, slots=True)
class WritePaused(Event):
    """Stop sending: more bytes are waiting to leave than the high watermark allows
    (or the peer's flow control window is exhausted)."""


@dataclass(frozen=True, slots=True)
class WriteResumed(Event):
    """Sending may go on: the waiting bytes fell under the low watermark."""


@dataclass(frozen=True, slots=True)
class ErrorOccurred(Event):
    """Something went wrong on the connection; a :class:`ConnectionClosed` follows when the error
    ends the connection (every protocol error does)."""

    error: TransportError
