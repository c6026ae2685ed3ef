"""Turn the errors of the OS, ``ssl``, h11, wsproto and aioquic into :class:`TransportError`.

Drivers and protocol machines meet failures in many shapes: ``OSError`` with an errno from the
socket calls, ``socket.gaierror`` from name resolution, ``ssl.SSLError`` from the TLS layer,
``h11`` / ``wsproto`` protocol errors and close codes from the WebSocket layer, and
``ConnectionTerminated`` error codes from aioquic.  The functions here give every one of them the
right kind, stable :attr:`~msgtrans.core.errors.TransportError.error_code` and retryability, so
that the rest of msgtrans (and its users) only ever see one error type:

* :func:`map_error` maps an exception.
* :func:`map_websocket_close` maps a WebSocket close code (an RFC 6455 Close frame, or 1006 when
  the stream ended without one).
* :func:`map_websocket_reject` maps the HTTP status of a refused WebSocket upgrade.
* :func:`map_quic_close` maps the error code of aioquic's ``ConnectionTerminated`` event.

The principle behind retryability: an error is retryable only when we know that trying again can
succeed (the server may be back, the network may recover, a resource may free up).  Errors we do
not recognise are *not* retryable, so that an unknown, possibly permanent failure never turns into
a retry storm.  The full table is in ``docs/errors.md``.

The retry delays are the class defaults of :mod:`msgtrans.core.errors` (connection 1 s, timeout
0.5 s, resource 0.1 s), except where the cause says the peer needs longer to come back:
:data:`REFUSED_RETRY_AFTER`, :data:`UNREACHABLE_RETRY_AFTER`, :data:`BUSY_RETRY_AFTER` and
:data:`DNS_RETRY_AFTER`.

This module is part of the sans-IO core: it imports neither ``socket`` nor any event loop.  The
exception types of ``socket``, ``asyncio``, ``trio``, h11, wsproto and aioquic are looked up in
``sys.modules`` when an error is mapped: an exception of a module that was never imported cannot
exist, so a module that is not loaded is simply not a candidate.
"""

from __future__ import annotations

import copy
import errno
import re
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import (
    ConfigurationError,
    Protocol,
    ProtocolError,
    ResourceError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)

__all__ = [
    "BUSY_RETRY_AFTER",
    "DNS_RETRY_AFTER",
    "REFUSED_RETRY_AFTER",
    "UNREACHABLE_RETRY_AFTER",
    "map_error",
    "map_quic_close",
    "map_websocket_close",
    "map_websocket_reject",
]

#: Seconds to wait before reconnecting after ``connection.refused``.  Longer than the 1 s after a
#: reset: a refusal means nothing listens there yet (a server starting or restarting), which takes
#: longer than re-establishing a connection that just broke.
REFUSED_RETRY_AFTER = 2.0
#: Seconds to wait after ``connection.unreachable``: a route or interface has to come back.
UNREACHABLE_RETRY_AFTER = 5.0
#: Seconds to wait when the server said it is busy or restarting (``connection.refused_by_server``,
#: WebSocket 1012 / 1013, HTTP 429 / 503, QUIC ``CONNECTION_REFUSED``) and named no delay itself.
BUSY_RETRY_AFTER = 5.0
#: Seconds to wait after a temporary name resolution failure (``EAI_AGAIN``).
DNS_RETRY_AFTER = 2.0

# Operations whose ssl failures belong to the handshake (``None``: the caller did not say, and
# nearly every TLS failure that is not an EOF happens during the handshake).
_HANDSHAKE_OPERATIONS = frozenset({None, "connect", "accept", "handshake"})

_TIMEOUT_CODES = {
    "connect": "timeout.connect",
    "handshake": "timeout.handshake",
    "accept": "timeout.handshake",
    "request": "timeout.request",
    "idle": "timeout.idle",
    "keepalive": "timeout.keepalive",
    "close": "timeout.close",
}

# Nested exceptions (causes, exception groups) are followed this deep and no deeper, so that a
# cyclic or absurdly deep chain cannot make mapping itself fail.
_MAX_DEPTH = 4


def _errnos(*names: str) -> frozenset[int]:
    # errno differs per platform: ESHUTDOWN and EHOSTDOWN are missing on Windows, the WSAE* names
    # exist only there.  Unknown names are skipped so one table serves every platform.
    return frozenset(v for n in names if isinstance(v := getattr(errno, n, None), int))


_REFUSED = _errnos("ECONNREFUSED", "WSAECONNREFUSED")
_RESET = _errnos("ECONNRESET", "EPIPE", "ENETRESET", "WSAECONNRESET", "WSAENETRESET")
_ABORTED = _errnos("ECONNABORTED", "WSAECONNABORTED")
_NOT_CONNECTED = _errnos("ENOTCONN", "WSAENOTCONN")
_CLOSED_LOCALLY = _errnos("EBADF", "ESHUTDOWN", "ENOTSOCK", "WSAESHUTDOWN", "WSAENOTSOCK",
                          "WSAEBADF")
