"""The transport builder's settings take effect, on every backend (asyncio, trio, blocking).

Each test builds a transport with one or two builder methods and shows what they change on the
network (127.0.0.1, free ports, every wait bounded): a pool made without arguments has the
builder's sizes, a payload over ``max_payload`` ends the server's session, ``max_sessions(1)``
refuses a second client, a receive queue bound pauses the reader, the transport's buffer pool
lends the big payloads, and the shutdown report carries the final metrics to the
``on_shutdown`` callback.  Validation without a network is ``tests/backends/test_builder.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from msgtrans.core.packet import Compression, Limits

from .adapters import (
    WAIT,
    Backend,
    Certs,
    CloseReason,
    ConfigurationError,
    Listener,
    Transport,
    TransportError,
    client_url,
    open_pool,
    server_config,
)

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]


@contextlib.asynccontextmanager
async def built(backend: Backend, configure: Callable[[Any], Any] = lambda b: b
                ) -> AsyncIterator[Transport]:
    """A transport of *backend* from ``configure(Transport.builder())``, shut down at the end
    with nothing left behind."""
    builder = configure(backend.lib.Transport.builder())
    async with backend._open(builder) as raw:
        try:
            yield Transport(backend, raw)
        finally:
            await backend.call(raw.graceful_shutdown, 2.0)
        assert raw.session_count() == 0


@contextlib.asynccontextmanager
async def listening(backend: Backend, transport: Transport, config: Any
                    ) -> AsyncIterator[Listener]:
    """``transport.accept(config)`` (one config or URL, not a list), started."""
    stream = transport.raw.accept(config)
    await backend.call(stream.start)
    try:
        yield Listener(backend, stream)
    finally:
        await backend.close_stream(stream)


async def eventually(check: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    with anyio.fail_after(limit):
        while not check():
            await anyio.sleep(0.01)
    assert check(), what


# --- accept --------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["tcp", "ws"])
def test_accept_takes_one_url(backend: Backend, proto: str, certs: Certs) -> None:
    async def body() -> None:
        path = "/" if proto == "ws" else ""
        async with built(backend) as server, built(backend) as client, \
                listening(backend, server, f"{proto}://127.0.0.1:0{path}") as listener:
            session = await client.connect(client_url(proto, listener.port, certs))
            accepted = await listener.accept()
            await session.send(b"one URL")
            assert (await accepted.receive()).payload == b"one URL"

    backend.run(body)


def test_accept_takes_one_config(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        config = server_config(backend.lib, "quic", certs)
        async with built(backend) as server, built(backend) as client, \
                listening(backend, server, config) as listener:
            session = await client.connect(client_url("quic", listener.port, certs))
            accepted = await listener.accept()
            await session.send(b"one config")
            assert (await accepted.receive()).payload == b"one config"

    backend.run(body)


# --- pools ---------------------------------------------------------------------------------------


def test_pool_defaults_come_from_the_builder(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        lib = backend.lib
        async with built(backend) as server, \
                built(backend, lambda b: b.connection_pool(3, 3, 3)
                      .pool_expansion_strategy(lib.FixedExpansion(1))) as client, \
                listening(backend, server, "tcp://127.0.0.1:0") as listener:
            url = client_url("tcp", listener.port, certs)
            pool = await open_pool(backend, client, url)  # no sizes: the builder's
            await eventually(lambda: pool.status().size == 3, "the builder's min of 3 opened")
            machine = pool.raw._machine
            assert (machine.min_size, machine.max_size, machine.target) == (3, 3, 3)
            assert isinstance(machine.strategy, lib.FixedExpansion)
            # What the call gives wins; the builder's target is clamped into the call's range.
            other = await open_pool(backend, client, url, min=1, max=2)
            assert (other.raw._machine.min_size, other.raw._machine.max_size,
                    other.raw._machine.target) == (1, 2, 2)
            await other.close()
            await pool.close()

    backend.run(body)


# --- limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["tcp", "ws", "quic"])
def test_max_payload_bounds_what_the_server_receives(backend: Backend, proto: str,
                                                    certs: Certs) -> None:
    async def body() -> None:
        async with built(backend, lambda b: b.max_payload(1000)) as server, \
                built(backend) as client, \
                listening(backend, server, server_config(backend.lib, proto, certs)) as listener:
            session = await client.connect(client_url(proto, listener.port, certs))
            accepted = await listener.accept()
            await session.send(b"x" * 1000)  # at the limit: accepted
            assert len((await accepted.receive()).payload) == 1000
            await session.send(b"x" * 1001)
            with pytest.raises(TransportError) as caught:
                await accepted.receive()
            assert "1001" in str(caught.value), caught.value
            await accepted.wait_closed()
            assert accepted.close_reason is CloseReason.ERROR

    backend.run(body)


@pytest.mark.parametrize("proto", ["tcp", "ws", "quic"])
def test_compression_compresses_from_the_threshold(backend: Backend, proto: str,
                                                   certs: Certs) -> None:
    """A client built with ``compression(1024)`` sends big payloads compressed (the packets'
    header says zlib) and small ones as they are; the server needs no setting to read them."""
    text = b"compress me, I repeat myself. " * 3000  # 90 KB

    async def body() -> None:
        async with built(backend) as server, \
                built(backend, lambda b: b.compression(1024)) as client, \
                listening(backend, server, server_config(backend.lib, proto, certs)) as listener:
            session = await client.connect(client_url(proto, listener.port, certs))
            accepted = await listener.accept()
            await session.send(text)
            await session.send(b"small")
            big, small = await accepted.receive(), await accepted.receive()
            assert bytes(big.payload) == text and bytes(small.payload) == b"small"
            assert big.raw._packet.compression is Compression.ZLIB
            assert small.raw._packet.compression is Compression.NONE

    backend.run(body)


def test_max_sessions_refuses_a_second_client(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with built(backend, lambda b: b.max_sessions(1)) as server, \
                built(backend) as client, \
                listening(backend, server, "tcp://127.0.0.1:0") as listener:
            url = client_url("tcp", listener.port, certs)
            first = await client.connect(url)
            await listener.accept()
            # A refused TCP connection is closed by the server at once: the client may see
            # the connect succeed and learn it on first use.
            with contextlib.suppress(TransportError):
                second = await client.connect(url)
                await second.wait_closed()
            await eventually(
                lambda: server.raw.stats().errors.get("connection.refused_by_server") == 1,
                "the second connection was refused at max_sessions")
            await first.send(b"still served")

    backend.run(body)


def test_config_conflicting_with_the_builder_is_refused(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        lib = backend.lib
        async with built(backend, lambda b: b.max_payload(1000).max_sessions(2)) as transport:
            with pytest.raises(ConfigurationError) as caught:
                transport.raw.accept(lib.TcpServerConfig("127.0.0.1:0", max_sessions=5))
            assert caught.value.field == "max_sessions"
            config = lib.TcpConfig("127.0.0.1:9", limits=Limits(max_payload=2000))
            with pytest.raises(ConfigurationError) as caught:
                await transport.connect(config)
            assert caught.value.field == "max_payload"
            # A config at the default, or at the builder's own value, takes the builder's.
            same = lib.TcpServerConfig("127.0.0.1:0", limits=Limits(max_payload=1000))
            stream = transport.raw.accept([same, "tcp://127.0.0.1:0"])
            assert [(c.limits.max_payload, c.max_sessions) for c in stream._configs] == [
                (1000, 2), (1000, 2)]

    backend.run(body)


def test_handshake_timeout_drops_a_silent_connection(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with built(backend, lambda b: b.handshake_timeout(0.2)) as server, \
                listening(backend, server, server_config(backend.lib, "tls", certs)) as listener:
            # A TCP connection that never starts its TLS handshake.
            stream = await anyio.connect_tcp("127.0.0.1", listener.port)
            async with stream:
                with anyio.fail_after(WAIT):
                    start = anyio.current_time()
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                        while await stream.receive():
                            pass
                    waited = anyio.current_time() - start
            assert waited < 5.0, waited  # the default is 10 s

    backend.run(body)


# --- session settings ----------------------------------------------------------------------------


def test_receive_queue_bound_pauses_the_reader(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with built(backend, lambda b: b.receive_queue(max_messages=2)) as server, \
                built(backend) as client, \
                listening(backend, server, "tcp://127.0.0.1:0") as listener:
            session = await client.connect(client_url("tcp", listener.port, certs))
            accepted = await listener.accept()
            for i in range(8):
                await session.send(b"%d" % i)
            machine = accepted.connection.session
            await eventually(lambda: machine.read_paused, "reading paused at 2 queued")
            got = [(await accepted.receive()).payload for _ in range(8)]
            assert got == [b"%d" % i for i in range(8)]
            assert not machine.read_paused

    backend.run(body)


def test_send_queue_and_heartbeat_reach_every_session(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        def configure(b: Any) -> Any:
            return b.send_queue(high_water_bytes=4096, low_water_bytes=1024,
                                high_water_messages=8, low_water_messages=2
                                ).heartbeat_interval(0.05)

        async with built(backend) as server, built(backend, configure) as client, \
                listening(backend, server, "tcp://127.0.0.1:0") as listener:
            session = await client.connect(client_url("tcp", listener.port, certs))
            await listener.accept()
            machine = session.connection.session
            assert (machine._send_high_bytes, machine._send_low_bytes) == (4096, 1024)
            # The machine's heartbeat clock runs at the builder's interval (what a heartbeat
            # puts on the wire is each protocol's: pings on WebSocket and QUIC).
            await eventually(lambda: machine.stats.heartbeats >= 2, "heartbeats came due")

    backend.run(body)


def test_idle_timeout_closes_a_silent_session(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        async with built(backend, lambda b: b.idle_timeout(0.2)) as server, \
                built(backend) as client, \
                listening(backend, server, "tcp://127.0.0.1:0") as listener:
            await client.connect(client_url("tcp", listener.port, certs))
            accepted = await listener.accept()
            await accepted.wait_closed()
            assert accepted.close_reason is CloseReason.IDLE_TIMEOUT

    backend.run(body)


# --- buffers and memory --------------------------------------------------------------------------


def test_buffer_pool_lends_big_payloads_and_is_released(backend: Backend, certs: Certs) -> None:
    async def body() -> None:
        def configure(b: Any) -> Any:
            # 2 KiB payloads pass the zero-copy threshold of 1 KiB: each lands in a 8 KiB
            # buffer of the transport's pool (payload, header and ext header).
            return b.buffer_pool([8192], [2]).zero_copy_threshold(1024).memory_limit(1)

        async with built(backend, configure) as server:
            pool = server.raw._settings["buffer_pool"]
            assert pool.bytes_allocated == 0  # nothing made in advance
            assert server.raw._memory_limit == 1024 * 1024
            async with built(backend) as client, \
                    listening(backend, server, "tcp://127.0.0.1:0") as listener:
                session = await client.connect(client_url("tcp", listener.port, certs))
                accepted = await listener.accept()
                for _ in range(3):
                    await session.send(b"y" * 2048)
                    message = await accepted.receive()
                    assert message.payload == b"y" * 2048
                    message.raw.release()
                # The 8 KiB class served all three: made once, then reused (the stream's
                # 64 KiB read buffer is an oversize lend of its own).
                (lent,) = pool.stats().classes
                assert (lent.hits, lent.misses) == (2, 1), pool.stats()
                assert server.raw.stats().buffer_pool.classes[0].hits == 2
                assert pool.bytes_allocated >= 8192
            report = await server.graceful_shutdown(2.0)
            assert pool.bytes_allocated == 0  # its free buffers dropped at shutdown
            assert report.metrics.buffer_pool.classes[0].hits == 2

    backend.run(body)


# --- shutdown ------------------------------------------------------------------------------------


def test_shutdown_report_carries_metrics_to_the_callback(backend: Backend, certs: Certs,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    reports: list[Any] = []

    def broken(report: Any) -> None:
        reports.append(report)
        raise RuntimeError("callback failed")

    async def body() -> None:
        async with built(backend, lambda b: b.on_shutdown(broken)) as server, \
                built(backend) as client, \
                listening(backend, server, "tcp://127.0.0.1:0") as listener:
            session = await client.connect(client_url("tcp", listener.port, certs))
            accepted = await listener.accept()
            await session.send(b"counted")
            await accepted.receive()
        # Shut down by built(): the callback ran once, its error logged, not raised.
        (report,) = reports
        assert report.metrics.messages_in == 1 and report.metrics.bytes_in == len(b"counted")
        assert await server.graceful_shutdown(1.0) is report  # the first call's report
        assert len(reports) == 1

    with caplog.at_level(logging.ERROR, logger=backend.logger):
        backend.run(body)
    assert any("on_shutdown" in r.getMessage() for r in caplog.records), caplog.records
