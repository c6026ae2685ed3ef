"""The arithmetic and the reading of ``python -m msgtrans soak``: process figures from /proc,
least-squares slopes, the summary of a run and its printed tables.  No I/O beyond /proc, no
backend: the parts the soak's unit tests check directly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

__all__ = [
    "SERIES",
    "ProcessGone",
    "fit",
    "format_summary",
    "format_table",
    "read_process",
    "slope",
    "summarize",
    "thin",
    "warmup_seconds",
]

T = TypeVar("T")

#: The sampled series, as ``(process, figure)``: the keys of a sample's nested dicts.
SERIES: tuple[tuple[str, str], ...] = (
    ("server", "rss_kib"), ("server", "fds"), ("server", "threads"),
    ("client", "rss_kib"), ("client", "fds"), ("client", "threads"), ("client", "tasks"),
    ("client", "sessions"),
)
#: The longest warm-up dropped before fitting (seconds), whatever the duration.
MAX_WARMUP = 60.0
#: The fraction of the duration dropped as warm-up when that is shorter than MAX_WARMUP.
WARMUP_FRACTION = 0.2


class ProcessGone(Exception):
    """The process whose figures were asked for no longer exists."""


def read_process(pid: int) -> dict[str, int]:
    """The resident memory (KiB, ``VmRSS``), open descriptors and threads of process *pid*, read
    from ``/proc/<pid>`` (Linux only).

    Raises:
        ProcessGone: the process has exited (or is a zombie: no memory left to read).
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid) from exc
    if "VmRSS" not in fields:  # a zombie keeps its status file but not its memory
        raise ProcessGone(pid)
    return {
        "rss_kib": int(fields["VmRSS"].split()[0]),
        "fds": fds,
        "threads": int(fields["Threads"]),
    }


def fit(ts: Sequence[float], vs: Sequence[float]) -> tuple[float, float, float]:
    """The least-squares line through the points ``(ts[i], vs[i])``: ``(slope, intercept,
    residual standard deviation)``.  Fewer than two distinct times give a slope of 0 (nothing
    to fit), and fewer than three points a residual deviation of 0.

    Raises:
        ValueError: *ts* and *vs* differ in length, or are empty.
    """
    if len(ts) != len(vs):
        raise ValueError(f"{len(ts)} times but {len(vs)} values")
    if not ts:
        raise ValueError("no points to fit")
    n = len(ts)
    if all(v == vs[0] for v in vs):
        # Exactly flat: the mean's rounding must not invent a slope of 1e-150.
        return 0.0, float(vs[0]), 0.0
    t_mean = math.fsum(ts) / n
    v_mean = math.fsum(vs) / n
    sxx = math.fsum((t - t_mean) ** 2 for t in ts)
    if sxx == 0.0:
        return 0.0, v_mean, 0.0
    sxy = math.fsum((t - t_mean) * (v - v_mean) for t, v in zip(ts, vs, strict=True))
    k = sxy / sxx
    b = v_mean - k * t_mean
    if n < 3:
        return k, b, 0.0
    sse = math.fsum((v - (k * t + b)) ** 2 for t, v in zip(ts, vs, strict=True))
    return k, b, math.sqrt(sse / (n - 2))


def slope(ts: Sequence[float], vs: Sequence[float]) -> float:
    """The least-squares slope of *vs* over *ts* (units of v per unit of t); see :func:`fit`."""
    return fit(ts, vs)[0]


def thin(items: Sequence[T], keep: int) -> list[T]:
    """At most *keep* (at least 2) of *items*, evenly spaced, always with the first and the
    last: the rows of a table too long to print whole."""
    if keep < 2:
        raise ValueError(f"keep must be at least 2, got {keep}")
    n = len(items)
    if n <= keep:
        return list(items)
    # Evenly spaced indices from 0 to n-1 inclusive, rounded: distinct because n > keep.
    return [items[round(i * (n - 1) / (keep - 1))] for i in range(keep)]


def warmup_seconds(duration: float) -> float:
    """The seconds at the start of a run left out of the fit: 20 % of *duration*, at most a
    minute (allocator pools, caches and the first churn settle in that time)."""
    return min(duration * WARMUP_FRACTION, MAX_WARMUP)


