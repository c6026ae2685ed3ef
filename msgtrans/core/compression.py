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

__all__ = ["CompressionPolicy", "compress", "decompress", "zstd_available"]

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


#: The levels each method takes (zlib: -1 is its default, 6; zstd: 3 is its default).
LEVELS = {"zlib": range(-1, 10), "zstd": range(1, 23)}


def compress(method: Compression, data: Buffer, level: int | None = None) -> bytes:
    """Compress *data* with *method* (``ZLIB`` or ``ZSTD``) at *level* (default: the
    method's own default).

    Raises:
        ConfigurationError: zstd was asked for without the ``zstd`` extra installed.
    """
    if method == 2:
        return zlib.compress(data, -1 if level is None else level)
    if method == 1:
        zstd = _zstandard()
        compressor = zstd.ZstdCompressor() if level is None else zstd.ZstdCompressor(level=level)
        return bytes(compressor.compress(data))
    return bytes(data)


class CompressionPolicy:
    """Which outgoing payloads a session compresses: those of at least *threshold* bytes,
    with *method* (``"zlib"``, the default, or ``"zstd"``) at *level* (default: the method's).

    Smaller payloads are sent as they are: compressing a few hundred bytes rarely pays for
    the CPU, and the receiver decompresses whatever a packet says (every msgtrans peer does).

    Raises:
        ConfigurationError: *threshold* is not a positive whole number, *method* is unknown or
            its package is missing (zstd: ``pip install 'msgtrans[zstd]'``), or *level* is
            outside the method's range (zlib -1..9, zstd 1..22).
    """

    __slots__ = ("level", "method", "threshold", "wire")

    def __init__(self, threshold: int, method: str = "zlib", level: int | None = None) -> None:
        from .packet import Compression

        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ConfigurationError(
                "compress_threshold", f"must be a positive byte count, got {threshold!r}"
            )
        if not isinstance(method, str) or method not in LEVELS:
            raise ConfigurationError(
                "compression", f"must be 'zlib' or 'zstd', got {method!r}"
            )
        if method == "zstd":
            _zstandard()  # the missing package is a configuration error now, not at a send
        if level is not None and (isinstance(level, bool) or not isinstance(level, int)
                                  or level not in LEVELS[method]):
            levels = LEVELS[method]
            raise ConfigurationError(
                "compression_level",
                f"{method} takes {levels.start}..{levels.stop - 1}, got {level!r}",
            )
        self.threshold = threshold
        self.method = method
        self.level = level
        self.wire = Compression.ZLIB if method == "zlib" else Compression.ZSTD

    def __repr__(self) -> str:
        return (f"CompressionPolicy(threshold={self.threshold}, method={self.method!r}, "
                f"level={self.level!r})")


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