_UNREACHABLE = _errnos(
    "ENETUNREACH", "EHOSTUNREACH", "ENETDOWN", "EHOSTDOWN",
    "WSAENETUNREACH", "WSAEHOSTUNREACH", "WSAENETDOWN", "WSAEHOSTDOWN",
)
_TIMED_OUT = _errnos("ETIMEDOUT", "WSAETIMEDOUT")
_IN_USE = _errnos("EADDRINUSE", "WSAEADDRINUSE")
_NOT_AVAILABLE = _errnos("EADDRNOTAVAIL", "WSAEADDRNOTAVAIL")
_PERMISSION = _errnos("EACCES", "EPERM", "WSAEACCES")
_FILE_DESCRIPTORS = _errnos("EMFILE", "ENFILE", "WSAEMFILE")
_MEMORY = _errnos("ENOBUFS", "ENOMEM", "WSAENOBUFS")
_MESSAGE_SIZE = _errnos("EMSGSIZE", "WSAEMSGSIZE")
_UNSUPPORTED = _errnos(
    "EAFNOSUPPORT", "EPROTONOSUPPORT", "EPFNOSUPPORT", "ESOCKTNOSUPPORT", "EPROTOTYPE",
    "WSAEAFNOSUPPORT", "WSAEPROTONOSUPPORT", "WSAEPFNOSUPPORT", "WSAESOCKTNOSUPPORT",
)
_NO_FILE = _errnos("ENOENT", "ENOTDIR", "EISDIR")
_AGAIN = _errnos("EAGAIN", "EWOULDBLOCK", "EINTR", "WSAEWOULDBLOCK", "WSAEINTR")

# OpenSSL libraries and reasons that come from loading certificates and keys, not from a peer.
_TLS_CONFIG_LIBRARIES = frozenset({"PEM", "X509", "ASN1", "DECODER", "EVP", "RSA", "EC", "X509V3"})
_TLS_CONFIG_REASONS = frozenset({
    "KEY_VALUES_MISMATCH", "EE_KEY_TOO_SMALL", "CA_KEY_TOO_SMALL", "CA_MD_TOO_WEAK",
    "NO_CIPHER_MATCH", "NO_CERTIFICATE_ASSIGNED", "NO_PRIVATE_KEY_ASSIGNED",
})
# ...and the messages of loading errors that carry no library or reason at all (load_cert_chain on
# a file that is not PEM, set_ciphers with no match).
_TLS_CONFIG_MESSAGES = ("PEM lib", "No cipher can be selected")
# OpenSSL reasons saying a certificate was refused: the peer's by us (SSLCertVerificationError
# covers most of those) or ours by the peer (the alert it sent us).
_TLS_CERTIFICATE_MARKERS = ("CERTIFICATE", "UNKNOWN_CA", "ACCESS_DENIED")

_ERRNO_IN_TEXT = re.compile(r"\[Errno (-?\d+)\]")


@dataclass(frozen=True)
class _Context:
    protocol: Protocol | None
    operation: str | None
    session_id: int | str | None
    timeout: float | None

    def text(self, what: str, exc: BaseException | None = None) -> str:
        """The reason of a mapped error: the layer, what happened, then the original message."""
        prefix = f"{self.protocol.value}: " if self.protocol is not None else ""
        detail = "" if exc is None else (str(exc) or type(exc).__name__)
        return f"{prefix}{what} ({detail})" if detail else f"{prefix}{what}"

    def connection(
        self, code: str, what: str, exc: BaseException | None, *, retryable: bool = True,
        retry_after: float | None = None,
    ) -> TransportConnectionError:
        return TransportConnectionError(
            self.text(what, exc), code=code, retryable=retryable, retry_after=retry_after,
            session_id=self.session_id, operation=self.operation,
        )

    def protocol_error(self, layer: Protocol, code: str, what: str,
                       exc: BaseException | None) -> ProtocolError:
        detail = "" if exc is None else (str(exc) or type(exc).__name__)
        return ProtocolError(
            layer, f"{what} ({detail})" if detail else what, code=code,
            session_id=self.session_id, operation=self.operation,
        )

    def configuration(self, field: str, code: str, what: str,
                      exc: BaseException) -> ConfigurationError:
        return ConfigurationError(
            field, self.text(what, exc), code=code, session_id=self.session_id,
            operation=self.operation,
        )

    def resource(
        self, resource: str, code: str, what: str, exc: BaseException, *, current: int = 0,
        limit: int = 0, retryable: bool = True,
    ) -> ResourceError:
        return ResourceError(
            resource, current, limit, self.text(what, exc), code=code, retryable=retryable,
            session_id=self.session_id, operation=self.operation,
        )

    def timeout_error(self, what: str, exc: BaseException | None) -> TransportTimeoutError:
        operation = self.operation or "io"
        if self.timeout is not None:
            what = f"{what} after {self.timeout:g} s"
        return TransportTimeoutError(
            operation, self.timeout if self.timeout is not None else 0.0, self.text(what, exc),
            code=_TIMEOUT_CODES.get(operation, "timeout.elapsed"), session_id=self.session_id,
        )


