"""The blocking driver's batched hand-off: :meth:`Session.take_messages` (every queued message in
one lock round trip) and ``Transport.serve`` draining a session batch by batch.

What every backend shares is in ``tests/backends/conformance``; this is what is particular to
``msgtrans.io_sync``.  Only 127.0.0.1, port 0, every wait bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import msgtrans.io_sync as mt
from msgtrans.io_sync._loop import wait_until

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

WAIT = 5.0  # seconds any single wait may take


@pytest.fixture
def transports() -> Iterator[tuple[mt.Transport, mt.Transport]]:
    # A small receive bound: the server pauses reading after a handful of messages, so taking
    # a batch must be what resumes it.
    server = mt.Transport.builder().session_settings(receive_max_messages=4).build()
    client = mt.Transport()
    try:
        yield server, client
    finally:
        client.graceful_shutdown(2.0)
        server.graceful_shutdown(2.0)


@pytest.mark.parametrize("count", [1, 3, 60])
def test_take_messages_returns_every_queued_message_in_order(
        transports: tuple[mt.Transport, mt.Transport], count: int) -> None:
    server, client = transports
    with server.accept(["tcp://127.0.0.1:0"]) as stream:
        port = stream.addresses[0][1]
        cs = client.connect(f"tcp://127.0.0.1:{port}", timeout=WAIT)
        ss = stream.accept(timeout=WAIT)
        lock, cond = ss._lock, ss._cond
        with lock:
            assert ss.take_messages() == []  # nothing queued: an empty batch, no wait
        sent = [b"%d" % i for i in range(count)]
        for payload in sent:
            cs.send(payload)
        got: list[bytes] = []
        batches = 0
        deadline = time.monotonic() + WAIT
        while len(got) < count:
            with lock:
                # Reading pauses above 4 queued messages: only a batch taken resumes it, so
                # this wait times out if take_messages forgot to account the batch.
                assert wait_until(cond, lambda: bool(ss._inbox), deadline), got
                batch = ss.take_messages()
                assert batch and not ss._inbox  # all of it, in one call
            batches += 1
            got.extend(bytes(m.payload) for m in batch)
        assert got == sent
        assert batches <= count
        with lock:
            assert ss.take_messages() == []
        # What was taken counts as consumed: the receive bound is back to nothing queued.
        assert ss.connection.session._receive_messages == 0
        assert server.stats().messages_in == count


def test_serve_keeps_order_across_messages_and_requests() -> None:
    seen: list[tuple[str, bytes]] = []
    done = threading.Event()
    total = 200

    class Handler:
        def on_message(self, session: mt.Session, message: mt.Message) -> None:
            seen.append(("m", bytes(message.payload)))

        def on_request(self, session: mt.Session, message: mt.Message) -> bytes:
            seen.append(("r", bytes(message.payload)))
            if len(seen) == total:
                done.set()
            return b"re:" + bytes(message.payload)

    server = mt.Transport.builder().session_settings(receive_max_messages=8).build()
    client = mt.Transport()
    stream = server.accept(["tcp://127.0.0.1:0"])
    stream.start()
    serving = threading.Thread(target=server.serve, args=(stream, Handler()), name="test-serve")
    serving.start()
    try:
        cs = client.connect(f"tcp://127.0.0.1:{stream.addresses[0][1]}", timeout=WAIT)
        expected: list[tuple[str, bytes]] = []
        for i in range(total - 1):
            cs.send(b"%d" % i)
            expected.append(("m", b"%d" % i))
        # The request comes last: its answer says every message before it was handled.
        assert bytes(cs.request(b"last", timeout=WAIT).payload) == b"re:last"
        expected.append(("r", b"last"))
        assert done.wait(WAIT)
        assert seen == expected
    finally:
        client.graceful_shutdown(2.0)
        server.graceful_shutdown(2.0)
        serving.join(WAIT)
    assert not serving.is_alive()
