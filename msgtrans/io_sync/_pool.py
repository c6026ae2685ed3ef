"""A client-side pool of sessions to one endpoint: :class:`SessionPool`, the blocking driver of
the core's :class:`~msgtrans.core.pool.PoolMachine`.

The same pool as :mod:`msgtrans.io_asyncio`'s (same API, defaults and errors; the machine
bookkeeping is :class:`msgtrans._pool_base.PoolDriverBase`), fitted to the blocking backend's
threading model (see :mod:`msgtrans.io_sync._loop`):

* the machine is core state, so it is touched only with the transport lock
  (:attr:`IOLoop.lock <msgtrans.io_sync._loop.IOLoop.lock>`) held; waiting leases wait on the
  transport's condition, which a decision to assign them notifies;
* the machine's timer is a socketless channel of the I/O loop (its ``deadline`` is the
  machine's next deadline, its ``on_timer`` the machine's ``tick``), so the pool needs no thread
  of its own and a change of deadline only wakes the loop when it sleeps past it;
* an open is a blocking :meth:`Transport.connect`, so each runs in a short-lived thread of its
  own (the machine plans one growth step at a time, never past ``max``); a failed open is
  reported after a backoff, like the other backends.

Requests hold a lease for their round trip so the machine sees the load;
:meth:`SessionPool.send` uses the machine's ``pick`` (a one-way send holds nothing once queued).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING

from .._driver import docs
from .._driver.docs import doc
from .._driver.pool import PoolDriverBase
from ..core.config import ConnectionConfig
from ..core.metrics import TransportMetrics
from ..core.packet import Buffer
from ..core.pool import PoolMachine, PoolStatus
from ..core.reconnect import ReconnectPolicy
from ..core.session import SessionState
from ._loop import Channel, IOLoop, wait_until
from ._message import Message
from ._session import Session

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["SessionPool"]


class _PoolTimer(Channel):
    """The pool's timer as a socketless channel of the I/O loop."""

    def __init__(self, pool: SessionPool) -> None:
        self._pool = pool

    def deadline(self) -> float | None:
        return self._pool._deadline()

    def on_timer(self, now: float) -> None:
        self._pool._on_timer(now)

    def close_now(self) -> None:
        """Nothing to release: the pool's sessions are the transport's."""