def map_error(
    exc: BaseException,
    *,
    protocol: Protocol | str | None = None,
    operation: str | None = None,
    session_id: int | str | None = None,
    timeout: float | None = None,
) -> TransportError:
    """Return the :class:`TransportError` that describes *exc*, with *exc* as its ``__cause__``.

    Use it where a driver or machine catches a foreign exception::

        except OSError as exc:
            raise map_error(exc, protocol="tcp", operation="connect") from exc

    What maps to what (``docs/errors.md`` has the whole table):

    * a :class:`TransportError` is returned as it is, with the *operation* and *session_id* it
      lacked filled in (a copy, see :meth:`~TransportError.with_operation`); context it already
      has is kept, since the innermost layer knows best;
    * ``OSError`` by its subclass and errno: refused, reset / broken pipe, aborted, unreachable
      (connection errors, retryable), ``ETIMEDOUT`` (timeout), address in use / not available /
      permission denied (configuration errors), out of file descriptors / buffers / memory,
      would-block (resource errors, retryable), a closed socket (``connection.closed``);
    * ``socket.gaierror`` by its ``EAI_*`` code: a name that does not exist (``connection.dns``,
      not retryable), a temporary failure (``connection.dns``, retryable), a bad port or family
      (``configuration.invalid``);
    * ``ssl`` errors: verification failures (ours of the peer's certificate, or the peer's alert
      about ours) are ``connection.tls_verification``; a clean TLS close is ``connection.closed``;
      an EOF in violation of the protocol is ``connection.reset``; certificate and key loading
      errors are ``configuration.invalid``; anything else is ``connection.tls_handshake`` during
      the handshake (*operation* ``None``, ``"connect"``, ``"accept"`` or ``"handshake"``) and a
      ``protocol.tls`` :class:`ProtocolError` after it (``"send"``, ``"receive"``...) -- none of
      those are retryable;
    * h11 and wsproto protocol errors are ``protocol.websocket``; wsproto's ``ParseFailed`` maps
      by its close code as in :func:`map_websocket_close`;
    * aioquic's ``QuicConnectionError`` and TLS ``Alert`` map as in :func:`map_quic_close`;
    * the builtin ``TimeoutError`` (``socket.timeout``), ``asyncio.TimeoutError`` and
      ``concurrent.futures.TimeoutError`` on Python 3.10, and ``trio.TooSlowError`` are
      :class:`TransportTimeoutError`, code chosen by *operation* (``"connect"`` ->
      ``timeout.connect``, ``"handshake"`` -> ``timeout.handshake``, ``"request"``, ``"idle"``,
      ``"keepalive"``, ``"close"`` likewise, anything else ``timeout.elapsed``);
    * ``EOFError`` (``asyncio.IncompleteReadError``) is ``connection.closed``, retryable;
      ``trio.ClosedResourceError`` is ``connection.closed``, not retryable (closed locally);
      ``MemoryError`` is ``resource.memory``;
    * cancellation and exit (any ``BaseException`` that is not an ``Exception``:
      ``asyncio.CancelledError``, ``trio.Cancelled``, ``KeyboardInterrupt``) map to
      ``connection.aborted``, not retryable, so that pending operations can be failed with a
      reason.  The caller must still re-raise the cancellation itself;
    * an exception group maps to the error of its members when they all agree, else to
      ``connection.failed`` (retryable when all of them are); an exception not listed here that
      was raised ``from`` one that is maps like its cause (trio's ``BrokenResourceError``); an
      ``OSError`` without errno whose message names one errno (asyncio's "Multiple exceptions:
      [Errno 111] ..., [Errno 111] ...") maps like that errno;
    * anything else is ``connection.failed`` and **not** retryable: an error we cannot explain
      (a bug, an unknown errno) is not one that waiting will fix.

    Args:
        exc: the exception to map.
        protocol: the layer the error happened on (``"tcp"``, ``"quic"``...); it prefixes the
            reason and does not change the mapping.  Default: not named.
        operation: what was being done (``"connect"``, ``"accept"``, ``"handshake"``,
            ``"send"``, ``"receive"``, ``"request"``, ``"close"``...).  It is recorded on the
            error and refines the mapping as described above.  Default: not named.
        session_id: the session the error happened in, recorded on the error.  Default: none.
        timeout: the time limit that elapsed, if the caller knows it; it becomes
            :attr:`TransportTimeoutError.duration` (``0.0`` when not known, as for the OS's own
            ``ETIMEDOUT``).

    Returns:
        a new :class:`TransportError` (or *exc* itself, enriched, when it already is one).

    Raises:
        ValueError: *protocol* is not a :class:`Protocol` value.
    """
    if isinstance(exc, TransportError):
        return _enriched(exc, operation, session_id)
    context = _Context(
        Protocol(protocol) if protocol is not None else None, operation, session_id, timeout
    )
    return _caused(_map(exc, context, 0), exc)


