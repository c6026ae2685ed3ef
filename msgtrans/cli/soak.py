"""``python -m msgtrans soak``: many sessions held for a long time, with mixed traffic and churn,
and the trend of both processes' memory, descriptors, threads and tasks.

The echo server (``python -m msgtrans serve``) runs in a subprocess on free 127.0.0.1 ports
with the chosen backend, so its figures in ``/proc/<pid>`` are its own.  This process opens
``--sessions`` sessions spread over ``--protocols`` (default tcp, ws and quic) with the same
backend, and its workers (each owning a share of the sessions: nothing else touches them)
drive about ``--rate`` operations a second: small requests, now and then a 64 KiB one, one-way
messages whose echo must come back, and requests through a small pool per protocol.  Every
``--interval`` seconds each worker closes and reopens ``--churn`` of its sessions, some of them
aborted instead of closed, and a sampler reads both processes' resident memory, descriptors
and threads (and the client's task count).  At the end (``--duration``, or Ctrl-C) every session
is closed, the server stopped with SIGTERM, and a thinned sample table and the least-squares
slope per hour of each series after the warm-up are printed; ``--json FILE`` writes the samples
and the summary.

Exit status 0: no operation failed and the server lived to the end and exited 0; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ._soak_server import ServerProcess, client_urls
from ._soak_stats import (
    ProcessGone,
    format_summary,
    format_table,
    read_process,
    summarize,
    warmup_seconds,
)

__all__ = ["DEFAULT_PROTOCOLS", "Soak", "add_arguments", "main"]

#: What ``--protocols`` is unless given.
DEFAULT_PROTOCOLS = ("tcp", "ws", "quic")
#: Seconds any one operation (connect, request, echo, close) may take before it counts failed.
OP_TIMEOUT = 15.0
#: The large payload: a 64 KiB request now and then.
BIG = 64 * 1024
#: The share of operations of each kind (the rest are small requests).
P_BIG, P_SEND, P_POOL = 0.02, 0.3, 0.05
#: Of the churned sessions, the share aborted (no close handshake) rather than closed.
P_ABORT = 0.3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``soak``'s options to *parser*."""
    from .serve import BACKENDS, PROTOCOLS

    parser.add_argument("--backend", choices=BACKENDS, default=BACKENDS[0],
                        help="the I/O backend of the server and the client (default asyncio)")
    parser.add_argument("--sessions", type=_positive_int, default=1000, metavar="N",
                        help="sessions held, spread over the protocols (default 1000)")
    parser.add_argument("--protocols", default=",".join(DEFAULT_PROTOCOLS),
                        type=_protocols(PROTOCOLS), metavar="LIST",
                        help=f"comma-separated, of {', '.join(PROTOCOLS)} "
                             f"(default {','.join(DEFAULT_PROTOCOLS)})")
    parser.add_argument("--duration", type=_positive_float, default=600.0, metavar="S",
                        help="seconds of traffic after every session is open (default 600)")
    parser.add_argument("--interval", type=_positive_float, default=5.0, metavar="S",
                        help="seconds between samples, and between churn rounds (default 5)")
    parser.add_argument("--churn", type=_fraction, default=0.05, metavar="F",
                        help="fraction of the sessions closed and reopened per interval "
                             "(default 0.05; 30%% of them aborted instead of closed)")
    parser.add_argument("--rate", type=_positive_float, default=400.0, metavar="OPS",
                        help="operations per second over all sessions (default 400)")
    parser.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                        help="concurrent workers (tasks or threads; default 32, sync 16)")
    parser.add_argument("--pools", action=argparse.BooleanOptionalAction, default=True,
                        help="also send requests through one small pool per protocol "
                             "(default on)")
    parser.add_argument("--warmup", type=float, default=None, metavar="S",
                        help="seconds left out of the trend (default 20%% of --duration, at "
                             "most 60)")
    parser.add_argument("--seed", type=int, default=0, help="the traffic's random seed")
    parser.add_argument("--json", metavar="FILE", help="write the samples and the summary here")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


def _protocols(known: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in known]
        if not names or bad or len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of distinct {', '.join(known)}; got {text!r}"
            )
        return names

    return parse


