"""The Redis backplane links against a real redis-server: the asyncio link (redis-py's asyncio
client) and the threaded one (its blocking client; the blocking and trio backends use it), with
one test body for both.  Outages are a killed redis-server, or a fault proxy in front of one
node only (so that the other stays subscribed and sees what the first buffered)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from msgtrans._driver.backplane import ThreadedRedisLink, check_redis_url
from msgtrans.core.backplane import BackplaneNode, Envelope, TargetKind
from msgtrans.core.errors import ConfigurationError
from msgtrans.core.reconnect import ReconnectPolicy
from msgtrans.io_asyncio._backplane import AsyncRedisLink

from ..faults.tcp_proxy import TcpProxy
from .redis_server import RedisServer

pytestmark = [pytest.mark.network]

WAIT = 10.0
FAST = ReconnectPolicy(initial_delay=0.05, max_delay=0.3, jitter=0.0)


class Inbox:
    """Envelopes delivered to one node, waited for from the test's thread."""

    def __init__(self) -> None:
        self.items: list[Envelope] = []
        self._cond = threading.Condition()

    def __call__(self, envelope: Envelope) -> None:
        with self._cond:
            self.items.append(envelope)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = WAIT) -> list[Envelope]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= count, timeout), self.items
            return list(self.items)


class Loop:
    """An asyncio loop in a thread, for driving the asyncio link from a plain test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, call: Callable[[], Any]) -> Any:
        async def wrapped() -> Any:
            result = call()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        future: Future[Any] = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        return future.result(WAIT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


class Node:
    """A node and its link, the same methods for both kinds of link."""

    def __init__(self, kind: str, url: str, node_id: str, loop: Loop | None, **node: Any
                 ) -> None:
        self.kind = kind
        self.node = BackplaneNode(node_id, **node)
        self.inbox = Inbox()
        self._loop = loop
        self.link: Any
        if kind == "asyncio":
            assert loop is not None
            self.link = loop.run(lambda: AsyncRedisLink(url, self.node, self.inbox, policy=FAST,
                                                        health_interval=0.5, timeout=1.0))
            loop.run(self.link.start)
        else:
            self.link = ThreadedRedisLink(url, self.node, self.inbox, policy=FAST,
                                          health_interval=0.5, timeout=1.0)
            self.link.start()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run *fn* where the node may be touched (the loop, or under the link's lock)."""
        if self._loop is not None:
            return self._loop.run(fn)
        with self.link.lock:
            return fn()

    def wait_connected(self) -> None:
        if self._loop is not None:
            assert self._loop.run(lambda: self.link.wait_connected(WAIT))
        else:
            assert self.link.wait_connected(WAIT)

    def connected(self) -> bool:
        return bool(self.call(lambda: self.link.connected))

    def publish(self, fn: Callable[[BackplaneNode], bool]) -> bool:
        def go() -> bool:
            ok = fn(self.node)
            self.link.kick()
            return ok

        return bool(self.call(go))

    def join(self, session: int, group: str) -> None:
        self.call(lambda: self.link.changed(self.node.join(session, group), []))

    def stats(self) -> Any:
        return self.call(self.node.stats)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.run(self.link.aclose)
        else:
            self.link.close()


@pytest.fixture(params=["asyncio", "threads"])
def make_node(request: pytest.FixtureRequest) -> Iterator[Callable[..., Node]]:
    loop = Loop() if request.param == "asyncio" else None
    nodes: list[Node] = []

    def make(url: str, node_id: str, **node: Any) -> Node:
        made = Node(request.param, url, node_id, loop, **node)
        nodes.append(made)
        return made

    try:
        yield make
    finally:
        for made in nodes:
            made.close()
        if loop is not None:
            loop.close()


def wait_until(check: Callable[[], bool], timeout: float = WAIT) -> None:
    event = threading.Event()
    end = threading.Event()
    timer = threading.Timer(timeout, end.set)
    timer.start()
    try:
        while not check():
            assert not end.is_set(), "timed out"
            event.wait(0.01)
    finally:
        timer.cancel()


