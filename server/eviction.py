"""Eviction policies: what the memory cap (server/memory.py) does when a write does not fit.

``--eviction`` names one of :data:`EVICTION_POLICIES`:

``noeviction`` (:class:`NoEviction`)
    nothing is evicted: the write is refused with ``OUT_OF_MEMORY``
    (``error: out of memory``); reads and deletes still work, as in Redis.
``allkeys-lru`` (:class:`AllKeysLru`)
    the least recently used keys are removed until the write fits. Recency is
    exact, not sampled as in Redis. The compact table (server/_cstore.pyx)
    keeps its live keys in order of use itself: a list through its records
    (8 bytes a record), a key moved to the end whenever an operation finds it
    live or writes it. With the Python table every key an operation names is
    moved to the end of an ordered dict after it ran (about 100 bytes per
    key), or dropped from it if the key is gone. Either costs what the limit
    counts. Keys nobody touched since the server started are evicted first.
``volatile-ttl`` (:class:`VolatileTtl`)
    keys with a TTL are removed, nearest deadline first; with none left,
    writes are refused as under ``noeviction``.

Which keys an operation names comes from its row in :mod:`common.ops`: its
KEY, KEYS and PAIRS parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from common.ops import Kind, Op
from server.store import Store

if TYPE_CHECKING:
    from server.handler import ArgsHook

#: What tracking one key's recency costs under allkeys-lru (ordered dict node
#: and slot), measured with ``tests/test_security_memory.py``.
LRU_ENTRY_BYTES = 100


class _OrderedTable(Protocol):
    """A table that keeps its keys in order of use (:meth:`server.store.Store.track_recency` said so)."""

    def least_recently_used(self) -> str | None: ...


class EvictionPolicy:
    """Chooses the keys to remove when a write does not fit; the base refuses (evicts nothing)."""

    #: The ``--eviction`` name.
    name: ClassVar[str]
    #: Bookkeeping bytes per key beyond what the table counts, counted in the limit.
    entry_bytes = 0

    def __init__(self, store: Store) -> None:
        self.store = store

    def evict_one(self) -> bool:
        """Remove one key; False if there is none this policy may remove."""
        return False

    @property
    def bookkeeping_bytes(self) -> int:
        """What the policy's own records take now, as the limit counts it."""
        return 0

    def used(self, op: Op) -> ArgsHook | None:
        """What to note after ``op`` ran (called with its checked arguments), if anything."""
        return None


class NoEviction(EvictionPolicy):
    name = "noeviction"


class VolatileTtl(EvictionPolicy):
    name = "volatile-ttl"

    def evict_one(self) -> bool:
        key = self.store.soonest_expiring()
        if key is None:
            return False
        self.store.evict(key)
        return True


class AllKeysLru(EvictionPolicy):
    name = "allkeys-lru"
    entry_bytes = LRU_ENTRY_BYTES

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._recency: OrderedDict[str, None] = OrderedDict()
        self._scan_cursor = 0
        #: The table itself, when it keeps the order of use (and counts its cost in memory_bytes).
        self._ordered = cast(_OrderedTable, store) if store.track_recency() else None
        if self._ordered is not None:
            self.entry_bytes = 0

    @property
    def bookkeeping_bytes(self) -> int:
        return len(self._recency) * LRU_ENTRY_BYTES

    def evict_one(self) -> bool:
        if self._ordered is not None:
            key = self._ordered.least_recently_used()
            return key is not None and self.store.evict(key)
        store, recency = self.store, self._recency
        # Keys untouched since start (loaded from disk) are older than any tracked one.
        if len(store) > len(recency) and self._evict_untracked():
            return True
        while recency:
            key, _ = recency.popitem(last=False)
            if store.evict(key):
                return True
        return self._evict_untracked()

    def _evict_untracked(self) -> bool:
        recency, store = self._recency, self.store
        for _ in range(2):  # the rest of this pass over the buckets, then the start of the next
            cursor, keys = store.scan(self._scan_cursor, "*", 64)
            self._scan_cursor = cursor
            for key in keys:
                if key not in recency:
                    store.evict(key)
                    return True
            if cursor == 0 and not keys and len(store) == 0:
                return False
        return False

    def used(self, op: Op) -> ArgsHook | None:
        """Every key ``op`` names is noted as just used if it exists after the op, and forgotten if not
        (reads of keys found, every write but a delete, and deletes)."""
        named = tuple((index, param.kind) for index, param in enumerate(op.params)
                      if param.kind in (Kind.KEY, Kind.KEYS, Kind.PAIRS, Kind.RECORDS))
        if not named or self._ordered is not None:
            return None
        seen = self._seen

        def note(args: list[Any]) -> None:
            for index, kind in named:
                if kind is Kind.KEY:
                    seen(args[index])
                elif kind is Kind.RECORDS:
                    for record in args[index]:
                        seen(record[0])
                else:
                    for key in args[index]:
                        seen(key)

        return note

    def _seen(self, key: str) -> None:
        recency = self._recency
        if self.store.get(key) is None:
            recency.pop(key, None)
            return
        try:
            recency.move_to_end(key)
        except KeyError:
            recency[key] = None
            if len(recency) > 2 * len(self.store) + 1024:
                self._compact()

    def _compact(self) -> None:
        """Drop recency entries of keys that expired or were deleted meanwhile."""
        get = self.store.get
        self._recency = OrderedDict((key, None) for key in self._recency if get(key) is not None)


#: Every policy by its ``--eviction`` name, in the order ``--help`` lists them.
EVICTION_POLICIES: dict[str, type[EvictionPolicy]] = {
    policy.name: policy for policy in (NoEviction, AllKeysLru, VolatileTtl)
}
