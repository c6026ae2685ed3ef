"""Object and buffer pools: reuse instead of allocate, with hit counts and a memory limit.

:class:`ObjectPool` is a generic free list with a factory, optional reset, a capacity and
preallocation.  :class:`BufferPool` puts size classes on top of it (1 KiB, 8 KiB and 64 KiB by
default): :meth:`BufferPool.acquire` hands out a ``bytearray`` from the smallest class that fits
the message, and a global memory limit makes it refuse with a
:class:`~msgtrans.core.errors.ResourceError` rather than grow past what was allowed.

:class:`ObjectPool` is a plain data structure with no lock: a driver that shares one between
threads guards it itself.  :class:`BufferPool` takes a lock (``lock=``, any context manager; the
core is sans-IO and makes none), because the buffers it *lends* (:meth:`BufferPool.lend`) leave
the driver: the application gives them back from any thread (``Message.release()``), or drops
them and the garbage collector does.  The io backends install a process-wide receive pool with
a ``threading.Lock`` (:func:`install_default_receive_pool`).

No buffer is ever reused while a view of it is alive: :meth:`BufferPool.release` refuses a buffer
that still has exports (``memoryview`` objects of it) with :class:`BufferError`, so a payload
view the application kept can never see the bytes of a later message.
"""

from __future__ import annotations

import bisect
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Generic, NoReturn, TypeVar

from .errors import ConfigurationError, ResourceError

__all__ = [
    "DEFAULT_BUFFER_COUNTS",
    "DEFAULT_BUFFER_SIZES",
    "PENDING_LIMIT",
    "RECEIVE_BUFFER_COUNTS",
    "RECEIVE_BUFFER_SIZES",
    "BufferClassStats",
    "BufferPool",
    "BufferPoolStats",
    "ObjectPool",
    "PoolBuffer",
    "ReleaseError",
    "default_receive_pool",
    "has_exports",
    "install_default_receive_pool",
    "receive_pool",
    "release_view",
]

T = TypeVar("T")
_MISSING: object = object()  # tells "not handed out" from a pooled object that is None

#: The plan's size classes: small, medium and large messages.
DEFAULT_BUFFER_SIZES: tuple[int, ...] = (1024, 8192, 65536)
#: Buffers preallocated (and kept at most) per class: 64 KiB + 128 KiB + 256 KiB = 448 KiB.
DEFAULT_BUFFER_COUNTS: tuple[int, ...] = (64, 16, 4)

#: Buffers :meth:`BufferPool.release_later` keeps aside at most, waiting for their views to go.
PENDING_LIMIT = 16

# A received big packet is its payload, a 16-byte header and an ext header of up to 4 KiB.
_PACKET_SLACK = 16 + 4096
#: The classes of the receive pool big packets are lent from: a 64 KiB, 256 KiB, 1 MiB and 4 MiB
#: payload each fit whole with their header (payloads start at the zero-copy threshold, 64 KiB,
#: so smaller classes would never be used).
RECEIVE_BUFFER_SIZES: tuple[int, ...] = tuple(
    n * 1024 + _PACKET_SLACK for n in (64, 256, 1024, 4096)
)
#: Free buffers the receive pool keeps per class (at most ~7.6 MiB); none is preallocated.
RECEIVE_BUFFER_COUNTS: tuple[int, ...] = (8, 4, 2, 1)


class ReleaseError(ValueError):
    """An object was given back that the pool did not hand out, or was given back twice.

    Accepting it would let two users share one buffer later (double release) or grow the pool
    with memory it never accounted for (foreign object), so the pool refuses.
    """


class PoolBuffer(bytearray):
    """The ``bytearray`` a :class:`BufferPool` hands out: weakly referenceable, so that a lent
    buffer the application drops is noticed, and knowing its lender while it is lent."""

    __slots__ = ("__weakref__", "lender")

    def __init__(self, size: int = 0) -> None:
        super().__init__(size)
        #: The pool this buffer is lent by (:meth:`BufferPool.lend`), else ``None``.
        self.lender: BufferPool | None = None


