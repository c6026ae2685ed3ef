"""``serve --config FILE.toml``, ``MSGTRANS_*`` variables and ``--print-config``: the builder's
settings from a file or the environment, with the builder's own checks."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import msgtrans.io_asyncio as mt
from msgtrans.__main__ import main
from msgtrans.cli.config import (
    _env_value,
    apply_settings,
    env_settings,
    read_config_file,
    setting_names,
)
from msgtrans.core.errors import ConfigurationError

from .interop.serverproc import serve

pytestmark = [pytest.mark.filterwarnings("error::ResourceWarning")]

WAIT = 5.0


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "msgtrans.toml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _no_msgtrans_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests set the variables they need; none leaks in from the machine."""
    import os

    for key in list(os.environ):
        if key.startswith("MSGTRANS_"):
            monkeypatch.delenv(key)


def test_read_config_file(tmp_path: Path) -> None:
    path = _write(tmp_path, """
[transport]
request_timeout = 5.0
connection_pool = [2, 8, 4]
receive_queue = { max_messages = 32 }

[serve]
tcp = "127.0.0.1:0"
""")
    transport, serve_table = read_config_file(path)
    assert transport == {"request_timeout": 5.0, "connection_pool": [2, 8, 4],
                         "receive_queue": {"max_messages": 32}}
    assert serve_table == {"tcp": "127.0.0.1:0"}
    assert read_config_file(_write(tmp_path, "")) == ({}, {})


@pytest.mark.parametrize(("text", "says"), [
    ("[transport\n", "is not valid TOML"),
    ("[other]\nx = 1\n", "unknown table 'other'"),
    ("transport = 3\n", "transport must be a table"),
])
def test_bad_config_files(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as exc:
        read_config_file(_write(tmp_path, text))
    assert exc.value.field == "config"
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_config_file(tmp_path / "missing.toml")


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                     st.floats(allow_nan=False, allow_infinity=False),
                     st.text(alphabet="abcdefgh_", min_size=1))
_json_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(alphabet="abc_", min_size=1), inner, max_size=3), max_leaves=8)


@given(_json_values)
def test_env_value_reads_json(value: object) -> None:
    """Any JSON value written to a variable reads back as itself (plain words too)."""
    assert _env_value(json.dumps(value)) == value


@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=5))
def test_env_value_reads_comma_lists(numbers: list[int]) -> None:
    assert _env_value(",".join(map(str, numbers))) == numbers


def test_env_settings() -> None:
    environ = {"MSGTRANS_REQUEST_TIMEOUT": "5", "MSGTRANS_CONNECTION_POOL": "2,8,4",
               "MSGTRANS_COMPRESSION_METHOD": "zstd", "MSGTRANS_IDLE_TIMEOUT": "none",
               "MSGTRANS_": "ignored", "OTHER": "1"}
    assert env_settings(environ) == {"request_timeout": 5, "connection_pool": [2, 8, 4],
                                     "compression_method": "zstd", "idle_timeout": None}


def test_apply_settings_calls_the_builder_methods() -> None:
    builder = apply_settings(mt.Transport.builder(), {
        "request_timeout": 3,
        "connection_pool": [1, 6, 3],
        "receive_queue": {"max_messages": 32},
    }, "test")
    settings = builder.settings()
    assert settings["request_timeout"] == 3
    assert settings["connection_pool"] == {"min": 1, "max": 6, "target": 3}
    assert settings["receive_queue"]["max_messages"] == 32


def test_apply_settings_refuses_with_the_source_and_field() -> None:
    with pytest.raises(ConfigurationError, match=r"test\.toml: unknown setting 'nope'") as exc:
        apply_settings(mt.Transport.builder(), {"nope": 1}, "test.toml")
    assert exc.value.field == "nope"
    assert "request_timeout" in str(exc.value)  # the known ones are listed
    with pytest.raises(ConfigurationError, match="environment") as exc:
        apply_settings(mt.Transport.builder(), {"request_timeout": -1}, "environment")
    assert exc.value.field == "request_timeout"
    with pytest.raises(ConfigurationError) as exc:
        apply_settings(mt.Transport.builder(), {"request_timeout": [1, 2, 3]}, "environment")
    assert exc.value.field == "request_timeout"
    assert "build" not in setting_names(mt.Transport.builder())


def _print_config(args: list[str]) -> dict[str, dict[str, object]]:
    out = io.StringIO()
    from msgtrans.cli import serve as serve_cli

    parser_args = _parse(["serve", *args, "--print-config"])
    assert serve_cli.main(parser_args, out) == 0
    result: dict[str, dict[str, object]] = json.loads(out.getvalue())
    return result


def _parse(argv: list[str]) -> object:
    import argparse

    from msgtrans.cli import serve as serve_cli

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    serve_cli.add_arguments(commands.add_parser("serve"))
    return parser.parse_args(argv)


def test_print_config_file_then_environment_then_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, """
[transport]
request_timeout = 5.0
max_payload = 65536

[serve]
tcp = "127.0.0.1:9100"
backend = "sync"
""")
    shown = _print_config(["--config", str(path)])
    assert shown["transport"]["request_timeout"] == 5.0
    assert shown["transport"]["max_payload"] == 65536
    assert shown["serve"]["tcp"] == "127.0.0.1:9100"
    assert shown["serve"]["backend"] == "sync"
    monkeypatch.setenv("MSGTRANS_REQUEST_TIMEOUT", "7")
    shown = _print_config(["--config", str(path), "--backend", "trio"])
    assert shown["transport"]["request_timeout"] == 7  # the environment wins over the file
    assert shown["transport"]["max_payload"] == 65536
    assert shown["serve"]["backend"] == "trio"  # the command line wins over the file


def test_bad_settings_exit_2_before_listening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "[transport]\nrequest_timeout = 0\n")
    assert main(["serve", "--config", str(path), "--tcp", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert "request_timeout" in err and str(path) in err
    assert main(["serve", "--config", str(_write(tmp_path, "[serve]\nport = 1\n"))]) == 2
    assert "unknown [serve] key" in capsys.readouterr().err
    monkeypatch.setenv("MSGTRANS_NO_SUCH_SETTING", "1")
    assert main(["serve", "--tcp", "127.0.0.1:0"]) == 2
    assert "environment: unknown setting 'no_such_setting'" in capsys.readouterr().err


@pytest.mark.network
def test_served_with_a_config_file_applies_its_limits(tmp_path: Path) -> None:
    """The settings reach the running server: its payload limit refuses a bigger message."""
    path = _write(tmp_path, """
[transport]
max_payload = 1024

[serve]
tcp = "127.0.0.1:0"
""")
    with serve("--config", str(path)) as (_, addresses):

        async def go() -> None:
            async with mt.Transport() as client:
                session = await client.connect(f"tcp://{addresses['tcp']}")
                small = await session.request(b"x" * 1000, timeout=WAIT)
                assert bytes(small.payload) == b"x" * 1000
                with pytest.raises(mt.TransportError):
                    await session.request(b"x" * 2000, timeout=WAIT)

        asyncio.run(asyncio.wait_for(go(), 3 * WAIT))
