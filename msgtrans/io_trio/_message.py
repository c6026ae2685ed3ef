"""The message a trio application receives: the same :class:`Message` as asyncio's (its
``respond`` is awaited the same way), defined once for both."""

from __future__ import annotations

from ..io_asyncio._message import Message

__all__ = ["Message"]
