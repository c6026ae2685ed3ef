"""Groups and the backplane, backend-neutral: :class:`BackplaneSettings` (what the builder's
``backplane()`` sets) and :class:`ClusterHub`, which every transport holds.

The hub keeps the transport's group table (session id to groups, group to session ids), the
:class:`~msgtrans.core.backplane.BackplaneNode` when a backplane is configured, and the
backend's link to Redis once it started.  Sessions join and leave through it; the transport
asks it whom a group or an envelope from another node is for, and hands it what to publish.
All of this is synchronous; the backend delivers (``broadcast``) and runs the link.

Locking: the asyncio backend touches the hub from its loop only; trio from its thread while
the link's threads touch the node, and the blocking backend from any thread: both use
:attr:`ClusterHub.lock` (an ``RLock``; the blocking backend's is its I/O lock).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.backplane import (
    DEFAULT_BACKPLANE_BUFFER_BYTES,
    DEFAULT_BACKPLANE_BUFFER_MESSAGES,
    BackplaneNode,
    BackplaneStats,
    Envelope,
    TargetKind,
    check_node_id,
    new_node_id,
)
from ..core.errors import ConfigurationError, ResourceError, TransportConnectionError
from ..core.groups import GroupTable, check_group
from ..core.packet import Buffer
from .backplane import check_redis_url

__all__ = ["BackplaneSettings", "ClusterHub", "parse_session_ref"]


@dataclass(frozen=True, slots=True)
class BackplaneSettings:
    """What ``builder.backplane(url, ...)`` set (see there)."""

    url: str
    prefix: str = "msgtrans"
    node_id: str | None = None
    max_buffered: int = DEFAULT_BACKPLANE_BUFFER_MESSAGES
    max_buffered_bytes: int = DEFAULT_BACKPLANE_BUFFER_BYTES

    def check(self) -> BackplaneSettings:
        """Return the settings if valid.

        Raises:
            ConfigurationError: a bad URL, prefix, node id or bound (``field`` names it).
        """
        check_redis_url(self.url)
        BackplaneNode(self.node_id or "x", prefix=self.prefix, max_buffered=self.max_buffered,
                      max_buffered_bytes=self.max_buffered_bytes)
        return self


class Link(Protocol):
    """What the hub needs of a backend's link to Redis."""

    def kick(self) -> None: ...

    def changed(self, subscribe: list[str], unsubscribe: list[str]) -> None: ...


def parse_session_ref(ref: object) -> tuple[str | None, int]:
    """``(node_id, session_id)`` of a session reference: a local session id (an ``int``:
    node ``None``) or a cluster id ``"NODE/ID"`` (see ``Session.cluster_id``).

    Raises:
        ConfigurationError: anything else (``field`` is ``"session"``).
    """
    if isinstance(ref, int) and not isinstance(ref, bool) and ref >= 0:
        return None, ref
    if isinstance(ref, str):
        node, sep, number = ref.partition("/")
        if sep and number.isascii() and number.isdigit():
            try:
                return check_node_id(node), int(number)
            except ConfigurationError:
                pass
    raise ConfigurationError("session", "must be a session id (int) or a cluster id "
                             f"'NODE/ID', got {ref!r}")


