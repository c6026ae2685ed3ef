"""Worker processes for ``serve(workers=N)``: the supervisor, backend-neutral.

With ``workers=N`` (N > 1) the calling process becomes a supervisor: it forks N worker
processes (``multiprocessing`` with the ``fork`` start method), each of which builds its own
``Transport`` of the same class with the same builder settings and serves the same listen
addresses, every listening socket with ``SO_REUSEPORT`` (the kernel spreads new connections, and
QUIC's datagrams by their 4-tuple, over the workers).  The supervisor listens on nothing itself.

* The handler object (and everything the worker's transport settings refer to: the admission
  hook, the ``on_shutdown`` callback) is *inherited by fork*: each worker has its own copy, made
  when it was forked.  Nothing is shared between workers or with the supervisor afterwards (a
  counter a handler increments counts that worker's sessions only).
* A worker that dies is restarted, at most :attr:`RestartPolicy.max_restarts` times within
  :attr:`RestartPolicy.window` seconds per worker slot (default 5 per 60 s); past that the slot
  is given up with one error line, and once every slot is given up the supervisor returns.
* :meth:`Supervisor.stop` (from a signal handler, another thread, a cancelled ``serve``) sends
  SIGTERM to every worker, whose transport then shuts down gracefully and sends its
  :class:`~msgtrans.ShutdownReport` back; a worker still alive after the shutdown timeout (plus
  :data:`KILL_GRACE`) gets SIGKILL.  :meth:`Supervisor.run` returns the reports summed.
* Every worker sends its :class:`~msgtrans.core.metrics.MetricsSnapshot` every
  :data:`STATS_INTERVAL` seconds; :meth:`Supervisor.stats` merges the latest of each (and the
  counters of exited workers) with :func:`~msgtrans.core.aggregate.merge_snapshots`.
* A worker whose supervisor dies (SIGKILL) notices (a pipe it reads reaches its end) and shuts
  down gracefully too: no orphans keep the port.

Workers and the supervisor talk through one ``multiprocessing`` pipe per worker (worker ->
supervisor: ``ready``, ``stats`` and ``report`` messages, pickled).  The supervisor runs in one
thread, blocking (each backend's ``serve`` runs it in a thread, or in the calling thread for the
blocking backend); forks happen from that thread, with SIGINT and SIGTERM blocked so that the
child can reset their handlers before any arrives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import encodings.idna  # noqa: F401  # see READY_TIMEOUT
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.aggregate import empty_snapshot, merge_snapshots, retired
from ..core.config import ServerConfig
from ..core.errors import ConfigurationError
from ..core.metrics import MetricsSnapshot
from .builder import ShutdownReport

__all__ = [
    "KILL_GRACE",
    "READY_TIMEOUT",
    "STATS_INTERVAL",
    "RestartPolicy",
    "Supervisor",
    "WorkerLink",
    "install_stop_signals",
    "worker_configs",
    "worker_count",
]

logger = logging.getLogger("msgtrans.workers")

#: Seconds between two metrics snapshots a worker sends its supervisor.
STATS_INTERVAL = 1.0
#: Seconds a stopped worker gets beyond the shutdown timeout before SIGKILL.
KILL_GRACE = 2.0
#: Seconds a new worker has to report its listeners bound; past them it is killed (and counts
#: as an exit, restarted by the policy).  The fork caveat: a child gets a copy of every lock,
#: held or not, and one another thread of the parent held at the fork (an import's module
#: lock, a library's) never frees there.  A supervisor whose process does other work in threads
#: can meet it; the worker's first steps avoid what they can (the ``idna`` codec, which a first
#: ``getaddrinfo`` imports, is imported here), and this bounds the rest.
READY_TIMEOUT = 20.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds between two looks at ``should_stop`` (a transport shut down under the supervisor).
_POLL = 0.25


@dataclass(frozen=True)
class RestartPolicy:
    """How often the supervisor restarts a worker slot.

    Attributes:
        max_restarts: restarts of one slot allowed within *window* seconds (default 5); the
            next exit within the window gives the slot up (logged as an error).
        window: seconds (default 60).
    """

    max_restarts: int = 5
    window: float = 60.0


def worker_count(workers: object, default: int = 1) -> int:
    """The number of worker processes ``serve(workers=)`` asks for: *workers*, or *default*
    (the builder's ``worker_threads``) when it is ``None``.

    Raises:
        ConfigurationError: not ``None`` or an integer in [1, 1024] (field ``workers``).
    """
    if workers is None:
        return default
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 1024:
        raise ConfigurationError("workers",
                                 f"must be None or an integer in [1, 1024], got {workers!r}")
    return workers


def worker_configs(configs: Iterable[ServerConfig]) -> list[ServerConfig]:
    """*configs* as every worker listens with them: ``reuse_port`` forced on.

    Raises:
        ConfigurationError: no ``fork`` start method or no ``SO_REUSEPORT`` on this platform
            (field ``workers``), or a config with port 0 (field ``addr``: each worker would
            pick a port of its own; give the port).
    """
    if "fork" not in multiprocessing.get_all_start_methods() or not hasattr(socket,
                                                                            "SO_REUSEPORT"):
        raise ConfigurationError(
            "workers", "worker processes need fork() and SO_REUSEPORT (Linux, the BSDs, macOS); "
            "run one process per port instead")
    out = []
    for config in configs:
        if config.addr[1] == 0:
            raise ConfigurationError(
                "addr", f"port 0 with workers: every worker would listen on a port of its own; "
                f"give {config.protocol.name.lower()}'s port ({config.addr[0]}:0)")
        out.append(config if config.reuse_port else replace(config, reuse_port=True))
    return out


class WorkerLink:
    """What a worker process tells its supervisor (the worker's end of its pipe).

    Attributes:
        interval: seconds between two :meth:`stats` the supervisor expects.
    """

    def __init__(self, conn: multiprocessing.connection.Connection, interval: float) -> None:
        self._conn = conn
        self.interval = interval

    def _send(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError, ValueError):  # the supervisor is gone: nothing to do
            self._conn.send(message)

    def ready(self, addresses: Sequence[tuple[str, int]]) -> None:
        """Every listener of the worker is bound (at *addresses*)."""
        self._send(("ready", os.getpid(), list(addresses)))

    def stats(self, snapshot: MetricsSnapshot) -> None:
        """The worker's metrics now."""
        self._send(("stats", snapshot))

    def report(self, report: ShutdownReport) -> None:
        """The worker shut down: its report (its final metrics in it)."""
        self._send(("report", report))


#: Runs in a worker process: build the transport, serve until SIGTERM, shut down gracefully,
#: tell the link (each backend supplies one).
WorkerMain = Callable[[WorkerLink], None]


@dataclass
class _Slot:
    index: int
    process: Any = None  # multiprocessing.Process (its type is the context's)
    conn: multiprocessing.connection.Connection | None = None
    pid: int | None = None
    ready: bool = False
    last: MetricsSnapshot | None = None
    report: ShutdownReport | None = None
    exits: deque[float] = field(default_factory=deque)
    given_up: bool = False
    killed: bool = False
    started: float = 0.0


class Supervisor:
    """Starts *count* worker processes running *main* and keeps them running (see the module
    text).

    Args:
        count: worker processes (at least 1).
        main: what a worker runs (in the forked child).
        shutdown_timeout: seconds a stopped worker's graceful shutdown may take.
        policy: the restart rate bound.
        stats_interval: seconds between two metrics snapshots of a worker.
        on_ready: called once (supervisor thread) with the workers' pids when every worker
            reported its listeners bound for the first time.
    """

    def __init__(self, count: int, main: WorkerMain, *, shutdown_timeout: float,
                 policy: RestartPolicy | None = None, stats_interval: float = STATS_INTERVAL,
                 on_ready: Callable[[list[int]], None] | None = None) -> None:
        self._main = main
        self._shutdown_timeout = shutdown_timeout
        self._policy = policy or RestartPolicy()
        self._interval = stats_interval
        self._on_ready = on_ready
        self._slots = [_Slot(i) for i in range(count)]
        self._lock = threading.Lock()
        self._retired = empty_snapshot()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Held open for the supervisor's life: a worker reading its other end sees EOF when the
        # supervisor dies, however it died.
        self._life_r, self._life_w = os.pipe()
        self._stop_requested = False
        self._stopping_since: float | None = None
        self._announced = False
        # The reports of workers that shut down, and the live sessions of those that ended
        # during the stop without one (counted as forced).
        self._reports: list[ShutdownReport] = []
        self._lost = 0
        self._ctx = multiprocessing.get_context("fork")

    # --- what other threads read -----------------------------------------------------------------

    def pids(self) -> list[int]:
        """The pids of the live workers, by slot."""
        with self._lock:
            return [s.pid for s in self._slots if s.pid is not None]

    @property
    def given_up(self) -> list[int]:
        """The slots given up (restarted too often)."""
        return [s.index for s in self._slots if s.given_up]

    def stats(self, *more: MetricsSnapshot) -> MetricsSnapshot:
        """The merged metrics: every live worker's latest, the counters of the workers that
        exited, and *more* (the supervisor's own transport's)."""
        with self._lock:
            parts = [s.last for s in self._slots if s.last is not None]
            gone = self._retired
        return merge_snapshots(*more, gone, *parts)

    def stop(self) -> None:
        """Begin the graceful stop of every worker (from any thread or a signal handler)."""
        self._stop_requested = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # --- the supervisor's thread -----------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool] | None = None) -> ShutdownReport:
        """Start the workers, keep them running until :meth:`stop` (or *should_stop* answers
        true, or every slot was given up), stop them; return their reports summed (see
        :meth:`_report`).  Called again after an interruption, it carries on."""
        try:
            for slot in self._slots:
                if (slot.process is None and not slot.given_up and not self._stop_requested
                        and self._stopping_since is None):
                    self._start(slot)
            while True:
                if self._stopping_since is None and (
                        self._stop_requested or (should_stop is not None and should_stop())):
                    self._begin_stop()
                live = [s for s in self._slots if s.process is not None]
                if not live and (self._stopping_since is not None
                                 or all(s.given_up for s in self._slots)):
                    break
                timeout = _POLL
                self._kill_unready(live)
                if self._stopping_since is not None:
                    deadline = self._stopping_since + self._shutdown_timeout + KILL_GRACE
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._kill(live)
                        left = _POLL
                    timeout = min(timeout, left)
                waitables: list[Any] = [self._wake_r]
                for slot in live:
                    if slot.conn is not None:
                        waitables.append(slot.conn)
                    waitables.append(slot.process.sentinel)
                ready = multiprocessing.connection.wait(waitables, timeout)
                if self._wake_r in ready:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                for slot in live:
                    if slot.conn is not None and slot.conn in ready:
                        self._receive(slot)
                    if slot.process.sentinel in ready:
                        self._exited(slot)
            return self._report()
        finally:
            if all(s.process is None for s in self._slots):
                self._close()

    def _start(self, slot: _Slot) -> None:
        receive, send = self._ctx.Pipe(duplex=False)
        keep = [send.fileno(), self._life_r]
        close = [fd for fd in self._inherited_fds() if fd not in keep]
        process = self._ctx.Process(
            target=_child, args=(self._main, send, self._interval, self._life_r, close),
            name=f"msgtrans-worker-{slot.index}", daemon=False)
        # Blocked in this thread while forking: the child starts with them blocked and unblocks
        # them once its own handlers are set (the parent's may write to the parent's pipes).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns about fork() in a process with threads: the child only
                # runs fresh code (a new transport and event loop), never the parent's threads'.
                warnings.simplefilter("ignore", DeprecationWarning)
                process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        send.close()
        with self._lock:
            slot.process, slot.conn, slot.pid = process, receive, process.pid
            slot.ready, slot.report, slot.killed = False, None, False
            slot.started = time.monotonic()
        logger.info("worker %d started (pid %d)", slot.index, process.pid)

    def _inherited_fds(self) -> list[int]:
        # The supervisor's own descriptors a worker must not keep: the other workers' pipes and
        # the wake-up pair (the life pipe's write end above all: its EOF is the signal).
        fds = [self._wake_r.fileno(), self._wake_w.fileno(), self._life_w]
        fds += [s.conn.fileno() for s in self._slots if s.conn is not None]
        return fds

    def _receive(self, slot: _Slot) -> None:
        conn = slot.conn
        assert conn is not None
        try:
            while conn.poll():
                message = conn.recv()
                kind = message[0]
                if kind == "stats":
                    with self._lock:
                        slot.last = message[1]
                elif kind == "report":
                    with self._lock:
                        slot.report = message[1]
                        if slot.report.metrics is not None:
                            slot.last = slot.report.metrics
                elif kind == "ready":
                    slot.ready = True
                    self._maybe_announce()
        except (EOFError, OSError):
            conn.close()
            slot.conn = None

    def _maybe_announce(self) -> None:
        if self._announced or not all(s.ready for s in self._slots if not s.given_up):
            return
        self._announced = True
        if self._on_ready is not None:
            self._on_ready(self.pids())

    def _exited(self, slot: _Slot) -> None:
        process = slot.process
        process.join()
        if slot.conn is not None:
            self._receive(slot)  # what it sent before it ended
            if slot.conn is not None:
                slot.conn.close()
        code = process.exitcode
        with self._lock:
            if slot.last is not None:
                self._retired = merge_snapshots(self._retired, retired(slot.last))
            if slot.report is not None:
                self._reports.append(slot.report)
            elif self._stopping_since is not None and slot.last is not None:
                # Killed (or died) during the stop without a report: its live sessions were
                # dropped.
                self._lost += sum(slot.last.sessions.values())
            slot.process = slot.conn = slot.pid = slot.last = None
            slot.report = None
        how = f"exit status {code}" if code is None or code >= 0 else (
            f"signal {signal.Signals(-code).name}")
        if self._stopping_since is not None:
            logger.info("worker %d (pid %d) ended (%s)", slot.index, process.pid, how)
            return
        now = time.monotonic()
        slot.exits.append(now)
        while slot.exits and slot.exits[0] < now - self._policy.window:
            slot.exits.popleft()
        if len(slot.exits) > self._policy.max_restarts:
            slot.given_up = True
            logger.error("worker %d (pid %d) ended (%s): it ended %d times within %g s; not "
                         "restarting it (%d of %d workers left)", slot.index, process.pid, how,
                         len(slot.exits), self._policy.window,
                         sum(not s.given_up for s in self._slots), len(self._slots))
            self._maybe_announce()
            return
        logger.warning("worker %d (pid %d) ended (%s); restarting it", slot.index, process.pid,
                       how)
        self._start(slot)

    def _kill_unready(self, live: list[_Slot]) -> None:
        now = time.monotonic()
        for slot in live:
            if not slot.ready and not slot.killed and now - slot.started > READY_TIMEOUT:
                slot.killed = True
                logger.error("worker %d (pid %d) did not listen within %g s: killing it",
                             slot.index, slot.process.pid, READY_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGKILL)

    def _begin_stop(self) -> None:
        self._stopping_since = time.monotonic()
        live = [s for s in self._slots if s.process is not None]
        logger.info("stopping %d workers", len(live))
        for slot in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid, signal.SIGTERM)

    def _kill(self, live: list[_Slot]) -> None:
        for slot in live:
            if not slot.killed:
                slot.killed = True
                logger.warning("worker %d (pid %d) did not stop within %.1f s: killing it",
                               slot.index, slot.process.pid,
                               self._shutdown_timeout + KILL_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGKILL)

    def _report(self) -> ShutdownReport:
        """The workers' shutdown reports summed: sessions closed cleanly and forced (plus the
        live sessions of workers killed without a report), messages flushed; ``elapsed`` is
        the supervisor's stop, start to end; ``metrics`` the merged final snapshot."""
        reports = self._reports
        elapsed = 0.0 if self._stopping_since is None else (
            time.monotonic() - self._stopping_since)
        return ShutdownReport(
            closed_cleanly=sum(r.closed_cleanly for r in reports),
            forced=sum(r.forced for r in reports) + self._lost,
            messages_flushed=sum(r.messages_flushed for r in reports),
            elapsed=elapsed, metrics=self.stats())

    def _close(self) -> None:
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        for fd in (self._life_r, self._life_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._life_r = self._life_w = -1


def _child(main: WorkerMain, conn: multiprocessing.connection.Connection, interval: float,
           life: int, close: list[int]) -> None:
    """A worker process's first steps (in the forked child), then *main*."""
    # The parent's wake-up fd (asyncio's or trio's signal pipe) must not get this process's
    # signals; SIGINT (a terminal's Ctrl-C reaches the whole group) is the supervisor's to
    # handle, which then sends SIGTERM.
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for fd in close:
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    threading.Thread(target=_watch_supervisor, args=(life,), name="msgtrans-worker-life",
                     daemon=True).start()
    status = 0
    try:
        main(WorkerLink(conn, interval))
    except BaseException:
        status = 1
        traceback.print_exc()
    # Ended here, not by multiprocessing's own exit: its threading._shutdown() fails in a
    # child forked from a thread other than the main one (Python 3.11), which would turn every
    # exit into status 1.  The parent's atexit handlers are the parent's: none run here.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def _watch_supervisor(life: int) -> None:
    # Blocks until the supervisor's end of the life pipe closes (it exited, however).
    with contextlib.suppress(OSError):
        while os.read(life, 1):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def worker_plan(transport: Any, configs: Any, stream_type: type
                ) -> tuple[list[ServerConfig], Callable[[], Any]]:
    """What ``serve(configs, workers=N)`` of *transport* starts each worker with: the server
    configs (the builder's transport-wide fields applied, ``reuse_port`` on) and what builds
    the worker's own transport (the same class, the same settings).

    Raises:
        ConfigurationError: *configs* is a started or unstarted ``SessionStream`` (each worker
            opens its own listeners), or see :func:`worker_configs`.
    """
    if isinstance(configs, stream_type):
        raise ConfigurationError(
            "workers", "serve(workers=N) needs the configs or URLs, not a SessionStream: each "
            "worker process opens its own listeners")
    server = worker_configs(transport._server_configs(configs))
    cls, args = type(transport), transport._init_args

    def build() -> Any:
        # Each worker is a backplane node of its own: one node id shared by all would make
        # each ignore the others' envelopes as its own.  An explicit id gets ".w<pid>".
        defaults = args.get("defaults")
        backplane = getattr(defaults, "backplane", None)
        if backplane is None or backplane.node_id is None:
            return cls(**args)
        node_id = f"{backplane.node_id[:48]}.w{os.getpid()}"
        own = dataclasses.replace(defaults, backplane=dataclasses.replace(backplane,
                                                                          node_id=node_id))
        return cls(**{**args, "defaults": own})

    return server, build


def supervisor_for(transport: Any, count: int, main: WorkerMain) -> Supervisor:
    """The :class:`Supervisor` of *transport*'s ``serve(workers=count)``, attached to it (its
    ``stats()`` then merges the workers').  ``transport._on_workers_ready`` (the CLI sets it),
    when there, is called with the workers' pids once they all listen."""
    supervisor = Supervisor(count, main, shutdown_timeout=transport._shutdown_timeout,
                            on_ready=getattr(transport, "_on_workers_ready", None))
    transport._supervisor = supervisor
    return supervisor


def _is_coverage_handler(handler: object) -> bool:
    # coverage.py's sigterm = true handler (a bound method of coverage.control.Coverage).
    return str(getattr(handler, "__module__", "") or "").startswith("coverage")


def install_stop_signals(stop: Callable[[], None]) -> Callable[[], None]:
    """In the main thread, make SIGINT and SIGTERM call *stop* where they still have their
    default handlers (an application's own handlers are left alone), or coverage.py's (which
    only saves its data and then kills the process: the graceful exit saves it too); return
    what restores them.  Elsewhere (another thread) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    for sig, default in defaults.items():
        handler = signal.getsignal(sig)
        if handler is default or _is_coverage_handler(handler):
            previous[sig] = signal.signal(sig, lambda _sig, _frame: stop())

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
