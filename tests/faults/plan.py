"""The pure arithmetic of the TCP proxy: how a piece of a byte stream is cut into the pieces it
forwards (at chunk boundaries and at the fault's offset), kept apart so it can be proven alone."""

from __future__ import annotations


def split(start: int, length: int, *, chunk: int | None = None,
          stop_at: int | None = None) -> tuple[list[int], bool]:
    """The sizes of the pieces to forward of *length* bytes found at stream offset *start*.

    Piece boundaries fall on stream offsets that are multiples of *chunk* (so the same stream
    is split the same way whatever sizes it was read in) and never past *stop_at*, the offset
    at which a fault acts: nothing at or beyond it is forwarded.  The flag says whether the
    forwarded bytes reach *stop_at* (the fault is due once they are written).
    """
    if start < 0 or length < 0:
        raise ValueError("start and length must be >= 0")
    if chunk is not None and chunk < 1:
        raise ValueError("chunk must be >= 1")
    end = start + length
    reached = False
    if stop_at is not None and end >= stop_at:
        end = max(start, stop_at)
        reached = True
    pieces: list[int] = []
    at = start
    while at < end:
        step = end - at if chunk is None else min(end - at, chunk - at % chunk)
        pieces.append(step)
        at += step
    return pieces, reached
