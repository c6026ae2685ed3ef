"""``Transport.serve(workers=N)`` on trio: the supervisor (msgtrans/_driver/workers.py) runs in
a worker thread while trio goes on; each worker process runs ``trio.run`` with a transport of
its own."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

from .._driver.builder import ShutdownReport
from .._driver.workers import WorkerLink, install_stop_signals, supervisor_for, worker_plan
from ..core.config import ServerConfig

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["serve_workers"]


async def serve_workers(transport: Transport, configs: Any, handler: Any,
                        count: int) -> ShutdownReport:
    """Supervise *count* worker processes serving *configs* with *handler* until cancelled,
    SIGINT or SIGTERM (where nobody set a handler of their own: under ``trio.run`` SIGINT is
    trio's, and raises ``KeyboardInterrupt``, which cancels this) or the transport shuts down;
    stop them gracefully and return their reports summed."""
    from ._transport import SessionStream

    server, build = worker_plan(transport, configs, SessionStream)
    supervisor = supervisor_for(transport, count, _main(build, server, handler))
    restore = install_stop_signals(supervisor.stop)
    report: ShutdownReport | None = None

    async def on_cancel() -> None:
        try:
            await trio.sleep_forever()
        finally:
            supervisor.stop()  # cancelled (or run() returned): the thread finishes the stop

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_cancel)
            # Not cancellable: a cancel reaches on_cancel, which stops the workers, and this
            # waits until they are gone.
            report = await trio.to_thread.run_sync(supervisor.run,
                                                   lambda: transport._closing)
            nursery.cancel_scope.cancel()
    finally:
        restore()
    assert report is not None
    return report


def _main(build: Callable[[], Transport], configs: list[ServerConfig],
          handler: Any) -> Callable[[WorkerLink], None]:
    def main(link: WorkerLink) -> None:
        trio.run(_worker, build(), configs, handler, link)

    return main


async def _worker(transport: Transport, configs: Iterable[ServerConfig], handler: Any,
                  link: WorkerLink) -> None:
    # In the worker process: serve until SIGTERM, then shut down gracefully and report.
    async with transport:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            stream = transport.accept(configs)
            await stream.start()
            link.ready(stream.addresses)

            async def tick() -> None:
                while True:
                    await trio.sleep(link.interval)
                    link.stats(transport.stats())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.serve, stream, handler)
                nursery.start_soon(tick)
                async for _ in signals:
                    break
                report = await transport.graceful_shutdown(transport._shutdown_timeout)
                nursery.cancel_scope.cancel()
    link.report(report)
