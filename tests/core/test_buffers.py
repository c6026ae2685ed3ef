"""Tests of the object and buffer pools: hits and misses, size classes, the memory limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.core.buffers import (
    DEFAULT_BUFFER_COUNTS,
    DEFAULT_BUFFER_SIZES,
    BufferClassStats,
    BufferPool,
    ObjectPool,
    ReleaseError,
)
from msgtrans.core.errors import ConfigurationError, ResourceError

# --- ObjectPool --------------------------------------------------------------------------------


def test_object_pool_hits_misses_and_reset() -> None:
    made: list[list[int]] = []

    def factory() -> list[int]:
        made.append([])
        return made[-1]

    pool = ObjectPool(factory, reset=list.clear, capacity=2, preallocate=1)
    assert (pool.available, pool.in_use, pool.hit_rate) == (1, 0, 0.0)
    a = pool.acquire()  # the preallocated one
    b = pool.acquire()  # a new one
    c = pool.acquire()
    assert (pool.hits, pool.misses, pool.in_use) == (1, 2, 3)
    assert pool.owns(a) and not pool.owns([])
    a.append(1)
    assert pool.release(a) is True and a == []  # reset ran
    assert pool.is_free(a)
    assert pool.release(b) is True
    assert pool.release(c) is False  # capacity 2: dropped
    assert pool.discarded == 1
    assert pool.acquire() is b  # last in, first out: the warmest object
    assert pool.hit_rate == 2 / 4


def test_object_pool_refuses_double_and_foreign_release() -> None:
    pool: ObjectPool[bytearray] = ObjectPool(bytearray, capacity=4)
    buf = pool.acquire()
    pool.release(buf)
    with pytest.raises(ReleaseError, match="released twice"):
        pool.release(buf)
    with pytest.raises(ReleaseError, match="not acquired from this pool"):
        pool.release(bytearray(3))
    with pytest.raises(ReleaseError, match="not acquired"):
        pool.forget(bytearray(3))
    other = pool.acquire()
    pool.forget(other)
    assert pool.in_use == 0 and pool.discarded == 1
    assert pool.drop_free() is not None or pool.available == 0
    assert pool.drop_free() is None


def test_object_pool_of_none() -> None:
    pool: ObjectPool[None] = ObjectPool(lambda: None, capacity=1)
    obj = pool.acquire()
    assert pool.release(obj) is True


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"capacity": -1}, "capacity"), ({"capacity": 2, "preallocate": 3}, "preallocate"),
     ({"preallocate": -1}, "preallocate")],
)
def test_object_pool_settings(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ObjectPool(bytearray, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


# --- BufferPool --------------------------------------------------------------------------------


def test_defaults_preallocate_the_plan_classes() -> None:
    pool = BufferPool()
    assert pool.sizes == DEFAULT_BUFFER_SIZES == (1024, 8192, 65536)
    stats = pool.stats()
    assert stats.bytes_allocated == sum(
        s * c for s, c in zip(DEFAULT_BUFFER_SIZES, DEFAULT_BUFFER_COUNTS, strict=True)
    )
    assert stats.classes[0] == BufferClassStats(1024, 0, 0, 0, DEFAULT_BUFFER_COUNTS[0])
    assert (stats.bytes_in_use, stats.hit_rate, stats.memory_limit, stats.refused) == (
        0, 0.0, None, 0
    )


@pytest.mark.parametrize(
    ("nbytes", "length"),
    [(0, 1024), (1, 1024), (1024, 1024), (1025, 8192), (8192, 8192), (65536, 65536),
     (65537, 65537), (1_000_000, 1_000_000)],
)
def test_smallest_class_that_fits(nbytes: int, length: int) -> None:
    pool = BufferPool()
    buf = pool.acquire(nbytes)
    assert len(buf) == length
    assert pool.bytes_in_use == length
    assert pool.in_use == 1
    if nbytes > 65536:
        assert (pool.hits, pool.misses) == (0, 1)  # oversize: a fresh allocation
    else:
        assert (pool.hits, pool.misses) == (1, 0)
    pool.release(buf)
    assert pool.bytes_in_use == 0 and pool.in_use == 0


def test_misses_beyond_the_count_and_bytes_allocated() -> None:
    pool = BufferPool(sizes=(16, 64), counts=(1, 0))
    a = pool.acquire(10)
    b = pool.acquire(10)  # the class is empty: allocate
    c = pool.acquire(40)
    assert (pool.hits, pool.misses) == (1, 2)
    assert pool.bytes_allocated == 16 + 16 + 64
    pool.release(a)
    pool.release(b)  # only one kept
    pool.release(c)  # count 0: dropped
    assert pool.bytes_allocated == 16
    assert pool.bytes_in_use == 0


def test_memory_limit_refuses_instead_of_growing() -> None:
    pool = BufferPool(sizes=(100, 1000), counts=(2, 1), memory_limit=1500)
    held = [pool.acquire(100), pool.acquire(100), pool.acquire(1000)]
    assert pool.bytes_allocated == 1200
    held.append(pool.acquire(100))  # 1300: still fine
    with pytest.raises(ResourceError) as info:
        pool.acquire(500)  # a second 1000-byte buffer would make 2300
    err = info.value
    assert (err.resource, err.current, err.limit, err.error_code) == (
        "memory", 2300, 1500, "resource.memory"
    )
    assert err.is_retryable()
    with pytest.raises(ResourceError):
        pool.acquire(5000)  # oversize counts too
    assert pool.refused == 2
    assert pool.bytes_allocated == 1300  # a refusal changes nothing
    for buf in held:
        pool.release(buf)
    assert pool.bytes_in_use == 0


def test_refusal_drops_nothing_when_dropping_would_not_be_enough() -> None:
    pool = BufferPool(sizes=(100, 1000), counts=(5, 1), memory_limit=1500)
    big = pool.acquire(1000)  # 1500 allocated: five free 100s, one 1000 in use
    with pytest.raises(ResourceError):
        pool.acquire(700)  # 1000 more; even dropping the 500 free bytes leaves 2000 > 1500
    assert pool.stats().classes[0].free == 5  # the free buffers were not thrown away for nothing
    pool.release(big)


def test_memory_limit_frees_room_from_other_classes() -> None:
    pool = BufferPool(sizes=(100, 400), counts=(4, 1), memory_limit=800)
    big = pool.acquire(400)  # 800 allocated, 400 free in the small class
    other = pool.acquire(300)  # 400 more: four free 100-byte buffers are dropped
    assert pool.bytes_allocated == 800
    assert pool.stats().classes[0].free == 0
    pool.release(big)
    pool.release(other)  # the class keeps one
    assert pool.bytes_allocated == 400


def test_release_errors_and_resized_buffers() -> None:
    pool = BufferPool(sizes=(64,), counts=(2,))
    buf = pool.acquire(10)
    pool.release(buf)
    with pytest.raises(ReleaseError, match="released twice"):
        pool.release(buf)
    with pytest.raises(ReleaseError, match="not acquired from this pool"):
        pool.release(bytearray(64))
    other = pool.acquire(10)
    other.extend(b"x")  # its user resized it: unfit for the class
    pool.release(other)
    assert pool.bytes_allocated == 64 and pool.bytes_in_use == 0
    big = pool.acquire(1000)
    pool.release(big)
    with pytest.raises(ReleaseError):
        pool.release(big)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sizes": ()}, "sizes"),
        ({"sizes": (0,), "counts": (1,)}, "sizes"),
        ({"sizes": (64, 64), "counts": (1, 1)}, "sizes"),
        ({"sizes": (64,), "counts": (1, 1)}, "counts"),
        ({"sizes": (64,), "counts": (-1,)}, "counts"),
        ({"sizes": (64,), "counts": (2,), "memory_limit": 100}, "memory_limit"),
        ({"memory_limit": -1}, "memory_limit"),
    ],
)
def test_buffer_pool_settings(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        BufferPool(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_negative_size_refused() -> None:
    with pytest.raises(ValueError, match="nbytes"):
        BufferPool().acquire(-1)


def test_steady_load_hit_rate_above_ninety_percent() -> None:
    pool = BufferPool()
    for i in range(1000):
        held = [pool.acquire((i * 37 + k * 911) % 70_000) for k in range(3)]
        for buf in held:
            pool.release(buf)
    assert pool.hit_rate > 0.9
    assert pool.bytes_in_use == 0


# --- properties ---------------------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 3000)),
        st.tuples(st.just("release"), st.integers(0, 50)),
    ),
    max_size=60,
)


@given(ops=operations, limit=st.one_of(st.none(), st.integers(512, 8000)))
def test_limit_respected_and_nothing_leaks(ops: list[tuple[str, int]], limit: int | None) -> None:
    pool = BufferPool(sizes=(64, 256, 1024), counts=(2, 1, 0), memory_limit=limit)
    held: list[bytearray] = []
    acquires = 0
    for op, arg in ops:
        if op == "acquire":
            acquires += 1
            try:
                buf = pool.acquire(arg)
            except ResourceError:
                assert limit is not None
                continue
            assert len(buf) >= arg
            assert all(buf is not other for other in held), "one buffer handed out twice"
            held.append(buf)
        elif held:
            pool.release(held.pop(arg % len(held)))
        stats = pool.stats()
        assert stats.bytes_in_use == sum(len(b) for b in held)
        assert stats.bytes_in_use <= stats.bytes_allocated
        if limit is not None:
            assert stats.bytes_allocated <= limit
        assert stats.hits + stats.misses + stats.refused == acquires
    for buf in held:
        pool.release(buf)
    assert pool.bytes_in_use == 0 and pool.in_use == 0
    assert 0.0 <= pool.hit_rate <= 1.0
