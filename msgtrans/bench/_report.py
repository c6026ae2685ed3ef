"""The table, the ratios and the JSON document."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any, TextIO

from ._runner import Measurement
from ._scenarios import BACKENDS, COMPARED_WITH, MSGTRANS

__all__ = ["METRICS", "TARGETS", "build_rows", "print_table", "to_json"]

#: metric -> (unit, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "msg_s": ("msg/s", True),
    "mb_s": ("MB/s", True),
    "p50_us": ("us p50", False),
    "p99_us": ("us p99", False),
    "p999_us": ("us p99.9", False),
    "req_s": ("req/s", True),
    "conn_s": ("conn/s", True),
    "fanout_ms": ("ms", False),
}

#: The metric each scenario's rows compare (latency compares three).
SCENARIO_METRICS: dict[str, tuple[str, ...]] = {
    "oneway_64": ("msg_s",),
    "oneway_64k": ("mb_s",),
    "latency": ("p50_us", "p99_us", "p999_us"),
    "pipelined": ("req_s",),
    "connections": ("conn_s",),
    "fanout": ("fanout_ms",),
}

#: (backend, protocol, metric, peer) -> (">=" or "<=", ratio msgtrans/peer).
TARGETS: dict[tuple[str, str, str, str], tuple[str, float]] = {
    ("asyncio", "tcp", "msg_s", "asyncio-protocol"): (">=", 1.0),
    ("asyncio", "tcp", "mb_s", "raw-socket"): (">=", 0.9),
    ("asyncio", "tcp", "p50_us", "asyncio-protocol"): ("<=", 1.1),
    ("asyncio", "ws", "msg_s", "websockets"): (">=", 1.5),
    ("asyncio", "ws", "mb_s", "websockets"): (">=", 1.0),
    ("asyncio", "ws", "conn_s", "websockets"): (">=", 1.5),
    ("asyncio", "quic", "msg_s", "aioquic"): (">=", 1.0),
    ("asyncio", "quic", "mb_s", "aioquic"): (">=", 2.0),
    ("trio", "tcp", "msg_s", "trio-streams"): (">=", 1.0),
    ("sync", "tcp", "msg_s", "blocking-socket"): (">=", 0.8),
}


def build_rows(results: list[Measurement]) -> list[dict[str, Any]]:
    """One row per (backend, protocol, scenario, metric, peer): the backend's msgtrans figure,
    the peer's, the ratio msgtrans/peer, and the target when there is one.  Peers count for the
    backends of :data:`COMPARED_WITH`; a backend with no peer for a scenario gets one row with
    msgtrans alone."""
    backend_of = {name: backend for backend, name in MSGTRANS.items()}
    ours = {(backend_of[m.client], m.protocol, m.scenario): m for m in results
            if m.client in backend_of}
    peers: dict[tuple[str, str], list[Measurement]] = {}
    order: list[tuple[str, str]] = []
    for m in results:
        key = (m.protocol, m.scenario)
        if key not in order:
            order.append(key)
        if m.client not in backend_of:
            peers.setdefault(key, []).append(m)
    rows: list[dict[str, Any]] = []
    for backend in BACKENDS:
        for key in order:
            mine = ours.get((backend, *key))
            if mine is None:
                continue
            mine_peers = [p for p in peers.get(key, [])
                          if backend in COMPARED_WITH.get(p.client, BACKENDS)]
            for metric in SCENARIO_METRICS[key[1]]:
                unit, higher = METRICS[metric]
                peer_list: list[Measurement | None] = list(mine_peers) or [None]
                for peer in peer_list:
                    value = mine.values.get(metric)
                    other = peer.values.get(metric) if peer else None
                    ratio = value / other if value and other else None
                    row: dict[str, Any] = {
                        "backend": backend, "client": mine.client,
                        "protocol": key[0], "scenario": key[1], "metric": metric,
                        "unit": unit, "higher_is_better": higher,
                        "msgtrans": value, "peer": peer.client if peer else None,
                        "peer_value": other, "ratio": ratio, "target": None, "met": None,
                        "error": mine.error or (peer.error if peer else None),
                    }
                    target = TARGETS.get((backend, key[0], metric, peer.client)) \
                        if peer else None
                    if target is not None:
                        op, bound = target
                        row["target"] = f"{op} {bound:g}x"
                        if ratio is not None:
                            row["met"] = ratio >= bound if op == ">=" else ratio <= bound
                        else:
                            row["met"] = False
                    rows.append(row)
    return rows


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    head = ["backend", "protocol", "scenario", "unit", "msgtrans", "peer", "peer value",
            "msgtrans/peer", "target", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        status = "" if r["met"] is None else ("met" if r["met"] else "MISSED")
        if r["error"]:
            status = (status + " " if status else "") + "error: " + str(r["error"])[:60]
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        cells = [r["backend"], r["protocol"], r["scenario"], r["unit"], _fmt(r["msgtrans"]),
                 r["peer"] or "-", _fmt(r["peer_value"]), ratio, r["target"] or "", status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    """The table, then the targets alone and how many were met."""
    out.write(table(rows) + "\n")
    out.write("\n" + targets_table(rows) + "\n")
    targets = [r for r in rows if r["met"] is not None]
    met = sum(1 for r in targets if r["met"])
    out.write(f"\ntargets met: {met}/{len(targets)} (of {len(TARGETS)} targets)\n")


_TARGET_TITLES = {"msg_s": "one-way 64 B", "mb_s": "one-way 64 KiB", "p50_us": "req/resp p50",
                  "conn_s": "connections/s"}


def targets_table(rows: list[dict[str, Any]]) -> str:
    """Every target of :data:`TARGETS`, with the ratio of this run or "not run"."""
    found = {(r["backend"], r["protocol"], r["metric"], r["peer"]): r for r in rows}
    lines = ["| target row | peer | msgtrans/peer | target | status |", "|---|---|---|---|---|"]
    for key, (op, bound) in TARGETS.items():
        backend, protocol, metric, peer = key
        r = found.get(key)
        title = f"{backend} {protocol.upper()} {_TARGET_TITLES.get(metric, metric)}"
        if r is None:
            ratio, status = "-", "not run"
        else:
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
            status = "met" if r["met"] else "MISSED"
            if r["error"]:
                status += " (error)"
        lines.append(f"| {title} | {peer} | {ratio} | {op} {bound:g}x | {status} |")
    return "\n".join(lines)


def to_json(rows: list[dict[str, Any]], results: list[Measurement],
            meta: dict[str, Any]) -> str:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    doc = {**meta, "rows": rows, "measurements": [asdict(m) for m in results]}
    return json.dumps(clean(doc), indent=2)