@dataclass
class Soak:
    """The shared state of one soak run: its settings, the sessions, and what happened.

    Operations are counted under a lock: the blocking backend's workers are threads.
    """

    sessions: int
    urls: list[str]
    duration: float
    interval: float
    churn: float
    rate: float
    workers: int
    seed: int
    server: ServerProcess
    out: TextIO
    pools_on: bool = True
    slots: list[Any] = field(default_factory=list)
    pools: list[Any] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    stopping: bool = False
    interrupted: bool = False
    server_died: bool = False
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    messages: int = 0
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.slots = [None] * self.sessions
        self.big = random.Random(self.seed).randbytes(BIG)

    def url(self, slot: int) -> str:
        """The URL slot *slot* connects to (the protocols take turns)."""
        return self.urls[slot % len(self.urls)]

    def mine(self, worker: int) -> list[int]:
        """The slots worker *worker* owns."""
        return list(range(worker, self.sessions, self.workers))

    def count(self, kind: str, messages: int = 0, latency: float | None = None) -> None:
        """Count one operation of *kind* that moved *messages* messages (both ways)."""
        with self.lock:
            self.ops[kind] += 1
            self.messages += messages
            if latency is not None:
                self.latencies.append(latency)

    def failed(self, what: str, error: BaseException) -> None:
        """Count the failure of *what*: by the error's code (``soak.timeout`` when the soak's
        own bound ran out, ``soak.<Type>`` for anything not a TransportError)."""
        code = getattr(error, "error_code", None)
        if code is None:
            code = "soak.timeout" if isinstance(error, TimeoutError) else (
                f"soak.{type(error).__name__}")
        with self.lock:
            self.errors[code] += 1
            if len(self.first_errors) < 10:
                self.first_errors.append(f"{what}: [{code}] {error}")

    def take_latencies(self) -> list[float]:
        """The request latencies since the last call."""
        with self.lock:
            out, self.latencies = self.latencies, []
        return out

    def record(self, t: float, tasks: int | None) -> bool:
        """Take the sample at *t* seconds of traffic (*tasks*: the client's task count, if it
        has tasks), print its progress line; return whether the run goes on (not past its
        duration, not stopping, the server alive)."""
        sample = _sample(self, t, tasks)
        if sample is None:
            self.server_died = self.stopping = True
            print(f"soak: the server died: {self.server.log_tail()}", file=self.out,
                  flush=True)
            return False
        last = self.samples[-1] if self.samples else None
        if last is not None and t > last["t"]:
            sample["rate"] = (sample["messages"] - last["messages"]) / (t - last["t"])
        self.samples.append(sample)
        _progress(sample, self.out)
        if self.stopping or t >= self.duration:
            self.stopping = True
            return False
        return True

    def opened(self, ramp: float) -> None:
        """Say how many sessions the ramp opened in *ramp* seconds."""
        print(f"soak: {sum(s is not None for s in self.slots)} sessions open over "
              f"{len(self.urls)} protocols in {ramp:.1f} s", file=self.out, flush=True)

    def choose(self, rng: random.Random, pools: bool) -> tuple[str, bytes]:
        """The next operation: its kind and payload."""
        roll = rng.random()
        if roll < P_BIG:
            return "request_64k", self.big
        if roll < P_BIG + P_SEND:
            return "send", rng.randbytes(rng.randint(1, 512))
        if pools and roll < P_BIG + P_SEND + P_POOL:
            return "pool_request", rng.randbytes(rng.randint(1, 512))
        return "request", rng.randbytes(rng.randint(1, 1024))


class Mismatch(Exception):
    """An echo came back with other bytes than were sent."""

    error_code = "soak.mismatch"


def _check(sent: bytes, reply: Any) -> None:
    if bytes(reply.payload) != sent:
        raise Mismatch(f"sent {len(sent)} bytes, got {len(reply.payload)} other bytes back")


# --- the async client (asyncio and trio run the same code) ---------------------------------------


@dataclass(frozen=True)
class _Loop:
    """What the async client needs of its event loop."""

    #: The loop's clock (seconds).
    now: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    #: ``await within(awaitable)``: at most OP_TIMEOUT, else TimeoutError.
    within: Callable[[Awaitable[Any]], Awaitable[Any]]
    #: ``await run_all(fns)``: run the zero-argument coroutine functions concurrently.
    run_all: Callable[[list[Callable[[], Awaitable[None]]]], Awaitable[None]]
    #: The number of tasks alive in this process's loop.
    tasks: Callable[[], int]


