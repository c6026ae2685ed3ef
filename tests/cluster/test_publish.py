"""``python -m msgtrans publish`` against a real redis-server and a subscribed node."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from msgtrans.__main__ import main
from msgtrans._driver.backplane import ThreadedRedisLink
from msgtrans.core.backplane import BackplaneNode, TargetKind
from msgtrans.core.reconnect import ReconnectPolicy

from .redis_server import RedisServer, free_port
from .test_backplane_links import Inbox, wait_until

pytestmark = [pytest.mark.network]


def test_publish_reaches_a_subscribed_node_for_all_and_for_its_group(
        redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    node = BackplaneNode("server-1")
    inbox = Inbox()
    link = ThreadedRedisLink(redis_server.url, node, inbox,
                             policy=ReconnectPolicy(initial_delay=0.05, max_delay=0.3))
    link.start()
    try:
        assert link.wait_connected(10)
        with link.lock:
            link.changed(node.join(1, "ops"), [])
        # As a subprocess, the way an operator runs it.
        done = subprocess.run(
            [sys.executable, "-m", "msgtrans", "publish", "--redis", redis_server.url,
             "--biz-type", "4", "to everyone"], check=False, capture_output=True, text=True,
            timeout=60)
        assert done.returncode == 0, done.stderr
        assert "on 1 node(s)" in done.stdout
        # The group's subscription may trail the join a moment: publish until it is there.
        wait_until(lambda: main(["publish", "--redis", redis_server.url, "--group", "ops",
                                 "to ops"]) == 0 and any(e.payload == b"to ops"
                                                         for e in inbox.items))
        got = inbox.wait(2)
        assert (got[0].kind, got[0].payload, got[0].biz_type) == (TargetKind.ALL,
                                                                  b"to everyone", 4)
        assert any(e.kind is TargetKind.GROUP and e.target == "ops" for e in got)
        assert main(["publish", "--redis", redis_server.url, "--group", "nobody", "x"]) == 0
        assert "group 'nobody' on 0 node(s)" in capsys.readouterr().out
    finally:
        link.close()


def test_publish_errors_exit_with_a_clear_message() -> None:
    err = io.StringIO()
    from msgtrans.cli import publish

    parser_args = ["publish", "--redis", "http://nope", "x"]
    assert main(parser_args) == 2
    dead = f"redis://127.0.0.1:{free_port()}/0"
    import argparse

    args = argparse.Namespace(redis=dead, data="x", group=None, biz_type=0, prefix="msgtrans",
                              timeout=1.0)
    assert publish.main(args, out=io.StringIO(), err=err) == 1
    assert "[connection.failed]" in err.getvalue()
    err = io.StringIO()
    args.group, args.redis = "", "redis://127.0.0.1:1/0"
    assert publish.main(args, out=io.StringIO(), err=err) == 2
    assert "group" in err.getvalue()
