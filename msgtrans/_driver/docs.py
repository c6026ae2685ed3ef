"""The public API's text, written once for the three backends.

The backends offer the same classes and methods, awaitable (asyncio, trio) or blocking
(io_sync), with bodies that differ; what they do, their arguments, defaults and errors do not.
Each backend's class or method takes its docstring from here through :func:`doc`, filling in
the one sentence that is its own (how a call is cancelled, where its tasks run), so the three
cannot drift apart.  ``help()``, ``inspect.getdoc`` and Sphinx see the finished text.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "CANCEL_SAFE", "CLOSE", "CONNECT", "MESSAGE", "POOL", "POOL_CLOSE", "POOL_LEASE",
    "POOL_REQUEST", "POOL_SEND", "RECEIVE", "RECEIVE_CANCEL", "RECEIVE_MANY", "REQUEST", "RESPOND",
    "SEND", "SERVE", "SESSION", "SESSION_STREAM", "TRANSPORT", "doc",
]

_T = TypeVar("_T")
_WIDTH = 88  # the rendered width of the docstrings written in the sources


def doc(template: str, **fields: str) -> Callable[[_T], _T]:
    """Give the decorated class or function *template* as its docstring, its ``{name}``
    fields filled from *fields* (a field left empty leaves no blank lines behind; prose
    paragraphs are refilled, sections kept as written)."""
    text = template.format(**fields)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    text = "\n\n".join(_rewrap(p) for p in text.split("\n\n"))

    def apply(obj: _T) -> _T:
        obj.__doc__ = text
        return obj

    return apply


def _rewrap(paragraph: str) -> str:
    # A filled-in field changes a prose paragraph's line lengths: refill it (to the width the
    # sources use), but leave sections (``Args:`` and indented lists) as they are written.
    lines = paragraph.splitlines()
    if not lines or any(line[:1].isspace() for line in lines) or lines[0].endswith(":"):
        return paragraph
    return textwrap.fill(" ".join(lines), width=_WIDTH, break_on_hyphens=False,
                         break_long_words=False)


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
    {nursery}settings: keyword arguments for every connection the transport makes: the
        :class:`~msgtrans.core.session.SessionMachine` settings and ``buffer_pool``
        (default: their defaults).
    connect_timeout: seconds for :meth:`connect` (default ``None``: each config's).
    shutdown_timeout: seconds for the graceful shutdown of ``{with_}`` (default 5.0).
    memory_limit: bytes every session of the transport may hold together in queued
        messages, both ways (default ``None``: no limit; see ``docs/buffers.md``).
    defaults: the builder's transport-wide settings (config fields, pool defaults, buffer
        pool, shutdown callback); :meth:`builder` fills it.
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

The sizes and the strategy default to the builder's (``connection_pool``,
``pool_expansion_strategy``); an argument given here wins for this pool.

Args:
    address: where to connect (a URL or a config, as :meth:`connect`).
    min: sessions kept open at all times (default: the builder's ``connection_pool``, else
        2).
    max: sessions never exceeded (default: the builder's, else 64).
    target: the size the pool expects to need; growth slows as it nears it
        (default: the builder's, else 16; kept between *min* and *max*).
    strategy: how much to grow per step (default: the builder's
        ``pool_expansion_strategy``, else :class:`~msgtrans.core.expansion.SmartExpansion`).
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

MESSAGE = """One whole message from the peer: a one-way message, a request, or the response to our
request.  Read-only.

