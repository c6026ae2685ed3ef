"""``python -m msgtrans serve``: a multi-protocol echo server on any backend (``--backend
asyncio``, the default, ``trio`` or ``sync``).

Every request is answered with its own payload and biz_type; every one-way message goes back
to its sender as a one-way message with the same payload and biz_type.  Once every listener is
bound, one JSON line on stdout says where (port 0 resolved), so a script or a test can start the
server on free ports and read the addresses back::

    {"tcp": "127.0.0.1:40123", "ws": "ws://127.0.0.1:40124/", "quic": "127.0.0.1:40125",
     "ca": "/tmp/msgtrans-serve-x1y2/cert.pem"}

SIGINT and SIGTERM shut the server down gracefully; it then exits 0.  The echo logic, the JSON
line and the shutdown are the same on every backend; only the waiting differs (an asyncio loop
signal handler, trio's signal receiver, or a plain signal handler and a serving thread).

``--workers N`` (or ``workers = N`` in ``[serve]``, or the transport setting ``worker_threads``:
``MSGTRANS_WORKER_THREADS=N``) serves from N worker processes sharing each port (see
docs/scaling.md): every address then needs its port (no port 0), the JSON line comes once every
worker listens and adds ``"pid"`` (the supervisor's) and ``"workers"`` (their pids), log lines
carry the pid of the process that wrote them, and SIGINT or SIGTERM stops every worker
gracefully and logs their summed report (also printed on stdout as one JSON line
``{"shutdown": {...}}``).  Exit status 1 when every worker was given up (restarted too often).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..core.errors import TransportConnectionError

__all__ = [
    "BACKENDS",
    "PROTOCOLS",
    "EchoHandler",
    "Listener",
    "SyncEchoHandler",
    "add_arguments",
    "announce",
    "format_address",
    "listeners",
    "main",
    "run_server",
    "run_server_sync",
    "run_server_trio",
]

logger = logging.getLogger("msgtrans.cli.serve")

#: The protocols the server speaks, in the order of the JSON line.
PROTOCOLS = ("tcp", "tls", "ws", "wss", "quic")
#: What ``serve`` listens on when no protocol is named.
DEFAULT_PROTOCOLS = ("tcp", "ws", "quic")
DEFAULT_ADDR = "127.0.0.1:0"
#: Seconds the graceful shutdown on SIGINT/SIGTERM may take before the rest is dropped.
SHUTDOWN_TIMEOUT = 5.0
#: The I/O backends ``--backend`` offers: ``msgtrans.io_<name>``; the first is the default.
BACKENDS = ("asyncio", "trio", "sync")
#: The signals that stop the server gracefully.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``serve``'s options to *parser*."""
    from . import host_port

    for name in PROTOCOLS:
        parser.add_argument(f"--{name}", metavar="HOST:PORT", type=host_port,
                            help=f"serve {name} on HOST:PORT (port 0: a free port)")
    parser.add_argument("--tls-cert", metavar="FILE",
                        help="certificate chain (PEM) for tls, wss and quic "
                             "(default: a self-signed one generated at start)")
    parser.add_argument("--tls-key", metavar="FILE",
                        help="private key (PEM) of --tls-cert (default: in the same file)")
    add_backend_argument(parser, default=None)
    parser.add_argument("--log-level", default=None,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging on stderr (default INFO)")
    parser.add_argument("--redis", metavar="URL", default=None,
                        help="link this server to the other serve --redis nodes through the "
                             "Redis backplane at URL (redis://HOST:PORT/DB): send_to_all, "
                             "groups and `msgtrans publish` reach every node's sessions")
    parser.add_argument("--config", metavar="FILE.toml",
                        help="transport settings ([transport]: one key per builder method) and "
                             "these options ([serve]); MSGTRANS_<SETTING> variables override "
                             "the file, the command line both (see docs/configuration.md)")
    parser.add_argument("--workers", type=_worker_count, default=None, metavar="N",
                        help="serve from N worker processes sharing each port (SO_REUSEPORT; "
                             "every address needs its port; default 1, or the transport "
                             "setting worker_threads; see docs/scaling.md)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective settings as JSON and exit")


def _worker_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1024:
        raise ValueError(text)
    return value


def add_backend_argument(parser: argparse.ArgumentParser, default: str | None = BACKENDS[0]
                         ) -> None:
    """Add ``--backend asyncio|trio|sync`` (default asyncio) to *parser* (*default* ``None``:
    ``serve``, whose config file may name the backend)."""
    parser.add_argument("--backend", choices=BACKENDS, default=default,
                        help="the I/O backend: msgtrans.io_asyncio, io_trio or io_sync "
                             "(default asyncio)")


#: Errors that say a peer went quiet or away, not that anything is wrong with the server: an
#: operator sees them at INFO, not as warnings (a client's network cut is routine).
_QUIET_CODES = frozenset({"timeout.idle", "timeout.first_packet", "timeout.keepalive",
                          "protocol.unexpected_eof"})


def _log_error(session: Any, error: BaseException) -> None:
    """What both echo handlers' ``on_error`` log (see there): connection errors at DEBUG, a
    peer that went silent or died mid-message at INFO, anything else at WARNING."""
    if isinstance(error, TransportConnectionError):
        level = logging.DEBUG
    elif getattr(error, "error_code", None) in _QUIET_CODES:
        level = logging.INFO
    else:
        level = logging.WARNING
    logger.log(level, "session %s: %s", session.id, error)


class EchoHandler:
    """The echo server's ``serve`` handler: requests are answered with their own payload and
    biz_type, one-way messages sent back as one-way messages."""

    async def on_connected(self, session: Any) -> None:
        """Log the new session."""
        logger.info("session %s connected (%s from %s)", session.id, session.protocol.name,
                    session.peer_address)

    async def on_message(self, session: Any, message: Any) -> None:
        """Send the one-way *message* back to its sender."""
        logger.debug("session %s: one-way %r", session.id, message)
        await session.send(message.payload, biz_type=message.biz_type)

    async def on_request(self, session: Any, message: Any) -> Any:
        """Answer the request *message* with its own payload (``serve`` gives a response the
        request's biz_type)."""
        logger.debug("session %s: request %r", session.id, message)
        return message.payload

    async def on_disconnected(self, session: Any, reason: Any) -> None:
        """Log the end of the session."""
        logger.info("session %s closed (%s)", session.id, reason)

    async def on_error(self, session: Any, error: BaseException) -> None:
        """Log what went wrong: a peer that went away (reset, no close handshake, the
        session aborted) at DEBUG, since any client can cause it; anything else as a
        warning."""
        _log_error(session, error)


class SyncEchoHandler:
    """:class:`EchoHandler` for :mod:`msgtrans.io_sync`, whose handlers are plain methods run
    in its serving threads; each does what the async one does."""

    def on_connected(self, session: Any) -> None:
        """Log the new session."""
        logger.info("session %s connected (%s from %s)", session.id, session.protocol.name,
                    session.peer_address)

    def on_message(self, session: Any, message: Any) -> None:
        """Send the one-way *message* back to its sender."""
        logger.debug("session %s: one-way %r", session.id, message)
        session.send(message.payload, biz_type=message.biz_type)

    def on_request(self, session: Any, message: Any) -> Any:
        """Answer the request *message* with its own payload."""
        logger.debug("session %s: request %r", session.id, message)
        return message.payload

    def on_disconnected(self, session: Any, reason: Any) -> None:
        """Log the end of the session."""
        logger.info("session %s closed (%s)", session.id, reason)

    def on_error(self, session: Any, error: BaseException) -> None:
        """Log what went wrong: a peer that went away (reset, no close handshake, the
        session aborted) at DEBUG, since any client can cause it; anything else as a
        warning."""
        _log_error(session, error)


@dataclass(frozen=True)
class Listener:
    """One listener of the server.

    Attributes:
        name: ``tcp``, ``tls``, ``ws``, ``wss`` or ``quic``.
        config: its server config.
    """

    name: str
    config: Any


def listeners(addrs: dict[str, str], cert: Path | None, key: Path | None) -> list[Listener]:
    """Server configs for *addrs* (protocol name -> ``HOST:PORT``), in :data:`PROTOCOLS` order.

    Args:
        addrs: the protocols to serve and where.
        cert: the certificate file for tls, wss and quic (needed only for those).
        key: its key file (``None``: in the certificate file).

    Raises:
        ConfigurationError: an address or the certificate is invalid.
    """
    from ..core.config import (
        QuicServerConfig,
        ServerTlsConfig,
        TcpServerConfig,
        WebSocketServerConfig,
    )

    out: list[Listener] = []
    for name in PROTOCOLS:
        addr = addrs.get(name)
        if addr is None:
            continue
        if name == "tcp":
            config: Any = TcpServerConfig(addr)
        elif name == "ws":
            config = WebSocketServerConfig(addr)
        else:
            assert cert is not None, "tls, wss and quic need a certificate"
            if name == "tls":
                config = TcpServerConfig(addr, tls=ServerTlsConfig(cert, key))
            elif name == "wss":
                config = WebSocketServerConfig(addr, tls=ServerTlsConfig(cert, key))
            else:
                config = QuicServerConfig(addr, cert_file=cert, key_file=key)
        out.append(Listener(name, config))
    return out


def format_address(name: str, address: tuple[str, int]) -> str:
    """How the JSON line shows a bound *address* of protocol *name*: ``HOST:PORT``, or a URL
    for WebSocket (``ws://HOST:PORT/``)."""
    host, port = address[0], address[1]
    if ":" in host:  # IPv6 literals are bracketed in URLs and HOST:PORT alike
        host = f"[{host}]"
    if name in ("ws", "wss"):
        return f"{name}://{host}:{port}/"
    return f"{host}:{port}"


@contextlib.contextmanager
def certificate(cert: str | None, key: str | None,
                needed: bool) -> Iterator[tuple[Path | None, Path | None]]:
    """The certificate and key to serve with: the given files, or a self-signed pair in a
    temporary directory removed on exit (only when *needed*)."""
    if cert is not None:
        yield Path(cert), (Path(key) if key is not None else None)
        return
    if not needed:
        yield None, None
        return
    from ..certs import write_self_signed

    with tempfile.TemporaryDirectory(prefix="msgtrans-serve-") as folder:
        made_cert, made_key = write_self_signed(folder)
        logger.info("generated a self-signed certificate for localhost, 127.0.0.1 and ::1: %s",
                    made_cert)
        yield made_cert, made_key


def announce(configs: list[Listener], addresses: list[tuple[str, int]], ca: Path | None,
             out: TextIO, extra: dict[str, Any] | None = None) -> None:
    """Print the JSON line of bound *addresses* (with ``"ca"`` when a TLS protocol is served,
    and the keys of *extra*) on *out*, flushed, and log each listener."""
    bound: dict[str, Any] = {
        c.name: format_address(c.name, a) for c, a in zip(configs, addresses, strict=True)}
    if ca is not None and any(c.name in ("tls", "wss", "quic") for c in configs):
        bound["ca"] = str(ca)
    bound.update(extra or {})
    print(json.dumps(bound), file=out, flush=True)
    for name, where in bound.items():
        if name in PROTOCOLS:
            logger.info("%s listening on %s", name, where)


#: Applies the command's settings (file, environment) to a backend's ``TransportBuilder``.
Configure = Callable[[Any], Any]


def _builder(mt: Any, configure: Configure | None) -> Any:
    builder = mt.Transport.builder().shutdown_timeout(SHUTDOWN_TIMEOUT)
    return configure(builder) if configure is not None else builder


def _log_report(report: Any, workers: int = 1) -> None:
    metrics = report.metrics
    logger.info("shut down%s: %d closed cleanly, %d forced, %d messages flushed in %.3f s "
                "(%d messages received, %d sent in all)",
                f" ({workers} workers summed)" if workers > 1 else "",
                report.closed_cleanly, report.forced, report.messages_flushed, report.elapsed,
                metrics.messages_in if metrics is not None else 0,
                metrics.messages_out if metrics is not None else 0)


async def run_server(
    configs: list[Listener],
    ca: Path | None,
    out: TextIO,
    stop: asyncio.Event | None = None,
    configure: Configure | None = None,
) -> int:
    """Serve *configs* with :class:`EchoHandler` on asyncio until SIGINT, SIGTERM or *stop*;
    return 0.

    Prints the JSON line of bound addresses (see :func:`announce`) on *out* once listening.

    Raises:
        TransportError: a listener cannot be opened.
    """
    import msgtrans.io_asyncio as mt

    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    signals: list[signal.Signals] = []
    transport = _builder(mt, configure).build()
    stream = transport.accept([c.config for c in configs])
    serving: asyncio.Task[None] | None = None
    try:
        await stream.start()
        for sig in STOP_SIGNALS:
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):
                # No loop signal handlers here (Windows, or not the main thread): Ctrl-C still
                # interrupts the process, just not gracefully.
                continue
            signals.append(sig)
        announce(configs, stream.addresses, ca, out)
        serving = loop.create_task(transport.serve(stream, EchoHandler()))
        stopped = loop.create_task(stop.wait())
        await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if serving.done():
            serving.result()  # serve() ended on its own: only an error does that
        logger.info("shutting down")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        report = await transport.graceful_shutdown(SHUTDOWN_TIMEOUT)
        if serving is not None and not serving.done():
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        await stream.aclose()
    _log_report(report)
    return 0


