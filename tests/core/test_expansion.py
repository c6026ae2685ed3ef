"""Tests of the expansion strategies: the SmartExpansion schedule, fixed and no expansion."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.core.errors import ConfigurationError
from msgtrans.core.expansion import (
    DEFAULT_FACTORS,
    ExpansionStrategy,
    FixedExpansion,
    NoExpansion,
    SmartExpansion,
)

SMART = SmartExpansion()
sizes = st.integers(min_value=0, max_value=10_000)


def test_default_schedule_by_progress() -> None:
    # target 100: the factor steps down at 25, 50 and 75 connections.
    assert [SMART.factor_for(c, 100) for c in (0, 24, 25, 49, 50, 74, 75, 100, 500)] == [
        2.0, 2.0, 1.5, 1.5, 1.2, 1.2, 1.1, 1.1, 1.1,
    ]
    assert SMART.factor_for(5, 0) == 1.1  # no target: treated as reached


def test_next_sizes_follow_the_schedule_decimal_arithmetic() -> None:
    assert SMART.calculate_next_size(0, 64, 100) == 1  # an empty pool still grows
    assert SMART.calculate_next_size(1, 64, 100) == 2
    assert SMART.calculate_next_size(8, 64, 100) == 16  # 2.0
    assert SMART.calculate_next_size(16, 64, 100) == 24  # 1.5
    assert SMART.calculate_next_size(36, 64, 100) == 43  # 1.2: floor(43.2)
    assert SMART.calculate_next_size(50, 64, 100) == 55  # 1.1: floor(55.000000000000001)
    assert SMART.calculate_next_size(10, 10, 100) == 11  # 10 * 1.1 is not 12
    assert SMART.calculate_next_size(3, 3, 100) == 4  # 3.3 floors to 3: at least +1
    assert SMART.calculate_next_size(96, 64, 100) == 100  # capped
    assert SMART.calculate_next_size(100, 64, 100) == 100
    assert SMART.calculate_next_size(120, 64, 100) == 120  # past max: no growth, no shrink


def test_ramp_from_one_uses_non_increasing_factors() -> None:
    size, factors = 1, []
    while size < 100:
        factors.append(SMART.factor_for(size, 64))
        size = SMART.calculate_next_size(size, 64, 100)
    assert factors == sorted(factors, reverse=True)
    assert set(factors) == set(DEFAULT_FACTORS)
    assert size == 100


@given(current=sizes, target=sizes, maximum=sizes)
def test_smart_growth_bounds(current: int, target: int, maximum: int) -> None:
    nxt = SMART.calculate_next_size(current, target, maximum)
    if current >= maximum:
        assert nxt == current
    else:
        assert current + 1 <= nxt <= maximum
        factor = SMART.factor_for(current, target)
        assert nxt == min(maximum, max(current + 1, math.floor(current * factor + 1e-9)))


@given(target=st.integers(min_value=1, max_value=5000), a=sizes, b=sizes)
def test_factor_is_non_increasing_in_progress(target: int, a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert SMART.factor_for(lo, target) >= SMART.factor_for(hi, target)
    assert SMART.factor_for(lo, target) in DEFAULT_FACTORS


@given(
    step=st.integers(min_value=1, max_value=50), current=sizes, target=sizes, maximum=sizes
)
def test_fixed_and_no_expansion(step: int, current: int, target: int, maximum: int) -> None:
    fixed = FixedExpansion(step).calculate_next_size(current, target, maximum)
    assert fixed == (current if current >= maximum else min(maximum, current + step))
    assert NoExpansion().calculate_next_size(current, target, maximum) == current


def test_custom_settings_and_protocol() -> None:
    two = SmartExpansion(factors=(3.0, 1.0), thresholds=(0.5,))
    assert two.calculate_next_size(4, 10, 100) == 12
    assert two.calculate_next_size(5, 10, 100) == 6  # factor 1.0: the +1 floor
    for strategy in (SMART, FixedExpansion(), NoExpansion(), two):
        assert isinstance(strategy, ExpansionStrategy)
        assert type(strategy).__name__ in repr(strategy)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"factors": ()}, "factors"),
        ({"factors": (2.0, 0.5), "thresholds": (0.5,)}, "factors"),
        ({"factors": (1.5, 2.0), "thresholds": (0.5,)}, "factors"),
        ({"factors": (float("nan"),), "thresholds": ()}, "factors"),
        ({"factors": (2.0, 1.5), "thresholds": ()}, "thresholds"),
        ({"factors": (2.0, 1.5, 1.1), "thresholds": (0.5, 0.5)}, "thresholds"),
        ({"factors": (2.0, 1.5), "thresholds": (0.0,)}, "thresholds"),
        ({"factors": (2.0, 1.5), "thresholds": (float("inf"),)}, "thresholds"),
    ],
)
def test_bad_smart_settings(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        SmartExpansion(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_bad_fixed_step_and_negative_sizes() -> None:
    with pytest.raises(ConfigurationError):
        FixedExpansion(0)
    for strategy in (SMART, FixedExpansion(), NoExpansion()):
        for args in ((-1, 1, 1), (1, -1, 1), (1, 1, -1)):
            with pytest.raises(ValueError, match="must be >= 0"):
                strategy.calculate_next_size(*args)
