"""``--save FILE`` and ``--compare FILE``: a stored run, and this run's ratios against it.

A saved file is the ``--json`` document (``rows``, ``measurements`` and the run's metadata) plus
``machine`` (what the figures were measured on), ``rounds`` and ``values``: one entry per
(protocol, scenario, client, metric) -- msgtrans on each backend and every peer -- with its unit,
its direction and its value (the median of the rounds, each round's figure in ``samples``).

``--compare FILE`` runs what the file has (narrowed by ``--protocols``/``--scenarios``/
``--backends``) with the file's plan, ``--rounds N`` times, and prints per entry the stored
value, the median now and the ratio, oriented so that above 1 is better now whatever the unit
(rates: now/stored; latencies and fan-out time: stored/now); then geometric means for msgtrans
and for the peers.  The peers did not change between the runs, so their mean is the machine's
drift; msgtrans's mean divided by it is the change net of that drift.  A file from another
machine (CPU model, core count or architecture differ) is refused unless ``--force``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from ._report import METRICS
from ._runner import Measurement, Plan
from ._scenarios import MSGTRANS

__all__ = [
    "FORMAT",
    "CompareError",
    "compare",
    "compare_table",
    "load",
    "machine_info",
    "median_results",
    "plan_for",
    "ratio",
    "same_machine",
    "values_of",
]

#: The key (and version) that marks a saved baseline.
FORMAT = "msgtrans-bench-baseline"
#: What must match for two runs to count as "the same machine".
MACHINE_KEYS = ("cpu_model", "cpus", "arch")

Key = tuple[str, str, str, str]  # protocol, scenario, client, metric


class CompareError(Exception):
    """The file cannot be compared with (not a baseline, another machine, another plan)."""


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("model name", "Hardware", "cpu model", "Processor"):
            return value.strip()
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=5,
                               check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if out.returncode != 0 or not commit:
        return None
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    """What a run is measured on: CPU model, cores, architecture, Python, msgtrans, commit."""
    from .. import __version__

    try:
        load: list[float] | None = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu_model": _cpu_model(), "cpus": os.cpu_count(), "arch": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(), "platform": platform.platform(),
        "msgtrans": __version__, "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_before": load,
    }


def same_machine(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The machine keys on which *a* and *b* differ (empty: the same machine)."""
    return [k for k in MACHINE_KEYS if a.get(k) != b.get(k)]


def median_results(rounds: list[list[Measurement]]) -> list[Measurement]:
    """One measurement per (protocol, scenario, client): each metric's median over *rounds*
    (rounds where it failed left out; an error only when it failed in every round)."""
    order: list[tuple[str, str, str]] = []
    runs: dict[tuple[str, str, str], list[Measurement]] = {}
    for results in rounds:
        for m in results:
            key = (m.protocol, m.scenario, m.client)
            if key not in runs:
                order.append(key)
            runs.setdefault(key, []).append(m)
    out: list[Measurement] = []
    for key in order:
        ms = runs[key]
        good = [m for m in ms if m.error is None]
        merged = Measurement(*key)
        if not good:
            merged.error = ms[-1].error
        else:
            for metric in good[0].values:
                merged.values[metric] = statistics.median(
                    m.values[metric] for m in good if metric in m.values)
            merged.count = round(statistics.median(m.count for m in good))
            merged.seconds = statistics.median(m.seconds for m in good)
        out.append(merged)
    return out


def values_of(rounds: list[list[Measurement]]) -> list[dict[str, Any]]:
    """The saved ``values``: one entry per (protocol, scenario, client, metric) measured
    without error, with the median over *rounds* and each round's figure."""
    backend_of = {name: backend for backend, name in MSGTRANS.items()}
    samples: dict[Key, list[float]] = {}
    for results in rounds:
        for m in results:
            if m.error is None:
                for metric, value in m.values.items():
                    samples.setdefault((m.protocol, m.scenario, m.client, metric),
                                       []).append(value)
    out = []
    for (protocol, scenario, client, metric), got in samples.items():
        unit, higher = METRICS[metric]
        out.append({
            "protocol": protocol, "scenario": scenario, "client": client,
            "backend": backend_of.get(client), "kind": "msgtrans" if client in backend_of
            else "peer", "metric": metric, "unit": unit, "higher_is_better": higher,
            "value": statistics.median(got), "samples": got,
        })
    return out