def _enriched(
    err: TransportError, operation: str | None, session_id: int | str | None
) -> TransportError:
    if operation is not None and err.operation is None:
        err = err.with_operation(operation)
    if session_id is not None and err.session_id is None:
        err = err.with_session(session_id)
    return err


def _caused(err: TransportError, exc: BaseException) -> TransportError:
    err.__cause__ = exc
    err.__suppress_context__ = True
    return err


def _map(exc: BaseException, c: _Context, depth: int) -> TransportError:
    if isinstance(exc, TransportError):
        # One of ours inside a group or a chain: a copy, since the result gets a new __cause__.
        return _enriched(copy.copy(exc), c.operation, c.session_id)
    if not isinstance(exc, Exception):
        return c.connection(
            "connection.aborted", "the operation was cancelled", exc, retryable=False
        )
    socket_module = sys.modules.get("socket")
    # gaierror's errno is an EAI_* code, which on some platforms collides with errno values
    # (EAI_AGAIN is 2 on macOS, like ENOENT): it must be recognised before the errno tables.
    if isinstance(exc, getattr(socket_module, "gaierror", ())):
        return _map_gaierror(exc, c, socket_module)
    if isinstance(exc, getattr(socket_module, "herror", ())):
        return c.connection("connection.dns", "host name lookup failed", exc, retryable=False)
    if isinstance(exc, ssl.SSLError):
        # Before the errno tables too: an SSLError's errno is an SSL_ERROR_* number.
        return _map_ssl(exc, c)
    if isinstance(exc, _timeout_types()):
        return c.timeout_error("timed out", exc)
    if isinstance(exc, OSError):
        mapped = _map_os_error(exc, c)
        if mapped is not None:
            return mapped
    mapped = _map_library_error(exc, c)
    if mapped is not None:
        return mapped
    if isinstance(exc, EOFError):
        return c.connection("connection.closed", "the peer closed the connection", exc)
    if isinstance(exc, MemoryError):
        return c.resource("memory", "resource.memory", "out of memory", exc)
    if depth < _MAX_DEPTH:
        members = getattr(exc, "exceptions", None)
        if isinstance(members, Sequence) and members and all(
            isinstance(m, BaseException) for m in members
        ):
            return _map_group(exc, members, c, depth)
        if exc.__cause__ is not None:
            return _map(exc.__cause__, c, depth + 1)
    if isinstance(exc, ConnectionError):
        return c.connection("connection.failed", "connection failed", exc)
    return c.connection("connection.failed", f"unexpected {type(exc).__name__}", exc,
                        retryable=False)


def _timeout_types() -> tuple[type[BaseException], ...]:
    # asyncio.TimeoutError and concurrent.futures.TimeoutError are the builtin TimeoutError from
    # Python 3.11 on, but distinct classes on 3.10; trio has its own.  Only loaded modules count.
    types: list[type[BaseException]] = [TimeoutError]
    for module, name in (("asyncio.exceptions", "TimeoutError"),
                         ("concurrent.futures._base", "TimeoutError"),
                         ("trio", "TooSlowError")):
        found = getattr(sys.modules.get(module), name, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            types.append(found)
    return tuple(types)


def _map_os_error(exc: OSError, c: _Context) -> TransportError | None:
    code = exc.errno
    if code is None:
        # asyncio joins the errors of several connection attempts into one message and drops the
        # errno ("Multiple exceptions: [Errno 111] ..., [Errno 111] ..."): one errno named
        # throughout still tells what happened.
        named = set(_ERRNO_IN_TEXT.findall(str(exc)))
        if len(named) == 1:
            code = int(named.pop())
    if isinstance(exc, ConnectionRefusedError) or code in _REFUSED:
        return c.connection("connection.refused", "connection refused", exc,
                            retry_after=REFUSED_RETRY_AFTER)
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)) or code in _RESET:
        return c.connection("connection.reset", "connection reset by peer", exc)
    if isinstance(exc, ConnectionAbortedError) or code in _ABORTED:
        return c.connection("connection.aborted", "connection aborted", exc)
    if code in _UNREACHABLE:
        return c.connection("connection.unreachable", "network or host unreachable", exc,
                            retry_after=UNREACHABLE_RETRY_AFTER)
    if code in _TIMED_OUT:
        return c.timeout_error("timed out", exc)
    if code in _NOT_CONNECTED:
        return c.connection("connection.closed", "socket not connected", exc)
    if code in _CLOSED_LOCALLY:
        # The socket was closed or shut down on this side: this socket will not work again.
        return c.connection("connection.closed", "socket closed locally", exc, retryable=False)
    if code in _IN_USE:
        return c.configuration("addr", "configuration.address_in_use", "address already in use",
                               exc)
    if code in _NOT_AVAILABLE:
        if c.operation == "connect":
            # connect() reports EADDRNOTAVAIL when no local port is free to connect from: ports
            # in TIME_WAIT free up, so this one is worth retrying.
            return c.resource("local_ports", "resource.exhausted", "no free local port", exc)
        return c.configuration("addr", "configuration.address_unavailable",
                               "address not available on this machine", exc)
    if code in _PERMISSION:
        return c.configuration("addr", "configuration.permission", "permission denied", exc)
    if code in _FILE_DESCRIPTORS:
        limit = _file_descriptor_limit()
        return c.resource("file_descriptors", "resource.file_descriptors",
                          "out of file descriptors", exc, current=limit, limit=limit)
    if code in _MEMORY:
        return c.resource("memory", "resource.memory", "out of buffer space or memory", exc)
    if code in _MESSAGE_SIZE:
        return c.resource("datagram", "resource.payload_too_large",
                          "message too long for the socket", exc, retryable=False)
    if isinstance(exc, BlockingIOError) or code in _AGAIN:
        return c.resource("socket_buffer", "resource.backpressure",
                          "the operation would block", exc)
    if code in _UNSUPPORTED:
        return c.configuration("addr", "configuration.invalid",
                               "address family or protocol not supported", exc)
    if code in _NO_FILE:
        what = f"cannot read {exc.filename}" if exc.filename else "file not found"
        return c.configuration("file", "configuration.invalid", what, exc)
    return None


