"""Process management, timing and the bounded run loop.

Every server runs in its own process (``python -m msgtrans.bench._servers``), started before a
protocol's scenarios and killed in a ``finally``.  Every measurement is bounded by a count and a
time budget, and the whole coroutine by a hard timeout; a measurement that fails or times out is
recorded as an error, not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ._scenarios import CLIENTS, UVLOOP_CLIENTS

__all__ = ["Measurement", "Plan", "ServerProcess", "run_plan"]

START_TIMEOUT = 20.0


@dataclass(frozen=True)
class Plan:
    """How big a run is.  ``budget`` is the seconds each measurement may send for."""

    name: str
    budget: float
    small_count: int
    big_count: int
    latency_count: int
    pipelined_count: int
    connection_count: int
    fanout_n: int
    fanout_rounds: int
    #: (protocol, scenario) -> clients measured; what is not listed is not run.
    matrix: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)


_TCP = ("msgtrans", "asyncio-protocol", "uvloop-protocol", "asyncio-streams")
FULL_MATRIX: dict[tuple[str, str], tuple[str, ...]] = {
    ("tcp", "oneway_64"): _TCP,
    ("tcp", "oneway_64k"): (*_TCP, "raw-socket"),
    ("tcp", "latency"): _TCP,
    ("tcp", "pipelined"): _TCP,
    ("tcp", "connections"): _TCP,
    ("tcp", "fanout"): ("msgtrans", "asyncio-protocol"),
    ("tls", "oneway_64"): ("msgtrans", "asyncio-protocol", "asyncio-streams"),
    ("tls", "oneway_64k"): ("msgtrans", "asyncio-protocol", "asyncio-streams"),
    ("tls", "latency"): ("msgtrans", "asyncio-protocol", "asyncio-streams"),
    ("tls", "pipelined"): ("msgtrans", "asyncio-protocol", "asyncio-streams"),
    ("tls", "connections"): ("msgtrans", "asyncio-protocol", "asyncio-streams"),
    ("tls", "fanout"): ("msgtrans", "asyncio-protocol"),
    ("ws", "oneway_64"): ("msgtrans", "websockets"),
    ("ws", "oneway_64k"): ("msgtrans", "websockets"),
    ("ws", "latency"): ("msgtrans", "websockets"),
    ("ws", "pipelined"): ("msgtrans", "websockets"),
    ("ws", "connections"): ("msgtrans", "websockets"),
    ("ws", "fanout"): ("msgtrans", "websockets"),
    ("quic", "oneway_64"): ("msgtrans", "aioquic"),
    ("quic", "oneway_64k"): ("msgtrans", "aioquic"),
    ("quic", "latency"): ("msgtrans", "aioquic"),
    ("quic", "pipelined"): ("msgtrans", "aioquic"),
    ("quic", "connections"): ("msgtrans", "aioquic"),
}
QUICK_SKIP = {("tls", "pipelined"), ("tls", "connections"), ("tls", "fanout"),
              ("quic", "pipelined")}
QUICK_MATRIX = {
    key: tuple(c for c in clients if c != "asyncio-streams" or key[0] == "tcp")
    for key, clients in FULL_MATRIX.items() if key not in QUICK_SKIP
}

PLANS = {
    "smoke": Plan("smoke", 0.1, 300, 20, 100, 300, 5, 10, 1, QUICK_MATRIX),
    "quick": Plan("quick", 0.6, 150_000, 4_000, 5_000, 40_000, 300, 100, 3, QUICK_MATRIX),
    "full": Plan("full", 2.0, 400_000, 20_000, 20_000, 200_000, 2_000, 1_000, 5, FULL_MATRIX),
}


@dataclass
class Measurement:
    """One client's figure(s) for one (protocol, scenario)."""

    protocol: str
    scenario: str
    client: str
    #: metric -> value (see _report.METRICS for units).
    values: dict[str, float] = field(default_factory=dict)
    count: int = 0
    seconds: float = 0.0
    error: str | None = None


def available(client: str) -> bool:
    """Whether a client's libraries are installed (uvloop, pyzmq are optional)."""
    if client in UVLOOP_CLIENTS:
        return importlib.util.find_spec("uvloop") is not None
    return client in CLIENTS


class ServerProcess:
    """One server in its own process; :meth:`stop` (always called from a ``finally``) closes
    its stdin, then terminates and finally kills it."""

    def __init__(self, kind: str, protocol: str, certdir: Path) -> None:
        self.kind = kind
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop())
        # The server imports the same msgtrans as this process, wherever it was started from.
        root = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH")
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=root + (os.pathsep + path if path else ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "msgtrans.bench._servers", kind, protocol, str(certdir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
        )
        self.port = 0

    def wait_ready(self, timeout: float = START_TIMEOUT) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"server {self.kind} did not start: {self.tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 64)
                if not chunk:
                    raise RuntimeError(f"server {self.kind} exited: {self.tail()}")
                line += chunk
        self.port = int(line.split()[1])
        return self.port

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:]

    def stop(self) -> None:
        proc = self.proc
        try:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(1.0)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(2.0)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            self.log.close()


