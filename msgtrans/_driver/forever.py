"""What the three backends' ``transport.connect_forever()`` share: the iterator's decisions.

``connect_forever(target, policy=...)`` is an iterator of sessions (asynchronous on asyncio
and trio, plain on the blocking backend).  Each step waits until the session it yielded last
is over, backs off as the :class:`~msgtrans.core.reconnect.ReconnectMachine` says (fed with
the session's end, or with each failed attempt), connects again and yields the new session.
:class:`ForeverBase` holds every decision and the bookkeeping; a backend adds only how it
waits (:meth:`ForeverBase._notify` and its own ``_wait``) and the loop around
:meth:`ForeverBase._session_over`, :meth:`ForeverBase._attempt_failed` and
:meth:`ForeverBase._opened`, which is the same few lines on every backend:

* the previous session: wait until it is over (or the iterator stops), then
  :meth:`~ForeverBase._session_over`;
* until :meth:`~ForeverBase._should_stop`: wait out :attr:`~ForeverBase.next_attempt_at`
  (a stop ends the wait at once), connect; a :class:`TransportError` goes to
  :meth:`~ForeverBase._attempt_failed`, a session to :meth:`~ForeverBase._opened` (then yield
  it);
* then the iteration is over.

A give-up (``max_attempts`` reached, or a non-retryable error) is raised from the step that
met it and finishes the iterator; the transport's shutdown and ``aclose()`` / ``close()``
finish it cleanly.  The iterator runs no task or thread of its own: everything happens inside
the step the application awaits, so abandoning the loop leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from ..core.config import ConnectionConfig
from ..core.errors import TransportError
from ..core.metrics import TransportMetrics
from ..core.reconnect import (
    DEFAULT_RECONNECT_POLICY,
    GiveUp,
    LinkState,
    ReconnectMachine,
    ReconnectPolicy,
)

__all__ = ["ForeverBase", "ForeverRegistry", "check_policy"]


class _ForeverSession(Protocol):
    error: Any

    @property
    def is_closed(self) -> bool: ...

    def when_finished(self, callback: Callable[[Any], None]) -> None: ...


S = TypeVar("S", bound=_ForeverSession)


def check_policy(policy: ReconnectPolicy | None) -> ReconnectPolicy:
    """*policy*, or :data:`~msgtrans.core.reconnect.DEFAULT_RECONNECT_POLICY` for ``None``.

    Raises:
        ConfigurationError: *policy* is not a :class:`ReconnectPolicy` (field ``policy``).
    """
    from ..core.errors import ConfigurationError

    if policy is None:
        return DEFAULT_RECONNECT_POLICY
    if not isinstance(policy, ReconnectPolicy):
        raise ConfigurationError("policy", f"must be a ReconnectPolicy or None, got {policy!r}")
    return policy


class ForeverRegistry:
    """A transport's live ``connect_forever`` iterators, stopped by its shutdown."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the blocking backend adds and stops from any thread
        # Weak: an iterator the application abandoned (a break, no aclose) is not kept alive.
        self._items: weakref.WeakSet[ForeverBase[Any]] = weakref.WeakSet()

    def add(self, item: ForeverBase[Any]) -> None:
        """Track *item* until it finishes."""
        with self._lock:
            self._items.add(item)

    def discard(self, item: ForeverBase[Any]) -> None:
        """*item* finished: forget it."""
        with self._lock:
            self._items.discard(item)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def stop_all(self) -> None:
        """The transport shuts down: every iterator stops (a backoff in progress ends now)."""
        with self._lock:
            items = list(self._items)
        for item in items:
            item.stop()


