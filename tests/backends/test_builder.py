"""The transport builder's checks, without a network: every method refuses a bad argument at
once, ``build()`` refuses a bad combination, each with a ``ConfigurationError`` naming the
field; ``settings()`` is plain data with the defaults filled; the same on every backend.

What each setting does on the network is ``conformance/test_builder_conformance.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import msgtrans.io_asyncio as amt
import msgtrans.io_sync as smt
import msgtrans.io_trio as tmt
from msgtrans._driver.builder import BUILDER_FIELDS, TransportBuilderBase
from msgtrans._driver.transport import TransportDefaults, apply_config_defaults
from msgtrans.core.config import to_server_config
from msgtrans.core.packet import Limits

from ..interop.serverproc import ROOT

LIBS = [amt, tmt, smt]
ConfigurationError = amt.ConfigurationError


def build(builder: TransportBuilderBase) -> Any:
    """``builder.build()`` (a trio transport needs no nursery until it is entered)."""
    return builder.build()  # type: ignore[attr-defined]


@pytest.fixture(params=LIBS, ids=["asyncio", "trio", "sync"])
def lib(request: pytest.FixtureRequest) -> Any:
    return request.param


def refused(field: str, make: Callable[[], object]) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        make()
    assert caught.value.field == field, caught.value
    return caught.value


# --- each method ---------------------------------------------------------------------------------

BAD_ARGUMENTS: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = [
    ("request_timeout", "request_timeout", (0,), {}),
    ("connect_timeout", "connect_timeout", (math.inf,), {}),
    ("shutdown_timeout", "shutdown_timeout", (-1,), {}),
    ("handshake_timeout", "handshake_timeout", ("10",), {}),
    ("idle_timeout", "idle_timeout", (math.nan,), {}),
    ("heartbeat_interval", "heartbeat_interval", (True,), {}),
    ("connection_pool", "min", (-1, 4), {}),
    ("connection_pool", "max", (0, 0), {}),
    ("connection_pool", "min", (5, 4), {}),
    ("connection_pool", "target", (2, 4, 5), {}),
    ("connection_pool", "target", (2, 4, 1), {}),
    ("pool_expansion_strategy", "pool_expansion_strategy", (object(),), {}),
    ("buffer_pool", "sizes", ([], []), {}),
    ("buffer_pool", "sizes", ([8192, 1024], [1, 1]), {}),
    ("buffer_pool", "sizes", ([0], [1]), {}),
    ("buffer_pool", "counts", ([1024], [-1]), {}),
    ("buffer_pool", "counts", ([1024, 2048], [1]), {}),
    ("memory_limit", "memory_limit", (0,), {}),
    ("memory_limit", "memory_limit", (-3.5,), {}),
    ("zero_copy_threshold", "zero_copy_threshold", (0,), {}),
    ("zero_copy_threshold", "zero_copy_threshold", (1.5,), {}),
    ("worker_threads", "worker_threads", (0,), {}),
    ("worker_threads", "worker_threads", (2000,), {}),
    ("max_payload", "max_payload", (2**32,), {}),
    ("max_ext_header", "max_ext_header", (65536,), {}),
    ("max_sessions", "max_sessions", (0,), {}),
    ("receive_queue", "receive_queue.max_messages", (), {"max_messages": 0}),
    ("receive_queue", "receive_queue.max_bytes", (), {"max_bytes": -1}),
    ("send_queue", "send_queue.high_water_bytes", (), {"high_water_bytes": 0}),
    ("send_queue", "send_queue.low_water_messages", (), {"low_water_messages": -1}),
    ("on_shutdown", "on_shutdown", (42,), {}),
]


@pytest.mark.parametrize(("method", "field", "args", "kwargs"), BAD_ARGUMENTS,
                         ids=[f"{m}-{f}-{i}" for i, (m, f, _, _) in enumerate(BAD_ARGUMENTS)])
def test_a_bad_argument_is_refused_at_once(lib: Any, method: str, field: str,
                                           args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    builder = lib.Transport.builder()
    before = builder.settings()
    refused(field, lambda: getattr(builder, method)(*args, **kwargs))
    assert builder.settings() == before  # nothing recorded
    assert field in BUILDER_FIELDS


def test_every_method_returns_the_builder(lib: Any) -> None:
    b = lib.Transport.builder()
    chain = (b.request_timeout(3).connect_timeout(2).shutdown_timeout(0).handshake_timeout(4)
             .idle_timeout(30).heartbeat_interval(5).connection_pool(1, 8, 4)
             .pool_expansion_strategy(lib.FixedExpansion(2)).buffer_pool([70_000], [2])
             .memory_limit(2).zero_copy_threshold(4096).worker_threads(4).max_payload(1 << 20)
             .max_ext_header(512).max_sessions(100).receive_queue(max_messages=64)
             .send_queue(high_water_bytes=1 << 16, low_water_bytes=1 << 14)
             .session_settings(max_pending_requests=10).on_shutdown(print))
    assert chain is b
    transport = build(b)
    assert transport._settings["request_timeout"] == 3.0
    assert transport._settings["max_pending_requests"] == 10
    assert transport._settings["receive_max_messages"] == 64
    assert transport._settings["send_high_water_bytes"] == 1 << 16
    assert transport._memory_limit == 2 * 1024 * 1024
    # The builder's limit is the one every connection charges: the budget in the settings.
    assert transport._settings["memory_budget"].limit == 2 * 1024 * 1024
    assert transport.stats().memory.limit == 2 * 1024 * 1024
    assert transport._connect_timeout == 2.0 and transport._shutdown_timeout == 0.0
    assert transport._defaults == TransportDefaults(
        config={"handshake_timeout": 4.0, "zero_copy_threshold": 4096,
                "max_payload": 1 << 20, "max_ext_header": 512, "max_sessions": 100},
        pool_min=1, pool_max=8, pool_target=4, pool_strategy=b._strategy,
        buffer_pool=((70_000,), (2,)), on_shutdown=print, workers=4,
    )


# --- combinations --------------------------------------------------------------------------------

CONFLICTS: list[tuple[str, Callable[[Any], Any]]] = [
    ("request_timeout", lambda b: b.request_timeout(3).session_settings(request_timeout=7)),
    ("idle_timeout", lambda b: b.idle_timeout(5).session_settings(idle_timeout=5)),
    ("heartbeat_interval", lambda b: b.session_settings(heartbeat_interval=1)
     .heartbeat_interval(2)),
    ("receive_max_bytes", lambda b: b.receive_queue(max_bytes=1 << 20)
     .session_settings(receive_max_bytes=1 << 21)),
    ("send_low_water_messages", lambda b: b.send_queue(low_water_messages=4)
     .session_settings(send_low_water_messages=4)),
    # Ranges against the defaults and each other.
    ("send_low_water_bytes", lambda b: b.send_queue(low_water_bytes=2 << 20)),
    ("send_low_water_messages", lambda b: b.send_queue(high_water_messages=10)
     .session_settings(send_low_water_messages=20)),
    ("buffer_pool", lambda b: b.buffer_pool([1 << 20], [2]).memory_limit(1)),
    ("zero_copy_threshold", lambda b: b.zero_copy_threshold(2048).max_payload(1024)),
    ("zero_copy_threshold", lambda b: b.zero_copy_threshold(2**32)),
    ("session_settings", lambda b: b.session_settings(no_such_setting=1)),
    ("receive_max_messages", lambda b: b.session_settings(receive_max_messages=0)),
]


@pytest.mark.parametrize(("field", "configure"), CONFLICTS,
                         ids=[f"{f}-{i}" for i, (f, _) in enumerate(CONFLICTS)])
def test_build_refuses_a_bad_combination(lib: Any, field: str,
                                         configure: Callable[[Any], Any]) -> None:
    builder = configure(lib.Transport.builder())
    error = refused(field, lambda: build(builder))
    assert field in str(error)


def test_the_same_setting_one_way_builds(lib: Any) -> None:
    # Different fields through the two routes are no conflict; calling one method twice keeps
    # the last value.
    b = (lib.Transport.builder().receive_queue(max_messages=8)
         .session_settings(receive_max_bytes=4096).request_timeout(3).request_timeout(4))
    transport = build(b)
    assert transport._settings["receive_max_messages"] == 8
    assert transport._settings["receive_max_bytes"] == 4096
    assert transport._settings["request_timeout"] == 4.0
    # A buffer pool exactly at the limit fits; zero-copy at max_payload is allowed.
    build(lib.Transport.builder().buffer_pool([1024, 2048], [512, 256]).memory_limit(1))
    build(lib.Transport.builder().zero_copy_threshold(1024).max_payload(1024))


# --- settings() ----------------------------------------------------------------------------------


def test_settings_are_plain_data_with_the_defaults(lib: Any) -> None:
    defaults = lib.Transport.builder().settings()
    assert json.loads(json.dumps(defaults)) == defaults
    assert defaults == {
        "request_timeout": 10.0, "connect_timeout": None, "shutdown_timeout": 5.0,
        "send_timeout": 30.0,
        "connection_pool": {"min": 2, "max": 64, "target": 16},
        "pool_expansion_strategy": "SmartExpansion()", "buffer_pool": None,
        "memory_limit": None, "zero_copy_threshold": 65536, "worker_threads": 1,
        "max_payload": 16 * 1024 * 1024, "max_ext_header": 4096, "max_sessions": None,
        "handshake_timeout": 10.0, "first_packet_timeout": 30.0,
        "max_sessions_per_peer": None, "connection_rate": None, "admission": None,
        "backplane": None,
        "receive_queue": {"max_messages": 1024, "max_bytes": 16 * 1024 * 1024},
        "send_queue": {"high_water_bytes": 1 << 20, "low_water_bytes": 1 << 18,
                       "high_water_messages": 1024, "low_water_messages": 256},
        "idle_timeout": None, "heartbeat_interval": None, "compression": None,
        "session_settings": {},
    }
    chosen = (lib.Transport.builder().connection_pool(1, 4).buffer_pool((70_000,), (2,))
              .receive_queue(max_bytes=4096).pool_expansion_strategy(lib.FixedExpansion(3))
              .session_settings(max_pending_requests=5).settings())
    assert json.loads(json.dumps(chosen)) == chosen
    assert chosen["connection_pool"] == {"min": 1, "max": 4, "target": 4}
    assert chosen["buffer_pool"] == {"sizes": [70_000], "counts": [2]}
    assert chosen["receive_queue"] == {"max_messages": 1024, "max_bytes": 4096}
    assert lib.Transport.builder().backplane("redis://h:1/0", node_id="n1").settings()[
        "backplane"] == {"url": "redis://h:1/0", "prefix": "msgtrans", "node_id": "n1",
                         "max_buffered": 10_000, "max_buffered_bytes": 16 * 1024 * 1024}
    for field, call in (("backplane", lambda b: b.backplane("http://h")),
                        ("node_id", lambda b: b.backplane("redis://h", node_id="a/b")),
                        ("max_buffered", lambda b: b.backplane("redis://h", max_buffered=-1))):
        with pytest.raises(lib.ConfigurationError) as info:
            call(lib.Transport.builder())
        assert info.value.field == field
    assert lib.Transport.builder().compression(100, "zstd").settings()["compression"] == {
        "threshold": 100, "method": "zstd", "level": None}
    assert chosen["pool_expansion_strategy"] == "FixedExpansion(step=3)"
    assert chosen["session_settings"] == {"max_pending_requests": 5}


# --- any combination -----------------------------------------------------------------------------

_NUMBERS = st.one_of(st.integers(-3, 2**33), st.floats(allow_nan=True, allow_infinity=True),
                     st.none(), st.booleans(), st.just("5"))
_SIZES = st.lists(st.integers(-2, 1 << 21), max_size=4)
_COUNTS = st.lists(st.integers(-2, 64), max_size=4)
_CALLS: dict[str, Callable[[Any], st.SearchStrategy[tuple[tuple[Any, ...], dict[str, Any]]]]] = {
    name: (lambda _: st.tuples(st.tuples(_NUMBERS), st.just({})))
    for name in ("request_timeout", "connect_timeout", "shutdown_timeout", "handshake_timeout",
                 "idle_timeout", "heartbeat_interval", "memory_limit", "zero_copy_threshold",
                 "worker_threads", "max_payload", "max_ext_header", "max_sessions")
}
_CALLS["connection_pool"] = lambda _: st.tuples(st.tuples(_NUMBERS, _NUMBERS, _NUMBERS),
                                                st.just({}))
_CALLS["buffer_pool"] = lambda _: st.tuples(st.tuples(_SIZES, _COUNTS), st.just({}))
_CALLS["receive_queue"] = lambda _: st.tuples(st.just(()), st.fixed_dictionaries(
    {}, optional={"max_messages": _NUMBERS, "max_bytes": _NUMBERS}))
_CALLS["send_queue"] = lambda _: st.tuples(st.just(()), st.fixed_dictionaries(
    {}, optional=dict.fromkeys(("high_water_bytes", "low_water_bytes", "high_water_messages",
                                "low_water_messages"), _NUMBERS)))
_CALLS["compression"] = lambda _: st.tuples(
    st.tuples(_NUMBERS, st.sampled_from(["zlib", "zstd", "lz4", 3]), _NUMBERS), st.just({}))
_SESSION_KEYS = ["compress_threshold", "request_timeout", "idle_timeout", "heartbeat_interval",
                 "receive_max_bytes", "receive_max_messages", "send_low_water_bytes",
                 "send_high_water_bytes", "max_pending_requests", "bogus"]
_CALLS["session_settings"] = lambda _: st.tuples(st.just(()), st.dictionaries(
    st.sampled_from(_SESSION_KEYS), _NUMBERS, max_size=3))

_CALL = st.sampled_from(sorted(_CALLS)).flatmap(
    lambda name: _CALLS[name](None).map(lambda call: (name, *call)))


@settings(max_examples=300, deadline=None)
@given(calls=st.lists(_CALL, max_size=6), backend=st.sampled_from(LIBS))
def test_any_combination_builds_or_names_a_field(calls: list[tuple[str, tuple[Any, ...],
                                                                   dict[str, Any]]],
                                                  backend: Any) -> None:
    builder = backend.Transport.builder()
    error: ConfigurationError | None = None
    try:
        for name, args, kwargs in calls:
            getattr(builder, name)(*args, **kwargs)
        transport = build(builder)
    except ConfigurationError as exc:
        error = exc
    if error is not None:
        assert error.field in BUILDER_FIELDS, error
    else:
        assert isinstance(transport, backend.Transport)
    json.dumps(builder.settings())  # always plain data, whatever was refused


# --- transport-wide config fields ----------------------------------------------------------------


def test_config_fields_take_the_builders_value_or_conflict() -> None:
    fields = {"max_payload": 1000, "zero_copy_threshold": 512, "max_sessions": 3,
              "handshake_timeout": 2.0}
    client = apply_config_defaults(amt.TcpConfig("127.0.0.1:9"), fields)
    assert (client.limits, client.zero_copy_threshold) == (Limits(max_payload=1000), 512)
    assert not hasattr(client, "max_sessions")  # server fields skip client configs
    server = apply_config_defaults(to_server_config("ws://127.0.0.1:0/?max_sessions=3"),
                                   fields)
    assert (server.max_sessions, server.handshake_timeout, server.limits.max_ext_header) == (
        3, 2.0, 4096)
    refused("handshake_timeout", lambda: apply_config_defaults(
        to_server_config("tcp://127.0.0.1:0?handshake_timeout=5"), fields))
    refused("zero_copy_threshold", lambda: apply_config_defaults(
        dataclasses.replace(amt.TcpConfig("127.0.0.1:9"), zero_copy_threshold=None), fields))
    assert apply_config_defaults(client, {}) is client


def test_a_transport_caches_its_configured_configs(lib: Any) -> None:
    transport = build(lib.Transport.builder().max_payload(1000))
    config = lib.TcpConfig("127.0.0.1:9")
    assert transport._configured(config) is transport._configured(lib.TcpConfig("127.0.0.1:9"))
    plain = build(lib.Transport.builder())
    assert plain._configured(config) is config


def test_accept_configs_one_or_many(lib: Any) -> None:
    transport = build(lib.Transport.builder().max_sessions(4))
    (one,) = transport._server_configs("tcp://127.0.0.1:0")
    assert one.max_sessions == 4
    two = transport._server_configs([lib.TcpServerConfig("127.0.0.1:0"), "ws://127.0.0.1:0/"])
    assert [c.max_sessions for c in two] == [4, 4]
    refused("url", lambda: transport._server_configs("nope://x"))


def test_backends_reexport_what_the_builder_takes() -> None:
    for lib in LIBS:
        for name in ("SmartExpansion", "FixedExpansion", "ExpansionStrategy", "ServerConfig",
                     "ConnectionConfig", "ServerConfigLike", "ConnectionConfigLike"):
            assert name in lib.__all__ and getattr(lib, name) is getattr(amt, name)


@pytest.mark.network
def test_the_builder_example_runs() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "builder_limits.py")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith('{"request_timeout": 5.0'), lines
    assert json.loads(lines[0])["max_sessions"] == 1
    assert lines[1:] == [
        "refused: max_payload",
        "second client refused: 1",
        "too big: the server closed the session",
        "shutdown: 2 messages in, buffer pool 1 hit, 1 miss",
    ], lines
