"""One session: a core :class:`~msgtrans.core.connection.Connection` driven by trio tasks.

:class:`Session` turns the connection's events into awaitables (the inbox, one-shot response
slots, the established and finished events) and runs the connection's timer.  The socket side is
an :class:`IO` object (a stream socket, a QUIC client socket or a seat on a QUIC server
listener); :meth:`Session.run` is the one task that owns a session, and every task it starts
lives in it (the socket side's nursery: a reader task beside the writer).  The session's
deadlines are kept by its transport's :class:`~._timers.Timers` (one task for all sessions),
and its events are made when something first waits for them: an idle session holds little.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

from .._driver import docs
from .._driver.docs import doc
from .._driver.session import SessionBase, SocketSide, check_batch_size
from ..core.connection import Connection
from ..core.errors import TransportError
from ..core.metrics import TransportMetrics
from ..core.packet import Buffer, Packet
from ._message import Message
from ._timers import Timers

__all__ = ["IO", "Session"]

logger = logging.getLogger("msgtrans.io_trio")

#: How many calls in a row :meth:`Session.send` and :meth:`Session.receive` may return without
#: a schedule point while they need not wait (each call is always a cancel point).  Yielding on
#: every call costs a trip through trio's scheduler per message, and lets the writer task wake
#: once per message; once per batch keeps other tasks fair and the writer's batches full.
BATCH_CALLS = 64



class IO(SocketSide, Protocol):
    """What a :class:`Session` needs from its socket side (internal)."""

    async def run(self, nursery: trio.Nursery) -> None:
        """Move bytes until the connection is over; return then (the socket may stay open).
        A helper task (a reader) goes in *nursery*, the session's (cancelled on return)."""

    async def aclose(self) -> None:
        """Release the socket (must not block: called shielded, also after a cancel)."""

    def wake(self) -> None:
        """Have the writer flush what the connection has to send (one flush per batch)."""

    def set_reading(self, reading: bool) -> None:
        """Pause (``False``) or resume reading from the socket."""


class _Slot:
    """A one-shot result for one request: set once, awaited once."""

    __slots__ = ("error", "event", "message")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.message: Message | None = None
        self.error: TransportError | None = None


_SEND_BATCH = """

Every call is a cancel point; while the session is writable, only every
:data:`BATCH_CALLS`-th call is also a schedule point (yields to other tasks), so a
loop of sends queues a batch that the writer task sends in one write."""


