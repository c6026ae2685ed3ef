"""Every program in ``examples/`` (the ones docs/backends.md shows) runs, prints the reply and
exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .interop.serverproc import ROOT

pytestmark = pytest.mark.network

TIMEOUT = 60.0  # seconds for the interpreter to start, import, and run the whole example


@pytest.mark.parametrize("backend", ["asyncio", "trio", "sync"])
def test_example_runs(backend: str) -> None:
    if backend == "trio":
        pytest.importorskip("trio")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    # subprocess.run kills the child when the timeout expires.
    result = subprocess.run([sys.executable, str(ROOT / "examples" / f"{backend}_echo.py")],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "echo: hello", "one-way", "shutdown: 1 closed cleanly, 0 forced",
    ]


def test_pool_example_runs() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "asyncio_pool.py")],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6, lines
    grown = re.fullmatch(r"pool: grew from 2 to (\d+) sessions \((\d+) growth steps\)", lines[0])
    assert grown is not None and 2 < int(grown[1]) <= 16 and int(grown[2]) >= 1, lines[0]
    assert lines[1] == "big request answered: b'xxxxxxxx'"
    # A refused TCP connection is closed by the server: the client learns it on first use.
    assert lines[2].startswith("the 21st session: connection."), lines[2]
    assert lines[3] == "server: 201 messages in, 1 refused at max_sessions"
    assert lines[4] == "client: 201 requests timed"
    assert re.fullmatch(r"msgtrans_pool_expansions_total(\{[^}]*\})? \d+(\.0)?", lines[5]), lines[5]


def test_reconnect_example_runs() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "reconnect.py")],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "echo: before the restart",
        "disconnected (closed by the server), 0 messages lost unsent",
        "while down: connection.closed, retryable=True",
        "reconnected after 1 attempt(s)",
        "echo: after the restart",
        "reconnects: 1, metrics: {'tcp': 1}",
    ]


def test_docs_show_the_examples_as_they_are() -> None:
    """docs/backends.md shows each example verbatim, so what the page shows is what runs."""
    page = (ROOT / "docs" / "backends.md").read_text(encoding="utf-8")
    for backend in ("asyncio", "trio", "sync"):
        source = (ROOT / "examples" / f"{backend}_echo.py").read_text(encoding="utf-8")
        assert f"```python\n{source.rstrip()}\n```" in page, backend


def test_admission_example_runs() -> None:
    """examples/admission.py: the hook refuses /admin without a token with an HTTP 403 (the
    client sees a handshake error), lets it through with one, and the refusal is counted."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "admission.py")],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "echo: hello", "/admin without a token: connection.handshake", "echo: admin",
        "refused: {'admission': 1}",
    ]


@pytest.mark.parametrize("backend", ["asyncio", "trio", "sync"])
def test_getting_started_example_runs(backend: str) -> None:
    """docs/getting_started.md's programs: a server on tcp and ws, a request over each."""
    if backend == "trio":
        pytest.importorskip("trio")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    script = ROOT / "examples" / f"getting_started_{backend}.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=TIMEOUT, cwd=ROOT, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["tcp: HELLO", "ws: HELLO"]


def test_getting_started_includes_the_examples() -> None:
    """The page includes each program with pymdownx.snippets: the site shows the file that runs."""
    page = (ROOT / "docs" / "getting_started.md").read_text(encoding="utf-8")
    for backend in ("asyncio", "trio", "sync"):
        assert f'--8<-- "examples/getting_started_{backend}.py"' in page, backend


# --- the plan's examples (issue 15) ----------------------------------------------------------


def run_example(name: str, *args: str) -> list[str]:
    """Run examples/*name* with *args*; assert it exited 0 by itself; its stdout's lines."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def test_high_performance_server_example_runs() -> None:
    """Two workers serve tcp, ws and quic; the batches are echoed in order; one scrape of the
    supervisor's /metrics shows every worker's messages (merged); SIGTERM stops it cleanly."""
    lines = run_example("high_performance_server.py", "--rounds", "5", "--sessions", "3")
    assert re.fullmatch(r"server: serving tcp://127\.0\.0\.1:\d+ ws://127\.0\.0\.1:\d+/ "
                        r"quic://127\.0\.0\.1:\d+ with 2 workers, metrics on "
                        r"http://127\.0\.0\.1:\d+/metrics", lines[0]), lines[0]
    for i, name in enumerate(("tcp", "ws", "quic"), 1):
        assert lines[i].startswith(f"{name}: 1500 messages echoed in batches of 100"), lines[i]
    assert re.fullmatch(r"sessions answered by [12] worker process\(es\)", lines[4]), lines[4]
    assert lines[5].startswith("/metrics (merged over the workers)"), lines[5]
    # 3 protocols x 3 sessions x (5 batches of 100 + 1 request), counted by the workers.
    sample = '  msgtrans_messages_total{direction="in"} '
    merged = [line for line in lines if line.startswith(sample)]
    assert merged and float(merged[0].rsplit(" ", 1)[1]) >= 4509, lines
    assert re.fullmatch(r"server: stopped: \d+ closed cleanly, 0 forced, 4509 messages in",
                        lines[-2]), lines[-2]
    assert lines[-1] == "server exit status: 0"


def test_connection_pool_tuning_example_runs() -> None:
    """Both pools' timelines and summaries print; the smart pool grows in fewer steps."""
    lines = run_example("connection_pool_tuning.py", "--seconds", "0.6", "--trickle", "0.1")
    assert "== fixed +2" in lines and "== smart" in lines, lines
    summary = re.compile(r"(fixed \+2|smart): (\d+) requests in [\d.]+s, slowest \d+ ms, "
                         r"[\d.]+ leases waiting on average, peak (\d+) connections after "
                         r"(\d+) expansions; waste: \d+% idle during the burst, \d+ of \d+ "
                         r"idle after it")
    found = {m[1]: m for m in map(summary.fullmatch, lines) if m is not None}
    assert set(found) == {"fixed +2", "smart"}, lines
    for m in found.values():
        assert int(m[2]) > 0 and int(m[3]) > 2, m[0]
    assert int(found["smart"][4]) < int(found["fixed +2"][4]), lines
    rows = [line for line in lines if re.fullmatch(r"\s+[\d.]+s(\s+\d+){5}", line)]
    assert len(rows) >= 6, lines  # a timeline for each pool
    assert lines[-1].startswith("client pool events by trigger: {"), lines[-1]


