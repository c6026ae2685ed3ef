"""A failed TLS handshake says ``operation="handshake"``, as QUIC's does.

Both sides of a refused handshake (the client that rejects the certificate, the server that
hears the client's alert) and a peer that hangs up mid-handshake report the handshake as the
operation, so an application that branches on ``error.operation`` treats ``tls://``, ``wss://``
and ``quic://`` alike; the driver only fills in an operation an error lacks.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from msgtrans.certs import generate_self_signed, write_self_signed
from msgtrans.core.errormap import map_error
from msgtrans.core.errors import TransportConnectionError, TransportError
from msgtrans.core.events import ErrorOccurred, Event
from msgtrans.core.memory import StreamPipe
from msgtrans.core.tcp import TcpMachine
from msgtrans.core.tls import TlsMachine, client_context, server_context

ALPN = "msgtrans.v1"


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("tls-op"))


def _pair(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext,
          hostname: str = "localhost") -> tuple[TlsMachine, TlsMachine, StreamPipe]:
    client = TlsMachine(TcpMachine(is_client=True), client_ctx, server_hostname=hostname)
    server = TlsMachine(TcpMachine(is_client=False), server_ctx)
    return client, server, StreamPipe(client, server, None)


def _error(events: list[Event]) -> TransportError:
    errors = [e.error for e in events if isinstance(e, ErrorOccurred)]
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize("case", ["untrusted", "wrong_name"])
def test_refused_certificate_is_a_handshake_failure_on_both_sides(
    cert_files: tuple[Path, Path], case: str
) -> None:
    cert, key = cert_files
    server_ctx = server_context(cert, key, alpn=[ALPN])
    if case == "untrusted":
        other_pem, _ = generate_self_signed()
        client_ctx = client_context(ca_data=other_pem, alpn=[ALPN])
        hostname = "localhost"
    else:
        client_ctx = client_context(ca_data=cert.read_bytes(), alpn=[ALPN])
        hostname = "wrong.example"
    client, server, pipe = _pair(client_ctx, server_ctx, hostname)
    pipe.start()
    for machine in (client, server):
        error = _error(machine.events())
        assert isinstance(error, TransportConnectionError)
        assert error.error_code == "connection.tls_verification"
        assert error.operation == "handshake"
        # The driver's enrichment fills in only what is missing: the operation stays.
        assert map_error(error, operation="receive", session_id=7).operation == "handshake"


def test_hang_up_during_the_handshake_is_a_handshake_failure(
    cert_files: tuple[Path, Path]
) -> None:
    cert, _ = cert_files
    client = TlsMachine(TcpMachine(is_client=True),
                        client_context(ca_data=cert.read_bytes(), alpn=[ALPN]),
                        server_hostname="localhost")
    client.start(0.0)
    client.receive_data(b"", 0.0)  # EOF before any server flight
    error = _error(client.events())
    assert error.error_code == "connection.tls_handshake"
    assert error.operation == "handshake"