def has_exports(buf: bytearray) -> bool:
    """Return whether a view (``memoryview``, ``numpy`` array...) of *buf* is alive.

    CPython has no public export count, but a ``bytearray`` refuses to change size while
    exported: shrinking by one byte and growing back is refused with no change (and costs no
    reallocation otherwise), so it tells without side effects.  An empty buffer has nothing a
    view could see change: ``False``.
    """
    if not buf:
        return False
    try:
        last = buf.pop()
    except BufferError:
        return True
    buf.append(last)
    return False


def release_view(view: object) -> bool:
    """Give back the pooled buffer behind *view* (a payload handed out by a pooled decoder).

    Releases *view* itself, then hands its buffer to the lending pool's
    :meth:`BufferPool.release_later`: reused at once when no other view of it is alive, else
    as soon as none is (a slice the application kept, or the driver's view of its last read,
    which may still be alive while a handler runs inside the read callback).  Anything else
    (``bytes``, a view of unpooled memory, an already released view) is left alone.  Return
    ``True`` when a buffer went to its pool.

    Raises:
        BufferError: an export was made *of view* itself (a numpy array over it):
            ``memoryview.release`` refuses, and nothing changed.
    """
    if type(view) is not memoryview:
        return False
    try:
        buf = view.obj
    except ValueError:  # released already
        return False
    if type(buf) is not PoolBuffer:
        return False
    lender = buf.lender
    if lender is None:
        return False
    view.release()
    del view
    lender.release_later(buf)
    return True


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
        lent: buffers lent (:meth:`BufferPool.lend`) and not yet given back.
        collected: lent buffers never given back: dropped by their holder and freed by the
            garbage collector (or pinned by a view at release), so lost to reuse.
    """

    hits: int
    misses: int
    hit_rate: float
    bytes_in_use: int
    bytes_allocated: int
    memory_limit: int | None
    refused: int
    classes: tuple[BufferClassStats, ...]
    lent: int = 0
    collected: int = 0


class BufferPool:
    """Size-classed ``bytearray`` pools with a global memory limit.

    :meth:`acquire` picks the smallest class at least *nbytes* long and returns a buffer of that
    class's full size (slice a ``memoryview`` of it to the message).  A message larger than the
    largest class gets a fresh buffer of exactly *nbytes*, counted as a miss and dropped on
    release.  Each class preallocates its count at construction and keeps at most that many free.
    Buffers are not zeroed on release: clearing 64 KiB per message would cost more than the pool
    saves, and the bytes never leave the process.

    :meth:`acquire` is for memory its caller keeps to itself and gives back with :meth:`release`.
    :meth:`lend` is for memory that leaves it (a received payload handed to the application as a
    view): the pool holds a lent buffer only weakly, so one the application drops without giving
    it back is freed by the garbage collector and written off (``collected``) instead of leaking.
    Every method runs under *lock* (held for no allocation larger than one buffer), so the pool
    is thread-safe when given a real lock.

    Args:
        sizes: the class sizes in bytes, strictly increasing, each >= 1 (default
            :data:`DEFAULT_BUFFER_SIZES`).
        counts: buffers preallocated and kept per class, each >= 0 (default
            :data:`DEFAULT_BUFFER_COUNTS`; must match *sizes* in length).
        memory_limit: bytes the pool may hold at once, free buffers included, or ``None`` for no
            limit (default).
        preallocate: buffers made at construction per class, each between 0 and its count
            (default: the counts, so the first users hit).
        lock: a context manager every method holds, such as a ``threading.Lock`` (default: none;
            the pool is then for one thread).

    Raises:
        ConfigurationError: sizes empty, not increasing or below 1; counts of the wrong length or
            negative; *preallocate* of the wrong length or outside ``[0, count]``; a limit below
            0 or below what preallocation needs.
    """

    def __init__(
        self,
        sizes: Sequence[int] = DEFAULT_BUFFER_SIZES,
        counts: Sequence[int] = DEFAULT_BUFFER_COUNTS,
        memory_limit: int | None = None,
        preallocate: Sequence[int] | None = None,
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        sizes = tuple(sizes)
        counts = tuple(counts)
        made = counts if preallocate is None else tuple(preallocate)
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
        if len(made) != len(counts) or any(
            not 0 <= m <= c for m, c in zip(made, counts, strict=True)
        ):
            raise ConfigurationError(
                "preallocate", f"need {len(sizes)} counts between 0 and {counts}, got {made}"
            )
        preallocated = sum(s * m for s, m in zip(sizes, made, strict=True))
        if memory_limit is not None and not 0 <= preallocated <= memory_limit:
            raise ConfigurationError(
                "memory_limit",
                f"must be >= the {preallocated} bytes preallocated, got {memory_limit}",
            )
        self.sizes = sizes
        self.memory_limit = memory_limit
        self._pools = [
            ObjectPool(_zeroed(size), capacity=count, preallocate=m)
            for size, count, m in zip(sizes, counts, made, strict=True)
        ]
        # id(buffer) -> (class index or -1 for oversize, bytes accounted, the buffer).  The
        # accounted size is recorded, not re-read on release: a caller that resized the buffer
        # must not skew the books.
        # A lent buffer is held through a weak reference instead.
        self._out: dict[int, tuple[int, int, PoolBuffer | weakref.ref[PoolBuffer]]] = {}
        self._classes = len(sizes)
        self._allocated = preallocated
        self._in_use = 0
        self._oversize_misses = 0
        self.refused = 0
        self._lock = lock
        # Weak references of lent buffers that died unreleased.  The weakref callback may run
        # on any thread, even inside a locked method of this pool (a collection triggered by
        # an allocation), so it only appends here; the next locked call writes them off.
        self._dead: deque[weakref.ref[PoolBuffer]] = deque()
        self._on_dead = self._dead.append  # made once: a bound method per lend costs
        self._ref_key: dict[int, int] = {}  # id(weak reference) -> id(lent buffer)
        self._pending: list[bytearray] = []  # release_later: given back once unviewed
        #: Receive areas lent to decoders and idle between reads: a decoder pops one for a
        #: read and appends it back once nothing is buffered (``msgtrans.core.framing``), so
        #: that idle connections hold none and a busy one costs no lend per message.  They
        #: stay lent (counted in ``bytes_in_use``); a few at most.
        self.spare_areas: list[bytearray] = []
        self._lent = 0
        self.collected = 0

    def acquire(self, nbytes: int) -> bytearray:
        """Return a buffer of at least *nbytes* bytes (its class's full size; exactly *nbytes*
        above the largest class), to give back with :meth:`release`.

        Raises:
            ValueError: *nbytes* is negative.
            ResourceError: allocating would take the pool past its memory limit (``resource``
                ``"memory"``, code ``resource.memory``), even after dropping free buffers of
                other classes.
        """
        lock = self._lock
        if lock is None:
            return self._acquire(nbytes, False)
        with lock:
            return self._acquire(nbytes, False)

    def lend(self, nbytes: int) -> PoolBuffer:
        """As :meth:`acquire`, for a buffer that leaves its taker: the pool holds it weakly, and
        it knows its lender (``buf.lender``) so that :func:`release_view` can give it back from
        a view.  A lent buffer dropped without :meth:`release` is freed by the garbage collector
        and counted in ``collected``; it is never reused.

        Raises:
            ValueError: *nbytes* is negative.
            ResourceError: as :meth:`acquire`.
        """
        lock = self._lock
        if lock is None:
            return self._acquire(nbytes, True)
        with lock:
            return self._acquire(nbytes, True)

    def _acquire(self, nbytes: int, lend: bool) -> PoolBuffer:
        if self._dead:
            self._write_off()
        if self._pending:
            self._retry_pending()
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        index = bisect.bisect_left(self.sizes, nbytes)
        buf: PoolBuffer
        if index == self._classes:
            self._reserve(nbytes)
            self._oversize_misses += 1
            size = nbytes
            buf = PoolBuffer(nbytes)
            index = -1
        else:
            # The class pool keeps the free list and the counts; this pool alone tracks what
            # is out (with the class and size), so each buffer is indexed once.
            pool = self._pools[index]
            size = self.sizes[index]
            if pool._free:
                pool.hits += 1
                buf = pool._free.pop()
            else:
                self._reserve(size, keep=index)
                buf = pool._take()
        self._in_use += size
        key = id(buf)
        if lend:
            buf.lender = self
            ref = weakref.ref(buf, self._on_dead)
            self._out[key] = (index, size, ref)
            self._ref_key[id(ref)] = key
            self._lent += 1
        else:
            self._out[key] = (index, size, buf)
        return buf

    def release(self, buf: bytearray) -> None:
        """Give *buf* back to its class (or drop it: oversize, resized, or the class is full).

        Raises:
            ReleaseError: *buf* was released already or did not come from this pool.
            BufferError: a view of *buf* is still alive: reusing it would let that view see the
                next user's bytes.  Nothing changed; release it again once the views are gone
                (a lent buffer may also simply be dropped).
        """
        lock = self._lock
        if lock is None:
            self._release(buf)
            return
        with lock:
            self._release(buf)

    def _release(self, buf: bytearray) -> None:
        if self._dead:
            self._write_off()
        key = id(buf)
        entry = self._out.get(key)
        if entry is None:
            self._refuse(buf)
        index, size, held = entry
        if held is not buf and (type(held) is not weakref.ReferenceType or held() is not buf):
            self._refuse(buf)  # an entry for another object that had this id
        # has_exports(buf), inlined: this runs once per big message.
        if buf:
            try:
                last = buf.pop()
            except BufferError:
                raise BufferError(
                    "a view of the buffer is still alive: it cannot be reused until it is gone"
                ) from None
            buf.append(last)
        del self._out[key]
        if held is not buf:
            del self._ref_key[id(held)]
            self._lent -= 1
            buf.lender = None
        self._in_use -= size
        if index < 0:
            self._allocated -= size
        elif len(buf) != size:
            # Resized by its user: unfit for its class.  The pool lets go of it.
            self._pools[index].discarded += 1
            self._allocated -= size
        else:
            pool = self._pools[index]
            if len(pool._free) < pool.capacity:
                pool._free.append(buf)
            else:
                pool.discarded += 1
                self._allocated -= size

    def release_later(self, buf: bytearray) -> None:
        """Give *buf* back now, or, while a view of it is alive, as soon as none is: the pool
        keeps it aside and looks again at each later acquire, lend and stats (for the receive
        area of a closed connection, which the driver's last read may still be viewing).  At
        most :data:`PENDING_LIMIT` wait; the oldest beyond that is given up (``collected``).

        Raises:
            ReleaseError: as :meth:`release`, and for a buffer already waiting.
        """
        lock = self._lock
        if lock is None:
            self._release_later(buf)
            return
        with lock:
            self._release_later(buf)

    def _release_later(self, buf: bytearray) -> None:
        if self._pending and any(waiting is buf for waiting in self._pending):
            raise ReleaseError("buffer released twice (it waits for its views to go)")
        try:
            self._release(buf)
        except BufferError:
            pending = self._pending
            pending.append(buf)
            if len(pending) > PENDING_LIMIT:
                self._forget(pending.pop(0))

    def _retry_pending(self) -> None:
        waiting, self._pending = self._pending, []
        for buf in waiting:
            try:
                self._release(buf)
            except BufferError:
                self._pending.append(buf)
            except ReleaseError:
                pass  # no longer out (cannot happen through release_later): nothing to do

    def _forget(self, buf: bytearray) -> None:
        """Stop accounting for the handed-out *buf* (left to its viewers and the collector)."""
        index, size, held = self._out.pop(id(buf))
        if held is not buf:
            del self._ref_key[id(held)]
            self._lent -= 1
            if isinstance(buf, PoolBuffer):
                buf.lender = None
        self._in_use -= size
        self._allocated -= size
        self.collected += 1
        if index >= 0:
            self._pools[index].discarded += 1

    def _refuse(self, buf: bytearray) -> NoReturn:
        if isinstance(buf, PoolBuffer) and any(p.is_free(buf) for p in self._pools):
            raise ReleaseError("buffer released twice")
        raise ReleaseError("buffer was not acquired from this pool (or already released)")

    def drop_free(self) -> int:
        """Free every buffer the pool keeps for reuse (buffers handed out are untouched: they
        come back, or go, as usual); return the bytes freed.  A transport's own pool does this
        at shutdown."""
        spares = self.spare_areas
        while spares:
            try:
                spare = spares.pop()
            except IndexError:  # taken by a decoder on another thread meanwhile
                break
            self.release_later(spare)
        lock = self._lock
        if lock is None:
            return self._drop_free()
        with lock:
            return self._drop_free()

    def _drop_free(self) -> int:
        freed = 0
        for size, pool in zip(self.sizes, self._pools, strict=True):
            while pool.drop_free() is not None:
                freed += size
        self._allocated -= freed
        return freed

    def _write_off(self) -> None:
        """Forget the lent buffers that died unreleased (their memory is gone with them)."""
        dead = self._dead
        while dead:
            ref = dead.popleft()
            key = self._ref_key.pop(id(ref), None)
            if key is None:
                continue
            entry = self._out.get(key)
            if entry is None or entry[2] is not ref:
                continue
            del self._out[key]
            index, size, _ = entry
            self._lent -= 1
            self._in_use -= size
            self._allocated -= size
            self.collected += 1
            if index >= 0:
                self._pools[index].discarded += 1

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

    @property
    def lent(self) -> int:
        """Buffers lent and not yet given back (nor collected)."""
        return self._lent

    def _class_in_use(self) -> list[int]:
        counts = [0] * self._classes
        for index, _, _ in self._out.values():
            if index >= 0:
                counts[index] += 1
        return counts

    def stats(self) -> BufferPoolStats:
        """Return a snapshot of the pool's counters."""
        lock = self._lock
        if lock is None:
            return self._stats()
        with lock:
            return self._stats()

    def _stats(self) -> BufferPoolStats:
        if self._dead:
            self._write_off()
        if self._pending:
            self._retry_pending()
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
            lent=self._lent,
            collected=self.collected,
        )


