"""The message an asyncio or trio application receives: :class:`Message` (its ``respond``
is awaited), and the refusals every backend's ``respond`` raises.

Defined here, not in ``io_asyncio``, so that ``import msgtrans.io_trio`` loads no asyncio
driver; ``msgtrans.io_asyncio.Message`` and ``msgtrans.io_trio.Message`` are this class."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .._backend import MessageBase
from ..core.errors import TransportConnectionError
from ..core.packet import Buffer, Packet

__all__ = ["Message"]


def _not_a_request(message: MessageBase[Any]) -> TransportConnectionError:
    """What ``respond`` raises on a message that is not a request."""
    return TransportConnectionError(
        "only a request message can be answered", code="connection.failed",
        retryable=False, session_id=message.session_id, operation="respond",
    )


def _answered(message: MessageBase[Any]) -> TransportConnectionError:
    """What ``respond`` raises on a request already answered."""
    return TransportConnectionError(
        f"request {message.message_id} was already answered", code="connection.failed",
        retryable=False, session_id=message.session_id, operation="respond",
    )


#: What a request message calls to send its response: (request packet, payload, biz_type,
#: ext_header) -> awaitable.
Responder = Callable[[Packet, Buffer, "int | None", Buffer], Awaitable[None]]


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

    async def respond(
        self, data: Buffer, *, biz_type: int | None = None, ext_header: Buffer = b""
    ) -> None:
        """Send the response to this request (once).

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
        if self._responded:
            raise _answered(self)
        # Marked before the await: two concurrent respond() calls must not both send.
        self._responded = True
        await self._responder(self._packet, data, biz_type, ext_header)
