"""Which local sessions belong to which groups: :class:`GroupTable` (sans-IO, no locks).

A group is a name (a non-empty string of at most :data:`MAX_GROUP_NAME` UTF-8 bytes) that
sessions join and leave; ``send_to_group`` reaches every member.  The table keeps both
directions (group to members, session to groups) so that a closing session leaves all its
groups in time proportional to its own memberships, and it says when a group gains its first
local member or loses its last: that is when a node subscribes to, or unsubscribes from, the
group's backplane channel.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from .errors import ConfigurationError

__all__ = ["MAX_GROUP_NAME", "GroupTable", "check_group"]

#: The longest group name, in UTF-8 bytes.
MAX_GROUP_NAME = 255

K = TypeVar("K", bound=Hashable)


def check_group(group: object) -> str:
    """Return *group* if it is a valid group name.

    Raises:
        ConfigurationError: *group* is not a string, is empty, or is longer than
            :data:`MAX_GROUP_NAME` UTF-8 bytes (``field`` is ``"group"``).
    """
    if not isinstance(group, str) or not group:
        raise ConfigurationError("group", f"must be a non-empty string, got {group!r}")
    if len(group.encode("utf-8", "surrogatepass")) > MAX_GROUP_NAME:
        raise ConfigurationError("group", f"longer than {MAX_GROUP_NAME} UTF-8 bytes")
    return group


class GroupTable(Generic[K]):
    """Group memberships of local sessions, keyed by session id (or any hashable key)."""

    __slots__ = ("_groups", "_members")

    def __init__(self) -> None:
        self._members: dict[str, dict[K, None]] = {}
        self._groups: dict[K, dict[str, None]] = {}

    def join(self, key: K, group: str) -> bool:
        """Add *key* to *group*; return whether the group had no local member before (the
        node should now subscribe to it).  Joining twice changes nothing.

        Raises:
            ConfigurationError: *group* is not a valid name (see :func:`check_group`).
        """
        check_group(group)
        members = self._members.get(group)
        first = members is None
        if members is None:
            members = self._members[group] = {}
        members[key] = None
        self._groups.setdefault(key, {})[group] = None
        return first

    def leave(self, key: K, group: str) -> bool:
        """Remove *key* from *group*; return whether the group has no local member left (the
        node should unsubscribe).  Leaving a group one is not in returns ``False``."""
        members = self._members.get(group)
        if members is None or key not in members:
            return False
        del members[key]
        groups = self._groups[key]
        del groups[group]
        if not groups:
            del self._groups[key]
        if members:
            return False
        del self._members[group]
        return True

    def forget(self, key: K) -> list[str]:
        """Remove *key* from every group (its session closed); return the groups that have
        no local member left."""
        emptied = []
        for group in list(self._groups.get(key, ())):
            if self.leave(key, group):
                emptied.append(group)
        return emptied

    def members(self, group: str) -> list[K]:
        """The keys in *group*, in the order they joined (a copy: safe to iterate while
        members leave)."""
        return list(self._members.get(group, ()))

    def groups_of(self, key: K) -> list[str]:
        """The groups *key* is in, in the order it joined them."""
        return list(self._groups.get(key, ()))

    def groups(self) -> list[str]:
        """Every group with at least one local member."""
        return list(self._members)

    def __contains__(self, group: object) -> bool:
        return group in self._members

    def __len__(self) -> int:
        """The number of groups with a local member."""
        return len(self._members)

    def size(self, group: str) -> int:
        """How many local members *group* has."""
        return len(self._members.get(group, ()))

    def join_all(self, key: K, groups: Iterable[str]) -> list[str]:
        """Join every group of *groups*; return those that gained their first local member."""
        return [g for g in groups if self.join(key, g)]
