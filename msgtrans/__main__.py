"""The msgtrans command line: ``python -m msgtrans demo``; more commands come with the drivers."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    """Run the command line with *argv* (default: ``sys.argv[1:]``); return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m msgtrans",
        description="Whole messages over TCP, TLS, WebSocket and QUIC.",
    )
    parser.add_argument("--version", action="version", version=f"msgtrans {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="run client and server over every protocol, in memory, and print a summary",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(sys.stdout)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