def test_two_nodes_reach_each_other_by_all_group_and_session(
        redis_server: RedisServer, make_node: Callable[..., Node]) -> None:
    a = make_node(redis_server.url, "a")
    b = make_node(redis_server.url, "b")
    a.wait_connected()
    b.wait_connected()
    b.join(7, "room")
    # The subscription is in place once a message sent to it after the join arrives.
    wait_until(lambda: bool(a.publish(lambda n: n.to_group("room", b"probe")))
               and bool(b.inbox.items))
    a.publish(lambda n: n.to_all(b"everyone", biz_type=9))
    a.publish(lambda n: n.to_group("room", b"room only"))
    a.publish(lambda n: n.to_session("b", 7, b"just you"))
    wait_until(lambda: len([e for e in b.inbox.items if e.payload != b"probe"]) >= 3)
    got = [e for e in b.inbox.items if e.payload != b"probe"]
    assert [(e.kind, e.target, e.payload) for e in got] == [
        (TargetKind.ALL, "", b"everyone"), (TargetKind.GROUP, "room", b"room only"),
        (TargetKind.SESSION, "7", b"just you")]
    assert got[0].biz_type == 9 and got[0].origin == "a"
    assert a.inbox.items == []  # its own envelopes came back from Redis and were ignored


def test_a_redis_outage_buffers_drops_past_the_bound_logs_once_and_recovers(
        redis_server: RedisServer, make_node: Callable[..., Node],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="msgtrans.backplane")
    a = make_node(redis_server.url, "a", max_buffered=3)
    b = make_node(redis_server.url, "b")
    a.wait_connected()
    b.wait_connected()
    redis_server.stop()
    wait_until(lambda: not a.connected())
    sent = [a.publish(lambda n, i=i: n.to_all(bytes([i]))) for i in range(5)]
    assert sent == [True, True, True, False, False]
    assert a.stats().dropped == 2
    redis_server.start()
    a.wait_connected()
    b.wait_connected()
    wait_until(lambda: a.stats().buffered == 0)
    # After both are back, new messages flow again (what a buffered while b was still away may
    # or may not reach b: pub/sub keeps nothing for a subscriber that is not there).
    wait_until(lambda: a.publish(lambda n: n.to_all(b"after")) and any(
        e.payload == b"after" for e in b.inbox.items))
    stats = a.stats()
    assert stats.outages >= 1 and stats.dropped == 2
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1, [r.getMessage() for r in drops]
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    assert any("reconnected" in r.getMessage() for r in caplog.records)


def test_what_a_cut_off_node_buffered_reaches_the_others_when_it_is_back(
        redis_server: RedisServer, make_node: Callable[..., Node]) -> None:
    with TcpProxy(("127.0.0.1", redis_server.port)) as proxy:
        host, port = proxy.address
        a = make_node(f"redis://{host}:{port}/0", "a")
        b = make_node(redis_server.url, "b")
        a.wait_connected()
        b.wait_connected()
        proxy.blackhole()
        proxy.break_all(reset=True)
        wait_until(lambda: not a.connected())
        for i in range(3):
            a.publish(lambda n, i=i: n.to_all(b"held %d" % i))
        assert a.stats().buffered == 3
        proxy.restore()
        got = b.inbox.wait(3)
        assert [e.payload for e in got] == [b"held 0", b"held 1", b"held 2"]
        assert a.stats().dropped == 0


def test_a_silent_redis_is_noticed_by_the_health_ping(
        redis_server: RedisServer, make_node: Callable[..., Node]) -> None:
    with TcpProxy(("127.0.0.1", redis_server.port)) as proxy:
        host, port = proxy.address
        a = make_node(f"redis://{host}:{port}/0", "a")
        a.wait_connected()
        proxy.blackhole()  # no FIN, no RST: only the missing pong tells
        wait_until(lambda: not a.connected(), timeout=WAIT)
        proxy.restore()
        a.wait_connected()


def test_bad_urls_are_refused() -> None:
    assert check_redis_url("rediss://h:1") == "rediss://h:1"
    for bad in ("http://h", "", None):
        with pytest.raises(ConfigurationError) as info:
            check_redis_url(bad)
        assert info.value.field == "backplane"
