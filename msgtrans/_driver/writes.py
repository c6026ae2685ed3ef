"""What a vectored write took: the stream drivers go on from where a partial write stopped."""

from __future__ import annotations

from ..core.packet import Buffer

__all__ = ["skip_sent"]


def skip_sent(parts: list[Buffer], i: int, batch: list[Buffer], sent: int) -> int:
    """After a vectored write of *batch* (``parts[i:i + len(batch)]``) took *sent* bytes:
    return the index in *parts* of the first part not written whole, having replaced a part
    written in part by a view of its rest (so a partial write goes on from where it stopped,
    nothing copied)."""
    for part in batch:
        size = len(part)
        if sent < size:
            if sent:
                parts[i] = memoryview(part)[sent:]
            return i
        sent -= size
        i += 1
    return i