class ForeverBase(Generic[S]):
    """The backend-neutral half of a ``connect_forever`` iterator (see the module text).

    Args:
        transport: the backend's transport (its ``connect`` makes the sessions, its
            ``_metrics`` counts, its ``_forevers`` registry stops the iterator at shutdown).
        config: where to connect.
        policy: the backoff and give-up rules.
        timeout: seconds for each connect attempt (``None``: the transport's default).
        clock: the backend's monotonic clock.
    """

    def __init__(self, transport: Any, config: ConnectionConfig, policy: ReconnectPolicy,
                 timeout: float | None, clock: Callable[[], float]) -> None:
        self._transport = transport
        self._config = config
        self._timeout = timeout
        self._clock = clock
        self._machine = ReconnectMachine(policy)
        self._metrics: TransportMetrics = transport._metrics
        self._protocol = config.protocol
        # The machine and the flags: the blocking backend's stop() comes from any thread.
        self._lock = threading.Lock()
        self._current: S | None = None  # the session yielded last, until its end is fed
        self._ended_at: float | None = None  # when the current session was over
        self._next_at = -math.inf  # no attempt before this time (the backoff)
        self._stopped = False  # aclose()/close() or the transport's shutdown
        self._done = False  # finished: the iteration is over
        self._sessions = 0
        self.last_error: TransportError | None = None
        transport._forevers.add(self)

    # --- what the iterator is ------------------------------------------------------------------

    @property
    def config(self) -> ConnectionConfig:
        """Where the iterator connects."""
        return self._config

    @property
    def policy(self) -> ReconnectPolicy:
        """The :class:`~msgtrans.core.reconnect.ReconnectPolicy` it backs off by."""
        return self._machine.policy

    @property
    def state(self) -> LinkState:
        """``CONNECTING`` (no session yet), ``CONNECTED`` (the session yielded last is
        open, or was until the iterator noticed), ``RECONNECTING``, ``CLOSED`` (finished)."""
        if self._done:
            return LinkState.CLOSED
        return self._machine.state

    @property
    def session(self) -> S | None:
        """The session yielded last, until the next step sees it over; else ``None``."""
        return self._current

    @property
    def sessions_yielded(self) -> int:
        """How many sessions the iterator yielded so far."""
        return self._sessions

    @property
    def attempt(self) -> int:
        """Failed attempts (and unstable losses) since the connection was last stable."""
        return self._machine.attempt

    @property
    def next_attempt_at(self) -> float:
        """The backend clock's time before which no connect is attempted (the backoff)."""
        return self._next_at

    def __repr__(self) -> str:
        c = self._config
        return (f"<connect_forever {c.protocol.value}://{c.host}:{c.port} {self.state} "
                f"sessions={self._sessions}>")

    # --- for the backend -----------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake the step waiting in the backend's ``_wait`` (the stop or the session's end
        came); callable from wherever :meth:`stop` and the finish callback run."""
        raise NotImplementedError

    def _metrics_lock(self) -> contextlib.AbstractContextManager[Any]:
        """What guards the transport's metrics (the blocking backend's transport lock)."""
        return contextlib.nullcontext()

    def _current_over(self) -> bool:
        """Whether the step may go on from the previous session: it is over, or the
        iterator stopped."""
        return self._ended_at is not None or self._stopped

    def _stop_requested(self) -> bool:
        """Whether a wait for the backoff must end now."""
        return self._stopped

    def _should_stop(self) -> bool:
        """Whether the iteration ends (stopped, or the transport shuts down); finishes it."""
        if self._stopped or self._transport._closing:
            self._finish()
            return True
        return False

    def _session_over(self) -> None:
        """The previous session is over (or the iterator stopped): feed the machine.

        Raises:
            TransportError: the policy gives up (the error that ended the session, or the last
                one); the iterator is finished.
        """
        session = self._current
        if session is None:
            return
        self._current = None
        with self._lock:
            if self._stopped or self._transport._closing:
                return
            ended = self._ended_at if self._ended_at is not None else self._clock()
            error = session.error if isinstance(session.error, TransportError) else None
            decision = self._machine.lost(error, ended)
            self._ended_at = None
        self._decided(decision, ended)

    def _attempt_failed(self, error: TransportError) -> None:
        """A connect attempt failed with *error*: back off (unless the transport shuts down:
        then the next :meth:`_should_stop` ends the iteration).

        Raises:
            TransportError: the policy gives up (*error*); the iterator is finished.
        """
        self.last_error = error
        now = self._clock()
        with self._lock:
            if self._stopped or self._transport._closing:
                return
            decision = self._machine.failed(error, now)
        self._decided(decision, now)

    def _decided(self, decision: Any, now: float) -> None:
        if isinstance(decision, GiveUp):
            down = self._machine.down_for(self._clock())
            with self._metrics_lock():
                if down > 0:
                    self._metrics.disconnected(self._protocol, down)
                self._metrics.reconnect_give_up(self._protocol)
            self._finish()
            raise decision.error
        self._next_at = now + decision.delay

    def _opened(self, session: S) -> bool:
        """A connect gave *session*: it becomes the current one and is counted.  ``False``
        when the iterator stopped meanwhile (the caller closes the session, yields nothing)."""
        now = self._clock()
        with self._lock:
            if self._stopped:
                return False
            before = self._machine.reconnects
            down = self._machine.connected(now)
            reconnected = self._machine.reconnects > before
        with self._metrics_lock():
            if reconnected:
                self._metrics.reconnected(self._protocol, down)
            elif down > 0:  # the first session, after failed attempts
                self._metrics.disconnected(self._protocol, down)
        self._current = session
        self._ended_at = None
        self._sessions += 1
        # Weakly: a session the application keeps does not keep an abandoned iterator alive.
        ref = weakref.ref(self)

        def finished(ended: Any) -> None:
            forever = ref()
            if forever is not None:
                forever._on_finished(ended)

        session.when_finished(finished)
        return True

    def _on_finished(self, session: Any) -> None:
        if session is self._current and self._ended_at is None:
            self._ended_at = self._clock()
            self._notify()

    def _finish(self) -> None:
        """The iteration is over: nothing more is tried, the transport forgets the iterator."""
        if self._done:
            return
        self._done = True
        self._stopped = True
        self._current = None
        self._close_machine()
        self._transport._forevers.discard(self)

    def _close_machine(self) -> None:
        with self._lock:
            if self._machine.state is LinkState.CLOSED:
                return
            now = self._clock()
            down = self._machine.down_for(now)
            self._machine.close(now)
        if down > 0:
            with self._metrics_lock():
                self._metrics.disconnected(self._protocol, down)

    # --- the application's side ----------------------------------------------------------------

    def stop(self) -> None:
        """Stop the iterator: a step waiting (for the previous session's end or the backoff)
        ends at once and the iteration is over.  The sessions it yielded are not closed.
        Idempotent; the transport's shutdown calls it."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._close_machine()
        self._transport._forevers.discard(self)
        self._notify()

    def _stop_iteration_now(self) -> bool:
        """At the start of a step: whether the iteration is already over."""
        if self._done:
            return True
        if self._stopped:
            self._finish()
            return True
        return False
