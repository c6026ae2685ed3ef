"""``python -m msgtrans bench``: msgtrans against the peers people use today.

One invocation starts each server in its own process, runs msgtrans (asyncio, trio and
blocking backends) and the hand-written peers side by side on 127.0.0.1, and prints one row per
comparison with both figures and the ratio msgtrans/peer, then the targets (``--json FILE``
writes the same as data).  See bench/README.md, section "Peers".

::

    python -m msgtrans bench --quick                       # under a minute
    python -m msgtrans bench --backends trio,sync --protocols tcp --json out.json
    python -m msgtrans bench --smoke                       # tiny counts, for the tests

Clients and servers register in ``_scenarios.CLIENTS`` and ``_servers.SERVERS``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

PROTOCOLS = ("tcp", "tls", "ws", "quic")


def _list(allowed: tuple[str, ...], what: str) -> type[list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {bad or text!r}; choose from {','.join(allowed)}")
        return items

    return parse  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with *argv* (default ``sys.argv[1:]``); return the exit status (0
    whether or not the targets are met; 1 when a measurement failed)."""
    from ._report import build_rows, print_table, to_json
    from ._runner import PLANS, run_plan
    from ._scenarios import BACKENDS, SCENARIOS

    parser = argparse.ArgumentParser(
        prog="python -m msgtrans bench",
        description="msgtrans (asyncio, trio and blocking backends) against asyncio "
                    "Protocol/streams, trio streams, blocking sockets, websockets (asyncio and "
                    "sync), aioquic, pyzmq and raw sockets, servers in another process, on "
                    "127.0.0.1.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="a run under a minute: every target row, fewer peers and scenarios")
    size.add_argument("--smoke", action="store_true", help="tiny counts: checks it all runs")
    parser.add_argument("--json", metavar="FILE", help="also write the rows and figures as JSON")
    parser.add_argument("--protocols", type=_list(PROTOCOLS, "protocol"),
                        default=list(PROTOCOLS), help="comma-separated: tcp,tls,ws,quic")
    parser.add_argument("--scenarios", type=_list(tuple(SCENARIOS), "scenario"),
                        default=list(SCENARIOS),
                        help="comma-separated: " + ",".join(SCENARIOS))
    parser.add_argument("--backends", type=_list(BACKENDS, "backend"), default=list(BACKENDS),
                        help="comma-separated msgtrans backends to measure (with their peers): "
                             + ",".join(BACKENDS))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]

    from ..certs import write_self_signed

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="msgtrans-bench-") as tmp:
        certdir = Path(tmp)
        write_self_signed(certdir)  # cert.pem and key.pem, as the servers expect
        results = run_plan(plan, args.protocols, args.scenarios, certdir, sys.stderr,
                           backends=args.backends)
    rows = build_rows(results)
    elapsed = time.perf_counter() - started
    print_table(rows, sys.stdout)
    sys.stdout.write(f"({plan.name} run, {elapsed:.1f} s)\n")
    if args.json:
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m msgtrans bench " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "plan": plan.name, "backends": args.backends, "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(), "seconds": elapsed,
        }
        Path(args.json).write_text(to_json(rows, results, meta) + "\n")
    return 1 if any(m.error for m in results) else 0
