"""The asyncio backend's link to a Redis backplane: redis-py's asyncio client, one task that
reads the subscriptions and one that publishes, both on the transport's loop (nothing blocks
it: a slow or absent Redis only delays the backplane, never local delivery)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from .._driver.backplane import (
    BACKPLANE_RECONNECT,
    BACKPLANE_TIMEOUT,
    HEALTH_INTERVAL,
    READ_POLL,
    Health,
    LinkState,
    check_redis_url,
    client_options,
    redis_module,
)
from ..core.backplane import BackplaneNode, Envelope
from ..core.errors import TransportError
from ..core.reconnect import ReconnectPolicy

logger = logging.getLogger("msgtrans.backplane")


class AsyncRedisLink:
    """A node's link to Redis on the running asyncio loop.

    Args:
        url: the Redis URL.
        node: the node (used from the loop only).
        deliver: called with each envelope from another node, on the loop.
        policy: the reconnect policy (default ``BACKPLANE_RECONNECT``).
        health_interval: seconds of silence before the link pings Redis (default
            ``HEALTH_INTERVAL``).
        timeout: seconds for connecting, for every command and for a ping's answer (default
            ``BACKPLANE_TIMEOUT``).
    """

    def __init__(self, url: str, node: BackplaneNode, deliver: Callable[[Envelope], None], *,
                 policy: ReconnectPolicy = BACKPLANE_RECONNECT,
                 health_interval: float = HEALTH_INTERVAL,
                 timeout: float = BACKPLANE_TIMEOUT) -> None:
        self.url = check_redis_url(url)
        self.health_interval = health_interval
        self.timeout = timeout
        self._redis = redis_module()
        self.node = node
        self._deliver = deliver
        self._state = LinkState(node, policy)
        self._wake = asyncio.Event()
        self._up = asyncio.Event()
        self._changes: list[tuple[bool, list[str]]] = []
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._pubsub: Any = None
        self._closed = False

    def start(self) -> None:
        """Start the link's task on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def kick(self) -> None:
        """Outbound envelopes were queued on the node: wake the publisher."""
        self._wake.set()

    def changed(self, subscribe: list[str], unsubscribe: list[str]) -> None:
        """The node's subscriptions changed while the link is up."""
        if subscribe:
            self._changes.append((True, subscribe))
        if unsubscribe:
            self._changes.append((False, unsubscribe))
        self._wake.set()

    @property
    def connected(self) -> bool:
        """Whether the link is up."""
        return self._up.is_set()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the link is up or *timeout* seconds passed; return whether it is up."""
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    @property
    def last_error(self) -> TransportError | None:
        """What broke the link last, or ``None``."""
        return self._state.last_error

    async def aclose(self) -> None:
        """Stop the link and close its clients."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._disconnect()

    async def _disconnect(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        self._up.clear()
        for closing in (pubsub, client):
            if closing is not None:
                try:
                    await closing.aclose()
                except Exception:  # a broken client may fail to close; it is gone
                    logger.debug("closing a Redis client failed", exc_info=True)

    async def _run(self) -> None:
        while not self._closed:
            was_up = False
            try:
                await self._connect()
                was_up = True
                reader = asyncio.ensure_future(self._read())
                writer = asyncio.ensure_future(self._write())
                try:
                    done, _ = await asyncio.wait({reader, writer},
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (reader, writer):
                        task.cancel()
                    for task in (reader, writer):
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                for task in done:
                    task.result()  # re-raise what ended it
                raise ConnectionError("the Redis link ended")  # pragma: no cover
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure of the link is a reconnect
                await self._disconnect()
                delay = self._state.down(exc, was_up)
                await asyncio.sleep(delay)

    async def _connect(self) -> None:
        client = self._redis.asyncio.Redis.from_url(self.url, **client_options(self.timeout))
        try:
            await asyncio.wait_for(client.ping(), self.timeout)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            channels = self._state.up()
            self._changes.clear()
            await pubsub.subscribe(*channels)
        except BaseException:
            await client.aclose()
            raise
        self._client, self._pubsub = client, pubsub
        self._up.set()
        self._wake.set()

    async def _read(self) -> None:
        pubsub = self._pubsub
        loop = asyncio.get_running_loop()
        health = Health(loop.time(), self.health_interval, self.timeout)
        while True:
            message = await pubsub.get_message(timeout=READ_POLL)
            if message is None:
                if health.quiet(loop.time()):
                    await pubsub.ping()
                continue
            health.message(loop.time())
            if message.get("type") != "message":
                continue
            channel = message["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode("utf-8", "replace")
            envelope = self.node.received(channel, message["data"])
            if envelope is not None:
                try:
                    self._deliver(envelope)
                except Exception:  # one bad delivery must not end the link
                    logger.exception("backplane delivery failed")

    async def _write(self) -> None:
        client, pubsub = self._client, self._pubsub
        while True:
            await self._wake.wait()
            self._wake.clear()
            changes, self._changes = self._changes, []
            for subscribe, channels in changes:
                await (pubsub.subscribe if subscribe else pubsub.unsubscribe)(*channels)
            outbound = self.node.take_outbound()
            if not outbound:
                continue
            try:
                if len(outbound) == 1:
                    await client.publish(*outbound[0])
                else:
                    pipe = client.pipeline(transaction=False)
                    for channel, data in outbound:
                        pipe.publish(channel, data)
                    await pipe.execute()
            except BaseException:
                self.node.requeue(outbound)
                self.node.link_down()
                self._state.report_drops()
                raise
