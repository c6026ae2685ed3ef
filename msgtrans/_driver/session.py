"""The session half every driver shares: :class:`SessionBase`.

A backend's ``Session`` subclasses it and keeps only what is its own: the primitives that wait
(futures, events, a condition), its timer, its socket side and the awaitable or blocking public
methods.  Everything here is synchronous and does no I/O: the state a session keeps about its
connection, the read-only properties, the handling of the core's events (the inbox, the reply
table, unanswered requests, the pause flags, metrics, error enrichment), the synchronous half
of send / request / respond (stamping, queueing into the machine, backlog counting), the flush
accounting and the end of the session.

The backend plugs in through a few hooks:

- ``_wake_inbox`` (an attribute: a callable the backend binds once, so the per-message call
  costs what the backend's own wake-up costs): a message was queued or the inbox is over.
- :meth:`SessionBase._settle`: a reply waiter gets its response or its error.
- :meth:`SessionBase._update_writable`: a pause flag moved or the connection ended.
- :meth:`SessionBase._set_reading`: the core wants reading paused or resumed.
- :meth:`SessionBase._handshake_settled`: the handshake completed or failed (once).
- :meth:`SessionBase._on_released`: the session is over and its socket released.
- :meth:`SessionBase._after_input`, :meth:`SessionBase._after_process`, :meth:`SessionBase._drop`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from ..core.connection import Connection
from ..core.errormap import map_error
from ..core.errors import Protocol as WireProtocol
from ..core.errors import TransportConnectionError, TransportError, TransportTimeoutError
from ..core.events import (
    ConnectionClosed,
    ConnectionEstablished,
    ErrorOccurred,
    WritePaused,
    WriteResumed,
)
from ..core.machine import Address, StreamMachine
from ..core.metrics import TransportMetrics
from ..core.packet import Buffer, Packet, PacketType
from ..core.session import (
    CloseReason,
    MemoryResumed,
    MessageReceived,
    ReadPaused,
    ReadResumed,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
    SendPaused,
    SendResumed,
    SessionClosed,
    SessionMachine,
    SessionState,
)
from .builder import DEFAULT_SEND_TIMEOUT
from .message import MessageBase
from .pool import SessionMetrics

__all__ = ["SessionBase", "SocketSide"]

_ONE_WAY = PacketType.ONE_WAY
_REQUEST = PacketType.REQUEST
_RESPONSE = PacketType.RESPONSE


class SocketSide(Protocol):
    """What the base reads from a backend's socket side (each backend's ``IO`` protocol
    extends it)."""

    @property
    def peer_address(self) -> Address | None:
        """The peer's socket address, when known."""


_M = TypeVar("_M", bound="MessageBase[Any]")  # the backend's Message
_W = TypeVar("_W")  # what waits for one reply (a future, an event slot, a lock)
_IO = TypeVar("_IO", bound=SocketSide)


def check_batch_size(max_messages: int | None) -> None:
    """Raise ``ValueError`` for a ``receive_many`` limit below 1 (before anything waits)."""
    if max_messages is not None and max_messages < 1:
        raise ValueError(f"max_messages must be 1 or more, got {max_messages}")


