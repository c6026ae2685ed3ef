"""``transport.connect_forever()`` on trio: :class:`ConnectForever`, an async iterator of
sessions (the decisions are :class:`msgtrans._driver.forever.ForeverBase`'s)."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

from .._driver import docs
from .._driver.docs import doc
from .._driver.forever import ForeverBase
from ..core.config import ConnectionConfig
from ..core.errors import TransportError
from ..core.reconnect import ReconnectPolicy
from ._session import Session

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["ConnectForever"]


def _now() -> float:
    return float(trio.current_time())


@doc(docs.CONNECT_FOREVER_ITERATOR, kind="an async iterator", loop="async for",
     close="await sessions.aclose()", with_="async with", stop="StopAsyncIteration",
     safety="  Use it from trio's thread; its sessions run in the transport's nursery.")
class ConnectForever(ForeverBase[Session]):

    def __init__(self, transport: Transport, config: ConnectionConfig, policy: ReconnectPolicy,
                 timeout: float | None) -> None:
        super().__init__(transport, config, policy, timeout, _now)
        self._connect = transport.connect
        self._wake = trio.Event()

    def _notify(self) -> None:
        self._wake.set()

    async def _wait(self, done: Callable[[], bool], deadline: float | None) -> None:
        # Until done() or the deadline; every notify re-checks (a spurious wake only loops).
        while not done():
            self._wake = trio.Event()
            with trio.move_on_at(math.inf if deadline is None else deadline) as scope:
                await self._wake.wait()
            if scope.cancelled_caught:
                return

    def __aiter__(self) -> ConnectForever:
        return self

    async def __anext__(self) -> Session:
        if self._stop_iteration_now():
            raise StopAsyncIteration
        if self._current is not None:
            await self._wait(self._current_over, None)
            self._session_over()
        while not self._should_stop():
            if self._clock() < self._next_at:
                await self._wait(self._stop_requested, self._next_at)
                continue
            try:
                session = await self._connect(self._config, timeout=self._timeout)
            except TransportError as exc:
                self._attempt_failed(exc)
                continue
            if self._opened(session):
                return session
            with trio.CancelScope(shield=True):  # stopped while connecting: nobody wants it
                await session.close(timeout=1.0)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the iterator (see :meth:`stop`); the sessions it yielded stay open."""
        self.stop()

    async def __aenter__(self) -> ConnectForever:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.stop()
