"""A Store that remembers what the current batch changed, and can take it back.

Only a server with a data directory uses this class; the in-memory server
keeps the plain :class:`~server.store.Store`, so its path is not slowed by a
single check.

Every change goes through :meth:`Store.put` (set, mset, incr, cas, putv),
:meth:`Store._bury` (del, and putv of a tombstone) or :meth:`Store._drop`
(eviction). While :attr:`recording` is on, each one appends the new state of
the key to :attr:`changes` (what the journal will write) and its old state
to an undo list. If the batch cannot be made durable, :meth:`undo_batch`
restores every key, newest change first, so that a write whose reply is an
error is not visible either. Expiry removals are not recorded, nor are
tombstones collected after their grace period: loading (:meth:`Store.load`)
drops both by their time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from common.versions import Version
from server.clock import HybridLogicalClock
from server.store import _MASK, TOMBSTONE_GRACE_S, Store

#: One change: ``(key, value, version, deadline)``, a record's shape. ``value``
#: None with a version: a tombstone; with none: removed, leaving nothing.
Change = tuple[str, "str | None", "Version | None", "float | None"]


class JournaledStore(Store):
    """A :class:`Store` whose changes can be collected per batch and undone."""

    def __init__(self, clock: Callable[[], float] = time.time, hlc: HybridLogicalClock | None = None,
                 tombstone_grace_s: float = TOMBSTONE_GRACE_S) -> None:
        super().__init__(clock, hlc, tombstone_grace_s)
        self.recording = False
        self.changes: list[Change] = []
        self._undo: list[Change] = []

    def put(self, key: str, value: str, deadline: float | None, version: Version | None = None) -> None:
        if version is None:
            version = self.hlc.issue()
        if self.recording:
            self._undo.append(self._state(key))
            self.changes.append((key, value, version, deadline))
        super().put(key, value, deadline, version)

    def _bury(self, key: str, version: Version) -> None:
        if self.recording:
            self._undo.append(self._state(key))
            self.changes.append((key, None, version, None))
        super()._bury(key, version)

    def _drop(self, key: str) -> None:
        if self.recording:
            self._undo.append(self._state(key))
            self.changes.append((key, None, None, None))
        super()._drop(key)

    def _state(self, key: str) -> Change:
        """What the table holds for ``key`` now, expired or not, as a change that would restore it."""
        value = self._buckets[hash(key) & _MASK].get(key)
        if value is not None:
            return key, value, self._versions[key], self._deadlines.get(key)
        return key, None, self.tombstone(key), None

    def end_batch(self) -> None:
        """Forget the batch's changes (they were made durable)."""
        self.changes.clear()
        self._undo.clear()

    def undo_batch(self) -> None:
        """Restore every key the batch changed to its state before the batch."""
        for key, value, version, deadline in reversed(self._undo):
            if key in self._buckets[hash(key) & _MASK]:
                self._remove(key)
            self._unbury(key)
            if value is not None:
                Store.put(self, key, value, deadline, version)
            elif version is not None:
                Store._bury(self, key, version)
        self.end_batch()
