"""The WebSocket protocol machines: one msgtrans packet per binary message (RFC 6455).

:class:`WebSocketClientMachine` and :class:`WebSocketServerMachine` are the sans-IO sides of a
``ws://`` connection (and, under :class:`~msgtrans.core.tls.TlsMachine`, of ``wss://``):

* The client sends the HTTP upgrade request on :meth:`~WebSocketMachine.start`, offering the
  subprotocol ``msgtrans.v1``.  The server checks the request path, echoes ``msgtrans.v1`` only
  when the client offered it (a client that offers none is still accepted), answers a wrong path
  with ``404`` and a plain HTTP request that is not an upgrade with ``426 Upgrade Required``
  (both proper HTTP/1.1 responses, then the connection closes) instead of leaving it hanging.
* Each packet travels as one binary message.  Messages arriving in fragments are assembled up to
  ``16 + limits.max_ext_header + limits.max_payload`` bytes; a longer one closes the connection
  with 1009.  A text message closes the connection with 1003 (``text_policy="ignore"``, or a
  server config's ``text_messages="ignore"``, drops it instead).
* Pings are answered automatically and never surface.  After ``ping_interval`` seconds without
  receiving anything the machine pings; when nothing at all has arrived ``ping_timeout`` seconds
  after that ping it closes with 1011 (``timeout.keepalive``).  Any byte received counts as a sign
  of life, a pong as much as a packet.
* :meth:`~WebSocketMachine.close` runs the close handshake, bounded by ``close_timeout``.

The opening handshake of nearly every connection is written and read here too: the client's
request (byte for byte what wsproto sends), a server's check of a plain upgrade request and its
``101`` (byte for byte wsproto's), a client's check of a plain ``101`` (the checks wsproto
makes: ``Connection``, ``Upgrade``, ``Sec-WebSocket-Accept``, subprotocol, no extension).  That
took the handshake from about 200 us (both sides) to about 45.  "Plain" means a head that h11
would read the same way; anything else (another method or version, folded or odd header lines,
a refusal, a body, a wrong path) goes to h11 and wsproto as before, so that every refusal and
every error is theirs.

The frames after the handshake are read and written here, by a small RFC 6455 frame layer with
the same checks as wsproto's (reserved bits, opcodes, masking direction, minimal lengths,
control frame rules, fragmentation order, UTF-8 in text and Close reasons, valid close codes).
No extension is ever negotiated, so every frame is a plain one.  Doing the frames here is about
the hot path: wsproto copies each payload three or four times and builds several objects per
frame; here a whole binary frame becomes a packet straight from the received
bytes (receiving a small packet went from about 11 us to 2-3.5 us, as fast as the TCP machine;
sending from 3-5 us to 0.5-2 us), the server hands large payloads to a vectored write without
copying them, and a client receives them as views of the bytes read, never copied.  Masking
uses the C ``apply_mask`` of the ``websockets`` package when it is installed (50 times faster
than the pure-Python fallback on 64 KiB), and received bytes go straight into a read area the
machine owns (:meth:`~WebSocketMachine.get_buffer`), so a server copies a masked payload once,
by unmasking it.

A Close from the peer with a code other than 1000, 1001 or none ends the connection uncleanly,
with the error :func:`~msgtrans.core.errormap.map_websocket_close` gives that code; a refused
upgrade is mapped by :func:`~msgtrans.core.errormap.map_websocket_reject`.

When the close handshake is complete both machines set
:attr:`~msgtrans.core.machine.StreamMachine.write_closed` and emit
:class:`~msgtrans.core.events.ConnectionClosed`.  RFC 6455 wants the server to close TCP first;
the client does not wait for that, because it has nothing more to read: the server's EOF then
finds a closed machine and is ignored.
"""

from __future__ import annotations

import base64
import codecs
import functools
import hashlib
import importlib.machinery
import importlib.util
import math
import os
import re
import struct
import sys
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, cast

import h11

from .errormap import map_websocket_close, map_websocket_reject
from .errors import (
    ConfigurationError,
    Protocol,
    ProtocolError,
    ResourceError,
    TransportConnectionError,
    TransportError,
    TransportTimeoutError,
)
from .events import (
    CloseStarted,
    ConnectionClosed,
    ConnectionEstablished,
    ErrorOccurred,
    PacketReceived,
)
from .framing import DEFAULT_ZERO_COPY_THRESHOLD, PacketDecoder, _copy
from .machine import MachineState, StreamMachine
from .packet import (
    DEFAULT_LIMITS,
    HEADER,
    HEADER_SIZE,
    VERSION,
    Buffer,
    Compression,
    HeaderFields,
    Limits,
    Packet,
    build_packet,
    header_error,
)

__all__ = [
    "DEFAULT_SUBPROTOCOL",
    "TextPolicy",
    "WebSocketClientMachine",
    "WebSocketMachine",
    "WebSocketServerMachine",
]

#: The subprotocol of the msgtrans wire format, version 1.
DEFAULT_SUBPROTOCOL = "msgtrans.v1"

#: What to do with a text message: ``"ignore"`` it, or close with 1003 (``"error"``).
TextPolicy = Literal["ignore", "error"]
#: A server's check of an upgrade request (target, headers) -> ``None`` or ``(status, reason)``.
RequestCheck = Callable[[str, tuple[tuple[str, str], ...]], "tuple[int, str] | None"]

#: Packets smaller than this are copied into one send buffer, so that many small packets leave
#: as one write; larger payloads (server side) go to the driver by reference.
COALESCE_LIMIT = 16 * 1024

# Close codes (RFC 6455 section 7.4.1).
NORMAL = 1000
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
NO_STATUS = 1005
ABNORMAL = 1006
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
# Codes a peer may never put in a Close frame, and codes no one has defined.
_NOT_SENDABLE = frozenset({1004, 1005, 1006, 1015})
_DEFINED = frozenset(range(1000, 1015)) - {1004, 1005, 1006}

# Opcodes (RFC 6455 section 5.2).
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_IDLE = MachineState.IDLE
_HANDSHAKING = MachineState.HANDSHAKING
_OPEN = MachineState.OPEN
_CLOSING = MachineState.CLOSING
_CLOSED = MachineState.CLOSED
_NO_COMPRESSION = Compression.NONE
_pack_header = HEADER.pack
_key_at = struct.Struct("4s").unpack_from  # a masking key out of a buffer, as bytes
_SMALL_MASKED = struct.Struct("!BB4s")  # the header of a short masked frame, key included
_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_PING = struct.Struct("!Q")
_utf8_decoder = codecs.getincrementaldecoder("utf-8")


# The opening handshake, written here for the common case (see _parse_head): a head that is
# anything but plain goes to h11, which answers it as before.  Patterns as h11's (RFC 9110/9112).
_HEAD_END = re.compile(rb"\n\r?\n")  # h11 ends a head at a blank line, CRLF or bare LF
_MAX_HEAD = 16 * 1024  # h11's default max_incomplete_event_size
# A field line: a token, a colon, then visible characters, spaces and tabs; the value is what
# is left once the spaces and tabs around it are stripped (h11's field-value, matched faster).
_FIELD_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+):([\t \x21-\x7e\x80-\xff]*)")
_STATUS_101 = re.compile(rb"HTTP/1\.1 101 [\t \x21-\x7e\x80-\xff]*")
_REQUEST_LINE = re.compile(rb"GET (/[\x21-\x7e]*) HTTP/1\.1")
_BODY_FIELDS = frozenset({b"content-length", b"transfer-encoding"})
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _accept_token(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest())


def _parse_head(
    head: bytes, first_line: re.Pattern[bytes]
) -> tuple[re.Match[bytes], list[tuple[bytes, bytes]]] | None:
    """Split a plain HTTP/1.1 head (without its blank line) into its first line, matched by
    *first_line*, and its fields as ``(lowercase name, value)``.

    Return ``None`` for anything else: a first line *first_line* does not match, bare LF line
    ends, obsolete line folding, a character h11 refuses, a ``Content-Length`` or
    ``Transfer-Encoding`` field.  The caller hands such a head to h11, which accepts or refuses
    it as it always did: this parser only ever says yes to what h11 would read the same way.
    """
    lines = head.split(b"\r\n")
    start = first_line.fullmatch(lines[0])
    if start is None:
        return None
    fields: list[tuple[bytes, bytes]] = []
    match = _FIELD_LINE.fullmatch
    for line in lines[1:]:
        m = match(line)  # a bare LF or a fold leaves a line that does not match
        if m is None:
            return None
        name = m[1].lower()
        if name in _BODY_FIELDS:
            return None
        fields.append((name, m[2].strip(b" \t")))
    return start, fields


def _head_of(head: bytearray, end: re.Match[bytes]) -> bytes:
    """The head before its blank line, without the line end of its last line."""
    raw = bytes(head[: end.start()])
    return raw[:-1] if raw.endswith(b"\r") else raw


def _comma_tokens(value: bytes) -> list[str]:
    """A comma-separated header value split as wsproto does (``UnicodeDecodeError``, a
    ``ValueError``, on non-ASCII)."""
    return [piece.decode("ascii").strip() for piece in value.split(b",")]

