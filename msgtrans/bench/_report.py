"""The table, the ratios and the JSON document."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any, TextIO

from ._runner import Measurement

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

#: (protocol, metric, peer) -> (">=" or "<=", ratio msgtrans/peer).
TARGETS: dict[tuple[str, str, str], tuple[str, float]] = {
    ("tcp", "msg_s", "asyncio-protocol"): (">=", 1.0),
    ("tcp", "mb_s", "raw-socket"): (">=", 0.9),
    ("tcp", "p50_us", "asyncio-protocol"): ("<=", 1.1),
    ("ws", "msg_s", "websockets"): (">=", 1.5),
    ("ws", "mb_s", "websockets"): (">=", 1.0),
    ("ws", "conn_s", "websockets"): (">=", 1.5),
    ("quic", "msg_s", "aioquic"): (">=", 1.0),
    ("quic", "mb_s", "aioquic"): (">=", 2.0),
}


def build_rows(results: list[Measurement]) -> list[dict[str, Any]]:
    """One row per (protocol, scenario, metric, peer): msgtrans's figure, the peer's, the
    ratio msgtrans/peer, and the target when there is one.  A scenario with no peer gets one
    row with msgtrans alone."""
    ours = {(m.protocol, m.scenario): m for m in results if m.client == "msgtrans"}
    peers: dict[tuple[str, str], list[Measurement]] = {}
    order: list[tuple[str, str]] = []
    for m in results:
        key = (m.protocol, m.scenario)
        if key not in order:
            order.append(key)
        if m.client != "msgtrans":
            peers.setdefault(key, []).append(m)
    rows: list[dict[str, Any]] = []
    for key in order:
        mine = ours.get(key)
        for metric in SCENARIO_METRICS[key[1]]:
            unit, higher = METRICS[metric]
            peer_list: list[Measurement | None] = list(peers.get(key, [])) or [None]
            for peer in peer_list:
                value = mine.values.get(metric) if mine else None
                other = peer.values.get(metric) if peer else None
                ratio = value / other if value and other else None
                row: dict[str, Any] = {
                    "protocol": key[0], "scenario": key[1], "metric": metric, "unit": unit,
                    "higher_is_better": higher,
                    "msgtrans": value, "peer": peer.client if peer else None,
                    "peer_value": other, "ratio": ratio, "target": None, "met": None,
                    "error": (mine.error if mine else "not run") or (peer.error if peer else None),
                }
                target = TARGETS.get((key[0], metric, peer.client)) if peer else None
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
    head = ["protocol", "scenario", "unit", "msgtrans", "peer", "peer value",
            "msgtrans/peer", "target", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        status = "" if r["met"] is None else ("met" if r["met"] else "MISSED")
        if r["error"]:
            status = (status + " " if status else "") + "error: " + str(r["error"])[:60]
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        cells = [r["protocol"], r["scenario"], r["unit"], _fmt(r["msgtrans"]),
                 r["peer"] or "-", _fmt(r["peer_value"]), ratio, r["target"] or "", status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    out.write(table(rows) + "\n")
    targets = [r for r in rows if r["met"] is not None]
    met = sum(1 for r in targets if r["met"])
    out.write(f"\ntargets met: {met}/{len(targets)}\n")


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
