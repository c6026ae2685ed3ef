"""The public API's text, written once for the three backends.

The backends offer the same classes and methods, awaitable (asyncio, trio) or blocking
(io_sync), with bodies that differ; what they do, their arguments, defaults and errors do not.
Each backend's class or method takes its docstring from here through :func:`doc`, filling in
the one sentence that is its own (how a call is cancelled, where its tasks run), so the three
cannot drift apart.  ``help()``, ``inspect.getdoc`` and Sphinx see the finished text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "CANCEL_SAFE", "CLOSE", "CONNECT", "POOL", "RECEIVE_MANY", "REQUEST", "SESSION",
    "SESSION_STREAM", "TRANSPORT", "doc",
]

_T = TypeVar("_T")


def doc(template: str, **fields: str) -> Callable[[_T], _T]:
    """Give the decorated class or function *template* as its docstring, its ``{name}``
    fields filled from *fields* (a field left empty leaves no blank lines behind)."""
    text = template.format(**fields)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")

    def apply(obj: _T) -> _T:
        obj.__doc__ = text
        return obj

    return apply


SESSION = """One connection to a peer, as the application sees it{safety}.

Sessions come from :meth:`Transport.connect` and from accepting (``Transport.accept`` /
``Transport.serve``); they are not created directly.

Attributes:
    id: the transport-wide session id (1, 2, ...).
    protocol: the transport under it: ``Protocol.TCP``, ``WEBSOCKET`` or ``QUIC`` (TLS is
        inside TCP and WebSocket; see :attr:`established`).
    established: the core's ``ConnectionEstablished`` event (TLS version, ALPN, WebSocket
        subprotocol and headers), once the handshake completed; else ``None``.
    closed_event: the core's ``ConnectionClosed`` event (``clean``, close ``code`` and
        ``reason``) once the connection ended; else ``None``.
    error: the :class:`TransportError` that ended the session, or ``None``.
    forced: ``True`` when the session was aborted (no close handshake).
    packets_flushed: messages handed to the socket so far.
"""

REQUEST = """Send a request and return the peer's response.

Args:
    data: the payload.
    biz_type: the application's type tag (default 0).
    ext_header: the extension header (default empty).
    timeout: seconds to wait for the response (default: the transport's
        ``request_timeout``, 10 s unless the builder changed it).

Raises:
    TransportTimeoutError: no response in time (code ``timeout.request``).
    TransportConnectionError: the session is closing or closed, or closed before the
        response came.
    ResourceError: too many requests pending, or the payload is over the limit.

{withdrawn} withdraws the request: a late response is dropped and nothing stays pending in
the core.
"""

CLOSE = """Close gracefully: queued messages still leave, then the protocol's close handshake
(TCP FIN, WebSocket Close, QUIC CONNECTION_CLOSE).  Waits for the close to complete, at most
*timeout* seconds, then drops the connection.  Closing twice is harmless.

Args:
    code: the WebSocket close code (default 1000) or QUIC application error code
        (default 0); ignored on TCP.
    reason: the reason text sent where the protocol carries one.
    timeout: seconds to wait for the close handshake (default 10.0).
"""

TRANSPORT = """Sessions over TCP, TLS, WebSocket and QUIC {runtime}.

Make one with :meth:`builder` (or ``Transport()`` for the defaults).  {lifetime}

Args:
    {nursery}settings: keyword arguments for every session's
        :class:`~msgtrans.core.session.SessionMachine` (default: its defaults).
    connect_timeout: seconds for :meth:`connect` (default ``None``: each config's).
    shutdown_timeout: seconds for the graceful shutdown of ``{with_}`` (default 5.0).
"""

SESSION_STREAM = """The sessions accepted by one or more listeners, as {kind}
(leaving it stops accepting; sessions already accepted stay open).{safety}

Attributes:
    addresses: the bound ``(host, port)`` of each listener, in the order of the configs
        (port 0 resolved), once started.
"""

CONNECT = """Connect to *target* (a URL such as ``"tcp://127.0.0.1:9001"``, ``tls://``,
``ws://``, ``wss://``, ``quic://``, or a config) and return the open session.

{own}

Args:
    target: where to connect.
    timeout: seconds for connecting and every handshake (default: the builder's
        connect timeout, else the config's ``connect_timeout``, 10 s by default).{timeout}

Raises:
    ConfigurationError: *target* is invalid{nursery}.
    TransportConnectionError: refused, unreachable, DNS failure, TLS verification or
        handshake failure (``error_code`` says which).
    TransportTimeoutError: not connected in time (code ``timeout.connect``).
"""

POOL = """Return a :class:`SessionPool` of sessions to *address*, driven by a core
:class:`~msgtrans.core.pool.PoolMachine`; {waits} until its first session opened.{own}

Args:
    address: where to connect (a URL or a config, as :meth:`connect`).
    min: sessions kept open at all times (default 2).
    max: sessions never exceeded (default 64).
    target: the size the pool expects to need; growth slows as it nears it
        (default 16, kept between *min* and *max*).
    strategy: how much to grow per step (default
        :class:`~msgtrans.core.expansion.SmartExpansion`).
    settings: other :class:`~msgtrans.core.pool.PoolMachine` settings:
        ``wait_threshold``, ``grow_utilisation``, ``shrink_utilisation``,
        ``shrink_after``, ``max_leases_per_connection``, ``history``.

Raises:
    ConfigurationError: *target* or a setting is invalid{nursery}.
    TransportError: every first open failed (the last connect error); with ``min=0``
        nothing is opened up front and nothing is raised.
"""

RECEIVE_MANY = """Return every one-way message and request queued from the peer (at least one, in
arrival order), waiting for the first if none is queued.  A consumer that handles what
arrived in one batch {saves}.

Args:
    max_messages: take at most this many (default ``None``: all that are queued).{timeout}
{cancel}
Raises:
    ValueError: *max_messages* is below 1.{timeout_error}
    TransportConnectionError: the session closed and every message was taken (code
        ``connection.closed``), or the error that ended the session.
"""

CANCEL_SAFE = """
Cancelling the call never loses a message: messages are only taken from the queue by
a call that returns them.{more}
"""
