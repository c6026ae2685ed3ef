"""The one error type of msgtrans: :class:`TransportError` and its five kinds.

Every failure that msgtrans reports is a :class:`TransportError`.  The five kinds of the plan are
subclasses, each carrying the plan's fields:

=================================  ====================================  ===================
class                              fields                                also a
=================================  ====================================  ===================
:class:`TransportConnectionError`  ``reason``, ``retryable``             ``ConnectionError``
:class:`ProtocolError`             ``protocol``, ``reason``              --
:class:`ConfigurationError`        ``field``, ``reason``                 ``ValueError``
:class:`ResourceError`             ``resource``, ``current``, ``limit``  --
:class:`TransportTimeoutError`     ``operation``, ``duration``           ``TimeoutError``
=================================  ====================================  ===================

Each error has a stable :attr:`~TransportError.error_code` drawn from :data:`ERROR_CODES` (the docs
list them all), says whether retrying can help (:meth:`~TransportError.is_retryable`) and after how
long (:meth:`~TransportError.retry_delay`), and can be enriched with the session and operation it
happened in (:meth:`~TransportError.with_session`, :meth:`~TransportError.with_operation`).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

__all__ = [
    "ERROR_CODES",
    "ConfigurationError",
    "ErrorKind",
    "Protocol",
    "ProtocolError",
    "ResourceError",
    "TransportConnectionError",
    "TransportError",
    "TransportTimeoutError",
]


class Protocol(str, Enum):
    """The layer an error or a connection belongs to.

    ``WIRE`` is the msgtrans packet format itself (shared by every transport); the others are the
    transports and the TLS layer under ``tls://`` and ``wss://``.
    """

    WIRE = "wire"
    TCP = "tcp"
    TLS = "tls"
    WEBSOCKET = "websocket"
    QUIC = "quic"

    def __str__(self) -> str:
        return self.value


class ErrorKind(str, Enum):
    """The five kinds of :class:`TransportError` named by the plan."""

    CONNECTION = "connection"
    PROTOCOL = "protocol"
    CONFIGURATION = "configuration"
    RESOURCE = "resource"
    TIMEOUT = "timeout"

    def __str__(self) -> str:
        return self.value


#: Every error code msgtrans produces, with what it means.  Codes are stable: they are part of the
#: public API (logs, metrics labels, alerting rules) and are only ever added, never renamed.
ERROR_CODES: dict[str, str] = {
    # connection
    "connection.failed": "the connection failed for a reason not listed below",
    "connection.refused": "the peer refused the connection (nothing listening there)",
    "connection.reset": "the peer reset or abruptly dropped the connection",
    "connection.aborted": "the connection was aborted locally",
    "connection.closed": "the connection is closed; no more messages can pass",
    "connection.unreachable": "the network or host cannot be reached",
    "connection.dns": "the host name could not be resolved",
    "connection.tls_verification": (
        "a TLS certificate or host name failed verification (the peer's by us, or ours by the "
        "peer)"
    ),
    "connection.tls_handshake": "the TLS handshake failed",
    "connection.handshake": "the WebSocket or QUIC handshake was refused by the peer",
    "connection.refused_by_server": "the server refused the session (for example: at capacity)",
    # protocol
    "protocol.violation": "the peer broke the protocol",
    "protocol.bad_version": "a packet carried a wire format version other than 1",
    "protocol.bad_compression": "a packet named an unknown compression method",
    "protocol.bad_packet_type": "a packet named an unknown packet type",
    "protocol.bad_length": "a packet or frame length was inconsistent",
    "protocol.frame_too_large": "a packet, frame or message exceeded the receive limit",
    "protocol.decompression": "a compressed payload could not be decompressed",
    "protocol.unexpected_eof": "the stream ended in the middle of a packet",
    "protocol.tls": "the TLS layer reported a protocol failure",
    "protocol.websocket": "the WebSocket peer broke RFC 6455 or the HTTP upgrade",
    "protocol.quic": "the QUIC peer broke RFC 9000 or the msgtrans stream mapping",
    "protocol.text_frame": "a WebSocket text frame arrived where only binary frames are allowed",
    "protocol.backplane": "a message on the backplane was not a msgtrans envelope",
    # configuration
    "configuration.invalid": "a setting has an invalid value",
    "configuration.missing_dependency": "an optional package needed by a setting is not installed",
    "configuration.address_in_use": "the address to listen on is already in use",
    "configuration.address_unavailable": "the address to bind is not on this machine",
    "configuration.permission": "the operating system refused the operation (privileged port?)",
    # resource
    "resource.exhausted": "a limit on a resource was reached",
    "resource.memory": "the memory limit was reached",
    "resource.payload_too_large": "a message to send exceeds the payload limit",
    "resource.file_descriptors": "the process ran out of file descriptors",
    "resource.backpressure": "the send queue is full",
    "resource.pool_exhausted": "no pooled connection became available",
    # timeout
    "timeout.elapsed": "an operation did not complete in time",
    "timeout.connect": "connecting did not complete in time",
    "timeout.request": "no response arrived in time",
    "timeout.handshake": "a handshake did not complete in time",
    "timeout.idle": "the connection was idle for too long",
    "timeout.keepalive": "the peer did not answer a keepalive ping in time",
    "timeout.close": "the close handshake did not complete in time",
    "timeout.send": "a send found no room in the send queue in time (the peer reads nothing)",
    "timeout.first_packet": "a server connection sent no complete packet in time after connecting",
}

_E = TypeVar("_E", bound="TransportError")


class TransportError(Exception):
    """Base class of every error msgtrans raises.

    Catch this to handle any transport failure.  Subclasses are the five kinds of the plan; use
    :attr:`kind` or ``isinstance`` to tell them apart and :attr:`error_code` for a stable,
    machine-readable code.

    Attributes:
        session_id: the session the error happened in, once :meth:`with_session` added it.
        operation: the operation that failed (``"connect"``, ``"send"``...), once
            :meth:`with_operation` added it.
    """

    kind: ErrorKind
    _default_code: str = "connection.failed"
    _default_retryable: bool = False
    _default_delay: float | None = None

    def __init__(
        self,
        reason: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        session_id: int | str | None = None,
        operation: str | None = None,
    ) -> None:
        code = code or self._default_code
        if code not in ERROR_CODES:
            raise ValueError(f"unknown msgtrans error code {code!r}")
        self.reason = reason
        self._code = code
        self._retryable = self._default_retryable if retryable is None else retryable
        self._retry_after = retry_after
        self.session_id = session_id
        self.operation = operation
        super().__init__(self._render())

    # --- what the plan asks of every error -------------------------------------------------

    @property
    def error_code(self) -> str:
        """The stable short code of this error, one of :data:`ERROR_CODES`."""
        return self._code

    @property
    def retryable(self) -> bool:
        """Whether trying the same operation again may succeed."""
        return self._retryable

    def is_retryable(self) -> bool:
        """Return whether trying the same operation again may succeed."""
        return self._retryable

    def retry_delay(self) -> float | None:
        """Seconds to wait before retrying, or ``None`` when retrying will not help."""
        if not self._retryable:
            return None
        if self._retry_after is not None:
            return self._retry_after
        return self._default_delay

    def with_session(self: _E, session_id: int | str) -> _E:
        """Return a copy of this error that names the session it happened in."""
        return self._copy(session_id=session_id)

    def with_operation(self: _E, operation: str) -> _E:
        """Return a copy of this error that names the operation that failed."""
        return self._copy(operation=operation)

    # --- plumbing ------------------------------------------------------------------------------

    def _detail(self) -> str:
        return self.reason

    def _render(self) -> str:
        context = []
        if self.operation is not None:
            context.append(f"operation {self.operation}")
        if self.session_id is not None:
            context.append(f"session {self.session_id}")
        suffix = f" ({', '.join(context)})" if context else ""
        return f"[{self._code}] {self._detail()}{suffix}"

    def _copy(self: _E, **changes: Any) -> _E:
        new = self.__class__.__new__(self.__class__)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        new.args = (new._render(),)
        new.__cause__ = self.__cause__
        new.__context__ = self.__context__
        new.__traceback__ = self.__traceback__
        return new

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.__class__, dict(self.__dict__)))


def _rebuild(cls: type[_E], state: dict[str, Any]) -> _E:
    new = cls.__new__(cls)
    new.__dict__.update(state)
    new.args = (new._render(),)
    return new


class TransportConnectionError(TransportError, ConnectionError):
    """The connection could not be made, or broke (the plan's ``Connection { reason, retryable }``).

    Retryable by default (a server restarting, a reset); verification failures are not.
    Also an instance of the builtin ``ConnectionError``.
    """

    kind = ErrorKind.CONNECTION
    _default_code = "connection.failed"
    _default_retryable = True
    _default_delay = 1.0


class ProtocolError(TransportError):
    """The peer (or the local side) broke a protocol (the plan's ``Protocol { protocol, reason }``).

    Never retryable: sending the same bytes again fails the same way.

    Attributes:
        protocol: the layer that was broken, a :class:`Protocol`.
    """

    kind = ErrorKind.PROTOCOL
    _default_code = "protocol.violation"

    def __init__(self, protocol: Protocol | str, reason: str, **kwargs: Any) -> None:
        self.protocol = Protocol(protocol)
        super().__init__(reason, **kwargs)

    def _detail(self) -> str:
        return f"{self.protocol.value}: {self.reason}"


class ConfigurationError(TransportError, ValueError):
    """A setting is invalid (the plan's ``Configuration { field, reason }``).

    The message names the field and what would be valid.  Never retryable.  Also an instance of
    the builtin ``ValueError``.

    Attributes:
        field: the name of the setting that was wrong (``"port"``, ``"url"``...).
    """

    kind = ErrorKind.CONFIGURATION
    _default_code = "configuration.invalid"

    def __init__(self, field: str, reason: str, **kwargs: Any) -> None:
        self.field = field
        super().__init__(reason, **kwargs)

    def _detail(self) -> str:
        return f"{self.field}: {self.reason}"


class ResourceError(TransportError):
    """A limit on a resource was reached (the plan's ``Resource { resource, current, limit }``).

    Retryable by default (the resource may free up); a message over the payload limit is not.

    Attributes:
        resource: what ran out (``"memory"``, ``"payload"``, ``"sessions"``...).
        current: how much was in use or asked for.
        limit: the configured limit.
    """

    kind = ErrorKind.RESOURCE
    _default_code = "resource.exhausted"
    _default_retryable = True
    _default_delay = 0.1

    def __init__(
        self, resource: str, current: int, limit: int, reason: str | None = None, **kwargs: Any
    ) -> None:
        self.resource = resource
        self.current = current
        self.limit = limit
        super().__init__(reason or f"{resource} limit reached", **kwargs)

    def _detail(self) -> str:
        return f"{self.reason} ({self.resource}: {self.current}, limit {self.limit})"


class TransportTimeoutError(TransportError, TimeoutError):
    """An operation did not finish in time (the plan's ``Timeout { operation, duration }``).

    Retryable by default.  Also an instance of the builtin ``TimeoutError``.

    Attributes:
        duration: the time limit that elapsed, in seconds.
    """

    kind = ErrorKind.TIMEOUT
    _default_code = "timeout.elapsed"
    _default_retryable = True
    _default_delay = 0.5

    def __init__(self, operation: str, duration: float, reason: str | None = None,
                 **kwargs: Any) -> None:
        self.duration = float(duration)
        kwargs.setdefault("operation", operation)
        super().__init__(reason or f"{operation} did not complete within {duration:g} s", **kwargs)
