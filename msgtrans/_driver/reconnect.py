"""The backend-neutral half of a reconnecting client session: :class:`ReconnectingBase`.

Each backend's ``ReconnectingSession`` (``io_asyncio/_reconnect.py``, ``io_trio/_reconnect.py``,
``io_sync/_reconnect.py``) subclasses it and keeps only what waits: its supervisor (a task, a
task in the transport's nursery, a thread), the sleeps, the connect attempts and the awaitable
or blocking public methods.  Everything here is synchronous and does no I/O: the
:class:`~msgtrans.core.reconnect.ReconnectMachine` and what is told to it, the current
session, the sessions still to be read from, the counters and metrics, the hooks, and the
errors the public methods raise.

The pure parts (which error ends a connection how, what a request's caller is told at the
cut, whether a request may be sent again) are module functions, tested on their own.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ..core.errors import (
    ConfigurationError,
    ResourceError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from ..core.errors import Protocol as WireProtocol
from ..core.metrics import TransportMetrics
from ..core.reconnect import (
    DEFAULT_RECONNECT_POLICY,
    GiveUp,
    LinkState,
    ReconnectMachine,
    ReconnectPolicy,
    Retry,
)
from ..core.session import SessionState

__all__ = [
    "Disconnect",
    "ReconnectingBase",
    "cut_error",
    "end_error",
    "may_resend",
    "resolve_policy",
]


def resolve_policy(reconnect: object) -> ReconnectPolicy | None:
    """The policy ``connect(..., reconnect=reconnect)`` asks for: ``None`` for ``None`` or
    ``False`` (a plain session), :data:`DEFAULT_RECONNECT_POLICY` for ``True``, the policy
    itself for a :class:`ReconnectPolicy`.

    Raises:
        ConfigurationError: anything else (field ``reconnect``).
    """
    if reconnect is None or reconnect is False:
        return None
    if reconnect is True:
        return DEFAULT_RECONNECT_POLICY
    if isinstance(reconnect, ReconnectPolicy):
        return reconnect
    raise ConfigurationError(
        "reconnect", f"must be None, a bool or a ReconnectPolicy, got {reconnect!r}")


def end_error(error: TransportError | None) -> TransportError | None:
    """What the reconnect machine is told ended a connection whose session closed with
    *error* (``None``: the peer closed it cleanly, which is retried).

    The error's own ``is_retryable()`` decides, except that a ``ResourceError`` or a
    ``ConfigurationError`` never is: the next connection would meet the same limit or the
    same setting.
    """
    if error is None:
        return None
    if isinstance(error, (ResourceError, ConfigurationError)) and error.is_retryable():
        return error._copy(_retryable=False)
    return error


def cut_error(error: TransportError, operation: str = "request") -> TransportError:
    """The error a caller whose request was pending when its connection ended is given: the
    error that ended the connection when it says retrying may help, else (a clean close by
    the peer, which reports ``connection.closed`` not retryable) a retryable
    ``connection.closed`` that says the connection is being re-established."""
    if error.is_retryable():
        return error.with_operation(operation)
    return TransportConnectionError(
        f"the connection was lost before the response came ({error.reason}); the client "
        "is reconnecting", code="connection.closed", retryable=True, operation=operation,
        session_id=error.session_id)


def may_resend(error: TransportError, idempotent: bool) -> bool:
    """Whether a request that failed with *error* because its connection ended may be sent
    again on the next connection: only an *idempotent* one, and never after its own timeout
    (``timeout.request``: the peer may have it and be slow)."""
    return idempotent and error.error_code != "timeout.request"


@dataclass(frozen=True, slots=True)
class Disconnect:
    """What the ``on_disconnected`` hooks are told about a lost connection.

    Attributes:
        error: the error that ended it (``None``: the peer closed it cleanly).
        session_id: the id of the session that ended.
        lost_unsent: messages queued on it that never reached the socket (one-way ones are
            never re-sent: they may be lost; requests among them fail or, idempotent, are
            re-sent).
        decision: what the reconnect machine decided: a
            :class:`~msgtrans.core.reconnect.Retry` or a :class:`~msgtrans.core.reconnect.GiveUp`.
    """

    error: TransportError | None
    session_id: int
    lost_unsent: int
    decision: Retry | GiveUp


class _Conn(Protocol):
    unflushed_packets: int


class _Session(Protocol):
    """What the shared half reads of a backend's session."""

    id: int
    error: TransportError | None
    send_timeout: float | None

    @property
    def closed_event(self) -> object | None: ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def has_inbox(self) -> bool: ...

    @property
    def state(self) -> SessionState: ...

    @property
    def protocol(self) -> WireProtocol: ...

    @property
    def connection(self) -> Any: ...


