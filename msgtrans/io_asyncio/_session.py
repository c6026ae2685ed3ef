"""One session: a core :class:`~msgtrans.core.connection.Connection` driven on the event loop.

:class:`Session` turns the connection's events into awaitables (the inbox, response futures,
the established and finished futures) and owns the connection's one timer.  The socket side is
an :class:`IO` object (a stream protocol, a QUIC client socket or a QUIC server listener), so
this module knows no socket and no protocol.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Protocol

from .._driver import docs
from .._driver.docs import doc
from .._driver.session import SessionBase, SocketSide, check_batch_size
from ..core.connection import Connection
from ..core.errors import TransportConnectionError, TransportError
from ..core.metrics import TransportMetrics
from ..core.packet import Buffer, Packet, PacketType
from ._message import Message

__all__ = ["IO", "Session"]

_REQUEST = PacketType.REQUEST
_RESPONSE = PacketType.RESPONSE

logger = logging.getLogger("msgtrans.io_asyncio")



class IO(SocketSide, Protocol):
    """What a :class:`Session` needs from its socket side (internal)."""

    def flush(self) -> None:
        """Write what the connection has to send now; close the socket once it is over."""

    def schedule_flush(self) -> None:
        """Arrange one :meth:`flush` soon (coalesces the sends of one loop iteration)."""

    def pause_reading(self) -> None:
        """Stop reading from the socket (the application fell behind)."""

    def resume_reading(self) -> None:
        """Read from the socket again."""

    def abort(self) -> None:
        """Drop the socket now, without a close handshake."""


@doc(docs.SESSION, safety="")
class Session(SessionBase[Message, "asyncio.Future[Message]", IO]):

    _message_type = Message

    def __init__(
        self,
        conn: Connection,
        session_id: int,
        loop: asyncio.AbstractEventLoop,
        on_finished: Callable[[Session], None] | None = None,
        metrics: TransportMetrics | None = None,
    ) -> None:
        # The loop's clock: asyncio's own loop.time() is time.monotonic() behind a Python
        # call; read the clock directly then (uvloop and others keep their own).
        clock: Callable[[], float] = (
            time.monotonic
            if getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time
            else loop.time
        )
        super().__init__(conn, session_id, on_finished, metrics, clock)
        self._loop = loop
        self._request_timeout = conn.session.request_timeout  # fixed for the session's life
        # True while input is processed: sends made meanwhile (handlers run from the protocol
        # callback, future callbacks) leave with the one flush that ends the batch.
        self._batching = False
        self._inbox_event = asyncio.Event()
        self._wake_inbox = self._inbox_event.set  # never replaced: bound once
        self._established: asyncio.Future[None] = loop.create_future()
        self._finished: asyncio.Future[None] = loop.create_future()
        self._writable = asyncio.Event()
        self._writable.set()
        # True while a send must wait or fail: not writable, or the connection is over.  One
        # attribute for the hot paths to test instead of three calls.
        self._blocked = False
        # The same as the clock for loop.create_future() (a Python call around asyncio.Future).
        self._new_future: Callable[[], asyncio.Future[Message]] = (
            partial(asyncio.Future, loop=loop)
            if getattr(type(loop), "create_future", None) is asyncio.BaseEventLoop.create_future
            else loop.create_future
        )
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._work_done = asyncio.Event()
        self._idle_waiters = 0  # wait_idle calls: _work_done is only set when someone waits

    # --- the application's operations ----------------------------------------------------------

    @doc(docs.SEND, waits="Waits", leaves="it leaves within this loop iteration", more="",
         timeout="", timeout_error="")
    async def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"") -> None:
        if self._blocked:
            await self._wait_writable("send")
        self._queue_send(data, biz_type, ext_header)
        if not self._batching and self._io is not None:
            self._io.schedule_flush()

    async def send_many(self, payloads: Iterable[Buffer], *, biz_type: int = 0) -> None:
        """Send each of *payloads* as its own one-way message, in order, in one write.

        The same as ``await send(p, biz_type=biz_type)`` for each payload (consecutive message
        ids, the peer receives them one by one, no extension header) but it waits for
        backpressure once, before the first, and hands the whole batch to the socket in one
        write: the batch may take the send backlog over its high watermark, and the next send
        waits for it to drain.  An empty iterable sends nothing.  Returns once the messages are
        queued.

        Args:
            payloads: the message bodies (any buffers; read before this returns, except that
                payloads of 16 KiB or more on TCP are written by reference: do not modify them
                until the next send returns).
            biz_type: the type tag of every message, 0..255 (default 0).

        Raises:
            TransportConnectionError: the session is closing or closed (nothing was sent).
            ResourceError: a payload is over the limit; the messages before it are sent, it and
                the ones after it are not.
            ConfigurationError: *biz_type* is out of range (nothing was sent).
        """
        if self._blocked:
            await self._wait_writable("send")
        try:
            self._queue_batch(payloads, biz_type)
        finally:
            if not self._batching and self._io is not None:
                self._io.schedule_flush()

    @doc(docs.REQUEST, withdrawn="Cancelling the call")
    async def request(
        self,
        data: Buffer,
        *,
        biz_type: int = 0,
        ext_header: Buffer = b"",
        timeout: float | None = None,
    ) -> Message:
        if self._blocked:
            await self._wait_writable("request")
        sent_at = self._time()
        future: asyncio.Future[Message] = self._new_future()
        request_id = self._queue_request(data, biz_type, ext_header, timeout=timeout,
                                         now=sent_at, waiter=future)
        # The timer only ever moves earlier (see _rearm): a request whose deadline is not
        # before the armed one costs no timer work at all.
        at = self._timer_at
        if at is None or sent_at + (
            timeout if timeout is not None else self._request_timeout
        ) < at:
            self._rearm()
        if not self._batching and self._io is not None:
            self._io.schedule_flush()
        try:
            response = await future
            if self._metrics is not None:
                self._metrics.request_latency(self._time() - sent_at)
            return response
        except asyncio.CancelledError:
            # Withdraw the request so nothing stays pending in the core.
            self._withdraw(request_id)
            raise

    @doc(docs.RECEIVE, cancel=docs.RECEIVE_CANCEL, args="", timeout_error="")
    async def receive(self) -> Message:
        while not self._inbox:
            if self._released or self.closed_event is not None:
                raise self._closed_error("receive")
            self._inbox_event.clear()
            await self._inbox_event.wait()
        return self._take()

    @doc(docs.RECEIVE_MANY, saves="costs one wake-up per batch instead of one per message",
         timeout="", timeout_error="", cancel=docs.CANCEL_SAFE.format(more=""))
    async def receive_many(self, max_messages: int | None = None) -> list[Message]:
        check_batch_size(max_messages)
        while not self._inbox:
            if self._released or self.closed_event is not None:
                raise self._closed_error("receive")
            self._inbox_event.clear()
            await self._inbox_event.wait()
        sm = self._sm
        messages = self._take_batch(max_messages)
        if sm.has_events:  # ReadResumed: reading goes on
            self._process()
        return messages

    def receive_nowait(self) -> Message | None:
        """Return the next message if one is waiting, else ``None`` (never waits; a closed
        session with nothing left also gives ``None``: :meth:`receive` says why)."""
        return self._take() if self._inbox else None

    async def wait_inbox(self) -> None:
        """Wait until a message is queued, the session is over, or :meth:`kick` is called
        (returns at once if one of those is already so)."""
        if not self._inbox and not (self._released or self.closed_event is not None):
            self._inbox_event.clear()
            await self._inbox_event.wait()

    def kick(self) -> None:
        """Wake :meth:`wait_inbox` (and :meth:`receive`, which goes back to waiting if nothing
        is queued)."""
        self._inbox_event.set()

    @doc(docs.CLOSE)
    async def close(
        self, code: int | None = None, reason: str = "", *, timeout: float = 10.0
    ) -> None:
        if not self._released:
            self.start_close(code, reason)
            try:
                # Shielded: cancelling close() must not cancel the session's own future.
                if sys.version_info >= (3, 11):
                    # A timeout scope in this task: wait_for would wrap the wait in a task
                    # of its own (one more task and loop pass per close).
                    async with asyncio.timeout(timeout):
                        await asyncio.shield(self._finished)
                else:  # pragma: no cover - Python 3.10
                    await asyncio.wait_for(asyncio.shield(self._finished), timeout)
            except asyncio.TimeoutError:
                self.abort()

    async def wait_closed(self) -> None:
        """Wait until the session is over and its socket released."""
        await asyncio.shield(self._finished)

    def _drop(self) -> None:
        if self._io is not None:
            self._io.abort()
        else:
            self.socket_gone()

    # --- for the transport ---------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait until no request is in flight either way (or the session is over)."""
        self._idle_waiters += 1
        try:
            while self.pending_work and not self._released:
                self._work_done.clear()
                await self._work_done.wait()
        finally:
            self._idle_waiters -= 1

    async def wait_established(self) -> None:
        """Wait for the handshake to complete.

        Raises:
            TransportError: the handshake failed or the connection closed first.
        """
        await asyncio.shield(self._established)

    def when_established(self, callback: Callable[[Session], None]) -> None:
        """Call *callback* with this session once its handshake completed; a failed handshake
        is logged (it never reaches the application, and never stops a listener)."""

        def done(future: asyncio.Future[None]) -> None:
            if future.cancelled():
                return
            error = future.exception()
            if error is not None:
                logger.info("session %s: handshake failed: %s", self.id, error)
                return
            callback(self)

        self._established.add_done_callback(done)

    def when_finished(self, callback: Callable[[Session], None]) -> None:
        """Call *callback* with this session once it is over and its socket released."""
        self._finished.add_done_callback(lambda _future: callback(self))

    # --- the driver's side ---------------------------------------------------------------------

    def attach(self, io: IO) -> None:
        """Give the session its socket side and start the connection."""
        self._io = io
        self._conn.start(self._time())
        self._after_input()

    def set_socket_paused(self, paused: bool) -> None:
        """asyncio's pause_writing / resume_writing."""
        self._socket_paused = paused
        self._update_writable()

    def feed(self, nbytes: int) -> None:
        """Bytes arrived in the connection's buffer (stream sockets)."""
        now = self._time()
        tcp = self._tcp
        if tcp is None:
            self._conn.buffer_updated(nbytes, now)
            self._after_input()
            return
        # Plain TCP: the packets go from the machine to the session machine and on to the
        # application here, which is all Connection and the events would do with them (no
        # PacketReceived, MessageReceived or ResponseReceived objects, no events round trip).
        # Anything else the bytes caused is left queued in the machine and pumped through
        # Connection as usual (buffer_updated(0) only pumps).
        packets = tcp.receive_packets(nbytes, now)
        if packets is None:
            self._conn.buffer_updated(0, now)
            self._after_input()
            return
        if not packets:
            self._after_input()
            return
        # As _after_input and _process would: sends made by handlers leave with the one flush
        # at the end, and a nested _process call is folded into the _process below.
        self._batching = True
        try:
            self._processing = True
            self._again = False
            try:
                accept = self._sm.accept_packet
                for packet in packets:
                    kind = accept(packet, now)
                    if kind is _RESPONSE:
                        # _response, inlined: a client's one call per response.
                        future = self._responses.pop(packet.message_id, None)
                        if future is not None and not future.done():
                            future.set_result(Message(packet, self.id))
                        self._in_messages += 1
                        self._in_bytes += len(packet.payload)
                        if self._idle_waiters:
                            self._work_done.set()
                    elif kind is not None:
                        self._deliver(packet, kind is _REQUEST)
            finally:
                self._processing = False
            # The event lists read directly (the has_events properties are a Python call
            # each); a plain TCP machine wraps no other machine, so its own list is all.
            if self._again or self._sm._events or tcp._events:
                self._process()
            elif self._deadline_moved:
                self._after_process()
            else:
                # _after_process's usual case inlined (no state move, no timer to move): the
                # batch's counters only, without two Python calls per read.
                metrics = self._metrics
                if metrics is not None and self._in_messages:
                    metrics.messages_in += self._in_messages
                    metrics.bytes_in += self._in_bytes
                    self._in_messages = self._in_bytes = 0
                if not self.unflushed_packets:
                    # No event at all and nothing queued (a client reading its responses):
                    # the machine's state did not move (every move emits an event) and there
                    # is nothing to write, so the flush would only look and find nothing.
                    return
        finally:
            self._batching = False
        if self._io is not None:
            self._io.flush()

    def lost(self, exc: BaseException | None, now: float | None = None) -> None:
        """The socket closed or broke."""
        super().lost(exc, now)
        self.socket_gone()

    def _on_released(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._finished.set_result(None)
        self._inbox_event.set()
        self._blocked = True
        self._writable.set()
        self._work_done.set()

    def _handshake_settled(self) -> None:
        error = self._established_error
        if error is None:
            self._established.set_result(None)
        else:
            self._established.set_exception(error)
            self._established.exception()  # retrieved: the connect may have gone already

    def _request_withdrawn(self) -> None:
        self._rearm()
        self._work_done.set()

    def _settle(self, waiter: asyncio.Future[Message], message: Message | None,
                error: TransportError | None) -> None:
        if not waiter.done():
            if error is None:
                waiter.set_result(message)  # type: ignore[arg-type]
            else:
                waiter.set_exception(error)
        if self._idle_waiters:
            self._work_done.set()

    def on_timer(self) -> None:
        """The connection's deadline came."""
        self._timer = None
        self._timer_at = None
        self._deadline_moved = True
        self._conn.handle_timer(self._time())
        self._after_input()

    # --- plumbing ------------------------------------------------------------------------------

    def _after_input(self) -> None:
        if self._batching:
            self._process()  # re-entered from a handler: the outer call flushes
            return
        self._batching = True
        try:
            self._process()
        finally:
            self._batching = False
        if self._io is not None:
            self._io.flush()

    def _after_process(self, handled: bool = True) -> None:
        if self._metrics is not None:
            # The state only moves with an event other than a message (which sets
            # _deadline_moved): look at it only then.
            self._update_metrics(self._metrics, self._deadline_moved)
        if self._deadline_moved:
            self._deadline_moved = False
            self._rearm()

    def _update_writable(self) -> None:
        if self._can_write():
            self._writable.set()
        else:
            self._writable.clear()
        self._blocked = (self.closed_event is not None or self._released
                         or not self._writable.is_set())

    async def _wait_writable(self, operation: str) -> None:
        if not self._writable.is_set():
            await self._wait_room(operation)
        self._check_open(operation)

    async def _wait_room(self, operation: str) -> None:
        # At most the send_timeout: past it the shared half raises (and aborts a server
        # session, whose peer reads nothing).
        limit = self.send_timeout
        if limit is None:
            await self._until_writable()
            return
        try:
            if sys.version_info >= (3, 11):
                async with asyncio.timeout(limit):
                    await self._until_writable()
            else:  # pragma: no cover - Python 3.10
                await asyncio.wait_for(self._until_writable(), limit)
        except asyncio.TimeoutError:
            raise self._send_timed_out(operation, limit) from None

    async def _until_writable(self) -> None:
        while not self._writable.is_set():
            await self._writable.wait()

    def _rearm(self) -> None:
        # One timer per session, moved only when the earliest deadline moves earlier.  A
        # deadline that went away or moved later (a request answered, a handshake done) keeps
        # the timer: it fires early, handle_timer does nothing harmful then (the machines allow
        # early calls) and on_timer re-arms at the real deadline.  So a request/response costs
        # no call_at/cancel pair, only this comparison.
        deadline = self._conn.next_deadline()
        at = self._timer_at
        if deadline is None or (at is not None and deadline >= at) or self._released:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self.on_timer)

    async def _respond(
        self, request: Packet, data: Buffer, biz_type: int | None, ext_header: Buffer
    ) -> None:
        self._unanswered.discard(request.message_id)
        self._work_done.set()
        if self._blocked:
            await self._wait_writable_for_respond()
        self._respond_now(request, data, biz_type, ext_header)

    def try_respond(self, message: Message, data: Buffer) -> bool:
        """Answer the request *message* with *data* at once, if nothing holds sends back.

        For servers answering from their receive loop: it skips ``Message.respond``'s await.
        Returns ``False`` and does nothing while the send side is paused (await
        ``message.respond(data)`` then, which waits).

        Raises:
            TransportConnectionError: *message* is not a request or was already answered
                (code ``connection.failed``), or the session is closed.
        """
        # The message's packet and flag read directly: each property is a Python call, and
        # this runs once per request a server answers.
        packet = message._packet
        if packet.packet_type is not _REQUEST or message._responded:
            raise TransportConnectionError(
                f"message {packet.message_id} is not an unanswered request",
                code="connection.failed", retryable=False, session_id=self.id,
                operation="respond",
            )
        if self._blocked and not self._writable.is_set():
            return False
        message._responded = True
        self._unanswered.discard(packet.message_id)
        if self._idle_waiters:
            self._work_done.set()
        if self._blocked and (self._released or self.closed_event is not None):
            raise self._closed_error("respond")
        self._respond_now(packet, data, None, b"")
        return True

    def _respond_now(
        self, request: Packet, data: Buffer, biz_type: int | None, ext_header: Buffer
    ) -> None:
        self._queue_response(request, data, biz_type, ext_header)
        if not self._batching and self._io is not None:
            self._io.schedule_flush()

    async def _wait_writable_for_respond(self) -> None:
        # Answers are allowed while closing, so only a finished connection refuses them.
        if not self._writable.is_set():
            await self._wait_room("respond")
        if self._released or self.closed_event is not None:
            raise self._closed_error("respond")
