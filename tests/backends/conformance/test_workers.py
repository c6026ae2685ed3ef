"""``transport.serve(configs, handler, workers=2)`` on every backend, over TCP and QUIC, through the
Python API: the
supervisor runs in a process of its own (started with ``spawn``: a clean interpreter, not a
fork of this test process and its threads), its handler answers each request with the pid of
the worker that served it; sessions reach both workers, ``stats()`` in the supervisor merges
theirs, SIGTERM ends ``serve`` with the summed report and no worker left."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import msgtrans.io_sync as smt

from ...workerprocs import Leftovers, free_port, gone, wait_until
from .adapters import BACKENDS, Certs

pytestmark = pytest.mark.network

START = 20.0
STOP = 15.0


class AsyncPidHandler:
    """Answers every request with the serving process's pid."""

    async def on_request(self, session: Any, message: Any) -> bytes:
        return str(os.getpid()).encode()


class SyncPidHandler:
    def on_request(self, session: Any, message: Any) -> bytes:
        return str(os.getpid()).encode()


def supervise(backend: str, url: str, conn: Any) -> None:
    """The supervisor process: ``serve(workers=2)`` on *backend*; answers ``"stats"`` and
    ``"pids"`` on *conn* from a thread, and sends ``("report", report)`` once serve returned
    (SIGTERM ends it: serve's own handler, the process having set none)."""
    import importlib

    mt = importlib.import_module(f"msgtrans.io_{backend}")
    transport = mt.Transport.builder().shutdown_timeout(2.0).build()

    def answer() -> None:
        while True:
            try:
                what = conn.recv()
            except EOFError:
                return
            supervisor = transport._supervisor
            if what == "stats":
                conn.send(("stats", transport.stats()))
            elif what == "prometheus":
                conn.send(("prometheus", transport.stats_prometheus()))
            elif what == "pids":
                conn.send(("pids", [] if supervisor is None else supervisor.pids()))

    threading.Thread(target=answer, daemon=True).start()
    if backend == "sync":
        report = transport.serve([url], SyncPidHandler(), workers=2)
    elif backend == "trio":
        import trio  # type: ignore[import-untyped, unused-ignore]

        async def main_trio() -> Any:
            async with transport:
                return await transport.serve([url], AsyncPidHandler(), workers=2)

        report = trio.run(main_trio)
    else:
        import asyncio

        async def main_asyncio() -> Any:
            async with transport:
                return await transport.serve([url], AsyncPidHandler(), workers=2)

        report = asyncio.run(main_asyncio())
    conn.send(("report", report))


@pytest.fixture
def leftovers() -> Iterator[Leftovers]:
    record = Leftovers()
    try:
        yield record
    finally:
        record.kill_all()


def _ask(conn: Any, what: str) -> Any:
    conn.send(what)
    assert conn.poll(5.0), f"no answer to {what!r}"
    kind, value = conn.recv()
    assert kind == what
    return value


@pytest.mark.parametrize("proto", ["tcp", "quic"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_serve_with_two_workers(backend: str, proto: str, certs: Certs,
                                leftovers: Leftovers) -> None:
    # QUIC: SO_REUSEPORT on the UDP socket; each client's 4-tuple stays on one worker.
    port = free_port()
    cert, key = certs
    if proto == "quic":
        url = f"quic://127.0.0.1:{port}?cert={cert}&key={key}"
        target = f"quic://localhost:{port}?ca={cert}"
    else:
        url = target = f"tcp://127.0.0.1:{port}"
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=supervise, args=(backend, url, theirs))
    process.start()
    assert process.pid is not None
    leftovers.add(process.pid)
    pids: list[int] = []

    def two_workers() -> bool:
        pids[:] = _ask(ours, "pids")
        return len(pids) == 2

    wait_until(two_workers, START, "two workers started", step=0.1)
    leftovers.add(*pids)

    served: dict[int, int] = {}
    with smt.Transport() as client:
        for _ in range(400):
            try:
                session = client.connect(target, timeout=5.0)
            except smt.TransportConnectionError:  # the workers are not listening yet
                continue
            pid = int(session.request(b"which", timeout=5.0).payload)
            session.close()
            served[pid] = served.get(pid, 0) + 1
            if len(served) == 2 and sum(served.values()) >= 10:
                break
    assert set(served) == set(pids), served
    total = sum(served.values())

    # The supervisor's stats(): every worker's (sent each second), merged.
    wait_until(lambda: _ask(ours, "stats").messages_in == total, 5.0,
               f"the merged stats counting all {total} requests", step=0.2)
    # One scrape of the supervisor shows the whole server.
    assert f'msgtrans_messages_total{{direction="in"}} {total}\n' in _ask(ours, "prometheus")

    os.kill(process.pid, signal.SIGTERM)
    assert ours.poll(STOP), "serve() did not return after SIGTERM"
    kind, report = ours.recv()
    assert kind == "report"
    process.join(STOP)
    assert process.exitcode == 0
    assert report.metrics.messages_in == total
    assert report.forced == 0
    for pid in pids:
        assert gone(pid), pid
