"""Big messages arrive zero-copy through the receive pool on every backend and protocol: the
payload is a read-only view of a buffer the pool lent, and ``Message.release()`` gives that
buffer back (the pool's counters say so)."""

from __future__ import annotations

import time

import anyio
import pytest

from msgtrans.core.buffers import BufferPool, PoolBuffer

from .adapters import BACKENDS, PROTOCOLS, WAIT, Backend, Certs, client_url, make_backend

pytestmark = [
    pytest.mark.network,
    pytest.mark.filterwarnings("error::ResourceWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

KiB = 1024


async def given_back(pool: BufferPool, buf: PoolBuffer) -> bool:
    """Whether *pool* takes *buf* back within WAIT: at once, unless the driver's view of its
    last read is still alive (the pool then takes it when that view goes, see release_later);
    ``pool.stats()`` is where it looks again."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if buf.lender is None and not any(w is buf for w in pool._pending):
            pool.stats()
            return True
        pool.stats()
        await anyio.sleep(0.01)
    return False


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_256_kib_message_arrives_in_a_pooled_buffer_and_release_gives_it_back(
    backend_name: str, proto: str, certs: Certs
) -> None:
    backend: Backend = make_backend(backend_name)
    payloads = [bytes([i]) * (256 * KiB) for i in range(1, 4)]

    async def body() -> None:
        async with backend.transport() as server, backend.transport() as client, \
                server.listen(proto, certs) as listener:
            cs = await client.connect(client_url(proto, listener.port, certs))
            ss = await listener.accept()
            for payload in payloads:
                await cs.send(payload)
                message = (await ss.receive()).raw
                view = message.payload
                assert isinstance(view, memoryview) and view.readonly
                assert view == payload  # intact
                assert message.pooled
                buf = view.obj
                assert type(buf) is PoolBuffer
                pool = buf.lender
                assert isinstance(pool, BufferPool)
                hits, lent = pool.stats().hits, pool.stats().lent
                del view
                message.release()
                assert not message.pooled
                with pytest.raises(ValueError, match="released"):
                    len(message.payload)  # a released view
                assert await given_back(pool, buf)
                after = pool.stats()
                assert after.lent == lent - 1
                assert after.hits == hits  # counted when lent, not when given back
            # The pool reuses what was given back: a steady stream hits.
            stats = pool.stats()
            assert stats.hits > 0
            await cs.close()

    backend.run(body)