def _file_descriptor_limit() -> int:
    # The soft RLIMIT_NOFILE is where EMFILE struck; `resource` exists on POSIX only, and reading
    # a limit is neither I/O nor a clock.
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _map_gaierror(exc: Exception, c: _Context, socket_module: Any) -> TransportError:
    def eai(*names: str) -> set[int]:
        return {v for n in names if isinstance(v := getattr(socket_module, n, None), int)}

    code = getattr(exc, "errno", None)
    if code in eai("EAI_AGAIN"):
        return c.connection("connection.dns", "temporary failure in name resolution", exc,
                            retry_after=DNS_RETRY_AFTER)
    if code in eai("EAI_SYSTEM"):
        return c.connection("connection.dns", "name resolution failed in the system", exc)
    if code in eai("EAI_SERVICE", "EAI_FAMILY", "EAI_SOCKTYPE", "EAI_BADFLAGS"):
        return c.configuration("addr", "configuration.invalid",
                               "address cannot be resolved as given", exc)
    if code in eai("EAI_MEMORY"):
        return c.resource("memory", "resource.memory", "out of memory resolving a name", exc)
    return c.connection("connection.dns", "host name could not be resolved", exc,
                        retryable=False)


def _map_ssl(exc: ssl.SSLError, c: _Context) -> TransportError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        what = f"certificate verification failed: {exc.verify_message}"
        return c.connection("connection.tls_verification", what, exc, retryable=False)
    if isinstance(exc, ssl.SSLZeroReturnError):
        return c.connection("connection.closed", "the peer closed the TLS connection", exc)
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLSyscallError)):
        return c.connection("connection.reset", "the connection ended inside TLS", exc)
    if isinstance(exc, (ssl.SSLWantReadError, ssl.SSLWantWriteError)):
        return c.resource("socket_buffer", "resource.backpressure",
                          "the TLS operation would block", exc)
    library = str(getattr(exc, "library", None) or "")
    reason = str(getattr(exc, "reason", None) or "")
    if (
        library in _TLS_CONFIG_LIBRARIES
        or reason in _TLS_CONFIG_REASONS
        or any(message in str(exc) for message in _TLS_CONFIG_MESSAGES)
    ):
        return c.configuration("tls", "configuration.invalid",
                               "TLS certificate or key cannot be used", exc)
    if any(marker in reason for marker in _TLS_CERTIFICATE_MARKERS):
        return c.connection("connection.tls_verification",
                            "a TLS certificate was refused", exc, retryable=False)
    if c.operation in _HANDSHAKE_OPERATIONS:
        return c.connection("connection.tls_handshake", "TLS handshake failed", exc,
                            retryable=False)
    return c.protocol_error(Protocol.TLS, "protocol.tls", "TLS record layer failure", exc)


def _map_library_error(exc: Exception, c: _Context) -> TransportError | None:
    h11 = sys.modules.get("h11")
    if h11 is not None and isinstance(exc, h11.ProtocolError):
        return c.protocol_error(Protocol.WEBSOCKET, "protocol.websocket",
                                "HTTP upgrade failed", exc)
    utilities = sys.modules.get("wsproto.utilities")
    if utilities is not None and isinstance(exc, utilities.ProtocolError):
        return c.protocol_error(Protocol.WEBSOCKET, "protocol.websocket",
                                "WebSocket protocol error", exc)
    frames = sys.modules.get("wsproto.frame_protocol")
    if frames is not None and isinstance(exc, frames.ParseFailed):
        mapped = map_websocket_close(
            int(exc.code), str(exc), operation=c.operation, session_id=c.session_id
        )
        if mapped is not None:
            return mapped
    quic = sys.modules.get("aioquic.quic.connection")
    if quic is not None and isinstance(exc, quic.QuicConnectionError):
        return _quic_or_closed(
            exc.error_code, exc.reason_phrase, exc.frame_type, exc, c
        )
    tls = sys.modules.get("aioquic.tls")
    if tls is not None and isinstance(exc, tls.Alert):
        return _quic_or_closed(_CRYPTO_ERROR + int(exc.description), str(exc), _CRYPTO_FRAME,
                               exc, c)
    trio = sys.modules.get("trio")
    if trio is not None:
        if isinstance(exc, trio.ClosedResourceError):
            return c.connection("connection.closed", "the stream was closed locally", exc,
                                retryable=False)
        if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is None:
            return c.connection("connection.reset", "the stream broke", exc)
    return None


