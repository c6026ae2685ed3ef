"""``python -m msgtrans bench``: msgtrans against the peers people use today.

One invocation starts each server in its own process, runs msgtrans (asyncio, trio and
blocking backends) and the hand-written peers side by side on 127.0.0.1, and prints one row per
comparison with both figures and the ratio msgtrans/peer, then the targets (``--json FILE``
writes the same as data).  See bench/README.md, section "Peers".

::

    python -m msgtrans bench --quick                       # under a minute
    python -m msgtrans bench --backends trio,sync --protocols tcp --json out.json
    python -m msgtrans bench --smoke                       # tiny counts, for the tests
    python -m msgtrans bench --quick --save base.json      # a baseline (rows + machine)
    python -m msgtrans bench --compare base.json --rounds 3  # ratios now vs the baseline

Clients and servers register in ``_scenarios.CLIENTS`` and ``_servers.SERVERS``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    parser.add_argument("--save", metavar="FILE",
                        help="write the run as a baseline: the --json document plus the "
                             "machine (CPU, cores, Python, msgtrans, commit) and one value "
                             "per (protocol, scenario, client, metric)")
    parser.add_argument("--compare", metavar="FILE",
                        help="run what FILE (written by --save) has, with its plan, and print "
                             "per figure stored, now and the ratio (above 1: better now)")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="run N rounds and take each figure's median (default 1)")
    parser.add_argument("--force", action="store_true",
                        help="with --compare: compare a file from another machine")
    parser.add_argument("--protocols", type=_list(PROTOCOLS, "protocol"),
                        default=list(PROTOCOLS), help="comma-separated: tcp,tls,ws,quic")
    parser.add_argument("--scenarios", type=_list(tuple(SCENARIOS), "scenario"),
                        default=list(SCENARIOS),
                        help="comma-separated: " + ",".join(SCENARIOS))
    parser.add_argument("--backends", type=_list(BACKENDS, "backend"), default=list(BACKENDS),
                        help="comma-separated msgtrans backends to measure (with their peers): "
                             + ",".join(BACKENDS))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]

    from . import _baseline as baseline

    stored: dict[str, Any] | None = None
    machine = baseline.machine_info()
    if args.compare:
        try:
            stored = baseline.load(args.compare)
            differ = baseline.same_machine(stored.get("machine", {}), machine)
            if differ and not args.force:
                raise baseline.CompareError(
                    f"{args.compare} was measured on another machine ("
                    + "; ".join(f"{k}: {stored.get('machine', {}).get(k)!r} there, "
                                f"{machine.get(k)!r} here" for k in differ)
                    + "); ratios across machines say little. --force compares anyway")
            if (args.quick or args.smoke) and plan.name != stored.get("plan"):
                raise baseline.CompareError(
                    f"{args.compare} holds a {stored.get('plan')} run; this is a {plan.name} "
                    "run (leave out --quick/--smoke: the file's plan is used)")
            plan = baseline.plan_for(stored, PLANS, args.protocols, args.scenarios,
                                     args.backends)
        except baseline.CompareError as exc:
            sys.stderr.write(f"bench --compare: {exc}\n")
            return 2

    from ..certs import write_self_signed

    started = time.perf_counter()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="msgtrans-bench-") as tmp:
        certdir = Path(tmp)
        write_self_signed(certdir)  # cert.pem and key.pem, as the servers expect
        for i in range(args.rounds):
            if args.rounds > 1:
                sys.stderr.write(f"[bench] round {i + 1}/{args.rounds}\n")
            rounds.append(run_plan(plan, args.protocols, args.scenarios, certdir, sys.stderr,
                                   backends=args.backends))
    results = rounds[0] if len(rounds) == 1 else baseline.median_results(rounds)
    rows = build_rows(results)
    elapsed = time.perf_counter() - started
    print_table(rows, sys.stdout)
    sys.stdout.write(f"({plan.name} run, {elapsed:.1f} s"
                     + (f", medians of {args.rounds} rounds" if args.rounds > 1 else "")
                     + ")\n")
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m msgtrans bench " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "plan": plan.name, "backends": args.backends, "python": platform.python_version(),
        "platform": platform.platform(), "cpus": os.cpu_count(), "seconds": elapsed,
    }
    if args.json:
        Path(args.json).write_text(to_json(rows, results, meta) + "\n")
    values = baseline.values_of(rounds)
    if args.save:
        doc = json.loads(to_json(rows, results, meta))
        doc = {"format": baseline.FORMAT, **doc, "machine": machine, "rounds": args.rounds,
               "values": values}
        Path(args.save).write_text(json.dumps(doc, indent=2) + "\n")
    if stored is not None:
        sys.stdout.write(f"\n## Against {args.compare} ({stored.get('plan')} run of "
                         f"{stored.get('machine', {}).get('date', '?')}, commit "
                         f"{stored.get('machine', {}).get('git_commit') or '?'})\n\n")
        ran = {(m.protocol, m.scenario, m.client) for m in results}
        baseline.compare_table(baseline.compare(stored, values, ran), sys.stdout,
                               rounds=args.rounds)
    return 1 if any(m.error for m in results) else 0