class SessionPool(PoolDriverBase[Session]):
    """Sessions to one endpoint, opened and closed as the load asks; safe from any thread.

    Made by :meth:`Transport.pool <msgtrans.io_sync.Transport.pool>`, never directly.  Use
    :meth:`request` and :meth:`send` for pooled traffic, ``with pool.lease() as session`` for
    a session of your own for a while, :meth:`status` to look inside and :meth:`close` (or the
    transport's shutdown) at the end.
    """

    _transport: Transport

    def __init__(self, transport: Transport, config: ConnectionConfig, machine: PoolMachine, *,
                 metrics: TransportMetrics, request_timeout: float, loop: IOLoop,
                 on_closed: Callable[[SessionPool], None],
                 reconnect: ReconnectPolicy | None = None) -> None:
        super().__init__(transport, config, machine, metrics=metrics,
                         request_timeout=request_timeout, on_closed=on_closed,
                         reconnect=reconnect)
        self._io = loop
        self._lock = loop.lock
        self._cond = loop.cond
        self._waiting: set[Hashable] = set()
        self._assigned: dict[Hashable, Hashable] = {}
        self._threads: set[threading.Thread] = set()
        self._timer = _PoolTimer(self)
        self._seen: float | None = None  # the deadline the I/O loop last read

    # --- the application's operations ----------------------------------------------------------

    @doc(docs.POOL_REQUEST)
    def request(
        self,
        data: Buffer,
        *,
        biz_type: int = 0,
        ext_header: Buffer = b"",
        timeout: float | None = None,
    ) -> Message:
        limit = self._request_timeout if timeout is None else timeout
        start = time.monotonic()
        lease_id, session = self._acquire(limit)
        try:
            # Session.request wants a positive timeout; a response cannot come in under 1 ms
            # anyway, so the floor only matters when the wait used the whole budget.
            remaining = max(limit - (time.monotonic() - start), 0.001)
            return session.request(data, biz_type=biz_type, ext_header=ext_header,
                                   timeout=remaining)
        finally:
            self._give_back(lease_id)

    @doc(docs.POOL_SEND)
    def send(self, data: Buffer, *, biz_type: int = 0, ext_header: Buffer = b"") -> None:
        with self._lock:
            session = self._pick()
        if session is None:
            # Nothing open: wait like a lease (that is demand the machine sees), hold nothing.
            lease_id, session = self._acquire(self._request_timeout)
            self._give_back(lease_id)
        session.send(data, biz_type=biz_type, ext_header=ext_header)

    @contextlib.contextmanager
    @doc(docs.POOL_LEASE, with_="with")
    def lease(self, timeout: float | None = None) -> Iterator[Session]:
        lease_id, session = self._acquire(self._request_timeout if timeout is None else timeout)
        try:
            yield session
        finally:
            self._give_back(lease_id)

    @doc(docs.POOL_CLOSE, opens="give their session back")
    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            sessions = self._begin_close()
        for session in sessions:
            session.start_close(None, "pool closed")
        deadline = time.monotonic() + timeout
        with self._lock:
            wait_until(self._cond, lambda: all(s.is_closed for s in sessions), deadline)
        for session in sessions:
            if not session.is_closed:
                session.abort("aborted: the pool closed")
        self.wait_tasks(1.0)

    def status(self) -> PoolStatus:
        """Return the machine's :class:`~msgtrans.core.pool.PoolStatus` now (a session found
        closing or closed leaves the pool first, so it is never counted)."""
        with self._lock:
            return super().status()

    def sessions(self) -> list[Session]:
        """The pooled sessions that are open, oldest first."""
        with self._lock:
            return super().sessions()

    # --- for the transport ---------------------------------------------------------------------

    def start(self) -> None:
        """Register the timer with the I/O loop and ask the machine for its first decisions
        (the opens up to ``min_size``)."""
        self._io.submit(lambda: self._io.add(self._timer, 0))
        with self._lock:
            self._first_started()

    def wait_started(self) -> None:
        """Wait until a first session opened, or every first open failed.

        Raises:
            TransportError: every first open failed (the last error).
        """
        with self._lock:
            wait_until(self._cond, lambda: self._first_done, None)
            if self._first_error is not None:
                raise self._first_error

    def _first_reached(self) -> None:
        self._cond.notify_all()

    def _stop(self) -> None:
        # Lock held (close() takes it around _begin_close).
        self._io.submit(lambda: self._io.remove(self._timer))
        self._waiting.clear()
        self._assigned.clear()
        self._cond.notify_all()  # waiting leases see the pool closed

    def wait_tasks(self, timeout: float = 1.0) -> None:
        """Wait (at most *timeout* seconds) for the open threads to end; a connect still in
        progress then gives its session back by itself."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0.0))

    # --- leases --------------------------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic()

    def _acquire(self, timeout: float) -> tuple[Hashable, Session]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                start = time.monotonic()
                lease_id, conn_id = self._try_acquire()
                if conn_id is None:
                    self._waiting.add(lease_id)
                    self._drive()
                    try:
                        wait_until(self._cond, self._settled(lease_id), deadline)
                    except BaseException:
                        self._waiting.discard(lease_id)
                        self._assigned.pop(lease_id, None)
                        self._release(lease_id)  # interrupted: a connection assigned goes back
                        raise
                    self._waiting.discard(lease_id)
                    conn_id = self._assigned.pop(lease_id, None)
                    if conn_id is None:
                        self._release(lease_id)
                        self._check_open()
                        raise self._exhausted(timeout)
                    # The machine grows on its own when a lease waits past the threshold; the
                    # report also covers a wait that ended just before the timer fired.
                    self._machine.lease_waited(lease_id, time.monotonic() - start)
                session = self._usable(conn_id)
                if session is None:
                    self._release(lease_id)  # broken before use: never hand it out, try again
                    continue
                self._drive()
                return lease_id, session

    def _settled(self, lease_id: Hashable) -> Callable[[], bool]:
        """The wait condition of a waiting lease: assigned, or the pool closed."""
        return lambda: lease_id in self._assigned or self._closed

    def _give_back(self, lease_id: Hashable) -> None:
        with self._lock:
            self._release(lease_id)

    def _wake_lease(self, lease_id: Hashable, conn_id: Hashable) -> bool:
        if lease_id not in self._waiting or lease_id in self._assigned:
            return False
        self._assigned[lease_id] = conn_id
        self._cond.notify_all()
        return True

    # --- opens ---------------------------------------------------------------------------------

    def _start_open(self) -> None:
        self._open_started()
        thread = threading.Thread(target=self._open_one, name="msgtrans-pool-open", daemon=True)
        self._threads.add(thread)
        thread.start()

    def _open_one(self) -> None:
        try:
            self._open()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _open(self) -> None:
        with self._lock:
            # The backoff after a loss or a failed round; the wait ends early when the pool
            # closes.
            delay = self._open_delay()
            if delay > 0:
                wait_until(self._cond, lambda: self._closed, time.monotonic() + delay)
            if self._closed:
                return
            round_ = self._open_round()
        try:
            session = self._transport.connect(self._config)
        except Exception as exc:
            with self._lock:
                # Reported after the backoff; the wait ends early when the pool closes.
                wait = self._open_error(exc, round_)
                if wait is None:
                    return  # gave up: the pool is closed
                wait_until(self._cond, lambda: self._closed, time.monotonic() + wait)
                self._open_failed()
            return
        with self._lock:
            closed = self._closed
            if not closed:
                self._open_done(session)
                if session.state is not SessionState.OPEN:
                    # It ended before its finish callback was registered: report it now.
                    self._usable(session.id)
                    self._drive()
        if closed:
            session.close(timeout=1.0)

    # --- the timer (I/O thread, lock held) -----------------------------------------------------

    def _deadline(self) -> float | None:
        # What the loop sleeps towards (it asks on every turn): _rearm compares against it.
        self._seen = None if self._closed else self._machine.next_deadline()
        return self._seen

    def _on_timer(self, now: float) -> None:
        deadline = self._machine.next_deadline()
        # The machine must see its deadline reached even if the clock reads a hair early.
        self._tick(max(now, deadline if deadline is not None else 0.0))

    def _rearm(self) -> None:
        # The loop reads the deadline itself on each turn; it only needs waking when the new
        # one comes before the one it sleeps towards (a lease taken or given back mostly
        # changes nothing, so costs no wake-up).
        deadline = self._machine.next_deadline()
        if deadline is not None and (self._seen is None or deadline < self._seen):
            self._seen = deadline
            self._io.wake()