def _quic_or_closed(code: int, reason: str, frame_type: int | None, exc: BaseException,
                    c: _Context) -> TransportError:
    mapped = map_quic_close(code, reason, frame_type, by_peer=False, operation=c.operation,
                            session_id=c.session_id)
    return mapped or c.connection("connection.closed", "the QUIC connection closed", exc,
                                  retryable=False)


def _map_group(exc: BaseException, members: Sequence[BaseException], c: _Context,
               depth: int) -> TransportError:
    mapped = [_map(m, c, depth + 1) for m in members]
    codes = {m.error_code for m in mapped}
    if len(codes) == 1:
        return mapped[0]
    return c.connection("connection.failed", "several failures", exc,
                        retryable=all(m.retryable for m in mapped))


# --- WebSocket -------------------------------------------------------------------------------

_WS_NORMAL = frozenset({1000, 1001, 1005})
_WS_NAMES = {
    1000: "normal closure", 1001: "going away", 1002: "protocol error",
    1003: "unsupported data", 1005: "no status", 1006: "abnormal closure",
    1007: "invalid payload data", 1008: "policy violation", 1009: "message too big",
    1010: "mandatory extension", 1011: "internal error", 1012: "service restart",
    1013: "try again later", 1014: "bad gateway", 1015: "TLS handshake failure",
}


def map_websocket_close(
    code: int | None,
    reason: str = "",
    *,
    by_peer: bool = True,
    operation: str | None = None,
    session_id: int | str | None = None,
) -> TransportError | None:
    """Return the error a WebSocket close code stands for, or ``None`` for a normal close.

    Pass the code of the Close frame received (or sent, when our side found the fault), or 1006
    when the stream ended without one (wsproto reports that as ``CloseConnection(1006)``).

    ==========================  =============================================================
    code                        result
    ==========================  =============================================================
    1000, 1001, 1005, ``None``  ``None``: a normal close (1005 is a Close frame without code)
    1002, 1003, 1007, 1010,     :class:`ProtocolError` ``protocol.websocket`` (codes a peer
    other codes below 3000      must not send break RFC 6455 too)
    and from 5000 on
    1008                        :class:`ProtocolError` ``protocol.violation`` (the peer's policy,
                                not RFC 6455, was broken)
    1009                        :class:`ProtocolError` ``protocol.frame_too_large``
    1006                        ``connection.reset``, retryable
    1011, 1014                  ``connection.failed``, retryable (a fault on the server)
    1012                        ``connection.closed``, retryable after :data:`BUSY_RETRY_AFTER`
    1013                        ``connection.refused_by_server``, retryable after
                                :data:`BUSY_RETRY_AFTER`
    1015                        ``connection.tls_handshake``, not retryable
    3000-4999                   ``connection.closed``, not retryable (application codes: what
                                they mean is the application's business, so msgtrans cannot
                                know that a retry would help)
    ==========================  =============================================================

    Args:
        code: the close code, or ``None`` when the Close frame carried none.
        reason: the close reason text, kept in the error message.  Default empty.
        by_peer: whether the peer sent the code (only changes the wording).  Default ``True``.
        operation: the operation to record on the error.  Default: none.
        session_id: the session to record on the error.  Default: none.

    Returns:
        the error, or ``None`` for a normal close.
    """
    if code is None or code in _WS_NORMAL:
        return None
    who = "peer" if by_peer else "we"
    name = _WS_NAMES.get(code, "application code" if 3000 <= code < 5000 else "invalid code")
    what = f"{who} closed with {code} {name}"
    if reason:
        what = f"{what}: {reason}"
    c = _Context(Protocol.WEBSOCKET, operation, session_id, None)
    if code == 1009:
        return c.protocol_error(Protocol.WEBSOCKET, "protocol.frame_too_large", what, None)
    if code == 1006:
        return c.connection("connection.reset", what, None)
    if code in (1011, 1014):
        return c.connection("connection.failed", what, None)
    if code == 1012:
        return c.connection("connection.closed", what, None, retry_after=BUSY_RETRY_AFTER)
    if code == 1013:
        return c.connection("connection.refused_by_server", what, None,
                            retry_after=BUSY_RETRY_AFTER)
    if code == 1015:
        return c.connection("connection.tls_handshake", what, None, retryable=False)
    if 3000 <= code < 5000:
        return c.connection("connection.closed", what, None, retryable=False)
    if code == 1008:
        return c.protocol_error(Protocol.WEBSOCKET, "protocol.violation", what, None)
    # 1002, 1003, 1007, 1010, and every reserved or out-of-range code, which a peer must not
    # send.
    return c.protocol_error(Protocol.WEBSOCKET, "protocol.websocket", what, None)


