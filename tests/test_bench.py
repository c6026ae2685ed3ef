"""The benchmark runs end to end in its smallest configuration (``--smoke``) for TCP and
WebSocket on every backend and writes every row; the rows, targets and progress bar are built
as documented.  Nothing here asserts on speed; clients whose libraries are missing (trio,
pyzmq, uvloop...) are left out of the expected rows as the benchmark leaves them out."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from msgtrans.bench import main
from msgtrans.bench._report import SCENARIO_METRICS, TARGETS, build_rows, targets_table
from msgtrans.bench._runner import PLANS, Measurement, Progress, available, backends_of
from msgtrans.bench._scenarios import BACKENDS, COMPARED_WITH, MSGTRANS


def _expected_rows(protocols: tuple[str, ...],
                   backends: tuple[str, ...]) -> set[tuple[str, str, str, str, str | None]]:
    expected: set[tuple[str, str, str, str, str | None]] = set()
    for (protocol, scenario), clients in PLANS["smoke"].matrix.items():
        if protocol not in protocols:
            continue
        for backend in backends:
            if MSGTRANS[backend] not in clients or not available(MSGTRANS[backend]):
                continue
            peers = [c for c in clients if c not in MSGTRANS.values() and available(c)
                     and backend in COMPARED_WITH[c]]
            for metric in SCENARIO_METRICS[scenario]:
                for peer in peers or [None]:
                    expected.add((backend, protocol, scenario, metric, peer))
    return expected


@pytest.mark.network  # the run itself is bounded (counts and seconds)
def test_smoke_json_has_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    status = main(["--smoke", "--protocols", "tcp,ws", "--json", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "msgtrans/peer" in captured.out
    assert "[bench] tcp oneway_64" in captured.err  # one progress line per scenario

    doc = json.loads(out.read_text())
    assert doc["plan"] == "smoke"
    assert doc["backends"] == list(BACKENDS)
    rows = doc["rows"]
    got = {(r["backend"], r["protocol"], r["scenario"], r["metric"], r["peer"]) for r in rows}
    assert got == _expected_rows(("tcp", "ws"), BACKENDS)
    for row in rows:
        assert row["error"] is None, row
        assert row["msgtrans"] > 0, row
        if row["peer"] is not None:
            assert row["peer_value"] > 0, row
            assert row["ratio"] > 0, row
    targets = {(r["backend"], r["protocol"], r["metric"], r["peer"]) for r in rows
               if r["target"]}
    wanted = {key for key in TARGETS if key[1] in ("tcp", "ws")
              and available(MSGTRANS[key[0]]) and available(key[3])}
    assert targets == wanted
    assert ("trio", "tcp", "msg_s", "trio-streams") in TARGETS
    assert ("sync", "tcp", "msg_s", "blocking-socket") in TARGETS
    assert all(isinstance(r["met"], bool) for r in rows if r["target"])
    # The targets table lists every target, measured or not.
    assert captured.out.count("| not run |") == sum(1 for k in TARGETS if k not in wanted)


@pytest.mark.network
def test_backends_narrow_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    status = main(["--smoke", "--protocols", "tcp", "--scenarios", "oneway_64,latency",
                   "--backends", "sync", "--json", str(out)])
    assert status == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert {r["backend"] for r in doc["rows"]} == {"sync"}
    measured = {m["client"] for m in doc["measurements"]}
    assert "msgtrans-blocking" in measured
    assert all("sync" in backends_of(c) for c in measured)
    assert "asyncio-protocol" not in measured
    got = {(r["backend"], r["protocol"], r["scenario"], r["metric"], r["peer"])
           for r in doc["rows"]}
    assert got == {row for row in _expected_rows(("tcp",), ("sync",))
                   if row[2] in ("oneway_64", "latency")}


def test_rows_compare_each_backend_with_its_own_peers() -> None:
    results = [
        Measurement("tcp", "oneway_64", "msgtrans", {"msg_s": 100.0}),
        Measurement("tcp", "oneway_64", "msgtrans-trio", {"msg_s": 90.0}),
        Measurement("tcp", "oneway_64", "msgtrans-blocking", {"msg_s": 70.0}),
        Measurement("tcp", "oneway_64", "asyncio-protocol", {"msg_s": 200.0}),
        Measurement("tcp", "oneway_64", "trio-streams", {"msg_s": 60.0}),
        Measurement("tcp", "oneway_64", "blocking-socket", {"msg_s": 100.0}),
        Measurement("ws", "latency", "msgtrans-trio", {"p50_us": 10.0, "p99_us": 20.0,
                                                        "p999_us": 30.0}),
    ]
    rows = build_rows(results)
    by = {(r["backend"], r["protocol"], r["metric"], r["peer"]): r for r in rows}
    assert by[("asyncio", "tcp", "msg_s", "asyncio-protocol")]["ratio"] == pytest.approx(0.5)
    assert by[("asyncio", "tcp", "msg_s", "asyncio-protocol")]["met"] is False
    assert by[("trio", "tcp", "msg_s", "trio-streams")]["ratio"] == pytest.approx(1.5)
    assert by[("trio", "tcp", "msg_s", "trio-streams")]["met"] is True
    assert by[("sync", "tcp", "msg_s", "blocking-socket")]["met"] is False  # 0.7 < 0.8
    assert ("trio", "tcp", "msg_s", "asyncio-protocol") not in by
    # No peer measured for trio over WebSocket: one row with msgtrans alone per metric.
    alone = [r for r in rows if r["protocol"] == "ws"]
    assert [(r["peer"], r["metric"]) for r in alone] == [
        (None, "p50_us"), (None, "p99_us"), (None, "p999_us")]
    table = targets_table(rows)
    assert "| trio TCP one-way 64 B | trio-streams | 1.50x | >= 1x | met |" in table
    assert "| sync TCP one-way 64 B | blocking-socket | 0.70x | >= 0.8x | MISSED |" in table
    assert "| asyncio WS one-way 64 B | websockets | - | >= 1.5x | not run |" in table


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_redraws_on_a_terminal_and_only_logs_elsewhere() -> None:
    tty = _Terminal()
    bar = Progress(tty, 4)
    bar.running("tcp oneway_64 msgtrans")
    bar.step()
    bar.line("[bench] done")
    bar.close()
    text = tty.getvalue()
    assert "\r\x1b[K[bench] [" + "." * Progress.WIDTH + "] 0/4" in text
    assert "tcp oneway_64 msgtrans" in text
    assert "[bench] done\n" in text

    plain = io.StringIO()
    bar = Progress(plain, 4)
    bar.running("tcp oneway_64 msgtrans")
    bar.step()
    bar.step()
    assert bar.bar() == "[" + "#" * (Progress.WIDTH // 2) + "." * (Progress.WIDTH // 2) + "] 2/4"
    bar.line("[bench] done")
    bar.close()
    assert plain.getvalue() == "[bench] done\n"


def test_bad_protocol_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        main(["--smoke", "--protocols", "carrier-pigeon"])
    with pytest.raises(SystemExit):
        main(["--smoke", "--backends", "gevent"])


def test_module_entry_point_prints_usage() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "msgtrans.bench", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert "--quick" in result.stdout
    assert "--backends" in result.stdout


# --- bench/bench_zero_copy.py ------------------------------------------------------------------


def test_zero_copy_bench_prints_every_protocol_above_the_plan_bar() -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "bench" / "bench_zero_copy.py"
    result = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for section in ("## Bytes allocated per message", "## Pool hit rate under a steady load",
                    "## Bytes copied by the decoder per large message",
                    "## Receive path throughput", "## Per protocol"):
        assert section in out
    table = out.split("## Per protocol", 1)[1]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0] in ("tcp", "tls", "ws", "quic"):
            rows[(cells[0], cells[1])] = cells
    sizes = ("64 KiB", "256 KiB", "1 MiB", "100 B")
    assert set(rows) == {(p, s) for p in ("tcp", "tls", "ws", "quic") for s in sizes}
    for (protocol, size), cells in rows.items():
        assert float(cells[7].replace(",", "")) > 0, (protocol, size)  # messages/s
        if size == "100 B":
            # No large message: no zero-copy counted.  The pool column may show the one
            # receive area a decoder takes lazily from the pool on its first read (QUIC).
            assert cells[4:7] == ["-"] * 3, (protocol, cells)
            continue
        # The plan's bar: buffer pool > 90 %, zero-copy > 80 % for large messages.
        assert float(cells[3].rstrip("%")) > 90, (protocol, size, cells)
        assert float(cells[4].rstrip("%")) > 80, (protocol, size, cells)


# --- bench/bench_quic_flood.py -------------------------------------------------------------------


@pytest.mark.network
def test_quic_flood_bench_runs_against_the_server() -> None:
    """The flood runs end to end and prints both floods (the memory bound itself is tested in
    tests/core/test_quic_admission.py, without a process or RSS in between)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "bench" / "bench_quic_flood.py"
    result = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "garbage Initials" in result.stdout and "valid spoofed Initials" in result.stdout


