"""The message an application receives: :class:`MessageBase` (its data, the same on every
backend), the asyncio and trio :class:`Message` (its ``respond`` is awaited), and the refusals
every backend's ``respond`` raises.

Defined here, not in ``io_asyncio``, so that ``import msgtrans.io_trio`` loads no asyncio
driver; ``msgtrans.io_asyncio.Message`` and ``msgtrans.io_trio.Message`` are this class."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from ..core.buffers import PoolBuffer, release_view
from ..core.errors import TransportConnectionError
from ..core.packet import Buffer, Packet, PacketType
from . import docs
from .docs import doc

__all__ = ["Message", "MessageBase"]

_R = TypeVar("_R")
_M = TypeVar("_M", bound="MessageBase[Any]")


class MessageBase(Generic[_R]):
    """A backend's ``Message`` without ``respond()``, which each backend adds (async or
    blocking) using the responder (of type *_R*) it was given."""

    # The backend subclass declares ``__slots__ = ()`` so messages stay dict-free.
    __slots__ = ("_packet", "_responded", "_responder", "session_id")

    def __init__(self, packet: Packet, session_id: int, responder: _R | None = None) -> None:
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

    @property
    def pooled(self) -> bool:
        """Whether the payload is a view of a pooled receive buffer that :meth:`release` gives
        back (large payloads received zero-copy through a buffer pool; ``False`` once
        released)."""
        payload = self._packet.payload
        if type(payload) is not memoryview:
            return False
        try:
            buf = payload.obj
        except ValueError:  # released
            return False
        return type(buf) is PoolBuffer and buf.lender is not None

    def release(self) -> None:
        """Give the payload's pooled buffer back for reuse; the message's payload can no longer
        be read afterwards (a released ``memoryview`` raises ``ValueError``).

        Safe to call on any message, any number of times, from any thread: a payload that holds
        no pooled memory (``bytes``, or zero-copy without a pool) is left alone.  Keep what you
        need first (``bytes(message.payload)``).  ``with message:`` releases at the end of the
        block.  A message never released is freed by the garbage collector as usual; its
        buffer is then lost to the pool (see ``docs/buffers.md``).

        The buffer is never reused while a view of it is alive: when you kept slices of the
        payload (``message.payload[:16]``, ``memoryview(message.payload)``), it goes back to the
        pool only once the last of them is gone.

        Raises:
            BufferError: the payload object itself is exported (a numpy array made from it):
                nothing is released; drop the array and call again.
        """
        release_view(self._packet.payload)

    def __enter__(self: _M) -> _M:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        try:
            size = f"{len(self.payload)} bytes"
        except ValueError:  # a released payload
            size = "released"
        return (
            f"<Message {self.packet_type.name} id={self.message_id} biz_type={self.biz_type} "
            f"{size} session={self.session_id}>"
        )

    def __eq__(self, other: Any) -> bool:
        # type(self), not MessageBase: messages of different backends never compared equal.
        if not isinstance(other, type(self)):
            return NotImplemented
        return self._packet == other._packet and self.session_id == other.session_id

    def __hash__(self) -> int:
        return hash((self.session_id, self.packet_type, self.message_id))


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


@doc(docs.MESSAGE)
class Message(MessageBase[Responder]):

    __slots__ = ()

    @doc(docs.RESPOND, safety="")
    async def respond(
        self, data: Buffer, *, biz_type: int | None = None, ext_header: Buffer = b""
    ) -> None:
        if self._responder is None or not self.is_request:
            raise _not_a_request(self)
        if self._responded:
            raise _answered(self)
        # Marked before the await: two concurrent respond() calls must not both send.
        self._responded = True
        await self._responder(self._packet, data, biz_type, ext_header)