# Masking: XOR as one big integer wins for short frames, 256-entry translate tables over the four
# byte lanes win for long ones (measured: 0.5 us vs 1 us at 64 bytes, 1.1 ms vs 3.5 ms at 1 MiB).
_XOR_TABLES: list[bytes] = []  # filled on first use: building them takes some 20 ms
_INT_MASK_LIMIT = 512
_MASK_KEY_BATCH = 4096
# The first batch of a connection is small: a short-lived client (connect, a few messages,
# close) uses a handful of keys, and 4 KiB of urandom costs some 7 us against under 1 us here.
# The client fetches it together with its handshake key (one getrandom call for both).
_FIRST_MASK_KEY_BATCH = 128
# Payloads from this size on are masked apart from the packet header (with the key turned to
# the payload's phase) instead of after joining both: that saves a copy of the payload.
_SPLIT_MASK_LIMIT = 1024
# get_buffer() hands out a read area of _READ_SIZE bytes, four times larger (up to
# _READ_SIZE_MAX) each time a read fills it: an idle connection holds little, a busy one reads
# many frames per system call.  The rest of an unfinished frame at least _DIRECT_LIMIT bytes
# long is received straight into that frame's buffer (smaller rests are not, so that a read is
# not cut short for a few bytes).
_READ_SIZE = 16 * 1024
_READ_SIZE_MAX = 256 * 1024
_DIRECT_LIMIT = 16 * 1024


#: Idle read areas of _READ_SIZE, shared by every WebSocket machine: a machine pops one for a
#: read and appends it back after a read that was short (the socket is drained: the connection
#: may now idle), since no frame keeps bytes in it.  pop and append are single steps under the
#: GIL (locked ones under free threading): an area is never in two machines' hands, with no
#: lock in the core.  An idle connection so holds no read area (16 KiB each otherwise).
_SPARE_AREAS: list[bytearray] = []
_SPARE_AREAS_MAX = 4
# A masked payload is unmasked into its pooled buffer this many bytes at a time: the C mask
# returns a new buffer, so the step bounds that temporary instead of allocating one as large
# as the message.  A multiple of 4, so the key keeps its phase; the last step takes up to a
# quarter more, so that a 64 KiB or 256 KiB payload and its header are one call.
_UNMASK_STEP = 256 * 1024


def _load_c_mask() -> Callable[[Buffer, bytes], bytes] | None:
    """Return ``apply_mask`` from the ``websockets`` package's C extension, if installed.

    Masking is the one loop a pure-Python WebSocket cannot run at C speed: the lane tables
    below reach about 1 GB/s, ``apply_mask`` (SSE2/NEON) 50 GB/s, so a 64 KiB frame costs 70 us
    or 1.3 us to mask.  The extension is self-contained C, so it is loaded from its file without
    importing the ``websockets`` package (whose import costs some 25 ms, most of it
    ``importlib.metadata``).  Any failure means the pure-Python fallback; msgtrans never
    requires ``websockets``.
    """
    loaded = sys.modules.get("websockets.speedups")
    if loaded is None:
        try:
            spec = importlib.util.find_spec("websockets")
            locations = spec.submodule_search_locations if spec is not None else None
            if not locations:
                return None
            for directory in locations:
                for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                    path = os.path.join(directory, "speedups" + suffix)
                    if os.path.isfile(path):
                        break
                else:
                    continue
                break
            else:
                return None
            ext_spec = importlib.util.spec_from_file_location("websockets.speedups", path)
            if ext_spec is None or ext_spec.loader is None:
                return None
            loaded = importlib.util.module_from_spec(ext_spec)
            ext_spec.loader.exec_module(loaded)
            # Loading registered it without its package: leave sys.modules as it was, so that
            # importing websockets later goes the normal way.
            sys.modules.pop("websockets.speedups", None)
        except Exception:  # an incompatible or broken build: the fallback is always right
            return None
    apply_mask = getattr(loaded, "apply_mask", None)
    if apply_mask is None:
        return None
    try:
        # Trust it only after it gave the right answer, on a view as the parser passes them.
        probe, key = bytes(range(11)), b"\x01\x02\x03\x04"
        if apply_mask(memoryview(probe)[1:], key) != _mask_py(probe[1:], key):
            return None
    except Exception:
        return None
    return cast("Callable[[Buffer, bytes], bytes]", apply_mask)


def _frame_header(length: int, mask_bit: int) -> bytes:
    """Return the header of a final, unfragmented binary frame of *length* payload bytes."""
    if length < 126:
        return bytes((0x82, mask_bit | length))
    if length < 65536:
        return _H16.pack(0x82, mask_bit | 126, length)
    return _H64.pack(0x82, mask_bit | 127, length)


