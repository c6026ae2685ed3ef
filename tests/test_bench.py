"""The benchmark runs end to end in its smallest configuration (``--smoke``) for TCP and
WebSocket and writes every row; nothing here asserts on speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msgtrans.bench import main
from msgtrans.bench._report import SCENARIO_METRICS
from msgtrans.bench._runner import PLANS, available

pytestmark = pytest.mark.network  # the run itself is bounded (counts and seconds)


def test_smoke_json_has_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    status = main(["--smoke", "--protocols", "tcp,ws", "--json", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "msgtrans/peer" in captured.out
    assert "[bench] tcp oneway_64" in captured.err  # one progress line per scenario

    doc = json.loads(out.read_text())
    assert doc["plan"] == "smoke"
    rows = doc["rows"]
    plan = PLANS["smoke"]
    expected = set()
    for (protocol, scenario), clients in plan.matrix.items():
        if protocol not in ("tcp", "ws"):
            continue
        for peer in clients:
            if peer == "msgtrans" or not available(peer):
                continue
            for metric in SCENARIO_METRICS[scenario]:
                expected.add((protocol, scenario, metric, peer))
    got = {(r["protocol"], r["scenario"], r["metric"], r["peer"]) for r in rows}
    assert got == expected
    for row in rows:
        assert row["error"] is None, row
        assert row["msgtrans"] > 0, row
        assert row["peer_value"] > 0, row
        assert row["ratio"] > 0, row
    targets = [r for r in rows if r["target"]]
    assert {(r["protocol"], r["metric"], r["peer"]) for r in targets} == {
        ("tcp", "msg_s", "asyncio-protocol"), ("tcp", "mb_s", "raw-socket"),
        ("tcp", "p50_us", "asyncio-protocol"), ("ws", "msg_s", "websockets"),
        ("ws", "mb_s", "websockets"), ("ws", "conn_s", "websockets"),
    }
    assert all(isinstance(r["met"], bool) for r in targets)


def test_bad_protocol_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        main(["--smoke", "--protocols", "carrier-pigeon"])


def test_module_entry_point_prints_usage() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "msgtrans.bench", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert "--quick" in result.stdout
