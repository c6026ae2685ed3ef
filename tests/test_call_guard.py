"""The deterministic performance guard (bench/call_guard.py): the hot paths' Python function
calls per message must stay within their margins of bench/call_counts.json.  Not a timed
test: the counts are the same run after run on one Python version (see the script's
docstring for what is pinned), so this fails only when the code makes more calls."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "call_guard.py"


def _guard() -> ModuleType:
    spec = importlib.util.spec_from_file_location("call_guard", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clean_env() -> dict[str, str]:
    # The counts are taken in a fresh interpreter: no coverage started in the subprocess, no
    # development or asyncio debug mode, the hash seed the script pins.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COV_CORE_", "COVERAGE_"))
           and k not in ("PYTHONDEVMODE", "PYTHONASYNCIODEBUG", "PYTHONTRACEMALLOC",
                         "PYTHONWARNINGS")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    env["PYTHONHASHSEED"] = "0"
    return env


@pytest.mark.network  # the asyncio round trip runs over 127.0.0.1
def test_call_counts_stay_within_their_margins() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                            text=True, timeout=120, env=_clean_env(), cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    if "nothing compared" in out:  # another Python version than the file's
        return
    assert "call counts within their margins" in out
    stored = json.loads((ROOT / "bench" / "call_counts.json").read_text())
    for name in stored["paths"]:
        assert name in out, name


def test_counts_are_the_same_twice() -> None:
    guard = _guard()
    paths = ["encode", "decode", "session_send"]
    assert guard.measure(paths) == guard.measure(paths)


def test_check_names_the_path_that_grew_and_applies_its_margin() -> None:
    guard = _guard()
    stored = {"paths": {"encode": {"total": 10.0}, "asyncio_tcp_round_trip": {"total": 200.0}},
              "margins": {"encode": {"percent": 10.0, "calls": 2.0},
                          "asyncio_tcp_round_trip": {"percent": 10.0, "calls": 10.0}}}

    def now(encode: float, trip: float) -> dict[str, dict[str, float]]:
        return {"encode": {"total": encode}, "asyncio_tcp_round_trip": {"total": trip}}

    # +2 calls on 10 is within max(2, 1); +20 on 200 within max(10, 20).
    assert guard.check(stored, now(12.0, 220.0)) == ([], [])
    grew, fell = guard.check(stored, now(12.5, 221.0))
    assert [g.split(":")[0] for g in grew] == ["encode", "asyncio_tcp_round_trip"]
    assert "10 -> 12.5" in grew[0] and "margin 2" in grew[0]
    assert fell == []
    grew, fell = guard.check(stored, now(7.0, 200.0))
    assert grew == [] and fell and fell[0].startswith("encode: 10 -> 7")
    grew, _ = guard.check(stored, {"decode": {"total": 5.0}})
    assert grew and "not in call_counts.json" in grew[0]


def test_check_fails_on_a_recorded_count_below_this_tree(tmp_path: Path) -> None:
    stored = json.loads((ROOT / "bench" / "call_counts.json").read_text())
    stored["python"] = ".".join(map(str, sys.version_info[:2]))
    stored["paths"]["encode"]["total"] = stored["paths"]["encode"]["total"] / 2
    fake = tmp_path / "counts.json"
    fake.write_text(json.dumps(stored))
    result = subprocess.run([sys.executable, str(SCRIPT), "--check", "--paths", "encode",
                             "--file", str(fake)], capture_output=True, text=True,
                            timeout=60, env=_clean_env(), cwd=ROOT, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "GREW: encode:" in result.stdout