def map_websocket_reject(
    status_code: int,
    reason: str = "",
    *,
    retry_after: float | None = None,
    operation: str | None = None,
    session_id: int | str | None = None,
) -> TransportError:
    """Return the error for a WebSocket upgrade the server answered with *status_code*.

    This is wsproto's ``RejectConnection`` event on the client: the server answered the upgrade
    request with an HTTP status other than 101.

    * 429 and 503: ``connection.refused_by_server``, retryable after *retry_after* (the
      ``Retry-After`` header, if any) or :data:`BUSY_RETRY_AFTER`;
    * other 5xx: ``connection.handshake``, retryable (a fault on the server side);
    * anything else (401, 403, 404, 426, redirects...): ``connection.handshake``, not retryable.

    Args:
        status_code: the HTTP status of the response.
        reason: text to keep in the message (the reason phrase or body).  Default empty.
        retry_after: seconds from the response's ``Retry-After`` header.  Default: none.
        operation: the operation to record on the error.  Default: none.
        session_id: the session to record on the error.  Default: none.
    """
    what = f"server refused the WebSocket upgrade with HTTP {status_code}"
    if reason:
        what = f"{what}: {reason}"
    c = _Context(Protocol.WEBSOCKET, operation, session_id, None)
    if status_code in (429, 503):
        return c.connection(
            "connection.refused_by_server", what, None,
            retry_after=retry_after if retry_after is not None else BUSY_RETRY_AFTER,
        )
    return c.connection("connection.handshake", what, None, retryable=500 <= status_code < 600,
                        retry_after=retry_after)


# --- QUIC ------------------------------------------------------------------------------------

# RFC 9000 section 20.1 transport error codes (aioquic.quic.packet.QuicErrorCode); spelled out
# so that importing this module does not import aioquic.
_NO_ERROR = 0x0
_INTERNAL_ERROR = 0x1
_CONNECTION_REFUSED = 0x2
_INVALID_TOKEN = 0xB
_APPLICATION_ERROR = 0xC
_AEAD_LIMIT_REACHED = 0xF
_NO_VIABLE_PATH = 0x10
_VERSION_NEGOTIATION_ERROR = 0x11
_CRYPTO_ERROR = 0x100
_CRYPTO_FRAME = 0x06
_QUIC_PROTOCOL_ERRORS = {
    0x3: "FLOW_CONTROL_ERROR", 0x4: "STREAM_LIMIT_ERROR", 0x5: "STREAM_STATE_ERROR",
    0x6: "FINAL_SIZE_ERROR", 0x7: "FRAME_ENCODING_ERROR", 0x8: "TRANSPORT_PARAMETER_ERROR",
    0x9: "CONNECTION_ID_LIMIT_ERROR", 0xA: "PROTOCOL_VIOLATION", 0xD: "CRYPTO_BUFFER_EXCEEDED",
    0xE: "KEY_UPDATE_ERROR",
}
# TLS alerts (RFC 8446 section 6) about a certificate: the verification failed on one side.
_CERTIFICATE_ALERTS = frozenset({42, 43, 44, 45, 46, 48, 49, 113, 116})
_ALERT_NAMES = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
    40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate",
    44: "certificate_revoked", 45: "certificate_expired", 46: "certificate_unknown",
    47: "illegal_parameter", 48: "unknown_ca", 49: "access_denied", 50: "decode_error",
    51: "decrypt_error", 70: "protocol_version", 71: "insufficient_security",
    80: "internal_error", 86: "inappropriate_fallback", 90: "user_canceled",
    109: "missing_extension", 110: "unsupported_extension", 112: "unrecognized_name",
    113: "bad_certificate_status_response", 115: "unknown_psk_identity",
    116: "certificate_required", 120: "no_application_protocol",
}
# The reason phrases aioquic gives the ConnectionTerminated events it makes up itself (not sent
# by the peer): they are the only way to tell its idle timeout from other internal errors.
_AIOQUIC_IDLE_TIMEOUT = "Idle timeout"
_AIOQUIC_NO_COMMON_VERSION = "Could not find a common protocol version"


