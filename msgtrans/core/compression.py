"""Payload compression: zlib (RFC 1950, standard library) and zstd (the ``zstd`` extra).

Decompression is always bounded: a payload that would inflate past the receive limit is refused
before that much memory is taken (zip bombs).
"""

from __future__ import annotations

import zlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, Protocol, ProtocolError

if TYPE_CHECKING:
    from .packet import Buffer, Compression

__all__ = ["compress", "decompress", "zstd_available"]

_CHUNK = 64 * 1024
_zstd: ModuleType | bool | None = False  # False: not looked for yet; None: not installed


def _zstandard() -> ModuleType:
    global _zstd
    if _zstd is False:
        try:
            import zstandard
        except ImportError:  # pragma: no cover - exercised in an environment without the extra
            _zstd = None
        else:
            _zstd = zstandard
    if _zstd is None or _zstd is True:  # pragma: no cover - see above
        raise ConfigurationError(
            "compression",
            "zstd compression needs the zstandard package: pip install 'msgtrans[zstd]'",
            code="configuration.missing_dependency",
        )
    return _zstd


def zstd_available() -> bool:
    """Return whether zstd compression can be used (the ``zstandard`` package is installed)."""
    try:
        _zstandard()
    except ConfigurationError:  # pragma: no cover - depends on the environment
        return False
    return True


def compress(method: Compression, data: Buffer) -> bytes:
    """Compress *data* with *method* (``ZLIB`` or ``ZSTD``).

    Raises:
        ConfigurationError: zstd was asked for without the ``zstd`` extra installed.
    """
    if method == 2:
        return zlib.compress(data)
    if method == 1:
        return bytes(_zstandard().ZstdCompressor().compress(data))
    return bytes(data)


def decompress(method: Compression, data: Buffer, limit: int) -> bytes:
    """Decompress *data*, refusing output larger than *limit* bytes.

    Raises:
        ProtocolError: the data is corrupt, truncated, or inflates past *limit*
            (codes ``protocol.decompression`` and ``protocol.frame_too_large``).
    """
    if not len(data):
        return b""  # an empty wire payload is an empty payload whatever the method
    try:
        if method == 2:
            out = _zlib_bounded(data, limit)
        elif method == 1:
            out = _zstd_bounded(data, limit)
        else:
            out = bytes(data)
    except ProtocolError:
        raise
    except ConfigurationError as exc:
        raise ProtocolError(
            Protocol.WIRE, f"received a zstd payload but {exc.reason}",
            code="protocol.decompression",
        ) from exc
    except Exception as exc:  # each library has its own error types for corrupt input
        raise ProtocolError(
            Protocol.WIRE, f"corrupt compressed payload: {exc}", code="protocol.decompression"
        ) from exc
    return out


def _too_large(limit: int) -> ProtocolError:
    return ProtocolError(
        Protocol.WIRE,
        f"decompressed payload exceeds the limit of {limit} bytes",
        code="protocol.frame_too_large",
    )


def _zlib_bounded(data: Buffer, limit: int) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise _too_large(limit)
    out += d.flush()
    if len(out) > limit:  # pragma: no cover - flush after a bounded decompress adds nothing
        raise _too_large(limit)
    if not d.eof:
        raise ProtocolError(
            Protocol.WIRE, "truncated zlib payload", code="protocol.decompression"
        )
    return out


def _zstd_bounded(data: Buffer, limit: int) -> bytes:
    zstd: Any = _zstandard()
    raw = bytes(data)
    dctx = zstd.ZstdDecompressor()
    # First pass: measure the output in bounded reads, so a bomb is refused before it inflates.
    reader = dctx.stream_reader(raw, read_across_frames=True)
    total = 0
    while True:
        chunk = reader.read(min(_CHUNK, limit + 1 - total) or 1)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
    # Second pass, now known to be bounded: frame by frame, so truncation is detected (the
    # stream reader ends quietly on a truncated frame).
    parts: list[bytes] = []
    while raw:
        dobj = dctx.decompressobj()
        parts.append(dobj.decompress(raw))
        if not dobj.eof:
            raise ProtocolError(
                Protocol.WIRE, "truncated zstd payload", code="protocol.decompression"
            )
        raw = dobj.unused_data
    return b"".join(parts)