class _FrameError(Exception):
    """A frame broke RFC 6455: fail the connection with close *code*."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _utf8_prefix(text: str, limit: int) -> bytes:
    """Return *text* in UTF-8, cut to at most *limit* bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def _mask_py(data: Buffer, key: bytes | bytearray) -> bytes | bytearray:
    """Return *data* XOR-ed with the 4-byte masking *key* repeated (RFC 6455 section 5.3), in
    pure Python; masking and unmasking are the same operation."""
    n = len(data)
    if n <= _INT_MASK_LIMIT:
        keys = (key * ((n >> 2) + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(
            n, "little"
        )
    if not _XOR_TABLES:
        _XOR_TABLES.extend(bytes(a ^ b for a in range(256)) for b in range(256))
    out = bytearray(data)
    for lane in range(4):
        out[lane::4] = out[lane::4].translate(_XOR_TABLES[key[lane]])
    return out


_c_mask = _load_c_mask()

#: Mask or unmask *data* with a 4-byte *key*: the C extension when there is one, else
#: :func:`_mask_py`.  Both return a new buffer and accept any buffer (a memoryview slice too).
_mask: Callable[[Buffer, bytes], bytes | bytearray] = _c_mask if _c_mask is not None else _mask_py


def _retry_after(headers: Iterable[tuple[bytes, bytes]]) -> float | None:
    """The seconds of a ``Retry-After`` header, if there is one in that form (RFC 9110 10.2.3;
    the HTTP-date form is ignored: reading it would need a clock)."""
    for name, value in headers:
        if name.lower() == b"retry-after" and value.strip().isdigit():
            return float(value.strip())
    return None


def _handshake_error(reason: str) -> ProtocolError:
    return ProtocolError(Protocol.WEBSOCKET, reason, code="protocol.websocket")


def _check_seconds(field: str, value: float | None, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if value is None or not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(
            field,
            f"must be a positive number of seconds{' or None' if optional else ''}, got {value!r}",
        )
    return float(value)


# Subprotocol lists already checked: a connection usually has the same as the one before.
_CHECKED_SUBPROTOCOLS: set[tuple[str, ...]] = {(DEFAULT_SUBPROTOCOL,), ()}


def _check_subprotocols(subprotocols: Iterable[str]) -> tuple[str, ...]:
    result = tuple(subprotocols)
    if result in _CHECKED_SUBPROTOCOLS:
        return result
    for name in result:
        # RFC 6455 section 4.1: a subprotocol is an HTTP token.
        if not isinstance(name, str) or not name or not all(
            33 <= ord(c) < 127 and c not in '()<>@,;:\\"/[]?={}' for c in name
        ):
            raise ConfigurationError("subprotocols", f"{name!r} is not a valid HTTP token")
    if len(_CHECKED_SUBPROTOCOLS) < 64:
        _CHECKED_SUBPROTOCOLS.add(result)
    return result


@functools.lru_cache(maxsize=64)
def _request_head(host: str, target: str, extra_headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """The host as sent, after h11 judged the request it makes (so that a bad header fails in
    the constructor, not in start()); cached, as a client usually connects to one place.

    Raises:
        ConfigurationError: h11 refuses the request, or *host* has no IDNA form.
    """
    try:
        host_bytes = host.encode("idna")
        h11.Request(
            method=b"GET", target=target.encode("ascii"),
            headers=[(b"host", host_bytes), *extra_headers],
        )
    except (h11.LocalProtocolError, UnicodeError) as exc:
        raise ConfigurationError("extra_headers", f"invalid request: {exc}") from None
    return host_bytes


def _header_bytes(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else bytes(value)


def _header_pairs(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in headers
    )


def _unmask_into(out: memoryview, at: int, src: memoryview, key: bytes, phase: int = 0) -> None:
    """Write *src* unmasked with *key* into *out* from *at* (*out* may be *src*'s memory: each
    step is read before it is written), :data:`_UNMASK_STEP` bytes at a time.  *phase*: the
    position in the payload *src* starts at (the key turns with it)."""
    phase &= 3
    if phase:
        key = key[phase:] + key[:phase]
    n = len(src)
    if n <= _UNMASK_STEP + _UNMASK_STEP // 4:
        out[at : at + n] = _mask(src, key)
        return
    step = _UNMASK_STEP
    i = 0
    while i < n:
        j = n if n - i <= step + step // 4 else i + step
        out[at + i : at + j] = _mask(src[i:j], key)
        i = j


class _MessagePool(PacketDecoder):
    """The WebSocket machine's hold on the receive buffer pool and the zero-copy counters.

    The machine reads frames itself, so this decoder decodes nothing; it is the ``_decoder``
    through which :class:`~msgtrans.core.connection.Connection` gives every machine its pool
    (``buffer_pool``) and takes back what it holds when the connection ends
    (:meth:`release_buffers`), as for TCP and QUIC.  Its own receive area is never lent.
    """

    _pooled_area = False

    def __init__(
        self, machine: WebSocketMachine, limits: Limits, zero_copy_threshold: int | None
    ) -> None:
        super().__init__(limits, zero_copy_threshold, 1024)
        # Weakly: the machine owns this object, and a cycle would keep a dropped machine's
        # buffers until the cycle collector runs.
        self._machine = weakref.ref(machine)

    def release_buffers(self) -> None:
        """Give back the pooled buffer of a message in progress; pooling stops."""
        machine = self._machine()
        if machine is not None:
            machine._drop_big()
        super().release_buffers()


class WebSocketMachine(StreamMachine):
    """Sans-IO machine for one msgtrans connection over WebSocket; the common part of
    :class:`WebSocketClientMachine` and :class:`WebSocketServerMachine` (use those).

    Keyword args:
        limits: receive limits, and the payload limit for sending (default: 16 MiB payload,
            4 KiB ext header).  A message may be ``16 + max_ext_header + max_payload`` bytes.
        zero_copy_threshold: received payloads of at least this many bytes are read-only
            ``memoryview`` slices of the received message; ``None`` copies every payload to
            ``bytes``.  Default 64 KiB.  With a buffer pool (the connection gives one, see
            ``docs/buffers.md``) such a message is received into a buffer lent by the pool,
            which ``Message.release()`` gives back.
        ping_interval: seconds without receiving anything after which a ping is sent
            (default 20); ``None`` sends no keepalive pings.
        ping_timeout: seconds after a keepalive ping within which something must arrive, or the
            connection closes with 1011 and ``timeout.keepalive`` (default 20); ``None`` waits
            forever.
        close_timeout: seconds :meth:`close` waits for the peer's Close frame (default 10).
        handshake_timeout: seconds from :meth:`start` for the opening handshake (default 10).
        text_policy: ``"error"`` (default) closes with 1003 and ``protocol.text_frame`` on a
            text message (RFC 6455's "unsupported data"); ``"ignore"`` drops it.

    Raises:
        ConfigurationError: a setting is out of range.
    """

    protocol = Protocol.WEBSOCKET
    #: RFC 6455 "going away": what an endpoint that shuts down or stops accepting sends.
    going_away_code: int | None = 1001

    def __init__(
        self,
        *,
        is_client: bool,
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        text_policy: TextPolicy = "error",
    ) -> None:
        super().__init__(is_client=is_client)
        if zero_copy_threshold is not None and (
            isinstance(zero_copy_threshold, bool) or zero_copy_threshold < 1
        ):
            raise ConfigurationError(
                "zero_copy_threshold",
                f"must be a positive byte count or None, got {zero_copy_threshold!r}",
            )
        if text_policy not in ("ignore", "error"):
            raise ConfigurationError(
                "text_policy", f"must be 'ignore' or 'error', got {text_policy!r}"
            )
        self.limits = limits
        self.zero_copy_threshold = zero_copy_threshold
        # The receive pool and the zero-copy counters (the connection sets the pool).
        self._decoder = _MessagePool(self, limits, zero_copy_threshold)
        # Frames at least this long are big (their payload may reach the threshold): lent a
        # pooled buffer and counted.
        self._big_from = None if zero_copy_threshold is None else HEADER_SIZE + zero_copy_threshold
        self.ping_interval = _check_seconds("ping_interval", ping_interval, True)
        self.ping_timeout = _check_seconds("ping_timeout", ping_timeout, True)
        self.close_timeout = cast(float, _check_seconds("close_timeout", close_timeout, False))
        self.handshake_timeout = cast(
            float, _check_seconds("handshake_timeout", handshake_timeout, False)
        )
        self.text_policy: TextPolicy = text_policy
        #: The largest message accepted: a whole packet at the limits.
        self.max_message = HEADER_SIZE + limits.max_ext_header + limits.max_payload
        #: The subprotocol agreed in the handshake (``None`` before, or when there is none).
        self.subprotocol: str | None = None
        self._max_payload = limits.max_payload
        # The opening handshake so far (see the subclasses); the frames after it are read and
        # written here.
        self._head = bytearray()
        self._mask_bit = 0x80 if is_client else 0
        self._mask_keys = b""
        self._mask_pos = 0
        # Output in order: _parts (earlier buffers and large payloads by reference), then _buf.
        self._buf = bytearray()
        self._parts: list[Buffer] = []
        self._pending: list[Packet] = []  # sent before the handshake completed
        # Input: an unfinished frame (its own buffer, filled so far) or frame header (bytes),
        # and the fragmented message in progress.
        self._big: bytearray | None = None
        self._big_filled = 0
        self._big_total = 0  # the unfinished frame's size (a pooled _big is longer)
        self._big_copied = 0  # bytes of it copied in from a read area (not received into it)
        self._frame_total = 0
        self._frame_big = False  # whether the unfinished frame is a big binary message
        self._frame_head = 0  # its header's length when its masking key was received, else 0
        self._big_unmasked = 0  # payload bytes of a pooled frame unmasked on their way in
        # The buffer of the one frame _parse_big is parsing (None once its packet took it).
        self._framebuf: bytearray | None = None
        self._rbuf: bytes | None = None
        # The read area get_buffer() hands out, whether the last call handed out the rest of
        # _big instead, and whether a packet took a view of the area (client side).
        self._area: bytearray | None = None
        self._area_size = _READ_SIZE
        self._into_big = False
        self._lent = False
        self._short_read = False  # whether get_buffer offers a short read (client side)
        self._msg: bytearray | None = None  # a binary message arriving in fragments
        self._msg_opcode = 0  # OP_BINARY or OP_TEXT while a fragmented message is in progress
        self._utf8: codecs.IncrementalDecoder | None = None
        self._now = 0.0
        self._handshake_deadline: float | None = None
        self._last_received = 0.0
        self._last_ping = 0.0
        self._pong_deadline: float | None = None
        self._pings_sent = 0
        self._close_code = NORMAL
        self._close_deadline: float | None = None

    # --- the machine interface -----------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin the opening handshake: the client queues its upgrade request, the server starts
        waiting for one.  Both arm the ``handshake_timeout``.  Calling it again does nothing."""
        self._now = now
        if self.state is not _IDLE:
            return
        self.state = _HANDSHAKING
        self._handshake_deadline = now + self.handshake_timeout
        self._begin_handshake()

    def send_packet(self, packet: Packet) -> None:
        """Queue *packet* as one binary message (see :meth:`data_to_send`).

        Before the handshake completes the packet waits, and leaves when it does.  On the server
        side a payload of at least 16 KiB is handed to :meth:`data_to_send` by reference, not
        copied: do not modify it until it has been written.

        Raises:
            TransportConnectionError: the connection is closing or closed
                (code ``connection.closed``).
            ResourceError: the payload on the wire is larger than ``limits.max_payload``
                (code ``resource.payload_too_large``, not retryable).
        """
        state = self.state
        if state is _OPEN:
            self._encode(packet)
        elif state is _IDLE or state is _HANDSHAKING:
            if len(packet.payload) > self._max_payload or packet.compression is not _NO_COMPRESSION:
                packet.encode_parts(self._max_payload)  # raises the standard ResourceError
            self._pending.append(packet)
        else:
            raise self._closed_error()

    def send_packets(self, packets: Iterable[Packet]) -> None:
        """Queue several packets, in order, as one binary message each.

        Raises:
            TransportConnectionError: as for :meth:`send_packet`; nothing is queued.
            ResourceError: as for :meth:`send_packet`; the packets before the one refused
                stay queued.
        """
        state = self.state
        if state is not _OPEN:
            for packet in packets:
                self.send_packet(packet)
            return
        encode = self._encode
        for packet in packets:
            encode(packet)

    def data_to_send(self) -> list[Buffer]:
        """Return the bytes to write, in order, and forget them.

        Small messages come joined in one buffer; large server-side payloads come as buffers of
        their own (hand the list to a vectored write).
        """
        buf = self._buf
        parts = self._parts
        if buf:
            parts.append(buf)
            # A fresh buffer, not a cleared one: the driver may hold on to the one it got.
            self._buf = bytearray()
        elif not parts:
            return []
        self._parts = []
        return parts

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Return memory to receive into, then call :meth:`buffer_updated` (the zero-copy path).

        Usually a read area the machine reuses (16 KiB, growing to 256 KiB while reads fill it,
        or *sizehint* bytes): whole frames are parsed straight out of it.  When a large frame
        is unfinished, the rest of it is received straight into that frame's own buffer.
        """
        big = self._big
        if big is not None and self.state is not _CLOSED:
            filled = self._big_filled
            total = self._big_total
            if total - filled >= _DIRECT_LIMIT:
                self._into_big = True
                return memoryview(big)[filled:total]
        self._into_big = False
        area = self._area
        if area is None or len(area) < sizehint:
            size = max(sizehint, self._area_size)
            area = None
            if size == _READ_SIZE:
                try:
                    area = _SPARE_AREAS.pop()
                except IndexError:  # none idle (or taken on another thread since the check)
                    area = None
            if area is None:
                area = bytearray(size)
            self._area = area
        if self._short_read and sizehint < 0:
            # Big messages are flowing to a client: a short read, so that the next one's start
            # (copied from here to its pooled buffer) is a small part of it; the rest of it is
            # received straight into that buffer.
            return memoryview(area)[:_DIRECT_LIMIT]
        # A new view each time: the TLS machine releases the one it is given.
        return memoryview(area)

    def buffer_updated(self, nbytes: int, now: float) -> None:
        """Account for *nbytes* received into the last :meth:`get_buffer`; as
        :meth:`receive_data` otherwise (0 is not EOF here)."""
        self._now = now
        if not nbytes:
            return
        state = self.state
        if state is not _OPEN and state is not _CLOSING:
            if self._into_big:
                return  # the connection ended since get_buffer(): the frame was dropped
            area = cast(bytearray, self._area)
            self.receive_data(bytes(memoryview(area)[:nbytes]), now)
            self._idle_area(area)
            return
        self._last_received = now
        self._pong_deadline = None
        if self._into_big:
            self._into_big = False
            big = self._big
            if big is None:
                return
            filled = self._big_filled + nbytes
            if filled < self._big_total:
                self._big_filled = filled
                return
            # The frame is complete, and it is all the buffer holds.
            self._big = None
            self._parse_big(big)
            return
        area = cast(bytearray, self._area)
        self._short_read = False
        if nbytes == len(area) and len(area) < _READ_SIZE_MAX:
            # The peer sends faster than we read: read more at a time from now on.
            self._area_size = min(len(area) * 4, _READ_SIZE_MAX)
            self._area = None
        self._lent = False
        self._read(memoryview(area)[:nbytes])
        if self._big is not None and self._frame_big and self.is_client:
            self._short_read = True  # see get_buffer
        if self._lent:
            # A packet holds a view of the read area: the next read gets a new one.
            self._area = None
        elif nbytes < _READ_SIZE:
            self._idle_area(area)

    def unused_buffer(self) -> None:
        """The last :meth:`get_buffer` received nothing: give up the read area (see
        :meth:`_idle_area`)."""
        area = self._area
        if area is not None and not self._into_big:
            self._idle_area(area)

    def _idle_area(self, area: bytearray) -> None:
        """Give up the read area after a short read: it keeps no bytes, and the connection may
        now idle.  The spare areas take it when it is of the usual size (and they are few); a
        grown one is dropped, and reads start again from _READ_SIZE."""
        self._area = None
        self._area_size = _READ_SIZE
        if len(area) == _READ_SIZE and len(_SPARE_AREAS) < _SPARE_AREAS_MAX:
            _SPARE_AREAS.append(area)

    def receive_data(self, data: Buffer, now: float) -> None:
        """Feed bytes read from the socket; ``b""`` means the peer sent EOF.

        Whole messages become :class:`~msgtrans.core.events.PacketReceived` events.  Invalid
        input ends the connection with ``ErrorOccurred`` and ``ConnectionClosed(clean=False)``
        (a Close frame is sent first where the protocol allows); input after the connection
        closed is ignored.  EOF before the close handshake is ``connection.reset`` with code
        1006.  A server fed data before :meth:`start` starts itself.  Never raises on bad input.
        """
        self._now = now
        if not data:
            self._receive_eof()
            return
        state = self.state
        if state is _OPEN or state is _CLOSING:
            # Anything received proves the peer alive: the keepalive clock restarts.
            self._last_received = now
            self._pong_deadline = None
            # Packets may keep views of what is read: a buffer the driver reuses is copied.
            self._read(data if type(data) is bytes else bytes(data))
        elif state is _HANDSHAKING:
            self._receive_handshake(data, now)
        elif state is _IDLE and not self.is_client:
            self.start(now)
            self._receive_handshake(data, now)

    def close(self, code: int | None = None, reason: str = "") -> None:
        """Start the close handshake: a Close frame after the queued messages.

        Emits ``CloseStarted(code, reason, by_peer=False)``.  Packets the peer sends before its
        Close reply are still delivered.  The reply ends the connection cleanly
        (``ConnectionClosed(clean=True)``, with the code the peer echoed); if it has not come
        :attr:`close_timeout` seconds later (counted from the first :meth:`handle_timer` after
        this call) the connection ends uncleanly with ``timeout.close``.  Closing before the
        handshake completes abandons it: ``ConnectionClosed(clean=False)`` with
        ``connection.aborted``, and queued packets are dropped.  Closing a closing or closed
        connection does nothing.

        Args:
            code: the close code, default 1000; 1000-1003, 1007-1014 and 3000-4999 are allowed.
            reason: a short text; cut to the 123 bytes a Close frame can carry.

        Raises:
            ConfigurationError: *code* may not be sent.
        """
        code = NORMAL if code is None else code
        if not (code in _DEFINED or 3000 <= code <= 4999) or code in _NOT_SENDABLE:
            raise ConfigurationError(
                "code", f"{code!r} is not a close code that may be sent (RFC 6455 7.4)"
            )
        state = self.state
        if state is _CLOSING or state is _CLOSED:
            return
        self._events.append(CloseStarted(code, reason, by_peer=False))
        if state is not _OPEN:
            # There is no WebSocket yet to close politely: drop the connection.
            self._pending.clear()
            self.state = _CLOSED
            self.write_closed = True
            error = TransportConnectionError(
                "closed before the WebSocket handshake completed",
                code="connection.aborted",
                retryable=False,
            )
            self._events.append(ConnectionClosed(code, reason, clean=False, error=error))
            return
        self.state = _CLOSING
        self._close_code = code
        self._send_close(code, reason)
        # close() has no `now`: next_deadline asks for handle_timer() at once and the real
        # deadline is armed there, so a stale clock cannot make the timeout fire early.
        self._close_deadline = None

    def next_deadline(self) -> float | None:
        """Return when :meth:`handle_timer` must next be called: the handshake deadline, the
        next keepalive ping or pong deadline, the close deadline (right away just after
        :meth:`close`, to start that timer), or ``None``."""
        state = self.state
        if state is _OPEN:
            if self._pong_deadline is not None:
                return self._pong_deadline
            if self.ping_interval is None:
                return None
            return max(self._last_received, self._last_ping) + self.ping_interval
        if state is _HANDSHAKING:
            return self._handshake_deadline
        if state is _CLOSING:
            return self._now if self._close_deadline is None else self._close_deadline
        return None

    def handle_timer(self, now: float) -> None:
        """Fire what is due at *now*: the handshake timeout, a keepalive ping, the pong timeout
        (close 1011, ``timeout.keepalive``), the close timeout (``timeout.close``)."""
        self._now = now
        state = self.state
        if state is _OPEN:
            if self._pong_deadline is not None:
                if now >= self._pong_deadline:
                    self._abort(
                        INTERNAL_ERROR,
                        TransportTimeoutError(
                            "keepalive",
                            cast(float, self.ping_timeout),
                            f"no answer to a keepalive ping within {self.ping_timeout:g} s",
                            code="timeout.keepalive",
                        ),
                    )
                return
            interval = self.ping_interval
            if interval is not None and now >= max(self._last_received, self._last_ping) + interval:
                self._pings_sent += 1
                payload = _PING.pack(self._pings_sent)
                self._send_control(OP_PING, payload)
                self._last_ping = now
                if self.ping_timeout is not None:
                    self._pong_deadline = now + self.ping_timeout
        elif state is _HANDSHAKING:
            if self._handshake_deadline is not None and now >= self._handshake_deadline:
                self._end(
                    TransportTimeoutError(
                        "handshake",
                        self.handshake_timeout,
                        f"the WebSocket handshake did not complete within "
                        f"{self.handshake_timeout:g} s",
                        code="timeout.handshake",
                    )
                )
        elif state is _CLOSING:
            if self._close_deadline is None:
                self._close_deadline = now + self.close_timeout
            elif now >= self._close_deadline:
                self._end(
                    TransportTimeoutError(
                        "close",
                        self.close_timeout,
                        f"the peer did not answer the Close frame within {self.close_timeout:g} s",
                        code="timeout.close",
                    ),
                    self._close_code,
                )

    # --- the handshake (subclasses) ------------------------------------------------------------

    def _begin_handshake(self) -> None:
        """Queue what this side says first (the client's request)."""

    def _receive_handshake(self, data: Buffer, now: float) -> None:
        raise NotImplementedError

    def _established(
        self,
        now: float,
        subprotocol: str | None,
        path: str,
        headers: tuple[tuple[str, str], ...],
    ) -> None:
        """The handshake is done: report it and send what waited."""
        self.state = _OPEN
        self.subprotocol = subprotocol
        self._handshake_deadline = None
        self._last_received = self._last_ping = now
        self._events.append(
            ConnectionEstablished(
                Protocol.WEBSOCKET, subprotocol=subprotocol, path=path, headers=headers
            )
        )
        pending = self._pending
        self._pending = []
        for packet in pending:
            self._encode(packet)

    # --- sending -------------------------------------------------------------------------------

    def _mask_key(self) -> bytes:
        pos = self._mask_pos
        keys = self._mask_keys
        if pos >= len(keys):
            # Keys come from the OS CSPRNG as RFC 6455 section 5.3 requires, fetched in batches
            # to save a system call per frame: a small first one, then large ones.
            keys = self._mask_keys = os.urandom(_MASK_KEY_BATCH if keys else _FIRST_MASK_KEY_BATCH)
            pos = 0
        self._mask_pos = pos + 4
        return keys[pos : pos + 4]

    def _encode(self, packet: Packet) -> None:
        """Append *packet* to the output as one unfragmented binary message."""
        payload = packet.payload
        size = len(payload)
        ext = packet.ext_header
        head: bytes
        if packet.compression is not _NO_COMPRESSION or size > self._max_payload:
            parts = packet.encode_parts(self._max_payload)  # raises ResourceError when too big
            head = bytes(parts[0])
            payload = parts[1] if len(parts) > 1 else b""
            size = len(payload)
        else:
            # Packed here rather than through Packet.encode_parts: on the hot path that saves
            # three calls and two lists per packet; the bytes are the same.
            head = _pack_header(
                VERSION, 0, packet.packet_type, packet.biz_type, packet.message_id,
                len(ext), size, packet.flags,
            )
            if ext:
                head += bytes(ext)
        total = len(head) + size
        buf = self._buf
        if self._mask_bit:
            # A client frame is masked, which copies it anyway: the masked copy is the one
            # written.  A small packet is joined and masked in one call; a larger payload is
            # masked apart from the header, with the key turned to where the payload begins,
            # and a large one is handed on by reference like the server's.
            pos = self._mask_pos  # _mask_key(), inline on the hot path
            keys = self._mask_keys
            if pos >= len(keys):
                keys = self._mask_keys = os.urandom(
                    _MASK_KEY_BATCH if keys else _FIRST_MASK_KEY_BATCH
                )
                pos = 0
            self._mask_pos = pos + 4
            key = keys[pos : pos + 4]
            if total < 126:
                buf += _SMALL_MASKED.pack(0x82, 0x80 | total, key)
                buf += _mask(head + payload if size else head, key)
                return
            buf += _frame_header(total, 0x80)
            buf += key
            if size < _SPLIT_MASK_LIMIT:
                buf += _mask(head + payload, key)
                return
            buf += _mask(head, key)
            turn = len(head) & 3
            masked = _mask(payload, key[turn:] + key[:turn] if turn else key)
            if size < COALESCE_LIMIT:
                buf += masked
            else:
                self._parts.append(buf)
                self._parts.append(masked)
                self._buf = bytearray()
            return
        buf += _frame_header(total, 0)
        buf += head
        if size < COALESCE_LIMIT:
            buf += payload
        else:
            self._parts.append(buf)
            self._parts.append(payload)
            self._buf = bytearray()

    def _send_control(self, opcode: int, payload: bytes) -> None:
        """Append a control frame (Close, Ping, Pong; *payload* at most 125 bytes)."""
        buf = self._buf
        if self._mask_bit:
            key = self._mask_key()
            buf += bytes((0x80 | opcode, 0x80 | len(payload)))
            buf += key
            buf += _mask(payload, key)
        else:
            buf += bytes((0x80 | opcode, len(payload)))
            buf += payload

    def _send_close(self, code: int, reason: str) -> None:
        payload = b"" if code == NO_STATUS else _U16.pack(code) + _utf8_prefix(reason, 123)
        self._send_control(OP_CLOSE, payload)

    # --- receiving -----------------------------------------------------------------------------

    def _read(self, data: bytes | memoryview) -> None:
        """Take the next chunk of the stream: finish the frame an earlier chunk began, then
        parse the frames in *data*, then keep what is left of an unfinished one.

        Whole frames are cut straight out of *data*: a large unmasked payload (client side) is
        never copied, a masked one (server side) is copied once, by the unmasking.  A frame
        that *data* leaves unfinished gets a buffer of its own, of its exact size (its header
        was checked against the limits first); the rest of it is copied in as it arrives and
        that buffer is never reused, because packets may hold views of it.  Only a frame header
        cut in two (a few bytes) is joined to the next chunk.
        """
        view = memoryview(data)
        big = self._big
        if big is not None:
            filled = self._big_filled
            need = self._big_total - filled
            if len(view) < need:
                _copy(big, filled, view)
                self._big_filled = filled + len(view)
                self._big_copied += len(view)
                return
            _copy(big, filled, view[:need])
            self._big_copied += need
            self._big = None
            if self._parse_big(big) < 0 or len(view) == need:
                return
            view = view[need:]
        elif self._rbuf is not None:
            view = memoryview(self._rbuf + view)
            self._rbuf = None
        pos = self._parse(view)
        if pos < 0:
            return
        rest = len(view) - pos
        if rest:
            total = self._frame_total
            if total:
                new = self._new_big(total)
                if new is None:
                    return
                head = self._frame_head
                if head and type(new) is not bytearray:
                    # A masked big message (server side) into its pooled buffer: the part that
                    # came with this read is unmasked on its way there, so that no payload
                    # byte is copied and unmasked apart (_parse_large unmasks the rest).
                    _copy(new, 0, view[pos : pos + head])
                    key = _key_at(view, pos + head - 4)[0]
                    with memoryview(new) as out:
                        _unmask_into(out, head, view[pos + head :], key)
                    self._big_unmasked = rest - head
                    self._big_copied = head
                else:
                    _copy(new, 0, view[pos:])
                    self._big_unmasked = 0
                    self._big_copied = rest
                self._big_filled = rest
            else:
                self._rbuf = bytes(view[pos:])

    def _new_big(self, total: int) -> bytearray | None:
        """Make the buffer the unfinished frame of *total* bytes is received into: lent by the
        pool for a big binary message (its header was checked against the limits, so nothing
        is taken for a refused one), else its own.  ``None`` when the pool refused: the
        connection is ended with 1009 and ``resource.memory``."""
        pool = self._decoder.buffer_pool
        self._big_total = total
        big: bytearray
        if pool is not None and self._frame_big:
            try:
                big = pool.lend(total)
            except ResourceError as exc:
                self._no_memory(total, exc)
                return None
        else:
            big = bytearray(total)
        self._big = big
        return big

    def _parse_big(self, big: bytearray) -> int:
        """Parse the one frame *big* holds, received in parts; give a pooled *big* back unless
        the frame's packet took it (its payload is a view of it)."""
        self._framebuf = big
        frame = memoryview(big)[: self._big_total]
        try:
            pos = self._parse(frame)
        finally:
            frame.release()  # the payload's slice stays valid: it is a view of *big*
            left, self._framebuf = self._framebuf, None
        PacketDecoder._give_back(left)  # nothing for a plain buffer or one the packet took
        return pos

    def _parse_large(
        self, view: memoryview, start: int, key_at: int, length: int, masked: int
    ) -> int:
        """Turn the big binary message ``view[start:start + length]`` into a packet whose
        payload is a view of a pooled buffer, and count it; return -1 when the connection
        ended (a bad packet, or the pool refused), else 0.

        The buffer is the frame's own when it was received in parts (:meth:`_parse_big`), else
        one lent now.  A masked (client-to-server) payload is unmasked into it, in place in the
        frame's own: that is the one copy receiving it takes.  An unmasked one (server to
        client) is a view of what was read: of the frame's own buffer, or of the read area
        when it came whole in one read (no pooled buffer then, nothing copied).
        """
        own = self._framebuf
        copied = received = 0
        buf: bytearray | None = None  # a buffer lent here, for this message
        if own is not None:
            copied = self._big_copied
            packet_view = view
            if masked:
                # In place, from where _read stopped unmasking (a plain buffer: from the start).
                done = self._big_unmasked if type(own) is not bytearray else 0
                key = _key_at(view, key_at)[0]
                _unmask_into(view, start + done, view[start + done : start + length], key, done)
                self._big_unmasked = 0
                copied += length
                received = length
        elif masked:
            key = _key_at(view, key_at)[0]
            src = view[start : start + length]
            pool = self._decoder.buffer_pool
            if pool is not None:
                try:
                    buf = pool.lend(length)
                except ResourceError as exc:
                    self._no_memory(length, exc)
                    return -1
                packet_view = memoryview(buf)
                _unmask_into(packet_view, 0, src, key)
            else:
                packet_view = memoryview(_mask(src, key))
            start = 0
            copied = received = length
        else:
            packet_view = view
        fields = self._check_packet(packet_view, start, length)
        packet: Packet | None = None
        if fields is not None:
            try:
                packet = build_packet(
                    packet_view, start, fields, self.limits, self.zero_copy_threshold
                )
            except ProtocolError as exc:  # a payload that does not decompress
                self._bad_packet(exc)
        if packet is None or fields is None:
            if buf is not None:
                packet_view.release()
                PacketDecoder._give_back(buf)
            return -1
        viewed = type(packet.payload) is memoryview
        payload_len = fields[6]
        decoder = self._decoder
        if viewed:
            decoder.zero_copy_packets += 1
            if own is not None:
                self._framebuf = None  # the packet took it: _parse_big keeps it out
            elif buf is None and not masked:
                self._lent = True  # a view of the read area: the next read gets a new one
        else:
            copied += payload_len
            if buf is not None:
                packet_view.release()
                PacketDecoder._give_back(buf)
        if payload_len >= cast(int, self.zero_copy_threshold):
            decoder.counters.add(payload_len, viewed, copied, length, received)
        self._events.append(PacketReceived(packet))
        return 0

    def _check_packet(
        self, view: memoryview, start: int, length: int
    ) -> HeaderFields | None:
        """Check the packet header at *start* of a *length*-byte message (the checks the hot
        path of :meth:`_parse` makes inline); return its fields, or ``None`` when the
        connection was ended for a bad packet."""
        if length < HEADER_SIZE:
            self._bad_packet(
                ProtocolError(
                    Protocol.WIRE,
                    f"a message of {length} bytes is shorter than a packet header",
                    code="protocol.bad_length",
                )
            )
            return None
        fields: HeaderFields = HEADER.unpack_from(view, start)
        limits = self.limits
        if (
            fields[0] != VERSION
            or fields[1] > 2
            or fields[2] > 2
            or fields[5] > limits.max_ext_header
            or fields[6] > limits.max_payload
        ):
            self._bad_packet(header_error(fields, limits))
            return None
        if HEADER_SIZE + fields[5] + fields[6] != length:
            self._bad_packet(
                ProtocolError(
                    Protocol.WIRE,
                    f"a message of {length} bytes holds a packet of "
                    f"{HEADER_SIZE + fields[5] + fields[6]}",
                    code="protocol.bad_length",
                )
            )
            return None
        return fields

    def _drop_big(self) -> None:
        """Forget the unfinished frame, giving a pooled buffer back (the connection ended)."""
        big, self._big = self._big, None
        PacketDecoder._give_back(big)

    def _no_memory(self, nbytes: int, exc: ResourceError) -> None:
        self._abort(
            MESSAGE_TOO_BIG,
            ProtocolError(
                Protocol.WIRE, f"no memory for a {nbytes}-byte message: {exc}",
                code="resource.memory",
            ),
        )

    def _parse(self, view: memoryview) -> int:
        """Act on the whole frames at the start of *view*; return where the first unfinished
        one begins (its size, when its header is complete, in ``_frame_total``), or -1 when the
        connection ended."""
        end = len(view)
        pos = 0
        expect_mask = 0 if self.is_client else 0x80
        max_message = self.max_message
        limits = self.limits
        max_ext = limits.max_ext_header
        max_payload = limits.max_payload
        zc = self.zero_copy_threshold
        # Unmasked (client side) payloads of this size are handed out as views of *view*.
        lend_at = None if expect_mask else zc
        events = self._events
        unpack_header = HEADER.unpack_from
        big_from = self._big_from
        self._frame_total = 0
        try:
            while end - pos >= 2:
                b0 = view[pos]
                b1 = view[pos + 1]
                length = b1 & 0x7F
                start = pos + 2
                if length >= 126:
                    if length == 126:
                        start += 2
                        if end < start:
                            break
                        length = _U16.unpack_from(view, pos + 2)[0]
                        if length < 126:
                            raise _FrameError(PROTOCOL_ERROR, "a 16-bit length under 126")
                    else:
                        start += 8
                        if end < start:
                            break
                        length = _U64.unpack_from(view, pos + 2)[0]
                        if length < 65536 or length >> 63:
                            raise _FrameError(PROTOCOL_ERROR, "an invalid 64-bit length")
                if b1 & 0x80 != expect_mask:
                    raise _FrameError(
                        PROTOCOL_ERROR,
                        "a masked frame from the server" if expect_mask == 0
                        else "an unmasked frame from the client",
                    )
                key_at = start
                if expect_mask:
                    start += 4
                stop = start + length
                if b0 == 0x82 and not self._msg_opcode:
                    # The hot path: a whole binary message in one frame, that is one packet.
                    if length > max_message:
                        raise _FrameError(MESSAGE_TOO_BIG, "")
                    if end < stop:
                        self._frame_total = stop - pos
                        self._frame_big = big_from is not None and length >= big_from
                        # Where its payload starts, for _read to unmask the part received.
                        self._frame_head = start - pos if expect_mask and end > start else 0
                        break
                    pos = stop
                    if big_from is not None and length >= big_from:
                        # A big message: into a pooled buffer, counted (_parse_large).
                        if self._parse_large(view, start, key_at, length, expect_mask) < 0:
                            return -1
                        continue
                    if expect_mask:
                        packet_view = memoryview(
                            _mask(view[start:stop], _key_at(view, key_at)[0])
                        )
                        start = 0
                    else:
                        packet_view = view
                    # Packet.decode's checks, inline: they cost a third of the time otherwise.
                    # A packet that fails one goes to _check_packet, which makes the same
                    # checks in the same order and says which failed.
                    if length < HEADER_SIZE:
                        self._check_packet(packet_view, start, length)
                        return -1
                    fields = unpack_header(packet_view, start)
                    if (
                        fields[0] != VERSION
                        or fields[1] > 2
                        or fields[2] > 2
                        or fields[5] > max_ext
                        or fields[6] > max_payload
                        or HEADER_SIZE + fields[5] + fields[6] != length
                    ):
                        self._check_packet(packet_view, start, length)
                        return -1
                    if lend_at is not None and fields[6] >= lend_at:
                        self._lent = True  # the payload is a view of what was read
                    try:
                        packet = build_packet(packet_view, start, fields, limits, zc)
                    except ProtocolError as exc:  # a payload that does not decompress
                        self._bad_packet(exc)
                        return -1
                    events.append(PacketReceived(packet))
                    continue
                opcode = self._check_frame(b0, length)
                if end < stop:
                    self._frame_total = stop - pos
                    self._frame_big = False
                    break
                payload: Buffer = view[start:stop]
                if expect_mask:
                    payload = _mask(payload, _key_at(view, key_at)[0])
                pos = stop
                if not self._frame(opcode, b0 & 0x80, payload):
                    return -1
        except _FrameError as exc:
            if exc.code == MESSAGE_TOO_BIG:
                self._too_big()
            else:
                self._abort(
                    exc.code,
                    ProtocolError(
                        Protocol.WEBSOCKET, f"invalid WebSocket frame: {exc.reason}",
                        code="protocol.websocket",
                    ),
                )
            return -1
        return pos

    def _check_frame(self, b0: int, length: int) -> int:
        """Check the header of any frame but a lone binary one; return its opcode.

        Raises:
            _FrameError: the header breaks RFC 6455 section 5 or the size limit.
        """
        if b0 & 0x70:
            raise _FrameError(PROTOCOL_ERROR, "reserved bits set without an extension")
        opcode = b0 & 0x0F
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                raise _FrameError(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
            if not b0 & 0x80:
                raise _FrameError(PROTOCOL_ERROR, "a fragmented control frame")
            if length > 125:
                raise _FrameError(PROTOCOL_ERROR, "a control frame longer than 125 bytes")
            return opcode
        if opcode == OP_CONTINUATION:
            if not self._msg_opcode:
                raise _FrameError(PROTOCOL_ERROR, "a continuation frame outside a message")
            held = len(self._msg) if self._msg is not None else 0
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._msg_opcode:
                raise _FrameError(PROTOCOL_ERROR, "a new message inside a fragmented one")
            held = 0
        else:
            raise _FrameError(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        # Text is validated and dropped frame by frame, so only its frames are bounded.
        if held + length > self.max_message:
            raise _FrameError(MESSAGE_TOO_BIG, "")
        return opcode

    def _frame(self, opcode: int, fin: int, payload: Buffer) -> bool:
        """Act on one checked frame other than a lone binary one; return whether to go on.

        Raises:
            _FrameError: a text or close payload is invalid.
        """
        if opcode == OP_PING:
            if self.state is _OPEN:
                self._send_control(OP_PONG, bytes(payload))
        elif opcode == OP_PONG:
            pass  # its arrival already restarted the keepalive clock (receive_data)
        elif opcode == OP_CLOSE:
            self._close_received(payload)
            return False
        elif opcode == OP_TEXT or (opcode == OP_CONTINUATION and self._msg_opcode == OP_TEXT):
            if self.text_policy == "error":
                self._abort(
                    UNSUPPORTED_DATA,
                    ProtocolError(
                        Protocol.WEBSOCKET,
                        "a text message arrived; msgtrans packets travel as binary messages",
                        code="protocol.text_frame",
                    ),
                )
                return False
            if opcode == OP_TEXT:
                self._utf8 = _utf8_decoder()
            # Ignored, but still checked: RFC 6455 wants invalid UTF-8 to fail the connection.
            try:
                cast(codecs.IncrementalDecoder, self._utf8).decode(payload, bool(fin))
            except UnicodeDecodeError:
                raise _FrameError(INVALID_DATA, "a text message that is not UTF-8") from None
            self._msg_opcode = 0 if fin else OP_TEXT
        elif opcode == OP_BINARY:
            # The first fragment of a message (a whole one takes the hot path in _parse).
            self._msg = bytearray(payload)
            self._msg_opcode = OP_BINARY
        else:
            message = cast(bytearray, self._msg)
            message += payload
            if fin:
                # The assembled buffer becomes the packet's memory: the next message gets a new
                # one.
                self._msg = None
                self._msg_opcode = 0
                try:
                    packet = Packet.decode(message, self.limits, self.zero_copy_threshold)
                except ProtocolError as exc:
                    self._bad_packet(exc)
                    return False
                zc = self.zero_copy_threshold
                if zc is not None and len(packet.payload) >= zc:
                    # Joined from its fragments (no pool): every byte copied, a miss.
                    n = len(message)
                    viewed = type(packet.payload) is memoryview
                    self._decoder.counters.add(len(packet.payload), viewed, n, n)
                self._events.append(PacketReceived(packet))
        return True

    def _bad_packet(self, exc: ProtocolError) -> None:
        # A valid WebSocket message that is not a valid packet: 1007, "data inconsistent with
        # the type of the message" (1009 for a packet over the limits).  The wire error is
        # reported as it is.
        self._abort(
            MESSAGE_TOO_BIG if exc.error_code == "protocol.frame_too_large" else INVALID_DATA, exc
        )

    def _too_big(self) -> None:
        self._abort(
            MESSAGE_TOO_BIG,
            ProtocolError(
                Protocol.WEBSOCKET,
                f"a message exceeded the limit of {self.max_message} bytes",
                code="protocol.frame_too_large",
            ),
        )

    def _close_received(self, payload: Buffer) -> None:
        """Act on the peer's Close frame: the end of the close handshake either way.

        Raises:
            _FrameError: the Close payload is invalid (RFC 6455 sections 5.5.1 and 7.4).
        """
        if not payload:
            code, reason = NO_STATUS, ""
        elif len(payload) == 1:
            raise _FrameError(PROTOCOL_ERROR, "a Close frame with a 1-byte payload")
        else:
            code = _U16.unpack_from(payload)[0]
            if not (code in _DEFINED or 3000 <= code <= 4999):
                raise _FrameError(PROTOCOL_ERROR, f"a Close frame with code {code}")
            try:
                reason = bytes(payload[2:]).decode("utf-8")
            except UnicodeDecodeError:
                raise _FrameError(INVALID_DATA, "a Close reason that is not UTF-8") from None
        self.write_closed = True
        self._close_deadline = None
        self._drop_big()
        self._msg = None
        self._rbuf = None
        if self.state is _CLOSING:
            # The reply to our Close (or a Close that crossed ours): the handshake is complete.
            self.state = _CLOSED
            if code == NO_STATUS:
                code = self._close_code
            self._events.append(ConnectionClosed(code, reason, clean=True))
            return
        # The peer started the close: echo its code, then we are done.
        self._send_close(code, reason)
        self.state = _CLOSED
        self._events.append(CloseStarted(code, reason, by_peer=True))
        error = map_websocket_close(code, reason)
        if error is None:
            self._events.append(ConnectionClosed(code, reason, clean=True))
        else:
            self._events.append(ErrorOccurred(error))
            self._events.append(ConnectionClosed(code, reason, clean=False, error=error))

    def _receive_eof(self) -> None:
        state = self.state
        if state is _CLOSED:
            return
        if state is _OPEN or state is _CLOSING:
            self._end(
                TransportConnectionError(
                    "the connection ended without a WebSocket close handshake",
                    code="connection.reset",
                ),
                ABNORMAL,
            )
        else:
            self._end(
                TransportConnectionError(
                    "the connection ended during the WebSocket handshake",
                    code="connection.reset",
                )
            )

    # --- ending --------------------------------------------------------------------------------

    def _abort(self, code: int, error: TransportError) -> None:
        """Fail the WebSocket connection: a Close frame with *code* unless we sent one already,
        then the end (RFC 6455 section 7.1.7)."""
        if self.state is _OPEN:
            self._send_close(code, error.reason)
        self._end(error, code)

    def _end(self, error: TransportError, code: int | None = None) -> None:
        """Report *error*, end the connection uncleanly and ask the driver to close the socket."""
        self._pending.clear()
        self._drop_big()
        self._msg = None
        self._rbuf = None
        self._head = bytearray()
        self._close_deadline = self._pong_deadline = self._handshake_deadline = None
        self._fail(error, code)
        self.write_closed = True


class WebSocketClientMachine(WebSocketMachine):
    """The client side of a msgtrans WebSocket connection.

    Args:
        host: the ``Host`` header: the server's name, with ``:port`` when not the default.
        target: the request target, path and query (default ``"/"``).

    Keyword args:
        subprotocols: offered in ``Sec-WebSocket-Protocol`` (default ``("msgtrans.v1",)``);
            empty offers none.
        extra_headers: more request headers as ``(name, value)`` pairs (``str`` or ``bytes``),
            for example ``Authorization`` or ``Origin``.
        limits, zero_copy_threshold, ping_interval, ping_timeout, close_timeout,
        handshake_timeout, text_policy: as for :class:`WebSocketMachine`.

    A server that refuses the upgrade ends the connection with a
    :class:`~msgtrans.core.errors.TransportConnectionError` (``connection.handshake``, retryable
    for 5xx statuses, not for others; ``connection.refused_by_server`` for 429 and 503, after
    the ``Retry-After`` seconds if given); an invalid answer ends it with a
    :class:`~msgtrans.core.errors.ProtocolError` (``protocol.websocket``).

    Raises:
        ConfigurationError: *host*, *target*, a subprotocol, a header or another setting is
            invalid.
    """

    def __init__(
        self,
        host: str,
        target: str = "/",
        *,
        subprotocols: Sequence[str] = (DEFAULT_SUBPROTOCOL,),
        extra_headers: Iterable[tuple[str | bytes, str | bytes]] = (),
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        text_policy: TextPolicy = "error",
    ) -> None:
        super().__init__(
            is_client=True, limits=limits, zero_copy_threshold=zero_copy_threshold,
            ping_interval=ping_interval, ping_timeout=ping_timeout, close_timeout=close_timeout,
            handshake_timeout=handshake_timeout, text_policy=text_policy,
        )
        if not host or not isinstance(host, str):
            raise ConfigurationError("host", f"must be a non-empty host name, got {host!r}")
        if not target.startswith("/") or not target.isascii():
            raise ConfigurationError("target", f"must be an ASCII path starting with /: {target!r}")
        self.host = host
        self.target = target
        self.subprotocols = _check_subprotocols(subprotocols)
        self.extra_headers = [
            (_header_bytes(name), _header_bytes(value)) for name, value in extra_headers
        ]
        self._host_bytes = _request_head(host, target, tuple(self.extra_headers))

    def _begin_handshake(self) -> None:
        # The request wsproto would send, byte for byte (the headers were checked by h11 in
        # __init__); the key is 16 random bytes, base64 (RFC 6455 section 4.1).
        random = os.urandom(16 + _FIRST_MASK_KEY_BATCH)
        key = base64.b64encode(random[:16])
        self._key = key
        if not self._mask_keys:
            self._mask_keys = random[16:]
            self._mask_pos = 0
        request = [
            b"GET ", self.target.encode("ascii"), b" HTTP/1.1\r\nHost: ",
            self._host_bytes,
            b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ", key,
            b"\r\nSec-WebSocket-Version: 13\r\n",
        ]
        if self.subprotocols:
            request += (b"Sec-WebSocket-Protocol: ", ", ".join(self.subprotocols).encode(),
                        b"\r\n")
        for name, value in self.extra_headers:
            request += (name, b": ", value, b"\r\n")
        request.append(b"\r\n")
        self._buf += b"".join(request)

    def _receive_handshake(self, data: Buffer, now: float) -> None:
        head = self._head
        head += data
        end = _HEAD_END.search(head)
        if end is None:
            if len(head) > _MAX_HEAD:
                self._invalid_response("the response head is longer than 16 KiB")
            return
        parsed = _parse_head(_head_of(head, end), _STATUS_101)
        if parsed is not None:
            self._check_accept(parsed[1], head[end.end() :], now)
            return
        # Not a plain 101: h11 reads it, as wsproto did (a refusal, or a 101 in odd form).
        h = h11.Connection(h11.CLIENT)
        h.send(h11.Request(method=b"GET", target=b"/", headers=[
            (b"host", b"h"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade")
        ]))
        try:
            h.receive_data(bytes(head))
            event = h.next_event()
        except h11.RemoteProtocolError as exc:
            self._invalid_response(str(exc))
            return
        if type(event) is h11.InformationalResponse and event.status_code == 101:
            self._check_accept(list(event.headers), h.trailing_data[0], now)
        elif isinstance(event, (h11.InformationalResponse, h11.Response)):
            self._end(
                map_websocket_reject(event.status_code, retry_after=_retry_after(event.headers))
            )
        else:  # pragma: no cover - a complete head is always a response or an error
            self._invalid_response("not an HTTP response")

    def _check_accept(self, fields: list[tuple[bytes, bytes]], trailing: Buffer,
                      now: float) -> None:
        """Check a ``101`` response as wsproto does (RFC 6455 section 4.1), then open."""
        connection: bytes | None = None
        upgrade = accept = protocol = extensions = None
        headers: list[tuple[bytes, bytes]] = []
        for name, value in fields:
            if name == b"connection":
                connection = value
            elif name == b"upgrade":
                upgrade = value
            elif name == b"sec-websocket-accept":
                accept = value
            elif name == b"sec-websocket-protocol":
                protocol = value
            elif name == b"sec-websocket-extensions":
                extensions = value
            else:
                headers.append((name, value))
        try:
            if connection is None or not any(
                t.lower() == "upgrade" for t in _comma_tokens(connection)
            ):
                raise ValueError("Missing header, 'Connection: Upgrade'")
            if upgrade is None or upgrade.lower() != b"websocket":
                raise ValueError("Missing header, 'Upgrade: websocket'")
            if accept != _accept_token(self._key):
                raise ValueError("Bad accept token")
            subprotocol = None if protocol is None else protocol.decode("ascii")
            if subprotocol is not None and subprotocol not in self.subprotocols:
                raise ValueError(f"unrecognized subprotocol {subprotocol}")
            if extensions is not None:
                # None was offered, so none may be accepted.
                first = _comma_tokens(extensions)[0].split(";", 1)[0].strip()
                raise ValueError(f"unrecognized extension {first}")
        except ValueError as exc:
            self._invalid_response(str(exc))
            return
        self._head = bytearray()
        self._established(now, subprotocol, self.target, _header_pairs(headers))
        if trailing:
            # Frames the server sent right behind its 101 response.
            self._read(bytes(trailing))

    def _invalid_response(self, reason: str) -> None:
        self._end(
            ProtocolError(
                Protocol.WEBSOCKET, f"invalid handshake response: {reason}",
                code="protocol.websocket",
            )
        )


class WebSocketServerMachine(WebSocketMachine):
    """The server side of a msgtrans WebSocket connection.

    Keyword args:
        path: the request path served (default ``"/"``; the query is not compared); ``None``
            serves any path.  Another path is answered with ``404`` and the connection closes.
        subprotocols: the subprotocols supported, in order of preference (default
            ``("msgtrans.v1",)``).  The first one the client offered is echoed; a client that
            offers none of them is accepted without a subprotocol.
        extra_headers: more headers for the ``101`` response, as ``(name, value)`` pairs.
        limits, zero_copy_threshold, ping_interval, ping_timeout, close_timeout,
        handshake_timeout, text_policy: as for :class:`WebSocketMachine`.

    A request that is not a WebSocket upgrade gets ``426 Upgrade Required``; a malformed one
    ``400`` (or what the fault calls for: ``426`` for a wrong WebSocket version, ``431`` for
    huge headers); then the connection closes with a
    :class:`~msgtrans.core.errors.ProtocolError` (``protocol.websocket``).  A wrong path ends
    with a :class:`~msgtrans.core.errors.TransportConnectionError` (``connection.handshake``,
    not retryable).

    Raises:
        ConfigurationError: *path*, a subprotocol, a header or another setting is invalid.
    """

    def __init__(
        self,
        *,
        path: str | None = "/",
        subprotocols: Sequence[str] = (DEFAULT_SUBPROTOCOL,),
        extra_headers: Iterable[tuple[str | bytes, str | bytes]] = (),
        limits: Limits = DEFAULT_LIMITS,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        text_policy: TextPolicy = "error",
    ) -> None:
        super().__init__(
            is_client=False, limits=limits, zero_copy_threshold=zero_copy_threshold,
            ping_interval=ping_interval, ping_timeout=ping_timeout, close_timeout=close_timeout,
            handshake_timeout=handshake_timeout, text_policy=text_policy,
        )
        if path is not None and (not path.startswith("/") or "?" in path):
            raise ConfigurationError(
                "path", f"must start with / and hold no query, or be None: {path!r}"
            )
        self.path = path
        self.subprotocols = _check_subprotocols(subprotocols)
        self.extra_headers = [
            (_header_bytes(name), _header_bytes(value)) for name, value in extra_headers
        ]
        # The extra headers as they follow a 101 response written here, or None when one of
        # them is unusual enough to leave to h11 (which checks it, and refuses the request
        # with a 400 if it is invalid).
        fast: bytes | None = b"".join(n + b": " + v + b"\r\n" for n, v in self.extra_headers)
        for name, value in self.extra_headers:
            line = _FIELD_LINE.fullmatch(name + b": " + value)
            if line is None or line[2].strip(b" \t") != value or name.lower() in _BODY_FIELDS:
                fast = None
        self._extra_fast = fast
        # A request that is not a plain, valid upgrade for our path is read by an h11
        # connection of our own, so that a plain HTTP request can be answered properly;
        # wsproto then validates the upgrade from the parsed request (its
        # initiate_upgrade_connection).  h11 bounds the request head to 16 KiB.
        self._h11: h11.Connection | None = None
        self._request: h11.Request | None = None
        #: Set by a server's admission: called with the request target and its headers
        #: (lower-case names) before the upgrade is accepted; ``(status, reason)`` refuses it
        #: with that HTTP status.  Such requests take the h11 path (the fast one skips it).
        self.request_check: RequestCheck | None = None

    def _receive_handshake(self, data: Buffer, now: float) -> None:
        if self._h11 is not None:
            self._receive_h11(data, now)
            return
        head = self._head
        head += data
        end = _HEAD_END.search(head)
        if end is None:
            if len(head) > _MAX_HEAD:
                self._to_h11(now)
            return
        if not self._accept_plain(head, end, now):
            self._to_h11(now)

    def _accept_plain(self, head: bytearray, end: re.Match[bytes], now: float) -> bool:
        """Accept a plain, valid upgrade request for our path, checked as h11 and wsproto
        check it, with the response wsproto would write; return ``False`` (having done
        nothing) for any other request.

        This is the handshake of nearly every connection, and doing it here rather than
        through h11 and wsproto makes it about five times cheaper (see the module docstring).
        """
        parsed = _parse_head(_head_of(head, end), _REQUEST_LINE)
        extra = self._extra_fast
        if parsed is None or extra is None or self.request_check is not None:
            return False
        start, fields = parsed
        target = start[1].decode("ascii")
        if self.path is not None and target.split("?", 1)[0] != self.path:
            return False
        hosts = 0
        host = b""
        upgrade_any = False
        upgrade = connection = version = key = None
        offered: list[bytes] = []
        offered_extensions: list[bytes] = []
        for name, value in fields:
            if name == b"host":
                hosts += 1
                host = value
            elif name == b"upgrade":
                upgrade = value
                upgrade_any = upgrade_any or b"websocket" in value.lower()
            elif name == b"connection":
                connection = value
            elif name == b"sec-websocket-version":
                version = value
            elif name == b"sec-websocket-key":
                key = value
            elif name == b"sec-websocket-protocol":
                offered += value.split(b",")
            elif name == b"sec-websocket-extensions":
                offered_extensions.append(value)  # none is accepted, but wsproto reads them
        if (
            hosts != 1
            or not upgrade_any
            or upgrade is None
            or upgrade.lower() != b"websocket"
            or version != b"13"
            or key is None
            or connection is None
        ):
            return False
        try:
            if not any(t.lower() == "upgrade" for t in _comma_tokens(connection)):
                return False
            host.decode("idna")
            protocols = [p.decode("ascii").strip() for p in offered]
            for value in offered_extensions:
                _comma_tokens(value)
        except ValueError:  # UnicodeError included: h11 and wsproto refuse it
            return False
        subprotocol = next((p for p in self.subprotocols if p in protocols), None)
        response = [
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: ",
            _accept_token(key),
            b"\r\n",
        ]
        if subprotocol is not None:
            response += (b"Sec-WebSocket-Protocol: ", subprotocol.encode("ascii"), b"\r\n")
        response += (extra, b"\r\n")
        self._buf += b"".join(response)
        trailing = bytes(head[end.end() :])
        self._head = bytearray()
        self._established(now, subprotocol, target, _header_pairs(fields))
        if trailing:
            # Frames the client sent right after its request (it did not wait for the answer).
            self._read(trailing)
        return True

    def _to_h11(self, now: float) -> None:
        """Hand the request to h11 (see :meth:`_accept_plain`), with what arrived so far."""
        data = bytes(self._head)
        self._head = bytearray()
        self._h11 = h11.Connection(h11.SERVER)
        self._receive_h11(data, now)

    def _receive_h11(self, data: Buffer, now: float) -> None:
        h = cast(h11.Connection, self._h11)
        try:
            h.receive_data(bytes(data))
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    return
                if type(event) is h11.Request:
                    if not self._check_request(event):
                        return
                    self._request = event
                elif type(event) is h11.EndOfMessage:
                    # The request is complete (it has no body): accept or refuse it.
                    self._upgrade(cast(h11.Request, self._request), now)
                    return
        except h11.RemoteProtocolError as exc:
            self._refuse(
                exc.error_status_hint, f"Bad request: {exc}\n", (),
                _handshake_error(f"bad HTTP request: {exc}"),
            )

    def _check_request(self, request: h11.Request) -> bool:
        """Refuse what is not a WebSocket upgrade for our path; return whether to go on."""
        upgrade = False
        has_body = False
        for name, value in request.headers:
            if name == b"upgrade":
                upgrade = upgrade or b"websocket" in value.lower()
            elif name in (b"content-length", b"transfer-encoding"):
                has_body = has_body or value.strip() != b"0"
        target = request.target.decode("latin-1")
        if not upgrade:
            self._refuse(
                426,
                "This is a msgtrans WebSocket endpoint: connect with a WebSocket client.\n",
                ((b"upgrade", b"websocket"), (b"sec-websocket-version", b"13")),
                _handshake_error(f"plain HTTP request for {target} without a WebSocket upgrade"),
            )
            return False
        if request.method != b"GET":
            # Checked here: wsproto's initiate_upgrade_connection assumes GET.
            self._refuse(
                405, "Method not allowed: a WebSocket upgrade is a GET\n", ((b"allow", b"GET"),),
                _handshake_error(f"WebSocket upgrade with method {request.method!r}"),
            )
            return False
        if self.path is not None and target.split("?", 1)[0] != self.path:
            self._refuse(
                404, "Not found\n", (),
                TransportConnectionError(
                    f"refused a WebSocket upgrade for path {target!r}: only {self.path!r} is "
                    "served (404)",
                    code="connection.handshake",
                    retryable=False,
                ),
            )
            return False
        if has_body:
            self._refuse(400, "Bad request: an upgrade request has no body\n", (),
                         _handshake_error("WebSocket upgrade request with a body"))
            return False
        check = self.request_check
        refusal = None if check is None else check(target, _header_pairs(request.headers))
        if refusal is not None:
            status, reason = refusal
            self._refuse(
                status, f"{reason}\n", (),
                TransportConnectionError(
                    f"refused a WebSocket upgrade for {target!r} by the server's admission "
                    f"({status}): {reason}",
                    code="connection.handshake", retryable=False,
                ),
            )
            return False
        return True

    def _upgrade(self, request: h11.Request, now: float) -> None:
        # wsproto is imported here, for the requests _accept_plain leaves to it: importing it
        # costs some 20 ms that most processes never need.
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, RejectConnection, Request
        from wsproto.utilities import ProtocolError as WsProtocolError
        from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.initiate_upgrade_connection(list(request.headers), request.target)
            offered: list[str] = []
            for event in ws.events():
                if type(event) is Request:
                    offered = event.subprotocols
            subprotocol = next((p for p in self.subprotocols if p in offered), None)
            self._buf += ws.send(
                AcceptConnection(
                    subprotocol=subprotocol, extensions=[], extra_headers=self.extra_headers
                )
            )
        # What wsproto and h11 raise on input they refuse (ValueError covers the
        # UnicodeDecodeError both raise on non-ASCII header values and targets).
        except (WsProtocolError, h11.ProtocolError, ValueError) as exc:
            hint = exc.event_hint if isinstance(exc, WsRemoteProtocolError) else None
            if isinstance(hint, RejectConnection):
                status, headers = hint.status_code, tuple(hint.headers)
            else:
                status, headers = 400, ()
            self._refuse(status, f"Bad request: {exc}\n", headers,
                         _handshake_error(f"invalid WebSocket upgrade request: {exc}"))
            return
        self._established(
            now, subprotocol, request.target.decode("latin-1"), _header_pairs(request.headers)
        )
        # Bytes the client sent right after its request (frames it did not wait to send).
        trailing = cast(h11.Connection, self._h11).trailing_data[0]
        if trailing:
            self._read(trailing)

    def _refuse(
        self,
        status: int,
        body: str,
        headers: Iterable[tuple[bytes, bytes]],
        error: TransportError,
    ) -> None:
        """Answer the request with an HTTP error response, then end the connection."""
        data = body.encode("utf-8")
        response_headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(data)).encode("ascii")),
            (b"connection", b"close"),
            *headers,
        ]
        h = cast(h11.Connection, self._h11)  # only requests read by h11 are refused
        try:
            out = h.send(h11.Response(status_code=status, headers=response_headers)) or b""
            out += h.send(h11.Data(data=data)) or b""
            out += h.send(h11.EndOfMessage()) or b""
            self._buf += out
        except h11.LocalProtocolError:  # pragma: no cover - h11 can always answer a request
            pass
        self._end(error)