def map_quic_close(
    error_code: int,
    reason: str = "",
    frame_type: int | None = None,
    *,
    by_peer: bool,
    operation: str | None = None,
    session_id: int | str | None = None,
    idle_timeout: float | None = None,
) -> TransportError | None:
    """Return the error a QUIC close stands for, or ``None`` for a normal close.

    Pass the fields of aioquic's ``ConnectionTerminated`` event.  aioquic sets *frame_type* to
    ``None`` for an application close (``CONNECTION_CLOSE`` of type 0x1d, whose code is the
    application's) and to a frame type for a transport close (type 0x1c, code from RFC 9000
    section 20.1), so the two code spaces are told apart by it.

    * application close: code 0 is a normal close (``None``); any other code is
      ``connection.closed``, not retryable (its meaning is the application's, so msgtrans cannot
      know that a retry would help);
    * ``NO_ERROR``: ``None``;
    * aioquic's own idle timeout (``INTERNAL_ERROR``, reason ``"Idle timeout"``, not by the
      peer): :class:`TransportTimeoutError`, ``timeout.idle`` -- or ``timeout.connect`` /
      ``timeout.handshake`` when *operation* says the handshake was still under way;
    * ``CONNECTION_REFUSED``: ``connection.refused_by_server``, retryable after
      :data:`BUSY_RETRY_AFTER`;
    * ``CRYPTO_ERROR`` (0x100 + TLS alert): certificate alerts (42-46, 48, 49, 113, 116) are
      ``connection.tls_verification``, the others ``connection.tls_handshake``; neither is
      retryable (alert 47 is ``illegal_parameter``, not about certificates);
    * version negotiation failures: ``connection.handshake``, not retryable;
    * ``APPLICATION_ERROR`` (an application close during the handshake, which hides the code):
      ``connection.handshake``, retryable;
    * ``FLOW_CONTROL_ERROR``, ``STREAM_*``, ``FRAME_ENCODING_ERROR``,
      ``TRANSPORT_PARAMETER_ERROR``, ``PROTOCOL_VIOLATION`` and the other protocol faults:
      :class:`ProtocolError` ``protocol.quic``;
    * ``NO_VIABLE_PATH``: ``connection.unreachable``; ``AEAD_LIMIT_REACHED``:
      ``connection.reset``; ``INTERNAL_ERROR``, ``INVALID_TOKEN`` and codes RFC 9000 does not
      define: ``connection.failed`` -- all retryable.

    Args:
        error_code: ``ConnectionTerminated.error_code``.
        reason: ``ConnectionTerminated.reason_phrase``.  Default empty.
        frame_type: ``ConnectionTerminated.frame_type``.  Default ``None`` (application close).
        by_peer: ``True`` when the peer closed the connection, ``False`` when our side did
            (including aioquic's own timers).
        operation: the operation to record on the error; ``"connect"`` or ``"handshake"`` makes
            an idle timeout a connect or handshake timeout.  Default: none.
        session_id: the session to record on the error.  Default: none.
        idle_timeout: the configured idle timeout in seconds, recorded as the timeout's
            duration (``0.0`` when not given).
    """
    c = _Context(Protocol.QUIC, operation, session_id, None)
    who = "peer" if by_peer else "we"
    suffix = f": {reason}" if reason else ""
    if frame_type is None:
        if error_code == _NO_ERROR:
            return None
        return c.connection(
            "connection.closed", f"{who} closed with application code {error_code}{suffix}",
            None, retryable=False,
        )
    if error_code == _NO_ERROR:
        return None
    if not by_peer and error_code == _INTERNAL_ERROR:
        if reason == _AIOQUIC_IDLE_TIMEOUT:
            return _Context(Protocol.QUIC, operation or "idle", session_id, idle_timeout
                            ).timeout_error("the connection timed out", None)
        if reason == _AIOQUIC_NO_COMMON_VERSION:
            return c.connection("connection.handshake",
                                "no QUIC version in common with the server", None,
                                retryable=False)
    what = f"{who} closed with error 0x{error_code:x}"
    if _CRYPTO_ERROR <= error_code < _CRYPTO_ERROR + 0x100:
        alert = error_code - _CRYPTO_ERROR
        name = _ALERT_NAMES.get(alert, "unknown alert")
        what = f"{what} (TLS alert {alert} {name}){suffix}"
        if alert in _CERTIFICATE_ALERTS:
            return c.connection("connection.tls_verification", what, None, retryable=False)
        return c.connection("connection.tls_handshake", what, None, retryable=False)
    if error_code in _QUIC_PROTOCOL_ERRORS:
        return c.protocol_error(Protocol.QUIC, "protocol.quic",
                                f"{what} {_QUIC_PROTOCOL_ERRORS[error_code]}{suffix}", None)
    what += suffix
    if error_code == _CONNECTION_REFUSED:
        return c.connection("connection.refused_by_server", what, None,
                            retry_after=BUSY_RETRY_AFTER)
    if error_code == _VERSION_NEGOTIATION_ERROR:
        return c.connection("connection.handshake", what, None, retryable=False)
    if error_code == _APPLICATION_ERROR:
        return c.connection("connection.handshake", what, None)
    if error_code == _NO_VIABLE_PATH:
        return c.connection("connection.unreachable", what, None,
                            retry_after=UNREACHABLE_RETRY_AFTER)
    if error_code == _AEAD_LIMIT_REACHED:
        return c.connection("connection.reset", what, None)
    # INTERNAL_ERROR, INVALID_TOKEN, and codes from later RFCs or extensions: the connection is
    # gone for a reason a new one need not share.
    return c.connection("connection.failed", what, None)