@doc(docs.SESSION, safety="")
class Session(SessionBase[Message, _Slot, IO]):

    __slots__ = (
        "_blocked", "_established", "_finished", "_inbox_event", "_receives", "_scope",
        "_sends", "_timer_at", "_timers", "_timing", "_work_done",
    )

    _message_type = Message

    def __init__(
        self,
        conn: Connection,
        session_id: int,
        on_finished: Callable[[Session], None] | None = None,
        metrics: TransportMetrics | None = None,
        timers: Timers | None = None,
    ) -> None:
        super().__init__(conn, session_id, on_finished, metrics, trio.current_time)
        # Calls of send() / receive() since their last schedule point (see BATCH_CALLS).
        self._sends = 0
        self._receives = 0
        # The events are made by the first waiter and dropped by the one who sets them (the
        # next wait makes a new one): None while nothing waits.
        self._inbox_event: trio.Event | None = None
        self._wake_inbox = self._set_inbox_event
        self._established: trio.Event | None = None  # see wait_established
        self._finished: trio.Event | None = None  # see wait_closed
        self._blocked: trio.Event | None = None  # set while sends wait for room
        self._work_done: trio.Event | None = None  # see wait_idle
        # The transport's (a session made without one keeps its own, in a system task).
        self._timers = timers if timers is not None else Timers(trio.lowlevel.spawn_system_task)
        self._timer_at: float | None = None  # the deadline set in _timers
        self._timing = False  # the timer runs (from run()'s start until its socket side ends)
        # The cancel scope of the session's nursery once run() started; before, one made by an
        # abort (already cancelled: run() then cancels its nursery at once).
        self._scope: trio.CancelScope | None = None

    # --- the application's operations ----------------------------------------------------------

    @doc(docs.SEND, waits="Waits", leaves="the writer task sends it with the rest of the batch",
         more=_SEND_BATCH, timeout="", timeout_error="")
    async def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"") -> None:
        if self._sends < BATCH_CALLS and self._blocked is None:
            self._sends += 1
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_open("send")
        else:
            self._sends = 0
            await self._wait_writable("send")
        self._queue_send(data, biz_type, ext_header)
        if self._io is not None:
            self._io.wake()

    @doc(docs.REQUEST, withdrawn="Cancelling the call (a cancel scope, a deadline)")
    async def request(
        self,
        data: Buffer,
        *,
        biz_type: int = 0,
        ext_header: Buffer = b"",
        timeout: float | None = None,
    ) -> Message:
        await self._wait_writable("request")
        sent_at = trio.current_time()
        slot = _Slot()
        request_id = self._queue_request(data, biz_type, ext_header, timeout=timeout,
                                         now=sent_at, waiter=slot)
        if self._io is not None:
            self._io.wake()
        self._rearm()  # the request's deadline
        try:
            await slot.event.wait()
        except BaseException:
            # Cancelled (or interrupted): withdraw the request so nothing stays pending.
            self._withdraw(request_id)
            raise
        if slot.error is not None:
            raise slot.error
        assert slot.message is not None
        if self._metrics is not None:
            self._metrics.request_latency(trio.current_time() - sent_at)
        return slot.message

    @doc(docs.RECEIVE, cancel=docs.RECEIVE_CANCEL, args="", timeout_error="")
    async def receive(self) -> Message:
        if await self._wait_inbox():
            self._receives = 0
        elif self._receives < BATCH_CALLS:
            # A message was waiting: no trip through the scheduler, but once per batch.
            self._receives += 1
        else:
            self._receives = 0
            # Nothing can be cancelled from here until the message is handed over.
            await trio.lowlevel.cancel_shielded_checkpoint()
        return self._take()

    @doc(docs.RECEIVE_MANY, saves="costs one wake-up per batch instead of one per message",
         timeout="", timeout_error="",
         cancel=docs.CANCEL_SAFE.format(more="  Always a checkpoint."))
    async def receive_many(self, max_messages: int | None = None) -> list[Message]:
        check_batch_size(max_messages)
        waited = await self._wait_inbox()
        self._receives = 0
        if not waited:
            # The checkpoint: nothing can be cancelled from here until the batch is handed over.
            await trio.lowlevel.cancel_shielded_checkpoint()
        messages = self._take_batch(max_messages)
        if self._sm.has_events:
            self._process()
        return messages

    async def _wait_inbox(self) -> bool:
        """Wait until a message is queued (a cancel point); return whether it had to wait (then
        it was also a schedule point).

        Raises:
            TransportConnectionError: the session is over and the queue is empty.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while not self._inbox:
            if self._released or self.closed_event is not None:
                raise self._closed_error("receive")
            event = self._inbox_event
            if event is None:
                event = self._inbox_event = trio.Event()
            await event.wait()
            waited = True
        return waited

    @doc(docs.CLOSE)
    async def close(
        self, code: int | None = None, reason: str = "", *, timeout: float = 10.0
    ) -> None:
        if not self._released:
            self.start_close(code, reason)
            with trio.move_on_after(timeout):
                await self.wait_closed()
            if not self._released:
                self.abort()
                await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the session is over and its socket released."""
        if self._released:
            await trio.lowlevel.checkpoint()
            return
        event = self._finished
        if event is None:
            event = self._finished = trio.Event()
        await event.wait()

    def _drop(self) -> None:
        # The session's task releases the socket on its way out; without one, nothing to release.
        # Its timer stops now (as a timer task in the cancelled scope would).
        self._stop_timer()
        self._cancel()
        if self._io is None:
            self.socket_gone()

    # --- for the transport ---------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait until no request is in flight either way (or the session is over)."""
        while self.pending_work and not self._released:
            event = self._work_done
            if event is None:
                event = self._work_done = trio.Event()
            await event.wait()

    async def wait_established(self) -> None:
        """Wait for the handshake to complete.

        Raises:
            TransportError: the handshake failed or the connection closed first.
        """
        if self._established_done:
            await trio.lowlevel.checkpoint()
        else:
            event = self._established
            if event is None:
                event = self._established = trio.Event()
            await event.wait()
        if self._established_error is not None:
            raise self._established_error

    async def run(self, io: IO) -> None:
        """The session's task: start the connection, run its socket side (and its timer)
        until it is over, release the socket.  Never raises (but ``Cancelled``): a driver bug
        drops the connection, logged, instead of tearing down the nursery it lives in."""
        self._io = io
        try:
            try:
                # One nursery (one cancel scope) for all of the session's tasks.
                async with trio.open_nursery() as nursery:
                    early, self._scope = self._scope, nursery.cancel_scope
                    if early is not None and early.cancel_called:
                        nursery.cancel_scope.cancel()  # aborted before the task started
                    self._conn.start(trio.current_time())
                    self._timing = True
                    self._after_input()
                    self._arm_timer()
                    await io.run(nursery)
                    nursery.cancel_scope.cancel()
            except Exception as exc:
                logger.exception("session %s: driver error; dropping the connection", self.id)
                self.lost(exc)
        finally:
            self._stop_timer()
            with trio.CancelScope(shield=True):
                await io.aclose()
            self.lost(None)

    # --- the driver's side ---------------------------------------------------------------------

    def feed(self, nbytes: int) -> None:
        """Bytes arrived in the connection's buffer (stream sockets).  The caller wakes its
        writer if the connection has something to send now (:meth:`take_output`) or is over."""
        self._conn.buffer_updated(nbytes, trio.current_time())
        self._process()

    def lost(self, exc: BaseException | None, now: float | None = None) -> None:
        """The socket closed or broke (*exc*: why, if it broke): the core learns it."""
        super().lost(exc, now)
        if exc is None:
            self.socket_gone()

    def _on_released(self) -> None:
        self._stop_timer()
        for event in (self._finished, self._inbox_event, self._blocked, self._work_done):
            if event is not None:
                event.set()
        self._finished = self._inbox_event = self._blocked = self._work_done = None

    def _cancel(self) -> None:
        """End the session's task (its nursery), or have it end as soon as it starts."""
        if self._scope is None:
            self._scope = trio.CancelScope()
        self._scope.cancel()

    def _set_inbox_event(self) -> None:
        event = self._inbox_event
        if event is not None:
            self._inbox_event = None
            event.set()

    def _set_work_done(self) -> None:
        event = self._work_done
        if event is not None:
            self._work_done = None
            event.set()

    def _request_withdrawn(self) -> None:
        self._rearm()
        self._set_work_done()

    def _settle(self, waiter: _Slot, message: Message | None,
                error: TransportError | None) -> None:
        waiter.message = message
        waiter.error = error
        waiter.event.set()
        self._set_work_done()

    def _handshake_settled(self) -> None:
        event = self._established
        if event is not None:
            self._established = None
            event.set()

    def _set_reading(self, reading: bool) -> None:
        assert self._io is not None
        self._io.set_reading(reading)

    # --- the timer ------------------------------------------------------------------------------
    # The transport's Timers calls on_timer at the core's next deadline; _rearm moves the
    # deadline earlier when an earlier one appears.  A later deadline needs nothing: firing
    # early is harmless, on_timer just re-reads it.

    def on_timer(self) -> None:
        """The deadline set in the transport's timers passed: the core handles its timers."""
        self._timer_at = None
        if not self._timing:
            return
        try:
            self._conn.handle_timer(trio.current_time())
            self._after_input()
        except Exception as exc:
            # What a failing timer task did: drop the connection and end the session's task.
            logger.exception("session %s: driver error; dropping the connection", self.id)
            self._stop_timer()
            self.lost(exc)
            self._cancel()
            return
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Set the core's next deadline in the timers (the one set may be earlier, or later:
        :meth:`on_timer` re-reads it)."""
        if self._timing:
            deadline = self._conn.next_deadline()
            if deadline != self._timer_at:
                self._timer_at = deadline
                self._timers.set(self, deadline)

    def _stop_timer(self) -> None:
        """No more timer for this session (its socket side ended): unset its deadline."""
        self._timing = False
        if self._timer_at is not None:
            self._timer_at = None
            self._timers.set(self, None)

    # --- plumbing ------------------------------------------------------------------------------

    def _after_input(self) -> None:
        self._process()
        if self._io is not None:
            self._io.wake()

    def _after_process(self, handled: bool = True) -> None:
        if self._metrics is not None:
            self._update_metrics(self._metrics)
        self._rearm()

    def _update_writable(self) -> None:
        if self._can_write():
            event = self._blocked
            if event is not None:
                self._blocked = None
                event.set()
        elif self._blocked is None:
            self._blocked = trio.Event()

    async def _wait_writable(self, operation: str) -> None:
        await self._wait_room(operation)
        self._check_open(operation)

    async def _wait_room(self, operation: str) -> None:
        if self._blocked is None:
            await trio.lowlevel.checkpoint()  # a checkpoint even when writable
            return
        # At most the send_timeout: past it the shared half raises (and aborts a server
        # session, whose peer reads nothing).
        limit = self.send_timeout
        with trio.move_on_after(math.inf if limit is None else limit) as scope:
            while (blocked := self._blocked) is not None:
                await blocked.wait()
        if scope.cancelled_caught and self._blocked is not None:
            assert limit is not None
            raise self._send_timed_out(operation, limit)

    def _rearm(self) -> None:
        if not self._timing:
            return  # run() arms it when it starts; nothing once the socket side ended
        deadline = self._conn.next_deadline()
        at = self._timer_at
        if deadline is not None and (at is None or deadline < at):
            self._timer_at = deadline
            self._timers.set(self, deadline)

    async def _respond(
        self, request: Packet, data: Buffer, biz_type: int | None, ext_header: Buffer
    ) -> None:
        self._unanswered.discard(request.message_id)
        self._set_work_done()
        # Answers are allowed while closing, so only a finished connection refuses them.
        await self._wait_room("respond")
        if self._released or self.closed_event is not None:
            raise self._closed_error("respond")
        self._queue_response(request, data, biz_type, ext_header)
        if self._io is not None:
            self._io.wake()