def summarize(samples: Sequence[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """For each series of :data:`SERIES` present in *samples* (each a dict with ``t``, seconds
    since the start, and ``server``/``client`` dicts of figures): first, last, min, max, the
    mean after the warm-up and the slope per hour of the samples at or after *warmup* seconds,
    with the fit's residual deviation and what the line predicts for the change over that
    window.  When fewer than two samples are past the warm-up, all of them are fitted
    (``"warmup_applied": False``)."""
    out: dict[str, Any] = {"warmup_s": warmup, "series": {}}
    after = [s for s in samples if s["t"] >= warmup]
    applied = len(after) >= 2
    fitted = after if applied else list(samples)
    out["warmup_applied"] = applied
    out["fitted_samples"] = len(fitted)
    for proc, name in SERIES:
        points = [(s["t"], s[proc][name]) for s in fitted
                  if s.get(proc, {}).get(name) is not None]
        every = [s[proc][name] for s in samples if s.get(proc, {}).get(name) is not None]
        if not points:
            continue
        ts = [t / 3600.0 for t, _ in points]
        vs = [float(v) for _, v in points]
        k, _, sd = fit(ts, vs)
        out["series"][f"{proc}.{name}"] = {
            "first": every[0], "last": every[-1], "min": min(every), "max": max(every),
            "fit_first": vs[0], "fit_mean": math.fsum(vs) / len(vs),
            "slope_per_hour": k, "residual_sd": sd,
            "window_change": k * (ts[-1] - ts[0]),
        }
    return out


def _cell(value: Any, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:.1f}".rjust(width)
    return str(value).rjust(width)


#: The columns of the sample table: heading, width, and how to read it from a sample.
_COLUMNS: tuple[tuple[str, int, Any], ...] = (
    ("t s", 6, lambda s: round(s["t"])),
    ("srv MiB", 8, lambda s: s["server"]["rss_kib"] / 1024),
    ("srv fd", 7, lambda s: s["server"]["fds"]),
    ("srv thr", 8, lambda s: s["server"]["threads"]),
    ("cli MiB", 8, lambda s: s["client"]["rss_kib"] / 1024),
    ("cli fd", 7, lambda s: s["client"]["fds"]),
    ("cli thr", 8, lambda s: s["client"]["threads"]),
    ("tasks", 6, lambda s: s["client"].get("tasks")),
    ("sess", 6, lambda s: s["client"]["sessions"]),
    ("msg/s", 7, lambda s: s.get("rate")),
    ("errors", 7, lambda s: s.get("errors")),
)


def format_table(samples: Sequence[dict[str, Any]], keep: int = 25) -> list[str]:
    """The lines of the sample table, thinned to at most *keep* rows (first and last kept)."""
    lines = [" ".join(h.rjust(w) for h, w, _ in _COLUMNS)]
    for sample in thin(samples, keep) if len(samples) >= 2 else samples:
        lines.append(" ".join(_cell(get(sample), w) for _, w, get in _COLUMNS))
    return lines


def _value(name: str, v: float) -> str:
    if name.endswith("rss_kib"):
        return f"{v / 1024:.1f} MiB"
    return f"{v:.1f}" if isinstance(v, float) and not v.is_integer() else f"{v:g}"


def format_summary(summary: dict[str, Any]) -> Iterable[str]:
    """The lines of the trend table of :func:`summarize`'s result."""
    if summary["warmup_applied"]:
        yield (f"trend: least-squares fit over the {summary['fitted_samples']} samples after "
               f"the first {summary['warmup_s']:.0f} s (warm-up dropped)")
    else:
        yield (f"trend: too few samples after a {summary['warmup_s']:.0f} s warm-up; all "
               f"{summary['fitted_samples']} fitted")
    yield (f"{'series':<16} {'first':>10} {'last':>10} {'min':>10} {'max':>10} "
           f"{'slope/h':>12} {'fit drift':>10} {'noise sd':>10}")
    for name, s in summary["series"].items():
        yield (f"{name:<16} {_value(name, s['first']):>10} {_value(name, s['last']):>10} "
               f"{_value(name, s['min']):>10} {_value(name, s['max']):>10} "
               f"{_value(name, s['slope_per_hour']):>12} {_value(name, s['window_change']):>10} "
               f"{_value(name, s['residual_sd']):>10}")
