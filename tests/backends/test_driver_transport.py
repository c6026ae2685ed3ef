"""The transport's backend-neutral half (``msgtrans._driver.transport``) on its own: the session
table, the connect limit, the broadcast results, the shutdown's figures and the export lists,
with stand-in sessions (no socket, no loop)."""

from __future__ import annotations

from typing import Any

import pytest

import msgtrans.io_asyncio
import msgtrans.io_sync
import msgtrans.io_trio
from msgtrans._driver import exports
from msgtrans._driver.transport import (
    SessionStreamBase,
    TransportBase,
    _datagram_server,
    _send_result,
)
from msgtrans.core.config import QuicServerConfig, TcpServerConfig, to_config
from msgtrans.core.errors import TransportConnectionError, TransportError
from msgtrans.core.session import SessionState

BACKENDS = [msgtrans.io_asyncio, msgtrans.io_trio, msgtrans.io_sync]


class _Closed:
    def __init__(self, clean: bool) -> None:
        self.clean = clean


class _Connection:
    going_away_code = 1234  # whatever the core says; the base passes it on


class _Session:
    def __init__(self, connection: Any, session_id: int) -> None:
        self.connection = _Connection()
        self.id = session_id
        self.packets_flushed = 0
        self.forced = False
        self.closed_event: _Closed | None = None
        self.state = SessionState.OPEN
        self.is_closed = False
        self.closes: list[tuple[int | None, str]] = []
        self.aborted: list[str] = []

    def start_close(self, code: int | None = None, reason: str = "") -> None:
        self.closes.append((code, reason))

    def abort(self, reason: str = "aborted") -> None:
        self.aborted.append(reason)
        self.forced = True
        self.is_closed = True


class _Transport(TransportBase[Any, Any, Any]):
    def _make_session(self, connection: Any, session_id: int) -> Any:
        return _Session(connection, session_id)


def test_sessions_get_ids_in_order_and_leave_the_table_with_their_flushed_count() -> None:
    transport = _Transport()
    made: list[int] = []
    first = transport._new_session(made.append)
    second = transport._new_session(made.append)
    assert made == [1, 2]
    assert (first.id, second.id) == (1, 2)
    second.state = SessionState.CLOSING
    assert transport.sessions() == [first]
    assert transport.session_count() == 1
    first.packets_flushed = 7
    transport._forget(first)
    transport._forget(first)  # a second report of the same end counts nothing
    assert transport._flushed_total == 7
    assert list(transport._sessions) == [2]


def test_a_shut_transport_refuses_with_connection_closed() -> None:
    transport = _Transport()
    transport._check_open("connect")
    transport._closing = True
    with pytest.raises(TransportConnectionError) as info:
        transport._check_open("pool")
    assert info.value.error_code == "connection.closed"


def test_the_connect_limit_is_the_call_s_then_the_builder_s_then_the_config_s() -> None:
    config = to_config("tcp://127.0.0.1:9")
    assert _Transport()._connect_limit(config, 3.0) == 3.0
    assert _Transport(connect_timeout=2.0)._connect_limit(config, None) == 2.0
    assert _Transport()._connect_limit(config, None) == config.connect_timeout


def test_broadcast_results() -> None:
    session = _Session(None, 5)
    error = TransportConnectionError("gone", code="connection.closed", retryable=False)
    assert _send_result(None, session) is None
    assert _send_result(error, session) is error
    mapped = _send_result(OSError("boom"), session)
    assert isinstance(mapped, TransportError)
    with pytest.raises(KeyboardInterrupt):
        _send_result(KeyboardInterrupt(), session)


def test_the_listener_kind_is_the_core_s() -> None:
    quic = QuicServerConfig("127.0.0.1:0", "cert.pem", "key.pem")
    assert _datagram_server(quic) is quic
    assert _datagram_server(TcpServerConfig("127.0.0.1:0")) is None


def test_a_stream_no_longer_accepting_closes_what_arrives() -> None:
    stream: SessionStreamBase[Any] = SessionStreamBase(["tcp://127.0.0.1:0"])
    session = _Session(None, 1)
    assert not stream._turned_away(session)
    stream._closed = True
    assert stream._turned_away(session)
    assert session.closes == [(1234, "not accepting")]


def test_the_shutdown_figures() -> None:
    transport = _Transport()
    clean, dropped, unfinished = (transport._new_session(lambda sid: None) for _ in range(3))
    clean.packets_flushed = 2
    sessions, before = transport._shutdown_sessions()
    assert (len(sessions), before) == (3, 2)
    transport._close_sessions(sessions)
    assert all(s.closes == [(1234, "shutdown")] for s in sessions)
    clean.closed_event = _Closed(clean=True)
    clean.is_closed = True
    clean.packets_flushed = 5
    transport._forget(clean)
    dropped.closed_event = _Closed(clean=False)
    dropped.is_closed = True
    transport._abort_sessions(sessions)
    assert unfinished.aborted == ["aborted by shutdown"]
    assert not clean.aborted and not dropped.aborted
    assert transport._shutdown_figures(sessions, before) == (1, 2, 3)


@pytest.mark.parametrize("lib", BACKENDS, ids=lambda m: m.__name__)
def test_each_backend_exports_the_core_s_names_and_its_own_classes(lib: Any) -> None:
    assert lib.__all__ == sorted(lib.__all__)
    assert set(exports.__all__) <= set(lib.__all__)
    for name in exports.__all__:
        assert getattr(lib, name) is getattr(exports, name)
    for name in set(lib.__all__) - set(exports.__all__):  # a backend's own classes
        # (the shutdown report, and asyncio's and trio's awaitable Message, are one class
        # each, in the driver half)
        shared = {"Message": "msgtrans._driver.message",
                  "ShutdownReport": "msgtrans._driver.builder"}
        module = getattr(lib, name).__module__
        assert module.startswith("msgtrans.io_") or module == shared.get(name), name
    assert "_exports" not in dir(lib)
