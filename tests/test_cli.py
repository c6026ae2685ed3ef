"""``python -m msgtrans serve | send | bench``: the command line, in process and as a subprocess."""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import msgtrans.io_asyncio as mt
from msgtrans.__main__ import main
from msgtrans.certs import write_self_signed
from msgtrans.cli import format_payload, host_port
from msgtrans.cli.send import client_url
from msgtrans.cli.serve import format_address, listeners, run_server

from .interop.serverproc import ROOT, serve

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

WAIT = 5.0


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, str]]:
    """An echo server subprocess on tcp, wss and quic."""
    with serve("--tcp", "127.0.0.1:0", "--wss", "127.0.0.1:0",
               "--quic", "127.0.0.1:0") as (_, addresses):
        yield addresses


def test_send_request_as_a_subprocess(server: dict[str, str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "msgtrans", "send", f"tcp://{server['tcp']}", "héllo",
         "--request", "--biz-type", "4", "--timeout", str(WAIT)],
        capture_output=True, text=True, timeout=3 * WAIT, cwd=ROOT, env=env, check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "héllo\n", "")


@pytest.mark.parametrize("scheme", ["wss", "quic"])
def test_send_request_with_ca(server: dict[str, str], scheme: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    url = server[scheme] if scheme == "wss" else f"quic://{server[scheme]}"
    assert main(["send", url, "over " + scheme, "--request", "--ca", server["ca"]]) == 0
    assert capsys.readouterr().out == f"over {scheme}\n"


def test_send_insecure(server: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", f"quic://{server['quic']}", "x", "--request", "--insecure"]) == 0
    assert capsys.readouterr().out == "x\n"


def test_send_one_way(server: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", f"tcp://{server['tcp']}", "fire and forget", "--biz-type", "9"]) == 0
    assert capsys.readouterr().out == ""


def test_send_unverified_certificate_fails(server: dict[str, str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", server["wss"], "x", "--timeout", str(WAIT)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("msgtrans send: [connection.") and "\n" in err


def test_send_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert main(["send", f"tcp://127.0.0.1:{port}", "x", "--timeout", "2"]) == 1
    assert "[connection.refused]" in capsys.readouterr().err
    assert main(["send", "tcp://127.0.0.1:1", "x", "--ca", "ca.pem"]) == 1
    assert "[configuration.invalid]" in capsys.readouterr().err


def test_client_url() -> None:
    assert client_url("tcp://h:1") == "tcp://h:1"
    assert client_url("wss://h:1/p?x=1", "/a b/ca.pem", insecure=True) == (
        "wss://h:1/p?x=1&ca=%2Fa+b%2Fca.pem&verify=false")


def test_helpers() -> None:
    assert format_payload(b"text \xc3\xa9") == "text é"
    assert format_payload(b"\xff\x00") == "ff00"
    assert host_port("[::1]:0") == "[::1]:0"
    for bad in ("nohost", ":1", "h:x", "h:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            host_port(bad)
    assert format_address("wss", ("::1", 5)) == "wss://[::1]:5/"
    assert format_address("quic", ("127.0.0.1", 5)) == "127.0.0.1:5"


def test_serve_in_process(tmp_path: Path) -> None:
    """The server loop itself, stopped by its event instead of a signal."""
    cert, key = write_self_signed(tmp_path)

    async def go() -> int:
        out = io.StringIO()
        stop = asyncio.Event()
        configs = listeners({"tcp": "127.0.0.1:0", "tls": "127.0.0.1:0"}, cert, key)
        task = asyncio.ensure_future(run_server(configs, cert, out, stop))
        while not out.getvalue():
            await asyncio.sleep(0.01)
        bound = json.loads(out.getvalue())
        assert set(bound) == {"tcp", "tls", "ca"}
        async with mt.Transport() as client:
            session = await client.connect(f"tls://{bound['tls']}?ca={cert}")
            reply = await session.request(b"in process", biz_type=200)
            assert (reply.biz_type, bytes(reply.payload)) == (200, b"in process")
            await session.send(b"back", biz_type=1)
            echo = await session.receive()
            assert (echo.is_request, echo.biz_type, bytes(echo.payload)) == (False, 1, b"back")
        stop.set()
        return await task

    assert asyncio.run(asyncio.wait_for(go(), 3 * WAIT)) == 0


def test_serve_address_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["serve", "--tcp", f"127.0.0.1:{port}"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no address line when a listener cannot be opened
    assert captured.err.startswith("msgtrans serve: [")


def test_serve_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--tcp", "nowhere"])
    assert exc.value.code == 2
    assert "invalid host_port value: 'nowhere'" in capsys.readouterr().err


def test_bench_not_installed(monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert main(["bench", "--seconds", "1"]) == 2
    assert capsys.readouterr().err == "the benchmark is not installed in this version\n"


def test_bench_gets_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("msgtrans.bench")
    fake.__spec__ = importlib.machinery.ModuleSpec("msgtrans.bench", None)
    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 0

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "msgtrans.bench", fake)
    assert main(["bench", "--help", "tcp"]) == 0
    assert seen == [["--help", "tcp"]]


def test_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("serve", "send", "demo", "bench"):
        assert command in out


@pytest.mark.parametrize(("error", "level"), [
    (mt.TransportConnectionError("reset", code="connection.reset"), "DEBUG"),
    (mt.TransportTimeoutError("idle", 30.0, code="timeout.idle"), "INFO"),
    (mt.TransportTimeoutError("first packet", 30.0, code="timeout.first_packet"), "INFO"),
    (mt.ProtocolError(mt.Protocol.WIRE, "cut", code="protocol.unexpected_eof"), "INFO"),
    (mt.ProtocolError(mt.Protocol.WIRE, "bad", code="protocol.bad_version"), "WARNING"),
])
def test_serve_logs_a_silent_peer_at_info_and_a_broken_one_as_a_warning(
        error: BaseException, level: str, caplog: pytest.LogCaptureFixture) -> None:
    from msgtrans.cli.serve import _log_error

    caplog.set_level("DEBUG", logger="msgtrans")
    _log_error(types.SimpleNamespace(id=7), error)
    [record] = [r for r in caplog.records if "session 7" in r.getMessage()]
    assert record.levelname == level
