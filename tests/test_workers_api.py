"""serve(workers=) argument checks on every backend (nothing is forked), the supervisor's
pieces that need no process, and the blocking backend's threads= (its handler pool's name)."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import trio  # type: ignore[import-untyped, unused-ignore]

import msgtrans.io_asyncio as amt
import msgtrans.io_sync as smt
import msgtrans.io_trio as tmt
from msgtrans._driver.workers import RestartPolicy, worker_configs, worker_count
from msgtrans.core.config import TcpServerConfig, parse_server_url
from msgtrans.core.errors import ConfigurationError


def test_worker_count() -> None:
    assert worker_count(None) == 1
    assert worker_count(None, 4) == 4
    assert worker_count(3, 4) == 3
    for bad in (0, 1025, True, 2.0, "2"):
        with pytest.raises(ConfigurationError) as info:
            worker_count(bad)
        assert info.value.field == "workers"


def test_worker_configs_force_reuse_port_and_refuse_port_0() -> None:
    (config,) = worker_configs([TcpServerConfig("127.0.0.1:9000")])
    assert config.reuse_port and config.addr == ("127.0.0.1", 9000)
    with pytest.raises(ConfigurationError) as info:
        worker_configs([parse_server_url("ws://127.0.0.1:0/")])
    assert info.value.field == "addr" and "port 0" in str(info.value)
    assert RestartPolicy() == RestartPolicy(max_restarts=5, window=60.0)


def test_asyncio_serve_refuses_port_0_and_a_stream_with_workers() -> None:
    async def go() -> None:
        async with amt.Transport() as transport:
            with pytest.raises(ConfigurationError, match="port 0"):
                await transport.serve(["tcp://127.0.0.1:0"], object(), workers=2)
            stream = transport.accept(["tcp://127.0.0.1:0"])
            with pytest.raises(ConfigurationError, match="SessionStream"):
                await transport.serve(stream, object(), workers=2)
            with pytest.raises(ConfigurationError):
                await transport.serve(["tcp://127.0.0.1:9"], object(), workers=0)

    asyncio.run(go())


def test_trio_serve_refuses_port_0_with_workers() -> None:
    async def go() -> None:
        async with tmt.Transport() as transport:
            with pytest.raises(ConfigurationError, match="port 0"):
                await transport.serve(["tcp://127.0.0.1:0"], object(), workers=2)

    trio.run(go)


def test_the_builders_worker_threads_is_serves_default() -> None:
    transport = smt.Transport.builder().worker_threads(2).build()
    with transport, pytest.raises(ConfigurationError, match="port 0"):
        transport.serve(["tcp://127.0.0.1:0"], object())  # two workers: the builder's


def test_the_blocking_serve_names_its_thread_pool_threads() -> None:
    parameters = inspect.signature(smt.Transport.serve).parameters
    assert parameters["threads"].default == 8 and parameters["workers"].default is None
    assert smt.Transport.serve.__doc__ is not None and "*threads*" in smt.Transport.serve.__doc__


def test_stop_signals_take_over_the_default_and_coverage_handlers_but_not_an_apps() -> None:
    import signal
    import types

    from msgtrans._driver.workers import install_stop_signals

    stopped: list[bool] = []
    # coverage.py's sigterm handler only saves its data and kills the process: serve(workers=)
    # must still shut down gracefully under it (CI measures coverage).
    coverage_like = types.FunctionType((lambda s, f: None).__code__, {}, "_on_sigterm")
    coverage_like.__module__ = "coverage.control"

    def apps(_sig: int, _frame: object) -> None:
        pass

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        for handler, taken in ((signal.SIG_DFL, True), (coverage_like, True), (apps, False)):
            signal.signal(signal.SIGTERM, handler)
            restore = install_stop_signals(lambda: stopped.append(True))
            try:
                assert (signal.getsignal(signal.SIGTERM) is not handler) is taken
            finally:
                restore()
            assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
