"""A QUIC receiver that pauses reading stops granting credit, so a fast sender is held back."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic.quic.recovery import QuicPacketPacer
from hypothesis import given
from hypothesis import strategies as st

from msgtrans.certs import write_self_signed
from msgtrans.core.config import QuicServerConfig
from msgtrans.core.connection import client_connection, quic_endpoint
from msgtrans.core.events import WritePaused
from msgtrans.core.pair import SERVER_ADDR, ConnectionPair
from msgtrans.core.quic import (
    TIMER_GRANULARITY,
    BurstPacer,
    FlowControlledQuicConnection,
    QuicMachine,
)
from msgtrans.core.session import MessageReceived


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    cert, key = write_self_signed(Path(tmp_path_factory.mktemp("certs")))
    return str(cert), str(key)


def test_paused_reader_bounds_what_arrives(certs: tuple[str, str]) -> None:
    cert, key = certs
    pair = ConnectionPair(
        client_connection(f"quic://localhost:{SERVER_ADDR[1]}?ca={cert}", resolved=SERVER_ADDR),
        None,
        quic_endpoint(QuicServerConfig(addr="127.0.0.1:0", cert_file=cert, key_file=key)),
    )
    pair.start()
    assert pair.server is not None
    server_machine = pair.server.machine
    assert isinstance(server_machine, QuicMachine)
    assert isinstance(server_machine.quic, FlowControlledQuicConnection)
    server_machine.pause_reading()

    chunk = bytes(64 * 1024)
    sent = 0
    paused = False
    for _ in range(128):  # 8 MiB, far more than the window the server granted
        pair.client.send(chunk, now=pair.now)
        sent += len(chunk)
        pair.pump(20)
        paused = paused or any(isinstance(e, WritePaused) for e in pair.take("client"))
    pair.advance(2.0)
    stream = server_machine.quic._streams[0]
    arrived = stream.receiver.highest_offset
    assert arrived <= stream.max_stream_data_local
    assert arrived < sent / 4, (arrived, sent)
    assert paused  # the sender saw its backlog grow past the high watermark

    server_machine.resume_reading()
    pair.pump(50_000, until=lambda: stream.receiver.highest_offset >= sent + 16 * 128)
    messages = [e for e in pair.take("server") if isinstance(e, MessageReceived)]
    assert sum(len(m.packet.payload) for m in messages) == sent


def test_plain_aioquic_connection_ignores_pause() -> None:
    machine = QuicMachine.client(("127.0.0.1", 4433), cert_verification=False)
    machine._quic.__class__ = FlowControlledQuicConnection.__mro__[1]  # a plain QuicConnection
    machine.pause_reading()
    machine.resume_reading()
    assert not getattr(machine.quic, "read_paused", False)


# --- pacing ----------------------------------------------------------------------------------


def test_connections_pace_with_the_burst_pacer() -> None:
    machine = QuicMachine.client(("127.0.0.1", 4433), cert_verification=False)
    assert isinstance(machine.quic._loss._pacer, BurstPacer)


@given(
    cwnd=st.integers(min_value=2 * 1200, max_value=64 * 1024 * 1024),
    srtt=st.floats(min_value=1e-6, max_value=2.0),
)
def test_burst_pacer_bursts_cover_the_timer_granularity(cwnd: int, srtt: float) -> None:
    ours = BurstPacer(max_datagram_size=1200)
    theirs = QuicPacketPacer(max_datagram_size=1200)
    ours.update_rate(congestion_window=cwnd, smoothed_rtt=srtt)
    theirs.update_rate(congestion_window=cwnd, smoothed_rtt=srtt)
    rate = cwnd / max(srtt, 1e-6)
    assert ours.packet_time == theirs.packet_time
    # Never a smaller burst than aioquic allows...
    assert ours.bucket_max >= theirs.bucket_max
    # ...never more than a congestion window (or aioquic's own minimum burst) at once...
    assert ours.bucket_max * rate <= max(cwnd, 2 * 1200) * (1 + 1e-9)
    # ...and, unless the window or the cap is smaller, two timer granularities' worth, so a
    # timer that fires a millisecond late still finds a full millisecond of credit.
    if rate * 2 * TIMER_GRANULARITY <= min(cwnd, 256 * 1200):
        assert ours.bucket_max >= 2 * TIMER_GRANULARITY * (1 - 1e-9)
