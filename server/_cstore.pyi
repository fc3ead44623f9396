"""Types of the compact table (server/_cstore.pyx), for mypy: it has :class:`server.store.Store`'s interface."""

from server.journaled_store import Journaled
from server.store import Store

class CompactStore(Store):
    def least_recently_used(self) -> str | None: ...

class JournaledCompactStore(Journaled, CompactStore): ...
