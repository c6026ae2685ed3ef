"""A client session that re-establishes its connection: :class:`ReconnectingSession` on
asyncio (the shared half is :mod:`msgtrans._driver.reconnect`).

Its supervisor is one task: it waits for the current session to end, asks the reconnect
machine, sleeps the delay and connects again.  ``close()``, ``abort()`` and the transport's
shutdown cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from .._driver import docs
from .._driver.docs import doc
from .._driver.reconnect import ReconnectingBase, cut_error, ended, may_resend
from ..core.errors import TransportError
from ..core.metrics import TransportMetrics
from ..core.packet import Buffer
from ..core.reconnect import GiveUp, ReconnectPolicy, Retry
from ._message import Message
from ._session import Session

__all__ = ["ReconnectingSession"]

logger = logging.getLogger("msgtrans.io_asyncio")


@doc(docs.RECONNECTING_SESSION, made="``await transport.connect(target, reconnect=...)``",
     safety="  All methods must be called from the event loop's thread.")
class ReconnectingSession(ReconnectingBase[Session]):

    def __init__(self, first: Session, policy: ReconnectPolicy, *,
                 connect: Callable[[], Awaitable[Session]], metrics: TransportMetrics,
                 on_closed: Callable[[ReconnectingSession], None]) -> None:
        self._loop = asyncio.get_running_loop()
        super().__init__(first, policy, metrics=metrics, clock=self._loop.time, logger=logger,
                         on_closed=on_closed)
        self._connect = connect
        self._changed = asyncio.Event()  # replaced on every change (see _notify)
        self._task: asyncio.Task[None] | None = self._loop.create_task(self._supervise())

    # --- the application's operations ----------------------------------------------------------

    @doc(docs.RECONNECTING_SEND, timeout="")
    async def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"",
                   wait_reconnect: bool = True) -> None:
        current = self._current
        if current is not None:
            try:
                return await current.send(data, biz_type=biz_type, ext_header=ext_header)
            except TransportError:  # the session's end (nothing was queued): wait
                if not ended(current):
                    raise
        deadline = self._deadline(self._send_timeout)
        while True:
            session = await self._wait_session("send", deadline, wait_reconnect)
            try:
                return await session.send(data, biz_type=biz_type, ext_header=ext_header)
            except TransportError:
                if not ended(session):
                    raise

    @doc(docs.RECONNECTING_REQUEST)
    async def request(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"",
                      timeout: float | None = None, idempotent: bool = False,
                      wait_reconnect: bool = True) -> Message:
        limit = self._request_timeout if timeout is None else timeout
        deadline = self._loop.time() + limit
        while True:
            session = self._usable() or await self._wait_session("request", deadline,
                                                                  wait_reconnect)
            remaining = max(deadline - self._loop.time(), 0.001)
            try:
                return await session.request(data, biz_type=biz_type, ext_header=ext_header,
                                             timeout=remaining)
            except TransportError as exc:
                if not ended(session) or exc.error_code == "timeout.request":
                    raise
                if self._closed and self._final is None:
                    raise self._closed_error("request") from exc
                if not may_resend(exc, idempotent):
                    raise cut_error(exc) from None

    @doc(docs.RECONNECTING_RECEIVE, timeout="")
    async def receive(self) -> Message:
        while True:
            session = await self._wait_reader()
            try:
                return await session.receive()
            except TransportError:
                if not ended(session):
                    raise

    async def receive_many(self, max_messages: int | None = None) -> list[Message]:
        """Every queued message (at most *max_messages*), waiting for the first; messages of
        one connection only (call again for the next).  See :meth:`receive`."""
        while True:
            session = await self._wait_reader()
            try:
                return await session.receive_many(max_messages)
            except TransportError:
                if not ended(session):
                    raise

    @doc(docs.RECONNECTING_CLOSE)
    async def close(self, code: int | None = None, reason: str = "", *,
                    timeout: float = 10.0) -> None:
        self._stop()
        await self._join()
        current = self._current
        if current is not None:
            await current.close(code, reason, timeout=timeout)

    def abort(self, reason: str = "aborted") -> None:
        """Stop reconnecting and drop the current connection now, without a close handshake
        (pending requests fail with ``connection.aborted``).  Idempotent."""
        self._stop()
        current = self._current
        if current is not None:
            current.abort(reason)

    async def wait_connected(self, timeout: float | None = None) -> Session:
        """Wait until a connection is up and return its session (at once when one is).

        Raises:
            TransportTimeoutError: not connected within *timeout* seconds (code
                ``timeout.connect``; default ``None``: no limit).
            TransportError: closed, or given up (the give-up error).
        """
        return await self._wait_session("connect", self._deadline(timeout), True)

    async def __aenter__(self) -> ReconnectingSession:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # --- waiting -------------------------------------------------------------------------------

    def _deadline(self, seconds: float | None) -> float | None:
        return None if seconds is None else self._loop.time() + seconds

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait_change(self, deadline: float | None) -> bool:
        changed = self._changed
        if deadline is None:
            await changed.wait()
            return True
        remaining = deadline - self._loop.time()
        if remaining <= 0:
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(changed.wait(), remaining)
        return changed.is_set()

    async def _wait_session(self, operation: str, deadline: float | None,
                            wait: bool) -> Session:
        start = self._loop.time()
        while True:
            if self._closed:
                raise self._closed_error(operation)
            session = self._usable()
            if session is not None:
                return session
            if not wait:
                raise self._down_error(operation)
            if not await self._wait_change(deadline):
                raise self._wait_timed_out(operation, self._loop.time() - start)

    async def _wait_reader(self) -> Session:
        while True:
            session = self._reader()
            if session is not None:
                return session
            if self._closed:
                raise self._closed_error("receive")
            await self._wait_change(None)

    # --- the supervisor ------------------------------------------------------------------------

    def _stop(self) -> None:
        """Closed by the application or the transport: stop the supervisor (no wait)."""
        if self._mark_closed():
            self._on_closed(self)
            self._notify()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _join(self) -> None:
        task = self._task
        if task is not None and task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)

    def _shutdown(self) -> asyncio.Task[None] | None:
        """The transport's shutdown: stop, and hand it the task to wait for."""
        self._stop()
        return self._task

    async def _supervise(self) -> None:
        try:
            while True:
                session = self._current
                if session is None:
                    return
                await session.wait_closed()
                info = self._lost(session)
                if info is None:
                    return
                self._notify()
                self._fire_disconnected(info)
                decision = info.decision
                while isinstance(decision, Retry):
                    await asyncio.sleep(decision.delay)
                    if self._closed:
                        return
                    self._attempting()
                    try:
                        new = await self._connect()
                    except TransportError as exc:
                        if self._closed:
                            return
                        decision = self._failed(exc)
                        continue
                    if self._closed:
                        new.abort("the reconnecting session closed")
                        return
                    attempts = self._adopt(new)
                    self._notify()
                    self._fire_reconnected(attempts)
                    break
                if isinstance(decision, GiveUp):
                    self._on_closed(self)
                    self._notify()
                    return
        except asyncio.CancelledError:
            pass
        except Exception:  # pragma: no cover - a driver bug: close rather than hang waiters
            logger.exception("the reconnect supervisor failed; closing")
            if self._mark_closed():
                self._on_closed(self)
            self._notify()
        finally:
            self._task = None
