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
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ._scenarios import (
    BACKENDS,
    CLIENT_SCENARIOS,
    CLIENTS,
    COMPARED_WITH,
    MSGTRANS,
    REQUIRES,
    SCENARIOS,
    UVLOOP_CLIENTS,
)

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


def _full_matrix() -> dict[tuple[str, str], tuple[str, ...]]:
    matrix: dict[tuple[str, str], tuple[str, ...]] = {}
    for protocol in ("tcp", "tls", "ws", "quic"):
        for scenario in SCENARIOS:
            clients = tuple(name for name, (_, protocols, _f) in CLIENTS.items()
                            if protocol in protocols and scenario in CLIENT_SCENARIOS[name])
            if clients:
                matrix[(protocol, scenario)] = clients
    return matrix


FULL_MATRIX = _full_matrix()

# The quick run keeps every target row and the main figures of each backend; it leaves out
# the slow pure-Python corners (TLS and QUIC beyond one-way and latency) and the second peer
# of a kind (streams beside Protocol, websockets-sync beside the blocking TCP peers).  QUIC
# fan-out is a full-run row only: its handshakes alone take seconds per client.
QUICK_SKIP = {("tls", "pipelined"), ("tls", "connections"), ("tls", "fanout"),
              ("quic", "pipelined"), ("quic", "connections"), ("quic", "fanout")}
_QUICK_TCP_ONLY = {"asyncio-streams", "trio-streams", "blocking-socket"}
# trio, blocking and their peers: what each protocol keeps in a quick run.
_QUICK_TRIO_SYNC = {"tcp": {"oneway_64", "oneway_64k", "latency", "pipelined"},
                    "ws": {"oneway_64", "latency"}}


def _quick_keep(key: tuple[str, str], client: str) -> bool:
    protocol, scenario = key
    if client in _QUICK_TCP_ONLY and protocol != "tcp":
        return False
    if client in ("msgtrans-trio", "msgtrans-blocking", "trio-streams", "blocking-socket",
                  "websockets-sync", "zmq"):
        return scenario in _QUICK_TRIO_SYNC.get(protocol, set())
    return True


QUICK_MATRIX = {
    key: kept for key, clients in FULL_MATRIX.items() if key not in QUICK_SKIP
    if (kept := tuple(c for c in clients if _quick_keep(key, c)))
}