@contextlib.contextmanager
def servers(kinds: list[str], protocol: str, certdir: Path) -> Iterator[dict[str, int]]:
    """Start one server per kind (in parallel), yield kind -> port, stop them all."""
    started: list[ServerProcess] = []
    try:
        for kind in kinds:
            started.append(ServerProcess(kind, protocol, certdir))
        yield {s.kind: s.wait_ready() for s in started}
    finally:
        for server in started:
            server.stop()


def _run_coro(make: Callable[[], Coroutine[Any, Any, Any]], timeout: float,
              uvloop: bool) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(make(), timeout)

    if uvloop:
        import uvloop as uv  # type: ignore[import-not-found, unused-ignore]

        return uv.run(bounded())
    return asyncio.run(bounded())


def percentile(sorted_values: list[float], q: float) -> float:
    """The *q*-quantile (0..1) of *sorted_values*, nearest rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def measure(plan: Plan, protocol: str, scenario: str, client_name: str, *, port: int,
            certdir: Path) -> Measurement:
    """Run one client on one scenario; never raises (errors are recorded)."""
    factory = CLIENTS[client_name][2]
    client = factory(protocol, port, certdir)
    m = Measurement(protocol, scenario, client_name)
    budget = plan.budget
    timeout = budget * 10 + 20
    uv = client_name in UVLOOP_CLIENTS
    try:
        if scenario in ("oneway_64", "oneway_64k"):
            size = 64 if scenario == "oneway_64" else 65536
            count = plan.small_count if size == 64 else plan.big_count
            if protocol == "quic":  # pure-Python QUIC moves ~10-50 MB/s: keep the run short
                count = max(1, count // (20 if size > 64 else 4))
            n, secs = _run_coro(lambda: client.oneway(size, count, budget), timeout, uv)
            m.count, m.seconds = n, secs
            if size == 64:
                m.values["msg_s"] = n / secs
            else:
                m.values["mb_s"] = n * size / secs / 1e6
                m.values["msg_s"] = n / secs
        elif scenario == "latency":
            samples = sorted(_run_coro(lambda: client.latency(plan.latency_count, budget),
                                       timeout, uv))
            m.count, m.seconds = len(samples), sum(samples)
            m.values["p50_us"] = percentile(samples, 0.5) * 1e6
            m.values["p99_us"] = percentile(samples, 0.99) * 1e6
            m.values["p999_us"] = percentile(samples, 0.999) * 1e6
        elif scenario == "pipelined":
            n, secs = _run_coro(lambda: client.pipelined(64, plan.pipelined_count, budget),
                                timeout, uv)
            m.count, m.seconds = n, secs
            m.values["req_s"] = n / secs
        elif scenario == "connections":
            n, secs = _run_coro(lambda: client.connections(plan.connection_count, budget),
                                timeout, uv)
            m.count, m.seconds = n, secs
            m.values["conn_s"] = n / secs
        elif scenario == "fanout":
            times = sorted(_run_coro(lambda: client.fanout(plan.fanout_n, plan.fanout_rounds),
                                     timeout + plan.fanout_n * 0.05, uv))
            m.count, m.seconds = plan.fanout_n, sum(times)
            m.values["fanout_ms"] = percentile(times, 0.5) * 1e3
        else:
            raise ValueError(f"unknown scenario {scenario!r}")
        if m.count <= 0:
            raise RuntimeError("nothing was measured")
    except Exception as exc:
        m.values.clear()
        m.error = f"{type(exc).__name__}: {exc}"[:300]
    return m


def run_plan(plan: Plan, protocols: list[str], scenarios: list[str], certdir: Path,
             progress: TextIO) -> list[Measurement]:
    """Run every (protocol, scenario, client) of *plan* selected; one progress line per
    scenario on *progress*."""
    results: list[Measurement] = []
    for protocol in protocols:
        wanted = [(s, [c for c in plan.matrix.get((protocol, s), ()) if available(c)])
                  for s in scenarios]
        wanted = [(s, cs) for s, cs in wanted if cs]
        if not wanted:
            continue
        kinds = sorted({CLIENTS[c][0] for _, cs in wanted for c in cs})
        t0 = time.perf_counter()
        with servers(kinds, protocol, certdir) as ports:
            progress.write(f"[bench] {protocol}: servers up ({', '.join(kinds)}) in "
                           f"{time.perf_counter() - t0:.1f} s\n")
            for scenario, clients in wanted:
                t1 = time.perf_counter()
                done = [measure(plan, protocol, scenario, c, port=ports[CLIENTS[c][0]],
                                certdir=certdir)
                        for c in clients]
                results += done
                summary = "; ".join(
                    f"{m.client} " + (f"ERROR {m.error}" if m.error else ", ".join(
                        f"{k}={v:,.1f}" for k, v in m.values.items()))
                    for m in done)
                progress.write(f"[bench] {protocol} {scenario} "
                               f"({time.perf_counter() - t1:.1f} s): {summary}\n")
                progress.flush()
    return results
