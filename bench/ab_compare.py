"""Compare two source trees with ``python -m msgtrans bench``, in alternating runs.

    git archive OLD | tar -x -C /tmp/before;  git archive NEW | tar -x -C /tmp/after
    python bench/ab_compare.py /tmp/before /tmp/after 6                 # about 8 min
    python bench/ab_compare.py /tmp/before /tmp/after 10 --protocols tcp --scenarios latency

Each round runs ``python -m msgtrans bench --quick --json`` once with ``PYTHONPATH`` set to each
tree, the order swapped every round (so drift on a noisy machine hits both alike); arguments
after the run count go to the benchmark.  Printed: per row the medians of both trees and the
ratio (above 1 is better in the second tree, whichever way the unit goes), then the target
rows' msgtrans/peer ratios before and after.  Ratios, not absolute figures, are what compare
across machines; on a shared 2-core machine a row moves by tens of percent between batches, so
rerun a row that looks worse with more rounds and only its scenario before believing it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

Key = tuple[str, str, str, str]


def _run(tree: str, out: Path, extra: list[str]) -> dict[str, list[dict[str, object]]]:
    env = dict(os.environ, PYTHONPATH=tree)
    subprocess.run([sys.executable, "-m", "msgtrans", "bench", "--quick", "--json", str(out),
                    *extra], env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    data: dict[str, list[dict[str, object]]] = json.loads(out.read_text())
    return data


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    trees = {"A": argv[0], "B": argv[1]}
    runs, extra = int(argv[2]), argv[3:]
    values: dict[str, dict[Key, list[float]]] = {"A": {}, "B": {}}
    higher: dict[Key, bool] = {}
    targets: dict[str, dict[tuple[str, ...], list[float]]] = {"A": {}, "B": {}}
    with tempfile.TemporaryDirectory() as folder:
        for i in range(runs):
            for tag in ("A", "B") if i % 2 == 0 else ("B", "A"):
                data = _run(trees[tag], Path(folder) / f"{tag}{i}.json", extra)
                seen: set[Key] = set()
                for row in data["rows"]:
                    key = (str(row["backend"]), str(row["protocol"]), str(row["scenario"]),
                           str(row["unit"]))
                    if row.get("msgtrans") is not None and key not in seen:
                        seen.add(key)
                        values[tag].setdefault(key, []).append(float(row["msgtrans"]))  # type: ignore[arg-type]
                        higher[key] = bool(row["higher_is_better"])
                    if row.get("target"):
                        targets[tag].setdefault((*key, str(row["peer"])), []).append(
                            float(row["ratio"]))  # type: ignore[arg-type]
    print("| backend | protocol | scenario | unit | A (before) | B (after) | B/A (>1 better) |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(values["A"]):
        if key not in values["B"]:
            continue
        a, b = statistics.median(values["A"][key]), statistics.median(values["B"][key])
        better = b / a if higher[key] else a / b
        print(f"| {' | '.join(key)} | {a:,.1f} | {b:,.1f} | {better:.2f} |")
    print()
    print("| target row | peer | before msgtrans/peer | after |")
    print("|---|---|---|---|")
    for tkey in sorted(targets["A"]):
        before = statistics.median(targets["A"][tkey])
        after = statistics.median(targets["B"].get(tkey, [float("nan")]))
        print(f"| {' '.join(tkey[:4])} | {tkey[4]} | {before:.2f}x | {after:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
