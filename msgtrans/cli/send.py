"""``python -m msgtrans send URL DATA``: one message or request from the shell.

With ``--request`` the response's payload is printed (as text when it is UTF-8, else as hex).
Any failure prints the :class:`~msgtrans.core.errors.TransportError` (``[code] message``) on
stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["DEFAULT_TIMEOUT", "add_arguments", "client_url", "main", "send", "send_sync"]

#: Seconds connecting, and then the request, may each take unless ``--timeout`` says otherwise.
DEFAULT_TIMEOUT = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``send``'s arguments to *parser*."""
    parser.add_argument("url", metavar="URL",
                        help="where to: tcp://, tls://, ws://, wss:// or quic:// (see "
                             "docs/configuration.md)")
    parser.add_argument("data", metavar="DATA", help="the payload (sent as UTF-8)")
    parser.add_argument("--request", action="store_true",
                        help="send a request and print the response's payload")
    parser.add_argument("--biz-type", type=int, default=0, metavar="N",
                        help="the message's biz_type, 0..255 (default 0)")
    parser.add_argument("--ca", metavar="FILE",
                        help="trust the certificates in FILE (tls, wss, quic)")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify the server's certificate (tests only)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help=f"seconds to connect and then for the response "
                             f"(default {DEFAULT_TIMEOUT:g})")
    from .serve import add_backend_argument

    add_backend_argument(parser)


def client_url(url: str, ca: str | None = None, insecure: bool = False) -> str:
    """*url* with ``ca=`` and ``verify=false`` added to its query as asked.

    The URL's own parsing (:func:`msgtrans.core.config.parse_url`) then checks them, so
    ``--ca`` on a scheme without TLS fails with the same error as ``?ca=`` would.
    """
    if ca is None and not insecure:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if ca is not None:
        query.append(("ca", ca))
    if insecure:
        query.append(("verify", "false"))
    return urlunsplit(parts._replace(query=urlencode(query)))


async def send(url: str, data: bytes, *, request: bool, biz_type: int,
               timeout: float, backend: str = "asyncio") -> bytes | None:
    """Connect to *url*, send *data* (a request when *request*), close gracefully; return the
    response's payload, or ``None`` for a one-way message.

    Args:
        backend: ``asyncio`` or ``trio`` (the same code: their APIs are the same), run under
            that event loop.

    Raises:
        TransportError: connecting, sending or the request failed.
    """
    mt: Any = importlib.import_module(f"msgtrans.io_{backend}")

    async with mt.Transport.builder().shutdown_timeout(timeout).build() as transport:
        session = await transport.connect(url, timeout=timeout)
        if request:
            reply = await session.request(data, biz_type=biz_type, timeout=timeout)
            return bytes(reply.payload)
        await session.send(data, biz_type=biz_type)
        # Leaving the block shuts down gracefully: the message leaves before the close.
    return None


def send_sync(url: str, data: bytes, *, request: bool, biz_type: int,
              timeout: float) -> bytes | None:
    """:func:`send` on :mod:`msgtrans.io_sync`, blocking."""
    import msgtrans.io_sync as mt

    with mt.Transport.builder().shutdown_timeout(timeout).build() as transport:
        session = transport.connect(url, timeout=timeout)
        if request:
            reply = session.request(data, biz_type=biz_type, timeout=timeout)
            return bytes(reply.payload)
        session.send(data, biz_type=biz_type, timeout=timeout)
    return None


def main(args: argparse.Namespace, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run ``send`` with parsed *args*; return the exit status (0 sent or answered, 1 failed)."""
    from ..core.errors import TransportError
    from . import format_payload

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        url = client_url(args.url, args.ca, args.insecure)
        data = args.data.encode("utf-8")
        options = {"request": args.request, "biz_type": args.biz_type, "timeout": args.timeout}
        backend = getattr(args, "backend", "asyncio")
        if backend == "sync":
            reply = send_sync(url, data, **options)
        elif backend == "trio":
            import trio  # type: ignore[import-untyped, unused-ignore]

            reply = trio.run(lambda: send(url, data, backend="trio", **options))
        else:
            reply = asyncio.run(send(url, data, **options))
    except TransportError as exc:
        print(f"msgtrans send: {exc}", file=err)
        return 1
    if reply is not None:
        print(format_payload(reply), file=out)
    return 0