def load(path: str | Path) -> dict[str, Any]:
    """A saved baseline; :class:`CompareError` when *path* is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CompareError(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "values" not in doc:
        raise CompareError(f"{path} is not a file written by bench --save (no {FORMAT!r})")
    return doc


def plan_for(doc: dict[str, Any], plans: dict[str, Plan], protocols: list[str],
             scenarios: list[str], backends: list[str]) -> Plan:
    """The file's plan, its matrix cut down to what the file measured and the command line
    keeps."""
    name = doc.get("plan")
    if name not in plans:
        raise CompareError(f"the file's plan {name!r} is not one of {', '.join(plans)}")
    matrix: dict[tuple[str, str], tuple[str, ...]] = {}
    for v in doc["values"]:
        key = (v["protocol"], v["scenario"])
        if v["protocol"] not in protocols or v["scenario"] not in scenarios:
            continue
        if v["backend"] is not None and v["backend"] not in backends:
            continue
        if v["client"] not in matrix.get(key, ()):
            matrix[key] = (*matrix.get(key, ()), v["client"])
    if not matrix:
        raise CompareError("nothing of the file is left to run with these --protocols, "
                           "--scenarios and --backends")
    return replace(plans[name], matrix=matrix)


def ratio(stored: float | None, now: float | None, higher_is_better: bool) -> float | None:
    """Above 1 is better now: now/stored for rates, stored/now for latencies."""
    if not stored or not now or math.isnan(stored) or math.isnan(now):
        return None
    return now / stored if higher_is_better else stored / now


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def compare(doc: dict[str, Any], now: list[dict[str, Any]],
            ran: set[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """Per stored entry that was run again (its (protocol, scenario, client) in *ran*; default:
    those *now* has): stored, now, ratio; and the geometric means (msgtrans, peers, msgtrans
    net of the peers' drift)."""
    current = {(v["protocol"], v["scenario"], v["client"], v["metric"]): v for v in now}
    if ran is None:
        ran = {k[:3] for k in current}
    lines = []
    for v in doc["values"]:
        key = (v["protocol"], v["scenario"], v["client"], v["metric"])
        if key[:3] not in ran:
            continue  # not run this time (narrowed by the command line)
        got = current.get(key)
        value = got["value"] if got else None
        lines.append({**{k: v[k] for k in ("protocol", "scenario", "client", "backend", "kind",
                                           "metric", "unit", "higher_is_better")},
                      "stored": v["value"], "now": value,
                      "ratio": ratio(v["value"], value, bool(v["higher_is_better"]))})
    ours = [r["ratio"] for r in lines if r["kind"] == "msgtrans" and r["ratio"]]
    peers = [r["ratio"] for r in lines if r["kind"] == "peer" and r["ratio"]]
    mean_ours, mean_peers = _geomean(ours), _geomean(peers)
    net = mean_ours / mean_peers if mean_ours and mean_peers else None
    return {"lines": lines, "geomean_msgtrans": mean_ours, "geomean_peers": mean_peers,
            "geomean_net": net, "compared": len(ours) + len(peers),
            "missing": sum(1 for r in lines if r["ratio"] is None)}


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def compare_table(result: dict[str, Any], out: TextIO, *, stored_label: str = "stored",
                  rounds: int = 1) -> None:
    """The comparison as a Markdown table and its summary."""
    head = ["client", "protocol", "scenario", "unit", stored_label,
            f"now (median of {rounds})" if rounds > 1 else "now", "ratio (>1 better now)"]
    out.write("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n")
    for r in result["lines"]:
        who = r["client"] if r["kind"] == "peer" else f"{r['client']} ({r['backend']})"
        cells = [who, r["protocol"], r["scenario"], r["unit"], _fmt(r["stored"]),
                 _fmt(r["now"]) if r["now"] is not None else "not measured",
                 f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"]
        out.write("| " + " | ".join(cells) + " |\n")

    def mean(value: float | None) -> str:
        return f"{value:.3f}x" if value is not None else "-"

    out.write(f"\ngeometric mean, msgtrans rows: {mean(result['geomean_msgtrans'])}; "
              f"peer rows (the machine's drift): {mean(result['geomean_peers'])}; "
              f"msgtrans net of the drift: {mean(result['geomean_net'])} "
              f"({result['compared']} figures compared, {result['missing']} not measured)\n")
