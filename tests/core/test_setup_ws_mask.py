"""WebSocket client mask keys across their batches.

A client fetches a small first batch of mask keys together with its handshake key, then large
batches.  Whatever the number and size of frames, every frame is masked with a fresh 4-byte key
(never reused within a connection) and the server unmasks it to what was sent.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrans.core import websocket as ws
from msgtrans.core.events import PacketReceived
from msgtrans.core.memory import StreamPipe
from msgtrans.core.packet import Packet
from msgtrans.core.websocket import WebSocketClientMachine, WebSocketServerMachine

NO_KEEPALIVE = {"ping_interval": None, "ping_timeout": None}


def _frame_keys(data: bytes) -> list[bytes]:
    """The mask keys of the client frames in *data* (payloads under 64 KiB)."""
    keys = []
    pos = 0
    while pos < len(data):
        length = data[pos + 1] & 0x7F
        assert data[pos + 1] & 0x80, "a client frame must be masked"
        head = 2
        if length == 126:
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            head = 4
        keys.append(data[pos + head : pos + head + 4])
        pos += head + 4 + length
    assert pos == len(data)
    return keys


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=80))
def test_every_frame_gets_a_fresh_key_and_arrives_intact(sizes: list[int]) -> None:
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)  # type: ignore[arg-type]
    server = WebSocketServerMachine(**NO_KEEPALIVE)  # type: ignore[arg-type]
    pipe = StreamPipe(client, server, None)
    pipe.start(0.0)
    client.events()
    server.events()
    wire = bytearray()
    payloads = [os.urandom(size) for size in sizes]
    for payload in payloads:
        client.send_packet(Packet(payload=payload))
        chunk = b"".join(bytes(b) for b in client.data_to_send())
        wire += chunk
        server.receive_data(chunk, 0.0)
    keys = _frame_keys(bytes(wire))
    assert len(keys) == len(sizes)
    # 2**-32 per pair: a repeat means a key was handed out twice, not bad luck.
    assert len(set(keys)) == len(keys)
    got = [bytes(e.packet.payload) for e in server.events() if isinstance(e, PacketReceived)]
    assert got == payloads


def test_first_batch_comes_with_the_handshake_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counting)  # the module calls os.urandom
    client = WebSocketClientMachine("example.com", **NO_KEEPALIVE)  # type: ignore[arg-type]
    server = WebSocketServerMachine(**NO_KEEPALIVE)  # type: ignore[arg-type]
    StreamPipe(client, server, None).start(0.0)
    assert calls == [16 + ws._FIRST_MASK_KEY_BATCH]  # the handshake: one call for both
    batch = ws._FIRST_MASK_KEY_BATCH // 4
    for _ in range(batch):  # the first batch's keys: no more calls
        client.send_packet(Packet(payload=b"x"))
    client.close(1000, "")
    assert len(calls) == 2 and calls[1] == ws._MASK_KEY_BATCH  # the close frame: a new batch