async def _asyncio_within(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, OP_TIMEOUT)


async def _asyncio_run_all(fns: list[Callable[[], Awaitable[None]]]) -> None:
    tasks = [asyncio.ensure_future(fn()) for fn in fns]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _asyncio_loop() -> _Loop:
    loop = asyncio.get_running_loop()
    return _Loop(loop.time, asyncio.sleep, _asyncio_within, _asyncio_run_all,
                 lambda: len(asyncio.all_tasks(loop)))


def _trio_loop() -> _Loop:
    import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

    async def within(awaitable: Awaitable[Any]) -> Any:
        try:
            with trio.fail_after(OP_TIMEOUT):
                return await awaitable
        except trio.TooSlowError:
            raise TimeoutError(f"no answer in {OP_TIMEOUT:g} s") from None

    async def run_all(fns: list[Callable[[], Awaitable[None]]]) -> None:
        async with trio.open_nursery() as nursery:
            for fn in fns:
                nursery.start_soon(fn)

    def tasks() -> int:
        def under(task: Any) -> int:
            return 1 + sum(under(child) for nursery in task.child_nurseries
                           for child in nursery.child_tasks)

        return int(under(trio.lowlevel.current_root_task()))

    return _Loop(trio.current_time, trio.sleep, within, run_all, tasks)


async def _open(soak: Soak, lp: _Loop, transport: Any, slot: int) -> None:
    try:
        soak.slots[slot] = await lp.within(transport.connect(soak.url(slot), timeout=OP_TIMEOUT))
        soak.count("connect")
    except Exception as exc:  # counted; the worker tries again on its next turn at the slot
        soak.slots[slot] = None
        soak.failed(f"connect {soak.url(slot)}", exc)


async def _close(soak: Soak, lp: _Loop, slot: int, abort: bool) -> None:
    session, soak.slots[slot] = soak.slots[slot], None
    if session is None:
        return
    if abort:
        session.abort("aborted by the soak")
        soak.count("abort")
        return
    try:
        await lp.within(session.close(timeout=OP_TIMEOUT / 2))
        soak.count("close")
    except Exception as exc:
        session.abort("close failed")
        soak.failed("close", exc)


async def _operate(soak: Soak, lp: _Loop, slot: int, op: tuple[str, bytes]) -> None:
    kind, data = op
    session = soak.slots[slot]
    started = lp.now()
    if kind == "send":
        await lp.within(session.send(data))
        _check(data, await lp.within(session.receive()))
        soak.count(kind, 2)
        return
    target = soak.pools[slot % len(soak.pools)] if kind == "pool_request" else session
    _check(data, await lp.within(target.request(data, timeout=OP_TIMEOUT)))
    soak.count(kind, 2, lp.now() - started)


async def _worker(soak: Soak, lp: _Loop, transport: Any, k: int, start: float) -> None:
    """Worker *k*: about its share of ``--rate`` operations a second on its own sessions, and
    its share of the churn once an interval."""
    rng = random.Random(soak.seed * 1_000_003 + k)
    mine = soak.mine(k)
    period = soak.workers / soak.rate
    next_op = start + rng.random() * period
    next_churn = start + rng.random() * soak.interval
    owed = 0.0
    while mine and not soak.stopping:
        now = lp.now()
        if now >= next_churn:
            next_churn += soak.interval
            owed += soak.churn * len(mine)
            while owed >= 1.0 and not soak.stopping:
                owed -= 1.0
                slot = rng.choice(mine)
                await _close(soak, lp, slot, rng.random() < P_ABORT)
                await _open(soak, lp, transport, slot)
            continue
        if next_op > now:
            await lp.sleep(min(next_op - now, next_churn - now))
            continue
        # Behind (a slow loop): go on from now rather than bursting to catch up.
        next_op = max(next_op + period, now - 1.0)
        slot = rng.choice(mine)
        session = soak.slots[slot]
        if session is None or session.is_closed:
            await _close(soak, lp, slot, abort=True)
            await _open(soak, lp, transport, slot)
            continue
        op = soak.choose(rng, bool(soak.pools))
        try:
            await _operate(soak, lp, slot, op)
        except Exception as exc:  # counted; the session is replaced (it may be broken)
            soak.failed(op[0], exc)
            await _close(soak, lp, slot, abort=True)


