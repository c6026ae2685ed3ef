"""Object and buffer pools: reuse instead of allocate, with hit counts and a memory limit.

:class:`ObjectPool` is a generic free list with a factory, optional reset, a capacity and
preallocation.  :class:`BufferPool` puts size classes on top of it (1 KiB, 8 KiB and 64 KiB by
default): :meth:`BufferPool.acquire` hands out a ``bytearray`` from the smallest class that fits
the message, and a global memory limit makes it refuse with a
:class:`~msgtrans.core.errors.ResourceError` rather than grow past what was allowed.

Both pools are plain data structures with no locks: a driver that shares one between threads
guards it itself (the asyncio and trio drivers use one per event loop and need none).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Generic, TypeVar

from .errors import ConfigurationError, ResourceError

__all__ = [
    "DEFAULT_BUFFER_COUNTS",
    "DEFAULT_BUFFER_SIZES",
    "BufferClassStats",
    "BufferPool",
    "BufferPoolStats",
    "ObjectPool",
    "ReleaseError",
]

T = TypeVar("T")
_MISSING: object = object()  # tells "not handed out" from a pooled object that is None

#: The plan's size classes: small, medium and large messages.
DEFAULT_BUFFER_SIZES: tuple[int, ...] = (1024, 8192, 65536)
#: Buffers preallocated (and kept at most) per class: 64 KiB + 128 KiB + 256 KiB = 448 KiB.
DEFAULT_BUFFER_COUNTS: tuple[int, ...] = (64, 16, 4)


class ReleaseError(ValueError):
    """An object was given back that the pool did not hand out, or was given back twice.

    Accepting it would let two users share one buffer later (double release) or grow the pool
    with memory it never accounted for (foreign object), so the pool refuses.
    """


class ObjectPool(Generic[T]):
    """A free list of reusable objects.

    :meth:`acquire` takes a free object (a *hit*) or makes one with *factory* (a *miss*);
    :meth:`release` gives it back, runs *reset* on it and keeps it if fewer than *capacity* are
    free, else drops it.  Objects are told apart by identity, so unhashable ones such as
    ``bytearray`` work.

    Args:
        factory: makes a new object.
        reset: prepares a released object for its next user (default: nothing).
        capacity: free objects kept at most (default 64, >= 0).
        preallocate: objects made at once, so the first users hit (default 0, at most
            *capacity*).

    Raises:
        ConfigurationError: a negative capacity, or *preallocate* outside ``[0, capacity]``.
    """

    def __init__(
        self,
        factory: Callable[[], T],
        reset: Callable[[T], None] | None = None,
        capacity: int = 64,
        preallocate: int = 0,
    ) -> None:
        if capacity < 0:
            raise ConfigurationError("capacity", f"must be >= 0, got {capacity}")
        if not 0 <= preallocate <= capacity:
            raise ConfigurationError(
                "preallocate", f"must be between 0 and capacity ({capacity}), got {preallocate}"
            )
        self._factory = factory
        self._reset = reset
        self.capacity = capacity
        self._free: list[T] = [factory() for _ in range(preallocate)]
        # Handed-out objects, by identity.  Holding them here also keeps their id() from being
        # reused by another object while they are out.
        self._out: dict[int, T] = {}
        self.hits = 0
        self.misses = 0
        self.discarded = 0

    @property
    def in_use(self) -> int:
        """Objects handed out by :meth:`acquire` and not yet released."""
        return len(self._out)

    @property
    def available(self) -> int:
        """Free objects ready for :meth:`acquire`."""
        return len(self._free)

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses), 0.0 before the first acquire."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def owns(self, obj: T) -> bool:
        """Return whether *obj* is handed out by this pool right now."""
        return id(obj) in self._out

    def acquire(self) -> T:
        """Return a free object, or a new one from the factory when none is free."""
        obj = self._take()
        self._out[id(obj)] = obj
        return obj

    def release(self, obj: T) -> bool:
        """Give *obj* back.  Return ``True`` when it was kept for reuse, ``False`` when dropped
        (the free list was full).

        Raises:
            ReleaseError: *obj* is already free (released twice) or never came from this pool.
        """
        if self._out.pop(id(obj), _MISSING) is _MISSING:
            if self.is_free(obj):
                raise ReleaseError(f"{type(obj).__name__} released twice")
            raise ReleaseError(f"{type(obj).__name__} was not acquired from this pool")
        return self._give(obj)

    # --- for owners that track handed-out objects themselves (BufferPool): no second index -----

    def _take(self) -> T:
        if self._free:
            self.hits += 1
            return self._free.pop()
        self.misses += 1
        return self._factory()

    def _give(self, obj: T) -> bool:
        if len(self._free) >= self.capacity:
            self.discarded += 1
            return False
        if self._reset is not None:
            self._reset(obj)
        self._free.append(obj)
        return True

    def is_free(self, obj: T) -> bool:
        """Return whether *obj* sits in the free list (so releasing it again would be a double
        release).  A scan of the free list: only the error path needs it, so the hot path keeps
        no second index of free objects."""
        return any(free is obj for free in self._free)

    def forget(self, obj: T) -> None:
        """Stop tracking the handed-out *obj* without taking it back (it became unfit for
        reuse); counted as discarded.

        Raises:
            ReleaseError: *obj* is not handed out by this pool.
        """
        if self._out.pop(id(obj), _MISSING) is _MISSING:
            raise ReleaseError(f"{type(obj).__name__} was not acquired from this pool")
        self.discarded += 1

    def drop_free(self) -> T | None:
        """Forget one free object and return it (``None`` when none is free): for owners that
        need the memory back."""
        if not self._free:
            return None
        return self._free.pop()


@dataclass(frozen=True, slots=True)
class BufferClassStats:
    """One size class of a :class:`BufferPool` (plain data).

    Attributes:
        size: bytes per buffer.
        hits: acquires served from the free list.
        misses: acquires that allocated.
        in_use: buffers handed out.
        free: buffers ready for reuse.
    """

    size: int
    hits: int
    misses: int
    in_use: int
    free: int


@dataclass(frozen=True, slots=True)
class BufferPoolStats:
    """A snapshot of a :class:`BufferPool` (plain data).

    Attributes:
        hits: acquires served from a free list, all classes.
        misses: acquires that allocated (a class was empty, or the message was larger than the
            largest class).
        hit_rate: hits / (hits + misses), 0.0 before the first acquire.
        bytes_in_use: bytes handed out and not released.
        bytes_allocated: bytes held by the pool, in use or free: what the limit bounds.
        memory_limit: the limit, or ``None``.
        refused: acquires refused by the memory limit.
        classes: per size class, smallest first.
    """

    hits: int
    misses: int
    hit_rate: float
    bytes_in_use: int
    bytes_allocated: int
    memory_limit: int | None
    refused: int
    classes: tuple[BufferClassStats, ...]


class BufferPool:
    """Size-classed ``bytearray`` pools with a global memory limit.

    :meth:`acquire` picks the smallest class at least *nbytes* long and returns a buffer of that
    class's full size (slice a ``memoryview`` of it to the message).  A message larger than the
    largest class gets a fresh buffer of exactly *nbytes*, counted as a miss and dropped on
    release.  Each class preallocates its count at construction and keeps at most that many free.
    Buffers are not zeroed on release: clearing 64 KiB per message would cost more than the pool
    saves, and the bytes never leave the process.

    Args:
        sizes: the class sizes in bytes, strictly increasing, each >= 1 (default
            :data:`DEFAULT_BUFFER_SIZES`).
        counts: buffers preallocated and kept per class, each >= 0 (default
            :data:`DEFAULT_BUFFER_COUNTS`; must match *sizes* in length).
        memory_limit: bytes the pool may hold at once, free buffers included, or ``None`` for no
            limit (default).

    Raises:
        ConfigurationError: sizes empty, not increasing or below 1; counts of the wrong length or
            negative; a limit below 0 or below what preallocation needs.
    """

    def __init__(
        self,
        sizes: Sequence[int] = DEFAULT_BUFFER_SIZES,
        counts: Sequence[int] = DEFAULT_BUFFER_COUNTS,
        memory_limit: int | None = None,
    ) -> None:
        sizes = tuple(sizes)
        counts = tuple(counts)
        if not sizes or any(s < 1 for s in sizes) or any(
            b <= a for a, b in pairwise(sizes)
        ):
            raise ConfigurationError(
                "sizes", f"need one or more sizes >= 1, strictly increasing: {sizes}"
            )
        if len(counts) != len(sizes) or any(c < 0 for c in counts):
            raise ConfigurationError(
                "counts", f"need {len(sizes)} counts >= 0 (one per size), got {counts}"
            )
        preallocated = sum(s * c for s, c in zip(sizes, counts, strict=True))
        if memory_limit is not None and not 0 <= preallocated <= memory_limit:
            raise ConfigurationError(
                "memory_limit",
                f"must be >= the {preallocated} bytes preallocated, got {memory_limit}",
            )
        self.sizes = sizes
        self.memory_limit = memory_limit
        self._pools = [
            ObjectPool(_zeroed(size), capacity=count, preallocate=count)
            for size, count in zip(sizes, counts, strict=True)
        ]
        # id(buffer) -> (class index or -1 for oversize, bytes accounted, the buffer).  The
        # accounted size is recorded, not re-read on release: a caller that resized the buffer
        # must not skew the books.
        self._out: dict[int, tuple[int, int, bytearray]] = {}
        self._classes = len(sizes)
        self._allocated = preallocated
        self._in_use = 0
        self._oversize_misses = 0
        self.refused = 0

    def acquire(self, nbytes: int) -> bytearray:
        """Return a buffer of at least *nbytes* bytes (its class's full size; exactly *nbytes*
        above the largest class).

        Raises:
            ValueError: *nbytes* is negative.
            ResourceError: allocating would take the pool past its memory limit (``resource``
                ``"memory"``, code ``resource.memory``), even after dropping free buffers of
                other classes.
        """
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        index = bisect.bisect_left(self.sizes, nbytes)
        if index == self._classes:
            self._reserve(nbytes)
            buf = bytearray(nbytes)
            self._oversize_misses += 1
            self._out[id(buf)] = (-1, nbytes, buf)
            self._in_use += nbytes
            return buf
        pool = self._pools[index]
        size = self.sizes[index]
        if not pool._free:
            self._reserve(size, keep=index)
        # The class pool keeps the free list and the counts; this pool alone tracks what is out
        # (with the class and size), so each buffer is indexed once on the hot path.
        buf = pool._take()
        self._out[id(buf)] = (index, size, buf)
        self._in_use += size
        return buf

    def release(self, buf: bytearray) -> None:
        """Give *buf* back to its class (or drop it: oversize, resized, or the class is full).

        Raises:
            ReleaseError: *buf* was released already or did not come from this pool.
        """
        entry = self._out.pop(id(buf), None)
        if entry is None:
            if any(p.is_free(buf) for p in self._pools):
                raise ReleaseError("buffer released twice")
            raise ReleaseError("buffer was not acquired from this pool (or already released)")
        index, size, _ = entry
        self._in_use -= size
        if index < 0:
            self._allocated -= size
        elif len(buf) != size:
            # Resized by its user: unfit for its class.  The pool lets go of it.
            self._pools[index].discarded += 1
            self._allocated -= size
        elif not self._pools[index]._give(buf):
            self._allocated -= size

    def _reserve(self, nbytes: int, keep: int = -1) -> None:
        """Account for *nbytes* more, first dropping free buffers of other classes (largest
        first) when the limit would be passed.  Raise when that is not enough."""
        limit = self.memory_limit
        if limit is None:
            self._allocated += nbytes
            return
        if self._allocated + nbytes > limit:
            free_elsewhere = sum(
                p.available * s
                for i, (p, s) in enumerate(zip(self._pools, self.sizes, strict=True))
                if i != keep
            )
            if self._allocated - free_elsewhere + nbytes > limit:
                # Refuse before dropping anything: a refusal leaves the pool as it was.
                self.refused += 1
                raise ResourceError(
                    "memory",
                    self._allocated + nbytes,
                    limit,
                    f"buffer pool memory limit reached allocating {nbytes} bytes",
                    code="resource.memory",
                )
            for i in reversed(range(len(self._pools))):
                while i != keep and self._allocated + nbytes > limit:
                    if self._pools[i].drop_free() is None:
                        break
                    self._allocated -= self.sizes[i]
        self._allocated += nbytes

    @property
    def bytes_in_use(self) -> int:
        """Bytes handed out and not yet released."""
        return self._in_use

    @property
    def bytes_allocated(self) -> int:
        """Bytes the pool holds, handed out or free."""
        return self._allocated

    @property
    def in_use(self) -> int:
        """Buffers handed out and not yet released."""
        return len(self._out)

    @property
    def hits(self) -> int:
        """Acquires served from a free list."""
        return sum(p.hits for p in self._pools)

    @property
    def misses(self) -> int:
        """Acquires that allocated, oversize ones included."""
        return sum(p.misses for p in self._pools) + self._oversize_misses

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses), 0.0 before the first acquire."""
        hits, total = self.hits, self.hits + self.misses
        return hits / total if total else 0.0

    def _class_in_use(self) -> list[int]:
        counts = [0] * self._classes
        for index, _, _ in self._out.values():
            if index >= 0:
                counts[index] += 1
        return counts

    def stats(self) -> BufferPoolStats:
        """Return a snapshot of the pool's counters."""
        return BufferPoolStats(
            hits=self.hits,
            misses=self.misses,
            hit_rate=self.hit_rate,
            bytes_in_use=self._in_use,
            bytes_allocated=self._allocated,
            memory_limit=self.memory_limit,
            refused=self.refused,
            classes=tuple(
                BufferClassStats(size, p.hits, p.misses, in_use, p.available)
                for size, p, in_use in zip(self.sizes, self._pools, self._class_in_use(),
                                           strict=True)
            ),
        )


def _zeroed(size: int) -> Callable[[], bytearray]:
    # A named factory per class: a lambda in the comprehension would capture the loop variable.
    def make() -> bytearray:
        return bytearray(size)

    return make