# --- bench/bench_cluster.py ----------------------------------------------------------------------


@pytest.mark.network
def test_cluster_bench_times_a_publish_to_every_session_of_two_nodes() -> None:
    import shutil
    import subprocess
    import sys

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs Debian's package)")
    script = Path(__file__).resolve().parent.parent / "bench" / "bench_cluster.py"
    result = subprocess.run([sys.executable, str(script), "-n", "20", "--rounds", "2"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "20 sessions over 2 asyncio nodes" in result.stdout
    assert "last session:  median" in result.stdout and "ratio cluster/one node" in result.stdout


# --- --save / --compare ----------------------------------------------------------------------


def _baseline_doc(machine: dict[str, object] | None = None) -> dict[str, object]:
    from msgtrans.bench._baseline import FORMAT, machine_info

    def value(client: str, backend: str | None, scenario: str, metric: str,
              number: float) -> dict[str, object]:
        from msgtrans.bench._report import METRICS

        unit, higher = METRICS[metric]
        return {"protocol": "tcp", "scenario": scenario, "client": client, "backend": backend,
                "kind": "msgtrans" if backend else "peer", "metric": metric, "unit": unit,
                "higher_is_better": higher, "value": number, "samples": [number]}

    return {
        "format": FORMAT, "plan": "smoke", "machine": machine or machine_info(), "rounds": 1,
        "values": [
            value("msgtrans", "asyncio", "oneway_64", "msg_s", 100.0),
            value("msgtrans", "asyncio", "latency", "p50_us", 200.0),
            value("asyncio-protocol", None, "oneway_64", "msg_s", 400.0),
            value("asyncio-protocol", None, "latency", "p50_us", 50.0),
        ],
    }


def test_compare_ratios_point_the_same_way_for_rates_and_latencies() -> None:
    from msgtrans.bench._baseline import compare, ratio

    assert ratio(100.0, 150.0, True) == pytest.approx(1.5)  # rate: now / stored
    assert ratio(200.0, 100.0, False) == pytest.approx(2.0)  # latency halved: stored / now
    assert ratio(200.0, 400.0, False) == pytest.approx(0.5)  # latency doubled: worse
    assert ratio(0.0, 1.0, True) is None
    assert ratio(1.0, None, True) is None

    doc = _baseline_doc()
    now = [
        {"protocol": "tcp", "scenario": "oneway_64", "client": "msgtrans", "metric": "msg_s",
         "value": 200.0},                                     # 2x better
        {"protocol": "tcp", "scenario": "latency", "client": "msgtrans", "metric": "p50_us",
         "value": 400.0},                                     # 2x worse
        {"protocol": "tcp", "scenario": "oneway_64", "client": "asyncio-protocol",
         "metric": "msg_s", "value": 200.0},                  # the machine: 2x slower
        {"protocol": "tcp", "scenario": "latency", "client": "asyncio-protocol",
         "metric": "p50_us", "value": 100.0},                 # ... and 2x slower
    ]
    result = compare(doc, now)
    by = {(r["client"], r["metric"]): r for r in result["lines"]}
    assert by[("msgtrans", "msg_s")]["ratio"] == pytest.approx(2.0)
    assert by[("msgtrans", "p50_us")]["ratio"] == pytest.approx(0.5)
    assert by[("asyncio-protocol", "p50_us")]["ratio"] == pytest.approx(0.5)
    assert result["geomean_msgtrans"] == pytest.approx(1.0)  # sqrt(2 * 0.5)
    assert result["geomean_peers"] == pytest.approx(0.5)
    assert result["geomean_net"] == pytest.approx(2.0)
    assert result["missing"] == 0

    # A figure that was run but not measured (an error) is listed, without a ratio; one that
    # was not run (narrowed away) is left out.
    ran = {("tcp", "oneway_64", "msgtrans"), ("tcp", "latency", "msgtrans")}
    partial = compare(doc, now[:1], ran)
    assert [(r["scenario"], r["ratio"]) for r in partial["lines"]] == [
        ("oneway_64", pytest.approx(2.0)), ("latency", None)]
    assert partial["missing"] == 1
    assert partial["geomean_peers"] is None

    out = io.StringIO()
    from msgtrans.bench._baseline import compare_table

    compare_table(result, out, rounds=3)
    text = out.getvalue()
    assert "| msgtrans (asyncio) | tcp | latency | us p50 | 200 | 400 | 0.50x |" in text
    assert "now (median of 3)" in text
    assert "geometric mean, msgtrans rows: 1.000x" in text


def test_median_of_rounds_skips_failed_rounds() -> None:
    from msgtrans.bench._baseline import median_results, values_of

    rounds = [[Measurement("tcp", "oneway_64", "msgtrans", {"msg_s": v}, 10, 1.0)]
              for v in (3.0, 1.0, 2.0)]
    rounds.append([Measurement("tcp", "oneway_64", "msgtrans", error="boom")])
    merged = median_results(rounds)
    assert merged[0].values == {"msg_s": 2.0} and merged[0].error is None
    values = values_of(rounds)
    assert values[0]["value"] == 2.0 and values[0]["samples"] == [3.0, 1.0, 2.0]
    assert values[0]["backend"] == "asyncio" and values[0]["kind"] == "msgtrans"
    failed = median_results([[Measurement("tcp", "latency", "msgtrans", error="boom")]])
    assert failed[0].error == "boom"


def test_compare_refuses_another_machine_unless_forced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from msgtrans.bench._baseline import machine_info

    other = dict(machine_info(), cpu_model="A 1980s toaster", cpus=1)
    path = tmp_path / "other.json"
    path.write_text(json.dumps(_baseline_doc(other)))
    assert main(["--compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert "another machine" in err and "toaster" in err and "--force" in err

    assert main(["--compare", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "plain.json").write_text(json.dumps({"rows": []}))
    assert main(["--compare", str(tmp_path / "plain.json")]) == 2
    assert "not a file written by bench --save" in capsys.readouterr().err

    same = tmp_path / "same.json"
    same.write_text(json.dumps(_baseline_doc()))
    assert main(["--compare", str(same), "--quick"]) == 2  # the file holds a smoke run
    assert "smoke run" in capsys.readouterr().err
    assert main(["--compare", str(same), "--protocols", "ws"]) == 2
    assert "nothing of the file is left" in capsys.readouterr().err


def test_machine_info_names_the_cpu_and_the_commit() -> None:
    from msgtrans.bench._baseline import machine_info, same_machine

    info = machine_info()
    assert info["cpus"] and info["cpu_model"] and info["python"] and info["msgtrans"]
    assert same_machine(info, dict(info, date="another day", git_commit="abc")) == []
    assert same_machine(info, dict(info, cpus=(info["cpus"] or 0) + 1)) == ["cpus"]


@pytest.mark.network
def test_smoke_save_then_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "base.json"
    status = main(["--smoke", "--protocols", "tcp", "--scenarios", "oneway_64,latency",
                   "--backends", "asyncio", "--save", str(saved)])
    assert status == 0, capsys.readouterr().err
    capsys.readouterr()
    doc = json.loads(saved.read_text())
    assert doc["format"] == "msgtrans-bench-baseline" and doc["plan"] == "smoke"
    assert doc["machine"]["cpus"] and doc["machine"]["cpu_model"]
    assert doc["rows"] and doc["measurements"]  # the --json document is in it
    keys = {(v["scenario"], v["client"], v["metric"]) for v in doc["values"]}
    assert ("oneway_64", "msgtrans", "msg_s") in keys
    assert ("latency", "msgtrans", "p99_us") in keys
    assert ("oneway_64", "asyncio-protocol", "msg_s") in keys
    for v in doc["values"]:
        assert v["value"] > 0 and v["unit"] and v["backend"] in ("asyncio", None), v

    # Compare with one scenario only, two rounds: medians of two, ratios for what was run.
    status = main(["--compare", str(saved), "--scenarios", "oneway_64", "--rounds", "2"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "[bench] round 2/2" in captured.err
    assert "## Against" in captured.out and "now (median of 2)" in captured.out
    assert "| msgtrans (asyncio) | tcp | oneway_64 | msg/s |" in captured.out
    assert "| tcp | latency |" not in captured.out.split("## Against")[1]
    assert "geometric mean, msgtrans rows:" in captured.out
