"""``Transport.serve(workers=N)`` on asyncio: the supervisor (msgtrans/_driver/workers.py) runs
in a thread of its own while the event loop goes on; each worker process runs a fresh event
loop with a transport of its own."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._driver.builder import ShutdownReport
from .._driver.workers import (
    WorkerLink,
    install_stop_signals,
    supervisor_for,
    worker_plan,
)
from ..core.config import ServerConfig

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["serve_workers"]


async def serve_workers(transport: Transport, configs: Any, handler: Any,
                        count: int) -> ShutdownReport:
    """Supervise *count* worker processes serving *configs* with *handler* until cancelled,
    SIGINT or SIGTERM (where the application set no handler of its own) or the transport
    shuts down; stop them gracefully and return their reports summed."""
    from ._transport import SessionStream

    server, build = worker_plan(transport, configs, SessionStream)
    supervisor = supervisor_for(transport, count, _main(build, server, handler))
    restore = install_stop_signals(supervisor.stop)
    try:
        running = asyncio.ensure_future(
            asyncio.to_thread(supervisor.run, lambda: transport._closing))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            supervisor.stop()
            with contextlib.suppress(Exception):
                await running
            raise
    finally:
        restore()


def _main(build: Callable[[], Transport], configs: list[ServerConfig],
          handler: Any) -> Callable[[WorkerLink], None]:
    def main(link: WorkerLink) -> None:
        asyncio.run(_worker(build(), configs, handler, link))

    return main


async def _worker(transport: Transport, configs: Iterable[ServerConfig], handler: Any,
                  link: WorkerLink) -> None:
    # In the worker process: serve until SIGTERM, then shut down gracefully and report.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stream = transport.accept(configs)
    await stream.start()
    link.ready(stream.addresses)
    serving = loop.create_task(transport.serve(stream, handler))
    stopped = loop.create_task(stop.wait())
    try:
        while not stop.is_set() and not serving.done():
            await asyncio.wait({serving, stopped}, timeout=link.interval)
            link.stats(transport.stats())
        if serving.done():
            serving.result()  # serve() ended on its own: only an error does that
    finally:
        stopped.cancel()
        report = await transport.graceful_shutdown(transport._shutdown_timeout)
        if not serving.done():
            serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await stream.aclose()
    link.report(report)