A large payload (at least the config's ``zero_copy_threshold``, 64 KiB by default) is a
view of a buffer lent by the receive pool: :meth:`release` (or ``with message:``) gives it
back for the next large message once you are done; copy what you keep first
(``bytes(message.payload)``).  A message never released is simply freed by the garbage
collector (see ``docs/buffers.md``).

Attributes:
    payload: the message body (``bytes``, or a read-only ``memoryview`` for large payloads
        received zero-copy; both compare equal to ``bytes``).
    biz_type: the application's type tag, 0..255.
    ext_header: the extension header (possibly empty).
    message_id: the wire message id (a response carries its request's id).
    packet_type: :class:`~msgtrans.core.packet.PacketType` ``ONE_WAY``, ``REQUEST`` or
        ``RESPONSE``.
    session_id: the id of the session it arrived on.
    pooled: whether :meth:`release` has a pooled buffer to give back.
"""

RESPOND = """Send the response to this request (once){safety}.

Args:
    data: the response payload.
    biz_type: the response's type tag (default: the request's).
    ext_header: the response's extension header (default empty).

Raises:
    TransportConnectionError: this message is not a request or was already answered
        (code ``connection.failed``), or the session closed (``connection.closed``).
"""

POOL_REQUEST = """Send a request on the least-loaded session and return the response.

The request holds a lease until its response came (so the machine sees the load);
waiting for a free session counts against *timeout*.

Args:
    data: the payload.
    biz_type: the application's type tag (default 0).
    ext_header: the extension header (default empty).
    timeout: seconds for all of it (default: the transport's request timeout).

Raises:
    ResourceError: no session became free in time (code ``resource.pool_exhausted``).
    TransportTimeoutError: no response in time (code ``timeout.request``).
    TransportConnectionError: the pool is closed, or the session broke.
"""

POOL_SEND = """Send a one-way message on the least-loaded open session (the machine's ``pick``: a
one-way send holds nothing once queued); waits for a session when none is open yet.

Raises:
    ResourceError: no session opened within the request timeout (code
        ``resource.pool_exhausted``).
    TransportConnectionError: the pool is closed, or the session broke.
"""

POOL_LEASE = """``{with_} pool.lease() as session:`` a session for this block alone (with the
default ``max_leases_per_connection=1``).  Do not close it: leaving the block gives it back.

Args:
    timeout: seconds to wait for a free session (default: the transport's request
        timeout).

Raises:
    ResourceError: no session became free in time (code ``resource.pool_exhausted``).
    TransportConnectionError: the pool is closed.
"""

POOL_CLOSE = """Close the pool: waiting leases fail, opens in progress {opens}, every pooled session
closes gracefully (dropped after *timeout* seconds).  Closing twice is harmless.
"""

SEND = """Send a one-way message.  {waits} while the send side is paused (backpressure); returns
once the message is queued ({leaves}).{more}

Args:
    data: the payload.
    biz_type: the application's type tag, 0..255 (default 0).
    ext_header: the extension header (default empty).{timeout}

Raises:
    TransportConnectionError: the session is closing or closed.{timeout_error}
    ResourceError: the payload is over the limit.
    ConfigurationError: *biz_type* or *ext_header* is out of range.
"""

RECEIVE = """Return the next one-way message or request from the peer (in arrival order).
{cancel}{args}
Raises:{timeout_error}
    TransportConnectionError: the session closed and every message was taken (code
        ``connection.closed``), or the error that ended the session.
"""

#: What cancelling an awaitable ``receive()`` does (asyncio and trio).
RECEIVE_CANCEL = """
Cancelling the call never loses a message: a message is only taken from the queue by
a call that returns it.
"""

SERVE = r"""Accept on *configs* and serve each session with *handler*{until}.

*configs* may also be a :class:`SessionStream` from :meth:`accept`, started or not
(start it first to learn its :attr:`~SessionStream.addresses`); serve closes it at the
end.

*handler* has any of these {kind}methods: ``on_connected(session)``,
``on_message(session, message)``, ``on_request(session, message) -> bytes`` (the
return value is the response), ``on_disconnected(session, reason)``,
``on_error(session, error)``.  {runs}  An exception from the handler is logged and given
to ``on_error``; it never ends the session or the server.

*workers* (default: the builder's ``worker_threads``, 1) above 1 makes this process a
supervisor of that many forked worker processes, each with a transport of its own built with
the same settings, serving *configs* (URLs or configs, not a stream; no port 0) on shared
ports (``SO_REUSEPORT``); each worker has its own copy of *handler*, inherited by fork, and
nothing is shared between them.  A worker that dies is restarted (at most 5 times in 60 s
each); SIGINT and SIGTERM (where no handler of the application's is set), a cancel or the
transport's shutdown stop them all gracefully, and serve returns their reports summed
in one :class:`ShutdownReport` (``None`` without workers).  Meanwhile :meth:`stats` and
:meth:`stats_prometheus` show every worker's metrics merged.  See docs/scaling.md.

Raises:
    TransportError: a listener cannot be opened.
    ConfigurationError: *workers* with a stream, a port 0, or no ``fork()`` here.
"""
