"""The message an application receives: :class:`Message`, the awaitable one shared by the
asyncio and trio drivers (defined in :mod:`msgtrans._driver.message`)."""

from __future__ import annotations

from .._driver.message import Message

__all__ = ["Message"]
