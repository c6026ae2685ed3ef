"""When a client reconnects and when it gives up: :class:`ReconnectPolicy` and the sans-IO
:class:`ReconnectMachine`.

The machine is told what happened (a connection came up, a connection ended, an attempt
failed, the application closed) with the time it happened, and answers what to do next: a
:class:`Retry` after a delay, or :class:`GiveUp` with the error to close with.  It reads no
clock and opens nothing; the drivers sleep and connect.  Its randomness (the jitter) comes
from a :class:`random.Random` the caller may seed, so tests replay the same delays.

The delay before attempt *n* (1-based, counted since the connection was last stable) is the
policy's backoff ``initial_delay * multiplier ** (n - 1)``, raised to the error's own
:meth:`~msgtrans.core.errors.TransportError.retry_delay` when that is longer, capped at
``max_delay``, then spread by ``jitter`` (a delay of *d* becomes a uniform pick in
``[d * (1 - jitter), d * (1 + jitter)]``, never above ``max_delay``).  A connection that stayed
up for ``stable_after`` seconds counts as stable: the next loss starts again at attempt 1, so
a long-lived client that loses its server once a day reconnects quickly every time, while one
whose server accepts and drops at once backs off.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import Enum

from .errors import ConfigurationError, TransportConnectionError, TransportError

__all__ = [
    "DEFAULT_RECONNECT_POLICY",
    "GiveUp",
    "LinkState",
    "ReconnectMachine",
    "ReconnectPolicy",
    "Retry",
]


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How a client re-establishes a lost connection.

    Attributes:
        initial_delay: seconds before the first reconnect attempt (default 0.1).
        max_delay: the longest wait between attempts, whatever the backoff or the error's
            ``retry_delay()`` says (default 30).
        multiplier: growth of the delay per failed attempt (default 2; 1 keeps it constant).
        jitter: the share of each delay chosen at random, 0 to 1 (default 0.2: a 1 s delay
            becomes 0.8 to 1.2 s), so that many clients of one restarted server do not all
            come back in the same instant.
        max_attempts: consecutive failed attempts after which the client gives up and closes
            with the last error (default ``None``: never gives up on a retryable error).
        stable_after: seconds a connection must stay up to count as stable; a stable
            connection's loss restarts the backoff at ``initial_delay`` (default 5).

    Raises:
        ConfigurationError: a field is out of range (``field`` names it).
    """

    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_attempts: int | None = None
    stable_after: float = 5.0

    def __post_init__(self) -> None:
        _check_seconds("initial_delay", self.initial_delay, allow_zero=True)
        _check_seconds("max_delay", self.max_delay, allow_zero=True)
        if self.max_delay < self.initial_delay:
            raise ConfigurationError(
                "max_delay", f"must be at least initial_delay ({self.initial_delay}), "
                f"got {self.max_delay}")
        if not (isinstance(self.multiplier, (int, float)) and math.isfinite(self.multiplier)
                and self.multiplier >= 1):
            raise ConfigurationError("multiplier", f"must be a number >= 1, got "
                                     f"{self.multiplier!r}")
        if not (isinstance(self.jitter, (int, float)) and 0 <= self.jitter <= 1):
            raise ConfigurationError("jitter", f"must be between 0 and 1, got {self.jitter!r}")
        if self.max_attempts is not None and (
                isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int)
                or self.max_attempts < 1):
            raise ConfigurationError("max_attempts", f"must be None or an integer >= 1, got "
                                     f"{self.max_attempts!r}")
        _check_seconds("stable_after", self.stable_after, allow_zero=True)

    def backoff(self, attempt: int) -> float:
        """The delay before attempt *attempt* (1-based) before the error and the jitter are
        considered: ``initial_delay * multiplier ** (attempt - 1)``, at most ``max_delay``."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        # The exponent is bounded so that a client retrying for days does not overflow.
        exponent = min(attempt - 1, 1024)
        try:
            delay = self.initial_delay * self.multiplier ** exponent
        except OverflowError:
            return self.max_delay
        return min(delay, self.max_delay)

    def delay(self, attempt: int, error: TransportError | None, rand: float = 0.5) -> float:
        """The seconds to wait before attempt *attempt* after *error*: the longer of the
        backoff and the error's ``retry_delay()``, capped at ``max_delay``, spread by the
        jitter with *rand* (a uniform pick in ``[0, 1)``; 0.5 means no spread)."""
        base = self.backoff(attempt)
        asked = None if error is None else error.retry_delay()
        if asked is not None and asked > base:
            base = min(asked, self.max_delay)
        spread = base * self.jitter * (2.0 * rand - 1.0)
        return max(0.0, min(base + spread, self.max_delay))


def _check_seconds(name: str, value: object, *, allow_zero: bool) -> None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value >= 0 if allow_zero else value > 0))
    if not ok:
        raise ConfigurationError(name, f"must be a finite number of seconds >= 0, got {value!r}")


#: The policy ``connect(..., reconnect=True)`` uses.
DEFAULT_RECONNECT_POLICY = ReconnectPolicy()


class LinkState(str, Enum):
    """Where a reconnecting client stands.

    ``CONNECTING``: the first connection is being made.  ``CONNECTED``: a connection is up.
    ``RECONNECTING``: the connection was lost; waiting for the next attempt or making it.
    ``CLOSED``: closed by the application, or given up.
    """

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again: wait *delay* seconds, then make attempt number *attempt* (1-based since the
    connection was last stable); *error* is what ended the last connection or attempt
    (``None``: the peer closed it cleanly)."""

    delay: float
    attempt: int
    error: TransportError | None


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop: close with *error* (why: it was not retryable, or ``max_attempts`` was reached)."""

    error: TransportError
    attempts: int


def _gave_up(error: TransportError | None, attempts: int) -> GiveUp:
    if error is None:
        error = TransportConnectionError("the peer closed the connection", code="connection.closed")
    return GiveUp(error, attempts)


class ReconnectMachine:
    """The reconnect decisions of one client (sans-IO: every method takes the time).

    Args:
        policy: the :class:`ReconnectPolicy` (default :data:`DEFAULT_RECONNECT_POLICY`).
        rng: the source of the jitter (default a fresh :class:`random.Random`).

    The state starts at ``CONNECTING``.  :meth:`connected` moves it to ``CONNECTED``;
    :meth:`lost` (a connection ended) and :meth:`failed` (an attempt did not connect) move it to
    ``RECONNECTING`` and return the decision; a :class:`GiveUp` or :meth:`close` moves it to
    ``CLOSED``, after which every call but :meth:`close` raises ``RuntimeError``.
    """

    def __init__(self, policy: ReconnectPolicy = DEFAULT_RECONNECT_POLICY,
                 rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng if rng is not None else random.Random()
        self._state = LinkState.CONNECTING
        self._attempt = 0
        self._connected_at: float | None = None
        self._down_since: float | None = None
        #: Connections made after the first (successful reconnects).
        self.reconnects = 0
        #: Seconds spent disconnected between a loss and the next connection, in total.
        self.disconnected_seconds = 0.0
        self._ever_connected = False
        self.last_error: TransportError | None = None

    @property
    def state(self) -> LinkState:
        """The current :class:`LinkState`."""
        return self._state

    @property
    def attempt(self) -> int:
        """Failed attempts since the connection was last stable (0 while connected and
        stable)."""
        return self._attempt

    def down_for(self, now: float) -> float:
        """Seconds since the connection was lost (0 while connected)."""
        return 0.0 if self._down_since is None else max(0.0, now - self._down_since)

    def _check(self) -> None:
        if self._state is LinkState.CLOSED:
            raise RuntimeError("the reconnect machine is closed")

    def connected(self, now: float) -> float:
        """A connection is up at *now*; returns the seconds it was down before (0 for the
        first connection).

        Raises:
            RuntimeError: the machine is closed.
        """
        self._check()
        down = 0.0
        if self._down_since is not None:
            down = max(0.0, now - self._down_since)
            self.disconnected_seconds += down
            self._down_since = None
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self._state = LinkState.CONNECTED
        self._connected_at = now
        return down

    def lost(self, error: TransportError | None, now: float) -> Retry | GiveUp:
        """The connection that was up ended at *now* with *error* (``None``: closed cleanly by
        the peer, which a restarting server does); returns what to do.

        Raises:
            RuntimeError: the machine is closed, or no connection was up.
        """
        self._check()
        if self._state is not LinkState.CONNECTED:
            raise RuntimeError(f"lost() while {self._state}: no connection was up")
        assert self._connected_at is not None
        if now - self._connected_at >= self.policy.stable_after:
            self._attempt = 0
        self._connected_at = None
        self._down_since = now
        return self._decide(error)

    def failed(self, error: TransportError, now: float) -> Retry | GiveUp:
        """A connect attempt failed at *now* with *error*; returns what to do.

        Raises:
            RuntimeError: the machine is closed, or a connection is up.
        """
        self._check()
        if self._state is LinkState.CONNECTED:
            raise RuntimeError("failed() while connected: call lost() for a connection")
        if self._down_since is None:
            self._down_since = now
        return self._decide(error)

    def _decide(self, error: TransportError | None) -> Retry | GiveUp:
        self.last_error = error if error is not None else self.last_error
        self._attempt += 1
        policy = self.policy
        if error is not None and not error.is_retryable():
            return self._give_up(error)
        if policy.max_attempts is not None and self._attempt > policy.max_attempts:
            return self._give_up(error)
        self._state = LinkState.RECONNECTING
        delay = policy.delay(self._attempt, error, self._rng.random())
        return Retry(delay, self._attempt, error)

    def _give_up(self, error: TransportError | None) -> GiveUp:
        self._state = LinkState.CLOSED
        return _gave_up(error if error is not None else self.last_error, self._attempt)

    def close(self, now: float) -> None:
        """The application closed the client at *now* (idempotent); time spent disconnected
        until now is counted."""
        if self._state is LinkState.CLOSED:
            return
        if self._down_since is not None:
            self.disconnected_seconds += max(0.0, now - self._down_since)
            self._down_since = None
        self._state = LinkState.CLOSED
