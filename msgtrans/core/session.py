"""The session machine: one msgtrans session's life, ids, requests, deadlines and flow control.

A :class:`SessionMachine` sits between the application and a protocol machine (TCP, TLS,
WebSocket, QUIC) and knows nothing of either: packets come out of its send methods and go in
through :meth:`SessionMachine.receive_packet`; time only ever comes in as ``now``.  It owns

* the lifecycle: :class:`SessionState` moves only along :data:`TRANSITIONS`;
* message ids (1, 2, ... 2**32-1, then 1 again; responses reuse their request's id);
* request/response correlation: a table of pending requests with deadlines, responses matched
  by id, unknown responses dropped and counted, every pending request failed on close;
* heartbeat and idle deadlines;
* send-side watermarks (bytes and messages) and a receive-side bound, as pause/resume events;
* its share of a transport's :class:`~msgtrans.core.budget.MemoryBudget`, when it has one: the
  same byte counts charged to the budget, and the same pause/resume events when the budget is
  over its pause mark (see :meth:`SessionMachine.attach_budget`).

A driver's loop around it::

    session = SessionMachine(session_id)
    # protocol events                         -> session calls
    ConnectionEstablished                     -> session.established(now)
    PacketReceived(packet)                    -> session.receive_packet(packet, now)
    CloseStarted(by_peer=True)                -> session.begin_close(CloseReason.PEER_CLOSED)
    ConnectionClosed(clean, error)            -> session.closed(reason, error)
    # application calls                       -> session calls, then protocol.send_packet(packet)
    send / request / respond                  -> session.send(...) / request(...) / respond(...)
    # flow control
    packet handed to the socket / written     -> session.packet_queued(n) / session.flushed(n, k)
    message queued for / taken by the app     -> session.message_delivered(n) / message_consumed(n)
    # timers
    sleep until min(protocol.next_deadline(), session.next_deadline()); session.handle_timer(now)
    # then
    for event in session.events(): resolve futures, fill queues, pause/resume, send pings...
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from .budget import MemoryBudget
from .compression import CompressionPolicy
from .errors import (
    ConfigurationError,
    ResourceError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from .packet import HEADER_SIZE, MAX_U16, MAX_U32, Buffer, MessageIdCounter, Packet, PacketType
from .packet import outgoing_packet as _outgoing

__all__ = [
    "DEFAULT_RECEIVE_MAX_BYTES",
    "DEFAULT_RECEIVE_MAX_MESSAGES",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SEND_HIGH_WATER_BYTES",
    "DEFAULT_SEND_HIGH_WATER_MESSAGES",
    "DEFAULT_SEND_LOW_WATER_BYTES",
    "DEFAULT_SEND_LOW_WATER_MESSAGES",
    "TRANSITIONS",
    "CloseReason",
    "HeartbeatDue",
    "MemoryResumed",
    "MessageReceived",
    "ReadPaused",
    "ReadResumed",
    "RequestFailed",
    "RequestReceived",
    "ResponseReceived",
    "SendPaused",
    "SendResumed",
    "SessionClosed",
    "SessionEvent",
    "SessionMachine",
    "SessionState",
    "SessionStateError",
    "SessionStats",
    "check_transition",
]

#: Seconds a request waits for its response unless told otherwise (the wire spec's default).
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_SEND_HIGH_WATER_BYTES = 1024 * 1024
DEFAULT_SEND_LOW_WATER_BYTES = 256 * 1024
DEFAULT_SEND_HIGH_WATER_MESSAGES = 1024
DEFAULT_SEND_LOW_WATER_MESSAGES = 256
DEFAULT_RECEIVE_MAX_MESSAGES = 1024
DEFAULT_RECEIVE_MAX_BYTES = 16 * 1024 * 1024

_INF = float("inf")


# --- states and transitions -----------------------------------------------------------------


class SessionState(str, Enum):
    """Where a session is in its life.

    ``CONNECTING``: created, the protocol handshake is not complete (sends are queued by the
    protocol machine).  ``OPEN``: messages flow both ways.  ``CLOSING``: a close was asked for or
    began at the peer; no new one-way messages or requests, but pending requests may still get
    their responses and received requests may still be answered.  ``CLOSED``: over; nothing is
    pending and nothing more happens.
    """

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"

    def __str__(self) -> str:
        return self.value


_CONNECTING = SessionState.CONNECTING
_OPEN = SessionState.OPEN
_CLOSING = SessionState.CLOSING
_CLOSED = SessionState.CLOSED

#: The legal moves of a session, as a table: ``TRANSITIONS[source]`` is the set of states
#: *source* may move to.  Nothing moves back to ``CONNECTING`` and nothing leaves ``CLOSED``.
TRANSITIONS: Mapping[SessionState, frozenset[SessionState]] = MappingProxyType(
    {
        _CONNECTING: frozenset({_OPEN, _CLOSING, _CLOSED}),
        _OPEN: frozenset({_CLOSING, _CLOSED}),
        _CLOSING: frozenset({_CLOSED}),
        _CLOSED: frozenset(),
    }
)


class SessionStateError(RuntimeError):
    """A driver asked the session machine for a move :data:`TRANSITIONS` does not allow.

    This is a bug in the code driving the machine (for example: :meth:`SessionMachine.established`
    called twice, or after the session closed), never a network condition, so it is a
    ``RuntimeError`` and not a :class:`~msgtrans.core.errors.TransportError`: applications never
    see it from a correct driver, and retrying cannot help.

    Attributes:
        source: the state the session was in.
        target: the state that was asked for.
    """

    def __init__(self, source: SessionState, target: SessionState) -> None:
        self.source = source
        self.target = target
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[source])) or "nothing"
        super().__init__(
            f"illegal session transition {source.value} -> {target.value} "
            f"({source.value} may move to: {allowed})"
        )


def check_transition(source: SessionState, target: SessionState) -> None:
    """Check that a session may move from *source* to *target*.

    Raises:
        SessionStateError: the move is not in :data:`TRANSITIONS` (staying put is not a move).
    """
    if target not in TRANSITIONS[source]:
        raise SessionStateError(source, target)


class CloseReason(str, Enum):
    """Why a session closed (or began to close)."""

    LOCAL = "local"  # the application closed it
    PEER_CLOSED = "peer_closed"  # the peer closed it cleanly
    ERROR = "error"  # a connection or protocol error ended it
    IDLE_TIMEOUT = "idle_timeout"  # nothing arrived from the peer for idle_timeout seconds
    # A server session got no complete packet within first_packet_timeout of its handshake.
    FIRST_PACKET_TIMEOUT = "first_packet_timeout"
    SHUTDOWN = "shutdown"  # the transport (or server) is shutting down

    def __str__(self) -> str:
        return self.value


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """Base class of every event a :class:`SessionMachine` hands its driver."""


@dataclass(frozen=True, slots=True)
class MessageReceived(SessionEvent):
    """A one-way message arrived: give it to the application."""

    packet: Packet


@dataclass(frozen=True, slots=True)
class RequestReceived(SessionEvent):
    """A request arrived: give it to the application, which answers with
    :meth:`SessionMachine.respond`."""

    packet: Packet


@dataclass(frozen=True, slots=True)
class ResponseReceived(SessionEvent):
    """The response to our request *request_id* arrived (the request is no longer pending)."""

    request_id: int
    packet: Packet


@dataclass(frozen=True, slots=True)
class RequestFailed(SessionEvent):
    """Our request *request_id* will never get its response; it is no longer pending.

    Attributes:
        request_id: the message id of the request.
        error: a :class:`~msgtrans.core.errors.TransportTimeoutError` (code ``timeout.request``)
            when its deadline passed, otherwise the error that closed the session (code
            ``connection.closed`` after an ordinary close).  Each request gets its own instance.
    """

    request_id: int
    error: TransportError


@dataclass(frozen=True, slots=True)
class HeartbeatDue(SessionEvent):
    """Nothing was sent for ``heartbeat_interval`` seconds: send a keepalive now.

    What a heartbeat is belongs to the connection (a WebSocket or QUIC ping, or a message); the
    session counts the heartbeat as a send, so the next one is due an interval later.
    """


@dataclass(frozen=True, slots=True)
class SendPaused(SessionEvent):
    """The send backlog went above a high watermark (bytes or messages): hold new sends."""


@dataclass(frozen=True, slots=True)
class SendResumed(SessionEvent):
    """The send backlog fell to both low watermarks: sends may go on."""


@dataclass(frozen=True, slots=True)
class ReadPaused(SessionEvent):
    """The application fell behind (received-but-unconsumed messages or bytes went above
    the bound): stop reading from the socket."""


@dataclass(frozen=True, slots=True)
class ReadResumed(SessionEvent):
    """The application caught up (to half the bound or less): read from the socket again."""


@dataclass(frozen=True, slots=True)
class MemoryResumed(SessionEvent):
    """This session freed memory of the transport's :class:`~msgtrans.core.budget.MemoryBudget`
    and the budget fell to its resume mark: *sessions*, other sessions the budget had paused,
    were resumed (each has its ``ReadResumed`` / ``SendResumed`` in its own events, which its
    driver must now handle: they may be waiting for input that cannot come while paused).

    Attributes:
        sessions: the session machines resumed, oldest pause first (this one excluded).
    """

    sessions: tuple[SessionMachine, ...]


@dataclass(frozen=True, slots=True)
class SessionClosed(SessionEvent):
    """The session reached ``CLOSED``: nothing is pending and no event follows this one.

    When the session closed itself (idle timeout) the driver must also close the connection.

    Attributes:
        reason: why it closed.
        detail: free text about the reason, possibly empty.
        error: the error that ended it, or ``None`` after a clean close.
    """

    reason: CloseReason
    detail: str = ""
    error: TransportError | None = None


_HEARTBEAT_DUE = HeartbeatDue()
_SEND_PAUSED = SendPaused()
_SEND_RESUMED = SendResumed()
_READ_PAUSED = ReadPaused()
_READ_RESUMED = ReadResumed()


# --- statistics -------------------------------------------------------------------------------


@dataclass(slots=True)
class SessionStats:
    """Counters of one session (plain data; all start at 0).

    Attributes:
        messages_sent: packets made by send, request and respond.
        bytes_sent: their payload bytes (uncompressed).
        messages_received: packets given to :meth:`SessionMachine.receive_packet` while the
            session was not closed, unmatched responses included.
        bytes_received: their payload bytes.
        requests_sent: requests made.
        requests_completed: requests whose response arrived.
        requests_timed_out: requests whose deadline passed first.
        requests_failed: requests failed because the session closed.
        requests_cancelled: requests the driver gave up on (:meth:`SessionMachine.cancel`).
        requests_received: requests that arrived from the peer.
        unmatched_responses: responses dropped because no request with their id was pending
            (never sent, already answered, timed out or cancelled).
        heartbeats: heartbeats that came due.
    """

    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    requests_sent: int = 0
    requests_completed: int = 0
    requests_timed_out: int = 0
    requests_failed: int = 0
    requests_cancelled: int = 0
    requests_received: int = 0
    unmatched_responses: int = 0
    heartbeats: int = 0


# --- the machine ------------------------------------------------------------------------------

# A pending request: (deadline, sequence, request_id, timeout).  The same tuple object is the
# value in the pending dict and the item in the deadline heap, so "is this heap item still live"
# is one identity check and a finished request costs nothing until its item surfaces (lazy
# deletion).  The sequence number breaks deadline ties in send order and keeps heapq from ever
# comparing further.
_Pending = tuple[float, int, int, float]

_ONE_WAY = PacketType.ONE_WAY
_REQUEST = PacketType.REQUEST
_RESPONSE = PacketType.RESPONSE


def _check_positive(name: str, value: float, *, integer: bool) -> None:
    # bool is an int; True as a byte count is certainly a mistake.
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(name, f"must be a positive integer, got {value!r}")
    elif (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value < _INF  # also refuses NaN
    ):
        raise ConfigurationError(
            name, f"must be a positive finite number of seconds, got {value!r}"
        )


class SessionMachine:
    """The sans-IO state machine of one msgtrans session (see the module docstring).

    Args:
        session_id: the id errors and logs name this session by.
        request_timeout: seconds a request waits for its response (default 10, the spec's).
        heartbeat_interval: emit :class:`HeartbeatDue` when nothing was sent for this long while
            open (default ``None``: no heartbeats).
        idle_timeout: close the session (:class:`SessionClosed` with a ``timeout.idle`` error)
            when nothing arrived for this long while open (default ``None``: never).
        send_high_water_bytes: pause sends above this backlog in bytes (default 1 MiB).
        send_low_water_bytes: resume at or below this many bytes (default 256 KiB).
        send_high_water_messages: pause sends above this backlog in messages (default 1024).
        send_low_water_messages: resume at or below this many messages (default 256).
        receive_max_messages: pause reading above this many undelivered messages (default 1024).
        receive_max_bytes: pause reading above this many undelivered bytes (default 16 MiB).
        max_pending_requests: refuse new requests while this many are pending
            (default ``None``: no limit).
        memory_budget: the transport's :class:`~msgtrans.core.budget.MemoryBudget`, shared
            with its other sessions (default ``None``: no budget; see :meth:`attach_budget`).
        compress_threshold: payloads of at least this many bytes leave compressed (default
            ``None``: none are); the receiver decompresses whatever a packet says.
        compression: ``"zlib"`` (default) or ``"zstd"`` (needs ``msgtrans[zstd]``).
        compression_level: the method's level (default: its own; zlib -1..9, zstd 1..22).

    Raises:
        ConfigurationError: a setting is not a positive number, or a low watermark is above its
            high watermark; the error names the field.

    Attributes:
        session_id: as given.
        compression: the :class:`~msgtrans.core.compression.CompressionPolicy`, or ``None``.
        stats: the session's :class:`SessionStats`.
        budget_owner: what the driver knows this session by (default ``None``); a driver sets
            it so that a :class:`MemoryResumed` naming this machine leads it to its session.
    """

    __slots__ = (
        "_budget",
        "_budget_read_hold",
        "_budget_send_hold",
        "_can_respond",
        "_can_send",
        "_close_detail",
        "_close_reason",
        "_events",
        "_first_deadline",
        "_first_packet_timeout",
        "_heap",
        "_heartbeat_interval",
        "_held",
        "_idle_timeout",
        "_ids",
        "_last_recv",
        "_last_send",
        "_max_pending",
        "_outgoing",
        "_pending",
        "_read_paused",
        "_receive_bytes",
        "_receive_max_bytes",
        "_receive_max_messages",
        "_receive_messages",
        "_request_timeout",
        "_send_bytes",
        "_send_high_bytes",
        "_send_high_messages",
        "_send_low_bytes",
        "_send_low_messages",
        "_send_messages",
        "_send_paused",
        "_seq",
        "_state",
        "budget_owner",
        "compression",
        "session_id",
        "stats",
    )

    def __init__(
        self,
        session_id: int | str,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        heartbeat_interval: float | None = None,
        idle_timeout: float | None = None,
        send_high_water_bytes: int = DEFAULT_SEND_HIGH_WATER_BYTES,
        send_low_water_bytes: int = DEFAULT_SEND_LOW_WATER_BYTES,
        send_high_water_messages: int = DEFAULT_SEND_HIGH_WATER_MESSAGES,
        send_low_water_messages: int = DEFAULT_SEND_LOW_WATER_MESSAGES,
        receive_max_messages: int = DEFAULT_RECEIVE_MAX_MESSAGES,
        receive_max_bytes: int = DEFAULT_RECEIVE_MAX_BYTES,
        max_pending_requests: int | None = None,
        memory_budget: MemoryBudget | None = None,
        compress_threshold: int | None = None,
        compression: str = "zlib",
        compression_level: int | None = None,
    ) -> None:
        _check_positive("request_timeout", request_timeout, integer=False)
        if heartbeat_interval is not None:
            _check_positive("heartbeat_interval", heartbeat_interval, integer=False)
        if idle_timeout is not None:
            _check_positive("idle_timeout", idle_timeout, integer=False)
        _check_positive("send_high_water_bytes", send_high_water_bytes, integer=True)
        _check_positive("send_high_water_messages", send_high_water_messages, integer=True)
        _check_positive("receive_max_messages", receive_max_messages, integer=True)
        _check_positive("receive_max_bytes", receive_max_bytes, integer=True)
        if max_pending_requests is not None:
            _check_positive("max_pending_requests", max_pending_requests, integer=True)
        # A low watermark of 0 is legal: "resume only when everything has left".
        for name, low, high in (
            ("send_low_water_bytes", send_low_water_bytes, send_high_water_bytes),
            ("send_low_water_messages", send_low_water_messages, send_high_water_messages),
        ):
            if isinstance(low, bool) or not isinstance(low, int) or not 0 <= low <= high:
                raise ConfigurationError(
                    name, f"must be an integer between 0 and the high watermark {high}, got {low!r}"
                )

        self.session_id = session_id
        # None, or which payloads leave compressed; the packet maker is bound once so that a
        # session that compresses nothing pays nothing per message.
        self.compression: CompressionPolicy | None = (
            None if compress_threshold is None
            else CompressionPolicy(compress_threshold, compression, compression_level)
        )
        self._outgoing = _outgoing if self.compression is None else self._compressing
        self.stats = SessionStats()
        self._state = _CONNECTING
        self._can_send = True  # CONNECTING or OPEN: new messages and requests allowed
        self._can_respond = True  # anything but CLOSED
        self._ids = MessageIdCounter()
        self._close_reason = CloseReason.LOCAL
        self._close_detail = ""
        self._events: list[SessionEvent] = []

        self._request_timeout = float(request_timeout)
        self._max_pending = max_pending_requests
        self._pending: dict[int, _Pending] = {}
        self._heap: list[_Pending] = []
        self._seq = 0

        self._heartbeat_interval = heartbeat_interval
        self._idle_timeout = idle_timeout
        # See require_first_packet: infinity while no such deadline runs (one comparison in
        # next_deadline, the same as no feature at all once the first packet arrived).
        self._first_packet_timeout: float | None = None
        self._first_deadline = _INF
        # See hold_for_admission: the first-packet deadline also runs past packets that
        # were not a message for the application (an unmatched response).
        self._held = False
        self._last_send = 0.0
        self._last_recv = 0.0

        self._send_high_bytes = send_high_water_bytes
        self._send_low_bytes = send_low_water_bytes
        self._send_high_messages = send_high_water_messages
        self._send_low_messages = send_low_water_messages
        self._send_bytes = 0
        self._send_messages = 0
        self._send_paused = False

        self._receive_max_messages = receive_max_messages
        self._receive_max_bytes = receive_max_bytes
        self._receive_messages = 0
        self._receive_bytes = 0
        self._read_paused = False

        self._budget: MemoryBudget | None = None
        self._budget_read_hold = False  # reading paused by the budget (not only the bound)
        self._budget_send_hold = False  # sending paused by the budget (not only the marks)
        self.budget_owner: object = None
        if memory_budget is not None:
            self.attach_budget(memory_budget)

    # --- what the driver reads ---------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The current :class:`SessionState`."""
        return self._state

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the session is closing or closed, or ``None`` while it is neither."""
        state = self._state
        return None if state is _CONNECTING or state is _OPEN else self._close_reason

    @property
    def pending_count(self) -> int:
        """How many of our requests are waiting for a response."""
        return len(self._pending)

    def is_pending(self, request_id: int) -> bool:
        """Return whether our request *request_id* is waiting for a response."""
        return request_id in self._pending

    @property
    def last_message_id(self) -> int:
        """The id given to the last one-way message or request (0 before the first)."""
        return self._ids.last

    @property
    def send_paused(self) -> bool:
        """Whether sends are paused by the send watermarks (see :class:`SendPaused`)."""
        return self._send_paused

    @property
    def read_paused(self) -> bool:
        """Whether reading is paused by the receive bound (see :class:`ReadPaused`)."""
        return self._read_paused

    @property
    def send_backlog(self) -> tuple[int, int]:
        """``(bytes, messages)`` queued but not yet flushed, as the driver reported them."""
        return self._send_bytes, self._send_messages

    @property
    def receive_backlog(self) -> tuple[int, int]:
        """``(bytes, messages)`` delivered to the application but not yet consumed."""
        return self._receive_bytes, self._receive_messages

    @property
    def memory_budget(self) -> MemoryBudget | None:
        """The transport's memory budget this session charges, or ``None``."""
        return self._budget

    @property
    def budget_paused(self) -> bool:
        """Whether the memory budget (rather than, or as well as, this session's own bounds)
        holds its reading or sending paused."""
        return self._budget_read_hold or self._budget_send_hold

    def attach_budget(self, budget: MemoryBudget) -> None:
        """Charge *budget* from now on: the send backlog and the received-but-unconsumed
        bytes (what :attr:`send_backlog` and :attr:`receive_backlog` count) are charged to it
        as they grow and credited as they shrink; the backlogs already there are charged now.

        While the budget is over its pause mark, a session that charges it pauses the side it
        charged (``ReadPaused`` for a received message, ``SendPaused`` for a queued one) and
        joins the budget's paused set; it resumes when a credit (its own or another
        session's, see :class:`MemoryResumed`) brings the budget to its resume mark and its
        own bounds allow it.  A send that would pass the limit itself is refused (see
        :meth:`send`).

        Raises:
            ConfigurationError: the session already charges another budget (field
                ``memory_budget``).
        """
        if self._budget is budget:
            return
        if self._budget is not None:
            raise ConfigurationError("memory_budget", "this session already has a budget")
        self._budget = budget
        budget.charge(self._send_bytes + self._receive_bytes)

    def events(self) -> list[SessionEvent]:
        """Return the events that happened since the last call, oldest first, and forget them."""
        events = self._events
        self._events = []
        return events

    @property
    def request_timeout(self) -> float:
        """Seconds a request waits for its response when :meth:`request` is given no timeout."""
        return self._request_timeout

    @property
    def has_events(self) -> bool:
        """Whether :meth:`events` would return anything: a driver on its hot path may skip the
        events round trip after a call that usually emits nothing (``packet_queued``,
        ``message_consumed``)."""
        return bool(self._events)

    # --- lifecycle -----------------------------------------------------------------------------

    def _move(self, target: SessionState) -> None:
        check_transition(self._state, target)
        self._state = target
        # target is never CONNECTING (the table has no way back), so only OPEN may send.
        self._can_send = target is _OPEN
        self._can_respond = target is not _CLOSED

    def established(self, now: float) -> None:
        """The protocol handshake completed (``ConnectionEstablished``): ``CONNECTING -> OPEN``.

        Starts the heartbeat and idle clocks at *now*.

        Raises:
            SessionStateError: the session is not ``CONNECTING``.
        """
        self._move(_OPEN)
        self._last_send = now
        self._last_recv = now
        if self._first_packet_timeout is not None and not self.stats.messages_received:
            self._first_deadline = now + self._first_packet_timeout

    def require_first_packet(self, timeout: float | None) -> None:
        """Close the session (reason ``FIRST_PACKET_TIMEOUT``, a ``timeout.idle`` error whose
        operation is ``first_packet``) when no complete packet arrived within *timeout*
        seconds of :meth:`established` (``None``: no such limit, the default).  A server's
        connection factory sets it from the listener's ``first_packet_timeout``; call it
        before the handshake completes.

        Raises:
            ConfigurationError: *timeout* is not a positive number.
        """
        if timeout is not None:
            _check_positive("first_packet_timeout", timeout, integer=False)
        self._first_packet_timeout = timeout

    def hold_for_admission(self, timeout: float | None, now: float) -> None:
        """The session is held back from the application until its first message (one-way or
        request) is decided on by an admission hook: the first-packet deadline (the one
        :meth:`require_first_packet` armed, else *now* + *timeout*; ``None``: none) runs until
        :meth:`admitted`, whatever other packets arrive meanwhile, and closes the session
        (``FIRST_PACKET_TIMEOUT``) when it passes.  Call it while ``OPEN``.

        Raises:
            ConfigurationError: *timeout* is not a positive number.
        """
        if timeout is not None:
            _check_positive("first_packet_timeout", timeout, integer=False)
        self._held = True
        if self._first_deadline == _INF and self._state is _OPEN and timeout is not None:
            self._first_packet_timeout = timeout
            self._first_deadline = now + timeout

    def admitted(self) -> None:
        """The admission hook decided on the session's first message: no first-packet
        deadline any more (see :meth:`hold_for_admission`)."""
        self._held = False
        self._first_deadline = _INF

    def begin_close(self, reason: CloseReason = CloseReason.LOCAL, detail: str = "") -> bool:
        """Start closing: ``CONNECTING | OPEN -> CLOSING``.

        From now on :meth:`send` and :meth:`request` refuse; pending requests keep their
        deadlines and may still complete, and :meth:`respond` still works, so a driver can drain
        (wait until :attr:`pending_count` is 0 or the deadlines pass) before it closes the
        connection.  Heartbeats and the idle timeout stop.  *reason* and *detail* are recorded
        as the defaults of :meth:`closed`.

        Asking a session that is already closing or closed to close is not a transition and does
        nothing: close races between the application, the peer and timers are normal.

        Returns:
            ``True`` when the session moved to ``CLOSING``, ``False`` when it already was
            closing or closed.
        """
        if self._state is _CLOSING or self._state is _CLOSED:
            return False
        self._move(_CLOSING)
        self._close_reason = reason
        self._close_detail = detail
        return True

    def closed(
        self,
        reason: CloseReason | None = None,
        error: TransportError | None = None,
        detail: str | None = None,
    ) -> bool:
        """The connection is over (``ConnectionClosed``, or the driver gave up): ``-> CLOSED``.

        Every pending request fails with a :class:`RequestFailed` carrying a copy of *error*, or
        when there is none a :class:`~msgtrans.core.errors.TransportConnectionError` (code
        ``connection.closed``) naming *reason*; then :class:`SessionClosed` is emitted.  Nothing
        is pending afterwards.  A new connection needs a new :class:`SessionMachine` (ids start
        again at 1, as the spec asks).

        Args:
            reason: why (default: the reason given to :meth:`begin_close`, else ``LOCAL``).
            error: the error that ended the connection, if any.
            detail: free text (default: the detail given to :meth:`begin_close`, else empty).

        Calling it on a closed session does nothing.

        Returns:
            ``True`` when the session moved to ``CLOSED``, ``False`` when it already was.
        """
        if self._state is _CLOSED:
            return False
        self._close(
            self._close_reason if reason is None else reason,
            error,
            self._close_detail if detail is None else detail,
        )
        return True

    def _close(self, reason: CloseReason, error: TransportError | None, detail: str) -> None:
        self._move(_CLOSED)
        if self._budget is not None:
            self._budget_closed()
        self._close_reason = reason
        self._close_detail = detail
        pending = self._pending
        if pending:
            append = self._events.append
            stats = self.stats
            # Every request gets its own error object: one exception instance raised in many
            # tasks would have its traceback rewritten by each of them.
            for request_id in pending:  # insertion order: the order they were sent
                if error is not None:
                    failure: TransportError = error.with_operation("request")
                else:
                    failure = TransportConnectionError(
                        f"request {request_id} got no response: the session closed "
                        f"({reason.value}{': ' + detail if detail else ''})",
                        code="connection.closed",
                        # The request may well succeed on a new connection unless we closed.
                        retryable=reason is CloseReason.PEER_CLOSED or reason is CloseReason.ERROR,
                        session_id=self.session_id,
                        operation="request",
                    )
                append(RequestFailed(request_id, failure))
            stats.requests_failed += len(pending)
            pending.clear()
        self._heap.clear()
        self._events.append(SessionClosed(reason, detail, error))

    # --- sending -------------------------------------------------------------------------------

    def _refuse(self, operation: str) -> TransportConnectionError:
        return TransportConnectionError(
            f"cannot {operation}: the session is {self._state.value}",
            code="connection.closed",
            retryable=False,
            session_id=self.session_id,
            operation=operation,
        )

    def _refuse_fields(
        self, operation: str, biz_type: int, payload: Buffer, ext_header: Buffer
    ) -> None:
        # Out-of-range fields: the same error, and in the same order (closed first), as the
        # packet would raise, before any id or counter moves.
        if not self._can_send:
            raise self._refuse(operation)
        _outgoing(_ONE_WAY, 1, biz_type, payload, ext_header)

    def send(
        self, payload: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"", now: float
    ) -> Packet:
        """Make a one-way message packet with the next message id; hand it to the connection.

        :meth:`stamp_send` and the packet made from it: allowed while ``CONNECTING`` (the
        protocol machines queue packets sent before their handshake completes and send them
        when it does) and ``OPEN``.  Fields out of range consume no id and count nothing.

        Raises:
            TransportConnectionError: the session is closing or closed (code
                ``connection.closed``, not retryable).
            ConfigurationError: *biz_type* is not 0..255 or *ext_header* is over 65535 bytes.
        """
        if not 0 <= biz_type <= 0xFF or len(ext_header) > MAX_U16:
            self._refuse_fields("send", biz_type, payload, ext_header)
        return self._outgoing(_ONE_WAY, self.stamp_send(len(payload), now), biz_type, payload,
                              ext_header)

    def stamp_send(self, payload_len: int, now: float) -> int:
        """:meth:`send` without making the packet: allocate the next message id and count a
        one-way message of *payload_len* bytes as sent; return the id.

        For a driver that checked *biz_type* and the ext header itself and writes the header
        from the fields (:meth:`TcpMachine.queue_message
        <msgtrans.core.tcp.TcpMachine.queue_message>`): no :class:`Packet` is made.

        Raises:
            TransportConnectionError: the session is closing or closed (code
                ``connection.closed``, not retryable).
        """
        if not self._can_send:
            raise self._refuse("send")
        if self._budget is not None:
            self._budget.check(payload_len + HEADER_SIZE)
        ids = self._ids
        message_id = ids._last + 1
        if message_id > MAX_U32:
            message_id = 1
        ids._last = message_id
        self._last_send = now
        stats = self.stats
        stats.messages_sent += 1
        stats.bytes_sent += payload_len
        return message_id

    def request(
        self,
        payload: Buffer,
        *,
        biz_type: int = 0,
        ext_header: Buffer = b"",
        timeout: float | None = None,
        now: float,
    ) -> Packet:
        """Make a request packet with the next message id and wait for its response.

        :meth:`stamp_request` and the packet made from it.  The request is pending until
        :class:`ResponseReceived` (a response with its id arrived), or :class:`RequestFailed`
        (its deadline ``now + timeout`` passed, it was cancelled, or the session closed).  Ids
        still pending from before a wrap are skipped, so two pending requests never share an
        id.  Fields out of range consume no id and count nothing.

        Args:
            timeout: seconds to wait (default: the machine's ``request_timeout``).

        Raises:
            TransportConnectionError: the session is closing or closed (code
                ``connection.closed``, not retryable).
            ResourceError: ``max_pending_requests`` requests are already pending (code
                ``resource.exhausted``, retryable).
            ConfigurationError: *timeout* is not a positive finite number, *biz_type* is not
                0..255 or *ext_header* is over 65535 bytes.
        """
        if not 0 <= biz_type <= 0xFF or len(ext_header) > MAX_U16:
            self._refuse_fields("request", biz_type, payload, ext_header)
        return self._outgoing(
            _REQUEST, self.stamp_request(len(payload), timeout=timeout, now=now), biz_type,
            payload, ext_header,
        )

    def stamp_request(self, payload_len: int, *, timeout: float | None = None,
                      now: float) -> int:
        """:meth:`request` without making the packet: the next request id, pending from now
        with its deadline, and the counters moved; return the id.

        For a driver that checked *biz_type* and the ext header itself and writes the header
        from the fields (see :meth:`stamp_send`).

        Raises:
            As :meth:`request` (but for the *biz_type* and ext header checks).
        """
        if not self._can_send:
            raise self._refuse("request")
        if self._budget is not None:
            self._budget.check(payload_len + HEADER_SIZE)
        pending = self._pending
        if self._max_pending is not None and len(pending) >= self._max_pending:
            raise ResourceError(
                "pending_requests", len(pending), self._max_pending,
                "too many requests waiting for a response",
                code="resource.exhausted", session_id=self.session_id, operation="request",
            )
        if timeout is None:
            timeout = self._request_timeout
        elif not 0 < timeout < _INF:
            raise ConfigurationError(
                "timeout", f"must be a positive finite number of seconds, got {timeout!r}"
            )
        ids = self._ids
        request_id = ids._last + 1
        if request_id > MAX_U32:
            request_id = 1
        ids._last = request_id
        while request_id in pending:
            request_id = ids.next()
        self._seq = seq = self._seq + 1
        entry = (now + timeout, seq, request_id, timeout)
        pending[request_id] = entry
        heapq.heappush(self._heap, entry)
        self._last_send = now
        stats = self.stats
        stats.messages_sent += 1
        stats.bytes_sent += payload_len
        stats.requests_sent += 1
        return request_id

    def stamp_response(self, payload_len: int, now: float) -> None:
        """:meth:`respond` without making the packet, for a driver that answers a request
        packet it holds (its id and, by default, its biz_type) and checked *biz_type* and the
        ext header itself: count the response as sent.

        Raises:
            TransportConnectionError: the session is closed (code ``connection.closed``).
        """
        if not self._can_respond:
            raise self._refuse("respond")
        if self._budget is not None:
            self._budget.check(payload_len + HEADER_SIZE)
        self._last_send = now
        stats = self.stats
        stats.messages_sent += 1
        stats.bytes_sent += payload_len

    def respond(
        self,
        request: Packet | int,
        payload: Buffer,
        *,
        biz_type: int | None = None,
        ext_header: Buffer = b"",
        now: float,
    ) -> Packet:
        """Make the response to the peer's *request* (a request packet or its message id).

        The response reuses the request's id and allocates none.  Allowed in every state but
        ``CLOSED``: while closing, answering requests that already arrived is part of a graceful
        close (the protocol machine refuses it if its own close has gone too far).

        Args:
            biz_type: the response's business type (default: the request's, or 0 when only its
                id is given).

        Raises:
            TransportConnectionError: the session is closed (code ``connection.closed``).
            ConfigurationError: *request* is a packet that is not a request, or an id outside
                1..2**32-1 (field ``request``); or *biz_type* / *ext_header* are out of range.
        """
        if not self._can_respond:
            raise self._refuse("respond")
        if isinstance(request, Packet):
            if request.packet_type is not _REQUEST:
                raise ConfigurationError(
                    "request", f"must be a request packet, got a {request.packet_type.name} packet"
                )
            request_id = request.message_id
            if biz_type is None:
                biz_type = request.biz_type
        else:
            request_id = request
            if biz_type is None:
                biz_type = 0
        if not 0 < request_id <= MAX_U32:
            raise ConfigurationError(
                "request", f"must be a message id 1..{MAX_U32}, got {request_id}"
            )
        packet = self._outgoing(_RESPONSE, request_id, biz_type, payload, ext_header)
        self.stamp_response(len(payload), now)
        return packet

    def _compressing(self, packet_type: PacketType, message_id: int, biz_type: int,
                     payload: Buffer, ext_header: Buffer) -> Packet:
        # The packet maker of a session with a compression policy (see __init__).
        policy = self.compression
        assert policy is not None
        if len(payload) < policy.threshold:
            return _outgoing(packet_type, message_id, biz_type, payload, ext_header)
        return Packet(packet_type, message_id, biz_type, payload, ext_header,
                      compression=policy.wire, compression_level=policy.level)

    def cancel(self, request_id: int) -> bool:
        """Stop waiting for the response to our request *request_id* (the application gave up,
        for example its task was cancelled).  No event follows; a late response is dropped and
        counted in ``unmatched_responses``.

        Returns:
            ``True`` when the request was pending.
        """
        if self._pending.pop(request_id, None) is None:
            return False
        self.stats.requests_cancelled += 1
        self._maybe_compact()
        return True

    def _maybe_compact(self) -> None:
        # Finished requests leave their heap items behind (lazy deletion); rebuild the heap from
        # the live entries once stale ones outnumber them, so memory stays O(pending) and the
        # amortised cost per request O(log n).
        pending = self._pending
        if len(self._heap) > 2 * len(pending) + 64:
            self._heap = heap = list(pending.values())
            heapq.heapify(heap)

    # --- receiving -----------------------------------------------------------------------------

    def receive_packet(self, packet: Packet, now: float) -> None:
        """Take a packet from the connection (``PacketReceived``): :meth:`accept_packet` and
        the event it stands for.

        One-way messages become :class:`MessageReceived`, requests :class:`RequestReceived`;
        a response becomes :class:`ResponseReceived` when its id is pending (which ends the
        request) and is otherwise dropped and counted in ``stats.unmatched_responses``.
        Every packet refreshes the idle deadline.  Packets arriving after ``CLOSED`` are ignored.
        """
        packet_type = self.accept_packet(packet, now)
        if packet_type is _ONE_WAY:
            self._events.append(MessageReceived(packet))
        elif packet_type is _REQUEST:
            self._events.append(RequestReceived(packet))
        elif packet_type is _RESPONSE:
            self._events.append(ResponseReceived(packet.message_id, packet))

    def accept_packet(self, packet: Packet, now: float) -> PacketType | None:
        """:meth:`receive_packet` without the event: for a driver's hot path that hands the
        packet on itself.

        Returns:
            ``PacketType.ONE_WAY`` or ``REQUEST``: deliver it to the application (the driver
            does what :class:`MessageReceived` / :class:`RequestReceived` would have it do);
            ``RESPONSE``: it answers our pending request ``packet.message_id``, which is no
            longer pending (what :class:`ResponseReceived` says); ``None``: dropped (an
            unmatched response, or the session is closed).  The counters and the idle deadline
            move exactly as with :meth:`receive_packet`.
        """
        if not self._can_respond:
            return None
        self._last_recv = now
        stats = self.stats
        stats.messages_received += 1
        stats.bytes_received += len(packet.payload)
        packet_type = packet.packet_type
        if packet_type is _RESPONSE:
            if self._pending.pop(packet.message_id, None) is None:
                stats.unmatched_responses += 1
                return None
            stats.requests_completed += 1
            if len(self._heap) > 2 * len(self._pending) + 64:
                self._maybe_compact()
        elif packet_type is _REQUEST:
            stats.requests_received += 1
        return packet_type

    def peer_activity(self, now: float) -> None:
        """Note that the peer showed signs of life without a packet (a pong, a keepalive,
        any bytes read): refreshes the idle deadline like a received packet does."""
        self._last_recv = now

    # --- time ------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """Return when :meth:`handle_timer` must next be called, or ``None`` for never.

        The earliest of: the first pending request's deadline, the next heartbeat and the idle
        deadline (the last two only while ``OPEN``).
        """
        state = self._state
        if state is _CLOSED:
            return None
        deadline = _INF
        heap = self._heap
        if heap:
            pending = self._pending
            # Drop finished requests from the top so the deadline returned is a live one.
            while heap and pending.get(heap[0][2]) is not heap[0]:
                heapq.heappop(heap)
            if heap:
                deadline = heap[0][0]
        if state is _OPEN:
            if self._heartbeat_interval is not None:
                deadline = min(deadline, self._last_send + self._heartbeat_interval)
            if self._idle_timeout is not None:
                deadline = min(deadline, self._last_recv + self._idle_timeout)
            first = self._first_deadline
            if first < deadline:
                if self.stats.messages_received and not self._held:
                    self._first_deadline = _INF
                else:
                    deadline = first
        return None if deadline == _INF else deadline

    def handle_timer(self, now: float) -> None:
        """Fire whatever is due at *now*; calling it early or twice is harmless.

        Requests whose deadline is at or before *now* fail with :class:`RequestFailed`
        (:class:`~msgtrans.core.errors.TransportTimeoutError`, code ``timeout.request``).  While
        ``OPEN``: when nothing arrived for ``idle_timeout`` the session closes
        (:class:`SessionClosed`, reason ``IDLE_TIMEOUT``, error code ``timeout.idle``; the driver
        closes the connection); otherwise when nothing was sent for ``heartbeat_interval``,
        :class:`HeartbeatDue`.  Afterwards :meth:`next_deadline` is later than *now*.
        """
        state = self._state
        if state is _CLOSED:
            return
        heap = self._heap
        if heap and heap[0][0] <= now:
            pending = self._pending
            append = self._events.append
            stats = self.stats
            heappop = heapq.heappop
            while heap and heap[0][0] <= now:
                entry = heappop(heap)
                request_id = entry[2]
                if pending.get(request_id) is entry:
                    del pending[request_id]
                    stats.requests_timed_out += 1
                    timeout = entry[3]
                    append(
                        RequestFailed(
                            request_id,
                            TransportTimeoutError(
                                "request", timeout,
                                f"no response to request {request_id} within {timeout:g} s",
                                code="timeout.request", session_id=self.session_id,
                            ),
                        )
                    )
        if state is not _OPEN:
            return
        if now >= self._first_deadline and (not self.stats.messages_received or self._held):
            limit = self._first_packet_timeout or 0.0
            error = TransportTimeoutError(
                "first_packet", limit,
                f"no complete packet arrived within {limit:g} s of the handshake "
                "(first_packet_timeout)",
                code="timeout.first_packet", session_id=self.session_id,
            )
            self._close(CloseReason.FIRST_PACKET_TIMEOUT, error, error.reason)
            return
        idle = self._idle_timeout
        if idle is not None and now >= self._last_recv + idle:
            error = TransportTimeoutError(
                "idle", idle, f"nothing arrived from the peer for {idle:g} s",
                code="timeout.idle", session_id=self.session_id,
            )
            self._close(CloseReason.IDLE_TIMEOUT, error, error.reason)
            return
        interval = self._heartbeat_interval
        if interval is not None and now >= self._last_send + interval:
            self._last_send = now
            self.stats.heartbeats += 1
            self._events.append(_HEARTBEAT_DUE)

    # --- flow control ----------------------------------------------------------------------------

    def packet_queued(self, nbytes: int, packets: int = 1) -> bool:
        """The driver handed *packets* packets of *nbytes* bytes towards the socket.

        Emits :class:`SendPaused` when the backlog goes above ``send_high_water_bytes`` or
        ``send_high_water_messages``, and returns ``True`` then (``False`` otherwise: a
        driver may skip its events round trip).  Use the same byte measure here and in
        :meth:`flushed` (``packet.wire_size`` is a good one).
        """
        self._send_bytes += nbytes
        self._send_messages += packets
        budget = self._budget
        # After the close nothing queued will be flushed, nor credited (see _budget_closed).
        if budget is not None and self._can_respond and budget.charge(nbytes):
            return self._budget_pause_send(budget)
        if not self._send_paused and (
            self._send_bytes > self._send_high_bytes
            or self._send_messages > self._send_high_messages
        ) and self._can_respond:
            self._send_paused = True
            self._events.append(_SEND_PAUSED)
            return True
        return False

    def flushed(self, nbytes: int, packets: int = 1) -> bool:
        """The operating system took *packets* packets of *nbytes* bytes off the backlog.

        Emits :class:`SendResumed` once the backlog is at or below both low watermarks, and
        returns ``True`` then (``False`` otherwise).  The backlog never goes below zero, so
        over-reporting cannot wedge the session paused.  With a memory budget the bytes are
        credited to it, which may resume this or other sessions (see :class:`MemoryResumed`):
        ``True`` then too.
        """
        before = self._send_bytes
        self._send_bytes = after = before - nbytes if before > nbytes else 0
        self._send_messages = max(0, self._send_messages - packets)
        emitted = False
        if self._budget is not None and self._can_respond:
            emitted = self._budget_credit(before - after)
        return self._maybe_resume_send() or emitted

    def _maybe_resume_send(self) -> bool:
        if (
            self._send_paused
            and self._send_bytes <= self._send_low_bytes
            and self._send_messages <= self._send_low_messages
            and not self._budget_send_hold
            and self._can_respond
        ):
            self._send_paused = False
            self._events.append(_SEND_RESUMED)
            return True
        return False

    def message_delivered(self, nbytes: int) -> None:
        """A received message of *nbytes* bytes was queued for the application.

        Emits :class:`ReadPaused` when the queued messages go above ``receive_max_messages`` or
        their bytes above ``receive_max_bytes``: the driver stops reading from the socket.
        """
        self._receive_bytes += nbytes
        self._receive_messages += 1
        budget = self._budget
        if budget is not None and budget.charge(nbytes) and self._can_respond:
            self._budget_pause_read(budget)
            return
        if not self._read_paused and (
            self._receive_messages > self._receive_max_messages
            or self._receive_bytes > self._receive_max_bytes
        ) and self._can_respond:
            self._read_paused = True
            self._events.append(_READ_PAUSED)

    def message_consumed(self, nbytes: int) -> None:
        """The application took a queued message of *nbytes* bytes.

        Emits :class:`ReadResumed` once both the queued messages and bytes are at or below half
        their bound.  The gap between pausing above the bound and resuming at half of it
        (hysteresis) keeps a consumer hovering at the bound from toggling the socket on every
        message.  With a memory budget the bytes are credited to it (see :meth:`flushed`).
        """
        before = self._receive_bytes
        self._receive_bytes = after = before - nbytes if before > nbytes else 0
        self._receive_messages = max(0, self._receive_messages - 1)
        if self._budget is not None:
            self._budget_credit(before - after)
        self._maybe_resume()

    def messages_consumed(self, count: int, nbytes: int) -> None:
        """The application took *count* queued messages of *nbytes* bytes in all: the same
        as :meth:`message_consumed` for each of them, with one check of the bound."""
        before = self._receive_bytes
        self._receive_bytes = after = before - nbytes if before > nbytes else 0
        self._receive_messages = max(0, self._receive_messages - count)
        if self._budget is not None:
            self._budget_credit(before - after)
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        if (
            self._read_paused
            and self._receive_messages <= self._receive_max_messages // 2
            and self._receive_bytes <= self._receive_max_bytes // 2
            and not self._budget_read_hold
            and self._can_respond
        ):
            self._read_paused = False
            self._events.append(_READ_RESUMED)

    # --- the memory budget -----------------------------------------------------------------------
    # The budget is charged exactly where the backlogs above grow and credited where they
    # shrink, by the amount they actually moved (they never go below zero), so the budget's
    # in_use is the sum of its sessions' backlogs.  Its pause reuses the backlogs' events: the
    # drivers already stop reading on ReadPaused and hold senders on SendPaused.

    def _budget_pause_read(self, budget: MemoryBudget) -> None:
        budget.hold(self)
        self._budget_read_hold = True
        if not self._read_paused:
            self._read_paused = True
            self._events.append(_READ_PAUSED)

    def _budget_pause_send(self, budget: MemoryBudget) -> bool:
        budget.hold(self)
        self._budget_send_hold = True
        if not self._send_paused:
            self._send_paused = True
            self._events.append(_SEND_PAUSED)
            return True
        return False

    def _budget_credit(self, nbytes: int) -> bool:
        # Credit the budget; once it is at its resume mark, resume every session it paused
        # (their events go to their own lists: MemoryResumed tells this one's driver to have
        # theirs handled).  Whether this machine emitted anything.
        budget = self._budget
        assert budget is not None
        return budget.credit(nbytes) and self._resume_budget(budget)

    def _resume_budget(self, budget: MemoryBudget) -> bool:
        count = len(self._events)
        others: list[SessionMachine] = []
        for member in budget.take_resumable():
            if isinstance(member, SessionMachine):
                member.budget_released()
                if member is not self:
                    others.append(member)
        if others:
            self._events.append(MemoryResumed(tuple(others)))
        return len(self._events) > count

    def budget_released(self) -> None:
        """The memory budget no longer holds this session (it fell to its resume mark): emit
        ``ReadResumed`` / ``SendResumed`` for the sides the budget paused, unless this
        session's own bounds still hold them.  Called by whoever took the session from
        :meth:`MemoryBudget.take_resumable <msgtrans.core.budget.MemoryBudget.take_resumable>`
        (the session machine that credited the budget does it itself)."""
        read, send = self._budget_read_hold, self._budget_send_hold
        self._budget_read_hold = self._budget_send_hold = False
        if read:
            self._maybe_resume()
        if send:
            self._maybe_resume_send()

    def _budget_closed(self) -> None:
        # A closed session's send backlog will never be flushed (the machine dropped it): it
        # leaves the budget now, and so does the session from the paused set.  Received
        # messages still queued stay charged until the application takes them (they are still
        # in memory); later flushes credit nothing (see flushed).
        budget = self._budget
        assert budget is not None
        budget.forget(self)
        self._budget_read_hold = self._budget_send_hold = False
        if budget.credit(self._send_bytes):
            self._resume_budget(budget)
