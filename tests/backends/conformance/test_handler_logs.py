"""A handler that outlives its session does not make the server log a line per message
(docs/design.md, "Graceful shutdown"; issue 17): the errors of a closed session's sends are
logged once per session at INFO, without a traceback, counted, and still handed to
``on_error``.  Real sockets on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest

from .adapters import WAIT, Backend, Certs, client_url, server_config
from .test_graceful_shutdown import send_all, server_transport

pytestmark = [pytest.mark.network, pytest.mark.filterwarnings("error::ResourceWarning")]

N = 200


class _Late:
    """Waits until the server read all N, aborts the session, then sends on every message."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.errors: list[BaseException] = []

    def _abort_once(self, session: Any) -> None:
        if session.state.value == "open":
            session.abort()

    async def on_message(self, session: Any, message: Any) -> None:
        with anyio.fail_after(WAIT):
            while self.server.stats().messages_in < N:
                await anyio.sleep(0.002)
        self._abort_once(session)
        await session.send(message.payload)

    async def on_error(self, session: Any, error: BaseException) -> None:
        self.errors.append(error)


class _SyncLate(_Late):
    def on_message(self, session: Any, message: Any) -> None:  # type: ignore[override]
        deadline = time.monotonic() + WAIT
        while self.server.stats().messages_in < N and time.monotonic() < deadline:
            time.sleep(0.002)
        self._abort_once(session)
        session.send(message.payload, timeout=WAIT)

    def on_error(self, session: Any, error: BaseException) -> None:  # type: ignore[override]
        self.errors.append(error)


def test_late_handler_errors_are_logged_once(backend: Backend, certs: Certs,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="msgtrans")

    async def body() -> None:
        async with server_transport(backend) as server:
            handler = _SyncLate(server) if backend.name == "sync" else _Late(server)
            stream = server.accept([server_config(backend.lib, "tcp", certs)])
            await backend.call(stream.start)
            port = stream.addresses[0][1]
            async with anyio.create_task_group() as tg:
                tg.start_soon(backend.serve, server, stream, handler)
                async with backend.transport() as client:
                    session = await client.connect(client_url("tcp", port, certs))
                    await send_all(backend, session.raw, N)
                    with anyio.fail_after(WAIT):
                        while len(handler.errors) < N:
                            await anyio.sleep(0.005)
                    await backend.call(server.graceful_shutdown, 2.0)
            served = [r for r in caplog.records if r.name.startswith("msgtrans.io_")
                      and ("raised" in r.getMessage() or "failed" in r.getMessage())]
            assert len(served) <= 2, [r.getMessage() for r in served[:5]]
            assert all(r.exc_info is None for r in served)
            # Nothing lost: on_error saw each (the contract), and the session counted them.
            assert len(handler.errors) >= N

    backend.run(body)