async def _sampler(soak: Soak, lp: _Loop, start: float) -> None:
    next_at = start
    while True:
        now = lp.now()
        if now < next_at and not soak.stopping:
            await lp.sleep(min(next_at - now, 0.25))
            continue
        if not soak.record(now - start, lp.tasks()):
            return
        next_at += soak.interval


async def _run_async(soak: Soak, backend: str) -> float:
    mt: Any = importlib.import_module(f"msgtrans.io_{backend}")
    lp = _asyncio_loop() if backend == "asyncio" else _trio_loop()
    ramp_start = lp.now()
    async with mt.Transport.builder().shutdown_timeout(5.0).build() as transport:
        if soak.pools_on:
            for url in soak.urls:
                soak.pools.append(await lp.within(transport.pool(url, min=1, max=3)))

        async def opener(k: int) -> None:
            for slot in soak.mine(k):
                if not soak.stopping:
                    await _open(soak, lp, transport, slot)

        async def closer(k: int) -> None:
            for slot in soak.mine(k):
                await _close(soak, lp, slot, abort=False)

        def each(fn: Callable[[int], Awaitable[None]]) -> list[Callable[[], Awaitable[None]]]:
            return [functools.partial(fn, k) for k in range(soak.workers)]

        await lp.run_all(each(opener))
        ramp = lp.now() - ramp_start
        soak.opened(ramp)
        start = lp.now()
        await lp.run_all([*each(lambda k: _worker(soak, lp, transport, k, start)),
                          lambda: _sampler(soak, lp, start)])
        soak.stopping = True
        await lp.run_all(each(closer))
        for pool in soak.pools:
            await lp.within(pool.close())
    return ramp


async def _asyncio_main(soak: Soak, backend: str) -> float:
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        soak.interrupted = soak.stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        return await _run_async(soak, backend)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _trio_main(soak: Soak, backend: str) -> float:
    import trio  # type: ignore[import-untyped, unused-ignore]

    ramp = 0.0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                async for _ in signals:
                    soak.interrupted = soak.stopping = True

            nursery.start_soon(watch)
            ramp = await _run_async(soak, backend)
            nursery.cancel_scope.cancel()
    return ramp


# --- the blocking client ---------------------------------------------------------------------


