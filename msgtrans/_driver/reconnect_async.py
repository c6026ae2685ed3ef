"""The awaitable half that the asyncio and trio ``ReconnectingSession`` share:
:class:`AsyncReconnectingBase`.

Sending, requesting, receiving and waiting for a connection read the same on both event loops;
what differs is how a task waits for a change (an ``asyncio.Event`` with a timeout, a
``trio.Event`` under a deadline), how the supervisor runs and how ``close()`` waits for it.
A backend supplies those: :meth:`AsyncReconnectingBase._wait_change`, ``close()``, ``_stop()``
and its supervisor.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, cast

from ..core.errors import TransportError
from ..core.packet import Buffer
from . import docs
from .docs import doc
from .reconnect import ReconnectingBase, _Session, cut_error, ended, may_resend

__all__ = ["AsyncReconnectingBase"]


class _AsyncSession(_Session, Protocol):
    """What the awaitable half calls on an async backend's session."""

    async def send(self, data: Buffer, *, biz_type: int = 0,
                   ext_header: Buffer = b"") -> None: ...

    async def request(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"",
                      timeout: float | None = None) -> Any: ...

    async def receive(self) -> Any: ...

    async def receive_many(self, max_messages: int | None = None) -> Any: ...

    def abort(self, reason: str = "aborted") -> None: ...


AS = TypeVar("AS", bound=_AsyncSession)
M = TypeVar("M")
_R = TypeVar("_R", bound="AsyncReconnectingBase[Any, Any]")


class AsyncReconnectingBase(ReconnectingBase[AS], Generic[AS, M]):
    """The asyncio and trio ``ReconnectingSession``'s operations (internal): every one uses
    the current session, or waits through :meth:`_wait_change` for the next."""

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
                      wait_reconnect: bool = True) -> M:
        limit = self._request_timeout if timeout is None else timeout
        deadline = self._time() + limit
        while True:
            session = self._usable() or await self._wait_session("request", deadline,
                                                                  wait_reconnect)
            remaining = max(deadline - self._time(), 0.001)
            try:
                return cast(M, await session.request(data, biz_type=biz_type,
                                                     ext_header=ext_header, timeout=remaining))
            except TransportError as exc:
                if not ended(session) or exc.error_code == "timeout.request":
                    raise
                if self._closed and self._final is None:
                    raise self._closed_error("request") from exc
                if not may_resend(exc, idempotent):
                    raise cut_error(exc) from None

    @doc(docs.RECONNECTING_RECEIVE, timeout="")
    async def receive(self) -> M:
        while True:
            session = await self._wait_reader()
            try:
                return cast(M, await session.receive())
            except TransportError:
                if not ended(session):
                    raise

    async def receive_many(self, max_messages: int | None = None) -> list[M]:
        """Every queued message (at most *max_messages*), waiting for the first; messages of
        one connection only (call again for the next).  See :meth:`receive`."""
        while True:
            session = await self._wait_reader()
            try:
                return cast("list[M]", await session.receive_many(max_messages))
            except TransportError:
                if not ended(session):
                    raise

    async def close(self, code: int | None = None, reason: str = "", *,
                    timeout: float = 10.0) -> None:
        raise NotImplementedError  # each backend's (it waits for its supervisor its own way)

    def abort(self, reason: str = "aborted") -> None:
        """Stop reconnecting and drop the current connection now, without a close handshake
        (pending requests fail with ``connection.aborted``).  Idempotent."""
        self._stop()
        current = self._current
        if current is not None:
            current.abort(reason)

    async def wait_connected(self, timeout: float | None = None) -> AS:
        """Wait until a connection is up and return its session (at once when one is).

        Raises:
            TransportTimeoutError: not connected within *timeout* seconds (code
                ``timeout.connect``; default ``None``: no limit).
            TransportError: closed, or given up (the give-up error).
        """
        return await self._wait_session("connect", self._deadline(timeout), True)

    async def __aenter__(self: _R) -> _R:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # --- waiting -------------------------------------------------------------------------------

    def _stop(self) -> None:
        raise NotImplementedError  # each backend stops its own supervisor

    async def _wait_change(self, deadline: float | None) -> bool:
        """Wait until the connection changes (``_notify``) or *deadline* (the backend's clock)
        passes; return whether it changed."""
        raise NotImplementedError

    def _deadline(self, seconds: float | None) -> float | None:
        return None if seconds is None else self._time() + seconds

    async def _wait_session(self, operation: str, deadline: float | None, wait: bool) -> AS:
        start = self._time()
        while True:
            if self._closed:
                raise self._closed_error(operation)
            session = self._usable()
            if session is not None:
                return session
            if not wait:
                raise self._down_error(operation)
            if not await self._wait_change(deadline):
                raise self._wait_timed_out(operation, self._time() - start)

    async def _wait_reader(self) -> AS:
        while True:
            session = self._reader()
            if session is not None:
                return session
            if self._closed:
                raise self._closed_error("receive")
            await self._wait_change(None)
