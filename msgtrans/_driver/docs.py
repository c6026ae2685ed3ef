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
    "CANCEL_SAFE",
    "CLOSE",
    "CONNECT",
    "CONNECT_FOREVER",
    "CONNECT_FOREVER_ITERATOR",
    "MESSAGE",
    "POOL",
    "POOL_CLOSE",
    "POOL_LEASE",
    "POOL_REQUEST",
    "POOL_SEND",
    "RECEIVE",
    "RECEIVE_CANCEL",
    "RECEIVE_MANY",
    "RECONNECTING_CLOSE",
    "RECONNECTING_RECEIVE",
    "RECONNECTING_REQUEST",
    "RECONNECTING_SEND",
    "RECONNECTING_SESSION",
    "REQUEST",
    "RESPOND",
    "SEND",
    "SERVE",
    "SESSION",
    "SESSION_STREAM",
    "TRANSPORT",
    "doc",
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

With *reconnect* set, the session returned is a :class:`ReconnectingSession`: the first
connection is made here (with the same timeout and errors as without), then a supervisor
re-establishes every connection lost for a reason other than the application's close, as the
:class:`ReconnectPolicy` says (see ``docs/reconnecting.md``).

Args:
    target: where to connect.
    timeout: seconds for connecting and every handshake (default: the builder's
        connect timeout, else the config's ``connect_timeout``, 10 s by default); with
        *reconnect*, the bound of every reconnect attempt too.{timeout}
    reconnect: ``None`` or ``False`` (default): a plain session, gone once its connection
        is; ``True``: a :class:`ReconnectingSession` with the default
        :class:`ReconnectPolicy` (0.1 s doubling to 30 s, 20 % jitter, never gives up on a
        retryable error); a :class:`ReconnectPolicy`: one with that policy.

Raises:
    ConfigurationError: *target* or *reconnect* is invalid{nursery}.
    TransportConnectionError: refused, unreachable, DNS failure, TLS verification or
        handshake failure (``error_code`` says which).
    TransportTimeoutError: not connected in time (code ``timeout.connect``).
"""

RECONNECTING_SESSION = """A client session that re-establishes its connection when it is lost.

Made by {made}, never directly.  It stays the same object for the application while the
connections under it come and go: each is a plain session (:attr:`current`), replaced by a
new one (with its own message ids, restarting at 1) after a loss.  A supervisor watches the
connection; when it ends for any reason other than :meth:`close` it asks the reconnect
machine (:class:`~msgtrans.core.reconnect.ReconnectMachine`): wait the policy's delay and
connect again (each attempt bounded by the connect timeout), or give up (a non-retryable
error, ``ResourceError`` or ``ConfigurationError``, or ``max_attempts`` failed attempts),
after which every call raises the give-up error.  A clean close by the peer (a server
shutting down) is retried.{safety}

One-way messages are never sent twice: those queued on a connection that broke before they
reached its socket are counted in :attr:`lost_unsent` (their delivery is unknown).  Requests
pending at the cut fail with a retryable error, unless made with ``idempotent=True``: those
are sent again on the next connection within their timeout.  A response can only complete a
request of its own connection, so a late response never answers another request.

Attributes:
    policy: the :class:`ReconnectPolicy`.
"""

RECONNECTING_SEND = """Send a one-way message on the current connection.

Connected, this is the current session's ``send`` (one attribute check more).  While
reconnecting, waits for the connection up to the transport's ``send_timeout`` (the
builder's, 30 s by default){timeout}, then sends on it.

Args:
    data: the payload.
    biz_type: the application's type tag (default 0).
    ext_header: the extension header (default empty).
    wait_reconnect: ``False``: fail at once while reconnecting instead of waiting
        (default ``True``).

Raises:
    TransportConnectionError: reconnecting and *wait_reconnect* is false (code
        ``connection.closed``, retryable); closed (``connection.closed``, not retryable).
    TransportTimeoutError: not reconnected within the send timeout (``timeout.send``).
    TransportError: given up (the error it gave up with); what the session's ``send``
        raises (``ResourceError`` for a payload over the limit).
"""

RECONNECTING_REQUEST = """Send a request and return the response, on the current connection.

While reconnecting, waits for the connection (within the request's timeout).  A request
pending when its connection is lost fails with a retryable ``TransportError`` (the error that
ended the connection, or ``connection.closed`` for a clean close by the peer), unless
*idempotent*: then it is sent again on the next connection, within what is left of its
timeout.  A request that timed out (``timeout.request``) is never sent again.

Args:
    data: the payload.
    biz_type: the application's type tag (default 0).
    ext_header: the extension header (default empty).
    timeout: seconds for the whole call, reconnect waits and resends included (default:
        the transport's ``request_timeout``, 10 s unless the builder changed it).
    idempotent: whether the request may be sent again after a lost connection (default
        ``False``: the peer may have acted on it).
    wait_reconnect: ``False``: fail at once while reconnecting (default ``True``).

Raises:
    TransportTimeoutError: no response in time, or not reconnected in time (code
        ``timeout.request``).
    TransportConnectionError: the connection was lost with the request pending (retryable);
        reconnecting and *wait_reconnect* is false (``connection.closed``, retryable); closed.
    TransportError: given up (the error it gave up with).
"""

RECONNECTING_RECEIVE = """Return the next message or request from the peer, across connections.

Messages come in the order they arrived, those of a lost connection first; while
reconnecting, waits for the next connection's.{timeout}

Raises:
    TransportConnectionError: closed by the application (``connection.closed``).
    TransportError: given up (the error it gave up with).
"""

RECONNECTING_CLOSE = """Stop reconnecting and close the current connection gracefully (see a
session's ``close``); waiters fail with ``connection.closed``.  Returns promptly during a
backoff wait or a reconnect attempt (the supervisor is stopped).  Closing twice is harmless.

Args:
    code: the WebSocket close code or QUIC application error code (default: the
        protocol's).
    reason: the reason text sent where the protocol carries one.
    timeout: seconds to wait for the close handshake (default 10.0).
"""

CONNECT_FOREVER = """Return {kind} of sessions to *target*, one per connection, for as long as
the transport runs: ``{loop} session in transport.connect_forever(url):``.

Each step waits until the session it yielded last is over (the loop body may close it, or
hand it to {handed} and move on: the step waits for its end either way), backs off by *policy*,
connects again and yields the new, plain session.  Failed attempts are retried too, the first
ones included, so a client started before its server simply waits for it.  The iteration
ends ({stop}) when the transport shuts down (a backoff in progress ends at once) or the
iterator is closed (``{close}``, or leaving ``{with_} transport.connect_forever(url) as
sessions:``); neither closes a session it yielded.  Breaking out of the loop leaves nothing
running.  Reconnects, give-ups and the time spent without a session are counted in
:meth:`stats` by protocol.

Args:
    target: where to connect (a URL or a config, as :meth:`connect`).
    policy: the :class:`~msgtrans.core.reconnect.ReconnectPolicy` (default
        ``DEFAULT_RECONNECT_POLICY``: 0.1 s doubling to 30 s, 20 % jitter, never gives up on
        a retryable error).
    timeout: seconds for each connect attempt (default: as :meth:`connect`).

Raises:
    ConfigurationError: *target* or *policy* is invalid{nursery}.
    TransportConnectionError: the transport is shut down (code ``connection.closed``).

The iterator raises the error it gave up on (a non-retryable error such as a failed TLS
verification, or the last error once ``max_attempts`` attempts in a row failed).
"""

CONNECT_FOREVER_ITERATOR = """The sessions of ``transport.connect_forever()``, as {kind}: one
session per connection, a new one once the previous is over (see
:meth:`Transport.connect_forever`).{safety}

``{loop} session in sessions:`` yields each session; ``{close}`` or leaving
``{with_} ... as sessions:`` stops it (the iteration then ends with {stop}; the sessions it
yielded stay open).  The iterator runs nothing in the background.
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
    reconnect: the :class:`~msgtrans.core.reconnect.ReconnectPolicy` spacing the opens
        that replace broken sessions and retry failed opens (default
        ``DEFAULT_POOL_RECONNECT``: 0.05 s doubling to 2 s, never giving up on a retryable
        error).  When it gives up (``max_attempts``, a non-retryable error) the pool closes:
        waiting and later leases fail with that error.

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
