"""The memory budget of one transport: the bytes its connections hold, against a limit.

A :class:`MemoryBudget` is shared by every connection of a transport (``Transport(memory_limit=
...)`` makes one).  It is plain arithmetic (sans-IO: no sockets, no clock, no threads, no
callbacks): the session machines charge it where they already account bytes and credit it when
the bytes go, and it answers two questions.

* *Pause?*  :meth:`MemoryBudget.charge` returns ``True`` once the bytes in use are above
  ``pause_at * limit``: the charging session then pauses the side it charged (reading for a
  received message, sending for a queued one) through the events the drivers already obey
  (``ReadPaused``, ``SendPaused``) and puts itself in the budget's paused set
  (:meth:`MemoryBudget.hold`).
* *Who may resume?*  Once a credit brings the bytes in use to ``resume_at * limit`` or below,
  :meth:`MemoryBudget.take_resumable` hands out (and forgets) the paused set; whoever freed the
  memory resumes them.  The gap between the two marks (hysteresis) keeps a transport hovering at
  the mark from toggling its sockets on every message.

What a session charges (see ``docs/buffers.md``): the payload bytes of received messages queued
for the application and not yet taken (pooled receive buffers included: a big payload *is* its
lent buffer), and the wire bytes of outgoing messages queued and not yet handed to the socket.

A charge that would pass the limit itself is refused before anything moves
(:meth:`MemoryBudget.check`, a :class:`~msgtrans.core.errors.ResourceError` with code
``resource.memory``).  Bytes already received cannot be refused (they are in memory): they are
charged as they are (:meth:`charge`), and the limit holds for them because reading pauses at
the pause mark; what arrives between the pause and the socket actually stopping is the
constant ``docs/buffers.md`` states.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

from .errors import ConfigurationError, ResourceError

__all__ = ["DEFAULT_PAUSE_AT", "DEFAULT_RESUME_AT", "MemoryBudget"]

#: Pause (reading, sending) above this fraction of the limit.
DEFAULT_PAUSE_AT: Final = 0.8
#: Resume once in use is at or below this fraction of the limit.
DEFAULT_RESUME_AT: Final = 0.6


class MemoryBudget:
    """Bytes in use by the connections of one transport, against *limit_bytes*.

    Args:
        limit_bytes: the limit, in bytes (a positive integer).
        pause_at: the fraction of the limit above which :meth:`charge` says "pause"
            (default 0.8).
        resume_at: the fraction of the limit at or below which paused members may resume
            (default 0.6); ``0 <= resume_at <= pause_at <= 1``.

    Raises:
        ConfigurationError: *limit_bytes* is not a positive integer (field ``memory_limit``),
            or the fractions are out of order or outside 0..1 (field ``pause_at`` /
            ``resume_at``).

    Attributes:
        limit: the limit in bytes.
        pause_bytes: ``int(pause_at * limit)``: above it, pause.
        resume_bytes: ``int(resume_at * limit)``: at or below it, resume.
        in_use: bytes charged and not yet credited (never negative).
        peak: the highest :attr:`in_use` so far.
        refused: how many charges :meth:`check` refused.

    Not thread-safe: one thread uses it at a time (the blocking backend under its transport
    lock, asyncio and trio on their one thread).
    """

    __slots__ = ("_paused", "in_use", "limit", "pause_bytes", "peak", "refused", "resume_bytes")

    def __init__(
        self,
        limit_bytes: int,
        *,
        pause_at: float = DEFAULT_PAUSE_AT,
        resume_at: float = DEFAULT_RESUME_AT,
    ) -> None:
        if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 1:
            raise ConfigurationError(
                "memory_limit", f"must be a positive number of bytes, got {limit_bytes!r}"
            )
        for name, value in (("pause_at", pause_at), ("resume_at", resume_at)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 <= value <= 1
            ):
                raise ConfigurationError(name, f"must be a fraction 0..1, got {value!r}")
        if resume_at > pause_at:
            raise ConfigurationError(
                "resume_at", f"must not be above pause_at {pause_at}, got {resume_at}"
            )
        self.limit = limit_bytes
        self.pause_bytes = int(pause_at * limit_bytes)
        self.resume_bytes = int(resume_at * limit_bytes)
        self.in_use = 0
        self.peak = 0
        self.refused = 0
        # The paused members, in the order they paused (a dict as an ordered set).
        self._paused: dict[Hashable, None] = {}

    def __repr__(self) -> str:
        return (
            f"<MemoryBudget {self.in_use}/{self.limit} bytes, peak {self.peak}, "
            f"{len(self._paused)} paused>"
        )

    # --- charging ------------------------------------------------------------------------------

    @property
    def available(self) -> int:
        """Bytes that may still be charged before the limit (0 when at or over it)."""
        return max(0, self.limit - self.in_use)

    @property
    def over_pause(self) -> bool:
        """Whether the bytes in use are above the pause mark."""
        return self.in_use > self.pause_bytes

    def check(self, nbytes: int) -> None:
        """Refuse a charge of *nbytes* that would pass the limit (nothing is charged).

        Raises:
            ResourceError: ``in_use + nbytes`` is over the limit (code ``resource.memory``,
                retryable: memory frees up as the peer and the application catch up); the
                error names the limit, the bytes in use and the size asked for.
        """
        if self.in_use + nbytes > self.limit:
            self.refused += 1
            raise ResourceError(
                "memory", self.in_use + nbytes, self.limit,
                f"{nbytes} more bytes would pass the memory limit of {self.limit} bytes "
                f"({self.in_use} in use, {self.available} left)",
                code="resource.memory",
            )

    def charge(self, nbytes: int) -> bool:
        """Count *nbytes* more in use (never refused: see :meth:`check`); return whether the
        bytes in use are now above the pause mark (the charger should pause and :meth:`hold`
        itself)."""
        in_use = self.in_use + nbytes
        self.in_use = in_use
        self.peak = max(self.peak, in_use)
        return in_use > self.pause_bytes

    def credit(self, nbytes: int) -> bool:
        """Count *nbytes* fewer in use (never below 0); return whether paused members may
        resume now (:meth:`take_resumable` would hand some out)."""
        in_use = self.in_use - nbytes
        self.in_use = in_use = in_use if in_use > 0 else 0
        return in_use <= self.resume_bytes and bool(self._paused)

    # --- the paused set ------------------------------------------------------------------------

    def hold(self, member: Hashable) -> None:
        """Put *member* (a session machine) in the paused set (again is harmless)."""
        self._paused[member] = None

    def forget(self, member: Hashable) -> None:
        """Take *member* out of the paused set (it closed); absent is harmless."""
        self._paused.pop(member, None)

    def is_held(self, member: Hashable) -> bool:
        """Whether *member* is in the paused set."""
        return member in self._paused

    @property
    def paused_connections(self) -> int:
        """How many members are paused by the budget."""
        return len(self._paused)

    def take_resumable(self) -> list[Hashable]:
        """The paused members, oldest first, once the bytes in use are at or below the resume
        mark (and forget them: the caller resumes each); else an empty list."""
        if not self._paused or self.in_use > self.resume_bytes:
            return []
        members = list(self._paused)
        self._paused.clear()
        return members

    def stats(self) -> dict[str, int]:
        """``{"limit", "in_use", "peak", "paused_connections", "refused"}`` as plain ints."""
        return {
            "limit": self.limit,
            "in_use": self.in_use,
            "peak": self.peak,
            "paused_connections": len(self._paused),
            "refused": self.refused,
        }