class _SyncClient:
    """The async client's steps on :mod:`msgtrans.io_sync`: a thread per worker, the sampler
    in the calling thread."""

    def __init__(self, soak: Soak) -> None:
        import msgtrans.io_sync as mt

        self.soak = soak
        self.transport = mt.Transport.builder().shutdown_timeout(5.0).build()

    def open(self, slot: int) -> None:
        soak = self.soak
        try:
            soak.slots[slot] = self.transport.connect(soak.url(slot), timeout=OP_TIMEOUT)
            soak.count("connect")
        except Exception as exc:
            soak.slots[slot] = None
            soak.failed(f"connect {soak.url(slot)}", exc)

    def close(self, slot: int, abort: bool) -> None:
        soak = self.soak
        session, soak.slots[slot] = soak.slots[slot], None
        if session is None:
            return
        if abort:
            session.abort("aborted by the soak")
            soak.count("abort")
            return
        try:
            session.close(timeout=OP_TIMEOUT / 2)
            soak.count("close")
        except Exception as exc:
            session.abort("close failed")
            soak.failed("close", exc)

    def operate(self, slot: int, op: tuple[str, bytes]) -> None:
        soak = self.soak
        kind, data = op
        session = soak.slots[slot]
        started = time.monotonic()
        if kind == "send":
            session.send(data, timeout=OP_TIMEOUT)
            _check(data, session.receive(timeout=OP_TIMEOUT))
            soak.count(kind, 2)
            return
        target = soak.pools[slot % len(soak.pools)] if kind == "pool_request" else session
        _check(data, target.request(data, timeout=OP_TIMEOUT))
        soak.count(kind, 2, time.monotonic() - started)

    def worker(self, k: int, start: float) -> None:
        soak = self.soak
        rng = random.Random(soak.seed * 1_000_003 + k)
        mine = soak.mine(k)
        period = soak.workers / soak.rate
        next_op = start + rng.random() * period
        next_churn = start + rng.random() * soak.interval
        owed = 0.0
        while mine and not soak.stopping:
            now = time.monotonic()
            if now >= next_churn:
                next_churn += soak.interval
                owed += soak.churn * len(mine)
                while owed >= 1.0 and not soak.stopping:
                    owed -= 1.0
                    slot = rng.choice(mine)
                    self.close(slot, rng.random() < P_ABORT)
                    self.open(slot)
                continue
            if next_op > now:
                time.sleep(min(next_op - now, next_churn - now))
                continue
            next_op = max(next_op + period, now - 1.0)
            slot = rng.choice(mine)
            session = soak.slots[slot]
            if session is None or session.is_closed:
                self.close(slot, abort=True)
                self.open(slot)
                continue
            op = soak.choose(rng, bool(soak.pools))
            try:
                self.operate(slot, op)
            except Exception as exc:
                soak.failed(op[0], exc)
                self.close(slot, abort=True)

    def open_mine(self, k: int) -> None:
        for slot in self.soak.mine(k):
            if not self.soak.stopping:
                self.open(slot)

    def close_mine(self, k: int) -> None:
        for slot in self.soak.mine(k):
            self.close(slot, abort=False)

    def each(self, target: Callable[[int], None]) -> None:
        """Run *target(k)* in a thread per worker; wait for all of them."""
        threads = [threading.Thread(target=target, args=(k,), name=f"soak-{k}", daemon=True)
                   for k in range(self.soak.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            # Polled with a bound: the main thread must stay free for Ctrl-C.
            while thread.is_alive():
                thread.join(0.2)

    def run(self) -> float:
        soak = self.soak
        try:
            ramp_start = time.monotonic()
            if soak.pools_on:
                soak.pools = [self.transport.pool(url, min=1, max=3) for url in soak.urls]
            self.each(self.open_mine)
            ramp = time.monotonic() - ramp_start
            soak.opened(ramp)
            start = time.monotonic()
            sampler = threading.Thread(target=self._sample_until_done, args=(start,),
                                       name="soak-sampler", daemon=True)
            sampler.start()
            self.each(lambda k: self.worker(k, start))
            while sampler.is_alive():
                sampler.join(0.2)
            self.each(self.close_mine)
            for pool in soak.pools:
                pool.close()
        finally:
            self.transport.graceful_shutdown(5.0)
        return ramp

    def _sample_until_done(self, start: float) -> None:
        next_at = start
        while True:
            now = time.monotonic()
            if now < next_at and not self.soak.stopping:
                time.sleep(min(next_at - now, 0.25))
                continue
            if not self.soak.record(now - start, None):
                return
            next_at += self.soak.interval


def _run_sync(soak: Soak) -> float:
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def interrupt(_sig: int, _frame: Any) -> None:
            soak.interrupted = soak.stopping = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, interrupt)
    try:
        return _SyncClient(soak).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- sampling and the report -------------------------------------------------------------------


def _sample(soak: Soak, t: float, tasks: int | None) -> dict[str, Any] | None:
    """Both processes' figures now, or ``None`` if the server is gone."""
    server = soak.server
    try:
        if not server.alive():
            return None
        srv = read_process(server.pid)
    except ProcessGone:
        return None
    cli: dict[str, Any] = dict(read_process(os.getpid()))
    cli["tasks"] = tasks
    cli["sessions"] = sum(1 for s in soak.slots if s is not None and not s.is_closed)
    latencies = sorted(soak.take_latencies())
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else None
    return {"t": round(t, 3), "server": srv, "client": cli, "messages": soak.messages,
            "errors": sum(soak.errors.values()), "p99_ms": p99}


def _progress(sample: dict[str, Any], out: TextIO) -> None:
    srv, cli = sample["server"], sample["client"]
    rate = sample.get("rate")
    print(f"soak: t={sample['t']:6.0f} s  server {srv['rss_kib'] / 1024:6.1f} MiB "
          f"{srv['fds']:5d} fds {srv['threads']:3d} thr | client {cli['rss_kib'] / 1024:6.1f} "
          f"MiB {cli['fds']:5d} fds {cli['sessions']:5d} sessions | "
          f"{rate if rate is not None else 0:7.0f} msg/s, {sample['errors']} errors",
          file=out, flush=True)


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``soak`` with parsed *args*; return the exit status (0 clean, 1 a failure)."""
    out = out or sys.stdout
    if not Path("/proc/self/status").exists():
        print("msgtrans soak: needs Linux's /proc to read the processes' figures", file=sys.stderr)
        return 2
    protocols: list[str] = args.protocols
    workers = args.workers or (16 if args.backend == "sync" else 32)
    workers = min(workers, args.sessions)
    warmup = args.warmup if args.warmup is not None else warmup_seconds(args.duration)
    with tempfile.TemporaryDirectory(prefix="msgtrans-soak-") as folder, \
            ServerProcess(args.backend, protocols, Path(folder) / "server.log") as server:
        try:
            bound = server.start()
        except RuntimeError as exc:
            print(f"msgtrans soak: {exc}", file=sys.stderr)
            return 1
        soak = Soak(args.sessions, client_urls(bound, protocols), args.duration, args.interval,
                    args.churn, args.rate, workers, args.seed, server, out, args.pools)
        print(f"soak: server pid {server.pid} ({args.backend}) on {json.dumps(bound)}; "
              f"{args.sessions} sessions, {args.duration:g} s, sample every {args.interval:g} s, "
              f"churn {args.churn:.0%}/interval, {args.rate:g} ops/s, {workers} workers",
              file=out, flush=True)
        wall = time.monotonic()
        ramp = 0.0
        try:
            if args.backend == "trio":
                import trio  # type: ignore[import-untyped, unused-ignore]

                ramp = float(trio.run(_trio_main, soak, args.backend))
            elif args.backend == "sync":
                ramp = _run_sync(soak)
            else:
                ramp = asyncio.run(_asyncio_main(soak, args.backend))
        except KeyboardInterrupt:  # a second Ctrl-C, or one before the handlers were in place
            soak.interrupted = True
        wall = time.monotonic() - wall
        alive = server.alive() and not soak.server_died
        log = server.log_lines()
        status = server.stop()
    samples = soak.samples
    summary = summarize(samples, warmup)
    traffic = samples[-1]["t"] if samples else 0.0
    result = {
        "backend": args.backend, "protocols": protocols, "sessions": args.sessions,
        "duration": args.duration, "interval": args.interval, "churn": args.churn,
        "rate": args.rate, "workers": workers, "seed": args.seed, "ramp_s": ramp,
        "traffic_s": traffic, "wall_s": wall, "interrupted": soak.interrupted,
        "samples": samples, "summary": summary, "ops": dict(soak.ops),
        "messages": soak.messages,
        "messages_per_s": soak.messages / traffic if traffic else None,
        "errors": dict(soak.errors), "first_errors": soak.first_errors,
        "server": {"alive_to_end": alive, "exit_status": status,
                   "log_lines": len(log), "log_tail": log[-5:]},
    }
    ok = alive and status == 0 and not soak.errors and bool(samples)
    result["ok"] = ok
    _report(result, out)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


def _report(result: dict[str, Any], out: TextIO) -> None:
    print(file=out)
    for line in format_table(result["samples"]):
        print(line, file=out)
    print(file=out)
    for line in format_summary(result["summary"]):
        print(line, file=out)
    print(file=out)
    rate = result["messages_per_s"]
    print(f"operations: {json.dumps(result['ops'], sort_keys=True)}", file=out)
    print(f"messages: {result['messages']} in {result['traffic_s']:.0f} s "
          f"({rate or 0:.0f}/s); sessions opened in {result['ramp_s']:.1f} s", file=out)
    errors = result["errors"]
    print(f"errors: {json.dumps(errors, sort_keys=True) if errors else 'none'}", file=out)
    for line in result["first_errors"]:
        print(f"  {line}", file=out)
    srv = result["server"]
    print(f"server: {'alive to the end' if srv['alive_to_end'] else 'DIED'}, exit status "
          f"{srv['exit_status']}, {srv['log_lines']} log lines (WARNING and above)", file=out)
    for line in srv["log_tail"]:
        print(f"  {line}", file=out)
    if result["interrupted"]:
        print("interrupted: the figures cover the run up to the interrupt", file=out)
    print(f"result: {'ok' if result['ok'] else 'FAILED'}", file=out, flush=True)
