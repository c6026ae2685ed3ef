"""TLS as a sans-IO layer over any stream machine (``tls://`` and ``wss://``).

:class:`TlsMachine` wraps a stream machine (a :class:`~msgtrans.core.tcp.TcpMachine`, or a
WebSocket machine for ``wss://``) and runs the standard library's TLS in memory
(:class:`ssl.MemoryBIO` and :class:`ssl.SSLObject`): ciphertext goes in and out of the wrapper,
plaintext goes between the wrapper and the inner machine.  The inner machine is started only once
the TLS handshake is complete; packets sent before that wait in the inner machine.

Closing: when the inner machine shuts its write side, the wrapper sends TLS ``close_notify``
and then shuts its own.  The peer's ``close_notify`` is an EOF for the inner machine.

A raw EOF without ``close_notify`` (a *truncation*) is accepted as an EOF when it falls between
TLS records: msgtrans packets are self-delimiting, so the inner machine still refuses an EOF
inside a packet (``protocol.unexpected_eof``) and a cut at a packet boundary loses no part of a
packet.  An attacker able to cut the connection could also reset it, so a clean-looking EOF tells
the application nothing it could rely on in either case.  An EOF inside a TLS record is a
protocol error.

:func:`client_context` and :func:`server_context` build suitable :class:`ssl.SSLContext`
objects.  Clients verify the certificate and the host name unless told not to.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Iterable, Sequence
from typing import cast

from .errors import (
    ConfigurationError,
    Protocol,
    ProtocolError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from .events import CloseStarted, ConnectionClosed, ConnectionEstablished, Event
from .machine import MachineState, StreamMachine
from .packet import Buffer, Packet

__all__ = ["TlsMachine", "client_context", "server_context"]

_IDLE = MachineState.IDLE
_HANDSHAKING = MachineState.HANDSHAKING
_CLOSED = MachineState.CLOSED

# OpenSSL reasons for a peer's alert about our certificate ("TLSV1_ALERT_UNKNOWN_CA",
# "SSLV3_ALERT_BAD_CERTIFICATE", "..._CERTIFICATE_EXPIRED"...).
_CERTIFICATE_ALERTS = ("CERTIFICATE", "UNKNOWN_CA", "ACCESS_DENIED")

# The 5-byte TLS record header: type u8, version u16, length u16.
_RECORD_HEADER = 5


class TlsMachine(StreamMachine):
    """TLS over the stream machine *inner*, in memory.

    Args:
        inner: the machine that speaks the protocol inside TLS (not started yet); it decides
            :attr:`is_client` and :attr:`protocol`.
        context: the TLS settings, for example from :func:`client_context` or
            :func:`server_context`.
        server_hostname: the name the client expects in the server's certificate and sends as
            SNI (required by a client context that checks host names; not allowed on a
            server).
        handshake_timeout: seconds from :meth:`start` for the TLS handshake to complete
            (default 10).

    Attributes:
        inner: the wrapped machine.

    The events are the inner machine's, with ``ConnectionEstablished`` completed by the TLS
    details (``tls=True``, ``tls_version``, ``cipher``, ``alpn``), plus the TLS layer's own
    failures: a certificate that fails verification, ours by the peer's alert or the peer's by
    us (``connection.tls_verification``), another handshake failure
    (``connection.tls_handshake``), a handshake timeout (``timeout.handshake``), and broken
    records after the handshake (``protocol.tls``).

    Raises:
        ConfigurationError: *server_hostname* is missing or not allowed, or
            *handshake_timeout* is not positive.
    """

    def __init__(
        self,
        inner: StreamMachine,
        context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        super().__init__(is_client=inner.is_client)
        if not handshake_timeout > 0:
            raise ConfigurationError(
                "handshake_timeout",
                f"must be a positive number of seconds, got {handshake_timeout}",
            )
        if inner.is_client and context.check_hostname and not server_hostname:
            # The ssl module would go ahead and verify the chain but not the name: refuse.
            raise ConfigurationError(
                "server_hostname",
                "is required to verify the server's host name (or turn check_hostname off)",
            )
        if not inner.is_client and server_hostname is not None:
            raise ConfigurationError(
                "server_hostname", "is for clients only; a server must not set it"
            )
        self.inner = inner
        self.protocol = inner.protocol
        self.going_away_code = inner.going_away_code
        self.handshake_timeout = float(handshake_timeout)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        try:
            self._ssl = context.wrap_bio(
                self._incoming,
                self._outgoing,
                server_side=not inner.is_client,
                server_hostname=server_hostname,
            )
        except ssl.SSLError as exc:  # a server context for a client or the other way round
            raise ConfigurationError("context", str(exc)) from exc
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                "server_hostname", f"{server_hostname!r} cannot be used: {exc}"
            ) from exc
        self._handshake_done = False
        self._handshake_deadline: float | None = None
        self._established = False  # inner's ConnectionEstablished seen (and completed)
        self._failed = False  # the TLS layer itself ended the connection
        self._peer_closed = False  # close_notify received
        self._notify_sent = False  # close_notify queued
        # Where the raw stream is in the TLS record layer, to tell a cut between records
        # from a cut inside one at EOF: the bytes of a record header seen so far, and the
        # bytes of the current record still to come.
        self._record_head = b""
        self._record_left = 0

    # --- what the TLS layer negotiated ---------------------------------------------------------

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The :class:`ssl.SSLObject` (peer certificate, session, channel binding...)."""
        return self._ssl

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version (``"TLSv1.3"``), or ``None`` before the handshake."""
        return self._ssl.version() if self._handshake_done else None

    @property
    def cipher(self) -> str | None:
        """The negotiated cipher suite, or ``None`` before the handshake."""
        cipher = self._ssl.cipher() if self._handshake_done else None
        return cipher[0] if cipher else None

    @property
    def alpn_protocol(self) -> str | None:
        """The negotiated ALPN protocol, or ``None`` (none offered, none agreed, no handshake)."""
        return self._ssl.selected_alpn_protocol() if self._handshake_done else None

    # --- the machine interface -----------------------------------------------------------------

    def events(self) -> list[Event]:
        """Return the inner machine's events and the TLS layer's own, oldest first."""
        self._collect()
        return super().events()

    @property
    def has_events(self) -> bool:
        """Whether :meth:`events` would return anything, the inner machine's included."""
        return bool(self._events) or self.inner.has_events

    def start(self, now: float) -> None:
        """Begin the TLS handshake (a client queues its ClientHello); the inner machine starts
        when it completes.  Calling it again does nothing."""
        if self.state is not _IDLE:
            return
        self.state = _HANDSHAKING
        self._handshake_deadline = now + self.handshake_timeout
        self._do_handshake(now)

    def send_packet(self, packet: Packet) -> None:
        """Queue *packet* in the inner machine (before the handshake completes, it waits there).

        Raises:
            TransportConnectionError: the connection is closed (code ``connection.closed``),
                or the inner machine refuses the packet.
            ResourceError: as the inner machine raises it for an oversize packet.
        """
        if self._failed:
            raise self._closed_error()
        self.inner.send_packet(packet)

    def send_packets(self, packets: Iterable[Packet]) -> None:
        """Queue several packets in the inner machine at once.  Raises as :meth:`send_packet`."""
        if self._failed:
            raise self._closed_error()
        self.inner.send_packets(packets)

    def receive_data(self, data: Buffer, now: float) -> None:
        """Feed ciphertext read from the socket; ``b""`` means the socket reached EOF.

        Never raises on bad input: TLS failures are reported as events and end the connection.
        """
        if self.state is _CLOSED or self._peer_closed:
            return
        if not data:
            self._receive_eof(now)
            return
        self._track_records(data)
        self._incoming.write(data)
        if not self._handshake_done:
            self._do_handshake(now)
            if not self._handshake_done:
                return
        self._read_plaintext(now)

    def buffer_updated(self, nbytes: int, now: float) -> None:
        """Account for *nbytes* of ciphertext received into the last :meth:`get_buffer`."""
        if nbytes and self._scratch is not None:
            with memoryview(self._scratch) as view:
                self.receive_data(view[:nbytes], now)

    def data_to_send(self) -> list[Buffer]:
        """Encrypt what the inner machine has to send and return the ciphertext to write.

        Once the inner machine shut its write side, ``close_notify`` follows its last bytes and
        :attr:`write_closed` is set.
        """
        if self._handshake_done and not self._failed and not self._notify_sent:
            inner = self.inner
            parts = inner.data_to_send()
            if parts:
                write = self._ssl.write
                try:
                    for part in parts:
                        write(part)
                except ssl.SSLError as exc:
                    self._protocol_failure(exc)
                    return self._flush()
            if inner.write_closed:
                self._send_close_notify()
        return self._flush()

    def close(self, code: int | None = None, reason: str = "") -> None:
        """Close gracefully: the inner machine's close, then ``close_notify`` and FIN.

        Before the TLS handshake completes there is nothing to close gracefully: the handshake
        is abandoned (``CloseStarted`` then ``ConnectionClosed(clean=False)``, no error) and the
        write side shut.  Closing a closed connection does nothing.
        """
        if self.state is _CLOSED:
            return
        if self._handshake_done:
            self.inner.close(code, reason)
            self._collect()
            return
        self._failed = True
        self.state = _CLOSED
        self.write_closed = True
        self._events.append(CloseStarted(code, reason, by_peer=False))
        self._events.append(ConnectionClosed(code, reason, clean=False))

    def next_deadline(self) -> float | None:
        """Return the handshake deadline during the TLS handshake, then the inner machine's."""
        if self._failed:
            return None
        if self._handshake_done:
            return self.inner.next_deadline()
        if self.state is _HANDSHAKING:
            return self._handshake_deadline
        return None

    def handle_timer(self, now: float) -> None:
        """Fire the handshake timeout, or pass *now* on to the inner machine's timers."""
        if self._failed:
            return
        if self._handshake_done:
            self.inner.handle_timer(now)
            self._collect()
            return
        deadline = self._handshake_deadline
        if self.state is _HANDSHAKING and deadline is not None and now >= deadline:
            self._abort(
                TransportTimeoutError(
                    "TLS handshake",
                    self.handshake_timeout,
                    f"the TLS handshake did not complete within {self.handshake_timeout:g} s",
                    code="timeout.handshake",
                )
            )

    def connection_lost(self, now: float, error: TransportError | None = None) -> None:
        """Tell the machine the socket broke; the inner machine reports it once it is running."""
        if self.state is _CLOSED:
            return
        if self._handshake_done:
            self.inner.connection_lost(now, error)
            self._collect()
            return
        super().connection_lost(now, error)
        self._failed = True

    # --- internals -------------------------------------------------------------------------

    def _flush(self) -> list[Buffer]:
        outgoing = self._outgoing
        if outgoing.pending:
            return [outgoing.read()]
        return []

    def _collect(self) -> None:
        """Move the inner machine's events into ours, completing its ConnectionEstablished."""
        events = self.inner.events()
        if self._failed:
            # The TLS layer already reported the end; nothing may follow ConnectionClosed.
            return
        if events:
            if not self._established:
                events = [self._translate(event) for event in events]
            self._events += events
        if self._handshake_done:
            self.state = self.inner.state

    def _translate(self, event: Event) -> Event:
        if isinstance(event, ConnectionEstablished):
            self._established = True
            return dataclasses.replace(
                event,
                tls=True,
                tls_version=self.tls_version,
                cipher=self.cipher,
                alpn=self.alpn_protocol or event.alpn,
            )
        return event

    def _do_handshake(self, now: float) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLCertVerificationError as exc:
            error = TransportConnectionError(
                f"TLS certificate verification failed: {exc.verify_message or _describe(exc)}",
                code="connection.tls_verification",
                retryable=False,
                operation="handshake",
            )
            error.__cause__ = exc
            self._abort(error)
            return
        except ssl.SSLError as exc:
            reason = str(getattr(exc, "reason", None) or "")
            if any(marker in reason for marker in _CERTIFICATE_ALERTS):
                # The peer's alert says it refused our certificate: a verification failure
                # too, seen from the other side (the same rule as errormap).
                code = "connection.tls_verification"
            else:
                code = "connection.tls_handshake"
            error = TransportConnectionError(
                f"the TLS handshake failed: {_describe(exc)}", code=code, retryable=False,
                operation="handshake",
            )
            error.__cause__ = exc
            self._abort(error)
            return
        self._handshake_done = True
        self._handshake_deadline = None
        self.inner.start(now)
        self._collect()

    def _read_plaintext(self, now: float) -> None:
        inner = self.inner
        read = self._ssl.read
        # Decrypt straight into the inner machine's receive buffer: with a TcpMachine inside,
        # a large payload is decrypted into the buffer it will be handed out from.
        while inner.state is not _CLOSED:
            buf = inner.get_buffer(-1)
            try:
                # With a buffer, read() returns a count (typeshed says bytes).
                n = cast(int, read(len(buf), buf))
            except ssl.SSLWantReadError:
                # Every record was decrypted: the inner machine's area is not held meanwhile.
                inner.unused_buffer()
                break
            except ssl.SSLZeroReturnError:
                n = 0
            except ssl.SSLError as exc:
                self._collect()
                self._protocol_failure(exc)
                return
            finally:
                buf.release()
            if not n:
                # close_notify: the peer will send nothing more.
                self._peer_closed = True
                inner.receive_data(b"", now)
                break
            inner.buffer_updated(n, now)
        self._collect()

    def _receive_eof(self, now: float) -> None:
        if not self._handshake_done:
            self._abort(
                TransportConnectionError(
                    "the peer closed the connection during the TLS handshake",
                    code="connection.tls_handshake",
                    operation="handshake",
                )
            )
            return
        if self._record_head or self._record_left:
            self._abort(
                ProtocolError(
                    Protocol.TLS,
                    "the stream ended inside a TLS record",
                    code="protocol.unexpected_eof",
                    retryable=True,
                    retry_after=1.0,
                )
            )
            return
        # A cut between records without close_notify: the inner machine judges it (see the
        # module docs on truncation).
        self._peer_closed = True
        self.inner.receive_data(b"", now)
        self._collect()

    def _track_records(self, data: Buffer) -> None:
        """Follow the record layer across *data* (one step per record, not per byte)."""
        n = len(data)
        pos = self._record_left
        if pos >= n:
            self._record_left = pos - n
            return
        head = self._record_head
        while True:
            need = _RECORD_HEADER - len(head)
            if n - pos < need:
                self._record_head = head + bytes(data[pos:])
                self._record_left = 0
                return
            head += bytes(data[pos : pos + need])
            pos += need + (head[3] << 8 | head[4])
            head = b""
            if pos >= n:
                self._record_head = b""
                self._record_left = pos - n
                return

    def _send_close_notify(self) -> None:
        self._notify_sent = True
        self.write_closed = True
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify is queued; the peer's may come later (or never: FIN follows)
        except ssl.SSLError:
            pass  # the session is already unusable; the FIN still ends it

    def _protocol_failure(self, exc: ssl.SSLError) -> None:
        error = ProtocolError(
            Protocol.TLS, f"TLS record layer failure: {_describe(exc)}", code="protocol.tls"
        )
        error.__cause__ = exc
        self._abort(error)

    def _abort(self, error: TransportError) -> None:
        """End the connection for a TLS-level reason (any alert OpenSSL queued still leaves)."""
        self._collect()
        # After ConnectionClosed (a clean close whose last bytes failed to encrypt) nothing
        # more is reported, but the session is as broken: no close_notify, just the FIN.
        self._fail(error)
        self._failed = True
        self.write_closed = True


