"""``Transport.serve(workers=N)`` on the blocking backend: the supervisor
(msgtrans/_driver/workers.py) runs in the calling thread; each worker process serves with a
blocking transport of its own."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._driver.builder import ShutdownReport
from .._driver.workers import WorkerLink, install_stop_signals, supervisor_for, worker_plan
from ..core.config import ServerConfig

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["serve_workers"]

#: Seconds between two looks at the stop flag in a worker (set by its SIGTERM handler).
_POLL = 0.05


def serve_workers(transport: Transport, configs: Any, handler: Any, count: int,
                  threads: int) -> ShutdownReport:
    """Supervise *count* worker processes serving *configs* with *handler* (each with
    *threads* handler threads) until SIGINT or SIGTERM (where nobody set a handler of their
    own), ``KeyboardInterrupt`` or the transport's shutdown from another thread; stop them
    gracefully and return their reports summed."""
    from ._transport import SessionStream

    server, build = worker_plan(transport, configs, SessionStream)
    supervisor = supervisor_for(transport, count, _main(build, server, handler, threads))
    restore = install_stop_signals(supervisor.stop)
    try:
        return supervisor.run(lambda: transport._closing)
    except BaseException:
        supervisor.stop()
        supervisor.run()  # the stop, carried on
        raise
    finally:
        restore()


def _main(build: Callable[[], Transport], configs: list[ServerConfig], handler: Any,
          threads: int) -> Callable[[WorkerLink], None]:
    def main(link: WorkerLink) -> None:
        _worker(build(), configs, handler, threads, link)

    return main


def _worker(transport: Transport, configs: Iterable[ServerConfig], handler: Any, threads: int,
            link: WorkerLink) -> None:
    # In the worker process: serve (in a thread) until SIGTERM, then shut down gracefully.
    stopped: list[int] = []
    # A flag polled, not an Event: Event.set() from a signal handler that interrupted this
    # thread inside Event.wait() could try to take the lock this thread holds.
    signal.signal(signal.SIGTERM, lambda sig, _frame: stopped.append(sig))
    stream = transport.accept(configs)
    stream.start()
    link.ready(stream.addresses)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            transport.serve(stream, handler, threads=threads)
        except BaseException as exc:  # handed to this thread, which raises it
            failure.append(exc)

    serving = threading.Thread(target=serve, name="msgtrans-worker-serve")
    serving.start()
    try:
        due = time.monotonic() + link.interval
        while not stopped and serving.is_alive():
            time.sleep(_POLL)
            if time.monotonic() >= due:
                link.stats(transport.stats())
                due += link.interval
    finally:
        report = transport.graceful_shutdown(transport._shutdown_timeout)
        stream.close()
        serving.join(transport._shutdown_timeout + 2.0)
    if failure:
        raise failure[0]
    link.report(report)
