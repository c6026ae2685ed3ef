"""The drivers' shared session half (:mod:`msgtrans._driver.session`) on its own, without a
socket or an event loop: a minimal backend over two real core connections, the bytes moved by
hand.  The backends' own behaviour is the conformance suite's."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from msgtrans._driver.message import Message, MessageBase
from msgtrans._driver.session import SessionBase
from msgtrans.core.connection import Connection
from msgtrans.core.errors import TransportError
from msgtrans.core.machine import Address
from msgtrans.core.metrics import TransportMetrics
from msgtrans.core.packet import HEADER_SIZE, Buffer, Packet
from msgtrans.core.tcp import TcpMachine

_Waiter = list[tuple[Any, Any]]


class _IO:
    peer_address: Address | None = ("127.0.0.1", 1)


class _Session(SessionBase[Message, _Waiter, _IO]):
    """A backend whose hooks only record that they were called."""

    _message_type = Message

    def __init__(self, conn: Connection, metrics: TransportMetrics | None = None) -> None:
        super().__init__(conn, 7, None, metrics, lambda: 1.0)
        self.woken = 0
        self._wake_inbox = self._woke
        self.writable_changes = 0
        self.reading: list[bool] = []
        self.handshakes: list[TransportError | None] = []
        self.released = 0

    def _woke(self) -> None:
        self.woken += 1

    def _settle(self, waiter: _Waiter, message: Message | None,
                error: TransportError | None) -> None:
        waiter.append((message, error))

    def _update_writable(self) -> None:
        self.writable_changes += 1

    def _set_reading(self, reading: bool) -> None:
        self.reading.append(reading)

    def _handshake_settled(self) -> None:
        self.handshakes.append(self._established_error)

    def _on_released(self) -> None:
        self.released += 1

    def _after_input(self) -> None:
        self._process()

    def _after_process(self, handled: bool = True) -> None:
        if self._metrics is not None:
            self._update_metrics(self._metrics)

    def _drop(self) -> None:
        self.socket_gone()

    async def _respond(self, request: Packet, data: Buffer, biz_type: int | None,
                       ext_header: Buffer) -> None:
        self._queue_response(request, data, biz_type, ext_header)


def _pair(metrics: TransportMetrics | None = None) -> tuple[_Session, _Session]:
    client = _Session(Connection(TcpMachine(is_client=True), session_id=7), metrics)
    server = _Session(Connection(TcpMachine(is_client=False)))
    for session in (client, server):
        session._io = _IO()
        session._conn.start(0.0)
        session._process()
    return client, server


def _move(src: _Session, dst: _Session) -> None:
    data = b"".join(bytes(buf) for buf in src.take_output())
    if data:
        dst._conn.receive_data(data, 1.0)
        dst._after_input()


def test_trio_loads_no_asyncio_driver() -> None:
    code = "import sys, msgtrans.io_trio; assert 'msgtrans.io_asyncio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_awaitable_message_is_shared() -> None:
    import msgtrans.io_asyncio
    import msgtrans.io_sync
    import msgtrans.io_trio

    assert msgtrans.io_asyncio.Message is msgtrans.io_trio.Message is Message
    blocking: type[Any] = msgtrans.io_sync.Message  # its respond() blocks: a class of its own
    assert blocking is not Message
    assert issubclass(blocking, MessageBase)


def test_properties_and_handshake() -> None:
    client, _server = _pair()
    assert client.handshakes == [None]
    assert client.established is not None
    assert client.peer_address == ("127.0.0.1", 1)
    assert client.connection is client._conn
    assert not client.is_closed
    assert repr(client) == "<Session 7 tcp open>"


@pytest.mark.parametrize("plain", [True, False], ids=["plain-tcp", "general"])
def test_send_request_respond(plain: bool) -> None:
    client, server = _pair()
    if not plain:
        # The packet path on the same machine (what TLS and WebSocket take): same wire,
        # same counts.
        for conn in (client._conn, server._conn):
            conn.queue_send = conn._queue_send_packet
            conn.queue_request = conn._queue_request_packet
            conn.queue_response = conn._queue_response_packet
    client._queue_send(b"hello", 3, b"xy")
    assert client.unflushed_packets == 1
    assert client._conn.unflushed_bytes == HEADER_SIZE + 5 + 2
    _move(client, server)
    assert client.packets_flushed == 1 and client.unflushed_packets == 0
    message = server._inbox.popleft()
    assert (bytes(message.payload), message.biz_type, bytes(message.ext_header)) == (
        b"hello", 3, b"xy")
    assert server.woken == 1

    waiter: _Waiter = []
    request_id = client._queue_request(b"ping", 9, b"", timeout=None, now=1.0, waiter=waiter)
    assert client.pending_work == 1
    _move(client, server)
    request = server._inbox.popleft()
    assert request.is_request and request.message_id == request_id
    assert server.pending_work == 1
    server._unanswered.discard(request.message_id)
    server._queue_response(request.packet, b"pong", None, b"")
    _move(server, client)
    [(response, error)] = waiter
    assert error is None and bytes(response.payload) == b"pong" and response.biz_type == 9
    assert client.pending_work == 0


def test_batch_counts_the_wire_of_each_packet() -> None:
    client, server = _pair()
    assert client._queue_batch([b"a", b"bc", b""], 1) == 3
    assert client._conn.unflushed_bytes == 3 * HEADER_SIZE + 3
    _move(client, server)
    assert [bytes(m.payload) for m in server._inbox] == [b"a", b"bc", b""]


def test_abort_fails_waiters_and_finishes_once() -> None:
    metrics = TransportMetrics()
    client, _server = _pair(metrics)
    finished: list[object] = []
    client.when_finished(finished.append)
    waiter: _Waiter = []
    client._queue_request(b"ping", 0, b"", timeout=None, now=1.0, waiter=waiter)
    client.abort()
    client.abort()
    client.socket_gone()
    [(message, error)] = waiter
    assert message is None and error.error_code == "connection.aborted"
    assert client.forced and client.is_closed and client.released == 1
    assert finished == [client]
    late: list[object] = []
    client.when_finished(late.append)  # after the end: called at once
    assert late == [client]
    with pytest.raises(TransportError) as info:
        client._queue_send(b"x", 0, b"")
    assert info.value.session_id == 7
