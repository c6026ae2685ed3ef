"""What the connection-level fuzz targets share: a throwaway certificate (made once per
process), cutting an input into chunks, feeding a stream party, and the checks every event
stream must pass.

The rule checked everywhere: whatever arrives, the machine answers with events (packets,
session events, an error event, one ``ConnectionClosed``), and every error it reports is a
:class:`~msgtrans.core.errors.TransportError` whose code is one of
:data:`~msgtrans.core.errors.ERROR_CODES`; no other exception escapes.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from targets import Reader

from msgtrans.certs import write_self_signed
from msgtrans.core.errors import ERROR_CODES, TransportError
from msgtrans.core.events import ConnectionClosed, Event
from msgtrans.core.session import SessionEvent

__all__ = [
    "Certs", "certs", "check_error", "check_events", "cut", "cuts_from", "damage", "push",
]


@dataclass(frozen=True)
class Certs:
    cert_file: str
    key_file: str
    cert_pem: bytes
    key_pem: bytes


@functools.cache
def certs() -> Certs:
    """A self-signed certificate for localhost and 127.0.0.1, written to a temporary directory
    that goes away when the process ends (made once: key generation costs milliseconds)."""
    folder = Path(tempfile.mkdtemp(prefix="msgtrans-fuzz-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    cert_file, key_file = write_self_signed(folder)
    return Certs(str(cert_file), str(key_file), cert_file.read_bytes(), key_file.read_bytes())


def cut(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """*data* in pieces of *sizes* (cycled; no sizes: one piece)."""
    if not sizes:
        return [data] if data else []
    pieces, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        pieces.append(data[pos : pos + size])
        pos += size
        i += 1
    return pieces


def cuts_from(reader: Reader, most: int = 600) -> list[int]:
    """Up to three chunk sizes from the recipe (none: the input in one piece)."""
    return [1 + reader.below(most) for _ in range(reader.below(4))]


def damage(reader: Reader, data: bytes) -> bytes:
    """Bytes changed, cut short, garbage inserted: as the recipe says."""
    buf = bytearray(data)
    for _ in range(reader.uint(1) % 5):
        if buf:
            buf[reader.below(len(buf))] ^= 1 + reader.uint(1) % 255
    if reader.uint(1) % 4 == 0:
        at = reader.below(len(buf) + 1)
        buf[at:at] = reader.take(reader.below(64))
    if reader.uint(1) % 4 == 0:
        del buf[reader.below(len(buf) + 1) :]
    return bytes(buf)


def push(party: Any, chunk: bytes, now: float, via_buffer: bool) -> None:
    """Give *chunk* to a stream machine or connection by ``receive_data`` or, as the drivers
    do, through ``get_buffer`` / ``buffer_updated`` (each buffer poisoned first, so that input
    parsed from stale memory would show)."""
    if not via_buffer:
        party.receive_data(chunk, now)
        return
    rest = memoryview(chunk)
    while rest and not party.is_closed:
        buf = party.get_buffer(-1)
        buf[:] = b"\xaa" * len(buf)
        n = min(len(buf), len(rest))
        buf[:n] = rest[:n]
        buf.release()
        party.buffer_updated(n, now)
        rest = rest[n:]


def check_error(error: object) -> None:
    if not isinstance(error, TransportError) or error.error_code not in ERROR_CODES:
        raise AssertionError(f"not a TransportError with a known code: {error!r}")


def check_events(events: Sequence[object], closed: bool) -> None:
    """Events only, errors with known codes, at most one ``ConnectionClosed`` (the last protocol
    event, and there when the party says it is closed)."""
    closes = 0
    for event in events:
        if not isinstance(event, (Event, SessionEvent)):
            raise AssertionError(f"not an event: {event!r}")
        error = getattr(event, "error", None)
        if error is not None:
            check_error(error)
        if isinstance(event, ConnectionClosed):
            closes += 1
        elif closes and isinstance(event, Event):
            raise AssertionError(f"a protocol event after ConnectionClosed: {event!r}")
    assert closes <= 1, events
    if closed:
        assert closes == 1, events
