"""The msgtrans command line: ``python -m msgtrans serve | send | publish | demo | soak | bench |
docs``.

Only the argument parsing lives here; each command is in :mod:`msgtrans.cli`, imported when it
runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from . import __version__


def _parser() -> argparse.ArgumentParser:
    from .cli import docs, publish, send, serve, soak

    parser = argparse.ArgumentParser(
        prog="python -m msgtrans",
        description="Whole messages over TCP, TLS, WebSocket and QUIC.",
    )
    parser.add_argument("--version", action="version", version=f"msgtrans {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve.add_arguments(commands.add_parser(
        "serve",
        help="run an echo server on tcp, tls, ws, wss and quic (default: tcp, ws and quic on "
             "127.0.0.1, free ports) and print its addresses as one JSON line",
    ))
    send.add_arguments(commands.add_parser(
        "send", help="send one message or request to a URL and print the response",
    ))
    publish.add_arguments(commands.add_parser(
        "publish", help="send one one-way message to every session (or one group) of a "
                        "cluster of serve --redis nodes",
    ))
    demo = commands.add_parser(
        "demo",
        help="run an echo server and a client over every protocol on 127.0.0.1 and print a "
             "summary",
    )
    demo.add_argument("--memory", action="store_true",
                      help="run the protocol machines joined in memory instead (no sockets, "
                           "no backend)")
    serve.add_backend_argument(demo)
    soak.add_arguments(commands.add_parser(
        "soak",
        help="hold many sessions against a serve subprocess with mixed traffic and churn, "
             "sample both processes' memory, descriptors and threads, and print the trend",
    ))
    docs.add_arguments(commands.add_parser(
        "docs", help="build the documentation site into site/ (warnings as errors), or serve "
                     "it locally with --serve (needs the docs extra)",
    ))
    bench = commands.add_parser("bench", help="run the benchmarks (arguments: see bench --help)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    return parser


def _bench(argv: list[str]) -> int:
    # The benchmark ships separately from the rest; look for it without importing it, so an
    # ImportError raised inside the benchmark itself is not mistaken for its absence.
    if importlib.util.find_spec("msgtrans.bench") is None:
        print("the benchmark is not installed in this version", file=sys.stderr)
        return 2
    bench = importlib.import_module("msgtrans.bench")
    return int(bench.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run the command line with *argv* (default: ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Passed through untouched: argparse would take the benchmark's own options
        # (``bench --help``, ``bench --seconds 2``) for ours.
        return _bench(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        from .cli import serve

        return serve.main(args)
    if args.command == "send":
        from .cli import send

        return send.main(args)
    if args.command == "publish":
        from .cli import publish

        return publish.main(args)
    if args.command == "soak":
        from .cli import soak

        return soak.main(args)
    if args.command == "docs":
        from .cli import docs

        return docs.main(args)
    if args.command == "demo":
        if args.memory:
            from .demo import run_demo

            return run_demo(sys.stdout)
        from .cli.demo_live import run_live_demo

        return run_live_demo(sys.stdout, args.backend)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
