"""The user's rule for pooled payloads, on each backend's ``Message``: ``release()`` gives the
receive buffer back to the pool, waits for views still alive, refuses while the payload object
itself is exported, and means nothing for small or unpooled messages.

No sockets: messages are built from packets a pooled decoder produced.  The pool itself is
tested in tests/core/test_buffers.py.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

import msgtrans.io_asyncio as amt
import msgtrans.io_sync as smt
import msgtrans.io_trio as tmt
from msgtrans.core.buffers import receive_pool
from msgtrans.core.framing import PacketDecoder
from msgtrans.core.packet import Packet, PacketType

KiB = 1024
MESSAGES = pytest.mark.parametrize(
    "message_type", [amt.Message, tmt.Message, smt.Message], ids=["asyncio", "trio", "sync"])


def wire(*payloads: bytes) -> bytes:
    return b"".join(
        Packet(PacketType.ONE_WAY, i + 1, payload=p).encode() for i, p in enumerate(payloads)
    )


def recv_into(decoder: PacketDecoder, data: bytes, step: int = 64 * KiB) -> list[Packet]:
    """Feed *data* as a socket's recv_into would, at most *step* bytes per read."""
    out: list[Packet] = []
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        with decoder.get_buffer(-1) as buf:
            n = min(len(buf), len(view) - pos, step)
            buf[:n] = view[pos : pos + n]
        out += decoder.buffer_updated(n)
        pos += n
    return out


@MESSAGES
def test_message_release_gives_the_buffer_back(message_type: Any) -> None:
    pool = receive_pool()
    decoder = PacketDecoder(buffer_pool=pool)
    payload = b"p" * (100 * KiB)
    (packet,) = recv_into(decoder, wire(payload))
    message = message_type(packet, 7)
    assert message.pooled and message.payload == payload
    keep = bytes(message.payload)
    message.release()
    assert not message.pooled and "released" in repr(message)
    with pytest.raises(ValueError, match="released"):
        bytes(message.payload)
    message.release()  # idempotent
    assert keep == payload and pool.stats().lent == 1  # the receive area only
    with message_type(recv_into(decoder, wire(payload))[0], 7) as again:
        assert again.payload == payload
    assert not again.pooled
    assert pool.stats().hits >= 1


@MESSAGES
def test_message_release_with_a_view_alive_waits_for_it(message_type: Any) -> None:
    pool = receive_pool()
    decoder = PacketDecoder(buffer_pool=pool)
    payload = b"q" * (100 * KiB)
    message = message_type(recv_into(decoder, wire(payload))[0], 1)
    part = message.payload[:10]
    message.release()  # set aside: the slice still views the buffer
    assert not message.pooled and part == b"q" * 10
    # The next big message must not land in the buffer the slice views.
    other = message_type(recv_into(decoder, wire(b"r" * (100 * KiB)))[0], 1)
    assert part == b"q" * 10 and other.payload == b"r" * (100 * KiB)
    other.release()
    assert pool.stats().lent == 2  # the receive area and the buffer the slice pins
    part.release()
    stats = pool.stats()
    assert (stats.lent, stats.collected) == (1, 0)  # given back once unviewed


@MESSAGES
def test_release_refuses_when_the_payload_object_itself_is_exported(message_type: Any) -> None:
    decoder = PacketDecoder(buffer_pool=receive_pool())
    message = message_type(recv_into(decoder, wire(b"n" * (100 * KiB)))[0], 1)
    exported = pickle.PickleBuffer(message.payload)  # holds an export of the payload object
    with pytest.raises(BufferError):
        message.release()
    assert message.pooled and message.payload == b"n" * (100 * KiB)  # nothing changed
    exported.release()
    message.release()
    assert not message.pooled


@MESSAGES
def test_small_and_unpooled_messages_ignore_release(message_type: Any) -> None:
    (packet,) = PacketDecoder().feed(wire(b"x" * (100 * KiB)))
    message = message_type(packet, 1)
    assert not message.pooled
    message.release()
    message.release()
    small = message_type(Packet(PacketType.ONE_WAY, 1, payload=b"hi"), 1)
    small.release()
    assert small.payload == b"hi"