class SessionBase(Generic[_M, _W, _IO]):
    """The backend-neutral half of a session (internal).

    Attributes:
        id: the transport-wide session id (1, 2, ...).
        established: the core's ``ConnectionEstablished`` event once the handshake completed.
        closed_event: the core's ``ConnectionClosed`` event once the connection ended.
        error: the :class:`TransportError` that ended the session, or ``None``.
        forced: ``True`` when the session was aborted (no close handshake).
        late_handler_errors: how many errors ``serve``'s handler raised that were this
            session's own ``TransportError`` after it closed or began closing (logged once).
        packets_flushed: messages handed to the socket so far.
        unflushed_packets: packets queued since the last flush accounting.
        flush_emitted: the session machine emitted (SendResumed) when a flush was accounted.
    """

    # Slots, not an instance dict: a server holds one session per connection (a backend's
    # subclass may declare its own, or keep a dict).
    __slots__ = (
        "__weakref__", "_again", "_conn", "_core_read_paused", "_deadline_moved",
        "_established_done", "_established_error", "_finish_callbacks", "_gauge", "_in_bytes",
        "_in_messages", "_inbox", "_io", "_lazy_send", "_machine_paused", "_metrics",
        "_processing", "_reading_held", "_released", "_responses", "_session_paused", "_sm",
        "_socket_paused", "_stream_machine", "_tcp", "_time", "_unanswered", "_wake_inbox",
        "closed_event", "dispatch", "error", "established", "flush_emitted", "forced", "id",
        "late_handler_errors", "packets_flushed", "send_timeout",
    )

    #: The backend's message class: ``(packet, session_id, responder)``.
    _message_type: Callable[..., _M]
    #: Whether an error before the handshake completed is counted here (the blocking driver's
    #: connect leaves that count to the session; the async ones count the failed connect).
    _count_early_errors = False
    #: Seconds a send, request or respond waits for room in the send queue (the builder's
    #: ``send_timeout``, set by the transport on each session it makes); ``None``: no limit.
    send_timeout: float | None

    def __init__(
        self,
        conn: Connection,
        session_id: int,
        on_finished: Callable[[Any], None] | None,
        metrics: TransportMetrics | None,
        clock: Callable[[], float],
    ) -> None:
        self.id = session_id
        self.send_timeout = DEFAULT_SEND_TIMEOUT
        self._conn = conn
        self._sm = conn.session
        self._time = clock
        self._io: _IO | None = None
        # Stream machines (TCP, TLS, WebSocket) emit nothing when a packet is queued, so a send
        # needs the events round trip only when the session machine emitted (SendPaused); QUIC
        # may pause on flow control, so it always takes it.  Held typed so the per-write calls
        # skip Connection's isinstance checks on an ABC (a slow path in CPython).
        machine = conn.machine
        self._stream_machine: StreamMachine | None = (
            machine if isinstance(machine, StreamMachine) else None
        )
        self._lazy_send = self._stream_machine is not None
        # Plain TCP (not TLS over it): packets are queued and received through the machine
        # directly, without Packet objects or events (the core says when this applies).
        self._tcp = conn.plain_tcp
        if conn.session.memory_budget is not None:
            # The transport's memory budget pauses sessions and a session that frees memory
            # resumes them (MemoryResumed names their machines): this is how it finds us.
            conn.session.budget_owner = self
        # Made by the first message, dropped when a batch takes it all (see _take_batch).
        self._inbox: deque[_M] | None = None
        # Set by a transport's serve loop while it waits for this session: takes a message
        # straight from the input (True) or declines it (False: queued as usual).
        self.dispatch: Callable[[_M], bool] | None = None
        self._responses: dict[int, _W] = {}
        # Requests from the peer not answered yet: graceful shutdown waits for them.
        self._unanswered: set[int] = set()
        self._established_done = False
        self._established_error: TransportError | None = None
        self._released = False  # the session is over and its socket released
        self._session_paused = False  # SendPaused from the session machine
        self._machine_paused = False  # WritePaused from the protocol machine
        self._socket_paused = False  # the socket's own write buffer is over its mark
        self._core_read_paused = False  # the core asked reading paused (ReadPaused)
        self._reading_held = False  # a graceful shutdown stopped new reads (hold_reading)
        self._processing = False
        self._again = False  # a nested _process call was folded into the running one
        # Anything but a message or a response may bring a deadline nearer (see _handle).
        self._deadline_moved = True
        self._finish_callbacks: list[Callable[[Any], None]] = (
            [on_finished] if on_finished is not None else [])
        self.flush_emitted = False
        self.packets_flushed = 0
        self.established: ConnectionEstablished | None = None
        self.closed_event: ConnectionClosed | None = None
        self.error: TransportError | None = None
        self.forced = False
        self.late_handler_errors = 0
        # Metrics are counted per batch (one flush, one _process pass), not per message: the
        # hot path only adds to these plain ints.
        self._metrics = metrics
        self._gauge = (SessionMetrics(metrics, conn.protocol, conn.session.state)
                       if metrics is not None else None)
        self._in_messages = 0
        self._in_bytes = 0

    # --- hooks (the backend's primitives) -------------------------------------------------------

    #: Wake whoever waits for the inbox (a message was queued, or the inbox is over).
    _wake_inbox: Callable[[], None]

    def _settle(self, waiter: _W, message: _M | None, error: TransportError | None) -> None:
        """Hand *waiter* its response (*message*) or its *error*."""
        raise NotImplementedError

    def _update_writable(self) -> None:
        """A pause flag moved or the connection ended: recompute what sends wait for."""
        raise NotImplementedError

    def _set_reading(self, reading: bool) -> None:
        """Pause (``False``) or resume reading from the socket (socket side attached); this
        default drives an IO with ``pause_reading`` / ``resume_reading``."""
        io: Any = self._io
        if reading:
            io.resume_reading()
        else:
            io.pause_reading()

    def _request_withdrawn(self) -> None:
        """A request was withdrawn (see :meth:`_withdraw`): re-arm the timer, wake who waits
        for the session to go quiet."""
        raise NotImplementedError

    def _withdraw(self, request_id: int) -> None:
        """The caller of request *request_id* gave up (cancelled, interrupted): nothing of it
        stays pending in the core, and a late response is dropped."""
        if self._responses.pop(request_id, None) is not None:
            self._conn.session.cancel(request_id)
            self._request_withdrawn()

    def _handshake_settled(self) -> None:
        """The handshake completed (``_established_error`` is ``None``) or failed; once."""
        raise NotImplementedError

    def _on_released(self) -> None:
        """The session is over and its socket released: wake every waiter (before the finish
        callbacks run)."""
        raise NotImplementedError

    def _after_input(self) -> None:
        """The core took input or a command: handle its events and have the output written."""
        raise NotImplementedError

    def _after_process(self, handled: bool = True) -> None:
        """A :meth:`_process` pass ended (*handled*: it handled events)."""
        raise NotImplementedError

    def _drop(self) -> None:
        """:meth:`abort` told the core: release the socket (or finish without one)."""
        raise NotImplementedError

    # --- what the session is -------------------------------------------------------------------

    @property
    def protocol(self) -> WireProtocol:
        """The transport: ``TCP``, ``WEBSOCKET`` or ``QUIC`` (TLS is inside TCP and WebSocket;
        see :attr:`established`)."""
        return self._conn.protocol

    @property
    def peer_address(self) -> Address | None:
        """The peer's socket address, or ``None`` before the socket connected."""
        io = self._io
        return io.peer_address if io is not None else None

    @property
    def state(self) -> SessionState:
        """``CONNECTING``, ``OPEN``, ``CLOSING`` or ``CLOSED``."""
        return self._conn.session.state

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the session closed (or began closing), or ``None`` while it is open."""
        return self._conn.session.close_reason

    @property
    def is_closed(self) -> bool:
        """Whether the session is over and its socket released."""
        return self._released

    @property
    def connection(self) -> Connection:
        """The core connection under this session (for inspection and statistics; where the
        session is shared between threads, read it under the transport's lock)."""
        return self._conn

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.protocol.value} {self._conn.session.state.value}>"

    @property
    def pending_work(self) -> int:
        """Requests in flight both ways (ours waiting for a response, the peer's waiting for
        our answer)."""
        return len(self._responses) + len(self._unanswered)

    @property
    def has_inbox(self) -> bool:
        """Whether received messages wait in the queue."""
        return bool(self._inbox)

    @property
    def awaiting_responses(self) -> bool:
        """Whether a request of ours still waits for its response."""
        return bool(self._responses)

    def when_finished(self, callback: Callable[[Any], None]) -> None:
        """Call *callback* with this session once it is over and its socket released."""
        if self._released:
            callback(self)
        else:
            self._finish_callbacks.append(callback)

    # --- the synchronous half of send / request / respond --------------------------------------

    def _queue_send(self, data: Buffer, biz_type: int, ext_header: Buffer) -> None:
        """Stamp and queue a one-way message and count it (the caller waited out backpressure
        and wakes its writer afterwards)."""
        try:
            look = self._conn.queue_send(data, biz_type, ext_header, self._time())
        except TransportError as exc:
            raise self._count(self._enrich(exc, "send")) from None
        if look:
            self._process()

    def _queue_request(self, data: Buffer, biz_type: int, ext_header: Buffer, *,
                       timeout: float | None, now: float, waiter: _W) -> int:
        """Stamp and queue a request, file *waiter* for its reply and count it; return the
        request id (the caller wakes its writer and waits)."""
        try:
            request_id = self._conn.queue_request(data, biz_type, ext_header, timeout, now)
        except TransportError as exc:
            raise self._count(self._enrich(exc, "request")) from None
        # Filed before any event is handled: a close handled below fails it with the rest.
        self._responses[request_id] = waiter
        if not self._lazy_send or self._sm.has_events:
            self._process()
        return request_id

    def _queue_response(self, request: Packet, data: Buffer, biz_type: int | None,
                        ext_header: Buffer) -> None:
        """Stamp and queue the response to *request* and count it (the caller checked the
        session may still answer, and wakes its writer afterwards)."""
        try:
            look = self._conn.queue_response(request, data, biz_type, ext_header, self._time())
        except TransportError as exc:
            raise self._count(self._enrich(exc, "respond")) from None
        if look:
            self._process()

    def _queue_batch(self, payloads: Iterable[Buffer], biz_type: int) -> int:
        """Stamp each of *payloads* as a one-way message and queue them in one go; return how
        many (the caller wakes its writer).  Whatever was made before an error is sent, so the
        peer sees consecutive ids and nothing the session counted as sent goes missing."""
        make = self._sm.send
        now = self._time()
        packets: list[Packet] = []
        try:
            for data in payloads:
                packets.append(make(data, biz_type=biz_type, now=now))
        except TransportError as exc:
            raise self._count(self._enrich(exc, "send")) from None
        finally:
            if packets:
                try:
                    self._conn.queue_packets(packets)
                except TransportError as exc:
                    raise self._count(self._enrich(exc, "send")) from None
                finally:
                    if not self._lazy_send or self._sm.has_events:
                        self._process()
        return len(packets)

    @property
    def unflushed_packets(self) -> int:
        """Packets queued since the last flush accounting."""
        return self._conn.unflushed_packets

    # --- the core's events ---------------------------------------------------------------------

    def process(self) -> None:
        """Handle the connection's pending events."""
        self._process()

    def process_if_pending(self) -> None:
        """:meth:`process`, skipped on stream connections when no machine has an event (the
        flush after a write usually has none)."""
        if not self._lazy_send or self._sm.has_events or self._conn.machine.has_events:
            self._process()

    def _process(self) -> None:
        if self._processing:
            self._again = True  # a handler below called back in; the outer loop goes on
            return
        self._processing = True
        conn = self._conn
        sm = self._sm
        machine = conn.machine
        handle = self._handle
        lazy = self._lazy_send
        handled = False
        try:
            while True:
                self._again = False
                events = conn.events()
                if not events:
                    break
                handled = True
                for event in events:
                    handle(event)
                # Another round only when handling the batch emitted something (one
                # Connection.events() round trip less per batch on the hot path).
                if lazy and not (self._again or sm.has_events or machine.has_events):
                    break
        finally:
            self._processing = False
        self._after_process(handled)

    def _handle(self, event: object) -> None:
        kind = type(event)
        if kind is MessageReceived:
            self._deliver(event.packet, False)  # type: ignore[attr-defined]
            return
        if kind is RequestReceived:
            self._deliver(event.packet, True)  # type: ignore[attr-defined]
            return
        if kind is ResponseReceived:
            response: ResponseReceived = event  # type: ignore[assignment]
            self._response(response.request_id, response.packet)
            return
        # Anything else may bring a deadline nearer (a close, a handshake, a state change).
        self._deadline_moved = True
        if kind is RequestFailed:
            assert isinstance(event, RequestFailed)
            waiter = self._responses.pop(event.request_id, None)
            if waiter is not None:
                self._settle(waiter, None, self._count(self._enrich(event.error, "request")))
        elif kind is ConnectionEstablished:
            assert isinstance(event, ConnectionEstablished)
            self.established = event
            self._finish_handshake(None)
        elif kind is SendPaused or kind is SendResumed:
            self._session_paused = kind is SendPaused
            self._update_writable()
        elif kind is WritePaused or kind is WriteResumed:
            self._machine_paused = kind is WritePaused
            self._update_writable()
        elif kind is ReadPaused or kind is ReadResumed:
            self._core_read_paused = kind is ReadPaused
            if self._io is not None and not self._reading_held:
                self._set_reading(kind is ReadResumed)
        elif kind is MemoryResumed:
            assert isinstance(event, MemoryResumed)
            self._resume_others(event.sessions)
        elif kind is ErrorOccurred:
            assert isinstance(event, ErrorOccurred)
            self._set_error(event.error)
        elif kind is ConnectionClosed:
            assert isinstance(event, ConnectionClosed)
            self.closed_event = event
            if event.error is not None:
                self._set_error(event.error)
            if not self._established_done:
                error = self.error or self._closed_error("connect")
                self._finish_handshake(self._enrich(error, "connect"))
            self._wake_inbox()
            self._update_writable()
        elif kind is SessionClosed:
            assert isinstance(event, SessionClosed)
            if event.error is not None:
                self._set_error(event.error)
            self._fail_waiters(self._closed_error("request"))
            self._wake_inbox()
            self._update_writable()
        # HeartbeatDue: the protocol machines keep their own pings; nothing to do here.

    def _resume_others(self, machines: tuple[SessionMachine, ...]) -> None:
        """This session freed memory of the transport's budget and it resumed the sessions of
        *machines*: each handles its ReadResumed / SendResumed now (it may wait for input that
        cannot come while it is paused) and has its output written, as after any command."""
        for machine in machines:
            owner = machine.budget_owner
            if isinstance(owner, SessionBase) and owner is not self and not owner._released:
                owner._after_input()

    def _respond(self, request: Packet, data: Buffer, biz_type: int | None,
                 ext_header: Buffer) -> Any:
        """The responder a request message calls (the backend's, awaitable or blocking)."""
        raise NotImplementedError

    def _deliver(self, packet: Packet, is_request: bool) -> None:
        """A one-way message or a request for the application (MessageReceived /
        RequestReceived)."""
        message = self._message_type(packet, self.id, self._respond if is_request else None)
        size = len(packet.payload)
        self._in_messages += 1
        self._in_bytes += size
        if is_request:
            self._unanswered.add(packet.message_id)
        dispatch = self.dispatch
        if dispatch is not None and not self._inbox and dispatch(message):
            return  # taken from this call: never queued, no waiter woken for it
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        inbox.append(message)
        # The session machine directly (Connection.message_delivered would drain its events,
        # hiding a ReadPaused from the check that ends _process's loop).
        self._sm.message_delivered(size)
        self._wake_inbox()

    def _response(self, request_id: int, packet: Packet) -> None:
        """The response to our request *request_id* (ResponseReceived)."""
        waiter = self._responses.pop(request_id, None)
        if waiter is not None:
            self._settle(waiter, self._message_type(packet, self.id), None)
        self._in_messages += 1
        self._in_bytes += len(packet.payload)

    def _fail_waiters(self, error: TransportError) -> None:
        responses, self._responses = self._responses, {}
        for waiter in responses.values():
            self._settle(waiter, None, error)

    def _finish_handshake(self, error: TransportError | None) -> None:
        if not self._established_done:
            self._established_done = True
            self._established_error = error
            self._handshake_settled()

    def _update_metrics(self, metrics: TransportMetrics, state_may_move: bool = True) -> None:
        # Once per _process pass: the messages of the batch, and the gauge's state (which only
        # moves with an event other than a message).
        if self._in_messages:
            metrics.messages_in += self._in_messages
            metrics.bytes_in += self._in_bytes
            self._in_messages = self._in_bytes = 0
        if state_may_move and self._gauge is not None:
            self._gauge.state(self._sm.state)

    def _set_error(self, error: TransportError) -> None:
        if self.error is None:
            self.error = self._enrich(error, "receive")
            # A session that never opened is a failed connect: connect() counts that one.
            if self.established is not None or self._count_early_errors:
                self._count(self.error)

    def _count(self, error: TransportError) -> TransportError:
        if self._metrics is not None:
            self._metrics.error(error)
        return error

    def _enrich(self, error: TransportError, operation: str) -> TransportError:
        return map_error(error, operation=operation, session_id=self.id)

    def _can_write(self) -> bool:
        """Whether a send may go ahead now: nothing pauses it, or the session is over (and the
        send fails at once instead of waiting)."""
        over = self.closed_event is not None or self._released
        return over or not (self._session_paused or self._machine_paused or self._socket_paused)

    def _send_timed_out(self, operation: str, waited: float) -> TransportTimeoutError:
        """The error of a send, request or respond that waited *waited* seconds (the
        :attr:`send_timeout`) for room in the send queue, counted.  A server session is aborted
        as well: its peer read nothing for that long, and whatever serves it (a handler task,
        a pool thread) must not stay tied to it; a client's session stays (its application
        decides)."""
        error = TransportTimeoutError(
            operation, waited, code="timeout.send", session_id=self.id,
            reason=f"{operation}: the peer read nothing for {waited:g} s (send_timeout)")
        self._count(error)
        if not self._conn.machine.is_client and not self._released:
            self.abort(f"aborted: its peer read nothing for {waited:g} s (send_timeout)")
        return error

    def _check_open(self, operation: str) -> None:
        """Raise :meth:`_closed_error` once the session is closing or released."""
        if self.closed_event is not None or self._released:
            raise self._closed_error(operation)

    def _take(self) -> _M:
        """Pop the next inbox message and account it consumed (the caller checked the inbox)."""
        inbox = self._inbox
        assert inbox is not None
        message = inbox.popleft()
        sm = self._sm
        # What Connection.message_consumed does, minus the events round trip when the session
        # machine emitted nothing (it only may when reading was paused).
        sm.message_consumed(len(message.payload))
        if sm.has_events:
            self._process()
        return message

    def _take_batch(self, max_messages: int | None) -> list[_M]:
        """Pop the oldest queued messages (all, or at most *max_messages*; the caller checked
        the inbox) and account them to the receive bound in one step (it may emit
        ``ReadResumed``: the caller processes its events)."""
        inbox = self._inbox
        assert inbox is not None
        if max_messages is None or max_messages >= len(inbox):
            messages = list(inbox)
            # Dropped, not cleared: clear() makes a new block and keeps the old one cached
            # (1.3 KiB in all), held by every session idling after a message.
            self._inbox = None
        else:
            messages = [inbox.popleft() for _ in range(max_messages)]
        self._sm.messages_consumed(len(messages), sum(len(m.payload) for m in messages))
        return messages

    def _closed_error(self, operation: str) -> TransportError:
        if self.error is not None:
            return self.error.with_operation(operation)
        return TransportConnectionError(
            f"the {self.protocol.value} session is closed", code="connection.closed",
            retryable=False, session_id=self.id, operation=operation,
        )

    # --- the socket side -----------------------------------------------------------------------

    def take_output(self) -> list[Buffer]:
        """Return the bytes to write and account them as flushed (stream sockets)."""
        machine = self._stream_machine
        data = machine.data_to_send() if machine is not None else self._conn.data_to_send()
        if self._conn.unflushed_packets:
            self._account_flushed()
        return data

    def take_datagrams(self, now: float | None = None) -> list[tuple[bytes, Address]]:
        """Return the datagrams to send and account them as flushed (QUIC client)."""
        grams = self._conn.datagrams_to_send(self._time() if now is None else now)
        self._account_flushed()
        return grams

    def account_flushed(self) -> None:
        """The endpoint sent this session's datagrams (QUIC server)."""
        self._account_flushed()

    def _account_flushed(self) -> None:
        # The session machine directly (what Connection.flushed does, minus draining its
        # events): process_if_pending sees whether it emitted SendResumed.
        packets, payload, resumed = self._conn.take_unflushed()
        if packets:
            self.packets_flushed += packets
            if resumed:
                self.flush_emitted = True
            metrics = self._metrics
            if metrics is not None:
                # Counted when handed to the socket, once per flush.
                metrics.messages_out += packets
                metrics.bytes_out += payload

    @property
    def write_closed(self) -> bool:
        """Whether the core wants the write side shut (stream sockets)."""
        machine = self._stream_machine
        return machine.write_closed if machine is not None else self._conn.write_closed

    @property
    def machine_closed(self) -> bool:
        """Whether the protocol machine is over (the socket may close after the last write)."""
        return self._conn.machine.is_closed

    def feed_eof(self, now: float | None = None) -> None:
        """The peer shut its write side."""
        self._conn.receive_data(b"", self._time() if now is None else now)
        self._after_input()

    def feed_datagram(self, data: bytes, addr: Address, now: float | None = None) -> None:
        """A datagram arrived (QUIC client sockets)."""
        self._conn.receive_datagram(data, addr, self._time() if now is None else now)
        self._after_input()

    def lost(self, exc: BaseException | None, now: float | None = None) -> None:
        """The socket closed or broke (*exc*: why, if it broke): the core learns it."""
        if not self._conn.machine.is_closed:
            error = (
                map_error(exc, protocol=self.protocol, operation="receive", session_id=self.id)
                if exc is not None else None
            )
            self._conn.connection_lost(self._time() if now is None else now, error)
            self._process()

    def hold_reading(self) -> None:
        """Stop reading from the socket until :meth:`release_reading` or the close (a graceful
        shutdown's "new reads stop": what was read is handled, nothing more is taken in).  On
        QUIC it stops granting the peer credit, so the peer may still use what it has."""
        if self._reading_held or self._released:
            return
        self._reading_held = True
        if self._io is not None and not self._core_read_paused:
            self._set_reading(False)

    def release_reading(self) -> None:
        """Undo :meth:`hold_reading` (reading goes on unless the core paused it): a close
        handshake reads its peer's close."""
        if not self._reading_held:
            return
        self._reading_held = False
        if self._io is not None and not self._released and not self._core_read_paused:
            self._set_reading(True)

    def start_close(self, code: int | None = None, reason: str = "") -> None:
        """Begin a graceful close without waiting for it (see ``close``)."""
        if self._released:
            return
        self.release_reading()
        if not self._conn.machine.is_closed:
            self._conn.close(code, reason)
        self._after_input()

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection now, without a close handshake (pending requests fail with
        ``connection.aborted``)."""
        if self._released:
            return
        self.forced = True
        error = TransportConnectionError(
            f"the session was {reason}", code="connection.aborted", retryable=False,
            session_id=self.id,
        )
        self._conn.connection_lost(self._time(), error)
        self._process()
        self._drop()

    def socket_gone(self) -> None:
        """The socket is released: the session is over."""
        if self._released:
            return
        if self.closed_event is None:
            # The core saw no close (should not happen): fail what waits all the same.
            self._fail_waiters(self._closed_error("receive"))
        self._released = True
        if self._gauge is not None:
            self._gauge.closed()
        self._finish_handshake(self._closed_error("connect"))
        self._on_released()
        callbacks, self._finish_callbacks = self._finish_callbacks, []
        for callback in callbacks:
            callback(self)