async def run_server_trio(configs: list[Listener], ca: Path | None, out: TextIO,
                          configure: Configure | None = None) -> int:
    """Serve *configs* with :class:`EchoHandler` on trio until SIGINT or SIGTERM; return 0.

    Must run in the main thread (trio's signal receiver needs it).  Prints the JSON line as
    :func:`run_server` does.

    Raises:
        TransportError: a listener cannot be opened.
    """
    import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

    import msgtrans.io_trio as mt

    transport = _builder(mt, configure).build()
    # Leaving the transport's block shuts it down (again: the report below is the first's).
    async with transport:
        stream = transport.accept([c.config for c in configs])
        await stream.start()
        # Received, not raised: from here on a signal means "shut down gracefully" instead of
        # trio's default KeyboardInterrupt.
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            announce(configs, stream.addresses, ca, out)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.serve, stream, EchoHandler())
                async for _ in signals:
                    break
                logger.info("shutting down")
                report = await transport.graceful_shutdown(SHUTDOWN_TIMEOUT)
                # serve() returns once the shutdown closed its stream; do not wait for it.
                nursery.cancel_scope.cancel()
    _log_report(report)
    return 0


def run_server_sync(configs: list[Listener], ca: Path | None, out: TextIO,
                    stop: threading.Event | None = None,
                    configure: Configure | None = None) -> int:
    """Serve *configs* with :class:`SyncEchoHandler` on :mod:`msgtrans.io_sync` until SIGINT,
    SIGTERM or *stop*; return 0.

    ``Transport.serve`` blocks, so it runs in a thread of its own while the calling thread
    waits for the stop; the signal handlers (installed only in the main thread) just set
    *stop*, and the calling thread then shuts the transport down, which ends ``serve``.

    Raises:
        TransportError: a listener cannot be opened.
    """
    import msgtrans.io_sync as mt

    stop = stop if stop is not None else threading.Event()
    transport = _builder(mt, configure).build()
    stream = transport.accept([c.config for c in configs])
    previous: dict[signal.Signals, Any] = {}
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            transport.serve(stream, SyncEchoHandler())
        except BaseException as exc:  # handed to the waiting thread, which raises it
            failure.append(exc)
            stop.set()

    serving = threading.Thread(target=serve, name="msgtrans-cli-serve")
    try:
        stream.start()
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                previous[sig] = signal.signal(sig, lambda _sig, _frame: stop.set())
        announce(configs, stream.addresses, ca, out)
        serving.start()
        # Polled, not stop.wait(): Event.set() from a signal handler that interrupted this
        # thread inside Event.wait() could try to take the lock this thread already holds.
        while not stop.is_set():
            time.sleep(0.05)
        logger.info("shutting down")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        report = transport.graceful_shutdown(SHUTDOWN_TIMEOUT)
        stream.close()
        if serving.ident is not None:  # started
            serving.join(SHUTDOWN_TIMEOUT + 2.0)
    if failure:
        raise failure[0]
    _log_report(report)
    return 0