def _describe(exc: ssl.SSLError) -> str:
    # OpenSSL's short reason ("CERTIFICATE_VERIFY_FAILED") when there is one.
    return str(getattr(exc, "reason", None) or exc)


def _pem_text(data: str | bytes) -> str | bytes:
    # ssl wants PEM as str and DER as bytes; certs.generate_self_signed returns PEM bytes.
    if isinstance(data, bytes) and data.lstrip().startswith(b"-----BEGIN"):
        return data.decode("ascii")
    return data


def client_context(
    *,
    verify: bool = True,
    ca_file: str | os.PathLike[str] | None = None,
    ca_data: str | bytes | None = None,
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """Return an :class:`ssl.SSLContext` for a TLS client (TLS 1.2 or newer).

    Args:
        verify: verify the server's certificate and host name (default ``True``).  ``False``
            turns both off: the connection is encrypted but the peer is not authenticated.
        ca_file: a PEM file of the certificates to trust instead of the system's.
        ca_data: PEM (``str`` or ``bytes``) or DER (``bytes``) certificates to trust instead of
            the system's, for example the certificate from
            :func:`msgtrans.certs.generate_self_signed`.
        alpn: ALPN protocols to offer, most preferred first (default: none).

    Raises:
        ConfigurationError: a CA file or CA data cannot be loaded (field ``ca_file`` or
            ``ca_data``), or an ALPN name is invalid (field ``alpn``).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if ca_file is None and ca_data is None:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError("ca_file", f"cannot load {ca_file}: {exc}") from exc
        if ca_data is not None:
            try:
                ctx.load_verify_locations(cadata=_pem_text(ca_data))
            except (ValueError, TypeError, ssl.SSLError) as exc:
                raise ConfigurationError("ca_data", f"cannot load certificates: {exc}") from exc
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    _set_alpn(ctx, alpn)
    return ctx


def server_context(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """Return an :class:`ssl.SSLContext` for a TLS server (TLS 1.2 or newer).

    Args:
        cert_file: the PEM certificate chain to present (leaf first).
        key_file: the PEM private key of the certificate (unencrypted).
        alpn: ALPN protocols the server accepts (default: none, no ALPN).

    Raises:
        ConfigurationError: the certificate or key cannot be loaded or do not match
            (field ``cert_file``), or an ALPN name is invalid (field ``alpn``).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            "cert_file", f"cannot load {cert_file} with key {key_file}: {exc}"
        ) from exc
    _set_alpn(ctx, alpn)
    return ctx


def _set_alpn(ctx: ssl.SSLContext, alpn: Sequence[str]) -> None:
    if isinstance(alpn, str):
        raise ConfigurationError("alpn", f"must be a sequence of names, not the string {alpn!r}")
    if not alpn:
        return
    try:
        ctx.set_alpn_protocols(list(alpn))
    except (TypeError, ValueError, ssl.SSLError) as exc:
        raise ConfigurationError("alpn", f"invalid ALPN protocol names {alpn!r}: {exc}") from exc
