"""Expansion strategies: how much a connection pool grows in one step.

A strategy answers one question, :meth:`ExpansionStrategy.calculate_next_size`: the pool has
*current* connections (pending opens included), aims at *target* and may never exceed *maximum*;
how big should it be after the next growth step?  Strategies are pure functions of their
arguments and settings: they keep no state, read no clock and do no I/O, so one instance can serve
any number of pools.  *When* to grow is not their business: :class:`~msgtrans.core.pool.PoolMachine`
decides that (a lease waited too long, utilisation too high) and asks the strategy *how much*.

Three strategies ship:

* :class:`SmartExpansion` (the plan's default): a factor that shrinks as the pool approaches its
  target, 2.0 -> 1.5 -> 1.2 -> 1.1, so an empty pool ramps up fast and a nearly sized pool creeps.
* :class:`FixedExpansion`: a constant number of connections per step.
* :class:`NoExpansion`: never grows (a fixed-size pool).

Any object with a matching ``calculate_next_size`` method is a strategy too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Protocol as TypingProtocol
from typing import runtime_checkable

from .errors import ConfigurationError

__all__ = [
    "DEFAULT_FACTORS",
    "DEFAULT_THRESHOLDS",
    "ExpansionStrategy",
    "FixedExpansion",
    "NoExpansion",
    "SmartExpansion",
]

#: The plan's growth factors, from an empty pool to one at (or past) its target.
DEFAULT_FACTORS: tuple[float, ...] = (2.0, 1.5, 1.2, 1.1)
#: Progress (current / target) at which :class:`SmartExpansion` moves to the next factor.
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.25, 0.5, 0.75)

# current * factor is computed in binary floating point: 10 * 1.1 is 11.000000000000002, and
# 3 * 1.1 is 3.3000000000000003.  Flooring after adding this slack makes the schedule come out as
# the decimal arithmetic a reader expects (11, not 12 after a ceil; 3.3 -> 3, then "+1" -> 4).
_EPSILON = 1e-9


def _check_sizes(current: int, target: int, maximum: int) -> None:
    if current < 0:
        raise ValueError(f"current size must be >= 0, got {current}")
    if target < 0:
        raise ValueError(f"target size must be >= 0, got {target}")
    if maximum < 0:
        raise ValueError(f"maximum size must be >= 0, got {maximum}")


@runtime_checkable
class ExpansionStrategy(TypingProtocol):
    """What :class:`~msgtrans.core.pool.PoolMachine` needs of an expansion strategy.

    A strategy must be pure: the same arguments always give the same answer.
    """

    def calculate_next_size(self, current: int, target: int, maximum: int) -> int:
        """Return the pool size after one growth step from *current*.

        The answer must lie in ``[current, maximum]`` when ``current <= maximum``; returning
        *current* means "do not grow".  The pool clamps answers outside that range anyway.
        """
        ...


class SmartExpansion:
    """Progress-aware growth: a factor that decreases as the pool nears its target.

    With progress ``p = current / target`` (``p = 1`` when *target* is 0) the factor is the first
    of *factors* whose threshold ``p`` is still below; with the defaults:

    ==================  ======
    progress            factor
    ==================  ======
    ``p < 0.25``        2.0
    ``0.25 <= p < 0.5``  1.5
    ``0.5 <= p < 0.75``  1.2
    ``p >= 0.75``        1.1 (also past the target, up to the maximum)
    ==================  ======

    and the next size is ``min(maximum, max(current + 1, floor(current * factor)))``: always at
    least one more connection (so an empty pool, or a small one where the factor rounds away,
    still grows) and never past *maximum*.  When ``current >= maximum`` the answer is *current*.

    Args:
        factors: the growth factors, each ``>= 1.0``, non-increasing (default
            :data:`DEFAULT_FACTORS`).
        thresholds: the progress values where the next factor begins, strictly increasing,
            positive, one fewer than *factors* (default :data:`DEFAULT_THRESHOLDS`).

    Raises:
        ConfigurationError: *factors* empty, below 1.0 or increasing; *thresholds* of the wrong
            length, not strictly increasing or not positive.
    """

    __slots__ = ("factors", "thresholds")

    def __init__(
        self,
        factors: Sequence[float] = DEFAULT_FACTORS,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    ) -> None:
        factors = tuple(float(f) for f in factors)
        thresholds = tuple(float(t) for t in thresholds)
        if not factors:
            raise ConfigurationError("factors", "at least one growth factor is needed")
        if any(not math.isfinite(f) or f < 1.0 for f in factors):
            raise ConfigurationError("factors", f"every factor must be a number >= 1.0: {factors}")
        if any(b > a for a, b in pairwise(factors)):
            # An increasing factor would grow faster near the target than far from it: the
            # opposite of what "progress aware" promises.
            raise ConfigurationError("factors", f"factors must not increase: {factors}")
        if len(thresholds) != len(factors) - 1:
            raise ConfigurationError(
                "thresholds",
                f"need {len(factors) - 1} thresholds for {len(factors)} factors, "
                f"got {len(thresholds)}",
            )
        if any(not math.isfinite(t) or t <= 0 for t in thresholds) or any(
            b <= a for a, b in pairwise(thresholds)
        ):
            raise ConfigurationError(
                "thresholds", f"thresholds must be positive and strictly increasing: {thresholds}"
            )
        self.factors = factors
        self.thresholds = thresholds

    def factor_for(self, current: int, target: int) -> float:
        """Return the growth factor used at *current* connections when aiming at *target*.

        Raises:
            ValueError: a negative size.
        """
        _check_sizes(current, target, 0)
        progress = current / target if target > 0 else 1.0
        for threshold, factor in zip(self.thresholds, self.factors, strict=False):
            if progress < threshold:
                return factor
        return self.factors[-1]

    def calculate_next_size(self, current: int, target: int, maximum: int) -> int:
        """Return ``min(maximum, max(current + 1, floor(current * factor_for(current, target))))``,
        or *current* when it is already at or past *maximum*.

        Raises:
            ValueError: a negative size.
        """
        _check_sizes(current, target, maximum)
        if current >= maximum:
            return current
        grown = math.floor(current * self.factor_for(current, target) + _EPSILON)
        return min(maximum, max(current + 1, grown))

    def __repr__(self) -> str:
        return f"SmartExpansion(factors={self.factors}, thresholds={self.thresholds})"


class FixedExpansion:
    """Grow by a constant *step* connections each time, never past the maximum.

    Args:
        step: connections added per growth step (default 1, must be >= 1).

    Raises:
        ConfigurationError: *step* below 1.
    """

    __slots__ = ("step",)

    def __init__(self, step: int = 1) -> None:
        if step < 1:
            raise ConfigurationError("step", f"must be at least 1, got {step}")
        self.step = step

    def calculate_next_size(self, current: int, target: int, maximum: int) -> int:
        """Return ``min(maximum, current + step)``, or *current* when at or past *maximum*.

        Raises:
            ValueError: a negative size.
        """
        _check_sizes(current, target, maximum)
        if current >= maximum:
            return current
        return min(maximum, current + self.step)

    def __repr__(self) -> str:
        return f"FixedExpansion(step={self.step})"


class NoExpansion:
    """Never grow: the pool stays at the size its minimum (and refills) give it.

    Use with ``min_size == max_size`` for a classic fixed-size pool.
    """

    __slots__ = ()

    def calculate_next_size(self, current: int, target: int, maximum: int) -> int:
        """Return *current*.

        Raises:
            ValueError: a negative size.
        """
        _check_sizes(current, target, maximum)
        return current

    def __repr__(self) -> str:
        return "NoExpansion()"
