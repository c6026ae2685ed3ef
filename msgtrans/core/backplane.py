"""What a node of a msgtrans cluster publishes to its backplane and what it does with what it
receives (sans-IO): the :class:`Envelope` and its bytes, and the :class:`BackplaneNode`.

A backplane is a publish/subscribe bus that every server node of a cluster connects to (the
drivers use Redis pub/sub).  A ``send_to_all``, a ``send_to_group`` or a send to a session
held by another node is delivered locally by the node that makes it and published once as an
envelope; every other node that receives the envelope delivers it to its own sessions.  The
node that published it ignores its own copy, so nothing is delivered twice.

Channels (``prefix`` defaults to ``"msgtrans"``):

- ``{prefix}:all``: ``send_to_all``; every node subscribes.
- ``{prefix}:node:{node_id}``: sends to one session of that node; the node subscribes.
- ``{prefix}:group:{group}``: ``send_to_group``; a node subscribes while at least one of its
  sessions is in the group (so a group's traffic reaches only the nodes that need it).

While the backplane link is down or slow, outbound envelopes wait in a bounded buffer (by count
and by bytes); past the bound new ones are dropped and counted, and
:meth:`BackplaneNode.take_drop_notice` says so once per outage, for one log line.
Local delivery never waits for the backplane.

Envelope bytes (all integers big-endian)::

    magic "MTBP" | version 1 (u8) | kind (u8: 0 all, 1 group, 2 session) | biz_type (u8)
    | origin length (u8) | origin node id (ASCII) | target length (u16) | target (UTF-8)
    | ext header length (u16) | ext header | payload (the rest)

The target is empty for ``all``, the group's name, or the target session's id in decimal.
"""

from __future__ import annotations

import os
import re
import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

from .errors import ConfigurationError, Protocol, ProtocolError
from .groups import GroupTable, check_group

__all__ = [
    "DEFAULT_BACKPLANE_BUFFER_BYTES",
    "DEFAULT_BACKPLANE_BUFFER_MESSAGES",
    "BackplaneNode",
    "BackplaneStats",
    "Envelope",
    "TargetKind",
    "check_node_id",
    "new_node_id",
]

MAGIC = b"MTBP"
VERSION = 1
_HEAD = struct.Struct(">4sBBBB")
_U16 = struct.Struct(">H")
#: Envelopes buffered while the backplane is down, at most (then new ones are dropped).
DEFAULT_BACKPLANE_BUFFER_MESSAGES = 10_000
#: Bytes of envelopes buffered while the backplane is down, at most.
DEFAULT_BACKPLANE_BUFFER_BYTES = 16 * 1024 * 1024
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class TargetKind(IntEnum):
    """Who an envelope is for."""

    ALL = 0
    GROUP = 1
    SESSION = 2


def check_node_id(node_id: object) -> str:
    """Return *node_id* if valid: 1 to 64 characters of ``A-Z a-z 0-9 . _ -``.

    Raises:
        ConfigurationError: it is not (``field`` is ``"node_id"``).
    """
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        raise ConfigurationError("node_id", "must be 1-64 characters of A-Z a-z 0-9 . _ -, "
                                 f"got {node_id!r}")
    return node_id


def new_node_id() -> str:
    """A fresh random node id (16 hex digits)."""
    return os.urandom(8).hex()


