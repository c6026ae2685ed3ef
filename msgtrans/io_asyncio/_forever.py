"""``transport.connect_forever()`` on asyncio: :class:`ConnectForever`, an async iterator of
sessions (the decisions are :class:`msgtrans._driver.forever.ForeverBase`'s)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

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


@doc(docs.CONNECT_FOREVER_ITERATOR, kind="an async iterator", loop="async for",
     close="await sessions.aclose()", with_="async with", stop="StopAsyncIteration",
     safety="  Use it from the event loop's thread.")
class ConnectForever(ForeverBase[Session]):

    def __init__(self, transport: Transport, config: ConnectionConfig, policy: ReconnectPolicy,
                 timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(transport, config, policy, timeout, loop.time)
        self._connect = transport.connect
        self._wake = asyncio.Event()

    def _notify(self) -> None:
        self._wake.set()

    async def _wait(self, done: Callable[[], bool], deadline: float | None) -> None:
        # Until done() or the deadline; every notify re-checks (a spurious wake only loops).
        while not done():
            self._wake.clear()
            if done():
                return
            timeout = None if deadline is None else deadline - self._clock()
            if timeout is not None and timeout <= 0:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
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
            await session.close(timeout=1.0)  # stopped while connecting: nobody wants it
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the iterator (see :meth:`stop`); the sessions it yielded stay open."""
        self.stop()

    async def __aenter__(self) -> ConnectForever:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.stop()
