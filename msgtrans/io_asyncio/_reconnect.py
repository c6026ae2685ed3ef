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

from .._driver import docs
from .._driver.docs import doc
from .._driver.reconnect_async import AsyncReconnectingBase
from ..core.errors import TransportError
from ..core.metrics import TransportMetrics
from ..core.reconnect import GiveUp, ReconnectPolicy, Retry
from ._message import Message
from ._session import Session

__all__ = ["ReconnectingSession"]

logger = logging.getLogger("msgtrans.io_asyncio")


@doc(docs.RECONNECTING_SESSION, made="``await transport.connect(target, reconnect=...)``",
     safety="  All methods must be called from the event loop's thread.")
class ReconnectingSession(AsyncReconnectingBase[Session, Message]):

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

    @doc(docs.RECONNECTING_CLOSE)
    async def close(self, code: int | None = None, reason: str = "", *,
                    timeout: float = 10.0) -> None:
        self._stop()
        await self._join()
        current = self._current
        if current is not None:
            await current.close(code, reason, timeout=timeout)

    # --- waiting -------------------------------------------------------------------------------

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
