"""The private parts of aioquic, wsproto and h11 that the core leans on, checked by name.

The QUIC machine reads about a dozen private aioquic fields and overrides four private methods
(each guarded, so a different aioquic degrades rather than crashes: see ``msgtrans/core/quic.py``).
A guard that quietly stops working is the danger: an override aioquic no longer calls would
drop the slow-reader bound without a failing test elsewhere.  This file names every one of them,
so a release that moves one fails here with the name in the message.  pyproject.toml pins
each library below its next minor release; ``.ci/newest-deps`` runs this file (and the QUIC and
WebSocket machine tests) against the newest releases on PyPI and says when they moved.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from msgtrans.certs import write_self_signed
from msgtrans.core.quic import FlowControlledQuicConnection, QuicMachine

aioquic_connection = importlib.import_module("aioquic.quic.connection")
aioquic_recovery = importlib.import_module("aioquic.quic.recovery")
QuicConnection = aioquic_connection.QuicConnection

#: Private methods of QuicConnection that FlowControlledQuicConnection overrides, each with the
#: call aioquic's own code must still make for the override to take effect.
OVERRIDDEN = {
    "_initialize": "self._initialize(",
    "_parse_transport_parameters": "self._parse_transport_parameters(",
    "_write_connection_limits": "self._write_connection_limits(",
    "_write_stream_limits": "self._write_stream_limits(",
}


@pytest.mark.parametrize("name", sorted(OVERRIDDEN))
def test_overridden_private_methods_are_still_called(name: str) -> None:
    assert callable(getattr(QuicConnection, name, None)), f"aioquic lost QuicConnection.{name}"
    assert name in vars(FlowControlledQuicConnection), f"our override of {name} is gone"
    source = inspect.getsource(QuicConnection)
    assert OVERRIDDEN[name] in source, f"aioquic no longer calls {name}: our override is dead"


def test_private_fields_the_quic_machine_reads(tmp_path: Path) -> None:
    cert, _key = write_self_signed(tmp_path)
    machine = QuicMachine.client(("127.0.0.1", 4433), server_name="localhost",
                                 ca_file=str(cert))
    machine.start(0.0)
    machine.datagrams_to_send(0.0)
    quic = machine._quic
    assert isinstance(quic, FlowControlledQuicConnection)
    for name in ("_loss", "_max_datagram_size", "_is_client", "_network_paths", "_streams",
                 "_state"):
        assert hasattr(quic, name), f"aioquic's QuicConnection lost {name}"
    assert isinstance(quic._max_datagram_size, int)
    loss = quic._loss
    for name in ("_pacer", "_cc"):
        assert hasattr(loss, name), f"aioquic's loss recovery lost {name}"
    # Our pacer replaced aioquic's: the swap in FlowControlledQuicConnection.__init__ worked.
    assert type(loss._pacer).__name__ == "BurstPacer"
    assert hasattr(loss._pacer, "_max_datagram_size")
    assert hasattr(loss._cc, "congestion_window")
    assert isinstance(getattr(quic.tls, "_supported_groups", None), list), \
        "aioquic's TLS context lost _supported_groups (client key shares)"
    assert isinstance(quic._state, aioquic_connection.QuicConnectionState)
    # The stream the client opens on start, and the sender buffer _stream_unacked measures.
    streams = quic._streams
    assert streams, "the client's stream is not in aioquic's _streams"
    stream = next(iter(streams.values()))
    assert hasattr(stream.sender, "_buffer"), "aioquic's stream sender lost _buffer"


def test_the_window_cap_relies_on_aioquics_doubling_rule(tmp_path: Path) -> None:
    """FlowControlledQuicConnection caps the credit by showing aioquic a "used" of at most
    half the window while it writes the limits: that works only while aioquic doubles on
    exactly that condition and these fields exist."""
    source = inspect.getsource(QuicConnection._write_connection_limits)
    assert "max_data.used * 2 > max_data.value" in source, "aioquic's MAX_DATA rule moved"
    source = inspect.getsource(QuicConnection._write_stream_limits)
    assert "stream.receiver.highest_offset * 2 > stream.max_stream_data_local" in source, \
        "aioquic's MAX_STREAM_DATA rule moved"
    cert, _key = write_self_signed(tmp_path)
    machine = QuicMachine.client(("127.0.0.1", 4433), server_name="localhost",
                                 ca_file=str(cert))
    machine.start(0.0)
    quic = machine._quic
    for name in ("used", "value", "sent"):
        assert isinstance(getattr(quic._local_max_data, name, None), int), name
    stream = next(iter(quic._streams.values()))
    assert isinstance(stream.max_stream_data_local, int)
    assert isinstance(stream.receiver.highest_offset, int)


def test_the_endpoint_decrypts_initials_with_aioquics_crypto() -> None:
    crypto = importlib.import_module("aioquic.quic.crypto").CryptoPair()
    crypto.setup_initial(cid=b"\x01" * 8, is_client=False, version=1)
    assert callable(crypto.decrypt_packet)


def test_public_names_imported_from_aioquic() -> None:
    assert hasattr(aioquic_recovery.QuicPacketPacer(max_datagram_size=1200), "packet_time")
    importlib.import_module("aioquic._buffer").Buffer(data=b"")
    for module, name in [
        ("aioquic.quic.connection", "TRANSPORT_CLOSE_FRAME_CAPACITY"),
        ("aioquic.quic.configuration", "SMALLEST_MAX_DATAGRAM_SIZE"),
        ("aioquic.quic.retry", "QuicRetryTokenHandler"),
        ("aioquic.quic.packet", "pull_quic_transport_parameters"),
        ("aioquic.tls", "load_pem_private_key"),
    ]:
        assert hasattr(importlib.import_module(module), name), f"{module} lost {name}"


def test_wsproto_and_h11_names() -> None:
    wsproto = importlib.import_module("wsproto")
    assert hasattr(wsproto, "WSConnection") and hasattr(wsproto, "ConnectionType")
    utilities = importlib.import_module("wsproto.utilities")
    assert hasattr(utilities, "RemoteProtocolError") and hasattr(utilities, "ProtocolError")
    # The refusal a server sends comes from the error's event_hint.
    assert "event_hint" in inspect.signature(utilities.RemoteProtocolError).parameters
    h11 = importlib.import_module("h11")
    for name in ("Request", "LocalProtocolError", "RemoteProtocolError", "Connection"):
        assert hasattr(h11, name), f"h11 lost {name}"
