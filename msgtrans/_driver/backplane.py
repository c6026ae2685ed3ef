"""What every backend's Redis backplane link shares: the URL check, the reconnect policy, the
client options, the drop log line, and the thread-based link the blocking and trio backends
use (redis-py's blocking client in two threads: one reads the subscriptions, one publishes).

The asyncio backend has its own link on redis-py's asyncio client
(``msgtrans.io_asyncio._backplane``); trio uses the threads here, since redis-py has no trio
client and a thread that blocks in a socket read is the honest way to wait on one from trio.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..core.backplane import BackplaneNode, Envelope
from ..core.errors import ConfigurationError, TransportConnectionError, TransportError
from ..core.reconnect import GiveUp, ReconnectMachine, ReconnectPolicy

logger = logging.getLogger("msgtrans.backplane")

#: How a node reconnects to Redis: quickly at first, never slower than every 5 s, never gives
#: up (local delivery goes on meanwhile).
BACKPLANE_RECONNECT = ReconnectPolicy(initial_delay=0.1, max_delay=5.0, stable_after=5.0)
#: Seconds to connect to Redis and for every command before the link counts as broken.
BACKPLANE_TIMEOUT = 5.0
#: Seconds a subscription read waits before checking the link's health and whether it is
#: being closed.
READ_POLL = 0.5
#: Seconds without a message from Redis after which the subscription connection is pinged;
#: no answer within :data:`BACKPLANE_TIMEOUT` means the link is broken (a silent network cut
#: is noticed, not waited on for ever).
HEALTH_INTERVAL = 5.0
_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: object) -> str:
    """Return *url* if it is a Redis URL (``redis://``, ``rediss://`` or ``unix://``).

    Raises:
        ConfigurationError: it is not (``field`` is ``"backplane"``).
    """
    if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
        raise ConfigurationError("backplane", "must be a redis://, rediss:// or unix:// URL, "
                                 f"got {url!r}")
    return url


def redis_module() -> Any:
    """The imported ``redis`` package, with its ``redis.asyncio`` client.

    Raises:
        ConfigurationError: redis-py is not installed (code
            ``configuration.missing_dependency``).
    """
    try:
        import redis
        import redis.asyncio
    except ImportError:  # pragma: no cover - redis is a test dependency
        raise ConfigurationError(
            "backplane", "the Redis backplane needs redis-py: pip install 'msgtrans[redis]'",
            code="configuration.missing_dependency") from None
    return redis


def client_options(timeout: float = BACKPLANE_TIMEOUT) -> dict[str, Any]:
    """The redis-py client options every link uses: connect and commands bounded by *timeout*
    seconds, and no retries inside redis-py (the link reconnects itself, with its policy and
    its counts)."""
    return {"socket_connect_timeout": timeout, "socket_timeout": timeout,
            "socket_keepalive": True, "retry_on_timeout": False, "retry": None,
            "health_check_interval": 0}


class Health:
    """When the subscription connection must be pinged and when its silence means it broke
    (pure: the caller passes the time)."""

    def __init__(self, now: float, interval: float = HEALTH_INTERVAL,
                 timeout: float = BACKPLANE_TIMEOUT) -> None:
        self.interval = interval
        self.timeout = timeout
        self.heard = now
        self.pinged: float | None = None

    def message(self, now: float) -> None:
        """Something arrived from Redis at *now*."""
        self.heard = now
        self.pinged = None

    def quiet(self, now: float) -> bool:
        """Nothing arrived by *now*: return whether to send a ping now.

        Raises:
            TransportConnectionError: a ping went unanswered for ``timeout`` seconds.
        """
        if self.pinged is not None:
            if now - self.pinged >= self.timeout:
                raise TransportConnectionError(
                    f"Redis did not answer a ping in {self.timeout:g} s",
                    code="connection.failed", retryable=True, retry_after=0.1)
            return False
        if now - self.heard >= self.interval:
            self.pinged = now
            return True
        return False


def link_error(exc: BaseException) -> TransportError:
    """*exc* (a redis-py or socket error) as a retryable ``TransportConnectionError``."""
    if isinstance(exc, TransportError):
        return exc
    return TransportConnectionError(f"the Redis backplane failed: {exc!r}",
                                    code="connection.failed", retryable=True, retry_after=0.1)


class LinkState:
    """The reconnect bookkeeping of one link (the same for every implementation)."""

    def __init__(self, node: BackplaneNode, policy: ReconnectPolicy) -> None:
        self.node = node
        self.machine = ReconnectMachine(policy)
        self.last_error: TransportError | None = None
        self.connects = 0

    def up(self) -> list[str]:
        """The link connected: the channels to subscribe to."""
        self.machine.connected(time.monotonic())
        self.connects += 1
        self.report_drops()
        if self.connects > 1:
            logger.info("backplane %s: reconnected to Redis", self.node.node_id)
        return self.node.link_up()

    def down(self, exc: BaseException, was_up: bool) -> float:
        """The link broke (or could not connect) with *exc*: the seconds to wait before the next
        attempt (the policy never gives up: its ``max_attempts`` is ``None``)."""
        error = link_error(exc)
        self.last_error = error
        self.node.link_down()
        now = time.monotonic()
        decision = self.machine.lost(error, now) if was_up else self.machine.failed(error, now)
        if was_up or (self.connects == 0 and self.machine.attempt == 1):
            logger.warning("backplane %s: Redis unreachable (%s); local delivery goes on, "
                           "outbound messages are buffered", self.node.node_id, error.reason)
        if isinstance(decision, GiveUp):  # pragma: no cover - the policy has no max_attempts
            return BACKPLANE_RECONNECT.max_delay
        return decision.delay

    def report_drops(self) -> None:
        """Log one line when outbound envelopes were dropped (once per outage)."""
        dropped = self.node.take_drop_notice()
        if dropped is not None:
            logger.warning("backplane %s: %d outbound message(s) dropped (buffer full while "
                           "Redis was unreachable or slow; %d in all)", self.node.node_id,
                           dropped, self.node.dropped)


class ThreadedRedisLink:
    """A node's link to Redis through redis-py's blocking client, in two daemon threads.

    Args:
        url: the Redis URL.
        node: the node (every call on it is made under *lock*).
        deliver: called with each envelope from another node, in the reader thread, with
            *lock* not held.
        lock: the lock that guards *node* (the blocking backend's I/O lock, or one of its own).
        policy: the reconnect policy (default :data:`BACKPLANE_RECONNECT`).
        health_interval: seconds of silence before the link pings Redis (default
            :data:`HEALTH_INTERVAL`).
        timeout: seconds for connecting, for every command and for a ping's answer (default
            :data:`BACKPLANE_TIMEOUT`).
    """

    def __init__(self, url: str, node: BackplaneNode, deliver: Callable[[Envelope], None], *,
                 lock: threading.RLock | None = None,
                 policy: ReconnectPolicy = BACKPLANE_RECONNECT,
                 health_interval: float = HEALTH_INTERVAL,
                 timeout: float = BACKPLANE_TIMEOUT) -> None:
        self.url = check_redis_url(url)
        self.health_interval = health_interval
        self.timeout = timeout
        self._redis = redis_module()
        self.node = node
        self._deliver = deliver
        self.lock = lock if lock is not None else threading.RLock()
        self._state = LinkState(node, policy)
        self._wake = threading.Condition(self.lock)
        self._closed = threading.Event()
        self._connected = threading.Event()
        self._changes: list[tuple[bool, list[str]]] = []
        self._threads: list[threading.Thread] = []
        self._pubsub: Any = None
        self._client: Any = None

    # --- the application's side ----------------------------------------------------------------

    def start(self) -> None:
        """Start the threads (idempotent)."""
        if self._threads:
            return
        for name, target in (("reader", self._read_loop), ("writer", self._write_loop)):
            thread = threading.Thread(target=target, name=f"msgtrans-backplane-{name}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def kick(self) -> None:
        """Outbound envelopes were queued on the node: wake the writer."""
        with self._wake:
            self._wake.notify()

    def changed(self, subscribe: list[str], unsubscribe: list[str]) -> None:
        """The node's subscriptions changed while the link is up."""
        with self._wake:
            if subscribe:
                self._changes.append((True, subscribe))
            if unsubscribe:
                self._changes.append((False, unsubscribe))
            self._wake.notify()

    @property
    def connected(self) -> bool:
        """Whether the link is up."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the link is up or *timeout* seconds passed; return whether it is up."""
        return self._connected.wait(timeout)

    @property
    def last_error(self) -> TransportError | None:
        """What broke the link last, or ``None``."""
        return self._state.last_error

    def close(self, timeout: float = 2.0) -> None:
        """Stop both threads (waiting at most *timeout* seconds) and close the clients."""
        self._closed.set()
        with self._wake:
            self._wake.notify_all()
        self._disconnect()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    # --- the threads ---------------------------------------------------------------------------

    def _disconnect(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        self._connected.clear()
        for closing in (pubsub, client):
            if closing is not None:
                try:
                    closing.close()
                except Exception:  # closing a broken client may fail; it is gone
                    logger.debug("closing a Redis client failed", exc_info=True)

    def _connect(self) -> None:
        client = self._redis.Redis.from_url(self.url, **client_options(self.timeout))
        try:
            client.ping()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            with self.lock:
                channels = self._state.up()
                self._changes.clear()
            pubsub.subscribe(*channels)
        except BaseException:
            client.close()
            raise
        self._client, self._pubsub = client, pubsub
        self._connected.set()
        self.kick()

    def _read_loop(self) -> None:
        was_up = False
        health = Health(time.monotonic(), self.health_interval, self.timeout)
        while not self._closed.is_set():
            try:
                if self._pubsub is None:
                    self._connect()
                    was_up = True
                    health = Health(time.monotonic(), self.health_interval, self.timeout)
                message = self._pubsub.get_message(timeout=READ_POLL)
                now = time.monotonic()
                if message is None:
                    if health.quiet(now):
                        self._pubsub.ping()
                    continue
                health.message(now)
                if message.get("type") == "message":
                    self._on_message(message)
            except Exception as exc:  # every failure of the link is a reconnect
                if self._closed.is_set():
                    break
                self._disconnect()
                with self.lock:
                    delay = self._state.down(exc, was_up)
                was_up = False
                self._closed.wait(delay)

    def _on_message(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        with self.lock:
            envelope = self.node.received(channel, message["data"])
        if envelope is not None:
            try:
                self._deliver(envelope)
            except Exception:  # one bad delivery must not end the link
                logger.exception("backplane delivery failed")

    def _write_loop(self) -> None:
        while not self._closed.is_set():
            with self._wake:
                while not self._closed.is_set() and not (
                        self._connected.is_set() and (self._changes or self.node.stats().buffered)):
                    self._wake.wait(READ_POLL)
                if self._closed.is_set():
                    return
                changes, self._changes = self._changes, []
                outbound = self.node.take_outbound()
            client, pubsub = self._client, self._pubsub
            try:
                if client is None or pubsub is None:
                    raise ConnectionError("the Redis link is down")
                for subscribe, channels in changes:
                    (pubsub.subscribe if subscribe else pubsub.unsubscribe)(*channels)
                self._publish(client, outbound)
            except Exception as exc:  # the reader notices and reconnects
                logger.debug("backplane publish failed: %r", exc)
                with self.lock:
                    self.node.requeue(outbound)
                    self.node.link_down()
                    self._state.report_drops()
                self._connected.clear()
            outbound = []

    def _publish(self, client: Any, outbound: list[tuple[str, bytes]]) -> None:
        if not outbound:
            return
        if len(outbound) == 1:
            client.publish(*outbound[0])
        else:
            pipe = client.pipeline(transaction=False)
            for channel, data in outbound:
                pipe.publish(channel, data)
            pipe.execute()
        del outbound[:]
