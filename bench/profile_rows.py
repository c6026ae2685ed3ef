"""Profile of the benchmark rows where msgtrans trails its backend's best peer (issue 16).

    python bench/profile_rows.py                       # every row, table on stdout
    python bench/profile_rows.py --rows sync-tcp-pipelined,trio-tcp-connections
    python bench/profile_rows.py --json out.json --cprofile out-cprofile.txt
    python bench/profile_rows.py --no-strace           # skip the (slow) strace pass
    python bench/profile_rows.py --table out.json      # the tables of a saved run

For each row, msgtrans and the row's peer run the bench's own code: the client classes of
``msgtrans.bench._scenarios`` / ``_trio`` / ``_blocking`` in this process, called through the
bench runner's ``_runner_for`` (asyncio.run / trio.run / a worker thread), against the bench's
own server (``msgtrans.bench._servers.SERVERS[kind]``) in a subprocess, as
``python -m msgtrans bench`` does.  The server subprocess is this file with ``--serve``: it
installs the counters below and then runs the same ``SERVERS`` entry.

Measured, per message (per request for latency/pipelined, per connection for connections, per
session message delivered for fan-out), client and server process added up:

* ``calls``: Python function calls, ``sys.setprofile`` + ``threading.setprofile`` counting the
  ``call`` and ``c_call`` events as bench/call_guard.py does (every thread of both processes);
* ``syscalls``: ``strace -c -f -p PID`` attached to the server process and to this one (every
  thread), total calls (the per-name split is in --json);
* ``wake``: event-loop wake-ups: ``selector.select`` calls (a wrapped ``selectors`` class:
  asyncio's selector loop and msgtrans.io_sync's I/O thread both use it) plus trio's run-loop
  I/O waits (an ``Instrument.before_io_wait`` added to every ``trio.run``);
* ``cs``: voluntary context switches (``getrusage(RUSAGE_SELF).ru_nvcsw``, every thread of the
  process including those that ended), the wake-up measure of threaded code;
* ``cpu``: user + system CPU microseconds (getrusage), both processes.

Every figure is *marginal*, as in call_guard.py: each pass runs the scenario with N and then 2N
(fan-out: R and 3R rounds) in the same server and reports (X(2N) - X(N)) / N, so the transport
construction, the connect of a latency/pipelined run, the 1,000 connects of a fan-out and the
warm-up requests do not count.  The counting passes (calls, strace) slow the code they watch;
each is its own pass so that the rate, wake-up and CPU figures come from an unwatched run, but a
slower run batches differently, so read the syscall figures as +-20 %.  cProfile (--cprofile
FILE) profiles msgtrans's side of each row (client and server), one pass of N.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import re
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SNAP_ENV = "MSGTRANS_PROFILE_SNAP"


# --- counters (installed in both processes) -----------------------------------------------------


class Counters:
    def __init__(self) -> None:
        self.py = 0
        self.c = 0
        self.selects = 0
        self.io_waits = 0
        self.profiles: list[cProfile.Profile] = []

    def profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            self.py += 1
        elif event == "c_call":
            self.c += 1

    def start_calls(self) -> None:
        threading.setprofile(self.profile)
        sys.setprofile(self.profile)

    def stop_calls(self) -> None:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]

    def start_cprofile(self) -> None:
        """A cProfile.Profile per thread: this one and every thread started from now on."""

        def first(frame: Any, event: str, arg: Any) -> None:
            prof = cProfile.Profile()
            self.profiles.append(prof)
            prof.enable()  # replaces this hook in the thread

        threading.setprofile(first)
        prof = cProfile.Profile()
        self.profiles.append(prof)
        prof.enable()

    def stop_cprofile(self) -> pstats.Stats | None:
        threading.setprofile(None)  # type: ignore[arg-type]
        profiles, self.profiles = self.profiles, []
        stats: pstats.Stats | None = None
        for prof in profiles:
            with contextlib.suppress(Exception):
                prof.create_stats()
                if stats is None:
                    stats = pstats.Stats(prof)
                else:
                    stats.add(prof)
        return stats

    def snapshot(self) -> dict[str, float]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"py": self.py, "c": self.c, "selects": self.selects, "io_waits": self.io_waits,
                "cs": ru.ru_nvcsw, "ics": ru.ru_nivcsw,
                "cpu_us": (ru.ru_utime + ru.ru_stime) * 1e6}


COUNTERS = Counters()


def install_wakeup_counters() -> None:
    """Count every ``select()`` of the selectors classes and every trio I/O wait."""
    for name in ("EpollSelector", "PollSelector", "SelectSelector", "DevpollSelector",
                 "KqueueSelector"):
        cls = getattr(selectors, name, None)
        if cls is None or "select" not in cls.__dict__:
            continue
        original = cls.__dict__["select"]

        def select(self: Any, timeout: float | None = None, _original: Any = original) -> Any:
            COUNTERS.selects += 1
            return _original(self, timeout)

        cls.select = select  # type: ignore[method-assign]
    try:
        import trio  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return

    class IoWaits(trio.abc.Instrument):  # type: ignore[misc, unused-ignore]
        def before_io_wait(self, timeout: float) -> None:
            COUNTERS.io_waits += 1

    run = trio.run

    def counted_run(*args: Any, **kwargs: Any) -> Any:
        kwargs["instruments"] = [*kwargs.get("instruments", ()), IoWaits()]
        return run(*args, **kwargs)

    trio.run = counted_run


# --- the server side (this file with --serve) ---------------------------------------------------


def serve(mode: str, kind: str, protocol: str, certdir: str) -> int:
    """Run the bench's server *kind* with the counters; SIGUSR1 writes a snapshot (and, in
    cprofile mode, the stats) to $MSGTRANS_PROFILE_SNAP."""
    install_wakeup_counters()
    from msgtrans.bench import _servers

    if mode == "cprofile":  # the imports are not what is profiled
        import msgtrans.io_asyncio
        import msgtrans.io_sync
        with contextlib.suppress(ImportError):
            import msgtrans.io_trio  # noqa: F401

    snap = Path(os.environ[SNAP_ENV])
    seq = [0]

    def on_usr1(signum: int, frame: Any) -> None:
        seq[0] += 1
        doc: dict[str, Any] = {"seq": seq[0], **COUNTERS.snapshot()}
        if mode == "cprofile" and seq[0] % 2:
            for prof in COUNTERS.profiles:
                prof.clear()
        elif mode == "cprofile" and COUNTERS.profiles:
            stats = COUNTERS.stop_cprofile()
            if stats is not None:
                stats.dump_stats(str(snap) + ".prof")
        tmp = snap.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(snap)

    signal.signal(signal.SIGUSR1, on_usr1)
    if mode == "calls":
        COUNTERS.start_calls()
    elif mode == "cprofile":
        COUNTERS.start_cprofile()
    with contextlib.suppress(KeyboardInterrupt):
        _servers.SERVERS[kind](protocol, Path(certdir))
    return 0


class Server:
    """The bench's server *kind* in a subprocess (this file, --serve), stdin held open as the
    bench's ServerProcess does."""

    def __init__(self, mode: str, kind: str, protocol: str, certdir: Path) -> None:
        self.snap = Path(tempfile.mktemp(prefix="msgtrans-prof-", suffix=".json"))
        self.seq = 0
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT),
                   **{SNAP_ENV: str(self.snap)})
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", mode, kind, protocol,
             str(certdir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(b"PORT"):
            self.log.seek(0)
            raise RuntimeError(f"server {kind} did not start: {self.log.read()[-1500:]}")
        self.port = int(line.split()[1])
        self.ports = tuple(int(p) for p in line.split()[1:])

    def snapshot(self) -> dict[str, Any]:
        self.seq += 1
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                doc = json.loads(self.snap.read_text())
                if doc["seq"] == self.seq:
                    return dict(doc)
            time.sleep(0.01)
        raise RuntimeError("the server wrote no snapshot")

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in (self.snap, Path(str(self.snap) + ".prof")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.log.close()


# --- strace -------------------------------------------------------------------------------------


class Strace:
    """``strace -c -f -p PID`` over a block; :attr:`calls` the total, :attr:`by_name` the split."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.out = tempfile.mktemp(prefix="msgtrans-strace-")
        self.calls = 0
        self.by_name: dict[str, int] = {}

    def __enter__(self) -> Strace:
        self.proc = subprocess.Popen(["strace", "-c", "-f", "-q", "-o", self.out,
                                      "-p", str(self.pid)], stderr=subprocess.DEVNULL)
        time.sleep(0.4)  # attached to every thread
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        text = Path(self.out).read_text()
        os.unlink(self.out)
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 5 and re.match(r"^[\d.]+$", parts[0]) and parts[-1] != "total":
                self.by_name[parts[-1]] = int(parts[3])
            elif parts and parts[-1] == "total":
                self.calls = int(parts[3])
        if not self.calls:
            self.calls = sum(self.by_name.values())


# --- the rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    protocol: str
    scenario: str
    msgtrans: str
    peer: str
    n: int          # N of the unwatched pass (requests, connections; fan-out: rounds)
    n_slow: int     # N of the counting passes (calls, strace) and of cProfile


FANOUT_SESSIONS = 1000

ROWS = [
    Row("sync-tcp-pipelined", "blocking TCP pipelined (64)", "tcp", "pipelined",
        "msgtrans-blocking", "blocking-socket", 6000, 1500),
    Row("sync-tcp-latency", "blocking TCP req/resp p50", "tcp", "latency",
        "msgtrans-blocking", "blocking-socket", 3000, 600),
    Row("trio-tcp-connections", "trio TCP connections/s", "tcp", "connections",
        "msgtrans-trio", "trio-streams", 600, 150),
    Row("asyncio-tcp-pipelined", "asyncio TCP pipelined (64)", "tcp", "pipelined",
        "msgtrans", "asyncio-protocol", 8000, 1500),
    Row("asyncio-tcp-connections", "asyncio TCP connections/s", "tcp", "connections",
        "msgtrans", "asyncio-protocol", 600, 150),
    Row("asyncio-tcp-fanout", "asyncio TCP fan-out 1,000", "tcp", "fanout",
        "msgtrans", "asyncio-protocol", 10, 5),
    Row("trio-tcp-latency", "trio TCP req/resp p50", "tcp", "latency",
        "msgtrans-trio", "trio-streams", 3000, 600),
    Row("trio-tcp-pipelined", "trio TCP pipelined (64)", "tcp", "pipelined",
        "msgtrans-trio", "trio-streams", 6000, 1500),
    Row("asyncio-tcp-latency", "asyncio TCP req/resp p50", "tcp", "latency",
        "msgtrans", "asyncio-protocol", 3000, 600),
    Row("sync-ws-pipelined", "blocking WS pipelined (64)", "ws", "pipelined",
        "msgtrans-blocking", "websockets-sync", 4000, 1000),
    Row("asyncio-ws-connections", "asyncio WS connections/s", "ws", "connections",
        "msgtrans", "websockets", 400, 100),
    Row("asyncio-quic-pipelined", "asyncio QUIC pipelined (64)", "quic", "pipelined",
        "msgtrans", "aioquic", 3000, 800),
    Row("trio-quic-pipelined", "trio QUIC pipelined (64)", "quic", "pipelined",
        "msgtrans-trio", "aioquic", 2000, 500),
    Row("sync-quic-pipelined", "blocking QUIC pipelined (64)", "quic", "pipelined",
        "msgtrans-blocking", "aioquic", 3000, 800),
]
ROW_BY_KEY = {r.key: r for r in ROWS}
BUDGET = 120.0  # the counts, not the clock, end a run


Hook = Callable[[], None]


def run_client(row: Row, client_name: str, server: Server, certdir: Path, n: int,
               start: Hook | None = None, stop: Hook | None = None) -> tuple[float, int]:
    """One bench client run of *n* units (fan-out: *n* rounds of FANOUT_SESSIONS messages):
    (the row's figure, units).  *start* and *stop* run around the part measured: the whole run,
    or for a fan-out the rounds only (from the first round's ``time.perf_counter()`` to the
    last's: the fan-out clients call it exactly twice per round), so the 1,000 connects and
    closes stay out."""
    from msgtrans.bench import _runner
    from msgtrans.bench._scenarios import CLIENTS

    client = CLIENTS[client_name][2](row.protocol, server.port, certdir)
    client.extra_ports = server.ports[1:]
    run = _runner._runner_for(client_name, client)
    timeout = 600.0
    if row.scenario == "fanout":
        clock = time.perf_counter
        calls = [0]

        def counted_clock() -> float:
            calls[0] += 1
            if calls[0] == 1 and start is not None:
                start()
            elif calls[0] == 2 * n and stop is not None:
                stop()
            return clock()

        time.perf_counter = counted_clock
        try:
            times = sorted(run(lambda: client.fanout(FANOUT_SESSIONS, n), timeout))
        finally:
            time.perf_counter = clock
        assert calls[0] == 2 * n, calls
        return _runner.percentile(times, 0.5) * 1e3, n * FANOUT_SESSIONS
    if start is not None:
        start()
    try:
        if row.scenario == "latency":
            samples = sorted(run(lambda: client.latency(n, BUDGET), timeout))
            # latency() sends min(count // 10, 200) warm-up requests first: they count too.
            figure, done = _runner.percentile(samples, 0.5) * 1e6, len(samples) + min(n // 10,
                                                                                      200)
        elif row.scenario == "pipelined":
            done, secs = run(lambda: client.pipelined(64, n, BUDGET), timeout)
            figure = done / secs
        else:
            done, secs = run(lambda: client.connections(n, BUDGET), timeout)
            figure = done / secs
    finally:
        if stop is not None:
            stop()
    return figure, done


FIGURE_UNIT = {"latency": "p50 us", "pipelined": "req/s", "connections": "conn/s",
               "fanout": "ms (median round)"}
PER = {"latency": "request", "pipelined": "request", "connections": "connection",
       "fanout": "session message"}
PLAIN_PAIRS = 3


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in b if isinstance(b[k], (int, float)) and k != "seq"}


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def per_unit(row: Row, client_name: str, server: Server, certdir: Path, n: int,
             begin: Callable[[], Any], end: Callable[[Any], dict[str, float]],
             pairs: int = 1) -> tuple[dict[str, float], float]:
    """Per unit figures of what *end(begin())* measures over a run: for a fan-out the rounds
    of one run divided by the messages; otherwise marginal, (X(2N) - X(N)) / N, the median
    of *pairs* pairs.  Also the figure (median of the runs that count)."""
    got: list[Any] = []

    def start() -> None:
        got.append(begin())

    def stop() -> None:
        got.append(end(got.pop()))

    if row.scenario == "fanout":
        figures, results = [], []
        for _ in range(pairs):
            figure, done = run_client(row, client_name, server, certdir, n, start, stop)
            figures.append(figure)
            results.append({k: v / done for k, v in got.pop().items()})
        return {k: _median([r[k] for r in results]) for k in results[0]}, _median(figures)
    figures, results = [], []
    for _ in range(pairs):
        _, u1 = run_client(row, client_name, server, certdir, n, start, stop)
        d1 = got.pop()
        figure, u2 = run_client(row, client_name, server, certdir, 2 * n, start, stop)
        d2 = got.pop()
        figures.append(figure)
        results.append({k: (d2[k] - d1[k]) / max(1, u2 - u1) for k in d2})
    return {k: _median([r[k] for r in results]) for k in results[0]}, _median(figures)


def measure_client(row: Row, client_name: str, certdir: Path, strace: bool,
                   log: Callable[[str], None]) -> dict[str, Any]:
    from msgtrans.bench._scenarios import CLIENTS

    kind = CLIENTS[client_name][0]
    out: dict[str, Any] = {"client": client_name}

    def warm(server: Server) -> None:  # first-use work (imports, caches) out of the figures
        run_client(row, client_name, server, certdir, row.n_slow)

    # Pass 1, unwatched: the figure, wake-ups, context switches, CPU.
    def begin_plain() -> Any:
        return server.snapshot(), COUNTERS.snapshot()

    def end_plain(before: Any) -> dict[str, float]:
        s0, c0 = before
        ds, dc = _delta(s0, server.snapshot()), _delta(c0, COUNTERS.snapshot())
        return {**{"srv_" + k: v for k, v in ds.items()}, **{"cli_" + k: v
                                                              for k, v in dc.items()}}

    t0 = time.perf_counter()
    server = Server("plain", kind, row.protocol, certdir)
    try:
        warm(server)
        plain, figure = per_unit(row, client_name, server, certdir, row.n, begin_plain,
                                 end_plain, PLAIN_PAIRS)
    finally:
        server.stop()
    out["figure"] = figure
    out["server"] = {k[4:]: v for k, v in plain.items() if k.startswith("srv_")}
    out["client_side"] = {k[4:]: v for k, v in plain.items() if k.startswith("cli_")}
    log(f"  {client_name}: {FIGURE_UNIT[row.scenario]} {figure:,.1f} "
        f"({time.perf_counter() - t0:.1f} s)")

    # Pass 2: Python calls, both processes.
    def begin_calls() -> Any:
        s0 = server.snapshot()
        COUNTERS.py = COUNTERS.c = 0
        COUNTERS.start_calls()
        return s0

    def end_calls(s0: Any) -> dict[str, float]:
        COUNTERS.stop_calls()
        client = COUNTERS.py + COUNTERS.c
        ds = _delta(s0, server.snapshot())
        return {"client": client, "server": ds["py"] + ds["c"]}

    server = Server("calls", kind, row.protocol, certdir)
    try:
        warm(server)
        calls, _ = per_unit(row, client_name, server, certdir, row.n_slow, begin_calls,
                            end_calls)
    finally:
        server.stop()
    out["calls_server"], out["calls_client"] = calls["server"], calls["client"]

    # Pass 3: syscalls (strace on both processes).
    if strace:
        def begin_strace() -> Any:
            both = (Strace(server.proc.pid), Strace(os.getpid()))
            for one in both:
                one.__enter__()
            return both

        def end_strace(both: Any) -> dict[str, float]:
            for one in both:
                one.__exit__(None, None, None)
            srv, cli = both
            names = set(srv.by_name) | set(cli.by_name)
            return {"server": srv.calls, "client": cli.calls,
                    **{"s:" + k: srv.by_name.get(k, 0) for k in names},
                    **{"c:" + k: cli.by_name.get(k, 0) for k in names}}

        server = Server("plain", kind, row.protocol, certdir)
        try:
            warm(server)
            sys_, _ = per_unit(row, client_name, server, certdir, row.n_slow, begin_strace,
                               end_strace)
        finally:
            server.stop()
        out["sys_server"], out["sys_client"] = sys_["server"], sys_["client"]
        for side, prefix in (("server", "s:"), ("client", "c:")):
            one = {k[2:]: v for k, v in sys_.items() if k.startswith(prefix)}
            out[f"sys_by_name_{side}"] = {
                k: round(v, 2) for k, v in sorted(one.items(), key=lambda kv: -kv[1])
                if abs(v) >= 0.05}
    return out


def _top(stats: pstats.Stats, key: str, limit: int, only_msgtrans: bool) -> str:
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.sort_stats(key)
    if only_msgtrans:
        stats.print_stats(r"msgtrans/(?!bench)", limit)
    else:
        stats.print_stats(limit)
    lines = buf.getvalue().splitlines()
    start = next((i for i, s in enumerate(lines) if s.lstrip().startswith("ncalls")), 0)
    return "\n".join(line.replace(str(ROOT) + "/", "") for line in lines[start:]
                     if line.strip())


def cprofile_row(row: Row, certdir: Path) -> str:
    """cProfile of msgtrans's side of *row*: client (this process) and server, over what the
    other passes measure (one run of N; a fan-out's rounds only)."""
    from msgtrans.bench._scenarios import CLIENTS

    kind = CLIENTS[row.msgtrans][0]
    got: list[pstats.Stats | None] = []

    def start() -> None:
        server.snapshot()  # the server's profiles start afresh
        COUNTERS.start_cprofile()

    def stop() -> None:
        got.append(COUNTERS.stop_cprofile())
        server.snapshot()  # ... and are written

    server = Server("cprofile", kind, row.protocol, certdir)
    try:
        run_client(row, row.msgtrans, server, certdir, row.n_slow)
        _, done = run_client(row, row.msgtrans, server, certdir, row.n_slow, start, stop)
        server_stats = pstats.Stats(str(server.snap) + ".prof")
    finally:
        server.stop()
    text = [f"### {row.title} ({row.msgtrans}, {done:,} {PER[row.scenario]}s"
            + (", the rounds only)" if row.scenario == "fanout" else ", setup included)")]
    for side, stats in (("client", got[0]), ("server", server_stats)):
        if stats is None:
            continue
        text.append(f"\n#### {side}: top 10 msgtrans functions by cumulative time\n")
        text.append(_top(stats, "cumulative", 10, True))
        text.append(f"\n#### {side}: top 10 functions by own time (tottime)\n")
        text.append(_top(stats, "tottime", 10, False))
    return "\n".join(text) + "\n"


# --- the table ----------------------------------------------------------------------------------


def _sum(m: dict[str, Any], a: str, b: str) -> float | None:
    if a not in m:
        return None
    return float(m[a]) + float(m[b])


def summarize(m: dict[str, Any]) -> dict[str, float | None]:
    srv, cli = m["server"], m["client_side"]
    return {
        "figure": m["figure"],
        "calls": _sum(m, "calls_client", "calls_server"),
        "syscalls": _sum(m, "sys_client", "sys_server"),
        "wake": srv["selects"] + srv["io_waits"] + cli["selects"] + cli["io_waits"],
        "cs": srv["cs"] + cli["cs"],
        "cpu": srv["cpu_us"] + cli["cpu_us"],
    }


COLUMNS = (("figure", "figure"), ("calls", "py calls"), ("syscalls", "syscalls"),
           ("wake", "loop wake-ups"), ("cs", "vol. ctx sw"), ("cpu", "CPU us"))


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    head = "| row (per unit) | " + " | ".join(
        f"{t}: msgtrans / peer (x)" for _, t in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in results:
        row = ROW_BY_KEY[r["row"]]
        a, b = summarize(r["msgtrans"]), summarize(r["peer"])
        cells = []
        for key, _ in COLUMNS:
            x, y = a[key], b[key]
            # A peer figure near zero (or below: the noise of a marginal) has no ratio.
            ratio = f"{x / y:.2f}x" if x is not None and y is not None and y > 0.05 else "-"
            cells.append(f"{_fmt(x)} / {_fmt(y)} ({ratio})")
        lines.append(f"| {row.title}, {r['peer']['client']}, per {PER[row.scenario]} "
                     f"[{FIGURE_UNIT[row.scenario]}] | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sides(results: list[dict[str, Any]]) -> str:
    """The same measures split client / server."""
    lines = ["| row | client | calls cli/srv | syscalls cli/srv | wake-ups cli/srv | "
             "ctx sw cli/srv | CPU us cli/srv |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for which in ("msgtrans", "peer"):
            m = r[which]
            srv, cli = m["server"], m["client_side"]
            lines.append(
                f"| {r['row']} | {m['client']} | {_fmt(m.get('calls_client'))} / "
                f"{_fmt(m.get('calls_server'))} | {_fmt(m.get('sys_client'))} / "
                f"{_fmt(m.get('sys_server'))} | "
                f"{_fmt(cli['selects'] + cli['io_waits'])} / "
                f"{_fmt(srv['selects'] + srv['io_waits'])} | {_fmt(cli['cs'])} / "
                f"{_fmt(srv['cs'])} | {_fmt(cli['cpu_us'])} / {_fmt(srv['cpu_us'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--serve"]:
        return serve(*args_in[1:5])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", help="comma-separated subset of: " + ",".join(ROW_BY_KEY))
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--cprofile", metavar="FILE",
                        help="write cProfile tops of msgtrans's side of each row")
    parser.add_argument("--no-strace", action="store_true", help="skip the syscall pass")
    parser.add_argument("--table", metavar="FILE",
                        help="print the tables of a --json FILE, measure nothing")
    args = parser.parse_args(args_in)
    if args.table:
        doc = json.loads(Path(args.table).read_text())
        print(table(doc["rows"]))
        print()
        print(sides(doc["rows"]))
        return 0
    rows = [ROW_BY_KEY[k.strip()] for k in args.rows.split(",")] if args.rows else ROWS
    use_strace = not args.no_strace and subprocess.run(
        ["which", "strace"], capture_output=True, check=False).returncode == 0
    install_wakeup_counters()

    from msgtrans.certs import write_self_signed

    def log(text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    started = time.perf_counter()
    load = os.getloadavg()
    results: list[dict[str, Any]] = []
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="msgtrans-prof-") as tmp:
        certdir = Path(tmp)
        write_self_signed(certdir)
        for row in rows:
            log(f"[profile] {row.key}")
            try:
                r = {"row": row.key,
                     "msgtrans": measure_client(row, row.msgtrans, certdir, use_strace, log),
                     "peer": measure_client(row, row.peer, certdir, use_strace, log)}
                results.append(r)
                if args.cprofile:
                    profiles.append(cprofile_row(row, certdir))
            except Exception as exc:  # one row failing does not lose the others
                log(f"  ERROR {type(exc).__name__}: {exc}")
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - started, 1), "strace": use_strace,
        "command": "python bench/profile_rows.py " + " ".join(args_in),
    }
    print(table(results))
    print()
    print(sides(results))
    print(f"\n({meta['date']}, Python {meta['python']}, {meta['cpus']} CPUs, load "
          f"{meta['load_before']} -> {meta['load_after']}, {meta['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": results}, indent=2) + "\n")
    if args.cprofile:
        Path(args.cprofile).write_text("\n".join(profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
