"""One session: a core :class:`~msgtrans.core.connection.Connection` driven by trio tasks.

:class:`Session` turns the connection's events into awaitables (the inbox, one-shot response
slots, the established and finished events) and runs the connection's timer.  The socket side is
an :class:`IO` object (a stream socket, a QUIC client socket or a seat on a QUIC server
listener); :meth:`Session.run` is the one task that owns a session, and every task it starts
lives in its nursery.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

from .._driver import docs
from .._driver.docs import doc
from .._driver.session import SessionBase, SocketSide, check_batch_size, take_batch
from ..core.connection import Connection
from ..core.errors import TransportError
from ..core.metrics import TransportMetrics
from ..core.packet import Buffer, Packet
from ._message import Message

__all__ = ["IO", "Session"]

logger = logging.getLogger("msgtrans.io_trio")

#: How many calls in a row :meth:`Session.send` and :meth:`Session.receive` may return without
#: a schedule point while they need not wait (each call is always a cancel point).  Yielding on
#: every call costs a trip through trio's scheduler per message, and lets the writer task wake
#: once per message; once per batch keeps other tasks fair and the writer's batches full.
BATCH_CALLS = 64



class IO(SocketSide, Protocol):
    """What a :class:`Session` needs from its socket side (internal)."""

    async def run(self) -> None:
        """Move bytes until the connection is over; return then (the socket may stay open)."""

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

    _message_type = Message

    def __init__(
        self,
        conn: Connection,
        session_id: int,
        on_finished: Callable[[Session], None] | None = None,
        metrics: TransportMetrics | None = None,
    ) -> None:
        super().__init__(conn, session_id, on_finished, metrics, trio.current_time)
        # Calls of send() / receive() since their last schedule point (see BATCH_CALLS).
        self._sends = 0
        self._receives = 0
        self._inbox_event = trio.Event()
        self._wake_inbox = self._set_inbox_event
        self._established = trio.Event()
        self._finished = trio.Event()
        self._writable = trio.Event()
        self._writable.set()
        self._timer_event = trio.Event()
        self._timer_at: float | None = None
        self._work_done = trio.Event()
        # Created now, not in run(): abort() may come before the task started.
        self._scope = trio.CancelScope()

    # --- the application's operations ----------------------------------------------------------

    @doc(docs.SEND, waits="Waits", leaves="the writer task sends it with the rest of the batch",
         more=_SEND_BATCH, timeout="", timeout_error="")
    async def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"") -> None:
        if self._sends < BATCH_CALLS and self._writable.is_set():
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
        messages = take_batch(self._inbox, max_messages, self._sm)
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
            if self._inbox_event.is_set():
                self._inbox_event = trio.Event()
            await self._inbox_event.wait()
            waited = True
        return waited

    @doc(docs.CLOSE)
    async def close(
        self, code: int | None = None, reason: str = "", *, timeout: float = 10.0
    ) -> None:
        if not self._released:
            self.start_close(code, reason)
            with trio.move_on_after(timeout):
                await self._finished.wait()
            if not self._released:
                self.abort()
                await self._finished.wait()

    async def wait_closed(self) -> None:
        """Wait until the session is over and its socket released."""
        await self._finished.wait()

    def _drop(self) -> None:
        # The session's task releases the socket on its way out; without one, nothing to release.
        self._scope.cancel()
        if self._io is None:
            self.socket_gone()

    # --- for the transport ---------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait until no request is in flight either way (or the session is over)."""
        while self.pending_work and not self._released:
            if self._work_done.is_set():
                self._work_done = trio.Event()
            await self._work_done.wait()

    async def wait_established(self) -> None:
        """Wait for the handshake to complete.

        Raises:
            TransportError: the handshake failed or the connection closed first.
        """
        await self._established.wait()
        if self._established_error is not None:
            raise self._established_error

    async def run(self, io: IO) -> None:
        """The session's task: start the connection, run its socket side and its timer until
        it is over, release the socket.  Never raises (but ``Cancelled``): a driver bug drops
        the connection, logged, instead of tearing down the nursery it lives in."""
        self._io = io
        try:
            with self._scope:
                try:
                    self._conn.start(trio.current_time())
                    self._after_input()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._timer_loop)
                        await io.run()
                        nursery.cancel_scope.cancel()
                except Exception as exc:
                    logger.exception("session %s: driver error; dropping the connection",
                                     self.id)
                    self.lost(exc)
        finally:
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
        self._finished.set()
        self._inbox_event.set()
        self._writable.set()
        self._work_done.set()
        self._timer_event.set()

    def _set_inbox_event(self) -> None:
        self._inbox_event.set()

    def _request_withdrawn(self) -> None:
        self._rearm()
        self._work_done.set()

    def _settle(self, waiter: _Slot, message: Message | None,
                error: TransportError | None) -> None:
        waiter.message = message
        waiter.error = error
        waiter.event.set()
        self._work_done.set()

    def _handshake_settled(self) -> None:
        self._established.set()

    def _set_reading(self, reading: bool) -> None:
        assert self._io is not None
        self._io.set_reading(reading)

    async def _timer_loop(self) -> None:
        # Sleeps until the core's next deadline; _rearm wakes it when an earlier one appears.
        # A later deadline needs no wake-up: firing early is harmless, the loop just re-reads.
        while True:
            deadline = self._conn.next_deadline()
            self._timer_at = deadline
            if self._timer_event.is_set():
                self._timer_event = trio.Event()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._timer_event.wait()
                continue
            self._timer_at = None
            self._conn.handle_timer(trio.current_time())
            self._after_input()

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
            self._writable.set()
        elif self._writable.is_set():
            self._writable = trio.Event()

    async def _wait_writable(self, operation: str) -> None:
        await self._wait_room(operation)
        self._check_open(operation)

    async def _wait_room(self, operation: str) -> None:
        if self._writable.is_set():
            await self._writable.wait()  # a checkpoint even when writable
            return
        # At most the send_timeout: past it the shared half raises (and aborts a server
        # session, whose peer reads nothing).
        limit = self.send_timeout
        with trio.move_on_after(math.inf if limit is None else limit) as scope:
            while not self._writable.is_set():
                await self._writable.wait()
        if scope.cancelled_caught and not self._writable.is_set():
            assert limit is not None
            raise self._send_timed_out(operation, limit)

    def _rearm(self) -> None:
        deadline = self._conn.next_deadline()
        at = self._timer_at
        if deadline is not None and (at is None or deadline < at):
            self._timer_at = deadline
            self._timer_event.set()

    async def _respond(
        self, request: Packet, data: Buffer, biz_type: int | None, ext_header: Buffer
    ) -> None:
        self._unanswered.discard(request.message_id)
        self._work_done.set()
        # Answers are allowed while closing, so only a finished connection refuses them.
        await self._wait_room("respond")
        if self._released or self.closed_event is not None:
            raise self._closed_error("respond")
        self._queue_response(request, data, biz_type, ext_header)
        if self._io is not None:
            self._io.wake()