PLANS = {
    "smoke": Plan("smoke", 0.1, 300, 20, 100, 300, 5, 10, 1, QUICK_MATRIX),
    "quick": Plan("quick", 0.4, 150_000, 4_000, 5_000, 40_000, 300, 100, 3, QUICK_MATRIX),
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
    """Whether a client's libraries are installed (trio, uvloop, pyzmq... are optional)."""
    if client not in CLIENTS:
        return False
    module = REQUIRES.get(client)
    return module is None or importlib.util.find_spec(module) is not None


def backends_of(client: str) -> tuple[str, ...]:
    """The backends a client's figures count for: its own (msgtrans) or those it is compared
    with (a peer)."""
    for backend, name in MSGTRANS.items():
        if name == client:
            return (backend,)
    return COMPARED_WITH.get(client, BACKENDS)


def selected(plan: Plan, protocols: list[str], scenarios: list[str],
             backends: list[str]) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """What a run measures: per protocol, per scenario, the clients (installed ones only, and
    only those counting for one of *backends*)."""
    out: list[tuple[str, list[tuple[str, list[str]]]]] = []
    for protocol in protocols:
        wanted = []
        for scenario in scenarios:
            clients = [c for c in plan.matrix.get((protocol, scenario), ())
                       if available(c) and any(b in backends for b in backends_of(c))]
            # A peer alone (its msgtrans client filtered out) has nothing to be compared with.
            if any(c in MSGTRANS.values() for c in clients):
                wanted.append((scenario, clients))
        if wanted:
            out.append((protocol, wanted))
    return out


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
        self.ports: tuple[int, ...] = ()

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
        self.ports = tuple(int(p) for p in line.split()[1:])
        self.port = self.ports[0]
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
def servers(kinds: list[str], protocol: str,
            certdir: Path) -> Iterator[dict[str, tuple[int, ...]]]:
    """Start one server per kind (in parallel), yield kind -> ports, stop them all."""
    started: list[ServerProcess] = []
    try:
        for kind in kinds:
            started.append(ServerProcess(kind, protocol, certdir))
        for server in started:
            server.wait_ready()
        yield {s.kind: s.ports for s in started}
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


def _run_trio(make: Callable[[], Coroutine[Any, Any, Any]], timeout: float) -> Any:
    import trio  # type: ignore[import-untyped, unused-ignore]

    async def bounded() -> Any:
        with trio.fail_after(timeout):
            return await make()

    return trio.run(bounded)


def _run_thread(make: Callable[[], Any], timeout: float) -> Any:
    # Blocking clients run in a daemon thread so that a hung one costs its timeout, not the run.
    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(make())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="msgtrans-bench-client", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no result after {timeout:.0f} s")
    if error:
        raise error[0]
    return result[0]


def _runner_for(client_name: str, client: Any) -> Callable[[Callable[[], Any], float], Any]:
    kind = "uvloop" if client_name in UVLOOP_CLIENTS else getattr(client, "runner", "asyncio")
    if kind == "trio":
        return _run_trio
    if kind == "sync":
        return _run_thread
    return lambda make, timeout: _run_coro(make, timeout, kind == "uvloop")


def percentile(sorted_values: list[float], q: float) -> float:
    """The *q*-quantile (0..1) of *sorted_values*, nearest rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def measure(plan: Plan, protocol: str, scenario: str, client_name: str, *,
            port: int | tuple[int, ...], certdir: Path) -> Measurement:
    """Run one client on one scenario; never raises (errors are recorded)."""
    ports = (port,) if isinstance(port, int) else port
    m = Measurement(protocol, scenario, client_name)
    budget = plan.budget
    timeout = budget * 10 + 20
    try:
        client = CLIENTS[client_name][2](protocol, ports[0], certdir)
        client.extra_ports = ports[1:]
        run = _runner_for(client_name, client)
        if scenario in ("oneway_64", "oneway_64k"):
            size = 64 if scenario == "oneway_64" else 65536
            count = plan.small_count if size == 64 else plan.big_count
            if protocol == "quic":  # pure-Python QUIC moves ~10-50 MB/s: keep the run short
                count = max(1, count // (20 if size > 64 else 4))
            n, secs = run(lambda: client.oneway(size, count, budget), timeout)
            m.count, m.seconds = n, secs
            if size == 64:
                m.values["msg_s"] = n / secs
            else:
                m.values["mb_s"] = n * size / secs / 1e6
                m.values["msg_s"] = n / secs
        elif scenario == "latency":
            samples = sorted(run(lambda: client.latency(plan.latency_count, budget), timeout))
            m.count, m.seconds = len(samples), sum(samples)
            m.values["p50_us"] = percentile(samples, 0.5) * 1e6
            m.values["p99_us"] = percentile(samples, 0.99) * 1e6
            m.values["p999_us"] = percentile(samples, 0.999) * 1e6
        elif scenario == "pipelined":
            n, secs = run(lambda: client.pipelined(64, plan.pipelined_count, budget), timeout)
            m.count, m.seconds = n, secs
            m.values["req_s"] = n / secs
        elif scenario == "connections":
            n, secs = run(lambda: client.connections(plan.connection_count, budget), timeout)
            m.count, m.seconds = n, secs
            m.values["conn_s"] = n / secs
        elif scenario == "fanout":
            times = sorted(run(lambda: client.fanout(plan.fanout_n, plan.fanout_rounds),
                               timeout + plan.fanout_n * 0.05))
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


class Progress:
    """What is running, on *out* (stderr): a bar redrawn in place on a terminal, plus one line
    per finished scenario with its figures (only those lines when *out* is not a terminal)."""

    WIDTH = 30

    def __init__(self, out: TextIO, total: int) -> None:
        self.out = out
        self.total = max(1, total)
        self.done = 0
        self.started = time.perf_counter()
        try:
            self.tty = out.isatty()
        except (AttributeError, ValueError):
            self.tty = False

    def bar(self) -> str:
        filled = self.WIDTH * self.done // self.total
        return f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total}"

    def running(self, what: str) -> None:
        if self.tty:
            elapsed = time.perf_counter() - self.started
            self.out.write(f"\r\x1b[K[bench] {self.bar()} {elapsed:5.0f} s  {what}")
            self.out.flush()

    def step(self) -> None:
        self.done += 1

    def line(self, text: str) -> None:
        self.out.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\r\x1b[K")
            self.out.flush()


def run_plan(plan: Plan, protocols: list[str], scenarios: list[str], certdir: Path,
             progress: TextIO, *, backends: list[str] | None = None) -> list[Measurement]:
    """Run every (protocol, scenario, client) of *plan* selected (clients counting for one of
    *backends*, default all); a progress bar and one line per scenario on *progress*."""
    chosen = selected(plan, protocols, scenarios, list(backends or BACKENDS))
    bar = Progress(progress, sum(len(cs) for _, wanted in chosen for _, cs in wanted))
    results: list[Measurement] = []
    try:
        for protocol, wanted in chosen:
            kinds = sorted({CLIENTS[c][0] for _, cs in wanted for c in cs})
            t0 = time.perf_counter()
            bar.running(f"{protocol}: starting {len(kinds)} servers")
            with servers(kinds, protocol, certdir) as ports:
                bar.line(f"[bench] {protocol}: servers up ({', '.join(kinds)}) in "
                         f"{time.perf_counter() - t0:.1f} s")
                for scenario, clients in wanted:
                    t1 = time.perf_counter()
                    done = []
                    for c in clients:
                        bar.running(f"{protocol} {scenario} {c}")
                        done.append(measure(plan, protocol, scenario, c,
                                            port=ports[CLIENTS[c][0]], certdir=certdir))
                        bar.step()
                    results += done
                    summary = "; ".join(
                        f"{m.client} " + (f"ERROR {m.error}" if m.error else ", ".join(
                            f"{k}={v:,.1f}" for k, v in m.values.items()))
                        for m in done)
                    bar.line(f"[bench] {protocol} {scenario} "
                             f"({time.perf_counter() - t1:.1f} s) {bar.bar()}: {summary}")
    finally:
        bar.close()
    return results
