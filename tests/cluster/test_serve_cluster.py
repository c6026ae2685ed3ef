"""Two ``python -m msgtrans serve --redis URL`` nodes and ``python -m msgtrans publish``: a
message published once reaches the clients of both nodes, also after Redis restarted."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

import msgtrans.io_sync as mt
from msgtrans.__main__ import main

from ..interop.serverproc import serve
from .redis_server import RedisServer, free_port

pytestmark = [pytest.mark.network]

WAIT = 15.0


def _published_until_all_got(url: str, sessions: list[mt.Session], data: str) -> None:
    """Publish *data* until every session received it (the nodes subscribe in the moment
    after they start listening, or after Redis came back), bounded by WAIT."""
    waiting = list(sessions)
    deadline = time.monotonic() + WAIT
    while waiting:
        assert time.monotonic() < deadline, f"{len(waiting)} client(s) never got {data!r}"
        assert main(["publish", "--redis", url, data]) == 0
        for session in list(waiting):
            with contextlib.suppress(mt.TransportTimeoutError):
                message = session.receive(timeout=0.2)
                assert bytes(message.payload) == data.encode()
                waiting.remove(session)


@contextlib.contextmanager
def clients(*urls: str) -> Iterator[list[mt.Session]]:
    with mt.Transport.builder().build() as transport:
        yield [transport.connect(url) for url in urls]


def test_publish_reaches_the_clients_of_two_serve_nodes_and_survives_a_redis_restart(
        redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    url = redis_server.url
    with serve("--tcp", "127.0.0.1:0", "--redis", url) as (_p1, one), \
            serve("--tcp", "127.0.0.1:0", "--redis", url, "--backend", "sync") as (_p2, two), \
            clients(f"tcp://{one['tcp']}", f"tcp://{two['tcp']}") as sessions:
        _published_until_all_got(url, sessions, "hello cluster")
        assert "on 2 node(s)" in capsys.readouterr().out
        redis_server.restart()
        _published_until_all_got(url, sessions, "after the restart")


def test_serve_workers_are_backplane_nodes_each(
        redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    # Two worker processes on one port, each its own node: a publish reaches the clients of
    # both (Redis counts two subscribers), whichever worker the kernel gave each connection.
    url = redis_server.url
    port = free_port()
    with serve("--tcp", f"127.0.0.1:{port}", "--workers", "2", "--redis", url) as (_p, line), \
            clients(*[f"tcp://{line['tcp']}"] * 8) as sessions:
        _published_until_all_got(url, sessions, "to every worker")
        deadline = time.monotonic() + WAIT
        while "on 2 node(s)" not in capsys.readouterr().out:
            assert time.monotonic() < deadline, "the two workers never both subscribed"
            assert main(["publish", "--redis", url, "count"]) == 0