S = TypeVar("S", bound=_Session)
DisconnectHook = Callable[[Any, Disconnect], object]
ReconnectHook = Callable[[Any, int], object]


def ended(session: _Session) -> bool:
    """Whether *session*'s connection is over (closing or released)."""
    return session.closed_event is not None or session.is_closed


class ReconnectingBase(Generic[S]):
    """The shared state of a ``ReconnectingSession`` (internal; see the module text).

    Args:
        first: the session ``connect()`` opened.
        policy: the :class:`ReconnectPolicy`.
        metrics: the transport's metrics (reconnects, give-ups, time disconnected).
        clock: the backend's clock.
        logger: the backend's logger.
        on_closed: called with this object once it closed (the transport forgets it).
    """

    def __init__(self, first: S, policy: ReconnectPolicy, *, metrics: TransportMetrics,
                 clock: Callable[[], float], logger: logging.Logger,
                 on_closed: Callable[[Any], None]) -> None:
        self.policy = policy
        self._machine = ReconnectMachine(policy)
        self._metrics = metrics
        self._time = clock
        self._log = logger
        self._on_closed = on_closed
        self._protocol = first.protocol
        # Taken from the first session (the transport sets them on every session it makes).
        self._send_timeout = first.send_timeout
        self._request_timeout: float = first.connection.session.request_timeout
        self._current: S | None = None
        # Sessions receive() still reads from, oldest first: an ended one stays while its
        # inbox has messages, so messages come out in the order of the connections.
        self._readable: deque[S] = deque()
        self._closed = False  # by the application, the transport's shutdown or a give-up
        self._final: TransportError | None = None  # the give-up error
        self._lost_unsent = 0
        self._tries = 0  # attempts since the connection was lost
        self._disconnected_hooks: list[DisconnectHook] = []
        self._reconnected_hooks: list[ReconnectHook] = []
        self._adopt(first)

    # --- what it is ----------------------------------------------------------------------------

    @property
    def link_state(self) -> LinkState:
        """``CONNECTED``, ``RECONNECTING`` or ``CLOSED`` (closed by the application, the
        transport's shutdown, or given up)."""
        return LinkState.CLOSED if self._closed else self._machine.state

    @property
    def state(self) -> SessionState:
        """The current session's :class:`SessionState`, or ``CLOSED`` while there is none
        (reconnecting, or closed)."""
        current = self._current
        if current is None or self._closed:
            return SessionState.CLOSED
        return current.state

    @property
    def connected(self) -> bool:
        """Whether a connection is up (the current session is open)."""
        current = self._current
        return current is not None and not ended(current)

    @property
    def current(self) -> S | None:
        """The session of the connection that is up, or ``None`` while reconnecting or
        closed.  It changes with every reconnect: hold the reconnecting session, not it."""
        return self._current

    @property
    def reconnects(self) -> int:
        """Connections re-established after a loss so far."""
        return self._machine.reconnects

    @property
    def lost_unsent(self) -> int:
        """Messages queued on connections that broke before they reached the socket, in
        total: their delivery is unknown (one-way messages are never re-sent)."""
        return self._lost_unsent

    @property
    def protocol(self) -> WireProtocol:
        """The transport under it: ``TCP``, ``WEBSOCKET`` or ``QUIC``."""
        return self._protocol

    @property
    def error(self) -> TransportError | None:
        """The error it gave up with, or ``None`` (open, or closed by the application)."""
        return self._final

    @property
    def is_closed(self) -> bool:
        """Whether it is closed (by the application, the transport's shutdown or a give-up)."""
        return self._closed

    def __repr__(self) -> str:
        current = self._current
        return (f"<ReconnectingSession {self._protocol.value} {self.link_state.value} "
                f"session={None if current is None else current.id} "
                f"reconnects={self.reconnects}>")

    # --- hooks ---------------------------------------------------------------------------------

    def on_disconnected(self, callback: DisconnectHook) -> DisconnectHook:
        """Call ``callback(reconnecting_session, disconnect)`` each time the connection is
        lost (*disconnect* is a :class:`Disconnect`: the error, the messages lost unsent,
        the decision), from the supervisor, before it waits or gives up.  What it raises is
        logged and ignored.  Returns *callback* (usable as a decorator)."""
        self._disconnected_hooks.append(callback)
        return callback

    def on_reconnected(self, callback: ReconnectHook) -> ReconnectHook:
        """Call ``callback(reconnecting_session, attempts)`` each time a lost connection is
        re-established (*attempts*: the connect attempts it took, 1 or more), from the
        supervisor.  What it raises is logged and ignored.  Returns *callback*."""
        self._reconnected_hooks.append(callback)
        return callback

    def _fire_disconnected(self, info: Disconnect) -> None:
        for hook in list(self._disconnected_hooks):
            try:
                hook(self, info)
            except Exception:
                self._log.exception("an on_disconnected callback raised")

    def _fire_reconnected(self, attempts: int) -> None:
        for hook in list(self._reconnected_hooks):
            try:
                hook(self, attempts)
            except Exception:
                self._log.exception("an on_reconnected callback raised")

    # --- what the supervisor tells it ---------------------------------------------------------

    def _adopt(self, session: S) -> int:
        """*session* is the new connection; returns the attempts it took (0 for the
        first)."""
        down = self._machine.connected(self._time())
        attempts, self._tries = self._tries, 0
        self._current = session
        self._readable.append(session)
        if self._machine.reconnects:
            self._metrics.reconnected(self._protocol, down)
            self._log.info("session %s: reconnected after %.3f s (%d attempts)", session.id,
                           down, attempts)
        return attempts

    def _lost(self, session: S) -> Disconnect | None:
        """*session*, the current one, ended (the supervisor saw it released); returns what
        the hooks are told, or ``None`` when it was closed on purpose (nothing to do)."""
        if self._current is session:
            self._current = None
        self._prune()
        if self._closed:
            return None
        error = end_error(session.error)
        unsent = session.connection.unflushed_packets
        self._lost_unsent += unsent
        decision = self._machine.lost(error, self._time())
        if isinstance(decision, GiveUp):
            self._give_up(decision)
        self._log.warning(
            "session %s lost (%s; %d queued messages never sent): %s", session.id,
            "closed by the peer" if error is None else error,
            unsent, f"retrying in {decision.delay:.3f} s" if isinstance(decision, Retry)
            else "giving up")
        return Disconnect(error, session.id, unsent, decision)

    def _failed(self, error: TransportError) -> Retry | GiveUp:
        """A connect attempt failed with *error*; returns what to do."""
        decision = self._machine.failed(end_error(error) or error, self._time())
        if isinstance(decision, GiveUp):
            self._give_up(decision)
        return decision

    def _attempting(self) -> None:
        """A connect attempt begins."""
        self._tries += 1

    def _give_up(self, decision: GiveUp) -> None:
        self._final = decision.error
        self._metrics.reconnect_give_up(self._protocol)
        self._metrics.disconnected(self._protocol, self._machine.down_for(self._time()))
        self._closed = True
        self._log.warning("giving up reconnecting after %d attempts: %s", decision.attempts,
                          decision.error)

    def _mark_closed(self) -> bool:
        """The application (or the transport's shutdown) closes it; whether this call did
        (``False``: it was closed already)."""
        if self._closed:
            return False
        now = self._time()
        if self._machine.state is LinkState.RECONNECTING:
            self._metrics.disconnected(self._protocol, self._machine.down_for(now))
        self._machine.close(now)
        self._closed = True
        return True

    def _prune(self) -> None:
        """Forget the ended sessions with nothing left to read (receive() never needs them)."""
        readable = self._readable
        while readable and ended(readable[0]) and not readable[0].has_inbox:
            readable.popleft()

    def _reader(self) -> S | None:
        """The session receive() reads from now: the oldest with messages queued or still up;
        ``None`` when there is none (wait for the next connection, or raise)."""
        readable = self._readable
        while readable:
            first = readable[0]
            if first.has_inbox or not ended(first):
                return first
            readable.popleft()
        return None

    # --- the errors ----------------------------------------------------------------------------

    def _closed_error(self, operation: str) -> TransportError:
        """What an operation raises once closed: the give-up error, or ``connection.closed``."""
        if self._final is not None:
            return self._final.with_operation(operation)
        return TransportConnectionError(
            "the reconnecting session is closed", code="connection.closed", retryable=False,
            operation=operation)

    def _down_error(self, operation: str) -> TransportConnectionError:
        """What an operation raises at once while reconnecting (``wait_reconnect=False``)."""
        return TransportConnectionError(
            "not connected: the client is reconnecting", code="connection.closed",
            retryable=True, operation=operation)

    def _wait_timed_out(self, operation: str, waited: float) -> TransportTimeoutError:
        """What an operation raises when the connection did not come back in time."""
        code = {"send": "timeout.send", "request": "timeout.request",
                "connect": "timeout.connect"}.get(operation, "timeout.elapsed")
        return TransportTimeoutError(
            operation, waited, code=code,
            reason=f"{operation}: not reconnected within {waited:g} s")

    def _usable(self) -> S | None:
        """The current session when its connection is up, else ``None``."""
        current = self._current
        if current is not None and not ended(current):
            return current
        return None
