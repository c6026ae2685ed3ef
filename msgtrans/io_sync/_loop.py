"""The one background thread of a transport: a ``selectors`` loop over all its sockets.

Threading model (the one rule every other module of this package follows):

* One :class:`IOLoop` per transport owns one thread, one selector and one wakeup socket pair.
* Every piece of core state (each :class:`~msgtrans.core.connection.Connection`, each
  ``QuicEndpoint``, every session's inbox and waiters) is touched only while holding
  :attr:`IOLoop.lock`, a single re-entrant lock per transport.  Application threads take it for
  the short time an operation needs (``conn.send``...), and the I/O thread takes it for each batch
  of ready sockets; waiting (for a response, a message, a handshake) is a wait on
  :attr:`IOLoop.cond`, which releases the lock.  One lock rather than one per session keeps the
  QUIC server simple (one endpoint, many sessions) and makes cross-session waits (graceful
  shutdown) plain condition waits.
* Sockets and the selector are touched only by the I/O thread.  Application threads change
  core state, then call :meth:`IOLoop.request_flush`: the channel is marked dirty and the loop
  woken if it sleeps in ``select`` (an awake loop looks at the dirty set before it sleeps
  again, so a burst of sends costs one wake-up byte at most); the loop writes what the core
  produced and updates the selector at the end of its iteration, so the sends of many threads
  are coalesced into one vectored write.  A channel may spare the loop a wake-up that would
  find nothing to do (a message taken from the inbox produces no bytes): :attr:`IOLoop.woken`
  and :meth:`IOLoop.wakes_before` tell it when the loop will look anyway.  The I/O thread lets
  go of the lock while the kernel takes a write (:meth:`IOLoop.unlocked`): the buffers are its
  own by then, and senders go on queueing.
* One exception to "only the I/O thread": while the loop sleeps in ``select`` (it writes only
  awake), a thread sending a request or a response writes the bytes itself, lock held, with a
  non-blocking ``sendmsg`` (``StreamChannel.write_now``); what the kernel does not take is
  left to the loop.  Someone waits for the answer, so saving the hop to the I/O thread is
  latency; one-way sends still go through the loop, which batches a burst into one write
  (a one-way send that wakes it makes it give the GIL back once before it writes, so the
  sender queues more first).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["Channel", "IOLoop", "wait_until"]

logger = logging.getLogger("msgtrans.io_sync")

T = TypeVar("T")

#: Longest the selector sleeps without a deadline: a safety net, never needed for correctness.
_MAX_SLEEP = 1.0
#: Rounds of flushing per iteration (a flush may dirty another channel: QUIC sessions -> their
#: listener); whatever is still dirty afterwards goes to the next iteration with no sleep.
_FLUSH_ROUNDS = 4


class Channel:
    """One socket driven by the loop (a stream connection, a QUIC socket, a listener).

    Subclasses override the hooks; every hook runs on the I/O thread with the lock held.
    """

    sock: socket.socket | None = None

    def on_ready(self, mask: int, now: float) -> None:
        """The socket is readable and/or writable (``selectors.EVENT_*`` bits in *mask*)."""

    def flush(self, now: float) -> None:
        """Write what the core has, update the selector interest, close once over."""

    def deadline(self) -> float | None:
        """When :meth:`on_timer` must next run (``time.monotonic()`` seconds), or ``None``."""
        return None

    def on_timer(self, now: float) -> None:
        """A deadline came."""

    def close_now(self) -> None:
        """The loop is ending: release the socket and tell whoever waits."""

    def fail(self) -> None:
        """A hook raised: drop the channel (default: :meth:`close_now`)."""
        self.close_now()


def wait_until(cond: threading.Condition, predicate: Callable[[], bool],
               deadline: float | None) -> bool:
    """Wait on *cond* (held) until *predicate* is true or *deadline* (monotonic) passes;
    return whether the predicate held."""
    while not predicate():
        if deadline is None:
            cond.wait()
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            cond.wait(remaining)
    return True


class IOLoop:
    """The selector thread of one transport (see the module docstring for the rules).

    Attributes:
        lock: the transport lock guarding all core state.
        cond: the condition every blocking call waits on (notified on any change).
    """

    def __init__(self, name: str = "msgtrans-io") -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._wake_pending = False
        # Between the last look at the work (lock held) and the end of select(): only then
        # does new work need a wake-up; an awake loop sees the dirty set before it sleeps.
        self._sleeping = False
        self._burst = False  # the last wake-up came from a one-way send (request_flush)
        self._calls: deque[Callable[[], None]] = deque()
        self._dirty: dict[Channel, None] = {}  # ordered set
        self._channels: dict[Channel, int] = {}  # channel -> registered mask (0: unregistered)
        self._stopping = False
        self._stopped = False
        # When the selector wakes up at the latest (monotonic), set before each select.
        self._sleep_until = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- for any thread (lock held or not) ----------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the loop still runs (new sockets may be added)."""
        return not self._stopping

    def in_loop_thread(self) -> bool:
        """Whether the caller is the I/O thread."""
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[[], None]) -> None:
        """Run *fn* on the I/O thread soon (with the lock held); once the loop has stopped,
        run it here and now (there is no I/O thread left to race with)."""
        with self.lock:
            if self._stopping:
                fn()
                return
            self._calls.append(fn)
            self._wake()

    def call(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        """Run *fn* on the I/O thread and return its result (here, if this is the I/O thread
        or the loop has stopped)."""
        if self.in_loop_thread():
            with self.lock:
                return fn()
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.submit(run)
        return future.result(timeout)

    def request_flush(self, channel: Channel, *, burst: bool = False) -> None:
        """Mark *channel* dirty: the loop flushes it at the end of its iteration (lock held).

        *burst*: a one-way send, likely followed by more; the loop, woken for it alone, lets
        the sender go on for a moment before it writes, so that the burst leaves in one write.
        """
        self._dirty[channel] = None
        # An awake loop (reading, flushing, or writing with the lock let go) looks at the dirty
        # set before it sleeps again: only a sleeping one needs the wake-up byte.
        if self._sleeping:
            if burst:
                self._burst = True
            self._wake()

    @property
    def woken(self) -> bool:
        """Whether the loop is awake or already woken (lock held): a channel marked dirty now
        is flushed without another wake-up."""
        return not self._sleeping or self._wake_pending

    def wakes_before(self, deadline: float | None) -> bool:
        """Whether the loop looks at the deadlines again by *deadline* without a wake-up (lock
        held): its select ends no later than that, or it is awake and recomputes them."""
        return deadline is None or deadline >= self._sleep_until

    def wake(self) -> None:
        """Make the loop recompute its deadlines now (lock held)."""
        if self._sleeping:  # an awake loop recomputes them before it sleeps
            self._wake()

    def _wake(self) -> None:
        # One byte per batch: the flag (guarded by the lock) keeps a busy sender from filling
        # the socket pair; the loop clears it when it drains the pair.
        if self._wake_pending or self._stopped:
            return
        self._wake_pending = True
        with contextlib.suppress(BlockingIOError, InterruptedError):
            self._wake_w.send(b"\0")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop: every channel still open is closed, then the thread ends; join it."""
        with self.lock:
            if not self._stopping:
                self._calls.append(self._set_stopping)
                self._wake()
        if not self.in_loop_thread():
            self._thread.join(timeout)

    @contextlib.contextmanager
    def unlocked(self) -> Iterator[None]:
        """I/O thread only, lock held once: release the lock for a system call that touches no
        core state (writing buffers the core already handed over), so that application threads
        can queue their next messages meanwhile instead of waiting for the kernel."""
        self.lock.release()
        try:
            yield
        finally:
            self.lock.acquire()

    def _set_stopping(self) -> None:
        self._stopping = True

    # --- for the I/O thread (lock held) -------------------------------------------------------

    def add(self, channel: Channel, mask: int) -> None:
        """Register *channel* with interest *mask*."""
        self._channels[channel] = 0
        self.set_interest(channel, mask)

    def set_interest(self, channel: Channel, mask: int) -> None:
        """Change what the selector watches *channel*'s socket for (0: nothing)."""
        current = self._channels.get(channel)
        if current is None or current == mask or channel.sock is None:
            return
        if mask == 0:
            self._selector.unregister(channel.sock)
        elif current == 0:
            self._selector.register(channel.sock, mask, channel)
        else:
            self._selector.modify(channel.sock, mask, channel)
        self._channels[channel] = mask

    def remove(self, channel: Channel) -> None:
        """Forget *channel* (before its socket closes)."""
        mask = self._channels.pop(channel, None)
        self._dirty.pop(channel, None)
        if mask and channel.sock is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(channel.sock)

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self.lock:
                    if self._stopping:
                        break
                    timeout = self._timeout()
                    self._sleep_until = time.monotonic() + timeout
                    self._sleeping = True
                ready = self._selector.select(timeout)
                # Awake from here on (a plain store; the lock is taken next and the dirty set
                # read under it): senders now just mark their channel dirty.
                self._sleeping = False
                if self._burst:
                    self._burst = False
                    if len(ready) == 1 and ready[0][0].data is None:
                        # Woken by a one-way send alone: give the GIL back before taking the
                        # lock, so that a sender in a burst queues more messages for this one
                        # write (a write per message otherwise: the wake-up's syscall hands
                        # this thread the GIL after every message).  Not for other wake-ups
                        # (a close, a submitted call): their thread waits for this one, and the
                        # hand-over back and forth costs them.
                        time.sleep(0)
                with self.lock:
                    now = time.monotonic()
                    for key, mask in ready:
                        channel = key.data
                        if channel is None:
                            self._drain_wakeup()
                        elif channel in self._channels:
                            self._guard(channel, channel.on_ready, mask, now)
                    self._run_calls()
                    now = time.monotonic()
                    for channel in list(self._channels):
                        deadline = channel.deadline()
                        if deadline is not None and deadline <= now:
                            self._guard(channel, channel.on_timer, now)
                    self._flush_dirty(now)
                    self.cond.notify_all()
        except BaseException:  # pragma: no cover - a bug in the loop itself
            logger.exception("msgtrans I/O loop crashed; closing every socket")
        finally:
            self._shutdown()

    def _timeout(self) -> float:
        if self._calls or self._dirty:
            return 0.0
        now = time.monotonic()
        soonest = now + _MAX_SLEEP
        for channel in self._channels:
            deadline = channel.deadline()
            if deadline is not None and deadline < soonest:
                soonest = deadline
        return max(0.0, soonest - now)

    def _drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_r.recv(4096):
                pass
        self._wake_pending = False

    def _run_calls(self) -> None:
        while self._calls:
            fn = self._calls.popleft()
            try:
                fn()
            except Exception:
                logger.exception("msgtrans I/O loop: a submitted call failed")

    def _flush_dirty(self, now: float) -> None:
        for _ in range(_FLUSH_ROUNDS):
            if not self._dirty:
                return
            dirty = list(self._dirty)
            self._dirty.clear()
            for channel in dirty:
                if channel in self._channels:
                    self._guard(channel, channel.flush, now)

    def _guard(self, channel: Channel, fn: Callable[..., None], *args: Any) -> None:
        # An exception escaping a hook would end the thread and strand every other socket;
        # drop that one channel instead (its sessions learn why through the core).
        try:
            fn(*args)
        except Exception:
            logger.exception("msgtrans I/O loop: driver error; dropping %r", channel)
            with contextlib.suppress(Exception):
                channel.fail()
            self.remove(channel)

    def _shutdown(self) -> None:
        with self.lock:
            self._stopping = True
            self._run_calls()
            for channel in list(self._channels):
                with contextlib.suppress(Exception):
                    channel.close_now()
                self.remove(channel)
            self._dirty.clear()
            self._stopped = True
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
            self.cond.notify_all()