def test_zero_copy_example_runs() -> None:
    """Big payloads arrive as pooled views, zero-copy; releasing them keeps the pool's hit rate
    up, keeping them does not."""
    lines = run_example("zero_copy_messaging.py", "--messages", "6")
    rate = re.compile(r"(.+): zero-copy hit rate (\d+)% \((\d+)/(\d+)\), [\d.]+ KiB copied per "
                      r"large payload, buffer pool hit rate (\d+)% .*")
    runs = {m[1]: m for m in map(rate.fullmatch, lines) if m is not None}
    assert set(runs) == {"tcp", "ws", "tcp, never released"}, lines
    for m in runs.values():
        assert int(m[2]) > 0 and m[3] == m[4] == "6", m[0]
    assert int(runs["tcp"][5]) > int(runs["tcp, never released"][5]), lines
    assert lines[0] == ("tcp: 6 payloads of 1-4 MiB and one of 100 KiB, checksums ok; "
                        "arrived: 6 as view (pooled), 1 as bytes")
    assert re.fullmatch(r"process totals: zero_copy_hit_rate [1-9]\d*%, "
                        r"buffer_hit_rate \d+%", lines[-1]), lines[-1]


CHAT = [
    "* alice joined #lobby                        -> alice",
    "* bob joined #lobby                          -> alice, bob",
    "* carol joined #lobby                        -> alice, bob, carol",
    "* carol joined #rust                         -> carol",
    "[#lobby] alice: hi all                       -> alice, bob, carol",
    "[#lobby] bob: hello alice                    -> alice, bob, carol",
    "[#rust] carol: anyone here?                  -> carol",
    "* bob joined #rust                           -> carol, bob",
    "[#rust] carol: bob! 1.80 is out              -> carol, bob",
    "* bob left #lobby                            -> alice, carol",
    "[#lobby] alice: where did bob go?            -> alice, carol",
    "! join #lobby first                          -> bob",
]


def test_chat_server_example_runs() -> None:
    """Every line reaches exactly the members of its room, and the replies say who is in."""
    lines = run_example("chat_server.py")
    assert [line for line in lines if "->" in line] == CHAT
    assert "  (bob: ok #rust: bob, carol here)" in lines
    assert lines[-3:] == ["who is in #lobby: ok #lobby: alice, carol here",
                          "who is in #rust: ok #rust: bob, carol here",
                          "chat over: 1 node(s), every line reached exactly its room"]


def test_chat_server_example_runs_as_a_cluster() -> None:
    """With --redis: two nodes, alice on one, bob and carol on the other; the same lines."""
    pytest.importorskip("redis")
    from .cluster.redis_server import RedisServer

    redis = RedisServer()
    redis.start()
    try:
        lines = run_example("chat_server.py", "--redis", redis.url)
    finally:
        redis.close()
    assert lines[:3] == ["alice connected to node 1: ok you are alice",
                         "bob connected to node 2: ok you are bob",
                         "carol connected to node 2: ok you are carol"]
    assert [line for line in lines if "->" in line] == CHAT
    assert lines[-1] == "chat over: 2 node(s), every line reached exactly its room"


def test_rpc_client_example_runs() -> None:
    """The idempotent call in flight at the restart is sent again and answered by the new
    server; the other fails with a retryable error, reported; the calls after it work."""
    lines = run_example("rpc_client.py")
    assert lines[:6] == [
        "add(2, 3) -> 5", "upper('hello') -> HELLO", "incr() -> 1", "incr() -> 2",
        "divide(1, 0) -> RpcError: no method 'divide'",
        "-- the server stops (in-flight calls unanswered) and starts again, same port",
    ]
    assert set(lines[6:10]) == {
        "slow_incr() -> failed: connection.closed (retryable=True), not retried: not idempotent",
        "[link] disconnected (closed by the server)",
        "[link] reconnected after 1 attempt(s)",
        "slow_add(40, 2) -> 42 (sent again after the reconnect)",
    }
    assert lines[10:] == [
        "incr() -> 1", "add(1, 1) -> 2",
        "reconnects: 1, metrics: {'tcp': 1}, calls answered by the new server: 1 slow, "
        "counter 1",
    ]


def test_examples_page_includes_every_example() -> None:
    """docs/examples.md lists every program in examples/ and includes the plan's examples."""
    page = (ROOT / "docs" / "examples.md").read_text(encoding="utf-8")
    for path in sorted((ROOT / "examples").glob("*.py")):
        assert f"examples/{path.name}" in page, path.name
    for name in ("high_performance_server", "connection_pool_tuning", "zero_copy_messaging",
                 "chat_server", "rpc_client"):
        assert f'--8<-- "examples/{name}.py"' in page, name
