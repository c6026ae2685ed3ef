"""A client session that re-establishes its connection: :class:`ReconnectingSession` on trio
(the shared half is :mod:`msgtrans._driver.reconnect`).

Its supervisor is a task in the transport's nursery, inside a cancel scope of its own: it
waits for the current session to end, asks the reconnect machine, sleeps the delay and
connects again.  ``close()``, ``abort()`` and the transport's shutdown cancel that scope.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

from .._driver import docs
from .._driver.docs import doc
from .._driver.reconnect_async import AsyncReconnectingBase
from ..core.errors import TransportError
from ..core.metrics import TransportMetrics
from ..core.reconnect import GiveUp, ReconnectPolicy, Retry
from ._message import Message
from ._session import Session

__all__ = ["ReconnectingSession"]

logger = logging.getLogger("msgtrans.io_trio")


@doc(docs.RECONNECTING_SESSION, made="``await transport.connect(target, reconnect=...)``",
     safety="  Its supervisor is a task in the transport's nursery.")
class ReconnectingSession(AsyncReconnectingBase[Session, Message]):

    def __init__(self, first: Session, policy: ReconnectPolicy, *,
                 connect: Callable[[], Awaitable[Session]], metrics: TransportMetrics,
                 spawn: Callable[..., None],
                 on_closed: Callable[[ReconnectingSession], None]) -> None:
        super().__init__(first, policy, metrics=metrics, clock=trio.current_time,
                         logger=logger, on_closed=on_closed)
        self._connect = connect
        self._changed = trio.Event()  # replaced on every change (see _notify)
        self._scope = trio.CancelScope()
        self._done = trio.Event()  # the supervisor ended
        spawn(self._supervise)

    # --- the application's operations ----------------------------------------------------------

    @doc(docs.RECONNECTING_CLOSE)
    async def close(self, code: int | None = None, reason: str = "", *,
                    timeout: float = 10.0) -> None:
        self._stop()
        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            await self._done.wait()
        current = self._current
        if current is not None:
            await current.close(code, reason, timeout=timeout)

    # --- waiting -------------------------------------------------------------------------------

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def _wait_change(self, deadline: float | None) -> bool:
        changed = self._changed
        with trio.move_on_at(float("inf") if deadline is None else deadline):
            await changed.wait()
        return bool(changed.is_set())

    # --- the supervisor ------------------------------------------------------------------------

    def _stop(self) -> None:
        """Closed by the application or the transport: stop the supervisor (no wait)."""
        if self._mark_closed():
            self._on_closed(self)
            self._notify()
        self._scope.cancel()

    def _shutdown(self) -> trio.Event:
        """The transport's shutdown: stop, and hand it the event to wait for."""
        self._stop()
        return self._done

    async def _supervise(self) -> None:
        try:
            with self._scope:
                await self._watch()
        except Exception:  # pragma: no cover - a driver bug: close rather than hang waiters
            logger.exception("the reconnect supervisor failed; closing")
            if self._mark_closed():
                self._on_closed(self)
            self._notify()
        finally:
            self._done.set()

    async def _watch(self) -> None:
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
                await trio.sleep(decision.delay)
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
