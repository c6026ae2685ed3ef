"""A wake-up flag for one waiting task, lighter than :class:`trio.Event`."""

from __future__ import annotations

import trio  # type: ignore[import-untyped, unused-ignore]  # 0.22 has no py.typed

__all__ = ["Wakeup"]


class Wakeup:
    """What a writer task waits for: :meth:`set` wakes it, or (when it is not waiting) makes
    its next :meth:`wait` return at once; :meth:`wait` clears the flag as it returns.

    A ``trio.Event`` replaced after each wake-up does the same, but holds a set of waiting
    tasks (and is made again per wake-up): this is two slots, for one waiter at a time.
    """

    __slots__ = ("_is_set", "_task")

    def __init__(self) -> None:
        self._is_set = False
        self._task: trio.lowlevel.Task | None = None

    def is_set(self) -> bool:
        """Whether :meth:`set` was called since the last :meth:`wait` returned."""
        return self._is_set

    def set(self) -> None:
        """Wake the waiting task (if any; else the next :meth:`wait` returns at once)."""
        if not self._is_set:
            self._is_set = True
            task = self._task
            if task is not None:
                self._task = None
                trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        """Wait until set, then clear (a checkpoint either way; one waiting task at most)."""
        if self._is_set:
            await trio.lowlevel.checkpoint()
        else:
            if self._task is not None:
                raise RuntimeError("another task already waits for this wake-up")
            self._task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        self._is_set = False

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED
