"""What the io backends (``io_asyncio``, ``io_trio``, ``io_sync``) share: the transport builder's
settings, the shutdown report, the data half of a received message and the counting of QUIC
refusals into the metrics.

Private: each backend subclasses these so its public classes keep their own module, docstrings
and identity; only the I/O-bound parts (building a transport, answering a request) differ.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .core.buffers import PoolBuffer, install_default_receive_pool, receive_pool, release_view
from .core.errors import ConfigurationError
from .core.metrics import TransportMetrics
from .core.packet import Buffer, Packet, PacketType
from .core.session import DEFAULT_REQUEST_TIMEOUT, SessionMachine

__all__ = [
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "MessageBase",
    "ShutdownReport",
    "TransportBuilderBase",
    "count_quic_refusals",
    "skip_sent",
    "take_batch",
]

# The core makes no locks (it is sans-IO); the backends share one receive pool per process,
# given back to from application threads (Message.release), so it gets a real lock here.
install_default_receive_pool(receive_pool(lock=threading.Lock()))

#: Seconds the graceful shutdown at the end of a transport's ``with`` block may take.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0

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
            metrics.error("connection.refused_by_server")
        counted[quic] = refused


_B = TypeVar("_B", bound="TransportBuilderBase")
_R = TypeVar("_R")
_M = TypeVar("_M", bound="MessageBase[Any]")


def skip_sent(parts: list[Buffer], i: int, batch: list[Buffer], sent: int) -> int:
    """After a vectored write of *batch* (``parts[i:i + len(batch)]``) took *sent* bytes:
    return the index in *parts* of the first part not written whole, having replaced a part
    written in part by a view of its rest (so a partial write goes on from where it stopped,
    nothing copied)."""
    for part in batch:
        size = len(part)
        if sent < size:
            if sent:
                parts[i] = memoryview(part)[sent:]
            return i
        sent -= size
        i += 1
    return i


def take_batch(inbox: deque[_M], max_messages: int | None, session: SessionMachine) -> list[_M]:
    """Pop the oldest queued messages of *inbox* (all, or at most *max_messages*) and account
    them to *session*'s receive bound in one step (it may emit ``ReadResumed``: the caller
    processes its events)."""
    if max_messages is None or max_messages >= len(inbox):
        messages = list(inbox)
        inbox.clear()
    else:
        messages = [inbox.popleft() for _ in range(max_messages)]
    session.messages_consumed(len(messages), sum(len(m.payload) for m in messages))
    return messages


@dataclass(frozen=True)
class ShutdownReport:
    """What a shutdown did (every backend's ``graceful_shutdown`` and ``shutdown`` return one).

    Attributes:
        closed_cleanly: sessions whose close handshake completed.
        forced: sessions that were dropped (their transport aborted) or ended uncleanly.
        messages_flushed: messages (including responses) that left during the shutdown.
        elapsed: seconds the shutdown took.
    """

    closed_cleanly: int
    forced: int
    messages_flushed: int
    elapsed: float


class TransportBuilderBase:
    """The settings of a backend's ``TransportBuilder``; the backend adds ``build()``."""

    def __init__(self) -> None:
        self._request_timeout = DEFAULT_REQUEST_TIMEOUT
        self._connect_timeout: float | None = None
        self._shutdown_timeout = DEFAULT_SHUTDOWN_TIMEOUT
        self._session: dict[str, Any] = {}

    def request_timeout(self: _B, seconds: float) -> _B:
        """Seconds a request waits for its response unless the call says otherwise.

        Raises:
            ConfigurationError: not a positive finite number.
        """
        _check_seconds("request_timeout", seconds)
        self._request_timeout = float(seconds)
        return self

    def connect_timeout(self: _B, seconds: float) -> _B:
        """Seconds :meth:`Transport.connect` may take, handshakes included (default: each
        config's ``connect_timeout``).

        Raises:
            ConfigurationError: not a positive finite number.
        """
        _check_seconds("connect_timeout", seconds)
        self._connect_timeout = float(seconds)
        return self

    def shutdown_timeout(self: _B, seconds: float) -> _B:
        """Seconds the graceful shutdown at the end of ``async with`` may take (default 5).

        Raises:
            ConfigurationError: negative or not a number.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            0 <= seconds < float("inf")
        ):
            raise ConfigurationError("shutdown_timeout", f"must be >= 0 seconds, got {seconds!r}")
        self._shutdown_timeout = float(seconds)
        return self

    def session_settings(self: _B, **settings: Any) -> _B:
        """Other settings of every session's machine (``heartbeat_interval``,
        ``idle_timeout``, ``send_high_water_bytes``, ``receive_max_messages``... see
        :class:`~msgtrans.core.session.SessionMachine`); checked by :meth:`build`."""
        self._session.update(settings)
        return self

    def _checked_settings(self) -> dict[str, Any]:
        """The session settings for ``Transport(settings=...)``.

        Raises:
            ConfigurationError: a session setting is invalid.
        """
        settings = {"request_timeout": self._request_timeout, **self._session}
        try:
            SessionMachine(0, **settings)  # validates every setting now, not at first connect
        except TypeError as exc:
            raise ConfigurationError("session_settings", str(exc)) from exc
        return settings


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 < value < float("inf")
    ):
        raise ConfigurationError(
            name, f"must be a positive finite number of seconds, got {value!r}"
        )


class MessageBase(Generic[_R]):
    """A backend's ``Message`` without ``respond()``, which each backend adds (async or
    blocking) using the responder (of type *_R*) it was given."""

    # The backend subclass declares ``__slots__ = ()`` so messages stay dict-free.
    __slots__ = ("_packet", "_responded", "_responder", "session_id")

    def __init__(self, packet: Packet, session_id: int, responder: _R | None = None) -> None:
        self._packet = packet
        self._responder = responder
        self._responded = False
        self.session_id = session_id

    @property
    def payload(self) -> Buffer:
        """The message body."""
        return self._packet.payload

    @property
    def biz_type(self) -> int:
        """The application's type tag, 0..255."""
        return self._packet.biz_type

    @property
    def ext_header(self) -> Buffer:
        """The extension header (possibly empty)."""
        return self._packet.ext_header

    @property
    def message_id(self) -> int:
        """The wire message id."""
        return self._packet.message_id

    @property
    def packet_type(self) -> PacketType:
        """``ONE_WAY``, ``REQUEST`` or ``RESPONSE``."""
        return self._packet.packet_type

    @property
    def packet(self) -> Packet:
        """The underlying wire packet."""
        return self._packet

    @property
    def is_request(self) -> bool:
        """Whether the peer expects a response (:meth:`respond`)."""
        return self._packet.packet_type is PacketType.REQUEST

    @property
    def responded(self) -> bool:
        """Whether :meth:`respond` was already called on this request."""
        return self._responded

    @property
    def pooled(self) -> bool:
        """Whether the payload is a view of a pooled receive buffer that :meth:`release` gives
        back (large payloads received zero-copy through a buffer pool; ``False`` once
        released)."""
        payload = self._packet.payload
        if type(payload) is not memoryview:
            return False
        try:
            buf = payload.obj
        except ValueError:  # released
            return False
        return type(buf) is PoolBuffer and buf.lender is not None

    def release(self) -> None:
        """Give the payload's pooled buffer back for reuse; the message's payload can no longer
        be read afterwards (a released ``memoryview`` raises ``ValueError``).

        Safe to call on any message, any number of times, from any thread: a payload that holds
        no pooled memory (``bytes``, or zero-copy without a pool) is left alone.  Keep what you
        need first (``bytes(message.payload)``).  ``with message:`` releases at the end of the
        block.  A message never released is freed by the garbage collector as usual; its
        buffer is then lost to the pool (see ``docs/buffers.md``).

        The buffer is never reused while a view of it is alive: when you kept slices of the
        payload (``message.payload[:16]``, ``memoryview(message.payload)``), it goes back to the
        pool only once the last of them is gone.

        Raises:
            BufferError: the payload object itself is exported (a numpy array made from it):
                nothing is released; drop the array and call again.
        """
        release_view(self._packet.payload)

    def __enter__(self: _M) -> _M:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        try:
            size = f"{len(self.payload)} bytes"
        except ValueError:  # a released payload
            size = "released"
        return (
            f"<Message {self.packet_type.name} id={self.message_id} biz_type={self.biz_type} "
            f"{size} session={self.session_id}>"
        )

    def __eq__(self, other: Any) -> bool:
        # type(self), not MessageBase: messages of different backends never compared equal.
        if not isinstance(other, type(self)):
            return NotImplemented
        return self._packet == other._packet and self.session_id == other.session_id

    def __hash__(self) -> int:
        return hash((self.session_id, self.packet_type, self.message_id))
