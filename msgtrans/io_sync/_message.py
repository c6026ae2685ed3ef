"""The message an application receives: :class:`Message`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..core.errors import TransportConnectionError
from ..core.packet import Buffer, Packet, PacketType

__all__ = ["Message"]

# Makes "already answered?" and "now answered" one step across threads (held for no I/O).
_RESPOND_LOCK = threading.Lock()

#: What a request message calls to send its response: (request packet, payload, biz_type,
#: ext_header); blocks while the send side is paused.
Responder = Callable[[Packet, Buffer, "int | None", Buffer], None]


class Message:
    """One whole message from the peer: a one-way message, a request, or the response to our
    request.  Read-only.

    Attributes:
        payload: the message body (``bytes``, or a read-only ``memoryview`` for large payloads
            received zero-copy; both compare equal to ``bytes``).
        biz_type: the application's type tag, 0..255.
        ext_header: the extension header (possibly empty).
        message_id: the wire message id (a response carries its request's id).
        packet_type: :class:`~msgtrans.core.packet.PacketType` ``ONE_WAY``, ``REQUEST`` or
            ``RESPONSE``.
        session_id: the id of the session it arrived on.
    """

    __slots__ = ("_packet", "_responded", "_responder", "session_id")

    def __init__(
        self, packet: Packet, session_id: int, responder: Responder | None = None
    ) -> None:
        self._packet = packet
        self._responder = responder
        self._responded = False
        self.session_id = session_id

    @property
    def payload(self) -> Buffer:
        """The message body."""
        return self._packet.payload

    @property
    def biz_type(self) -> int:
        """The application's type tag, 0..255."""
        return self._packet.biz_type

    @property
    def ext_header(self) -> Buffer:
        """The extension header (possibly empty)."""
        return self._packet.ext_header

    @property
    def message_id(self) -> int:
        """The wire message id."""
        return self._packet.message_id

    @property
    def packet_type(self) -> PacketType:
        """``ONE_WAY``, ``REQUEST`` or ``RESPONSE``."""
        return self._packet.packet_type

    @property
    def packet(self) -> Packet:
        """The underlying wire packet."""
        return self._packet

    @property
    def is_request(self) -> bool:
        """Whether the peer expects a response (:meth:`respond`)."""
        return self._packet.packet_type is PacketType.REQUEST

    @property
    def responded(self) -> bool:
        """Whether :meth:`respond` was already called on this request."""
        return self._responded

    def respond(
        self, data: Buffer, *, biz_type: int | None = None, ext_header: Buffer = b""
    ) -> None:
        """Send the response to this request (once); safe from any thread.

        Args:
            data: the response payload.
            biz_type: the response's type tag (default: the request's).
            ext_header: the response's extension header (default empty).

        Raises:
            TransportConnectionError: this message is not a request or was already answered
                (code ``connection.failed``), or the session closed (``connection.closed``).
        """
        if self._responder is None or not self.is_request:
            raise TransportConnectionError(
                "only a request message can be answered", code="connection.failed",
                retryable=False, session_id=self.session_id, operation="respond",
            )
        # Checked and marked in one step: two threads calling respond() at once must not both
        # send.
        with _RESPOND_LOCK:
            answered, self._responded = self._responded, True
        if answered:
            raise TransportConnectionError(
                f"request {self.message_id} was already answered", code="connection.failed",
                retryable=False, session_id=self.session_id, operation="respond",
            )
        self._responder(self._packet, data, biz_type, ext_header)

    def __repr__(self) -> str:
        return (
            f"<Message {self.packet_type.name} id={self.message_id} biz_type={self.biz_type} "
            f"{len(self.payload)} bytes session={self.session_id}>"
        )

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._packet == other._packet and self.session_id == other.session_id

    def __hash__(self) -> int:
        return hash((self.session_id, self.packet_type, self.message_id))