def _zeroed(size: int) -> Callable[[], PoolBuffer]:
    # A named factory per class: a lambda in the comprehension would capture the loop variable.
    def make() -> PoolBuffer:
        return PoolBuffer(size)

    return make


# The process-wide receive pool, once made or installed (a dict: setdefault is one atomic step,
# so two threads making it at once still agree on one pool, with no lock in the core).
_DEFAULT: dict[str, BufferPool] = {}


def receive_pool(
    memory_limit: int | None = None, lock: AbstractContextManager[Any] | None = None
) -> BufferPool:
    """Return a new pool with the receive classes (:data:`RECEIVE_BUFFER_SIZES`, keeping
    :data:`RECEIVE_BUFFER_COUNTS` free), nothing preallocated.

    Args:
        memory_limit: as for :class:`BufferPool` (default none).
        lock: as for :class:`BufferPool` (default none).
    """
    return BufferPool(
        RECEIVE_BUFFER_SIZES,
        RECEIVE_BUFFER_COUNTS,
        memory_limit=memory_limit,
        preallocate=(0,) * len(RECEIVE_BUFFER_SIZES),
        lock=lock,
    )


def default_receive_pool() -> BufferPool:
    """Return the process-wide receive pool the connection factories give every decoder by
    default: the one installed by :func:`install_default_receive_pool` (the io backends install
    one with a ``threading.Lock`` when imported), else a :func:`receive_pool` made on first use.
    It has no memory limit, so applications that keep payloads behave as without a pool."""
    pool = _DEFAULT.get("receive")
    if pool is None:
        pool = _DEFAULT.setdefault("receive", receive_pool())
    return pool


def install_default_receive_pool(pool: BufferPool, *, replace: bool = False) -> BufferPool:
    """Make *pool* the process-wide receive pool unless one is in place (or *replace*); return
    the pool in place afterwards.  Connections made earlier keep the pool they got."""
    if replace:
        _DEFAULT["receive"] = pool
        return pool
    return _DEFAULT.setdefault("receive", pool)
