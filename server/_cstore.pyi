"""Types of the compact table (server/_cstore.pyx), for mypy: it has :class:`server.store.Store`'s interface."""

from collections.abc import Callable

from server.clock import HybridLogicalClock
from server.journaled_store import Journaled
from server.store import Store

KEY_SLACK_BYTES: int
ARENA_BYTES: int
GARBAGE_SHARE: int

class CompactStore(Store):
    arenas_held: int
    compactions: int
    def __init__(self, clock: Callable[[], float] = ..., hlc: HybridLogicalClock | None = None,
                 tombstone_grace_s: float = ..., arena_bytes: int = ...) -> None: ...
    def least_recently_used(self) -> str | None: ...

class JournaledCompactStore(Journaled, CompactStore): ...