def run_workers(backend: str, configs: list[Listener], ca: Path | None, out: TextIO, *,
                count: int, configure: Configure | None = None) -> int:
    """Serve *configs* with the echo handler from *count* worker processes of *backend*
    until SIGINT or SIGTERM (see the module text); return 0, or 1 when every worker was given
    up.

    Raises:
        ConfigurationError: a config has port 0 (or no fork() here).
    """
    import importlib
    import os

    mt = importlib.import_module(f"msgtrans.io_{backend}")
    transport = _builder(mt, configure).build()
    handler: Any = SyncEchoHandler() if backend == "sync" else EchoHandler()
    stopping: list[bool] = []

    def stop(_sig: int, _frame: object) -> None:
        stopping.append(True)
        supervisor = transport._supervisor
        if supervisor is not None:
            supervisor.stop()

    def ready(pids: list[int]) -> None:
        announce(configs, [c.config.addr for c in configs], ca, out,
                 {"pid": os.getpid(), "workers": pids})
        if stopping:  # a signal came before the supervisor was there
            transport._supervisor.stop()

    transport._on_workers_ready = ready
    urls = [c.config for c in configs]
    # Installed before the event loop starts: asyncio.run and trio.run then leave SIGINT alone,
    # and serve() leaves handlers it did not set alone.
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        if backend == "sync":
            with transport:
                report = transport.serve(urls, handler, workers=count)
        elif backend == "trio":
            import trio  # type: ignore[import-untyped, unused-ignore]

            async def serve_trio() -> Any:
                async with transport:
                    return await transport.serve(urls, handler, workers=count)

            report = trio.run(serve_trio)
        else:
            async def serve_asyncio() -> Any:
                async with transport:
                    return await transport.serve(urls, handler, workers=count)

            report = asyncio.run(serve_asyncio())
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    _log_report(report, workers=count)
    metrics = report.metrics
    print(json.dumps({"shutdown": {
        "closed_cleanly": report.closed_cleanly, "forced": report.forced,
        "messages_flushed": report.messages_flushed, "elapsed": round(report.elapsed, 3),
        "messages_in": metrics.messages_in if metrics is not None else 0,
        "messages_out": metrics.messages_out if metrics is not None else 0,
        "workers_given_up": transport._supervisor.given_up}}), file=out, flush=True)
    if len(transport._supervisor.given_up) == count:
        logger.error("every worker was given up (restarted too often): exiting")
        return 1
    return 0


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``serve`` with parsed *args*; return the exit status (0 after a graceful stop, 1 if
    a listener cannot be opened)."""
    import importlib

    from ..core.errors import ConfigurationError, TransportError

    try:
        configure = _settings(args)
    except ConfigurationError as exc:
        print(f"msgtrans serve: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "print_config", False):
        return _print_config(args, configure, out or sys.stdout)
    count = args.workers or int(_builder(
        importlib.import_module(f"msgtrans.io_{args.backend}"), configure
    ).settings()["worker_threads"])
    # With workers every line says which process wrote it (a session's lines: its worker's).
    pid = "[%(process)d]" if count > 1 else ""
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s{pid}: %(message)s")
    if args.log_level != "DEBUG":
        # aioquic logs every handshake at INFO under "quic"; that is debugging detail here.
        logging.getLogger("quic").setLevel(logging.WARNING)
    addrs = {name: getattr(args, name) for name in PROTOCOLS if getattr(args, name) is not None}
    if not addrs:
        addrs = dict.fromkeys(DEFAULT_PROTOCOLS, DEFAULT_ADDR)
    free = [f"--{name} {addr}" for name, addr in addrs.items() if addr.endswith(":0")]
    if count > 1 and free:
        print(f"msgtrans serve: --workers {count} needs every port given (port 0 would give each "
              f"worker a port of its own): {', '.join(free)}", file=sys.stderr)
        return 2
    needs_cert = any(name in addrs for name in ("tls", "wss", "quic"))
    try:
        with certificate(args.tls_cert, args.tls_key, needs_cert) as (cert, key):
            configs = listeners(addrs, cert, key)
            out = out or sys.stdout
            if count > 1:
                return run_workers(args.backend, configs, cert, out, count=count,
                                   configure=configure)
            if args.backend == "trio":
                import trio  # type: ignore[import-untyped, unused-ignore]

                return int(trio.run(run_server_trio, configs, cert, out, configure))
            if args.backend == "sync":
                return run_server_sync(configs, cert, out, configure=configure)
            return asyncio.run(run_server(configs, cert, out, configure=configure))
    except TransportError as exc:
        print(f"msgtrans serve: {exc}", file=sys.stderr)
        return 1


#: ``[serve]`` keys of a config file, and the option defaults when neither it nor the command
#: line sets one.
_SERVE_DEFAULTS: dict[str, Any] = {
    **dict.fromkeys(PROTOCOLS), "tls_cert": None, "tls_key": None, "backend": BACKENDS[0],
    "log_level": "INFO", "redis": None, "workers": None,
}


def _settings(args: argparse.Namespace) -> Configure:
    """Fill *args* from the ``[serve]`` table of ``--config`` (the command line wins) and
    return what applies the ``[transport]`` table and the ``MSGTRANS_*`` variables (they win
    over the file) to a builder; both checked now, against this backend's builder.

    Raises:
        ConfigurationError: the file, a key or a value is invalid.
    """
    from ..core.errors import ConfigurationError
    from .config import apply_settings, env_settings, read_config_file

    transport: dict[str, Any] = {}
    serve: dict[str, Any] = {}
    source = "config"
    config_file = getattr(args, "config", None)
    if config_file is not None:
        transport, serve = read_config_file(config_file)
        source = str(config_file)
    unknown = sorted(set(serve) - set(_SERVE_DEFAULTS))
    if unknown:
        raise ConfigurationError(
            unknown[0], f"{source}: unknown [serve] key (known: {', '.join(_SERVE_DEFAULTS)})"
        )
    for key, default in _SERVE_DEFAULTS.items():
        if getattr(args, key, None) is None:
            value = serve.get(key, default)
            if key in PROTOCOLS and value is not None:
                from . import host_port

                value = host_port(str(value))
            setattr(args, key, value)
    if args.backend not in BACKENDS:
        raise ConfigurationError("backend", f"{source}: must be one of {', '.join(BACKENDS)}")
    workers = args.workers
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 1 <= workers <= 1024):
        raise ConfigurationError("workers", f"{source}: must be an integer in [1, 1024]")
    env = env_settings()
    file_settings = {k: v for k, v in transport.items() if k not in env}

    redis = args.redis

    def configure(builder: Any) -> Any:
        apply_settings(builder, file_settings, source)
        builder = apply_settings(builder, env, "environment")
        return builder if redis is None else builder.backplane(redis)

    # Checked now (a bad setting is an exit status 2 before anything listens).
    import importlib

    configure(importlib.import_module(f"msgtrans.io_{args.backend}").Transport.builder())
    return configure


def _print_config(args: argparse.Namespace, configure: Configure, out: TextIO) -> int:
    import importlib

    mt = importlib.import_module(f"msgtrans.io_{args.backend}")
    builder = _builder(mt, configure)
    serve = {key: getattr(args, key) for key in _SERVE_DEFAULTS}
    print(json.dumps({"transport": builder.settings(), "serve": serve}, indent=2, default=str),
          file=out)
    return 0