def _bad(reason: str) -> ProtocolError:
    return ProtocolError(Protocol.WIRE, f"bad backplane envelope: {reason}",
                         code="protocol.backplane")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message on the backplane.

    Attributes:
        origin: the node id of the node that published it.
        kind: who it is for (:class:`TargetKind`).
        target: ``""`` for ``ALL``, the group name, or the session id in decimal.
        biz_type: the message's biz_type (0-255).
        payload: the message's payload.
        ext_header: the message's ext header (default empty).
    """

    origin: str
    kind: TargetKind
    target: str
    biz_type: int
    payload: bytes
    ext_header: bytes = b""

    def encode(self) -> bytes:
        """The envelope's bytes.

        Raises:
            ConfigurationError: a field does not fit (``field`` names it).
        """
        origin = check_node_id(self.origin).encode("ascii")
        target = self.target.encode("utf-8")
        if not 0 <= self.biz_type <= 255:
            raise ConfigurationError("biz_type", f"must be 0-255, got {self.biz_type}")
        if len(target) > 0xFFFF:
            raise ConfigurationError("target", "longer than 65535 bytes")
        if len(self.ext_header) > 0xFFFF:
            raise ConfigurationError("ext_header", "longer than 65535 bytes")
        return b"".join((
            _HEAD.pack(MAGIC, VERSION, int(self.kind), self.biz_type, len(origin)), origin,
            _U16.pack(len(target)), target, _U16.pack(len(self.ext_header)),
            bytes(self.ext_header), bytes(self.payload),
        ))

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Envelope:
        """The envelope in *data*.

        Raises:
            ProtocolError: *data* is not an envelope (code ``protocol.backplane``; the reason
                names what is wrong).
        """
        data = bytes(data)
        if len(data) < _HEAD.size:
            raise _bad(f"{len(data)} bytes, shorter than the {_HEAD.size}-byte head")
        magic, version, kind, biz_type, n = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise _bad(f"magic {magic!r}, not {MAGIC!r}")
        if version != VERSION:
            raise _bad(f"version {version}, not {VERSION}")
        try:
            kind = TargetKind(kind)
        except ValueError:
            raise _bad(f"unknown target kind {kind}") from None
        at = _HEAD.size
        origin_raw = data[at:at + n]
        at += n
        if len(origin_raw) != n or not n:
            raise _bad("truncated or empty origin")
        try:
            origin = check_node_id(origin_raw.decode("ascii"))
        except (UnicodeDecodeError, ConfigurationError):
            raise _bad(f"origin {origin_raw!r} is not a node id") from None
        target, at = _field(data, at, "target")
        ext, at = _field(data, at, "ext header")
        try:
            text = target.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("target is not UTF-8") from None
        if kind is TargetKind.ALL and text:
            raise _bad("an envelope for all sessions names a target")
        if kind is TargetKind.GROUP:
            try:
                check_group(text)
            except ConfigurationError as exc:
                raise _bad(f"group name: {exc.reason}") from None
        if kind is TargetKind.SESSION and not (text.isascii() and text.isdigit()):
            raise _bad(f"session id {text!r} is not a decimal number")
        return cls(origin, kind, text, biz_type, data[at:], ext)


def _field(data: bytes, at: int, name: str) -> tuple[bytes, int]:
    if len(data) < at + 2:
        raise _bad(f"truncated before the {name} length")
    (n,) = _U16.unpack_from(data, at)
    at += 2
    if len(data) < at + n:
        raise _bad(f"{name} of {n} bytes truncated")
    return data[at:at + n], at + n


@dataclass(frozen=True, slots=True)
class BackplaneStats:
    """The backplane figures of one node.

    Attributes:
        connected: whether the backplane link is up.
        published: envelopes handed to the backplane.
        received: envelopes from other nodes delivered here.
        dropped: envelopes dropped because the buffer was full while the link was down.
        buffered: envelopes waiting for the link.
        buffered_bytes: their bytes.
        invalid: received messages that were not envelopes (ignored).
        outages: times the link went down.
    """

    connected: bool
    published: int
    received: int
    dropped: int
    buffered: int
    buffered_bytes: int
    invalid: int
    outages: int


class BackplaneNode:
    """One node's side of the backplane (sans-IO).

    Args:
        node_id: this node's id (default: :func:`new_node_id`).
        prefix: the channel name prefix (default ``"msgtrans"``; 1-64 characters of
            ``A-Z a-z 0-9 . _ : -``).
        max_buffered: envelopes kept while the link is down (default 10,000).
        max_buffered_bytes: their bytes, at most (default 16 MiB).
        groups: the local group table to keep (default a new one; a transport passes its own,
            so that groups work the same with and without a backplane).

    Raises:
        ConfigurationError: a bad argument (``field`` names it).

    The driver calls :meth:`link_up` when it has connected (and subscribes to what it
    returns), :meth:`link_down` when the link broke, :meth:`take_outbound` to get what to
    publish, :meth:`requeue` with what it could not publish, and :meth:`received` with every
    message from a subscribed channel.  :meth:`join` / :meth:`leave` / :meth:`forget` keep the
    local group table and return the channels to (un)subscribe while the link is up.
    """

    def __init__(self, node_id: str | None = None, *, prefix: str = "msgtrans",
                 max_buffered: int = DEFAULT_BACKPLANE_BUFFER_MESSAGES,
                 max_buffered_bytes: int = DEFAULT_BACKPLANE_BUFFER_BYTES,
                 groups: GroupTable[int] | None = None) -> None:
        self.node_id = check_node_id(node_id if node_id is not None else new_node_id())
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigurationError("prefix", "must be 1-64 characters of A-Z a-z 0-9 . _ : -,"
                                     f" got {prefix!r}")
        for name, value in (("max_buffered", max_buffered),
                            ("max_buffered_bytes", max_buffered_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(name, f"must be an integer >= 0, got {value!r}")
        self.prefix = prefix
        self.max_buffered = max_buffered
        self.max_buffered_bytes = max_buffered_bytes
        self.groups: GroupTable[int] = groups if groups is not None else GroupTable()
        self._queue: deque[tuple[str, bytes]] = deque()
        self._queued_bytes = 0
        self._up = False
        self.published = 0
        self.received_count = 0
        self.dropped = 0
        self.invalid = 0
        self.outages = 0
        self._unreported = 0
        self._noticed = False

    # --- channels ------------------------------------------------------------------------------

    @property
    def all_channel(self) -> str:
        """The channel every node subscribes to (``send_to_all``)."""
        return f"{self.prefix}:all"

    def node_channel(self, node_id: str | None = None) -> str:
        """The channel of *node_id*'s sessions (default: this node's)."""
        return f"{self.prefix}:node:{node_id if node_id is not None else self.node_id}"

    def group_channel(self, group: str) -> str:
        """The channel of *group*."""
        return f"{self.prefix}:group:{group}"

    def subscriptions(self) -> list[str]:
        """Every channel this node needs now: all, its own, and its groups'."""
        return [self.all_channel, self.node_channel(),
                *(self.group_channel(g) for g in self.groups.groups())]

    # --- the link ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the link is up."""
        return self._up

    def link_up(self) -> list[str]:
        """The link is up: return the channels to subscribe to; buffered envelopes are now
        ready in :meth:`take_outbound`."""
        self._up = True
        # What was dropped after this outage's notice is reported once more, as a summary.
        self._noticed = False
        return self.subscriptions()

    def link_down(self) -> None:
        """The link broke: envelopes are buffered (bounded) until :meth:`link_up`."""
        if self._up:
            self.outages += 1
        self._up = False

    def take_outbound(self) -> list[tuple[str, bytes]]:
        """The ``(channel, bytes)`` to publish now, oldest first (nothing while the link is
        down); they leave the buffer: give back what fails with :meth:`requeue`."""
        if not self._up or not self._queue:
            return []
        out = list(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        self.published += len(out)
        return out

    def requeue(self, items: list[tuple[str, bytes]]) -> None:
        """Put back, first in line, what could not be published (the link broke under it);
        if the buffer is then over its bound, the newest envelopes are dropped."""
        self.published -= len(items)
        self._queue.extendleft(reversed(items))
        self._queued_bytes += sum(len(b) for _, b in items)
        while self._queue and (len(self._queue) > self.max_buffered
                               or self._queued_bytes > self.max_buffered_bytes):
            _, data = self._queue.pop()
            self._queued_bytes -= len(data)
            self._drop()

    def _drop(self) -> None:
        self.dropped += 1
        self._unreported += 1

    def take_drop_notice(self) -> int | None:
        """The envelopes dropped and not reported yet, at most once per outage (for one log
        line), and once more after :meth:`link_up` for the rest: ``None`` when there is
        nothing to report now."""
        if self._unreported == 0 or self._noticed:
            return None
        n, self._unreported = self._unreported, 0
        self._noticed = True
        return n

    # --- publishing ----------------------------------------------------------------------------

    def _publish(self, channel: str, envelope: Envelope) -> bool:
        data = envelope.encode()
        # The bound holds whether the link is down or only slow: the driver takes what is
        # queued as fast as the backplane accepts it.
        if (len(self._queue) >= self.max_buffered
                or self._queued_bytes + len(data) > self.max_buffered_bytes):
            self._drop()
            return False
        self._queue.append((channel, data))
        self._queued_bytes += len(data)
        return True

    def to_all(self, payload: bytes, biz_type: int = 0, ext_header: bytes = b"") -> bool:
        """Publish a message for every session of every other node; return ``False`` when it
        was dropped (link down, buffer full)."""
        return self._publish(self.all_channel, Envelope(
            self.node_id, TargetKind.ALL, "", biz_type, bytes(payload), bytes(ext_header)))

    def to_group(self, group: str, payload: bytes, biz_type: int = 0,
                 ext_header: bytes = b"") -> bool:
        """Publish a message for the members of *group* on every other node; ``False`` when
        dropped.

        Raises:
            ConfigurationError: *group* is not a valid name.
        """
        check_group(group)
        return self._publish(self.group_channel(group), Envelope(
            self.node_id, TargetKind.GROUP, group, biz_type, bytes(payload), bytes(ext_header)))

    def to_session(self, node_id: str, session_id: int, payload: bytes, biz_type: int = 0,
                   ext_header: bytes = b"") -> bool:
        """Publish a message for session *session_id* of node *node_id*; ``False`` when
        dropped.

        Raises:
            ConfigurationError: *node_id* or *session_id* is invalid.
        """
        check_node_id(node_id)
        if isinstance(session_id, bool) or not isinstance(session_id, int) or session_id < 0:
            raise ConfigurationError("session_id", f"must be an integer >= 0, got "
                                     f"{session_id!r}")
        return self._publish(self.node_channel(node_id), Envelope(
            self.node_id, TargetKind.SESSION, str(session_id), biz_type, bytes(payload),
            bytes(ext_header)))

    # --- receiving -----------------------------------------------------------------------------

    def received(self, channel: str, data: bytes | bytearray | memoryview) -> Envelope | None:
        """A message arrived on *channel*: the envelope to deliver locally, or ``None`` (this
        node's own, not an envelope (counted in ``invalid``), or for a group this node has no
        member in any more)."""
        try:
            envelope = Envelope.decode(data)
        except ProtocolError:
            self.invalid += 1
            return None
        if envelope.origin == self.node_id:
            return None
        if envelope.kind is TargetKind.GROUP and envelope.target not in self.groups:
            return None
        if envelope.kind is TargetKind.SESSION and channel != self.node_channel():
            return None
        self.received_count += 1
        return envelope

    # --- groups --------------------------------------------------------------------------------

    def join(self, session_id: int, group: str) -> list[str]:
        """Session *session_id* joined *group*: the channels to subscribe to now (the group's,
        when it is the first local member and the link is up).

        Raises:
            ConfigurationError: *group* is not a valid name.
        """
        first = self.groups.join(session_id, group)
        return [self.group_channel(group)] if first and self._up else []

    def leave(self, session_id: int, group: str) -> list[str]:
        """Session *session_id* left *group*: the channels to unsubscribe from now."""
        last = self.groups.leave(session_id, group)
        return [self.group_channel(group)] if last and self._up else []

    def forget(self, session_id: int) -> list[str]:
        """Session *session_id* closed: it leaves every group; the channels to unsubscribe
        from now."""
        emptied = self.groups.forget(session_id)
        return [self.group_channel(g) for g in emptied] if self._up else []

    def stats(self) -> BackplaneStats:
        """The node's figures now."""
        return BackplaneStats(self._up, self.published, self.received_count, self.dropped,
                              len(self._queue), self._queued_bytes, self.invalid, self.outages)
