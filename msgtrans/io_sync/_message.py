"""The message an application receives: :class:`Message`."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .._driver import docs
from .._driver.docs import doc
from .._driver.message import MessageBase, _answered, _not_a_request
from ..core.packet import Buffer, Packet

__all__ = ["Message"]

# Makes "already answered?" and "now answered" one step across threads (held for no I/O).
_RESPOND_LOCK = threading.Lock()

#: What a request message calls to send its response: (request packet, payload, biz_type,
#: ext_header); blocks while the send side is paused.
Responder = Callable[[Packet, Buffer, "int | None", Buffer], None]


@doc(docs.MESSAGE)
class Message(MessageBase[Responder]):

    __slots__ = ()

    @doc(docs.RESPOND, safety="; safe from any thread")
    def respond(
        self, data: Buffer, *, biz_type: int | None = None, ext_header: Buffer = b""
    ) -> None:
        if self._responder is None or not self.is_request:
            raise _not_a_request(self)
        # Checked and marked in one step: two threads calling respond() at once must not both
        # send.
        with _RESPOND_LOCK:
            answered, self._responded = self._responded, True
        if answered:
            raise _answered(self)
        self._responder(self._packet, data, biz_type, ext_header)