class ClusterHub:
    """One transport's groups and backplane (see the module docs).

    Args:
        backplane: the builder's settings, or ``None`` (groups stay local).
    """

    def __init__(self, backplane: BackplaneSettings | None = None) -> None:
        self.settings = backplane
        self.groups: GroupTable[int] = GroupTable()
        self.node: BackplaneNode | None = None
        if backplane is not None:
            self.node = BackplaneNode(
                backplane.node_id, prefix=backplane.prefix,
                max_buffered=backplane.max_buffered,
                max_buffered_bytes=backplane.max_buffered_bytes, groups=self.groups)
        #: This transport's node id (the backplane's, or a random one without a backplane).
        self.node_id = self.node.node_id if self.node is not None else new_node_id()
        self.link: Link | None = None
        self.lock: Any = contextlib.nullcontext()

    def use_lock(self, lock: threading.RLock) -> None:
        """Guard the hub with *lock* from now on (a backend with threads)."""
        self.lock = lock

    # --- groups --------------------------------------------------------------------------------

    def join(self, session_id: int, group: str) -> None:
        """Add session *session_id* to *group* (subscribing the node when it is the first).

        Raises:
            ConfigurationError: *group* is not a valid name.
        """
        check_group(group)
        with self.lock:
            if self.node is None:
                self.groups.join(session_id, group)
                return
            subscribe = self.node.join(session_id, group)
            if subscribe and self.link is not None:
                self.link.changed(subscribe, [])

    def leave(self, session_id: int, group: str) -> bool:
        """Remove session *session_id* from *group*; return whether it was in it."""
        with self.lock:
            was_in = group in self.groups.groups_of(session_id)
            if self.node is None:
                self.groups.leave(session_id, group)
            else:
                unsubscribe = self.node.leave(session_id, group)
                if unsubscribe and self.link is not None:
                    self.link.changed([], unsubscribe)
            return was_in

    def forget(self, session_id: int) -> None:
        """Session *session_id* closed: it leaves every group."""
        with self.lock:
            if self.node is None:
                self.groups.forget(session_id)
                return
            unsubscribe = self.node.forget(session_id)
            if unsubscribe and self.link is not None:
                self.link.changed([], unsubscribe)

    def groups_of(self, session_id: int) -> list[str]:
        """The groups session *session_id* is in."""
        with self.lock:
            return self.groups.groups_of(session_id)

    def members(self, group: str) -> list[int]:
        """The session ids of *group*'s local members."""
        with self.lock:
            return self.groups.members(group)

    # --- the backplane -------------------------------------------------------------------------

    def publish_all(self, data: Buffer, biz_type: int, ext_header: Buffer) -> None:
        """Publish a ``send_to_all`` for the other nodes (nothing without a backplane)."""
        if self.node is None:
            return
        with self.lock:
            self.node.to_all(bytes(data), biz_type, bytes(ext_header))
            self._kick()

    def publish_group(self, group: str, data: Buffer, biz_type: int, ext_header: Buffer
                      ) -> None:
        """Publish a ``send_to_group`` for the other nodes (nothing without a backplane)."""
        if self.node is None:
            return
        with self.lock:
            self.node.to_group(group, bytes(data), biz_type, bytes(ext_header))
            self._kick()

    def publish_session(self, node_id: str, session_id: int, data: Buffer, biz_type: int,
                        ext_header: Buffer) -> bool:
        """Publish a message for session *session_id* of node *node_id*; return ``False`` when
        it was dropped (the buffer is full).

        Raises:
            TransportConnectionError: there is no backplane (code ``connection.closed``:
                another node's session cannot be reached).
        """
        if self.node is None:
            raise TransportConnectionError(
                f"session {node_id}/{session_id} is on another node and this transport has "
                "no backplane (builder.backplane(...))", code="connection.closed",
                retryable=False)
        with self.lock:
            ok = self.node.to_session(node_id, session_id, bytes(data), biz_type,
                                      bytes(ext_header))
            self._kick()
            return ok

    def buffer_full(self) -> ResourceError:
        """The error of a message the backplane dropped (its buffer is full)."""
        node = self.node
        current, limit = (0, 0) if node is None else (node.stats().buffered, node.max_buffered)
        return ResourceError("backplane buffer", current, limit,
                             "the backplane's outbound buffer is full (Redis is down or slow)",
                             code="resource.exhausted")

    def _kick(self) -> None:
        if self.link is not None:
            self.link.kick()

    def targets(self, envelope: Envelope) -> list[int] | None:
        """The local session ids *envelope* is for (``None``: every open session)."""
        if envelope.kind is TargetKind.ALL:
            return None
        if envelope.kind is TargetKind.GROUP:
            return self.members(envelope.target)
        return [int(envelope.target)]

    def stats(self) -> BackplaneStats | None:
        """The backplane's figures, or ``None`` without one."""
        if self.node is None:
            return None
        with self.lock:
            return self.node.stats()
