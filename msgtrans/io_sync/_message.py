"""The message an application receives: :class:`Message`."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .._driver.message import MessageBase, _answered, _not_a_request
from ..core.packet import Buffer, Packet

__all__ = ["Message"]

# Makes "already answered?" and "now answered" one step across threads (held for no I/O).
_RESPOND_LOCK = threading.Lock()

#: What a request message calls to send its response: (request packet, payload, biz_type,
#: ext_header); blocks while the send side is paused.
Responder = Callable[[Packet, Buffer, "int | None", Buffer], None]


class Message(MessageBase[Responder]):
    """One whole message from the peer: a one-way message, a request, or the response to our
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

    __slots__ = ()

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
            raise _not_a_request(self)
        # Checked and marked in one step: two threads calling respond() at once must not both
        # send.
        with _RESPOND_LOCK:
            answered, self._responded = self._responded, True
        if answered:
            raise _answered(self)
        self._responder(self._packet, data, biz_type, ext_header)
