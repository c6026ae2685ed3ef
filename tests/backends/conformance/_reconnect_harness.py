"""What test_reconnect_faults.py needs around test_reconnect.py's helpers: a client transport
with short timeouts, the proxy for a protocol, and a ledger of what a reconnecting client sent
and what became of it, checked against what the server recorded."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio

from tests.faults.tcp_proxy import TcpProxy
from tests.faults.udp_proxy import UdpProxy

from .adapters import Backend, Certs, Transport, TransportError, client_url
from .test_reconnect import Client

BOUND = 5.0  # seconds any one call may take, through a cut network included


@contextlib.asynccontextmanager
async def client_transport(backend: Backend, *, idle_timeout: float | None = None,
                           connect_timeout: float | None = None,
                           request_timeout: float | None = None,
                           send_timeout: float | None = None) -> AsyncIterator[Transport]:
    """A client transport built with these settings; leaving shuts it down and checks that
    its session table emptied."""
    builder = backend.lib.Transport.builder()
    if idle_timeout is not None:
        builder.idle_timeout(idle_timeout)
    if connect_timeout is not None:
        builder.connect_timeout(connect_timeout)
    if request_timeout is not None:
        builder.request_timeout(request_timeout)
    if send_timeout is not None:
        builder.send_timeout(send_timeout)
    async with backend._open(builder) as raw:
        try:
            yield Transport(backend, raw)
        finally:
            with anyio.fail_after(BOUND):
                await backend.call(raw.graceful_shutdown, 2.0)
        assert raw.session_count() == 0


@contextlib.contextmanager
def proxy_to(proto: str, port: int) -> Iterator[TcpProxy | UdpProxy]:
    """A TCP proxy (tcp, tls, ws) or a UDP one (quic) to a loopback server's *port*."""
    proxy: TcpProxy | UdpProxy
    proxy = UdpProxy(("127.0.0.1", port)) if proto == "quic" else TcpProxy(("127.0.0.1", port))
    with proxy:
        yield proxy


def url_of(proto: str, port: int, certs: Certs, *, quic_idle: float | None = None) -> str:
    """The client URL of *port* (the proxy's); *quic_idle* sets QUIC's own idle timeout."""
    url = client_url(proto, port, certs)
    if proto == "quic" and quic_idle is not None:
        url += f"&idle_timeout={quic_idle:g}"
    return url


def threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.name.startswith("Trio thread")}


def wait_threads_gone(before: set[threading.Thread]) -> None:
    end = time.monotonic() + BOUND
    while threads() - before and time.monotonic() < end:
        time.sleep(0.01)
    assert not threads() - before, [t.name for t in threads() - before]


@dataclasses.dataclass
class Ledger:
    """Every call a test made on its reconnecting client and how it ended.

    ``sent``: one-way payloads whose ``send()`` returned, with whether they may have gone on
    a connection the network broke (by default: the session under the client was ``first``
    before or after the call);
    ``send_errors``: payloads whose ``send()`` raised; ``answered`` / ``failed``: requests
    that got their (checked) response / raised a TransportError.
    """

    first: Any = None  # the session the network broke
    sent: list[tuple[bytes, bool]] = dataclasses.field(default_factory=list)
    send_errors: list[tuple[bytes, TransportError]] = dataclasses.field(default_factory=list)
    answered: list[bytes] = dataclasses.field(default_factory=list)
    failed: list[tuple[bytes, TransportError]] = dataclasses.field(default_factory=list)
    idempotent: set[bytes] = dataclasses.field(default_factory=set)  # may arrive twice

    async def answered_soon(self, client: Client, tag: bytes, *, within: float = 8.0,
                            timeout: float = 1.0) -> int:
        """Requests ``tag + n`` (each failing clearly or answered) until one is answered,
        within *within* seconds; how many failed first."""
        with anyio.fail_after(within):
            n = 0
            while await self.request(client, tag + b"%d" % n, timeout=timeout) is None:
                n += 1
                await anyio.sleep(0.02)  # not a busy loop while a request fails at once
        return n

    async def send(self, client: Client, payload: bytes, *, broken: bool | None = None,
                   **kw: Any) -> None:
        on_first = client.raw.current is self.first
        with anyio.fail_after(BOUND):
            try:
                await client.send(payload, **kw)
            except TransportError as exc:
                self.send_errors.append((payload, exc))
                return
        if broken is None:
            broken = on_first or client.raw.current is self.first
        self.sent.append((payload, broken))

    async def request(self, client: Client, payload: bytes, *, timeout: float = 2.0,
                      **kw: Any) -> bytes | None:
        """The response (checked to be this request's), or None if it failed; *timeout* is
        the request's own, the test fails if the call takes much longer."""
        if kw.get("idempotent"):
            self.idempotent.add(payload)
        with anyio.fail_after(timeout + 2.0):  # a hang fails the test here
            try:
                reply = await client.request(payload, timeout=timeout, **kw)
            except TransportError as exc:
                self.failed.append((payload, exc))
                return None
        assert reply == b"re:" + payload, (reply, payload)
        self.answered.append(payload)
        return reply

    def check(self, got: list[bytes], lost_unsent: int) -> None:
        """Check the server's record *got* against the ledger: nothing twice, nothing that was
        not sent, every answered request there once, every failure retryable, and a one-way
        message missing only if it went on the broken connection; the losses the client
        counted (*lost_unsent*) are among those missing.  Only an idempotent request may be
        there twice (sent again on the next connection)."""
        once = [p for p in got if p not in self.idempotent]
        assert len(once) == len(set(once)), f"delivered twice: {once}"
        every = {p for p, _ in self.sent} | {p for p, _ in self.send_errors} \
            | set(self.answered) | {p for p, _ in self.failed}
        assert set(got) <= every, f"delivered but never sent: {set(got) - every}"
        for payload in self.answered:
            assert payload in got
        for payload, exc in self.failed + self.send_errors:
            assert exc.retryable, (payload, exc)
        missing = [(p, first) for p, first in self.sent if p not in got]
        assert all(broken for _, broken in missing), f"lost on a clean connection: {missing}"
        assert lost_unsent <= len(missing), (lost_unsent, missing)
