"""A Store that remembers what the current batch changed, and can take it back.

Only a server with a data directory uses this class; the in-memory server
keeps the plain :class:`~server.store.Store`, so its path is not slowed by a
single check.

Every change goes through :meth:`Store.put` (set, mset, incr, cas) or
:meth:`Store.delete`. While :attr:`recording` is on, each one appends the new
state of the key to :attr:`changes` (what the journal will write) and its old
state to an undo list. If the batch cannot be made durable,
:meth:`undo_batch` restores every key, newest change first, so that a write
whose reply is an error is not visible either. Expiry removals are not
recorded: loading (:meth:`Store.load`) drops expired keys by their deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from server.store import _MASK, Store

#: One change: ``(key, value, deadline)``; ``value`` None means deleted.
Change = tuple[str, "str | None", "float | None"]


class JournaledStore(Store):
    """A :class:`Store` whose changes can be collected per batch and undone."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.recording = False
        self.changes: list[Change] = []
        self._undo: list[Change] = []

    def put(self, key: str, value: str, deadline: float | None) -> None:
        if self.recording:
            self._undo.append((key, self._buckets[hash(key) & _MASK].get(key), self._deadlines.get(key)))
            self.changes.append((key, value, deadline))
        super().put(key, value, deadline)

    def delete(self, key: str) -> bool:
        if not self.recording:
            return super().delete(key)
        old = self.get(key)
        if old is None:
            return False
        self._undo.append((key, old, self._deadlines.get(key)))
        self.changes.append((key, None, None))
        self._remove(key)
        return True

    def end_batch(self) -> None:
        """Forget the batch's changes (they were made durable)."""
        self.changes.clear()
        self._undo.clear()

    def undo_batch(self) -> None:
        """Restore every key the batch changed to its state before the batch."""
        for key, value, deadline in reversed(self._undo):
            if value is None:
                if key in self._buckets[hash(key) & _MASK]:
                    self._remove(key)
            else:
                Store.put(self, key, value, deadline)
        self.end_batch()
