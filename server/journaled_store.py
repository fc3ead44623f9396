"""A table that remembers what the current batch changed, and can take it back.

Only a server with a data directory uses these classes; the in-memory server
keeps the plain table (:class:`~server.store.Store` or the compact one), so
its path is not slowed by a single check.

Every change goes through the table's ``put`` (set, mset, incr, cas, putv),
``_bury`` (del, and putv of a tombstone) or ``_drop`` (eviction); both tables
call them as overridable methods. While :attr:`Journaled.recording` is on,
each one appends the new state of the key to :attr:`Journaled.changes` (what
the journal will write) and its old state to an undo list. If the batch
cannot be made durable, :meth:`Journaled.undo_batch` restores every key,
newest change first, so that a write whose reply is an error is not visible
either. Expiry removals are not recorded, nor are tombstones collected after
their grace period: loading (``load``) drops both by their time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from common.versions import Version
from server.clock import HybridLogicalClock
from server.store import TOMBSTONE_GRACE_S, Store

#: One change: ``(key, value, version, deadline)``, a record's shape. ``value``
#: None with a version: a tombstone; with none: removed, leaving nothing.
Change = tuple[str, "str | None", "Version | None", "float | None"]


if TYPE_CHECKING:
    _Table = Store  # the interface both tables have
else:
    _Table = object  # at run time a mixin: the table's class comes after it


class Journaled(_Table):
    """Collects a table's changes per batch and undoes them; mixed in before the table's class."""

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
            self._undo.append(self._held(key))
            self.changes.append((key, value, version, deadline))
        super().put(key, value, deadline, version)

    def _bury(self, key: str, version: Version) -> None:
        if self.recording:
            self._undo.append(self._held(key))
            self.changes.append((key, None, version, None))
        super()._bury(key, version)

    def _drop(self, key: str) -> None:
        if self.recording:
            self._undo.append(self._held(key))
            self.changes.append((key, None, None, None))
        super()._drop(key)

    def end_batch(self) -> None:
        """Forget the batch's changes (they were made durable)."""
        self.changes.clear()
        self._undo.clear()

    def undo_batch(self) -> None:
        """Restore every key the batch changed to its state before the batch."""
        put, bury = super().put, super()._bury  # the table's own: an undo is not journaled
        for key, value, version, deadline in reversed(self._undo):
            self._forget(key)
            if value is not None:
                put(key, value, deadline, version)
            elif version is not None:
                bury(key, version)
        self.end_batch()


class JournaledStore(Journaled, Store):
    """The pure-Python :class:`Store`, journaled."""
